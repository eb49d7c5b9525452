//! What `ringkv backup` reads from a node: a shard's records from one
//! point-in-time view on its leader, and the hook registry as the meta
//! leader has committed it. The `Backup` gRPC service and the CLI own the
//! wire and file formats; this module owns consistency.
//!
//! A dump is linearizable: the leader confirms its leadership with a quorum
//! (ReadIndex) and waits until it has applied everything committed before
//! the call, then takes one fjall snapshot. Every record comes from that
//! snapshot, so the dump is the shard's state at exactly one applied index,
//! holding every write acknowledged before the call, however long streaming
//! it takes and even if leadership moves meanwhile.

use tokio::sync::mpsc;

use super::routing::Attempt;
use super::{shard_group, Group, Node, NodeError, META_GROUP};
use crate::hooks::HookSpec;
use crate::raft::types::now_ms;
use crate::raft::NodeId;
use crate::ring::ShardId;
use crate::storage::{Envelope, GroupId, Storage};

/// A chunk closes once its keys and values reach this many bytes. Small
/// enough for default gRPC message limits, big enough to amortize framing.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks produced ahead of the network: bounds a dump's memory.
const CHUNKS_AHEAD: usize = 4;

/// Records of one chunk: (user key, envelope), in key order.
pub type DumpChunk = Vec<(Vec<u8>, Envelope)>;

/// A shard dump being streamed from one storage view.
pub struct ShardDump {
    /// The log index the view was taken at.
    pub applied_index: u64,
    /// This node's clock when the view was taken; records expired by then are left out.
    pub read_at_ms: u64,
    /// At least one chunk (possibly empty), then the channel closes. An
    /// `Err` ends the dump early.
    pub chunks: mpsc::Receiver<Result<DumpChunk, NodeError>>,
}

/// The hook registry as committed at `meta_applied_index` or later.
pub struct HookBackup {
    /// Active hooks, ordered by name.
    pub hooks: Vec<HookSpec>,
    pub meta_applied_index: u64,
}

impl Node {
    /// The group if this node leads it and a ReadIndex round confirmed it
    /// (so the local state machine holds every acknowledged write).
    async fn led_and_caught_up(&self, gid: GroupId, what: &str) -> Result<std::sync::Arc<Group>, NodeError> {
        let not_leader = || NodeError::Unavailable(format!("node {} does not lead {what}", self.id()));
        let g = self.group(gid).map_err(|_| not_leader())?;
        if g.raft.metrics().borrow().current_leader != Some(self.id()) {
            return Err(not_leader());
        }
        match g.batchers.read_barrier().await? {
            Attempt::Done(()) => Ok(g),
            Attempt::Retry => Err(not_leader()),
        }
    }

    /// Starts dumping shard `shard`. Fails with `Unavailable` unless this
    /// node leads the shard; [`Node::leader_hint`] tells where to go instead.
    pub async fn dump_shard(&self, shard: ShardId) -> Result<ShardDump, NodeError> {
        let view = self.partition_view();
        if !view.shard_map().contains(shard) {
            let ids: Vec<String> = view.shard_map().ids().map(|id| id.to_string()).collect();
            return Err(NodeError::InvalidArgument(format!(
                "shard {shard} does not exist: the cluster's shards are {}",
                ids.join(", ")
            )));
        }
        let gid = shard_group(shard);
        self.led_and_caught_up(gid, &format!("shard {shard}")).await?;
        let storage = self.storage().clone();
        let (view, applied_index) = storage
            .blocking(move |s| {
                let view = s.db().snapshot();
                let applied = crate::raft::state_machine::applied_in(s, &view, gid)?;
                Ok::<_, NodeError>((view, applied.map_or(0, |l| l.index)))
            })
            .await?;
        let read_at_ms = now_ms();
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || stream_view(&storage, &view, gid, read_at_ms, &tx));
        Ok(ShardDump { applied_index, read_at_ms, chunks: rx })
    }

    /// The active hooks, read on the meta leader after a ReadIndex round so
    /// no committed deploy or removal is missed.
    pub async fn hooks_for_backup(&self) -> Result<HookBackup, NodeError> {
        let meta = self.led_and_caught_up(META_GROUP, "the meta group").await?;
        let meta_applied_index = meta.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let mut hooks: Vec<HookSpec> =
            self.meta().hook_records().await?.into_iter().filter_map(|r| r.current).collect();
        hooks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(HookBackup { hooks, meta_applied_index })
    }

    /// Who leads `gid` as far as this node knows: its own Raft view when it
    /// hosts the group, else the leader last reported to the meta group.
    pub async fn leader_hint(&self, gid: GroupId) -> Option<NodeId> {
        if let Ok(g) = self.group(gid) {
            if let Some(l) = g.raft.metrics().borrow().current_leader {
                return Some(l);
            }
        }
        if gid == META_GROUP {
            return None;
        }
        let shard = ShardId::try_from(gid - 1).ok()?;
        let hints = self.meta().leader_hints().await.ok()?;
        hints.get(&shard).map(|(leader, _)| *leader)
    }
}

/// Sends the live records of `gid` in `view` as chunks, on a blocking
/// thread: the channel's bound holds the iterator back while the client is
/// slower than the disk. Stops when the receiver goes away.
fn stream_view(
    storage: &Storage,
    view: &fjall::Snapshot,
    gid: GroupId,
    now: u64,
    tx: &mpsc::Sender<Result<DumpChunk, NodeError>>,
) {
    use fjall::Readable;
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut sent_any = false;
    for item in view.prefix(storage.sm_data(), gid.to_be_bytes()) {
        let record = item
            .into_inner()
            .map_err(|e| NodeError::Internal(format!("reading shard data for a dump: {e}")))
            .and_then(|(k, v)| Ok((k, Envelope::decode(&v)?)));
        let (key, env) = match record {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if env.is_expired(now) {
            continue;
        }
        bytes += key.len() + env.value.len();
        chunk.push((key[8..].to_vec(), env));
        if bytes >= CHUNK_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            sent_any = true;
            bytes = 0;
        }
    }
    if !chunk.is_empty() || !sent_any {
        let _ = tx.blocking_send(Ok(chunk));
    }
}
