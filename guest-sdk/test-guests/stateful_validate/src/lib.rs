//! A `validate` hook that tries to carry state from one call to the next,
//! through a static and through the heap (the SDK's arena), and rejects the
//! write if it finds any: the host runs every call in a fresh instance, so
//! it must accept every time. Its 64 KiB heap block fits the arena, so a
//! call grows no memory.

use std::sync::atomic::{AtomicU32, Ordering};

use ringkv_guest::{validate, Ctx};

/// Calls this instance has seen.
static CALLS: AtomicU32 = AtomicU32::new(0);

const MARK: u8 = 0xa5;
const BLOCK: usize = 64 * 1024;

#[validate]
fn once(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    let earlier = CALLS.fetch_add(1, Ordering::Relaxed);
    if earlier != 0 {
        return Err(format!("state survived: this instance already ran {earlier} calls"));
    }
    // Every call makes the same allocations, so the arena hands this block
    // the same address each time: a reused instance would show the mark.
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
    // SAFETY: the pointer is the block's (capacity > 0). The byte is
    // uninitialized to Rust, but Wasm memory always holds a defined byte:
    // a volatile read just looks at it.
    let first = unsafe { core::ptr::read_volatile(block.as_ptr()) };
    if first == MARK {
        return Err("state survived: the heap holds an earlier call's block".into());
    }
    block.resize(BLOCK, MARK);
    // Leaked on purpose: the instance dies with the call, and the block
    // with it.
    std::mem::forget(block);
    Ok(())
}
