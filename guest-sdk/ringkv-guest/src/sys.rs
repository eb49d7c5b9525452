//! The host's imports (module `ringkv`), the only ones a hook may have.
//! Native builds (unit tests) have no host: there logging prints to stderr
//! and the stored record is whatever the test's `Ctx` was given.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "ringkv")]
    extern "C" {
        #[link_name = "log"]
        pub fn ringkv_log(level: i32, ptr: i32, len: i32);
        #[link_name = "panic"]
        pub fn ringkv_panic(ptr: i32, len: i32);
        #[link_name = "old_version"]
        pub fn ringkv_old_version() -> i64;
        #[link_name = "old_value"]
        pub fn ringkv_old_value(ptr: i32, cap: i32) -> i64;
    }
}

/// Sends one log line; `level` 0 = info, 1 = warn.
pub(crate) fn log(level: i32, message: &str) {
    let message = crate::record::cut(message, crate::MAX_MESSAGE_BYTES);
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `len` bytes at `ptr`, which is a live &str.
    unsafe {
        imports::ringkv_log(level, message.as_ptr() as i32, message.len() as i32)
    };
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[ringkv {}] {message}", if level == 0 { "info" } else { "warn" });
}

/// Hands the panic message to the host, which reports it once the guest
/// traps right after.
pub(crate) fn panic(message: &str) {
    let message = crate::record::cut(message, crate::MAX_MESSAGE_BYTES);
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `len` bytes at `ptr`, which is a live &str.
    unsafe {
        imports::ringkv_panic(message.as_ptr() as i32, message.len() as i32)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

/// The version of the key's live stored record, 0 if it has none.
#[cfg(target_arch = "wasm32")]
pub(crate) fn old_version() -> u64 {
    // SAFETY: takes nothing from the guest's memory.
    let version = unsafe { imports::ringkv_old_version() };
    // The host passes the u64 version's bits.
    version as u64
}

/// The value of the key's live stored record, `None` if it has none.
#[cfg(target_arch = "wasm32")]
pub(crate) fn old_value() -> Option<Vec<u8>> {
    // The first call offers no room: its answer is the length, so the
    // buffer of the second is exact rather than a guess. The host answers
    // from one storage read per call, so the length does not change.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let cap = i32::try_from(buf.capacity()).unwrap_or(i32::MAX);
        // SAFETY: the host writes only if the value fits in `cap` bytes,
        // and then only at `ptr..ptr + len`, inside `buf`'s allocation.
        let answer = unsafe { imports::ringkv_old_value(buf.as_mut_ptr() as i32, cap) };
        if answer == -1 {
            return None;
        }
        let Ok(len) = usize::try_from(answer) else {
            panic!(
                "malformed answer from the host (ABI version {}): ringkv.old_value returned {answer}",
                crate::ABI_VERSION
            )
        };
        if len <= cap as usize {
            // SAFETY: the host copied exactly `len` bytes into `buf`.
            unsafe { buf.set_len(len) };
            return Some(buf);
        }
        buf.reserve_exact(len);
    }
}
