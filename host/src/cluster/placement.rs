//! Replica placement at run time.
//!
//! - The **reconciler** (every node) starts the shard groups the meta group
//!   assigns to this node and drops, with their data, the ones it no longer
//!   assigns here.
//! - The **rebalancer** (the meta leader only) compares each shard's recorded
//!   replicas with [`crate::ring::place`] over the active members (members
//!   that are not draining) and moves replicas, a few shards at a time:
//!   record the union (new replicas start their group), add each new replica
//!   as learner, let it catch up, promote it, remove the old replicas from the
//!   shard's Raft group, then record the target. Every step is idempotent, so
//!   a move interrupted by a crash or a leader change is finished by the next
//!   round. Membership changes are serialized through the meta leader.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use super::membership::MembershipOp;
use super::{shard_group, Node, NodeError, Proposal, META_GROUP};
use crate::raft::NodeId;
use crate::ring::ShardId;

/// How often the reconciler compares hosted groups with the assignment.
const RECONCILE_EVERY: Duration = Duration::from_millis(300);
/// How often the meta leader looks for shards to move.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// Shards moved at once.
pub const MOVE_CONCURRENCY: usize = 4;

impl Node {
    pub(super) async fn reconcile_loop(self) {
        let mut stop = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciling hosted shards");
            }
        }
    }

    async fn reconcile(&self) -> Result<(), NodeError> {
        let assignments = self.assignments().await?;
        for (shard, replicas) in &assignments {
            let gid = shard_group(*shard);
            let hosted = self.group(gid).is_ok();
            if replicas.contains(&self.id()) && !hosted {
                tracing::info!(shard, "shard assigned here; starting its group");
                self.ensure_group(gid).await?;
            } else if !replicas.contains(&self.id()) && hosted {
                // The rebalancer records an assignment without this node only
                // after the shard's Raft group has committed its removal, so
                // the replica no longer counts for any quorum. (The removed
                // replica itself may never learn of that commit.)
                tracing::info!(shard, "shard no longer assigned here; dropping its replica");
                self.drop_group(gid).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn rebalance_loop(self) {
        let mut stop = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(REBALANCE_EVERY) => {}
            }
            let Ok(meta) = self.group(META_GROUP) else { continue };
            if meta.raft.current_leader().await != Some(self.id()) {
                continue;
            }
            if let Err(e) = self.rebalance_round().await {
                tracing::warn!(error = %e, "rebalancing");
            }
        }
    }

    /// The members placement may use: meta members that are not draining.
    pub(super) async fn active_members(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        let draining = self.group(META_GROUP)?.sm.draining().await?;
        Ok(self.members()?.into_iter().map(|(id, _, _)| id).filter(|id| !draining.contains(id)).collect())
    }

    /// Moves every shard whose replicas differ from the placement target.
    async fn rebalance_round(&self) -> Result<(), NodeError> {
        let active = self.active_members().await?;
        if active.is_empty() {
            return Ok(());
        }
        let target = crate::ring::place(self.ring(), &active);
        let current = self.assignments().await?;
        let pending = self.group(META_GROUP)?.sm.pending_moves().await?;
        let moves: Vec<(ShardId, Vec<NodeId>, Vec<NodeId>)> = (0..self.ring().shards)
            .filter_map(|s| {
                let cur = current.get(&s)?;
                let want = target.get(s as usize)?;
                let same = cur.iter().collect::<BTreeSet<_>>() == want.iter().collect::<BTreeSet<_>>();
                (!same || pending.contains(&s)).then(|| (s, cur.clone(), want.clone()))
            })
            .collect();
        if moves.is_empty() {
            return Ok(());
        }
        tracing::info!(shards = moves.len(), "rebalancing: moving replicas");
        let total = moves.len();
        let mut done = 0usize;
        let mut stream = futures::stream::iter(moves)
            .map(|(s, cur, want)| async move { (s, self.move_shard(s, &cur, &want).await) })
            .buffer_unordered(MOVE_CONCURRENCY);
        while let Some((shard, r)) = stream.next().await {
            match r {
                Ok(()) => done += 1,
                Err(e) => tracing::warn!(shard, error = %e, "shard move failed; retrying next round"),
            }
        }
        tracing::info!(done, total, "rebalancing round finished");
        Ok(())
    }

    /// Moves one shard from `current` to `target` replicas (idempotent).
    async fn move_shard(&self, shard: ShardId, current: &[NodeId], target: &[NodeId]) -> Result<(), NodeError> {
        let gid = shard_group(shard);
        let union: Vec<NodeId> = current.iter().chain(target).copied().collect::<BTreeSet<_>>().into_iter().collect();
        // Recorded as pending until the Raft membership matches the target,
        // so neither the rebalancer nor `status` mistakes it for done.
        self.propose(META_GROUP, Proposal::SetAssignment { shard, replicas: union.clone(), pending: true }).await?;
        for &n in target {
            let addr = self.addr_of(n).ok_or_else(|| NodeError::Unavailable(format!("no address for node {n}")))?;
            self.change_membership(gid, MembershipOp::AddVoter { id: n, addr }).await?;
        }
        for &n in union.iter().filter(|n| !target.contains(n)) {
            self.change_membership(gid, MembershipOp::Remove { id: n }).await?;
        }
        self.propose(META_GROUP, Proposal::SetAssignment { shard, replicas: target.to_vec(), pending: false }).await?;
        tracing::info!(shard, from = ?current, to = ?target, "shard moved");
        Ok(())
    }
}
