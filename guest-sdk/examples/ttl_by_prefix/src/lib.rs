//! A `ttl` hook: expiry by key prefix, whatever the client asked for. The
//! Rust port of `scripts/ttl_by_prefix.lua`:
//!
//! - `session/...`: 30 minutes
//! - `cache/...`: 60 seconds
//! - other keys: the client's TTL (or none)
//!
//! ```text
//! ringkv hook deploy --kind wasm --stage ttl --name ttl-by-prefix \
//!     --file target/wasm32-unknown-unknown/release/ttl_by_prefix.wasm
//! ```

use std::time::Duration;

use ringkv_guest::{ttl, Ctx};

/// Time to live by key prefix; the first match wins.
const RULES: [(&[u8], Duration); 2] =
    [(b"session/", Duration::from_secs(30 * 60)), (b"cache/", Duration::from_secs(60))];

#[ttl]
fn ttl_by_prefix(key: &[u8], _value: &[u8], _ctx: &Ctx) -> Option<Duration> {
    RULES.iter().find(|(prefix, _)| key.starts_with(prefix)).map(|&(_, ttl)| ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    fn ttl_of(key: &str) -> Option<Duration> {
        ttl_by_prefix(key.as_bytes(), b"v", &Ctx::new(Op::Put, 0, Some(Duration::from_secs(5))))
    }

    #[test]
    fn sessions_live_30_minutes_and_cache_entries_60_seconds() {
        assert_eq!(ttl_of("session/abc"), Some(Duration::from_secs(1800)));
        assert_eq!(ttl_of("cache/page/1"), Some(Duration::from_secs(60)));
    }

    #[test]
    fn other_keys_keep_the_clients_ttl() {
        for key in ["users/1", "session", "sessions/x", "Cache/x", "", "x/session/"] {
            assert_eq!(ttl_of(key), None, "{key}");
        }
    }
}
