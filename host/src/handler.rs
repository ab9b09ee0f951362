//! What serves a connection. The connection task drives any [`ConnectionHandler`]: a Wasm
//! plugin [`Instance`](crate::Instance) (made by a [`Plugin`](crate::Plugin)) is one
//! implementation, native Rust code is another ([`crate::native`]). The benchmarks run both
//! behind the same acceptor pool and connection task, so their ratio is the cost of the
//! sandbox alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::listener::ServerConfig;
use crate::error::{GuestFault, InstantiateError};
use crate::messages::local::Mailboxes;
use crate::observe::stats::Stats;
use crate::wasm::bindings::plugin::types::{CloseReason, ConnInfo, Event, Next, TlsInfo};
use crate::wasm::cpu::CpuGroup;

/// Serves one connection, following the plugin lifecycle that `wit/plugin.wit` specifies:
/// `init` once, `handle` per event, `close` once. Output is queued by the handler and
/// written by the connection task after each call.
pub trait ConnectionHandler: Send + 'static {
    /// Step 1: `Ok(Ok(next))`, or `Ok(Err(text))` to refuse the connection.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] ends the connection without `close`.
    fn init(
        &mut self,
        info: &ConnInfo,
    ) -> impl Future<Output = Result<Result<Next, String>, GuestFault>> + Send;

    /// Step 2: one event.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`] ends the connection without `close`.
    fn handle(&mut self, event: &Event) -> impl Future<Output = Result<Next, GuestFault>> + Send;

    /// Step 3: the connection ended.
    ///
    /// # Errors
    ///
    /// A [`GuestFault`]; the connection is closed either way.
    fn close(
        &mut self,
        reason: &CloseReason,
    ) -> impl Future<Output = Result<(), GuestFault>> + Send;

    /// Bytes queued since the last [`ConnectionHandler::clear_output`].
    fn output(&self) -> &[u8];

    /// Forget the queued output (it has been written).
    fn clear_output(&mut self);

    /// The socket cannot be written any more: drop queued output, refuse later sends.
    fn mark_unwritable(&mut self);

    /// The CPU time the handler has used in its calls so far, as far as it is measured (a
    /// Wasm instance's epoch ticks); zero by default.
    fn cpu_time(&self) -> Duration {
        Duration::ZERO
    }

    /// The version of its listener's plugin the handler runs, when the listener has
    /// versions ([`Versions`](crate::Versions)); logged with the connection.
    fn version(&self) -> Option<u64> {
        None
    }

    /// Move the connection `info` to its listener's current plugin version with its state
    /// (the `handoff` interface of `wit/plugin.wit`), between two calls; `conn` is what a new
    /// handler for it is made with. By default a handler has no versions and stays.
    fn hand_off(
        &mut self,
        conn: &NewConnection<'_>,
        info: &ConnInfo,
    ) -> impl Future<Output = HandoffOutcome> + Send {
        let _ = (conn, info);
        async { HandoffOutcome::Stayed("its handler has no versions".to_string()) }
    }

    /// Put the connection to sleep between two calls, its output written (see
    /// [`ServerConfig::hibernate_after`](crate::ServerConfig::hibernate_after)): keep its
    /// state (`handoff.snapshot`, up to `conn.config`'s `hibernate_state_limit`) and give
    /// its instance back. By default a handler cannot.
    fn hibernate(&mut self, conn: &NewConnection<'_>) -> impl Future<Output = SleepOutcome> + Send {
        let _ = conn;
        async { SleepOutcome::Cannot("its handler cannot hibernate".to_string()) }
    }

    /// Whether the handler sleeps: [`ConnectionHandler::wake`] it before any other call.
    fn is_asleep(&self) -> bool {
        false
    }

    /// Wake a sleeping handler for the connection `info`: an instance of its listener's
    /// current plugin version takes its state (`handoff.resume`); `conn` is what that
    /// instance is made with. By default a handler never sleeps, so is awake.
    fn wake(
        &mut self,
        conn: &NewConnection<'_>,
        info: &ConnInfo,
    ) -> impl Future<Output = WakeOutcome> + Send {
        let _ = (conn, info);
        async { WakeOutcome::Awake(Next::Continue) }
    }
}

/// What became of a request to hibernate a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum SleepOutcome {
    /// It sleeps: its state is kept, its instance is gone.
    Asleep,
    /// It cannot (its plugin does not export `handoff`, say): it never will, the text says
    /// why.
    Cannot(String),
    /// Not this time: its state is larger than the listener's `hibernate_state_limit` (the
    /// text says by how much). It stays awake, and may sleep after another quiet spell.
    KeptAwake(String),
    /// The handler faulted giving its state up (`snapshot`): the connection must end.
    Faulted(GuestFault),
}

/// What became of waking a sleeping connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum WakeOutcome {
    /// A new instance took its state; `resume` returned this.
    Awake(Next),
    /// No instance could be made within the call timeout (the pool stayed full, say).
    NoInstance(InstantiateError),
    /// `resume` refused the state, saying why.
    Refused(String),
    /// `resume` faulted.
    Faulted(GuestFault),
}

/// What became of a request to move a connection to its listener's current plugin version.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandoffOutcome {
    /// The current version took the connection over; its `resume` returned this.
    Moved(Next),
    /// The connection stays on its version; the text says why (no `handoff` export on
    /// either side, the new version refused the state or faulted in `resume`, …).
    Stayed(String),
    /// The handler faulted giving its state up (`snapshot`): the connection must end, as
    /// after any fault.
    Faulted(GuestFault),
}

/// What a handler factory knows about the connection it makes a handler for.
#[derive(Debug, Clone)]
pub struct NewConnection<'a> {
    /// The connection's id, unique in the process.
    pub conn_id: u64,
    /// The listener's settings.
    pub config: &'a ServerConfig,
    /// The server's counters (a handler counts itself as a live instance while it lives).
    pub stats: &'a Arc<Stats>,
    /// The listener's mailboxes, through which the handler can message other connections.
    pub mailboxes: &'a Mailboxes,
    /// The listener's claim on the CPU, which the handler's guest calls are charged to.
    pub cpu_group: &'a Arc<CpuGroup>,
    /// The connection's TLS session, if its listener serves TLS.
    pub tls: Option<&'a TlsInfo>,
}

/// Makes a fresh [`ConnectionHandler`] for every accepted connection.
pub trait HandlerFactory: Send + Sync + 'static {
    /// The handler it makes.
    type Handler: ConnectionHandler;

    /// A name for logs.
    fn name(&self) -> &str;

    /// Most handlers that can be alive at once, if bounded (the Wasm instance pool).
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Whether handlers can be made under `config` (a Wasm plugin tries one instance under its
    /// limits): checked once before a listener serves, so that settings that cannot work are
    /// refused at start rather than by every connection. `Err` says why, naming the setting.
    fn check(&self, config: &ServerConfig) -> impl Future<Output = Result<(), String>> + Send {
        let _ = config;
        async { Ok(()) }
    }

    /// Make the handler for one new connection.
    ///
    /// # Errors
    ///
    /// An [`InstantiateError`] closes the connection at once.
    fn create(
        &self,
        conn: NewConnection<'_>,
    ) -> impl Future<Output = Result<Self::Handler, InstantiateError>> + Send;
}
