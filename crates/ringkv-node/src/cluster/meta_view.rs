//! This node's reads of the meta group's replicated state, in one place:
//! the routing epoch and the members (from the group's Raft state), and the
//! typed records its state machine holds (shard assignments, member
//! markers, leader hints, hooks, tokens, the partition state), with the
//! cache that eventual reads check assignments through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::{Group, NodeError};
use crate::auth::TokenRecord;
use crate::hooks::HookRecord;
use crate::meta::MetaState;
use crate::raft::NodeId;
use crate::ring::partition::PartitionState;
use crate::ring::ShardId;

/// Shard replicas as the meta group records them.
pub type Assignments = BTreeMap<ShardId, Vec<NodeId>>;

/// The last read of the assignments, and the epoch it was read at.
struct CachedAssignments {
    epoch: u64,
    assignments: Arc<Assignments>,
}

/// The meta group as this node's copy of it stands.
pub struct MetaView {
    /// The meta group: started when the node opens, never dropped.
    group: Arc<Group>,
    /// Its records, read from this node's replica.
    state: MetaState,
    /// Every eventual read checks the assignments; reading them from
    /// storage each time nearly halved eventual-read throughput.
    assignments: ArcSwapOption<CachedAssignments>,
}

impl MetaView {
    pub(super) fn new(group: Arc<Group>) -> Self {
        MetaView { state: MetaState::new(group.sm.clone()), group, assignments: ArcSwapOption::empty() }
    }

    /// The meta group itself, for its Raft state (leadership, waits).
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// The routing epoch: the index this copy has applied. Every
    /// configuration change raises it.
    pub fn epoch(&self) -> u64 {
        self.group.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    /// Waits, at most `timeout`, until this copy has applied `epoch`;
    /// `node` names this node in the error.
    pub async fn wait_epoch(&self, node: NodeId, epoch: u64, timeout: Duration) -> Result<(), NodeError> {
        if self.epoch() >= epoch {
            return Ok(());
        }
        let waited = self.group.raft.wait(Some(timeout)).applied_index_at_least(Some(epoch), "routing epoch").await;
        waited.map(|_| ()).map_err(|_| {
            NodeError::Unavailable(format!(
                "node {node} has applied the cluster configuration up to epoch {}, behind the request's epoch {epoch}",
                self.epoch()
            ))
        })
    }

    /// The members of the replicated configuration: (id, address, is_voter).
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let m = self.group.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        m.membership().nodes().map(|(id, n)| (*id, n.addr.clone(), voters.contains(id))).collect()
    }

    /// The address of member `id`.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.group.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    pub async fn assignments(&self) -> Result<Assignments, NodeError> {
        Ok(self.state.assignments().await?)
    }

    /// The assignments, read from storage only when the epoch has moved
    /// since the last read. Each read is tagged with the epoch observed
    /// before reading, so it is never older than its tag.
    pub async fn cached_assignments(&self) -> Result<Arc<Assignments>, NodeError> {
        let epoch = self.epoch();
        if let Some(c) = self.assignments.load().as_ref().filter(|c| c.epoch == epoch) {
            return Ok(c.assignments.clone());
        }
        let assignments = Arc::new(self.assignments().await?);
        self.assignments.store(Some(Arc::new(CachedAssignments { epoch, assignments: assignments.clone() })));
        Ok(assignments)
    }

    /// Shards with a replica move under way.
    pub async fn pending_moves(&self) -> Result<BTreeSet<ShardId>, NodeError> {
        Ok(self.state.pending_moves().await?)
    }

    pub async fn draining(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        Ok(self.state.draining().await?)
    }

    pub async fn down(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        Ok(self.state.down().await?)
    }

    pub async fn unreachable(&self) -> Result<BTreeSet<NodeId>, NodeError> {
        Ok(self.state.unreachable().await?)
    }

    /// Each shard's leader as it last reported itself, with its term.
    pub async fn leader_hints(&self) -> Result<BTreeMap<ShardId, (NodeId, u64)>, NodeError> {
        Ok(self.state.leader_hints().await?)
    }

    pub async fn hook_records(&self) -> Result<Vec<HookRecord>, NodeError> {
        Ok(self.state.hook_records().await?)
    }

    pub async fn token_records(&self) -> Result<Vec<TokenRecord>, NodeError> {
        Ok(self.state.token_records().await?)
    }

    pub async fn partition_state(&self) -> Result<PartitionState, NodeError> {
        Ok(self.state.partition_state()?)
    }
}
