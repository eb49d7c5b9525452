//! What `cluster status --json`, `/status` and `/cluster/load` report,
//! against what happened: keys written, a node killed, requests served by
//! another node, a partition function called. No timing assertions: each
//! claim is polled for up to [`ringkv_tests::PATIENCE`].

use ringkv_client::proto::HookStage;
use ringkv_tests::cli::{args, cli, http_get};
use ringkv_tests::guest::{hostile, wasm_hook};
use ringkv_tests::{eventually, heavy, ProcCluster};
use serde_json::Value;

async fn status_json(c: &ProcCluster, id: u64) -> Option<Value> {
    let (ok, out, _) = cli(args(&["cluster", "status", "--json", "--endpoints", &c.nodes[&id].grpc])).await;
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

async fn http_json(c: &ProcCluster, id: u64, path: &'static str) -> Option<Value> {
    let (code, body) = http_get(c.nodes[&id].http.clone(), path).await?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Keys over the shard groups of a status (every replica on the answering node).
fn shard_keys(s: &Value) -> u64 {
    s["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["kind"] == "shard")
        .filter_map(|g| g["keys"].as_u64())
        .sum()
}

fn health(s: &Value, id: u64) -> Option<String> {
    s["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["health"].as_str().map(str::to_string)
}

fn load_of(load: &Value, id: u64) -> Option<&Value> {
    load["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

#[tokio::test]
async fn status_counts_keys_and_shows_a_killed_node_unreachable_and_its_shards_under_replicated() {
    let _permit = heavy().await;
    // A long down timeout: the node stays "unreachable" (not yet "down")
    // for the whole test.
    let mut c = ProcCluster::start(3, &["--down-timeout", "10m"]).await;
    let client = c.client();
    for i in 0..40 {
        client.put(format!("key-{i}"), "v").await.expect("put");
    }
    // Three nodes, replication factor 3: node 1 holds a replica of every key.
    eventually("cluster status --json to count the 40 keys written", || async {
        let s = status_json(&c, 1).await?;
        (shard_keys(&s) == 40).then_some(())
    })
    .await;
    let s = status_json(&c, 1).await.expect("status");
    assert_eq!(health(&s, 3).as_deref(), Some("up"), "{s}");
    assert!(s["shards"].as_array().expect("shards").iter().all(|r| r["under_replicated"] == false), "{s}");

    c.kill(3);
    eventually("node 3 to show as unreachable, every shard under-replicated", || async {
        let s = http_json(&c, 1, "/status").await?;
        let shards = s["shards"].as_array()?;
        let under = shards.iter().filter(|r| r["under_replicated"] == true).count();
        // Every shard has a replica on node 3 (RF 3 on 3 nodes).
        (health(&s, 3)? == "unreachable" && under == shards.len() && !shards.is_empty()).then_some(())
    })
    .await;
    let s = status_json(&c, 2).await.expect("cluster status via node 2");
    assert_eq!(health(&s, 3).as_deref(), Some("unreachable"), "the CLI's JSON says it too: {s}");
    assert_eq!(health(&s, 1).as_deref(), Some("up"), "{s}");
    assert!(s["down"].as_array().is_some_and(|d| d.is_empty()), "not down before the down timeout: {s}");
}

#[tokio::test]
async fn cluster_load_gathers_every_node_and_marks_a_silent_one_missing() {
    let _permit = heavy().await;
    let mut c = ProcCluster::start(3, &[]).await;
    // Requests served by node 2 only; the dashboard's node 1 must see them.
    let via2 = c.node_client(2);
    for i in 0..50 {
        via2.put(format!("load-{i}"), "v").await.expect("put via node 2");
    }
    eventually("node 1's /cluster/load to report node 2's 50 requests", || async {
        let load = http_json(&c, 1, "/cluster/load").await?;
        let n2 = load_of(&load, 2)?;
        let all_ok = (1..=3).all(|id| load_of(&load, id).is_some_and(|n| n["ok"] == true));
        (all_ok && n2["requests"].as_u64()? >= 50).then_some(())
    })
    .await;
    let load = http_json(&c, 1, "/cluster/load").await.expect("load");
    let n2 = load_of(&load, 2).expect("node 2");
    let buckets = n2["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.last().and_then(|b| b[0].as_str()), Some("+Inf"), "{n2}");
    assert_eq!(buckets.last().and_then(|b| b[1].as_u64()), n2["requests"].as_u64(), "every request under +Inf: {n2}");

    c.kill(3);
    eventually("node 3 to be listed as missing, not as idle", || async {
        let load = http_json(&c, 1, "/cluster/load").await?;
        let n3 = load_of(&load, 3)?;
        (n3["ok"] == false && n3.get("requests").is_none() && n3["error"].as_str().is_some_and(|e| !e.is_empty()))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn partition_function_calls_are_counted() {
    let _permit = heavy().await;
    let c = ProcCluster::start(3, &["--shards", "4"]).await;
    let client = c.node_client(1);
    let hook = wasm_hook("byprefix", HookStage::Partition, "", hostile("partition_prefix"), 1000);
    client.deploy_hook(hook).await.expect("deploy the partition function");
    for i in 0..20 {
        client.put(format!("t{}/k{i}", i % 3), "v").await.expect("put");
    }
    let calls = |s: &Value| {
        s["hooks"].as_array()?.iter().find(|h| h["name"] == "byprefix" && h["stage"] == "partition")?["calls"].as_u64()
    };
    eventually("node 1 to count the partition function's calls for the keys it routed", || async {
        (calls(&http_json(&c, 1, "/status").await?)? >= 20).then_some(())
    })
    .await;
}
