//! Membership changes: adding a node (learner, catch up, promote to voter)
//! and removing one, in every group, each change run on that group's leader.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use ringkv_client::proto::RaftMessage;
use serde::{Deserialize, Serialize};

use futures::StreamExt;

use super::{Group, Node, NodeError, Proposal, META_GROUP};
use crate::raft::network::{decode, encode};
use crate::raft::NodeId;
use crate::storage::GroupId;

/// A membership change of one group, run on its leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Add as learner, wait until caught up, then promote to voter.
    AddVoter { id: NodeId, addr: String },
    /// Remove from voters and learners.
    Remove { id: NodeId },
}

/// The leader's answer to a [`MembershipOp`].
#[derive(Debug, Serialize, Deserialize)]
pub enum MembershipReply {
    Done,
    NotLeader,
    Failed(String),
}

/// Shards whose membership changes run at once during an add or remove.
const MEMBERSHIP_CONCURRENCY: usize = 8;

/// How long a membership change may take; adding a node waits for it to catch up.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(600);

impl Node {
    /// Adds node `id` at `addr` to every group, then records it in the meta group.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), NodeError> {
        if id == 0 {
            return Err(NodeError::InvalidArgument("node id 0 is reserved".into()));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(NodeError::InvalidArgument(format!("node address {addr:?} is not host:port")));
        }
        // The meta group first, so the new node learns the configuration, then every shard.
        tracing::info!(node = id, "adding node to the meta group: learner, catch-up, promotion");
        self.change_membership(META_GROUP, MembershipOp::AddVoter { id, addr: addr.clone() }).await?;
        let shards: Vec<GroupId> = self.group_ids().into_iter().filter(|g| *g != META_GROUP).collect();
        let total = shards.len();
        let mut done = 0;
        let mut changes = futures::stream::iter(shards)
            .map(|g| {
                let op = MembershipOp::AddVoter { id, addr: addr.clone() };
                async move { self.change_membership(g, op).await }
            })
            .buffer_unordered(MEMBERSHIP_CONCURRENCY);
        while let Some(r) = changes.next().await {
            r?;
            done += 1;
            if done % 16 == 0 || done == total {
                tracing::info!(node = id, done, total, "adding node: shards caught up and promoted");
            }
        }
        drop(changes);
        self.propose(META_GROUP, Proposal::SetNode { id, addr }).await?;
        Ok(())
    }

    /// Removes node `id` from every group and from the meta group's records.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), NodeError> {
        // Shards first, so the meta group still knows the node while they change.
        let shards: Vec<GroupId> = self.group_ids().into_iter().filter(|g| *g != META_GROUP).collect();
        let mut changes = futures::stream::iter(shards)
            .map(|g| async move { self.change_membership(g, MembershipOp::Remove { id }).await })
            .buffer_unordered(MEMBERSHIP_CONCURRENCY);
        while let Some(r) = changes.next().await {
            r?;
        }
        drop(changes);
        tracing::info!(node = id, "removed from every shard; removing from the meta group");
        self.change_membership(META_GROUP, MembershipOp::Remove { id }).await?;
        self.propose(META_GROUP, Proposal::RemoveNode { id }).await?;
        Ok(())
    }

    /// Runs `op` on the leader of `group`, retrying while leadership moves.
    async fn change_membership(&self, group: GroupId, op: MembershipOp) -> Result<(), NodeError> {
        let work = async {
            loop {
                let g = self.group(group)?;
                let reply = match g.raft.current_leader().await {
                    Some(l) if l == self.id() => self.run_membership_op(group, op.clone()).await,
                    Some(l) => self.send_membership_op(&g, l, &op).await,
                    None => MembershipReply::NotLeader,
                };
                match reply {
                    MembershipReply::Done => return Ok(()),
                    MembershipReply::Failed(m) => return Err(NodeError::InvalidArgument(m)),
                    MembershipReply::NotLeader => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        tokio::time::timeout(MEMBERSHIP_DEADLINE, work).await.unwrap_or_else(|_| {
            Err(NodeError::Unavailable(format!("membership change of group {group} did not finish in time")))
        })
    }

    async fn send_membership_op(&self, g: &Group, leader: NodeId, op: &MembershipOp) -> MembershipReply {
        let Some(addr) = self.member_addr(g, leader) else { return MembershipReply::NotLeader };
        let Ok(mut client) = self.peers().raft_client(leader, &addr) else { return MembershipReply::NotLeader };
        let msg = RaftMessage { group_id: g.id, from: self.id(), payload: encode(op) };
        match client.change_membership(msg).await {
            Ok(r) => decode(&r.into_inner().payload)
                .unwrap_or_else(|e| MembershipReply::Failed(format!("bad reply from leader: {e}"))),
            Err(s) => {
                tracing::debug!(leader, error = %s, "membership change not delivered, retrying");
                MembershipReply::NotLeader
            }
        }
    }

    /// Executes a membership change on this node, which should lead `group`.
    pub async fn run_membership_op(&self, group: GroupId, op: MembershipOp) -> MembershipReply {
        let g = match self.group(group) {
            Ok(g) => g,
            Err(e) => return MembershipReply::Failed(e.to_string()),
        };
        let membership = g.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let result = match op {
            MembershipOp::AddVoter { id, addr } => {
                let same_addr = m.get_node(&id).is_some_and(|n| n.addr == addr);
                if voters.contains(&id) && same_addr {
                    return MembershipReply::Done;
                }
                match g.raft.add_learner(id, BasicNode { addr }, true).await {
                    Ok(_) => g.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await,
                    Err(e) => Err(e),
                }
            }
            MembershipOp::Remove { id } => {
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return MembershipReply::Failed(format!("node {id} is the last voter of group {group}"));
                    }
                    g.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await
                } else if m.get_node(&id).is_some() {
                    g.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await
                } else {
                    return MembershipReply::Done;
                }
            }
        };
        match result {
            Ok(_) => MembershipReply::Done,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => MembershipReply::NotLeader,
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                // e.g. another change in progress: worth retrying.
                tracing::info!(group, error = %e, "membership change refused, retrying");
                MembershipReply::NotLeader
            }
            Err(RaftError::Fatal(e)) => MembershipReply::Failed(e.to_string()),
        }
    }
}
