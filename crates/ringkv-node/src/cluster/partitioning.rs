//! The partition function on the request path, and online re-sharding.
//!
//! **Routing.** A key's shard is the shard map's owner of
//! `token(routing_key)`, where the routing key is what the active partition
//! function returns (or the whole key). Each node keeps a [`PartitionView`]: the meta group's
//! [`PartitionState`] with its functions compiled, swapped in whole by
//! [`Node::partition_sync_loop`].
//!
//! **Re-sharding.** Changing the function opens a job in the meta group
//! (`ring::partition`). While it runs:
//! - writes go to the key's new shard, after *pulling* the key: if its old
//!   shard still holds it, it is copied to the new shard (a `MoveIn`, same
//!   value, version and expiry) and deleted from the old one (a `MoveOut`,
//!   only if it still holds that version). So a
//!   compare-and-swap sees the key's version, and a delete leaves no old
//!   copy behind to reappear;
//! - reads try the new shard, then the old one, then the new one again (the
//!   key may have moved between the first two reads). A key the active
//!   function fails on cannot be moved in this job except by a call that
//!   succeeds (deadlines are not deterministic), and then to one shard, copy
//!   before delete: a read of it tries every shard, twice, and the second
//!   pass finds what a move hid from the first;
//! - each shard's leader scans its keys in order and moves every key whose
//!   shard changed, reporting progress (with a cursor) to the meta group, so
//!   a new leader resumes where the old one stopped. A scan batch's moves
//!   travel as one [`KvProposal::MoveInBatch`] per destination shard (and
//!   [`MOVE_CHUNK_BYTES`]), then one [`KvProposal::MoveOutBatch`] of the same
//!   keys; each key in them obeys the rules of a single move, copy before
//!   delete (a pull is a batch of one). Moves are idempotent: a
//!   `MoveIn` of a key the job already moved, or that was written on the new
//!   shard since, changes nothing.
//! - When every shard reported done, the meta group closes the job and
//!   drops the old function; leaders then clear the markers of that job and
//!   of every job it aborted ([`KvProposal::ClearMoveMarkersUpTo`]).
//!
//! **Splitting and merging shards** changes the shard map instead of the
//! function, through the same job: the meta group keeps the map before the
//! change as the job's *from map*, routing gives a key's old shard under
//! it, and only the shards that lose part of their range have keys to
//! move. Everything below holds with "the old function" read as "the old
//! map"; one routing change runs at a time, so a split or merge never
//! aborts a job or is aborted by one. A split's new shard starts on its
//! parent's replicas, its Raft group created by the parent's leader
//! ([`Node::resize_shards`]).
//!
//! **Aborting a job.** The function can be removed or replaced while a job
//! runs (an operator must be able to back out of a function that fails on
//! some keys: the job cannot finish). The change opens a new job `J'` whose
//! *from side* is every function a key may still sit under: the aborted
//! job's `to` and `from`, and whatever it had itself inherited
//! (`PartitionState::from_functions`, newest first). Routing a key then
//! gives its shard `g` under the new function and the *old* shards: the
//! distinct shards under the from functions, other than `g`; if one of them
//! fails on the key (it may have routed it earlier: a deadline is not
//! deterministic), every other shard. Reads try `g`, each old shard, then `g`
//! again; writes pull from every old shard first; movers scan every shard
//! and move each key whose shard under the new function differs (they
//! never run the from functions, so a function that fails on some keys
//! cannot stop the job that replaces it). Why no key is missed:
//! - *No move of the aborted job lands after `J'`'s scan.* A `MoveIn` is
//!   taken only by a leader whose view runs that very job, holding the
//!   routing gate until it is applied ([`KeyRouter::admit_move`](super::key_router::KeyRouter::admit_move)); the view swap
//!   to `J'` waits for the gate, so afterwards that leader refuses the old
//!   job's `MoveIn`s (the mover stops; a write's pull is routed again). A
//!   `MoveIn` appended by an earlier leader is either in the new leader's
//!   log, and applied by the read barrier `J'`'s mover passes before it
//!   scans, or lost. A late `MoveOut` of the aborted job only deletes a copy
//!   whose `MoveIn` already landed on a shard `J'` reads and scans.
//! - *Every copy of a key outside its target shard has the same version.*
//!   While a job runs, only its target shard `g` gains copies (`MoveIn`s and
//!   writes go there); other shards only lose them (`MoveOut`, expiry). A
//!   write on `g` first removes the copy from every old shard (the pull),
//!   and a `MoveIn` copies the one version the old shards share; so when a
//!   job is aborted, a key's copies (on the old shards and `g`) all have one
//!   version, except that `g` alone may hold a newer one. This is what the
//!   single-job argument needed of "the old shard"; `MoveIn`'s rule (write
//!   only onto no record, once per key and job) keeps it true for `J'`.
//! - *Reads.* During `J'`, moves only go from an old shard to `g`, copy
//!   before delete; a linearizable read that finds nothing on `g` and on
//!   every old shard in turn finds the key on `g` on its last try, as in a
//!   single job. Routers and replicas agree on the routing generation as
//!   below, so a read routed by the aborted job's view is refused and routed
//!   again.
//! - *Compare-and-swap and deletes* pull from every old shard first, so the
//!   write on `g` sees the key's version, and no old copy is left behind.
//!
//! **A job that cannot progress** (the active function fails on a key, or
//! moves keep failing) tries again with a backoff doubling from 200 ms to
//! 10 s, and records the shard, key and error in the meta group
//! ([`MetaOp::ReshardStalled`]); every node's status shows it, and the
//! shard's next progress clears it. A new function is tried, before it is
//! deployed, on the first [`DRY_RUN_KEYS`] keys of every shard, so a
//! function that fails on existing keys is usually refused up front.
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

use super::key_router::Admission;
use super::request::RequestContext;
use super::workers::Worker;
use super::{shard_group, Node, NodeError, META_GROUP};
use crate::command::{CommandResult, KvProposal, MetaOp, MovedRecord, Proposal};
use crate::hooks::{runtime_for, CompiledPartitioner, HookSpec};
use crate::raft::types::now_ms;
use crate::ring::partition::{describe, show_key, PartitionState, ReshardJob, ShardChange, ShardProgress};
use crate::ring::{ShardId, ShardMap};
use crate::storage::{Envelope, GroupId};

/// Keys a mover reads from its shard at a time, and at most how many bytes
/// of them (a larger record is read alone). A batch's moves are a few
/// proposals and its progress report one more, so bigger batches move
/// keys faster.
const MOVE_BATCH: usize = 4096;
const MOVE_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Shards whose re-shard pass one node runs at once.
const SHARD_PASSES: usize = 4;

/// Move proposals (one per destination shard and chunk) a mover has in
/// flight at once.
const MOVE_CONCURRENCY: usize = 16;

/// Most key and value bytes in one move proposal: a log entry a follower
/// catching up must take within a heartbeat interval (raft::network).
const MOVE_CHUNK_BYTES: usize = 256 * 1024;

/// How often a node looks for re-shard work it should do.
const RESHARD_POLL: Duration = Duration::from_millis(200);

/// The first wait before a shard's mover tries again after failing; it
/// doubles with each failure in a row, up to [`RESHARD_BACKOFF_MAX`].
const RESHARD_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RESHARD_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Failures in a row after which a mover's error that names no key the
/// function fails on (a move, a report) is recorded as a stall.
const STALL_AFTER: u32 = 2;

/// Keys from the start of each shard a new partition function is tried on
/// before it is deployed.
pub const DRY_RUN_KEYS: u32 = 32;

/// The longest error text a stall records.
const MAX_STALL_ERROR: usize = 1024;

/// One node's compiled copy of the meta group's partition state.
pub struct PartitionView {
    pub state: PartitionState,
    /// The shard ranges keys route by.
    map: Arc<ShardMap>,
    /// The ranges a key may still sit under while a job runs (the ranges
    /// before a resize; otherwise `map`).
    from_map: Arc<ShardMap>,
    active: Option<Arc<dyn CompiledPartitioner>>,
    /// While a job runs, every function a key may still sit under besides
    /// the active one, newest first (`None`: the whole key). Empty otherwise.
    from: Vec<Option<Arc<dyn CompiledPartitioner>>>,
    /// Why this node could not load a function of the state, if it could not.
    broken: Option<String>,
}

/// Where a key request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRoute {
    /// The key's shard group under the active function.
    pub group: GroupId,
    /// While a job runs: the other shard groups the key may still sit on
    /// (one per older function whose shard differs; every other shard if an
    /// older function fails on the key).
    pub old: Vec<GroupId>,
    /// The routing generation this was computed under.
    pub generation: u64,
    /// The epoch of the job of that view, if one runs: moves for this
    /// route belong to it.
    pub job: Option<u64>,
    /// A read of a key the active function fails on while a job runs: the
    /// key can only sit where an older function (or an earlier, successful
    /// call) put it, so the read looks on every shard (`group` and `old`),
    /// twice.
    pub unrouted: bool,
}

impl PartitionView {
    /// The view of a node that has not read the meta group yet: the whole
    /// key routes over the ring's `shards` equal ranges.
    pub fn initial(shards: u32) -> PartitionView {
        let map = Arc::new(ShardMap::uniform(shards));
        PartitionView {
            state: PartitionState::default(),
            from_map: map.clone(),
            map,
            active: None,
            from: Vec::new(),
            broken: None,
        }
    }

    /// Compiles the state's functions, their calls counted in `hooks`
    /// (`shards`: the ring's shard count, for a cluster that never resized).
    fn load(state: PartitionState, hooks: &crate::hooks::HookRegistry, shards: u32) -> PartitionView {
        let compile = |spec: Option<&HookSpec>| -> Result<Option<Arc<dyn CompiledPartitioner>>, String> {
            match spec {
                Some(s) => runtime_for(s.kind)
                    .load_partitioner(s)
                    .map(|f| Some(hooks.counting_partitioner(f)))
                    .map_err(|e| format!("cannot load partition function {}: {e}", describe(Some(s)))),
                None => Ok(None),
            }
        };
        let active = compile(state.active.as_ref());
        let from: Result<Vec<_>, String> = state.from_functions().into_iter().map(compile).collect();
        let broken = active.as_ref().err().or(from.as_ref().err()).cloned();
        let map = Arc::new(state.shard_map(shards));
        let from_map = if state.resize.is_some() { Arc::new(state.from_map(shards)) } else { map.clone() };
        PartitionView { active: active.ok().flatten(), from: from.unwrap_or_default(), broken, state, map, from_map }
    }

    /// The same compiled functions with newer progress (same generation).
    fn with_state(&self, state: PartitionState) -> PartitionView {
        PartitionView {
            state,
            map: self.map.clone(),
            from_map: self.from_map.clone(),
            active: self.active.clone(),
            from: self.from.clone(),
            broken: self.broken.clone(),
        }
    }

    /// The shard ranges keys route by.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Every shard that holds keys: the map's and, while a resize runs,
    /// those of the ranges before it (a merged-away shard until its keys
    /// have moved), in token order of the map, then the rest.
    pub fn shards(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.map.ids().collect();
        ids.extend(self.from_map.ids().filter(|id| !self.map.contains(*id)));
        ids
    }

    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    fn token_by(f: Option<&Arc<dyn CompiledPartitioner>>, key: &[u8]) -> Result<u64, NodeError> {
        let Some(f) = f else { return Ok(crate::ring::token(key)) };
        match f.routing_key(key) {
            Ok(routing) => Ok(crate::ring::token(routing.as_deref().unwrap_or(key))),
            Err(e) => Err(NodeError::Rejected(format!(
                "the partition function {} {e} on this key; the request is refused",
                describe(Some(f.spec()))
            ))),
        }
    }

    fn shard_by(f: Option<&Arc<dyn CompiledPartitioner>>, map: &ShardMap, key: &[u8]) -> Result<ShardId, NodeError> {
        Ok(map.shard_of(Self::token_by(f, key)?))
    }

    /// The token `key` routes by under the active function.
    pub fn token(&self, key: &[u8]) -> Result<u64, NodeError> {
        Self::token_by(self.active.as_ref(), key)
    }

    /// Where `key` lives under this view.
    pub fn route(&self, key: &[u8]) -> Result<KeyRoute, NodeError> {
        if let Some(why) = &self.broken {
            return Err(NodeError::Unavailable(why.clone()));
        }
        let shard = Self::shard_by(self.active.as_ref(), &self.map, key)?;
        let group = shard_group(shard);
        let mut old: Vec<GroupId> = Vec::new();
        let mut unknown = false;
        for f in &self.from {
            match Self::shard_by(f.as_ref(), &self.from_map, key) {
                Ok(s) if shard_group(s) != group && !old.contains(&shard_group(s)) => old.push(shard_group(s)),
                Ok(_) => {}
                // It may have routed the key before (a deadline is not
                // deterministic), so the key may sit on any shard.
                Err(_) => unknown = true,
            }
        }
        if unknown {
            let rest: Vec<GroupId> =
                self.shards().into_iter().map(shard_group).filter(|g| *g != group && !old.contains(g)).collect();
            old.extend(rest);
        }
        Ok(KeyRoute { group, old, generation: self.generation(), job: self.job_epoch(), unrouted: false })
    }

    /// Where a read of `key` looks: [`Self::route`], except that while a job
    /// runs, a key the active function fails on is looked for everywhere
    /// (so a stuck job leaves every stored key readable).
    pub fn read_route(&self, key: &[u8]) -> Result<KeyRoute, NodeError> {
        match self.route(key) {
            Err(NodeError::Rejected(_)) if self.state.job.is_some() => {
                let mut groups = self.shards().into_iter().map(shard_group);
                Ok(KeyRoute {
                    group: groups.next().unwrap_or(shard_group(0)),
                    old: groups.collect(),
                    generation: self.generation(),
                    job: self.job_epoch(),
                    unrouted: true,
                })
            }
            other => other,
        }
    }

    /// The running job's epoch, if a job runs.
    pub(super) fn job_epoch(&self) -> Option<u64> {
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
    /// Every function keys may still move from, newest first, joined by " + ".
    pub from: Option<String>,
    pub to: Option<String>,
    /// The running job's split or merge (`None`: it applies a function change).
    pub resize: Option<String>,
    pub started_ms: Option<u64>,
    pub shards_total: u32,
    pub shards_done: u32,
    pub keys_scanned: u64,
    pub keys_moved: u64,
    /// The last finished job, if any.
    pub last: Option<crate::ring::partition::JobSummary>,
    /// Shards of the running job whose mover is stuck, and why.
    pub stalls: Vec<StallStatus>,
}

/// A shard whose mover cannot progress, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StallStatus {
    pub shard: ShardId,
    /// The key it stopped at (printable ASCII, other bytes escaped).
    pub key: String,
    pub error: String,
    pub since_ms: u64,
}

impl ReshardStatus {
    pub fn of(state: &PartitionState, shards: u32) -> ReshardStatus {
        let job: Option<&ReshardJob> = state.job.as_ref();
        let (scanned, moved) = job.map_or((0, 0), ReshardJob::totals);
        ReshardStatus {
            partitioner: describe(state.active.as_ref()),
            epoch: state.epoch,
            running: job.is_some(),
            from: state.describe_from(),
            to: job.map(|j| describe(j.to.as_ref())),
            resize: state.resize.as_ref().map(|r| r.change.to_string()),
            started_ms: job.map(|j| j.started_ms),
            shards_total: state.from_map(shards).len() as u32,
            shards_done: job.map_or(0, |j| j.shards_done() as u32),
            keys_scanned: scanned,
            keys_moved: moved,
            last: state.last_job.clone(),
            stalls: state
                .stalls
                .iter()
                .map(|(shard, s)| StallStatus {
                    shard: *shard,
                    key: show_key(&s.key),
                    error: s.error.clone(),
                    since_ms: s.since_ms,
                })
                .collect(),
        }
    }
}

impl Node {
    /// This node's current partition view.
    pub fn partition_view(&self) -> Arc<PartitionView> {
        self.inner.router.view()
    }

    /// Where `key` lives now, by this node's view.
    pub fn route(&self, key: &[u8]) -> Result<KeyRoute, NodeError> {
        self.inner.router.route(key)
    }

    /// Keeps this node's partition view equal to the meta group's state.
    /// The swap waits for the requests admitted under the old view (see the
    /// module comment).
    pub(super) async fn partition_sync_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        let meta = self.meta();
        let mut metrics = meta.group().raft.metrics();
        let mut seen_applied = None;
        loop {
            let applied = metrics.borrow_and_update().last_applied;
            if applied != seen_applied {
                match meta.partition_state().await {
                    Ok(state) if state.generation == self.partition_view().generation() => {
                        // Only progress changed: routing is the same, so
                        // no recompiling and no waiting for the gate.
                        let cur = self.partition_view();
                        if state != cur.state {
                            self.inner.router.refresh(cur.with_state(state));
                        }
                        seen_applied = applied;
                        w.round();
                    }
                    Ok(state) => {
                        let node = self.clone();
                        let load = move || PartitionView::load(state, node.hooks(), node.ring().shards);
                        let view = match tokio::task::spawn_blocking(load).await {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!(error = %e, "loading the partition view panicked");
                                w.failed(&e);
                                continue;
                            }
                        };
                        if let Some(why) = &view.broken {
                            tracing::error!(error = %why, "this node cannot route keys until it can load the partition function");
                            w.failed(why);
                        }
                        let (generation, job) = (view.generation(), view.job_epoch());
                        let partitioner = describe(view.state.active.as_ref());
                        self.inner.router.switch(view).await;
                        tracing::info!(generation, %partitioner, ?job, "partition view changed");
                        seen_applied = applied;
                        w.round();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the partition state");
                        w.failed(&e);
                    }
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
        if self.inner.router.wait_generation(generation, timeout).await {
            return Ok(());
        }
        Err(NodeError::Unavailable(format!(
            "node {} routes keys by generation {}, behind the cluster's {generation}",
            self.id(),
            self.partition_view().generation()
        )))
    }

    /// [`KeyRouter::admit`](super::key_router::KeyRouter::admit) for a
    /// request in context `ctx`.
    pub(super) async fn admit(
        &self,
        ctx: RequestContext<'_>,
        group: GroupId,
        key: &[u8],
        write: bool,
    ) -> Result<Admission<'_>, NodeError> {
        self.inner.router.admit(ctx.routed(), group, key, write).await
    }

    /// Serves a key request routed by this node's view, routing again when
    /// the serving replica ran a newer view (after this node caught up with
    /// it), within the request deadline. `serve` gets the route and the
    /// request, marked with the generation it was routed by.
    pub(super) async fn with_route<'c, T, F, Fut>(
        &self,
        ctx: RequestContext<'c>,
        key: &[u8],
        write: bool,
        serve: F,
    ) -> Result<T, NodeError>
    where
        F: Fn(KeyRoute, RequestContext<'c>) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let timeout = self.config().request_timeout;
        let started = tokio::time::Instant::now();
        loop {
            let view = self.partition_view();
            let route = if write { view.route(key)? } else { view.read_route(key)? };
            let routed = route.generation;
            match serve(route, ctx.routed_by(routed)).await {
                Err(NodeError::WrongShard { generation }) => {
                    let left = timeout.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(NodeError::Unavailable(format!(
                            "the key's shard kept changing while routing it (generation {generation})"
                        )));
                    }
                    if generation > routed {
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
    /// then each old one, then the new one again (it may have moved between).
    /// A key the active function fails on: every shard, twice (the only
    /// move it can make in this job goes to one shard, copy before delete,
    /// so the second pass sees what the first missed).
    pub async fn get_key(
        &self,
        ctx: RequestContext<'_>,
        key: &[u8],
        linearizable: bool,
    ) -> Result<Option<Envelope>, NodeError> {
        self.with_route(ctx, key, false, |route, ctx| async move {
            if route.unrouted {
                for _ in 0..2 {
                    for g in std::iter::once(route.group).chain(route.old.iter().copied()) {
                        if let Some(v) = self.get(ctx, g, key.to_vec(), linearizable).await? {
                            return Ok(Some(v));
                        }
                    }
                }
                return Ok(None);
            }
            let first = self.get(ctx, route.group, key.to_vec(), linearizable).await?;
            if first.is_some() || route.old.is_empty() {
                return Ok(first);
            }
            for old in &route.old {
                if let Some(v) = self.get(ctx, *old, key.to_vec(), linearizable).await? {
                    return Ok(Some(v));
                }
            }
            self.get(ctx, route.group, key.to_vec(), linearizable).await
        })
        .await
    }

    /// Proposes a client write of `key` to its shard; while a job moves the
    /// key, pulls it to the new shard first from every shard it may sit on.
    pub async fn write_key(
        &self,
        ctx: RequestContext<'_>,
        key: &[u8],
        p: KvProposal,
    ) -> Result<CommandResult, NodeError> {
        self.with_route(ctx, key, true, |route, ctx| {
            let p = Proposal::from(p.clone());
            async move {
                if let Some(epoch) = route.job {
                    for old in &route.old {
                        self.pull(ctx, key, *old, route.group, epoch).await?;
                    }
                }
                self.propose_in(ctx, route.group, p).await
            }
        })
        .await
    }

    /// Moves `key` from `old` to `new` for job `epoch` (the one it was
    /// routed by) if `old` still holds it.
    async fn pull(
        &self,
        ctx: RequestContext<'_>,
        key: &[u8],
        old: GroupId,
        new: GroupId,
        epoch: u64,
    ) -> Result<(), NodeError> {
        let Some(env) = self.get(ctx, old, key.to_vec(), true).await? else { return Ok(()) };
        self.move_records(vec![moved_record(key.to_vec(), env)], old, new, epoch).await.map(|_| ())
    }

    /// Copies records (distinct keys) to their new shard in one proposal,
    /// then deletes from the old one, in one more, each key that still holds
    /// the version copied. Returns how many copies were written (a key
    /// already moved, or written on `new` since the job began, is not).
    async fn move_records(
        &self,
        records: Vec<MovedRecord>,
        old: GroupId,
        new: GroupId,
        epoch: u64,
    ) -> Result<u64, NodeError> {
        let keys = records.iter().map(|r| (r.key.clone(), r.version)).collect();
        let written = match self.propose(new, KvProposal::MoveInBatch { records, epoch }).await? {
            CommandResult::MovedInBatch { written } => written,
            other => return Err(NodeError::Internal(format!("unexpected result of a key move: {other:?}"))),
        };
        self.propose(old, KvProposal::MoveOutBatch { keys, epoch }).await?;
        Ok(written)
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
        let f = tokio::task::spawn_blocking(move || runtime_for(checked.kind).compile_partitioner(&checked))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::InvalidArgument(format!("partition function {} does not load: {e}", spec.name)))?;
        self.dry_run_partitioner(f).await?;
        let sha = spec.sha256.clone();
        self.set_partitioner(Some(spec)).await?;
        let version = self.partition_view().state.active.as_ref().map_or(0, |s| s.version);
        Ok((version, sha))
    }

    /// Runs a new partition function on the first [`DRY_RUN_KEYS`] keys of
    /// every shard (read from a replica, as an eventual scan) and refuses it
    /// if it fails on one: a re-shard job would stop at that key. Keys
    /// further in are not tried; a job that stops at one says so in its
    /// status, and the function can be removed or replaced while it runs.
    async fn dry_run_partitioner(&self, f: Arc<dyn CompiledPartitioner>) -> Result<(), NodeError> {
        let mut sample: Vec<(ShardId, Vec<u8>)> = Vec::new();
        for shard in self.partition_view().shards() {
            let keys = self.scan(shard_group(shard), Vec::new(), DRY_RUN_KEYS, false).await.map_err(|e| {
                NodeError::Unavailable(format!(
                    "cannot read the first keys of shard {shard} to try the partition function on: {e}; try again"
                ))
            })?;
            sample.extend(keys.into_iter().map(|(k, _)| (shard, k)));
        }
        let name = f.spec().name.clone();
        let failed = tokio::task::spawn_blocking(move || {
            sample.into_iter().find_map(|(shard, key)| f.routing_key(&key).err().map(|e| (shard, key, e.to_string())))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        match failed {
            None => Ok(()),
            Some((shard, key, e)) => Err(NodeError::InvalidArgument(format!(
                "the partition function {name} {e} on the existing key \"{}\" (shard {shard}), so re-sharding would stop \
                 there; nothing was deployed. Fix the function (try it on a key with `ringkv hook test`) and deploy again",
                show_key(&key)
            ))),
        }
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
        let view = self.partition_view();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let routed = f.routing_key(&key).map_err(|e| e.to_string());
            let routing = routed.as_ref().ok().and_then(|r| r.as_deref()).unwrap_or(&key);
            let shard = view.shard_map().shard_of(crate::ring::token(routing));
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
        let p = MetaOp::SetPartitioner { spec: spec.map(Box::new), shards: self.ring().shards };
        let epoch = match self.propose(META_GROUP, p).await? {
            CommandResult::PartitionChanged { epoch } => epoch,
            CommandResult::PartitionRefused { reason } => return Err(NodeError::Refused(reason)),
            other => return Err(NodeError::Internal(format!("unexpected partitioner result {other:?}"))),
        };
        // Answer once this node routes by the new function.
        let _ = self.inner.router.wait_epoch(epoch, self.config().request_timeout).await;
        Ok(epoch)
    }

    /// Splits or merges shards (see [`crate::ring::ShardMap`]), which
    /// starts a job moving the keys whose shard changed. Checks the change
    /// against this node's map first, so a bad shard or split point is an
    /// invalid argument; the meta group refuses it while any job runs.
    /// Returns the job's epoch and the change as made.
    pub async fn resize_shards(&self, change: ShardChange) -> Result<(u64, ShardChange), NodeError> {
        let map = self.partition_view().shard_map().clone();
        let checked = match change {
            ShardChange::Split { shard, at, .. } => map.split(shard, at).map(|_| ()),
            ShardChange::Merge { keep, absorb } => map.merge(keep, absorb).map(|_| ()),
        };
        checked.map_err(NodeError::InvalidArgument)?;
        let p = MetaOp::ResizeShards { change, shards: self.ring().shards };
        let (epoch, change) = match self.propose(META_GROUP, p).await? {
            CommandResult::Resized { epoch, change } => (epoch, change),
            CommandResult::PartitionRefused { reason } => return Err(NodeError::Refused(reason)),
            other => return Err(NodeError::Internal(format!("unexpected resize result {other:?}"))),
        };
        tracing::info!(epoch, %change, "shard resize started");
        // Answer once this node routes by the new ranges.
        let _ = self.inner.router.wait_epoch(epoch, self.config().request_timeout).await;
        Ok((epoch, change))
    }

    /// The partition state as the meta group's leader has it now.
    pub async fn reshard_status(&self) -> Result<ReshardStatus, NodeError> {
        let meta = self.meta();
        let state = meta.partition_state().await?;
        Ok(ReshardStatus::of(&state, self.ring().shards))
    }

    /// Moves keys for the running job on the shards this node leads, and
    /// clears finished jobs' markers. A shard whose pass fails is tried
    /// again after a backoff (doubling from [`RESHARD_BACKOFF_MIN`] to
    /// [`RESHARD_BACKOFF_MAX`]); why it is stuck goes to the meta group.
    pub(super) async fn reshard_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        let mut cleared: BTreeSet<(GroupId, u64)> = BTreeSet::new();
        // Per shard of job `backoff_epoch`: failures in a row, next attempt.
        let mut backoff: BTreeMap<ShardId, (u32, tokio::time::Instant)> = BTreeMap::new();
        let mut backoff_epoch = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RESHARD_POLL) => {}
            }
            w.round();
            let view = self.partition_view();
            if let Some(job) = &view.state.job {
                if job.epoch != backoff_epoch {
                    backoff.clear();
                    backoff_epoch = job.epoch;
                }
                if let Err(e) = self.start_split_child(&view).await {
                    tracing::info!(error = %e, "starting a split's new shard; trying again");
                    w.failed(&e);
                    continue;
                }
                let now = tokio::time::Instant::now();
                let todo: Vec<ShardId> = self
                    .led_shards()
                    .await
                    .into_iter()
                    .filter(|s| view.from_map.contains(*s) && !job.shards.get(s).is_some_and(|p| p.done))
                    .filter(|s| backoff.get(s).is_none_or(|(_, next)| *next <= now))
                    .collect();
                let me = &self;
                let runs = futures::stream::iter(todo)
                    .map(|shard| {
                        let (view, start) = (view.clone(), job.shards.get(&shard).cloned().unwrap_or_default());
                        async move { (shard, me.reshard_shard(&view, shard, start).await) }
                    })
                    .buffer_unordered(SHARD_PASSES);
                let results: Vec<(ShardId, Result<(), Stuck>)> = runs.collect().await;
                for (shard, result) in results {
                    let Err(stuck) = result else {
                        backoff.remove(&shard);
                        continue;
                    };
                    let failures = backoff.get(&shard).map_or(0, |(n, _)| *n).saturating_add(1);
                    let wait = reshard_backoff(failures);
                    backoff.insert(shard, (failures, tokio::time::Instant::now() + wait));
                    tracing::info!(
                        shard,
                        epoch = job.epoch,
                        key = %stuck.key.as_deref().map(show_key).unwrap_or_default(),
                        error = %stuck.error,
                        retry_in_ms = wait.as_millis() as u64,
                        "re-shard pass stopped; it resumes from its last report"
                    );
                    w.failed(&format_args!("shard {shard}: {}", stuck.error));
                    if stuck.function_failed || failures >= STALL_AFTER {
                        self.report_stall(&view, job.epoch, shard, stuck).await;
                    }
                }
            } else if let Some(last) = &view.state.last_job {
                for shard in self.led_shards().await {
                    let gid = shard_group(shard);
                    if cleared.contains(&(gid, last.epoch)) {
                        continue;
                    }
                    // Up to: the markers of the jobs it aborted go too.
                    match self.propose(gid, KvProposal::ClearMoveMarkersUpTo { epoch: last.epoch }).await {
                        Ok(_) => {
                            cleared.insert((gid, last.epoch));
                        }
                        Err(e) => {
                            tracing::debug!(group = gid, error = %e, "clearing re-shard markers");
                            w.failed(&e);
                        }
                    }
                }
            }
        }
    }

    /// While a split runs, on the leader of the shard being split: creates
    /// the new shard's Raft group with the replicas the meta group assigned
    /// it (its parent's), so its keys have somewhere to move. Every replica
    /// starts the group when its reconciler sees the assignment; this node
    /// makes the first membership. openraft's `initialize` writes the same
    /// first entry on any node, and is refused once the group has a log,
    /// so a repeat (a new parent leader) changes nothing.
    async fn start_split_child(&self, view: &PartitionView) -> Result<(), NodeError> {
        let Some(ShardChange::Split { shard, new_shard: Some(child), .. }) =
            view.state.resize.as_ref().map(|r| r.change)
        else {
            return Ok(());
        };
        let Ok(parent) = self.group(shard_group(shard)) else { return Ok(()) };
        if parent.raft.current_leader().await != Some(self.id()) {
            return Ok(());
        }
        let replicas = self.meta().assignments().await?.remove(&child).unwrap_or_default();
        if !replicas.contains(&self.id()) {
            return Err(NodeError::Unavailable(format!("shard {child} is not assigned to this node yet")));
        }
        let g = self.ensure_group(shard_group(child)).await?;
        if g.raft.is_initialized().await.map_err(|e| NodeError::Internal(e.to_string()))? {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        for id in replicas {
            let addr = self.addr_of(id).ok_or_else(|| NodeError::Unavailable(format!("no address for node {id}")))?;
            members.insert(id, openraft::BasicNode { addr });
        }
        crate::failpoint::crash_point("split-start");
        tracing::info!(shard, child, members = ?members.keys().collect::<Vec<_>>(), "starting the shard a split creates");
        match g.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another leader of the parent got there first.
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Internal(format!("initializing shard {child}: {e}"))),
        }
    }

    /// Records in the meta group why `shard` cannot progress, unless the
    /// state already says exactly that.
    async fn report_stall(&self, view: &PartitionView, epoch: u64, shard: ShardId, stuck: Stuck) {
        let key = stuck.key.unwrap_or_default();
        let mut error = stuck.error;
        if error.len() > MAX_STALL_ERROR {
            let mut cut = MAX_STALL_ERROR;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        if view.state.stalls.get(&shard).is_some_and(|s| s.epoch == epoch && s.key == key && s.error == error) {
            return;
        }
        let p = MetaOp::ReshardStalled { epoch, shard, key, error };
        if let Err(e) = self.propose(META_GROUP, p).await {
            tracing::debug!(shard, error = %e, "recording a re-shard stall");
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
    /// lead or the view changes. A key the active function fails on stops
    /// the pass after the keys before it are moved and reported.
    async fn reshard_shard(
        &self,
        view: &PartitionView,
        shard: ShardId,
        mut progress: ShardProgress,
    ) -> Result<(), Stuck> {
        let Some(epoch) = view.job_epoch() else { return Ok(()) };
        let gid = shard_group(shard);
        let g = self.group(gid).map_err(Stuck::other)?;
        // Everything committed before this leader took the shard (writes
        // routed by the old view, and moves of an aborted job, included) is
        // applied before the scan.
        if !matches!(g.batchers.read_barrier().await.map_err(Stuck::other)?, super::routing::Attempt::Done(())) {
            return Ok(());
        }
        let shards = self.ring().shards;
        let target = |key: &[u8]| -> Result<GroupId, String> {
            let shard = |routing: &[u8]| shard_group(view.map.shard_of(crate::ring::token(routing)));
            match view.active.as_ref() {
                None => Ok(shard(key)),
                Some(f) => f
                    .routing_key(key)
                    .map(|r| shard(r.as_deref().unwrap_or(key)))
                    .map_err(|e| format!("the partition function {} {e}", describe(Some(f.spec())))),
            }
        };
        let share = u32::from(self.config().move_share.clamp(1, 100));
        loop {
            if self.partition_view().generation() != view.generation()
                || g.raft.current_leader().await != Some(self.id())
            {
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            let batch =
                g.sm.records_after(progress.cursor.clone(), MOVE_BATCH, MOVE_BATCH_BYTES)
                    .await
                    .map_err(|e| Stuck::other(e.into()))?;
            let now = now_ms();
            let end_of_shard = batch.is_empty();
            let before = (progress.scanned, progress.moved);
            let mut handled: Option<Vec<u8>> = None;
            let mut failed: Option<Stuck> = None;
            let mut moves = Vec::new();
            for (key, env) in batch {
                // Expired keys: the TTL sweeper deletes them here.
                if !env.is_expired(now) {
                    match target(&key) {
                        Ok(to) if to != gid => moves.push((key.clone(), env, to)),
                        Ok(_) => {}
                        Err(error) => {
                            failed = Some(Stuck { key: Some(key), error, function_failed: true });
                            break;
                        }
                    }
                }
                progress.scanned += 1;
                handled = Some(key);
            }
            let results: Vec<(Vec<u8>, Result<u64, NodeError>)> = futures::stream::iter(move_chunks(moves))
                .map(|(to, records)| async move {
                    let first = records.first().map(|r| r.key.clone()).unwrap_or_default();
                    (first, self.move_records(records, gid, to, epoch).await)
                })
                .buffer_unordered(MOVE_CONCURRENCY)
                .collect()
                .await;
            for (key, r) in results {
                match r {
                    Ok(written) => progress.moved += written,
                    Err(e) => {
                        return Err(Stuck {
                            key: Some(key),
                            error: format!("moving the keys failed: {e}"),
                            function_failed: false,
                        })
                    }
                }
            }
            progress.done = end_of_shard;
            if handled.is_some() {
                progress.cursor = handled;
            }
            if progress.done || progress.scanned > before.0 {
                let report = MetaOp::ReshardProgress { epoch, shard, progress: progress.clone(), shards };
                self.propose(META_GROUP, report).await.map_err(Stuck::other)?;
                crate::failpoint::crash_point("reshard-batch");
                crate::telemetry::record_reshard_batch(
                    progress.scanned - before.0,
                    progress.moved - before.1,
                    progress.done,
                );
            }
            if let Some(stuck) = failed {
                return Err(stuck);
            }
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
            // Rest so the batch's work is `share` percent of the time.
            if share < 100 && progress.moved > before.1 {
                tokio::time::sleep(started.elapsed() * (100 - share) / share).await;
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
                let current = view.route(key).map(|r| r.group).ok();
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

/// A record as a move carries it.
fn moved_record(key: Vec<u8>, env: Envelope) -> MovedRecord {
    MovedRecord { key, value: env.value.to_vec(), version: env.version, expires_at: env.expires_at }
}

/// A scan batch's moves as one proposal's worth of records per destination
/// shard, each at most [`MOVE_CHUNK_BYTES`] of keys and values (a larger
/// record goes alone).
fn move_chunks(moves: Vec<(Vec<u8>, Envelope, GroupId)>) -> Vec<(GroupId, Vec<MovedRecord>)> {
    let mut open: BTreeMap<GroupId, (usize, Vec<MovedRecord>)> = BTreeMap::new();
    let mut chunks = Vec::new();
    for (key, env, to) in moves {
        let size = key.len() + env.value.len();
        let (bytes, records) = open.entry(to).or_default();
        if !records.is_empty() && *bytes + size > MOVE_CHUNK_BYTES {
            chunks.push((to, std::mem::take(records)));
            *bytes = 0;
        }
        *bytes += size;
        records.push(moved_record(key, env));
    }
    chunks.extend(open.into_iter().map(|(to, (_, records))| (to, records)));
    chunks
}

/// How long a shard's mover waits after `failures` failed passes in a row.
fn reshard_backoff(failures: u32) -> Duration {
    RESHARD_BACKOFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(RESHARD_BACKOFF_MAX)
}

/// Why a shard's re-shard pass stopped.
struct Stuck {
    /// The key it stopped at, if one.
    key: Option<Vec<u8>>,
    error: String,
    /// The active function fails on `key`: trying again will not help.
    function_failed: bool,
}

impl Stuck {
    fn other(e: NodeError) -> Stuck {
        Stuck { key: None, error: e.to_string(), function_failed: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_mover_backs_off_exponentially_up_to_a_cap() {
        let waits: Vec<u64> = (1..=9).map(|n| reshard_backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(reshard_backoff(u32::MAX), RESHARD_BACKOFF_MAX);
    }

    #[test]
    fn moves_go_as_one_chunk_per_destination_within_the_byte_limit() {
        let env = |size: usize| Envelope { value: vec![0u8; size].into(), version: 1, expires_at: None };
        let half = MOVE_CHUNK_BYTES / 2;
        let moves = vec![
            (b"a".to_vec(), env(10), 2),
            (b"b".to_vec(), env(half), 3),
            (b"c".to_vec(), env(10), 2),
            (b"d".to_vec(), env(half), 3),
            (b"e".to_vec(), env(3 * MOVE_CHUNK_BYTES), 3),
        ];
        let chunks: Vec<(GroupId, Vec<Vec<u8>>)> = move_chunks(moves)
            .into_iter()
            .map(|(to, records)| (to, records.into_iter().map(|r| r.key).collect()))
            .collect();
        let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            chunks,
            vec![(3, keys(&["b"])), (3, keys(&["d"])), (2, keys(&["a", "c"])), (3, keys(&["e"]))],
            "b and d overflow a chunk together; a record larger than a chunk goes alone"
        );
    }
}
