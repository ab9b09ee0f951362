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

impl MessageError {
    /// Every reason, in a fixed order.
    pub const ALL: [MessageError; 3] = [
        MessageError::MailboxFull,
        MessageError::NoSuchConnection,
        MessageError::TooLarge,
    ];

    /// A short name for metrics: `mailbox-full`, `no-such-connection`, `too-large`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            MessageError::MailboxFull => "mailbox-full",
            MessageError::NoSuchConnection => "no-such-connection",
            MessageError::TooLarge => "too-large",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            MessageError::MailboxFull => 0,
            MessageError::NoSuchConnection => 1,
            MessageError::TooLarge => 2,
        }
    }
}

/// What a listener's mailboxes have done so far, as [`Mailboxes::counts`] reads it.
///
/// [`Mailboxes::counts`]: crate::Mailboxes::counts
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxCounts {
    /// Messages queued into a mailbox (a broadcast counts once per receiver).
    pub delivered: u64,
    /// Messages refused, by [`MessageError::ALL`]'s order; see [`MailboxCounts::refused`].
    refused: [u64; 3],
    /// Mailboxes that overflowed: each refused a message, closed, and ended its connection
    /// with `close(limit("mailbox full"))`.
    pub overflowed: u64,
    /// Times a guest's send found a mailbox full and waited for room (flow control).
    pub waited: u64,
}

impl MailboxCounts {
    pub(crate) fn new(delivered: u64, refused: [u64; 3], overflowed: u64, waited: u64) -> Self {
        Self {
            delivered,
            refused,
            overflowed,
            waited,
        }
    }

    /// Messages refused for `reason`. A broadcast counts a full mailbox once per receiver,
    /// and a payload too large once.
    #[must_use]
    pub fn refused(&self, reason: MessageError) -> u64 {
        self.refused[reason.index()]
    }

    /// Messages refused, for any reason.
    #[must_use]
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }
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
