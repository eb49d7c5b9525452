//! Cluster identity (issue 16, section 1): a node restarted with an empty
//! data directory, a data directory started against another cluster, and
//! `--shards` on a joining node. Each must be refused, or kept apart, without
//! losing an acknowledged write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringkv_client::Consistency;
use ringkv_tests::cli::{args, cli, http_get};
use ringkv_tests::{eventually, heavy, ProcCluster};

/// Points node `id`'s command line at `dir` instead of its data directory.
fn use_data_dir(c: &mut ProcCluster, id: u64, dir: &Path) {
    let node = c.nodes.get_mut(&id).expect("node");
    let at = node.args.iter().position(|a| a == "--data-dir").expect("--data-dir") + 1;
    node.args[at] = dir.display().to_string();
    node.data_dir = dir.to_path_buf();
}

/// Waits for node `id` to exit on its own and returns its log.
async fn wait_exit(c: &mut ProcCluster, id: u64) -> String {
    let start = std::time::Instant::now();
    while !c.exited(id) {
        assert!(start.elapsed() < ringkv_tests::PATIENCE, "node {id} did not exit:\n{}", c.log_tail(id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::read_to_string(&c.nodes[&id].log).unwrap_or_default()
}

/// Puts `count` keys `prefix/i` through `client`, returning the acknowledged ones.
async fn put_some(client: &ringkv_client::Client, prefix: &str, count: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}/{i}");
        if client.put(key.clone(), key.clone()).await.is_ok() {
            acked.push(key);
        }
    }
    acked
}

/// Every key of `acked` reads back (linearizably, value = key) through `client`.
async fn assert_readable(client: &ringkv_client::Client, acked: &[String], whose: &str) {
    for key in acked {
        let got = eventually(&format!("a linearizable read of {key} ({whose})"), || {
            let client = client.clone();
            let key = key.clone();
            async move { client.get_with(key, Consistency::Linearizable).await.ok() }
        })
        .await;
        assert_eq!(got.map(|v| v.value), Some(key.clone().into()), "{whose}: acknowledged write {key} is lost");
    }
}

fn fresh_dir(c: &ProcCluster, name: &str) -> PathBuf {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("empty data dir");
    dir
}

/// The README's restart command, run with an empty data directory: the node
/// is given every seed, as `ringkv dev` gives it, so the cluster that counts
/// it as a voter refuses it before it acknowledges anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_restarted_with_an_empty_data_dir_is_refused_at_start() {
    let _heavy = heavy().await;
    let mut c = ProcCluster::start_seeded(3, &["--min-replicas", "3"]).await;
    let client = c.client();
    let mut acked = put_some(&client, "before", 30).await;
    assert_eq!(acked.len(), 30, "a healthy cluster acknowledges every write");

    c.kill(1);
    let empty = fresh_dir(&c, "elsewhere/ringkv-dev-data/node1");
    use_data_dir(&mut c, 1, &empty);
    let logged_before = std::fs::metadata(&c.nodes[&1].log).map_or(0, |m| m.len() as usize);
    c.restart(1);
    // Writes go on through the other two while node 1 tries to start.
    let n2 = c.node_client(2);
    acked.extend(put_some(&n2, "during", 20).await);
    let log = wait_exit(&mut c, 1).await.split_off(logged_before);
    assert!(
        log.contains("is already a voter of cluster") && log.contains("remove-node 1"),
        "node 1 must be refused naming the cluster and what to do:\n{log}"
    );
    assert!(!log.contains("bootstrapping"), "node 1 must not create a cluster:\n{log}");

    assert_readable(&n2, &acked, "the original cluster").await;
}

/// The same restart without `--join` (the README's old command): the node
/// creates a cluster of its own, and nothing crosses between the two. Every
/// write either cluster acknowledged stays readable there, and once the old
/// cluster's leader contacts it, the new one refuses writes and is not ready,
/// naming the cluster that claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_restarted_empty_without_join_is_kept_apart_and_then_refuses_writes() {
    let _heavy = heavy().await;
    let mut c = ProcCluster::start(3, &["--shards", "1"]).await;
    let client = c.client();
    let old_acked = put_some(&client, "old", 30).await;
    assert_eq!(old_acked.len(), 30, "a healthy cluster acknowledges every write");
    let old_id = c.node_client(2).ring().await.expect("ring").cluster_id;
    assert_eq!(old_id.len(), 16, "a cluster ID is 16 hex digits: {old_id:?}");

    c.kill(1);
    let empty = fresh_dir(&c, "rogue");
    use_data_dir(&mut c, 1, &empty);
    c.restart(1);
    let rogue = c.node_client(1);
    // Whatever the rogue node acknowledges before it learns it is claimed,
    // it keeps: it never takes the old cluster's snapshot.
    let mut rogue_acked = Vec::new();
    let started = std::time::Instant::now();
    let refusal = loop {
        assert!(started.elapsed() < ringkv_tests::PATIENCE, "node 1 never refused writes:\n{}", c.log_tail(1));
        let key = format!("rogue/{}", rogue_acked.len());
        match rogue.put(key.clone(), key.clone()).await {
            Ok(_) => rogue_acked.push(key),
            Err(e) if e.to_string().contains("sends this node") => break e.to_string(),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(refusal.contains(&old_id), "the refusal names the cluster that claims the node: {refusal}");
    let new_id = rogue.ring().await.expect("ring of node 1").cluster_id;
    assert_ne!(new_id, old_id, "node 1 created a cluster of its own");
    let http = c.nodes[&1].http.clone();
    let (code, body) = http_get(http, "/readyz").await.expect("readyz of node 1");
    assert_eq!(code, 503, "node 1 is not ready while another cluster claims it: {body}");
    assert!(body.contains(&old_id), "{body}");

    let n2 = c.node_client(2);
    // Node 1 led the shard: the other two elect a leader among themselves.
    eventually("the old cluster to take writes through node 2", || {
        let n2 = n2.clone();
        async move { n2.put("after/first", "after/first").await.ok() }
    })
    .await;
    let after = put_some(&n2, "after", 10).await;
    assert_readable(&n2, &old_acked, "the original cluster").await;
    assert_readable(&n2, &after, "the original cluster").await;
    for key in &rogue_acked {
        let got = rogue.get_with(key.clone(), Consistency::Eventual).await.expect("eventual read on node 1");
        assert_eq!(got.map(|v| v.value), Some(key.clone().into()), "node 1 lost its own acknowledged write {key}");
    }
    for key in old_acked.iter().take(5) {
        let got = rogue.get_with(key.clone(), Consistency::Eventual).await.expect("eventual read on node 1");
        assert_eq!(got, None, "a key of the old cluster reached the new one: {key}");
    }
}

/// A copy of one cluster's data directory, started with `--join` pointing at
/// another cluster, is refused naming both IDs; so is `--shards` on a node
/// joining a cluster with another shard count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_data_dir_and_conflicting_shards_are_refused() {
    let mut a = ProcCluster::start(1, &["--shards", "2"]).await;
    let b = ProcCluster::start(1, &["--shards", "4"]).await;
    let a_id = a.node_client(1).ring().await.expect("ring").cluster_id;
    let b_id = b.node_client(1).ring().await.expect("ring").cluster_id;
    assert_ne!(a_id, b_id);

    // Cluster A's node, stopped, then started with B as its seed.
    a.stop(1);
    let b_seed = b.nodes[&1].grpc.clone();
    a.nodes.get_mut(&1).expect("node").args.extend(["--join".into(), b_seed.clone()]);
    a.restart(1);
    let log = wait_exit(&mut a, 1).await;
    assert!(
        log.contains("cluster ID mismatch") && log.contains(&a_id) && log.contains(&b_id),
        "the node must be refused naming both clusters:\n{log}"
    );

    // A new node joining B with --shards 8: refused, nothing joined.
    let listen = format!("127.0.0.1:{}", ringkv_tests::free_port());
    let dir = a.dir.path().join("joiner");
    let run = cli(args(&[
        "serve",
        "--id",
        "2",
        "--listen",
        &listen,
        "--no-http",
        "--data-dir",
        &dir.display().to_string(),
        "--join",
        &b_seed,
        "--shards",
        "8",
    ]));
    let (ok, _, stderr) = tokio::time::timeout(ringkv_tests::PATIENCE, run).await.expect("the joiner exits");
    assert!(!ok, "a joiner with conflicting --shards must fail");
    assert!(stderr.contains("--shards 8") && stderr.contains("4 shards"), "the conflict must be named:\n{stderr}");
    let members = b.node_client(1).ring().await.expect("ring").nodes.len();
    assert_eq!(members, 1, "the refused node did not join");
}
