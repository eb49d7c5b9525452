//! Client-side routing by the ring table, and routing epochs: a client whose
//! table is out of date still gets correct answers, and a node that is behind
//! the client's epoch never answers from its older view.

use std::time::Duration;

use ringkv_client::proto::kv_client::KvClient;
use ringkv_client::routing::{header_u64, shard_of_key, EPOCH_HEADER};
use ringkv_client::{Client, ClientOptions, Consistency};
use ringkv_tests::{eventually, InProcCluster, ProcCluster};

const KEYS: usize = 300;

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

async fn write_all(client: &Client, prefix: &str, value: &str) {
    for i in 0..KEYS {
        let k = key(prefix, i);
        let v = format!("{value}{i}");
        // Retried while a shard elects a leader or moves; every key ends up acknowledged.
        eventually(&format!("put {k}"), || {
            let (client, k, v) = (client.clone(), k.clone(), v.clone());
            async move { client.put(k, v).await.ok() }
        })
        .await;
    }
}

/// Every key reads back `value{i}` at both consistency levels. Eventual reads
/// may lag, so they are polled until found, but any value they return must
/// be the right one (each key was written once).
async fn check_all(client: &Client, prefix: &str, value: &str) {
    for i in 0..KEYS {
        let (k, want) = (key(prefix, i), format!("{value}{i}"));
        let got = client.get(k.clone()).await.expect("linearizable get").expect("key present");
        assert_eq!(got.value, want.as_bytes(), "linearizable read of {k}");
        let got = eventually(&format!("eventual read of {k}"), || {
            let (client, k) = (client.clone(), k.clone());
            async move { client.get_with(k, Consistency::Eventual).await.expect("eventual get") }
        })
        .await;
        assert_eq!(got.value, want.as_bytes(), "eventual read of {k}");
    }
}

/// Replica sets by shard, from a node's `Ring` answer.
async fn replicas(client: &Client) -> Vec<Vec<u64>> {
    let ring = client.ring().await.expect("ring");
    let mut out = vec![Vec::new(); ring.shards as usize];
    for r in ring.routes {
        let mut rs = r.replicas;
        rs.sort_unstable();
        out[r.shard as usize] = rs;
    }
    out
}

/// Fetches a table, lets the cluster change under it, then uses it.
async fn stale_client_after(c: &ProcCluster, stale: &Client, before: Vec<Vec<u64>>, via: u64) {
    let epoch = stale.routing_epoch().expect("the stale client has a table");
    let now = c.node_client(via).ring().await.expect("ring").epoch;
    assert!(epoch < now, "the cluster configuration moved on: table {epoch}, cluster {now}");
    assert_ne!(before, replicas(&c.node_client(via)).await, "replicas moved");
    assert_eq!(stale.routing_epoch(), Some(epoch), "no key request yet, so no refresh yet");

    // Reads and writes through the stale table are right.
    check_all(stale, "k", "v").await;
    for i in 0..KEYS {
        stale.put(key("k", i), format!("w{i}")).await.expect("write through a stale table");
    }
    check_all(stale, "k", "w").await;

    // Replies told the client its table was old; it refreshed.
    eventually("the client to refresh its table", || async move {
        let _ = stale.get(key("k", 0)).await;
        stale.routing_epoch().filter(|e| *e >= now)
    })
    .await;
}

#[tokio::test]
async fn a_client_with_a_stale_table_gets_correct_answers_after_a_node_joins() {
    let _heavy = ringkv_tests::heavy().await;
    let mut c = ProcCluster::start(4, &["--shards", "16"]).await;
    write_all(&c.client(), "k", "v").await;

    let stale = c.client();
    let epoch = stale.refresh_routing().await.expect("fetch the table");
    assert_eq!(stale.routing_epoch(), Some(epoch));
    let before = replicas(&c.node_client(1)).await;

    // Node 5 joins: replicas (leaders among them) move onto it.
    c.add_process(5);
    c.wait_settled(5).await;
    stale_client_after(&c, &stale, before, 1).await;
}

#[tokio::test]
async fn a_client_with_a_stale_table_gets_correct_answers_after_a_node_leaves() {
    let _heavy = ringkv_tests::heavy().await;
    let c = ProcCluster::start(4, &["--shards", "16"]).await;
    write_all(&c.client(), "k", "v").await;

    // Seeded with node 4 too, which the table then names as a replica.
    let stale = c.client();
    stale.refresh_routing().await.expect("fetch the table");
    let before = replicas(&c.node_client(1)).await;

    // Node 4 is drained and removed; its process keeps running, so requests
    // the stale table sends there reach a node that holds nothing.
    let admin = Client::connect_with(
        [c.nodes[&1].grpc.clone()],
        ClientOptions { timeout: Duration::from_secs(300), ..ClientOptions::default() },
    )
    .expect("client");
    admin.remove_node(4).await.expect("remove node 4");
    let n4 = c.pinned_client(4);
    eventually("node 4 to drop its replicas", || {
        let n4 = n4.clone();
        async move { n4.status().await.ok()?.groups.iter().all(|g| g.kind != "shard").then_some(()) }
    })
    .await;
    stale_client_after(&c, &stale, before, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_clients_epoch_does_not_answer_from_its_old_view() {
    let _heavy = ringkv_tests::heavy().await;
    ringkv_tests::init_logging();
    let c = InProcCluster::start(4).await;
    let admin = Client::connect_with(
        [c.nodes[&1].addr()],
        ClientOptions { timeout: Duration::from_secs(300), ..ClientOptions::default() },
    )
    .expect("client");

    // A key with a replica on node 4.
    let ring = admin.ring().await.expect("ring");
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| {
            let shard = shard_of_key(k.as_bytes(), ring.shards);
            ring.routes.iter().any(|r| r.shard == shard && r.replicas.contains(&4))
        })
        .expect("some key has a replica on node 4");
    admin.put(key.clone(), "old").await.expect("put");
    let n4 = c.pinned_client(4);
    eventually("node 4 to apply the write", || {
        let (n4, key) = (n4.clone(), key.clone());
        async move { n4.get_with(key, Consistency::Eventual).await.ok().flatten().filter(|v| v.value == "old") }
    })
    .await;
    // By node 4's own view, it is a voter of the key's shard: a replica that
    // has not yet received its promotion forwards eventual reads, and once
    // cut off could not answer one at all (seen on a loaded machine).
    let group = u64::from(shard_of_key(key.as_bytes(), ring.shards)) + 1;
    eventually("node 4 to see itself a voter of the key's shard", || {
        let n4 = n4.clone();
        async move {
            let s = n4.status().await.ok()?;
            s.groups.iter().any(|g| g.group_id == group && g.voters.contains(&4)).then_some(())
        }
    })
    .await;

    // Node 4 is cut off and removed: its replicas move to the others, the new
    // value is written there, and node 4 never hears of any of it.
    c.filter.isolate(4, &[1, 2, 3]);
    admin.remove_node(4).await.expect("remove node 4");
    eventually("the new value to be written", || {
        let (admin, key) = (admin.clone(), key.clone());
        async move { admin.put(key, "new").await.ok() }
    })
    .await;
    let epoch = admin.refresh_routing().await.expect("table");

    // Asked without an epoch, node 4 answers from its own, old view: that
    // view really is stale.
    let old = n4.get_with(key.clone(), Consistency::Eventual).await.expect("get").expect("found");
    assert_eq!(old.value, "old");

    // Asked with the cluster's epoch, node 4 cannot catch up with it, so it
    // does not answer from that view at either level.
    let mut raw = KvClient::connect(format!("http://{}", c.nodes[&4].addr())).await.expect("connect");
    for consistency in [Consistency::Eventual, Consistency::Linearizable] {
        let mut req = tonic::Request::new(ringkv_client::proto::GetRequest {
            key: key.clone().into(),
            consistency: consistency as i32,
        });
        req.metadata_mut().insert(EPOCH_HEADER, epoch.into());
        let status = raw.get(req).await.expect_err("node 4 must not answer from its old view");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{consistency:?}: {status:?}");
        let theirs = header_u64(status.metadata(), EPOCH_HEADER).expect("the error carries node 4's epoch");
        assert!(theirs < epoch, "node 4 is at epoch {theirs}, the cluster at {epoch}");
    }

    // A routing client, which sends its table's epoch, gets the new value.
    let client = Client::connect(c.nodes.values().map(|n| n.addr().to_string())).expect("client");
    for consistency in [Consistency::Eventual, Consistency::Linearizable] {
        let got = eventually("the new value", || {
            let (client, key) = (client.clone(), key.clone());
            async move { client.get_with(key, consistency).await.ok().flatten().filter(|v| v.value == "new") }
        })
        .await;
        assert_eq!(got.value, "new");
    }
    c.shutdown().await;
}
