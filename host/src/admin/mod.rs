//! The admin listener: an HTTP/1.1 server (hyper) on its own address, off unless asked for
//! (`[admin] address` in the config file, `--admin ADDR` on the command line). It serves
//! `GET /metrics` (every listener's counters in the Prometheus text format), `GET /` (the
//! admin page) and `GET /status.json` (what the page shows; `shoal status` prints it), open
//! to whoever can connect; and, to holders of its bearer token only, `POST
//! /listeners/NAME/deploy` (a new plugin version uploaded: `shoal deploy`) and `POST
//! /listeners/NAME/rollback` (`shoal rollback`).

pub(crate) mod changes;
pub(crate) mod exposition;
pub(crate) mod metrics;
pub(crate) mod page;
pub(crate) mod reply;
pub(crate) mod status;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::changes::AdminToken;
use crate::admin::reply::{TEXT, reply};
use crate::node_handle::NodeHandle;
use crate::observe::histogram;

/// How long a client of the admin listener may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the Prometheus text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve the admin endpoints on `listener` for `node` until `shutdown` is cancelled. From
/// the call on, guest calls and instantiations are timed for the metrics' histograms.
/// Changes need `token` (without one, every change is refused); on a listener that is not
/// bound to a loopback address, so do the pages that only read.
///
/// # Errors
///
/// When the listener fails in a way no retry can mend (a connection that fails alone only
/// ends itself).
pub async fn serve_admin(
    listener: TcpListener,
    node: NodeHandle,
    token: Option<AdminToken>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let token = token.map(Arc::new);
    histogram::start_timing();
    let started = Instant::now();
    // On loopback the pages that only read stay open; reachable from elsewhere, every
    // request needs the token.
    let reads_need_token = listener
        .local_addr()
        .map_or(true, |address| !address.ip().is_loopback());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(error) if is_transient(&error) => {
                tracing::debug!("admin: accept failed: {error}");
                // Out of descriptors, say: give the others a moment to end.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let node = node.clone();
        let token = token.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                let token = token.clone();
                async move {
                    let response = match changes::route(&request) {
                        Some(change) => {
                            changes::apply(change, request, &node, token.as_deref()).await
                        }
                        None if reads_need_token => {
                            match changes::refusal(&request, token.as_deref()) {
                                Some(refusal) => refusal,
                                None => respond(&request, &node, started),
                            }
                        }
                        None => respond(&request, &node, started),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                served = connection => {
                    if let Err(error) = served {
                        tracing::debug!("admin: connection ended: {error}");
                    }
                }
            }
        });
    }
}

fn is_transient(error: &io::Error) -> bool {
    !matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK)
    )
}

/// The answer to one request.
fn respond(
    request: &Request<Incoming>,
    node: &NodeHandle,
    started: Instant,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if request.method() != Method::GET {
        let known = matches!(path, "/" | "/metrics" | "/status.json");
        if known {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "only GET\n".to_string(),
            );
        }
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            METRICS_TYPE,
            metrics::render(&node.listener_status()),
        ),
        "/status.json" => {
            let status = status::status(&node.listener_status(), started);
            match serde_json::to_string_pretty(&status) {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(error) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, error.to_string()),
            }
        }
        "/" => {
            let status = status::status(&node.listener_status(), started);
            reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&status),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; this admin listener serves GET /, /status.json and /metrics, and POST \
             /listeners/NAME/deploy and /listeners/NAME/rollback\n"
                .to_string(),
        ),
    }
}
