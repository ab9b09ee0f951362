//! The TLS handshake of an accepted socket, bounded by its listener's `handshake_timeout`
//! and cut short by shutdown: a client that connects and never finishes (a port scanner, a
//! plain-text client, a slowloris) holds its socket that long at most, and is counted.

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::observe::stats::EndKind;
use crate::tls::settings::Tls;

/// Why a handshake did not give a session.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// The client had not finished within the handshake timeout.
    TimedOut,
    /// The handshake failed: not TLS (a plain-text client), no common version or cipher
    /// suite, a client certificate refused or missing, the client gone.
    Failed(std::io::Error),
    /// The server began to shut down first.
    Shutdown,
}

impl HandshakeFailure {
    /// How the connection's end is counted.
    pub(crate) fn end_kind(&self) -> EndKind {
        match self {
            HandshakeFailure::TimedOut => EndKind::TlsHandshakeTimeout,
            HandshakeFailure::Failed(_) => EndKind::TlsHandshakeFailed,
            HandshakeFailure::Shutdown => EndKind::Shutdown,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::TimedOut => f.write_str("TLS handshake timed out"),
            HandshakeFailure::Failed(error) => write!(f, "TLS handshake failed: {error}"),
            HandshakeFailure::Shutdown => f.write_str("TLS handshake cut short by shutdown"),
        }
    }
}

/// Run the server side of the handshake on `socket`. On failure rustls has already sent the
/// client an alert where it could; the socket is dropped (closed) by the caller.
pub(crate) async fn accept(
    tls: &Tls,
    socket: TcpStream,
    shutdown: &CancellationToken,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    tokio::select! {
        () = shutdown.cancelled() => Err(HandshakeFailure::Shutdown),
        () = tokio::time::sleep(tls.handshake_timeout()) => Err(HandshakeFailure::TimedOut),
        done = tls.acceptor().accept(socket) => done.map_err(HandshakeFailure::Failed),
    }
}
