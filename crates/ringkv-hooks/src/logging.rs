//! Rate-limited logging from hooks into tracing.
//!
//! A hook runs on every matching write, so one `log.info` in a hot path
//! could flood the node's log. Each hook name gets [`LINES_PER_SECOND`]
//! lines per second in this process; lines over that are dropped and
//! counted, and the next line that gets through reports how many were lost.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::truncate;

/// Lines one hook may log per second in this process.
pub const LINES_PER_SECOND: u32 = 20;

/// Longest message kept, in bytes; the rest is cut.
pub const MAX_LINE_BYTES: usize = 1024;

/// The tracing target hook lines are logged under.
pub const TARGET: &str = "ringkv::hook";

/// The level of a line logged by a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
}

/// Logs `msg` from version `version` of hook `hook`, unless that hook has
/// already logged [`LINES_PER_SECOND`] lines in the current second.
pub fn hook_log(hook: &str, version: u64, level: LogLevel, msg: &str) {
    let admit = match LIMITER.lock() {
        Ok(mut limiter) => limiter.admit(hook, Instant::now()),
        // A panic while holding the lock cannot leave the map inconsistent
        // in a way that matters for logging; keep going.
        Err(poisoned) => poisoned.into_inner().admit(hook, Instant::now()),
    };
    let Admit::Log { dropped } = admit else { return };
    let msg = truncate(msg, MAX_LINE_BYTES);
    match (level, dropped) {
        (LogLevel::Info, 0) => tracing::info!(target: TARGET, hook, version, "{msg}"),
        (LogLevel::Info, dropped) => tracing::info!(target: TARGET, hook, version, dropped, "{msg}"),
        (LogLevel::Warn, 0) => tracing::warn!(target: TARGET, hook, version, "{msg}"),
        (LogLevel::Warn, dropped) => tracing::warn!(target: TARGET, hook, version, dropped, "{msg}"),
    }
}

static LIMITER: LazyLock<Mutex<Limiter>> = LazyLock::new(|| Mutex::new(Limiter::new(LINES_PER_SECOND)));

/// Whether a line may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Log it, mentioning the lines dropped since the last logged one.
    Log {
        dropped: u64,
    },
    Drop,
}

/// A fixed one-second window per hook name.
struct Limiter {
    per_second: u32,
    hooks: HashMap<String, Window>,
}

struct Window {
    start: Instant,
    lines: u32,
    dropped: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

/// Above this many tracked names, windows idle for [`IDLE`] are forgotten
/// (removed hooks would otherwise stay forever).
const PRUNE_ABOVE: usize = 256;
const IDLE: Duration = Duration::from_secs(60);

impl Limiter {
    fn new(per_second: u32) -> Self {
        Self { per_second, hooks: HashMap::new() }
    }

    fn admit(&mut self, hook: &str, now: Instant) -> Admit {
        if self.hooks.len() > PRUNE_ABOVE && !self.hooks.contains_key(hook) {
            self.prune(now);
        }
        if !self.hooks.contains_key(hook) {
            self.hooks.insert(hook.to_owned(), Window { start: now, lines: 0, dropped: 0 });
        }
        let Some(window) = self.hooks.get_mut(hook) else { return Admit::Drop };
        if now.saturating_duration_since(window.start) >= WINDOW {
            window.start = now;
            window.lines = 0;
        }
        if window.lines >= self.per_second {
            window.dropped += 1;
            return Admit::Drop;
        }
        window.lines += 1;
        Admit::Log { dropped: std::mem::take(&mut window.dropped) }
    }

    fn prune(&mut self, now: Instant) {
        self.hooks.retain(|hook, window| {
            let idle = now.saturating_duration_since(window.start) >= IDLE;
            if idle && window.dropped > 0 {
                // No later line will carry this count; report it on the way out.
                tracing::info!(target: TARGET, hook = hook.as_str(), dropped = window.dropped, "hook log lines dropped");
            }
            !idle
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_per_hook_and_reports_drops() {
        let mut limiter = Limiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.admit("a", t0), Admit::Log { dropped: 0 });
        }
        assert_eq!(limiter.admit("a", t0), Admit::Drop);
        assert_eq!(limiter.admit("a", t0 + Duration::from_millis(500)), Admit::Drop);
        // Another hook has its own allowance.
        assert_eq!(limiter.admit("b", t0), Admit::Log { dropped: 0 });
        // The next window lets lines through again and reports the two lost.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(limiter.admit("a", t1), Admit::Log { dropped: 2 });
        assert_eq!(limiter.admit("a", t1), Admit::Log { dropped: 0 });
    }

    #[test]
    fn forgets_idle_hooks() {
        let mut limiter = Limiter::new(1);
        let t0 = Instant::now();
        for i in 0..=PRUNE_ABOVE {
            limiter.admit(&format!("h{i}"), t0);
        }
        assert_eq!(limiter.hooks.len(), PRUNE_ABOVE + 1);
        limiter.admit("new", t0 + IDLE);
        assert_eq!(limiter.hooks.len(), 1);
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        hook_log("t", 1, LogLevel::Info, "smoke");
    }
}
