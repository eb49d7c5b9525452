//! The `ringkv` binary run as a user runs it: one CLI command at a time,
//! its exit status and its output.

use std::ffi::OsStr;
use std::process::Command;

use crate::ringkv_bin;

/// Owned arguments for [`cli`], from string slices.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs `ringkv ARGS` and waits for it; returns (success, stdout, stderr).
pub fn cli_blocking<S: AsRef<OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(ringkv_bin()).args(args).output().expect("run ringkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli_blocking`] off the async runtime's threads, for async tests.
pub async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || cli_blocking(&args)).await.expect("cli task")
}

/// Wall-clock milliseconds since the Unix epoch, as nodes stamp expiries.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}
