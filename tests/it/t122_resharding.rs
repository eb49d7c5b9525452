//! Online re-sharding: a 3-node cluster holds 20 000 keys of 50 tenants,
//! routed by their whole key. `tenant_partitioner` (built from
//! guest-sdk/examples for wasm32 in this run) is deployed while clients keep
//! writing new keys and reading acknowledged ones. One node is armed to
//! crash right after its first re-shard batch, so a shard leader dies in the
//! middle of the job. Checked:
//! - no read of an acknowledged key returns not-found or a wrong value, and
//!   no acknowledged write is lost;
//! - the job completes with the crashed node still down;
//! - at the end every tenant's keys live on one shard and no key is stored
//!   on two shards (per-shard dumps from the shard leaders);
//! - deploying the active function again while the job runs changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use ringkv_client::proto::{HookDefinition, HookKind, HookStage};
use ringkv_client::Client;
use ringkv_tests::workload::{assert_none_lost, load, Workload};
use ringkv_tests::{eventually, guest::guest_module, ProcCluster};

const TENANTS: usize = 50;
const KEYS: usize = 20_000;
const WRITERS: usize = 4;
const READERS: usize = 4;
/// The node that crashes after its first re-shard batch.
const CRASHING: u64 = 2;

fn key(tenant: usize, i: usize) -> String {
    format!("t{tenant:02}/k{i:05}")
}

fn partitioner() -> HookDefinition {
    HookDefinition {
        name: "tenants".into(),
        kind: HookKind::Wasm as i32,
        stage: HookStage::Partition as i32,
        source: guest_module("tenant_partitioner").into(),
        // Generous: a stalled 2-core machine must not fail a routing call.
        timeout_ms: 1000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioner_swap_moves_every_key_online_and_survives_a_crashed_shard_leader() {
    let module = partitioner();
    let mut cluster = ProcCluster::start(3, &[]).await;
    let client = cluster.client();

    // 1. 20 000 keys of 50 tenants, routed by their whole key.
    let acked = load(&client, (0..KEYS).map(|i| (key(i % TENANTS, i), format!("v{i}")))).await;

    // A node armed to crash right after its first re-shard batch.
    cluster.stop(CRASHING);
    cluster.restart_with_env(CRASHING, &[("FAILPOINTS", "reshard-batch=1*return")]);
    cluster.wait_settled(3).await;
    eventually("the armed node to lead a shard again", || {
        let client = client.clone();
        async move { client.status().await.ok()?.shards.iter().any(|s| s.leader_id == CRASHING).then_some(()) }
    })
    .await;

    // 2. Clients keep writing new keys and reading acknowledged ones.
    let workload =
        Workload::start(&client, acked, WRITERS, READERS, |w, n| format!("t{:02}/live-{w}-{n}", n as usize % TENANTS));

    // 3. Deploy the partitioner while they run.
    let deployed = client.deploy_hook(module.clone()).await.expect("deploy the tenant partitioner");
    assert_eq!(deployed.version, 1);
    // Deploying the same function again while its job runs changes nothing
    // (a different one would abort the job: t123).
    let again = client.deploy_hook(module.clone()).await.expect("deploying the active function again");
    assert_eq!(again.version, 1);
    let s = client.reshard_status().await.expect("status");
    assert_eq!(s.epoch, 1, "redeploying the active function started a job: {s:?}");

    // 5. The armed node crashes mid-job; the job completes without it.
    let exit = eventually("the armed node to crash after its first re-shard batch", || {
        let exit = cluster.exit_status(CRASHING);
        async move { exit }
    })
    .await;
    cluster.assert_crashed_at(CRASHING, "reshard-batch", exit);
    let survivors = Client::connect(
        cluster.endpoints().into_iter().enumerate().filter(|(i, _)| *i as u64 + 1 != CRASHING).map(|(_, a)| a),
    )
    .expect("client of the survivors");
    let done = eventually("the re-shard job to finish with a node down", || {
        let c = survivors.clone();
        async move { c.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch >= 1) }
    })
    .await;
    eprintln!(
        "re-shard finished: {} keys scanned, {} moved, {} ms",
        done.last_keys_scanned,
        done.last_keys_moved,
        done.last_finished_ms.saturating_sub(done.last_started_ms)
    );
    assert!(done.last_keys_moved > 0, "nothing moved: {done:?}");
    assert_eq!(done.partitioner, "tenants v1");

    // Let the clients run a little past the job, then stop them.
    let failed_writes = workload.failed_writes.clone();
    let reads = workload.reads.clone();
    let acked = workload.finish().await;

    cluster.restart(CRASHING);
    cluster.wait_settled(3).await;

    // No acknowledged write is lost.
    assert_none_lost(&client, &acked).await;

    // 4. Every tenant on one shard, no key twice.
    let shards = client.ring().await.expect("ring").shards;
    let mut where_stored: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for shard in 0..shards {
        let keys = eventually(&format!("a dump of shard {shard}"), || cluster.shard_keys(shard)).await;
        for k in keys {
            where_stored.entry(k).or_default().push(shard);
        }
    }
    let twice: Vec<_> = where_stored.iter().filter(|(_, s)| s.len() > 1).take(10).collect();
    assert!(twice.is_empty(), "keys stored on two shards: {twice:?}");
    let mut tenant_shards: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (k, s) in &where_stored {
        let k = String::from_utf8_lossy(k);
        let tenant = k.split('/').next().unwrap_or_default().to_string();
        tenant_shards.entry(tenant).or_default().extend(s);
    }
    assert_eq!(tenant_shards.len(), TENANTS);
    for (tenant, s) in &tenant_shards {
        assert_eq!(s.len(), 1, "tenant {tenant} is spread over shards {s:?}");
    }
    // Besides the acknowledged keys, only writes that failed may have landed.
    let failed = failed_writes.lock().expect("lock").clone();
    let acked_keys: BTreeSet<&str> = acked.iter().map(|(k, _)| k.as_str()).collect();
    let unexpected: Vec<String> = where_stored
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| !acked_keys.contains(k.as_str()) && !failed.contains(k))
        .take(10)
        .collect();
    assert!(unexpected.is_empty(), "keys nobody wrote: {unexpected:?}");
    eprintln!(
        "{} keys checked, {} reads during the job, {} writes failed (not acknowledged)",
        acked.len(),
        reads.load(Ordering::Relaxed),
        failed.len()
    );
}
