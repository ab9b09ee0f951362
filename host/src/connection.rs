//! One connection, start to end: instantiate the plugin, `init`, hand every chunk read to
//! `handle`, write what the guest sent after each call, and `close` exactly once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bindings::shoal::plugin::types::{CloseReason, ConnInfo, Envelope, Event, Next};
use crate::config::ServerConfig;
use crate::error::GuestFault;
use crate::handler::{ConnectionHandler, HandlerFactory, NewConnection};
use crate::hooks::{ConnectionHandle, Hooks};
use crate::mailbox::{Mailbox, Mailboxes, Message};
use crate::read_buffers;
use crate::stats::{Limit, Stats};

/// Longest wait for a client to close its side after the server closed its own.
const LINGER: Duration = Duration::from_secs(2);

/// The limit reason of a connection whose mailbox overflowed (it missed a message).
const MAILBOX_FULL: &str = "mailbox full";
/// The limit reason of a connection whose client did not take its output in time.
const WRITE_TIMEOUT: &str = "write timeout";

/// Connection ids are unique in the process and never reused.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// What every connection of one server shares.
pub(crate) struct ConnectionContext<F> {
    pub(crate) config: ServerConfig,
    pub(crate) factory: F,
    pub(crate) stats: Arc<Stats>,
    /// The listener's registry of connections: messages never leave it.
    pub(crate) mailboxes: Mailboxes,
    pub(crate) hooks: Hooks,
    /// Cancelled when the server shuts down. Connections learn it from their mailbox, which
    /// the server closes at the same time (one wake-up source per connection, not two), and
    /// then give their guest `close(shutdown)`.
    pub(crate) shutdown: CancellationToken,
    /// The listener's address as text when it is bound to one address: then every
    /// connection's local address, formatted once. `None` for a wildcard listener, whose
    /// connections' local addresses differ (read per connection).
    pub(crate) local: Option<String>,
}

/// What a [`ConnectionContext`] keeps of its listener's address `bound`: the text every
/// connection's local address will be, unless the listener is bound to a wildcard address.
pub(crate) fn fixed_local_address(bound: io::Result<SocketAddr>) -> Option<String> {
    bound
        .ok()
        .filter(|addr| !addr.ip().is_unspecified())
        .map(|addr| addr.to_string())
}

/// Serve one accepted socket, from the client at `peer` (as `accept` reported it), until it
/// ends.
pub(crate) async fn run<F: HandlerFactory>(
    ctx: &ConnectionContext<F>,
    socket: TcpStream,
    peer: io::Result<SocketAddr>,
) {
    let id = next_conn_id();
    let peer = address(peer);
    // At `debug` only: a span's fields are formatted when it is created (~8,000 instructions
    // per connection with the fmt subscriber), for lines that are rarely written. The lines
    // logged at `info` and above carry the connection's fields themselves (`log_conn!`).
    let span = tracing::debug_span!("conn", id, %peer, plugin = ctx.factory.name());
    serve(ctx, socket, id, peer).instrument(span).await;
}

/// Which connection a log line is about: its id, its client's address and the plugin.
#[derive(Clone, Copy)]
struct Who<'a> {
    conn: u64,
    peer: &'a str,
    plugin: &'a str,
}

/// Log an event about a connection, with its `conn`, `peer` and `plugin` fields.
macro_rules! log_conn {
    ($level:ident, $who:expr, $($rest:tt)+) => {
        tracing::event!(
            tracing::Level::$level,
            conn = $who.conn,
            peer = $who.peer,
            plugin = $who.plugin,
            $($rest)+
        )
    };
}

fn address(addr: io::Result<SocketAddr>) -> String {
    addr.map_or_else(|_| "unknown".to_string(), |a| a.to_string())
}

async fn serve<F: HandlerFactory>(
    ctx: &ConnectionContext<F>,
    mut socket: TcpStream,
    id: u64,
    peer: String,
) {
    let config = &ctx.config;
    let info = ConnInfo {
        id,
        peer,
        local: ctx
            .local
            .clone()
            .unwrap_or_else(|| address(socket.local_addr())),
        listener: config.name().to_string(),
    };
    let who = Who {
        conn: id,
        peer: &info.peer,
        plugin: ctx.factory.name(),
    };
    // Registered before `init`, so that `init` can already message the others (a chat's
    // join notice) and list itself among the peers.
    let mut mailbox = ctx.mailboxes.register(id);
    let new = NewConnection {
        conn_id: id,
        config,
        stats: &ctx.stats,
        mailboxes: &ctx.mailboxes,
    };
    // Instantiation, `init` and `close` are the largest futures of a connection (wasmtime's
    // call machinery: ~1.4 KiB, 0.8, 0.8); awaited in place they would size every
    // connection's task for its whole life, idle or not. Boxed, they cost a short-lived
    // allocation each instead.
    let mut guest = match Box::pin(ctx.factory.create(new)).await {
        Ok(guest) => guest,
        Err(error) => {
            log_conn!(WARN, who, "closing the connection: {error}");
            return linger_close(&mut socket).await;
        }
    };
    let next = match Box::pin(guest.init(&info)).await {
        Ok(Ok(next)) => next,
        Ok(Err(refusal)) => {
            log_conn!(INFO, who, "plugin refused the connection: {refusal}");
            drop(guest);
            return linger_close(&mut socket).await;
        }
        Err(fault) => {
            report(ctx, who, &fault, "init");
            drop(guest);
            return linger_close(&mut socket).await;
        }
    };
    let hooks = &ctx.hooks;
    let handle = (hooks.on_open.is_some() || hooks.on_close.is_some())
        .then(|| ConnectionHandle::new(id, Arc::from(info.peer.as_str()), ctx.mailboxes.clone()));
    if let (Some(on_open), Some(handle)) = (&hooks.on_open, &handle) {
        on_open(handle);
    }
    let ended = event_loop(ctx, &mut guest, &mut socket, &mut mailbox, next).await;
    // Gone from the registry before `close`: messages sent to it from now on (the others'
    // replies to its leave notice, say) get `no-such-connection` instead of being lost.
    drop(mailbox);
    let closed = match ended {
        Ok(reason) => {
            tracing::debug!(?reason, "connection ending");
            count_limit(ctx, who, &reason);
            Box::pin(guest.close(&reason))
                .await
                .map_err(|fault| (fault, "close"))
        }
        Err(fault) => Err((fault, "handle")),
    };
    if let (Some(on_close), Some(handle)) = (&hooks.on_close, &handle) {
        on_close(handle);
    }
    match closed {
        // The client may be gone already; there is nobody left to tell about a failed write.
        Ok(()) => {
            let _ = flush(&mut guest, &mut socket, config.write_timeout()).await;
        }
        // After a fault the guest's output is dropped; the socket still closes politely.
        Err((fault, export)) => report(ctx, who, &fault, export),
    }
    drop(guest);
    linger_close(&mut socket).await;
}

fn report<F>(ctx: &ConnectionContext<F>, who: Who<'_>, fault: &GuestFault, export: &str) {
    ctx.stats.count_trap();
    if let Some(limit) = fault.limit() {
        ctx.stats.count_limit(limit);
    }
    // The fault last: its text may run over several lines (a Wasm backtrace).
    log_conn!(WARN, who, %fault, "closing the connection: `{export}` failed");
}

/// Count and log a close reason that is a listener limit.
fn count_limit<F>(ctx: &ConnectionContext<F>, who: Who<'_>, reason: &CloseReason) {
    let limit = match reason {
        CloseReason::IdleTimeout => Limit::Idle,
        CloseReason::Limit(text) if text == MAILBOX_FULL => Limit::Mailbox,
        CloseReason::Limit(text) if text == WRITE_TIMEOUT => Limit::Write,
        _ => return,
    };
    ctx.stats.count_limit(limit);
    log_conn!(INFO, who, ?reason, "closing the connection: limit reached");
}

/// What the connection waits for between calls.
enum Input {
    Data(Vec<u8>),
    Message(Message),
    MailboxClosed,
}

/// Read, `handle`, write, until the guest, the client or the server ends the connection.
/// Socket data and mailbox messages are taken in turn, one call at a time.
async fn event_loop<F: HandlerFactory>(
    ctx: &ConnectionContext<F>,
    guest: &mut F::Handler,
    socket: &mut TcpStream,
    mailbox: &mut Mailbox,
    mut next: Next,
) -> Result<CloseReason, GuestFault> {
    let config = &ctx.config;
    // Idle means no byte from the client: messages from others do not keep a silent client.
    // One timer for the whole connection, moved only when it fires: re-arming it at every
    // read would register and deregister a timer per round trip.
    let mut last_input = Instant::now();
    let idle = tokio::time::sleep_until(last_input + config.idle_timeout());
    tokio::pin!(idle);
    let overflow = mailbox.overflow_signal();
    loop {
        // The overflow branch is polled only while the write is pending: a client that does
        // not read cannot keep an overflowed connection alive until its write timeout.
        let flushed = tokio::select! {
            biased;
            flushed = flush(guest, socket, config.write_timeout()) => flushed,
            () = overflow.cancelled() => Err(CloseReason::Limit(MAILBOX_FULL.to_string())),
        };
        if let Err(reason) = flushed {
            // A write cut short leaves the stream mid-output: `close` may not add to it.
            guest.mark_unwritable();
            return Ok(reason);
        }
        if next == Next::Close {
            return Ok(CloseReason::GuestClosed);
        }
        let input = tokio::select! {
            biased;
            () = &mut idle => {
                let deadline = last_input + config.idle_timeout();
                if Instant::now() >= deadline {
                    return Ok(CloseReason::IdleTimeout);
                }
                // The client spoke since the timer was set: wait for the rest of its time.
                idle.as_mut().reset(deadline);
                continue;
            }
            input = next_input(socket, mailbox, config.read_buffer_size()) => input,
        };
        let event = match input {
            Ok(Input::Data(buffer)) if buffer.is_empty() => {
                read_buffers::give_back(buffer);
                return Ok(CloseReason::PeerClosed);
            }
            Ok(Input::Data(buffer)) => {
                last_input = Instant::now();
                Event::Data(buffer)
            }
            Ok(Input::Message(message)) => {
                next = handle_messages(guest, mailbox, message).await?;
                continue;
            }
            // The mailbox closed: the server is shutting down, or it overflowed.
            Ok(Input::MailboxClosed) if ctx.shutdown.is_cancelled() => {
                return Ok(CloseReason::Shutdown);
            }
            Ok(Input::MailboxClosed) => return Ok(CloseReason::Limit(MAILBOX_FULL.to_string())),
            Err(error) => return Ok(ended_by(&error, "read")),
        };
        next = guest.handle(&event).await?;
        if let Event::Data(buffer) = event {
            read_buffers::give_back(buffer);
        }
    }
}

/// Most messages handled in a row before the output is written and the socket looked at.
const MESSAGE_BATCH: usize = 64;
/// Output past which a batch of messages stops early, to be written.
const MESSAGE_BATCH_OUTPUT: usize = 64 << 10;

/// Handle `first` and then, while the guest keeps the connection, the messages already
/// waiting (up to a batch), so that a busy mailbox costs one write per batch rather than
/// one per message.
async fn handle_messages(
    guest: &mut impl ConnectionHandler,
    mailbox: &mut Mailbox,
    first: Message,
) -> Result<Next, GuestFault> {
    let mut message = first;
    let mut handled = 0;
    loop {
        let event = Event::Message(Envelope {
            from: message.from,
            payload: message.payload.to_vec(),
        });
        let next = guest.handle(&event).await?;
        handled += 1;
        if next == Next::Close
            || handled == MESSAGE_BATCH
            || guest.output().len() >= MESSAGE_BATCH_OUTPUT
        {
            return Ok(next);
        }
        match mailbox.try_recv() {
            Some(waiting) => message = waiting,
            None => return Ok(next),
        }
    }
}

/// The next chunk from the socket or message from the mailbox, whichever comes first (in
/// random order when both are ready, so neither can starve the other).
async fn next_input(
    socket: &mut TcpStream,
    mailbox: &mut Mailbox,
    read_size: usize,
) -> io::Result<Input> {
    tokio::select! {
        read = read_lent(socket, read_size) => read.map(Input::Data),
        message = mailbox.recv() => Ok(message.map_or(Input::MailboxClosed, Input::Message)),
    }
}

/// Read what the socket holds into a lent buffer (empty at end of stream). The buffer is
/// taken only when the read can complete, so a connection waiting for input holds none.
async fn read_lent(socket: &mut TcpStream, capacity: usize) -> io::Result<Vec<u8>> {
    std::future::poll_fn(|cx| {
        let mut buffer = read_buffers::take(capacity);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *socket), cx, &mut buffer) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(buffer)),
            Poll::Ready(Err(error)) => {
                read_buffers::give_back(buffer);
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                read_buffers::give_back(buffer);
                Poll::Pending
            }
        }
    })
    .await
}

/// Write what the guest queued, waiting at most `timeout` for the client to take it. After a
/// failed write the guest's later sends fail with `closed`; the error is the close reason.
async fn flush(
    guest: &mut impl ConnectionHandler,
    socket: &mut TcpStream,
    timeout: Duration,
) -> Result<(), CloseReason> {
    if guest.output().is_empty() {
        return Ok(());
    }
    // Most output fits the socket buffer at once: try that before arming the write timeout.
    let sent = match socket.try_write(guest.output()) {
        Ok(sent) => sent,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => {
            guest.mark_unwritable();
            return Err(ended_by(&error, "write"));
        }
    };
    if sent == guest.output().len() {
        guest.clear_output();
        return Ok(());
    }
    let rest = &guest.output()[sent..];
    let written = tokio::time::timeout(timeout, socket.write_all(rest)).await;
    let failure = match written {
        Ok(Ok(())) => {
            guest.clear_output();
            return Ok(());
        }
        Ok(Err(error)) => ended_by(&error, "write"),
        Err(_) => CloseReason::Limit(WRITE_TIMEOUT.to_string()),
    };
    guest.mark_unwritable();
    Err(failure)
}

/// Close politely: send our FIN, then read and discard what the client still sends until it
/// closes too (at most [`LINGER`]). Closing a socket with unread input makes the kernel answer
/// with a reset, which can destroy output the client has not read yet.
async fn linger_close(socket: &mut TcpStream) {
    if socket.shutdown().await.is_err() {
        return;
    }
    // Into lent read buffers: nothing to allocate or zero per connection, and nothing in
    // this future (an array here would grow every connection's task).
    let drain = async {
        while let Ok(discarded) = read_lent(socket, 4 << 10).await {
            let ended = discarded.is_empty();
            read_buffers::give_back(discarded);
            if ended {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The close reason for a socket error: a vanished client is `peer-closed`, anything else an
/// `error` naming the operation.
fn ended_by(error: &io::Error, operation: &str) -> CloseReason {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => CloseReason::PeerClosed,
        _ => CloseReason::Error(format!("{operation} failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_bound_to_one_address_gives_every_connection_its_text() {
        let bound = |text: &str| text.parse::<SocketAddr>().map_err(io::Error::other);
        assert_eq!(
            fixed_local_address(bound("127.0.0.1:8080")).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(fixed_local_address(bound("0.0.0.0:8080")), None);
        assert_eq!(fixed_local_address(bound("[::]:8080")), None);
        assert_eq!(fixed_local_address(Err(io::Error::other("gone"))), None);
    }

    #[test]
    fn a_reset_is_the_peer_closing() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(ended_by(&reset, "read"), CloseReason::PeerClosed));
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(matches!(ended_by(&pipe, "write"), CloseReason::PeerClosed));
    }

    #[test]
    fn other_errors_name_the_operation() {
        let other = io::Error::other("disk on fire");
        let CloseReason::Error(text) = ended_by(&other, "read") else {
            panic!("expected an error reason");
        };
        assert_eq!(text, "read failed: disk on fire");
    }
}
