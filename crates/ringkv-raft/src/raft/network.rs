//! Node-to-node Raft transport over tonic.
//!
//! Every group on a node shares one lazily connected HTTP/2 channel per peer:
//! a message carries its `group_id` instead of using a connection per group.
//! AppendEntries and Vote of every group go batched over one stream per peer
//! ([`super::peer_stream`]); InstallSnapshot is a unary call. Payloads are
//! openraft's own message types, serialized with postcard.
//!
//! [`LinkFilter`] drops messages on chosen links, in both the sending and the
//! receiving direction, so tests can partition nodes without touching the OS
//! (TiKV's transport-filter pattern). It is empty unless a test fills it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Entry};
use ringkv_client::proto::raft_client::RaftClient;
use ringkv_client::proto::{RaftEnvelope, RaftKind, RaftMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::peer_stream::{PeerStreams, Unsent, CLUSTER_ID_HEADER};
use super::types::{NodeId, TypeConfig};
use crate::log_limit::{more_since_last, RateLimit, LOG_EVERY};
use crate::storage::GroupId;

/// Largest message the peer transport accepts (AppendEntries batches of large values).
pub const MAX_PEER_MESSAGE: usize = 512 * 1024 * 1024;

/// Links on which messages are dropped, as (from, to) pairs. Test-only fault injection.
#[derive(Clone, Default, Debug)]
pub struct LinkFilter {
    blocked: Arc<RwLock<HashSet<(NodeId, NodeId)>>>,
}

impl LinkFilter {
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.read().map(|b| b.contains(&(from, to))).unwrap_or(false)
    }

    /// Drops every message between `node` and each of `others`, both ways.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        if let Ok(mut b) = self.blocked.write() {
            for &o in others {
                b.insert((node, o));
                b.insert((o, node));
            }
        }
    }

    /// Removes every blocked link.
    pub fn heal(&self) {
        if let Ok(mut b) = self.blocked.write() {
            b.clear();
        }
    }
}

/// Cached channels to peers, shared by every group on the node.
pub struct Peers {
    self_id: NodeId,
    /// Source address of connections to peers: the node's own IP when it
    /// listens on a specific one, so per-address firewall rules (the nemesis
    /// tests' partitions) see each node as itself.
    local_ip: Option<std::net::IpAddr>,
    filter: LinkFilter,
    /// Peer id → (address the channel was built for, TLS generation, channel).
    channels: Mutex<HashMap<NodeId, (String, u64, Channel)>>,
    /// The node's certificates when TLS is on: peers are reached over TLS
    /// with the node certificate and must present one themselves.
    tls: Option<Arc<crate::tls::TlsState>>,
    /// Peer id → when a Raft RPC to it last got an answer: the liveness
    /// signal the meta leader uses to declare a node down.
    last_answer: Mutex<HashMap<NodeId, Instant>>,
    /// The cluster this node belongs to, stamped on every message and
    /// checked on every message and reply (empty: a cluster created before
    /// cluster IDs).
    cluster_id: String,
    /// The last contact refused because it came from another cluster.
    foreign: Mutex<Option<ForeignContact>>,
    /// Which repeated transport problems get a log line now.
    log_limit: RateLimit<LogKey>,
    /// The batched stream to each peer.
    streams: PeerStreams,
}

/// What a rate-limited transport log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LogKey {
    /// Contacts with nodes of another cluster, whichever node.
    Foreign,
    /// Raft RPCs to a peer failing, by kind of failure.
    PeerFailing(NodeId, &'static str),
}

/// How a node refuses a message for a group it does not host (a joining
/// node that has not started the group yet, or a replica that moved away):
/// routine, so the sender backs off and logs it at DEBUG only.
pub const NO_GROUP: &str = "no raft group";

/// A peer message or reply of another cluster, refused.
#[derive(Debug, Clone)]
pub struct ForeignContact {
    /// The other cluster's ID.
    pub cluster_id: String,
    /// The node of that cluster (its id there), or the address we sent to.
    pub peer: String,
    /// A leader of the other cluster sent this node log entries or a
    /// snapshot: that cluster counts this node's id and address as its
    /// member.
    pub inbound: bool,
    pub at: Instant,
}

/// How long a refused foreign contact keeps showing in readiness and status.
pub const FOREIGN_CONTACT_SHOWN: Duration = Duration::from_secs(30);

impl Peers {
    pub fn new(
        self_id: NodeId,
        cluster_id: String,
        local_ip: Option<std::net::IpAddr>,
        filter: LinkFilter,
        tls: Option<Arc<crate::tls::TlsState>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            local_ip: local_ip.filter(|ip| !ip.is_unspecified()),
            filter,
            channels: Mutex::new(HashMap::new()),
            tls,
            last_answer: Mutex::new(HashMap::new()),
            cluster_id,
            foreign: Mutex::new(None),
            log_limit: RateLimit::new(LOG_EVERY),
            streams: PeerStreams::default(),
        })
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// This node's cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// A message of `group` from this node, stamped with its cluster ID.
    pub fn message(&self, group: GroupId, payload: Bytes) -> RaftMessage {
        RaftMessage { group_id: group, from: self.self_id, payload, cluster_id: self.cluster_id.clone() }
    }

    /// Refuses an incoming message of another cluster (`Err`), recording and
    /// logging the contact: the status tells the sender what to do.
    /// `from_leader`: the message is one a leader sends to its members, so
    /// the other cluster counts this node as one (see [`ForeignContact::inbound`]).
    pub fn check_incoming(&self, m: &RaftMessage, from_leader: bool) -> Result<(), tonic::Status> {
        if m.cluster_id == self.cluster_id {
            return Ok(());
        }
        self.record_foreign(&m.cluster_id, format!("node {}", m.from), from_leader);
        let mut status = tonic::Status::failed_precondition(format!(
            "cluster ID mismatch: this node (node {}) belongs to cluster {}, the message from node {} to cluster {}; \
             nothing from another cluster is applied. A node of one cluster is configured with an address of the \
             other: check --join and the data directories (a node restarted with an empty data directory starts \
             a new cluster unless it is given --join)",
            self.self_id,
            show_id(&self.cluster_id),
            m.from,
            show_id(&m.cluster_id)
        ));
        if let Ok(v) = self.cluster_id.parse() {
            status.metadata_mut().insert(CLUSTER_ID_HEADER, v);
        }
        Err(status)
    }

    /// Checks a reply's cluster ID: a peer of another cluster at the
    /// address we sent to must not answer for this one.
    pub fn check_reply(&self, peer: NodeId, m: &RaftMessage) -> Result<(), PeerError> {
        if m.cluster_id == self.cluster_id {
            return Ok(());
        }
        self.record_foreign(&m.cluster_id, format!("node {peer}"), false);
        Err(PeerError::ForeignCluster { ours: show_id(&self.cluster_id), theirs: show_id(&m.cluster_id) })
    }

    pub(crate) fn record_foreign(&self, cluster_id: &str, peer: String, inbound: bool) {
        let now = Instant::now();
        metrics::counter!(crate::telemetry::RAFT_MESSAGES_DROPPED, "reason" => "foreign_cluster").increment(1);
        if let Some(more) = self.log_limit.check(LogKey::Foreign) {
            tracing::error!(
                ours = %show_id(&self.cluster_id),
                theirs = %show_id(cluster_id),
                peer = %peer,
                claims_this_node = inbound,
                "refused contact with a node of another cluster: two clusters share node addresses or ids{}",
                more_since_last(more)
            );
        }
        let mut last = self.foreign.lock().unwrap_or_else(|p| p.into_inner());
        // A recent claim on this node is kept until it expires: other
        // contacts (a vote, a reply) must not hide it.
        let claim = last.as_ref().filter(|c| c.inbound && !inbound && now.duration_since(c.at) < FOREIGN_CONTACT_SHOWN);
        let (cluster_id, peer, at) = match claim {
            Some(c) => (c.cluster_id.clone(), c.peer.clone(), c.at),
            None => (cluster_id.to_string(), peer, now),
        };
        *last = Some(ForeignContact { cluster_id, peer, inbound: inbound || claim.is_some(), at });
    }

    /// The last refused contact with another cluster, if recent.
    pub fn foreign_contact(&self) -> Option<ForeignContact> {
        let last = self.foreign.lock().unwrap_or_else(|p| p.into_inner());
        last.clone().filter(|c| c.at.elapsed() < FOREIGN_CONTACT_SHOWN)
    }

    pub fn filter(&self) -> &LinkFilter {
        &self.filter
    }

    /// The channel to `id` at `addr`, rebuilt when the address changes or
    /// the certificates are reloaded.
    pub fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let generation = self.tls_generation();
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, g, ch)) = map.get(&id) {
            if a == addr && *g == generation {
                return Ok(ch.clone());
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.current().peer_channel.clone())?;
        }
        let ch = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .local_address(self.local_ip)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .connect_lazy();
        map.insert(id, (addr.to_string(), generation, ch.clone()));
        Ok(ch)
    }

    /// Sends `request` to `id` on the batched stream to it and waits up to
    /// `timeout` for the reply; `client` opens the stream when there is none.
    /// A peer that does not know the stream hands the message back
    /// ([`Unsent::Unimplemented`]) for a unary call.
    pub async fn call_on_stream(
        &self,
        id: NodeId,
        addr: &str,
        client: &RaftClient<Channel>,
        request: RaftEnvelope,
        timeout: Duration,
    ) -> Result<RaftMessage, Unsent> {
        if !self.streams.use_stream(id) {
            return Err(Unsent::Unimplemented(request.message.unwrap_or_default()));
        }
        self.streams.call(id, (addr, self.tls_generation()), || Ok(client.clone()), request, timeout).await
    }

    /// Bumped when the certificates are reloaded: channels and streams opened
    /// before use the old ones.
    fn tls_generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.generation())
    }

    /// When a Raft RPC to `id` last got an answer (any answer, even a refusal).
    pub fn last_answer(&self, id: NodeId) -> Option<Instant> {
        self.last_answer.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }

    /// Logs a failed Raft RPC to `peer`: one line per peer and kind of
    /// failure every [`LOG_EVERY`], however many groups and heartbeats fail.
    /// (openraft's own line for each failed RPC is off by default; see
    /// `init_tracing`.)
    fn peer_failed(&self, peer: NodeId, addr: &str, kind: &'static str, error: &dyn std::fmt::Display) {
        if let Some(more) = self.log_limit.check(LogKey::PeerFailing(peer, kind)) {
            tracing::warn!(peer, addr, error = %error, "Raft messages to a peer fail{}", more_since_last(more));
        }
    }

    fn answered(&self, id: NodeId) {
        self.last_answer.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
    }

    /// A raft-service client to `id`, or `None` when the link is cut by the filter.
    pub fn raft_client(&self, id: NodeId, addr: &str) -> Result<RaftClient<Channel>, PeerError> {
        if self.filter.is_blocked(self.self_id, id) {
            return Err(PeerError::LinkBlocked { from: self.self_id, to: id });
        }
        let ch = self.channel(id, addr).map_err(|e| PeerError::Connect(e.to_string()))?;
        Ok(RaftClient::new(ch).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

/// Errors talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("link {from}->{to} is blocked by the fault-injection filter")]
    LinkBlocked { from: NodeId, to: NodeId },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("rpc failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("bad payload: {0}")]
    Codec(#[from] postcard::Error),
    #[error("the peer answered for cluster {theirs}, but this node belongs to cluster {ours}")]
    ForeignCluster { ours: String, theirs: String },
}

/// The refusing node's cluster ID, when `s` refused a message for coming from another cluster.
fn foreign_refusal(s: &tonic::Status) -> Option<String> {
    if s.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    s.metadata().get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A cluster ID as messages show it (`(none)` for a cluster created before IDs).
pub fn show_id(id: &str) -> String {
    if id.is_empty() {
        "(none)".to_string()
    } else {
        id.to_string()
    }
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    // Serializing in-memory values to a Vec cannot fail.
    Bytes::from(postcard::to_allocvec(v).unwrap_or_default())
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// Creates per-target clients for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    group: GroupId,
    peers: Arc<Peers>,
}

impl NetworkFactory {
    pub fn new(group: GroupId, peers: Arc<Peers>) -> Self {
        Self { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            group: self.group,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            append_budget: APPEND_BYTES_MAX,
        }
    }
}

/// Sends one group's Raft messages to one peer.
pub struct PeerNetwork {
    group: GroupId,
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
    /// Most entry bytes the next AppendEntries carries (see [`APPEND_BYTES_MAX`]).
    append_budget: usize,
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.peers.raft_client(self.target, &self.addr).map_err(|e| {
            if let PeerError::Connect(why) = &e {
                self.peers.peer_failed(self.target, &self.addr, "connect", why);
            }
            unreachable(&e)
        })?;
        let msg = self.peers.message(self.group, encode(req));
        let ttl = option.hard_ttl();
        let batched = match rpc {
            Rpc::Append => Some(RaftKind::AppendEntries),
            Rpc::Vote => Some(RaftKind::Vote),
            Rpc::Snapshot => None,
        };
        let unary = match batched {
            Some(kind) => {
                let request = RaftEnvelope { kind: kind as i32, message: Some(msg), ..Default::default() };
                match self.peers.call_on_stream(self.target, &self.addr, &client, request, ttl).await {
                    Ok(reply) => Ok(Ok(reply)),
                    Err(Unsent::Failed(status) | Unsent::NotSent(status)) => Ok(Err(status)),
                    Err(Unsent::Unimplemented(msg)) => Err(msg),
                }
            }
            None => Err(msg),
        };
        let reply = match unary {
            Ok(reply) => reply,
            Err(msg) => {
                let mut msg = tonic::Request::new(msg);
                msg.set_timeout(ttl);
                match rpc {
                    Rpc::Append => client.append_entries(msg).await,
                    Rpc::Vote => client.vote(msg).await,
                    Rpc::Snapshot => client.install_snapshot(msg).await,
                }
                .map(tonic::Response::into_inner)
            }
        };
        let reply = reply.map_err(|s| {
            if let Some(theirs) = foreign_refusal(&s) {
                self.peers.record_foreign(&theirs, format!("node {} at {}", self.target, self.addr), false);
                return RPCError::Network(NetworkError::new(&PeerError::Rpc(s)));
            }
            if s.code() == tonic::Code::NotFound && s.message().starts_with(NO_GROUP) {
                // Not delivered, and not worth retrying at once: the peer
                // starts the group when the meta group tells it to.
                tracing::debug!(peer = self.target, group = self.group, "the peer does not host the group yet");
                return unreachable(&PeerError::Rpc(s));
            }
            if s.code() == tonic::Code::Unavailable {
                self.peers.peer_failed(self.target, &self.addr, "unavailable", &s.message());
                unreachable(&PeerError::Rpc(s))
            } else {
                self.peers.peer_failed(self.target, &self.addr, "rpc", &s);
                RPCError::Network(NetworkError::new(&PeerError::Rpc(s)))
            }
        })?;
        self.peers.check_reply(self.target, &reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.peers.answered(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&PeerError::Codec(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unreachable<E: std::error::Error + 'static, RE: std::error::Error>(e: &E) -> RPCError<NodeId, BasicNode, RE> {
    RPCError::Unreachable(Unreachable::new(e))
}

/// Most entry bytes one AppendEntries carries (at least one entry is always
/// sent, whatever its size); halved after each AppendEntries that got no
/// answer, down to [`APPEND_BYTES_MIN`], and doubled back after each answer.
///
/// openraft 0.9 bounds an AppendEntries by entry count only (128 here) and
/// gives it one heartbeat interval to be answered. A follower catching up
/// through large entries (re-shard moves, writes of big values) on a loaded
/// machine was sent more than it could store in that time, timed out, and
/// was sent the same again, forever. Sending a prefix and answering
/// `PartialSuccess` for it is what that response exists for; replication
/// goes on from there.
const APPEND_BYTES_MAX: usize = 1024 * 1024;
const APPEND_BYTES_MIN: usize = 32 * 1024;

/// Cuts `entries` to the longest prefix within `budget` bytes (at least
/// one entry). Returns the last entry kept when it cut any.
fn cut_to_budget(entries: &mut Vec<Entry<TypeConfig>>, budget: usize) -> Option<openraft::LogId<NodeId>> {
    if entries.len() <= 1 {
        return None;
    }
    let mut total = 0usize;
    let mut keep = entries.len();
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(postcard::experimental::serialized_size(e).unwrap_or(usize::MAX));
        if total > budget {
            keep = i.max(1);
            break;
        }
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let budget = self.append_budget;
        let cut = cut_to_budget(&mut rpc.entries, budget);
        // Assume no answer: openraft drops this future when its own timeout
        // fires first, and then nothing after the call runs.
        if !rpc.entries.is_empty() {
            self.append_budget = (budget / 2).max(APPEND_BYTES_MIN);
        }
        let reply = self.call(Rpc::Append, &rpc, &option).await?;
        self.append_budget = budget.saturating_mul(2).min(APPEND_BYTES_MAX);
        Ok(match (cut, reply) {
            (Some(last), AppendEntriesResponse::Success) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (_, reply) => reply,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let op = crate::command::KvOp::Expire { key: vec![b'k'; bytes], version: 1 }.into();
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(crate::command::Command { now_ms: 0, ops: vec![op] }),
        }
    }

    #[test]
    fn appends_are_cut_to_the_byte_budget_but_never_empty() {
        let max = APPEND_BYTES_MAX;
        let mut small: Vec<_> = (1..=100).map(|i| entry(i, 100)).collect();
        assert_eq!(cut_to_budget(&mut small, max), None, "100 small entries go whole");
        assert_eq!(small.len(), 100);
        let mut big: Vec<_> = (1..=10).map(|i| entry(i, 300 * 1024)).collect();
        assert_eq!(cut_to_budget(&mut big, max).map(|l| l.index), Some(3), "three of 300 KiB fit in 1 MiB");
        assert_eq!(big.len(), 3);
        let mut huge = vec![entry(1, 2 * max), entry(2, 10)];
        assert_eq!(cut_to_budget(&mut huge, max).map(|l| l.index), Some(1), "one entry goes whatever its size");
        let mut one = vec![entry(1, 2 * max)];
        assert_eq!(cut_to_budget(&mut one, max), None);
    }

    fn peers(cluster: &str) -> Arc<Peers> {
        Peers::new(1, cluster.to_string(), None, LinkFilter::default(), None)
    }

    #[test]
    fn messages_and_replies_of_another_cluster_are_refused_and_remembered() {
        let ours = peers("aaaa");
        let theirs = peers("bbbb");
        assert!(ours.check_incoming(&ours.message(3, Bytes::new()), true).is_ok());
        assert!(ours.foreign_contact().is_none());
        assert!(ours.check_incoming(&theirs.message(3, Bytes::new()), false).is_err());
        assert!(!ours.foreign_contact().expect("remembered").inbound, "a vote claims no membership");
        let refused = ours.check_incoming(&theirs.message(3, Bytes::new()), true).expect_err("another cluster");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("aaaa") && refused.message().contains("bbbb"), "{}", refused.message());
        assert_eq!(foreign_refusal(&refused).as_deref(), Some("aaaa"), "the refusal names the refusing cluster");
        let contact = ours.foreign_contact().expect("remembered");
        assert!(contact.inbound && contact.cluster_id == "bbbb");
        assert!(theirs.check_reply(1, &ours.message(3, Bytes::new())).is_err());
        assert!(!theirs.foreign_contact().expect("remembered").inbound);
    }
}
