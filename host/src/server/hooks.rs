//! Embedder hooks: native code told when a connection opens and closes, holding a
//! [`ConnectionHandle`] that can message the connection (glisten's `with_init` /
//! `with_close`).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::messages::local::Mailboxes;
use crate::messages::types::{FROM_HOST, MessageError};

/// A live connection as the embedder sees it: its id and address, and a way to send it
/// messages. The guest receives them as `handle(message(envelope))` with `from` = 0
/// ([`FROM_HOST`]). Cloning is cheap; a handle outliving its connection only gets
/// [`MessageError::NoSuchConnection`].
///
/// glisten's second example, in shoal: a connection manager, outside every connection, that
/// tells every client when someone connects or disconnects. The hooks hand each
/// [`ConnectionHandle`] to the manager task; the guest (here the `chat` plugin, which writes
/// the messages it receives to its client) gets them as `handle(message(envelope))`.
///
/// ```no_run
/// use std::collections::HashMap;
///
/// use shoal_host::{ConnectionHandle, Plugin, Runtime, RuntimeConfig, Server, ServerConfig};
/// use tokio::sync::mpsc;
///
/// enum Presence {
///     Connected(ConnectionHandle),
///     Disconnected(u64),
/// }
///
/// # async fn run() -> anyhow::Result<()> {
/// // The manager: keeps the set of connections and broadcasts the changes to it.
/// let (presence, mut changes) = mpsc::unbounded_channel();
/// tokio::spawn(async move {
///     let mut connections: HashMap<u64, ConnectionHandle> = HashMap::new();
///     while let Some(change) = changes.recv().await {
///         let notice = match change {
///             Presence::Connected(conn) => {
///                 let notice = format!("* {} connected\n", conn.peer());
///                 connections.insert(conn.id(), conn);
///                 notice
///             }
///             Presence::Disconnected(id) => {
///                 connections.remove(&id);
///                 format!("* connection {id} left\n")
///             }
///         };
///         for conn in connections.values() {
///             // A full mailbox or a connection that just ended: skip it.
///             let _ = conn.send(notice.clone());
///         }
///     }
/// });
///
/// let runtime = Runtime::new(RuntimeConfig::default())?;
/// let plugin = Plugin::from_file(&runtime, "target/plugins/chat.wasm")?;
/// let server = Server::new(plugin, ServerConfig::default())
///     .on_open({
///         let presence = presence.clone();
///         move |conn| {
///             let _ = presence.send(Presence::Connected(conn.clone()));
///         }
///     })
///     .on_close(move |conn| {
///         let _ = presence.send(Presence::Disconnected(conn.id()));
///     });
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectionHandle {
    id: u64,
    peer: Arc<str>,
    mailboxes: Mailboxes,
}

impl ConnectionHandle {
    pub(crate) fn new(id: u64, peer: Arc<str>, mailboxes: Mailboxes) -> Self {
        Self {
            id,
            peer,
            mailboxes,
        }
    }

    /// The connection's id (unique in the process).
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address, as `ip:port`.
    #[must_use]
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Queue a message for the connection.
    ///
    /// # Errors
    ///
    /// [`MessageError`]: the connection has ended, or its mailbox is full, or the payload is
    /// larger than a mailbox holds.
    pub fn send(&self, payload: impl Into<Bytes>) -> Result<(), MessageError> {
        self.mailboxes.send(FROM_HOST, self.id, payload.into())
    }
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A callback run on a connection event. It runs on the connection's task: keep it short
/// and never block (hand work to another task through a channel).
pub(crate) type Hook = Arc<dyn Fn(&ConnectionHandle) + Send + Sync>;

/// The hooks a server runs.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    /// After `init` kept the connection, before its first event.
    pub(crate) on_open: Option<Hook>,
    /// After the connection ended (after the guest's `close`), for connections that opened.
    pub(crate) on_close: Option<Hook>,
}
