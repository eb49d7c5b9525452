//! openraft type configuration and the commands carried in the Raft log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Type configuration shared by every Raft group on the node.
    pub TypeConfig:
        D = Command,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// One log entry's application payload: a batch of operations.
///
/// Everything that could differ between replicas (the clock, hook results) is
/// decided on the leader and carried here, so applying is deterministic.
/// Every op of the entry gets the entry's log index as its version, so the
/// leader never puts two ops on the same key into one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's wall clock when it proposed the entry, in ms since the epoch.
    /// Expiry checks during apply use it, never the replica's own clock.
    pub now_ms: u64,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Writes a value. `if_version`: compare-and-swap, `Some(0)` = must not exist.
    Put { key: Vec<u8>, value: Vec<u8>, expires_at: Option<u64>, if_version: Option<u64> },
    /// Deletes a key, optionally only at a given version.
    Delete { key: Vec<u8>, if_version: Option<u64> },
    /// Background TTL cleanup: deletes the key only if it still holds `version`.
    Expire { key: Vec<u8>, version: u64 },
    /// Meta group: records a member's address.
    SetNode { id: NodeId, addr: String },
    /// Meta group: forgets a member.
    RemoveNode { id: NodeId },
    /// Meta group: the nodes that host (or are being added to) a shard.
    /// `pending`: a move is under way (replicas may not all be voters yet).
    SetAssignment { shard: u32, replicas: Vec<NodeId>, pending: bool },
    /// Meta group: marks a node as draining (no new replicas; existing ones move away).
    SetDraining { id: NodeId, draining: bool },
    /// Meta group: marks a node as down (unreachable past the down timeout:
    /// its replicas are re-created elsewhere) or as back up.
    SetDown { id: NodeId, down: bool },
    /// Meta group: who leads a shard, as its leader reported it (a routing
    /// hint for nodes and clients that do not host the shard; `term` orders
    /// reports so an old leader's late report never wins).
    SetLeaderHint { shard: u32, leader: NodeId, term: u64 },
}

impl Op {
    /// The user key this op writes, if it writes one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Expire { key, .. } => Some(key),
            Op::SetNode { .. }
            | Op::RemoveNode { .. }
            | Op::SetAssignment { .. }
            | Op::SetDraining { .. }
            | Op::SetDown { .. }
            | Op::SetLeaderHint { .. } => None,
        }
    }
}

/// What applying one [`Op`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A put was applied at this version.
    Written { version: u64 },
    /// A delete was applied; `existed` tells whether a live key was removed.
    Deleted { existed: bool, version: u64 },
    /// The `if_version` condition did not hold; `current` is the live version (0 = absent).
    VersionMismatch { current: u64 },
    /// A membership entry, blank entry or bookkeeping command.
    Done,
}

/// Milliseconds since the Unix epoch, by this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
