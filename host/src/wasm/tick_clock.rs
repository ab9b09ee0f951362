//! The tick clock that samples guests' CPU time, and the ticker thread that advances it.
//!
//! The ticker advances the clock once per period (1 ms by default) and then the engines'
//! epochs, which interrupts a running guest (`wasm::cpu` says what a tick charges). A tick
//! only matters while a guest runs, so the ticker **parks once a whole period has passed
//! with no guest running**: an idle server's ticker costs nothing, instead of a thousand
//! wake-ups a second (26 ms of CPU a second on the benchmark VM, BENCHMARKS.md). The first
//! guest to run again wakes it; its first tick then falls a period later, as it would have.
//!
//! A guest counts as running when its call (or its instantiation) is polled, and at every
//! epoch interruption: a guest that computes without ever returning is interrupted at
//! every tick, which keeps the ticker awake. Noting it costs a load of the clock's cache line
//! (which the call reads for the tick anyway) and, once per tick, a store.
//!
//! While parked the clock stands still; when woken it jumps by the periods it slept, without
//! an epoch change, so that "active in the last ticks" (the fair shares' windows) still
//! counts real time. A guest running at the jump is charged only at the next real tick, as
//! any guest a tick falls on.
//!
//! # Sparse ticks while no guest computes
//!
//! A busy server runs guests in every period, but almost all of its calls end well within one:
//! a tick then rarely falls on a running guest, yet each costs a wake-up (a timer, a context
//! switch, on a VM an exit from the idle vCPU). So the ticker ticks **every
//! [`SPARSE_STEP`] periods while no guest computes across ticks**, and every period while one
//! does: a guest interrupted at a tick (it was running when the tick fell) wakes the ticker,
//! whose next tick then falls one period after the last. A sparse tick stands for the
//! periods since the last one ([`TickClock::last_step`]): the clock moves by that many, and a
//! guest it falls on is charged that many, so the sample stays unbiased. A guest that starts
//! computing is first interrupted at most `SPARSE_STEP` periods after it started instead of
//! one, and every period from then on.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How many periods apart the ticker's ticks fall while no guest computes across ticks.
pub(crate) const SPARSE_STEP: u64 = 4;

/// The ticks the runtime's ticker has made, and whether the ticker is parked.
#[derive(Debug)]
pub(crate) struct TickClock {
    ticks: AtomicU64,
    period: Duration,
    /// The periods the last tick stood for: 1, or [`SPARSE_STEP`].
    last_step: AtomicU64,
    /// The tick during which a guest last ran.
    guest_ran_at: AtomicU64,
    /// The tick after which a guest was last interrupted: it was running when the tick fell.
    interrupted_at: AtomicU64,
    /// Whether the ticker sleeps towards a sparse tick (an interrupted guest then wakes it).
    sparse: AtomicBool,
    /// Whether the ticker is parked (or deciding to park).
    parked: AtomicBool,
    /// Whether the ticker must end.
    stopped: AtomicBool,
    /// The ticker's thread, once it runs.
    ticker: OnceLock<Thread>,
}

impl TickClock {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            ticks: AtomicU64::new(0),
            period,
            last_step: AtomicU64::new(1),
            guest_ran_at: AtomicU64::new(0),
            interrupted_at: AtomicU64::new(0),
            sparse: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            ticker: OnceLock::new(),
        }
    }

    /// The ticks so far.
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    /// One more tick, standing for `step` periods (the ticker thread, before it advances the
    /// engine's epoch, so that a guest interrupted by the epoch sees the tick).
    pub(crate) fn advance(&self, step: u64) {
        self.last_step.store(step, Ordering::Release);
        self.ticks.fetch_add(step, Ordering::AcqRel);
    }

    /// How long a period is: what a tick of one period charges.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// The periods the last tick stood for: what it charges the guest it fell on.
    pub(crate) fn last_step(&self) -> u64 {
        self.last_step.load(Ordering::Acquire)
    }

    /// How long a tick of `step` periods stands for.
    pub(crate) fn span(&self, step: u64) -> Duration {
        self.period
            .saturating_mul(u32::try_from(step).unwrap_or(u32::MAX))
    }

    /// A guest was interrupted by a tick: it computes across ticks, so the ticker must tick
    /// every period. Wakes a ticker that sleeps towards a sparse tick, and counts as the
    /// guest running ([`guest_runs`](Self::guest_runs)).
    pub(crate) fn guest_interrupted(&self) {
        self.guest_runs();
        // Against the ticker's fence in `sleep_to_next_tick`.
        self.note_and_wake(&self.interrupted_at, &self.sparse);
    }

    /// A guest runs (its call is polled, or it was interrupted): the ticker must tick. Wakes
    /// the ticker if it is parked.
    pub(crate) fn guest_runs(&self) {
        // Against the ticker's fence in `park`.
        self.note_and_wake(&self.guest_ran_at, &self.parked);
    }

    /// Note the current tick in `noted_at` (once per tick: a load, and a store when it
    /// changes), and wake the ticker if it was `asleep`: the ticker sets `asleep`, fences, then
    /// reads `noted_at`, so that either it sees the note or this sees it asleep.
    fn note_and_wake(&self, noted_at: &AtomicU64, asleep: &AtomicBool) {
        let now = self.now();
        if noted_at.load(Ordering::Relaxed) == now {
            return;
        }
        noted_at.store(now, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if asleep.load(Ordering::Relaxed)
            && asleep.swap(false, Ordering::AcqRel)
            && let Some(ticker) = self.ticker.get()
        {
            ticker.unpark();
        }
    }

    /// Whether the ticker is parked.
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    /// Run the ticker on this thread until [`stop`](Self::stop): sleep until the next tick
    /// (one period, or [`SPARSE_STEP`] while no guest computes across ticks), advance the
    /// clock, call `on_tick` (which advances the engines' epochs), and park after a tick in
    /// whose periods no guest ran.
    pub(crate) fn run_ticker(&self, mut on_tick: impl FnMut()) {
        // The first ticker to run on this clock is the one `guest_runs` wakes.
        let _ = self.ticker.set(thread::current());
        let mut last_tick = Instant::now();
        while let Some(step) = self.sleep_to_next_tick(last_tick) {
            last_tick = Instant::now();
            // The clock first: a guest interrupted by the new epoch sees the tick.
            self.advance(step);
            on_tick();
            // No guest ran during the periods that just ended, nor since.
            if self.guest_ran_at.load(Ordering::Relaxed) + step < self.now() {
                self.park();
                last_tick = Instant::now();
            }
        }
    }

    /// Sleep until the next tick is due: one period after `last_tick` while a guest computes
    /// across ticks (one was interrupted at the last tick or since), else [`SPARSE_STEP`]
    /// periods after it, cut short if a guest is interrupted meanwhile. Returns the periods
    /// the tick stands for, or `None` once the ticker is stopped.
    fn sleep_to_next_tick(&self, last_tick: Instant) -> Option<u64> {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return None;
            }
            self.sparse.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let computing =
                self.interrupted_at.load(Ordering::Relaxed) + self.last_step() >= self.now();
            let step = if computing {
                self.sparse.store(false, Ordering::Relaxed);
                1
            } else {
                SPARSE_STEP
            };
            let due = last_tick + self.span(step);
            let now = Instant::now();
            if now >= due {
                self.sparse.store(false, Ordering::Relaxed);
                return Some(step);
            }
            // Woken early by an interrupted guest (or a stray unpark): decide again.
            thread::park_timeout(due - now);
        }
    }

    /// Park until a guest runs (or the ticker is stopped), then move the clock on by the
    /// periods parked.
    fn park(&self) {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.guest_ran_at.load(Ordering::Relaxed) + 1 >= self.now() {
            // A guest began to run meanwhile (and may have seen `parked`: then it has
            // cleared it, and the ticker's next park returns at once).
            self.parked.store(false, Ordering::Relaxed);
            return;
        }
        let parked_at = Instant::now();
        while self.parked.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire) {
            thread::park();
        }
        let slept = parked_at.elapsed().as_nanos() / self.period.as_nanos().max(1);
        // (A park longer than `u64::MAX` periods cannot happen; the fallback only keeps the
        // addition from wrapping.)
        self.ticks.fetch_add(
            u64::try_from(slept).unwrap_or(u64::MAX / 2),
            Ordering::AcqRel,
        );
    }

    /// End the ticker (at its next wake-up, or now if it is parked).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(ticker) = self.ticker.get() {
            ticker.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Wait until `done`, for at most 5 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: still not after 5 s");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn start(clock: &Arc<TickClock>, epochs: &Arc<AtomicUsize>) -> thread::JoinHandle<()> {
        let (clock, epochs) = (Arc::clone(clock), Arc::clone(epochs));
        thread::spawn(move || {
            clock.run_ticker(|| {
                epochs.fetch_add(1, Ordering::Relaxed);
            });
        })
    }

    #[test]
    fn an_idle_ticker_parks_and_a_guest_that_runs_wakes_it() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        let epochs = Arc::new(AtomicUsize::new(0));
        let ticker = start(&clock, &epochs);
        eventually("parked with no guest running", || clock.is_parked());
        let parked_epochs = epochs.load(Ordering::Relaxed);
        let parked_ticks = clock.now();
        thread::sleep(Duration::from_millis(30));
        assert_eq!(
            epochs.load(Ordering::Relaxed),
            parked_epochs,
            "ticked while parked"
        );
        assert_eq!(clock.now(), parked_ticks, "the clock moved while parked");

        clock.guest_runs();
        eventually("ticking again for a guest", || {
            epochs.load(Ordering::Relaxed) > parked_epochs
        });
        // The clock caught up with the time parked, without an epoch per period.
        assert!(
            clock.now() >= parked_ticks + 30,
            "{} ticks after a 30 ms park from {parked_ticks}",
            clock.now()
        );
        clock.stop();
        ticker.join().expect("the ticker ends when stopped");
    }

    #[test]
    fn a_guest_that_keeps_running_keeps_the_ticker_awake() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        let epochs = Arc::new(AtomicUsize::new(0));
        let ticker = start(&clock, &epochs);
        // Guests that keep running note it at every poll: the ticks go on, sparse (were the
        // test thread descheduled long enough for the ticker to park, its next note wakes
        // it).
        eventually("20 ticks under a running guest", || {
            clock.guest_runs();
            thread::sleep(Duration::from_micros(200));
            epochs.load(Ordering::Relaxed) >= 20
        });
        clock.stop();
        ticker.join().expect("the ticker ends when stopped");
    }

    #[test]
    fn ticks_are_sparse_while_guests_run_without_computing_and_dense_while_one_computes() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        let epochs = Arc::new(AtomicUsize::new(0));
        let ticker = start(&clock, &epochs);
        // Short calls start all the time, and no tick falls on one.
        eventually("a sparse tick under short calls", || {
            clock.guest_runs();
            thread::sleep(Duration::from_micros(200));
            clock.last_step() == SPARSE_STEP
        });
        let (ticks, epochs_then) = (clock.now(), epochs.load(Ordering::Relaxed));
        eventually("three more sparse ticks", || {
            clock.guest_runs();
            thread::sleep(Duration::from_micros(200));
            epochs.load(Ordering::Relaxed) >= epochs_then + 3
        });
        // Each sparse tick moved the clock by the periods it stands for (a tick of one period
        // may have come between, were this thread descheduled long enough).
        assert!(
            clock.now() - ticks >= 3 * SPARSE_STEP - 2,
            "{} ticks for 3 epochs",
            clock.now() - ticks
        );

        // A guest interrupted at every tick: the ticks fall every period again.
        eventually("a tick of one period for a computing guest", || {
            clock.guest_interrupted();
            thread::sleep(Duration::from_micros(200));
            clock.last_step() == 1
        });
        let (ticks, epochs_then) = (clock.now(), epochs.load(Ordering::Relaxed));
        eventually("ten more ticks", || {
            clock.guest_interrupted();
            thread::sleep(Duration::from_micros(200));
            epochs.load(Ordering::Relaxed) >= epochs_then + 10
        });
        assert!(
            clock.now() - ticks < 10 * SPARSE_STEP,
            "{} periods for 10 ticks of a computing guest: they stayed sparse",
            clock.now() - ticks
        );
        clock.stop();
        ticker.join().expect("the ticker ends when stopped");
    }

    #[test]
    fn an_interruption_cuts_a_sparse_sleep_short() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(50)));
        let epochs = Arc::new(AtomicUsize::new(0));
        let ticker = start(&clock, &epochs);
        eventually("a sparse tick", || {
            clock.guest_runs();
            thread::sleep(Duration::from_millis(5));
            clock.last_step() == SPARSE_STEP
        });
        // Right after a tick, the ticker sleeps towards the next sparse one, 200 ms away.
        let epochs_then = epochs.load(Ordering::Relaxed);
        eventually("the next tick", || {
            epochs.load(Ordering::Relaxed) > epochs_then
        });
        let interrupted = Instant::now();
        clock.guest_interrupted();
        let epochs_then = epochs.load(Ordering::Relaxed);
        eventually("a tick after the interruption", || {
            epochs.load(Ordering::Relaxed) > epochs_then
        });
        // One period (50 ms) after the last tick, not four: with a margin for a slow machine.
        assert!(
            interrupted.elapsed() < Duration::from_millis(150),
            "the tick after an interruption came {:?} later",
            interrupted.elapsed()
        );
        assert_eq!(clock.last_step(), 1);
        clock.stop();
        ticker.join().expect("the ticker ends when stopped");
    }

    #[test]
    fn a_parked_ticker_ends_when_stopped() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(1)));
        let ticker = start(&clock, &Arc::new(AtomicUsize::new(0)));
        eventually("parked", || clock.is_parked());
        clock.stop();
        ticker.join().expect("the ticker ends when stopped");
    }
}
