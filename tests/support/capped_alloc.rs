//! A global allocator for test binaries that evaluate hostile queries: the system allocator, but
//! an allocation that would take the binary's live heap past [`CAP_BYTES`] fails (and Rust
//! aborts the binary), so a regression in the evaluator's accounting fails the test instead of
//! exhausting the test machine's memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap the test binary may hold.
pub const CAP_BYTES: usize = 2 << 30;

pub struct Capped;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Live heap bytes of the whole binary right now.
#[allow(dead_code)]
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The highest live heap since the last call, which starts a new watch from the current value.
#[allow(dead_code)]
pub fn take_peak() -> usize {
    PEAK.swap(LIVE.load(Ordering::Relaxed), Ordering::Relaxed)
}

fn reserve(size: usize) -> bool {
    let before = LIVE.fetch_add(size, Ordering::Relaxed);
    let after = before.saturating_add(size);
    if after > CAP_BYTES {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    PEAK.fetch_max(after, Ordering::Relaxed);
    true
}

// SAFETY: every call forwards to `System` with the caller's layout; the counter only decides
// whether to forward an allocation at all.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}
