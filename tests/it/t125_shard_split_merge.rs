//! Online shard split and merge through crashed leaders: a 3-node cluster
//! created with 2 shards holds 10 000 keys. While clients keep writing new
//! keys and reading acknowledged ones:
//! 1. shard 0 splits, its leader armed to crash just before it creates the
//!    new shard's Raft group (after the split committed): the next leader
//!    creates it;
//! 2. shard 1 splits, its leader armed to crash right after the first batch
//!    of keys it moved;
//! 3. both new shards merge back, the first merge's absorbed shard's leader
//!    armed to crash after its first batch.
//!
//! Checked:
//! - bad requests (no such shard, a split point outside the range, shards
//!   that are not neighbours) and a second change while one runs are
//!   refused with the reason, and change nothing;
//! - each change finishes with the crashed node still down;
//! - after each change the routes' ranges tile the token space, and every
//!   key is stored once, on the shard whose range holds its token;
//! - the merged-away shards disappear from every node's status;
//! - no read of an acknowledged key misses or returns a wrong value, and
//!   no acknowledged write is lost.

use std::collections::BTreeMap;

use ringkv_client::proto::{ReshardStatusResponse, ResizeShardsResponse, RingResponse};
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

/// Restarts the preferred leader of `shard` with crash point `point` armed
/// and waits until it leads the shard again. Returns its id. The preferred
/// leader, not whoever leads now: a restart hands leadership to another
/// replica, and leader spreading gives it back only to the preferred one
/// (the current leader may be a stand-in after an earlier crash).
async fn arm_leader(cluster: &mut ProcCluster, client: &Client, shard: u32, point: &str) -> u64 {
    let leader = eventually(&format!("shard {shard} to have a preferred leader"), || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            let replicas = s.shards.iter().map(|r| (r.shard, r.replicas.clone())).collect();
            let down = s.down.iter().copied().collect();
            ringkv::ring::preferred_leaders(&replicas, &down).get(&shard).copied()
        }
    })
    .await;
    cluster.stop(leader);
    cluster.restart_with_env(leader, &[("FAILPOINTS", &format!("{point}=1*return"))]);
    cluster.wait_settled(3).await;
    eventually(&format!("the armed node {leader} to lead shard {shard} again"), || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            s.shards.iter().any(|r| r.shard == shard && r.leader_id == leader).then_some(())
        }
    })
    .await;
    leader
}

/// A client of every node but `node`.
fn others(cluster: &ProcCluster, node: u64) -> Client {
    Client::connect(cluster.endpoints().into_iter().enumerate().filter(|(i, _)| *i as u64 + 1 != node).map(|(_, a)| a))
        .expect("client of the other nodes")
}

/// Waits for the armed node to crash at `point`, then for the change of
/// job `epoch` to finish without it (asked of the other nodes), then
/// restarts it.
async fn finish_through_crash(
    cluster: &mut ProcCluster,
    crashed: u64,
    point: &str,
    epoch: u64,
) -> ReshardStatusResponse {
    let exit = eventually(&format!("node {crashed} to crash at {point}"), || {
        let exit = cluster.exit_status(crashed);
        async move { exit }
    })
    .await;
    cluster.assert_crashed_at(crashed, point, exit);
    let others = others(cluster, crashed);
    let done = eventually(&format!("job {epoch} to finish with node {crashed} down"), || {
        let c = others.clone();
        async move { c.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch >= epoch) }
    })
    .await;
    cluster.restart(crashed);
    cluster.wait_settled(3).await;
    done
}

/// Waits for the job of `r` to finish.
async fn finish(client: &Client, r: &ResizeShardsResponse) -> ReshardStatusResponse {
    eventually(&format!("{} to finish", r.change), || {
        let c = client.clone();
        let epoch = r.epoch;
        async move { c.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch >= epoch) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_split_and_merge_online_through_crashed_leaders() {
    let _heavy = ringkv_tests::heavy().await;
    // No automatic merges: the test merges the shards it split itself.
    let mut cluster = ProcCluster::start(3, &["--shards", "2", "--merge-size", "0"]).await;
    let client = cluster.client();

    // 10 000 keys over the two shards.
    let acked = load(&client, (0..KEYS).map(|i| (format!("k{i:05}"), format!("v{i}")))).await;

    // Bad requests are refused with the reason.
    let err = |r: Result<ResizeShardsResponse, ringkv_client::Error>| match r {
        Ok(ok) => panic!("accepted: {ok:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err(client.split_shard(7, None).await).contains("no shard 7"));
    assert!(err(client.split_shard(1, Some(1)).await).contains("not inside"));
    assert!(err(client.merge_shards(0, 0).await).contains("not neighbours"));
    assert_eq!(client.ring().await.expect("ring").routes.len(), 2, "a refused change changed the shards");

    // Clients keep writing and reading throughout (the client moves past
    // a crashed node; a write it could not place is retried, then counted
    // as not acknowledged).
    let workload = Workload::start(&client, acked, 3, 3, |w, n| format!("live-{w}-{n}"));

    // 1. Shard 0 splits; its leader dies before creating the new shard.
    let armed = arm_leader(&mut cluster, &client, 0, "split-start").await;
    let split = client.split_shard(0, None).await.expect("split shard 0");
    assert_eq!((split.new_shard, split.at), (Some(2), Some(1 << 62)), "{split:?}");
    // Asked of the other nodes: the armed one may be crashing already.
    let busy = err(others(&cluster, armed).split_shard(1, None).await);
    assert!(busy.contains("is running"), "one change at a time: {busy}");
    let done = finish_through_crash(&mut cluster, armed, "split-start", split.epoch).await;
    eprintln!("split 1 moved {} keys in {} ms", done.last_keys_moved, done.last_finished_ms - done.last_started_ms);

    // 2. Shard 1 splits; its leader dies after its first batch of moves.
    let armed = arm_leader(&mut cluster, &client, 1, "reshard-batch").await;
    let split = client.split_shard(1, None).await.expect("split shard 1");
    assert_eq!((split.new_shard, split.at), (Some(3), Some(3 << 62)), "{split:?}");
    let done = finish_through_crash(&mut cluster, armed, "reshard-batch", split.epoch).await;
    assert!(done.last_keys_moved > 0, "{done:?}");
    let ranges = ranges_of(&client.ring().await.expect("ring"));
    assert_eq!(ranges.iter().map(|r| r.2).collect::<Vec<_>>(), vec![0, 2, 1, 3], "{ranges:?}");
    let per_shard = check_placement(&cluster, &ranges).await;
    assert!(per_shard.values().all(|n| *n > 0), "{per_shard:?}");

    // 3. Both merge back; the first absorbed shard's leader dies mid-move.
    let armed = arm_leader(&mut cluster, &client, 2, "reshard-batch").await;
    let merge = client.merge_shards(0, 2).await.expect("merge shard 2 into 0");
    assert!(merge.change.contains("merge of shard 2 into shard 0"), "{merge:?}");
    finish_through_crash(&mut cluster, armed, "reshard-batch", merge.epoch).await;
    let merge = client.merge_shards(1, 3).await.expect("merge shard 3 into 1");
    finish(&client, &merge).await;
    eventually("every node to forget the merged-away shards", || {
        let cluster = &cluster;
        async move {
            for addr in cluster.endpoints() {
                let s = Client::connect([addr]).ok()?.status().await.ok()?;
                let gone = |shard: u32| {
                    !s.shards.iter().any(|r| r.shard == shard)
                        && !s.groups.iter().any(|g| g.group_id == u64::from(shard) + 1)
                };
                if !gone(2) || !gone(3) {
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

    // No bad read during the changes, no acknowledged write lost.
    let reads = workload.reads.clone();
    let acked = workload.finish().await;
    assert_none_lost(&client, &acked).await;
    eprintln!(
        "{} acknowledged keys checked, {} reads during the changes",
        acked.len(),
        reads.load(std::sync::atomic::Ordering::Relaxed)
    );
}
