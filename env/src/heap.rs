//! A global allocator that counts live heap bytes and refuses to go past a cap, for the tests
//! that read hostile inputs (the committed fuzz findings): a reader that trusts a size declared
//! in a corrupt file and allocates it up front makes the test binary abort ("memory allocation
//! of N bytes failed") instead of passing on a machine with memory to spare, and [`Capped::peak`]
//! lets a test assert how much a read really needed.
//!
//! ```
//! // In a test crate: #[global_allocator] static HEAP: logo_env::heap::Capped = logo_env::heap::Capped::new(1 << 30);
//! let heap = logo_env::heap::Capped::new(1 << 20);
//! assert_eq!(heap.live(), 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// [`System`] with a cap on live heap bytes (requested sizes; allocator overhead aside).
pub struct Capped {
    cap: usize,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl Capped {
    /// An allocator that fails (returns null, which aborts the process) any allocation that
    /// would take the live bytes past `cap` bytes.
    pub const fn new(cap: usize) -> Self {
        Capped {
            cap,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Live heap bytes now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most live bytes since the last [`Capped::reset_peak`] (or the start).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from the bytes live now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }

    /// Books `size` more bytes; false (nothing booked) when that passes the cap.
    fn book(&self, size: usize) -> bool {
        let before = self.live.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > self.cap {
            self.live.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        self.peak.fetch_max(before + size, Ordering::Relaxed);
        true
    }
}

// SAFETY: every call is forwarded to `System` with the caller's layout; the counters only
// decide whether to forward an allocation at all.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.book(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.book(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !self.book(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                self.live.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            self.live.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes are booked and released; a request past the cap is refused and books nothing.
    #[test]
    fn live_bytes_are_counted_and_the_cap_refuses() {
        let heap = Capped::new(1000);
        let small = Layout::from_size_align(600, 8).unwrap();
        unsafe {
            let p = heap.alloc(small);
            assert!(!p.is_null());
            assert_eq!(heap.live(), 600);
            assert!(heap.alloc(small).is_null());
            assert_eq!(heap.live(), 600);
            let q = heap.realloc(p, small, 900);
            assert!(!q.is_null());
            assert_eq!((heap.live(), heap.peak()), (900, 900));
            heap.dealloc(q, Layout::from_size_align(900, 8).unwrap());
        }
        assert_eq!((heap.live(), heap.peak()), (0, 900));
    }
}
