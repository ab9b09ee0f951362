//! What the connection task needs of a stream: bytes both ways (`AsyncRead + AsyncWrite`;
//! `poll_shutdown` is the half-close that starts a lingering close) and the addresses of
//! both ends. Plain TCP is one transport; TLS (`crate::tls::stream`) is the other, with the
//! same event loop.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::wasm::bindings::plugin::types::TlsInfo;

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

    /// Write what the stream takes at once, without waiting and without a task context (as
    /// `TcpStream::try_write`): how many bytes were taken, or `WouldBlock` when none can be
    /// now. After every guest call the connection task tries this first and arms its write
    /// timeout only for what is left, so a fast path here saves a timer per round trip. The
    /// default takes nothing: every write waits through `poll_write` and `poll_flush`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing can be written now; any other error ends the connection.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// The stream's TLS session, which the guest reads through `connection.tls`; `None`
    /// (the default) for a stream that is not encrypted.
    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }
}

impl Transport for TcpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}
