//! The admin listener's answers: a body with its status and content type.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// Plain text.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
