//! User hooks: validation and TTL logic that runs on the write path.
//!
//! - [`HookSpec`] is a hook as deployed: the meta group stores it, so every
//!   node runs the same set (see `registry`).
//! - A [`Runtime`] turns a spec into a [`CompiledHook`]: Lua scripts
//!   (`lua`) and WebAssembly modules (`wasm`, ABI in `guest-sdk/ABI.md`).
//!   A Wasm module can also be the cluster's partition function
//!   ([`CompiledPartitioner`]); the cluster keeps at most one active
//!   (`cluster::partitioning`).
//! - Hooks run on the shard leader before the write is proposed, on a pool
//!   of worker threads (`pool`), each call under a memory limit, an
//!   instruction budget and a wall-clock deadline. What they decide (the
//!   final TTL, the hook versions used) goes into the log entry, so replicas
//!   never run hooks.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod logging;
pub mod lua;
pub mod pool;
pub mod registry;
pub mod wasm;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hook call run time, by `hook` (recorded by the registry; described with
/// every other family in `ringkv::telemetry`).
pub const HOOK_DURATION: &str = "ringkv_hook_duration_seconds";

pub use registry::{
    Disagreement, HookRecord, HookRegistry, HookSet, HookUse, JudgeError, Judgement, ShadowSnapshot, StatsSnapshot,
    TtlChoice, Write,
};

/// Where on the write path a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// Accepts or rejects a put or delete.
    Validate,
    /// Decides when a put key expires.
    Ttl,
    /// Maps a key to its routing key (Wasm only); cluster-wide, at most one.
    Partition,
}

impl Stage {
    /// The function a script must define for this stage.
    pub fn function_name(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Ttl => "ttl",
            Stage::Partition => "partition",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function_name())
    }
}

/// The language a hook is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HookKind {
    Lua,
    Wasm,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookKind::Lua => f.write_str("lua"),
            HookKind::Wasm => f.write_str("wasm"),
        }
    }
}

/// What happens to a write when its hook fails (error, limit, deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailPolicy {
    /// Reject the write with `FAILED_PRECONDITION`. The default.
    Closed,
    /// Let the write through (as if the hook accepted it) and count it.
    Open,
}

/// Limits every call of one hook runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HookLimits {
    /// Wall-clock deadline of one call, including time inside C functions.
    pub timeout: Duration,
    /// Memory one VM may hold, in bytes.
    pub memory_bytes: usize,
    /// Interpreter steps one call may take (Luau interrupt checks: loop
    /// back-edges, calls, pattern-matching steps).
    pub instructions: u64,
}

impl Default for HookLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_millis(10), memory_bytes: 16 * 1024 * 1024, instructions: 10_000_000 }
    }
}

/// A hook as deployed. Stored in the meta group, identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    pub name: String,
    pub kind: HookKind,
    pub stage: Stage,
    /// Only keys starting with these bytes run the hook (empty: every key).
    pub prefix: Vec<u8>,
    pub source: Vec<u8>,
    /// Monotonic per name; set when the meta group applies the deploy.
    pub version: u64,
    /// Hex sha256 of `source`.
    pub sha256: String,
    pub fail_policy: FailPolicy,
    pub limits: HookLimits,
    /// The deploying node's clock, ms since the epoch.
    pub deployed_at_ms: u64,
}

impl HookSpec {
    pub fn applies_to(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }
}

/// Which kind of write a hook judges: the ABI's own record, so Lua, Wasm
/// and the registry share one type.
pub use ringkv_hook_abi::WriteOp;

/// The stored value a write would replace, as a hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldValue {
    pub value: Vec<u8>,
    pub version: u64,
}

/// Reads the live stored value of the key being written (blocking; runs
/// where the hook runs). Called at most once per write, and only if a hook
/// reads the old value or version (Lua's `ctx.old_value`/`ctx.old_version`,
/// Wasm ABI v2's `ringkv.old_value`/`ringkv.old_version`).
pub type OldValueLoader = Arc<dyn Fn() -> Result<Option<OldValue>, String> + Send + Sync>;

/// `read`, run at most once: later calls return the first call's result
/// (the hooks of one write share one read).
pub fn read_once(read: OldValueLoader) -> OldValueLoader {
    let cell = std::sync::OnceLock::new();
    Arc::new(move || cell.get_or_init(|| read()).clone())
}

/// One write as the hooks see it.
#[derive(Debug, Clone)]
pub struct HookInput<'a> {
    pub op: WriteOp,
    pub key: &'a [u8],
    /// `None` for a delete.
    pub value: Option<&'a [u8]>,
    /// The leader's clock, ms since the epoch.
    pub now_ms: u64,
    /// The TTL the client asked for, if any.
    pub client_ttl_ms: Option<u64>,
}

/// What one hook call decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// validate: the write may go ahead.
    Accept,
    /// validate: the write is refused, with the hook's reason.
    Reject(String),
    /// ttl: keep the client's TTL (or none).
    KeepTtl,
    /// ttl: the key never expires, whatever the client asked.
    NoExpiry,
    /// ttl: the key expires this many ms after the write.
    TtlMs(u64),
}

/// Why a hook call failed. Messages name the cause; the caller adds the hook's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    #[error("exceeded its deadline of {0:?}")]
    Deadline(Duration),
    #[error("exceeded its instruction budget of {0}")]
    Budget(u64),
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// A runtime error raised by the script (or a bad return value), with
    /// the script's message and line.
    #[error("raised an error: {0}")]
    Error(String),
    /// The hook could not be loaded on this worker (should not happen for a
    /// deployed hook: deploy checks it).
    #[error("could not be loaded: {0}")]
    Load(String),
}

impl HookFailure {
    /// A limit (deadline, budget, memory) rather than a script error.
    pub fn is_limit(&self) -> bool {
        matches!(self, HookFailure::Deadline(_) | HookFailure::Budget(_) | HookFailure::Memory(_))
    }
}

/// The outcome of one call, and whether the hook read the old value.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub result: Result<Decision, HookFailure>,
    /// The old value's version (0: absent) if the hook read it.
    pub old_version_read: Option<u64>,
    pub elapsed: Duration,
}

/// A hook ready to run. `call` blocks; it runs on a hook worker thread.
pub trait CompiledHook: Send + Sync {
    fn spec(&self) -> &HookSpec;
    /// Runs the hook's stage function under its limits. `old` loads the
    /// stored value on first use; the caller shares one read across the
    /// hooks of a write ([`read_once`]).
    fn call(&self, input: &HookInput<'_>, old: &OldValueLoader) -> CallReport;
}

/// Turns specs into runnable hooks.
pub trait Runtime: Send + Sync {
    /// Compiles `spec` and checks it can run: the source compiles, its top
    /// level runs within the limits and defines the stage function. Errors
    /// are user-facing (with the script's line) and stop a deploy.
    fn compile(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String>;

    /// Prepares a hook that was checked when it was deployed: compiles it
    /// without running anything. Nodes use this when their meta group
    /// applies a deploy, so activation never depends on how busy the node
    /// is (the top-level check runs under the wall-clock deadline).
    fn load(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String>;

    /// Compiles and checks a partition function (deploy). Only Wasm has them.
    fn compile_partitioner(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledPartitioner>, String> {
        Err(format!("hook {}: partition functions must be WebAssembly modules (--kind wasm)", spec.name))
    }

    /// Prepares a partition function that was checked at deploy (a node
    /// applying the meta group's change).
    fn load_partitioner(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledPartitioner>, String> {
        self.compile_partitioner(spec)
    }
}

/// A partition function ready to run. `routing_key` is called inline on the
/// request path (it costs microseconds), under the spec's limits.
pub trait CompiledPartitioner: Send + Sync {
    fn spec(&self) -> &HookSpec;
    /// The routing key of `key`: `None` means the whole key.
    fn routing_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HookFailure>;
}

/// Cuts `s` to at most `max` bytes, on a char boundary (hook messages and
/// log lines are capped).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The runtime for `kind`.
pub fn runtime_for(kind: HookKind) -> &'static dyn Runtime {
    match kind {
        HookKind::Lua => &lua::LuaRuntime,
        HookKind::Wasm => &wasm::WasmRuntime,
    }
}
