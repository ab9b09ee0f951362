//! Byte buffers lent to connections: for one read and the `handle` call it feeds, and for
//! the output of a call until it is written.
//!
//! A connection needs a read buffer only from the moment its socket is readable until the
//! guest has copied the bytes into its own memory, and an output buffer only from its
//! guest's first `send` until the write. Lending buffers from a small per-thread pool,
//! instead of giving every connection its own, keeps an idle connection from holding a
//! touched buffer page (with 10,000 idle connections that is 40 MiB less), and lends a busy
//! server's connections the few buffers its thread used last, still in the cache.

use std::cell::RefCell;

/// Buffers kept per thread; more are freed when given back. A thread runs one `handle` call
/// at a time, but calls that yield (epoch ticks, waits) can hold a few buffers at once.
const KEPT_PER_THREAD: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes.
pub(crate) fn take(capacity: usize) -> Vec<u8> {
    let mut buffer = POOL
        .try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    buffer.reserve(capacity);
    buffer
}

/// Return a buffer for another read or call.
pub(crate) fn give_back(mut buffer: Vec<u8>) {
    buffer.clear();
    // During thread teardown the pool may be gone; the buffer is then simply freed.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEPT_PER_THREAD {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_lent_again_empty() {
        let mut buffer = take(1024);
        buffer.extend_from_slice(b"hello");
        let address = buffer.as_ptr();
        give_back(buffer);
        let again = take(1024);
        assert!(again.is_empty());
        assert!(again.capacity() >= 1024);
        assert_eq!(again.as_ptr(), address);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let lent: Vec<_> = (0..KEPT_PER_THREAD + 4).map(|_| take(16)).collect();
        lent.into_iter().for_each(give_back);
        let kept = POOL.with(|pool| pool.borrow().len());
        assert_eq!(kept, KEPT_PER_THREAD);
    }

    #[test]
    fn a_small_pooled_buffer_grows_to_the_size_asked_for() {
        give_back(Vec::with_capacity(8));
        assert!(take(4096).capacity() >= 4096);
    }
}
