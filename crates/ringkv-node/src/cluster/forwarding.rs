//! Finding a group's leader and sending a request there, or to any replica
//! for an eventual read: retrying while leadership moves, within the request
//! deadline; the one rule for when a write may be sent again (only when it
//! provably never left this node); and reading the peer's reply. A
//! [`Forwarder`] borrows the node's parts it needs and keeps no state of its
//! own; what a forwarded request carries is [`super::routing`]'s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ringkv_client::proto::{RaftEnvelope, RaftKind};

use super::groups::Groups;
use super::meta_view::MetaView;
use super::request::RequestContext;
use super::routing::{Attempt, ForwardReply, Forwarded};
use super::{Group, NodeError, META_GROUP};
use crate::raft::network::{decode, encode};
use crate::raft::peer_stream::Unsent;
use crate::raft::{NodeId, Peers};
use crate::storage::GroupId;

/// Leader lookup and forwarding for one node (see the module comment).
pub struct Forwarder<'a> {
    /// This node.
    pub id: NodeId,
    pub groups: &'a Groups,
    pub meta: &'a MetaView,
    pub peers: &'a Peers,
    /// How long a request may keep looking for a leader or replica.
    pub request_timeout: Duration,
}

impl Forwarder<'_> {
    /// Runs `op` at the leader of `group` within the request deadline,
    /// forwarding when this node is not the leader and retrying while
    /// leadership moves. Gives `UNAVAILABLE` at the deadline.
    pub async fn at_leader<T, L, LF>(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        forwarded: impl Fn() -> Forwarded,
        local: L,
    ) -> Result<T, NodeError>
    where
        L: Fn(Arc<Group>) -> LF,
        LF: std::future::Future<Output = Result<Attempt<T>, NodeError>>,
        T: TryFrom<ForwardReply, Error = NodeError>,
    {
        let deadline = self.request_timeout;
        let work = async {
            let mut backoff = Duration::from_millis(10);
            loop {
                let hosted = self.groups.get(group).ok();
                let leader = match &hosted {
                    Some(g) => g.raft.current_leader().await,
                    None => None,
                };
                let attempt = match (hosted, leader) {
                    (Some(g), Some(l)) if l == self.id => {
                        let attempt = local(g).await?;
                        if matches!(attempt, Attempt::Done(_)) {
                            ctx.served_by(self.id);
                        }
                        attempt
                    }
                    (Some(_), Some(l)) => self.forward(ctx, group, l, forwarded()).await?,
                    _ => Attempt::Retry,
                };
                // Not hosted here, no known leader, or a stale local view (a
                // replica being moved away): ask the replicas the meta group records.
                let attempt = match attempt {
                    Attempt::Retry => self.forward_to_any(ctx, group, &forwarded).await?,
                    done => done,
                };
                match attempt {
                    Attempt::Done(v) => return Ok(v),
                    Attempt::Retry => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                }
            }
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Unavailable(format!(
                "no quorum or leader for group {group} reachable within {deadline:?}"
            ))),
        }
    }

    /// Tries each replica of `group` until one serves the request.
    async fn forward_to_any<T>(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        req: &impl Fn() -> Forwarded,
    ) -> Result<Attempt<T>, NodeError>
    where
        T: TryFrom<ForwardReply, Error = NodeError>,
    {
        for candidate in self.leader_candidates(group).await {
            if candidate == self.id {
                continue;
            }
            if let Attempt::Done(v) = self.forward(ctx, group, candidate, req()).await? {
                return Ok(Attempt::Done(v));
            }
        }
        Ok(Attempt::Retry)
    }

    async fn forward<T>(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        leader: NodeId,
        req: Forwarded,
    ) -> Result<Attempt<T>, NodeError>
    where
        T: TryFrom<ForwardReply, Error = NodeError>,
    {
        let Some(addr) = self.meta.addr_of(leader) else { return Ok(Attempt::Retry) };
        let write = matches!(req, Forwarded::Propose(_));
        metrics::counter!(crate::telemetry::FORWARDED, "kind" => req.kind()).increment(1);
        let mut client = match self.peers.raft_client(leader, &addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(leader, error = %e, "cannot reach leader");
                return Ok(Attempt::Retry);
            }
        };
        // The receiver serves eventual reads only once its meta group is as new as ours.
        let (epoch, routed) = (self.meta.epoch(), ctx.routed());
        let request = RaftEnvelope {
            kind: RaftKind::Forward as i32,
            message: Some(self.peers.message(group, encode(&req))),
            epoch: Some(epoch),
            routed,
            ..Default::default()
        };
        let timeout = self.request_timeout;
        let sent = match self.peers.call_on_stream(leader, &addr, &client, request, timeout).await {
            Ok(reply) => Ok(reply),
            Err(Unsent::NotSent(s)) => {
                tracing::debug!(leader, error = %s, "leader unreachable, retrying");
                return Ok(Attempt::Retry);
            }
            Err(Unsent::Failed(s)) => Err(s),
            // A peer of an older version: the unary call.
            Err(Unsent::Unimplemented(m)) => {
                let mut msg = tonic::Request::new(m);
                msg.metadata_mut().insert(ringkv_client::routing::EPOCH_HEADER, epoch.into());
                if let Some(generation) = routed {
                    msg.metadata_mut().insert(ringkv_client::routing::ROUTING_HEADER, generation.into());
                }
                client.forward(msg).await.map(tonic::Response::into_inner)
            }
        };
        let reply = match sent {
            Ok(r) => r,
            // Never sent (no connection could be made): safe to retry, even a write.
            Err(s) if never_sent(&s) => {
                tracing::debug!(leader, error = %s, "leader unreachable, retrying");
                return Ok(Attempt::Retry);
            }
            // A write that may have reached the leader is not sent again: a
            // retried compare-and-swap could be applied once and then be
            // reported as a version mismatch, a retried put applied twice.
            Err(s)
                if write
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                            | tonic::Code::DeadlineExceeded
                    ) =>
            {
                return Err(NodeError::Unavailable(format!(
                    "the write was sent to leader {leader} but its reply was lost ({}: {}); \
                     the outcome is unknown: it may or may not have been applied, so read the key \
                     before writing it again",
                    s.code(),
                    s.message()
                )))
            }
            // Reads are idempotent: any unavailable leader is tried again.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tracing::debug!(leader, error = %s, "leader unavailable, retrying the read");
                return Ok(Attempt::Retry);
            }
            Err(s) => return Err(NodeError::Unavailable(format!("forwarding to leader {leader} failed: {s}"))),
        };
        self.peers.check_reply(leader, &reply).map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let reply: ForwardReply =
            decode(&reply.payload).map_err(|e| NodeError::Internal(format!("bad reply from leader {leader}: {e}")))?;
        match reply {
            ForwardReply::NotLeader => Ok(Attempt::Retry),
            ForwardReply::WrongShard { generation } => Err(NodeError::WrongShard { generation }),
            ForwardReply::Unavailable(m) => Err(NodeError::Unavailable(m)),
            ForwardReply::Rejected(m) => {
                ctx.served_by(leader);
                Err(NodeError::Rejected(m))
            }
            other => {
                let v = T::try_from(other)?;
                ctx.served_by(leader);
                Ok(Attempt::Done(v))
            }
        }
    }

    /// Serves an eventual read of a group this node does not host from any replica.
    pub async fn any_replica<T>(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        req: impl Fn() -> Forwarded,
    ) -> Result<T, NodeError>
    where
        T: TryFrom<ForwardReply, Error = NodeError>,
    {
        let deadline = self.request_timeout;
        let work = async {
            loop {
                if let Attempt::Done(v) = self.forward_to_any(ctx, group, &req).await? {
                    return Ok(v);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_| Err(NodeError::Unavailable(format!("no replica of group {group} answered in time"))))
    }

    /// Nodes that may lead `group`, most likely first: the known leader, then
    /// the group's replicas as the meta group records them.
    pub async fn leader_candidates(&self, group: GroupId) -> Vec<NodeId> {
        let mut out = Vec::new();
        if let Ok(g) = self.groups.get(group) {
            if let Some(l) = g.raft.current_leader().await {
                out.push(l);
            }
            if group == META_GROUP {
                out.extend(g.raft.metrics().borrow().membership_config.membership().voter_ids());
            }
        }
        if group != META_GROUP {
            let shard = (group - 1) as crate::ring::ShardId;
            if let Ok(a) = self.meta.assignments().await {
                out.extend(a.get(&shard).into_iter().flatten().copied());
            }
        }
        let mut seen = BTreeSet::new();
        out.retain(|n| seen.insert(*n));
        out
    }
}

/// True when `status` proves the request never left this node: the
/// channel could not connect (refused, timed out, TLS handshake failed).
/// Anything else — a reset or timeout after sending, a status the peer sent
/// — may come after the leader served the request.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::never_sent;
    use ringkv_client::proto::raft_client::RaftClient;
    use ringkv_client::proto::RaftMessage;

    #[tokio::test]
    async fn a_refused_connection_is_never_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
        let status = RaftClient::new(channel).forward(RaftMessage::default()).await.unwrap_err();
        assert!(never_sent(&status), "{status:?}");
    }

    #[test]
    fn a_status_from_the_peer_may_follow_delivery() {
        // The peer answered: it had the request, whatever the code says.
        assert!(!never_sent(&tonic::Status::unavailable("reply lost")));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&tonic::Status::from_error(Box::new(reset))));
    }
}
