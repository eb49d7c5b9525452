//! Request routing: every request may arrive at any node. Writes and
//! linearizable reads run on the group leader, forwarded there over the peer
//! transport when needed; eventual reads are served by the local replica when
//! this node's copy of the meta group assigns the shard here (and it is a
//! voter of the shard's group), else by another replica. This module owns
//! the node's key operations, the messages nodes forward to each other and
//! serving them; finding the leader and sending them is
//! [`super::forwarding`]'s.
//!
//! Routing epochs: a node's epoch is its meta group's applied index. A client
//! sends the epoch of its routing table; the API waits until the meta group
//! has applied that much before routing ([`Node::wait_meta_epoch`]), so a
//! node never decides ownership from an older configuration than the
//! client's. Each key request carries a [`RequestContext`]: the routing
//! generation its key was routed by, and a [`super::request::ServedBy`] that
//! learns which node served it, so the API can tell the client it went to the
//! wrong node.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::request::RequestContext;
use super::{Group, Node, NodeError, META_GROUP};
use crate::command::{CommandResult, Proposal};
use crate::raft::network::PeerError;
use crate::raft::types::now_ms;
use crate::ring::ShardId;
use crate::storage::{Envelope, GroupId};

/// A request forwarded to a group leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Propose(Proposal),
    Get {
        key: Vec<u8>,
    },
    Scan {
        prefix: Vec<u8>,
        limit: u32,
    },
    /// An eventual read, served by any replica from its local state.
    GetLocal {
        key: Vec<u8>,
    },
    /// An eventual scan of one shard, served by any replica.
    ScanLocal {
        prefix: Vec<u8>,
        limit: u32,
    },
    /// [`Forwarded::Scan`] from a key on (a page after the first). Variants
    /// of their own, so nodes without paging keep decoding the others.
    ScanAfter {
        prefix: Vec<u8>,
        after: Vec<u8>,
        limit: u32,
    },
    /// [`Forwarded::ScanLocal`] from a key on.
    ScanLocalAfter {
        prefix: Vec<u8>,
        after: Vec<u8>,
        limit: u32,
    },
}

impl Forwarded {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Forwarded::Propose(_) => "propose",
            Forwarded::Get { .. } => "get",
            Forwarded::Scan { .. } | Forwarded::ScanAfter { .. } => "scan",
            Forwarded::GetLocal { .. } => "get_eventual",
            Forwarded::ScanLocal { .. } | Forwarded::ScanLocalAfter { .. } => "scan_eventual",
        }
    }
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Written(CommandResult),
    /// Encoded [`Envelope`] or nothing.
    Value(Option<Vec<u8>>),
    /// (key, encoded envelope) pairs.
    Items(Vec<(Vec<u8>, Vec<u8>)>),
    /// The receiver is not the leader (any more); retry elsewhere.
    NotLeader,
    /// A hook on the leader rejected the write.
    Rejected(String),
    Unavailable(String),
    /// The receiver routes keys by another partition view: route again.
    WrongShard {
        generation: u64,
    },
}

/// Shards a scan reads at once.
const SCAN_CONCURRENCY: usize = 16;

/// How long a replica waits for its meta group to catch up with a forwarded
/// eventual read's epoch before letting the sender try another replica.
const FORWARDED_EPOCH_WAIT: Duration = Duration::from_millis(500);

/// What one attempt at the leader produced.
pub enum Attempt<T> {
    Done(T),
    /// Leadership is moving or unknown: wait a little and try again.
    Retry,
}

impl Node {
    /// This node's routing epoch: the index its copy of the meta group has
    /// applied. Every configuration change raises it.
    pub fn meta_epoch(&self) -> u64 {
        self.meta().epoch()
    }

    /// Waits, at most `timeout`, until this node's meta group has applied
    /// `epoch`: a client's routing table is that new, so this node must not
    /// route by an older configuration.
    pub async fn wait_meta_epoch(&self, epoch: u64, timeout: Duration) -> Result<(), NodeError> {
        self.meta().wait_epoch(self.id(), epoch, timeout).await
    }

    /// The hosted replica of `group` if this node may serve eventual reads
    /// from it: its copy of the meta group assigns the shard here (a replica
    /// removed from the shard keeps its group until the reconciler drops it),
    /// and it is a voter of the group (a new replica is promoted only once
    /// caught up).
    async fn local_replica(&self, group: GroupId) -> Result<Option<Arc<Group>>, NodeError> {
        let Ok(g) = self.group(group) else { return Ok(None) };
        if group == META_GROUP {
            return Ok(Some(g));
        }
        let voter = g.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == self.id());
        if !voter {
            return Ok(None);
        }
        let shard = (group - 1) as ShardId;
        let assigned = self.meta().cached_assignments().await?.get(&shard).is_some_and(|r| r.contains(&self.id()));
        Ok(assigned.then_some(g))
    }

    /// Proposes a write of this node's own to `group` and returns what
    /// applying it produced.
    pub async fn propose(&self, group: GroupId, p: impl Into<Proposal>) -> Result<CommandResult, NodeError> {
        self.propose_in(RequestContext::INTERNAL, group, p.into()).await
    }

    /// Proposes a write to `group` on behalf of request `ctx`.
    pub(super) async fn propose_in(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        p: Proposal,
    ) -> Result<CommandResult, NodeError> {
        self.forwarder()
            .at_leader(
                ctx,
                group,
                || Forwarded::Propose(p.clone()),
                |g| async {
                    let started = std::time::Instant::now();
                    let r = self.write_local(ctx, g, p.clone()).await;
                    if matches!(r, Ok(Attempt::Done(_))) {
                        crate::telemetry::record_proposal(group, started.elapsed());
                    }
                    r
                },
            )
            .await
    }

    /// Reads a key at the given consistency.
    pub async fn get(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        key: Vec<u8>,
        linearizable: bool,
    ) -> Result<Option<Envelope>, NodeError> {
        if !linearizable {
            if let Some(g) = self.local_replica(group).await? {
                let _gate = self.admit(ctx, group, &key, false).await?;
                let v = g.sm.get(key, now_ms()).await?;
                ctx.served_by(self.id());
                return Ok(v);
            }
            let v: EncodedValue =
                self.forwarder().any_replica(ctx, group, || Forwarded::GetLocal { key: key.clone() }).await?;
            return Ok(v.0);
        }
        let v: EncodedValue = self
            .forwarder()
            .at_leader(
                ctx,
                group,
                || Forwarded::Get { key: key.clone() },
                |g| {
                    let key = key.clone();
                    async move {
                        let _gate = self.admit(ctx, g.id, &key, false).await?;
                        Ok(match read_barrier(&g).await? {
                            Attempt::Done(()) => Attempt::Done(EncodedValue(g.sm.get(key, now_ms()).await?)),
                            Attempt::Retry => Attempt::Retry,
                        })
                    }
                },
            )
            .await?;
        Ok(v.0)
    }

    /// Lists live keys under `prefix`, at most `limit`.
    pub async fn scan(
        &self,
        group: GroupId,
        prefix: Vec<u8>,
        limit: u32,
        linearizable: bool,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, NodeError> {
        self.scan_after(group, prefix, Vec::new(), limit, linearizable).await
    }

    /// Lists live keys under `prefix` after `after` (empty: from the first),
    /// at most `limit`, in key order.
    pub async fn scan_after(
        &self,
        group: GroupId,
        prefix: Vec<u8>,
        after: Vec<u8>,
        limit: u32,
        linearizable: bool,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, NodeError> {
        if !linearizable {
            if let Some(g) = self.local_replica(group).await? {
                return Ok(g.sm.scan_after(prefix, after, limit as usize, now_ms()).await?);
            }
            let items: EncodedItems = self
                .forwarder()
                .any_replica(RequestContext::INTERNAL, group, || match after.is_empty() {
                    true => Forwarded::ScanLocal { prefix: prefix.clone(), limit },
                    false => Forwarded::ScanLocalAfter { prefix: prefix.clone(), after: after.clone(), limit },
                })
                .await?;
            return Ok(items.0);
        }
        let items: EncodedItems = self
            .forwarder()
            .at_leader(
                RequestContext::INTERNAL,
                group,
                || match after.is_empty() {
                    true => Forwarded::Scan { prefix: prefix.clone(), limit },
                    false => Forwarded::ScanAfter { prefix: prefix.clone(), after: after.clone(), limit },
                },
                |g| {
                    let (prefix, after) = (prefix.clone(), after.clone());
                    async move {
                        Ok(match read_barrier(&g).await? {
                            Attempt::Done(()) => Attempt::Done(EncodedItems(
                                g.sm.scan_after(prefix, after, limit as usize, now_ms()).await?,
                            )),
                            Attempt::Retry => Attempt::Retry,
                        })
                    }
                },
            )
            .await?;
        Ok(items.0)
    }

    /// Scans every shard (concurrently) for keys under `prefix` after `after`
    /// (empty: from the first) and merges the results in key order, keeping
    /// the first `limit`. Each shard returns its own first `limit` such keys,
    /// so the merge holds exactly the first `limit` of the whole key space:
    /// paging by the last key returned loses and repeats nothing across
    /// shard boundaries.
    pub async fn scan_all(
        &self,
        prefix: Vec<u8>,
        after: Vec<u8>,
        limit: u32,
        linearizable: bool,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, NodeError> {
        use futures::StreamExt;
        let shards: Vec<GroupId> = self.group_ids().into_iter().filter(|g| *g != META_GROUP).collect();
        let mut parts = futures::stream::iter(shards)
            .map(|g| {
                let (prefix, after) = (prefix.clone(), after.clone());
                async move { (g, self.scan_after(g, prefix, after, limit, linearizable).await) }
            })
            .buffer_unordered(SCAN_CONCURRENCY);
        let mut all = Vec::new();
        while let Some((g, part)) = parts.next().await {
            all.extend(part?.into_iter().map(|(k, e)| (g, k, e)));
        }
        self.dedupe_moving(&mut all);
        all.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        all.truncate(limit as usize);
        Ok(all.into_iter().map(|(_, k, e)| (k, e)).collect())
    }

    /// Serves a request another node forwarded here. Never forwards again.
    /// `epoch` is the sender's routing epoch: eventual reads are served only
    /// once this node's meta group has caught up with it.
    pub async fn handle_forwarded(
        &self,
        group: GroupId,
        req: Forwarded,
        epoch: Option<u64>,
        routed: Option<u64>,
    ) -> ForwardReply {
        self.serve_forwarded(RequestContext::forwarded(routed), group, req, epoch).await
    }

    async fn serve_forwarded(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        req: Forwarded,
        epoch: Option<u64>,
    ) -> ForwardReply {
        // A group not hosted here (moved away, or not started yet): try another replica.
        let Ok(g) = self.group(group) else { return ForwardReply::NotLeader };
        if matches!(req, Forwarded::GetLocal { .. } | Forwarded::ScanLocal { .. } | Forwarded::ScanLocalAfter { .. }) {
            // Eventual reads only from a replica this node's meta group, at
            // least as new as the sender's, still assigns here. A node that
            // cannot catch up quickly lets the sender try another replica.
            if let Some(epoch) = epoch {
                if self.wait_meta_epoch(epoch, FORWARDED_EPOCH_WAIT).await.is_err() {
                    return ForwardReply::NotLeader;
                }
            }
            match self.local_replica(group).await {
                Ok(Some(_)) => {}
                Ok(None) => return ForwardReply::NotLeader,
                Err(e) => return ForwardReply::Unavailable(e.to_string()),
            }
        }
        let work = async {
            let reply = match req {
                Forwarded::Propose(p) => match self.write_local(ctx, g.clone(), p).await {
                    Ok(Attempt::Done(r)) => ForwardReply::Written(r),
                    Ok(Attempt::Retry) => ForwardReply::NotLeader,
                    Err(NodeError::Rejected(m)) => ForwardReply::Rejected(m),
                    Err(e) => return Err(e),
                },
                Forwarded::Get { key } => {
                    let _gate = self.admit(ctx, group, &key, false).await?;
                    match read_barrier(&g).await? {
                        Attempt::Done(()) => ForwardReply::Value(g.sm.get(key, now_ms()).await?.map(|e| e.encode())),
                        Attempt::Retry => ForwardReply::NotLeader,
                    }
                }
                Forwarded::GetLocal { key } => {
                    let _gate = self.admit(ctx, group, &key, false).await?;
                    ForwardReply::Value(g.sm.get(key, now_ms()).await?.map(|e| e.encode()))
                }
                Forwarded::ScanLocal { prefix, limit } => scan_reply(&g, prefix, Vec::new(), limit).await?,
                Forwarded::ScanLocalAfter { prefix, after, limit } => scan_reply(&g, prefix, after, limit).await?,
                Forwarded::Scan { prefix, limit } => match read_barrier(&g).await? {
                    Attempt::Done(()) => scan_reply(&g, prefix, Vec::new(), limit).await?,
                    Attempt::Retry => ForwardReply::NotLeader,
                },
                Forwarded::ScanAfter { prefix, after, limit } => match read_barrier(&g).await? {
                    Attempt::Done(()) => scan_reply(&g, prefix, after, limit).await?,
                    Attempt::Retry => ForwardReply::NotLeader,
                },
            };
            Ok::<_, NodeError>(reply)
        };
        match tokio::time::timeout(self.config().request_timeout, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(NodeError::WrongShard { generation })) => ForwardReply::WrongShard { generation },
            Ok(Err(NodeError::Rejected(m))) => ForwardReply::Rejected(m),
            Ok(Err(e)) => ForwardReply::Unavailable(e.to_string()),
            Err(_) => ForwardReply::Unavailable(format!(
                "leader {} could not reach a quorum for group {group} in time",
                self.id()
            )),
        }
    }
}

/// A forwarded scan's answer: the group's keys under `prefix` after `after`.
async fn scan_reply(g: &Group, prefix: Vec<u8>, after: Vec<u8>, limit: u32) -> Result<ForwardReply, NodeError> {
    let items = g.sm.scan_after(prefix, after, limit as usize, now_ms()).await?;
    Ok(ForwardReply::Items(items.into_iter().map(|(k, e)| (k, e.encode())).collect()))
}

/// ReadIndex: confirms leadership with a quorum and waits until the local
/// state machine has applied everything committed before the read began.
async fn read_barrier(g: &Group) -> Result<Attempt<()>, NodeError> {
    g.batchers.read_barrier().await
}

impl TryFrom<ForwardReply> for CommandResult {
    type Error = NodeError;
    fn try_from(r: ForwardReply) -> Result<Self, NodeError> {
        match r {
            ForwardReply::Written(c) => Ok(c),
            other => Err(NodeError::Internal(format!("unexpected reply to a write: {other:?}"))),
        }
    }
}

struct EncodedValue(Option<Envelope>);

impl TryFrom<ForwardReply> for EncodedValue {
    type Error = NodeError;
    fn try_from(r: ForwardReply) -> Result<Self, NodeError> {
        match r {
            ForwardReply::Value(v) => Ok(EncodedValue(v.map(|raw| Envelope::decode(&raw)).transpose()?)),
            other => Err(NodeError::Internal(format!("unexpected reply to a read: {other:?}"))),
        }
    }
}

struct EncodedItems(Vec<(Vec<u8>, Envelope)>);

impl TryFrom<ForwardReply> for EncodedItems {
    type Error = NodeError;
    fn try_from(r: ForwardReply) -> Result<Self, NodeError> {
        match r {
            ForwardReply::Items(v) => Ok(EncodedItems(
                v.into_iter().map(|(k, raw)| Ok((k, Envelope::decode(&raw)?))).collect::<Result<_, NodeError>>()?,
            )),
            other => Err(NodeError::Internal(format!("unexpected reply to a scan: {other:?}"))),
        }
    }
}

impl From<PeerError> for NodeError {
    fn from(e: PeerError) -> Self {
        NodeError::Unavailable(e.to_string())
    }
}

/// The peer messages' bytes, one sample of each variant, frozen: a node of
/// the previous version must read what this one sends (rolling upgrades).
/// A new variant goes last, so the indices of the others stay.
#[cfg(test)]
mod wire_golden {
    use super::super::membership::{MembershipOp, MembershipReply};
    use super::*;
    use crate::command::KvProposal;

    /// Each sample writes its golden bytes, and those bytes read back.
    fn check<T: Serialize + for<'de> Deserialize<'de> + std::fmt::Debug>(samples: &[T], golden: &[&str]) {
        assert_eq!(samples.len(), golden.len());
        for (value, golden) in samples.iter().zip(golden) {
            let bytes = postcard::to_allocvec(value).expect("encode");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&hex, golden, "{value:?}");
            let back: T = postcard::from_bytes(&bytes).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{value:?}"));
        }
    }

    #[test]
    fn peer_messages_keep_their_encoding() {
        let k = || b"k".to_vec();
        let delete = KvProposal::Delete { key: k(), if_version: None, hooks: None };
        let forwarded = [
            Forwarded::Propose(delete.into()),
            Forwarded::Get { key: k() },
            Forwarded::Scan { prefix: k(), limit: 5 },
            Forwarded::GetLocal { key: k() },
            Forwarded::ScanLocal { prefix: k(), limit: 5 },
            Forwarded::ScanAfter { prefix: k(), after: b"a".to_vec(), limit: 5 },
            Forwarded::ScanLocalAfter { prefix: k(), after: b"a".to_vec(), limit: 5 },
        ];
        let replies = [
            ForwardReply::Written(CommandResult::Done),
            ForwardReply::Value(Some(b"v".to_vec())),
            ForwardReply::Items(vec![(k(), b"v".to_vec())]),
            ForwardReply::NotLeader,
            ForwardReply::Rejected("r".into()),
            ForwardReply::Unavailable("u".into()),
            ForwardReply::WrongShard { generation: 7 },
        ];
        let membership = [
            MembershipOp::AddVoter { id: 2, addr: "a".into() },
            MembershipOp::AddLearner { id: 2, addr: "a".into() },
            MembershipOp::Remove { id: 2 },
            MembershipOp::Campaign,
            MembershipOp::Sleep { leader: 1, groups: vec![(3, 4)] },
        ];
        let membership_replies = [
            MembershipReply::Done,
            MembershipReply::NotLeader,
            MembershipReply::Failed("f".into()),
            MembershipReply::Asleep(vec![3]),
        ];
        check(
            &forwarded,
            &["0001016b0000", "01016b", "02016b05", "03016b", "04016b05", "05016b016105", "06016b016105"],
        );
        check(&replies, &["0003", "01010176", "0201016b0176", "03", "040172", "050175", "0607"]);
        check(&membership, &["00020161", "01020161", "0202", "03", "0401010304"]);
        check(&membership_replies, &["00", "01", "020166", "030103"]);
    }
}
