//! Membership changes of one group, run on its leader: adding a node
//! (learner, catch up, promote to voter) and removing one. `AddNode` and
//! `RemoveNode` change the meta group only; the rebalancer moves shard
//! replicas on and off a node (`placement`).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::{Node, NodeError, META_GROUP};
use crate::command::MetaOp;
use crate::raft::network::{decode, encode};
use crate::raft::NodeId;
use crate::storage::GroupId;

/// A membership change of one group, run on its leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Add as learner, wait until caught up, then promote to voter.
    AddVoter { id: NodeId, addr: String },
    /// Add as a non-voting learner (the meta group beyond five voters).
    AddLearner { id: NodeId, addr: String },
    /// Remove from voters and learners.
    Remove { id: NodeId },
    /// Sent by the leader to the replica it hands leadership to: campaign
    /// now (see [`super::leadership`]).
    Campaign,
    /// A beacon from `leader` (sent for the meta group): these groups, at
    /// these terms, sleep or stay asleep ([`super::quiescence`]).
    Sleep { leader: NodeId, groups: Vec<(GroupId, u64)> },
}

/// The leader's answer to a [`MembershipOp`].
#[derive(Debug, Serialize, Deserialize)]
pub enum MembershipReply {
    Done,
    NotLeader,
    Failed(String),
    /// The groups of a [`MembershipOp::Sleep`] that sleep here now.
    Asleep(Vec<GroupId>),
}

/// Voters of the meta group at most; further members learn it.
const MAX_META_VOTERS: usize = 5;

/// How long a membership change may take; adding a node waits for it to catch up.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(600);

impl Node {
    /// Adds node `id` at `addr`: it joins the meta group (as a voter while
    /// the meta group has fewer than five, else as a learner) and is recorded
    /// there. The rebalancer then moves shard replicas onto it.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), NodeError> {
        if id == 0 {
            return Err(NodeError::InvalidArgument("node id 0 is reserved".into()));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(NodeError::InvalidArgument(format!("node address {addr:?} is not host:port")));
        }
        if let Some(tls) = self.tls() {
            // Peers will only talk to a node certificate; refusing here keeps
            // a node that could never take part out of the membership.
            crate::tls::probe_node(&tls.current(), &addr).await.map_err(|e| {
                tracing::warn!(node = id, addr = %addr, error = %e, "refusing to add a node without a valid node certificate");
                NodeError::Refused(format!(
                    "node {id} at {addr} does not present a valid node certificate of the cluster CA: {e}"
                ))
            })?;
        }
        let meta = self.group(META_GROUP)?;
        let voters = meta.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        let is_voter = meta.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
        let op = if is_voter || voters < MAX_META_VOTERS {
            MembershipOp::AddVoter { id, addr: addr.clone() }
        } else {
            MembershipOp::AddLearner { id, addr: addr.clone() }
        };
        tracing::info!(node = id, "adding node to the meta group");
        self.change_membership(META_GROUP, op).await?;
        self.propose(META_GROUP, MetaOp::SetDraining { id, draining: false }).await?;
        self.propose(META_GROUP, MetaOp::SetNode { id, addr }).await?;
        Ok(())
    }

    /// Removes node `id`: marks it draining, waits until the rebalancer has
    /// moved every replica off it, then removes it from the meta group.
    ///
    /// A node that is not a member is `NotFound`, so a typo in the id is not
    /// reported as a removal. That includes a node whose removal has just
    /// committed: a client that retries a removal whose reply it lost gets
    /// `NotFound` for a removal that did happen, which is acceptable since
    /// the message lists the members. Membership is this node's view of the
    /// meta group, which has every membership change it has received (not
    /// only applied); a node added a moment ago may not have reached it yet.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), NodeError> {
        let members = self.members()?;
        if !members.iter().any(|(m, _, _)| *m == id) {
            let ids: Vec<String> = members.iter().map(|(m, _, _)| m.to_string()).collect();
            return Err(NodeError::NotFound(format!(
                "node {id} is not a member of the cluster; members: {}",
                ids.join(", ")
            )));
        }
        let active = self.active_members().await?;
        if active.len() == 1 && active.contains(&id) {
            return Err(NodeError::InvalidArgument(format!(
                "node {id} is the last voter of the cluster; it cannot be removed"
            )));
        }
        self.propose(META_GROUP, MetaOp::SetDraining { id, draining: true }).await?;
        let started = std::time::Instant::now();
        loop {
            let left = self.assignments().await?.values().filter(|r| r.contains(&id)).count();
            if left == 0 {
                break;
            }
            if started.elapsed() > MEMBERSHIP_DEADLINE {
                return Err(NodeError::Unavailable(format!(
                    "node {id} still holds {left} shards after {MEMBERSHIP_DEADLINE:?}"
                )));
            }
            tracing::info!(node = id, shards_left = left, "draining node");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::info!(node = id, "node drained; removing it from the meta group");
        self.change_membership(META_GROUP, MembershipOp::Remove { id }).await?;
        self.propose(META_GROUP, MetaOp::RemoveNode { id }).await?;
        self.propose(META_GROUP, MetaOp::SetDraining { id, draining: false }).await?;
        Ok(())
    }

    /// Runs `op` on the leader of `group`, retrying while leadership moves.
    pub(super) async fn change_membership(&self, group: GroupId, op: MembershipOp) -> Result<(), NodeError> {
        let work = async {
            loop {
                for candidate in self.forwarder().leader_candidates(group).await {
                    let reply = if candidate == self.id() {
                        self.run_membership_op(group, op.clone()).await
                    } else {
                        self.send_membership_op(group, candidate, &op).await
                    };
                    match reply {
                        MembershipReply::Done | MembershipReply::Asleep(_) => return Ok(()),
                        MembershipReply::Failed(m) => return Err(NodeError::InvalidArgument(m)),
                        MembershipReply::NotLeader => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(MEMBERSHIP_DEADLINE, work).await.unwrap_or_else(|_| {
            Err(NodeError::Unavailable(format!("membership change of group {group} did not finish in time")))
        })
    }

    pub(super) async fn send_membership_op(
        &self,
        group: GroupId,
        leader: NodeId,
        op: &MembershipOp,
    ) -> MembershipReply {
        let Some(addr) = self.addr_of(leader) else { return MembershipReply::NotLeader };
        let Ok(mut client) = self.peers().raft_client(leader, &addr) else { return MembershipReply::NotLeader };
        let msg = self.peers().message(group, encode(op));
        match client.change_membership(msg).await {
            Ok(r) => {
                let r = r.into_inner();
                if let Err(e) = self.peers().check_reply(leader, &r) {
                    return MembershipReply::Failed(e.to_string());
                }
                decode(&r.payload).unwrap_or_else(|e| MembershipReply::Failed(format!("bad reply from leader: {e}")))
            }
            Err(s) => {
                tracing::debug!(leader, error = %s, "membership change not delivered, retrying");
                MembershipReply::NotLeader
            }
        }
    }

    /// Executes a membership change on this node, which should lead `group`.
    pub async fn run_membership_op(&self, group: GroupId, op: MembershipOp) -> MembershipReply {
        if let MembershipOp::Sleep { leader, groups } = op {
            return MembershipReply::Asleep(self.beacon_from(leader, groups));
        }
        // Not hosting the group (any more) is like not leading it: try elsewhere.
        let Ok(g) = self.group(group) else { return MembershipReply::NotLeader };
        if let MembershipOp::Campaign = op {
            let is_voter = g.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == self.id());
            if !is_voter {
                return MembershipReply::Failed(format!("node {} is not a voter of group {group}", self.id()));
            }
            return match g.raft.trigger().elect().await {
                Ok(()) => MembershipReply::Done,
                Err(e) => MembershipReply::Failed(e.to_string()),
            };
        }
        if g.raft.current_leader().await != Some(self.id()) {
            return MembershipReply::NotLeader;
        }
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
            MembershipOp::AddLearner { id, addr } => {
                if m.get_node(&id).is_some_and(|n| n.addr == addr) {
                    return MembershipReply::Done;
                }
                g.raft.add_learner(id, BasicNode { addr }, true).await
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
            MembershipOp::Campaign | MembershipOp::Sleep { .. } => return MembershipReply::Done,
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
