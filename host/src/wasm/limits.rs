//! What stops a guest: the cap on its memory (wasmtime's resource limiter), the CPU budget of
//! each call (checked on every epoch tick) and the wall-clock timeout of each call.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use crate::error::GuestFault;

/// The per-instance cap on linear memory (and a bound on tables), as wasmtime's resource
/// limiter. A refused growth is remembered, so a trap that follows is reported as the memory
/// limit rather than as a plain trap.
pub(crate) struct MemoryCap {
    limit: usize,
    refused: bool,
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

/// The CPU time one guest call may use, checked on every epoch tick.
///
/// Time counts only while the call runs on a thread: the interval from a resume (the call's
/// start, or the end of a yield) to the next tick is charged, time spent parked in the
/// executor queue is not.
pub(crate) struct CallBudget {
    limit: Duration,
    used: Duration,
    resumed_at: Arc<Mutex<Instant>>,
}

impl CallBudget {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            used: Duration::ZERO,
            resumed_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// A new call starts now with the whole budget.
    pub(crate) fn start(&mut self, now: Instant) {
        self.used = Duration::ZERO;
        self.set_resumed(now);
    }

    /// Charge the time since the last resume; `true` once the budget is spent.
    pub(crate) fn charge(&mut self, now: Instant) -> bool {
        let resumed_at = self.resumed_at.lock().map(|t| *t).unwrap_or(now);
        self.used += now.saturating_duration_since(resumed_at);
        self.used > self.limit
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// A handle the yield future uses to record when the call resumes.
    pub(crate) fn resume_clock(&self) -> Arc<Mutex<Instant>> {
        Arc::clone(&self.resumed_at)
    }

    fn set_resumed(&self, now: Instant) {
        if let Ok(mut resumed_at) = self.resumed_at.lock() {
            *resumed_at = now;
        }
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

/// Run a guest call, started at `started`, within its wall-clock timeout. Dropping a call in
/// progress leaves the instance unusable, which a fault means anyway.
///
/// Most calls finish in their first poll (a guest is suspended only at an epoch tick or when
/// it waits), so the timer is armed only for a call that did not: creating it for every call
/// cost ~200 instructions per round trip.
pub(crate) async fn within_call_timeout<R>(
    started: Instant,
    timeout: Duration,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> Result<wasmtime::Result<R>, GuestFault> {
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return Ok(result);
    }
    let deadline = tokio::time::Instant::from_std(started + timeout);
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| GuestFault::CallTimeout(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_charges_running_time_only() {
        let start = Instant::now();
        let mut budget = CallBudget::new(Duration::from_millis(10));
        budget.start(start);
        assert!(!budget.charge(start + Duration::from_millis(6)));
        // Parked for a second, then resumed: the wait is not charged.
        let resumed = start + Duration::from_secs(1);
        *budget.resume_clock().lock().expect("not poisoned") = resumed;
        assert!(!budget.charge(resumed + Duration::from_millis(3)));
        *budget.resume_clock().lock().expect("not poisoned") = resumed + Duration::from_millis(3);
        assert!(budget.charge(resumed + Duration::from_millis(5)));
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
