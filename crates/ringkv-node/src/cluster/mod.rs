//! The node: starts its Raft groups, bootstraps or joins a cluster, routes
//! requests to group leaders, changes membership and expires TTL'd keys.
//!
//! Groups: [`META_GROUP`] holds the cluster configuration (members, shard
//! placement, hooks, tokens, the partition function). User data lives in one
//! Raft group per shard of the ring ([`shard_group`]); a key's shard comes
//! from [`crate::ring`] and the partition function (`partitioning`, which
//! also re-shards when the function changes). `placement` gives each shard
//! RF replicas and moves them on membership changes.

mod auth;
mod backup;
mod batching;
mod compaction;
mod forwarding;
mod groups;
mod hooks;
mod key_router;
mod leadership;
mod membership;
mod meta_view;
pub mod metrics;
mod partitioning;
mod placement;
mod quiescence;
mod request;
mod resize_policy;
mod routing;
mod status;
pub mod workers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backup::{DumpChunk, HookBackup, ShardDump};
pub use groups::{Group, KEY_COUNT_EVERY};
pub use membership::{MembershipOp, MembershipReply};
pub use meta_view::{Assignments, MetaView};
pub use partitioning::{KeyRoute, PartitionView, ReshardStatus};
pub use request::{RequestContext, ServedBy};
pub use routing::{ForwardReply, Forwarded};
pub use status::{GroupState, MemberMarks, ShardRoute};

use crate::command::{KvProposal, MetaOp};
use crate::config::NodeConfig;
use crate::raft::{LinkFilter, NodeId, Peers, RaftLayerError};
use crate::ring::{RingConfig, ShardId};
use crate::storage::{GroupId, Storage, StorageError};

pub use crate::ids::{shard_group, META_GROUP};

/// Errors a node reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("version mismatch: current version is {current}")]
    VersionMismatch { current: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("unknown raft group {0}")]
    NoSuchGroup(GroupId),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Raft(#[from] Box<RaftLayerError>),
    #[error("{0}")]
    Startup(String),
    /// A hook rejected the write or failed under its fail-closed policy.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    NotFound(String),
    /// A request that conflicts with the current state (e.g. nothing to roll back).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
    /// The serving replica routes keys by a different partition view
    /// (`generation`) than the request's router: route again.
    #[error("the key's shard changed (routing generation {generation}); route it again")]
    WrongShard { generation: u64 },
}

/// The one place a node error becomes a gRPC status. It lives beside the
/// error because Rust lets only this crate or tonic implement it; the API
/// layer (crate `ringkv`) is its user.
impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            NodeError::VersionMismatch { current } => {
                tonic::Status::aborted(format!("version mismatch: current version is {current}"))
            }
            NodeError::Unavailable(m) => tonic::Status::unavailable(m),
            e @ NodeError::WrongShard { .. } => tonic::Status::unavailable(e.to_string()),
            NodeError::Rejected(m) | NodeError::Refused(m) => tonic::Status::failed_precondition(m),
            NodeError::NotFound(m) => tonic::Status::not_found(m),
            NodeError::Storage(e) if matches!(e, crate::storage::StorageError::Poisoned) => {
                tonic::Status::unavailable(e.to_string())
            }
            other => {
                tracing::error!(error = %other, "internal error");
                tonic::Status::internal(other.to_string())
            }
        }
    }
}

/// A running node. Cheap to clone; clones share the node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: NodeId,
    /// Address peers and clients use to reach this node.
    addr: String,
    /// Shard count and placement settings, fixed when the cluster was created.
    ring: RingConfig,
    config: NodeConfig,
    storage: Storage,
    peers: Arc<Peers>,
    /// The Raft groups hosted here.
    groups: groups::Groups,
    /// Flips to true when the node shuts down; every background task watches it.
    shutdown: watch::Sender<bool>,
    /// The deployed hooks, kept in step with the meta group.
    hooks: Arc<crate::hooks::HookRegistry>,
    /// Credentials and grants; its runtime tokens follow the meta group.
    auth: Arc<crate::auth::Authenticator>,
    /// Background tasks that are not workers (certificate watch, join), stopped on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The named background workers (sync loops, TTL sweeper, placement...).
    workers: workers::Workers,
    /// Flips to true when the node stops taking requests before shutting
    /// down: the gRPC server stops accepting and finishes what is in flight.
    draining: watch::Sender<bool>,
    /// The certificates in use when TLS is on.
    tls: Option<Arc<crate::tls::TlsState>>,
    /// The partition view keys route by, and its routing gate.
    router: key_router::KeyRouter,
    /// Reads of the meta group's state.
    meta: meta_view::MetaView,
}

const NODE_ID_KEY: &[u8] = b"node_id";
const JOINED_KEY: &[u8] = b"joined";
const RING_KEY: &[u8] = b"ring";
/// The cluster ID, stored with the ring settings when the node first
/// creates or finds its cluster.
const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
/// Present when this data directory was set up to create a new cluster
/// (so a crash before the Raft groups were initialized bootstraps again,
/// and a node that found an existing cluster never bootstraps one).
const BOOTSTRAP_KEY: &[u8] = b"bootstrap";

impl Node {
    /// Opens the data directory of node `id` and checks that it belongs to
    /// that node (a directory keeps the id it was first opened with).
    pub async fn open_storage(config: &NodeConfig) -> Result<Storage, NodeError> {
        let storage = Storage::open(&config.data_dir)?;
        check_identity(&storage, config.id).await?;
        Ok(storage)
    }

    /// Opens the node on `storage`: finds (or, to bootstrap, creates) its
    /// cluster identity, starts the meta group, the shards it hosted before
    /// a restart and the loops that keep hooks, tokens and the partition
    /// function in step with the meta group. `bound` is the address its
    /// gRPC listener is bound to. Starts no server (`crate::server` does)
    /// and does not yet bootstrap or join: [`Node::run`] does, once peers
    /// can reach the node.
    pub async fn open(
        config: NodeConfig,
        storage: Storage,
        bound: std::net::SocketAddr,
        tls: Option<Arc<crate::tls::TlsState>>,
        filter: LinkFilter,
    ) -> Result<Node, NodeError> {
        let addr = config.advertise.clone().unwrap_or_else(|| bound.to_string());
        let identity = resolve_cluster(&storage, &config).await?;
        let ring = identity.ring;
        let peers = Peers::new(config.id, identity.cluster_id, Some(bound.ip()), filter, tls.clone());
        let (shutdown, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let hooks = Arc::new(
            crate::hooks::HookRegistry::new()
                .map_err(|e| NodeError::Startup(format!("cannot start the hook workers: {e}")))?,
        );
        let auth = Arc::new(crate::auth::Authenticator::new(config.auth.clone()));
        let groups = groups::Groups::new(config.id, storage.clone(), peers.clone(), config.raft.clone(), hooks.clone());
        let meta = meta_view::MetaView::new(groups.ensure(META_GROUP).await?);
        let node = Node {
            inner: Arc::new(NodeInner {
                id: config.id,
                addr,
                ring,
                config,
                storage,
                peers,
                groups,
                shutdown,
                hooks,
                auth,
                tasks: Mutex::new(Vec::new()),
                workers: workers::Workers::default(),
                draining,
                tls,
                router: key_router::KeyRouter::new(partitioning::PartitionView::initial(ring.shards)),
                meta,
            }),
        };
        if let Some(tls) = &node.inner.tls {
            node.spawn(tls.clone().watch(node.shutdown_signal()));
        }
        node.spawn_worker("hook-sync", |w| node.clone().hook_sync_loop(w));
        node.spawn_worker("token-sync", |w| node.clone().token_sync_loop(w));
        node.spawn_worker("partition-sync", |w| node.clone().partition_sync_loop(w));
        // Shards this node hosted before a restart, as its copy of the meta group records them.
        for (shard, replicas) in node.assignments().await? {
            if replicas.contains(&node.id()) {
                node.ensure_group(shard_group(shard)).await?;
            }
        }
        Ok(node)
    }

    /// Bootstraps a new cluster or joins an existing one, then starts the
    /// background workers (TTL sweeper, reconcile, placement, leadership,
    /// quiescence, compaction, re-sharding).
    pub async fn run(&self) -> Result<(), NodeError> {
        self.bootstrap_or_join().await?;
        self.spawn_worker("ttl-sweeper", |w| self.clone().ttl_sweeper(w));
        self.spawn_worker("reconcile", |w| self.clone().reconcile_loop(w));
        self.spawn_worker("rebalance", |w| self.clone().rebalance_loop(w));
        self.spawn_worker("leader-balance", |w| self.clone().leader_balance_loop(w));
        if self.config().raft.quiesce {
            self.spawn_worker("quiescence", |w| self.clone().quiescence_loop(w));
        }
        self.spawn_worker("compaction", |w| self.clone().compaction_loop(w));
        self.spawn_worker("reshard", |w| self.clone().reshard_loop(w));
        tracing::info!(node = self.id(), addr = %self.addr(), "node started");
        Ok(())
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address peers and clients use for this node.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The node's certificates, when TLS is on.
    pub fn tls(&self) -> Option<&Arc<crate::tls::TlsState>> {
        self.inner.tls.as_ref()
    }

    /// The cluster's ring settings.
    pub fn ring(&self) -> &RingConfig {
        &self.inner.ring
    }

    /// Every group id: the meta group, then every shard that holds keys
    /// by this node's partition view (during a merge, the retiring shard
    /// too).
    pub fn group_ids(&self) -> Vec<GroupId> {
        std::iter::once(META_GROUP).chain(self.partition_view().shards().into_iter().map(shard_group)).collect()
    }

    /// The hooks this node runs as a shard leader.
    pub fn hooks(&self) -> &crate::hooks::HookRegistry {
        &self.inner.hooks
    }

    /// Checks credentials and grants of client requests.
    pub fn auth(&self) -> &crate::auth::Authenticator {
        &self.inner.auth
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.inner.peers
    }

    /// The fault-injection filter of this node's transport.
    pub fn link_filter(&self) -> &LinkFilter {
        self.inner.peers.filter()
    }

    pub fn group(&self, id: GroupId) -> Result<Arc<Group>, NodeError> {
        self.inner.groups.get(id)
    }

    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.inner.groups.all()
    }

    /// Starts the Raft instance of `gid` here unless it already runs.
    pub(crate) async fn ensure_group(&self, gid: GroupId) -> Result<Arc<Group>, NodeError> {
        self.inner.groups.ensure(gid).await
    }

    /// Stops the Raft instance of `gid` and deletes its data from this node.
    pub(crate) async fn drop_group(&self, gid: GroupId) -> Result<(), NodeError> {
        self.inner.groups.remove(gid).await
    }

    /// A receiver that turns true when the node shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(fut);
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    }

    /// Signals that flip when the node starts draining (first) and when it
    /// shuts down; the gRPC server stops on whichever comes first.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// True once [`Node::start_draining`] was called: the node takes no new requests.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Stops taking requests: flips [`Node::drain_signal`], on which the
    /// gRPC server stops accepting connections and tells connected clients
    /// (HTTP/2 GOAWAY) to send new requests elsewhere. Raft groups keep
    /// running so in-flight writes can commit.
    pub fn start_draining(&self) {
        let _ = self.inner.draining.send(true);
    }

    /// Stops background tasks and Raft groups and flushes storage. The
    /// servers watch [`Node::shutdown_signal`]. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        self.inner.groups.stop_all().await;
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.inner.workers.stop().await;
        self.inner.groups.forget_all();
        let storage = self.inner.storage.clone();
        let _ = tokio::task::spawn_blocking(move || storage.shutdown()).await;
        tracing::info!(node = self.id(), "node stopped");
    }

    /// This node's cluster ID (empty for a cluster created before cluster IDs).
    pub fn cluster_id(&self) -> &str {
        self.inner.peers.cluster_id()
    }

    async fn bootstrap_or_join(&self) -> Result<(), NodeError> {
        let meta = self.group(META_GROUP)?;
        let initialized = meta.raft.is_initialized().await.map_err(|e| NodeError::Internal(e.to_string()))?;
        let joined = self.read_node_meta(JOINED_KEY).await?.is_some();
        let bootstrap = self.read_node_meta(BOOTSTRAP_KEY).await?.is_some();
        let seeds = self.inner.config.join.clone();
        if !initialized && bootstrap {
            tracing::info!(
                node = self.id(),
                cluster = %self.cluster_id(),
                shards = self.ring().shards,
                "bootstrapping a new cluster"
            );
            let members = BTreeMap::from([(self.id(), BasicNode { addr: self.addr().to_string() })]);
            for gid in self.group_ids() {
                let g = self.ensure_group(gid).await?;
                g.raft.initialize(members.clone()).await.map_err(|e| NodeError::Startup(e.to_string()))?;
            }
            self.write_node_meta(JOINED_KEY, b"1".to_vec()).await?;
            let me = self.clone();
            self.spawn(async move { me.register_self().await });
        } else if !seeds.is_empty() && !joined {
            let me = self.clone();
            self.spawn(async move { me.join_loop(seeds).await });
        }
        Ok(())
    }

    /// Records this node's address and the initial shard assignment (every
    /// shard on this node) in the meta group, after a bootstrap.
    async fn register_self(&self) {
        let mut stop = self.shutdown_signal();
        loop {
            let mut result =
                self.propose(META_GROUP, MetaOp::SetNode { id: self.id(), addr: self.addr().to_string() }).await;
            for shard in self.partition_view().shards() {
                if result.is_err() {
                    break;
                }
                let p = MetaOp::SetAssignment { shard, replicas: vec![self.id()], pending: false };
                result = self.propose(META_GROUP, p).await;
            }
            match result {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "registering self in the meta group, retrying"),
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Asks the seeds to add this node until one succeeds.
    async fn join_loop(&self, seeds: Vec<String>) {
        let mut stop = self.shutdown_signal();
        let mut attempt = 0u32;
        loop {
            for seed in &seeds {
                attempt += 1;
                tracing::info!(node = self.id(), seed = %seed, attempt, "asking the cluster to add this node");
                let client =
                    match node_client_options(&self.inner.config, Duration::from_secs(300), Duration::from_secs(2))
                        .and_then(|opts| ringkv_client::Client::connect_with([seed], opts))
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(seed = %seed, error = %e, "cannot make a client for the seed");
                            continue;
                        }
                    };
                let new_data_dir = match self.group(META_GROUP) {
                    Ok(meta) => !meta.raft.is_initialized().await.unwrap_or(false),
                    Err(_) => true,
                };
                let req = ringkv_client::proto::AddNodeRequest {
                    id: self.id(),
                    addr: self.addr().to_string(),
                    cluster_id: self.cluster_id().to_string(),
                    new_data_dir,
                };
                match client.add_node_with(req).await {
                    Ok(()) => {
                        if let Err(e) = self.write_node_meta(JOINED_KEY, b"1".to_vec()).await {
                            tracing::error!(error = %e, "could not record the join");
                        }
                        tracing::info!(node = self.id(), "joined the cluster as a voter");
                        return;
                    }
                    Err(ringkv_client::Error::Rejected(m)) => {
                        // A refusal of this node's identity: retrying will not help
                        // until an operator acts, so say it loudly.
                        tracing::error!(seed = %seed, error = %m, "the cluster refuses this node; will retry");
                    }
                    Err(e) => tracing::warn!(seed = %seed, error = %e, "join attempt failed, will retry"),
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Refuses a joining node (`AddNode` from a node, which says which
    /// cluster it expects and whether its data directory is new) that
    /// belongs to another cluster, or that comes back without its data while
    /// this cluster counts it as a voter: it would vote without the log it
    /// promised to keep.
    pub fn check_joiner(&self, id: NodeId, cluster_id: &str, new_data_dir: bool) -> Result<(), NodeError> {
        if !cluster_id.is_empty() && cluster_id != self.cluster_id() {
            return Err(NodeError::Rejected(format!(
                "cluster ID mismatch: node {id} expects cluster {cluster_id}, but this is cluster {}; start it with \
                 its own cluster's seeds, or with an empty data directory to join this one",
                crate::raft::network::show_id(self.cluster_id())
            )));
        }
        let voter =
            self.group(META_GROUP)?.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
        if new_data_dir && voter {
            return Err(NodeError::Rejected(format!(
                "node {id} is already a voter of cluster {} but comes back with a new data directory; if it lost \
                 its data, remove it first (`ringkv cluster remove-node {id}`), then start it again",
                crate::raft::network::show_id(self.cluster_id())
            )));
        }
        Ok(())
    }

    /// The other cluster that addressed this node as its member recently,
    /// if any: this node's address and id belong to a member of that
    /// cluster, so it must not take writes (they would split one key space
    /// over two clusters).
    fn claimed_by_other_cluster(&self) -> Option<String> {
        let c = self.peers().foreign_contact().filter(|c| c.inbound)?;
        Some(format!(
            "cluster {} sends this node (node {}, cluster {}) Raft messages as one of its members ({}): this node was \
             probably restarted with an empty data directory and no --join, and created a new cluster; stop it and \
             start it with its data directory (or, if the data is lost, remove node {} from cluster {} and join it \
             with --join)",
            crate::raft::network::show_id(&c.cluster_id),
            self.id(),
            crate::raft::network::show_id(self.cluster_id()),
            c.peer,
            self.id(),
            crate::raft::network::show_id(&c.cluster_id),
        ))
    }

    /// Refuses client writes while another cluster claims this node (see
    /// [`Node::claimed_by_other_cluster`]).
    pub fn check_writable(&self) -> Result<(), NodeError> {
        match self.claimed_by_other_cluster() {
            Some(why) => Err(NodeError::Unavailable(format!("writes refused: {why}"))),
            None => Ok(()),
        }
    }

    async fn read_node_meta(&self, key: &'static [u8]) -> Result<Option<Vec<u8>>, NodeError> {
        read_node_meta(&self.inner.storage, key).await
    }

    async fn write_node_meta(&self, key: &'static [u8], value: Vec<u8>) -> Result<(), NodeError> {
        write_node_meta(&self.inner.storage, key, value).await
    }

    /// Deletes expired keys through Raft, on groups this node leads.
    async fn ttl_sweeper(self, w: workers::Worker) {
        let mut stop = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(self.inner.config.ttl_sweep_interval) => {}
            }
            w.round();
            for g in self.groups() {
                if g.raft.current_leader().await != Some(self.id()) {
                    continue;
                }
                let expired = match g.sm.expired(crate::raft::types::now_ms(), 256).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(group = g.id, error = %e, "reading the TTL index");
                        w.failed(&e);
                        continue;
                    }
                };
                let proposals =
                    expired.into_iter().map(|(key, version)| self.propose(g.id, KvProposal::Expire { key, version }));
                for r in futures::future::join_all(proposals).await {
                    if let Err(e) = r {
                        tracing::debug!(group = g.id, error = %e, "expiring a key");
                        w.failed(&e);
                    }
                }
            }
        }
    }

    /// Whether this node is ready to serve (`/readyz`): it has joined the
    /// cluster, its meta group has a leader and counts it as a member, and
    /// every shard replica the meta group assigns here has a leader, counts
    /// this node as a voter (a new replica is a learner until caught up) and
    /// has applied all of its log. `Err` lists what is missing.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut missing = Vec::new();
        if self.is_draining() {
            missing.push("shutting down: not taking new requests".to_string());
        }
        if self.storage().is_poisoned() {
            missing.push("storage is poisoned after a failed fsync".to_string());
        }
        if let Some(why) = self.claimed_by_other_cluster() {
            missing.push(why);
        }
        match self.read_node_meta(JOINED_KEY).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push("has not joined a cluster yet".to_string()),
            Err(e) => missing.push(format!("cannot read its join state: {e}")),
        }
        let meta = match self.group(META_GROUP) {
            Ok(g) => g,
            Err(e) => return Err(vec![e.to_string()]),
        };
        {
            let m = meta.raft.metrics().borrow().clone();
            if m.current_leader.is_none() {
                missing.push("the meta group has no leader".to_string());
            }
            if !m.membership_config.membership().nodes().any(|(id, _)| *id == self.id()) {
                missing.push("is not a member of the meta group".to_string());
            }
        }
        let assigned = match self.assignments().await {
            Ok(a) => a,
            Err(e) => return Err(vec![format!("cannot read shard assignments: {e}")]),
        };
        for (shard, replicas) in assigned {
            if !replicas.contains(&self.id()) {
                continue;
            }
            let Ok(g) = self.group(shard_group(shard)) else {
                missing.push(format!("shard {shard}: replica not started"));
                continue;
            };
            let m = g.raft.metrics().borrow().clone();
            if m.current_leader.is_none() {
                missing.push(format!("shard {shard}: no leader"));
            }
            if !m.membership_config.membership().voter_ids().any(|v| v == self.id()) {
                missing.push(format!("shard {shard}: still catching up (not a voter yet)"));
            }
            let applied = m.last_applied.map_or(0, |l| l.index);
            let logged = m.last_log_index.unwrap_or(0);
            if applied < logged {
                missing.push(format!("shard {shard}: applied {applied} of {logged} log entries"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Current members from the meta group's replicated configuration:
    /// (id, address, is_voter).
    pub fn members(&self) -> Result<Vec<(NodeId, String, bool)>, NodeError> {
        Ok(self.meta().members())
    }

    /// The address of node `id` from the meta group's membership.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        self.meta().addr_of(id)
    }

    /// Shard replicas as this node's copy of the meta group records them.
    pub async fn assignments(&self) -> Result<BTreeMap<ShardId, Vec<NodeId>>, NodeError> {
        self.meta().assignments().await
    }

    /// Reads of this node's copy of the meta group.
    pub fn meta(&self) -> &meta_view::MetaView {
        &self.inner.meta
    }

    /// Leader lookup and forwarding over this node's groups, meta view and peers.
    fn forwarder(&self) -> forwarding::Forwarder<'_> {
        forwarding::Forwarder {
            id: self.inner.id,
            groups: &self.inner.groups,
            meta: &self.inner.meta,
            peers: &self.inner.peers,
            request_timeout: self.inner.config.request_timeout,
        }
    }
}

/// What a node knows of its cluster before it starts its Raft groups.
struct ClusterIdentity {
    ring: RingConfig,
    cluster_id: String,
}

/// The node's cluster: as stored in the data directory; or, in a new data
/// directory, a new cluster (no `--join`, or the founding seed when no other
/// seed has a cluster) or the cluster its seeds belong to. Refuses what
/// would mix two clusters: a data directory of one cluster joined to
/// another, a node that comes back without its data while its cluster still
/// counts it as a voter, `--shards` that differ from the cluster's.
async fn resolve_cluster(storage: &Storage, config: &NodeConfig) -> Result<ClusterIdentity, NodeError> {
    if let Some(raw) = read_node_meta(storage, RING_KEY).await? {
        let ring: RingConfig = postcard::from_bytes(&raw)
            .map_err(|e| NodeError::Startup(format!("corrupt ring settings in the data directory: {e}")))?;
        let cluster_id = match read_node_meta(storage, CLUSTER_ID_KEY).await? {
            Some(raw) => String::from_utf8(raw)
                .map_err(|_| NodeError::Startup("corrupt cluster ID in the data directory".into()))?,
            None => {
                tracing::warn!("this data directory predates cluster IDs: peers are not checked for belonging to it");
                String::new()
            }
        };
        check_shards_flag(config, ring.shards)?;
        if !config.join.is_empty() {
            check_seeds_cluster(config, &cluster_id).await?;
        }
        return Ok(ClusterIdentity { ring, cluster_id });
    }
    let (ring, cluster_id, bootstrap) = if config.join.is_empty() {
        config.ring.validate().map_err(NodeError::InvalidArgument)?;
        (config.ring, new_cluster_id(), true)
    } else {
        find_cluster(config).await?
    };
    let mut meta = vec![
        (RING_KEY, postcard::to_allocvec(&ring).map_err(|e| NodeError::Internal(e.to_string()))?),
        (CLUSTER_ID_KEY, cluster_id.clone().into_bytes()),
    ];
    if bootstrap {
        meta.push((BOOTSTRAP_KEY, b"1".to_vec()));
    }
    write_node_metas(storage, meta).await?;
    Ok(ClusterIdentity { ring, cluster_id })
}

/// A new random cluster ID: 16 hex digits.
fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `--shards` names the shard count of a cluster this node creates; given
/// to a node of an existing cluster it must match, or it is an error rather
/// than silently ignored.
fn check_shards_flag(config: &NodeConfig, cluster_shards: u32) -> Result<(), NodeError> {
    if config.shards_given && config.ring.shards != cluster_shards {
        return Err(NodeError::InvalidArgument(format!(
            "--shards {} (or shards in the config file / RINGKV_SHARDS) conflicts with the cluster's {cluster_shards} \
             shards: the shard count is fixed when a cluster is created, and a joining or restarting node takes \
             the cluster's; drop the setting",
            config.ring.shards
        )));
    }
    Ok(())
}

/// What one seed said when asked for its cluster.
enum SeedAnswer {
    /// The seed belongs to a cluster (its routing table).
    Cluster(Box<ringkv_client::proto::RingResponse>),
    /// The seed runs but has no cluster yet: it answered without one, or it
    /// accepted the connection without answering (a new node is not serving
    /// requests while it waits for its own seeds).
    NoCluster,
    /// Nothing listens there (yet), or the name does not resolve.
    Unreachable(String),
}

async fn ask_seed(config: &NodeConfig, seed: &str) -> SeedAnswer {
    const CONNECT: Duration = Duration::from_secs(2);
    match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(seed)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return SeedAnswer::Unreachable(e.to_string()),
        Err(_) => return SeedAnswer::Unreachable(format!("no connection within {CONNECT:?}")),
    }
    // A node still looking for its own cluster has bound its port but serves
    // nothing yet: it accepts the connection (and a TLS client's hello) and
    // never answers. That silence, and only silence, means "no cluster yet";
    // an error (a refused certificate, say) is no answer at all.
    const SILENCE: Duration = Duration::from_secs(3);
    let client = match node_client_options(config, SILENCE * 3, SILENCE * 3)
        .and_then(|opts| ringkv_client::Client::connect_with([seed], opts))
    {
        Ok(c) => c,
        Err(e) => return SeedAnswer::Unreachable(e.to_string()),
    };
    match tokio::time::timeout(SILENCE, client.ring()).await {
        Ok(Ok(r)) if !r.cluster_id.is_empty() || !r.nodes.is_empty() => SeedAnswer::Cluster(Box::new(r)),
        Ok(Ok(_)) => SeedAnswer::NoCluster,
        Ok(Err(e)) => SeedAnswer::Unreachable(e.to_string()),
        Err(_) => {
            tracing::debug!(seed, "seed accepted the connection but did not answer: taken as a node still starting");
            SeedAnswer::NoCluster
        }
    }
}

/// A restarting node given `--join`: the first seed that answers must belong
/// to this data directory's cluster (seeds that cannot be reached are no
/// reason not to start: they may be restarting too).
async fn check_seeds_cluster(config: &NodeConfig, cluster_id: &str) -> Result<(), NodeError> {
    for seed in &config.join {
        if let SeedAnswer::Cluster(r) = ask_seed(config, seed).await {
            if !r.cluster_id.is_empty() && !cluster_id.is_empty() && r.cluster_id != cluster_id {
                return Err(NodeError::InvalidArgument(format!(
                    "cluster ID mismatch: this data directory ({}) belongs to cluster {cluster_id}, but the --join \
                     seed {seed} belongs to cluster {}. Start this node with its own cluster's seeds, or, to add it \
                     to cluster {} as a new node, with an empty data directory",
                    config.data_dir.display(),
                    r.cluster_id,
                    r.cluster_id
                )));
            }
            return Ok(());
        }
    }
    Ok(())
}

/// A new node given `--join`: asks the seeds until one belongs to a
/// cluster, and returns that cluster's ring settings and ID. The founding
/// seed (this node's own address first in `--join`) instead creates the
/// cluster once every other seed has answered that it has none. Returns
/// (ring, cluster ID, whether to bootstrap).
async fn find_cluster(config: &NodeConfig) -> Result<(RingConfig, String, bool), NodeError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut unreachable = Vec::new();
        for seed in &config.join {
            match ask_seed(config, seed).await {
                SeedAnswer::Cluster(r) => {
                    return joinable(config, seed, &r).map(|ring| (ring, r.cluster_id.clone(), false))
                }
                SeedAnswer::NoCluster => {}
                SeedAnswer::Unreachable(e) => {
                    tracing::warn!(seed = %seed, attempt, error = %e, "cannot fetch the ring from the seed yet");
                    unreachable.push(seed.as_str());
                }
            }
        }
        if config.founder && unreachable.is_empty() {
            config.ring.validate().map_err(NodeError::InvalidArgument)?;
            tracing::info!(seeds = ?config.join, "no other seed has a cluster: this node, the first seed, creates it");
            return Ok((config.ring, new_cluster_id(), true));
        }
        if config.founder {
            tracing::info!(
                attempt,
                waiting_for = %unreachable.join(", "),
                "first seed of --join: creating the cluster once every other seed answers that it has none"
            );
        } else {
            tracing::info!(attempt, "no seed has a cluster to join yet; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The ring of cluster `r` (found through `seed`) if this new node may join
/// it: not while the cluster counts this node's id as a voter, since this
/// node has lost that voter's log and votes.
fn joinable(config: &NodeConfig, seed: &str, r: &ringkv_client::proto::RingResponse) -> Result<RingConfig, NodeError> {
    if let Some(me) = r.nodes.iter().find(|n| n.id == config.id && n.role == "voter") {
        return Err(NodeError::Startup(format!(
            "node {id} is already a voter of cluster {cluster} (at {addr}, as seed {seed} reports), but this node's \
             data directory {dir} is new: it would come back without the log and votes the cluster counts on. If \
             this is node {id} restarted with the wrong --data-dir, give it its data directory. If node {id} lost \
             its data, remove it first (`ringkv cluster remove-node {id}`), then start it again. If this is \
             another node, give it an id the cluster does not use",
            id = config.id,
            cluster = crate::raft::network::show_id(&r.cluster_id),
            addr = me.addr,
            dir = config.data_dir.display(),
        )));
    }
    check_shards_flag(config, r.shards)?;
    Ok(RingConfig { shards: r.shards, replication_factor: r.replication_factor, vnodes: r.vnodes })
}

/// Client options for talking to other nodes through their public API
/// (joining, fetching the ring): with TLS on, the node certificate is the
/// client certificate and the other end must present a node certificate.
fn node_client_options(
    config: &NodeConfig,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<ringkv_client::ClientOptions, ringkv_client::Error> {
    let tls = match &config.tls {
        Some(t) => Some(
            ringkv_client::TlsOptions::from_files(&t.ca, Some(&t.cert), Some(&t.key))?
                .with_domain(crate::tls::NODE_NAME),
        ),
        None => None,
    };
    let mut opts = ringkv_client::ClientOptions { timeout, connect_timeout, ..Default::default() };
    opts.tls = tls;
    Ok(opts)
}

async fn check_identity(storage: &Storage, id: NodeId) -> Result<(), NodeError> {
    match read_node_meta(storage, NODE_ID_KEY).await? {
        Some(raw) => {
            let stored = <[u8; 8]>::try_from(raw.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| NodeError::Startup("corrupt node id in the data directory".into()))?;
            if stored != id {
                return Err(NodeError::Startup(format!(
                    "data directory belongs to node {stored}, but this node was started with --id {id}"
                )));
            }
            Ok(())
        }
        None => write_node_meta(storage, NODE_ID_KEY, id.to_be_bytes().to_vec()).await,
    }
}

async fn read_node_meta(storage: &Storage, key: &'static [u8]) -> Result<Option<Vec<u8>>, NodeError> {
    Ok(storage
        .blocking(move |s| s.node_meta().get(key).map_err(StorageError::fjall("reading node metadata")))
        .await?
        .map(|v| v.to_vec()))
}

async fn write_node_meta(storage: &Storage, key: &'static [u8], value: Vec<u8>) -> Result<(), NodeError> {
    write_node_metas(storage, vec![(key, value)]).await
}

/// Writes several node metadata keys in one durable batch (all or none).
async fn write_node_metas(storage: &Storage, entries: Vec<(&'static [u8], Vec<u8>)>) -> Result<(), NodeError> {
    storage
        .write_durable(false, move |s, batch| {
            for (key, value) in entries {
                batch.insert(s.node_meta(), key, value);
            }
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))
}
