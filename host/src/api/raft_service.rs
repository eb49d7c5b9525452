//! The internal `Raft` service: delivers peer messages to the right group,
//! one per unary call or many per batch on a peer's stream
//! ([`crate::raft::peer_stream`]).

use ringkv_client::proto::{raft_server, RaftBatch, RaftEnvelope, RaftKind, RaftMessage};
use ringkv_client::routing::{header_u64, EPOCH_HEADER, ROUTING_HEADER};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Group, MembershipOp, Node};
use crate::raft::network::{decode, encode};
use crate::raft::peer_stream;

#[derive(Clone)]
pub struct RaftService {
    node: Node,
}

impl RaftService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// With TLS on, only nodes may use this service: the connection must
    /// carry a node certificate of the cluster CA (verified in the
    /// handshake). Without it a rogue process could vote, append entries,
    /// pull snapshots or change membership.
    fn check_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.node.tls().is_none() {
            return Ok(());
        }
        match crate::tls::peer_identity(req) {
            crate::tls::PeerIdentity::Node => Ok(()),
            other => {
                let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
                tracing::warn!(peer = %remote, identity = ?other, "Raft RPC refused: no node certificate");
                Err(Status::unauthenticated(format!(
                    "the Raft service needs a node certificate (DNS name {}) signed by the cluster CA",
                    crate::tls::NODE_NAME
                )))
            }
        }
    }

    /// Drops messages on links the fault filter cuts, and refuses messages
    /// of another cluster. `from_leader`: a well-formed AppendEntries or
    /// InstallSnapshot, which a leader sends only to its members, so one of
    /// another cluster means that cluster counts this node as its member.
    fn check_link(&self, m: &RaftMessage, from_leader: bool) -> Result<(), Status> {
        if self.node.link_filter().is_blocked(m.from, self.node.id()) {
            return Err(Status::unavailable(format!("link {}->{} is blocked", m.from, self.node.id())));
        }
        self.node.peers().check_incoming(m, from_leader)
    }

    /// A reply from this node, stamped with its cluster ID.
    fn reply<T: Serialize>(&self, group_id: u64, v: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(self.message(group_id, v)))
    }

    fn message<T: Serialize>(&self, group_id: u64, v: &T) -> RaftMessage {
        self.node.peers().message(group_id, encode(v))
    }

    /// Hands an AppendEntries or a Vote to its group: what the unary calls
    /// and the batched stream both run.
    async fn deliver(&self, kind: RaftKind, m: RaftMessage) -> Result<RaftMessage, Status> {
        match kind {
            RaftKind::AppendEntries => {
                let rpc = decode(&m.payload).map_err(bad)?;
                let g = self.accept(&m, true)?;
                Ok(self.message(m.group_id, &g.raft.append_entries(rpc).await))
            }
            RaftKind::Vote => {
                let g = self.accept(&m, false)?;
                let rpc = decode(&m.payload).map_err(bad)?;
                // Before openraft may grant it: see `ReadLease`.
                g.revoke_read_lease();
                Ok(self.message(m.group_id, &g.raft.vote(rpc).await))
            }
            RaftKind::Forward | RaftKind::Unspecified => {
                Err(Status::invalid_argument(format!("not a Raft message for a group: {kind:?}")))
            }
        }
    }

    /// Serves a client request another node forwarded to this one (the
    /// group's leader, as the sender believes): the unary Forward call and
    /// the stream's forward messages both run this.
    async fn forwarded(&self, m: RaftMessage, epoch: Option<u64>, routed: Option<u64>) -> Result<RaftMessage, Status> {
        self.check_link(&m, false)?;
        let fwd: crate::cluster::Forwarded = decode(&m.payload).map_err(bad)?;
        metrics::counter!(crate::telemetry::FORWARDED_SERVED, "kind" => fwd.kind()).increment(1);
        let user_write = matches!(&fwd, crate::cluster::Forwarded::Propose(p) if p.key().is_some());
        let answer = self.node.handle_forwarded(m.group_id, fwd, epoch, routed).await;
        if user_write
            && matches!(answer, crate::cluster::ForwardReply::Written(_))
            && crate::failpoint::fault_point("forward-reply-lost")
        {
            return Err(Status::unavailable(
                "fault point forward-reply-lost: the write was applied, this reply is lost",
            ));
        }
        Ok(self.message(m.group_id, &answer))
    }

    /// The reply envelope to one envelope of a batch.
    async fn answer(&self, envelope: RaftEnvelope) -> RaftEnvelope {
        let result = match (RaftKind::try_from(envelope.kind), envelope.message) {
            (Ok(RaftKind::Forward), Some(m)) => self.forwarded(m, envelope.epoch, envelope.routed).await,
            (Ok(kind), Some(m)) => self.deliver(kind, m).await,
            _ => Err(Status::invalid_argument("a batched Raft message needs a known kind and a message")),
        };
        peer_stream::envelope_of(envelope.id, result)
    }

    /// Checks the fault filter and finds the addressed group.
    fn accept(&self, m: &RaftMessage, from_leader: bool) -> Result<std::sync::Arc<Group>, Status> {
        self.check_link(m, from_leader)?;
        self.node.group(m.group_id).map_err(|_| {
            // A joining node gets messages for its groups before it starts
            // them, and a moved replica until its leader learns of the move:
            // routine, so counted and logged at DEBUG, not per message at ERROR.
            metrics::counter!(crate::telemetry::RAFT_MESSAGES_DROPPED, "reason" => "no_group").increment(1);
            tracing::debug!(group = m.group_id, from = m.from, "message for a group this node does not host; dropped");
            Status::not_found(format!("{} {}", crate::raft::network::NO_GROUP, m.group_id))
        })
    }
}

fn bad(e: postcard::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        Ok(Response::new(self.deliver(RaftKind::AppendEntries, req.into_inner()).await?))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        Ok(Response::new(self.deliver(RaftKind::Vote, req.into_inner()).await?))
    }

    type BatchesStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftBatch, Status>> + Send>>;

    /// Every message of every batch is handled on its own task, so a group
    /// that is slow to answer (a long append, a busy state machine) delays
    /// only its own replies. The replies go back as they are ready.
    async fn batches(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<Self::BatchesStream>, Status> {
        self.check_peer(&req)?;
        let mut inbound = req.into_inner();
        let (replies, out) = tokio::sync::mpsc::unbounded_channel();
        let service = self.clone();
        // The stream ends when the server stops taking requests, as the
        // unary calls do: graceful shutdown waits for open streams.
        let (mut stop, mut drain) = (self.node.shutdown_signal(), self.node.drain_signal());
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    batch = inbound.message() => match batch {
                        Ok(Some(batch)) => batch,
                        _ => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                    _ = drain.wait_for(|s| *s) => return,
                };
                for envelope in batch.envelopes {
                    let (service, replies) = (service.clone(), replies.clone());
                    tokio::spawn(async move {
                        let _ = replies.send(service.answer(envelope).await);
                    });
                }
            }
        });
        Ok(Response::new(peer_stream::batched_replies(out)))
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        let m = req.into_inner();
        let rpc = decode(&m.payload).map_err(bad)?;
        let g = self.accept(&m, true)?;
        self.reply(m.group_id, &g.raft.install_snapshot(rpc).await)
    }

    async fn change_membership(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        let m = req.into_inner();
        self.check_link(&m, false)?;
        let op: MembershipOp = decode(&m.payload).map_err(bad)?;
        self.reply(m.group_id, &self.node.run_membership_op(m.group_id, op).await)
    }

    async fn shard_loads(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        let m = req.into_inner();
        self.check_link(&m, false)?;
        let split_point_over: u64 = decode(&m.payload).map_err(bad)?;
        self.reply(m.group_id, &self.node.shard_loads(split_point_over).await)
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&req)?;
        let epoch = header_u64(req.metadata(), EPOCH_HEADER);
        let routed = header_u64(req.metadata(), ROUTING_HEADER);
        Ok(Response::new(self.forwarded(req.into_inner(), epoch, routed).await?))
    }
}
