//! Where every shard stands, as this node sees it: its recorded replicas,
//! its leader, whether it is moving and whether it is under-replicated.
//! `cluster status`, the routing table clients fetch, `/readyz`, the
//! dashboard and the metrics all read this one computation.

use std::collections::BTreeSet;

use super::{shard_group, Node, NodeError, META_GROUP};
use crate::raft::NodeId;
use crate::ring::{ShardId, ShardRange};

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
        let meta = self.group(META_GROUP)?;
        let pending = meta.sm.pending_moves().await?;
        let hints = meta.sm.leader_hints().await?;
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
}
