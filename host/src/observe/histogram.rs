//! A histogram of durations with fixed buckets, observed with two relaxed atomic additions
//! and no lock: what the metrics page shows of guest calls and instantiations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether guest calls and instantiations are timed: from when a metrics endpoint starts
/// (two clock reads per call that nobody would read otherwise).
static TIMING: AtomicBool = AtomicBool::new(false);

/// Time guest calls and instantiations from now on, in every listener of the process.
pub(crate) fn start_timing() {
    TIMING.store(true, Ordering::Relaxed);
}

/// The start of something to time, if timing is on.
pub(crate) fn started() -> Option<Instant> {
    TIMING.load(Ordering::Relaxed).then(Instant::now)
}

/// Bucket upper bounds in seconds: 1 µs to 10 s, at 1, 2.5 and 5 per decade.
pub(crate) const BOUNDS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds.
const BOUNDS_NANOS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Counts of durations by bucket, and their sum.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    /// One per bound, then one for longer durations.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// What a [`DurationHistogram`] held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Each bound (seconds) with the observations at most it and above the previous one.
    pub(crate) buckets: Vec<(f64, u64)>,
    /// Observations above the last bound.
    pub(crate) overflow: u64,
    /// Their sum, in seconds.
    pub(crate) sum: f64,
}

impl DurationHistogram {
    pub(crate) fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let index = BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            buckets: BOUNDS.iter().copied().zip(counts.iter().copied()).collect(),
            overflow: counts[BOUNDS.len()],
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        let histogram = DurationHistogram::default();
        histogram.observe(Duration::from_nanos(1_000));
        histogram.observe(Duration::from_micros(7));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets[0], (1e-6, 1));
        assert_eq!(snapshot.buckets[2], (5e-6, 0));
        assert_eq!(snapshot.buckets[3], (1e-5, 1));
        assert_eq!(snapshot.overflow, 1);
        assert!((snapshot.sum - 60.000_008).abs() < 1e-9);
        assert!(
            BOUNDS
                .iter()
                .zip(BOUNDS_NANOS)
                .all(|(s, n)| (s * 1e9).round() as u64 == n)
        );
    }
}
