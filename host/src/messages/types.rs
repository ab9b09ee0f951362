//! The messages API every backend speaks: what a message is, why one is refused, how much a
//! mailbox holds, how a connection is listed.

use bytes::Bytes;

use crate::config::listener::ServerConfig;

/// The `from` of a message sent by the host program (an embedder hook) rather than by a
/// connection. Connection ids start at 1.
pub const FROM_HOST: u64 = 0;

/// Longest name a connection may give itself (longer names are cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 256;

/// One message waiting in a mailbox.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sending connection's id, or [`FROM_HOST`].
    pub from: u64,
    /// What it sent.
    pub payload: Bytes,
}

/// Why a message was not delivered. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// No connection of this listener has that id.
    #[error("no connection of this listener has that id")]
    NoSuchConnection,
    /// The receiver's mailbox is at its message or byte limit.
    #[error("the receiver's mailbox is full")]
    MailboxFull,
    /// The payload is larger than a whole mailbox may hold.
    #[error("the message is larger than a mailbox may hold")]
    TooLarge,
}

/// Why a connection could not take a name. The name was not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Another connection of the listener has it (ignoring ASCII case), or it is another
    /// live connection's id.
    #[error("another connection of this listener has that name")]
    Taken,
    /// Empty, or longer than [`MAX_NAME_BYTES`].
    #[error("a name is 1 to 256 bytes")]
    Invalid,
}

/// How much one connection's mailbox may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Most messages queued (at least 1).
    pub messages: usize,
    /// Most payload bytes queued; also the largest message accepted.
    pub bytes: usize,
}

impl From<&ServerConfig> for MailboxLimits {
    fn from(config: &ServerConfig) -> Self {
        Self {
            messages: config.mailbox_messages(),
            bytes: config.mailbox_bytes(),
        }
    }
}

/// A connection of the listener, as [`Mailboxes::peers`](crate::Mailboxes::peers) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connection's id.
    pub id: u64,
    /// The name it gave itself, if any.
    pub name: Option<String>,
}
