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

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// The ticks the runtime's ticker has made, and whether the ticker is parked.
#[derive(Debug)]
pub(crate) struct TickClock {
    ticks: AtomicU64,
    period: Duration,
    /// The tick during which a guest last ran.
    guest_ran_at: AtomicU64,
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
            guest_ran_at: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            ticker: OnceLock::new(),
        }
    }

    /// The ticks so far.
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    /// One more tick (the ticker thread, before it advances the engine's epoch, so that a
    /// guest interrupted by the epoch sees the tick).
    pub(crate) fn advance(&self) {
        self.ticks.fetch_add(1, Ordering::AcqRel);
    }

    /// How long a tick is.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// A guest runs (its call is polled, or it was interrupted): the ticker must tick. Wakes
    /// the ticker if it is parked.
    pub(crate) fn guest_runs(&self) {
        let now = self.now();
        if self.guest_ran_at.load(Ordering::Relaxed) == now {
            return;
        }
        self.guest_ran_at.store(now, Ordering::Relaxed);
        // Against the ticker's fence in `park`: either it sees this run, or this sees it
        // parked.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed)
            && self.parked.swap(false, Ordering::AcqRel)
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

    /// Run the ticker on this thread until [`stop`](Self::stop): sleep a period, advance the
    /// clock, call `on_tick` (which advances the engines' epochs), and park after a period
    /// in which no guest ran.
    pub(crate) fn run_ticker(&self, mut on_tick: impl FnMut()) {
        // The first ticker to run on this clock is the one `guest_runs` wakes.
        let _ = self.ticker.set(thread::current());
        while !self.stopped.load(Ordering::Acquire) {
            thread::sleep(self.period);
            // The clock first: a guest interrupted by the new epoch sees the tick.
            self.advance();
            on_tick();
            // No guest ran during the period that just ended, nor since.
            if self.guest_ran_at.load(Ordering::Relaxed) + 1 < self.now() {
                self.park();
            }
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
        // A guest interrupted at every tick notes it runs each time: the ticks go on (were
        // the test thread descheduled long enough for the ticker to park, its next note
        // wakes it).
        eventually("20 ticks under a running guest", || {
            clock.guest_runs();
            thread::sleep(Duration::from_micros(200));
            epochs.load(Ordering::Relaxed) >= 20
        });
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
