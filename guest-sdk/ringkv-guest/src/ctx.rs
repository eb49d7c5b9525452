//! [`Ctx`]: what a `validate` or `ttl` hook knows about the write besides
//! its key and value, including the key's stored record (ABI version 2),
//! which the host reads only if the hook asks for it.

#[cfg(target_arch = "wasm32")]
use std::sync::OnceLock;
use std::time::Duration;

/// The kind of write a hook is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Delete,
}

/// The context of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    op: Op,
    now_ms: u64,
    client_ttl: Option<Duration>,
    stored: Stored,
}

/// The key's live stored record, as the hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    /// Fixed when the context was built: none ([`Ctx::new`]) or the value
    /// and version [`Ctx::with_old`] gave.
    Given(Option<(Vec<u8>, u64)>),
    /// The host's, asked for on first use only: reading it makes the write
    /// conditional on its version, so a hook that never reads it must leave
    /// its writes unconditional.
    #[cfg(target_arch = "wasm32")]
    Host(FromHost),
}

/// What the host has answered so far in this call. `OnceLock` rather than
/// `OnceCell` keeps `Ctx` `Sync`, as it was before it had a cache.
#[cfg(target_arch = "wasm32")]
#[derive(Debug, Clone, Default)]
struct FromHost {
    version: OnceLock<u64>,
    value: OnceLock<Option<Vec<u8>>>,
}

/// Every host-backed context of a call describes the same stored record;
/// how much of it has been fetched yet is a cache, not part of the value.
#[cfg(target_arch = "wasm32")]
impl PartialEq for FromHost {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

#[cfg(target_arch = "wasm32")]
impl Eq for FromHost {}

impl Ctx {
    /// A context as the host would pass it for a key with no stored record;
    /// hooks get theirs from the SDK, this is for unit-testing a hook
    /// function natively. Add a stored record with [`Ctx::with_old`].
    pub fn new(op: Op, now_ms: u64, client_ttl: Option<Duration>) -> Self {
        Ctx { op, now_ms, client_ttl, stored: Stored::Given(None) }
    }

    /// The context the SDK passes a hook. In a module the stored record
    /// comes from the host when the hook asks; natively there is no host,
    /// so there is none.
    pub(crate) fn from_host(op: Op, now_ms: u64, client_ttl: Option<Duration>) -> Self {
        #[cfg(target_arch = "wasm32")]
        let stored = Stored::Host(FromHost::default());
        #[cfg(not(target_arch = "wasm32"))]
        let stored = Stored::Given(None);
        Ctx { op, now_ms, client_ttl, stored }
    }

    /// This context with `value` at `version` as the key's stored record,
    /// for unit-testing a hook that reads [`Ctx::old_value`] or
    /// [`Ctx::old_version`].
    ///
    /// # Panics
    /// If `version` is 0: that is how the host says there is no record.
    pub fn with_old(self, value: impl Into<Vec<u8>>, version: u64) -> Self {
        assert!(version != 0, "a stored record's version is at least 1; 0 means the key has none");
        Ctx { stored: Stored::Given(Some((value.into(), version))), ..self }
    }

    /// Put or delete.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether the write is a delete (then the value is empty).
    pub fn is_delete(&self) -> bool {
        self.op == Op::Delete
    }

    /// The leader's clock when it applied the write, in ms since the Unix
    /// epoch. The same on every replica, unlike a clock read in the hook.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The TTL the client asked for, if it asked for one.
    pub fn client_ttl(&self) -> Option<Duration> {
        self.client_ttl
    }

    /// The value stored under the key now; `None` if there is none (never
    /// written, deleted, or expired).
    ///
    /// The host reads storage only when a hook first calls this or
    /// [`Ctx::old_version`], and **reading either makes the write
    /// conditional**: it applies only if the key still has the version the
    /// hook saw; if another write changed it first, the leader runs the
    /// hooks again on the new state. So a hook can allow creates but not
    /// overwrites, and concurrent creates of one key let exactly one win.
    pub fn old_value(&self) -> Option<&[u8]> {
        match &self.stored {
            Stored::Given(old) => old.as_ref().map(|(value, _)| value.as_slice()),
            #[cfg(target_arch = "wasm32")]
            Stored::Host(host) => host.value.get_or_init(crate::sys::old_value).as_deref(),
        }
    }

    /// The version of the value stored under the key now; 0 if there is
    /// none. Reading it makes the write conditional, as for
    /// [`Ctx::old_value`]; this one does not copy the value.
    pub fn old_version(&self) -> u64 {
        match &self.stored {
            Stored::Given(old) => old.as_ref().map_or(0, |&(_, version)| version),
            #[cfg(target_arch = "wasm32")]
            Stored::Host(host) => *host.version.get_or_init(crate::sys::old_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_context_has_no_stored_record() {
        let ctx = Ctx::new(Op::Put, 5, None);
        assert_eq!((ctx.old_value(), ctx.old_version()), (None, 0));
        assert_eq!(ctx, Ctx::from_host(Op::Put, 5, None), "natively there is no host to read from");
    }

    #[test]
    fn with_old_sets_the_stored_record_and_keeps_the_rest() {
        let ctx = Ctx::new(Op::Delete, 7, Some(Duration::from_secs(1))).with_old("before", 12);
        assert_eq!((ctx.old_value(), ctx.old_version()), (Some(&b"before"[..]), 12));
        assert_eq!((ctx.op(), ctx.now_ms(), ctx.client_ttl()), (Op::Delete, 7, Some(Duration::from_secs(1))));
        assert_ne!(ctx, Ctx::new(Op::Delete, 7, Some(Duration::from_secs(1))));

        let empty = Ctx::new(Op::Put, 0, None).with_old(Vec::new(), 1);
        assert_eq!(empty.old_value(), Some(&[][..]), "an empty stored value is still a value");
    }

    #[test]
    #[should_panic(expected = "0 means the key has none")]
    fn with_old_refuses_version_0() {
        let _ = Ctx::new(Op::Put, 0, None).with_old("v", 0);
    }
}
