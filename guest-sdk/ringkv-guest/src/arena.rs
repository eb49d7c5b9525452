//! The hook's heap (feature `call-arena`, on by default): a bump allocator
//! over a static arena in the module's initial memory, falling back to the
//! standard allocator once the arena is used up.
//!
//! Why: the host runs every call in a fresh instance. The standard
//! allocator serves its first allocation by growing linear memory, and a
//! memory that grew during a call must have its extra pages made
//! inaccessible again before the slot is reused: an `mprotect` per call,
//! with a TLB shootdown across the node's cores, which cost more than the
//! call itself. Memory inside the initial size needs none of that, so a
//! call that stays within the arena grows nothing.
//!
//! Nothing is freed back to the arena except the most recent block (the
//! common `Vec` grow-then-drop pattern): the instance, arena and all, dies
//! with the call. A crate that sets its own `#[global_allocator]` turns the
//! feature off (`default-features = false`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// Arena bytes: the heap a typical hook call needs (its input, a parsed
/// value, its output), and small next to the 1 MiB stack.
pub const ARENA_BYTES: usize = 256 * 1024;

#[repr(C, align(16))]
struct Arena {
    bytes: UnsafeCell<[u8; ARENA_BYTES]>,
    /// Offset of the first free byte.
    next: UnsafeCell<usize>,
}

// SAFETY: the arena is only compiled for wasm32 without the atomics feature,
// where a module has a single thread.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena { bytes: UnsafeCell::new([0; ARENA_BYTES]), next: UnsafeCell::new(0) };

/// The global allocator of a hook module built with the SDK.
pub struct CallArena;

impl CallArena {
    fn base() -> usize {
        ARENA.bytes.get() as usize
    }

    fn owns(ptr: *mut u8) -> bool {
        (Self::base()..Self::base() + ARENA_BYTES).contains(&(ptr as usize))
    }

    /// Whether `ptr .. ptr + size` is the arena's most recent block.
    ///
    /// # Safety
    /// Single-threaded access to `ARENA.next`.
    unsafe fn is_last(ptr: *mut u8, size: usize) -> bool {
        // SAFETY: forwarded from the caller.
        ptr as usize + size == Self::base() + unsafe { *ARENA.next.get() }
    }
}

// SAFETY: blocks are disjoint, aligned as asked and at least `size` long;
// the arena's are never handed out twice (the only reuse is the last block,
// once freed or resized), the rest come from `System`.
unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread (see `Arena`'s `Sync`).
        let next = unsafe { &mut *ARENA.next.get() };
        let start = (Self::base() + *next).next_multiple_of(layout.align());
        match start.checked_add(layout.size()) {
            Some(end) if end <= Self::base() + ARENA_BYTES => {
                *next = end - Self::base();
                start as *mut u8
            }
            // SAFETY: forwarded from the caller.
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::owns(ptr) {
            // SAFETY: not the arena's, so `System` handed it out.
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: one thread.
        if unsafe { Self::is_last(ptr, layout.size()) } {
            // SAFETY: one thread.
            unsafe { *ARENA.next.get() = ptr as usize - Self::base() };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The last block grows or shrinks in place while it fits.
        // SAFETY: one thread.
        if Self::owns(ptr) && unsafe { Self::is_last(ptr, layout.size()) } {
            if let Some(end) = (ptr as usize).checked_add(new_size).filter(|&e| e <= Self::base() + ARENA_BYTES) {
                // SAFETY: one thread.
                unsafe { *ARENA.next.get() = end - Self::base() };
                return ptr;
            }
        }
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a
        // valid layout; the copy is within both blocks.
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the arena is a process-wide static.
    #[test]
    fn serves_from_the_arena_then_falls_back() {
        let a = CallArena;
        let l = |size, align| Layout::from_size_align(size, align).expect("layout");
        // SAFETY: every block is used within its layout and freed once.
        unsafe {
            let p = a.alloc(l(10, 1));
            assert!(CallArena::owns(p));
            let q = a.alloc(l(8, 8));
            assert_eq!(q as usize % 8, 0, "aligned");
            assert!(q as usize >= p as usize + 10, "disjoint");
            q.write_bytes(7, 8);

            // The last block grows in place and keeps its bytes.
            let q2 = a.realloc(q, l(8, 8), 64);
            assert_eq!(q2, q);
            assert_eq!(*q2.add(7), 7);
            // An earlier block moves when it grows.
            p.write_bytes(1, 10);
            let p2 = a.realloc(p, l(10, 1), 20);
            assert_ne!(p2, p);
            assert_eq!(*p2.add(9), 1);

            // Freeing the last block gives its bytes back.
            a.dealloc(p2, l(20, 1));
            let p3 = a.alloc(l(20, 1));
            assert_eq!(p3, p2);

            // Past the arena, blocks come from the system allocator.
            let big = a.alloc(l(ARENA_BYTES, 8));
            assert!(!big.is_null() && !CallArena::owns(big));
            big.write_bytes(3, ARENA_BYTES);
            let big2 = a.realloc(big, l(ARENA_BYTES, 8), 2 * ARENA_BYTES);
            assert_eq!(*big2.add(ARENA_BYTES - 1), 3);
            a.dealloc(big2, l(2 * ARENA_BYTES, 8));
        }
    }
}
