//! Rate-limited logging: at most one line per key per period, and that line
//! says how many it stands for. An error that repeats on every heartbeat
//! (a dead peer, a node of another cluster) is one fact for an operator,
//! not hundreds of lines a second.
//!
//! ```ignore
//! if let Some(more) = LIMIT.check((peer, "unavailable")) {
//!     tracing::warn!(peer, "Raft RPCs to the peer fail{}", more_since_last(more));
//! }
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one repeated problem is logged, by default.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Keys not logged for this many periods are forgotten, so the table stays
/// as small as the set of problems that are still happening.
const FORGET_AFTER_PERIODS: u32 = 6;

/// Decides which occurrences of a repeated event get a log line.
pub struct RateLimit<K> {
    every: Duration,
    seen: Mutex<HashMap<K, Slot>>,
}

struct Slot {
    logged: Instant,
    suppressed: u64,
}

impl<K: Eq + Hash> RateLimit<K> {
    pub fn new(every: Duration) -> Self {
        Self { every, seen: Mutex::new(HashMap::new()) }
    }

    /// Records one occurrence of `key`. `Some(n)` when it should be logged
    /// now, `n` being the occurrences not logged since the last line for
    /// `key`; `None` when a line for `key` was logged less than a period ago.
    pub fn check(&self, key: K) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = seen.get_mut(&key) {
            if now.saturating_duration_since(slot.logged) < self.every {
                slot.suppressed += 1;
                return None;
            }
            let more = std::mem::take(&mut slot.suppressed);
            slot.logged = now;
            return Some(more);
        }
        let forget = self.every * FORGET_AFTER_PERIODS;
        seen.retain(|_, s| now.saturating_duration_since(s.logged) < forget);
        seen.insert(key, Slot { logged: now, suppressed: 0 });
        Some(0)
    }
}

/// `" (N more since last)"` for a line that stands for `n` unlogged
/// occurrences as well, or nothing.
pub fn more_since_last(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since last)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period_counting_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(limit.check_at("a", at(0)), Some(0), "the first occurrence is logged");
        assert_eq!(limit.check_at("a", at(1)), None);
        assert_eq!(limit.check_at("a", at(9)), None);
        assert_eq!(limit.check_at("b", at(9)), Some(0), "keys are limited separately");
        assert_eq!(limit.check_at("a", at(10)), Some(2), "a period later: one line for the two not logged");
        assert_eq!(limit.check_at("a", at(11)), None);
        assert_eq!(limit.check_at("a", at(25)), Some(1));
        assert_eq!(limit.check_at("a", at(36)), Some(0), "the count restarts after each line");
    }

    #[test]
    fn quiet_keys_are_forgotten() {
        let limit = RateLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(1, t0), Some(0));
        assert_eq!(limit.check_at(1, t0), None);
        assert_eq!(limit.check_at(2, t0 + Duration::from_secs(60)), Some(0));
        assert_eq!(limit.seen.lock().expect("lock").len(), 1, "key 1 fell silent long ago");
        assert_eq!(limit.check_at(1, t0 + Duration::from_secs(60)), Some(0), "and starts afresh");
    }

    #[test]
    fn the_suffix_names_what_was_left_out() {
        assert_eq!(more_since_last(0), "");
        assert_eq!(more_since_last(41), " (41 more since last)");
    }
}
