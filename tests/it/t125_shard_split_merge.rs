//! Online shard split and merge: a 3-node cluster created with 2 shards
//! holds 10 000 keys. While clients keep writing new keys and reading
//! acknowledged ones, shard 0 is split (its leader armed to crash right
//! after the first batch of keys it moves), then the new shard is merged
//! back. Checked:
//! - bad requests (no such shard, a split point outside the range, shards
//!   that are not neighbours) and a second change while one runs are
//!   refused with the reason, and change nothing;
//! - after each change the routes' ranges tile the token space, and every
//!   key is stored once, on the shard whose range holds its token;
//! - the split finishes with the parent's old leader down; the merged-away
//!   shard disappears from every node's status;
//! - no read of an acknowledged key misses or returns a wrong value, and
//!   no acknowledged write is lost.

use std::collections::BTreeMap;

use ringkv_client::proto::RingResponse;
use ringkv_client::{routing::token, Client};
use ringkv_tests::workload::{assert_none_lost, load, Workload};
use ringkv_tests::{eventually, ProcCluster};

const KEYS: usize = 10_000;

/// Each shard's (first, last) token from a routing table, in token order;
/// checks that they tile the token space.
fn ranges_of(ring: &RingResponse) -> Vec<(u64, u64, u32)> {
    let mut ranges: Vec<(u64, u64, u32)> =
        ring.routes.iter().filter_map(|r| Some((r.first_token?, r.last_token?, r.shard))).collect();
    ranges.sort_unstable();
    assert_eq!(ranges.first().map(|r| r.0), Some(0), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.1), Some(u64::MAX), "{ranges:?}");
    for w in ranges.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "a gap or an overlap: {ranges:?}");
    }
    ranges
}

/// Dumps every shard of `ranges` and checks that each key is stored once,
/// on the shard whose range holds its token. Returns the keys per shard.
async fn check_placement(cluster: &ProcCluster, ranges: &[(u64, u64, u32)]) -> BTreeMap<u32, usize> {
    let mut stored: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut per_shard = BTreeMap::new();
    for &(first, last, shard) in ranges {
        let keys = eventually(&format!("a dump of shard {shard}"), || cluster.shard_keys(shard)).await;
        per_shard.insert(shard, keys.len());
        for k in keys {
            let t = token(&k);
            assert!(
                first <= t && t <= last,
                "{} (token {t:#x}) is stored on shard {shard} ({first:#x}..={last:#x})",
                String::from_utf8_lossy(&k)
            );
            if let Some(other) = stored.insert(k.clone(), shard) {
                panic!("{} is stored on shards {other} and {shard}", String::from_utf8_lossy(&k));
            }
        }
    }
    per_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_splits_and_merges_online_through_a_crashed_leader() {
    let _heavy = ringkv_tests::heavy().await;
    let mut cluster = ProcCluster::start(3, &["--shards", "2"]).await;
    let client = cluster.client();

    // 1. 10 000 keys over the two shards.
    let acked = load(&client, (0..KEYS).map(|i| (format!("k{i:05}"), format!("v{i}")))).await;

    // 2. Bad requests are refused with the reason.
    let err = |r: Result<ringkv_client::proto::ResizeShardsResponse, ringkv_client::Error>| match r {
        Ok(ok) => panic!("accepted: {ok:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err(client.split_shard(7, None).await).contains("no shard 7"));
    assert!(err(client.split_shard(1, Some(1)).await).contains("not inside"));
    assert!(err(client.merge_shards(0, 0).await).contains("not neighbours"));
    assert_eq!(client.ring().await.expect("ring").routes.len(), 2, "a refused change changed the shards");

    // The leader of shard 0 is armed to crash right after its first batch
    // of moved keys.
    let leader = eventually("shard 0 to have a leader", || {
        let client = client.clone();
        async move { client.status().await.ok()?.shards.iter().find(|s| s.shard == 0).map(|s| s.leader_id) }
    })
    .await;
    cluster.stop(leader);
    cluster.restart_with_env(leader, &[("FAILPOINTS", "reshard-batch=1*return")]);
    cluster.wait_settled(3).await;
    eventually("the armed node to lead shard 0 again", || {
        let client = client.clone();
        async move { client.status().await.ok()?.shards.iter().any(|s| s.shard == 0 && s.leader_id == leader).then_some(()) }
    })
    .await;
    let survivors = Client::connect(
        cluster.endpoints().into_iter().enumerate().filter(|(i, _)| *i as u64 + 1 != leader).map(|(_, a)| a),
    )
    .expect("client of the survivors");

    // 3. Clients keep writing and reading (not through the node that crashes).
    let workload = Workload::start(&survivors, acked, 3, 3, |w, n| format!("live-{w}-{n}"));

    // 4. Split shard 0 in the middle of its range.
    let split = client.split_shard(0, None).await.expect("split shard 0");
    assert_eq!((split.new_shard, split.at), (Some(2), Some(1 << 62)), "{split:?}");
    // One change at a time.
    let busy = err(client.split_shard(1, None).await);
    assert!(busy.contains("is running"), "{busy}");
    let exit = eventually("the armed leader to crash after its first batch", || {
        let exit = cluster.exit_status(leader);
        async move { exit }
    })
    .await;
    cluster.assert_crashed_at(leader, "reshard-batch", exit);
    let done = eventually("the split to finish with the parent's old leader down", || {
        let c = survivors.clone();
        async move { c.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch >= split.epoch) }
    })
    .await;
    eprintln!(
        "split moved {} keys in {} ms",
        done.last_keys_moved,
        done.last_finished_ms.saturating_sub(done.last_started_ms)
    );
    assert!(done.last_keys_moved > 0, "{done:?}");
    cluster.restart(leader);
    cluster.wait_settled(3).await;
    let ring = client.ring().await.expect("ring");
    let ranges = ranges_of(&ring);
    assert_eq!(ranges.iter().map(|r| r.2).collect::<Vec<_>>(), vec![0, 2, 1], "{ranges:?}");
    let per_shard = check_placement(&cluster, &ranges).await;
    assert!(per_shard[&2] > 0 && per_shard[&0] > 0, "{per_shard:?}");

    // 5. Merge the new shard back into shard 0.
    let merge = client.merge_shards(0, 2).await.expect("merge shard 2 into 0");
    assert!(merge.change.contains("merge of shard 2 into shard 0"), "{merge:?}");
    eventually("the merge to finish", || {
        let c = client.clone();
        async move { c.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch >= merge.epoch) }
    })
    .await;
    eventually("every node to forget the merged-away shard", || {
        let cluster = &cluster;
        async move {
            for addr in cluster.endpoints() {
                let s = Client::connect([addr]).ok()?.status().await.ok()?;
                if s.shards.iter().any(|r| r.shard == 2) || s.groups.iter().any(|g| g.group_id == 3) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let ranges = ranges_of(&client.ring().await.expect("ring"));
    assert_eq!(ranges.iter().map(|r| r.2).collect::<Vec<_>>(), vec![0, 1], "{ranges:?}");
    check_placement(&cluster, &ranges).await;

    // Let the clients run a little past the changes, then stop them.
    let reads = workload.reads.clone();
    let acked = workload.finish().await;

    // 6. No acknowledged write is lost.
    assert_none_lost(&client, &acked).await;
    eprintln!(
        "{} acknowledged keys checked, {} reads during the changes",
        acked.len(),
        reads.load(std::sync::atomic::Ordering::Relaxed)
    );
}
