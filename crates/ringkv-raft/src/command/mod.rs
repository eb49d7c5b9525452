//! The commands in the Raft log, typed by the state they change, and what
//! applying one returns.
//!
//! A log entry's payload is a [`Command`]: the leader's clock and a batch of
//! [`Op`]s. An op is either a [`KvOp`], which changes a shard's keys, or a
//! [`MetaOp`], which changes the cluster configuration the meta group holds
//! (members, assignments, hooks, tokens, the partition state). A shard's
//! state machine applies only `KvOp`s, the meta group's (`crate::meta`)
//! only `MetaOp`s.
//!
//! [`Proposal`] is what a node asks a group leader to log: a meta op as it
//! will be logged, or a [`KvProposal`], which differs from a `KvOp` only
//! where the leader decides (the expiry of a put, from a TTL on its clock)
//! or admits (a move-out carries the re-shard job it belongs to).
//!
//! Both encode as the flat enums they once were ([`wire`]), so data
//! directories and peers of earlier versions read them.

pub mod wire;

use serde::{Deserialize, Serialize};

use crate::auth::TokenRecord;
use crate::hooks::{HookSpec, HookUse};
use crate::ids::NodeId;
use crate::ring::partition::{ShardChange, ShardProgress};

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

/// An op of a group's log (`K` = [`KvOp`]), or with `K` = [`KvProposal`] a
/// write proposed to a group leader ([`Proposal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<K = KvOp> {
    /// For a shard group.
    Kv(K),
    /// For the meta group.
    Meta(MetaOp),
}

/// What a node asks a group leader to log. The leader runs the hooks on a
/// key write (filling `hooks` and, if a ttl hook decided, `ttl_ms`), then
/// turns it into a [`Command`], stamping its own clock, so TTLs use one
/// clock per write.
pub type Proposal = Op<KvProposal>;

impl<K> From<MetaOp> for Op<K> {
    fn from(op: MetaOp) -> Self {
        Op::Meta(op)
    }
}

impl From<KvOp> for Op {
    fn from(op: KvOp) -> Self {
        Op::Kv(op)
    }
}

impl From<KvProposal> for Proposal {
    fn from(p: KvProposal) -> Self {
        Op::Kv(p)
    }
}

/// A change of a shard's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
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
    /// Re-sharding, on the key's new shard: writes the key with the value,
    /// version and expiry it had on its old shard, unless re-shard job
    /// `epoch` already moved it here or this shard holds a record of it
    /// (a newer write). Either way the key is marked as moved in the job.
    MoveIn { key: Vec<u8>, value: Vec<u8>, version: u64, expires_at: Option<u64>, epoch: u64 },
    /// Re-sharding: forgets which keys job `epoch` moved in (it is over).
    ClearMoveMarkers { epoch: u64 },
    /// Re-sharding: forgets which keys every job up to `epoch` moved in
    /// (they are over: finished or aborted).
    ClearMoveMarkersUpTo { epoch: u64 },
    /// Re-sharding, on the keys' new shard: a [`KvOp::MoveIn`] of each record
    /// (distinct keys), so a mover's scan batch costs one op per destination
    /// shard rather than one per key.
    MoveInBatch { records: Vec<MovedRecord>, epoch: u64 },
    /// Re-sharding, on the keys' old shard: a [`KvOp::Expire`] of each
    /// `(key, version)` (distinct keys) the mover copied away.
    ExpireBatch { keys: Vec<(Vec<u8>, u64)> },
}

/// A change of the cluster configuration, in the meta group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOp {
    /// Records a member's address.
    SetNode { id: NodeId, addr: String },
    /// Forgets a member.
    RemoveNode { id: NodeId },
    /// The nodes that host (or are being added to) a shard. `pending`: a
    /// move is under way (replicas may not all be voters yet).
    SetAssignment { shard: u32, replicas: Vec<NodeId>, pending: bool },
    /// Marks a node as draining (no new replicas; existing ones move away).
    SetDraining { id: NodeId, draining: bool },
    /// Marks a node as down (unreachable past the down timeout: its
    /// replicas are re-created elsewhere) or as back up.
    SetDown { id: NodeId, down: bool },
    /// Who leads a shard, as its leader reported it (a routing hint for
    /// nodes and clients that do not host the shard; `term` orders reports
    /// so an old leader's late report never wins).
    SetLeaderHint { shard: u32, leader: NodeId, term: u64 },
    /// Makes `spec` the active version of its hook (its `version` is
    /// assigned when applied).
    DeployHook { spec: Box<HookSpec> },
    /// Deactivates a hook, keeping it for rollback.
    RemoveHook { name: String },
    /// Swaps a hook's active and previous versions.
    RollbackHook { name: String },
    /// Adds a runtime token (its hash, never the secret); refused if the
    /// name is taken.
    CreateToken { record: Box<TokenRecord> },
    /// Deletes a runtime token.
    RevokeToken { name: String },
    /// Makes `spec` the partition function (`None`: the whole key) and
    /// opens a re-shard job; `shards` is the ring's shard count.
    SetPartitioner { spec: Option<Box<HookSpec>>, shards: u32 },
    /// A shard leader's progress in re-shard job `epoch`.
    ReshardProgress { epoch: u64, shard: u32, progress: ShardProgress, shards: u32 },
    /// Marks a node as unreachable (silent for a few seconds: its replicas
    /// count as missing in status, long before it is down) or as reachable
    /// again.
    SetUnreachable { id: NodeId, unreachable: bool },
    /// The leader of `shard` cannot move `key` in re-shard job `epoch`, for
    /// `error` (cleared by the shard's next progress).
    ReshardStalled { epoch: u64, shard: u32, key: Vec<u8>, error: String },
    /// Makes `spec` the shadow version of its hook (its `version` is
    /// assigned when applied).
    DeployShadowHook { spec: Box<HookSpec> },
    /// Makes a hook's shadow version the active one.
    PromoteHook { name: String },
    /// Drops a hook's shadow version.
    RemoveShadowHook { name: String },
    /// Splits or merges shards and opens the job that moves the keys whose
    /// shard changed (`shards`: the ring's shard count). A split's new shard
    /// is assigned its parent's replicas.
    ResizeShards { change: ShardChange, shards: u32 },
}

/// A change of a shard's keys as a node proposes it to the shard's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvProposal {
    /// [`KvOp::Put`], with a TTL the leader turns into an expiry by its clock.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
        hooks: Option<Box<HookStamp>>,
    },
    Delete {
        key: Vec<u8>,
        if_version: Option<u64>,
        hooks: Option<Box<HookStamp>>,
    },
    Expire {
        key: Vec<u8>,
        version: u64,
    },
    /// Re-sharding, one key: what nodes of the previous version send (this
    /// one sends [`KvProposal::MoveInBatch`]); served the same way.
    MoveIn {
        key: Vec<u8>,
        value: Vec<u8>,
        version: u64,
        expires_at: Option<u64>,
        epoch: u64,
    },
    /// Re-sharding, on the key's old shard: deletes it if it still holds
    /// `version` (it was copied to its new shard). The leader takes it only
    /// once it knows re-shard job `epoch`, so it never serves a read that
    /// would miss the key. Nodes of the previous version send it; this one
    /// sends [`KvProposal::MoveOutBatch`].
    MoveOut {
        key: Vec<u8>,
        version: u64,
        epoch: u64,
    },
    ClearMoveMarkers {
        epoch: u64,
    },
    ClearMoveMarkersUpTo {
        epoch: u64,
    },
    /// Re-sharding, on the keys' new shard: [`KvOp::MoveInBatch`]. Admitted
    /// like `MoveIn`, under the routing gate of job `epoch`.
    MoveInBatch {
        records: Vec<MovedRecord>,
        epoch: u64,
    },
    /// Re-sharding, on the keys' old shard: a `MoveOut` of each `(key,
    /// version)`, taken under the same rule.
    MoveOutBatch {
        keys: Vec<(Vec<u8>, u64)>,
        epoch: u64,
    },
}

impl KvProposal {
    /// The op the leader logs for this proposal at time `now`.
    pub fn into_op(self, now: u64) -> KvOp {
        match self {
            KvProposal::Put { key, value, ttl_ms, if_version, hooks } => KvOp::Put {
                key,
                value,
                expires_at: ttl_ms.filter(|t| *t > 0).map(|t| now.saturating_add(t)),
                if_version,
                hooks,
            },
            KvProposal::Delete { key, if_version, hooks } => KvOp::Delete { key, if_version, hooks },
            KvProposal::Expire { key, version } | KvProposal::MoveOut { key, version, .. } => {
                KvOp::Expire { key, version }
            }
            KvProposal::MoveIn { key, value, version, expires_at, epoch } => {
                KvOp::MoveIn { key, value, version, expires_at, epoch }
            }
            KvProposal::ClearMoveMarkers { epoch } => KvOp::ClearMoveMarkers { epoch },
            KvProposal::ClearMoveMarkersUpTo { epoch } => KvOp::ClearMoveMarkersUpTo { epoch },
            KvProposal::MoveInBatch { records, epoch } => KvOp::MoveInBatch { records, epoch },
            KvProposal::MoveOutBatch { keys, .. } => KvOp::ExpireBatch { keys },
        }
    }

    /// The one user key the proposal writes, if it writes exactly one.
    /// Batches write distinct keys, none with the entry's index as its
    /// version, so sharing an entry with a write of one of them is safe
    /// (ops apply in order, each seeing the ones before it).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            KvProposal::Put { key, .. }
            | KvProposal::Delete { key, .. }
            | KvProposal::Expire { key, .. }
            | KvProposal::MoveIn { key, .. }
            | KvProposal::MoveOut { key, .. } => Some(key),
            KvProposal::ClearMoveMarkers { .. }
            | KvProposal::ClearMoveMarkersUpTo { .. }
            | KvProposal::MoveInBatch { .. }
            | KvProposal::MoveOutBatch { .. } => None,
        }
    }
}

impl Proposal {
    /// The op the leader logs for this proposal at time `now`.
    pub fn into_op(self, now: u64) -> Op {
        match self {
            Op::Kv(p) => Op::Kv(p.into_op(now)),
            Op::Meta(op) => Op::Meta(op),
        }
    }

    /// The one user key the proposal writes, if it writes exactly one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Kv(p) => p.key(),
            Op::Meta(_) => None,
        }
    }
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
    /// A [`KvOp::MoveIn`]: whether it wrote the key (false: already moved, or newer here).
    MovedIn { written: bool },
    /// A [`KvOp::MoveInBatch`]: how many of its records it wrote.
    MovedInBatch { written: u64 },
    /// Shards were split or merged: the epoch of the job moving their keys
    /// and the change as settled (a split's point and new shard).
    Resized { epoch: u64, change: ShardChange },
}

/// Bytes written by the flat `raft::types::Op` and `cluster::Proposal` enums
/// (before the split), one sample of each variant: the typed enums must
/// write and read exactly these.
#[cfg(test)]
mod wire_golden {
    use super::*;
    use crate::auth::{Grant, Role};
    use crate::hooks::{FailPolicy, HookKind, HookLimits, Stage};

    fn k() -> Vec<u8> {
        b"k".to_vec()
    }

    fn spec() -> Box<HookSpec> {
        Box::new(HookSpec {
            name: "h".into(),
            kind: HookKind::Lua,
            stage: Stage::Validate,
            prefix: b"p".to_vec(),
            source: b"s".to_vec(),
            version: 2,
            sha256: "x".into(),
            fail_policy: FailPolicy::Closed,
            limits: HookLimits::default(),
            deployed_at_ms: 3,
        })
    }

    fn token() -> Box<TokenRecord> {
        let grant = Grant { role: Role::Write, prefix: b"p".to_vec() };
        Box::new(TokenRecord { name: "t".into(), hash: "h".into(), grant, created_at_ms: 4 })
    }

    fn stamp() -> Option<Box<HookStamp>> {
        Some(Box::new(HookStamp { used: vec![HookUse { name: "h".into(), version: 2 }], guard: Some(4) }))
    }

    fn record() -> MovedRecord {
        MovedRecord { key: k(), value: b"v".to_vec(), version: 5, expires_at: Some(6) }
    }

    fn progress() -> ShardProgress {
        ShardProgress { scanned: 1, moved: 2, cursor: Some(b"c".to_vec()), done: true }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// Each sample writes its golden bytes and reads back from them.
    fn check<T>(samples: Vec<(T, String)>)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        for (value, golden) in samples {
            assert_eq!(hex(&postcard::to_allocvec(&value).expect("encode")), golden, "{value:?}");
            assert_eq!(postcard::from_bytes::<T>(&unhex(&golden)).expect("decode"), value, "{golden}");
        }
    }

    /// A sample of each meta op, with its index in the flat log enum and in
    /// the flat proposal enum, and the bytes of its fields (the same in both).
    fn meta_samples() -> Vec<(MetaOp, u8, u8, &'static str)> {
        let split = ShardChange::Split { shard: 1, at: Some(7), new_shard: Some(3) };
        vec![
            (MetaOp::SetNode { id: 2, addr: "a:1".into() }, 3, 3, "0203613a31"),
            (MetaOp::RemoveNode { id: 2 }, 4, 4, "02"),
            (MetaOp::SetAssignment { shard: 1, replicas: vec![1, 2, 3], pending: true }, 5, 5, "010301020301"),
            (MetaOp::SetDraining { id: 2, draining: true }, 6, 6, "0201"),
            (MetaOp::SetDown { id: 2, down: false }, 7, 7, "0200"),
            (MetaOp::SetLeaderHint { shard: 1, leader: 2, term: 5 }, 8, 8, "010205"),
            (MetaOp::DeployHook { spec: spec() }, 9, 9, "0168000001700173020178000080ade2048080800880ade20403"),
            (MetaOp::RemoveHook { name: "h".into() }, 10, 10, "0168"),
            (MetaOp::RollbackHook { name: "h".into() }, 11, 11, "0168"),
            (MetaOp::CreateToken { record: token() }, 12, 12, "0174016801017004"),
            (MetaOp::RevokeToken { name: "t".into() }, 13, 13, "0174"),
            (
                MetaOp::SetPartitioner { spec: Some(spec()), shards: 4 },
                14,
                14,
                "010168000001700173020178000080ade2048080800880ade2040304",
            ),
            (MetaOp::SetPartitioner { spec: None, shards: 4 }, 14, 14, "0004"),
            (
                MetaOp::ReshardProgress { epoch: 1, shard: 2, progress: progress(), shards: 4 },
                15,
                15,
                "010201020101630104",
            ),
            (MetaOp::SetUnreachable { id: 2, unreachable: true }, 18, 19, "0201"),
            (MetaOp::ReshardStalled { epoch: 8, shard: 1, key: k(), error: "e".into() }, 19, 20, "0801016b0165"),
            (MetaOp::DeployShadowHook { spec: spec() }, 23, 24, "0168000001700173020178000080ade2048080800880ade20403"),
            (MetaOp::PromoteHook { name: "h".into() }, 24, 25, "0168"),
            (MetaOp::RemoveShadowHook { name: "h".into() }, 25, 26, "0168"),
            (MetaOp::ResizeShards { change: split, shards: 4 }, 26, 27, "00010107010304"),
            (MetaOp::ResizeShards { change: ShardChange::Merge { keep: 1, absorb: 2 }, shards: 4 }, 26, 27, "01010204"),
        ]
    }

    /// A sample of each key op and its bytes in the flat log enum.
    fn kv_op_samples() -> Vec<(KvOp, &'static str)> {
        let stamped =
            KvOp::Put { key: k(), value: b"v".to_vec(), expires_at: Some(9), if_version: Some(3), hooks: stamp() };
        vec![
            (stamped, "00016b01760109010301010168020104"),
            (KvOp::Delete { key: k(), if_version: None, hooks: None }, "01016b0000"),
            (KvOp::Expire { key: k(), version: 7 }, "02016b07"),
            (
                KvOp::MoveIn { key: k(), value: b"v".to_vec(), version: 5, expires_at: None, epoch: 8 },
                "10016b0176050008",
            ),
            (KvOp::ClearMoveMarkers { epoch: 8 }, "1108"),
            (KvOp::ClearMoveMarkersUpTo { epoch: 8 }, "1408"),
            (KvOp::MoveInBatch { records: vec![record()], epoch: 8 }, "1501016b017605010608"),
            (KvOp::ExpireBatch { keys: vec![(k(), 5)] }, "1601016b05"),
        ]
    }

    /// A sample of each key proposal and its bytes in the flat proposal enum.
    fn kv_proposal_samples() -> Vec<(KvProposal, &'static str)> {
        let stamped =
            KvProposal::Put { key: k(), value: b"v".to_vec(), ttl_ms: Some(9), if_version: Some(3), hooks: stamp() };
        let moved = KvProposal::MoveIn { key: k(), value: b"v".to_vec(), version: 5, expires_at: Some(6), epoch: 8 };
        let batch = KvProposal::MoveInBatch { records: vec![record(), record()], epoch: 8 };
        vec![
            (stamped, "00016b01760109010301010168020104"),
            (KvProposal::Delete { key: k(), if_version: Some(1), hooks: None }, "01016b010100"),
            (KvProposal::Expire { key: k(), version: 7 }, "02016b07"),
            (moved, "10016b017605010608"),
            (KvProposal::MoveOut { key: k(), version: 5, epoch: 8 }, "11016b0508"),
            (KvProposal::ClearMoveMarkers { epoch: 8 }, "1208"),
            (KvProposal::ClearMoveMarkersUpTo { epoch: 8 }, "1508"),
            (batch, "1602016b0176050106016b017605010608"),
            (KvProposal::MoveOutBatch { keys: vec![(k(), 5)], epoch: 8 }, "1701016b0508"),
        ]
    }

    #[test]
    fn log_ops_keep_the_flat_encoding() {
        let mut samples: Vec<(Op, String)> =
            kv_op_samples().into_iter().map(|(op, hex)| (Op::Kv(op), hex.to_string())).collect();
        let cmd = Command { now_ms: 300, ops: samples[..3].iter().map(|(op, _)| op.clone()).collect() };
        samples.extend(meta_samples().into_iter().map(|(op, tag, _, body)| (op.into(), format!("{tag:02x}{body}"))));
        check(samples);
        check(vec![(cmd, "ac020300016b0176010901030101016802010401016b000002016b07".into())]);
    }

    #[test]
    fn proposals_keep_the_flat_encoding() {
        let mut samples: Vec<(Proposal, String)> =
            kv_proposal_samples().into_iter().map(|(p, hex)| (p.into(), hex.to_string())).collect();
        samples.extend(meta_samples().into_iter().map(|(op, _, tag, body)| (op.into(), format!("{tag:02x}{body}"))));
        check(samples);
    }

    /// Each variant's position in its enum. The matches are exhaustive, so
    /// a new variant does not compile until it is given a sample above and
    /// an index in `wire`'s tables.
    fn kv_op_position(op: &KvOp) -> usize {
        match op {
            KvOp::Put { .. } => 0,
            KvOp::Delete { .. } => 1,
            KvOp::Expire { .. } => 2,
            KvOp::MoveIn { .. } => 3,
            KvOp::ClearMoveMarkers { .. } => 4,
            KvOp::ClearMoveMarkersUpTo { .. } => 5,
            KvOp::MoveInBatch { .. } => 6,
            KvOp::ExpireBatch { .. } => 7,
        }
    }

    fn kv_proposal_position(p: &KvProposal) -> usize {
        match p {
            KvProposal::Put { .. } => 0,
            KvProposal::Delete { .. } => 1,
            KvProposal::Expire { .. } => 2,
            KvProposal::MoveIn { .. } => 3,
            KvProposal::MoveOut { .. } => 4,
            KvProposal::ClearMoveMarkers { .. } => 5,
            KvProposal::ClearMoveMarkersUpTo { .. } => 6,
            KvProposal::MoveInBatch { .. } => 7,
            KvProposal::MoveOutBatch { .. } => 8,
        }
    }

    fn meta_op_position(op: &MetaOp) -> usize {
        match op {
            MetaOp::SetNode { .. } => 0,
            MetaOp::RemoveNode { .. } => 1,
            MetaOp::SetAssignment { .. } => 2,
            MetaOp::SetDraining { .. } => 3,
            MetaOp::SetDown { .. } => 4,
            MetaOp::SetLeaderHint { .. } => 5,
            MetaOp::DeployHook { .. } => 6,
            MetaOp::RemoveHook { .. } => 7,
            MetaOp::RollbackHook { .. } => 8,
            MetaOp::CreateToken { .. } => 9,
            MetaOp::RevokeToken { .. } => 10,
            MetaOp::SetPartitioner { .. } => 11,
            MetaOp::ReshardProgress { .. } => 12,
            MetaOp::SetUnreachable { .. } => 13,
            MetaOp::ReshardStalled { .. } => 14,
            MetaOp::DeployShadowHook { .. } => 15,
            MetaOp::PromoteHook { .. } => 16,
            MetaOp::RemoveShadowHook { .. } => 17,
            MetaOp::ResizeShards { .. } => 18,
        }
    }

    /// Every variant has a sample, and every flat index belongs to exactly
    /// one variant: the tables hold each index once, without gaps.
    #[test]
    fn the_wire_tables_cover_every_variant_and_every_index_once() {
        use wire::KvPart;
        fn flat_indices<K: KvPart>() -> Vec<u32> {
            let mut all: Vec<u32> = K::KV_INDICES.iter().chain(K::META_INDICES).copied().collect();
            all.sort_unstable();
            all
        }
        assert_eq!(flat_indices::<KvOp>(), (0..27).collect::<Vec<_>>());
        assert_eq!(flat_indices::<KvProposal>(), (0..28).collect::<Vec<_>>());
        let positions = |mut p: Vec<usize>| {
            p.sort_unstable();
            p.dedup();
            p
        };
        let kv = positions(kv_op_samples().iter().map(|(op, _)| kv_op_position(op)).collect());
        assert_eq!(kv, (0..KvOp::KV_INDICES.len()).collect::<Vec<_>>());
        let proposals = positions(kv_proposal_samples().iter().map(|(p, _)| kv_proposal_position(p)).collect());
        assert_eq!(proposals, (0..KvProposal::KV_INDICES.len()).collect::<Vec<_>>());
        let metas = positions(meta_samples().iter().map(|(op, ..)| meta_op_position(op)).collect());
        assert_eq!(metas, (0..KvOp::META_INDICES.len()).collect::<Vec<_>>());
    }

    #[test]
    fn an_unknown_command_index_is_an_error_not_another_command() {
        assert!(postcard::from_bytes::<Op>(&[27, 0]).is_err());
        assert!(postcard::from_bytes::<Proposal>(&[28, 0]).is_err());
        // A proposal-only variant (MoveOut, 17 there) is a log op's
        // ClearMoveMarkers: each side reads by its own table.
        assert_eq!(postcard::from_bytes::<Op>(&[17, 8]).expect("decode"), Op::Kv(KvOp::ClearMoveMarkers { epoch: 8 }));
    }
}
