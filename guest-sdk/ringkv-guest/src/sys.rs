//! The host's imports (module `ringkv`), the only ones a hook may have.
//! Native builds (unit tests) have no host: there they print to stderr.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "ringkv")]
    extern "C" {
        #[link_name = "log"]
        pub fn ringkv_log(level: i32, ptr: i32, len: i32);
        #[link_name = "panic"]
        pub fn ringkv_panic(ptr: i32, len: i32);
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
