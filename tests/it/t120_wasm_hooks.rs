//! Wasm hooks built with the guest SDK (`guest-sdk/`) on a 3-node cluster of
//! real processes:
//!
//! - The Rust ports of `validate_json` and `ttl_by_prefix` decide exactly as
//!   the Lua scripts do: same accept/reject outcome and the same reject
//!   reason for a table of values, the same TTL choice for a table of keys.
//!   `ringkv hook test --kind wasm` (the real CLI) decides as the cluster
//!   does, and `ringkv hook deploy --kind wasm` deploys a module.
//! - A Wasm validate hook redeployed under continuous load (alternating two
//!   modules) fails no request, and every write is judged by one deployed
//!   version.
//! - A panicking Rust guest fails the write with its panic message; the
//!   node keeps serving.
//! - ABI version 2: a Wasm hook reads the key's stored record (value and
//!   version) through every node, and reading it makes the write
//!   conditional: the Rust port of `immutable_keys` lets exactly one of
//!   many concurrent creates of a key win, as the Lua script does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_client::proto::{self, HookStage};
use ringkv_client::{Client, ClientOptions, Error, PutOptions};
use ringkv_tests::cli::{args, cli, now_ms};
use ringkv_tests::guest::{guest_module, guest_module_path, wasm_hook};
use ringkv_tests::hooks::{
    judged_by, lua_hook, wait_judged, wait_removed, wait_running, Judged, HOOK_TIMEOUT_MS as TIMEOUT_MS,
};
use ringkv_tests::{ProcCluster, PATIENCE};

const VALIDATE_JSON_LUA: &str = include_str!("../../scripts/validate_json.lua");
const TTL_BY_PREFIX_LUA: &str = include_str!("../../scripts/ttl_by_prefix.lua");

const NODES: [u64; 3] = [1, 2, 3];

/// A write's outcome under the validate hook `hook` (v1): "accept", or
/// "reject: REASON" with REASON what follows `rejected by hook HOOK v1: `.
/// Any other error fails the test.
fn decision<T>(result: Result<T, Error>, hook: &str, what: &str) -> String {
    match result {
        Ok(_) => "accept".into(),
        Err(Error::Rejected(msg)) => {
            let prefix = format!("rejected by hook {hook} v1: ");
            let reason =
                msg.strip_prefix(&prefix).unwrap_or_else(|| panic!("{what}: {msg:?} does not start {prefix:?}"));
            format!("reject: {reason}")
        }
        Err(e) => panic!("{what}: expected an accept or a rejection by {hook}, got {e}"),
    }
}

/// The validate_json cases: a value (`None`: a delete of a stored key) and
/// the decision both ports must make (the reasons as t100 and the guest's
/// own unit tests have them).
const JSON_CASES: &[(&str, Option<&str>, &str)] = &[
    ("valid object", Some(r#"{"id": 7, "name": "ada"}"#), "accept"),
    ("valid with extras", Some(r#" {"id": 1.5, "name": "", "extra": [1]} "#), "accept"),
    ("nested", Some(r#"{"id": 2, "name": "n", "address": {"city": "x", "zip": [1, 2]}}"#), "accept"),
    ("not JSON", Some("not json"), "reject: value is not JSON (expected ident at line 1 column 2)"),
    ("a bare word", Some("hello"), "reject: value is not JSON (expected value at line 1 column 1)"),
    ("truncated", Some(r#"{"id": 1"#), "reject: value is not JSON (EOF while parsing an object at line 1 column 8)"),
    ("trailing text", Some("{} x"), "reject: value is not JSON (trailing characters at line 1 column 4)"),
    ("array", Some("[1, 2]"), "reject: value is not a JSON object (it is an array)"),
    ("array after whitespace", Some(" \n[]"), "reject: value is not a JSON object (it is an array)"),
    ("string", Some("\"text\""), "reject: value is not a JSON object (it is a string)"),
    ("null", Some("null"), "reject: value is not a JSON object (it is null)"),
    ("number", Some("12"), "reject: value is not a JSON object (it is a number)"),
    ("boolean", Some("true"), "reject: value is not a JSON object (it is a boolean)"),
    ("empty object", Some("{}"), r#"reject: missing field "id""#),
    ("missing id", Some(r#"{"name": "x"}"#), r#"reject: missing field "id""#),
    ("missing name", Some(r#"{"id": 1}"#), r#"reject: missing field "name""#),
    ("id of the wrong type", Some(r#"{"id": "7", "name": "x"}"#), r#"reject: field "id" must be a number, not string"#),
    ("id null", Some(r#"{"id": null, "name": "x"}"#), r#"reject: field "id" must be a number, not null"#),
    ("id an object", Some(r#"{"id": {}, "name": "x"}"#), r#"reject: field "id" must be a number, not object"#),
    // The Lua script calls a nested array an object; the port does too.
    ("id an array", Some(r#"{"id": [1], "name": "x"}"#), r#"reject: field "id" must be a number, not object"#),
    ("name null", Some(r#"{"id": 7, "name": null}"#), r#"reject: field "name" must be a string, not null"#),
    ("name a number", Some(r#"{"id": 1, "name": 2}"#), r#"reject: field "name" must be a string, not number"#),
    ("delete", None, "accept"),
];

/// How long a key lives, in classes wide enough that the put's own duration
/// cannot move a value into another class: "never", "30 min", "60 s",
/// "5 min", or the number itself. These are TTLs the hook (or the client)
/// chose, compared as decisions; the margins only absorb the time between
/// `before_ms` (taken before the put) and the leader stamping the write.
fn ttl_class(expires_at_ms: Option<u64>, before_ms: u64) -> String {
    let Some(at) = expires_at_ms else { return "never".into() };
    let ttl = at.saturating_sub(before_ms);
    let within = |secs: u64, low: u64, high: u64| (secs * 1000 - low * 1000..=secs * 1000 + high * 1000).contains(&ttl);
    if within(1800, 60, 300) {
        "30 min".into()
    } else if within(60, 10, 60) {
        "60 s".into()
    } else if within(300, 60, 300) {
        "5 min".into()
    } else {
        format!("{ttl} ms")
    }
}

/// The ttl_by_prefix cases: a key (suffixed with a per-port tag), the
/// client's TTL, and the class both ports must give.
fn ttl_cases() -> Vec<(&'static str, Option<Duration>, &'static str)> {
    let five_min = Some(Duration::from_secs(300));
    vec![
        ("session/a", Some(Duration::from_secs(5)), "30 min"),
        ("session/b", None, "30 min"),
        ("cache/a", None, "60 s"),
        ("cache/b", Some(Duration::from_secs(3600)), "60 s"),
        ("other/a", five_min, "5 min"),
        ("other/b", None, "never"),
        ("sessions/a", five_min, "5 min"),
        ("session", None, "never"),
        ("Cache/a", None, "never"),
    ]
}

/// Puts every ttl case with the keys prefixed by `tag` (through every node
/// in turn) and returns each key's TTL class. The ttl hook `hook` v1 must
/// have judged each put.
async fn ttl_decisions(c: &ProcCluster, hook: &str, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (key, client_ttl, _)) in ttl_cases().into_iter().enumerate() {
        // The rules look at the key's start, so the tag goes at its end,
        // after a '-' so that "session" does not become "session/...".
        let key = format!("{key}-{tag}");
        let nc = c.node_client(NODES[i % NODES.len()]);
        let before = now_ms();
        let r = nc.put_detailed(key.clone(), "v", PutOptions { ttl: client_ttl, if_version: None }).await;
        let r = r.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(judged_by(&r), [format!("{hook} v1")], "{key}");
        let got = nc.get(key.clone()).await.expect("get").unwrap_or_else(|| panic!("{key} was just written"));
        let class = ttl_class(got.expires_at_ms, before);
        println!("{hook}: {key} (client TTL {client_ttl:?}) -> {class}");
        out.push(class);
    }
    out
}

/// `ringkv hook test` output without its timing: "accept (12 us)" ->
/// "accept", "reject: REASON (12 us)" -> "reject: REASON".
fn without_timing(out: &str) -> String {
    let line = out.trim();
    match line.rsplit_once(" (") {
        Some((decision, took)) if took.ends_with(" us)") => decision.to_string(),
        _ => panic!("unexpected `hook test` output: {line:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_examples_match_their_lua_counterparts() {
    let json_wasm = guest_module("validate_json");
    let ttl_wasm = guest_module("ttl_by_prefix");
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();

    // validate_json: the Wasm port on wasm/, the Lua script on lua/.
    let deploys = [
        wasm_hook("json-wasm", HookStage::Validate, "wasm/", json_wasm.clone(), TIMEOUT_MS),
        lua_hook("json-lua", HookStage::Validate, "lua/", VALIDATE_JSON_LUA),
    ];
    for d in deploys {
        let name = d.name.clone();
        let r = client.deploy_hook(d).await.unwrap_or_else(|e| panic!("deploying {name}: {e}"));
        assert_eq!(r.version, 1, "{name}");
    }
    wait_running(&c, "json-wasm", 1, ("wasm/p", Some("nope")), "reject: value is not JSON").await;
    wait_running(&c, "json-lua", 1, ("lua/p", Some("nope")), "reject: value is not JSON").await;

    let mut wasm_decisions = BTreeMap::new();
    for (i, (what, value, want)) in JSON_CASES.iter().enumerate() {
        let nc = c.node_client(NODES[i % NODES.len()]);
        let mut got = Vec::new();
        for (prefix, hook) in [("wasm", "json-wasm"), ("lua", "json-lua")] {
            let key = format!("{prefix}/{i}");
            let d = match value {
                Some(v) => {
                    let r = nc.put_detailed(key.clone(), v.to_string(), PutOptions::default()).await;
                    if let Ok(r) = &r {
                        assert_eq!(judged_by(r), [format!("{hook} v1")], "{what}: {key}");
                    }
                    let d = decision(r, hook, &format!("{what} under {prefix}/"));
                    let stored = nc.get(key.clone()).await.expect("get").map(|s| s.value);
                    let want_stored = (d == "accept").then(|| v.as_bytes().to_vec().into());
                    assert_eq!(stored, want_stored, "{what}: {key} is stored only if accepted");
                    d
                }
                None => {
                    // A delete of a key the hook accepted before.
                    nc.put(key.clone(), r#"{"id": 1, "name": "to delete"}"#).await.expect("a valid record");
                    let d = decision(nc.delete(key.clone()).await, hook, &format!("{what} under {prefix}/"));
                    assert_eq!(nc.get(key.clone()).await.expect("get"), None, "{what}: {key} is deleted");
                    d
                }
            };
            got.push(d);
        }
        println!("{what}: wasm {:?}, lua {:?}", got[0], got[1]);
        assert_eq!(got[0], got[1], "{what} ({value:?}): the Wasm port and the Lua script disagree");
        assert_eq!(got[0], *want, "{what} ({value:?})");
        wasm_decisions.insert(*what, got[0].clone());
    }

    // `ringkv hook test --kind wasm` runs the module file in a node's
    // sandbox and decides as the deployed hook did.
    let all = c.endpoints().join(",");
    let json_path = guest_module_path("validate_json").display().to_string();
    for (what, value, _) in JSON_CASES.iter().filter(|(what, ..)| {
        ["valid object", "not JSON", "array", "missing name", "id of the wrong type", "delete"].contains(what)
    }) {
        let mut a = args(&["hook", "test", "--kind", "wasm", "--stage", "validate", "--file", &json_path]);
        a.extend(args(&["--key", "wasm/cli", "--timeout", "1s", "--endpoints", &all]));
        if let Some(v) = value {
            a.extend(args(&["--value", v]));
        }
        let (ok, out, err) = cli(a).await;
        // `hook test` exits 0 on accept and 1 on reject (docs/cli.md).
        let rejects = wasm_decisions[what].starts_with("reject");
        assert_eq!(ok, !rejects, "hook test {what}: exit status does not match the decision: {out} {err}");
        assert_eq!(without_timing(&out), wasm_decisions[what], "hook test {what} ({value:?}): {out}");
    }
    let ttl_path = guest_module_path("ttl_by_prefix").display().to_string();
    for (key, ttl, want) in
        [("session/a", None, "ttl: expires 1800000 ms after the write"), ("x", Some("5s"), "keep-ttl")]
    {
        let mut a = args(&["hook", "test", "--kind", "wasm", "--stage", "ttl", "--file", &ttl_path, "--key", key]);
        a.extend(args(&["--value", "v", "--timeout", "1s", "--endpoints", &all]));
        if let Some(ttl) = ttl {
            a.extend(args(&["--ttl", ttl]));
        }
        let (ok, out, err) = cli(a).await;
        assert!(ok, "hook test ttl {key}: {err}");
        assert_eq!(without_timing(&out), want, "hook test ttl {key}: {out}");
    }

    // `ringkv hook deploy --kind wasm`: the module is deployed and judges writes.
    let mut a = args(&["hook", "deploy", "--kind", "wasm", "--stage", "validate", "--name", "json-cli"]);
    a.extend(args(&["--prefix", "cli/", "--file", &json_path, "--timeout", "1s", "--endpoints", &all]));
    let (ok, out, err) = cli(a).await;
    assert!(ok, "hook deploy --kind wasm: {err}");
    assert!(out.starts_with("deployed json-cli v1 (sha256 "), "{out}");
    wait_running(&c, "json-cli", 1, ("cli/p", Some("nope")), "reject: value is not JSON").await;
    let info = client.get_hook("json-cli").await.expect("get the CLI-deployed hook");
    assert_eq!(info.kind, proto::HookKind::Wasm as i32, "{}", info.name);
    assert_eq!(info.source, json_wasm, "the deployed source is the module file");
    for id in NODES {
        let nc = c.node_client(id);
        let r = nc.put_detailed(format!("cli/{id}"), r#"{"id": 3, "name": "c"}"#, PutOptions::default()).await;
        assert_eq!(judged_by(&r.expect("a valid record")), ["json-cli v1"], "node {id}");
        assert_eq!(
            decision(nc.put(format!("cli/{id}/bad"), "[]").await, "json-cli", "an array under cli/"),
            "reject: value is not a JSON object (it is an array)"
        );
    }

    // ttl_by_prefix: the Wasm port, then (removed) the Lua script; both run
    // on every key (the rules look at the key's start), one at a time.
    let want: Vec<&str> = ttl_cases().into_iter().map(|(_, _, class)| class).collect();
    let r = client.deploy_hook(wasm_hook("ttl-wasm", HookStage::Ttl, "", ttl_wasm, TIMEOUT_MS)).await;
    assert_eq!(r.expect("deploy ttl-wasm").version, 1);
    wait_running(&c, "ttl-wasm", 1, ("session/p", Some("v")), "ttl: 1800000 ms").await;
    let wasm_ttls = ttl_decisions(&c, "ttl-wasm", "w").await;
    assert_eq!(client.remove_hook("ttl-wasm").await.expect("remove ttl-wasm"), 1);
    wait_removed(&c, "ttl-wasm").await;
    let r = client.deploy_hook(lua_hook("ttl-lua", HookStage::Ttl, "", TTL_BY_PREFIX_LUA)).await;
    assert_eq!(r.expect("deploy ttl-lua").version, 1);
    wait_running(&c, "ttl-lua", 1, ("session/p", Some("v")), "ttl: 1800000 ms").await;
    let lua_ttls = ttl_decisions(&c, "ttl-lua", "l").await;
    assert_eq!(wasm_ttls, lua_ttls, "the Wasm port and the Lua script choose different TTLs");
    assert_eq!(wasm_ttls, want);
}

const SWAP_HOOK: &str = "swap";
const WRITERS: usize = 8;
const REDEPLOYS: u64 = 10;
/// Writes each version must have judged before the next deploy.
const PER_VERSION: usize = 5;
/// A bound on each writer, whatever happens.
const MAX_WRITES_PER_WRITER: usize = 20_000;

/// Writers put valid JSON records (and now and then delete one) under `hs/`
/// while the validate hook there is redeployed, alternating the guest SDK's
/// noop_validate and validate_json: both accept every one of these writes,
/// so no write may fail at all, however the swaps fall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_validate_hook_hot_swaps_under_load_without_failed_requests() {
    let modules = [("noop_validate", guest_module("noop_validate")), ("validate_json", guest_module("validate_json"))];
    let definition = |k: usize| wasm_hook(SWAP_HOOK, HookStage::Validate, "hs/", modules[k % 2].1.clone(), TIMEOUT_MS);
    let c = ProcCluster::start(3, &[]).await;
    let admin = c.client();

    // Version -> module name, as deployed.
    let mut deployed: BTreeMap<u64, &str> = BTreeMap::new();
    let first = admin.deploy_hook(definition(0)).await.expect("deploy the first version");
    deployed.insert(first.version, modules[0].0);
    wait_running(&c, SWAP_HOOK, first.version, ("hs/probe", Some("v")), "accept").await;

    let judged: Judged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Some writers send to one node (which forwards to the leader), some route by the ring.
        let client: Client = if w % 4 == 3 { c.client() } else { c.node_client(NODES[w % NODES.len()]) };
        let (judged, stop) = (judged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut puts, mut deletes, mut failures) = (Vec::new(), 0usize, Vec::new());
            for i in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("hs/{w}/{}", i % 64);
                if i % 8 == 7 {
                    match client.delete(key.clone()).await {
                        Ok(_) => deletes += 1,
                        Err(e) => failures.push(format!("delete {key}: {e}")),
                    }
                    continue;
                }
                let value = format!(r#"{{"id": {i}, "name": "writer {w}"}}"#);
                match client.put_detailed(key.clone(), value, PutOptions::default()).await {
                    Ok(r) => {
                        let hooks: Vec<(String, u64)> = r.hooks.into_iter().map(|h| (h.name, h.version)).collect();
                        if let [(_, v)] = hooks.as_slice() {
                            *judged.lock().expect("judged").entry(*v).or_default() += 1;
                        }
                        puts.push((key, hooks));
                    }
                    Err(e) => failures.push(format!("put {key}: {e}")),
                }
            }
            (puts, deletes, failures)
        }));
    }

    wait_judged(&judged, first.version, PER_VERSION, "writes judged by the first version").await;
    for k in 1..=REDEPLOYS {
        let which = modules[k as usize % 2].0;
        // Each deploy through a different node. A deploy compiles the module
        // on a node busy with the writers (and, in debug builds, with an
        // unoptimized compiler): the admin client waits up to PATIENCE rather
        // than the default 10 s, since this test is about the writers.
        let id = NODES[k as usize % NODES.len()];
        let opts = ClientOptions { timeout: PATIENCE, ..ClientOptions::default() };
        let via = Client::connect_with([&c.nodes[&id].grpc], opts).expect("client").with_ring_routing(false);
        let started = Instant::now();
        let r = via.deploy_hook(definition(k as usize)).await.unwrap_or_else(|e| panic!("deploy {k} ({which}): {e}"));
        println!("deploy {k} ({which}) through node {id} returned v{} after {:?}", r.version, started.elapsed());
        let last = *deployed.keys().last().expect("a version");
        assert_eq!(r.version, last + 1, "each redeploy of another module is a new version");
        deployed.insert(r.version, which);
        wait_judged(&judged, r.version, PER_VERSION, &format!("writes judged by v{} ({which})", r.version)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let (mut puts, mut deletes, mut failures) = (Vec::new(), 0, Vec::new());
    for w in writers {
        let (p, d, f) = w.await.expect("writer task");
        puts.extend(p);
        deletes += d;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} writes failed, e.g. {:?}",
        failures.len(),
        puts.len() + deletes + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (key, hooks) in &puts {
        let [(name, version)] = hooks.as_slice() else {
            panic!("{key}: judged by exactly one hook version, got {hooks:?}");
        };
        assert_eq!(name, SWAP_HOOK, "{key}");
        assert!(deployed.contains_key(version), "{key}: v{version} was never deployed");
        *counts.entry(*version).or_default() += 1;
    }
    println!("{} puts and {deletes} deletes over {} versions, none failed", puts.len(), deployed.len());
    assert_eq!(deployed.len() as u64, REDEPLOYS + 1);
    for (version, module) in &deployed {
        let n = counts.get(version).copied().unwrap_or(0);
        println!("  v{version} ({module}): judged {n} puts");
        assert!(n >= PER_VERSION, "v{version} ({module}) judged only {n} puts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_rust_guest_fails_with_its_message_and_the_node_keeps_serving() {
    let module = guest_module("panic_validate");
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    // No prefix: the hook judges every write, and panics only on panic/ keys.
    let r = client.deploy_hook(wasm_hook("panicky", HookStage::Validate, "", module, TIMEOUT_MS)).await;
    assert_eq!(r.expect("deploy panic_validate").version, 1);
    wait_running(&c, "panicky", 1, ("panic/probe", Some("v")), "guest panicked").await;

    // Several rounds through every node: each call gets a fresh instance, so
    // a panic leaves nothing behind for the next call.
    for round in 0..3 {
        for id in NODES {
            let nc = c.node_client(id);
            let key = format!("panic/{round}/{id}");
            let msg = match nc.put(key.clone(), "v").await {
                Err(Error::Rejected(msg)) => msg,
                other => panic!("{key} through node {id}: expected FAILED_PRECONDITION, got {other:?}"),
            };
            println!("{key} via node {id}: {msg}");
            assert!(msg.starts_with("hook panicky v1 "), "names the hook: {msg}");
            assert!(msg.contains("guest panicked"), "{msg}");
            assert!(msg.contains(&format!("boom on {key}")), "carries the guest's message: {msg}");
            assert!(msg.ends_with("the write is rejected (fail-closed)"), "{msg}");
            assert_eq!(nc.get(key.clone()).await.expect("get after a panic"), None, "{key} was not written");

            // The same hook accepts other keys, and the node serves as before.
            let ok = format!("ok/{round}/{id}");
            let r = nc.put_detailed(ok.clone(), "fine", PutOptions::default()).await;
            let r = r.unwrap_or_else(|e| panic!("{ok} through node {id} after a guest panic: {e}"));
            assert_eq!(judged_by(&r), ["panicky v1"], "{ok}");
            let got = nc.get(ok.clone()).await.expect("get").unwrap_or_else(|| panic!("{ok} was just written"));
            assert_eq!(&got.value[..], b"fine");
            assert!(nc.delete(ok.clone()).await.expect("a delete is judged and accepted"), "{ok}");
            nc.status().await.unwrap_or_else(|e| panic!("node {id} status after a guest panic: {e}"));
        }
    }
    // The exact key the guest's unit test panics on.
    match client.put("panic/x", "v").await {
        Err(Error::Rejected(msg)) => {
            assert!(msg.contains("guest panicked") && msg.contains("boom on panic/x"), "{msg}")
        }
        other => panic!("panic/x: expected FAILED_PRECONDITION, got {other:?}"),
    }
    client.put("ok/x", "v").await.expect("ok/x is accepted");

    // The panics are counted as errors, not as rejections.
    let mut errors = 0;
    for id in NODES {
        let listed = c.node_client(id).list_hooks().await.expect("list");
        let s = listed.hooks.iter().find(|h| h.name == "panicky").and_then(|h| h.stats).unwrap_or_default();
        assert_eq!(s.rejects, 0, "node {id}: {s:?}");
        errors += s.errors;
    }
    assert_eq!(errors, 3 * NODES.len() as u64 + 1, "every panic is one failed call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abi_v2_hook_reads_the_stored_record_and_guards_the_write_on_it() {
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let deploys = [
        wasm_hook("show-old", HookStage::Validate, "show/", guest_module("show_old_validate"), TIMEOUT_MS),
        wasm_hook("audit-immutable", HookStage::Validate, "audit/", guest_module("immutable_keys"), TIMEOUT_MS),
    ];
    for d in deploys {
        let name = d.name.clone();
        let r = client.deploy_hook(d).await.unwrap_or_else(|e| panic!("deploying {name}: {e}"));
        assert_eq!(r.version, 1, "{name}");
    }
    wait_running(&c, "show-old", 1, ("show/p", Some("show-old")), "reject: old_version 0, no old_value").await;
    wait_running(&c, "audit-immutable", 1, ("audit/p", Some("v")), "accept").await;

    for id in NODES {
        let nc = c.node_client(id);
        // The stored record as the guest sees it, through any node.
        let key = format!("show/{id}");
        let version = nc.put(key.clone(), "hello").await.expect("a plain write passes without a read");
        let want = format!("reject: old_version {version}, old_value 5 bytes: hello");
        assert_eq!(decision(nc.put(key.clone(), "show-old").await, "show-old", "show"), want, "node {id}");
        assert!(nc.delete(key.clone()).await.expect("deletes are not read"));
        let none = decision(nc.put(key.clone(), "show-old").await, "show-old", "show after delete");
        assert_eq!(none, "reject: old_version 0, no old_value", "node {id}");

        // immutable_keys: create once; never overwrite or delete.
        let key = format!("audit/{id}/entry");
        let created = nc.put(key.clone(), "first").await.expect("creating an audit key");
        for via in NODES {
            let overwrite = decision(c.node_client(via).put(key.clone(), "second").await, "audit-immutable", "put");
            assert_eq!(
                overwrite,
                format!("reject: {key} already exists (version {created}); audit keys are never overwritten")
            );
            let delete = decision(c.node_client(via).delete(key.clone()).await, "audit-immutable", "delete");
            assert_eq!(delete, format!("reject: {key} is an audit key; audit keys are never deleted"));
        }
    }

    // Concurrent creates of one new key: the hook read the version, so every
    // write but the first to apply is judged again and rejected.
    let clients: Vec<Client> = NODES.iter().map(|id| c.node_client(*id)).collect();
    for round in 0..3 {
        let key = format!("audit/race/{round}");
        let mut tasks = Vec::new();
        for i in 0..12usize {
            let (client, key) = (clients[i % clients.len()].clone(), key.clone());
            tasks.push(tokio::spawn(async move { (i, client.put(key, format!("writer {i}")).await) }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("writer task") {
                (i, Ok(version)) => winners.push((i, version)),
                (i, other) => {
                    let d = decision(other, "audit-immutable", &format!("writer {i}"));
                    assert!(d.starts_with(&format!("reject: {key} already exists (version ")), "{d}");
                }
            }
        }
        assert_eq!(winners.len(), 1, "{key}: exactly one create wins, got {winners:?}");
        let (winner, version) = winners[0];
        let stored = client.get(key.clone()).await.expect("get").expect("created");
        assert_eq!((&stored.value[..], stored.version), (format!("writer {winner}").as_bytes(), version));
    }
}
