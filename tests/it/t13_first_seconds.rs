//! A cluster's first seconds (issue 16, section 2): three nodes started
//! 0.2 s apart with default flags, written to from the first second through
//! every node, and the first node SIGKILLed about 5 s after start. Its
//! shards must have reached three replicas by then, so the other two keep
//! serving, no acknowledged write is lost, and the lost replica shows in
//! status, `/readyz` and the metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_client::Consistency;
use ringkv_tests::cli::http_get;
use ringkv_tests::{eventually, heavy, ProcCluster};

/// Puts `key` through `client` until it is acknowledged or `deadline` passes.
async fn put_until(client: &ringkv_client::Client, key: &str, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if client.put(key.to_string(), key.to_string()).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_first_node_five_seconds_in_loses_nothing() {
    let _heavy = heavy().await;
    let started = Instant::now();
    let mut c = ProcCluster::launch(3, &[], Duration::from_millis(200)).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    // From the first second, through every node: 150 puts (ten writers
    // per node), then 50 linearizable gets per node.
    let mut load = Vec::new();
    for node in 1..=3u64 {
        for writer in 0..10u64 {
            let client = c.node_client(node);
            let acked = acked.clone();
            load.push(tokio::spawn(async move {
                for i in 0..5 {
                    let key = format!("first/{node}/{writer}/{i}");
                    if put_until(&client, &key, started + Duration::from_secs(4)).await {
                        acked.lock().expect("acked").push(key);
                    }
                }
                for i in 0..5 {
                    let _ = client.get_with(format!("first/{node}/{writer}/{i}"), Consistency::Linearizable).await;
                }
            }));
        }
    }
    tokio::time::sleep((started + Duration::from_secs(5)).saturating_duration_since(Instant::now())).await;
    c.kill(1);
    for l in load {
        l.await.expect("load task");
    }
    let acked = acked.lock().expect("acked").clone();
    assert!(!acked.is_empty(), "no write was acknowledged in the first four seconds");

    // The lost replica shows everywhere: status (node 1 unreachable, its
    // shard under-replicated), /readyz's warning, the metric.
    let n3 = c.node_client(3);
    eventually("status through node 3 to show node 1 unreachable and shard 0 under-replicated", || {
        let n3 = n3.clone();
        async move {
            let s = n3.status().await.ok()?;
            (s.unreachable.contains(&1) && s.shards.iter().all(|r| r.under_replicated)).then_some(())
        }
    })
    .await;
    let http = c.nodes[&3].http.clone();
    let readyz = eventually("node 3's /readyz to warn about shard 0", || {
        let http = http.clone();
        async move { http_get(http, "/readyz").await.filter(|(_, body)| body.contains("warning: shard 0")) }
    })
    .await;
    assert_eq!(readyz.0, 200, "a degraded cluster stays in service: {}", readyz.1);
    eventually("node 3's metric to count the under-replicated shard", || {
        let http = http.clone();
        async move {
            let (_, body) = http_get(http, "/metrics").await?;
            body.lines().any(|l| l.starts_with("ringkv_shards_under_replicated 1")).then_some(())
        }
    })
    .await;

    // With node 1 gone, the other two serve writes again once a new leader
    // is elected: a shard still on node 1 alone would refuse them for good.
    let n2 = c.node_client(2);
    eventually("a write through node 2 with node 1 killed", || {
        let n2 = n2.clone();
        async move { n2.put("after-kill", "v").await.ok() }
    })
    .await;
    for key in &acked {
        let got = eventually(&format!("a linearizable read of {key} through node 2"), || {
            let n2 = n2.clone();
            let key = key.clone();
            async move { n2.get_with(key, Consistency::Linearizable).await.ok() }
        })
        .await;
        assert_eq!(
            got.map(|v| v.value),
            Some(key.clone().into()),
            "acknowledged write {key} is lost\nnode 2 log:\n{}",
            c.log_tail(2)
        );
    }
}
