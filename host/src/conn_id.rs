//! Connection ids: one counter for the whole process, so an id names one connection across
//! every listener and is never reused while the process lives.

use std::sync::atomic::{AtomicU64, Ordering};

/// The next id to hand out. Ids start at 1: 0 is the host program itself as a sender of
/// messages (`FROM_HOST`).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id.
pub(crate) fn next() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_zero_and_never_repeat() {
        let first = next();
        let second = next();
        assert!(first >= 1);
        assert!(second > first);
    }
}
