//! Shared by the benchmark binaries: summary statistics of samples, and the CPU time a
//! process used.

use std::time::Duration;

mod cpu_time;
pub mod flame;
pub mod latency_plot;

pub use cpu_time::process_cpu;

/// The value at `fraction` (0.0–1.0) of sorted `samples`, nearest rank; `None` when empty.
#[must_use]
pub fn percentile<T: Copy>(sorted: &[T], fraction: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (sorted here), `None` when empty.
#[must_use]
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

/// `a[i] / b[i]` for each round both measured (`b[i]` above zero): ratios of two servers
/// measured side by side, round by round, so that a round on a busy machine slows both.
/// Rounds pair by index: both slices must hold one value per round, in round order.
#[must_use]
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// Microseconds, for tables.
#[must_use]
pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), Some(50));
        assert_eq!(percentile(&samples, 0.99), Some(99));
        assert_eq!(percentile(&samples, 1.0), Some(100));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }

    #[test]
    fn ratios_pair_rounds_in_order() {
        let ratios = paired_ratios(&[10.0, 30.0, 5.0], &[20.0, 30.0, 0.0, 7.0]);
        assert_eq!(ratios, vec![0.5, 1.0]);
    }

    #[test]
    fn median_sorts_first() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    }
}
