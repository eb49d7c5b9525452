//! Leader spreading: each node hands the shards it leads to their preferred
//! leaders ([`crate::ring::preferred_leaders`]), so leaders are spread over
//! the nodes instead of piling up on the one that bootstrapped the cluster or
//! survived the last failure.
//!
//! openraft 0.9 has no leadership transfer, and a follower that simply
//! campaigns under load loses: the leader has appended entries the follower
//! lacks, refuses its vote, then steps down anyway on seeing the higher term,
//! leaving the group leaderless for an election timeout. So the handover is a
//! small protocol of its own:
//!
//! 1. the leader pauses its write batcher (writes queue) and waits until the
//!    entries in flight are applied and the target has every entry;
//! 2. it asks the target to campaign ([`MembershipOp::Campaign`]);
//! 3. the target's log is as long as the leader's, and the leader has led
//!    for longer than its lease, so the leader grants the vote: with its own
//!    vote the target has a majority of three;
//! 4. the queued writes meet a follower and are forwarded to the new leader.
//!
//! The pause lasts about two round trips. A handover that does not complete
//! in time is abandoned and retried on a later round.
//!
//! The same loop reports this node's shard leaderships to the meta group as
//! routing hints (`SetLeaderHint`), so every node can tell clients the leader
//! of shards it does not host.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::membership::{MembershipOp, MembershipReply};
use super::workers::Worker;
use super::{Group, Node, NodeError, META_GROUP};
use crate::command::MetaOp;
use crate::raft::NodeId;
use crate::storage::GroupId;

/// How often a node looks for shards to hand over.
const BALANCE_EVERY: Duration = Duration::from_secs(1);
/// Handovers a node runs at once.
const HANDOVER_CONCURRENCY: usize = 8;
/// How long the target may take to receive the last entries.
const CATCH_UP: Duration = Duration::from_millis(500);

impl Node {
    pub(super) async fn leader_balance_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        // (group → term, since when this node leads it in that term)
        let mut leading: HashMap<GroupId, (u64, Instant)> = HashMap::new();
        // The (group, term) leaderships last reported: unchanged means nothing to report.
        let mut reported: Vec<(GroupId, u64)> = Vec::new();
        // (meta epoch, leaderships) of the last round that found nothing to hand over.
        let mut settled: Option<(u64, Vec<(GroupId, u64)>)> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(BALANCE_EVERY) => {}
            }
            w.round();
            let mine = self.my_leaderships();
            if mine != reported {
                match self.report_leaderships(&mine).await {
                    Ok(()) => reported = mine.clone(),
                    Err(e) => {
                        tracing::debug!(error = %e, "reporting shard leaders");
                        w.failed(&e);
                    }
                }
            }
            // Idle and balanced: skip reading the meta group until something changes.
            let seen = (self.meta_epoch(), mine);
            if settled.as_ref() == Some(&seen) {
                continue;
            }
            match self.balance_leaders(&seen.1, &mut leading).await {
                Ok(true) => settled = Some(seen),
                Ok(false) => settled = None,
                Err(e) => {
                    settled = None;
                    tracing::debug!(error = %e, "spreading shard leaders");
                    w.failed(&e);
                }
            }
        }
    }

    /// The shard groups this node leads, with their terms.
    fn my_leaderships(&self) -> Vec<(GroupId, u64)> {
        self.groups()
            .iter()
            .filter(|g| g.id != META_GROUP)
            .filter_map(|g| {
                let m = g.raft.metrics();
                let m = m.borrow();
                (m.current_leader == Some(self.id())).then_some((g.id, m.current_term))
            })
            .collect()
    }

    /// Records in the meta group the leaderships in `mine` whose hint says otherwise.
    async fn report_leaderships(&self, mine: &[(GroupId, u64)]) -> Result<(), NodeError> {
        let hints = self.meta().leader_hints().await?;
        let mut reports = Vec::new();
        for &(gid, term) in mine {
            let shard = (gid - 1) as crate::ring::ShardId;
            if hints.get(&shard) != Some(&(self.id(), term)) {
                reports.push(self.propose(META_GROUP, MetaOp::SetLeaderHint { shard, leader: self.id(), term }));
            }
        }
        // Proposed together, they share one meta entry.
        futures::future::try_join_all(reports).await?;
        Ok(())
    }

    /// Hands over the shards this node leads but should not, a few at once.
    /// True when there was nothing to hand over now or later (no shard
    /// waiting for its leader's tenure).
    async fn balance_leaders(
        &self,
        mine: &[(GroupId, u64)],
        leading: &mut HashMap<GroupId, (u64, Instant)>,
    ) -> Result<bool, NodeError> {
        let meta = self.meta();
        let assignments = self.assignments().await?;
        let pending = meta.pending_moves().await?;
        let down = meta.down().await?;
        let preferred = crate::ring::preferred_leaders(&assignments, &down);
        // A leader grants a vote only once its own lease has run out.
        let tenure = Duration::from_millis(self.config().raft.election_max_ms) + BALANCE_EVERY;
        let mut handovers = Vec::new();
        let mut waiting = false;
        let now = Instant::now();
        leading.retain(|gid, _| mine.iter().any(|(g, _)| g == gid));
        for &(gid, term) in mine {
            let since = leading.entry(gid).or_insert((term, now));
            if since.0 != term {
                *since = (term, now);
            }
            let shard = (gid - 1) as crate::ring::ShardId;
            let Some(&want) = preferred.get(&shard) else { continue };
            let Ok(g) = self.group(gid) else { continue };
            if want != self.id() && !pending.contains(&shard) {
                if now.duration_since(since.1) >= tenure {
                    handovers.push((g, want));
                } else {
                    waiting = true;
                }
            }
        }
        let balanced = handovers.is_empty() && !waiting;
        let mut runs = futures::stream::iter(handovers)
            .map(|(g, to)| async move {
                let started = Instant::now();
                match self.hand_over(&g, to).await {
                    Ok(true) => tracing::info!(
                        group = g.id,
                        to,
                        paused = ?started.elapsed(),
                        "handed shard leadership to its preferred leader"
                    ),
                    Ok(false) => {
                        tracing::debug!(group = g.id, to, "leadership handover did not happen; retrying later")
                    }
                    Err(e) => tracing::debug!(group = g.id, to, error = %e, "leadership handover failed"),
                }
            })
            .buffer_unordered(HANDOVER_CONCURRENCY);
        while runs.next().await.is_some() {}
        Ok(balanced)
    }

    /// Before a graceful stop: hands every group this node leads to its
    /// most caught-up other voter, so clients see a new leader at once
    /// instead of after an election timeout. Bounded by `budget`; returns
    /// how many groups moved.
    pub async fn hand_off_leadership(&self, budget: Duration) -> usize {
        let led: Vec<(std::sync::Arc<Group>, NodeId)> = self
            .groups()
            .into_iter()
            .filter_map(|g| {
                let m = g.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.id()) {
                    return None;
                }
                let repl = m.replication.as_ref()?;
                let target = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| *v != self.id())
                    .max_by_key(|v| repl.get(v).copied().flatten().map_or(0, |l| l.index))?;
                Some((g, target))
            })
            .collect();
        let moves = futures::stream::iter(led)
            .map(|(g, to)| async move { matches!(self.hand_over(&g, to).await, Ok(true)) })
            .buffer_unordered(HANDOVER_CONCURRENCY)
            .filter(|moved| std::future::ready(*moved))
            .count();
        match tokio::time::timeout(budget, moves).await {
            Ok(n) => n,
            Err(_) => {
                tracing::warn!(?budget, "leadership hand-off did not finish in time; stopping anyway");
                0
            }
        }
    }

    /// Hands the leadership of `g` to `to`. False when it did not happen
    /// (the target lagged, refused, or the election went elsewhere).
    async fn hand_over(&self, g: &Group, to: NodeId) -> Result<bool, NodeError> {
        let Ok(paused) = tokio::time::timeout(CATCH_UP, g.batchers.pause_writes()).await else { return Ok(false) };
        let _paused = paused?;
        let mut metrics = g.raft.metrics();
        let caught_up = tokio::time::timeout(CATCH_UP, async {
            loop {
                let done = {
                    let m = metrics.borrow_and_update();
                    if m.current_leader != Some(self.id()) {
                        return false;
                    }
                    let matched = m.replication.as_ref().and_then(|r| r.get(&to).copied().flatten());
                    matched.map(|l| l.index) == m.last_log_index
                };
                if done {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if !caught_up {
            return Ok(false);
        }
        if !matches!(self.send_membership_op(g.id, to, &MembershipOp::Campaign).await, MembershipReply::Done) {
            return Ok(false);
        }
        // Keep writes paused until the vote has been decided, so none lands
        // in this node's log ahead of the target's.
        let election = Duration::from_millis(self.config().raft.election_min_ms);
        let moved = tokio::time::timeout(election, async {
            loop {
                if metrics.borrow_and_update().current_leader != Some(self.id()) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        Ok(moved)
    }
}
