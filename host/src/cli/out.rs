//! The CLI's standard output. Every line a command prints goes through
//! [`outln!`] or [`out!`], which return the write's error instead of
//! panicking as `println!` does when the reader has gone (`ringkv scan "" |
//! head -1`). A closed pipe becomes [`StdoutClosed`], which
//! [`super::main`] turns into a quiet exit with status 141 (128 + SIGPIPE):
//! what a shell reports for `ls` in `ls | head`, killed by SIGPIPE. Rust
//! ignores SIGPIPE and the workspace forbids the `unsafe` it takes to
//! restore it, so the status is the same but it is an exit, not a signal.
//! Diagnostics and `serve`'s logs go to stderr and do not use this.

use std::fmt;
use std::io::{ErrorKind, Write};

/// Writes a formatted line to stdout; `?` it.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes formatted text to stdout, without a newline; `?` it.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

/// Standard output was closed by its reader (EPIPE).
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes `args` to stdout. Stdout is line-buffered, so a line's write
/// fails as soon as the reader has gone.
pub fn write(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    std::io::stdout().lock().write_fmt(args).map_err(classify)
}

/// Flushes what is left in stdout's buffer (text without a final newline).
pub fn flush() -> anyhow::Result<()> {
    std::io::stdout().lock().flush().map_err(classify)
}

fn classify(e: std::io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// Whether `e` is, or was caused by, a closed stdout.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}
