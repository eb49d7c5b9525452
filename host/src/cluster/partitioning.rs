//! The partition function on the request path, and online re-sharding.
//!
//! **Routing.** A key's shard is `shard_of(token(routing_key))`, where the
//! routing key is what the active partition function returns (or the whole
//! key). Each node keeps a [`PartitionView`]: the meta group's
//! [`PartitionState`] with its functions compiled, swapped in whole by
//! [`Node::partition_sync_loop`].
//!
//! **Re-sharding.** Changing the function opens a job in the meta group
//! (`ring::partition`). While it runs:
//! - writes go to the key's new shard, after *pulling* the key: if its old
//!   shard still holds it, it is copied to the new shard ([`Proposal::MoveIn`],
//!   same value, version and expiry) and deleted from the old one
//!   ([`Proposal::MoveOut`], only if it still holds that version). So a
//!   compare-and-swap sees the key's version, and a delete leaves no old
//!   copy behind to reappear;
//! - reads try the new shard, then the old one, then the new one again (the
//!   key may have moved between the first two reads);
//! - each shard's leader scans its keys in order and moves every key whose
//!   shard changed, reporting progress (with a cursor) to the meta group, so
//!   a new leader resumes where the old one stopped. Moves are idempotent: a
//!   `MoveIn` of a key the job already moved, or that was written on the new
//!   shard since, changes nothing.
//! - When every shard reported done, the meta group closes the job and
//!   drops the old function; leaders then clear the job's move markers.
//!
//! **Agreement on the view.** Nodes apply the meta group at different
//! moments. Every key request carries the routing generation its router
//! used; the serving replica refuses one routed by an older generation than
//! its own ([`NodeError::WrongShard`]: the router catches up and routes
//! again) and waits for a newer one. A node swaps its view only once the
//! requests it admitted under the old view have finished (the routing gate),
//! and a shard's mover starts only on a leader that runs the job's view, so
//! no write routed by an old view lands behind the mover's scan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::{shard_group, Node, NodeError, Proposal, META_GROUP};
use crate::hooks::{runtime_for, CompiledPartitioner, HookSpec};
use crate::raft::types::{now_ms, CommandResult};
use crate::ring::partition::{describe, PartitionState, ReshardJob, ShardProgress};
use crate::ring::{RingConfig, ShardId};
use crate::storage::{Envelope, GroupId};

/// Keys a mover reads from its shard at a time.
const MOVE_BATCH: usize = 512;

/// Moves a mover has in flight at once.
const MOVE_CONCURRENCY: usize = 64;

/// How often a node looks for re-shard work it should do.
const RESHARD_POLL: Duration = Duration::from_millis(200);

tokio::task_local! {
    /// The routing generation the current request was routed by.
    static ROUTED_BY: u64;
}

/// The routing generation of the request the current task serves, if any.
pub(super) fn routed_by() -> Option<u64> {
    ROUTED_BY.try_with(|g| *g).ok()
}

/// Runs `fut` as a request routed by generation `generation`.
pub(super) async fn routed_with<F: std::future::Future>(generation: Option<u64>, fut: F) -> F::Output {
    match generation {
        Some(g) => ROUTED_BY.scope(g, fut).await,
        None => fut.await,
    }
}

/// One node's compiled copy of the meta group's partition state.
#[derive(Default)]
pub struct PartitionView {
    pub state: PartitionState,
    active: Option<Arc<dyn CompiledPartitioner>>,
    /// The job's old function (`None` also when the old one is the whole key).
    from: Option<Arc<dyn CompiledPartitioner>>,
    /// Why this node could not load a function of the state, if it could not.
    broken: Option<String>,
}

/// Where a key request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRoute {
    /// The key's shard group under the active function.
    pub group: GroupId,
    /// While a job runs and the key's shard changes: its old shard group.
    pub old: Option<GroupId>,
    /// The routing generation this was computed under.
    pub generation: u64,
}

impl PartitionView {
    fn load(state: PartitionState) -> PartitionView {
        let compile = |spec: Option<&HookSpec>| -> Result<Option<Arc<dyn CompiledPartitioner>>, String> {
            match spec {
                Some(s) => runtime_for(s.kind)
                    .load_partitioner(s)
                    .map(Some)
                    .map_err(|e| format!("cannot load partition function {}: {e}", describe(Some(s)))),
                None => Ok(None),
            }
        };
        let active = compile(state.active.as_ref());
        let from = compile(state.job.as_ref().and_then(|j| j.from.as_ref()));
        let broken = active.as_ref().err().or(from.as_ref().err()).cloned();
        PartitionView { active: active.ok().flatten(), from: from.ok().flatten(), broken, state }
    }

    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    fn shard_by(f: Option<&Arc<dyn CompiledPartitioner>>, ring: &RingConfig, key: &[u8]) -> Result<ShardId, NodeError> {
        let Some(f) = f else { return Ok(ring.shard_of_key(key)) };
        match f.routing_key(key) {
            Ok(routing) => Ok(ring.shard_of_routed(key, routing.as_deref())),
            Err(e) => Err(NodeError::Rejected(format!(
                "the partition function {} {e} on this key; the request is refused",
                describe(Some(f.spec()))
            ))),
        }
    }

    /// Where `key` lives under this view.
    pub fn route(&self, ring: &RingConfig, key: &[u8]) -> Result<KeyRoute, NodeError> {
        if let Some(why) = &self.broken {
            return Err(NodeError::Unavailable(why.clone()));
        }
        let shard = Self::shard_by(self.active.as_ref(), ring, key)?;
        let old = match &self.state.job {
            Some(_) => Some(Self::shard_by(self.from.as_ref(), ring, key)?).filter(|s| *s != shard),
            None => None,
        };
        Ok(KeyRoute { group: shard_group(shard), old: old.map(shard_group), generation: self.generation() })
    }

    /// The running job's epoch, if a job runs.
    fn job_epoch(&self) -> Option<u64> {
        self.state.job.as_ref().map(|j| j.epoch)
    }
}

/// Re-shard progress as `cluster status` and `cluster reshard status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReshardStatus {
    /// The active partition function ("none (whole key)" when there is none).
    pub partitioner: String,
    pub epoch: u64,
    pub running: bool,
    pub from: Option<String>,
    pub to: Option<String>,
    pub started_ms: Option<u64>,
    pub shards_total: u32,
    pub shards_done: u32,
    pub keys_scanned: u64,
    pub keys_moved: u64,
    /// The last finished job, if any.
    pub last: Option<crate::ring::partition::JobSummary>,
}

impl ReshardStatus {
    pub fn of(state: &PartitionState, shards: u32) -> ReshardStatus {
        let job: Option<&ReshardJob> = state.job.as_ref();
        let (scanned, moved) = job.map_or((0, 0), ReshardJob::totals);
        ReshardStatus {
            partitioner: describe(state.active.as_ref()),
            epoch: state.epoch,
            running: job.is_some(),
            from: job.map(|j| describe(j.from.as_ref())),
            to: job.map(|j| describe(j.to.as_ref())),
            started_ms: job.map(|j| j.started_ms),
            shards_total: shards,
            shards_done: job.map_or(0, |j| j.shards_done() as u32),
            keys_scanned: scanned,
            keys_moved: moved,
            last: state.last_job.clone(),
        }
    }
}

impl Node {
    /// This node's current partition view.
    pub fn partition_view(&self) -> Arc<PartitionView> {
        self.inner.partition.load_full()
    }

    /// Where `key` lives now, by this node's view.
    pub fn route(&self, key: &[u8]) -> Result<KeyRoute, NodeError> {
        self.partition_view().route(self.ring(), key)
    }

    /// Keeps this node's partition view equal to the meta group's state.
    /// The swap waits for the requests admitted under the old view (see the
    /// module comment).
    pub(super) async fn partition_sync_loop(self) {
        let mut stop = self.shutdown_signal();
        let Ok(meta) = self.group(META_GROUP) else { return };
        let mut metrics = meta.raft.metrics();
        let mut seen_applied = None;
        loop {
            let applied = metrics.borrow_and_update().last_applied;
            if applied != seen_applied {
                match meta.sm.partition_state().await {
                    Ok(state) if state != self.partition_view().state => {
                        let view = match tokio::task::spawn_blocking(move || PartitionView::load(state)).await {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!(error = %e, "loading the partition view panicked");
                                continue;
                            }
                        };
                        if let Some(why) = &view.broken {
                            tracing::error!(error = %why, "this node cannot route keys until it can load the partition function");
                        }
                        let _gate = self.inner.routing_gate.write().await;
                        tracing::info!(
                            generation = view.generation(),
                            partitioner = %describe(view.state.active.as_ref()),
                            job = ?view.job_epoch(),
                            "partition view changed"
                        );
                        self.inner.partition.store(Arc::new(view));
                        self.inner.partition_generation.send_replace(self.partition_view().generation());
                        seen_applied = applied;
                    }
                    Ok(_) => seen_applied = applied,
                    Err(e) => tracing::warn!(error = %e, "reading the partition state"),
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    }

    /// Waits, at most `timeout`, until this node routes by `generation` or later.
    async fn wait_generation(&self, generation: u64, timeout: Duration) -> Result<(), NodeError> {
        let mut rx = self.inner.partition_generation.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|g| *g >= generation)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NodeError::Unavailable(format!(
                "node {} routes keys by generation {}, behind the cluster's {generation}",
                self.id(),
                self.partition_view().generation()
            ))),
        }
    }

    /// Admits a key request for `group` on the replica serving it, holding
    /// the routing gate until the returned guard drops. Refuses a request
    /// routed by an older view than this node's, waits (briefly, without
    /// the gate) for a newer one, and refuses a key that does not live in
    /// `group` by this node's view. `write`: a write goes to the key's shard
    /// only; a read may also go to its old shard while a job runs.
    pub(super) async fn admit(
        &self,
        group: GroupId,
        key: &[u8],
        write: bool,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, NodeError> {
        let routed = routed_by();
        if let Some(routed) = routed.filter(|r| *r > self.partition_view().generation()) {
            if self.wait_generation(routed, Duration::from_millis(500)).await.is_err() {
                // The router retries until this node catches up.
                return Err(NodeError::WrongShard { generation: self.partition_view().generation() });
            }
        }
        let gate = self.inner.routing_gate.read().await;
        let view = self.partition_view();
        if routed.is_some_and(|r| r != view.generation()) {
            return Err(NodeError::WrongShard { generation: view.generation() });
        }
        let route = view.route(self.ring(), key)?;
        if route.group == group || (!write && route.old == Some(group)) {
            Ok(gate)
        } else {
            Err(NodeError::WrongShard { generation: view.generation() })
        }
    }

    /// Serves a key request routed by this node's view, routing again when
    /// the serving replica ran a newer view (after this node caught up with
    /// it), within the request deadline.
    pub(super) async fn with_route<T, F, Fut>(&self, key: &[u8], serve: F) -> Result<T, NodeError>
    where
        F: Fn(KeyRoute) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let timeout = self.config().request_timeout;
        let started = tokio::time::Instant::now();
        loop {
            let route = self.route(key)?;
            match routed_with(Some(route.generation), serve(route)).await {
                Err(NodeError::WrongShard { generation }) => {
                    let left = timeout.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(NodeError::Unavailable(format!(
                            "the key's shard kept changing while routing it (generation {generation})"
                        )));
                    }
                    if generation > route.generation {
                        self.wait_generation(generation, left).await?;
                    } else {
                        // The serving replica has not caught up yet.
                        tokio::time::sleep(Duration::from_millis(20).min(left)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Reads `key` wherever it lives: while a job moves it, the new shard,
    /// then the old one, then the new one again (it may have moved between).
    pub async fn get_key(&self, key: &[u8], linearizable: bool) -> Result<Option<Envelope>, NodeError> {
        self.with_route(key, |route| async move {
            let first = self.get(route.group, key.to_vec(), linearizable).await?;
            let Some(old) = route.old else { return Ok(first) };
            if first.is_some() {
                return Ok(first);
            }
            if let Some(v) = self.get(old, key.to_vec(), linearizable).await? {
                return Ok(Some(v));
            }
            self.get(route.group, key.to_vec(), linearizable).await
        })
        .await
    }

    /// Proposes a client write of `key` to its shard; while a job moves the
    /// key, pulls it to the new shard first.
    pub async fn write_key(&self, key: &[u8], p: Proposal) -> Result<CommandResult, NodeError> {
        self.with_route(key, |route| {
            let p = p.clone();
            async move {
                if let Some(old) = route.old {
                    self.pull(key, old, route.group).await?;
                }
                self.propose(route.group, p).await
            }
        })
        .await
    }

    /// Moves `key` from `old` to `new` if `old` still holds it.
    async fn pull(&self, key: &[u8], old: GroupId, new: GroupId) -> Result<(), NodeError> {
        let Some(epoch) = self.partition_view().job_epoch() else { return Ok(()) };
        let Some(env) = self.get(old, key.to_vec(), true).await? else { return Ok(()) };
        self.move_key(key.to_vec(), env, old, new, epoch).await.map(|_| ())
    }

    /// Copies a record to its new shard, then deletes it from the old one if
    /// it still holds the same version. True when the copy was written.
    async fn move_key(
        &self,
        key: Vec<u8>,
        env: Envelope,
        old: GroupId,
        new: GroupId,
        epoch: u64,
    ) -> Result<bool, NodeError> {
        let version = env.version;
        let copy = Proposal::MoveIn {
            key: key.clone(),
            value: env.value.to_vec(),
            version,
            expires_at: env.expires_at,
            epoch,
        };
        let written = match self.propose(new, copy).await? {
            CommandResult::MovedIn { written } => written,
            other => return Err(NodeError::Internal(format!("unexpected result of a key move: {other:?}"))),
        };
        self.propose(old, Proposal::MoveOut { key, version, epoch }).await?;
        Ok(written)
    }

    /// Whether the leader may take a [`Proposal::MoveOut`] of job `epoch`:
    /// only once it routes by that job (else it could still serve a read
    /// routed without it, which would miss the moved key).
    pub(super) fn knows_job(&self, epoch: u64) -> bool {
        self.partition_view().state.epoch >= epoch
    }

    /// Deploys a partition function (checked like a hook: it must load and
    /// pass the ABI checks). Returns its version and digest; the re-shard
    /// job it starts runs in the background.
    pub(super) async fn deploy_partitioner(&self, spec: HookSpec) -> Result<(u64, String), NodeError> {
        if !spec.prefix.is_empty() {
            return Err(NodeError::InvalidArgument(
                "a partition function applies to every key: --prefix is not allowed".into(),
            ));
        }
        if spec.fail_policy == crate::hooks::FailPolicy::Open {
            return Err(NodeError::InvalidArgument(
                "a partition function cannot fail open: a key it cannot route cannot be stored".into(),
            ));
        }
        if self.hook_records().await?.iter().any(|r| r.latest().is_some_and(|s| s.name == spec.name)) {
            return Err(NodeError::InvalidArgument(format!(
                "{:?} is the name of a validate or ttl hook; pick another name",
                spec.name
            )));
        }
        let checked = spec.clone();
        tokio::task::spawn_blocking(move || runtime_for(checked.kind).compile_partitioner(&checked).map(|_| ()))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::InvalidArgument(format!("partition function {} does not load: {e}", spec.name)))?;
        let sha = spec.sha256.clone();
        self.set_partitioner(Some(spec)).await?;
        let version = self.partition_view().state.active.as_ref().map_or(0, |s| s.version);
        Ok((version, sha))
    }

    /// Runs a partition function on one key without routing anything
    /// (`Hooks.Test`): `spec`'s module, or with an empty source the active
    /// function. Returns the routing key (`None`: the whole key) and the shard.
    pub async fn test_partitioner(
        &self,
        spec: HookSpec,
        key: Vec<u8>,
    ) -> Result<(Result<Option<Vec<u8>>, String>, ShardId, Duration), NodeError> {
        let f: Arc<dyn CompiledPartitioner> = if spec.source.is_empty() {
            match self.partition_view().active.clone() {
                Some(f) if f.spec().name == spec.name => f,
                _ => return Err(NodeError::NotFound(format!("no active partition function named {:?}", spec.name))),
            }
        } else {
            tokio::task::spawn_blocking(move || runtime_for(spec.kind).compile_partitioner(&spec))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
                .map_err(|e| NodeError::InvalidArgument(format!("partition function does not load: {e}")))?
        };
        let ring = *self.ring();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let routed = f.routing_key(&key).map_err(|e| e.to_string());
            let shard = ring.shard_of_routed(&key, routed.as_ref().ok().and_then(|r| r.as_deref()));
            (routed, shard, started.elapsed())
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))
    }

    /// The active partition function, as deployed.
    pub fn partitioner(&self) -> Option<HookSpec> {
        self.partition_view().state.active.clone()
    }

    /// Changes the cluster's partition function (`None`: the whole key),
    /// which starts a re-shard job. Returns the job's epoch.
    pub async fn set_partitioner(&self, spec: Option<HookSpec>) -> Result<u64, NodeError> {
        let p = Proposal::SetPartitioner { spec: spec.map(Box::new), shards: self.ring().shards };
        let epoch = match self.propose(META_GROUP, p).await? {
            CommandResult::PartitionChanged { epoch } => epoch,
            CommandResult::PartitionRefused { reason } => return Err(NodeError::Refused(reason)),
            other => return Err(NodeError::Internal(format!("unexpected partitioner result {other:?}"))),
        };
        // Answer once this node routes by the new function.
        let _ = self.wait_partition_epoch(epoch, self.config().request_timeout).await;
        Ok(epoch)
    }

    async fn wait_partition_epoch(&self, epoch: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.partition_generation.subscribe();
        let wait = async {
            while self.partition_view().state.epoch < epoch {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The partition state as the meta group's leader has it now.
    pub async fn reshard_status(&self) -> Result<ReshardStatus, NodeError> {
        let meta = self.group(META_GROUP)?;
        let state = meta.sm.partition_state().await?;
        Ok(ReshardStatus::of(&state, self.ring().shards))
    }

    /// Moves keys for the running job on the shards this node leads, and
    /// clears a finished job's markers.
    pub(super) async fn reshard_loop(self) {
        let mut stop = self.shutdown_signal();
        let mut cleared: BTreeSet<(GroupId, u64)> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RESHARD_POLL) => {}
            }
            let view = self.partition_view();
            if let Some(job) = &view.state.job {
                let todo: Vec<ShardId> = self
                    .led_shards()
                    .await
                    .into_iter()
                    .filter(|s| !job.shards.get(s).is_some_and(|p| p.done))
                    .collect();
                let me = &self;
                let runs = futures::stream::iter(todo)
                    .map(|shard| {
                        let (view, start) = (view.clone(), job.shards.get(&shard).cloned().unwrap_or_default());
                        async move {
                            if let Err(e) = me.reshard_shard(&view, shard, start).await {
                                tracing::info!(shard, error = %e, "re-shard pass stopped; it resumes from its last report");
                            }
                        }
                    })
                    .buffer_unordered(2);
                let mut runs = std::pin::pin!(runs);
                while runs.next().await.is_some() {}
            } else if let Some(last) = &view.state.last_job {
                for shard in self.led_shards().await {
                    let gid = shard_group(shard);
                    if cleared.contains(&(gid, last.epoch)) {
                        continue;
                    }
                    match self.propose(gid, Proposal::ClearMoveMarkers { epoch: last.epoch }).await {
                        Ok(_) => {
                            cleared.insert((gid, last.epoch));
                        }
                        Err(e) => tracing::debug!(group = gid, error = %e, "clearing re-shard markers"),
                    }
                }
            }
        }
    }

    /// The shards whose group this node leads.
    async fn led_shards(&self) -> Vec<ShardId> {
        let mut out = Vec::new();
        for g in self.groups() {
            if g.id != META_GROUP && g.raft.current_leader().await == Some(self.id()) {
                out.push((g.id - 1) as ShardId);
            }
        }
        out
    }

    /// One leader's pass over a shard for the job of `view`, from the
    /// progress last reported: moves every key whose shard changed and
    /// reports progress after each batch. Stops when this node loses the
    /// lead or the view changes.
    async fn reshard_shard(
        &self,
        view: &PartitionView,
        shard: ShardId,
        mut progress: ShardProgress,
    ) -> Result<(), NodeError> {
        let Some(epoch) = view.job_epoch() else { return Ok(()) };
        let gid = shard_group(shard);
        let g = self.group(gid)?;
        // Everything committed before this leader took the shard (writes
        // routed by the old view included) is applied before the scan.
        if !matches!(g.batchers.read_barrier().await?, super::routing::Attempt::Done(())) {
            return Ok(());
        }
        let shards = self.ring().shards;
        loop {
            if self.partition_view().generation() != view.generation()
                || g.raft.current_leader().await != Some(self.id())
            {
                return Ok(());
            }
            let batch = g.sm.records_after(progress.cursor.clone(), MOVE_BATCH).await?;
            let now = now_ms();
            let last = batch.last().map(|(k, _)| k.clone());
            let before = (progress.scanned, progress.moved);
            let mut moves = Vec::new();
            for (key, env) in batch {
                progress.scanned += 1;
                if env.is_expired(now) {
                    continue; // the TTL sweeper deletes it here
                }
                let to = shard_group(PartitionView::shard_by(view.active.as_ref(), self.ring(), &key)?);
                if to != gid {
                    moves.push((key, env, to));
                }
            }
            let results: Vec<Result<bool, NodeError>> = futures::stream::iter(moves)
                .map(|(key, env, to)| self.move_key(key, env, gid, to, epoch))
                .buffer_unordered(MOVE_CONCURRENCY)
                .collect()
                .await;
            for r in results {
                if r? {
                    progress.moved += 1;
                }
            }
            progress.done = last.is_none();
            if last.is_some() {
                progress.cursor = last;
            }
            let report = Proposal::ReshardProgress { epoch, shard, progress: progress.clone(), shards };
            self.propose(META_GROUP, report).await?;
            crate::failpoint::crash_point("reshard-batch");
            crate::telemetry::record_reshard_batch(
                progress.scanned - before.0,
                progress.moved - before.1,
                progress.done,
            );
            if progress.done {
                tracing::info!(
                    shard,
                    epoch,
                    scanned = progress.scanned,
                    moved = progress.moved,
                    "re-shard of shard done"
                );
                return Ok(());
            }
        }
    }

    /// Scans every shard and merges, keeping for a key found on two shards
    /// (mid-move) the copy on its current shard.
    pub(super) fn dedupe_moving(&self, items: &mut Vec<(GroupId, Vec<u8>, Envelope)>) {
        let view = self.partition_view();
        if view.state.job.is_none() {
            return;
        }
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut keep = vec![true; items.len()];
        for (i, (group, key, _)) in items.iter().enumerate() {
            if let Some(&j) = seen.get(key) {
                let current = view.route(self.ring(), key).map(|r| r.group).ok();
                let drop = if current == Some(*group) { j } else { i };
                keep[drop] = false;
                if drop == j {
                    seen.insert(key.clone(), i);
                }
            } else {
                seen.insert(key.clone(), i);
            }
        }
        let mut flags = keep.into_iter();
        items.retain(|_| flags.next().unwrap_or(true));
    }
}
