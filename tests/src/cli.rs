//! The `ringkv` binary and its HTTP port used as a user uses them: one CLI
//! command at a time with its exit status and output, one plain GET.

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

/// `GET path` on `addr`: the status code and body, `None` if unreachable.
pub async fn http_get(addr: String, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    })
    .await
    .ok()?
}

/// Wall-clock milliseconds since the Unix epoch, as nodes stamp expiries.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}
