//! The node's side of hooks: keeping the registry in step with the meta
//! group, judging client writes on the leader before they are proposed, and
//! changing the registry through the meta group.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::request::RequestContext;
use super::routing::Attempt;
use super::workers::Worker;
use super::{Group, Node, NodeError, META_GROUP};
use crate::command::{CommandResult, HookStamp, KvProposal, MetaOp, Op, Proposal};
use crate::hooks::{
    runtime_for, CallReport, CompiledHook, HookRecord, HookSpec, JudgeError, Judgement, OldValue, Stage, TtlChoice,
    Write, WriteOp,
};
use crate::raft::types::now_ms;
use crate::raft::StateMachine;

/// Times the leader judges a write again when the key changed under a hook
/// that read it, before giving up with `UNAVAILABLE`.
const MAX_STALE_RETRIES: usize = 16;

/// Longest hook name.
pub const MAX_HOOK_NAME: usize = 64;

impl Node {
    /// Keeps this node's hook set equal to the meta group's records: reloads
    /// them whenever the meta group applies something and swaps the set in
    /// when they changed.
    pub(super) async fn hook_sync_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        let meta = self.meta();
        let mut metrics = meta.group().raft.metrics();
        let mut seen_applied = None;
        let mut installed: Option<Vec<HookRecord>> = None;
        loop {
            let applied = metrics.borrow_and_update().last_applied;
            if applied != seen_applied {
                match meta.hook_records().await {
                    Ok(records) if installed.as_ref() != Some(&records) => {
                        // Compiling is CPU work; keep it off the async threads.
                        let (node, new) = (self.clone(), records.clone());
                        if tokio::task::spawn_blocking(move || node.hooks().install(&new)).await.is_err() {
                            tracing::error!("installing hooks panicked; will retry on the next meta change");
                            w.failed(&"installing hooks panicked");
                            continue;
                        }
                        installed = Some(records);
                        seen_applied = applied;
                        w.round();
                    }
                    Ok(_) => {
                        seen_applied = applied;
                        w.round();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading hook records");
                        w.failed(&e);
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                r = metrics.changed() => if r.is_err() { break },
            }
        }
        self.hooks().stop();
    }

    /// Proposes through the group's batcher on this node (the leader).
    /// The batcher judges each batch's writes with one hand-off per hook
    /// worker. A write that a suspect hook (one that recently broke a limit)
    /// judges is judged here instead, on its own through the slow lane, so
    /// it can never hold a batch of other writes back. A write whose hook
    /// read a version that changed before it applied is judged again.
    pub(super) async fn write_local(
        &self,
        ctx: RequestContext<'_>,
        g: Arc<Group>,
        p: Proposal,
    ) -> Result<Attempt<CommandResult>, NodeError> {
        if let Op::Kv(KvProposal::MoveOut { epoch, .. } | KvProposal::MoveOutBatch { epoch, .. }) = &p {
            if !self.inner.router.knows_job(*epoch) {
                return Ok(Attempt::Retry);
            }
        }
        // A client write is served only where this node's partition view
        // puts its key, and the view cannot change until it is done. A
        // key move lands only while this leader runs its job, so no move of
        // an aborted job lands behind the next job's scan.
        let _gate = match &p {
            Op::Kv(KvProposal::Put { key, .. } | KvProposal::Delete { key, .. }) if g.id != META_GROUP => {
                // Before the routing gate: waiting for replicas must not
                // hold back a partition view change.
                self.await_min_replicas(&g).await?;
                Some(self.admit(ctx, g.id, key, true).await?)
            }
            Op::Kv(KvProposal::MoveIn { epoch, .. } | KvProposal::MoveInBatch { epoch, .. }) => {
                Some(self.inner.router.admit_move(*epoch).await?)
            }
            _ => None,
        };
        let Some((op, key)) = hooked_write(&p) else { return g.batchers.write(p, true).await };
        if self.hooks().current().is_empty() {
            return g.batchers.write(p, true).await;
        }
        for _ in 0..MAX_STALE_RETRIES {
            let attempt = if self.hooks().has_suspect(op, key) {
                let write = write_of(&p, &g.sm).ok_or_else(|| NodeError::Internal("not a hooked write".into()))?;
                // A throttled hook may wait for the slow lane, leaving time to run.
                let patience = self.config().request_timeout * 3 / 4;
                let judgement = self.hooks().judge(write, patience).await.map_err(judge_error)?;
                g.batchers.write(with_judgement(p.clone(), judgement), true).await?
            } else {
                g.batchers.write(p.clone(), false).await?
            };
            match attempt {
                Attempt::Done(CommandResult::HookStale { .. }) => continue,
                other => return Ok(other),
            }
        }
        Err(NodeError::Unavailable(format!(
            "the key changed under its hooks {MAX_STALE_RETRIES} times in a row; try again"
        )))
    }

    /// Compiles and checks a hook, then commits it through the meta group
    /// and waits (bounded by the request timeout) until this node runs it.
    pub async fn deploy_hook(&self, spec: HookSpec) -> Result<(u64, String), NodeError> {
        if spec.stage == Stage::Partition {
            return self.deploy_partitioner(self.stamped(spec)?).await;
        }
        let spec = self.checked(spec).await?;
        let (name, sha) = (spec.name.clone(), spec.sha256.clone());
        let p = MetaOp::DeployHook { spec: Box::new(spec) };
        Ok((self.commit_hook_change(&name, p, Version::Active).await?.0, sha))
    }

    /// Deploys `spec` as the shadow version of its hook: checked like a
    /// deploy, then run beside the active version on every write it judges,
    /// its decisions counted and never enforced (see `hooks::registry`).
    pub async fn deploy_shadow_hook(&self, spec: HookSpec) -> Result<(u64, String), NodeError> {
        if spec.stage == Stage::Partition {
            return Err(NodeError::InvalidArgument(
                "the partition function has no shadow versions: try it with `hook test --stage partition`".into(),
            ));
        }
        let spec = self.checked(spec).await?;
        let (name, sha) = (spec.name.clone(), spec.sha256.clone());
        let p = MetaOp::DeployShadowHook { spec: Box::new(spec) };
        Ok((self.commit_hook_change(&name, p, Version::Shadow).await?.0, sha))
    }

    /// Makes a hook's shadow version the active one, in one meta-group
    /// entry. Returns (now active, replaced).
    pub async fn promote_hook(&self, name: &str) -> Result<(u64, u64), NodeError> {
        self.change_hook(name, MetaOp::PromoteHook { name: name.to_string() }, Version::Active).await
    }

    /// Drops a hook's shadow version. Returns the version dropped.
    pub async fn remove_shadow_hook(&self, name: &str) -> Result<u64, NodeError> {
        let p = MetaOp::RemoveShadowHook { name: name.to_string() };
        Ok(self.change_hook(name, p, Version::Shadow).await?.1)
    }

    /// [`Node::commit_hook_change`] for a hook that exists (else `NotFound`).
    async fn change_hook(&self, name: &str, p: MetaOp, which: Version) -> Result<(u64, u64), NodeError> {
        self.hook_record(name).await?;
        self.commit_hook_change(name, p, which).await
    }

    /// Commits a change of hook `name`'s record and waits until this node
    /// runs its outcome as the `which` version: the version the change
    /// returns, or none when it returns 0 (a removal). Returns (now running,
    /// replaced).
    async fn commit_hook_change(&self, name: &str, p: MetaOp, which: Version) -> Result<(u64, u64), NodeError> {
        match self.propose(META_GROUP, p).await? {
            CommandResult::HookChanged { version, replaced } => {
                self.await_hook_version(name, which, (version != 0).then_some(version)).await;
                Ok((version, replaced))
            }
            CommandResult::HookRefused { reason } => Err(NodeError::Refused(reason)),
            other => Err(NodeError::Internal(format!("unexpected result of a hook change: {other:?}"))),
        }
    }

    /// `spec` with its digest and deploy time set, after the checks every
    /// deploy passes before anything runs: name, size, prefix.
    fn stamped(&self, mut spec: HookSpec) -> Result<HookSpec, NodeError> {
        check_name(&spec.name)?;
        let max = self.config().limits.max_hook_bytes(spec.kind);
        if spec.source.len() > max {
            let what = if spec.kind == crate::hooks::HookKind::Wasm { "Wasm module" } else { "hook source" };
            return Err(NodeError::InvalidArgument(format!(
                "{what} is {} bytes; the limit is {max} bytes",
                spec.source.len()
            )));
        }
        if spec.prefix.len() > self.config().limits.max_key_bytes {
            return Err(NodeError::InvalidArgument("hook prefix is longer than the key limit".into()));
        }
        spec.sha256 = hex(&Sha256::digest(&spec.source));
        spec.deployed_at_ms = now_ms();
        spec.version = 0;
        Ok(spec)
    }

    /// A validate or ttl hook ready to commit: stamped, not named like the
    /// partition function, and compiled with its top level run.
    async fn checked(&self, spec: HookSpec) -> Result<HookSpec, NodeError> {
        let spec = self.stamped(spec)?;
        if self.partition_view().state.active.as_ref().is_some_and(|p| p.name == spec.name) {
            return Err(NodeError::InvalidArgument(format!(
                "{:?} is the name of the cluster's partition function; pick another name",
                spec.name
            )));
        }
        let checked = spec.clone();
        tokio::task::spawn_blocking(move || runtime_for(checked.kind).compile(&checked).map(|_| ()))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::InvalidArgument(format!("hook {} does not load: {e}", spec.name)))?;
        Ok(spec)
    }

    /// Deactivates a hook through the meta group. Returns the removed version.
    pub async fn remove_hook(&self, name: &str) -> Result<u64, NodeError> {
        if let Some(active) = self.partition_view().state.active.clone().filter(|p| p.name == name) {
            self.set_partitioner(None).await?;
            return Ok(active.version);
        }
        Ok(self.change_hook(name, MetaOp::RemoveHook { name: name.to_string() }, Version::Active).await?.1)
    }

    /// Makes a hook's previous version active again. Returns (active, replaced).
    pub async fn rollback_hook(&self, name: &str) -> Result<(u64, u64), NodeError> {
        self.change_hook(name, MetaOp::RollbackHook { name: name.to_string() }, Version::Active).await
    }

    /// Every hook record, as this node's copy of the meta group holds them.
    pub async fn hook_records(&self) -> Result<Vec<HookRecord>, NodeError> {
        self.meta().hook_records().await
    }

    /// The record of hook `name`, or `NotFound`.
    pub async fn hook_record(&self, name: &str) -> Result<HookRecord, NodeError> {
        self.hook_records()
            .await?
            .into_iter()
            .find(|r| r.latest().is_some_and(|s| s.name == name))
            .ok_or_else(|| NodeError::NotFound(format!("no hook named {name:?}")))
    }

    /// Runs a hook on one write without writing (`Hooks.Test`): `spec`'s
    /// source, or with an empty source the deployed hook of that name.
    pub async fn test_hook(&self, spec: HookSpec, write: Write) -> Result<CallReport, NodeError> {
        let hook: Arc<dyn CompiledHook> = if spec.source.is_empty() {
            self.hooks()
                .current()
                .get(&spec.name)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(format!("no active hook named {:?}", spec.name)))?
        } else {
            tokio::task::spawn_blocking(move || runtime_for(spec.kind).compile(&spec))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
                .map_err(|e| NodeError::InvalidArgument(format!("hook does not load: {e}")))?
        };
        self.hooks().dry_run(hook, write).await.map_err(|e| NodeError::Unavailable(e.to_string()))
    }

    /// Waits until this node runs `version` of hook `name` as its active or
    /// shadow version (`None`: until it runs none). Other nodes switch when
    /// their copy of the meta group applies the change, normally within
    /// milliseconds.
    async fn await_hook_version(&self, name: &str, which: Version, version: Option<u64>) {
        let timeout = self.config().request_timeout;
        let done = |set: &crate::hooks::HookSet| {
            let running = match which {
                Version::Active => set.get(name),
                Version::Shadow => set.shadow(name),
            };
            running.map(|h| h.spec().version) == version
        };
        if !self.hooks().wait_for(timeout, done).await {
            tracing::warn!(hook = name, ?version, "hook change committed but not yet active on this node");
        }
    }
}

/// Which of a hook's versions a change is about.
#[derive(Clone, Copy)]
enum Version {
    Active,
    Shadow,
}

/// The kind and key of a write hooks judge; `None` for every other proposal.
fn hooked_write(p: &Proposal) -> Option<(WriteOp, &[u8])> {
    match p {
        Op::Kv(KvProposal::Put { key, .. }) => Some((WriteOp::Put, key)),
        Op::Kv(KvProposal::Delete { key, .. }) => Some((WriteOp::Delete, key)),
        _ => None,
    }
}

/// A client write as the hooks see it, reading the stored value from `sm`
/// (this node's replica) when a hook asks for it.
pub(super) fn write_of(p: &Proposal, sm: &StateMachine) -> Option<Write> {
    let (op, key, value, client_ttl_ms) = match p {
        Op::Kv(KvProposal::Put { key, value, ttl_ms, .. }) => (WriteOp::Put, key, Some(value), *ttl_ms),
        Op::Kv(KvProposal::Delete { key, .. }) => (WriteOp::Delete, key, None, None),
        _ => return None,
    };
    let sm = sm.clone();
    let now = now_ms();
    let read_key = key.clone();
    Some(Write {
        op,
        key: key.clone(),
        value: value.cloned(),
        now_ms: now,
        client_ttl_ms,
        old_value: Arc::new(move || {
            sm.get_blocking(&read_key, now)
                .map(|found| found.map(|e| OldValue { value: e.value.to_vec(), version: e.version }))
                .map_err(|e| format!("reading the stored value: {e}"))
        }),
    })
}

/// The write as the hooks decided it: their versions and guard, and the TTL a ttl hook chose.
pub(super) fn with_judgement(p: Proposal, judgement: Judgement) -> Proposal {
    let stamp =
        (!judgement.used.is_empty()).then(|| Box::new(HookStamp { used: judgement.used, guard: judgement.guard }));
    match p {
        Op::Kv(KvProposal::Put { key, value, ttl_ms, if_version, .. }) => {
            let ttl_ms = match judgement.ttl {
                None => ttl_ms,
                Some(TtlChoice::NoExpiry) => None,
                Some(TtlChoice::Ms(ms)) => Some(ms),
            };
            KvProposal::Put { key, value, ttl_ms, if_version, hooks: stamp }.into()
        }
        Op::Kv(KvProposal::Delete { key, if_version, .. }) => {
            KvProposal::Delete { key, if_version, hooks: stamp }.into()
        }
        other => other,
    }
}

pub(super) fn judge_error(e: JudgeError) -> NodeError {
    match e {
        JudgeError::Rejected(m) => NodeError::Rejected(m),
        JudgeError::Unavailable(m) => NodeError::Unavailable(m),
    }
}

pub(super) fn check_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOOK_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::InvalidArgument(format!(
            "bad hook name {name:?}: use 1 to {MAX_HOOK_NAME} letters, digits, '-', '_' or '.'"
        )))
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
