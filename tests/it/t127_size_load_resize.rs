//! The size and load policy (`cluster::resize_policy`) on real processes,
//! with thresholds scaled down so debug binaries reach them:
//! - **size**: 3 nodes holding ~620 KB with a 192 KiB split size split their
//!   one shard until every shard is under it, at points that halve the
//!   keys, while writers and readers run; once the keys are deleted the
//!   small, cold shards merge back down to the one the cluster was created
//!   with, and the keys that were kept are still there;
//! - **load**: writers above `--split-load` split the shard; once they
//!   stop, the cold shards merge back.
//!
//! Checked in both: no read of an acknowledged key misses or returns a
//! wrong value, no acknowledged write is lost, no write fails (the client
//! retries what a split or a merge makes unavailable for a moment).

use futures::StreamExt;
use ringkv_client::proto::StatusResponse;
use ringkv_client::Client;
use ringkv_tests::workload::{assert_none_lost, load, Workload};
use ringkv_tests::{eventually, ProcCluster};

const SPLIT_BYTES: u64 = 192 * 1024;

/// The cluster's status once no split or merge runs and every shard has a
/// leader and three replicas, if `done` holds for it.
async fn settled(client: &Client, done: impl Fn(&StatusResponse) -> bool) -> Option<StatusResponse> {
    let s = client.status().await.ok()?;
    let r = client.reshard_status().await.ok()?;
    let placed = s.shards.iter().all(|r| r.replicas.len() == 3 && !r.moving && r.leader_id != 0);
    (placed && !r.running && done(&s)).then_some(s)
}

/// Every shard's bytes as its leader counts them now.
async fn shard_bytes(cluster: &ProcCluster, s: &StatusResponse) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for route in &s.shards {
        let leader = cluster.node_client(route.leader_id).status_with(true).await.expect("leader status");
        let g = leader.groups.iter().find(|g| g.group_id == u64::from(route.shard) + 1).expect("leader hosts it");
        out.push((route.shard, g.bytes));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_splits_when_it_grows_and_merges_back_when_it_empties() {
    let _heavy = ringkv_tests::heavy().await;
    let cluster = ProcCluster::start(
        3,
        &["--shards", "1", "--split-size", "192KiB", "--merge-size", "48KiB", "--resize-after", "1s"],
    )
    .await;
    let client = cluster.client();
    let value = "v".repeat(1000);
    let acked = load(&client, (0..600).map(|i| (format!("k{i:04}"), value.clone()))).await;

    let workload = Workload::start(&client, acked.clone(), 2, 2, |w, n| format!("live-{w}-{n}"));
    let status = eventually("every shard under the split size, no resize running", || {
        let (client, cluster) = (client.clone(), &cluster);
        async move {
            let s = settled(&client, |s| s.shards.len() >= 4).await?;
            shard_bytes(cluster, &s).await.iter().all(|(_, b)| *b <= SPLIT_BYTES).then_some(s)
        }
    })
    .await;
    let errors = workload.write_errors.clone();
    let acked = workload.finish().await;
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    assert_none_lost(&client, &acked).await;
    let sizes = shard_bytes(&cluster, &status).await;
    eprintln!("after splitting: {sizes:?}");
    // Split at sampled medians, 600 equal keys end in 4 shards of about
    // 150 KB: none nearly empty.
    assert!(sizes.iter().all(|(_, b)| *b >= SPLIT_BYTES / 8), "a split point far from the median: {sizes:?}");

    // Keep every twentieth key, delete the rest (the writers' keys too).
    let kept: Vec<(String, String)> = acked.iter().step_by(20).cloned().collect();
    let deletes = acked.iter().filter(|kv| !kept.contains(kv)).map(|(k, _)| {
        let client = client.clone();
        async move {
            let mut tries = 0;
            while let Err(e) = client.delete(k.clone()).await {
                tries += 1;
                assert!(tries < 5, "deleting {k}: {e}");
            }
        }
    });
    futures::stream::iter(deletes).buffer_unordered(32).collect::<Vec<()>>().await;
    eventually("the small, cold shards merged back into one", || {
        let client = client.clone();
        async move { settled(&client, |s| s.shards.len() == 1).await }
    })
    .await;
    assert_none_lost(&client, &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_shard_splits_and_merges_back_once_the_load_stops() {
    let _heavy = ringkv_tests::heavy().await;
    let cluster = ProcCluster::start(3, &["--shards", "1", "--split-load", "20", "--resize-after", "2s"]).await;
    let client = cluster.client();
    let acked = load(&client, (0..200).map(|i| (format!("k{i:04}"), format!("v{i}")))).await;

    let workload = Workload::start(&client, acked, 4, 2, |w, n| format!("live-{w}-{n}"));
    eventually("the busy shard split", || {
        let client = client.clone();
        async move { settled(&client, |s| s.shards.len() >= 2).await }
    })
    .await;
    let errors = workload.write_errors.clone();
    let acked = workload.finish().await;
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "writes failed: {errors:?}");

    eventually("the cold shards merged back into one", || {
        let client = client.clone();
        async move { settled(&client, |s| s.shards.len() == 1).await }
    })
    .await;
    assert_none_lost(&client, &acked).await;
}
