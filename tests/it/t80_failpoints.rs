//! Crash points: each test arms one crash point (see `ringkv::failpoint`) on
//! nodes of a 3-node cluster, drives the cluster until an armed node aborts
//! there, restarts every crashed node disarmed, and checks recovery: the
//! cluster settles and every acknowledged write is readable, at both
//! consistency levels, on every node. Each crash is checked to be the armed
//! one: the node's log ends with the crash point's line and it died of
//! `SIGABRT`. The fault point `forward-reply-lost` (no crash) checks that a
//! write forwarded to the leader is not retried once it may have been
//! delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use ringkv_client::{Client, Consistency, Error, PutOptions};
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

/// Writes in the background (ignoring failures) until an armed node aborts
/// at `point`; then restarts every such node without the crash point armed.
async fn drive_until_crash(c: &mut ProcCluster, armed: &[u64], point: &str, prefix: &str) -> BTreeMap<String, String> {
    let client = c.client();
    let mut acked = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut i = 0usize;
    loop {
        let crashed: Vec<(u64, std::process::ExitStatus)> =
            armed.iter().filter_map(|id| c.exit_status(*id).map(|s| (*id, s))).collect();
        if !crashed.is_empty() {
            for (id, status) in crashed {
                c.assert_crashed_at(id, point, status);
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

/// Restarts armed nodes that crashed later (at `point`, nothing else), until
/// the cluster settles; then checks that every acknowledged key is readable
/// on every node.
async fn check_recovery(c: &mut ProcCluster, n: usize, armed: &[u64], point: &str, acked: &BTreeMap<String, String>) {
    let started = std::time::Instant::now();
    loop {
        for &id in armed {
            if let Some(status) = c.exit_status(id) {
                c.assert_crashed_at(id, point, status);
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
    acked.extend(drive_until_crash(&mut c, &[2], point, "during/").await);
    check_recovery(&mut c, 3, &[2], point, &acked).await;
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
    let status = loop {
        if let Some(status) = c.exit_status(3) {
            break status;
        }
        assert!(started.elapsed() < PATIENCE, "node 3 never installed a snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.assert_crashed_at(3, "snapshot-install", status);
    c.restart(3);
    check_recovery(&mut c, 3, &[3], "snapshot-install", &acked).await;
}

#[tokio::test]
async fn crash_during_shard_move() {
    let _heavy = ringkv_tests::heavy().await;
    // No automatic splits: the crash point is the rebalancer's move.
    let mut c = ProcCluster::start(3, &["--shards", "4", "--auto-split-replicas-per-node", "0"]).await;
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
    let mut crashed = 0;
    while crashed == 0 {
        // A crashed node is reaped by `exit_status`; restart it disarmed.
        for id in 1..=3 {
            if let Some(status) = c.exit_status(id) {
                c.assert_crashed_at(id, "shard-move", status);
                c.restart(id);
                crashed += 1;
            }
        }
        assert!(started.elapsed() < PATIENCE, "no shard move reached the crash point");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_recovery(&mut c, 4, &[1, 2, 3], "shard-move", &acked).await;
}

/// A compare-and-swap sent to a follower is forwarded to the leader, which
/// applies it and then loses the reply (fault point `forward-reply-lost`).
/// The follower must not send it again: a second try would find its own
/// write and report a version mismatch for a write that was applied. The
/// client is told the outcome is unknown, and the write is there, once.
#[tokio::test]
async fn a_forwarded_write_whose_reply_is_lost_is_not_retried() {
    let mut c = ProcCluster::start(3, &["--shards", "1"]).await;
    // Armed everywhere (one node at a time, so the groups keep a quorum):
    // whichever node leads the shard when the write arrives loses its reply.
    for id in 1..=3 {
        arm(&mut c, &[id], "forward-reply-lost");
        c.wait_settled(3).await;
    }
    let started = std::time::Instant::now();
    for attempt in 0.. {
        assert!(started.elapsed() < PATIENCE, "no forwarded write reached the fault point");
        let key = format!("cas/{attempt}");
        let leader = c.leader_of_key(1, &key).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        let cas = PutOptions { if_version: Some(0), ttl: None };
        let r = c.pinned_client(follower).put_with(key.clone(), "mine", cas).await;
        assert!(
            !matches!(r, Err(Error::VersionMismatch(_))),
            "{key}: the forwarded CAS was retried and reported as a version mismatch of its own write: {r:?}"
        );
        let fired = (1..=3).any(|id| {
            std::fs::read_to_string(&c.nodes[&id].log)
                .unwrap_or_default()
                .contains("fault point forward-reply-lost reached")
        });
        if !fired {
            // Leadership moved to the follower before the write: served
            // locally, nothing was lost. Try again with a new key.
            r.expect("a CAS that lost no reply");
            continue;
        }
        match &r {
            Err(Error::Unavailable(m)) => {
                assert!(m.contains("outcome is unknown"), "{key}: the client is not told the outcome is unknown: {m}")
            }
            other => panic!("{key}: the reply was lost, yet the client got {other:?}"),
        }
        // The write was applied, exactly once: a linearizable read finds it,
        // and a CAS on the version it carries goes through.
        let client = c.client();
        let v = eventually(&format!("a linearizable read of {key}"), || {
            let (client, key) = (client.clone(), key.clone());
            async move { client.get(key).await.ok() }
        })
        .await
        .expect("the CAS whose reply was lost was applied");
        assert_eq!(&v.value[..], b"mine");
        let next = PutOptions { if_version: Some(v.version), ttl: None };
        client.put_with(key.clone(), "next", next).await.expect("a CAS on the version the lost write produced");
        return;
    }
}
