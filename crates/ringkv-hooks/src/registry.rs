//! The hook registry of one node: the deployed set, compiled and swapped in
//! as a whole, per-hook call statistics, and judging one write.
//!
//! The meta group is the source of truth: it stores one [`HookRecord`] per
//! name (the active version and the one before it). When this node's copy
//! of the meta group applies a change, the node calls [`HookRegistry::install`]
//! with every record; hooks whose version did not change keep their compiled
//! form, and the new [`HookSet`] replaces the old one in a single atomic
//! swap. A write loads the set once, so it is judged entirely by the set
//! that was current when it started.
//!
//! **Shadow versions.** A record may also hold a *shadow*: a version on
//! trial (`hook deploy --shadow`). It runs right after its active version,
//! on the writes that version judges, under its own limits; its decision
//! is compared with the active one's and counted ([`ShadowStats`]), never
//! enforced, and it adds nothing to the write's log entry (no version, no
//! guard). `hook promote` makes it the active version in one meta-group
//! entry, so every write is judged by exactly one active version of it. A
//! shadow that broke a limit in the last [`SUSPECT_FOR`] runs on at most one
//! write per [`SHADOW_PROBE_EVERY`]: a misbehaving trial cannot slow writes
//! down by more than its own deadline now and then.
//!
//! **Isolation between hooks.** Workers are shared by every hook on the
//! node. A hook that hit a limit in the last [`SUSPECT_FOR`] is a suspect:
//! writes it judges run in a slow lane that holds at most all workers but
//! one, so a runaway hook flooded with writes slows down its own writes
//! (they queue for the lane) but leaves a worker for every other hook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::pool::{HookPool, PoolError};
use super::{
    read_once, runtime_for, CallReport, CompiledHook, CompiledPartitioner, Decision, FailPolicy, HookFailure,
    HookInput, HookSpec, OldValueLoader, Stage, WriteOp,
};

/// A hook's record in the meta group: the active version, the previous
/// one, and a shadow version on trial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// The active version; `None` once removed.
    pub current: Option<HookSpec>,
    /// What `rollback` restores.
    pub previous: Option<HookSpec>,
    /// The highest version ever given to this name.
    pub last_version: u64,
    /// A version that runs beside the active one without being enforced.
    pub shadow: Option<HookSpec>,
}

/// A [`HookRecord`] as stored before shadows existed.
#[derive(Deserialize)]
struct HookRecordV1 {
    current: Option<HookSpec>,
    previous: Option<HookSpec>,
    last_version: u64,
}

impl HookRecord {
    /// Reads a stored record, including one written before shadows existed
    /// (postcard has no optional trailing fields).
    pub fn decode(raw: &[u8]) -> Result<HookRecord, postcard::Error> {
        match postcard::from_bytes::<HookRecord>(raw) {
            Ok(r) => Ok(r),
            Err(new) => match postcard::from_bytes::<HookRecordV1>(raw) {
                Ok(v1) => Ok(HookRecord {
                    current: v1.current,
                    previous: v1.previous,
                    last_version: v1.last_version,
                    shadow: None,
                }),
                Err(_) => Err(new),
            },
        }
    }

    /// Makes `spec` the shadow version and returns (its version, the shadow
    /// it replaced; 0: none). It must judge what the active version judges:
    /// same stage and prefix. Deploying the current shadow again changes
    /// nothing.
    pub fn deploy_shadow(&mut self, mut spec: HookSpec) -> Result<(u64, u64), String> {
        let name = spec.name.clone();
        let Some(active) = &self.current else {
            return Err(format!("hook {name} has no active version to shadow; deploy it without --shadow first"));
        };
        if active.stage != spec.stage {
            return Err(format!(
                "hook {name} is a {} hook; its shadow must be one too (got {})",
                active.stage, spec.stage
            ));
        }
        if active.prefix != spec.prefix {
            return Err(format!(
                "a shadow judges the writes its active version judges: give it the same prefix {:?}, or deploy the \
                 new prefix without --shadow",
                String::from_utf8_lossy(&active.prefix)
            ));
        }
        let replaced = self.shadow.as_ref().map_or(0, |s| s.version);
        if let Some(shadow) = &self.shadow {
            if same_definition(shadow, &spec) {
                return Ok((shadow.version, replaced));
            }
        }
        let version =
            self.last_version.checked_add(1).ok_or_else(|| format!("hook {name} has no version numbers left"))?;
        self.last_version = version;
        spec.version = version;
        self.shadow = Some(spec);
        Ok((version, replaced))
    }

    /// Makes the shadow the active version (the active one becomes the
    /// previous). Returns (now active, replaced; 0 = none).
    pub fn promote(&mut self, name: &str) -> Result<(u64, u64), String> {
        let shadow = self.shadow.take().ok_or_else(|| format!("hook {name} has no shadow version to promote"))?;
        let version = shadow.version;
        let replaced = self.current.as_ref().map_or(0, |c| c.version);
        self.previous = self.current.take().or(self.previous.take());
        self.current = Some(shadow);
        Ok((version, replaced))
    }

    /// Drops the shadow version. Returns the version dropped.
    pub fn remove_shadow(&mut self, name: &str) -> Result<u64, String> {
        let shadow = self.shadow.take().ok_or_else(|| format!("hook {name} has no shadow version"))?;
        Ok(shadow.version)
    }

    /// Makes `spec` the active version and returns its version. Deploying a
    /// definition identical to the active one changes nothing. A record
    /// whose versions are used up (only a corrupt or forged record can get
    /// there) refuses the deploy rather than reuse a version.
    pub fn deploy(&mut self, mut spec: HookSpec) -> Result<u64, String> {
        if let Some(cur) = &self.current {
            if same_definition(cur, &spec) {
                return Ok(cur.version);
            }
        }
        let version = self
            .last_version
            .checked_add(1)
            .ok_or_else(|| format!("hook {} has no version numbers left", spec.name))?;
        self.last_version = version;
        spec.version = version;
        self.previous = self.current.take().or(self.previous.take());
        self.current = Some(spec);
        Ok(version)
    }

    /// Deactivates the hook, keeping it for rollback. Returns the removed version.
    pub fn remove(&mut self, name: &str) -> Result<u64, String> {
        let cur = self.current.take().ok_or_else(|| format!("hook {name} is not active"))?;
        let version = cur.version;
        self.previous = Some(cur);
        Ok(version)
    }

    /// Swaps the active and previous versions. Returns (now active, replaced; 0 = none).
    pub fn rollback(&mut self, name: &str) -> Result<(u64, u64), String> {
        let prev =
            self.previous.take().ok_or_else(|| format!("hook {name} has no previous version to roll back to"))?;
        let restored = prev.version;
        let replaced = self.current.as_ref().map_or(0, |c| c.version);
        self.previous = self.current.take();
        self.current = Some(prev);
        Ok((restored, replaced))
    }

    /// The latest spec, active or not.
    pub fn latest(&self) -> Option<&HookSpec> {
        self.current.as_ref().or(self.previous.as_ref())
    }
}

fn same_definition(a: &HookSpec, b: &HookSpec) -> bool {
    a.kind == b.kind
        && a.stage == b.stage
        && a.prefix == b.prefix
        && a.sha256 == b.sha256
        && a.fail_policy == b.fail_policy
        && a.limits == b.limits
}

/// How long a hook that hit a limit stays in the slow lane.
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// Expected hook run time worth a hand-off to one more worker.
const CHUNK_WORK: Duration = Duration::from_micros(200);

/// Inline judging: a batch whose hooks are all Wasm, proven fast (at least
/// [`INLINE_MIN_CALLS`] calls here, averaging under [`INLINE_MAX_AVG`]) and
/// short-deadlined (at most [`INLINE_MAX_DEADLINE`]) is judged on the
/// calling async thread when its expected run time is under
/// [`INLINE_MAX_BATCH`]. The hand-off to a worker thread costs more than
/// such calls; Wasm's epoch deadline bounds how long one call can hold the
/// thread (Lua always goes to the workers: a Luau call stuck in a C
/// function is not interruptible).
const INLINE_MIN_CALLS: u64 = 16;
const INLINE_MAX_AVG: Duration = Duration::from_micros(50);
const INLINE_MAX_DEADLINE: Duration = Duration::from_millis(20);
const INLINE_MAX_BATCH: Duration = Duration::from_millis(1);

/// How long a write waits for a hook worker to start its hooks.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// How often a shadow that recently broke a limit still runs.
pub const SHADOW_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Disagreements a shadow's statistics keep (the most recent).
const RECENT_DISAGREEMENTS: usize = 5;

/// Longest key kept in a disagreement record, in bytes.
const DISAGREEMENT_KEY_BYTES: usize = 128;

/// A hook version that judged a write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HookUse {
    pub name: String,
    pub version: u64,
}

/// What the hooks decided about a write that may go ahead; it goes into the
/// write's log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// The hooks that ran, in order.
    pub used: Vec<HookUse>,
    /// The stored version a hook read (0: absent): the write applies only if
    /// the key still holds it, else the leader judges it again.
    pub guard: Option<u64>,
    /// What a ttl hook decided; `None`: keep the client's TTL.
    pub ttl: Option<TtlChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlChoice {
    NoExpiry,
    Ms(u64),
}

/// Why a write may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeError {
    /// A hook rejected it, or failed under its fail-closed policy.
    #[error("{0}")]
    Rejected(String),
    /// The hook workers are gone (the node is stopping).
    #[error("{0}")]
    Unavailable(String),
}

/// One write, owned, as the hooks see it.
pub struct Write {
    pub op: WriteOp,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub now_ms: u64,
    pub client_ttl_ms: Option<u64>,
    /// Reads the live stored value (blocking).
    pub old_value: OldValueLoader,
}

/// Call statistics of one hook name on this node.
pub struct HookStats {
    pub calls: AtomicU64,
    pub rejects: AtomicU64,
    pub errors: AtomicU64,
    pub limit_hits: AtomicU64,
    pub fail_open_passes: AtomicU64,
    /// When the hook last broke a limit (ms since the epoch; 0: never).
    last_limit_ms: AtomicU64,
    /// The registry's "any hook last broke a limit", updated with ours.
    any_limit_ms: Arc<AtomicU64>,
    /// Moving average of a call's run time, in ns (for sizing batches).
    avg_ns: AtomicU64,
    latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// The same run times, exported on `/metrics`.
    exported_latency: metrics::Histogram,
}

/// A partition function whose calls are recorded like a hook's.
struct CountedPartitioner {
    inner: Arc<dyn CompiledPartitioner>,
    stats: Arc<HookStats>,
}

impl CompiledPartitioner for CountedPartitioner {
    fn spec(&self) -> &HookSpec {
        self.inner.spec()
    }

    fn routing_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HookFailure> {
        let started = std::time::Instant::now();
        let routed = self.inner.routing_key(key);
        let result = match &routed {
            Ok(_) => Ok(Decision::Accept),
            Err(e) => Err(e.clone()),
        };
        self.stats.record(&CallReport { result, old_version_read: None, elapsed: started.elapsed() });
        routed
    }
}

/// A copy of [`HookStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub rejects: u64,
    pub errors: u64,
    pub limit_hits: u64,
    pub fail_open_passes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl HookStats {
    fn new(name: &str, any_limit_ms: Arc<AtomicU64>) -> HookStats {
        HookStats {
            calls: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
            fail_open_passes: AtomicU64::new(0),
            last_limit_ms: AtomicU64::new(0),
            any_limit_ms,
            avg_ns: AtomicU64::new(0),
            latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("constant histogram bounds are valid"),
            ),
            exported_latency: metrics::histogram!(crate::HOOK_DURATION, "hook" => name.to_string()),
        }
    }

    fn record(&self, report: &CallReport) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match &report.result {
            Ok(Decision::Reject(_)) => {
                self.rejects.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(f) if f.is_limit() => {
                self.limit_hits.fetch_add(1, Ordering::Relaxed);
                let now = now_ms();
                self.last_limit_ms.store(now, Ordering::Relaxed);
                self.any_limit_ms.store(now, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut h) = self.latency_us.lock() {
            h.saturating_record(report.elapsed.as_micros().max(1) as u64);
        }
        self.exported_latency.record(report.elapsed.as_secs_f64());
        // A racy read-modify-write is fine: this only sizes batches.
        let ns = report.elapsed.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.avg_ns.load(Ordering::Relaxed);
        self.avg_ns.store(if avg == 0 { ns } else { avg - avg / 16 + ns / 16 }, Ordering::Relaxed);
    }

    /// Broke a limit within [`SUSPECT_FOR`].
    fn is_suspect(&self, now: u64) -> bool {
        let last = self.last_limit_ms.load(Ordering::Relaxed);
        last != 0 && now.saturating_sub(last) < SUSPECT_FOR.as_millis() as u64
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let (p50_us, p99_us, max_us) = match self.latency_us.lock() {
            Ok(h) if !h.is_empty() => (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
            _ => (0, 0, 0),
        };
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            limit_hits: self.limit_hits.load(Ordering::Relaxed),
            fail_open_passes: self.fail_open_passes.load(Ordering::Relaxed),
            p50_us,
            p99_us,
            max_us,
        }
    }
}

/// One write on which a shadow decided differently from its active version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The key (lossy UTF-8, cut at 128 bytes).
    pub key: String,
    /// What the active version decided, e.g. `accept`, `reject: too big`.
    pub active: String,
    pub shadow: String,
    pub at_ms: u64,
}

/// Calls of one shadow version on this node and how they compared.
pub struct ShadowStats {
    /// Calls, errors, limit hits and run time, as for an active hook.
    calls: HookStats,
    agreements: AtomicU64,
    disagreements: AtomicU64,
    /// Writes it skipped while throttled after breaking a limit.
    skipped: AtomicU64,
    /// When it last ran while throttled (ms since the epoch).
    last_probe_ms: AtomicU64,
    recent: Mutex<std::collections::VecDeque<Disagreement>>,
}

/// A copy of [`ShadowStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowSnapshot {
    pub calls: StatsSnapshot,
    pub agreements: u64,
    pub disagreements: u64,
    pub skipped: u64,
    /// Oldest first.
    pub recent: Vec<Disagreement>,
}

impl ShadowStats {
    fn new(name: &str) -> ShadowStats {
        ShadowStats {
            // Its own limit flag: a shadow's limits never make writes suspect.
            calls: HookStats::new(&format!("{name} (shadow)"), Arc::new(AtomicU64::new(0))),
            agreements: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            recent: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Whether the shadow runs on this write: always, unless it broke a
    /// limit lately; then once per [`SHADOW_PROBE_EVERY`].
    fn should_run(&self, now: u64) -> bool {
        if !self.calls.is_suspect(now) {
            return true;
        }
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= SHADOW_PROBE_EVERY.as_millis() as u64;
        if due && self.last_probe_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return true;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Counts one shadow call against what the active version decided.
    fn compare(&self, key: &[u8], active: &Result<Decision, HookFailure>, shadow: &CallReport) {
        self.calls.record(shadow);
        let Ok(decided) = &shadow.result else { return };
        if active.as_ref().is_ok_and(|a| same_outcome(a, decided)) {
            self.agreements.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.disagreements.fetch_add(1, Ordering::Relaxed);
        let key = String::from_utf8_lossy(&key[..key.len().min(DISAGREEMENT_KEY_BYTES)]).into_owned();
        let record = Disagreement { key, active: shown(active), shadow: shown(&shadow.result), at_ms: now_ms() };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_DISAGREEMENTS {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    pub fn snapshot(&self) -> ShadowSnapshot {
        ShadowSnapshot {
            calls: self.calls.snapshot(),
            agreements: self.agreements.load(Ordering::Relaxed),
            disagreements: self.disagreements.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            recent: self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
        }
    }
}

/// Whether two decisions come to the same thing for the write: both accept,
/// both reject (whatever the reasons), or the same TTL choice.
fn same_outcome(a: &Decision, b: &Decision) -> bool {
    match (a, b) {
        (Decision::Reject(_), Decision::Reject(_)) => true,
        _ => a == b,
    }
}

/// A call's result as shown to operators.
fn shown(result: &Result<Decision, HookFailure>) -> String {
    match result {
        Ok(Decision::Accept) => "accept".into(),
        Ok(Decision::Reject(reason)) => format!("reject: {}", super::truncate(reason, 200)),
        Ok(Decision::KeepTtl) => "keep-ttl".into(),
        Ok(Decision::NoExpiry) => "no-expiry".into(),
        Ok(Decision::TtlMs(ms)) => format!("ttl {ms} ms"),
        Err(f) => format!("failed: {f}"),
    }
}

/// The compiled hooks active at one point of the meta log, in run order:
/// validate hooks, then ttl hooks; within a stage the longest prefix first,
/// then by name.
#[derive(Default)]
pub struct HookSet {
    hooks: Vec<Arc<dyn CompiledHook>>,
    /// Shadow versions by hook name.
    shadows: HashMap<String, Arc<dyn CompiledHook>>,
}

impl HookSet {
    fn new(mut hooks: Vec<Arc<dyn CompiledHook>>, shadows: HashMap<String, Arc<dyn CompiledHook>>) -> HookSet {
        hooks.sort_by(|a, b| {
            let (a, b) = (a.spec(), b.spec());
            (a.stage, std::cmp::Reverse(a.prefix.len()), &a.name).cmp(&(
                b.stage,
                std::cmp::Reverse(b.prefix.len()),
                &b.name,
            ))
        });
        HookSet { hooks, shadows }
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The active hook called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn CompiledHook>> {
        self.hooks.iter().find(|h| h.spec().name == name)
    }

    /// The shadow version of hook `name` this set runs.
    pub fn shadow(&self, name: &str) -> Option<&Arc<dyn CompiledHook>> {
        self.shadows.get(name)
    }

    /// The hooks a write runs, in order (ttl hooks only run on puts).
    fn matching(&self, op: WriteOp, key: &[u8]) -> Vec<Arc<dyn CompiledHook>> {
        self.hooks
            .iter()
            .filter(|h| {
                let stage = h.spec().stage;
                h.spec().applies_to(key) && (stage == Stage::Validate || (op == WriteOp::Put && stage == Stage::Ttl))
            })
            .cloned()
            .collect()
    }
}

/// This node's hooks: the active set, the workers that run them and their statistics.
pub struct HookRegistry {
    set: ArcSwap<HookSet>,
    pool: HookPool,
    /// Permits to run suspect hooks: every worker but one.
    slow_lane: Arc<tokio::sync::Semaphore>,
    /// When any hook here last broke a limit (ms since the epoch; 0: never),
    /// so the per-write suspect check is one load while no hook misbehaves.
    last_limit_ms: Arc<AtomicU64>,
    stats: Mutex<HashMap<String, Arc<HookStats>>>,
    /// Shadow statistics by (hook name, version).
    shadow_stats: Mutex<HashMap<String, HashMap<u64, Arc<ShadowStats>>>>,
    /// Bumped on every install, so deploys can wait for the swap.
    installed: watch::Sender<u64>,
}

impl HookRegistry {
    pub fn new() -> std::io::Result<HookRegistry> {
        let pool = HookPool::for_machine()?;
        Ok(HookRegistry {
            set: ArcSwap::from_pointee(HookSet::default()),
            slow_lane: Arc::new(tokio::sync::Semaphore::new(pool.threads().saturating_sub(1).max(1))),
            last_limit_ms: Arc::new(AtomicU64::new(0)),
            pool,
            stats: Mutex::new(HashMap::new()),
            shadow_stats: Mutex::new(HashMap::new()),
            installed: watch::channel(0).0,
        })
    }

    pub fn current(&self) -> Arc<HookSet> {
        self.set.load_full()
    }

    /// Replaces the active set with the active versions in `records`.
    /// Hooks whose version is unchanged keep their compiled form; new
    /// versions are only compiled ([`Runtime::load`](super::Runtime::load)):
    /// deploy already ran them. A hook that fails to compile here (this
    /// node's runtime differs from the deploying node's) keeps its previous
    /// version active and is logged.
    pub fn install(&self, records: &[HookRecord]) {
        let old = self.current();
        let mut hooks = Vec::new();
        for spec in records.iter().filter_map(|r| r.current.as_ref()) {
            if let Some(h) = old.get(&spec.name).filter(|h| h.spec() == spec) {
                hooks.push(h.clone());
                continue;
            }
            // A promoted shadow is already compiled.
            if let Some(h) = old.shadow(&spec.name).filter(|h| h.spec() == spec) {
                tracing::info!(hook = %spec.name, version = spec.version, stage = %spec.stage, "hook activated (promoted from shadow)");
                hooks.push(h.clone());
                continue;
            }
            match runtime_for(spec.kind).load(spec) {
                Ok(h) => {
                    tracing::info!(hook = %spec.name, version = spec.version, stage = %spec.stage, "hook activated");
                    hooks.push(h);
                }
                Err(e) => {
                    tracing::error!(hook = %spec.name, version = spec.version, error = %e, "hook does not compile on this node; keeping the previous version");
                    if let Some(h) = old.get(&spec.name) {
                        hooks.push(h.clone());
                    }
                }
            }
        }
        let mut shadows = HashMap::new();
        for spec in records.iter().filter_map(|r| r.shadow.as_ref()) {
            if let Some(h) = old.shadow(&spec.name).filter(|h| h.spec() == spec) {
                shadows.insert(spec.name.clone(), h.clone());
                continue;
            }
            match runtime_for(spec.kind).load(spec) {
                Ok(h) => {
                    tracing::info!(hook = %spec.name, version = spec.version, "shadow version running");
                    shadows.insert(spec.name.clone(), h);
                }
                Err(e) => {
                    tracing::error!(hook = %spec.name, version = spec.version, error = %e, "shadow version does not compile on this node; not running it");
                }
            }
        }
        for h in old.hooks.iter().filter(|h| !hooks.iter().any(|n| n.spec().name == h.spec().name)) {
            tracing::info!(hook = %h.spec().name, version = h.spec().version, "hook deactivated");
        }
        self.set.store(Arc::new(HookSet::new(hooks, shadows)));
        self.installed.send_modify(|g| *g += 1);
    }

    /// Waits until the active set satisfies `done` (a deploy waiting for its
    /// version to be swapped in here), at most `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&HookSet) -> bool) -> bool {
        let mut rx = self.installed.subscribe();
        let wait = async {
            loop {
                if done(&self.current()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && done(&self.current())
    }

    /// Called for every hook of every judged write: a lookup by `&str`
    /// first, so only a hook's first call allocates its name.
    fn stats_for(&self, name: &str) -> Arc<HookStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stats.get(name) {
            return s.clone();
        }
        stats
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(HookStats::new(name, self.last_limit_ms.clone())))
            .clone()
    }

    /// `f`, counting its calls in this node's statistics under its name:
    /// partition functions run inline on the request path, not through the
    /// registry's workers, so they are counted here.
    pub fn counting_partitioner(&self, f: Arc<dyn CompiledPartitioner>) -> Arc<dyn CompiledPartitioner> {
        let stats = self.stats_for(&f.spec().name);
        Arc::new(CountedPartitioner { inner: f, stats })
    }

    /// This node's statistics for the hook called `name`.
    pub fn stats(&self, name: &str) -> StatsSnapshot {
        self.stats_for(name).snapshot()
    }

    fn shadow_stats_for(&self, spec: &HookSpec) -> Arc<ShadowStats> {
        let mut stats = self.shadow_stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stats.get(&spec.name).and_then(|versions| versions.get(&spec.version)) {
            return s.clone();
        }
        let versions = stats.entry(spec.name.clone()).or_default();
        versions.entry(spec.version).or_insert_with(|| Arc::new(ShadowStats::new(&spec.name))).clone()
    }

    /// This node's statistics for version `version` of hook `name` as a shadow.
    pub fn shadow_stats(&self, name: &str, version: u64) -> ShadowSnapshot {
        let stats = self.shadow_stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.get(name).and_then(|versions| versions.get(&version)).map(|s| s.snapshot()).unwrap_or_default()
    }

    /// Statistics of every shadow version run on this node: (name, version, stats).
    pub fn all_shadow_stats(&self) -> Vec<(String, u64, ShadowSnapshot)> {
        let stats = self.shadow_stats.lock().unwrap_or_else(|p| p.into_inner());
        stats
            .iter()
            .flat_map(|(name, versions)| versions.iter().map(move |(v, s)| (name.clone(), *v, s.snapshot())))
            .collect()
    }

    /// One write's job: the hooks that judge it and their shadows.
    fn job(&self, set: &HookSet, write: Write) -> Option<Job> {
        let hooks = set.matching(write.op, &write.key);
        if hooks.is_empty() {
            return None;
        }
        let stats = hooks.iter().map(|h| self.stats_for(&h.spec().name)).collect();
        let shadows = hooks
            .iter()
            .map(|h| set.shadow(&h.spec().name).map(|s| (s.clone(), self.shadow_stats_for(s.spec()))))
            .collect();
        Some(Job { hooks, stats, shadows, write })
    }

    /// Statistics of every hook name called on this node, removed hooks included.
    pub fn all_stats(&self) -> Vec<(String, StatsSnapshot)> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.iter().map(|(name, s)| (name.clone(), s.snapshot())).collect()
    }

    /// Whether a hook that applies to this write recently broke a limit
    /// (see [`SUSPECT_FOR`]): such writes are judged one by one through
    /// [`HookRegistry::judge`], never in a batch.
    pub fn has_suspect(&self, op: WriteOp, key: &[u8]) -> bool {
        let now = now_ms();
        let last = self.last_limit_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= SUSPECT_FOR.as_millis() as u64 {
            return false;
        }
        self.current().matching(op, key).iter().any(|h| self.stats_for(&h.spec().name).is_suspect(now))
    }

    /// Runs every hook that applies to `write`, in order, on a worker.
    /// `patience` bounds the wait for the slow lane when a suspect hook is
    /// among them.
    pub async fn judge(&self, write: Write, patience: Duration) -> Result<Judgement, JudgeError> {
        let Some(job) = self.job(&self.current(), write) else { return Ok(Judgement::default()) };
        let now = now_ms();
        let suspect = job.hooks.iter().zip(&job.stats).find(|(_, s)| s.is_suspect(now)).map(|(h, _)| h.spec().clone());
        let _lane = match &suspect {
            None => None,
            Some(spec) => match tokio::time::timeout(patience, self.slow_lane.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) => return Err(JudgeError::Unavailable("the node's hook workers have stopped".into())),
                Err(_) => {
                    return Err(JudgeError::Rejected(format!(
                        "hook {} v{} recently exceeded its limits and its calls are throttled; no slot freed up within {patience:?}, so the write is rejected (fail-closed)",
                        spec.name, spec.version
                    )))
                }
            },
        };
        self.run_jobs(vec![job]).await.pop().unwrap_or_else(|| Ok(Judgement::default()))
    }

    /// Judges several writes (a write batch on its way into one Raft
    /// entry) with one worker hand-off per chunk rather than per write. The
    /// writes that have hooks are split into chunks of about
    /// [`CHUNK_WORK`] of expected run time (by each hook's recent average),
    /// at most one per worker. Results are in the order of `writes`.
    pub async fn judge_many(&self, writes: Vec<Write>) -> Vec<Result<Judgement, JudgeError>> {
        let set = self.current();
        let mut results: Vec<Option<Result<Judgement, JudgeError>>> = Vec::with_capacity(writes.len());
        let mut jobs = Vec::new();
        let mut expected_ns = 0u64;
        for (i, write) in writes.into_iter().enumerate() {
            let Some(job) = self.job(&set, write) else {
                results.push(Some(Ok(Judgement::default())));
                continue;
            };
            results.push(None);
            expected_ns += job.expected_ns();
            jobs.push((i, job));
        }
        if expected_ns < INLINE_MAX_BATCH.as_nanos() as u64 && jobs.iter().all(|(_, j)| runs_inline(j)) {
            for (i, job) in jobs {
                results[i] = Some(job.run());
            }
            return results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(JudgeError::Unavailable("a write was not judged".into()))))
                .collect();
        }
        let n_chunks = (expected_ns / CHUNK_WORK.as_nanos() as u64 + 1).min(self.pool.threads() as u64) as usize;
        let mut chunks: Vec<(Vec<usize>, Vec<Job>)> = (0..n_chunks).map(|_| Default::default()).collect();
        for (n, (i, job)) in jobs.into_iter().enumerate() {
            let chunk = &mut chunks[n % n_chunks];
            chunk.0.push(i);
            chunk.1.push(job);
        }
        let runs = chunks.into_iter().filter(|(idx, _)| !idx.is_empty()).map(|(idx, jobs)| async move {
            let out = self.run_jobs(jobs).await;
            (idx, out)
        });
        for (idx, out) in futures::future::join_all(runs).await {
            for (i, r) in idx.into_iter().zip(out) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(JudgeError::Unavailable("a write was not judged".into()))))
            .collect()
    }

    /// Runs the jobs one after the other on one worker. The caller allows
    /// the sum of their deadlines once a worker has started them.
    async fn run_jobs(&self, jobs: Vec<Job>) -> Vec<Result<Judgement, JudgeError>> {
        let n = jobs.len();
        let deadline: Duration = jobs.iter().map(Job::deadline).sum();
        let run = move || jobs.iter().map(Job::run).collect::<Vec<_>>();
        match self.pool.run(QUEUE_WAIT, deadline, run).await {
            Ok(r) => r,
            Err(e @ (PoolError::Busy(_) | PoolError::Deadline(_))) => {
                let msg = format!("the hooks on this write could not run: {e}; the write is rejected");
                vec![Err(JudgeError::Rejected(msg)); n]
            }
            Err(PoolError::Stopped) => {
                vec![Err(JudgeError::Unavailable("the node's hook workers have stopped".into())); n]
            }
        }
    }

    /// Runs one hook on one write without writing anything (`Hooks.Test`).
    pub async fn dry_run(&self, hook: Arc<dyn CompiledHook>, input: Write) -> Result<CallReport, JudgeError> {
        let deadline = hook.spec().limits.timeout;
        let run = move || {
            let view = HookInput {
                op: input.op,
                key: &input.key,
                value: input.value.as_deref(),
                now_ms: input.now_ms,
                client_ttl_ms: input.client_ttl_ms,
            };
            hook.call(&view, &input.old_value)
        };
        self.pool.run(QUEUE_WAIT, deadline, run).await.map_err(|e| JudgeError::Rejected(e.to_string()))
    }

    /// Stops the workers (node shutdown).
    pub fn stop(&self) {
        self.pool.stop();
    }
}

/// Whether `job` may be judged on the calling thread (see [`INLINE_MAX_AVG`]).
fn runs_inline(job: &Job) -> bool {
    let fast = |spec: &HookSpec, st: &HookStats| {
        spec.kind == super::HookKind::Wasm
            && spec.limits.timeout <= INLINE_MAX_DEADLINE
            && st.calls.load(Ordering::Relaxed) >= INLINE_MIN_CALLS
            && st.avg_ns.load(Ordering::Relaxed) < INLINE_MAX_AVG.as_nanos() as u64
    };
    job.hooks.iter().zip(&job.stats).all(|(h, st)| fast(h.spec(), st))
        && job.shadows.iter().flatten().all(|(h, st)| fast(h.spec(), &st.calls))
}

/// One write, the hooks that judge it, and their shadow versions (if any).
struct Job {
    hooks: Vec<Arc<dyn CompiledHook>>,
    stats: Vec<Arc<HookStats>>,
    shadows: Vec<Option<Shadow>>,
    write: Write,
}

/// A shadow version and its statistics.
type Shadow = (Arc<dyn CompiledHook>, Arc<ShadowStats>);

impl Job {
    /// Expected run time, by each hook's recent average.
    fn expected_ns(&self) -> u64 {
        let active: u64 = self.stats.iter().map(|s| s.avg_ns.load(Ordering::Relaxed)).sum();
        let shadows: u64 = self.shadows.iter().flatten().map(|(_, s)| s.calls.avg_ns.load(Ordering::Relaxed)).sum();
        active + shadows
    }

    /// The longest the job may run: every hook's deadline, shadows included.
    fn deadline(&self) -> Duration {
        let active: Duration = self.hooks.iter().map(|h| h.spec().limits.timeout).sum();
        let shadows: Duration = self.shadows.iter().flatten().map(|(h, _)| h.spec().limits.timeout).sum();
        active + shadows
    }

    fn run(&self) -> Result<Judgement, JudgeError> {
        run_hooks(&self.hooks, &self.stats, &self.shadows, &self.write)
    }
}

/// Runs `hooks` on one write (on a worker thread), each followed by its
/// shadow version if it has one. The stored value is read at most once and
/// shared by every hook of the write.
fn run_hooks(
    hooks: &[Arc<dyn CompiledHook>],
    stats: &[Arc<HookStats>],
    shadows: &[Option<Shadow>],
    w: &Write,
) -> Result<Judgement, JudgeError> {
    let loader = read_once(w.old_value.clone());
    let input = HookInput {
        op: w.op,
        key: &w.key,
        value: w.value.as_deref(),
        now_ms: w.now_ms,
        client_ttl_ms: w.client_ttl_ms,
    };
    let mut out = Judgement::default();
    for ((hook, stats), shadow) in hooks.iter().zip(stats).zip(shadows) {
        let spec = hook.spec();
        if spec.stage == Stage::Ttl && out.ttl.is_some() {
            // The most specific ttl hook that decided wins; the rest don't run.
            continue;
        }
        let report = hook.call(&input, &loader);
        stats.record(&report);
        if let Some((shadow, shadow_stats)) = shadow {
            // Compared and counted, never enforced: its decision, errors and
            // the version it read stay here.
            if shadow_stats.should_run(now_ms()) {
                shadow_stats.compare(&w.key, &report.result, &shadow.call(&input, &loader));
            }
        }
        out.used.push(HookUse { name: spec.name.clone(), version: spec.version });
        if report.old_version_read.is_some() {
            out.guard = report.old_version_read;
        }
        let outcome = match (spec.stage, report.result) {
            (Stage::Validate, Ok(Decision::Accept)) | (Stage::Ttl, Ok(Decision::KeepTtl)) => Ok(()),
            (Stage::Validate, Ok(Decision::Reject(reason))) => {
                return Err(JudgeError::Rejected(format!(
                    "rejected by hook {} v{}: {reason}",
                    spec.name, spec.version
                )));
            }
            (Stage::Ttl, Ok(Decision::NoExpiry)) => {
                out.ttl = Some(TtlChoice::NoExpiry);
                Ok(())
            }
            (Stage::Ttl, Ok(Decision::TtlMs(ms))) => {
                out.ttl = Some(TtlChoice::Ms(ms));
                Ok(())
            }
            (stage, Ok(other)) => Err(HookFailure::Error(format!("a {stage} hook returned {other:?}"))),
            (_, Err(f)) => Err(f),
        };
        if let Err(failure) = outcome {
            match spec.fail_policy {
                FailPolicy::Closed => {
                    tracing::debug!(hook = %spec.name, version = spec.version, error = %failure, "hook failed; write rejected");
                    return Err(JudgeError::Rejected(format!(
                        "hook {} v{} {failure}; the write is rejected (fail-closed)",
                        spec.name, spec.version
                    )));
                }
                FailPolicy::Open => {
                    stats.fail_open_passes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(hook = %spec.name, version = spec.version, error = %failure, "fail-open hook failed; write let through");
                }
            }
        }
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch, by this node's clock: when a shadow
/// disagreed, and the shadow's sampling clock. (The clock stamped into log
/// entries is `ringkv::ids::now_ms`, the same reading.)
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HookKind, HookLimits, OldValue};

    fn lua(name: &str, version: u64, body: &str) -> HookSpec {
        HookSpec {
            name: name.into(),
            kind: HookKind::Lua,
            stage: Stage::Validate,
            prefix: Vec::new(),
            source: format!("function validate(key, value, ctx)\n{body}\nend").into_bytes(),
            version,
            sha256: body.to_string(),
            fail_policy: FailPolicy::Closed,
            limits: HookLimits { timeout: Duration::from_secs(5), ..HookLimits::default() },
            deployed_at_ms: 0,
        }
    }

    /// A record with `active` deployed and `shadow` as its shadow version.
    fn record(active: HookSpec, shadow: Option<HookSpec>) -> HookRecord {
        let mut r = HookRecord::default();
        r.deploy(active).expect("deploy");
        if let Some(s) = shadow {
            r.deploy_shadow(s).expect("shadow");
        }
        r
    }

    fn put(key: &str, value: &str) -> Write {
        Write {
            op: WriteOp::Put,
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
            now_ms: 1,
            client_ttl_ms: None,
            old_value: Arc::new(|| Ok(Some(OldValue { value: b"old".to_vec(), version: 4 }))),
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_shadow_decides_nothing_and_adds_nothing_to_the_write() {
        let registry = HookRegistry::new().expect("registry");
        let shadow = lua("h", 0, "local _ = ctx.old_version\nreturn false, 'shadow says no'");
        registry.install(&[record(lua("h", 0, "return true"), Some(shadow))]);
        let judged = registry.judge(put("k", "v"), PATIENCE).await.expect("the active version accepts");
        assert_eq!(judged.used, vec![HookUse { name: "h".into(), version: 1 }], "only the active version is stamped");
        assert_eq!(judged.guard, None, "the shadow read the old version; the write must not be guarded on it");

        // The other way round: the active rejection stands.
        registry.install(&[record(lua("h", 0, "return false, 'active says no'"), Some(lua("h", 0, "return true")))]);
        let refused = registry.judge(put("k", "v"), PATIENCE).await;
        assert_eq!(refused, Err(JudgeError::Rejected("rejected by hook h v1: active says no".into())));
        let shadow = registry.shadow_stats("h", 2);
        assert_eq!((shadow.calls.calls, shadow.agreements, shadow.disagreements), (2, 0, 2));
    }

    #[tokio::test]
    async fn agreements_and_disagreements_are_counted_exactly() {
        let registry = HookRegistry::new().expect("registry");
        // The active version refuses values over 3 bytes, the shadow over 5.
        let active = lua("size", 0, "return #value <= 3, 'too big'");
        let shadow = lua("size", 0, "return #value <= 5, 'way too big'");
        registry.install(&[record(active, Some(shadow))]);
        let values = ["a", "abcd", "abcdef", "abc", "abcde", "abcd", "x", "abcdefgh", "abcd", "abcde"];
        let writes: Vec<Write> = values.iter().enumerate().map(|(i, v)| put(&format!("k{i}"), v)).collect();
        // In one batch, as the write batcher judges them.
        let verdicts = registry.judge_many(writes).await;
        let accepted = verdicts.iter().filter(|v| v.is_ok()).count();
        assert_eq!(accepted, 3, "the active version alone decides");
        let stats = registry.shadow_stats("size", 2);
        // Agree: a, abcdef, abc, x, abcdefgh. Disagree (4 or 5 bytes): the rest.
        assert_eq!((stats.calls.calls, stats.agreements, stats.disagreements), (10, 5, 5));
        let keys: Vec<&str> = stats.recent.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k4", "k5", "k8", "k9"], "the last five, oldest first");
        let d = &stats.recent[0];
        assert_eq!((d.active.as_str(), d.shadow.as_str()), ("reject: too big", "accept"));
    }

    #[tokio::test]
    async fn a_shadow_breaking_its_limits_is_throttled_and_never_fails_the_write() {
        let registry = HookRegistry::new().expect("registry");
        let mut runaway = lua("h", 0, "while true do end");
        runaway.limits.timeout = Duration::from_millis(20);
        registry.install(&[record(lua("h", 0, "return true"), Some(runaway))]);
        for i in 0..6 {
            let judged = registry.judge(put(&format!("k{i}"), "v"), PATIENCE).await;
            assert!(judged.is_ok(), "write {i}: {judged:?}");
        }
        let s = registry.shadow_stats("h", 2);
        assert!(s.calls.limit_hits >= 1, "{s:?}");
        assert_eq!(s.calls.limit_hits + s.skipped, 6, "every write ran the shadow or skipped it: {s:?}");
        assert!(!registry.has_suspect(WriteOp::Put, b"k"), "a shadow's limits never make its writes suspect");
    }

    #[tokio::test]
    async fn a_promotion_is_atomic_for_every_write() {
        let registry = Arc::new(HookRegistry::new().expect("registry"));
        let before = record(lua("h", 0, "return true"), Some(lua("h", 0, "return true")));
        let mut after = before.clone();
        assert_eq!(after.promote("h"), Ok((2, 1)));
        registry.install(std::slice::from_ref(&before));
        let swapper = {
            let registry = registry.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    registry.install(std::slice::from_ref(if i % 2 == 0 { &after } else { &before }));
                }
            })
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let judged = registry.judge(put("k", "v"), PATIENCE).await.expect("accepted");
            assert_eq!(judged.used.len(), 1, "exactly one active version judged the write: {:?}", judged.used);
            seen.insert(judged.used[0].version);
        }
        swapper.join().expect("swapper");
        assert!(seen.iter().all(|v| *v == 1 || *v == 2), "{seen:?}");
    }

    #[test]
    fn shadow_records_deploy_promote_and_remove() {
        let mut r = HookRecord::default();
        let no_active = r.deploy_shadow(lua("h", 0, "return true"));
        assert!(no_active.expect_err("refused").contains("has no active version to shadow"));
        r.deploy(lua("h", 0, "return true")).expect("deploy");
        let mut ttl = lua("h", 0, "return true");
        ttl.stage = Stage::Ttl;
        assert!(r.deploy_shadow(ttl).expect_err("refused").contains("is a validate hook; its shadow must be one too"));
        let mut prefixed = lua("h", 0, "return true");
        prefixed.prefix = b"p/".to_vec();
        assert!(r.deploy_shadow(prefixed).expect_err("refused").contains("same prefix"));
        assert_eq!(r.deploy_shadow(lua("h", 0, "return 1 == 1")), Ok((2, 0)));
        assert_eq!(r.deploy_shadow(lua("h", 0, "return 1 == 1")), Ok((2, 2)), "the same shadow again: no change");
        assert_eq!(r.deploy_shadow(lua("h", 0, "return 2 == 2")), Ok((3, 2)));
        assert_eq!(r.remove_shadow("h"), Ok(3));
        assert!(r.promote("h").expect_err("refused").contains("no shadow version to promote"));
        r.deploy_shadow(lua("h", 0, "return 3 == 3")).expect("shadow");
        assert_eq!(r.promote("h"), Ok((4, 1)));
        assert_eq!((r.current.as_ref().map(|c| c.version), r.previous.as_ref().map(|p| p.version)), (Some(4), Some(1)));
        assert_eq!(r.rollback("h"), Ok((1, 4)), "rollback undoes a promotion");
    }

    #[test]
    fn records_stored_before_shadows_existed_still_decode() {
        #[derive(Serialize)]
        struct V1 {
            current: Option<HookSpec>,
            previous: Option<HookSpec>,
            last_version: u64,
        }
        let old = V1 { current: Some(lua("h", 3, "return true")), previous: None, last_version: 3 };
        let raw = postcard::to_allocvec(&old).expect("encode");
        let r = HookRecord::decode(&raw).expect("decode");
        assert_eq!((r.last_version, r.shadow, r.current.map(|c| c.version)), (3, None, Some(3)));
        let new = record(lua("h", 0, "return true"), Some(lua("h", 0, "return 1")));
        assert_eq!(HookRecord::decode(&postcard::to_allocvec(&new).expect("encode")).expect("decode"), new);
    }
}
