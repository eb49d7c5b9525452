//! Partitions, cut with the transport's link filter on in-process nodes.

use ringkv_client::Error;
use ringkv_tests::{eventually, init_logging, InProcCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_partitioned_leader_stops_acknowledging() {
    init_logging();
    let c = InProcCluster::start(3).await;
    c.client(1).put("before", "partition").await.expect("put");
    let status = c.client(1).status().await.expect("status");
    // "before" and "during" may live in different shards; take the leader of "during"'s shard
    // and read "during" (written before the cut below) through it.
    c.client(1).put("during", "before the cut").await.expect("put");
    let leader = ringkv_tests::group_of_key(&status, "during").expect("shard").leader_id;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    c.filter.isolate(leader, &others);

    // The old leader can reach no quorum: writes and linearizable reads sent to it fail with UNAVAILABLE.
    let write = c.pinned_client(leader).put("during", "minority").await;
    assert!(matches!(write, Err(Error::Unavailable(_))), "write on isolated leader: {write:?}");
    let read = c.pinned_client(leader).get("during").await;
    assert!(matches!(read, Err(Error::Unavailable(_))), "read on isolated leader: {read:?}");

    // The majority elects a leader and keeps working.
    let majority = c.client(others[0]);
    eventually("the majority to accept writes", || {
        let m = majority.clone();
        async move { m.put("during", "majority").await.ok() }
    })
    .await;

    c.filter.heal();
    // After healing, the old leader learns the majority's writes; the minority write never happened.
    let old = c.pinned_client(leader);
    let got = eventually("the old leader to converge", || {
        let old = old.clone();
        async move { old.get("during").await.ok().flatten() }
    })
    .await;
    assert_eq!(&got.value[..], b"majority");
    c.shutdown().await;
}
