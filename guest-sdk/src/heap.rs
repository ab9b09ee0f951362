//! The plugin's heap: Rust's own allocator (dlmalloc), fed first from the unused end of the
//! initial linear memory instead of from `memory.grow`.
//!
//! On `wasm32-unknown-unknown`, std's allocator takes every chunk of heap from `memory.grow`,
//! so the first allocation of every instance (the strings `init` receives) grows the memory by
//! a 64 KiB page while the end of the initial memory, past the data segments, is never used.
//! For a host that runs an instance per connection that growth is paid on every connection:
//! the host makes the new page accessible (`mprotect`), takes a page fault on it, and when the
//! instance ends protects it again. Serving the first chunk from `__heap_base` up to the end
//! of the initial memory avoids all three, and the heap's first bytes share a page with the
//! data segments, so a small plugin touches one page less.
//!
//! dlmalloc asks for 64 KiB at a time; link with `--initial-memory` leaving at least that much
//! past the data segments (`plugins/.cargo/config.toml` does) or the first request still grows
//! the memory — by the part that does not fit, contiguously, so the heap stays one segment.
//!
//! Switched on by the default `heap` feature, on `wasm32-unknown-unknown` without the atomics
//! feature only (`wasm32-wasip2` builds use wasi-libc's allocator, which already starts at
//! `__heap_base`). A plugin with its own `#[global_allocator]` turns the feature off. The
//! link flag makes the initial memory exactly three pages: a plugin whose stack and data need
//! more fails to link ("initial memory too small") and should raise it.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::{Cell, UnsafeCell};
use core::ptr;

use dlmalloc::{Allocator, Dlmalloc};

const PAGE: usize = 64 * 1024;

unsafe extern "C" {
    /// Where the linker put the end of the data segments and stack: the heap may start here.
    static __heap_base: u8;
}

/// dlmalloc's source of memory: the rest of the initial memory once, then `memory.grow`.
struct InitialMemoryFirst {
    tail_taken: Cell<bool>,
}

impl InitialMemoryFirst {
    /// Grow the memory by enough pages for `size` bytes; the new region's start, or `None`.
    fn grow(size: usize) -> Option<(usize, usize)> {
        let pages = size.div_ceil(PAGE);
        let previous = wasm32::memory_grow(0, pages);
        (previous != usize::MAX).then(|| (previous * PAGE, pages * PAGE))
    }

    /// The first request: `[__heap_base, end of memory)`, grown contiguously if it is short.
    /// Nothing grows the memory before the first allocation (this allocator is the only
    /// caller of `memory.grow` in a Rust plugin), so the end of memory is the initial end.
    fn tail(size: usize) -> Option<(usize, usize)> {
        let start = (&raw const __heap_base).addr().next_multiple_of(16);
        let end = wasm32::memory_size(0) * PAGE;
        let available = end.checked_sub(start)?;
        if available >= size {
            return Some((start, available));
        }
        let (grown_start, grown) = Self::grow(size - available)?;
        (grown_start == end).then_some((start, available + grown))
    }
}

// SAFETY: `alloc` returns regions that are in bounds of the linear memory, owned by nobody
// else (past every data segment and the stack, or freshly grown) and zeroed (a fresh instance's
// memory past its data segments is zero, as is grown memory).
unsafe impl Allocator for InitialMemoryFirst {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let region = if self.tail_taken.replace(true) {
            Self::grow(size)
        } else {
            Self::tail(size).or_else(|| Self::grow(size))
        };
        match region {
            Some((start, len)) => (ptr::with_exposed_provenance_mut(start), len, 0),
            None => (ptr::null_mut(), 0, 0),
        }
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// The global allocator: one dlmalloc per instance.
struct Heap(UnsafeCell<Dlmalloc<InitialMemoryFirst>>);

// SAFETY: the module is built only without the atomics feature: an instance has one thread,
// so the allocator is never entered concurrently.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(Dlmalloc::new_with_allocator(
    InitialMemoryFirst {
        tail_taken: Cell::new(false),
    },
)));

// SAFETY: every method forwards to dlmalloc, whose functions have `GlobalAlloc`'s contracts;
// the single-threaded instance gives each call exclusive access to it.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
