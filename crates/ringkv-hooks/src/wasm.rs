//! WebAssembly hooks: checks modules at deploy and runs each call in a fresh
//! instance under the hook's limits (ABI versions 1 and 2, `guest-sdk/ABI.md`).
//!
//! - One process-wide [`Engine`] (Cranelift, pooling allocator, epoch
//!   interruption, 512 KiB Wasm stack). No WASI, no component model: a hook
//!   may import only `ringkv.log` and `ringkv.panic`, and (ABI v2)
//!   `ringkv.old_version` and `ringkv.old_value`.
//! - Deploy ([`Runtime::compile`], [`Runtime::compile_partitioner`]) checks
//!   size, compiles under a time cap, checks imports, exports, memory and
//!   table sizes, and instantiates once to ask the module's ABI version.
//!   Compiled modules are cached by the sha256 of their bytes, so the
//!   deploying node's `load` after `compile` does not compile again.
//! - A call instantiates the module's [`InstancePre`] in a new [`Store`]
//!   (a pooled slot, so this costs microseconds), writes the input record,
//!   calls the stage function and decodes the output record. Nothing
//!   survives the call: the instance and its memory die with the store.
//! - Limits: the deadline is enforced with epoch interruption, driven by one
//!   ticker thread that only ticks while calls are being made (an idle
//!   node stays idle); memory and tables through a [`ResourceLimiter`]; the stack
//!   by the engine. A limit or trap is a [`HookFailure`], never a host panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, LazyLock, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Config, Enabled, Engine, Extern, ExternType, FuncType, Instance, InstanceAllocationStrategy, InstancePre,
    Linker, Memory, Module, ModuleExport, PoolConcurrencyLimitError, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, Strategy, Trap, ValType, WasmBacktrace,
};

use super::logging::{self, LogLevel};
use super::{
    truncate, CallReport, CompiledHook, CompiledPartitioner, Decision, HookFailure, HookInput, HookLimits, HookSpec,
    OldValue, OldValueLoader, Runtime, Stage,
};

use ringkv_hook_abi::{Routing, TtlChoice, Verdict, MAX_MESSAGE_BYTES, MAX_ROUTING_KEY_BYTES};
/// The newest hook ABI this host speaks (version 2 adds the old-value
/// imports; version 1 modules, which cannot import them, still run) and
/// the oldest it still runs.
pub use ringkv_hook_abi::{ABI_VERSION, OLDEST_ABI_VERSION};

/// Largest module a deploy accepts.
pub const MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;

/// Longest a deploy may spend compiling a module.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wasm stack of one call. Calls run on the caller's thread (hook workers,
/// async runtime threads), whose 2 MiB stacks leave room for it.
const MAX_WASM_STACK: usize = 512 * 1024;

/// Pooled instance slots (each with one memory and one table): the most
/// calls that can run at once in this process.
const POOL_SLOTS: u32 = 256;

/// Largest memory a hook may be given (the pool reserves this per slot).
pub const MAX_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Memory and table bytes a pool slot keeps mapped between calls, where
/// the kernel cannot say which pages a call wrote: the first this many bytes
/// are reset with memset, the rest with madvise.
const KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Where the kernel has `PAGEMAP_SCAN` (Linux 6.7+): a slot resets up to this
/// many bytes of pages a call actually wrote by copying, wherever they are,
/// and needs no madvise. A module built with the Rust SDK writes a few pages
/// around its 1 MiB stack top, beyond any fixed first range; without this
/// each call paid an madvise (with its TLB shootdown) and page faults.
const DIRTY_KEEP_RESIDENT_BYTES: usize = 4 * 1024 * 1024;

/// Most elements a hook's table may hold.
const MAX_TABLE_ELEMENTS: usize = 10_000;

/// One epoch tick. Deadlines are whole ticks, rounded up, plus one.
const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call before the ticker parks. Parking after every call
/// cost a futex wake per call under load; 50 ms of ticking is ~50 wake-ups.
const IDLE_TICKS_BEFORE_PARK: u32 = 50;

/// Most ticks a deadline may be (about 3 years of ticking).
const MAX_DEADLINE_TICKS: u64 = 1 << 36;

const DEFAULT_REJECT_REASON: &str = "rejected";

/// Compiled modules kept for reuse; the least recently used goes first.
const MODULE_CACHE_CAPACITY: usize = 32;

/// Deadline of the ABI-version check when a node loads a hook that was
/// already checked at deploy: generous, so a busy node does not refuse a
/// hook the cluster accepted.
const LOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Compiles and runs Wasm hooks.
pub struct WasmRuntime;

impl Runtime for WasmRuntime {
    fn compile(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String> {
        refuse_partition(spec)?;
        Ok(Arc::new(WasmHook(Prepared::new(spec, Check::Deploy)?)))
    }

    fn load(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String> {
        refuse_partition(spec)?;
        Ok(Arc::new(WasmHook(Prepared::new(spec, Check::Load)?)))
    }

    fn compile_partitioner(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledPartitioner>, String> {
        require_partition(spec)?;
        Ok(Arc::new(WasmPartitioner(Prepared::new(spec, Check::Deploy)?)))
    }

    fn load_partitioner(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledPartitioner>, String> {
        require_partition(spec)?;
        Ok(Arc::new(WasmPartitioner(Prepared::new(spec, Check::Load)?)))
    }
}

fn refuse_partition(spec: &HookSpec) -> Result<(), String> {
    if spec.stage == Stage::Partition {
        return Err(format!(
            "hook {}: a partition function is the cluster's partitioner, not a hook on the write path",
            spec.name
        ));
    }
    Ok(())
}

fn require_partition(spec: &HookSpec) -> Result<(), String> {
    if spec.stage != Stage::Partition {
        return Err(format!("hook {} is a {} hook, not a partition function", spec.name, spec.stage));
    }
    Ok(())
}

/// A validate or ttl hook.
struct WasmHook(Prepared);

impl CompiledHook for WasmHook {
    fn spec(&self) -> &HookSpec {
        &self.0.spec
    }

    fn call(&self, input: &HookInput<'_>, old: &OldValueLoader) -> CallReport {
        let started = Instant::now();
        let stage = self.0.spec.stage;
        let mut old = OldValueSource::new(Some(old.clone()));
        let record = input_record(input);
        let result = input_len(&record)
            .map_err(HookFailure::Error)
            .and_then(|len| self.0.run(len, &mut old, |region| record.encode_into(region), |out| decode(stage, out)));
        CallReport { result, old_version_read: old.version_read(), elapsed: started.elapsed() }
    }
}

/// A partition function.
struct WasmPartitioner(Prepared);

impl CompiledPartitioner for WasmPartitioner {
    fn spec(&self) -> &HookSpec {
        &self.0.spec
    }

    fn routing_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HookFailure> {
        let mut no_old = OldValueSource::new(None);
        self.0.run(key.len(), &mut no_old, |region| region.copy_from_slice(key), decode_partition)
    }
}

/// What a deploy check runs under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// A deploy: compile under [`COMPILE_TIMEOUT`]; the trial instantiation
    /// runs under the hook's own deadline.
    Deploy,
    /// A node applying a checked deploy.
    Load,
}

/// A module ready to instantiate, with its exports located once.
struct Prepared {
    spec: HookSpec,
    name: Arc<str>,
    pre: InstancePre<CallData>,
    memory: ModuleExport,
    alloc: ModuleExport,
    entry: ModuleExport,
}

impl Prepared {
    fn new(spec: &HookSpec, check: Check) -> Result<Self, String> {
        let name = &spec.name;
        let engine = engine().map_err(|e| format!("hook {name}: {e}"))?;
        if spec.limits.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "hook {name}: its memory limit of {} bytes is above the {MAX_MEMORY_BYTES} bytes (256 MiB) a Wasm hook may use",
                spec.limits.memory_bytes
            ));
        }
        check_format(name, &spec.source)?;
        check_declared_sizes(name, &spec.source, spec.limits.memory_bytes)?;
        let module = compiled(engine, name, &spec.source, check)?;
        let prepared = Self::from_module(engine, spec, &module)?;
        let timeout = match check {
            Check::Deploy => spec.limits.timeout,
            Check::Load => LOAD_CHECK_TIMEOUT.max(spec.limits.timeout),
        };
        prepared.check_abi_version(timeout)?;
        Ok(prepared)
    }

    /// Checks what the module imports and exports, and how big its memory
    /// and table start, then links it.
    fn from_module(engine: &Engine, spec: &HookSpec, module: &Module) -> Result<Self, String> {
        let name = &spec.name;
        check_imports(name, module)?;
        let memory = check_memory(name, module, spec.limits.memory_bytes)?;
        check_tables(name, module)?;
        let alloc = check_function(name, module, "ringkv_alloc", &[ValType::I32], &[ValType::I32])?;
        let entry_name = entry_point(spec.stage);
        let entry = check_function(name, module, entry_name, &[ValType::I32, ValType::I32], &[ValType::I64])?;
        check_function(name, module, "ringkv_abi_version", &[], &[ValType::I32])?;
        let linker = linker(engine).map_err(|e| format!("hook {name}: could not link: {}", chain(&e)))?;
        let pre = linker.instantiate_pre(module).map_err(|e| format!("hook {name}: could not link: {}", chain(&e)))?;
        Ok(Self { spec: spec.clone(), name: Arc::from(name.as_str()), pre, memory, alloc, entry })
    }

    /// Instantiates the module once (running its start function, within
    /// the limits) and asks which ABI it was built for.
    fn check_abi_version(&self, timeout: Duration) -> Result<(), String> {
        let name = &self.spec.name;
        let version = self
            .with_instance(timeout, &mut OldValueSource::new(None), |store, instance| {
                let f = instance
                    .get_typed_func::<(), i32>(&mut *store, "ringkv_abi_version")
                    .map_err(|e| Fail::Guest(format!("ringkv_abi_version: {}", chain(&e))))?;
                Ok(f.call(&mut *store, ())?)
            })
            .map_err(|failure| format!("hook {name}: checking its ABI version, it {failure}"))?;
        if !(OLDEST_ABI_VERSION..=ABI_VERSION).contains(&version) {
            return Err(format!(
                "hook {name} was built for hook ABI version {version}; this node speaks versions \
                 {OLDEST_ABI_VERSION} to {ABI_VERSION} (rebuild it with a ringkv-guest matching the node)"
            ));
        }
        if version < 2 {
            if let Some(import) = self.pre.module().imports().find(|i| OLD_VALUE_IMPORTS.contains(&i.name())) {
                return Err(format!(
                    "hook {name} imports ringkv.{} but declares hook ABI version {version}; the old-value \
                     imports need version 2",
                    import.name()
                ));
            }
        }
        Ok(())
    }

    /// One call: writes `input_len` bytes of input with `write`, runs the
    /// stage function, and decodes its output record with `decode`.
    fn run<T>(
        &self,
        input_len: usize,
        old: &mut OldValueSource,
        write: impl FnOnce(&mut [u8]),
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, HookFailure> {
        let len = i32::try_from(input_len)
            .map_err(|_| HookFailure::Error(format!("cannot be given an input of {input_len} bytes")))?;
        self.with_instance(self.spec.limits.timeout, old, |store, instance| {
            let memory = self.memory(store, instance)?;
            let alloc = self.func(store, instance, &self.alloc, "ringkv_alloc")?.typed::<i32, i32>(&*store)?;
            let entry = self.func(store, instance, &self.entry, entry_point(self.spec.stage))?;
            let entry = entry.typed::<(i32, i32), i64>(&*store)?;

            let ptr = alloc.call(&mut *store, len)? as u32;
            if ptr == 0 && input_len > 0 {
                return Err(Fail::Guest(format!(
                    "could not allocate {input_len} bytes for its input (ringkv_alloc returned 0)"
                )));
            }
            let data = memory.data_mut(&mut *store);
            let size = data.len();
            let input = region(data.len(), ptr, input_len).and_then(|r| data.get_mut(r)).ok_or_else(|| {
                Fail::Guest(format!(
                    "ringkv_alloc returned an out-of-bounds pointer: ptr {ptr} len {input_len} but memory is {size} bytes"
                ))
            })?;
            write(input);

            let packed = entry.call(&mut *store, (ptr as i32, len))? as u64;
            let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);
            let data = memory.data(&*store);
            let out = region(data.len(), out_ptr, out_len as usize).and_then(|r| data.get(r)).ok_or_else(|| {
                Fail::Guest(format!(
                    "returned an out-of-bounds result: ptr {out_ptr} len {out_len} but memory is {} bytes",
                    data.len()
                ))
            })?;
            decode(out).map_err(Fail::Guest)
        })
    }

    /// Runs `body` on a fresh instance in a fresh store under `timeout` and
    /// the hook's other limits, and maps whatever went wrong. The store
    /// holds `old` for the call; what the guest loaded is handed back.
    fn with_instance<T>(
        &self,
        timeout: Duration,
        old: &mut OldValueSource,
        body: impl FnOnce(&mut Store<CallData>, &Instance) -> Result<T, Fail>,
    ) -> Result<T, HookFailure> {
        let _in_flight = InFlight::enter().map_err(HookFailure::Load)?;
        let mut store = Store::new(self.pre.module().engine(), CallData::new(self, std::mem::take(old)));
        store.limiter(|data| &mut data.limits);
        store.set_epoch_deadline(deadline_ticks(timeout));
        let outcome = match self.pre.instantiate(&mut store) {
            Ok(instance) => body(&mut store, &instance),
            Err(e) => Err(Fail::Wasm(e)),
        };
        let result = outcome.map_err(|fail| failure(fail, store.data(), &self.spec.limits, timeout));
        *old = std::mem::take(&mut store.data_mut().old);
        result
    }

    fn memory(&self, store: &mut Store<CallData>, instance: &Instance) -> Result<Memory, Fail> {
        match instance.get_module_export(&mut *store, &self.memory) {
            Some(Extern::Memory(memory)) => Ok(memory),
            _ => Err(Fail::Guest("does not export its memory".into())),
        }
    }

    fn func(
        &self,
        store: &mut Store<CallData>,
        instance: &Instance,
        export: &ModuleExport,
        name: &str,
    ) -> Result<wasmtime::Func, Fail> {
        match instance.get_module_export(&mut *store, export) {
            Some(Extern::Func(f)) => Ok(f),
            _ => Err(Fail::Guest(format!("does not export function {name}"))),
        }
    }
}

/// The byte range `ptr .. ptr + len`, if it lies within `size` bytes.
fn region(size: usize, ptr: u32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

fn entry_point(stage: Stage) -> &'static str {
    match stage {
        Stage::Validate => "ringkv_validate",
        Stage::Ttl => "ringkv_ttl",
        Stage::Partition => "ringkv_partition",
    }
}

// ---------------------------------------------------------------------------
// The engine and the epoch ticker

static ENGINE: LazyLock<Result<Engine, String>> = LazyLock::new(|| {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(POOL_SLOTS)
        .total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(MAX_MEMORY_BYTES)
        .table_elements(MAX_TABLE_ELEMENTS)
        .table_keep_resident(KEEP_RESIDENT_BYTES);
    // A hook's call writes a few pages; copying them back costs less than a
    // syscall plus page faults per call.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Auto).linear_memory_keep_resident(DIRTY_KEEP_RESIDENT_BYTES);
    } else {
        pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    }
    let mut config = Config::new();
    config
        .strategy(Strategy::Cranelift)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK);
    Engine::new(&config).map_err(|e| format!("the WebAssembly engine could not start: {}", chain(&e)))
});

fn engine() -> Result<&'static Engine, String> {
    ENGINE.as_ref().map_err(Clone::clone)
}

/// Epoch ticks of a deadline: `timeout` rounded up to whole ticks, plus one
/// because the current tick may be almost over. Capped far below where
/// adding the current epoch could overflow.
fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_nanos().div_ceil(TICK.as_nanos()).saturating_add(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).min(MAX_DEADLINE_TICKS)
}

/// The ticker: increments the engine's epoch every [`TICK`] while calls are
/// in flight, and parks once none has started for
/// [`IDLE_TICKS_BEFORE_PARK`] ticks.
struct Ticker {
    in_flight: AtomicUsize,
    /// Calls started so far: a call that starts and ends between two ticks
    /// still keeps the ticker awake.
    entered: AtomicU64,
    parked: AtomicBool,
    ticks: AtomicU64,
    thread: OnceLock<Result<Thread, String>>,
}

static TICKER: Ticker = Ticker {
    in_flight: AtomicUsize::new(0),
    entered: AtomicU64::new(0),
    parked: AtomicBool::new(false),
    ticks: AtomicU64::new(0),
    thread: OnceLock::new(),
};

impl Ticker {
    fn thread(&'static self, engine: &'static Engine) -> Result<&'static Thread, String> {
        self.thread
            .get_or_init(|| {
                thread::Builder::new()
                    .name("ringkv-wasm-epoch".into())
                    .spawn(move || self.run(engine))
                    .map(|handle| handle.thread().clone())
                    .map_err(|e| format!("could not start the Wasm epoch thread: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn run(&self, engine: &Engine) {
        let mut idle_ticks = 0;
        let mut seen = self.entered.load(Ordering::SeqCst);
        loop {
            let entered = self.entered.load(Ordering::SeqCst);
            if self.in_flight.load(Ordering::SeqCst) == 0 && entered == seen {
                idle_ticks += 1;
            } else {
                idle_ticks = 0;
            }
            seen = entered;
            if idle_ticks >= IDLE_TICKS_BEFORE_PARK {
                self.parked.store(true, Ordering::SeqCst);
                // A call that starts between the check and `park` sees
                // `parked` and unparks, which makes `park` return at once.
                while self.in_flight.load(Ordering::SeqCst) == 0 {
                    thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                idle_ticks = 0;
            }
            thread::sleep(TICK);
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts one call (or deploy check) as in flight while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> Result<Self, String> {
        let ticker = TICKER.thread(engine()?)?;
        TICKER.entered.fetch_add(1, Ordering::Relaxed);
        let first = TICKER.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let guard = InFlight;
        if first && TICKER.parked.load(Ordering::SeqCst) {
            ticker.unpark();
        }
        Ok(guard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        TICKER.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Deploy checks

/// The source must be a core Wasm module in binary form; say what it is
/// instead when it is not.
fn check_format(name: &str, source: &[u8]) -> Result<(), String> {
    if source.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "hook {name}: the module is {} bytes; a Wasm hook may be at most {MAX_MODULE_BYTES} bytes (8 MiB)",
            source.len()
        ));
    }
    if let Some(version) = source.strip_prefix(b"\0asm") {
        return match version.get(..4) {
            Some([1, 0, 0, 0]) => Ok(()),
            Some([_, _, 1, 0]) => Err(format!(
                "hook {name} is a WebAssembly component; hooks must be core modules \
                 (build for wasm32-unknown-unknown, not a component target)"
            )),
            _ => Err(format!("hook {name}: the module has an unsupported WebAssembly binary version")),
        };
    }
    let text = String::from_utf8_lossy(&source[..source.len().min(256)]);
    let text = text.trim_start();
    if text.starts_with('(') || text.starts_with(";;") {
        return Err(format!(
            "hook {name}: the source looks like WebAssembly text (WAT); deploy the binary module \
             (e.g. `wasm-tools parse hook.wat -o hook.wasm`)"
        ));
    }
    Err(format!("hook {name}: the source is not a WebAssembly module (it does not start with the \\0asm magic bytes)"))
}

/// Compiled modules by the sha256 of their bytes.
static MODULES: LazyLock<Mutex<ModuleCache>> = LazyLock::new(|| Mutex::new(ModuleCache::default()));

#[derive(Default)]
struct ModuleCache {
    modules: HashMap<[u8; 32], (Module, u64)>,
    uses: u64,
}

impl ModuleCache {
    fn get(&mut self, digest: &[u8; 32]) -> Option<Module> {
        self.uses += 1;
        let uses = self.uses;
        self.modules.get_mut(digest).map(|(module, last_used)| {
            *last_used = uses;
            module.clone()
        })
    }

    fn insert(&mut self, digest: [u8; 32], module: Module) {
        if self.modules.len() >= MODULE_CACHE_CAPACITY && !self.modules.contains_key(&digest) {
            let oldest = self.modules.iter().min_by_key(|(_, (_, used))| *used).map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                self.modules.remove(&oldest);
            }
        }
        self.uses += 1;
        self.modules.insert(digest, (module, self.uses));
    }
}

fn module_cache() -> std::sync::MutexGuard<'static, ModuleCache> {
    // The cache holds no invariant a panic could break.
    MODULES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The compiled module for `source`, from the cache or compiled now.
fn compiled(engine: &'static Engine, name: &str, source: &[u8], check: Check) -> Result<Module, String> {
    let digest: [u8; 32] = Sha256::digest(source).into();
    if let Some(module) = module_cache().get(&digest) {
        return Ok(module);
    }
    let module = match check {
        Check::Load => Module::from_binary(engine, source),
        Check::Deploy => {
            // Compiling cannot be interrupted: past the cap the deploy is
            // refused and the compiling thread finishes on its own.
            let (tx, rx) = mpsc::sync_channel(1);
            let bytes = source.to_vec();
            thread::Builder::new()
                .name("ringkv-wasm-compile".into())
                .spawn(move || {
                    let _ = tx.send(Module::from_binary(engine, &bytes));
                })
                .map_err(|e| format!("hook {name}: could not start a compile thread: {e}"))?;
            match rx.recv_timeout(COMPILE_TIMEOUT) {
                Ok(result) => result,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("hook {name}: the module took longer than 10 s to compile"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("hook {name}: compiling the module failed (the compile thread died)"))
                }
            }
        }
    };
    let module = module.map_err(|e| format!("hook {name}: not a valid WebAssembly module: {}", chain(&e)))?;
    module_cache().insert(digest, module.clone());
    Ok(module)
}

/// The host functions a hook may import, and their types.
/// What a hook may import from module `ringkv`: name, parameters, results,
/// and the type as shown in errors.
type HostFunction = (&'static str, &'static [ValType], &'static [ValType], &'static str);
const HOST_FUNCTIONS: &[HostFunction] = &[
    ("log", &[ValType::I32, ValType::I32, ValType::I32], &[], "(i32, i32, i32) -> ()"),
    ("panic", &[ValType::I32, ValType::I32], &[], "(i32, i32) -> ()"),
    ("old_version", &[], &[ValType::I64], "() -> i64"),
    ("old_value", &[ValType::I32, ValType::I32], &[ValType::I64], "(i32, i32) -> i64"),
];

/// The imports of ABI version 2.
const OLD_VALUE_IMPORTS: &[&str] = &["old_version", "old_value"];

fn check_imports(name: &str, module: &Module) -> Result<(), String> {
    let mut unknown = Vec::new();
    for import in module.imports() {
        let (from, item) = (import.module(), import.name());
        let provided = HOST_FUNCTIONS.iter().find(|(n, ..)| from == "ringkv" && *n == item);
        match (provided, import.ty()) {
            (Some((_, params, results, shown)), ExternType::Func(ty)) => {
                if !signature_is(&ty, params, results) {
                    return Err(format!(
                        "hook {name} imports ringkv.{item} with type {}; the host provides {shown}",
                        signature(&ty)
                    ));
                }
            }
            (Some(_), other) => {
                return Err(format!("hook {name} imports ringkv.{item} as {}; it is a function", kind_of(&other)));
            }
            (None, _) => unknown.push(format!("{from}.{item}")),
        }
    }
    let Some(first) = unknown.first() else { return Ok(()) };
    let more = match unknown.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let wasi = module
        .imports()
        .any(|i| matches!(i.module(), "wasi_snapshot_preview1" | "wasi_unstable") || i.module().starts_with("wasi:"));
    if wasi {
        return Err(format!(
            "hook {name} imports {first}{more}: ringkv hooks get no WASI; build for wasm32-unknown-unknown"
        ));
    }
    Err(format!(
        "hook {name} imports {first}{more}, which the host does not provide: hooks may import only ringkv.log, ringkv.panic, ringkv.old_version and ringkv.old_value"
    ))
}

/// Checks the exported memory and its initial size against the hook's limit.
fn check_memory(name: &str, module: &Module, limit: usize) -> Result<ModuleExport, String> {
    let ty = match module.get_export("memory") {
        Some(ExternType::Memory(ty)) => ty,
        Some(other) => return Err(format!("hook {name} exports `memory` as {}, not a memory", kind_of(&other))),
        None => return Err(format!("hook {name} does not export its memory as `memory`")),
    };
    let required = module.resources_required();
    let declared = DeclaredMemory {
        count: required.num_memories.into(),
        is_64: ty.is_64(),
        shared: ty.is_shared(),
        pages: ty.minimum(),
        page_size: ty.page_size(),
    };
    declared.check(name, limit)?;
    module.get_export_index("memory").ok_or_else(|| format!("hook {name} does not export its memory as `memory`"))
}

fn check_tables(name: &str, module: &Module) -> Result<(), String> {
    let required = module.resources_required();
    check_declared_tables(name, required.num_tables.into(), required.max_initial_table_size)
}

/// What a module declares about its memory.
struct DeclaredMemory {
    count: u64,
    is_64: bool,
    shared: bool,
    pages: u64,
    page_size: u64,
}

impl DeclaredMemory {
    fn check(&self, name: &str, limit: usize) -> Result<(), String> {
        if self.count > 1 {
            return Err(format!("hook {name} defines {} memories; a hook may have one", self.count));
        }
        if self.is_64 {
            return Err(format!("hook {name}: its memory is 64-bit; the hook ABI uses 32-bit memory (wasm32)"));
        }
        if self.shared {
            return Err(format!("hook {name}: its memory is shared; hooks have no threads"));
        }
        let initial = self.pages.saturating_mul(self.page_size);
        if initial > limit as u64 {
            return Err(format!(
                "hook {name} declares an initial memory of {initial} bytes ({} pages), above its memory limit of {limit} bytes",
                self.pages
            ));
        }
        Ok(())
    }
}

fn check_declared_tables(name: &str, count: u64, initial: Option<u64>) -> Result<(), String> {
    if count > 1 {
        return Err(format!("hook {name} defines {count} tables; a hook may have at most one"));
    }
    match initial {
        Some(elements) if elements > MAX_TABLE_ELEMENTS as u64 => Err(format!(
            "hook {name} declares a table of {elements} elements; a hook's table may hold at most {MAX_TABLE_ELEMENTS}"
        )),
        _ => Ok(()),
    }
}

/// Checks the memory and table sizes a module declares, read from its
/// binary before compiling: the engine refuses a module that does not fit
/// its pool with a message about the pool rather than the hook, and
/// compiling a module that is refused anyway is wasted work. Anything the
/// parser does not understand is left to the compiler's validation.
fn check_declared_sizes(name: &str, source: &[u8], memory_limit: usize) -> Result<(), String> {
    use wasmparser::Payload;
    for payload in wasmparser::Parser::new(0).parse_all(source) {
        match payload {
            Ok(Payload::TableSection(tables)) => {
                let count = u64::from(tables.count());
                let first = tables.into_iter().next().and_then(Result::ok);
                check_declared_tables(name, count, first.filter(|_| count == 1).map(|t| t.ty.initial))?;
            }
            Ok(Payload::MemorySection(memories)) => {
                let count = u64::from(memories.count());
                let Some(Ok(m)) = memories.into_iter().next() else { return Ok(()) };
                let page_size = m.page_size_log2.map_or(Some(65536), |log2| 1u64.checked_shl(log2));
                let Some(page_size) = page_size else { return Ok(()) };
                let memory = DeclaredMemory { count, is_64: m.memory64, shared: m.shared, pages: m.initial, page_size };
                memory.check(name, memory_limit)?;
            }
            // Tables and memories come before the code, which need not be read.
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Checks that `export` is a function of the given type.
fn check_function(
    name: &str,
    module: &Module,
    export: &str,
    params: &[ValType],
    results: &[ValType],
) -> Result<ModuleExport, String> {
    let wanted = shown_signature(params, results);
    match module.get_export(export) {
        Some(ExternType::Func(ty)) if signature_is(&ty, params, results) => {}
        Some(ExternType::Func(ty)) => {
            return Err(format!(
                "hook {name} exports {export} with type {}; the hook ABI needs {wanted}",
                signature(&ty)
            ))
        }
        Some(other) => return Err(format!("hook {name} exports {export} as {}, not a function", kind_of(&other))),
        None => return Err(format!("hook {name} does not export function {export}: {wanted}")),
    }
    module.get_export_index(export).ok_or_else(|| format!("hook {name} does not export function {export}: {wanted}"))
}

fn signature_is(ty: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    let same = |got: &mut dyn ExactSizeIterator<Item = ValType>, want: &[ValType]| {
        got.len() == want.len() && got.zip(want).all(|(g, w)| ValType::eq(&g, w))
    };
    same(&mut ty.params(), params) && same(&mut ty.results(), results)
}

fn signature(ty: &FuncType) -> String {
    shown_signature(&ty.params().collect::<Vec<_>>(), &ty.results().collect::<Vec<_>>())
}

fn shown_signature(params: &[ValType], results: &[ValType]) -> String {
    let list = |types: &[ValType]| types.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    match results {
        [] => format!("({}) -> ()", list(params)),
        [one] => format!("({}) -> {one}", list(params)),
        many => format!("({}) -> ({})", list(params), list(many)),
    }
}

fn kind_of(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "a function",
        ExternType::Global(_) => "a global",
        ExternType::Table(_) => "a table",
        ExternType::Memory(_) => "a memory",
        ExternType::Tag(_) => "a tag",
    }
}

// ---------------------------------------------------------------------------
// Host functions and per-call state

/// What a store holds for one call.
struct CallData {
    limits: Limits,
    hook: Arc<str>,
    version: u64,
    /// The message the guest passed to `ringkv.panic`.
    panic: Option<String>,
    old: OldValueSource,
}

/// The stored value of the key being written, as ABI v2's imports serve it:
/// loaded on the guest's first ask, then kept for the rest of the call.
#[derive(Default)]
struct OldValueSource {
    /// `None`: a call with no write (partition functions, the ABI check).
    loader: Option<OldValueLoader>,
    /// `Some` once loaded (`Some(None)`: the key has no live record).
    loaded: Option<Option<OldValue>>,
}

impl OldValueSource {
    fn new(loader: Option<OldValueLoader>) -> Self {
        Self { loader, loaded: None }
    }

    /// The version the guest saw (0: absent), if it asked.
    fn version_read(&self) -> Option<u64> {
        self.loaded.as_ref().map(|old| old.as_ref().map_or(0, |o| o.version))
    }

    /// The stored record, loading it on first use. Errors trap the call.
    fn get(&mut self, function: &str) -> wasmtime::Result<Option<&OldValue>> {
        if self.loaded.is_none() {
            let Some(loader) = &self.loader else {
                return Err(wasmtime::Error::new(GuestFault(format!(
                    "called {function}, which only validate and ttl hooks may call"
                ))));
            };
            let old =
                loader().map_err(|e| wasmtime::Error::new(GuestFault(format!("could not read the old value: {e}"))))?;
            self.loaded = Some(old);
        }
        Ok(self.loaded.as_ref().and_then(Option::as_ref))
    }
}

impl CallData {
    fn new(prepared: &Prepared, old: OldValueSource) -> Self {
        let memory_bytes = prepared.spec.limits.memory_bytes;
        let inner = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(1)
            .tables(1)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        Self {
            limits: Limits { inner, memory_bytes, memory_hit: false, table_hit: false },
            hook: Arc::clone(&prepared.name),
            version: prepared.spec.version,
            panic: None,
            old,
        }
    }
}

/// [`StoreLimits`], remembering whether the memory or table limit was hit,
/// so the failure says which limit (a refused grow traps, and the trap
/// alone does not say why).
struct Limits {
    inner: StoreLimits,
    memory_bytes: usize,
    memory_hit: bool,
    table_hit: bool,
}

/// Times a hook's memory grew past its initial size during a call, in this
/// process. Each costs an `mprotect` (with a TLB shootdown across the
/// node's cores) when the pool slot is reused, more than a small call
/// itself: the guest SDK's arena allocator exists to keep this at zero.
static MEMORY_GROWS: AtomicU64 = AtomicU64::new(0);

/// [`MEMORY_GROWS`] so far (the `ringkv_hook_wasm_memory_grows_total` metric).
pub fn memory_grows() -> u64 {
    MEMORY_GROWS.load(Ordering::Relaxed)
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Instantiation asks for the initial size from 0; only later grows count.
        if current > 0 && desired > current {
            MEMORY_GROWS.fetch_add(1, Ordering::Relaxed);
        }
        if desired > self.memory_bytes {
            self.memory_hit = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The pool could not provide the memory: to the hook, that is its
        // memory limit.
        self.memory_hit = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_hit = true;
        }
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_hit = true;
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// An error a host function raises in the guest (it traps the call).
#[derive(Debug)]
struct GuestFault(String);

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GuestFault {}

fn linker(engine: &Engine) -> wasmtime::Result<Linker<CallData>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap(
        "ringkv",
        "log",
        |mut caller: Caller<'_, CallData>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let text = guest_text(&mut caller, "ringkv.log", ptr, len)?;
            let level = if level == 0 { LogLevel::Info } else { LogLevel::Warn };
            let data = caller.data();
            logging::hook_log(&data.hook, data.version, level, &text);
            Ok(())
        },
    )?;
    linker.func_wrap(
        "ringkv",
        "panic",
        |mut caller: Caller<'_, CallData>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let message = guest_text(&mut caller, "ringkv.panic", ptr, len)
                .unwrap_or_else(|_| "(the panic message was out of bounds)".into());
            caller.data_mut().panic = Some(message);
            // Trap here rather than trust the guest to: nothing it does after
            // panicking can be a decision.
            Err(wasmtime::Error::new(GuestFault("panicked".into())))
        },
    )?;
    linker.func_wrap("ringkv", "old_version", |mut caller: Caller<'_, CallData>| -> wasmtime::Result<i64> {
        let old = caller.data_mut().old.get("ringkv.old_version")?;
        Ok(old.map_or(0, |o| o.version as i64))
    })?;
    linker.func_wrap(
        "ringkv",
        "old_value",
        |mut caller: Caller<'_, CallData>, ptr: i32, cap: i32| -> wasmtime::Result<i64> {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return Err(wasmtime::Error::new(GuestFault(
                    "called ringkv.old_value without exporting its memory".into(),
                )));
            };
            let (data, call) = memory.data_and_store_mut(&mut caller);
            let Some(old) = call.old.get("ringkv.old_value")? else { return Ok(-1) };
            let len = old.value.len();
            if len <= cap as u32 as usize {
                let size = data.len();
                let Some(out) = region(size, ptr as u32, len).and_then(|r| data.get_mut(r)) else {
                    return Err(wasmtime::Error::new(GuestFault(format!(
                        "called ringkv.old_value with an out-of-bounds buffer: ptr {} len {len} but memory is {size} bytes",
                        ptr as u32
                    ))));
                };
                out.copy_from_slice(&old.value);
            }
            Ok(len as i64)
        },
    )?;
    Ok(linker)
}

/// The UTF-8 (lossy) text at `ptr .. ptr + len` in the caller's memory,
/// cut at [`MAX_MESSAGE_BYTES`].
fn guest_text(caller: &mut Caller<'_, CallData>, function: &str, ptr: i32, len: i32) -> wasmtime::Result<String> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::Error::new(GuestFault(format!("called {function} without exporting its memory"))));
    };
    let data = memory.data(&*caller);
    let (ptr, len) = (ptr as u32, len as u32 as usize);
    match region(data.len(), ptr, len).and_then(|r| data.get(r)) {
        Some(bytes) => Ok(lossy_cut(bytes, MAX_MESSAGE_BYTES)),
        None => Err(wasmtime::Error::new(GuestFault(format!(
            "called {function} with an out-of-bounds string: ptr {ptr} len {len} but memory is {} bytes",
            data.len()
        )))),
    }
}

/// `bytes` as UTF-8 (invalid sequences replaced), at most `max` bytes.
fn lossy_cut(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    truncate(&text, max).to_owned()
}

// ---------------------------------------------------------------------------
// Failures

/// How a call went wrong before it is mapped to a [`HookFailure`].
enum Fail {
    /// Wasmtime reported an error: a trap, a limit, a host function's fault.
    Wasm(wasmtime::Error),
    /// The guest broke the ABI (bad pointer, malformed result).
    Guest(String),
}

impl From<wasmtime::Error> for Fail {
    fn from(e: wasmtime::Error) -> Self {
        Fail::Wasm(e)
    }
}

fn failure(fail: Fail, data: &CallData, limits: &HookLimits, timeout: Duration) -> HookFailure {
    let e = match fail {
        Fail::Guest(message) => return HookFailure::Error(message),
        Fail::Wasm(e) => e,
    };
    if let Some(message) = &data.panic {
        return HookFailure::Error(format!("guest panicked: {message}"));
    }
    if data.limits.memory_hit {
        return HookFailure::Memory(limits.memory_bytes);
    }
    if let Some(fault) = e.downcast_ref::<GuestFault>() {
        return HookFailure::Error(fault.0.clone());
    }
    if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return HookFailure::Error(format!(
            "found no free Wasm instance slot: all {POOL_SLOTS} are busy with concurrent calls on this node"
        ));
    }
    if data.limits.table_hit {
        return HookFailure::Error(format!("grew its table past {MAX_TABLE_ELEMENTS} elements"));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => HookFailure::Deadline(timeout),
        Some(Trap::StackOverflow) => HookFailure::Error("overflowed the Wasm stack (512 KiB): deep recursion?".into()),
        Some(trap) => {
            let description = trap.to_string();
            let description = description.strip_prefix("wasm trap: ").unwrap_or(&description);
            HookFailure::Error(format!("trapped: {description}{}", place(&e)))
        }
        None => HookFailure::Error(format!("failed: {}", chain(&e))),
    }
}

/// Where in the guest a trap happened, from the innermost frame.
fn place(e: &wasmtime::Error) -> String {
    let Some(frame) = e.downcast_ref::<WasmBacktrace>().and_then(|bt| bt.frames().first()) else {
        return String::new();
    };
    match frame.func_name() {
        Some(name) => format!(" (in function {name})"),
        None => format!(" (in function #{})", frame.func_index()),
    }
}

/// An error with its causes, outermost first.
fn chain(e: &wasmtime::Error) -> String {
    e.chain().map(|cause| cause.to_string()).collect::<Vec<_>>().join(": ")
}

// ---------------------------------------------------------------------------
// Records

/// The validate/ttl input record (`ringkv_hook_abi`) of a write.
fn input_record<'a>(input: &HookInput<'a>) -> ringkv_hook_abi::Input<'a> {
    ringkv_hook_abi::Input {
        op: input.op,
        key: input.key,
        value: input.value,
        now_ms: input.now_ms,
        client_ttl_ms: input.client_ttl_ms,
    }
}

fn input_len(record: &ringkv_hook_abi::Input<'_>) -> Result<usize, String> {
    record.encoded_len().ok_or_else(|| {
        format!(
            "cannot be given a write of {} key and {} value bytes",
            record.key.len(),
            record.value.map_or(0, <[u8]>::len)
        )
    })
}

fn malformed(what: impl fmt::Display) -> String {
    format!("returned a malformed result: {what}")
}

fn decode(stage: Stage, out: &[u8]) -> Result<Decision, String> {
    match stage {
        Stage::Validate => decode_validate(out),
        Stage::Ttl => decode_ttl(out),
        Stage::Partition => Err("a partition function cannot judge writes".into()),
    }
}

fn decode_validate(out: &[u8]) -> Result<Decision, String> {
    match Verdict::decode(out).map_err(malformed)? {
        Verdict::Accept => Ok(Decision::Accept),
        Verdict::Reject(reason) => {
            let reason = lossy_cut(reason, MAX_MESSAGE_BYTES);
            Ok(Decision::Reject(if reason.is_empty() { DEFAULT_REJECT_REASON.into() } else { reason }))
        }
    }
}

fn decode_ttl(out: &[u8]) -> Result<Decision, String> {
    match TtlChoice::decode(out).map_err(malformed)? {
        TtlChoice::Keep => Ok(Decision::KeepTtl),
        TtlChoice::Never => Ok(Decision::NoExpiry),
        TtlChoice::Ms(0) => Err(malformed("a TTL of 0 ms (it must be at least 1 ms)")),
        TtlChoice::Ms(ms) if ms >= u64::MAX / 2 => Err(format!("returned a TTL of {ms} ms, which is too long")),
        TtlChoice::Ms(ms) => Ok(Decision::TtlMs(ms)),
    }
}

fn decode_partition(out: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match Routing::decode(out).map_err(malformed)? {
        Routing::Whole => Ok(None),
        Routing::Key(key) if key.len() <= MAX_ROUTING_KEY_BYTES => Ok(Some(key.to_vec())),
        Routing::Key(key) => Err(format!(
            "returned a routing key of {} bytes; a routing key may be at most {MAX_ROUTING_KEY_BYTES} bytes",
            key.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    use super::*;
    use crate::{FailPolicy, HookKind, OldValue, WriteOp};

    macro_rules! wat {
        ($name:literal) => {
            include_str!(concat!("../../../tests/wasm/hostile/", $name, ".wat"))
        };
    }

    /// Calls in flight are counted process-wide: every test holds this
    /// shared, and the idle-ticker test holds it alone.
    static CALLS: RwLock<()> = RwLock::new(());

    fn shared() -> RwLockReadGuard<'static, ()> {
        CALLS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exclusive() -> RwLockWriteGuard<'static, ()> {
        CALLS.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Generous limits for calls that must succeed: the tests do not depend
    /// on how fast a (debug, loaded) machine is.
    fn relaxed() -> HookLimits {
        HookLimits { timeout: Duration::from_secs(10), ..HookLimits::default() }
    }

    fn tight() -> HookLimits {
        HookLimits { timeout: Duration::from_millis(50), ..HookLimits::default() }
    }

    fn binary(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("the test module is valid WAT")
    }

    fn spec_of(stage: Stage, source: Vec<u8>, limits: HookLimits) -> HookSpec {
        HookSpec {
            name: "h".into(),
            kind: HookKind::Wasm,
            stage,
            prefix: Vec::new(),
            source,
            version: 1,
            sha256: String::new(),
            fail_policy: FailPolicy::Closed,
            limits,
            deployed_at_ms: 0,
        }
    }

    fn compile(stage: Stage, text: &str, limits: HookLimits) -> Result<Arc<dyn CompiledHook>, String> {
        WasmRuntime.compile(&spec_of(stage, binary(text), limits))
    }

    fn hook_with(stage: Stage, text: &str, limits: HookLimits) -> Arc<dyn CompiledHook> {
        compile(stage, text, limits).unwrap_or_else(|e| panic!("compile failed: {e}"))
    }

    fn hook(stage: Stage, text: &str) -> Arc<dyn CompiledHook> {
        hook_with(stage, text, relaxed())
    }

    fn partitioner(text: &str) -> Arc<dyn CompiledPartitioner> {
        WasmRuntime
            .compile_partitioner(&spec_of(Stage::Partition, binary(text), relaxed()))
            .unwrap_or_else(|e| panic!("compile failed: {e}"))
    }

    fn deploy_error(stage: Stage, source: Vec<u8>) -> String {
        match WasmRuntime.compile(&spec_of(stage, source, relaxed())) {
            Ok(_) => panic!("deploy should have been refused"),
            Err(e) => e,
        }
    }

    fn no_old() -> OldValueLoader {
        Arc::new(|| Ok(None))
    }

    fn put(hook: &Arc<dyn CompiledHook>, key: &[u8], value: &[u8]) -> Result<Decision, HookFailure> {
        let input = HookInput { op: WriteOp::Put, key, value: Some(value), now_ms: 1_000, client_ttl_ms: None };
        let report = hook.call(&input, &no_old());
        assert_eq!(report.old_version_read, None);
        report.result
    }

    fn delete(hook: &Arc<dyn CompiledHook>, key: &[u8]) -> Result<Decision, HookFailure> {
        let input = HookInput { op: WriteOp::Delete, key, value: None, now_ms: 1_000, client_ttl_ms: None };
        hook.call(&input, &no_old()).result
    }

    fn error_of(result: Result<Decision, HookFailure>) -> String {
        match result {
            Err(HookFailure::Error(message)) => message,
            other => panic!("expected a hook error, got {other:?}"),
        }
    }

    /// After a hostile module, the runtime must still run hooks correctly.
    fn assert_runtime_usable() {
        let h = hook(Stage::Validate, wat!("reject_validate"));
        assert_eq!(put(&h, b"k", b"v"), Ok(Decision::Accept));
        assert_eq!(put(&h, b"k", b""), Ok(Decision::Reject("empty values and deletes are not allowed".into())));
    }

    /// A module (with a trivial allocator) whose `export` returns `record`.
    fn returning(export: &str, record: &[u8]) -> String {
        let data: String = record.iter().map(|b| format!("\\{b:02x}")).collect();
        format!(
            r#"(module
                (memory (export "memory") 1)
                (data (i32.const 16) "{data}")
                (func (export "ringkv_abi_version") (result i32) (i32.const 1))
                (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 32768))
                (func (export "{export}") (param i32 i32) (result i64)
                    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len}))))"#,
            len = record.len()
        )
    }

    #[test]
    fn well_behaved_hooks_decide() {
        let _calls = shared();
        let noop = hook(Stage::Validate, wat!("noop_validate"));
        assert_eq!(put(&noop, b"k", b"v"), Ok(Decision::Accept));
        assert_eq!(delete(&noop, b"k"), Ok(Decision::Accept));

        let reject = hook(Stage::Validate, wat!("reject_validate"));
        let reason = Decision::Reject("empty values and deletes are not allowed".into());
        assert_eq!(put(&reject, b"k", b"v"), Ok(Decision::Accept));
        assert_eq!(put(&reject, b"k", b""), Ok(reason.clone()));
        assert_eq!(delete(&reject, b"k"), Ok(reason));
        // Inputs larger than the module's initial memory make its allocator grow it.
        assert_eq!(put(&reject, &[b'k'; 1000], &vec![7u8; 200_000]), Ok(Decision::Accept));

        let ttl = hook(Stage::Ttl, wat!("ttl_fixed"));
        assert_eq!(put(&ttl, b"k", b"v"), Ok(Decision::TtlMs(1500)));

        let part = partitioner(wat!("partition_prefix"));
        assert_eq!(part.routing_key(b"tenant/a/b"), Ok(Some(b"tenant".to_vec())));
        assert_eq!(part.routing_key(b"no-slash"), Ok(None));
        assert_eq!(part.routing_key(b"/leading"), Ok(Some(Vec::new())));
        assert_eq!(part.routing_key(b""), Ok(None));
    }

    /// The input record, byte for byte: the module rejects with its whole
    /// input as the reason (all bytes are ASCII, so the reason is exact).
    #[test]
    fn input_record_layout() {
        let _calls = shared();
        let echo = hook(
            Stage::Validate,
            r#"(module
                (memory (export "memory") 1)
                (func (export "ringkv_abi_version") (result i32) (i32.const 1))
                (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 1024))
                (func (export "ringkv_validate") (param $ptr i32) (param $len i32) (result i64)
                    (i32.store8 (i32.const 1023) (i32.const 1))
                    (i64.or (i64.shl (i64.const 1023) (i64.const 32))
                            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 1))))))"#,
        );
        let now_ms = 0x0102_0304_0506_0708u64;
        let input =
            HookInput { op: WriteOp::Put, key: b"k1", value: Some(b"val"), now_ms, client_ttl_ms: Some(0x7f7e) };
        let mut expected = vec![0u8, 3, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&now_ms.to_le_bytes());
        expected.extend_from_slice(&0x7f7eu64.to_le_bytes());
        expected.extend_from_slice(b"k1val");
        let reason = String::from_utf8(expected).expect("ASCII");
        assert_eq!(echo.call(&input, &no_old()).result, Ok(Decision::Reject(reason)));

        let input = HookInput { op: WriteOp::Delete, key: b"k", value: None, now_ms, client_ttl_ms: None };
        let mut expected = vec![1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&now_ms.to_le_bytes());
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(b"k");
        let reason = String::from_utf8(expected).expect("ASCII");
        assert_eq!(echo.call(&input, &no_old()).result, Ok(Decision::Reject(reason)));
    }

    #[test]
    fn validate_results() {
        let _calls = shared();
        let validate = |record: &[u8]| put(&hook(Stage::Validate, &returning("ringkv_validate", record)), b"k", b"v");
        assert_eq!(validate(&[0]), Ok(Decision::Accept));
        assert_eq!(validate(&[1]), Ok(Decision::Reject("rejected".into())));
        assert_eq!(validate(b"\x01too big"), Ok(Decision::Reject("too big".into())));
        assert_eq!(validate(b"\x01bad \xff byte"), Ok(Decision::Reject("bad \u{fffd} byte".into())));
        let mut long = vec![1u8];
        long.extend_from_slice(&[b'x'; 2000]);
        assert_eq!(validate(&long), Ok(Decision::Reject("x".repeat(1024))));
        // A multi-byte character across the cut is dropped whole.
        let mut straddling = vec![1u8];
        straddling.extend_from_slice(&[b'x'; 1023]);
        straddling.extend_from_slice("é".as_bytes());
        assert_eq!(validate(&straddling), Ok(Decision::Reject("x".repeat(1023))));
        assert_eq!(error_of(validate(&[])), "returned a malformed result: an empty validate record");
        assert_eq!(
            error_of(validate(&[0, 0])),
            "returned a malformed result: an accept record of 2 bytes (it is 1 byte)"
        );
        assert_eq!(
            error_of(validate(&[7])),
            "returned a malformed result: validate result code 7 (0 = accept, 1 = reject)"
        );
    }

    #[test]
    fn ttl_results() {
        let _calls = shared();
        let ttl = |record: &[u8]| put(&hook(Stage::Ttl, &returning("ringkv_ttl", record)), b"k", b"v");
        let ms = |ms: u64| {
            let mut record = vec![2u8];
            record.extend_from_slice(&ms.to_le_bytes());
            record
        };
        assert_eq!(ttl(&[0]), Ok(Decision::KeepTtl));
        assert_eq!(ttl(&[1]), Ok(Decision::NoExpiry));
        assert_eq!(ttl(&ms(1)), Ok(Decision::TtlMs(1)));
        assert_eq!(ttl(&ms(86_400_000)), Ok(Decision::TtlMs(86_400_000)));
        assert_eq!(error_of(ttl(&ms(0))), "returned a malformed result: a TTL of 0 ms (it must be at least 1 ms)");
        assert_eq!(error_of(ttl(&ms(u64::MAX))), format!("returned a TTL of {} ms, which is too long", u64::MAX));
        assert_eq!(
            error_of(ttl(&[2, 1, 2])),
            "returned a malformed result: a ttl record 2 of 3 bytes (it is 9: 2 and a u64 of ms)"
        );
        assert_eq!(error_of(ttl(&[1, 1])), "returned a malformed result: a ttl record 1 of 2 bytes (it is 1 byte)");
        assert_eq!(
            error_of(ttl(&[9])),
            "returned a malformed result: ttl result code 9 (0 = keep, 1 = no expiry, 2 = ms)"
        );
        assert_eq!(error_of(ttl(&[])), "returned a malformed result: an empty ttl record");
    }

    #[test]
    fn partition_results() {
        let _calls = shared();
        let route = |record: &[u8]| partitioner(&returning("ringkv_partition", record)).routing_key(b"some/key");
        assert_eq!(route(&[0]), Ok(None));
        assert_eq!(route(&[1]), Ok(Some(Vec::new())));
        assert_eq!(route(b"\x01abc"), Ok(Some(b"abc".to_vec())));
        let mut longest = vec![1u8];
        longest.extend_from_slice(&[b'r'; 4096]);
        assert_eq!(route(&longest), Ok(Some(vec![b'r'; 4096])));
        longest.push(b'r');
        assert_eq!(
            route(&longest),
            Err(HookFailure::Error(
                "returned a routing key of 4097 bytes; a routing key may be at most 4096 bytes".into()
            ))
        );
        assert_eq!(
            route(&[4]),
            Err(HookFailure::Error(
                "returned a malformed result: partition result code 4 (0 = whole key, 1 = routing key)".into()
            ))
        );
    }

    #[test]
    fn stages_go_to_the_right_runtime_entry() {
        let _calls = shared();
        let partition = spec_of(Stage::Partition, binary(wat!("partition_prefix")), relaxed());
        assert_eq!(
            WasmRuntime.compile(&partition).err().as_deref(),
            Some("hook h: a partition function is the cluster's partitioner, not a hook on the write path")
        );
        let validate = spec_of(Stage::Validate, binary(wat!("noop_validate")), relaxed());
        assert_eq!(
            WasmRuntime.compile_partitioner(&validate).err().as_deref(),
            Some("hook h is a validate hook, not a partition function")
        );
        // A module may carry several stages; the one deployed is what runs.
        let ttl_only = spec_of(Stage::Validate, binary(wat!("ttl_fixed")), relaxed());
        assert_eq!(
            WasmRuntime.compile(&ttl_only).err().as_deref(),
            Some("hook h does not export function ringkv_validate: (i32, i32) -> i64")
        );
    }

    #[test]
    fn load_reuses_the_compiled_module_and_checks_too() {
        let _calls = shared();
        let source = binary(&returning("ringkv_validate", b"\x01loaded"));
        let digest: [u8; 32] = Sha256::digest(&source).into();
        let spec = spec_of(Stage::Validate, source, relaxed());
        let deployed = WasmRuntime.compile(&spec).expect("compiles");
        assert!(module_cache().modules.contains_key(&digest));
        let loaded = WasmRuntime.load(&spec).expect("loads");
        assert_eq!(put(&deployed, b"k", b"v"), put(&loaded, b"k", b"v"));
        assert_eq!(put(&loaded, b"k", b"v"), Ok(Decision::Reject("loaded".into())));

        let wrong = spec_of(Stage::Validate, binary(wat!("wrong_abi_version")), relaxed());
        assert!(WasmRuntime.load(&wrong).is_err());
        let part = spec_of(Stage::Partition, binary(wat!("partition_prefix")), relaxed());
        let loaded = WasmRuntime.load_partitioner(&part).expect("loads");
        assert_eq!(loaded.routing_key(b"a/b"), Ok(Some(b"a".to_vec())));
    }

    #[test]
    fn deploy_refuses_hostile_modules_clearly() {
        let _calls = shared();
        let refused = |text: &str| deploy_error(Stage::Validate, binary(text));
        let cases = [
            (
                "huge_initial_memory",
                refused(wat!("huge_initial_memory")),
                "hook h declares an initial memory of 1073741824 bytes (16384 pages), above its memory limit of 16777216 bytes",
            ),
            (
                "huge_table",
                refused(wat!("huge_table")),
                "hook h declares a table of 1000000 elements; a hook's table may hold at most 10000",
            ),
            (
                "imports_wasi",
                refused(wat!("imports_wasi")),
                "hook h imports wasi_snapshot_preview1.fd_write: ringkv hooks get no WASI; build for wasm32-unknown-unknown",
            ),
            (
                "imports_unknown",
                refused(wat!("imports_unknown")),
                "hook h imports env.foo, which the host does not provide: hooks may import only ringkv.log, ringkv.panic, ringkv.old_version and ringkv.old_value",
            ),
            (
                "wrong_abi_version",
                refused(wat!("wrong_abi_version")),
                "hook h was built for hook ABI version 3; this node speaks versions 1 to 2 \
                 (rebuild it with a ringkv-guest matching the node)",
            ),
            (
                "missing_export",
                refused(wat!("missing_export")),
                "hook h does not export function ringkv_validate: (i32, i32) -> i64",
            ),
        ];
        for (case, got, want) in cases {
            assert_eq!(got, want, "{case}");
            assert_runtime_usable();
        }
    }

    #[test]
    fn deploy_refuses_what_is_not_a_core_module() {
        let _calls = shared();
        assert_eq!(
            deploy_error(Stage::Validate, b"\x13\x37garbage bytes, not a module".to_vec()),
            "hook h: the source is not a WebAssembly module (it does not start with the \\0asm magic bytes)"
        );
        let e = deploy_error(Stage::Validate, b"\0asm\x01\0\0\0\x01\x05garbage".to_vec());
        assert!(e.starts_with("hook h: not a valid WebAssembly module: "), "{e}");
        assert_eq!(
            deploy_error(Stage::Validate, wat!("noop_validate").as_bytes().to_vec()),
            "hook h: the source looks like WebAssembly text (WAT); deploy the binary module \
             (e.g. `wasm-tools parse hook.wat -o hook.wasm`)"
        );
        assert_eq!(
            deploy_error(Stage::Validate, b"\0asm\x0d\0\x01\0".to_vec()),
            "hook h is a WebAssembly component; hooks must be core modules \
             (build for wasm32-unknown-unknown, not a component target)"
        );
        let mut huge = b"\0asm\x01\0\0\0".to_vec();
        huge.resize(MAX_MODULE_BYTES + 1, 0);
        assert_eq!(
            deploy_error(Stage::Validate, huge),
            "hook h: the module is 8388609 bytes; a Wasm hook may be at most 8388608 bytes (8 MiB)"
        );
        let mut limits = relaxed();
        limits.memory_bytes = MAX_MEMORY_BYTES + 1;
        let e = compile(Stage::Validate, wat!("noop_validate"), limits).err().unwrap_or_default();
        assert_eq!(
            e,
            "hook h: its memory limit of 268435457 bytes is above the 268435456 bytes (256 MiB) a Wasm hook may use"
        );
        assert_runtime_usable();
    }

    #[test]
    fn deploy_refuses_odd_memories_and_tables() {
        let _calls = shared();
        let with = |memory: &str| wat!("noop_validate").replace(r#"(memory (export "memory") 1)"#, memory);
        let cases = [
            (with(r#"(memory (export "memory") 1) (memory 1)"#), "hook h defines 2 memories; a hook may have one"),
            (with(r#"(memory (export "memory") 1 1 shared)"#), "hook h: its memory is shared; hooks have no threads"),
            (
                with(r#"(memory (export "memory") 1) (table 1 funcref) (table 1 funcref)"#),
                "hook h defines 2 tables; a hook may have at most one",
            ),
            (
                with(r#"(memory (export "memory") 1) (table 10001 funcref)"#),
                "hook h declares a table of 10001 elements; a hook's table may hold at most 10000",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(deploy_error(Stage::Validate, binary(&text)), want);
        }
        let e = deploy_error(Stage::Validate, binary(&with(r#"(memory (export "memory") i64 1)"#)));
        assert!(e.starts_with("hook h: its memory is 64-bit") || e.starts_with("hook h: not a valid"), "{e}");
        let mut small = relaxed();
        small.memory_bytes = 65536;
        assert_eq!(
            compile(Stage::Validate, &with(r#"(memory (export "memory") 2)"#), small).err().as_deref(),
            Some("hook h declares an initial memory of 131072 bytes (2 pages), above its memory limit of 65536 bytes")
        );
        assert!(
            compile(Stage::Validate, &with(r#"(memory (export "memory") 1) (table 10000 funcref)"#), relaxed()).is_ok()
        );
        assert_runtime_usable();
    }

    #[test]
    fn deploy_checks_types() {
        let _calls = shared();
        let wrong_entry = r#"(module
            (memory (export "memory") 1)
            (func (export "ringkv_abi_version") (result i32) (i32.const 1))
            (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "ringkv_validate") (param i32 i32) (result i32) (i32.const 0)))"#;
        assert_eq!(
            deploy_error(Stage::Validate, binary(wrong_entry)),
            "hook h exports ringkv_validate with type (i32, i32) -> i32; the hook ABI needs (i32, i32) -> i64"
        );
        let bad_import = r#"(module (import "ringkv" "log" (func (param i32))))"#;
        assert_eq!(
            deploy_error(Stage::Validate, binary(bad_import)),
            "hook h imports ringkv.log with type (i32) -> (); the host provides (i32, i32, i32) -> ()"
        );
        let no_memory = r#"(module (func (export "ringkv_validate") (param i32 i32) (result i64) (i64.const 0)))"#;
        assert_eq!(deploy_error(Stage::Validate, binary(no_memory)), "hook h does not export its memory as `memory`");
        let start_loops = wat!("noop_validate")
            .replace("(global $heap", "(func $start (loop $l (br $l))) (start $start)\n  (global $heap");
        assert_eq!(
            compile(Stage::Validate, &start_loops, tight()).err().as_deref(),
            Some("hook h: checking its ABI version, it exceeded its deadline of 50ms")
        );
        assert_runtime_usable();
    }

    #[test]
    fn infinite_loop_hits_the_deadline() {
        let _calls = shared();
        let looping = hook_with(Stage::Validate, wat!("infinite_loop"), tight());
        assert_eq!(put(&looping, b"k", b"v"), Err(HookFailure::Deadline(Duration::from_millis(50))));
        assert_runtime_usable();
        assert_eq!(put(&looping, b"k", b"v"), Err(HookFailure::Deadline(Duration::from_millis(50))));
    }

    #[test]
    fn memory_grow_bomb_hits_the_memory_limit() {
        let _calls = shared();
        let bomb = hook(Stage::Validate, wat!("memory_grow_bomb"));
        assert_eq!(put(&bomb, b"k", b"v"), Err(HookFailure::Memory(16 * 1024 * 1024)));
        assert_runtime_usable();
        let mut small = relaxed();
        small.memory_bytes = 1024 * 1024;
        let bomb = hook_with(Stage::Validate, wat!("memory_grow_bomb"), small);
        assert_eq!(put(&bomb, b"k", b"v"), Err(HookFailure::Memory(1024 * 1024)));
        // An input that does not fit the limit fails the same way.
        let reject = hook_with(Stage::Validate, wat!("reject_validate"), small);
        assert_eq!(put(&reject, b"k", &vec![0u8; 2 * 1024 * 1024]), Err(HookFailure::Memory(1024 * 1024)));
        assert_runtime_usable();
    }

    #[test]
    fn deep_recursion_overflows_the_stack() {
        let _calls = shared();
        let deep = hook(Stage::Validate, wat!("deep_recursion"));
        assert_eq!(error_of(put(&deep, b"k", b"v")), "overflowed the Wasm stack (512 KiB): deep recursion?");
        assert_runtime_usable();
    }

    #[test]
    fn out_of_bounds_results_are_refused() {
        let _calls = shared();
        let oob = hook(Stage::Validate, wat!("out_of_bounds_result"));
        assert_eq!(
            error_of(put(&oob, b"k", b"v")),
            "returned an out-of-bounds result: ptr 65532 len 100 but memory is 65536 bytes"
        );
        assert_runtime_usable();
        let bad_alloc = returning("ringkv_validate", &[0]).replace("(i32.const 32768)", "(i32.const 65530)");
        assert_eq!(
            error_of(put(&hook(Stage::Validate, &bad_alloc), b"k", b"v")),
            "ringkv_alloc returned an out-of-bounds pointer: ptr 65530 len 34 but memory is 65536 bytes"
        );
        let no_alloc = returning("ringkv_validate", &[0]).replace("(i32.const 32768)", "(i32.const 0)");
        assert_eq!(
            error_of(put(&hook(Stage::Validate, &no_alloc), b"k", b"v")),
            "could not allocate 34 bytes for its input (ringkv_alloc returned 0)"
        );
    }

    #[test]
    fn guest_panics_carry_their_message() {
        let _calls = shared();
        let panics = hook(Stage::Validate, wat!("panics"));
        assert_eq!(error_of(put(&panics, b"k", b"v")), "guest panicked: the guest's own message: value too large");
        assert_runtime_usable();
        let trap = returning("ringkv_validate", &[0]).replace("(i64.or", "(unreachable) (i64.or");
        let e = error_of(put(&hook(Stage::Validate, &trap), b"k", b"v"));
        assert!(e.starts_with("trapped: wasm `unreachable` instruction executed"), "{e}");
    }

    #[test]
    fn log_lines_reach_the_host() {
        let _calls = shared();
        let logs = hook(
            Stage::Validate,
            r#"(module
                (import "ringkv" "log" (func $log (param i32 i32 i32)))
                (memory (export "memory") 1)
                (data (i32.const 16) "\00")
                (data (i32.const 32) "a line from the guest")
                (func (export "ringkv_abi_version") (result i32) (i32.const 1))
                (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 1024))
                (func (export "ringkv_validate") (param $ptr i32) (param $len i32) (result i64)
                    (local $i i32)
                    (loop $more
                        (call $log (i32.and (local.get $i) (i32.const 1)) (i32.const 32) (i32.const 21))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br_if $more (i32.lt_u (local.get $i) (i32.const 50))))
                    ;; Out of bounds: the call fails.
                    (if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 1))
                        (then (call $log (i32.const 0) (i32.const 65530) (i32.const 100))))
                    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1))))"#,
        );
        assert_eq!(put(&logs, b"k", b"v"), Ok(Decision::Accept));
        assert_eq!(
            error_of(delete(&logs, b"k")),
            "called ringkv.log with an out-of-bounds string: ptr 65530 len 100 but memory is 65536 bytes"
        );
    }

    #[test]
    fn calls_do_not_share_state() {
        let _calls = shared();
        // Rejects if a global or memory written by an earlier call is still set.
        let stateful = hook(
            Stage::Validate,
            r#"(module
                (memory (export "memory") 1)
                (global $seen (mut i32) (i32.const 0))
                (data (i32.const 16) "\00")
                (data (i32.const 32) "\01state survived")
                (func (export "ringkv_abi_version") (result i32) (i32.const 1))
                (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 1024))
                (func (export "ringkv_validate") (param i32 i32) (result i64)
                    (if (i32.or (global.get $seen) (i32.load8_u (i32.const 8)))
                        (then (return (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 15)))))
                    (global.set $seen (i32.const 1))
                    (i32.store8 (i32.const 8) (i32.const 1))
                    (drop (memory.grow (i32.const 1)))
                    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1))))"#,
        );
        for _ in 0..3 {
            assert_eq!(put(&stateful, b"k", b"v"), Ok(Decision::Accept));
        }
    }

    /// An ABI v2 validate hook: rejects unless the key's stored value is
    /// `want` (`-` for no record), reading it through `ringkv.old_value`
    /// (into a buffer of `cap` bytes, retrying with a bigger one) and its
    /// version through `ringkv.old_version` (kept in the reason's first byte).
    fn old_value_hook(version: i32) -> String {
        format!(
            r#"(module
                (import "ringkv" "old_version" (func $old_version (result i64)))
                (import "ringkv" "old_value" (func $old_value (param i32 i32) (result i64)))
                (memory (export "memory") 1)
                (func (export "ringkv_abi_version") (result i32) (i32.const {version}))
                (func (export "ringkv_alloc") (param i32) (result i32) (i32.const 32768))
                (func (export "ringkv_validate") (param i32 i32) (result i64) (local $len i64)
                    ;; too small a buffer first: nothing may be copied
                    (local.set $len (call $old_value (i32.const 1024) (i32.const 1)))
                    (i64.store8 (i32.const 1025) (call $old_version))
                    (i32.store8 (i32.const 1024) (i32.const 1))
                    (if (i64.ge_s (local.get $len) (i64.const 0))
                        (then (drop (call $old_value (i32.const 1026) (i32.wrap_i64 (local.get $len)))))
                        (else (i32.store8 (i32.const 1026) (i32.const 45)) (local.set $len (i64.const 1))))
                    ;; reject with: version byte, then the value (or "-")
                    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.add (local.get $len) (i64.const 2)))))"#
        )
    }

    fn loader_of(old: Option<(&'static [u8], u64)>) -> (OldValueLoader, Arc<AtomicUsize>) {
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let loader: OldValueLoader = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(old.map(|(value, version)| OldValue { value: value.to_vec(), version }))
        });
        (loader, loads)
    }

    #[test]
    fn abi_v2_hooks_read_the_old_value_once_and_guard_on_its_version() {
        let _calls = shared();
        let h = hook(Stage::Validate, &old_value_hook(2));
        let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(b"new"), now_ms: 1, client_ttl_ms: None };
        let (loader, loads) = loader_of(Some((b"before", 7)));
        let report = h.call(&input, &loader);
        assert_eq!(report.result, Ok(Decision::Reject("\u{7}before".into())));
        assert_eq!(report.old_version_read, Some(7), "the write is guarded on the version read");
        assert_eq!(loads.load(Ordering::SeqCst), 1, "three reads, one load");
        let (loader, _) = loader_of(None);
        let report = h.call(&input, &loader);
        assert_eq!(report.result, Ok(Decision::Reject("\u{0}-".into())));
        assert_eq!(report.old_version_read, Some(0));
    }

    #[test]
    fn abi_v1_and_v2_modules_run_side_by_side() {
        let _calls = shared();
        let v1 = hook(Stage::Validate, &returning("ringkv_validate", &[0]));
        let v2 = hook(Stage::Validate, &old_value_hook(2));
        let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(b"v"), now_ms: 1, client_ttl_ms: None };
        let (loader, loads) = loader_of(Some((b"x", 3)));
        let report = v1.call(&input, &loader);
        assert_eq!((report.result, report.old_version_read), (Ok(Decision::Accept), None));
        assert_eq!(loads.load(Ordering::SeqCst), 0, "a v1 module never loads the old value");
        assert_eq!(v2.call(&input, &loader).old_version_read, Some(3));
        let refused = deploy_error(Stage::Validate, binary(&old_value_hook(1)));
        assert!(refused.contains("imports ringkv.old_version but declares hook ABI version 1"), "{refused}");
        let newer = deploy_error(
            Stage::Validate,
            binary(&returning("ringkv_validate", &[0]).replace("i32.const 1))", "i32.const 3))")),
        );
        assert!(newer.contains("hook ABI version 3; this node speaks versions 1 to 2"), "{newer}");
    }

    #[test]
    fn the_old_value_fails_clearly_where_there_is_none_to_read() {
        let _calls = shared();
        let h = hook(Stage::Validate, &old_value_hook(2));
        let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(b"v"), now_ms: 1, client_ttl_ms: None };
        let broken: OldValueLoader = Arc::new(|| Err("disk on fire".into()));
        let message = error_of(h.call(&input, &broken).result);
        assert!(message.contains("could not read the old value: disk on fire"), "{message}");
        let text = old_value_hook(2).replace("ringkv_validate", "ringkv_partition");
        let f = partitioner(&text);
        match f.routing_key(b"k") {
            Err(HookFailure::Error(m)) => assert!(m.contains("only validate and ttl hooks may call"), "{m}"),
            other => panic!("a partition function has no old value, got {other:?}"),
        }
    }

    #[test]
    fn pool_exhaustion_is_an_error() {
        let _calls = shared();
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(1).total_memories(1).total_tables(1).max_memory_size(MAX_MEMORY_BYTES);
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool)).epoch_interruption(true);
        let small = Engine::new(&config).expect("a one-slot engine");
        let spec = spec_of(Stage::Validate, binary(wat!("noop_validate")), relaxed());
        let module = Module::from_binary(&small, &spec.source).expect("compiles");
        let prepared = Prepared::from_module(&small, &spec, &module).expect("links");
        let mut holder = Store::new(&small, CallData::new(&prepared, OldValueSource::default()));
        holder.set_epoch_deadline(1);
        let _held = prepared.pre.instantiate(&mut holder).expect("the only slot");
        let result = prepared.run(1, &mut OldValueSource::default(), |_| {}, |_| Ok(()));
        assert_eq!(
            result,
            Err(HookFailure::Error(
                "found no free Wasm instance slot: all 256 are busy with concurrent calls on this node".into()
            ))
        );
    }

    /// Waits (bounded) until the ticker has parked, then checks it stays
    /// parked: an idle node does not wake up every millisecond.
    #[test]
    fn ticker_parks_when_idle() {
        let _alone = exclusive();
        let looping = hook_with(Stage::Validate, wat!("infinite_loop"), tight());
        let before = TICKER.ticks.load(Ordering::Relaxed);
        // The deadline can only fire if the ticker ticks.
        assert_eq!(put(&looping, b"k", b"v"), Err(HookFailure::Deadline(Duration::from_millis(50))));
        assert!(TICKER.ticks.load(Ordering::Relaxed) > before);
        let waited = Instant::now();
        while !TICKER.parked.load(Ordering::SeqCst) && waited.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(TICKER.in_flight.load(Ordering::SeqCst), 0);
        assert!(TICKER.parked.load(Ordering::SeqCst), "the ticker did not park with no calls in flight");
        let parked_at = TICKER.ticks.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(TICKER.ticks.load(Ordering::Relaxed), parked_at);
        assert!(TICKER.parked.load(Ordering::SeqCst));
        // And the next call wakes it.
        assert_eq!(put(&looping, b"k", b"v"), Err(HookFailure::Deadline(Duration::from_millis(50))));
    }

    #[test]
    fn deadline_ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 11);
        assert_eq!(deadline_ticks(Duration::from_micros(10_001)), 12);
        assert_eq!(deadline_ticks(Duration::MAX), MAX_DEADLINE_TICKS);
    }

    /// Per-call cost of a no-op Wasm validate hook next to a no-op Lua one.
    /// Prints the numbers; asserts nothing about time. Run with
    /// `cargo test --release -p ringkv --lib hooks::wasm::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        let _calls = shared();
        let n = 20_000;
        let measure = |label: &str, hook: &Arc<dyn CompiledHook>| {
            for _ in 0..1000 {
                assert_eq!(put(hook, b"key", b"value"), Ok(Decision::Accept));
            }
            let mut times = Vec::with_capacity(n);
            let started = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                let _ = put(hook, b"key", b"value");
                times.push(t.elapsed());
            }
            let total = started.elapsed();
            times.sort();
            println!(
                "{label}: median {:?}, p99 {:?}, mean {:?} per call ({n} calls)",
                times[n / 2],
                times[n * 99 / 100],
                total / n as u32
            );
        };
        let wasm = hook_with(Stage::Validate, wat!("noop_validate"), HookLimits::default());
        measure("wasm noop validate", &wasm);
        let lua_spec = HookSpec {
            kind: HookKind::Lua,
            ..spec_of(Stage::Validate, b"function validate() return true end".to_vec(), HookLimits::default())
        };
        let lua = crate::lua::LuaRuntime.compile(&lua_spec).expect("compiles");
        measure("lua noop validate", &lua);
    }
}
