//! Hot swap under load: 8 client tasks write continuously to a 3-node
//! cluster while its validate hook is redeployed 20 times, alternating
//! between two sources (A rejects values starting with "x", B those starting
//! with "y"). No write fails for any other reason; every write is judged by
//! exactly one deployed version, and its outcome is the one that version's
//! source gives. Every other new version first runs as a shadow
//! (`deploy --shadow`): it judges writes beside the active version without
//! deciding any, and its promotion swaps it in as the one active version.
//! Also: with a 1 ms deadline, every committed version is run by every node
//! (none stays on the previous one).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringkv_client::proto::{self, HookDefinition, HookStage};
use ringkv_client::{Client, Error, PutOptions};
use ringkv_tests::hooks::{wait_judged, Judged};
use ringkv_tests::{eventually, ProcCluster};

const NODES: [u64; 3] = [1, 2, 3];
const HOOK: &str = "swap";
const WRITERS: usize = 8;
const REDEPLOYS: u64 = 20;
/// Writes each version must have judged before the next deploy.
const PER_VERSION: usize = 5;
/// A bound on each writer, whatever happens.
const MAX_WRITES_PER_WRITER: usize = 20_000;

/// The two sources: each rejects one first letter and says which source it is.
fn source(which: char) -> String {
    let letter = if which == 'A' { 'x' } else { 'y' };
    format!(
        "-- source {which}\n\
         function validate(key, value, ctx)\n\
         \tif value ~= nil and string.sub(value, 1, 1) == \"{letter}\" then\n\
         \t\treturn false, \"{which} rejects {letter}\"\n\
         \tend\n\
         \treturn true\n\
         end\n"
    )
}

fn definition(which: char) -> HookDefinition {
    HookDefinition {
        name: HOOK.into(),
        kind: proto::HookKind::Lua as i32,
        stage: HookStage::Validate as i32,
        prefix: b"hs/".to_vec().into(),
        source: source(which).into_bytes().into(),
        fail_open: false,
        // The longest deadline: a stalled 2-core machine must not turn a
        // trivial call into a "deadline" rejection.
        timeout_ms: 1000,
    }
}

/// What happened to one write.
#[derive(Debug)]
enum Outcome {
    /// Accepted; the hook versions the reply named.
    Accepted(Vec<(String, u64)>),
    /// Rejected by a hook; the message.
    Rejected(String),
    /// Anything else.
    Failed(String),
}

struct Write {
    value: String,
    outcome: Outcome,
}

/// The versions that judged a write: from the reply, or parsed from a
/// rejection `rejected by hook swap vN: REASON` (with the reason).
fn parse_rejection(msg: &str) -> Option<(u64, &str)> {
    let rest = msg.strip_prefix(&format!("rejected by hook {HOOK} v"))?;
    let (version, reason) = rest.split_once(": ")?;
    Some((version.parse().ok()?, reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_under_load_judges_every_write_by_exactly_one_version() {
    let c = ProcCluster::start(3, &[]).await;
    let admin = c.client();
    // Version → source letter, as deployed.
    let mut deployed: BTreeMap<u64, char> = BTreeMap::new();
    let first = admin.deploy_hook(definition('A')).await.expect("deploy A");
    deployed.insert(first.version, 'A');
    for id in NODES {
        let nc = c.node_client(id);
        eventually(&format!("node {id} to list {HOOK} v{}", first.version), || {
            let nc = nc.clone();
            let want = first.version;
            async move {
                let listed = nc.list_hooks().await.ok()?;
                listed.hooks.iter().any(|h| h.name == HOOK && h.version == want && h.active).then_some(())
            }
        })
        .await;
    }

    // Writes judged so far, by version (from accepted replies and rejections).
    let judged: Judged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Some writers send to one node (which forwards to the leader), some route by the ring.
        let client: Client = if w % 4 == 3 { c.client() } else { c.node_client(NODES[w % NODES.len()]) };
        let (judged, stop) = (judged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut log = Vec::new();
            for i in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let value = format!("{}-{w}-{i}", ['x', 'y', 'z'][(i + w) % 3]);
                let key = format!("hs/{w}/{}", i % 64);
                let outcome = match client.put_detailed(key, value.clone(), PutOptions::default()).await {
                    Ok(r) => Outcome::Accepted(r.hooks.into_iter().map(|h| (h.name, h.version)).collect()),
                    Err(Error::Rejected(msg)) => Outcome::Rejected(msg),
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                let version = match &outcome {
                    Outcome::Accepted(hooks) => hooks.first().map(|h| h.1),
                    Outcome::Rejected(msg) => parse_rejection(msg).map(|(v, _)| v),
                    Outcome::Failed(_) => None,
                };
                if let Some(v) = version {
                    *judged.lock().expect("judged").entry(v).or_default() += 1;
                }
                log.push(Write { value, outcome });
            }
            log
        }));
    }

    // Redeploy, alternating B and A; each version judges some writes before the next.
    wait_judged(&judged, first.version, PER_VERSION, "writes judged by the first version").await;
    for k in 0..REDEPLOYS {
        let which = if k % 2 == 0 { 'B' } else { 'A' };
        // Each deploy through a different node.
        let via = c.node_client(NODES[k as usize % NODES.len()]);
        let last = *deployed.keys().last().expect("a version");
        let version = if k % 2 == 1 {
            let r = via.deploy_shadow_hook(definition(which)).await.unwrap_or_else(|e| panic!("shadow {k}: {e}"));
            assert_eq!(r.version, last + 1, "a shadow is a new version");
            wait_shadow_calls(&c, r.version, PER_VERSION as u64).await;
            let judged_by_shadow = judged.lock().expect("judged").get(&r.version).copied().unwrap_or(0);
            assert_eq!(judged_by_shadow, 0, "v{} judged writes while it was a shadow", r.version);
            let promoted = c.node_client(NODES[(k as usize + 1) % NODES.len()]).promote_hook(HOOK).await;
            let promoted = promoted.unwrap_or_else(|e| panic!("promote {k}: {e}"));
            assert_eq!((promoted.version, promoted.replaced_version), (r.version, last));
            r.version
        } else {
            let r = via.deploy_hook(definition(which)).await.unwrap_or_else(|e| panic!("deploy {k} ({which}): {e}"));
            assert_eq!(r.version, last + 1, "each redeploy is a new version");
            r.version
        };
        deployed.insert(version, which);
        wait_judged(&judged, version, PER_VERSION, &format!("writes judged by v{version} ({which})")).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.expect("writer task"));
    }

    // Every outcome is the one the judging version's source gives.
    let mut failures = Vec::new();
    let mut counts: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for Write { value, outcome } in &writes {
        let first = value.chars().next().expect("a value");
        match outcome {
            Outcome::Accepted(hooks) => {
                assert_eq!(hooks.len(), 1, "{value}: judged by exactly one hook version: {hooks:?}");
                let (name, version) = &hooks[0];
                assert_eq!(name, HOOK, "{value}");
                let which = *deployed.get(version).unwrap_or_else(|| panic!("{value}: v{version} was never deployed"));
                let rejected_letter = if which == 'A' { 'x' } else { 'y' };
                assert_ne!(first, rejected_letter, "{value} was accepted by v{version} ({which})");
                counts.entry(*version).or_default().0 += 1;
            }
            Outcome::Rejected(msg) => {
                assert_eq!(msg.matches("rejected by hook").count(), 1, "one version: {msg}");
                let (version, reason) =
                    parse_rejection(msg).unwrap_or_else(|| panic!("{value}: not a rejection: {msg}"));
                let which = *deployed.get(&version).unwrap_or_else(|| panic!("{msg}: v{version} was never deployed"));
                let rejected_letter = if which == 'A' { 'x' } else { 'y' };
                assert_eq!(reason, format!("{which} rejects {rejected_letter}"), "{value}: {msg}");
                assert_eq!(first, rejected_letter, "{value} was rejected by v{version} ({which})");
                counts.entry(version).or_default().1 += 1;
            }
            Outcome::Failed(e) => failures.push(format!("{value}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} writes failed for other reasons, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    println!("{} writes over {} versions", writes.len(), deployed.len());
    for (version, which) in &deployed {
        let (accepted, rejected) = counts.get(version).copied().unwrap_or_default();
        println!(
            "  v{version} ({which}): judged {} writes, {accepted} accepted, {rejected} rejected",
            accepted + rejected
        );
        assert!(accepted + rejected >= 1, "v{version} judged no write");
    }
}

/// Waits until the nodes (together: the shard leader runs the hooks) have
/// run shadow version `version` of the hook at least `calls` times.
async fn wait_shadow_calls(c: &ProcCluster, version: u64, calls: u64) {
    let clients: Vec<Client> = NODES.iter().map(|id| c.node_client(*id)).collect();
    eventually(&format!("shadow v{version} to judge {calls} writes"), || {
        let clients = clients.clone();
        async move {
            let mut total = 0;
            for client in &clients {
                let listed = client.list_hooks().await.ok()?;
                let h = listed.hooks.iter().find(|h| h.name == HOOK)?;
                total +=
                    h.shadow.as_ref().filter(|s| s.version == version).and_then(|s| s.stats).map_or(0, |s| s.calls);
            }
            (total >= calls).then_some(())
        }
    })
    .await;
}

/// What the node `client` talks to runs for the deployed hook `name` on one
/// write (its registry, not just its meta group): "decision: message".
async fn dry_run(client: &Client, name: &str) -> String {
    let req = proto::TestHookRequest {
        hook: Some(HookDefinition { name: name.into(), ..Default::default() }),
        key: b"tight/probe".to_vec().into(),
        value: Some(b"v".to_vec().into()),
        ..Default::default()
    };
    match client.test_hook(req).await {
        Ok(r) => format!("{}: {}", r.decision, r.message),
        Err(e) => format!("failed: {e}"),
    }
}

/// A committed deploy is run by every node, even when the hook's deadline is
/// tight: a node applying the deploy while busy must not fall back to the
/// previous version. Each generation's hook rejects with its own reason, so
/// a dry run on a node tells which one that node runs. (A single call may
/// overrun a 1 ms deadline on a loaded machine; the probe is retried until
/// one finishes in time, so only a node stuck on another generation fails.)
#[tokio::test]
async fn every_node_runs_each_committed_version_even_with_a_tight_deadline() {
    let c = ProcCluster::start(3, &[]).await;
    let admin = c.client();
    let refused = std::cell::Cell::new(0);
    for generation in 0..30 {
        let source = format!(
            "-- generation {generation}: some top-level work\n\
             local squares = {{}}\n\
             for i = 1, 2000 do squares[i] = i * i end\n\
             function validate(key, value, ctx)\n\
             \treturn false, \"generation {generation}\"\n\
             end\n"
        );
        let definition = HookDefinition {
            name: "tight".into(),
            kind: proto::HookKind::Lua as i32,
            stage: HookStage::Validate as i32,
            prefix: b"tight/".to_vec().into(),
            source: source.into_bytes().into(),
            fail_open: false,
            timeout_ms: 1,
        };
        // The deploy check may itself find the top level over 1 ms on a busy
        // node; that deploy changes nothing and is tried again.
        let version = eventually(&format!("generation {generation} to deploy"), || {
            let (admin, definition, refused) = (admin.clone(), definition.clone(), &refused);
            async move {
                match admin.deploy_hook(definition).await {
                    Ok(r) => Some(r.version),
                    Err(Error::InvalidArgument(msg)) if msg.contains("exceeded its deadline") => {
                        refused.set(refused.get() + 1);
                        None
                    }
                    Err(e) => panic!("generation {generation}: {e}"),
                }
            }
        })
        .await;
        for id in NODES {
            let nc = c.node_client(id);
            let want = format!("reject: generation {generation}");
            // Prints what the node runs whenever that changes, so a failure shows it.
            let last = std::cell::RefCell::new(String::new());
            eventually(&format!("node {id} to run generation {generation} (v{version})"), || {
                let (nc, want, last) = (nc.clone(), want.clone(), &last);
                async move {
                    let got = dry_run(&nc, "tight").await;
                    if got != want && *last.borrow() != got {
                        println!("node {id}, waiting for generation {generation} (v{version}), runs: {got}");
                    }
                    *last.borrow_mut() = got.clone();
                    (got == want).then_some(())
                }
            })
            .await;
        }
    }
    println!(
        "30 generations deployed and run by every node ({} deploys refused by the deadline and retried)",
        refused.get()
    );
}
