//! Crash points: each test arms one crash point (see `ringkv::failpoint`) on
//! nodes of a 3-node cluster, drives the cluster until an armed node aborts
//! there, restarts every crashed node disarmed, and checks recovery: the
//! cluster settles and every acknowledged write is readable, at both
//! consistency levels, on every node.

use std::collections::BTreeMap;
use std::time::Duration;

use ringkv_client::{Client, Consistency};
use ringkv_tests::{eventually, ProcCluster, PATIENCE};

/// Writes `n` keys under `prefix`, retrying each until acknowledged.
async fn write(client: &Client, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}{i:04}"), format!("v{i}"));
        eventually(&format!("put {k}"), || {
            let (client, k, v) = (client.clone(), k.clone(), v.clone());
            async move { client.put(k, v).await.ok() }
        })
        .await;
        acked.insert(k, v);
    }
    acked
}

/// Writes in the background (ignoring failures) until `crashed` reports that
/// an armed node aborted; then restarts every exited node without the crash
/// point armed.
async fn drive_until_crash(c: &mut ProcCluster, armed: &[u64], prefix: &str) -> BTreeMap<String, String> {
    let client = c.client();
    let mut acked = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut i = 0usize;
    loop {
        let crashed: Vec<u64> = armed.iter().copied().filter(|id| c.exited(*id)).collect();
        if !crashed.is_empty() {
            for id in crashed {
                c.restart(id);
            }
            break;
        }
        assert!(started.elapsed() < PATIENCE, "no armed node reached its crash point");
        let (k, v) = (format!("{prefix}{i:05}"), format!("v{i}"));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), client.put(k.clone(), v.clone())).await {
            acked.insert(k, v);
        }
        i += 1;
    }
    acked
}

/// Restarts armed nodes that crashed later, until the cluster settles; then
/// checks that every acknowledged key is readable on every node.
async fn check_recovery(c: &mut ProcCluster, n: usize, armed: &[u64], acked: &BTreeMap<String, String>) {
    let started = std::time::Instant::now();
    loop {
        for &id in armed {
            if c.exited(id) {
                c.restart(id);
            }
        }
        let statuses = futures::future::join_all(c.nodes.keys().map(|id| {
            let client = c.node_client(*id);
            async move { client.status().await.ok() }
        }))
        .await;
        if statuses.iter().all(|s| s.as_ref().is_some_and(|s| ringkv_tests::settled(s, n))) {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "cluster did not settle after the crash");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for id in ids {
        let node = c.node_client(id);
        for level in [Consistency::Linearizable, Consistency::Eventual] {
            let want = acked.len();
            let items = eventually(&format!("node {id} to serve every acknowledged key at {level:?}"), || {
                let node = node.clone();
                async move {
                    let items = node.scan("", 100_000, level).await.ok()?;
                    let present = items
                        .iter()
                        .filter(|it| {
                            let key = String::from_utf8_lossy(&it.key);
                            acked.get(key.as_ref()).is_some_and(|v| v.as_bytes() == &it.value.value[..])
                        })
                        .count();
                    (present == want).then_some(items)
                }
            })
            .await;
            assert!(items.len() >= want);
        }
    }
}

/// Arms `point` on `nodes` by restarting them with FAILPOINTS set. An armed
/// node may crash as soon as it restarts; the callers watch for that.
fn arm(c: &mut ProcCluster, nodes: &[u64], point: &str) {
    let spec = format!("{point}=1*return");
    for &id in nodes {
        c.kill(id);
        c.restart_with_env(id, &[("FAILPOINTS", &spec)]);
    }
}

async fn crash_and_recover(point: &str) {
    let _heavy = ringkv_tests::heavy().await;
    let mut c = ProcCluster::start(3, &["--shards", "4"]).await;
    let mut acked = write(&c.client(), "before/", 100).await;
    arm(&mut c, &[2], point);
    acked.extend(drive_until_crash(&mut c, &[2], "during/").await);
    check_recovery(&mut c, 3, &[2], &acked).await;
}

#[tokio::test]
async fn crash_after_log_append_before_fsync() {
    crash_and_recover("log-before-fsync").await;
}

#[tokio::test]
async fn crash_after_fsync_before_reply() {
    crash_and_recover("log-after-fsync").await;
}

#[tokio::test]
async fn crash_during_apply() {
    crash_and_recover("apply").await;
}

#[tokio::test]
async fn crash_during_snapshot_install() {
    let _heavy = ringkv_tests::heavy().await;
    // Snapshots every 50 entries, 5 kept: a node that misses a few hundred
    // writes catches up by snapshot.
    let mut c = ProcCluster::start(3, &["--shards", "4", "--snapshot-every", "50", "--keep-logs", "5"]).await;
    let mut acked = write(&c.client(), "before/", 50).await;
    c.kill(3);
    acked.extend(write(&c.client(), "missed/", 600).await);
    c.restart_with_env(3, &[("FAILPOINTS", "snapshot-install=1*return")]);
    let started = std::time::Instant::now();
    while !c.exited(3) {
        assert!(started.elapsed() < PATIENCE, "node 3 never installed a snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.restart(3);
    check_recovery(&mut c, 3, &[3], &acked).await;
}

#[tokio::test]
async fn crash_during_shard_move() {
    let _heavy = ringkv_tests::heavy().await;
    let mut c = ProcCluster::start(3, &["--shards", "4"]).await;
    let acked = write(&c.client(), "before/", 100).await;
    // Whichever node leads the meta group runs the moves: arm them all.
    // Armed one at a time, each back in the cluster before the next restarts,
    // so the meta group keeps its quorum.
    for id in 1..=3 {
        arm(&mut c, &[id], "shard-move");
        c.wait_settled(3).await;
    }
    c.add_process(4);
    let started = std::time::Instant::now();
    while ![1, 2, 3].iter().any(|id| c.exited(*id)) {
        // A crashed node is reaped by `exited`; restart it disarmed.
        assert!(started.elapsed() < PATIENCE, "no shard move reached the crash point");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in 1..=3 {
        if !c.nodes[&id].is_running() {
            c.restart(id);
        }
    }
    check_recovery(&mut c, 4, &[1, 2, 3], &acked).await;
}
