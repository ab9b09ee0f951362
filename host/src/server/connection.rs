//! One connection, start to end, over any [`Transport`]: make its handler, `init`, hand
//! every chunk read and every message to `handle`, write what the guest sent after each
//! call, and `close` exactly once (the lifecycle is specified in `wit/plugin.wit`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use arc_swap::ArcSwap;

use crate::buffers;
use crate::config::listener::ServerConfig;
use crate::conn_id;
use crate::error::GuestFault;
use crate::handler::{
    ConnectionHandler, HandlerFactory, HandoffOutcome, NewConnection, SleepOutcome, WakeOutcome,
};
use crate::messages::local::{Mailbox, Mailboxes, MoveRequest, Received};
use crate::messages::types::{MailboxLimits, Message};
use crate::observe::stats::{EndKind, Incident, Stats};
use crate::server::ending::{Ending, Export, Operation};
use crate::server::hooks::{ConnectionHandle, Hooks};
use crate::server::io::{flush, flush_unless, linger_close, read_lent};
use crate::server::quiet::{Due, Quiet};
use crate::server::transport::Transport;
use crate::wasm::bindings::plugin::types::{ConnInfo, Envelope, Event, Next};
use crate::wasm::cpu::CpuGroup;

/// What every connection of one listener shares.
pub(crate) struct ConnectionContext<F> {
    /// The listener's settings: each connection takes them as they are when it starts
    /// (a reload changes them for new connections only).
    pub(crate) config: Arc<ArcSwap<ServerConfig>>,
    pub(crate) factory: F,
    pub(crate) stats: Arc<Stats>,
    /// The listener's registry of connections: messages never leave it.
    pub(crate) mailboxes: Mailboxes,
    /// The listener's claim on the CPU.
    pub(crate) cpu_group: Arc<CpuGroup>,
    pub(crate) hooks: Hooks,
    /// Cancelled when the server shuts down. Connections learn it from their mailbox, which
    /// the server closes at the same time (one wake-up source per connection, not two), and
    /// then give their guest `close(shutdown)`.
    pub(crate) shutdown: CancellationToken,
    /// The listener's address as text when it is bound to one address: then every
    /// connection's local address, formatted once. `None` for a wildcard listener, whose
    /// connections' local addresses differ (read per connection).
    pub(crate) local: Option<String>,
    /// When the server stops waiting for its connections, once it shuts down: a hibernating
    /// connection is woken for its `close(shutdown)` only until then.
    pub(crate) shutdown_deadline: OnceLock<Instant>,
}

/// What a [`ConnectionContext`] keeps of its listener's address `bound`: the text every
/// connection's local address will be, unless the listener is bound to a wildcard address.
pub(crate) fn fixed_local_address(bound: io::Result<SocketAddr>) -> Option<String> {
    bound
        .ok()
        .filter(|addr| !addr.ip().is_unspecified())
        .map(|addr| addr.to_string())
}

/// Serve one accepted stream, from the client at `peer` (as `accept` reported it), until it
/// ends. `ended` is set once the connection's ending has been counted (what remains is its
/// `close` and the lingering close).
pub(crate) async fn run<F: HandlerFactory, T: Transport>(
    ctx: &ConnectionContext<F>,
    stream: T,
    peer: io::Result<SocketAddr>,
    ended: &AtomicBool,
) {
    let id = conn_id::next();
    let peer = address(peer);
    // At `debug` only: a span's fields are formatted when it is created (~8,000 instructions
    // per connection with the fmt subscriber), for lines that are rarely written. The lines
    // logged at `info` and above carry the connection's fields themselves (`log_conn!`).
    let span = tracing::debug_span!("conn", id, %peer, plugin = ctx.factory.name());
    // A disabled span is entered and left at every poll all the same: without `debug`, the
    // connection runs without the wrapper.
    let unserved = if span.is_disabled() {
        serve(ctx, stream, id, peer, ended).await
    } else {
        serve(ctx, stream, id, peer, ended).instrument(span).await
    };
    if let Some(mut unserved) = unserved {
        linger_close(&mut unserved).await;
    }
}

/// Serve one connection over any [`Transport`] to the end, with a handler from `factory`,
/// as a [`Server`](crate::Server) would serve an accepted socket (without the pool or a
/// shutdown signal). The connection is alone in a registry of its own: its messages find
/// nobody else.
pub async fn serve_stream<F: HandlerFactory, T: Transport>(
    stream: T,
    factory: F,
    config: &ServerConfig,
) {
    let ctx = ConnectionContext {
        config: Arc::new(ArcSwap::from_pointee(config.clone())),
        factory,
        stats: Arc::new(Stats::default()),
        mailboxes: Mailboxes::new(MailboxLimits::from(config)),
        cpu_group: Arc::new(CpuGroup::new(config.cpu_share())),
        hooks: Hooks::default(),
        shutdown: CancellationToken::new(),
        local: fixed_local_address(stream.local_addr()),
        shutdown_deadline: OnceLock::new(),
    };
    let peer = stream.peer_addr();
    run(&ctx, stream, peer, &AtomicBool::new(false)).await;
}

/// A fault's text in one line: a trap's Wasm backtrace runs over many, between what
/// happened (`guest trapped: error while executing at wasm backtrace:`) and why (`… wasm
/// trap: wasm `unreachable` instruction executed`): keep the start and the reason.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let Some(last) = lines.last() else {
        return first.to_string();
    };
    let reason = last
        .find("wasm trap:")
        .map_or(last.trim(), |at| &last[at..]);
    let head = first.split(':').next().unwrap_or(first);
    format!("{head}: {reason}")
}

/// Which connection a log line is about: its id, its client's address and the plugin.
#[derive(Clone, Copy)]
struct Who<'a> {
    conn: u64,
    peer: &'a str,
    plugin: &'a str,
    listener: &'a str,
    /// The plugin version the connection runs, when its listener has versions.
    version: Option<u64>,
}

/// Log an event about a connection, with its `conn`, `peer`, `plugin`, `listener` and
/// `version` fields.
macro_rules! log_conn {
    ($level:ident, $who:expr, $($rest:tt)+) => {
        tracing::event!(
            tracing::Level::$level,
            conn = $who.conn,
            peer = $who.peer,
            plugin = $who.plugin,
            listener = $who.listener,
            version = $who.version,
            $($rest)+
        )
    };
}

fn address(addr: io::Result<SocketAddr>) -> String {
    addr.map_or_else(|_| "unknown".to_string(), |a| a.to_string())
}

/// Serve the connection to its end; the stream back if no handler could be made for it, to
/// be closed.
async fn serve<F: HandlerFactory, T: Transport>(
    ctx: &ConnectionContext<F>,
    mut stream: T,
    id: u64,
    peer: String,
    ended: &AtomicBool,
) -> Option<T> {
    let settings = ctx.config.load_full();
    let config = &*settings;
    let info = ConnInfo {
        id,
        peer,
        local: ctx
            .local
            .clone()
            .unwrap_or_else(|| address(stream.local_addr())),
        listener: config.name().to_string(),
    };
    let mut who = Who {
        conn: id,
        peer: &info.peer,
        plugin: ctx.factory.name(),
        listener: &info.listener,
        version: None,
    };
    // Registered before `init`, so that `init` can already message the others (a chat's
    // join notice) and list itself among the peers.
    let mut mailbox = ctx.mailboxes.register(id);
    let tls = stream.tls_info();
    let new = NewConnection {
        conn_id: id,
        tls: tls.as_ref(),
        config,
        stats: &ctx.stats,
        mailboxes: &ctx.mailboxes,
        cpu_group: &ctx.cpu_group,
    };
    // Instantiation, `init` and `close` are the largest futures of a connection (wasmtime's
    // call machinery: ~1.5 KiB, 1.0, 1.0); awaited in place they would size every
    // connection's task for its whole life, idle or not. Boxed, they cost a short-lived
    // allocation each instead. So do the calls of the event loop and the ending.
    let mut guest = match Box::pin(ctx.factory.create(new.clone())).await {
        Ok(guest) => guest,
        Err(error) => {
            record(ctx, who, &Ending::NoInstance(error), Duration::ZERO, ended);
            // Closed by the caller: awaited here, the close would keep a handler's room in
            // this future (the match's value lives on in it).
            return Some(stream);
        }
    };
    who.version = guest.version();
    let hooks = &ctx.hooks;
    let mut handle = None;
    let conn = Conn {
        new: &new,
        info: &info,
    };
    let opened = Box::pin(guest.init(&info)).await;
    let ending = match opened {
        Ok(Ok(next)) => {
            handle = (hooks.on_open.is_some() || hooks.on_close.is_some()).then(|| {
                ConnectionHandle::new(id, Arc::from(info.peer.as_str()), ctx.mailboxes.clone())
            });
            if let (Some(on_open), Some(handle)) = (&hooks.on_open, &handle) {
                on_open(handle);
            }
            event_loop(ctx, conn, &mut guest, &mut stream, &mut mailbox, next).await
        }
        Ok(Err(refusal)) => Ending::Refused(refusal),
        Err(fault) => Ending::Fault {
            export: Export::Init,
            fault,
        },
    };
    let end = End {
        ending,
        who,
        handle,
        ended,
    };
    Box::pin(finish(ctx, conn, guest, stream, mailbox, end)).await;
    None
}

/// How a connection's serving ended, for [`finish`].
struct End<'a> {
    ending: Ending,
    who: Who<'a>,
    /// The handle its hooks were given, if the listener has hooks.
    handle: Option<ConnectionHandle>,
    ended: &'a AtomicBool,
}

/// The end of a connection: woken if it hibernates and is to hear its `close`, counted,
/// `close`d, its last output written and its socket closed.
async fn finish<F: HandlerFactory, T: Transport>(
    ctx: &ConnectionContext<F>,
    conn: Conn<'_>,
    mut guest: F::Handler,
    mut stream: T,
    mailbox: Mailbox,
    end: End<'_>,
) {
    let End {
        mut ending,
        mut who,
        handle,
        ended,
    } = end;
    // A hibernating connection is woken to hear its `close` (an idle timeout, a shutdown):
    // at shutdown, only until the deadline.
    if ending.close_reason().is_some() && guest.is_asleep() {
        let deadline = matches!(ending, Ending::Shutdown)
            .then(|| ctx.shutdown_deadline.get().copied())
            .flatten();
        let woken = match deadline {
            Some(deadline) if Instant::now() >= deadline => Err(Ending::ShutdownDeadline),
            Some(deadline) => tokio::time::timeout_at(deadline, wake(&mut guest, conn))
                .await
                .unwrap_or(Err(Ending::ShutdownDeadline)),
            None => wake(&mut guest, conn).await,
        };
        if let Err(unwoken) = woken {
            ending = unwoken;
        }
    }
    // Gone from the registry before `close`: messages sent to it from now on (the others'
    // replies to its leave notice, say) get `no-such-connection` instead of being lost.
    drop(mailbox);
    // A handoff may have moved it to another version since it started.
    who.version = guest.version();
    record(ctx, who, &ending, guest.cpu_time(), ended);
    let closed = match ending.close_reason() {
        Some(reason) => Some(Box::pin(guest.close(&reason)).await),
        None => None,
    };
    let hooks = &ctx.hooks;
    if let (Some(on_close), Some(handle)) = (&hooks.on_close, &handle) {
        on_close(handle);
    }
    match closed {
        // The client may be gone already; there is nobody left to tell about a failed write.
        Some(Ok(())) => {
            let write_timeout = conn.new.config.write_timeout();
            if let Ok(written) = flush(&mut guest, &mut stream, write_timeout).await {
                ctx.stats.count_bytes_out(written);
            }
        }
        // After a fault the guest's output is dropped; the socket still closes politely.
        Some(Err(fault)) => {
            // The connection is counted under what ended it; the fault counts as a fault.
            ctx.stats.count_fault();
            let export = Export::Close.name();
            log_conn!(WARN, who, %fault, "closing the connection: `{export}` failed");
        }
        None => {}
    }
    drop(guest);
    linger_close(&mut stream).await;
}

/// Count a connection's ending and log it, as loudly as it deserves, with the CPU time its
/// guest used.
fn record<F>(
    ctx: &ConnectionContext<F>,
    who: Who<'_>,
    ending: &Ending,
    cpu: Duration,
    ended: &AtomicBool,
) {
    let end_kind = ending.kind();
    ctx.stats.count_ended(end_kind);
    ended.store(true, Ordering::Release);
    let kind = end_kind.name();
    if ending.is_fault() || matches!(end_kind, EndKind::Limit(_)) {
        let detail = match ending.fault() {
            Some(fault) => one_line(&fault.to_string()),
            None => ending.to_string(),
        };
        ctx.stats.note_incident(Incident {
            at: SystemTime::now(),
            conn: who.conn,
            peer: who.peer.to_string(),
            ending: kind,
            detail,
        });
    }
    let cpu_ms = u64::try_from(cpu.as_millis()).unwrap_or(u64::MAX);
    if ending.is_fault() {
        ctx.stats.count_fault();
    }
    if let Some(fault) = ending.fault() {
        // The fault last: its text may run over several lines (a Wasm backtrace).
        log_conn!(WARN, who, ending = kind, cpu_ms, %fault, "closing the connection: {ending}");
        return;
    }
    match ending.level() {
        tracing::Level::WARN => {
            log_conn!(
                WARN,
                who,
                ending = kind,
                cpu_ms,
                "closing the connection: {ending}"
            );
        }
        tracing::Level::INFO => {
            log_conn!(
                INFO,
                who,
                ending = kind,
                cpu_ms,
                "closing the connection: {ending}"
            );
        }
        _ => {
            log_conn!(
                DEBUG,
                who,
                ending = kind,
                cpu_ms,
                "closing the connection: {ending}"
            );
        }
    }
}

/// What the connection waits for between calls.
enum Input {
    Data(Vec<u8>),
    Message(Message),
    /// Its plugin version asks it to move to the current one.
    Move(MoveRequest),
    MailboxClosed,
    /// What it sent has drained from the others' mailboxes: it may read its client again.
    Drained,
}

/// The connection as its handler was made for it, to make another (a handoff).
#[derive(Clone, Copy)]
struct Conn<'a> {
    new: &'a NewConnection<'a>,
    info: &'a ConnInfo,
}

/// Read, `handle`, write, until the guest, the client or the server ends the connection.
/// Stream data and mailbox messages are taken in turn, one call at a time; between two
/// calls the connection may move to a newer plugin version, or hibernate.
///
/// While the guest is awake the connection runs [`serve_awake`], boxed: its state holds a
/// guest call's future (~1 KiB), which would otherwise size every connection's task for
/// its whole life. Boxed once per awake spell, it costs a sleeper nothing and a round trip
/// no allocation. Asleep, the connection waits here, in a few hundred bytes.
async fn event_loop<F: HandlerFactory, T: Transport>(
    ctx: &ConnectionContext<F>,
    conn: Conn<'_>,
    guest: &mut F::Handler,
    stream: &mut T,
    mailbox: &mut Mailbox,
    next: Next,
) -> Ending {
    let config = conn.new.config;
    // Idle means no byte from the client: messages from others do not keep a silent client.
    // Hibernation: after `hibernate_after` without a byte or a message, between two calls
    // and with the output written. One timer for both, moved only when it fires: re-arming
    // it at every read would register and deregister a timer per round trip.
    let mut quiet = Quiet::new(
        Instant::now(),
        config.idle_timeout(),
        config.hibernate_after(),
    );
    let timer = tokio::time::sleep_until(quiet.next_deadline(false));
    tokio::pin!(timer);
    let mut awake = Awake {
        quiet: &mut quiet,
        timer: timer.as_mut(),
        next,
        woken_by: None,
    };
    loop {
        let spell = serve_awake(ctx, conn, guest, stream, mailbox, &mut awake);
        if let Some(ending) = Box::pin(spell).await {
            return ending;
        }
        // Asleep: the next input wakes it (in `serve_awake`), unless the idle timeout ends
        // it first.
        let input = tokio::select! {
            biased;
            () = &mut awake.timer => {
                if awake.quiet.fired(Instant::now(), mailbox.is_paused(), true) == Due::Idle {
                    return Ending::Idle;
                }
                let deadline = awake.quiet.next_deadline(true);
                awake.timer.as_mut().reset(deadline);
                continue;
            }
            input = next_input(stream, mailbox, config.read_buffer_size()) => input,
        };
        awake.woken_by = Some(input);
        awake.next = Next::Continue;
    }
}

/// What [`serve_awake`] carries from one awake spell to the next.
struct Awake<'a> {
    quiet: &'a mut Quiet,
    timer: Pin<&'a mut tokio::time::Sleep>,
    /// What the guest's last call asked for.
    next: Next,
    /// The input that woke the connection, for the next spell to handle first.
    woken_by: Option<io::Result<Input>>,
}

/// Serve the connection while its guest is awake: `Some(ending)` when the connection ends,
/// `None` when it falls asleep (its output written, between two calls).
async fn serve_awake<F: HandlerFactory, T: Transport>(
    ctx: &ConnectionContext<F>,
    conn: Conn<'_>,
    guest: &mut F::Handler,
    stream: &mut T,
    mailbox: &mut Mailbox,
    awake: &mut Awake<'_>,
) -> Option<Ending> {
    let config = conn.new.config;
    let handle_fault = |fault| {
        Some(Ending::Fault {
            export: Export::Handle,
            fault,
        })
    };
    let Awake {
        quiet,
        timer,
        next,
        woken_by,
    } = awake;
    loop {
        // The overflow branch is polled only while the write is pending: a client that does
        // not read cannot keep an overflowed connection alive until its write timeout.
        let overflowed = async {
            mailbox.overflowed().await;
            Ending::MailboxFull
        };
        match flush_unless(guest, stream, config.write_timeout(), overflowed).await {
            Ok(0) => {}
            Ok(written) => ctx.stats.count_bytes_out(written),
            Err(ending) => {
                // A write cut short leaves the stream mid-output: `close` may not add to it.
                guest.mark_unwritable();
                return Some(ending);
            }
        }
        if *next == Next::Close {
            return Some(Ending::GuestClosed);
        }
        let input = match woken_by.take() {
            Some(input) => input,
            // Asleep and nothing to handle: the spell ends, and with it this future.
            None if guest.is_asleep() => return None,
            None => tokio::select! {
                biased;
                () = &mut *timer => {
                    match quiet.fired(Instant::now(), mailbox.is_paused(), false) {
                        Due::Idle => return Some(Ending::Idle),
                        Due::Hibernate => match Box::pin(guest.hibernate(conn.new)).await {
                            SleepOutcome::Asleep => {}
                            SleepOutcome::Cannot(_) => quiet.never_hibernate(),
                            SleepOutcome::KeptAwake(_) => quiet.kept_awake(Instant::now()),
                            SleepOutcome::Faulted(fault) => {
                                return Some(Ending::Fault {
                                    export: Export::Snapshot,
                                    fault,
                                });
                            }
                        },
                        // The client or a message spoke since the timer was set.
                        Due::Nothing => {}
                    }
                    timer.as_mut().reset(quiet.next_deadline(guest.is_asleep()));
                    continue;
                }
                input = next_input(stream, mailbox, config.read_buffer_size()) => input,
            },
        };
        // A sleeper's timer waits for the idle timeout only; this input may wake it.
        let was_asleep = guest.is_asleep();
        let event = match input {
            Ok(Input::Data(buffer)) if buffer.is_empty() => {
                buffers::give_back(buffer);
                return Some(Ending::ClientClosed);
            }
            Ok(Input::Data(buffer)) => {
                quiet.input(Instant::now());
                ctx.stats.count_bytes_in(buffer.len());
                Event::Data(buffer)
            }
            Ok(Input::Drained) => {
                quiet.reading_resumed(Instant::now());
                continue;
            }
            Ok(Input::Message(message)) => {
                quiet.message(Instant::now());
                if let Err(ending) = wake_for_a_call(guest, conn).await {
                    return Some(ending);
                }
                if was_asleep {
                    timer.as_mut().reset(quiet.next_deadline(false));
                }
                *next = match handle_messages(guest, mailbox, message).await {
                    Ok(next) => next,
                    Err(fault) => return handle_fault(fault),
                };
                continue;
            }
            Ok(Input::Move(MoveRequest::End)) => return Some(Ending::Drained),
            Ok(Input::Move(request)) => {
                match Box::pin(guest.hand_off(conn.new, conn.info)).await {
                    HandoffOutcome::Moved(resumed) => *next = resumed,
                    HandoffOutcome::Stayed(_) if request == MoveRequest::OrEnd => {
                        return Some(Ending::Drained);
                    }
                    HandoffOutcome::Stayed(_) => {}
                    HandoffOutcome::Faulted(fault) => {
                        return Some(Ending::Fault {
                            export: Export::Snapshot,
                            fault,
                        });
                    }
                }
                continue;
            }
            // The mailbox closed: the server is shutting down, or it overflowed.
            Ok(Input::MailboxClosed) if ctx.shutdown.is_cancelled() => {
                return Some(Ending::Shutdown);
            }
            Ok(Input::MailboxClosed) => return Some(Ending::MailboxFull),
            Err(error) => return Some(Ending::io(Operation::Read, error)),
        };
        if let Err(ending) = wake_for_a_call(guest, conn).await {
            return Some(ending);
        }
        if was_asleep {
            timer.as_mut().reset(quiet.next_deadline(false));
        }
        *next = match guest.handle(&event).await {
            Ok(next) => next,
            Err(fault) => return handle_fault(fault),
        };
        if let Event::Data(buffer) = event {
            buffers::give_back(buffer);
        }
    }
}

/// Wake a hibernating guest before its next call: `Ok(Some(next))` with what its `resume`
/// returned, `Ok(None)` when it was awake, or the ending when it cannot be woken.
async fn wake(guest: &mut impl ConnectionHandler, conn: Conn<'_>) -> Result<Option<Next>, Ending> {
    if !guest.is_asleep() {
        return Ok(None);
    }
    match Box::pin(guest.wake(conn.new, conn.info)).await {
        WakeOutcome::Awake(next) => Ok(Some(next)),
        WakeOutcome::NoInstance(error) => Err(Ending::NoInstance(error)),
        WakeOutcome::Refused(why) => Err(Ending::WakeRefused(why)),
        WakeOutcome::Faulted(fault) => Err(Ending::Fault {
            export: Export::Resume,
            fault,
        }),
    }
}

/// [`wake`] before an event is handed over: a `resume` that says `close` ends the connection
/// before the event.
async fn wake_for_a_call(guest: &mut impl ConnectionHandler, conn: Conn<'_>) -> Result<(), Ending> {
    match wake(guest, conn).await? {
        Some(Next::Close) => Err(Ending::GuestClosed),
        _ => Ok(()),
    }
}

impl From<Received> for Input {
    fn from(received: Received) -> Self {
        match received {
            Received::Message(message) => Input::Message(message),
            Received::Move(request) => Input::Move(request),
            Received::Closed => Input::MailboxClosed,
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

/// The next chunk from the stream or message from the mailbox, whichever comes first (in
/// random order when both are ready, so neither can starve the other). While what the
/// connection sent waits in others' mailboxes past the high-water mark, the stream is not
/// read (its client is slowed by TCP) until the messages drain.
async fn next_input<T: Transport>(
    stream: &mut T,
    mailbox: &mut Mailbox,
    read_size: usize,
) -> io::Result<Input> {
    if !mailbox.may_read() {
        let drained = mailbox.drained();
        return Ok(tokio::select! {
            received = mailbox.recv_or_move() => Input::from(received),
            () = drained => Input::Drained,
        });
    }
    tokio::select! {
        read = read_lent(stream, read_size) => read.map(Input::Data),
        received = mailbox.recv_or_move() => Ok(Input::from(received)),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::*;

    /// An in-memory stream with made-up addresses: a transport that is not TCP.
    struct Duplex(DuplexStream);

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Transport for Duplex {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([192, 0, 2, 1], 4321)))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([192, 0, 2, 2], 80)))
        }
    }

    #[tokio::test]
    async fn the_event_loop_serves_any_transport() -> anyhow::Result<()> {
        let config = ServerConfig::builder().name("duplex").build()?;
        let ctx = Arc::new(ConnectionContext {
            mailboxes: Mailboxes::new(MailboxLimits::from(&config)),
            cpu_group: Arc::new(CpuGroup::new(1)),
            config: Arc::new(ArcSwap::from_pointee(config)),
            factory: crate::native::Echo,
            stats: Arc::default(),
            hooks: Hooks::default(),
            shutdown: CancellationToken::new(),
            local: None,
            shutdown_deadline: OnceLock::new(),
        });
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let serving = Arc::clone(&ctx);
        let task = tokio::spawn(async move {
            let stream = Duplex(server);
            let peer = stream.peer_addr();
            run(&serving, stream, peer, &AtomicBool::new(false)).await;
        });
        client.write_all(b"over any stream").await?;
        let mut echoed = [0u8; 15];
        client.read_exact(&mut echoed).await?;
        assert_eq!(&echoed, b"over any stream");
        // A half-close from the client ends the connection; the server closes its side too.
        client.shutdown().await?;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        task.await?;
        assert_eq!(ctx.stats.ended(EndKind::ClientClosed), 1);
        assert_eq!(ctx.stats.live_instances(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn serve_stream_serves_a_stream_of_the_embedders() -> anyhow::Result<()> {
        let config = ServerConfig::builder().name("duplex").build()?;
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(async move {
            serve_stream(Duplex(server), crate::native::Echo, &config).await;
        });
        client.write_all(b"hello").await?;
        client.shutdown().await?;
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await?;
        assert_eq!(echoed, b"hello");
        task.await?;
        Ok(())
    }

    #[test]
    fn a_trap_with_its_backtrace_is_told_in_one_line() {
        let trap = "guest trapped: error while executing at wasm backtrace:\n    0:   0x434e - \
                    <unknown>!<wasm function 98>\n    1:   0x103d - <unknown>!<wasm function \
                    26>: wasm trap: wasm `unreachable` instruction executed";
        assert_eq!(
            one_line(trap),
            "guest trapped: wasm trap: wasm `unreachable` instruction executed"
        );
        assert_eq!(one_line("out of fuel"), "out of fuel");
    }

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

    /// The size of a future that `make` returns, without making one.
    fn size_of_output<A, R>(_make: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection's task is allocated at its largest state for its whole life, idle or
    /// asleep: the guest calls, instantiation, the ending and a blocked write are boxed when
    /// they happen instead of reserving their room (~1 KiB each) in every connection.
    /// BENCHMARKS.md's ~3.8 KiB per sleeping chat member counts on this.
    #[test]
    fn a_connections_task_stays_small() {
        type Context = ConnectionContext<crate::versions::Versions>;
        let size = size_of_output(
            |(ctx, stream, ended): (
                &'static Context,
                tokio::net::TcpStream,
                &'static AtomicBool,
            )| {
                run(
                    ctx,
                    stream,
                    Ok(SocketAddr::from(([127, 0, 0, 1], 1))),
                    ended,
                )
            },
        );
        assert!(size <= 1536, "a connection's future is {size} bytes");
    }
}
