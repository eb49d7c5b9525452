//! Guest SDK modules run in the node's own Wasm runtime, in this process
//! (no cluster): every call gets a fresh instance, so a hook that tries to
//! carry state from one call to the next (through a static or the heap)
//! finds none; and a call that allocates within the SDK's arena grows no
//! memory (a grow makes the slot's next call pay an `mprotect`), while one
//! that allocates past it does, and is counted.

use std::sync::Arc;

use ringkv::hooks::wasm::memory_grows;
use ringkv::hooks::{
    runtime_for, CompiledHook, Decision, FailPolicy, HookInput, HookKind, HookLimits, HookSpec, OldValueLoader, Stage,
    WriteOp,
};
use ringkv_tests::guest::guest_module;

fn compiled(name: &str) -> Arc<dyn CompiledHook> {
    let spec = HookSpec {
        name: name.replace('_', "-"),
        kind: HookKind::Wasm,
        stage: Stage::Validate,
        prefix: Vec::new(),
        source: guest_module(name),
        version: 1,
        sha256: String::new(),
        fail_policy: FailPolicy::Closed,
        // Generous: the test is about state and memory, not speed.
        limits: HookLimits { timeout: std::time::Duration::from_secs(10), ..HookLimits::default() },
        deployed_at_ms: 0,
    };
    runtime_for(HookKind::Wasm).compile(&spec).unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn put(hook: &Arc<dyn CompiledHook>, value: &[u8]) -> Decision {
    let no_old: OldValueLoader = Arc::new(|| Ok(None));
    let input = HookInput { op: WriteOp::Put, key: b"k", value: Some(value), now_ms: 1, client_ttl_ms: None };
    let report = hook.call(&input, &no_old);
    report.result.unwrap_or_else(|e| panic!("{}: the call failed: {e}", hook.spec().name))
}

#[test]
fn sdk_calls_share_no_state_and_grow_no_memory() {
    let stateful = compiled("stateful_validate");
    let noop = compiled("noop_validate");
    let json = compiled("validate_json");
    let small = br#"{"id": 1, "name": "ada"}"#;

    let before = memory_grows();
    for i in 0..20 {
        assert_eq!(put(&stateful, b"v"), Decision::Accept, "call {i}: state survived an earlier call");
        assert_eq!(put(&noop, b"v"), Decision::Accept);
        assert_eq!(put(&json, small), Decision::Accept);
    }
    assert_eq!(memory_grows(), before, "calls within the SDK's arena grew memory");

    // A 1 MiB value does not fit the arena: its input grows memory, and the
    // node counts it (ringkv_hook_wasm_memory_grows_total).
    let big = format!(r#"{{"id": 2, "name": "{}"}}"#, "x".repeat(1 << 20));
    assert_eq!(put(&json, big.as_bytes()), Decision::Accept);
    assert!(memory_grows() > before, "a call that outgrew the arena was not counted");
}
