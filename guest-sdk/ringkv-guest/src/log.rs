//! Logging from a hook through the host's `ringkv.log` import: the host
//! cuts lines at 1024 bytes and rate-limits them like Lua's `log`. In native
//! builds (unit tests) lines go to stderr.

/// Logs `msg` at info level.
pub fn info(msg: &str) {
    crate::sys::log(0, msg);
}

/// Logs `msg` at warn level.
pub fn warn(msg: &str) {
    crate::sys::log(1, msg);
}
