//! Hostile WebAssembly hook modules (`tests/wasm/hostile/*.wat`) on one
//! 3-node cluster of real processes:
//!
//! - Refused at deploy with INVALID_ARGUMENT and a message naming the
//!   hook and the cause, nothing deployed: bytes that are not a module, a
//!   truncated module, a huge initial memory, a huge table, a WASI import,
//!   an unknown import, the wrong ABI version, a missing stage export.
//! - Failing at call time, each deployed fail-closed on a prefix of its
//!   own: an infinite loop (deadline), a `memory.grow` bomb (memory limit),
//!   deep recursion (Wasm stack), an out-of-bounds result, a guest panic.
//!   Every put under such a prefix is rejected with FAILED_PRECONDITION
//!   naming the hook and the cause, through every node; after each, every
//!   node keeps serving puts and gets elsewhere (judged by a benign Wasm
//!   hook), status calls and `/readyz`. Removing the hooks lets writes
//!   under their prefixes through again.
//! - The same failing modules deployed one by one as the shadow version of
//!   the benign hook (`deploy --shadow`): every write is still accepted by
//!   the benign hook alone, and each shadow call's failure (or its skip,
//!   once throttled) is counted for the shadow.

use std::time::Instant;

use ringkv_client::proto::{self, HookStage};
use ringkv_client::{Client, Error, PutOptions};
use ringkv_tests::cli::http_get;
use ringkv_tests::guest::{guest_module, hostile, wasm_hook};
use ringkv_tests::{eventually, ProcCluster};

const NODES: [u64; 3] = [1, 2, 3];

/// Deadline of the hooks expected to run out of time.
const SHORT_MS: u64 = 20;
/// Deadline of every other hook: long enough that a stalled 2-core machine
/// cannot turn another failure (or a benign call) into a deadline.
const LONG_MS: u64 = 1000;

/// A module refused at deploy, and what the refusal must say (every word,
/// case-insensitively, besides the hook's name).
struct Refused {
    name: &'static str,
    module: fn() -> Vec<u8>,
    stage: HookStage,
    words: &'static [&'static str],
}

fn not_wasm() -> Vec<u8> {
    b"function validate(key, value, ctx) return true end".to_vec()
}

/// A real module cut short: the magic bytes are right, the rest is not.
fn truncated() -> Vec<u8> {
    let mut m = hostile("noop_validate");
    m.truncate(m.len() / 2);
    m
}

const REFUSED: &[Refused] = &[
    Refused { name: "not-wasm", module: not_wasm, stage: HookStage::Validate, words: &["WebAssembly"] },
    Refused { name: "truncated", module: truncated, stage: HookStage::Validate, words: &["WebAssembly"] },
    Refused {
        name: "huge-memory",
        module: || hostile("huge_initial_memory"),
        stage: HookStage::Validate,
        words: &["memory", "limit"],
    },
    Refused { name: "huge-table", module: || hostile("huge_table"), stage: HookStage::Validate, words: &["table"] },
    Refused {
        name: "wasi",
        module: || hostile("imports_wasi"),
        stage: HookStage::Validate,
        words: &["import", "wasi_snapshot_preview1.fd_write", "WASI"],
    },
    Refused {
        name: "unknown-import",
        module: || hostile("imports_unknown"),
        stage: HookStage::Validate,
        words: &["import", "env.foo"],
    },
    Refused {
        name: "wrong-abi",
        module: || hostile("wrong_abi_version"),
        stage: HookStage::Validate,
        words: &["ABI version", "3"],
    },
    Refused {
        name: "missing-export",
        module: || hostile("missing_export"),
        stage: HookStage::Validate,
        words: &["export", "ringkv_validate"],
    },
    // A fine validate module deployed for another stage lacks that stage's export.
    Refused { name: "wrong-stage", module: || hostile("noop_validate"), stage: HookStage::Ttl, words: &["ringkv_ttl"] },
];

/// A module that deploys but fails every call, and the cause its
/// rejection must name (any one of `causes`, case-insensitively).
struct Failing {
    name: &'static str,
    wat: &'static str,
    timeout_ms: u64,
    causes: &'static [&'static str],
}

const FAILING: &[Failing] = &[
    Failing { name: "loop", wat: "infinite_loop", timeout_ms: SHORT_MS, causes: &["exceeded its deadline"] },
    Failing { name: "grow-bomb", wat: "memory_grow_bomb", timeout_ms: LONG_MS, causes: &["exceeded its memory limit"] },
    Failing { name: "recursion", wat: "deep_recursion", timeout_ms: LONG_MS, causes: &["stack"] },
    Failing { name: "out-of-bounds", wat: "out_of_bounds_result", timeout_ms: LONG_MS, causes: &["out-of-bounds"] },
    Failing {
        name: "panics",
        wat: "panics",
        timeout_ms: LONG_MS,
        causes: &["guest panicked: the guest's own message: value too large"],
    },
];

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// The hooks `client`'s node lists as active, as "name vN" (None: the list call failed).
async fn active_hooks(client: &Client) -> Option<Vec<String>> {
    let listed = client.list_hooks().await.ok()?;
    Some(listed.hooks.iter().filter(|h| h.active).map(|h| format!("{} v{}", h.name, h.version)).collect())
}

/// True when the node `client` talks to runs the deployed hook `name` (a
/// dry run of it by name finds it, whatever it decides).
async fn runs(client: &Client, name: &str, key: &str) -> bool {
    let req = proto::TestHookRequest {
        hook: Some(proto::HookDefinition { name: name.into(), ..Default::default() }),
        key: key.as_bytes().to_vec().into(),
        value: Some(b"v".to_vec().into()),
        ..Default::default()
    };
    client.test_hook(req).await.is_ok()
}

/// Waits until every node lists exactly `want` as its active hooks, runs
/// `running` (a dry run of it by name finds it, whatever it decides; a
/// node's registry swaps in every hook of the meta state it loads at once,
/// so it then runs the others too) and no longer runs any of `gone`.
async fn wait_hooks(c: &ProcCluster, want: &[String], running: &str, gone: &[&str]) {
    let mut want = want.to_vec();
    want.sort();
    for id in NODES {
        let nc = c.node_client(id);
        eventually(&format!("node {id} to run exactly {want:?}"), || {
            let (nc, want) = (nc.clone(), want.clone());
            async move {
                let mut names = active_hooks(&nc).await?;
                names.sort();
                if names != want || !runs(&nc, running, "probe").await {
                    return None;
                }
                for name in gone {
                    if runs(&nc, name, "probe").await {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }
}

/// After `after`: every node is still running and serves puts (judged by
/// the benign hook on `ok/`, and unjudged on `plain/`), gets, status calls
/// and `/readyz`.
async fn every_node_serves(c: &mut ProcCluster, after: &str) {
    for id in NODES {
        assert!(!c.exited(id), "node {id} exited after {after}:\n{}", c.log_tail(id));
    }
    let mut took = Vec::new();
    for id in NODES {
        let nc = c.node_client(id);
        let key = format!("ok/{after}/{id}");
        let start = Instant::now();
        let r = nc.put_detailed(key.clone(), "fine", PutOptions::default()).await;
        let r = r.unwrap_or_else(|e| panic!("{key} through node {id} after {after}: {e}"));
        took.push(format!("node {id} {:?}", start.elapsed()));
        let judged: Vec<(&str, u64)> = r.hooks.iter().map(|h| (h.name.as_str(), h.version)).collect();
        assert_eq!(judged, [("benign", 1)], "{key}");
        let got = nc.get(key.clone()).await.unwrap_or_else(|e| panic!("get {key} after {after}: {e}"));
        assert_eq!(got.map(|v| v.value.to_vec()), Some(b"fine".to_vec()), "{key}");
        let plain = format!("plain/{after}/{id}");
        nc.put(plain.clone(), "x").await.unwrap_or_else(|e| panic!("{plain} through node {id} after {after}: {e}"));
        nc.status().await.unwrap_or_else(|e| panic!("node {id} status after {after}: {e}"));
        // Readiness may blink while a node catches up on the log; the node
        // must answer 200 again, not stay unready.
        let http = c.nodes[&id].http.clone();
        eventually(&format!("node {id} to answer 200 on /readyz after {after}"), || {
            let http = http.clone();
            async move { (http_get(http, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(()) }
        })
        .await;
    }
    println!("  normal puts after {after}: {}", took.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_are_refused_or_contained_and_the_nodes_keep_serving() {
    // The modules first (a parse error in a .wat fails here, not mid-cluster).
    let benign = guest_module("noop_validate");
    let refused: Vec<(&Refused, Vec<u8>)> = REFUSED.iter().map(|r| (r, (r.module)())).collect();
    let failing: Vec<(&Failing, Vec<u8>)> = FAILING.iter().map(|f| (f, hostile(f.wat))).collect();

    let mut c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let r = client.deploy_hook(wasm_hook("benign", HookStage::Validate, "ok/", benign, LONG_MS)).await;
    assert_eq!(r.expect("deploy the benign hook").version, 1);
    let only_benign = vec!["benign v1".to_string()];
    wait_hooks(&c, &only_benign, "benign", &[]).await;
    every_node_serves(&mut c, "start").await;

    // Deploy-time refusals: INVALID_ARGUMENT naming the hook and the cause.
    for (case, module) in &refused {
        let d = wasm_hook(case.name, case.stage, &format!("h/{}/", case.name), module.clone(), LONG_MS);
        match client.deploy_hook(d).await {
            Err(Error::InvalidArgument(msg)) => {
                println!("{} refused: {msg}", case.name);
                assert!(msg.contains(case.name), "names the hook: {msg}");
                for word in case.words {
                    assert!(contains_ci(&msg, word), "{}: {word:?} in {msg}", case.name);
                }
            }
            other => panic!("{} must be refused at deploy with INVALID_ARGUMENT, got {other:?}", case.name),
        }
        match client.get_hook(case.name).await {
            Err(Error::Other(s)) => assert_eq!(s.code(), tonic::Code::NotFound, "{}: {s:?}", case.name),
            other => panic!("{} was refused, so it is unknown; got {other:?}", case.name),
        }
    }
    for id in NODES {
        assert_eq!(
            active_hooks(&c.node_client(id)).await.expect("list hooks"),
            only_benign,
            "node {id}: the refusals deployed nothing"
        );
    }
    every_node_serves(&mut c, "refusals").await;

    // Call-time failures: each hook on a prefix of its own, fail-closed.
    let mut all = only_benign.clone();
    for (case, module) in &failing {
        let d =
            wasm_hook(case.name, HookStage::Validate, &format!("h/{}/", case.name), module.clone(), case.timeout_ms);
        let r = client.deploy_hook(d).await.unwrap_or_else(|e| panic!("deploying {}: {e}", case.name));
        assert_eq!(r.version, 1, "{}", case.name);
        all.push(format!("{} v1", case.name));
    }
    let last = failing.last().expect("a failing case").0.name;
    wait_hooks(&c, &all, last, &[]).await;

    for (case, _) in &failing {
        for id in NODES {
            let key = format!("h/{}/{id}", case.name);
            let msg = match c.node_client(id).put(key.clone(), "v").await {
                Err(Error::Rejected(msg)) => msg,
                other => panic!("{key} through node {id}: expected FAILED_PRECONDITION, got {other:?}"),
            };
            println!("{} via node {id}: {msg}", case.name);
            assert!(msg.starts_with(&format!("hook {} v1 ", case.name)), "{key}: names the hook: {msg}");
            assert!(msg.ends_with("the write is rejected (fail-closed)"), "{key}: {msg}");
            assert!(
                case.causes.iter().any(|cause| contains_ci(&msg, cause)),
                "{key}: one of {:?} in {msg}",
                case.causes
            );
            let stored = c.node_client(id).get(key.clone()).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
            assert_eq!(stored, None, "{key} was not written");
        }
        every_node_serves(&mut c, case.name).await;
    }

    // Every hostile put was one failed call (an error or a limit hit), never a rejection.
    for (case, _) in &failing {
        let mut sum = proto::HookStats::default();
        for id in NODES {
            let listed = c.node_client(id).list_hooks().await.expect("list");
            let s = listed.hooks.iter().find(|h| h.name == case.name).and_then(|h| h.stats).unwrap_or_default();
            sum.calls += s.calls;
            sum.errors += s.errors;
            sum.limit_hits += s.limit_hits;
            sum.rejects += s.rejects;
        }
        println!("{}: calls {} errors {} limit hits {}", case.name, sum.calls, sum.errors, sum.limit_hits);
        assert_eq!(sum.calls, NODES.len() as u64, "{}: {sum:?}", case.name);
        assert_eq!(sum.errors + sum.limit_hits, sum.calls, "{}: every call failed: {sum:?}", case.name);
        assert_eq!(sum.rejects, 0, "{}: {sum:?}", case.name);
    }

    // Removed, the hooks judge nothing: their prefixes take writes again.
    for (case, _) in &failing {
        assert_eq!(client.remove_hook(case.name).await.unwrap_or_else(|e| panic!("remove {}: {e}", case.name)), 1);
    }
    let names: Vec<&str> = failing.iter().map(|(case, _)| case.name).collect();
    wait_hooks(&c, &only_benign, "benign", &names).await;
    for (case, _) in &failing {
        for id in NODES {
            let key = format!("h/{}/{id}/after", case.name);
            let r = c.node_client(id).put_detailed(key.clone(), "v", PutOptions::default()).await;
            let r = r.unwrap_or_else(|e| panic!("{key} after removing {}: {e}", case.name));
            assert!(r.hooks.is_empty(), "{key}: {:?}", r.hooks);
        }
    }
    every_node_serves(&mut c, "removal").await;

    // As shadows of the benign hook they fail only themselves.
    for (case, module) in &failing {
        let d = wasm_hook("benign", HookStage::Validate, "ok/", module.clone(), case.timeout_ms);
        let version =
            client.deploy_shadow_hook(d).await.unwrap_or_else(|e| panic!("shadow {}: {e}", case.name)).version;
        for id in NODES {
            let nc = c.node_client(id);
            eventually(&format!("node {id} to run shadow {} as benign v{version}", case.name), || {
                let nc = nc.clone();
                async move {
                    let listed = nc.list_hooks().await.ok()?;
                    let h = listed.hooks.iter().find(|h| h.name == "benign")?;
                    h.shadow.as_ref().is_some_and(|s| s.running_version == version).then_some(())
                }
            })
            .await;
        }
        let after = format!("{}-shadow", case.name);
        every_node_serves(&mut c, &after).await;
        let (mut failed, mut compared) = (0, 0);
        for id in NODES {
            let listed = c.node_client(id).list_hooks().await.expect("list");
            let Some(s) = listed.hooks.iter().find(|h| h.name == "benign").and_then(|h| h.shadow.clone()) else {
                continue;
            };
            let st = s.stats.unwrap_or_default();
            failed += st.errors + st.limit_hits + s.skipped;
            compared += s.agreements + s.disagreements;
        }
        println!("shadow {}: {failed} failed or skipped, {compared} compared", case.name);
        // At least one call per put on ok/ (a put retried after a slow
        // call is judged again), and every one failed or was skipped.
        assert!(failed >= NODES.len() as u64, "{}: {failed} failed calls", case.name);
        assert_eq!(compared, 0, "{}: a failed shadow call is never compared", case.name);
    }
    client.remove_shadow_hook("benign").await.expect("remove the last shadow");
    every_node_serves(&mut c, "shadows removed").await;
}
