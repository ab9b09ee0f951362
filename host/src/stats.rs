//! Counters a server exposes while it runs: live instances and connections, totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Live counters of one server, readable while it runs (see [`crate::Server::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    live_instances: AtomicUsize,
    live_connections: AtomicUsize,
    accepted: AtomicU64,
    traps: AtomicU64,
    limits: [AtomicU64; Limit::ALL.len()],
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
}

impl Limit {
    /// Every limit, in a fixed order.
    pub const ALL: [Limit; 6] = [
        Limit::CpuBudget,
        Limit::CallTimeout,
        Limit::Memory,
        Limit::Idle,
        Limit::Write,
        Limit::Mailbox,
    ];

    fn index(self) -> usize {
        self as usize
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

    /// Connections accepted since the server started.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Guest calls that faulted since the start: traps, and calls stopped by a limit (CPU
    /// budget, call timeout, memory), which [`Stats::limit_hits`] also counts.
    #[must_use]
    pub fn traps(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    /// Connections ended by `limit` since the start.
    #[must_use]
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limits[limit.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn count_limit(&self, limit: Limit) {
        self.limits[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_trap(&self) {
        self.traps.fetch_add(1, Ordering::Relaxed);
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
