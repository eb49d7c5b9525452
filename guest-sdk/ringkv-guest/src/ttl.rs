//! What a `ttl` hook returns: [`Ttl`], or anything [`IntoTtl`].

use std::time::Duration;

/// A `ttl` hook's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// Keep the TTL the client asked for (or none, if it asked for none).
    Keep,
    /// The key never expires, whatever the client asked for.
    Never,
    /// The key expires this long after the write. Rounded up to whole
    /// milliseconds, at least 1 ms.
    After(Duration),
}

impl Ttl {
    /// Milliseconds the host stores for [`Ttl::After`]: rounded up, at
    /// least 1, saturating at `u64::MAX`.
    pub(crate) fn millis(d: Duration) -> u64 {
        let ms = d.as_nanos().div_ceil(1_000_000).max(1);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

/// What a `#[ttl]` function may return.
#[diagnostic::on_unimplemented(
    message = "a `#[ttl]` function must return `Option<Duration>`, `Ttl` or `Duration`, not `{Self}`",
    label = "this type is not a TTL decision"
)]
pub trait IntoTtl {
    fn into_ttl(self) -> Ttl;
}

impl IntoTtl for Ttl {
    fn into_ttl(self) -> Ttl {
        self
    }
}

/// `None` keeps the client's TTL, `Some(d)` expires the key after `d`.
impl IntoTtl for Option<Duration> {
    fn into_ttl(self) -> Ttl {
        match self {
            None => Ttl::Keep,
            Some(d) => Ttl::After(d),
        }
    }
}

impl IntoTtl for Duration {
    fn into_ttl(self) -> Ttl {
        Ttl::After(self)
    }
}
