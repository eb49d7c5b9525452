//! [`Ctx`]: what a `validate` or `ttl` hook knows about the write besides
//! its key and value.

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
}

impl Ctx {
    /// A context as the host would pass it; hooks get theirs from the SDK,
    /// this is for unit-testing a hook function natively.
    pub fn new(op: Op, now_ms: u64, client_ttl: Option<Duration>) -> Self {
        Ctx { op, now_ms, client_ttl }
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
}
