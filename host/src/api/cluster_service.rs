//! `ringkv.v1.Cluster`: status and membership administration.

use ringkv_client::proto::{self, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::cluster::{Node, META_GROUP};
use crate::ring::partition::ShardChange;

pub struct ClusterService {
    node: Node,
}

impl ClusterService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// Every shard's route as clients and `cluster status` see it.
async fn shard_routes(node: &Node) -> Result<Vec<proto::ShardRoute>, Status> {
    let routes = node.shard_routes().await?;
    Ok(routes
        .into_iter()
        .map(|r| proto::ShardRoute {
            shard: r.shard,
            leader_id: r.leader.unwrap_or(0),
            replicas: r.replicas,
            moving: r.moving,
            under_replicated: r.under_replicated,
            first_token: r.range.map(|r| r.first),
            last_token: r.range.map(|r| r.last),
        })
        .collect())
}

/// Members with their role in the meta group.
fn node_statuses(node: &Node) -> Result<Vec<proto::NodeStatus>, Status> {
    Ok(node
        .members()?
        .into_iter()
        .map(|(id, addr, voter)| proto::NodeStatus {
            id,
            addr,
            role: if voter { "voter" } else { "learner" }.to_string(),
        })
        .collect())
}

/// This node's view of the cluster.
pub async fn status_of(node: &Node, count_keys: bool) -> Result<proto::StatusResponse, Status> {
    let nodes = node_statuses(node)?;
    let groups = node
        .group_states(count_keys)
        .await?
        .into_iter()
        .map(|g| proto::GroupStatus {
            group_id: g.id,
            kind: if g.id == META_GROUP { "meta" } else { "shard" }.to_string(),
            leader_id: g.leader,
            term: g.term,
            role: g.role.to_string(),
            last_log_index: g.last_log_index,
            commit_index: g.commit_index,
            applied_index: g.applied_index,
            snapshot_index: g.snapshot_index,
            purged_index: g.purged_index,
            voters: g.voters,
            learners: g.learners,
            replication: g
                .replication
                .into_iter()
                .map(|(node_id, matched_index)| proto::ReplicaProgress { node_id, matched_index })
                .collect(),
            keys: g.keys,
            bytes: g.bytes,
            applied_ops: g.applied_ops,
            served_reads: g.served_reads,
        })
        .collect();
    let shards = shard_routes(node).await?;
    let marks = node.member_marks().await?;
    Ok(proto::StatusResponse {
        node_id: node.id(),
        nodes,
        groups,
        shards,
        draining: marks.draining.into_iter().collect(),
        down: marks.down.into_iter().collect(),
        unreachable: marks.unreachable.into_iter().collect(),
        hooks: super::hooks_service::hook_infos(node).await?,
        reshard: Some(reshard_of(&node.reshard_status().await?)),
        workers: node
            .workers()
            .into_iter()
            .map(|w| {
                let (last_error, ago) = w.last_error.unwrap_or_default();
                proto::WorkerStatus {
                    name: w.name.to_string(),
                    state: w.state.as_str().to_string(),
                    rounds: w.rounds,
                    errors: w.errors,
                    last_error,
                    last_error_ms_ago: ago.as_millis() as u64,
                }
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, req: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        super::authorize(&self.node, &req, "cluster_status", Need::Admin("cluster status")).await?;
        Ok(Response::new(status_of(&self.node, req.into_inner().count_keys).await?))
    }

    async fn ring(&self, req: Request<proto::RingRequest>) -> Result<Response<proto::RingResponse>, Status> {
        // Every client routes by this table, whatever its grants.
        super::authorize(&self.node, &req, "cluster_ring", Need::Authenticated).await?;
        let ring = *self.node.ring();
        let nodes = node_statuses(&self.node)?;
        let epoch = self.node.group(META_GROUP)?.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let routes = shard_routes(&self.node).await?;
        let view = self.node.partition_view();
        let function_routes = view.state.active.is_some() || (view.state.job.is_some() && view.state.resize.is_none());
        Ok(Response::new(proto::RingResponse {
            shards: ring.shards,
            replication_factor: ring.replication_factor,
            vnodes: ring.vnodes,
            epoch,
            nodes,
            routes,
            partitioned: function_routes || view.state.job.is_some() || view.state.map.is_some(),
            cluster_id: self.node.cluster_id().to_string(),
            function_routes,
        }))
    }

    async fn reshard_status(
        &self,
        req: Request<proto::ReshardStatusRequest>,
    ) -> Result<Response<proto::ReshardStatusResponse>, Status> {
        super::authorize(&self.node, &req, "reshard_status", Need::Admin("re-shard status")).await?;
        Ok(Response::new(reshard_of(&self.node.reshard_status().await?)))
    }

    async fn load(&self, req: Request<proto::LoadRequest>) -> Result<Response<proto::LoadResponse>, Status> {
        // The same figures as `/metrics`, so the same grants.
        super::authorize(&self.node, &req, "cluster_load", Need::ClusterRead("metrics")).await?;
        Ok(Response::new(crate::telemetry::load(self.node.id())))
    }

    async fn add_node(&self, req: Request<proto::AddNodeRequest>) -> Result<Response<proto::AddNodeResponse>, Status> {
        super::authorize(&self.node, &req, "add_node", Need::Admin("add a node")).await?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("node id must be at least 1"));
        }
        if r.addr.is_empty() {
            return Err(Status::invalid_argument("node address must not be empty"));
        }
        self.node.check_joiner(r.id, &r.cluster_id, r.new_data_dir)?;
        self.node.add_node(r.id, r.addr).await?;
        Ok(Response::new(proto::AddNodeResponse {}))
    }

    async fn remove_node(
        &self,
        req: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        super::authorize(&self.node, &req, "remove_node", Need::Admin("remove a node")).await?;
        self.node.remove_node(req.into_inner().id).await?;
        Ok(Response::new(proto::RemoveNodeResponse {}))
    }

    async fn split_shard(
        &self,
        req: Request<proto::SplitShardRequest>,
    ) -> Result<Response<proto::ResizeShardsResponse>, Status> {
        super::authorize(&self.node, &req, "split_shard", Need::Admin("split a shard")).await?;
        let r = req.into_inner();
        let change = ShardChange::Split { shard: r.shard, at: r.at, new_shard: None };
        Ok(Response::new(resized(self.node.resize_shards(change).await?)))
    }

    async fn merge_shards(
        &self,
        req: Request<proto::MergeShardsRequest>,
    ) -> Result<Response<proto::ResizeShardsResponse>, Status> {
        super::authorize(&self.node, &req, "merge_shards", Need::Admin("merge shards")).await?;
        let r = req.into_inner();
        let change = ShardChange::Merge { keep: r.keep, absorb: r.absorb };
        Ok(Response::new(resized(self.node.resize_shards(change).await?)))
    }
}

fn resized((epoch, change): (u64, ShardChange)) -> proto::ResizeShardsResponse {
    let (new_shard, at) = match change {
        ShardChange::Split { new_shard, at, .. } => (new_shard, at),
        ShardChange::Merge { .. } => (None, None),
    };
    proto::ResizeShardsResponse { epoch, change: change.to_string(), new_shard, at }
}

fn reshard_of(r: &crate::cluster::ReshardStatus) -> proto::ReshardStatusResponse {
    let last = r.last.clone();
    proto::ReshardStatusResponse {
        partitioner: r.partitioner.clone(),
        epoch: r.epoch,
        running: r.running,
        from: r.from.clone().unwrap_or_default(),
        to: r.to.clone().unwrap_or_default(),
        resize: r.resize.clone().unwrap_or_default(),
        started_ms: r.started_ms.unwrap_or(0),
        shards_total: r.shards_total,
        shards_done: r.shards_done,
        keys_scanned: r.keys_scanned,
        keys_moved: r.keys_moved,
        last_finished_ms: last.as_ref().map_or(0, |l| l.finished_ms),
        last_started_ms: last.as_ref().map_or(0, |l| l.started_ms),
        last_keys_scanned: last.as_ref().map_or(0, |l| l.scanned),
        last_keys_moved: last.as_ref().map_or(0, |l| l.moved),
        last_epoch: last.as_ref().map_or(0, |l| l.epoch),
        stalls: r
            .stalls
            .iter()
            .map(|s| proto::ReshardStall {
                shard: s.shard,
                key: s.key.clone(),
                error: s.error.clone(),
                since_ms: s.since_ms,
            })
            .collect(),
    }
}

/// Re-shard status as JSON (`cluster reshard status --json`, and the
/// `reshard` field of `/status`).
pub fn reshard_json(r: &proto::ReshardStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "partitioner": r.partitioner, "epoch": r.epoch, "running": r.running,
        "from": r.from, "to": r.to, "resize": (!r.resize.is_empty()).then_some(&r.resize), "started_ms": r.started_ms,
        "shards_total": r.shards_total, "shards_done": r.shards_done,
        "keys_scanned": r.keys_scanned, "keys_moved": r.keys_moved,
        "stalls": r.stalls.iter().map(|s| serde_json::json!({
            "shard": s.shard, "key": s.key, "error": s.error, "since_ms": s.since_ms,
        })).collect::<Vec<_>>(),
        "last": (r.last_epoch > 0).then(|| serde_json::json!({
            "epoch": r.last_epoch, "started_ms": r.last_started_ms, "finished_ms": r.last_finished_ms,
            "keys_scanned": r.last_keys_scanned, "keys_moved": r.last_keys_moved,
            "duration_ms": r.last_finished_ms.saturating_sub(r.last_started_ms),
        })),
    })
}

/// A hook stage's name in JSON output.
pub fn stage_name(stage: i32) -> &'static str {
    match proto::HookStage::try_from(stage) {
        Ok(proto::HookStage::Ttl) => "ttl",
        Ok(proto::HookStage::Partition) => "partition",
        _ => "validate",
    }
}

/// A member's health as the meta group records it: `down` (unreachable
/// past the down timeout, its replicas being re-created elsewhere),
/// `unreachable` (silent for a few seconds: its replicas count as missing),
/// `draining`, or `up`.
pub fn health_of(s: &proto::StatusResponse, id: u64) -> &'static str {
    if s.down.contains(&id) {
        "down"
    } else if s.unreachable.contains(&id) {
        "unreachable"
    } else if s.draining.contains(&id) {
        "draining"
    } else {
        "up"
    }
}

/// A hook's shadow version as JSON (`/status`, `hook list --json`).
pub fn shadow_json(s: &proto::ShadowInfo) -> serde_json::Value {
    let st = s.stats.unwrap_or_default();
    serde_json::json!({
        "version": s.version, "running_version": s.running_version, "sha256": s.sha256,
        "kind": if s.kind == proto::HookKind::Wasm as i32 { "wasm" } else { "lua" },
        "timeout_ms": s.timeout_ms, "deployed_at_ms": s.deployed_at_ms,
        "calls": st.calls, "agreements": s.agreements, "disagreements": s.disagreements,
        "errors": st.errors, "limit_hits": st.limit_hits, "skipped": s.skipped,
        "p50_us": st.p50_us, "p99_us": st.p99_us, "max_us": st.max_us,
        "recent_disagreements": s.recent_disagreements.iter().map(|d| serde_json::json!({
            "key": d.key, "active": d.active, "shadow": d.shadow, "at_ms": d.at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// A status response as JSON, shared by `cluster status --json` and HTTP `/status`.
pub fn status_json(s: &proto::StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "nodes": s.nodes.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr, "role": n.role, "health": health_of(s, n.id)})).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(|g| serde_json::json!({
            "group_id": g.group_id,
            "kind": g.kind,
            "leader_id": g.leader_id,
            "term": g.term,
            "role": g.role,
            "last_log_index": g.last_log_index,
            "commit_index": g.commit_index,
            "applied_index": g.applied_index,
            "snapshot_index": g.snapshot_index,
            "purged_index": g.purged_index,
            "voters": g.voters,
            "learners": g.learners,
            "keys": g.keys,
            "applied_ops": g.applied_ops,
            "served_reads": g.served_reads,
            "replication": g.replication.iter().map(|r| serde_json::json!({"node_id": r.node_id, "matched_index": r.matched_index})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(|r| serde_json::json!({
            "shard": r.shard, "leader_id": r.leader_id, "replicas": r.replicas, "moving": r.moving,
            "under_replicated": r.under_replicated,
            // Hex strings: a u64 does not fit a JSON number exactly.
            "first_token": r.first_token.map(|t| format!("{t:016x}")),
            "last_token": r.last_token.map(|t| format!("{t:016x}")),
        })).collect::<Vec<_>>(),
        "draining": s.draining,
        "down": s.down,
        "unreachable": s.unreachable,
        "hooks": s.hooks.iter().map(|h| {
            let st = h.stats.unwrap_or_default();
            serde_json::json!({
                "name": h.name, "version": h.version, "active": h.active, "prefix": String::from_utf8_lossy(&h.prefix),
                "stage": stage_name(h.stage),
                "kind": if h.kind == proto::HookKind::Wasm as i32 { "wasm" } else { "lua" },
                "calls": st.calls, "rejects": st.rejects, "errors": st.errors, "limit_hits": st.limit_hits,
                "fail_open_passes": st.fail_open_passes, "p50_us": st.p50_us, "p99_us": st.p99_us, "max_us": st.max_us,
                "shadow": h.shadow.as_ref().map(shadow_json),
            })
        }).collect::<Vec<_>>(),
        "partitioner": s.reshard.as_ref().map(|r| r.partitioner.clone()),
        "reshard": s.reshard.as_ref().map(reshard_json),
        "workers": s.workers.iter().map(|w| serde_json::json!({
            "name": w.name, "state": w.state, "rounds": w.rounds, "errors": w.errors,
            "last_error": (!w.last_error.is_empty()).then_some(&w.last_error),
            "last_error_ms_ago": (!w.last_error.is_empty()).then_some(w.last_error_ms_ago),
        })).collect::<Vec<_>>(),
    })
}
