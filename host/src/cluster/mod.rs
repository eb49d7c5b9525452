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
mod hooks;
mod leadership;
mod membership;
mod partitioning;
mod placement;
mod routing;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use openraft::BasicNode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backup::{DumpChunk, HookBackup, ShardDump};
pub use membership::{MembershipOp, MembershipReply};
pub use partitioning::{KeyRoute, PartitionView, ReshardStatus};
pub use routing::{ForwardReply, Forwarded, Proposal};

use crate::config::NodeConfig;
use crate::raft::{start_group, LinkFilter, NodeId, Peers, Raft, RaftLayerError, StateMachine};
use crate::ring::{RingConfig, ShardId};
use crate::storage::{GroupId, Storage, StorageError};

/// The group holding cluster configuration.
pub const META_GROUP: GroupId = 0;

/// The Raft group of a shard: shard `i` is group `i + 1`.
pub fn shard_group(shard: ShardId) -> GroupId {
    GroupId::from(shard) + 1
}

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

/// One Raft group hosted by this node.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub sm: StateMachine,
    /// Write and read batchers feeding `raft` while this node leads.
    batchers: batching::Batchers,
    /// The batcher tasks, aborted when the group leaves this node.
    tasks: Vec<JoinHandle<()>>,
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
    /// Groups hosted here, swapped as a whole when the set changes.
    groups: ArcSwap<BTreeMap<GroupId, Arc<Group>>>,
    /// Serializes starting and dropping groups.
    group_lock: tokio::sync::Mutex<()>,
    /// Flips to true when the node shuts down; every background task watches it.
    shutdown: watch::Sender<bool>,
    /// The deployed hooks, kept in step with the meta group.
    hooks: Arc<crate::hooks::HookRegistry>,
    /// Credentials and grants; its runtime tokens follow the meta group.
    auth: Arc<crate::auth::Authenticator>,
    /// Background tasks (servers, join, TTL sweeper), awaited on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Flips to true when the node stops taking requests before shutting
    /// down: the gRPC server stops accepting and finishes what is in flight.
    draining: watch::Sender<bool>,
    /// The gRPC server, awaited by [`Node::drain`].
    grpc_server: Mutex<Option<JoinHandle<()>>>,
    /// The HTTP server (`--http`), stopped on shutdown.
    http: Option<crate::http::HttpServer>,
    /// The certificates in use when TLS is on.
    tls: Option<Arc<crate::tls::TlsState>>,
    /// The partition function as this node routes by it.
    partition: ArcSwap<partitioning::PartitionView>,
    /// The generation of `partition`, for waiting on it.
    partition_generation: watch::Sender<u64>,
    /// Key requests hold it shared while they are served; a new partition
    /// view is swapped in under it exclusively, so no request admitted under
    /// the old view is still running when the new one is in use.
    routing_gate: tokio::sync::RwLock<()>,
}

const NODE_ID_KEY: &[u8] = b"node_id";
const JOINED_KEY: &[u8] = b"joined";
const RING_KEY: &[u8] = b"ring";

impl Node {
    /// Starts a node: opens storage, starts its groups and servers, then
    /// bootstraps a new cluster or joins an existing one in the background.
    pub async fn start(config: NodeConfig, filter: LinkFilter) -> Result<Node, NodeError> {
        let storage = Storage::open(&config.data_dir)?;
        check_identity(&storage, config.id).await?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot listen on {}: {e}", config.listen)))?;
        let bound = listener.local_addr().map_err(|e| NodeError::Startup(e.to_string()))?;
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::TlsState::load(t.clone()).map_err(|e| NodeError::Startup(e.to_string()))?),
            None => None,
        };
        let addr = config.advertise.clone().unwrap_or_else(|| bound.to_string());
        // Up before the ring settings: a joining node may wait long for its
        // seed, and a liveness probe must not kill it meanwhile.
        let http = match &config.http {
            Some(http) => Some(crate::http::HttpServer::start(
                tokio::net::TcpListener::bind(http)
                    .await
                    .map_err(|e| NodeError::Startup(format!("cannot listen on {http} (http): {e}")))?,
                tls.clone(),
            )),
            None => None,
        };
        let ring = resolve_ring(&storage, &config).await?;
        let peers = Peers::new(config.id, Some(bound.ip()), filter, tls.clone());
        let (shutdown, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let hooks = Arc::new(
            crate::hooks::HookRegistry::new()
                .map_err(|e| NodeError::Startup(format!("cannot start the hook workers: {e}")))?,
        );
        let auth = Arc::new(crate::auth::Authenticator::new(config.auth.clone()));
        let node = Node {
            inner: Arc::new(NodeInner {
                id: config.id,
                addr,
                ring,
                config,
                storage,
                peers,
                groups: ArcSwap::from_pointee(BTreeMap::new()),
                group_lock: tokio::sync::Mutex::new(()),
                shutdown,
                hooks,
                auth,
                tasks: Mutex::new(Vec::new()),
                draining,
                grpc_server: Mutex::new(None),
                http,
                tls,
                partition: ArcSwap::from_pointee(partitioning::PartitionView::default()),
                partition_generation: watch::channel(0).0,
                routing_gate: tokio::sync::RwLock::new(()),
            }),
        };
        if let Some(tls) = &node.inner.tls {
            node.spawn(tls.clone().watch(node.shutdown_signal()));
        }
        node.ensure_group(META_GROUP).await?;
        node.spawn(node.clone().hook_sync_loop());
        node.spawn(node.clone().token_sync_loop());
        node.spawn(node.clone().partition_sync_loop());
        // Shards this node hosted before a restart, as its copy of the meta group records them.
        for (shard, replicas) in node.assignments().await? {
            if replicas.contains(&node.id()) {
                node.ensure_group(shard_group(shard)).await?;
            }
        }
        *node.inner.grpc_server.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(crate::api::serve(node.clone(), listener)));
        if let Some(http) = &node.inner.http {
            http.serve_node(node.clone());
        }
        node.bootstrap_or_join().await?;
        node.spawn(node.clone().ttl_sweeper());
        node.spawn(node.clone().reconcile_loop());
        node.spawn(node.clone().rebalance_loop());
        node.spawn(node.clone().leader_balance_loop());
        node.spawn(node.clone().reshard_loop());
        tracing::info!(node = node.id(), addr = %node.addr(), "node started");
        Ok(node)
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

    /// Every group id: the meta group, then every shard.
    pub fn group_ids(&self) -> Vec<GroupId> {
        std::iter::once(META_GROUP).chain((0..self.inner.ring.shards).map(shard_group)).collect()
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
        self.inner.groups.load().get(&id).cloned().ok_or(NodeError::NoSuchGroup(id))
    }

    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.inner.groups.load().values().cloned().collect()
    }

    /// Starts the Raft instance of `gid` here unless it already runs.
    pub(crate) async fn ensure_group(&self, gid: GroupId) -> Result<Arc<Group>, NodeError> {
        let _guard = self.inner.group_lock.lock().await;
        if let Some(g) = self.inner.groups.load().get(&gid) {
            return Ok(g.clone());
        }
        let (raft, sm) =
            start_group(self.id(), gid, &self.inner.storage, self.inner.peers.clone(), &self.inner.config.raft)
                .await
                .map_err(Box::new)?;
        let (batchers, tasks) = batching::Batchers::start(gid, raft.clone(), self.inner.hooks.clone(), sm.clone());
        let group = Arc::new(Group { id: gid, raft, sm, batchers, tasks: tasks.into() });
        self.inner.groups.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(gid, group.clone());
            m
        });
        tracing::debug!(group = gid, "group started");
        Ok(group)
    }

    /// Stops the Raft instance of `gid` and deletes its data from this node.
    pub(crate) async fn drop_group(&self, gid: GroupId) -> Result<(), NodeError> {
        let _guard = self.inner.group_lock.lock().await;
        let Some(group) = self.inner.groups.load().get(&gid).cloned() else { return Ok(()) };
        self.inner.groups.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.remove(&gid);
            m
        });
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = gid, error = %e, "raft shutdown");
        }
        for t in &group.tasks {
            t.abort();
        }
        self.inner
            .storage
            .write_durable(true, move |s, batch| crate::storage::remove_group(s, batch, gid))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        tracing::info!(group = gid, "replica removed from this node and its data deleted");
        Ok(())
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

    /// True once [`Node::drain`] started: the node takes no new requests.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Stops taking requests and waits, at most `budget`, for the ones in
    /// flight to finish. The gRPC server stops accepting connections and
    /// tells connected clients (HTTP/2 GOAWAY) to send new requests
    /// elsewhere; Raft groups keep running so in-flight writes can commit.
    /// True when everything in flight finished within `budget`.
    pub async fn drain(&self, budget: Duration) -> bool {
        let _ = self.inner.draining.send(true);
        let server = self.inner.grpc_server.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(server) = server else { return true };
        let abort = server.abort_handle();
        match tokio::time::timeout(budget, server).await {
            Ok(_) => true,
            Err(_) => {
                abort.abort();
                false
            }
        }
    }

    /// Stops servers and Raft groups and flushes storage. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Some(http) = &self.inner.http {
            http.stop();
        }
        let server = self.inner.grpc_server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for g in self.groups() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown");
            }
            for t in &g.tasks {
                t.abort();
            }
        }
        for t in tasks {
            // Servers stop on the signal; anything else is aborted.
            t.abort();
            let _ = t.await;
        }
        self.inner.groups.store(Arc::new(BTreeMap::new()));
        let storage = self.inner.storage.clone();
        let _ = tokio::task::spawn_blocking(move || storage.shutdown()).await;
        tracing::info!(node = self.id(), "node stopped");
    }

    async fn bootstrap_or_join(&self) -> Result<(), NodeError> {
        let meta = self.group(META_GROUP)?;
        let initialized = meta.raft.is_initialized().await.map_err(|e| NodeError::Internal(e.to_string()))?;
        let joined = self.read_node_meta(JOINED_KEY).await?.is_some();
        let seeds = self.inner.config.join.clone();
        if !initialized && seeds.is_empty() {
            tracing::info!(node = self.id(), shards = self.ring().shards, "bootstrapping a new single-node cluster");
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
                self.propose(META_GROUP, Proposal::SetNode { id: self.id(), addr: self.addr().to_string() }).await;
            for shard in 0..self.ring().shards {
                if result.is_err() {
                    break;
                }
                let p = Proposal::SetAssignment { shard, replicas: vec![self.id()], pending: false };
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
                match client.add_node(self.id(), self.addr()).await {
                    Ok(()) => {
                        if let Err(e) = self.write_node_meta(JOINED_KEY, b"1".to_vec()).await {
                            tracing::error!(error = %e, "could not record the join");
                        }
                        tracing::info!(node = self.id(), "joined the cluster as a voter");
                        return;
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

    async fn read_node_meta(&self, key: &'static [u8]) -> Result<Option<Vec<u8>>, NodeError> {
        read_node_meta(&self.inner.storage, key).await
    }

    async fn write_node_meta(&self, key: &'static [u8], value: Vec<u8>) -> Result<(), NodeError> {
        write_node_meta(&self.inner.storage, key, value).await
    }

    /// Deletes expired keys through Raft, on groups this node leads.
    async fn ttl_sweeper(self) {
        let mut stop = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(self.inner.config.ttl_sweep_interval) => {}
            }
            for g in self.groups() {
                if g.raft.current_leader().await != Some(self.id()) {
                    continue;
                }
                let expired = match g.sm.expired(crate::raft::types::now_ms(), 256).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(group = g.id, error = %e, "reading the TTL index");
                        continue;
                    }
                };
                let proposals =
                    expired.into_iter().map(|(key, version)| self.propose(g.id, Proposal::Expire { key, version }));
                for r in futures::future::join_all(proposals).await {
                    if let Err(e) = r {
                        tracing::debug!(group = g.id, error = %e, "expiring a key");
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
        let meta = self.group(META_GROUP)?;
        let m = meta.raft.metrics().borrow().membership_config.clone();
        let voters: std::collections::BTreeSet<NodeId> = m.membership().voter_ids().collect();
        Ok(m.membership().nodes().map(|(id, n)| (*id, n.addr.clone(), voters.contains(id))).collect())
    }

    /// The address of node `id` from the meta group's membership.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let meta = self.group(META_GROUP).ok()?;
        let m = meta.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Shard replicas as this node's copy of the meta group records them.
    pub async fn assignments(&self) -> Result<BTreeMap<ShardId, Vec<NodeId>>, NodeError> {
        Ok(self.group(META_GROUP)?.sm.assignments().await?)
    }
}

/// The ring settings: stored in the data directory; or, on first start, the
/// configured ones (bootstrap) or the cluster's, fetched from a seed (join).
async fn resolve_ring(storage: &Storage, config: &NodeConfig) -> Result<RingConfig, NodeError> {
    if let Some(raw) = read_node_meta(storage, RING_KEY).await? {
        return postcard::from_bytes(&raw)
            .map_err(|e| NodeError::Startup(format!("corrupt ring settings in the data directory: {e}")));
    }
    let ring = if config.join.is_empty() {
        config.ring.validate().map_err(NodeError::InvalidArgument)?;
        config.ring
    } else {
        fetch_ring(config).await
    };
    let raw = postcard::to_allocvec(&ring).map_err(|e| NodeError::Internal(e.to_string()))?;
    write_node_meta(storage, RING_KEY, raw).await?;
    Ok(ring)
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

/// Asks the seeds for the cluster's ring settings until one answers.
async fn fetch_ring(config: &NodeConfig) -> RingConfig {
    let mut attempt = 0u32;
    let seeds = &config.join;
    loop {
        for seed in seeds {
            attempt += 1;
            let opts = node_client_options(config, Duration::from_secs(10), Duration::from_secs(3));
            let answer = match opts.and_then(|opts| ringkv_client::Client::connect_with([seed], opts)) {
                Ok(c) => c.ring().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => {
                    return RingConfig { shards: r.shards, replication_factor: r.replication_factor, vnodes: r.vnodes }
                }
                Err(e) => tracing::warn!(seed = %seed, attempt, error = %e, "cannot fetch the ring from the seed yet"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
    storage
        .write_durable(false, move |s, batch| {
            batch.insert(s.node_meta(), key, value);
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))
}
