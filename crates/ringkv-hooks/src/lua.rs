//! Lua hooks: compiles hook sources to Luau bytecode at deploy, and runs
//! them in a sandboxed Luau VM owned by each hook worker thread, under each
//! hook's memory limit, instruction budget and deadline.
//!
//! Isolation: the VM's globals hold only an allowlist of the base library
//! plus `string`, `table`, `math`, `utf8`, `json` and `log`, all read-only
//! (Luau sandbox mode), as is the shared string metatable. Every call runs
//! the hook's chunk again in a fresh environment table that reads through to
//! those globals, so whatever a call defines or changes dies with the call.
//! A VM that hit a limit is dropped and the next call gets a new one.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{ChunkMode, Compiler, Function, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value, VmState};
use sha2::{Digest, Sha256};

use super::logging::{self, LogLevel};
use super::{
    truncate, CallReport, CompiledHook, Decision, HookFailure, HookInput, HookSpec, OldValue, OldValueLoader, Runtime,
    Stage,
};

/// Compiles and runs Lua (Luau) hooks.
mod json;

pub struct LuaRuntime;

impl Runtime for LuaRuntime {
    fn compile(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String> {
        refuse_partition(spec)?;
        let hook = LuaHook::new(spec.clone())?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut worker = Worker::new().map_err(|e| format!("hook {}: could not start a Lua VM: {e}", spec.name))?;
            match worker.check(&hook) {
                Ok(()) => return Ok(Arc::new(hook)),
                Err(f) if f.deadline && tries < DEPLOY_CHECK_TRIES => {}
                Err(f) => return Err(f.message),
            }
        }
    }

    fn load(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String> {
        refuse_partition(spec)?;
        Ok(Arc::new(LuaHook::new(spec.clone())?))
    }
}

/// Times a deploy runs a top level that overran its wall-clock deadline
/// before refusing it: on a loaded machine even a trivial top level can be
/// preempted past a short deadline once, while one that needs longer
/// overruns it every time (and a runaway one is stopped each time).
const DEPLOY_CHECK_TRIES: usize = 3;

/// Why a deploy check refused a hook.
struct CheckFailure {
    message: String,
    /// Only the wall-clock deadline was broken: worth another try.
    deadline: bool,
}

fn refuse_partition(spec: &HookSpec) -> Result<(), String> {
    if spec.stage == Stage::Partition {
        return Err(format!(
            "hook {}: partition functions must be WebAssembly modules (--kind wasm), not Lua",
            spec.name
        ));
    }
    Ok(())
}

/// Globals a hook may use. Everything else the VM starts with is removed,
/// notably `require`, `loadstring`, `collectgarbage`, `getfenv`/`setfenv`
/// (which would reach other functions' environments), `rawset` (which
/// bypasses `__newindex`), `newproxy`, `gcinfo` and `print`.
const ALLOWED_GLOBALS: &[&str] = &[
    "assert",
    "error",
    "getmetatable",
    "setmetatable",
    "next",
    "pairs",
    "ipairs",
    "pcall",
    "xpcall",
    "rawequal",
    "rawget",
    "rawlen",
    "select",
    "tonumber",
    "tostring",
    "type",
    "typeof",
    "unpack",
    "string",
    "table",
    "math",
    "utf8",
    "_G",
    "_VERSION",
];

/// Compiled chunks kept per worker VM; the least recently used goes first,
/// so replaced and removed hooks do not pile up.
const CACHE_CAPACITY: usize = 64;

/// The interrupt reads the clock once every this many ticks (a power of
/// two): ticks come every loop iteration, so reading it each time would
/// cost more than the loop.
const CLOCK_EVERY: u64 = 16;

/// Longest reject reason and error message kept, in bytes: both end up in
/// replies to clients.
const MAX_MESSAGE_BYTES: usize = 1024;

const DEFAULT_REJECT_REASON: &str = "rejected";

/// A hook compiled to Luau bytecode. Each worker VM loads the bytecode once
/// (see [`Worker::chunk`]) and runs it per call.
struct LuaHook {
    spec: HookSpec,
    key: HookKey,
    bytecode: Vec<u8>,
}

/// Identifies compiled code in a worker's chunk cache. The digest is of the
/// source as compiled here, so the cache never depends on `spec.sha256`
/// being right; the name is in the key because it names the chunk in errors.
#[derive(Clone, PartialEq, Eq, Hash)]
struct HookKey {
    name: Arc<str>,
    version: u64,
    stage: Stage,
    digest: [u8; 32],
}

impl LuaHook {
    fn new(spec: HookSpec) -> Result<Self, String> {
        let bytecode = Compiler::new().compile(&spec.source).map_err(|e| match e {
            // Luau's compiler reports ":LINE: message"; name the chunk the way
            // runtime errors do.
            mlua::Error::SyntaxError { message, .. } => {
                format!("syntax error: {}:{}", chunk_id(&spec.name), message.trim_start_matches(':'))
            }
            other => format!("hook {}: could not compile: {other}", spec.name),
        })?;
        let key = HookKey {
            name: Arc::from(spec.name.as_str()),
            version: spec.version,
            stage: spec.stage,
            digest: Sha256::digest(&spec.source).into(),
        };
        Ok(Self { spec, key, bytecode })
    }

    /// What the chunk is called when loaded: errors then read
    /// `[string "NAME"]:LINE: message`.
    fn chunk_name(&self) -> String {
        self.spec.name.replace('\0', "?")
    }
}

/// How Luau prints a chunk named `name` in messages.
fn chunk_id(name: &str) -> String {
    format!("[string \"{name}\"]")
}

impl CompiledHook for LuaHook {
    fn spec(&self) -> &HookSpec {
        &self.spec
    }

    fn call(&self, input: &HookInput<'_>, old: &OldValueLoader) -> CallReport {
        let started = Instant::now();
        let outcome = WORKER
            .try_with(|slot| {
                // Taken out for the call (and put back after) rather than
                // borrowed, so a loader that itself runs hooks on this thread
                // gets a VM of its own instead of a borrow panic.
                let taken = slot.borrow_mut().take();
                let mut worker = match taken {
                    Some(worker) => worker,
                    None => match Worker::new() {
                        Ok(worker) => worker,
                        Err(e) => return Outcome::failed(HookFailure::Load(format!("could not start a Lua VM: {e}"))),
                    },
                };
                let outcome = worker.call(self, input, old);
                if !outcome.discard_vm {
                    *slot.borrow_mut() = Some(worker);
                }
                outcome
            })
            .unwrap_or_else(|_| Outcome::failed(HookFailure::Load("the worker thread is exiting".into())));
        CallReport { result: outcome.result, old_version_read: outcome.old_version_read, elapsed: started.elapsed() }
    }
}

thread_local! {
    /// This thread's VM, created on first use and after a VM is dropped.
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

struct Outcome {
    result: Result<Decision, HookFailure>,
    old_version_read: Option<u64>,
    discard_vm: bool,
}

impl Outcome {
    fn failed(failure: HookFailure) -> Self {
        Self { result: Err(failure), old_version_read: None, discard_vm: false }
    }
}

/// Which limit the interrupt enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tripped {
    Deadline,
    Budget,
}

/// The running call, shared by the VM's interrupt and its `log` and `json`
/// functions (all created once per VM).
struct CallState {
    deadline: Cell<Instant>,
    budget: Cell<u64>,
    ticks: Cell<u64>,
    tripped: Cell<Option<Tripped>>,
    memory_limit: Cell<usize>,
    hook: RefCell<Option<(Arc<str>, u64)>>,
}

impl CallState {
    fn new() -> Self {
        Self {
            deadline: Cell::new(Instant::now()),
            budget: Cell::new(0),
            ticks: Cell::new(0),
            tripped: Cell::new(None),
            memory_limit: Cell::new(0),
            hook: RefCell::new(None),
        }
    }

    /// The interrupt: Luau calls it at loop back-edges, calls, and each
    /// step of pattern matching.
    fn tick(&self) -> mlua::Result<VmState> {
        // Once a limit is hit, every later tick fails too: a script that
        // catches the error with pcall cannot keep going.
        if let Some(tripped) = self.tripped.get() {
            return Err(tripped.error());
        }
        let ticks = self.ticks.get() + 1;
        self.ticks.set(ticks);
        let tripped = if ticks > self.budget.get() {
            Tripped::Budget
        } else if ticks.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline.get() {
            Tripped::Deadline
        } else {
            return Ok(VmState::Continue);
        };
        self.tripped.set(Some(tripped));
        Err(tripped.error())
    }
}

impl Tripped {
    fn error(self) -> mlua::Error {
        mlua::Error::runtime(match self {
            Tripped::Deadline => "hook exceeded its deadline",
            Tripped::Budget => "hook exceeded its instruction budget",
        })
    }
}

/// Why running a hook's code failed, before mapping to [`HookFailure`].
enum Fail {
    Lua(mlua::Error),
    /// The top level did not define the stage function.
    Missing,
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Self {
        Fail::Lua(e)
    }
}

struct Cached {
    chunk: Function,
    last_used: u64,
}

/// One sandboxed VM and what it needs to run hooks.
struct Worker {
    lua: Lua,
    state: Rc<CallState>,
    /// Metatable of each call's environment: reads fall through to the
    /// sandbox globals.
    env_mt: Table,
    /// Given to a chunk between calls, so it does not keep the last call's
    /// environment (and whatever that holds) alive.
    detached_env: Table,
    cache: HashMap<HookKey, Cached>,
    uses: u64,
    /// Heap in use after the last full collection.
    baseline_memory: usize,
}

impl Worker {
    fn new() -> mlua::Result<Self> {
        let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8, LuaOptions::default())?;
        let state = Rc::new(CallState::new());
        let globals = lua.globals();

        let mut unwanted = Vec::new();
        globals.for_each(|name: Value, _: Value| {
            let allowed = match &name {
                Value::String(s) => ALLOWED_GLOBALS.iter().any(|a| s.as_bytes().as_ref() == a.as_bytes()),
                _ => false,
            };
            if !allowed {
                unwanted.push(name);
            }
            Ok(())
        })?;
        for name in unwanted {
            globals.raw_set(name, Value::Nil)?;
        }
        // The generator is shared by every call on this VM; seeding it would
        // let one hook make another's numbers predictable.
        let math: Table = globals.raw_get("math")?;
        math.raw_set("randomseed", Value::Nil)?;
        globals.raw_set("json", json::library(&lua, &state)?)?;
        globals.raw_set("log", log_library(&lua, &state)?)?;
        // Decoded JSON arrays share this metatable; mlua already hides it
        // behind `__metatable`, read-only makes sure no call can change it.
        lua.array_metatable().set_readonly(true);
        // Makes every library table, the globals and the builtin metatables
        // (the string one included) read-only.
        lua.sandbox(true)?;

        let env_mt = lua.create_table()?;
        env_mt.raw_set("__index", globals)?;
        env_mt.raw_set("__metatable", false)?;
        env_mt.set_readonly(true);
        let detached_env = lua.create_table()?;
        detached_env.set_readonly(true);

        let ticker = Rc::clone(&state);
        lua.set_interrupt(move |_| ticker.tick());

        lua.gc_collect()?;
        let baseline_memory = lua.used_memory();
        Ok(Self { lua, state, env_mt, detached_env, cache: HashMap::new(), uses: 0, baseline_memory })
    }

    /// Deploy check: the top level runs within the limits and defines the
    /// stage function.
    fn check(&mut self, hook: &LuaHook) -> Result<(), CheckFailure> {
        let name = &hook.spec.name;
        self.begin(hook);
        let started = Instant::now();
        let ran = self.stage_function(hook);
        let elapsed = started.elapsed();
        let tripped = self.end();
        let fname = hook.spec.stage.function_name();
        let failure = match ran {
            Err(Fail::Missing) if tripped.is_none() => {
                let message = format!("hook {name} does not define function {fname}");
                return Err(CheckFailure { message, deadline: false });
            }
            Ok(_) if tripped.is_none() && elapsed <= hook.spec.limits.timeout => return Ok(()),
            Ok(_) | Err(Fail::Missing) => failure(hook, tripped, elapsed, None),
            Err(Fail::Lua(e)) => failure(hook, tripped, elapsed, Some(&e)),
        };
        let deadline = matches!(failure, HookFailure::Deadline(_));
        Err(CheckFailure { message: format!("hook {name}: its top level {failure}"), deadline })
    }

    fn call(&mut self, hook: &LuaHook, input: &HookInput<'_>, old: &OldValueLoader) -> Outcome {
        let old = OldValueCell { loader: old, loaded: RefCell::new(None), error: RefCell::new(None) };
        self.collect_if_grown(hook.spec.limits.memory_bytes);
        self.begin(hook);
        let mut started = Instant::now();
        let ran = self.stage_function(hook).and_then(|stage| {
            // A worker's first call of a version also runs the chunk's top
            // level, under the limits just set (and checked at deploy). The
            // call's own deadline and budget start after it: on a loaded
            // machine a cold worker rejected writes its hook judged in time.
            if self.state.tripped.get().is_none() {
                self.begin(hook);
                started = Instant::now();
            }
            self.invoke(&stage, input, &old)
        });
        let elapsed = started.elapsed();
        let tripped = self.end();
        let old_version_read = old.version_read();

        let limit = &hook.spec.limits;
        let result = match ran {
            Ok(returned) if tripped.is_none() && elapsed <= limit.timeout => match old.error.borrow_mut().take() {
                // The script may have caught the loader's error; it still
                // decided without the data it asked for.
                Some(e) => Err(HookFailure::Error(old_value_error(&e))),
                None => decision(hook.spec.stage, &returned).map_err(HookFailure::Error),
            },
            Ok(_) => Err(failure(hook, tripped, elapsed, None)),
            Err(Fail::Missing) => Err(failure(hook, tripped, elapsed, None)),
            Err(Fail::Lua(e)) => Err(failure(hook, tripped, elapsed, Some(&e))),
        };
        let discard_vm = matches!(&result, Err(f) if f.is_limit());
        Outcome { result, old_version_read, discard_vm }
    }

    fn begin(&self, hook: &LuaHook) {
        let limits = &hook.spec.limits;
        let now = Instant::now();
        let far = now + Duration::from_secs(24 * 3600);
        self.state.deadline.set(now.checked_add(limits.timeout).map_or(far, |d| d.min(far)));
        self.state.budget.set(limits.instructions);
        self.state.ticks.set(0);
        self.state.tripped.set(None);
        // mlua reads 0 as "no limit".
        let memory = limits.memory_bytes.max(1);
        self.state.memory_limit.set(memory);
        *self.state.hook.borrow_mut() = Some((Arc::clone(&hook.key.name), hook.spec.version));
        // Cannot fail: mlua owns this VM's allocator.
        let _ = self.lua.set_memory_limit(memory);
    }

    fn end(&self) -> Option<Tripped> {
        *self.state.hook.borrow_mut() = None;
        self.state.tripped.get()
    }

    /// Runs the hook's chunk in a fresh environment and returns the stage
    /// function it defined.
    fn stage_function(&mut self, hook: &LuaHook) -> Result<Function, Fail> {
        let chunk = self.chunk(hook)?;
        let env = self.lua.create_table()?;
        env.set_metatable(Some(self.env_mt.clone()))?;
        // Lets Luau use its fast paths for builtins (imports resolved at
        // load, fastcalls). The builtins are read-only, and the compiler
        // leaves globals the script assigns out of these paths.
        env.set_safeenv(true);
        chunk.set_environment(env.clone())?;
        let ran = chunk.call::<()>(());
        chunk.set_environment(self.detached_env.clone())?;
        ran?;
        match env.raw_get::<Value>(hook.spec.stage.function_name())? {
            Value::Function(f) => Ok(f),
            _ => Err(Fail::Missing),
        }
    }

    /// The hook's chunk, loaded into this VM on first use.
    fn chunk(&mut self, hook: &LuaHook) -> mlua::Result<Function> {
        self.uses += 1;
        if let Some(cached) = self.cache.get_mut(&hook.key) {
            cached.last_used = self.uses;
            return Ok(cached.chunk.clone());
        }
        let chunk = self
            .lua
            .load(&hook.bytecode[..])
            .set_name(hook.chunk_name())
            .set_mode(ChunkMode::Binary)
            .into_function()?;
        if self.cache.len() >= CACHE_CAPACITY {
            let oldest = self.cache.iter().min_by_key(|(_, c)| c.last_used).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.cache.remove(&oldest);
            }
        }
        self.cache.insert(hook.key.clone(), Cached { chunk: chunk.clone(), last_used: self.uses });
        Ok(chunk)
    }

    fn invoke(&self, stage: &Function, input: &HookInput<'_>, old: &OldValueCell<'_>) -> Result<MultiValue, Fail> {
        let lua = &self.lua;
        let key = lua.create_string(input.key)?;
        let value = match input.value {
            Some(v) => Value::String(lua.create_string(v)?),
            None => Value::Nil,
        };
        let ctx = lua.create_table_with_capacity(0, 5)?;
        ctx.raw_set("op", input.op.as_str())?;
        ctx.raw_set("now_ms", input.now_ms as f64)?;
        if let Some(ttl) = input.client_ttl_ms {
            ctx.raw_set("client_ttl_ms", ttl as f64)?;
        }
        // The loader is borrowed for this call only: a scoped function may
        // hold it, and is invalidated when the scope ends.
        let returned = lua.scope(|scope| {
            let index = scope.create_function(|lua, (ctx, field): (Table, Value)| old.index(lua, &ctx, &field))?;
            let mt = lua.create_table_with_capacity(0, 1)?;
            mt.raw_set("__index", index)?;
            ctx.set_metatable(Some(mt))?;
            stage.call::<MultiValue>((key, value, ctx))
        })?;
        Ok(returned)
    }

    /// Collects garbage before a call if earlier calls left much of it, so
    /// this call's memory limit is not spent on their garbage (Luau does not
    /// collect before failing an allocation). Checked against the limit of
    /// the hook about to run, which may be smaller than the last one's.
    fn collect_if_grown(&mut self, memory_limit: usize) {
        let slack = memory_limit / 4;
        if self.lua.used_memory() > self.baseline_memory.saturating_add(slack) && self.lua.gc_collect().is_ok() {
            self.baseline_memory = self.lua.used_memory();
        }
    }
}

/// Maps a failed or overlong run to a [`HookFailure`]. A limit the
/// interrupt enforced wins over the error it surfaced as (which the script
/// may even have caught).
fn failure(hook: &LuaHook, tripped: Option<Tripped>, elapsed: Duration, error: Option<&mlua::Error>) -> HookFailure {
    let limits = &hook.spec.limits;
    match tripped {
        Some(Tripped::Deadline) => return HookFailure::Deadline(limits.timeout),
        Some(Tripped::Budget) => return HookFailure::Budget(limits.instructions),
        None => {}
    }
    if error.is_some_and(is_memory_error) {
        return HookFailure::Memory(limits.memory_bytes);
    }
    // Time spent in a C function (a big string.rep, a sort) that the
    // interrupt could not stop.
    if elapsed > limits.timeout {
        return HookFailure::Deadline(limits.timeout);
    }
    match error {
        Some(e) => HookFailure::Error(error_message(e)),
        None => HookFailure::Error(format!("does not define function {}", hook.spec.stage.function_name())),
    }
}

fn root_cause(mut e: &mlua::Error) -> &mlua::Error {
    loop {
        match e {
            mlua::Error::CallbackError { cause, .. } => e = cause,
            mlua::Error::WithContext { cause, .. } => e = cause,
            _ => return e,
        }
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    matches!(root_cause(e), mlua::Error::MemoryError(_))
}

/// The script's message with its chunk and line, without mlua's traceback.
fn error_message(e: &mlua::Error) -> String {
    let message = match root_cause(e) {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let message = message.split("\nstack traceback:").next().unwrap_or_default();
    truncate(message.trim_end(), MAX_MESSAGE_BYTES).to_owned()
}

fn old_value_error(e: &str) -> String {
    format!("could not read the old value: {e}")
}

/// The per-call source of `ctx.old_value` / `ctx.old_version`.
struct OldValueCell<'a> {
    loader: &'a OldValueLoader,
    /// `Some` once loaded (`Some(None)`: no stored value).
    loaded: RefCell<Option<Option<OldValue>>>,
    error: RefCell<Option<String>>,
}

impl OldValueCell<'_> {
    fn version_read(&self) -> Option<u64> {
        self.loaded.borrow().as_ref().map(|old| old.as_ref().map_or(0, |o| o.version))
    }

    /// `__index` of `ctx`: loads the old value the first time either field
    /// is read, and stores both fields in `ctx` so later reads are plain.
    fn index(&self, lua: &Lua, ctx: &Table, field: &Value) -> mlua::Result<Value> {
        let Value::String(field) = field else { return Ok(Value::Nil) };
        let wants_value = match field.as_bytes().as_ref() {
            b"old_value" => true,
            b"old_version" => false,
            _ => return Ok(Value::Nil),
        };
        if self.loaded.borrow().is_none() {
            if let Some(e) = self.error.borrow().as_ref() {
                return Err(mlua::Error::runtime(old_value_error(e)));
            }
            match (self.loader)() {
                Ok(old) => *self.loaded.borrow_mut() = Some(old),
                Err(e) => {
                    let err = mlua::Error::runtime(old_value_error(&e));
                    *self.error.borrow_mut() = Some(e);
                    return Err(err);
                }
            }
        }
        let loaded = self.loaded.borrow();
        let (value, version) = match loaded.as_ref().and_then(Option::as_ref) {
            Some(old) => (Value::String(lua.create_string(&old.value)?), old.version),
            None => (Value::Nil, 0),
        };
        ctx.raw_set("old_value", value.clone())?;
        ctx.raw_set("old_version", version as f64)?;
        Ok(if wants_value { value } else { Value::Number(version as f64) })
    }
}

/// Turns what the stage function returned into a decision.
fn decision(stage: Stage, returned: &MultiValue) -> Result<Decision, String> {
    match stage {
        Stage::Partition => Err("Lua hooks cannot be partition functions".into()),
        Stage::Validate => match (returned.front(), returned.get(1)) {
            (Some(Value::Boolean(true)), _) => Ok(Decision::Accept),
            (Some(Value::Boolean(false)), None | Some(Value::Nil)) => {
                Ok(Decision::Reject(DEFAULT_REJECT_REASON.into()))
            }
            (Some(Value::Boolean(false)), Some(Value::String(s))) => {
                Ok(Decision::Reject(truncate(&s.to_string_lossy(), MAX_MESSAGE_BYTES).to_owned()))
            }
            (Some(Value::Boolean(false)), Some(n @ (Value::Integer(_) | Value::Number(_)))) => {
                Ok(Decision::Reject(Described(Some(n)).to_string()))
            }
            (Some(Value::Boolean(false)), Some(other)) => {
                Err(format!("validate's reject reason must be a string; got {}", Described(Some(other))))
            }
            (first, _) => Err(format!("validate must return true, or false and a reason; got {}", Described(first))),
        },
        Stage::Ttl => {
            let seconds = match returned.front() {
                None | Some(Value::Nil) => return Ok(Decision::KeepTtl),
                Some(Value::Boolean(false)) => return Ok(Decision::NoExpiry),
                Some(Value::Integer(i)) => *i as f64,
                Some(Value::Number(n)) => *n,
                other => return Err(ttl_contract(other)),
            };
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(ttl_contract(returned.front()));
            }
            let ms = seconds * 1000.0;
            // Round up to whole ms, but not for float noise: 1.1 s is 1100 ms.
            let nearest = ms.round();
            let ms = if (ms - nearest).abs() <= 1e-9 * nearest.max(1.0) { nearest } else { ms.ceil() };
            if ms >= u64::MAX as f64 / 2.0 {
                return Err(format!("ttl returned {seconds} seconds, which is too long"));
            }
            Ok(Decision::TtlMs((ms as u64).max(1)))
        }
    }
}

fn ttl_contract(got: Option<&Value>) -> String {
    format!(
        "ttl must return a positive number of seconds, nil (keep the client's TTL) or false (no expiry); got {}",
        Described(got)
    )
}

/// A returned value in a message: numbers and booleans by value, the rest
/// by type (never through `__tostring`, which would run script code).
struct Described<'a>(Option<&'a Value>);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("nothing"),
            Some(Value::Boolean(b)) => write!(f, "{b}"),
            Some(Value::Integer(i)) => write!(f, "{i}"),
            Some(Value::Number(n)) => write!(f, "{n}"),
            Some(v) => f.write_str(v.type_name()),
        }
    }
}

/// An error raised by a Rust function, placed at the calling line like
/// Lua's own `error` does.
fn located(lua: &Lua, message: impl fmt::Display) -> mlua::Error {
    let place = lua.inspect_stack(1, |frame| {
        let source = frame.source().short_src.map(|s| s.into_owned());
        source.zip(frame.current_line())
    });
    match place.flatten() {
        Some((source, line)) => mlua::Error::runtime(format!("{source}:{line}: {message}")),
        None => mlua::Error::runtime(message.to_string()),
    }
}

fn log_library(lua: &Lua, state: &Rc<CallState>) -> mlua::Result<Table> {
    let log = lua.create_table()?;
    for (name, level) in [("info", LogLevel::Info), ("warn", LogLevel::Warn)] {
        let state = Rc::clone(state);
        let f = lua.create_function(move |lua, message: Value| {
            let text = match &message {
                // Cut before converting: the limiter drops most lines anyway.
                Value::String(s) => {
                    let bytes = s.as_bytes();
                    String::from_utf8_lossy(&bytes[..bytes.len().min(logging::MAX_LINE_BYTES)]).into_owned()
                }
                Value::Integer(_) | Value::Number(_) | Value::Boolean(_) => Described(Some(&message)).to_string(),
                other => return Err(located(lua, format!("log.{name} expects a string, got {}", other.type_name()))),
            };
            if let Some((hook, version)) = state.hook.borrow().as_ref() {
                logging::hook_log(hook, *version, level, &text);
            }
            Ok(())
        })?;
        log.raw_set(name, f)?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{FailPolicy, HookKind, HookLimits, WriteOp};

    /// Generous limits for calls that must succeed: the tests do not depend
    /// on how fast a (debug, loaded) machine is.
    fn relaxed() -> HookLimits {
        HookLimits { timeout: Duration::from_secs(10), ..HookLimits::default() }
    }

    fn spec_with(name: &str, stage: Stage, source: &str, limits: HookLimits) -> HookSpec {
        HookSpec {
            name: name.into(),
            kind: HookKind::Lua,
            stage,
            prefix: Vec::new(),
            source: source.as_bytes().to_vec(),
            version: 1,
            sha256: String::new(),
            fail_policy: FailPolicy::Closed,
            limits,
            deployed_at_ms: 0,
        }
    }

    fn hook_with(stage: Stage, source: &str, limits: HookLimits) -> Arc<dyn CompiledHook> {
        match LuaRuntime.compile(&spec_with("h", stage, source, limits)) {
            Ok(hook) => hook,
            Err(e) => panic!("compile failed: {e}"),
        }
    }

    fn validate(source: &str) -> Arc<dyn CompiledHook> {
        hook_with(Stage::Validate, source, relaxed())
    }

    fn ttl(source: &str) -> Arc<dyn CompiledHook> {
        hook_with(Stage::Ttl, source, relaxed())
    }

    fn no_old() -> OldValueLoader {
        Arc::new(|| Ok(None))
    }

    fn put(hook: &Arc<dyn CompiledHook>, key: &[u8], value: &[u8]) -> CallReport {
        let input = HookInput { op: WriteOp::Put, key, value: Some(value), now_ms: 1_000, client_ttl_ms: None };
        hook.call(&input, &no_old())
    }

    fn run(hook: &Arc<dyn CompiledHook>) -> Result<Decision, HookFailure> {
        put(hook, b"k", b"v").result
    }

    fn error_of(result: Result<Decision, HookFailure>) -> String {
        match result {
            Err(HookFailure::Error(message)) => message,
            other => panic!("expected a script error, got {other:?}"),
        }
    }

    /// After a hostile call, this thread's worker must still run hooks.
    fn assert_worker_usable() {
        let hook = validate("function validate(k, v, ctx) return #k == 1 and v == 'v' end");
        assert_eq!(run(&hook), Ok(Decision::Accept));
    }

    #[test]
    fn validate_contract() {
        assert_eq!(run(&validate("function validate() return true end")), Ok(Decision::Accept));
        assert_eq!(
            run(&validate("function validate() return false, 'too big' end")),
            Ok(Decision::Reject("too big".into()))
        );
        assert_eq!(run(&validate("function validate() return false end")), Ok(Decision::Reject("rejected".into())));
        assert_eq!(run(&validate("function validate() return false, 42 end")), Ok(Decision::Reject("42".into())));
        let message = error_of(run(&validate("function validate() end")));
        assert_eq!(message, "validate must return true, or false and a reason; got nothing");
        let message = error_of(run(&validate("function validate() return nil end")));
        assert_eq!(message, "validate must return true, or false and a reason; got nil");
        let message = error_of(run(&validate("function validate() return 1 end")));
        assert!(message.contains("got 1"), "{message}");
        let message = error_of(run(&validate("function validate() return false, {} end")));
        assert!(message.contains("reason must be a string; got table"), "{message}");
        let long = run(&validate("function validate() return false, string.rep('x', 100000) end"));
        assert!(matches!(long, Ok(Decision::Reject(r)) if r.len() == MAX_MESSAGE_BYTES));
    }

    #[test]
    fn ttl_contract() {
        assert_eq!(run(&ttl("function ttl() return 60 end")), Ok(Decision::TtlMs(60_000)));
        assert_eq!(run(&ttl("function ttl() return 1.1 end")), Ok(Decision::TtlMs(1_100)));
        assert_eq!(run(&ttl("function ttl() return 0.0015 end")), Ok(Decision::TtlMs(2)));
        assert_eq!(run(&ttl("function ttl() return 1e-9 end")), Ok(Decision::TtlMs(1)));
        assert_eq!(run(&ttl("function ttl() return nil end")), Ok(Decision::KeepTtl));
        assert_eq!(run(&ttl("function ttl() end")), Ok(Decision::KeepTtl));
        assert_eq!(run(&ttl("function ttl() return false end")), Ok(Decision::NoExpiry));
        for bad in ["0", "-1", "0/0", "math.huge", "-math.huge", "true", "'60'", "{}", "1e300"] {
            let hook = ttl(&format!("function ttl() return {bad} end"));
            let message = error_of(run(&hook));
            assert!(message.starts_with("ttl "), "{bad}: {message}");
        }
        let message = error_of(run(&ttl("function ttl() return -1 end")));
        assert!(message.contains("positive number of seconds") && message.ends_with("got -1"), "{message}");
    }

    #[test]
    fn ctx_fields() {
        let hook = validate(
            "function validate(key, value, ctx)
                assert(key == 'user:1', 'key')
                assert(ctx.op == 'put', 'op')
                assert(ctx.now_ms == 1234, 'now_ms')
                assert(ctx.client_ttl_ms == 5000, 'client_ttl_ms')
                assert(value == '\\0\\255raw', 'value')
                assert(ctx.nothing == nil, 'nothing')
                return true
            end",
        );
        let input = HookInput {
            op: WriteOp::Put,
            key: b"user:1",
            value: Some(b"\0\xffraw"),
            now_ms: 1234,
            client_ttl_ms: Some(5000),
        };
        let report = hook.call(&input, &no_old());
        assert_eq!(report.result, Ok(Decision::Accept));
        assert_eq!(report.old_version_read, None);

        let hook = validate(
            "function validate(key, value, ctx)
                return value == nil and ctx.op == 'delete' and ctx.client_ttl_ms == nil
            end",
        );
        let input = HookInput { op: WriteOp::Delete, key: b"k", value: None, now_ms: 1, client_ttl_ms: None };
        assert_eq!(hook.call(&input, &no_old()).result, Ok(Decision::Accept));
    }

    #[test]
    fn old_value_is_loaded_lazily_once() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let loader: OldValueLoader = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Some(OldValue { value: b"before".to_vec(), version: 7 }))
        });
        let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(b"after"), now_ms: 1, client_ttl_ms: None };

        let unused = validate("function validate(k, v, ctx) return ctx.op == 'put' end");
        let report = unused.call(&input, &loader);
        assert_eq!(report.result, Ok(Decision::Accept));
        assert_eq!(report.old_version_read, None);
        assert_eq!(loads.load(Ordering::SeqCst), 0);

        let used = validate(
            "function validate(k, v, ctx)
                local a, b = ctx.old_version, ctx.old_value
                ctx.old_value = nil -- reading again after this must not reload
                return a == 7 and b == 'before' and ctx.old_value == 'before' and ctx.old_version == 7
            end",
        );
        let report = used.call(&input, &loader);
        assert_eq!(report.result, Ok(Decision::Accept));
        assert_eq!(report.old_version_read, Some(7));
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        let absent = validate("function validate(k, v, ctx) return ctx.old_value == nil and ctx.old_version == 0 end");
        let report = absent.call(&input, &no_old());
        assert_eq!(report.result, Ok(Decision::Accept));
        assert_eq!(report.old_version_read, Some(0));
    }

    #[test]
    fn old_value_loader_error_fails_the_call_even_if_caught() {
        let broken: OldValueLoader = Arc::new(|| Err("disk on fire".to_string()));
        let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(b"v"), now_ms: 1, client_ttl_ms: None };
        let hook = validate("function validate(k, v, ctx) return ctx.old_value == nil end");
        let message = error_of(hook.call(&input, &broken).result);
        assert!(message.contains("could not read the old value: disk on fire"), "{message}");
        let hook = validate("function validate(k, v, ctx) pcall(function() return ctx.old_value end) return true end");
        let message = error_of(hook.call(&input, &broken).result);
        assert!(message.contains("disk on fire"), "{message}");
    }

    #[test]
    fn json_roundtrip() {
        let hook = validate(
            r#"function validate(k, v, ctx)
                local doc = json.decode(v)
                assert(doc.name == "ada", "name")
                assert(doc.age == 36, "age")
                assert(doc.tags[2] == "b" and #doc.tags == 2, "tags")
                assert(doc.none == json.null, "null")
                assert(#doc.empty == 0, "empty")
                assert(doc.nested.deep[1].x == 1.5, "nested")
                local again = json.decode(json.encode(doc))
                assert(again.name == "ada" and again.tags[1] == "a" and again.none == json.null, "roundtrip")
                assert(json.encode(doc.empty) == "[]", "empty array stays an array")
                assert(json.encode({}) == "{}", "empty table")
                assert(json.encode({1, 2, 3}) == "[1,2,3]", "array")
                assert(json.encode({a = 1}) == '{"a":1}', "object")
                assert(json.encode({[1] = "x", [3] = "y"}) ~= nil, "sparse")
                assert(json.encode("q\"") == '"q\\""', "string")
                assert(json.encode(2.5) == "2.5" and json.encode(3) == "3", "numbers")
                assert(json.encode(nil) == "null" and json.encode(json.null) == "null", "null")
                return true
            end"#,
        );
        let doc = br#"{"name":"ada","age":36,"tags":["a","b"],"none":null,"empty":[],"nested":{"deep":[{"x":1.5}]}}"#;
        assert_eq!(put(&hook, b"k", doc).result, Ok(Decision::Accept));
    }

    #[test]
    fn json_errors_are_catchable_and_clear() {
        let hook = validate(
            r#"function validate(k, v, ctx)
                local ok, err = pcall(json.decode, v)
                assert(not ok, "decoded garbage")
                return false, tostring(err)
            end"#,
        );
        let result = put(&hook, b"k", b"{\"a\": ").result;
        let Ok(Decision::Reject(reason)) = result else { panic!("{result:?}") };
        assert!(reason.contains("json.decode: EOF while parsing"), "{reason}");

        let message = error_of(run(&validate("function validate(k, v) return json.decode('[1,') end")));
        assert!(message.starts_with("[string \"h\"]:1: json.decode:"), "{message}");
        let message = error_of(run(&validate("function validate() return json.encode({f = print or error}) end")));
        assert!(message.contains("json.encode: cannot encode a function"), "{message}");
        let message = error_of(run(&validate("function validate() local t = {} t.t = t return json.encode(t) end")));
        assert!(message.contains("nested deeper than 128"), "{message}");
        let message = error_of(run(&validate("function validate() return json.encode(0/0) end")));
        assert!(message.contains("NaN"), "{message}");
        let message = error_of(run(&validate("function validate() return json.decode(string.rep('[', 1000)) end")));
        assert!(message.contains("recursion limit"), "{message}");
        let message = error_of(run(&validate("function validate() return json.decode({}) end")));
        assert!(message.contains("json.decode expects a string, got table"), "{message}");
    }

    #[test]
    fn json_encode_cannot_outgrow_the_memory_limit() {
        let limits = HookLimits { memory_bytes: 4 << 20, ..relaxed() };
        let hook = hook_with(
            Stage::Validate,
            "function validate()
                local s = string.rep('x', 1000000)
                local t = {}
                for i = 1, 1000 do t[i] = s end -- 1 MB in the VM, 1 GB as text
                return json.encode(t)
            end",
            limits,
        );
        assert_eq!(run(&hook), Err(HookFailure::Memory(4 << 20)));
        assert_worker_usable();
    }

    #[test]
    fn no_state_leaks_between_calls() {
        let counter = validate(
            "count = (count or 0) + 1
            local calls = 0
            function validate()
                calls += 1
                seen = (seen or 0) + 1
                return false, count .. ' ' .. calls .. ' ' .. seen
            end",
        );
        for _ in 0..3 {
            assert_eq!(run(&counter), Ok(Decision::Reject("1 1 1".into())));
        }
        // Another hook on the same VM does not see the first one's globals.
        let other = validate("function validate() return count == nil and seen == nil end");
        assert_eq!(run(&other), Ok(Decision::Accept));
    }

    #[test]
    fn sandbox_has_no_dangerous_globals() {
        let hook = validate(
            "function validate()
                for _, name in ipairs({'os', 'io', 'debug', 'package', 'require', 'load', 'loadstring', 'dofile',
                        'loadfile', 'collectgarbage', 'getfenv', 'setfenv', 'newproxy', 'gcinfo', 'print', 'rawset',
                        'coroutine', 'buffer', 'bit32', 'vector'}) do
                    if _G[name] ~= nil then return false, name end
                end
                if string.dump ~= nil then return false, 'string.dump' end
                if math.randomseed ~= nil then return false, 'math.randomseed' end
                for _, name in ipairs({'assert', 'pcall', 'string', 'table', 'math', 'utf8', 'json', 'log'}) do
                    if _G[name] == nil then return false, 'missing ' .. name end
                end
                return true
            end",
        );
        assert_eq!(run(&hook), Ok(Decision::Accept));

        for (call, expect) in [
            ("os.exit(1)", "attempt to index nil with 'exit'"),
            ("io.open('/etc/passwd')", "attempt to index nil with 'open'"),
            ("require('x')", "attempt to call a nil value"),
            ("load(string.char(1, 2, 3))", "attempt to call a nil value"),
            ("loadstring('return 1')", "attempt to call a nil value"),
            ("dofile('/etc/passwd')", "attempt to call a nil value"),
            ("debug.getinfo(1)", "attempt to index nil with 'getinfo'"),
            ("string.dump(validate)", "attempt to call a nil value"),
            ("collectgarbage('collect')", "attempt to call a nil value"),
            ("getfenv(1).x = 1", "attempt to call a nil value"),
            ("print('hi')", "attempt to call a nil value"),
        ] {
            let hook = validate(&format!("function validate()\n  {call}\n  return true\nend"));
            let message = error_of(run(&hook));
            assert!(message.starts_with("[string \"h\"]:2: "), "{call}: {message}");
            assert!(message.contains(expect), "{call}: {message}");
        }
    }

    #[test]
    fn shared_tables_cannot_be_tampered_with() {
        for tamper in [
            "getmetatable('').__index = {}",
            "getmetatable('').__index.upper = nil",
            "string.upper = nil",
            "string.upper = function() return 'pwned' end",
            "rawset(string, 'upper', nil)",
            "table.insert(string, 1)",
            "table.clear(math)",
            "setmetatable(string, {})",
            "_G.string = {}",
            "_G.x = 1",
            "json.encode = nil",
            "log.info = nil",
        ] {
            let hook = validate(&format!("function validate() {tamper} return true end"));
            let result = run(&hook);
            assert!(matches!(result, Err(HookFailure::Error(_))), "{tamper}: {result:?}");
        }
        // Reassigning a global in the hook's own environment is allowed and
        // stays there.
        // (Luau's fast paths for builtins step aside for globals the script
        // assigns, so the hook's own `string` is the one it uses.)
        let shadow = validate(
            "string = {upper = function() return 'mine' end}
            function validate(k, v) return string.upper(v) == 'mine' and v:upper() == 'V' end",
        );
        assert_eq!(run(&shadow), Ok(Decision::Accept));
        let victim = hook_with(
            Stage::Validate,
            "function validate(k, v) return v:upper() == 'V' and string.upper('a') == 'A' and string ~= nil end",
            relaxed(),
        );
        assert_eq!(run(&victim), Ok(Decision::Accept));
    }

    #[test]
    fn script_errors_name_the_hook_and_line() {
        let hook = match LuaRuntime.compile(&spec_with(
            "myhook",
            Stage::Validate,
            "function validate()\n  local x = 1\n  error('boom')\nend",
            relaxed(),
        )) {
            Ok(hook) => hook,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(run(&hook), Err(HookFailure::Error("[string \"myhook\"]:3: boom".into())));
        let message = error_of(run(&validate("function validate() error({code = 1}) end")));
        assert!(message.starts_with("table: "), "{message}");
    }

    fn tight(timeout_ms: u64) -> HookLimits {
        HookLimits { timeout: Duration::from_millis(timeout_ms), instructions: u64::MAX, ..HookLimits::default() }
    }

    fn hostile(body: &str, limits: HookLimits) -> Result<Decision, HookFailure> {
        let hook =
            hook_with(Stage::Validate, &format!("function validate(k, v, ctx)\n{body}\nreturn true\nend"), limits);
        run(&hook)
    }

    #[test]
    fn infinite_loop_hits_the_deadline() {
        let limits = tight(20);
        assert_eq!(hostile("while true do end", limits), Err(HookFailure::Deadline(limits.timeout)));
        assert_worker_usable();
        // Catching the deadline error does not help.
        assert_eq!(
            hostile("pcall(function() while true do end end)", limits),
            Err(HookFailure::Deadline(limits.timeout))
        );
        assert_worker_usable();
        assert_eq!(
            hostile("while true do pcall(function() while true do end end) end", limits),
            Err(HookFailure::Deadline(limits.timeout))
        );
        assert_worker_usable();
    }

    fn worker_alive() -> bool {
        WORKER.with(|slot| slot.borrow().is_some())
    }

    #[test]
    fn a_limit_replaces_the_vm() {
        assert_worker_usable();
        assert!(worker_alive());
        assert_eq!(hostile("while true do end", tight(20)), Err(HookFailure::Deadline(Duration::from_millis(20))));
        assert!(!worker_alive());
        assert_worker_usable();
        assert!(worker_alive());
        // Script errors keep it.
        assert!(matches!(hostile("error('x')", relaxed()), Err(HookFailure::Error(_))));
        assert!(worker_alive());
    }

    #[test]
    fn overrunning_without_an_interrupt_is_a_deadline() {
        // A zero timeout: the call below reaches no interrupt check, so only
        // the check after the call can catch it (the stand-in for a long C
        // function). Built without `compile`, whose top-level check would
        // refuse it.
        let limits = HookLimits { timeout: Duration::ZERO, ..HookLimits::default() };
        let spec = spec_with("h", Stage::Validate, "function validate() return true end", limits);
        let hook: Arc<dyn CompiledHook> = match LuaHook::new(spec) {
            Ok(hook) => Arc::new(hook),
            Err(e) => panic!("{e}"),
        };
        assert_worker_usable();
        assert_eq!(run(&hook), Err(HookFailure::Deadline(Duration::ZERO)));
        assert!(!worker_alive());
        assert_worker_usable();
    }

    #[test]
    fn garbage_from_a_big_hook_does_not_fail_a_small_one() {
        let big = hook_with(
            Stage::Validate,
            "function validate() local t = {} for i = 1, 40 do t[i] = string.rep('x', 100000 + i) end return true end",
            relaxed(),
        );
        let small_limits = HookLimits { memory_bytes: 2 << 20, ..relaxed() };
        let small =
            hook_with(Stage::Validate, "function validate() return #string.rep('y', 500000) > 0 end", small_limits);
        for _ in 0..3 {
            assert_eq!(run(&big), Ok(Decision::Accept));
            assert_eq!(run(&small), Ok(Decision::Accept));
        }
    }

    #[test]
    fn infinite_loop_hits_the_budget() {
        let limits = HookLimits { timeout: Duration::from_secs(60), instructions: 100_000, ..HookLimits::default() };
        assert_eq!(hostile("local i = 0 while true do i += 1 end", limits), Err(HookFailure::Budget(100_000)));
        assert_worker_usable();
    }

    #[test]
    fn deep_recursion_fails() {
        let message = error_of(hostile("local function f() return 1 + f() end f()", relaxed()));
        assert!(message.contains("stack overflow"), "{message}");
        assert_worker_usable();
    }

    #[test]
    fn memory_bombs_hit_the_memory_limit() {
        let limits = HookLimits { memory_bytes: 4 << 20, instructions: u64::MAX, timeout: Duration::from_secs(60) };
        for bomb in [
            "local s = 'x' while true do s = string.rep(s, 2) end",
            "local t = {} local i = 0 while true do i += 1 t[i] = {i} end",
            "x = 'x' while true do x = x .. x end",
            "local t = table.create(1e7, 0)",
            "local s = string.rep('x', 1e9)",
        ] {
            assert_eq!(hostile(bomb, limits), Err(HookFailure::Memory(4 << 20)), "{bomb}");
            assert_worker_usable();
        }
    }

    #[test]
    fn pathological_patterns_hit_the_deadline() {
        let limits = tight(30);
        for bomb in [
            "string.rep('a', 30000):find(string.rep('a*', 40) .. 'b')",
            "string.rep('a', 30000):gsub(string.rep('a*', 40) .. 'b', '')",
            "string.rep('a', 30000):match(string.rep('a*', 40) .. 'b')",
        ] {
            assert_eq!(hostile(bomb, limits), Err(HookFailure::Deadline(limits.timeout)), "{bomb}");
            assert_worker_usable();
        }
    }

    #[test]
    fn looping_tostring_on_an_error_does_not_hang() {
        let limits = tight(30);
        let looping = "error(setmetatable({}, {__tostring = function() while true do end end}))";
        assert_eq!(hostile(looping, limits), Err(HookFailure::Deadline(limits.timeout)));
        assert_worker_usable();
        let erroring =
            "local mt = {} mt.__tostring = function(e) error(setmetatable({}, mt)) end error(setmetatable({}, mt))";
        assert!(matches!(hostile(erroring, limits), Err(HookFailure::Error(_))));
        assert_worker_usable();
    }

    #[test]
    fn compile_refuses_bad_hooks() {
        let compile = |source: &str| LuaRuntime.compile(&spec_with("myhook", Stage::Validate, source, tight(50))).err();
        let e = compile("function validate()\n  return (\nend").unwrap_or_default();
        assert!(e.starts_with("syntax error: [string \"myhook\"]:3: "), "{e}");
        assert_eq!(
            compile("function ttl() return 1 end").as_deref(),
            Some("hook myhook does not define function validate")
        );
        assert_eq!(compile("validate = 5").as_deref(), Some("hook myhook does not define function validate"));
        let e = compile("error('nope')").unwrap_or_default();
        assert!(e.contains("top level raised an error: [string \"myhook\"]:1: nope"), "{e}");
        let e = compile("while true do end function validate() return true end").unwrap_or_default();
        assert!(e.contains("top level exceeded its deadline"), "{e}");
        let ttl = LuaRuntime.compile(&spec_with("t", Stage::Ttl, "function validate() end", relaxed())).err();
        assert_eq!(ttl.as_deref(), Some("hook t does not define function ttl"));
        assert!(compile("function validate() return true end").is_none());
    }

    #[test]
    fn log_functions_work_inside_hooks() {
        let hook = validate(
            "function validate(k)
                for i = 1, 50 do log.info('line ' .. i) end
                log.warn(k)
                log.info(42)
                return not pcall(log.info, {})
            end",
        );
        assert_eq!(run(&hook), Ok(Decision::Accept));
    }

    #[test]
    fn chunk_cache_is_bounded() {
        for i in 0..(CACHE_CAPACITY + 10) {
            let hook = validate(&format!("function validate() return {i} >= 0 end"));
            assert_eq!(run(&hook), Ok(Decision::Accept));
        }
        let cached = WORKER.with(|slot| slot.borrow().as_ref().map(|w| w.cache.len()));
        assert_eq!(cached, Some(CACHE_CAPACITY));
    }

    /// Prints the cost of a call; run with `--nocapture` (and `--release`)
    /// to see it. Asserts nothing about time.
    #[test]
    fn per_call_cost() {
        let measure = |label: &str, hook: &Arc<dyn CompiledHook>, value: &[u8]| {
            assert_eq!(put(hook, b"key", value).result, Ok(Decision::Accept));
            let n = 20_000u32;
            let started = Instant::now();
            for _ in 0..n {
                let _ = put(hook, b"key", value);
            }
            println!("{label}: {:?} per call", started.elapsed() / n);
        };
        measure("trivial hook", &validate("function validate(k, v, ctx) return true end"), b"v");
        let doc = br#"{"id":12345,"name":"Ada Lovelace","email":"ada@example.com","active":true,"score":98.5,"tags":["math","engines","poetry"],"address":{"city":"London","zip":"W1"},"created_ms":1700000000000,"note":null}"#;
        println!("json document: {} bytes", doc.len());
        measure(
            "json.decode hook",
            &validate("function validate(k, v) local d = json.decode(v) return d.id == 12345 and d.active end"),
            doc,
        );
        let started = Instant::now();
        let worker = Worker::new();
        println!("new VM: {:?}", started.elapsed());
        assert!(worker.is_ok());
    }
}
