//! Senders waiting for room in a full mailbox: who waits on whom (so that waits never form a
//! cycle), and how long a connection's call has waited (time its call timeout does not count).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Who waits for room in whose mailbox: an edge from each waiting sender to its receiver.
///
/// A sender may wait only where its edge closes no cycle: A waiting on B while B waits on A
/// (directly or through others) would wait forever, each call holding the connection that
/// would drain the other's mailbox. Every chain of waits therefore ends at a connection that
/// is not waiting on a mailbox, whose own limits (its write timeout, its call timeout) bound
/// how long it can fail to drain.
#[derive(Debug, Default)]
pub(crate) struct WaitGraph {
    waiting_on: Mutex<HashMap<u64, u64>>,
}

impl WaitGraph {
    /// Record that `from` waits on `to`, unless that would close a cycle (`to` waits,
    /// through any chain, on `from`) or `from` is `to`. The edge lasts as long as the
    /// returned guard.
    pub(crate) fn begin(&self, from: u64, to: u64) -> Option<WaitEdge<'_>> {
        let mut waiting_on = self.waiting_on();
        let mut at = to;
        // Every edge was added without closing a cycle, so the chain from `to` ends; the
        // step count only guards against a bug turning that into a hang.
        for _ in 0..=waiting_on.len() {
            if at == from {
                return None;
            }
            match waiting_on.get(&at) {
                Some(next) => at = *next,
                None => {
                    waiting_on.insert(from, to);
                    return Some(WaitEdge { graph: self, from });
                }
            }
        }
        None
    }

    fn waiting_on(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        // Each critical section is one map operation or a read-only walk.
        self.waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A sender's wait on one receiver, recorded in the [`WaitGraph`] until dropped.
pub(crate) struct WaitEdge<'a> {
    graph: &'a WaitGraph,
    from: u64,
}

impl Drop for WaitEdge<'_> {
    fn drop(&mut self) {
        self.graph.waiting_on().remove(&self.from);
    }
}

/// How long one connection's guest calls have waited for room in other connections'
/// mailboxes. Flow control, not the guest's doing: the call timeout leaves it out.
#[derive(Debug, Default)]
pub(crate) struct MailboxWaits {
    clock: Mutex<WaitClock>,
}

#[derive(Debug, Default)]
struct WaitClock {
    /// Finished waits.
    total: Duration,
    /// The wait going on, if any.
    since: Option<Instant>,
}

impl MailboxWaits {
    /// A wait starts; it ends when the returned guard is dropped.
    pub(crate) fn begin(&self) -> Waiting<'_> {
        self.clock().since = Some(Instant::now());
        Waiting { waits: self }
    }

    /// All the time waited until `now`, the wait going on included.
    pub(crate) fn waited(&self, now: Instant) -> Duration {
        let clock = self.clock();
        let current = clock
            .since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        clock.total + current
    }

    fn clock(&self) -> MutexGuard<'_, WaitClock> {
        // Each critical section is a field update or two.
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A wait going on (see [`MailboxWaits::begin`]).
pub(crate) struct Waiting<'a> {
    waits: &'a MailboxWaits,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut clock = self.waits.clock();
        if let Some(since) = clock.since.take() {
            clock.total += since.elapsed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_would_close_a_cycle_is_refused() {
        let graph = WaitGraph::default();
        assert!(graph.begin(1, 1).is_none(), "never on itself");
        let one_on_two = graph.begin(1, 2).expect("nobody waits yet");
        let two_on_three = graph.begin(2, 3).expect("a chain is fine");
        assert!(graph.begin(2, 1).is_none(), "1 waits on 2 already");
        assert!(graph.begin(3, 1).is_none(), "3 → 1 → 2 → 3 is a cycle");
        let four_on_one = graph.begin(4, 1).expect("4 waits at the end of a chain");
        drop(one_on_two);
        let three_on_one = graph.begin(3, 1).expect("the cycle is broken");
        drop((two_on_three, four_on_one, three_on_one));
        assert!(graph.waiting_on().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_counts_finished_and_current_waits() {
        let waits = MailboxWaits::default();
        {
            let _waiting = waits.begin();
            tokio::time::advance(Duration::from_millis(30)).await;
            assert_eq!(waits.waited(Instant::now()), Duration::from_millis(30));
        }
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(waits.waited(Instant::now()), Duration::from_millis(30));
    }
}
