//! What stops a guest: the cap on its memory (wasmtime's resource limiter), the CPU budget of
//! each call (checked on every epoch tick) and the wall-clock timeout of each call.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::ResourceLimiter;

use tokio::time::Instant;

use crate::error::GuestFault;
use crate::messages::waits::MailboxWaits;
use crate::wasm::cpu::ConnCpu;

/// The per-instance cap on linear memory (and a bound on tables), as wasmtime's resource
/// limiter. A refused growth is remembered, so a trap that follows is reported as the memory
/// limit rather than as a plain trap.
pub(crate) struct MemoryCap {
    limit: usize,
    refused: bool,
    /// The size the first refused growth asked for.
    asked: Option<usize>,
    /// The sizes of the instance's memories, added up: what instantiation and each allowed
    /// `memory.grow` made them. (wasmtime reports a growth that fails after the limiter
    /// allowed it — the OS refusing memory — without saying which growth it was, so such a
    /// growth still counts.)
    bytes: usize,
}

/// Most elements a table may grow to: far more than compiled guests use.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            refused: false,
            asked: None,
            bytes: 0,
        }
    }

    /// The sizes of the instance's linear memories, added up.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cap, when a growth past it was refused.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused.then_some(self.limit)
    }

    /// The size the first refused growth asked for (at instantiation: the initial memory).
    pub(crate) fn asked(&self) -> Option<usize> {
        self.asked
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit;
        self.refused |= !allowed;
        if !allowed && self.asked.is_none() {
            self.asked = Some(desired);
        }
        if allowed {
            self.bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The CPU time one guest call may use, in epoch ticks (see `wasm::cpu` for what a tick
/// measures), and the ticks the connection's guest has used in all.
pub(crate) struct CallBudget {
    limit: Duration,
    limit_ticks: u64,
    /// Ticks charged to the call in progress.
    used: u64,
    /// Ticks charged to every call of the connection.
    total: u64,
}

impl CallBudget {
    /// A budget of `limit` per call, on ticks of `tick`.
    pub(crate) fn new(limit: Duration, tick: Duration) -> Self {
        let ticks = limit.as_nanos().div_ceil(tick.as_nanos().max(1));
        Self {
            limit,
            limit_ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            used: 0,
            total: 0,
        }
    }

    /// A new call starts with the whole budget.
    pub(crate) fn start(&mut self) {
        self.used = 0;
    }

    /// Charge a tick that stood for `periods` periods; `true` once the call has used more
    /// than its budget. The connection's total counts every period. The call's budget counts
    /// its first tick as one period: a sparse tick (`wasm::tick_clock`) that falls on a call
    /// is a fair sample, but no proof that this call used the periods it stands for, and a
    /// short call must not fail a budget of a few periods by chance. From its first
    /// interruption on, a computing call is ticked every period.
    pub(crate) fn charge(&mut self, periods: u64) -> bool {
        self.used += if self.used == 0 { 1 } else { periods };
        self.total += periods;
        self.used > self.limit_ticks
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Ticks charged to the connection so far.
    pub(crate) fn total_ticks(&self) -> u64 {
        self.total
    }
}

/// The error the epoch callback raises to stop a call that spent its budget.
#[derive(Debug)]
pub(crate) struct CpuBudgetExceeded(pub(crate) Duration);

impl fmt::Display for CpuBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU budget of {:?} per call exceeded", self.0)
    }
}

impl std::error::Error for CpuBudgetExceeded {}

/// Run a guest call within its wall-clock timeout, telling `cpu` when the guest runs: every
/// poll starts it running (afresh after any wait), and a `Pending` that is not shoal's own
/// yield is a wait on the host, during which it holds no core. Dropping a call in progress
/// leaves the instance unusable, which a fault means anyway.
///
/// Most calls finish in their first poll (a guest is suspended only at an epoch tick or when
/// it waits), so the timer is armed only for a call that did not — creating it for every call
/// cost ~200 instructions per round trip — and the clock is read only then: the timeout counts
/// from the end of the first poll, at most one epoch tick after the call started.
pub(crate) async fn within_call_timeout<R>(
    timeout: Duration,
    cpu: &ConnCpu,
    mailbox_waits: &MailboxWaits,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> Result<wasmtime::Result<R>, GuestFault> {
    let mut call = std::pin::pin!(call);
    let mut poll = |cx: &mut Context<'_>| {
        cpu.polled();
        let polled = call.as_mut().poll(cx);
        if polled.is_pending() {
            cpu.pending();
        }
        polled
    };
    let first = std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await;
    if let Poll::Ready(result) = first {
        return Ok(result);
    }
    let started = Instant::now();
    let waited_before = mailbox_waits.waited(started);
    let mut running = std::pin::pin!(std::future::poll_fn(poll));
    let mut deadline = started + timeout;
    loop {
        if let Ok(result) = tokio::time::timeout_at(deadline, running.as_mut()).await {
            return Ok(result);
        }
        // Time spent waiting for room in a receiver's mailbox is flow control, not the
        // guest's: the deadline moves out by it.
        let now = Instant::now();
        let waited = mailbox_waits.waited(now).saturating_sub(waited_before);
        let counted = now
            .saturating_duration_since(started)
            .saturating_sub(waited);
        if counted >= timeout {
            return Err(GuestFault::CallTimeout(timeout));
        }
        deadline = now + (timeout - counted);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wasm::cpu::{CpuGroup, CpuScheduler};
    use crate::wasm::tick_clock::TickClock;

    fn conn_cpu() -> ConnCpu {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        let scheduler = Arc::new(CpuScheduler::new(clock, 1, true));
        ConnCpu::new(scheduler, Arc::new(CpuGroup::new(1)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_timeout_leaves_out_waits_for_mailbox_room() {
        let (cpu, waits) = (conn_cpu(), MailboxWaits::default());
        // 80 ms waiting for room, then 50 ms of other waiting: 50 ms counted of 100.
        let call = async {
            tokio::task::yield_now().await;
            {
                let _waiting = waits.begin();
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            wasmtime::Result::Ok(())
        };
        let timeout = Duration::from_millis(100);
        let result = within_call_timeout(timeout, &cpu, &waits, call).await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
        // The same 130 ms spent otherwise is past the timeout.
        let call = async {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(130)).await;
            wasmtime::Result::Ok(())
        };
        let result = within_call_timeout(timeout, &cpu, &waits, call).await;
        assert!(
            matches!(result, Err(GuestFault::CallTimeout(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_call_may_use_its_budget_in_ticks_and_no_more() {
        let mut budget = CallBudget::new(Duration::from_millis(10), Duration::from_millis(1));
        budget.start();
        for _ in 0..10 {
            assert!(!budget.charge(1));
        }
        assert!(budget.charge(1), "the eleventh tick is past 10 ms");
        budget.start();
        assert!(!budget.charge(1), "each call has the whole budget");
        assert_eq!(budget.total_ticks(), 12);
    }

    #[test]
    fn a_sparse_tick_counts_whole_in_the_total_and_as_one_period_first_in_a_call() {
        let mut budget = CallBudget::new(Duration::from_millis(2), Duration::from_millis(1));
        budget.start();
        // A short call a sparse tick of 4 periods falls on keeps its 2 ms budget.
        assert!(!budget.charge(4), "a call's first tick counts one period");
        assert_eq!(
            budget.total_ticks(),
            4,
            "the connection's total counts all four"
        );
        // A call still running at the next sparse tick has run through its periods.
        assert!(budget.charge(4), "1 + 4 periods are past 2 ms");
        budget.start();
        assert!(!budget.charge(4));
        assert!(!budget.charge(1));
        assert!(budget.charge(1), "1 + 1 + 1 periods are past 2 ms");
        assert_eq!(budget.total_ticks(), 14);
    }

    #[test]
    fn a_budget_shorter_than_a_tick_is_one_tick() {
        let mut budget = CallBudget::new(Duration::from_micros(10), Duration::from_millis(1));
        budget.start();
        assert!(!budget.charge(1));
        assert!(budget.charge(1));
    }

    #[test]
    fn memory_past_the_cap_is_refused_and_remembered() -> wasmtime::Result<()> {
        let mut cap = MemoryCap::new(128 << 10);
        assert!(cap.memory_growing(0, 64 << 10, None)?);
        assert!(cap.memory_growing(64 << 10, 128 << 10, None)?);
        assert_eq!((cap.bytes(), cap.refused()), (128 << 10, None));
        assert!(!cap.memory_growing(128 << 10, 192 << 10, None)?);
        assert_eq!((cap.bytes(), cap.refused()), (128 << 10, Some(128 << 10)));
        Ok(())
    }
}
