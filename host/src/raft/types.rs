//! openraft type configuration and the commands carried in the Raft log.

use serde::{Deserialize, Serialize};

use crate::hooks::{HookSpec, HookUse};

openraft::declare_raft_types!(
    /// Type configuration shared by every Raft group on the node.
    pub TypeConfig:
        D = Command,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub use crate::ids::NodeId;
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
    /// `expires_at` already includes what a ttl hook decided.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at: Option<u64>,
        if_version: Option<u64>,
        hooks: Option<Box<HookStamp>>,
    },
    /// Deletes a key, optionally only at a given version.
    Delete { key: Vec<u8>, if_version: Option<u64>, hooks: Option<Box<HookStamp>> },
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
    /// Meta group: makes `spec` the active version of its hook (its
    /// `version` is assigned when applied).
    DeployHook { spec: Box<HookSpec> },
    /// Meta group: deactivates a hook, keeping it for rollback.
    RemoveHook { name: String },
    /// Meta group: swaps a hook's active and previous versions.
    RollbackHook { name: String },
    /// Meta group: adds a runtime token (its hash, never the secret);
    /// refused if the name is taken.
    CreateToken { record: Box<crate::auth::TokenRecord> },
    /// Meta group: deletes a runtime token.
    RevokeToken { name: String },
    /// Meta group: makes `spec` the partition function (`None`: the whole
    /// key) and opens a re-shard job; `shards` is the ring's shard count.
    SetPartitioner { spec: Option<Box<HookSpec>>, shards: u32 },
    /// Meta group: a shard leader's progress in re-shard job `epoch`.
    ReshardProgress { epoch: u64, shard: u32, progress: crate::ring::partition::ShardProgress, shards: u32 },
    /// Re-sharding, on the key's new shard: writes the key with the value,
    /// version and expiry it had on its old shard, unless re-shard job
    /// `epoch` already moved it here or this shard holds a record of it
    /// (a newer write). Either way the key is marked as moved in the job.
    MoveIn { key: Vec<u8>, value: Vec<u8>, version: u64, expires_at: Option<u64>, epoch: u64 },
    /// Re-sharding: forgets which keys job `epoch` moved in (it is over).
    ClearMoveMarkers { epoch: u64 },
    /// Meta group: marks a node as unreachable (silent for a few seconds:
    /// its replicas count as missing in status, long before it is down) or
    /// as reachable again.
    SetUnreachable { id: NodeId, unreachable: bool },
    /// Meta group: the leader of `shard` cannot move `key` in re-shard job
    /// `epoch`, for `error` (cleared by the shard's next progress).
    ReshardStalled { epoch: u64, shard: u32, key: Vec<u8>, error: String },
    /// Re-sharding: forgets which keys every job up to `epoch` moved in
    /// (they are over: finished or aborted).
    ClearMoveMarkersUpTo { epoch: u64 },
    /// Re-sharding, on the keys' new shard: an [`Op::MoveIn`] of each record
    /// (distinct keys), so a mover's scan batch costs one op per destination
    /// shard rather than one per key.
    MoveInBatch { records: Vec<MovedRecord>, epoch: u64 },
    /// Re-sharding, on the keys' old shard: an [`Op::Expire`] of each
    /// `(key, version)` (distinct keys) the mover copied away.
    ExpireBatch { keys: Vec<(Vec<u8>, u64)> },
    /// Meta group: makes `spec` the shadow version of its hook (its
    /// `version` is assigned when applied).
    DeployShadowHook { spec: Box<HookSpec> },
    /// Meta group: makes a hook's shadow version the active one.
    PromoteHook { name: String },
    /// Meta group: drops a hook's shadow version.
    RemoveShadowHook { name: String },
    /// Meta group: splits or merges shards and opens the job that moves
    /// the keys whose shard changed (`shards`: the ring's shard count). A
    /// split's new shard is assigned its parent's replicas.
    ResizeShards { change: crate::ring::partition::ShardChange, shards: u32 },
}

/// A record on its way to its new shard, exactly as its old shard held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: u64,
    pub expires_at: Option<u64>,
}

/// What the leader's hooks decided about a write, carried in its log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStamp {
    /// The hook versions that judged the write, in the order they ran.
    pub used: Vec<HookUse>,
    /// The stored version a hook read (0: absent). The write applies only if
    /// the key still holds it; otherwise it fails with
    /// [`CommandResult::HookStale`] and the leader judges it again.
    pub guard: Option<u64>,
}

impl Op {
    /// The user key this op writes, if it writes one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Expire { key, .. } | Op::MoveIn { key, .. } => Some(key),
            Op::SetNode { .. }
            | Op::RemoveNode { .. }
            | Op::SetAssignment { .. }
            | Op::SetDraining { .. }
            | Op::SetDown { .. }
            | Op::SetLeaderHint { .. }
            | Op::DeployHook { .. }
            | Op::RemoveHook { .. }
            | Op::RollbackHook { .. }
            | Op::CreateToken { .. }
            | Op::RevokeToken { .. }
            | Op::SetPartitioner { .. }
            | Op::ReshardProgress { .. }
            | Op::ClearMoveMarkers { .. }
            | Op::SetUnreachable { .. }
            | Op::ReshardStalled { .. }
            | Op::ClearMoveMarkersUpTo { .. }
            | Op::MoveInBatch { .. }
            | Op::ExpireBatch { .. }
            | Op::DeployShadowHook { .. }
            | Op::PromoteHook { .. }
            | Op::RemoveShadowHook { .. }
            | Op::ResizeShards { .. } => None,
        }
    }
}

/// What applying one [`Op`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A put was applied at this version, judged by these hooks.
    Written { version: u64, hooks: Vec<HookUse> },
    /// A delete was applied; `existed` tells whether a live key was removed.
    Deleted { existed: bool, version: u64, hooks: Vec<HookUse> },
    /// The `if_version` condition did not hold; `current` is the live version (0 = absent).
    VersionMismatch { current: u64 },
    /// A membership entry, blank entry or bookkeeping command.
    Done,
    /// A hook read the key's version and the key changed before the write
    /// applied: nothing was written; the leader runs the hooks again.
    HookStale { current: u64 },
    /// A hook registry change: the version now active (0: none).
    HookChanged { version: u64, replaced: u64 },
    /// A hook registry change that could not be made.
    HookRefused { reason: String },
    /// A token was created, or revoked (`existed`: there was one to revoke).
    TokenChanged { existed: bool },
    /// A token change that could not be made (the name is taken).
    TokenRefused { reason: String },
    /// The partition function changed (or already was the one asked for):
    /// the epoch of its re-shard job.
    PartitionChanged { epoch: u64 },
    /// A partition function change that could not be made.
    PartitionRefused { reason: String },
    /// A [`Op::MoveIn`]: whether it wrote the key (false: already moved, or newer here).
    MovedIn { written: bool },
    /// A [`Op::MoveInBatch`]: how many of its records it wrote.
    MovedInBatch { written: u64 },
    /// Shards were split or merged: the epoch of the job moving their keys
    /// and the change as settled (a split's point and new shard).
    Resized { epoch: u64, change: crate::ring::partition::ShardChange },
}

pub use crate::ids::now_ms;
