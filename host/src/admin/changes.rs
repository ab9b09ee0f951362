//! The admin endpoints that change a running server, for holders of its bearer token:
//! `POST /listeners/NAME/deploy` (the request's body is a plugin component, made the
//! listener's current version exactly as a file change would be) and `POST
//! /listeners/NAME/rollback`. An upload is read into memory up to a size limit and never
//! written to disk.

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::admin::reply::{TEXT, reply};
use crate::error::{NodeError, SwapError};
use crate::node_handle::NodeHandle;
use crate::versions::VersionInfo;

/// Largest plugin an upload may carry: the engine's default `max_plugin_size`.
pub(crate) const MAX_UPLOAD: usize = 64 << 20;

/// The secret a client of the changing endpoints must present (`Authorization: Bearer …`),
/// read from `[admin] token_file`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token from the text of a token file (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// When the text is empty, or shorter than 16 characters: too easy to guess.
    pub fn new(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!(
                "a token of {} characters is too easy to guess: use 16 or more (e.g. `openssl \
                 rand -hex 32`)",
                token.len()
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a token is one word, without spaces or control characters".into());
        }
        Ok(Self(token.to_string()))
    }

    /// Whether `presented` is this token, compared in time that does not depend on where
    /// they differ.
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let differ = a
            .iter()
            .zip(b.iter())
            .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
        differ == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// A change a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new version for the listener; the plugin's name for logs.
    Deploy {
        listener: String,
        name: String,
    },
    Rollback {
        listener: String,
    },
}

/// The change `request` asks for, if it is one (`POST /listeners/NAME/deploy?name=P`,
/// `POST /listeners/NAME/rollback`).
pub(crate) fn route<B>(request: &Request<B>) -> Option<Change> {
    let path = request.uri().path();
    let rest = path.strip_prefix("/listeners/")?;
    let (listener, action) = rest.rsplit_once('/')?;
    if request.method() != Method::POST || listener.is_empty() || listener.contains('/') {
        return None;
    }
    let listener = percent_decode(listener)?;
    match action {
        "deploy" => {
            let name = request
                .uri()
                .query()
                .and_then(|query| {
                    query
                        .split('&')
                        .find_map(|pair| pair.strip_prefix("name="))
                        .and_then(percent_decode)
                })
                .filter(|name| !name.is_empty() && name.len() <= 256)
                .unwrap_or_else(|| "uploaded".to_string());
            Some(Change::Deploy { listener, name })
        }
        "rollback" => Some(Change::Rollback { listener }),
        _ => None,
    }
}

/// `%XX` escapes decoded; `None` when they do not make UTF-8 text without control characters.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|text| !text.chars().any(char::is_control))
}

/// Check the token, then apply `change`.
pub(crate) async fn apply(
    change: Change,
    request: Request<Incoming>,
    node: &NodeHandle,
    token: Option<&AdminToken>,
) -> Response<Full<Bytes>> {
    if let Some(refusal) = refusal(&request, token) {
        return refusal;
    }
    let done = match change {
        Change::Deploy { listener, name } => {
            let body = Limited::new(request.into_body(), MAX_UPLOAD);
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let too_large = error.downcast_ref::<http_body_util::LengthLimitError>();
                    return match too_large {
                        Some(_) => reply(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            TEXT,
                            format!("a plugin upload is at most {} MiB\n", MAX_UPLOAD >> 20),
                        ),
                        None => reply(
                            StatusCode::BAD_REQUEST,
                            TEXT,
                            format!("the upload broke off: {error}\n"),
                        ),
                    };
                }
            };
            node.deploy(&listener, &name, bytes).await
        }
        Change::Rollback { listener } => node.rollback(&listener).await,
    };
    match done {
        Ok(version) => reply(StatusCode::OK, "application/json", version_json(&version)),
        Err(error) => {
            let status = match &error {
                NodeError::NoSuchListener(_) => StatusCode::NOT_FOUND,
                NodeError::Swap {
                    error: SwapError::NothingToRollBackTo { .. },
                    ..
                } => StatusCode::CONFLICT,
                NodeError::NotSwappable(_) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            reply(status, TEXT, format!("{error}\n"))
        }
    }
}

/// The response that refuses `request`, unless it carries `token`.
pub(crate) fn refusal<B>(
    request: &Request<B>,
    token: Option<&AdminToken>,
) -> Option<Response<Full<Bytes>>> {
    let Some(token) = token else {
        return Some(reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "this server takes no changes through its admin listener: give it a token \
             ([admin] token_file, or --admin-token-file)\n"
                .to_string(),
        ));
    };
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.matches(presented.trim()) => None,
        Some(_) => Some(unauthorized("the bearer token is wrong")),
        None => Some(unauthorized(
            "a bearer token is needed (Authorization: Bearer …)",
        )),
    }
}

fn unauthorized(why: &str) -> Response<Full<Bytes>> {
    let mut response = reply(StatusCode::UNAUTHORIZED, TEXT, format!("{why}\n"));
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// What a successful change answers: the version now current.
fn version_json(version: &VersionInfo) -> String {
    serde_json::json!({
        "version": version.number,
        "plugin": version.plugin,
        "sha256": version.hash.to_string(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap_or_default()
    }

    #[test]
    fn changes_are_posted_to_a_listener() {
        assert_eq!(
            route(&request(
                Method::POST,
                "/listeners/chat/deploy?name=chat-v2.wasm"
            )),
            Some(Change::Deploy {
                listener: "chat".into(),
                name: "chat-v2.wasm".into()
            })
        );
        assert_eq!(
            route(&request(Method::POST, "/listeners/my%20chat/rollback")),
            Some(Change::Rollback {
                listener: "my chat".into()
            })
        );
        assert_eq!(
            route(&request(Method::GET, "/listeners/chat/rollback")),
            None
        );
        assert_eq!(
            route(&request(Method::POST, "/listeners/a/b/rollback")),
            None
        );
        assert_eq!(
            route(&request(Method::POST, "/listeners/%0a/rollback")),
            None
        );
        assert_eq!(route(&request(Method::POST, "/metrics")), None);
    }

    #[test]
    fn only_the_token_opens_the_door() {
        let token = AdminToken::new("  0123456789abcdef0123\n").ok();
        let with = |header: Option<&str>| {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri("/listeners/a/rollback");
            if let Some(header) = header {
                builder = builder.header("authorization", header);
            }
            let request = builder.body(()).unwrap_or_default();
            refusal(&request, token.as_ref()).map(|response| response.status())
        };
        assert_eq!(with(Some("Bearer 0123456789abcdef0123")), None);
        assert_eq!(
            with(Some("Bearer 0123456789abcdef012")),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(with(Some("Basic x")), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(with(None), Some(StatusCode::UNAUTHORIZED));
        let request = request(Method::POST, "/listeners/a/rollback");
        let refused = refusal(&request, None).map(|response| response.status());
        assert_eq!(refused, Some(StatusCode::FORBIDDEN));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("0123456789 abcdef0123").is_err());
        assert_eq!(format!("{:?}", token), "Some(AdminToken(…))");
    }
}
