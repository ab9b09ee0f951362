//! Guests' CPU time: what a tick of the [`TickClock`] charges them, and the fair share of the
//! cores between listeners.
//!
//! # What a tick measures
//!
//! The runtime's ticker thread advances a [`TickClock`] (and then the engine's epoch) once per
//! period, 1 ms by default; it parks while no guest runs, and ticks only every few periods
//! while no guest computes across ticks (`wasm::tick_clock`), such a tick standing for the
//! periods since the last one. A running guest is interrupted at the first epoch check after
//! a tick, and charged that tick if the tick fell after the guest last started running: the
//! start of its call, or the moment its call was polled again after any wait (a yield, its
//! turn for a core, a WASI sleep). Ticks fall at times that have nothing to do with the
//! guest, so the ticks a guest is charged are a sample of the CPU it used: a guest that
//! computes 5 ms is charged about 5, however its work is split into calls. Time the guest did
//! not run is not charged:
//!
//! * the process frozen (SIGSTOP, a CPU quota, a stolen vCPU): the ticker thread is frozen
//!   too, so no tick passes;
//! * the call waiting (in the executor's queue, for a core, on a WASI clock): the guest is
//!   marked as starting afresh when its call is polled again;
//! * the thread descheduled while the guest runs: at most one tick per interruption.
//!
//! Reading the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) at the start of every call
//! would be exact, but it is a system call (~180 ns here, BENCHMARKS.md) on every round trip;
//! the tick sample costs an atomic load and a store per call. (The epoch is read by guest code
//! with a plain load: on a weakly ordered CPU a guest could see a new epoch before the new
//! tick, which costs one uncharged interruption and nothing else.)
//!
//! # Fair shares between listeners
//!
//! A guest that runs past its first tick is CPU-bound, and from then on it runs only while it
//! holds one of the [`CpuScheduler`]'s core slots (as many as the executor has worker
//! threads; the machine's parallelism by default). At every tick the scheduler decides, for
//! the guest that ran, whether it keeps its slot:
//!
//! * a free slot goes to the waiting listener that has used the least CPU for its weight
//!   (`cpu_share`), so listeners that all want the CPU get it in proportion to their
//!   weights, however many connections each has; a listener that starts waiting (new, or back
//!   from idleness) starts level with the least-served one, with no credit for idle time;
//! * while other listeners are active (a guest waiting or running, or a call started in the
//!   last [`ACTIVE_WINDOW`] ticks), a listener holds at most its weighted part of the slots,
//!   rounded up, at least one: the rest of the cores stay free for the others' calls, which
//!   then never queue behind a looping guest. An active listener is entitled to its part even
//!   if it does not use it all: beside a listener that serves one short call every few
//!   milliseconds, a looping one keeps to its share of the cores;
//! * while a listener has guests waiting for a slot and another listener is active, its new
//!   calls wait their turn too (their first tick is no longer free), so many short calls
//!   cannot bypass the queue. A listener alone does not queue its new calls: the order of its
//!   own calls is its own affair, and queueing them all (each call a yield, a wait and a
//!   wake-up) made a busy server's calls cost twice the CPU, so that it stayed behind once
//!   it fell behind (BENCHMARKS.md, issue 16);
//! * a listener alone may hold every slot; calls of a listener that is not waiting, and that
//!   finish within a tick, never wait; idle listeners cost nothing.
//!
//! A [`CpuGroup`] belongs to one runtime's scheduler: its activity is measured in that
//! runtime's ticks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::wasm::tick_clock::TickClock;

/// How recently a listener must have started a call to count as active, in ticks.
pub(crate) const ACTIVE_WINDOW: u64 = 10;

/// Virtual time one tick adds to a listener of weight 1 (less for heavier ones).
const VTIME_PER_TICK: u64 = 1 << 24;

/// One listener's claim on the CPU: its weight, and what the scheduler needs to know of it
/// without a lock. Made by each [`Server`](crate::Server) (and by
/// [`serve_stream`](crate::serve_stream) for its one connection); every connection of the
/// listener is charged to it. It belongs to one runtime.
#[derive(Debug)]
pub struct CpuGroup {
    weight: u32,
    /// The tick at which the listener last started a guest call.
    last_active: AtomicU64,
    /// Whether the scheduler knows this group (set once).
    registered: AtomicBool,
    /// Its guests waiting for a slot (kept by the scheduler, read by every call's start).
    waiting: AtomicUsize,
}

impl CpuGroup {
    /// A group of `weight` (at least 1).
    #[must_use]
    pub fn new(weight: u32) -> Self {
        Self {
            weight: weight.max(1),
            last_active: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Its weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether some of its guests wait for a slot: then, while another listener is active,
    /// its new calls wait too.
    pub(crate) fn is_queued(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

/// One connection's CPU state, shared by its store (the epoch callback), the call's poll
/// wrapper and the future that resumes its guest after a yield.
#[derive(Debug)]
pub(crate) struct ConnCpu {
    scheduler: Arc<CpuScheduler>,
    group: Arc<CpuGroup>,
    /// The tick at which the guest last started running: its call polled (started, or again
    /// after a wait).
    running_since: AtomicU64,
    /// Whether the guest holds a core slot.
    holding: AtomicBool,
    /// Whether the call is inside a yield that shoal's epoch callback asked for (as opposed
    /// to a wait of the guest's own, such as a WASI sleep).
    in_yield: AtomicBool,
}

impl ConnCpu {
    /// The CPU state of a new connection of `group`, on `scheduler`.
    pub(crate) fn new(scheduler: Arc<CpuScheduler>, group: Arc<CpuGroup>) -> Self {
        scheduler.register(&group);
        Self {
            scheduler,
            group,
            running_since: AtomicU64::new(0),
            holding: AtomicBool::new(false),
            in_yield: AtomicBool::new(false),
        }
    }

    pub(crate) fn clock(&self) -> &TickClock {
        &self.scheduler.clock
    }

    /// A call starts: its listener is active; returns whether it must wait for a slot before
    /// it runs (its listener's guests are queued, and another listener is active).
    pub(crate) fn start_call(&self) -> bool {
        // The tick the guest starts running at is noted when the call is first polled.
        self.scheduler
            .touch(&self.group, self.scheduler.clock.now());
        self.must_wait_its_turn()
    }

    /// Whether a guest holding no slot waits for one before it runs: its listener's guests
    /// queue for slots while another listener is active. (The lock is taken only while the
    /// listener has guests queued.)
    fn must_wait_its_turn(&self) -> bool {
        self.scheduler.enabled
            && self.group.is_queued()
            && self.scheduler.others_active(&self.group)
    }

    /// The call is polled: the guest runs (again) from now.
    pub(crate) fn polled(&self) {
        let now = self.scheduler.clock.now();
        self.running_since.store(now, Ordering::Release);
        self.scheduler.clock.guest_runs();
    }

    /// The call returned `Pending`. Unless shoal's own yield is in progress, the guest is
    /// waiting on the host (a WASI clock or poll): it gives its core slot back meanwhile.
    pub(crate) fn pending(&self) {
        if !self.in_yield.load(Ordering::Acquire) {
            self.release_slot();
        }
    }

    /// Whether a tick fell since the guest last started running.
    pub(crate) fn ran_a_tick(&self) -> bool {
        self.scheduler.clock.now() != self.running_since.load(Ordering::Acquire)
    }

    /// Charge a tick that stood for `periods` periods to the listener; the guest keeps its
    /// slot or gives it back.
    pub(crate) fn charge_tick(&self, periods: u64) {
        let held = self.holds_slot();
        if !self.scheduler.tick(&self.group, held, periods) && held {
            // The scheduler gave the slot to another guest.
            self.holding.store(false, Ordering::Release);
        }
    }

    /// Whether the guest must stop at an interruption that charged nothing: it holds no slot
    /// and must wait its turn for one.
    pub(crate) fn must_queue(&self) -> bool {
        !self.holds_slot() && self.must_wait_its_turn()
    }

    /// Whether the guest holds a core slot.
    pub(crate) fn holds_slot(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// The guest stopped running: a slot it held goes back to the scheduler.
    pub(crate) fn release_slot(&self) {
        // A load first: most calls never hold a slot, and a swap is a locked instruction.
        if self.holds_slot() && self.holding.swap(false, Ordering::AcqRel) {
            self.scheduler.release(&self.group);
        }
    }

    /// The future the guest awaits at an interruption: let the worker run other tasks, then
    /// (with shares on, and no slot held) wait for a core slot.
    pub(crate) fn yield_point(self: &Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let acquire = (self.scheduler.enabled && !self.holds_slot()).then(|| Acquire {
            conn: Arc::clone(self),
            waiter: None,
            done: false,
        });
        self.in_yield.store(true, Ordering::Release);
        let conn = Arc::clone(self);
        Box::pin(async move {
            tokio::task::yield_now().await;
            if let Some(acquire) = acquire {
                acquire.await;
            }
            conn.in_yield.store(false, Ordering::Release);
            conn.polled();
        })
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

    /// Publish the queue's length for the group's lock-free readers.
    fn publish_waiting(&self) {
        if let Some(group) = self.group.upgrade() {
            group.waiting.store(self.waiting.len(), Ordering::Relaxed);
        }
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

    /// Make `group` known (once per group: a connection checks a flag).
    fn register(&self, group: &Arc<CpuGroup>) {
        if !self.enabled || group.registered.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        state.member(group);
        group.registered.store(true, Ordering::Release);
    }

    /// A call of `group`'s listener starts at tick `now`: it is active.
    fn touch(&self, group: &CpuGroup, now: u64) {
        if self.enabled && group.last_active.load(Ordering::Relaxed) != now {
            group.last_active.store(now, Ordering::Relaxed);
        }
    }

    /// Whether a listener other than `group`'s is active now.
    fn others_active(&self, group: &Arc<CpuGroup>) -> bool {
        let now = self.clock.now();
        let state = self.state();
        state
            .members
            .iter()
            .any(|member| member.group.as_ptr() != Arc::as_ptr(group) && member.is_active(now))
    }

    /// A guest of `group` was charged a tick of `periods` periods: its listener's virtual
    /// time moves on. A guest that held a slot (`held`) keeps it if its listener is within its
    /// cap and no waiting listener has used less for its weight; otherwise the slot goes to
    /// the one that should run next. Returns whether the guest still holds a slot.
    fn tick(&self, group: &Arc<CpuGroup>, held: bool, periods: u64) -> bool {
        if !self.enabled {
            return false;
        }
        let (now, slots) = (self.clock.now(), self.slots);
        let mut state = self.state();
        let index = state.member(group);
        let member = &mut state.members[index];
        member.vtime = member
            .vtime
            .saturating_add(periods.saturating_mul(VTIME_PER_TICK) / u64::from(member.weight));
        let keeps = held && state.may_keep(index, now, slots);
        if held && !keeps {
            state.release(index);
        }
        // Caps move as listeners come and go: hand out what is free now.
        state.grant(now, slots);
        keeps
    }

    /// A guest of `group` that held a slot stopped running.
    fn release(&self, group: &Arc<CpuGroup>) {
        if !self.enabled {
            return;
        }
        let mut state = self.state();
        let index = state.member(group);
        state.release(index);
        state.grant(self.clock.now(), self.slots);
    }
}

impl State {
    /// The index of `group`'s member, registering it on first sight level with the
    /// least-served busy listener.
    fn member(&mut self, group: &Arc<CpuGroup>) -> usize {
        let key = Arc::downgrade(group);
        if let Some(index) = self.members.iter().position(|m| m.group.ptr_eq(&key)) {
            return index;
        }
        // Listeners that are gone and hold nothing are forgotten.
        self.members
            .retain(|m| m.group.strong_count() > 0 || !m.is_idle());
        let vtime = self.busy_floor().unwrap_or(0);
        self.members.push(Member {
            group: key,
            weight: group.weight,
            holding: 0,
            waiting: VecDeque::new(),
            vtime,
        });
        self.members.len() - 1
    }

    /// The least virtual time among listeners that hold or wait for slots.
    fn busy_floor(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| !m.is_idle())
            .map(|m| m.vtime)
            .min()
    }

    /// An idle member about to hold or wait: no credit for the time it was idle.
    fn level(&mut self, index: usize) {
        if self.members[index].is_idle()
            && let Some(floor) = self.busy_floor()
        {
            let member = &mut self.members[index];
            member.vtime = member.vtime.max(floor);
        }
    }

    /// Every member's cap now: all slots for a listener alone among the active ones, else
    /// its weighted part of the slots, rounded up, at least one.
    fn caps(&self, now: u64, slots: usize) -> Vec<usize> {
        let active: Vec<bool> = self.members.iter().map(|m| m.is_active(now)).collect();
        let total: u64 = self
            .members
            .iter()
            .zip(&active)
            .filter(|(_, active)| **active)
            .map(|(m, _)| u64::from(m.weight))
            .sum();
        self.members
            .iter()
            .zip(&active)
            .map(|(member, &active)| {
                let mine = u64::from(member.weight);
                // The others' weight: the active total, less its own if it is counted there.
                let others = total - if active { mine } else { 0 };
                if others == 0 {
                    return slots;
                }
                let share = (slots as u64 * mine).div_ceil(mine + others);
                usize::try_from(share).unwrap_or(slots).clamp(1, slots)
            })
            .collect()
    }

    /// Whether a waiting member other than `index`, under its cap, has less virtual time.
    fn anyone_before(&self, index: usize, caps: &[usize]) -> bool {
        let vtime = self.members[index].vtime;
        self.members.iter().enumerate().any(|(other, member)| {
            other != index
                && !member.waiting.is_empty()
                && member.vtime < vtime
                && member.holding < caps[other]
        })
    }

    /// Whether member `index`, holding a slot, may keep it for another tick.
    fn may_keep(&self, index: usize, now: u64, slots: usize) -> bool {
        let caps = self.caps(now, slots);
        self.members[index].holding <= caps[index] && !self.anyone_before(index, &caps)
    }

    /// Whether member `index` may take a free slot now.
    fn may_take(&self, index: usize, now: u64, slots: usize) -> bool {
        if self.free == 0 {
            return false;
        }
        let caps = self.caps(now, slots);
        self.members[index].holding < caps[index] && !self.anyone_before(index, &caps)
    }

    /// Member `index` gives a slot back.
    fn release(&mut self, index: usize) {
        let member = &mut self.members[index];
        if member.holding > 0 {
            member.holding -= 1;
            self.free += 1;
        }
    }

    /// Hand free slots to waiting guests, the least-served listener first.
    fn grant(&mut self, now: u64, slots: usize) {
        while self.free > 0 {
            let caps = self.caps(now, slots);
            let next = (0..self.members.len())
                .filter(|&i| {
                    !self.members[i].waiting.is_empty() && self.members[i].holding < caps[i]
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
            member.publish_waiting();
            self.free -= 1;
            waiter.granted.store(true, Ordering::Release);
            waiter.waker.wake();
        }
    }
}

/// Waiting for a core slot. Dropped before it is granted, it leaves the queue; dropped after,
/// it hands the slot on.
struct Acquire {
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
                self.conn.holding.store(true, Ordering::Release);
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        let conn = Arc::clone(&self.conn);
        let scheduler = &conn.scheduler;
        let (now, slots) = (scheduler.clock.now(), scheduler.slots);
        let mut state = scheduler.state();
        let index = state.member(&conn.group);
        state.level(index);
        if state.may_take(index, now, slots) {
            state.members[index].holding += 1;
            state.free -= 1;
            drop(state);
            self.done = true;
            conn.holding.store(true, Ordering::Release);
            return Poll::Ready(());
        }
        let waiter = Arc::new(Waiter::default());
        waiter.waker.register(cx.waker());
        let member = &mut state.members[index];
        member.waiting.push_back(Arc::clone(&waiter));
        member.publish_waiting();
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
        let scheduler = &self.conn.scheduler;
        let mut state = scheduler.state();
        let index = state.member(&self.conn.group);
        if waiter.granted.load(Ordering::Acquire) {
            // Granted, never used: the slot goes to the next waiter.
            state.release(index);
        } else {
            let member = &mut state.members[index];
            member
                .waiting
                .retain(|queued| !Arc::ptr_eq(queued, &waiter));
            member.publish_waiting();
        }
        state.grant(scheduler.clock.now(), scheduler.slots);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use std::time::Duration;

    fn scheduler(slots: usize) -> Arc<CpuScheduler> {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        Arc::new(CpuScheduler::new(clock, slots, true))
    }

    /// A connection of `group` that will want a slot.
    fn conn(scheduler: &Arc<CpuScheduler>, group: &Arc<CpuGroup>) -> Arc<ConnCpu> {
        Arc::new(ConnCpu::new(Arc::clone(scheduler), Arc::clone(group)))
    }

    fn acquire(conn: &Arc<ConnCpu>) -> Acquire {
        Acquire {
            conn: Arc::clone(conn),
            waiter: None,
            done: false,
        }
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

    fn slots_accounted(scheduler: &CpuScheduler) -> usize {
        let state = scheduler.state();
        state.free + state.members.iter().map(|m| m.holding).sum::<usize>()
    }

    #[test]
    fn a_listener_alone_may_hold_every_slot() {
        let scheduler = scheduler(2);
        let group = Arc::new(CpuGroup::new(1));
        let conns: Vec<_> = (0..3).map(|_| conn(&scheduler, &group)).collect();
        let mut first = acquire(&conns[0]);
        let mut second = acquire(&conns[1]);
        let mut third = acquire(&conns[2]);
        assert!(poll_once(&mut first).is_ready());
        assert!(poll_once(&mut second).is_ready());
        assert!(poll_once(&mut third).is_pending(), "no slot left");
        assert!(group.is_queued());
        assert!(
            !conns[0].start_call() && !conns[0].must_queue(),
            "alone, its new calls do not queue behind its own guests"
        );
        conns[0].release_slot();
        assert!(
            poll_once(&mut third).is_ready(),
            "the freed slot is handed on"
        );
        assert!(!group.is_queued());
        assert_eq!(slots_accounted(&scheduler), 2);
    }

    #[test]
    fn an_active_listener_leaves_the_others_their_part_of_the_cores() {
        let scheduler = scheduler(2);
        let spin = Arc::new(CpuGroup::new(1));
        let echo = Arc::new(CpuGroup::new(1));
        let echo_conn = conn(&scheduler, &echo);
        assert!(
            !echo_conn.start_call(),
            "a call of an unqueued listener runs at once"
        );
        let spinners = [conn(&scheduler, &spin), conn(&scheduler, &spin)];
        let mut first = acquire(&spinners[0]);
        let mut second = acquire(&spinners[1]);
        assert!(poll_once(&mut first).is_ready());
        assert!(
            poll_once(&mut second).is_pending(),
            "equal weights: one core of two while echo is active"
        );
        // Echo idle for longer than the window: at the running spinner's next tick, the
        // waiting one gets the second core.
        for _ in 0..=ACTIVE_WINDOW {
            scheduler.clock.advance(1);
        }
        spinners[0].charge_tick(1);
        assert!(poll_once(&mut second).is_ready());
        assert_eq!(holding(&scheduler, &spin), 2);
        assert_eq!(slots_accounted(&scheduler), 2);
    }

    #[test]
    fn a_queued_listener_queues_its_new_calls_only_while_another_is_active() {
        let scheduler = scheduler(1);
        let busy = Arc::new(CpuGroup::new(1));
        let other = Arc::new(CpuGroup::new(1));
        let conns: Vec<_> = (0..3).map(|_| conn(&scheduler, &busy)).collect();
        let other_conn = conn(&scheduler, &other);
        // Both registered at tick 0: let that activity pass.
        for _ in 0..=ACTIVE_WINDOW {
            scheduler.clock.advance(1);
        }
        let mut running = acquire(&conns[0]);
        assert!(poll_once(&mut running).is_ready());
        let mut waiting = acquire(&conns[1]);
        assert!(poll_once(&mut waiting).is_pending());
        assert!(
            !conns[2].start_call(),
            "alone: a new call runs its first tick free"
        );
        assert!(!other_conn.start_call(), "the other listener is not queued");
        assert!(
            conns[2].start_call() && conns[2].must_queue(),
            "with another listener active, a new call waits its turn"
        );
        conns[0].release_slot();
        assert!(poll_once(&mut waiting).is_ready());
        assert!(!conns[2].start_call(), "nobody waits any more");
    }

    #[test]
    fn waiting_listeners_take_turns_by_weight() {
        let scheduler = scheduler(1);
        let groups = [Arc::new(CpuGroup::new(3)), Arc::new(CpuGroup::new(1))];
        let conns = [conn(&scheduler, &groups[0]), conn(&scheduler, &groups[1])];
        // One guest of each listener always wants the one core; each turn is a tick.
        let mut first = acquire(&conns[0]);
        assert!(poll_once(&mut first).is_ready());
        let mut waiting = [None, Some(acquire(&conns[1]))];
        assert!(
            waiting[1]
                .as_mut()
                .is_some_and(|w| poll_once(w).is_pending())
        );
        let mut running = 0;
        let mut turns = [0u32; 2];
        for _ in 0..400 {
            turns[running] += 1;
            conns[running].charge_tick(1);
            if conns[running].holds_slot() {
                continue;
            }
            let mut again = acquire(&conns[running]);
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
    fn a_newcomer_gets_no_credit_for_the_time_before_it_came() {
        let scheduler = scheduler(1);
        let old = Arc::new(CpuGroup::new(1));
        let old_conn = conn(&scheduler, &old);
        let mut running = acquire(&old_conn);
        assert!(poll_once(&mut running).is_ready());
        for _ in 0..100 {
            old_conn.charge_tick(1);
        }
        let new = Arc::new(CpuGroup::new(1));
        let new_conn = conn(&scheduler, &new);
        let state = scheduler.state();
        let vtimes: Vec<u64> = state.members.iter().map(|m| m.vtime).collect();
        assert_eq!(vtimes[0], vtimes[1], "level with the busy listener");
        drop(state);
        drop(new_conn);
    }

    #[test]
    fn a_waiter_dropped_leaves_the_queue_and_a_grant_dropped_is_handed_on() {
        let scheduler = scheduler(1);
        let group = Arc::new(CpuGroup::new(1));
        let conns: Vec<_> = (0..4).map(|_| conn(&scheduler, &group)).collect();
        let mut running = acquire(&conns[0]);
        assert!(poll_once(&mut running).is_ready());
        let mut gone = acquire(&conns[1]);
        assert!(poll_once(&mut gone).is_pending());
        drop(gone);
        let mut granted_unused = acquire(&conns[2]);
        assert!(poll_once(&mut granted_unused).is_pending());
        let mut next = acquire(&conns[3]);
        assert!(poll_once(&mut next).is_pending());
        conns[0].release_slot();
        drop(granted_unused);
        assert!(poll_once(&mut next).is_ready(), "the unused grant moved on");
        assert_eq!(slots_accounted(&scheduler), 1, "no slot lost");
        conns[3].release_slot();
        assert!(!group.is_queued());
        assert_eq!(scheduler.state().free, 1);
    }

    #[test]
    fn a_guest_waiting_on_the_host_gives_its_slot_back() {
        let scheduler = scheduler(1);
        let group = Arc::new(CpuGroup::new(1));
        let sleeper = conn(&scheduler, &group);
        let mut running = acquire(&sleeper);
        assert!(poll_once(&mut running).is_ready());
        // The call returned Pending outside shoal's yield: a WASI sleep, say.
        sleeper.pending();
        assert!(!sleeper.holds_slot());
        assert_eq!(scheduler.state().free, 1);
        // Polled again, it starts afresh: the ticks of its sleep are not its own.
        scheduler.clock.advance(1);
        sleeper.polled();
        assert!(!sleeper.ran_a_tick());
    }
}
