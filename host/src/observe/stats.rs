//! Counters a listener exposes while it runs: live instances and connections, connections
//! accepted, guest calls that faulted, and every connection by how it ended.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::observe::histogram::{DurationHistogram, HistogramSnapshot};

/// Live counters of one listener, readable while it runs and after it stopped (see
/// [`crate::Server::stats`] and [`crate::Node::listener`]).
#[derive(Debug, Default)]
pub struct Stats {
    live_instances: AtomicUsize,
    live_connections: AtomicUsize,
    asleep: AtomicUsize,
    asleep_bytes: AtomicUsize,
    kept_awake: AtomicU64,
    accepted: AtomicU64,
    tls_handshakes: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Durations of `init`, `handle` and `close` calls, when timed.
    calls: [DurationHistogram; Call::ALL.len()],
    instantiations: DurationHistogram,
    faults: AtomicU64,
    guest_cpu_nanos: AtomicU64,
    ended: [AtomicU64; EndKind::ALL.len()],
    /// The CPU time of each live connection's guest, in nanoseconds, by connection id.
    connection_cpu: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    /// The latest faults and limit hits, oldest first (at most [`INCIDENTS_KEPT`]).
    incidents: Mutex<VecDeque<Incident>>,
}

/// How many of its latest incidents a listener keeps.
const INCIDENTS_KEPT: usize = 20;

/// A connection ended by a fault or a limit, as [`Stats::recent_incidents`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// When.
    pub at: SystemTime,
    /// The connection's id.
    pub conn: u64,
    /// Its client's address.
    pub peer: String,
    /// How it ended ([`EndKind::name`]: `trap`, `limit:idle_timeout`, …).
    pub ending: &'static str,
    /// What happened, in a line.
    pub detail: String,
}

/// A limit of a listener that ended a connection (see [`Stats::limit_hits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// A call ran past its CPU budget.
    CpuBudget,
    /// A call ran past its wall-clock call timeout.
    CallTimeout,
    /// The guest's linear memory would have grown past `memory_limit`.
    Memory,
    /// The client sent nothing for `idle_timeout`.
    Idle,
    /// The client did not take the output for `write_timeout`.
    Write,
    /// The connection's mailbox overflowed.
    Mailbox,
    /// Every instance its listener may have awake (`max_instances`) stayed in use for the
    /// call timeout while the connection waited for one (to start, or to wake).
    Instances,
}

impl Limit {
    /// Every limit, in a fixed order.
    pub const ALL: [Limit; 7] = [
        Limit::CpuBudget,
        Limit::CallTimeout,
        Limit::Memory,
        Limit::Idle,
        Limit::Write,
        Limit::Mailbox,
        Limit::Instances,
    ];

    /// The limit's setting, as `shoal.toml` and [`crate::ServerConfigBuilder`] name it.
    #[must_use]
    pub fn setting(self) -> &'static str {
        match self {
            Limit::CpuBudget => "cpu_budget_per_call",
            Limit::CallTimeout => "call_timeout",
            Limit::Memory => "memory_limit",
            Limit::Idle => "idle_timeout",
            Limit::Write => "write_timeout",
            Limit::Mailbox => "mailbox_messages / mailbox_bytes",
            Limit::Instances => "max_instances",
        }
    }
}

/// A guest call the metrics time, by export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Init = 0,
    Handle = 1,
    Close = 2,
}

impl Call {
    pub(crate) const ALL: [Call; 3] = [Call::Init, Call::Handle, Call::Close];

    /// The export's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Call::Init => "init",
            Call::Handle => "handle",
            Call::Close => "close",
        }
    }
}

/// How a connection ended, as [`Stats::ended`] counts it: every accepted connection is
/// counted once, under exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndKind {
    /// The client closed its side (end of stream) or reset the connection.
    ClientClosed,
    /// The guest returned `next.close`.
    GuestClosed,
    /// The guest's `init` refused the connection.
    Refused,
    /// The server shut down while the connection was open.
    Shutdown,
    /// The connection was still open at the shutdown deadline and was dropped.
    ShutdownDeadline,
    /// A limit of the listener was reached.
    Limit(Limit),
    /// A guest call trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap,
    /// Reading from or writing to the socket failed.
    IoError,
    /// No handler could be made for it (the Wasm instance pool was full, say).
    NoInstance,
    /// Its plugin version was retired at the listener's drain deadline (`close(upgrade)`).
    Upgrade,
    /// Its TLS handshake failed (a plain-text client, no common protocol, a client
    /// certificate missing or refused): no handler was made.
    TlsHandshakeFailed,
    /// It did not finish its TLS handshake within the listener's `handshake_timeout`.
    TlsHandshakeTimeout,
}

impl EndKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EndKind; 18] = [
        EndKind::ClientClosed,
        EndKind::GuestClosed,
        EndKind::Refused,
        EndKind::Shutdown,
        EndKind::ShutdownDeadline,
        EndKind::Trap,
        EndKind::IoError,
        EndKind::NoInstance,
        EndKind::Upgrade,
        EndKind::Limit(Limit::CpuBudget),
        EndKind::Limit(Limit::CallTimeout),
        EndKind::Limit(Limit::Memory),
        EndKind::Limit(Limit::Idle),
        EndKind::Limit(Limit::Write),
        EndKind::Limit(Limit::Mailbox),
        EndKind::Limit(Limit::Instances),
        EndKind::TlsHandshakeFailed,
        EndKind::TlsHandshakeTimeout,
    ];

    /// A short name for logs and metrics: `client-closed`, `limit:write_timeout`, ….
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            EndKind::ClientClosed => "client-closed",
            EndKind::GuestClosed => "guest-closed",
            EndKind::Refused => "refused",
            EndKind::Shutdown => "shutdown",
            EndKind::ShutdownDeadline => "shutdown-deadline",
            EndKind::Trap => "trap",
            EndKind::IoError => "io-error",
            EndKind::NoInstance => "no-instance",
            EndKind::Upgrade => "upgrade",
            EndKind::Limit(Limit::CpuBudget) => "limit:cpu_budget_per_call",
            EndKind::Limit(Limit::CallTimeout) => "limit:call_timeout",
            EndKind::Limit(Limit::Memory) => "limit:memory_limit",
            EndKind::Limit(Limit::Idle) => "limit:idle_timeout",
            EndKind::Limit(Limit::Write) => "limit:write_timeout",
            EndKind::Limit(Limit::Mailbox) => "limit:mailbox",
            EndKind::Limit(Limit::Instances) => "limit:max_instances",
            EndKind::TlsHandshakeFailed => "tls-handshake-failed",
            EndKind::TlsHandshakeTimeout => "tls-handshake-timeout",
        }
    }

    fn index(self) -> usize {
        match self {
            EndKind::ClientClosed => 0,
            EndKind::GuestClosed => 1,
            EndKind::Refused => 2,
            EndKind::Shutdown => 3,
            EndKind::ShutdownDeadline => 4,
            EndKind::Trap => 5,
            EndKind::IoError => 6,
            EndKind::NoInstance => 7,
            EndKind::Limit(limit) => 8 + limit as usize,
            EndKind::Upgrade => 15,
            EndKind::TlsHandshakeFailed => 16,
            EndKind::TlsHandshakeTimeout => 17,
        }
    }
}

impl Stats {
    /// Plugin instances alive now (each connection's `Store`, until it is dropped).
    #[must_use]
    pub fn live_instances(&self) -> usize {
        self.live_instances.load(Ordering::Acquire)
    }

    /// Connections being served now.
    #[must_use]
    pub fn live_connections(&self) -> usize {
        self.live_connections.load(Ordering::Acquire)
    }

    /// Connections hibernating now: open, with their state kept and no instance.
    #[must_use]
    pub fn asleep(&self) -> usize {
        self.asleep.load(Ordering::Acquire)
    }

    /// Bytes of state the hibernating connections keep (their snapshots): the memory they
    /// hold besides their sockets and mailboxes.
    #[must_use]
    pub fn asleep_bytes(&self) -> usize {
        self.asleep_bytes.load(Ordering::Acquire)
    }

    /// Times a connection due to hibernate stayed awake because its state was larger than
    /// its listener's `hibernate_state_limit`.
    #[must_use]
    pub fn kept_awake(&self) -> u64 {
        self.kept_awake.load(Ordering::Relaxed)
    }

    pub(crate) fn count_kept_awake(&self) {
        self.kept_awake.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_asleep(&self, state_bytes: usize) {
        self.asleep.fetch_add(1, Ordering::AcqRel);
        self.asleep_bytes.fetch_add(state_bytes, Ordering::AcqRel);
    }

    pub(crate) fn count_awake(&self, state_bytes: usize) {
        self.asleep.fetch_sub(1, Ordering::AcqRel);
        self.asleep_bytes.fetch_sub(state_bytes, Ordering::AcqRel);
    }

    /// Connections accepted since the server started.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// TLS handshakes that succeeded since the start (those that failed or timed out are
    /// counted as endings: [`EndKind::TlsHandshakeFailed`], [`EndKind::TlsHandshakeTimeout`]).
    #[must_use]
    pub fn tls_handshakes(&self) -> u64 {
        self.tls_handshakes.load(Ordering::Relaxed)
    }

    /// Bytes read from clients since the start (after TLS decryption).
    #[must_use]
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes written to clients since the start (before TLS encryption).
    #[must_use]
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Guest calls that faulted since the start, in any export: traps, and calls stopped by
    /// a limit (CPU budget, call timeout, memory). A fault in `close` is counted here, while
    /// the connection counts under what ended it before.
    #[must_use]
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Former name of [`Stats::faults`].
    #[deprecated(
        since = "0.1.0",
        note = "renamed `faults`: it counts every guest fault, not only traps"
    )]
    #[must_use]
    pub fn traps(&self) -> u64 {
        self.faults()
    }

    /// CPU time the listener's guests have used since the start, as the epoch ticks sample it
    /// (each tick that passes while a guest runs counts a tick's length; see the README's
    /// sandbox section).
    #[must_use]
    pub fn guest_cpu(&self) -> Duration {
        Duration::from_nanos(self.guest_cpu_nanos.load(Ordering::Relaxed))
    }

    /// The CPU time each live connection's guest has used so far (the same ticks as
    /// [`Stats::guest_cpu`]), by connection id, the largest first. A connection is listed from
    /// its instance's creation until its instance is dropped.
    #[must_use]
    pub fn connections_cpu(&self) -> Vec<(u64, Duration)> {
        let mut list: Vec<(u64, Duration)> = self
            .connections()
            .iter()
            .map(|(id, nanos)| (*id, Duration::from_nanos(nanos.load(Ordering::Relaxed))))
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        // Each critical section is one map operation.
        self.connection_cpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections that ended as `kind` since the start.
    #[must_use]
    pub fn ended(&self, kind: EndKind) -> u64 {
        self.ended[kind.index()].load(Ordering::Relaxed)
    }

    /// Connections ended by `limit` since the start: `ended(EndKind::Limit(limit))`.
    #[must_use]
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.ended(EndKind::Limit(limit))
    }

    pub(crate) fn count_ended(&self, kind: EndKind) {
        self.ended[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_bytes_in(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_bytes_out(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A call of `call` that began at `started` (when calls are timed) has returned.
    pub(crate) fn observe_call(&self, call: Call, started: Option<Instant>) {
        if let Some(started) = started {
            self.calls[call as usize].observe(started.elapsed());
        }
    }

    /// An instance begun at `started` (when timed) is ready.
    pub(crate) fn observe_instantiation(&self, started: Option<Instant>) {
        if let Some(started) = started {
            self.instantiations.observe(started.elapsed());
        }
    }

    /// The durations of the guest calls of `call` since timing began.
    pub(crate) fn calls(&self, call: Call) -> HistogramSnapshot {
        self.calls[call as usize].snapshot()
    }

    /// The durations of instantiations since timing began.
    pub(crate) fn instantiations(&self) -> HistogramSnapshot {
        self.instantiations.snapshot()
    }

    /// Keep `incident` among the latest (a fault or a limit hit: rare by nature, so a lock).
    pub(crate) fn note_incident(&self, incident: Incident) {
        let mut incidents = self
            .incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if incidents.len() == INCIDENTS_KEPT {
            incidents.pop_front();
        }
        incidents.push_back(incident);
    }

    /// The latest connections ended by a fault or a limit (at most 20), oldest first.
    #[must_use]
    pub fn recent_incidents(&self) -> Vec<Incident> {
        let incidents = self
            .incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        incidents.iter().cloned().collect()
    }

    pub(crate) fn count_tls_handshake(&self) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }
}

/// One live connection's CPU account: what it adds counts for the connection and for its
/// listener; dropped, the connection leaves [`Stats::connections_cpu`].
#[derive(Debug)]
pub(crate) struct ConnectionCpu {
    stats: Arc<Stats>,
    conn_id: u64,
    nanos: Arc<AtomicU64>,
}

impl ConnectionCpu {
    /// Start the account of connection `conn_id` in `stats`.
    pub(crate) fn new(stats: Arc<Stats>, conn_id: u64) -> Self {
        let nanos = Arc::new(AtomicU64::new(0));
        stats.connections().insert(conn_id, Arc::clone(&nanos));
        Self {
            stats,
            conn_id,
            nanos,
        }
    }

    /// The guest used `cpu` more.
    pub(crate) fn add(&self, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.stats
            .guest_cpu_nanos
            .fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Drop for ConnectionCpu {
    fn drop(&mut self) {
        self.stats.connections().remove(&self.conn_id);
    }
}

/// What a [`Live`] guard counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LiveKind {
    Instance,
    Connection,
}

/// Counts one live instance or connection for as long as the guard lives.
#[derive(Debug)]
pub(crate) struct Live {
    stats: Arc<Stats>,
    kind: LiveKind,
}

impl Live {
    pub(crate) fn new(stats: Arc<Stats>, kind: LiveKind) -> Self {
        let live = Self { stats, kind };
        live.counter().fetch_add(1, Ordering::AcqRel);
        live
    }

    fn counter(&self) -> &AtomicUsize {
        match self.kind {
            LiveKind::Instance => &self.stats.live_instances,
            LiveKind::Connection => &self.stats.live_connections,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_kind_has_its_own_counter_and_name() {
        let stats = Stats::default();
        for (n, kind) in EndKind::ALL.iter().enumerate() {
            for _ in 0..=n {
                stats.count_ended(*kind);
            }
        }
        for (n, kind) in EndKind::ALL.iter().enumerate() {
            assert_eq!(stats.ended(*kind), n as u64 + 1, "{kind:?}");
        }
        let names: HashSet<_> = EndKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), EndKind::ALL.len());
        let indexes: HashSet<_> = EndKind::ALL.iter().map(|k| k.index()).collect();
        assert_eq!(indexes.len(), EndKind::ALL.len());
    }

    #[test]
    fn limit_hits_are_the_endings_by_that_limit() {
        let stats = Stats::default();
        stats.count_ended(EndKind::Limit(Limit::Write));
        assert_eq!(stats.limit_hits(Limit::Write), 1);
        assert_eq!(stats.limit_hits(Limit::Idle), 0);
        for limit in Limit::ALL {
            assert!(EndKind::ALL.contains(&EndKind::Limit(limit)), "{limit:?}");
        }
    }

    #[test]
    fn each_live_connection_has_its_cpu_account() {
        let stats = Arc::new(Stats::default());
        let busy = ConnectionCpu::new(Arc::clone(&stats), 7);
        let quiet = ConnectionCpu::new(Arc::clone(&stats), 3);
        busy.add(Duration::from_millis(5));
        quiet.add(Duration::from_millis(1));
        assert_eq!(
            stats.connections_cpu(),
            [(7, Duration::from_millis(5)), (3, Duration::from_millis(1))]
        );
        assert_eq!(stats.guest_cpu(), Duration::from_millis(6));
        drop(busy);
        assert_eq!(stats.connections_cpu(), [(3, Duration::from_millis(1))]);
        assert_eq!(
            stats.guest_cpu(),
            Duration::from_millis(6),
            "the total stays"
        );
    }

    #[test]
    fn live_guards_count_while_they_live() {
        let stats = Arc::new(Stats::default());
        let connection = Live::new(Arc::clone(&stats), LiveKind::Connection);
        let instance = Live::new(Arc::clone(&stats), LiveKind::Instance);
        assert_eq!((stats.live_connections(), stats.live_instances()), (1, 1));
        drop(instance);
        drop(connection);
        assert_eq!((stats.live_connections(), stats.live_instances()), (0, 0));
    }
}
