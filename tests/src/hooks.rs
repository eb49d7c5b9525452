//! Hook helpers shared by the hook tests: Lua hook definitions, dry runs of
//! deployed hooks, what judged a put, and waiting until every node runs (or
//! stopped running) a version.

use ringkv_client::proto::{self, HookDefinition, HookStage};
use ringkv_client::Client;

use crate::{eventually, ProcCluster};

const NODES: [u64; 3] = [1, 2, 3];

/// The deadline of the hooks [`lua_hook`] defines: the longest there is
/// (1 s). A loaded 2-core machine can stall even a trivial call past the
/// default 10 ms, and these tests are about what hooks decide, not how fast.
pub const HOOK_TIMEOUT_MS: u64 = 1000;

/// A fail-closed Lua hook with the [`HOOK_TIMEOUT_MS`] deadline.
pub fn lua_hook(name: &str, stage: HookStage, prefix: &str, source: &str) -> HookDefinition {
    HookDefinition {
        name: name.into(),
        kind: proto::HookKind::Lua as i32,
        stage: stage as i32,
        prefix: prefix.as_bytes().to_vec().into(),
        source: source.as_bytes().to_vec().into(),
        fail_open: false,
        timeout_ms: HOOK_TIMEOUT_MS,
    }
}

/// How many writes each version of a hook judged, filled by writer tasks.
pub type Judged = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, usize>>>;

/// Waits until `version` has judged at least `at_least` writes.
pub async fn wait_judged(judged: &Judged, version: u64, at_least: usize, what: &str) {
    eventually(what, || {
        let judged = judged.clone();
        async move {
            let n = judged.lock().expect("judged").get(&version).copied().unwrap_or(0);
            (n >= at_least).then_some(())
        }
    })
    .await;
}

/// The names and versions of the hooks that judged a put, as "name vN".
pub fn judged_by(r: &proto::PutResponse) -> Vec<String> {
    r.hooks.iter().map(|h| format!("{} v{}", h.name, h.version)).collect()
}

/// Dry-runs the hook `name` as deployed on the node `client` talks to (what
/// that node's registry runs), as "decision: message", or "failed: error".
pub async fn dry_run(client: &Client, name: &str, key: &str, value: Option<&str>) -> String {
    let req = proto::TestHookRequest {
        hook: Some(HookDefinition { name: name.into(), ..Default::default() }),
        key: key.as_bytes().to_vec().into(),
        value: value.map(|v| v.as_bytes().to_vec().into()),
        ..Default::default()
    };
    match client.test_hook(req).await {
        Ok(r) if r.decision == "ttl" => format!("ttl: {} ms", r.ttl_ms),
        Ok(r) => format!("{}: {}", r.decision, r.message),
        Err(e) => format!("failed: {e}"),
    }
}

/// Waits until every node lists `name` as active at `version` and runs it:
/// a dry run of the deployed hook on `probe` answers something containing `want`.
pub async fn wait_running(c: &ProcCluster, name: &str, version: u64, probe: (&str, Option<&str>), want: &str) {
    for id in NODES {
        let client = c.node_client(id);
        eventually(&format!("node {id} to run {name} v{version} ({want:?} for {probe:?})"), || {
            let client = client.clone();
            async move {
                let listed = client.list_hooks().await.ok()?;
                let h = listed.hooks.iter().find(|h| h.name == name)?;
                if !(h.active && h.version == version) {
                    return None;
                }
                dry_run(&client, name, probe.0, probe.1).await.contains(want).then_some(())
            }
        })
        .await;
    }
}

/// Waits until every node lists `name` as removed and runs no version of it.
pub async fn wait_removed(c: &ProcCluster, name: &str) {
    for id in NODES {
        let client = c.node_client(id);
        eventually(&format!("node {id} to stop running {name}"), || {
            let client = client.clone();
            async move {
                let listed = client.list_hooks().await.ok()?;
                if listed.hooks.iter().find(|h| h.name == name)?.active {
                    return None;
                }
                dry_run(&client, name, "probe", Some("v")).await.starts_with("failed:").then_some(())
            }
        })
        .await;
    }
}
