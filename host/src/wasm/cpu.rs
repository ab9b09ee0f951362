//! Guests' CPU time: the tick clock that measures it, and the fair share of the cores between
//! listeners.
//!
//! # What a tick measures
//!
//! The runtime's ticker thread advances a [`TickClock`] (and the engine's epoch) once per
//! period, 1 ms by default. A running guest is interrupted at the first epoch check after a
//! tick; each interruption charges it one tick, if a tick passed since the guest was last
//! resumed. Ticks fall at times that have nothing to do with the guest, so the ticks a guest
//! is charged are a sample of the CPU it used: a guest that runs 5 ms is charged about 5
//! whatever its calls look like. Time the guest did not run is not charged:
//!
//! * the process frozen (SIGSTOP, a CPU quota, a stolen vCPU): the ticker thread is frozen
//!   too, so no tick passes;
//! * the thread descheduled, or the guest parked in the executor's queue after a yield: at
//!   most one tick per interruption, since a guest is charged once when it next runs and is
//!   resumed with a fresh mark.
//!
//! Reading the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) at the start of every call
//! would be exact, but it is a system call (~180 ns here, BENCHMARKS.md) on every round trip;
//! the tick sample costs one atomic load per call.
//!
//! # Fair shares between listeners
//!
//! A guest that runs past its first tick is CPU-bound, and from then on it runs only while it
//! holds one of the [`CpuScheduler`]'s core slots (as many as the executor has worker
//! threads). At every tick it gives its slot back and waits for one again, so the scheduler
//! decides, a tick at a time, which listener's guests run:
//!
//! * a free slot goes to the waiting listener that has used the least CPU for its weight
//!   (`cpu_share`), so listeners that all want the CPU get it in proportion to their
//!   weights, however many connections each has;
//! * while other listeners are active (a guest waiting or running, or a call served in the
//!   last [`ACTIVE_WINDOW`] ticks), a listener holds at most its weighted part of the slots,
//!   rounded up, at least one: the rest of the cores stay free for the others' calls, which
//!   then never queue behind a looping guest;
//! * a listener alone may hold every slot, and calls that finish within a tick never wait.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

/// How recently a listener must have served a call to count as active, in ticks.
pub(crate) const ACTIVE_WINDOW: u64 = 10;

/// Virtual time one tick adds to a listener of weight 1 (less for heavier ones).
const VTIME_PER_TICK: u64 = 1 << 24;

/// The ticks the runtime's ticker has made.
#[derive(Debug)]
pub(crate) struct TickClock {
    ticks: AtomicU64,
    period: Duration,
}

impl TickClock {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            ticks: AtomicU64::new(0),
            period,
        }
    }

    /// The ticks so far.
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    /// One more tick (the ticker thread, before it advances the engine's epoch, so that a
    /// guest interrupted by the epoch always sees the tick).
    pub(crate) fn advance(&self) {
        self.ticks.fetch_add(1, Ordering::AcqRel);
    }

    /// How long a tick is.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }
}

/// One listener's claim on the CPU: its weight, and the scheduler's view of it. Made by each
/// [`Server`](crate::Server); every connection of the listener is charged to it.
#[derive(Debug)]
pub struct CpuGroup {
    weight: u32,
    /// The tick at which the listener last started a guest call.
    last_active: AtomicU64,
    /// Whether a scheduler knows this group (set once).
    registered: AtomicBool,
}

impl CpuGroup {
    /// A group of `weight` (at least 1).
    #[must_use]
    pub fn new(weight: u32) -> Self {
        Self {
            weight: weight.max(1),
            last_active: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Its weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// What one connection's store and the future that resumes its guest after a yield share.
#[derive(Debug, Default)]
pub(crate) struct ConnCpu {
    /// The tick at which the guest was last resumed after a yield (the store keeps the tick
    /// its call started at).
    resumed_at: AtomicU64,
    /// Whether the guest holds a core slot.
    holding: AtomicBool,
}

impl ConnCpu {
    pub(crate) fn resumed_at(&self) -> u64 {
        self.resumed_at.load(Ordering::Acquire)
    }

    pub(crate) fn resume(&self, tick: u64) {
        self.resumed_at.store(tick, Ordering::Release);
    }

    /// Whether the guest holds a core slot.
    pub(crate) fn holds_slot(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Take the "holds a slot" mark: whether it was set.
    pub(crate) fn take_slot(&self) -> bool {
        self.holding.swap(false, Ordering::AcqRel)
    }

    fn hold_slot(&self) {
        self.holding.store(true, Ordering::Release);
    }
}

/// The core slots of a runtime and the listeners that share them.
#[derive(Debug)]
pub(crate) struct CpuScheduler {
    clock: Arc<TickClock>,
    slots: usize,
    /// With shares off, guests only yield at ticks and nothing is gated.
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    members: Vec<Member>,
}

/// A listener the scheduler knows.
#[derive(Debug)]
struct Member {
    group: Weak<CpuGroup>,
    weight: u32,
    holding: usize,
    waiting: VecDeque<Arc<Waiter>>,
    /// CPU used for its weight: the listener with the least goes first.
    vtime: u64,
}

impl Member {
    fn is_idle(&self) -> bool {
        self.holding == 0 && self.waiting.is_empty()
    }

    fn is_active(&self, now: u64) -> bool {
        !self.is_idle()
            || self.group.upgrade().is_some_and(|group| {
                now.saturating_sub(group.last_active.load(Ordering::Relaxed)) <= ACTIVE_WINDOW
            })
    }
}

/// A guest waiting for a slot.
#[derive(Debug, Default)]
struct Waiter {
    granted: AtomicBool,
    waker: AtomicWaker,
}

impl CpuScheduler {
    /// A scheduler of `slots` core slots (at least 1), on `clock`'s ticks.
    pub(crate) fn new(clock: Arc<TickClock>, slots: usize, enabled: bool) -> Self {
        let slots = slots.max(1);
        Self {
            clock,
            slots,
            enabled,
            state: Mutex::new(State {
                free: slots,
                members: Vec::new(),
            }),
        }
    }

    pub(crate) fn clock(&self) -> &TickClock {
        &self.clock
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole: counters move together.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call of `group`'s listener starts: it is active. One or two atomic loads.
    pub(crate) fn touch(&self, group: &Arc<CpuGroup>) {
        if !self.enabled {
            return;
        }
        let now = self.clock.now();
        if group.last_active.load(Ordering::Relaxed) != now {
            group.last_active.store(now, Ordering::Relaxed);
        }
        if !group.registered.load(Ordering::Acquire) {
            let mut state = self.state();
            state.member(group);
            group.registered.store(true, Ordering::Release);
        }
    }

    /// A guest of `group` was charged a tick: its listener's virtual time moves on. A guest
    /// that held a slot (`held`) keeps it if its listener is within its cap and no waiting
    /// listener has used less for its weight; otherwise the slot goes to the one that should
    /// run next. Returns whether the guest still holds a slot.
    pub(crate) fn tick(&self, group: &Arc<CpuGroup>, held: bool) -> bool {
        if !self.enabled {
            return false;
        }
        let (now, slots) = (self.clock.now(), self.slots);
        let mut state = self.state();
        let index = state.member(group);
        let member = &mut state.members[index];
        member.vtime = member
            .vtime
            .saturating_add(VTIME_PER_TICK / u64::from(member.weight));
        if !held {
            return false;
        }
        if state.may_keep(index, now, slots) {
            return true;
        }
        state.release(index, now, slots);
        false
    }

    /// A guest of `group` that held a slot stopped running (its call ended or faulted).
    pub(crate) fn release(&self, group: &Arc<CpuGroup>) {
        if !self.enabled {
            return;
        }
        let mut state = self.state();
        let index = state.member(group);
        state.release(index, self.clock.now(), self.slots);
    }

    /// Wait for a slot for a guest of `group`; once it is ready, `conn` holds it.
    pub(crate) fn acquire(self: &Arc<Self>, group: Arc<CpuGroup>, conn: Arc<ConnCpu>) -> Acquire {
        Acquire {
            scheduler: Arc::clone(self),
            group,
            conn,
            waiter: None,
            done: false,
        }
    }

    /// The future a guest awaits at a tick: let the worker run other tasks, then (with
    /// shares on) wait for a core slot, then note the tick it resumes at.
    pub(crate) fn yield_point(
        self: &Arc<Self>,
        group: &Arc<CpuGroup>,
        conn: &Arc<ConnCpu>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let scheduler = Arc::clone(self);
        let acquire = (self.enabled && !conn.holds_slot())
            .then(|| self.acquire(Arc::clone(group), Arc::clone(conn)));
        let conn = Arc::clone(conn);
        Box::pin(async move {
            tokio::task::yield_now().await;
            if let Some(acquire) = acquire {
                acquire.await;
            }
            conn.resume(scheduler.clock.now());
        })
    }
}

impl State {
    /// The index of `group`'s member, registering it on first sight.
    fn member(&mut self, group: &Arc<CpuGroup>) -> usize {
        let key = Arc::downgrade(group);
        if let Some(index) = self.members.iter().position(|m| m.group.ptr_eq(&key)) {
            return index;
        }
        // Listeners that are gone and hold nothing are forgotten.
        self.members
            .retain(|m| m.group.strong_count() > 0 || !m.is_idle());
        self.members.push(Member {
            group: key,
            weight: group.weight,
            holding: 0,
            waiting: VecDeque::new(),
            vtime: 0,
        });
        self.members.len() - 1
    }

    /// The most slots member `index` may hold now.
    fn cap(&self, index: usize, now: u64, slots: usize) -> usize {
        let mine = u64::from(self.members[index].weight);
        let mut total = mine;
        let mut others = false;
        for (other, member) in self.members.iter().enumerate() {
            if other != index && member.is_active(now) {
                total += u64::from(member.weight);
                others = true;
            }
        }
        if !others {
            return slots;
        }
        let share = (slots as u64 * mine).div_ceil(total);
        usize::try_from(share).unwrap_or(slots).clamp(1, slots)
    }

    /// Whether member `index` may take a free slot now: under its cap, and no waiting member
    /// that could take it has used less CPU for its weight.
    fn may_take(&self, index: usize, now: u64, slots: usize) -> bool {
        if self.free == 0 || self.members[index].holding >= self.cap(index, now, slots) {
            return false;
        }
        let vtime = self.members[index].vtime;
        !self.members.iter().enumerate().any(|(other, member)| {
            other != index
                && !member.waiting.is_empty()
                && member.vtime < vtime
                && member.holding < self.cap(other, now, slots)
        })
    }

    /// Whether member `index`, holding a slot, may keep it for another tick: within its cap,
    /// and no waiting member that could run has used less CPU for its weight.
    fn may_keep(&self, index: usize, now: u64, slots: usize) -> bool {
        if self.members[index].holding > self.cap(index, now, slots) {
            return false;
        }
        let vtime = self.members[index].vtime;
        !self.members.iter().enumerate().any(|(other, member)| {
            other != index
                && !member.waiting.is_empty()
                && member.vtime < vtime
                && member.holding < self.cap(other, now, slots)
        })
    }

    /// Member `index` gives a slot back; free slots go to the waiters that should run next.
    fn release(&mut self, index: usize, now: u64, slots: usize) {
        let member = &mut self.members[index];
        if member.holding > 0 {
            member.holding -= 1;
            self.free += 1;
        }
        self.grant(now, slots);
    }

    /// Hand free slots to waiting guests, the least-served listener first.
    fn grant(&mut self, now: u64, slots: usize) {
        while self.free > 0 {
            let next = (0..self.members.len())
                .filter(|&i| {
                    !self.members[i].waiting.is_empty()
                        && self.members[i].holding < self.cap(i, now, slots)
                })
                .min_by_key(|&i| self.members[i].vtime);
            let Some(index) = next else {
                return;
            };
            let member = &mut self.members[index];
            let Some(waiter) = member.waiting.pop_front() else {
                return;
            };
            member.holding += 1;
            self.free -= 1;
            waiter.granted.store(true, Ordering::Release);
            waiter.waker.wake();
        }
    }

    /// Member `index` starts waiting: a listener back from idleness starts level with the
    /// others, not with the credit of the time it was idle.
    fn enqueue(&mut self, index: usize, waiter: Arc<Waiter>) {
        if self.members[index].is_idle() {
            let floor = self
                .members
                .iter()
                .filter(|m| !m.is_idle())
                .map(|m| m.vtime)
                .min();
            if let Some(floor) = floor {
                let member = &mut self.members[index];
                member.vtime = member.vtime.max(floor);
            }
        }
        self.members[index].waiting.push_back(waiter);
    }
}

/// Waiting for a core slot. Dropped before it is granted, it leaves the queue; dropped after,
/// it gives the slot back.
pub(crate) struct Acquire {
    scheduler: Arc<CpuScheduler>,
    group: Arc<CpuGroup>,
    conn: Arc<ConnCpu>,
    waiter: Option<Arc<Waiter>>,
    done: bool,
}

impl Future for Acquire {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        if let Some(waiter) = &self.waiter {
            waiter.waker.register(cx.waker());
            if waiter.granted.load(Ordering::Acquire) {
                self.done = true;
                self.conn.hold_slot();
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        let scheduler = Arc::clone(&self.scheduler);
        let (now, slots) = (scheduler.clock.now(), scheduler.slots);
        let mut state = scheduler.state();
        let index = state.member(&self.group);
        if state.may_take(index, now, slots) {
            state.members[index].holding += 1;
            state.free -= 1;
            drop(state);
            self.done = true;
            self.conn.hold_slot();
            return Poll::Ready(());
        }
        let waiter = Arc::new(Waiter::default());
        waiter.waker.register(cx.waker());
        state.enqueue(index, Arc::clone(&waiter));
        drop(state);
        self.waiter = Some(waiter);
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if self.done {
            return;
        }
        let scheduler = Arc::clone(&self.scheduler);
        let mut state = scheduler.state();
        let index = state.member(&self.group);
        if waiter.granted.load(Ordering::Acquire) {
            // Granted, never used: the slot goes to the next waiter.
            state.release(index, scheduler.clock.now(), scheduler.slots);
        } else {
            state.members[index]
                .waiting
                .retain(|queued| !Arc::ptr_eq(queued, &waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn scheduler(slots: usize) -> Arc<CpuScheduler> {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        Arc::new(CpuScheduler::new(clock, slots, true))
    }

    /// Poll once with a waker that does nothing.
    fn poll_once(future: &mut Acquire) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    fn holding(scheduler: &CpuScheduler, group: &Arc<CpuGroup>) -> usize {
        let mut state = scheduler.state();
        let index = state.member(group);
        state.members[index].holding
    }

    #[test]
    fn a_listener_alone_may_hold_every_slot() {
        let scheduler = scheduler(2);
        let group = Arc::new(CpuGroup::new(1));
        let mut first = scheduler.acquire(Arc::clone(&group), Arc::default());
        let mut second = scheduler.acquire(Arc::clone(&group), Arc::default());
        let mut third = scheduler.acquire(Arc::clone(&group), Arc::default());
        assert!(poll_once(&mut first).is_ready());
        assert!(poll_once(&mut second).is_ready());
        assert!(poll_once(&mut third).is_pending(), "no slot left");
        scheduler.release(&group);
        assert!(
            poll_once(&mut third).is_ready(),
            "the freed slot is handed on"
        );
    }

    #[test]
    fn an_active_listener_leaves_the_others_their_part_of_the_cores() {
        let scheduler = scheduler(2);
        let spin = Arc::new(CpuGroup::new(1));
        let echo = Arc::new(CpuGroup::new(1));
        scheduler.touch(&echo);
        let mut first = scheduler.acquire(Arc::clone(&spin), Arc::default());
        let mut second = scheduler.acquire(Arc::clone(&spin), Arc::default());
        assert!(poll_once(&mut first).is_ready());
        assert!(
            poll_once(&mut second).is_pending(),
            "equal weights: one core of two while echo is active"
        );
        // Echo idle for longer than the window: the spinning listener may take both.
        for _ in 0..=ACTIVE_WINDOW {
            scheduler.clock.advance();
        }
        scheduler.release(&spin);
        assert!(poll_once(&mut second).is_ready());
        assert_eq!(holding(&scheduler, &spin), 1);
    }

    #[test]
    fn waiting_listeners_take_turns_by_weight() {
        let scheduler = scheduler(1);
        let groups = [Arc::new(CpuGroup::new(3)), Arc::new(CpuGroup::new(1))];
        // One guest of each listener always wants the one core; each turn is a tick.
        let mut first = scheduler.acquire(Arc::clone(&groups[0]), Arc::default());
        assert!(poll_once(&mut first).is_ready());
        let mut waiting = [
            None,
            Some(scheduler.acquire(Arc::clone(&groups[1]), Arc::default())),
        ];
        assert!(
            waiting[1]
                .as_mut()
                .is_some_and(|w| poll_once(w).is_pending())
        );
        let mut running = 0;
        let mut turns = [0u32; 2];
        for _ in 0..400 {
            turns[running] += 1;
            if scheduler.tick(&groups[running], true) {
                continue;
            }
            let mut again = scheduler.acquire(Arc::clone(&groups[running]), Arc::default());
            assert!(
                poll_once(&mut again).is_pending(),
                "the slot went to the other"
            );
            waiting[running] = Some(again);
            running = 1 - running;
            let granted = waiting[running]
                .as_mut()
                .is_some_and(|w| poll_once(w).is_ready());
            assert!(granted, "the other listener's guest was granted the slot");
            waiting[running] = None;
        }
        let light = f64::from(turns[1]) / f64::from(turns[0] + turns[1]);
        assert!((0.2..0.3).contains(&light), "{turns:?}");
    }

    #[test]
    fn a_waiter_dropped_leaves_the_queue_and_a_grant_dropped_is_handed_on() {
        let scheduler = scheduler(1);
        let group = Arc::new(CpuGroup::new(1));
        let mut running = scheduler.acquire(Arc::clone(&group), Arc::default());
        assert!(poll_once(&mut running).is_ready());
        let mut gone = scheduler.acquire(Arc::clone(&group), Arc::default());
        assert!(poll_once(&mut gone).is_pending());
        drop(gone);
        let mut granted_unused = scheduler.acquire(Arc::clone(&group), Arc::default());
        assert!(poll_once(&mut granted_unused).is_pending());
        let mut next = scheduler.acquire(Arc::clone(&group), Arc::default());
        assert!(poll_once(&mut next).is_pending());
        scheduler.release(&group);
        drop(granted_unused);
        assert!(poll_once(&mut next).is_ready(), "the unused grant moved on");
        let state = scheduler.state();
        assert_eq!(state.free + state.members[0].holding, 1, "no slot lost");
    }
}
