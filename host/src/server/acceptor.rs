//! The acceptor pool: `pool_size` tasks blocked on `accept()` on one listener, each handing
//! accepted sockets to connection tasks, supervised so that a failed acceptor is restarted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::HandlerFactory;
use crate::observe::stats::{EndKind, Live, LiveKind};
use crate::server::connection::{self, ConnectionContext};
use crate::tls::handshake;
use crate::tls::settings::Tls;

/// Shortest and longest pause after an accept error caused by exhausted resources.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Pause before a failed acceptor is restarted, so a persistent failure cannot spin.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// What the acceptors of one listener share.
pub(crate) struct AcceptorPool<F> {
    pub(crate) listener: Arc<TcpListener>,
    pub(crate) ctx: Arc<ConnectionContext<F>>,
    /// One permit per open connection: at `max_connections` acceptors wait for one to end.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) connections: TaskTracker,
    /// Cancelled when the shutdown deadline passes: connection tasks are dropped.
    pub(crate) hard_stop: CancellationToken,
}

/// Run the pool until shutdown: start `pool_size` acceptors and restart any that fails.
/// Returns once every acceptor has stopped, so the listener is no longer used.
pub(crate) async fn supervise<F: HandlerFactory>(pool: Arc<AcceptorPool<F>>) {
    let mut acceptors = JoinSet::new();
    for started in 0..pool.ctx.config.load().pool_size() {
        // However many acceptors start, shutdown is heard between them: a large pool never
        // holds the thread or the stop.
        if pool.ctx.shutdown.is_cancelled() {
            break;
        }
        acceptors.spawn(accept_loop(Arc::clone(&pool)));
        if started % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    while let Some(ended) = acceptors.join_next().await {
        if pool.ctx.shutdown.is_cancelled() {
            continue;
        }
        match ended {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => tracing::error!("acceptor failed, restarting it: {error}"),
            Err(join) => tracing::error!("acceptor panicked, restarting it: {join}"),
        }
        tokio::select! {
            () = pool.ctx.shutdown.cancelled() => continue,
            () = tokio::time::sleep(RESTART_DELAY) => {}
        }
        acceptors.spawn(accept_loop(Arc::clone(&pool)));
    }
}

/// Accept connections until shutdown; an error this loop cannot recover from ends it.
async fn accept_loop<F: HandlerFactory>(pool: Arc<AcceptorPool<F>>) -> io::Result<()> {
    let shutdown = &pool.ctx.shutdown;
    let mut backoff = BACKOFF_MIN;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            permit = Arc::clone(&pool.permits).acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = pool.listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = BACKOFF_MIN;
                pool.ctx.stats.count_accepted();
                if let Err(error) = socket.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {error}");
                }
                let ctx = Arc::clone(&pool.ctx);
                let hard_stop = pool.hard_stop.clone();
                // Taken at the accept, as the rest of the settings: a reload that brings new
                // certificates applies to the connections accepted after it.
                let tls = ctx.config.load().shared_tls();
                // Boxed: the connection's future is several KiB, and the task would
                // otherwise copy it whole as it is spawned and again as it finishes.
                pool.connections.spawn(Box::pin(async move {
                    let _permit = permit;
                    let _live = Live::new(Arc::clone(&ctx.stats), LiveKind::Connection);
                    let ended = AtomicBool::new(false);
                    tokio::select! {
                        () = hard_stop.cancelled() => {
                            // A connection that had ended (and was counted) is only finishing
                            // its close; one still running ends here.
                            if !ended.load(Ordering::Acquire) {
                                ctx.stats.count_ended(EndKind::ShutdownDeadline);
                            }
                            // The listener counts them in one line.
                            tracing::debug!("connection dropped at the shutdown deadline");
                        }
                        () = serve_accepted(&ctx, socket, peer, tls, &ended) => {}
                    }
                }));
            }
            Err(error) => match classify(&error) {
                AcceptFailure::ThisConnection => {
                    tracing::debug!("accept failed for one connection, skipping it: {error}");
                }
                AcceptFailure::OutOfResources => {
                    tracing::warn!("accept failed ({error}); retrying in {backoff:?}");
                    drop(permit);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                AcceptFailure::Listener => return Err(error),
            },
        }
    }
}

/// Serve an accepted socket: over plain TCP, or over TLS once its handshake is done. A
/// handshake that fails or times out is counted as the connection's ending; no handler is
/// made for it.
async fn serve_accepted<F: HandlerFactory>(
    ctx: &ConnectionContext<F>,
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Tls>>,
    ended: &AtomicBool,
) {
    let Some(tls) = tls else {
        return connection::run(ctx, socket, Ok(peer), ended).await;
    };
    match handshake::accept(&tls, socket, &ctx.shutdown).await {
        Ok(stream) => {
            ctx.stats.count_tls_handshake();
            connection::run(ctx, stream, Ok(peer), ended).await;
        }
        Err(failure) => {
            ctx.stats.count_ended(failure.end_kind());
            ended.store(true, Ordering::Release);
            // At debug only: anyone can connect and fail a handshake, as often as they like;
            // the counts show them.
            tracing::debug!(%peer, listener = ctx.config.load().name(), "{failure}");
        }
    }
}

/// What an accept error means for the acceptor.
#[derive(Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// Only the connection being accepted failed: accept the next one.
    ThisConnection,
    /// The process or system is out of descriptors or memory: wait, then retry.
    OutOfResources,
    /// The listener itself is broken: end this acceptor (the supervisor restarts it).
    Listener,
}

fn classify(error: &io::Error) -> AcceptFailure {
    if let Some(code) = error.raw_os_error() {
        match code {
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                return AcceptFailure::OutOfResources;
            }
            // accept(2): pending network errors of the new socket are reported by accept
            // itself and should be treated like EAGAIN.
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT
            | libc::EINTR
            | libc::EAGAIN => return AcceptFailure::ThisConnection,
            _ => {}
        }
    }
    match error.kind() {
        io::ErrorKind::OutOfMemory => AcceptFailure::OutOfResources,
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::TimedOut => AcceptFailure::ThisConnection,
        _ => AcceptFailure::Listener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_backs_off() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&error), AcceptFailure::OutOfResources, "{error}");
        }
    }

    #[test]
    fn a_client_that_vanished_is_skipped() {
        for code in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EINTR,
            libc::EPROTO,
        ] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&error), AcceptFailure::ThisConnection, "{error}");
        }
    }

    #[test]
    fn a_broken_listener_ends_the_acceptor() {
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&error), AcceptFailure::Listener, "{error}");
        }
    }
}
