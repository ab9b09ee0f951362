//! The low-level API (public as `shoal_host::tcp`, where its example is): a listening socket,
//! accepted sockets, and serving one socket with a plugin without the acceptor pool.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::config::listener::ServerConfig;
use crate::handler::HandlerFactory;
use crate::server::connection;
use crate::wasm::plugin::Plugin;

/// Most bytes `receive(0)` returns at once.
const RECEIVE_ANY_MAX: usize = 64 << 10;

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
}

/// Bind a listening socket.
///
/// # Errors
///
/// When the address cannot be resolved or bound (for example, it is in use).
pub async fn listen(addr: impl ToSocketAddrs) -> io::Result<Listener> {
    Ok(Listener {
        inner: TcpListener::bind(addr).await?,
    })
}

impl Listener {
    /// Wait for the next connection.
    ///
    /// # Errors
    ///
    /// When `accept` fails; see `accept(2)` for which errors concern only one connection.
    pub async fn accept(&self) -> io::Result<Socket> {
        let (stream, _) = self.inner.accept().await?;
        Ok(Socket { stream })
    }

    /// The address the socket is bound to (useful after binding port 0).
    ///
    /// # Errors
    ///
    /// When the OS cannot report it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The tokio listener, for [`crate::Server::serve`].
    #[must_use]
    pub fn into_inner(self) -> TcpListener {
        self.inner
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
}

impl Socket {
    /// Receive bytes: with `length` 0, whatever is available (at least one byte, at most
    /// 64 KiB), or an empty buffer once the peer has closed; otherwise exactly `length` bytes.
    ///
    /// # Errors
    ///
    /// When reading fails, or the peer closes before `length` bytes arrived.
    pub async fn receive(&mut self, length: usize) -> io::Result<Bytes> {
        if length == 0 {
            let mut buffer = BytesMut::with_capacity(RECEIVE_ANY_MAX);
            self.stream.read_buf(&mut buffer).await?;
            return Ok(buffer.freeze());
        }
        let mut buffer = vec![0; length];
        self.stream.read_exact(&mut buffer).await?;
        Ok(Bytes::from(buffer))
    }

    /// Send all of `data`.
    ///
    /// # Errors
    ///
    /// When writing fails (for example, the peer reset the connection).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// When the OS cannot report it.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Hand the connection to a fresh instance of `plugin` and serve it to the end, exactly as
    /// a [`crate::Server`] would (without the pool or a shutdown signal).
    pub async fn serve_plugin(self, plugin: &Plugin, config: &ServerConfig) {
        self.serve_with(plugin.clone(), config).await;
    }

    /// Serve the connection to the end with a handler from `factory` (a plugin or native code).
    /// The connection is alone in a registry of its own: its messages find nobody else.
    pub async fn serve_with<F: HandlerFactory>(self, factory: F, config: &ServerConfig) {
        connection::serve_stream(self.stream, factory, config).await;
    }

    /// The tokio stream.
    #[must_use]
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}
