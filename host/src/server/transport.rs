//! What the connection task needs of a stream: bytes both ways (`AsyncRead + AsyncWrite`;
//! `poll_shutdown` is the half-close that starts a lingering close) and the addresses of
//! both ends. Plain TCP is the one transport today; an encrypted stream becomes a second
//! implementation without changing the event loop.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected stream a connection can be served over.
///
/// Writes must be complete once `poll_flush` returns ready; `poll_shutdown` must send the
/// end of the stream (TCP: a FIN) while reads keep working, so that the server can close
/// politely and drain what the client still sends.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The client's address.
    ///
    /// # Errors
    ///
    /// When the OS cannot report it (the client is already gone).
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// The server's address the client connected to.
    ///
    /// # Errors
    ///
    /// When the OS cannot report it.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Transport for TcpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
}
