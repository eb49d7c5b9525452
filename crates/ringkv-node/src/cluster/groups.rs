//! The Raft groups this node hosts: each one's Raft instance, state
//! machine, batchers and last measured size, and the registry that starts
//! and stops them one at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use super::{batching, quiescence, NodeError};
use crate::hooks::HookRegistry;
use crate::ids::META_GROUP;
use crate::raft::state_machine::ReplicaSize;
use crate::raft::{start_group, ApplyMeta, NodeId, Peers, Raft, RaftTuning, StateMachine};
use crate::storage::{GroupId, Storage, StorageError};

/// One Raft group hosted by this node.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub sm: StateMachine,
    /// Write and read batchers feeding `raft` while this node leads.
    pub(super) batchers: batching::Batchers,
    /// The batcher tasks, aborted when the group leaves this node.
    tasks: Vec<JoinHandle<()>>,
    /// The last measure of this replica's size, for status and the resize
    /// policy.
    size: SizeCache,
}

/// How old a replica's size that status shows may be before it is
/// measured again, at least: a measure that took longer than a hundredth
/// of this waits a hundred times its duration, so measuring (a full scan)
/// never takes more than 1 % of a core however large the replica.
pub const KEY_COUNT_EVERY: Duration = Duration::from_secs(10);

/// Keys a measure draws for a size-weighted split point.
const SIZE_SAMPLE: usize = 256;

/// A replica's last size, kept for [`Group::approximate_size`].
#[derive(Default)]
struct SizeCache {
    /// The size, when it was measured and how long that took.
    last: Mutex<Option<(Arc<ReplicaSize>, std::time::Instant, Duration)>>,
    measuring: std::sync::atomic::AtomicBool,
}

impl Group {
    /// Ends this node's read lease on the group: the Raft service calls it
    /// before handing openraft a Vote (see `batching::ReadLease`).
    pub fn revoke_read_lease(&self) {
        self.batchers.lease().revoke();
    }

    /// Whether the group sleeps here (`quiescence`); the batchers wake it.
    pub(super) fn quiet(&self) -> &quiescence::Quiet {
        self.batchers.quiet()
    }

    /// This replica's size now: a full scan, remembered for
    /// [`Group::approximate_size`].
    pub async fn measure(&self) -> Result<Arc<ReplicaSize>, StorageError> {
        let started = std::time::Instant::now();
        let size = Arc::new(self.sm.measure(SIZE_SAMPLE).await?);
        *self.size.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((size.clone(), started, started.elapsed()));
        Ok(size)
    }

    /// This replica's size as of at most [`KEY_COUNT_EVERY`] ago (or a
    /// hundred times its last measure's duration, if longer), and when it
    /// was measured: an older one is returned at once and measured again in
    /// the background, so status stays cheap to poll.
    pub async fn approximate_size(self: &Arc<Self>) -> Result<(Arc<ReplicaSize>, std::time::Instant), StorageError> {
        let last = self.size.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some((size, at, took)) = last else {
            let at = std::time::Instant::now();
            return Ok((self.measure().await?, at));
        };
        if at.elapsed() >= KEY_COUNT_EVERY.max(took * 100)
            && !self.size.measuring.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let g = self.clone();
            tokio::spawn(async move {
                if let Err(e) = g.measure().await {
                    tracing::debug!(group = g.id, error = %e, "measuring a replica for status");
                }
                g.size.measuring.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        Ok((size, at))
    }
}

/// The groups hosted here.
pub(super) struct Groups {
    node: NodeId,
    storage: Storage,
    peers: Arc<Peers>,
    tuning: RaftTuning,
    /// Handed to each group's batchers, which judge writes on the leader.
    hooks: Arc<HookRegistry>,
    /// Swapped as a whole when the set changes, so lookups never wait.
    hosted: ArcSwap<BTreeMap<GroupId, Arc<Group>>>,
    /// Serializes starting and dropping groups.
    lock: tokio::sync::Mutex<()>,
}

impl Groups {
    pub fn new(
        node: NodeId,
        storage: Storage,
        peers: Arc<Peers>,
        tuning: RaftTuning,
        hooks: Arc<HookRegistry>,
    ) -> Self {
        Groups {
            node,
            storage,
            peers,
            tuning,
            hooks,
            hosted: ArcSwap::from_pointee(BTreeMap::new()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self, id: GroupId) -> Result<Arc<Group>, NodeError> {
        self.hosted.load().get(&id).cloned().ok_or(NodeError::NoSuchGroup(id))
    }

    pub fn all(&self) -> Vec<Arc<Group>> {
        self.hosted.load().values().cloned().collect()
    }

    /// Starts the Raft instance of `gid` here unless it already runs.
    pub async fn ensure(&self, gid: GroupId) -> Result<Arc<Group>, NodeError> {
        let _guard = self.lock.lock().await;
        if let Some(g) = self.hosted.load().get(&gid) {
            return Ok(g.clone());
        }
        // The meta group's state machine applies the cluster configuration.
        let apply_meta = (gid == META_GROUP).then_some(crate::meta::apply as ApplyMeta);
        let (raft, sm) = start_group(self.node, gid, &self.storage, self.peers.clone(), &self.tuning, apply_meta)
            .await
            .map_err(Box::new)?;
        let lease = batching::ReadLease::new(self.tuning.read_lease());
        let (batchers, tasks) = batching::Batchers::start(gid, raft.clone(), self.hooks.clone(), sm.clone(), lease);
        let group = Arc::new(Group { id: gid, raft, sm, batchers, tasks: tasks.into(), size: SizeCache::default() });
        self.hosted.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(gid, group.clone());
            m
        });
        tracing::debug!(group = gid, "group started");
        Ok(group)
    }

    /// Stops the Raft instance of `gid` and deletes its data from this node.
    pub async fn remove(&self, gid: GroupId) -> Result<(), NodeError> {
        let _guard = self.lock.lock().await;
        let Some(group) = self.hosted.load().get(&gid).cloned() else { return Ok(()) };
        self.hosted.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.remove(&gid);
            m
        });
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = gid, error = %e, "raft shutdown");
        }
        for t in &group.tasks {
            t.abort();
        }
        self.storage
            .write_durable(true, move |s, batch| crate::storage::remove_group(s, batch, gid))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        // Under the group lock, so a replica started here again cannot have
        // flushed records into the range yet.
        let dropped = self.storage.blocking(move |s| s.drop_group_tables(gid)).await;
        if let Err(e) = dropped {
            tracing::warn!(group = gid, error = %e, "freeing a removed replica's tables; compaction will");
        }
        tracing::info!(group = gid, "replica removed from this node and its data deleted");
        Ok(())
    }

    /// Stops every group (the node shuts down); they stay listed until
    /// [`Groups::forget_all`], and their data stays.
    pub async fn stop_all(&self) {
        let _guard = self.lock.lock().await;
        for g in self.all() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown");
            }
            for t in &g.tasks {
                t.abort();
            }
        }
    }

    /// Forgets every group (the node has stopped them and its workers).
    pub fn forget_all(&self) {
        self.hosted.store(Arc::new(BTreeMap::new()));
    }
}
