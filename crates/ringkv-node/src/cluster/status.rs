//! Where every shard stands, as this node sees it: its recorded replicas,
//! its leader, whether it is moving and whether it is under-replicated.
//! `cluster status`, the routing table clients fetch, `/readyz`, the
//! dashboard and the metrics all read this one computation. Also each
//! hosted group's Raft state and size, and the members' markers, as
//! `cluster status` shows them; the API layer only converts them.

use std::collections::BTreeSet;

use super::{shard_group, Node, NodeError};
use crate::raft::NodeId;
use crate::ring::{ShardId, ShardRange};
use crate::storage::GroupId;

/// One group this node hosts, as its Raft state and size stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub id: GroupId,
    /// 0 when it knows of none.
    pub leader: NodeId,
    pub term: u64,
    /// `leader`, `candidate`, `follower`, `learner` or `shutdown`.
    pub role: &'static str,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// On the leader: each member's matched log index.
    pub replication: Vec<(NodeId, u64)>,
    /// Live keys and stored bytes of this replica (see [`Node::group_states`]).
    pub keys: u64,
    pub bytes: u64,
    pub applied_ops: u64,
    pub served_reads: u64,
}

/// The members the meta group marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberMarks {
    pub draining: BTreeSet<NodeId>,
    pub down: BTreeSet<NodeId>,
    pub unreachable: BTreeSet<NodeId>,
}

/// One shard's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRoute {
    pub shard: ShardId,
    /// This node's Raft view when it hosts the shard, else the leader's last
    /// report to the meta group (if that node is still a replica).
    pub leader: Option<NodeId>,
    /// The replicas the meta group records.
    pub replicas: Vec<NodeId>,
    /// A move is pending, or the replicas differ from the placement target.
    pub moving: bool,
    /// Fewer of its replicas are on live nodes than `min(RF, active members)`.
    pub under_replicated: bool,
    /// Its token range; `None` for a shard a merge is retiring.
    pub range: Option<ShardRange>,
}

impl Node {
    /// Every shard's [`ShardRoute`], in shard order.
    pub async fn shard_routes(&self) -> Result<Vec<ShardRoute>, NodeError> {
        let assignments = self.assignments().await?;
        let meta = self.meta();
        let pending = meta.pending_moves().await?;
        let hints = meta.leader_hints().await?;
        let missing = self.missing_members().await?;
        let active = self.active_members().await?;
        // The replicas a shard should have: RF, or every member placement may
        // use when there are fewer. A replica on a down or unreachable node does
        // not count, so a shard with a replica on a dead node is
        // under-replicated even when no other node could take its place.
        let rf = (self.ring().replication_factor as usize).min(active.len());
        let view = self.partition_view();
        let target = crate::ring::place_map(view.shard_map(), self.ring(), &active);
        let ranges: std::collections::BTreeMap<ShardId, ShardRange> =
            view.shard_map().ranges().map(|r| (r.shard, r)).collect();
        Ok(assignments
            .into_iter()
            .map(|(shard, replicas)| {
                let leader = match self.group(shard_group(shard)) {
                    Ok(g) => g.raft.metrics().borrow().current_leader,
                    Err(_) => hints.get(&shard).map(|(leader, _)| *leader).filter(|l| replicas.contains(l)),
                };
                let want: BTreeSet<NodeId> = target.get(&shard).into_iter().flatten().copied().collect();
                let moving = pending.contains(&shard) || replicas.iter().copied().collect::<BTreeSet<_>>() != want;
                let under_replicated = replicas.iter().filter(|r| !missing.contains(r)).count() < rf;
                let range = ranges.get(&shard).copied();
                ShardRoute { shard, leader, replicas, moving, under_replicated, range }
            })
            .collect())
    }

    /// Every group this node hosts, in group order. Sizes are counted at
    /// most 10 s before (an older count is returned and recounted in the
    /// background); `count_keys` counts them now, a full scan.
    pub async fn group_states(&self, count_keys: bool) -> Result<Vec<GroupState>, NodeError> {
        let mut states = Vec::new();
        for g in self.groups() {
            let m = g.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let role = match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Shutdown => "shutdown",
            };
            let size = if count_keys { g.measure().await } else { g.approximate_size().await.map(|(s, _)| s) }?;
            states.push(GroupState {
                id: g.id,
                leader: m.current_leader.unwrap_or(0),
                term: m.current_term,
                role,
                last_log_index: m.last_log_index.unwrap_or(0),
                commit_index: crate::raft::commit_index(&m),
                applied_index: m.last_applied.map_or(0, |l| l.index),
                snapshot_index: m.snapshot.map_or(0, |l| l.index),
                purged_index: m.purged.map_or(0, |l| l.index),
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                replication: m
                    .replication
                    .iter()
                    .flatten()
                    .map(|(id, matched)| (*id, matched.map_or(0, |l| l.index)))
                    .collect(),
                keys: size.keys,
                bytes: size.bytes,
                applied_ops: g.sm.applied_ops(),
                served_reads: g.sm.served_reads(),
            });
        }
        Ok(states)
    }

    /// The members the meta group marks draining, down or unreachable.
    pub async fn member_marks(&self) -> Result<MemberMarks, NodeError> {
        let meta = self.meta();
        Ok(MemberMarks {
            draining: meta.draining().await?,
            down: meta.down().await?,
            unreachable: meta.unreachable().await?,
        })
    }
}
