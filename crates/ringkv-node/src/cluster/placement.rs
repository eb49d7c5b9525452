//! Replica placement at run time.
//!
//! - The **reconciler** (every node) starts the shard groups the meta group
//!   assigns to this node and drops, with their data, the ones it no longer
//!   assigns here.
//! - The **liveness tracker** (the meta leader only) marks a member down in
//!   the meta group once its Raft transport has not answered for the down
//!   timeout, and up again as soon as it answers.
//! - The **rebalancer** (the meta leader only) compares each shard's recorded
//!   replicas with [`crate::ring::place`] over the active members (members
//!   that are neither draining nor down) and moves replicas, a few shards at a time:
//!   record the union (new replicas start their group), add each new replica
//!   as learner, let it catch up, promote it, remove the old replicas from the
//!   shard's Raft group, then record the target. Every step is idempotent, so
//!   a move interrupted by a crash or a leader change is finished by the next
//!   round. Membership changes are serialized through the meta leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::membership::MembershipOp;
use super::resize_policy::LoadTracker;
use super::workers::Worker;
use super::{shard_group, Node, NodeError, META_GROUP};
use crate::command::MetaOp;
use crate::raft::NodeId;
use crate::ring::ShardId;

/// How often the reconciler compares hosted groups with the assignment.
const RECONCILE_EVERY: Duration = Duration::from_millis(300);
/// How often the meta leader looks for shards to move.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// Shards moved at once.
pub const MOVE_CONCURRENCY: usize = 4;
/// A node marked down is marked up again once it has answered this recently.
const BACK_UP_WITHIN: Duration = Duration::from_secs(2);
/// A member silent this long is marked unreachable: status counts its
/// replicas as missing (under-replicated shards) long before the down
/// timeout re-creates them elsewhere. Longer than [`BACK_UP_WITHIN`], so a
/// member that just answered is never marked.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

impl Node {
    pub(super) async fn reconcile_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        // (meta epoch, routing generation, hosted groups) of the last
        // successful round: an idle node skips reading the meta group when
        // none changed. (The partition view, which says which shards exist,
        // follows the meta group a little later.)
        let mut last: Option<(u64, u64, Vec<u64>)> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            w.round();
            let seen = (
                self.meta_epoch(),
                self.partition_view().generation(),
                self.groups().iter().map(|g| g.id).collect::<Vec<_>>(),
            );
            if last.as_ref() == Some(&seen) {
                continue;
            }
            match self.reconcile().await {
                Ok(()) => last = Some(seen),
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling hosted shards");
                    w.failed(&e);
                }
            }
        }
    }

    async fn reconcile(&self) -> Result<(), NodeError> {
        let assignments = self.assignments().await?;
        // A shard a merge retired has no assignment left; its replica here
        // holds nothing (its keys moved) and goes.
        let holding: BTreeSet<ShardId> = self.partition_view().shards().into_iter().collect();
        for g in self.groups() {
            let shard = (g.id.wrapping_sub(1)) as ShardId;
            if g.id != META_GROUP && !assignments.contains_key(&shard) && !holding.contains(&shard) {
                tracing::info!(shard, "shard retired by a merge; dropping its replica");
                self.drop_group(g.id).await?;
            }
        }
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

    pub(super) async fn rebalance_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        // When this node, as meta leader, first saw each member: a member it
        // has never heard from is silent since then, not since forever. A
        // node that joins while this leader has led for longer than the down
        // timeout is therefore not marked down before its first answer.
        let mut watching_since: BTreeMap<NodeId, Instant> = BTreeMap::new();
        // Meta epoch of the last round that found every shard in place.
        let mut in_place_at: Option<u64> = None;
        let mut load = LoadTracker::default();
        let meta = self.meta();
        let mut metrics = meta.group().raft.metrics();
        loop {
            // A member joining or leaving starts a round at once, not at the
            // next tick: until then a new cluster's shards live on one node.
            let seen = *metrics.borrow_and_update().membership_config.log_id();
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(REBALANCE_EVERY) => {}
                r = metrics.wait_for(|m| *m.membership_config.log_id() != seen) => if r.is_err() { return },
            }
            w.round();
            if meta.group().raft.current_leader().await != Some(self.id()) {
                watching_since.clear();
                in_place_at = None;
                load = LoadTracker::default();
                continue;
            }
            if let Err(e) = self.track_liveness(&mut watching_since).await {
                tracing::warn!(error = %e, "tracking member liveness");
                w.failed(&e);
            }
            // Size and load change without the meta state changing.
            match self.resize_by_size_and_load(&mut load).await {
                Ok(true) => {
                    in_place_at = None;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "starting an automatic split or merge");
                    w.failed(&e);
                }
            }
            let epoch = self.meta_epoch();
            if in_place_at == Some(epoch) {
                continue;
            }
            // Split first, move after: a split's new shard starts on its
            // parent's replicas, so splitting before spreading moves each
            // replica once, and the moves carry smaller shards.
            match self.spread_by_splitting().await {
                Ok(true) => {
                    in_place_at = None;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "starting an automatic split");
                    w.failed(&e);
                }
            }
            match self.rebalance_round().await {
                Ok(true) => in_place_at = Some(epoch),
                Ok(false) => in_place_at = None,
                Err(e) => {
                    in_place_at = None;
                    tracing::warn!(error = %e, "rebalancing");
                    w.failed(&e);
                }
            }
        }
    }

    /// Marks members unreachable, then down, that have not answered the
    /// meta leader's Raft messages (heartbeats reach every member) for
    /// [`UNREACHABLE_AFTER`], then the down timeout, and marks them
    /// reachable and up again once they answer. `watching_since` holds when
    /// this leader first saw each member; silence counts from then at the
    /// earliest.
    async fn track_liveness(&self, watching_since: &mut BTreeMap<NodeId, Instant>) -> Result<(), NodeError> {
        let meta = self.meta();
        // Each marker: who carries it, the silence that sets it, its proposal,
        // and what is logged when it is set and cleared.
        type Mark = fn(NodeId, bool) -> MetaOp;
        let markers: [(BTreeSet<NodeId>, Duration, Mark, &str, &str); 2] = [
            (
                meta.unreachable().await?,
                UNREACHABLE_AFTER,
                |id, unreachable| MetaOp::SetUnreachable { id, unreachable },
                "node unreachable: its shard replicas count as missing until it answers",
                "node answers again",
            ),
            (
                meta.down().await?,
                self.config().down_timeout,
                |id, down| MetaOp::SetDown { id, down },
                "node unreachable past the down timeout; marking it down so its replicas are re-created elsewhere",
                "node answers again; marking it up",
            ),
        ];
        let members = self.members()?;
        watching_since.retain(|id, _| members.iter().any(|(m, _, _)| m == id));
        for (id, _, _) in members {
            let since = *watching_since.entry(id).or_insert_with(Instant::now);
            let last = if id == self.id() { Some(Instant::now()) } else { self.peers().last_answer(id) };
            let silent_for = last.map_or(since, |t| t.max(since)).elapsed();
            let answered_recently = last.is_some_and(|t| t.elapsed() < BACK_UP_WITHIN);
            for (marked, after, mark, on_set, on_clear) in &markers {
                if marked.contains(&id) && answered_recently {
                    tracing::info!(node = id, "{on_clear}");
                    self.propose(META_GROUP, mark(id, false)).await?;
                } else if !marked.contains(&id) && silent_for >= *after {
                    tracing::warn!(node = id, silent_for = ?silent_for, "{on_set}");
                    self.propose(META_GROUP, mark(id, true)).await?;
                }
            }
        }
        Ok(())
    }

    /// Members whose replicas count as missing: marked down or unreachable.
    pub async fn missing_members(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        let meta = self.meta();
        let mut missing = meta.down().await?;
        missing.extend(meta.unreachable().await?);
        Ok(missing)
    }

    /// The members placement may use: meta members that are not draining
    /// and not down. Down members stay in when leaving them out would leave
    /// fewer than RF nodes: moving a replica off a down node then gains no
    /// redundancy and costs a full copy when it returns.
    pub async fn active_members(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        let meta = self.meta();
        let draining = meta.draining().await?;
        let down = meta.down().await?;
        let up: BTreeSet<NodeId> =
            self.members()?.into_iter().map(|(id, _, _)| id).filter(|id| !draining.contains(id)).collect();
        let live: BTreeSet<NodeId> = up.difference(&down).copied().collect();
        let rf = self.ring().replication_factor as usize;
        Ok(if live.len() >= rf.min(up.len()) { live } else { up })
    }

    /// Moves every shard whose replicas differ from the placement target.
    /// True when every shard was already in place.
    async fn rebalance_round(&self) -> Result<bool, NodeError> {
        let active = self.active_members().await?;
        if active.is_empty() {
            return Ok(true);
        }
        let view = self.partition_view();
        if let Some(r) = &view.state.resize {
            // One change at a time: the shards of a split or merge keep
            // their replicas until its keys have moved.
            tracing::debug!(change = %r.change, "rebalancing waits for the shard resize to finish");
            return Ok(false);
        }
        let target = crate::ring::place_map(view.shard_map(), self.ring(), &active);
        let current = self.assignments().await?;
        let pending = self.meta().pending_moves().await?;
        let moves: Vec<(ShardId, Vec<NodeId>, Vec<NodeId>)> = view
            .shard_map()
            .ids()
            .filter_map(|s| {
                let cur = current.get(&s)?;
                let want = target.get(&s)?;
                let same = cur.iter().collect::<BTreeSet<_>>() == want.iter().collect::<BTreeSet<_>>();
                (!same || pending.contains(&s)).then(|| (s, cur.clone(), want.clone()))
            })
            .collect();
        if moves.is_empty() {
            metrics::gauge!(crate::telemetry::REBALANCE_PENDING).set(0.0);
            return Ok(true);
        }
        tracing::info!(shards = moves.len(), "rebalancing: moving replicas");
        let total = moves.len();
        metrics::gauge!(crate::telemetry::REBALANCE_PENDING).set(total as f64);
        let mut done = 0usize;
        let mut stream = futures::stream::iter(moves)
            .map(|(s, cur, want)| async move { (s, self.move_shard(s, &cur, &want).await) })
            .buffer_unordered(MOVE_CONCURRENCY);
        while let Some((shard, r)) = stream.next().await {
            match r {
                Ok(()) => {
                    done += 1;
                    metrics::counter!(crate::telemetry::REBALANCE_MOVES, "result" => "ok").increment(1);
                    metrics::gauge!(crate::telemetry::REBALANCE_PENDING).decrement(1.0);
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "shard move failed; retrying next round");
                    metrics::counter!(crate::telemetry::REBALANCE_MOVES, "result" => "failed").increment(1);
                }
            }
        }
        tracing::info!(done, total, "rebalancing round finished");
        Ok(false)
    }

    /// Holds a client write to shard group `g` while it has fewer voters
    /// than `--min-replicas` (capped at the replication factor), for most of
    /// the request deadline (a new cluster places its replicas within about
    /// a second), then refuses it. The voters are the group's latest
    /// membership, committed or not: an entry commits only on a majority of
    /// the latest one, so a write acknowledged here is on a majority of at
    /// least that many replicas.
    pub(super) async fn await_min_replicas(&self, g: &super::Group) -> Result<(), NodeError> {
        let want = self.config().min_replicas.min(self.ring().replication_factor as usize);
        if want <= 1 {
            return Ok(());
        }
        let enough = |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| {
            m.membership_config.membership().voter_ids().count() >= want
        };
        if enough(&g.raft.metrics().borrow()) {
            return Ok(());
        }
        let patience = self.config().request_timeout * 3 / 4;
        if g.raft.wait(Some(patience)).metrics(enough, "min replicas").await.is_ok() {
            return Ok(());
        }
        let voters = g.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        Err(NodeError::Unavailable(format!(
            "shard {} has {voters} of the {want} replicas writes need (--min-replicas); writes are refused until the \
             cluster places them (are nodes still joining, or too few members?)",
            g.id - 1
        )))
    }

    /// Moves one shard from `current` to `target` replicas (idempotent).
    async fn move_shard(&self, shard: ShardId, current: &[NodeId], target: &[NodeId]) -> Result<(), NodeError> {
        let gid = shard_group(shard);
        let union: Vec<NodeId> = current.iter().chain(target).copied().collect::<BTreeSet<_>>().into_iter().collect();
        // Recorded as pending until the Raft membership matches the target,
        // so neither the rebalancer nor `status` mistakes it for done.
        self.propose(META_GROUP, MetaOp::SetAssignment { shard, replicas: union.clone(), pending: true }).await?;
        for &n in target {
            let addr = self.addr_of(n).ok_or_else(|| NodeError::Unavailable(format!("no address for node {n}")))?;
            self.change_membership(gid, MembershipOp::AddVoter { id: n, addr }).await?;
        }
        crate::failpoint::crash_point("shard-move");
        for &n in union.iter().filter(|n| !target.contains(n)) {
            self.change_membership(gid, MembershipOp::Remove { id: n }).await?;
        }
        self.propose(META_GROUP, MetaOp::SetAssignment { shard, replicas: target.to_vec(), pending: false }).await?;
        tracing::info!(shard, from = ?current, to = ?target, "shard moved");
        Ok(())
    }
}
