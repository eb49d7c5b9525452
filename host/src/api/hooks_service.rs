//! `ringkv.v1.Hooks`: deploy, list, inspect, remove, roll back and dry-run
//! hooks. Changes go through the meta group (see `cluster::hooks`).

use std::sync::Arc;
use std::time::Duration;

use ringkv_client::proto::{self, hooks_server::Hooks};
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::cluster::Node;
use crate::hooks::{
    Decision, FailPolicy, HookKind, HookLimits, HookRecord, HookSpec, OldValue, ShadowSnapshot, Stage, StatsSnapshot,
    Write, WriteOp,
};
use crate::raft::types::now_ms;

pub struct HooksService {
    node: Node,
}

impl HooksService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// A definition from the wire as a spec (version and digest are set on deploy).
pub fn spec_of(def: Option<proto::HookDefinition>) -> Result<HookSpec, Status> {
    let def = def.ok_or_else(|| Status::invalid_argument("missing hook definition"))?;
    let kind = match proto::HookKind::try_from(def.kind) {
        Ok(proto::HookKind::Unspecified | proto::HookKind::Lua) => HookKind::Lua,
        Ok(proto::HookKind::Wasm) => HookKind::Wasm,
        Err(_) => return Err(Status::invalid_argument(format!("unknown hook kind {}", def.kind))),
    };
    let stage = match proto::HookStage::try_from(def.stage) {
        Ok(proto::HookStage::Validate) => Stage::Validate,
        Ok(proto::HookStage::Ttl) => Stage::Ttl,
        Ok(proto::HookStage::Partition) => Stage::Partition,
        Ok(proto::HookStage::Unspecified) => {
            return Err(Status::invalid_argument("hook stage is required: validate, ttl or partition"))
        }
        Err(_) => return Err(Status::invalid_argument(format!("unknown hook stage {}", def.stage))),
    };
    let mut limits = HookLimits::default();
    if def.timeout_ms > 0 {
        if def.timeout_ms > 1000 {
            return Err(Status::invalid_argument(format!(
                "hook timeout {} ms is above the 1000 ms maximum: hooks run on the write path",
                def.timeout_ms
            )));
        }
        limits.timeout = Duration::from_millis(def.timeout_ms);
    }
    Ok(HookSpec {
        name: def.name,
        kind,
        stage,
        prefix: def.prefix.to_vec(),
        source: def.source.to_vec(),
        version: 0,
        sha256: String::new(),
        fail_policy: if def.fail_open { FailPolicy::Open } else { FailPolicy::Closed },
        limits,
        deployed_at_ms: 0,
    })
}

fn info_of(
    spec: &HookSpec,
    active: bool,
    previous: u64,
    running: u64,
    stats: StatsSnapshot,
    with_source: bool,
) -> proto::HookInfo {
    proto::HookInfo {
        name: spec.name.clone(),
        kind: kind_of(spec),
        stage: stage_of(spec),
        prefix: spec.prefix.clone().into(),
        version: spec.version,
        sha256: spec.sha256.clone(),
        fail_open: spec.fail_policy == FailPolicy::Open,
        timeout_ms: spec.limits.timeout.as_millis() as u64,
        deployed_at_ms: spec.deployed_at_ms,
        active,
        previous_version: previous,
        stats: Some(stats_of(&stats)),
        source: if with_source { spec.source.clone().into() } else { Default::default() },
        running_version: running,
        shadow: None,
    }
}

fn stats_of(stats: &StatsSnapshot) -> proto::HookStats {
    proto::HookStats {
        calls: stats.calls,
        rejects: stats.rejects,
        errors: stats.errors,
        limit_hits: stats.limit_hits,
        fail_open_passes: stats.fail_open_passes,
        p50_us: stats.p50_us,
        p99_us: stats.p99_us,
        max_us: stats.max_us,
    }
}

/// A record's shadow version with this node's statistics of it.
fn shadow_info(node: &Node, record: &HookRecord) -> Option<proto::ShadowInfo> {
    let spec = record.shadow.as_ref()?;
    let ShadowSnapshot { calls, agreements, disagreements, skipped, recent } =
        node.hooks().shadow_stats(&spec.name, spec.version);
    Some(proto::ShadowInfo {
        version: spec.version,
        kind: kind_of(spec),
        sha256: spec.sha256.clone(),
        timeout_ms: spec.limits.timeout.as_millis() as u64,
        deployed_at_ms: spec.deployed_at_ms,
        running_version: node.hooks().current().shadow(&spec.name).map_or(0, |h| h.spec().version),
        stats: Some(stats_of(&calls)),
        agreements,
        disagreements,
        skipped,
        recent_disagreements: recent
            .into_iter()
            .map(|d| proto::ShadowDisagreement { key: d.key, active: d.active, shadow: d.shadow, at_ms: d.at_ms })
            .collect(),
    })
}

/// A hook record as [`proto::HookInfo`], with this node's statistics.
fn record_info(node: &Node, record: &HookRecord, with_source: bool) -> Option<proto::HookInfo> {
    let spec = record.latest()?;
    let active = record.current.is_some();
    let previous = if active { record.previous.as_ref().map_or(0, |p| p.version) } else { 0 };
    let running = running_version(node, &spec.name);
    let mut info = info_of(spec, active, previous, running, node.hooks().stats(&spec.name), with_source);
    info.shadow = shadow_info(node, record);
    Some(info)
}

/// The version of hook `name` this node runs (0: none).
fn running_version(node: &Node, name: &str) -> u64 {
    node.hooks().current().get(name).map_or(0, |h| h.spec().version)
}

/// Every hook record as [`proto::HookInfo`] (without sources), with this
/// node's statistics; the partition function first.
pub(crate) async fn hook_infos(node: &Node) -> Result<Vec<proto::HookInfo>, Status> {
    let mut hooks = Vec::new();
    if let Some(p) = node.partitioner() {
        hooks.push(info_of(&p, true, 0, p.version, node.hooks().stats(&p.name), false));
    }
    for record in node.hook_records().await? {
        hooks.extend(record_info(node, &record, false));
    }
    Ok(hooks)
}

impl HooksService {
    async fn info(&self, name: &str, with_source: bool) -> Result<proto::HookInfo, Status> {
        if let Some(p) = self.node.partitioner().filter(|p| p.name == name) {
            return Ok(info_of(&p, true, 0, p.version, self.node.hooks().stats(&p.name), with_source));
        }
        let record = self.node.hook_record(name).await?;
        record_info(&self.node, &record, with_source)
            .ok_or_else(|| Status::not_found(format!("no hook named {name:?}")))
    }
}

#[tonic::async_trait]
impl Hooks for HooksService {
    async fn deploy(
        &self,
        req: Request<proto::DeployHookRequest>,
    ) -> Result<Response<proto::DeployHookResponse>, Status> {
        super::authorize(&self.node, &req, "deploy_hook", Need::Admin("deploy a hook")).await?;
        let req = req.into_inner();
        let spec = spec_of(req.hook)?;
        let name = spec.name.clone();
        let (version, sha256) = match req.shadow {
            true => self.node.deploy_shadow_hook(spec).await?,
            false => self.node.deploy_hook(spec).await?,
        };
        tracing::info!(hook = %name, version, shadow = req.shadow, "hook deployed");
        Ok(Response::new(proto::DeployHookResponse { version, sha256 }))
    }

    async fn list(&self, req: Request<proto::ListHooksRequest>) -> Result<Response<proto::ListHooksResponse>, Status> {
        super::authorize(&self.node, &req, "list_hooks", Need::Admin("list hooks")).await?;
        Ok(Response::new(proto::ListHooksResponse { hooks: hook_infos(&self.node).await?, node_id: self.node.id() }))
    }

    async fn get(&self, req: Request<proto::GetHookRequest>) -> Result<Response<proto::HookInfo>, Status> {
        super::authorize(&self.node, &req, "get_hook", Need::Admin("read a hook")).await?;
        Ok(Response::new(self.info(&req.into_inner().name, true).await?))
    }

    async fn remove(
        &self,
        req: Request<proto::RemoveHookRequest>,
    ) -> Result<Response<proto::RemoveHookResponse>, Status> {
        super::authorize(&self.node, &req, "remove_hook", Need::Admin("remove a hook")).await?;
        let req = req.into_inner();
        let removed_version = match req.shadow {
            true => self.node.remove_shadow_hook(&req.name).await?,
            false => self.node.remove_hook(&req.name).await?,
        };
        tracing::info!(hook = %req.name, version = removed_version, shadow = req.shadow, "hook removed");
        Ok(Response::new(proto::RemoveHookResponse { removed_version }))
    }

    async fn promote(
        &self,
        req: Request<proto::PromoteHookRequest>,
    ) -> Result<Response<proto::PromoteHookResponse>, Status> {
        super::authorize(&self.node, &req, "promote_hook", Need::Admin("promote a hook")).await?;
        let name = req.into_inner().name;
        let (version, replaced_version) = self.node.promote_hook(&name).await?;
        tracing::info!(hook = %name, version, replaced = replaced_version, "shadow version promoted");
        Ok(Response::new(proto::PromoteHookResponse { version, replaced_version }))
    }

    async fn rollback(
        &self,
        req: Request<proto::RollbackHookRequest>,
    ) -> Result<Response<proto::RollbackHookResponse>, Status> {
        super::authorize(&self.node, &req, "rollback_hook", Need::Admin("roll back a hook")).await?;
        let name = req.into_inner().name;
        let (version, replaced_version) = self.node.rollback_hook(&name).await?;
        tracing::info!(hook = %name, version, replaced = replaced_version, "hook rolled back");
        Ok(Response::new(proto::RollbackHookResponse { version, replaced_version }))
    }

    async fn test(&self, req: Request<proto::TestHookRequest>) -> Result<Response<proto::TestHookResponse>, Status> {
        // It runs arbitrary code in the sandbox, like a deploy.
        super::authorize(&self.node, &req, "test_hook", Need::Admin("test a hook")).await?;
        let r = req.into_inner();
        let mut def = r.hook.ok_or_else(|| Status::invalid_argument("missing hook definition"))?;
        if def.source.is_empty() && def.stage == proto::HookStage::Unspecified as i32 {
            // Testing a deployed hook by name: its stage does not matter here.
            def.stage = proto::HookStage::Validate as i32;
        }
        let spec = spec_of(Some(def))?;
        let limits = &self.node.config().limits;
        if spec.source.len() > limits.max_hook_bytes(spec.kind) {
            return Err(Status::invalid_argument("hook source is larger than the deploy limit"));
        }
        if r.key.len() > limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key is {} bytes; the limit is {} bytes",
                r.key.len(),
                limits.max_key_bytes
            )));
        }
        let value_len = r.value.as_ref().map_or(0, |v| v.len()).max(r.old_value.as_ref().map_or(0, |v| v.len()));
        if value_len > limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value is {value_len} bytes; the limit is {} bytes",
                limits.max_value_bytes
            )));
        }
        let partition = spec.stage == Stage::Partition
            || (spec.source.is_empty() && self.node.partitioner().is_some_and(|p| p.name == spec.name));
        if partition {
            let (routed, shard, elapsed) = self.node.test_partitioner(spec, r.key.to_vec()).await?;
            let mut resp = proto::TestHookResponse { elapsed_us: elapsed.as_micros() as u64, ..Default::default() };
            match routed {
                Ok(Some(routing)) => {
                    resp.decision = "route".into();
                    resp.message = format!("routing key {:?} -> shard {shard}", String::from_utf8_lossy(&routing));
                }
                Ok(None) => {
                    resp.decision = "route".into();
                    resp.message = format!("the whole key -> shard {shard}");
                }
                Err(e) => {
                    resp.decision = "error".into();
                    resp.message = e;
                }
            }
            return Ok(Response::new(resp));
        }
        let old = r.old_value.map(|v| OldValue { value: v.to_vec(), version: r.old_version.max(1) });
        let write = Write {
            op: if r.value.is_some() { WriteOp::Put } else { WriteOp::Delete },
            key: r.key.to_vec(),
            value: r.value.map(|v| v.to_vec()),
            now_ms: now_ms(),
            client_ttl_ms: r.client_ttl_ms,
            old_value: Arc::new(move || Ok(old.clone())),
        };
        let report = self.node.test_hook(spec, write).await?;
        let mut resp = proto::TestHookResponse {
            elapsed_us: report.elapsed.as_micros() as u64,
            read_old_value: report.old_version_read.is_some(),
            ..Default::default()
        };
        match report.result {
            Ok(Decision::Accept) => resp.decision = "accept".into(),
            Ok(Decision::Reject(reason)) => {
                resp.decision = "reject".into();
                resp.message = reason;
            }
            Ok(Decision::KeepTtl) => resp.decision = "keep-ttl".into(),
            Ok(Decision::NoExpiry) => resp.decision = "no-expiry".into(),
            Ok(Decision::TtlMs(ms)) => {
                resp.decision = "ttl".into();
                resp.ttl_ms = ms;
            }
            Err(e) => {
                resp.decision = "error".into();
                resp.message = e.to_string();
            }
        }
        Ok(Response::new(resp))
    }
}

/// The protobuf enum values of a spec's kind and stage.
pub(super) fn kind_of(spec: &HookSpec) -> i32 {
    match spec.kind {
        HookKind::Lua => proto::HookKind::Lua as i32,
        HookKind::Wasm => proto::HookKind::Wasm as i32,
    }
}

pub(super) fn stage_of(spec: &HookSpec) -> i32 {
    match spec.stage {
        Stage::Validate => proto::HookStage::Validate as i32,
        Stage::Ttl => proto::HookStage::Ttl as i32,
        Stage::Partition => proto::HookStage::Partition as i32,
    }
}
