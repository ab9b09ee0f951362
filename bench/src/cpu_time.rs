//! CPU time a process has used, read from `/proc`: what a server spends per operation at a
//! fixed offered load, whatever the load generator does.

use std::time::Duration;

/// CPU time used so far by every live thread of process `pid`: the sum of the first field
/// of each `/proc/PID/task/TID/schedstat` (nanoseconds on a CPU, as the scheduler counts
/// it: time descheduled is not in it). Threads that ended are not counted: sample a
/// process whose threads live through the window (a tokio runtime's do).
///
/// # Errors
///
/// The process is gone, or `/proc` is not readable.
pub fn process_cpu(pid: u32) -> std::io::Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += parse_schedstat(&text).unwrap_or(0);
    }
    Ok(Duration::from_nanos(total))
}

/// The nanoseconds on a CPU in a `schedstat` line (`run_ns wait_ns timeslices`).
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_its_first_field() {
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123_456));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn this_process_has_used_cpu_and_uses_more() -> std::io::Result<()> {
        let before = process_cpu(std::process::id())?;
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = process_cpu(std::process::id())?;
        assert!(after > before, "{before:?} then {after:?}");
        Ok(())
    }
}
