//! Three-node clusters of real `ringkv` processes: replication, failover,
//! catch-up by log and by snapshot, full restarts, CAS races and TTLs.

use std::time::Duration;

use ringkv_client::{Consistency, Error, PutOptions};
use ringkv_tests::{eventually, group_of_key, ProcCluster};

/// Puts, retrying while shards led by a killed node elect new leaders.
async fn put_retrying(client: &ringkv_client::Client, key: String, value: String) -> u64 {
    eventually(&format!("put {key}"), || {
        let (client, key, value) = (client.clone(), key.clone(), value.clone());
        async move { client.put(key, value).await.map_err(|e| eprintln!("put failed, retrying: {e}")).ok() }
    })
    .await
}

#[tokio::test]
async fn put_on_one_node_is_read_linearizably_on_every_node() {
    let c = ProcCluster::start(3, &[]).await;
    let v = c.pinned_client(2).put("alpha", "one").await.expect("put");
    for id in 1..=3 {
        let got = c.pinned_client(id).get("alpha").await.expect("get").expect("found");
        assert_eq!(&got.value[..], b"one", "node {id}");
        assert_eq!(got.version, v, "node {id}");
    }
}

#[tokio::test]
async fn killing_the_leader_elects_a_new_one_and_nothing_is_lost() {
    let mut c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await.expect("put before kill");
    }
    let old = c.leader_of_key(1, "after").await;
    c.kill(old);
    let survivor = (1..=3).find(|id| *id != old).expect("a survivor");
    let new = eventually("a new leader for the shard of \"after\"", || {
        let cl = c.node_client(survivor);
        async move {
            let s = cl.status().await.ok()?;
            group_of_key(&s, "after").map(|g| g.leader_id).filter(|l| *l != 0 && *l != old)
        }
    })
    .await;
    assert_ne!(new, old);
    let client = c.node_client(survivor);
    // Writes continue (retried while the election settles).
    eventually("a write after failover", || {
        let client = client.clone();
        async move { client.put("after", "failover").await.ok() }
    })
    .await;
    for i in 0..20 {
        let got = client.get(format!("k{i}")).await.expect("get").expect("acknowledged write survives");
        assert_eq!(got.value, format!("v{i}").into_bytes());
    }
    assert_eq!(&client.get("after").await.expect("get").expect("found").value[..], b"failover");
}

#[tokio::test]
async fn restarted_node_catches_up_by_log() {
    let mut c = ProcCluster::start(3, &[]).await;
    c.kill(3);
    let client = c.node_client(1);
    for i in 0..50 {
        put_retrying(&client, format!("log{i}"), "x".into()).await;
    }
    c.restart(3);
    let n3 = c.pinned_client(3);
    eventually("node 3 to apply the writes it missed", || {
        let n3 = n3.clone();
        async move { n3.get_with("log49", Consistency::Eventual).await.ok().flatten() }
    })
    .await;
}

#[tokio::test]
async fn restarted_node_catches_up_by_snapshot_after_compaction() {
    // Snapshot every 20 entries and keep no log behind it, so node 3 cannot
    // catch up from the log once it has missed more than that.
    let mut c = ProcCluster::start(3, &["--shards", "1", "--snapshot-every", "20", "--keep-logs", "0"]).await;
    c.kill(3);
    let client = c.node_client(1);
    let mut last = 0;
    for i in 0..120 {
        last = put_retrying(&client, format!("snap{i:03}"), format!("{i}")).await;
    }
    let leader_snapshot = eventually("the leader to compact its log", || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            let g = s.groups.iter().find(|g| g.kind == "shard")?;
            (g.snapshot_index >= 100).then_some(g.snapshot_index)
        }
    })
    .await;
    c.restart(3);
    let n3 = c.node_client(3);
    eventually("node 3 to install a snapshot and apply the rest", || {
        let n3 = n3.clone();
        async move {
            let s = n3.status().await.ok()?;
            let g = s.groups.iter().find(|g| g.kind == "shard")?;
            (g.snapshot_index >= leader_snapshot && g.applied_index >= last).then_some(())
        }
    })
    .await;
    let items = n3.scan("snap", 0, Consistency::Eventual).await.expect("scan on node 3");
    assert_eq!(items.len(), 120, "node 3 has every key after the snapshot");
}

#[tokio::test]
async fn full_cluster_restart_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let mut acked = Vec::new();
    for i in 0..100 {
        let v = client.put(format!("durable{i}"), format!("{i}")).await.expect("put");
        acked.push((format!("durable{i}"), v));
    }
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let client = c.client();
    for (k, v) in acked {
        let got = eventually(&format!("{k} after restart"), || {
            let client = client.clone();
            let k = k.clone();
            async move { client.get(k).await.ok() }
        })
        .await
        .expect("acknowledged write is present after a full restart");
        assert_eq!(got.version, v);
    }
}

#[tokio::test]
async fn concurrent_cas_has_exactly_one_winner() {
    let c = ProcCluster::start(3, &[]).await;
    let base = c.client().put("cas", "start").await.expect("put");
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        // Spread writers over all nodes so forwarding races too.
        let client = c.pinned_client(w % 3 + 1);
        tasks.push(tokio::spawn(async move {
            client.put_with("cas", format!("writer{w}"), PutOptions { if_version: Some(base), ttl: None }).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(v) => winners.push(v),
            Err(Error::VersionMismatch(_)) => {}
            Err(e) => panic!("unexpected CAS error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one CAS winner, got {winners:?}");
    let got = c.client().get("cas").await.expect("get").expect("found");
    assert_eq!(got.version, winners[0]);
    // "Must not exist" fails on an existing key and succeeds on a new one.
    let exists = c.client().put_with("cas", "x", PutOptions { if_version: Some(0), ttl: None }).await;
    assert!(matches!(exists, Err(Error::VersionMismatch(_))), "{exists:?}");
    c.client().put_with("fresh", "x", PutOptions { if_version: Some(0), ttl: None }).await.expect("create");
}

#[tokio::test]
async fn expired_keys_are_invisible_to_every_read() {
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    client.put("keep", "forever").await.expect("put");
    // The key must be seen alive first, or "invisible after expiry" proves
    // nothing. A slow machine may read after a short TTL has run out: then
    // write it again with twice the TTL, until a read sees it.
    let mut ttl = Duration::from_millis(800);
    let deadline = loop {
        client.put_with("ttl", "short", PutOptions { ttl: Some(ttl), if_version: None }).await.expect("put");
        if let Some(v) = client.get("ttl").await.expect("get") {
            assert_eq!(&v.value[..], b"short");
            break v.expires_at_ms.expect("a key written with a TTL reports its expiry");
        }
        assert!(ttl < Duration::from_secs(60), "a key with a {ttl:?} TTL was never seen before it expired");
        ttl *= 2;
    };
    // Wait until the deadline has passed by our clock (same machine, same clock).
    while (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64)
        <= deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in 1..=3 {
        let n = c.pinned_client(id);
        assert!(n.get("ttl").await.expect("get").is_none(), "linearizable read on node {id}");
        assert!(n.get_with("ttl", Consistency::Eventual).await.expect("get").is_none(), "eventual read on node {id}");
        let scanned = n.scan("", 0, Consistency::Linearizable).await.expect("scan");
        assert!(scanned.iter().all(|i| &i.key[..] != b"ttl"), "scan on node {id}");
    }
    // A CAS treats the expired key as absent.
    client.put_with("ttl", "again", PutOptions { if_version: Some(0), ttl: None }).await.expect("recreate");
    assert_eq!(&client.get("keep").await.expect("get").expect("found").value[..], b"forever");
}

#[tokio::test]
async fn removed_node_leaves_every_group_and_the_rest_keeps_working() {
    let mut c = ProcCluster::start(3, &[]).await;
    let client = c.node_client(1);
    client.put("before", "removal").await.expect("put");
    client.remove_node(3).await.expect("remove node 3");
    c.stop(3);
    let s = client.status().await.expect("status");
    assert_eq!(s.nodes.len(), 2, "{s:?}");
    for g in &s.groups {
        assert_eq!(g.voters, vec![1, 2], "group {}", g.group_id);
    }
    client.put("after", "removal").await.expect("put with two nodes");
    assert!(c.node_client(2).get("before").await.expect("get").is_some());
    // Removing a node that is no longer a member says so; removing the last voter is refused.
    let again = client.remove_node(3).await;
    assert!(
        matches!(&again, Err(Error::Other(s)) if s.code() == tonic::Code::NotFound
            && s.message() == "node 3 is not a member of the cluster; members: 1, 2"),
        "{again:?}"
    );
    client.remove_node(2).await.expect("remove node 2");
    let last = client.remove_node(1).await;
    assert!(matches!(last, Err(Error::InvalidArgument(ref m)) if m.contains("last voter")), "{last:?}");
}

#[tokio::test]
async fn concurrent_writes_to_one_key_get_distinct_increasing_versions() {
    // Writes are batched into Raft entries; two writes of one key must never share an entry (and a version).
    let c = ProcCluster::start(3, &[]).await;
    let mut tasks = Vec::new();
    for w in 0..48u64 {
        let client = c.pinned_client(w % 3 + 1);
        tasks.push(tokio::spawn(async move { client.put("hot", format!("w{w}")).await }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.expect("task").expect("put"));
    }
    let mut unique = versions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), versions.len(), "duplicate versions: {versions:?}");
    let last = c.client().get("hot").await.expect("get").expect("found");
    assert_eq!(last.version, *unique.last().expect("some"), "the highest version is the one that stays");
}

/// Sum of `ringkv_read_barriers_total{kind}` over the cluster's nodes.
async fn read_barriers(c: &ProcCluster, kind: &str) -> u64 {
    let mut total = 0;
    for node in c.nodes.values() {
        let (_, body) = ringkv_tests::cli::http_get(node.http.clone(), "/metrics").await.expect("GET /metrics");
        let needle = format!("ringkv_read_barriers_total{{kind=\"{kind}\"}} ");
        total +=
            body.lines().filter_map(|l| l.strip_prefix(&needle)).filter_map(|v| v.parse::<u64>().ok()).sum::<u64>();
    }
    total
}

/// After one ReadIndex round the leader serves linearizable reads under its
/// lease, and they still see the latest write. The long election timeout
/// makes the lease 5 s, so back-to-back reads fall inside it on any machine.
#[tokio::test]
async fn linearizable_reads_ride_the_leader_lease() {
    let c = ProcCluster::start(3, &["--election-timeout", "10s"]).await;
    let leader = c.leader_of_key(1, "leased").await;
    let client = c.pinned_client(leader);
    let (before_lease, before_rounds) = (read_barriers(&c, "lease").await, read_barriers(&c, "read_index").await);
    for i in 0..20 {
        client.put("leased", format!("v{i}")).await.expect("put");
        let got = client.get("leased").await.expect("get").expect("found");
        assert_eq!(got.value, format!("v{i}").into_bytes(), "a leased read sees the write before it");
    }
    let leased = read_barriers(&c, "lease").await - before_lease;
    let rounds = read_barriers(&c, "read_index").await - before_rounds;
    assert!(rounds >= 1, "the first read takes a ReadIndex round");
    assert!(leased >= 1, "later reads ride the lease ({leased} leased, {rounds} rounds)");
}

/// Sum of the gauge `ringkv_raft_groups_quiescent` over the running nodes.
async fn quiescent_groups(c: &ProcCluster) -> u64 {
    let mut total = 0;
    for node in c.nodes.values().filter(|n| n.is_running()) {
        let Some((_, body)) = ringkv_tests::cli::http_get(node.http.clone(), "/metrics").await else { continue };
        total += body
            .lines()
            .filter_map(|l| l.strip_prefix("ringkv_raft_groups_quiescent "))
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

/// Idle shard groups stop ticking on every replica; a write wakes its
/// group, and a dead leader's sleeping groups still elect a new one.
#[tokio::test]
async fn idle_shards_sleep_wake_on_writes_and_survive_their_leaders_death() {
    let mut c = ProcCluster::start(3, &["--shards", "4"]).await;
    let client = c.client();
    for i in 0..20 {
        put_retrying(&client, format!("q{i}"), format!("v{i}")).await;
    }
    // 4 shards × 3 replicas, each asleep as leader or follower.
    eventually("every shard group to fall asleep on every node", || {
        let c = &c;
        async move { (quiescent_groups(c).await == 12).then_some(()) }
    })
    .await;

    let leader = c.leader_of_key(1, "q0").await;
    let other = (1..=3).find(|id| *id != leader).expect("another node");
    c.pinned_client(other).put("q0", "woken").await.expect("a write to a sleeping shard");
    for id in 1..=3 {
        let got = c.pinned_client(id).get("q0").await.expect("get").expect("found");
        assert_eq!(&got.value[..], b"woken", "node {id} reads the write that woke the shard");
    }
    eventually("the woken shard to fall asleep again", || {
        let c = &c;
        async move { (quiescent_groups(c).await == 12).then_some(()) }
    })
    .await;

    c.kill(leader);
    let survivor = c.node_client(other);
    put_retrying(&survivor, "q0".into(), "after".into()).await;
    for i in 1..20 {
        // Retried while the shards the dead node led elect new leaders.
        let got = eventually(&format!("a read of q{i}"), || {
            let survivor = survivor.clone();
            async move { survivor.get(format!("q{i}")).await.ok() }
        })
        .await;
        assert_eq!(got.expect("acknowledged write survives").value, format!("v{i}").into_bytes());
    }
    assert_eq!(&survivor.get("q0").await.expect("get").expect("found").value[..], b"after");
}

/// The shard group's status on node `id`: (last log, applied, purged) indexes.
async fn shard_log(c: &ProcCluster, id: u64) -> Option<(u64, u64, u64)> {
    let s = c.node_client(id).status().await.ok()?;
    let g = s.groups.iter().find(|g| g.kind == "shard")?;
    Some((g.last_log_index, g.applied_index, g.purged_index))
}

/// A quiet group purges its whole log on every replica, without waiting for
/// `--snapshot-every` entries; the group keeps working after that, and a
/// replica that was down while it went quiet catches up.
#[tokio::test]
async fn quiet_groups_purge_their_logs_and_keep_working() {
    let mut c = ProcCluster::start(3, &["--shards", "1"]).await;
    let client = c.node_client(1);
    let mut last = 0;
    for i in 0..30 {
        last = put_retrying(&client, format!("gc{i:02}"), format!("{i}")).await;
    }
    for id in 1..=3 {
        eventually(&format!("node {id} to purge the quiet shard's log"), || {
            let c = &c;
            async move {
                let (last_log, applied, purged) = shard_log(c, id).await?;
                (purged >= last && purged == last_log && applied == last_log).then_some(())
            }
        })
        .await;
    }
    // A log purged to its end takes new entries, on every replica.
    let after = client.put("gc-after", "x").await.expect("a write after the purge");
    assert!(after > last);
    for id in 1..=3 {
        let got = c.pinned_client(id).get("gc-after").await.expect("get").expect("found");
        assert_eq!(got.version, after, "node {id}");
    }
    // Node 3 misses writes while the others go quiet and compact.
    c.kill(3);
    for i in 30..60 {
        last = put_retrying(&client, format!("gc{i:02}"), format!("{i}")).await;
    }
    c.restart(3);
    let n3 = c.node_client(3);
    eventually("node 3 to catch up", || {
        let c = &c;
        async move { shard_log(c, 3).await.and_then(|(_, applied, _)| (applied >= last).then_some(())) }
    })
    .await;
    let items = n3.scan("gc", 0, Consistency::Eventual).await.expect("scan on node 3");
    assert_eq!(items.len(), 61, "node 3 has every key");
}
