//! Backing out of a re-shard job that cannot finish (issue 16, section 3).
//!
//! `partition_trap_x` traps on every key starting with `x` and routes the
//! others by their whole key. Deploy tries a new function on the first keys
//! of every shard, so it refuses this one while an `x` key is among them
//! (`a_function_that_fails_on_an_existing_key_is_refused_naming_it`). With
//! enough `a/` keys written (they sort first) the `x/` keys lie beyond the
//! sample on every shard: the function is deployed and its job stalls at the
//! first `x/` key of every shard. Checked:
//! - the status of every node (API, `cluster reshard status` text and JSON,
//!   `cluster status`) names the shard, key and error of the stall;
//!   every key stays readable; writes of new `x` keys are refused naming
//!   the function;
//! - removing the function is accepted while the job is stuck, the job it
//!   starts finishes, and every key stays readable (read over and over
//!   during the back-out, plus keys written meanwhile) and after;
//! - replacing it with a good function instead moves every key to its shard
//!   under the replacement (per-shard dumps).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringkv_client::proto::{HookDefinition, HookStage};
use ringkv_client::Client;
use ringkv_tests::cli::{args, cli};
use ringkv_tests::guest::{hostile, wasm_hook};
use ringkv_tests::{eventually, ProcCluster};

const SHARDS: u32 = 8;
/// `a/` keys: enough that the first 32 keys of every shard (the deploy's
/// sample) are all `a/` keys, so the `x/` keys are not tried.
const A_KEYS: usize = 600;
const X_KEYS: usize = 50;

fn trap_x() -> HookDefinition {
    // A generous deadline: a loaded 2-core machine must not fail a call.
    wasm_hook("trapx", HookStage::Partition, "", hostile("partition_trap_x"), 1000)
}

fn by_prefix() -> HookDefinition {
    wasm_hook("byprefix", HookStage::Partition, "", hostile("partition_prefix"), 1000)
}

/// A 3-node, 8-shard cluster holding the `a/` and `x/` keys, with
/// `partition_trap_x` deployed and its job stalled on every shard holding an
/// `x/` key. Returns the keys and values written.
async fn stuck_cluster() -> (ProcCluster, Client, Vec<(String, String)>) {
    let cluster = ProcCluster::start(3, &["--shards", "8"]).await;
    let client = cluster.client();
    let keys: Vec<(String, String)> = (0..A_KEYS)
        .map(|i| (format!("a/{i:04}"), format!("va{i}")))
        .chain((0..X_KEYS).map(|i| (format!("x/{i:04}"), format!("vx{i}"))))
        .collect();
    let written: Vec<Result<u64, ringkv_client::Error>> = futures::stream::iter(keys.clone())
        .map(|(k, v)| {
            let client = client.clone();
            async move { client.put(k, v).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in written {
        r.expect("initial write");
    }

    let deployed = client.deploy_hook(trap_x()).await.expect("deploy trapx: its sample holds no x key");
    assert_eq!(deployed.version, 1);

    // Every node reports the stall, with the key, the shard and the error.
    let x_shards: BTreeSet<u32> = (0..X_KEYS)
        .map(|i| {
            ringkv::ring::RingConfig { shards: SHARDS, ..Default::default() }
                .shard_of_key(format!("x/{i:04}").as_bytes())
        })
        .collect();
    for id in 1..=3u64 {
        let node = cluster.node_client(id);
        let status = eventually(&format!("node {id} to report every stalled shard"), || {
            let node = node.clone();
            let x_shards = x_shards.clone();
            async move {
                let s = node.reshard_status().await.ok()?;
                let stalled: BTreeSet<u32> = s.stalls.iter().map(|st| st.shard).collect();
                (s.running && stalled == x_shards).then_some(s)
            }
        })
        .await;
        assert!(status.shards_done < SHARDS, "{status:?}");
        for st in &status.stalls {
            assert!(st.key.starts_with("x/"), "the stall names the key it stopped at: {st:?}");
            assert!(st.error.contains("trapx"), "the stall names the function: {st:?}");
            assert!(st.error.contains("unreachable"), "the stall says what went wrong: {st:?}");
        }
    }
    // `cluster reshard status` says it too, in text and JSON.
    let endpoint = cluster.endpoints()[0].clone();
    let (ok, out, err) = cli(args(&["cluster", "reshard", "status", "--endpoints", &endpoint])).await;
    assert!(ok, "{err}");
    eprintln!("{out}");
    assert!(out.contains("is stuck at key \"x/"), "{out}");
    assert!(out.contains("remove the partition function or deploy a fixed one"), "{out}");
    let (ok, out, err) = cli(args(&["cluster", "reshard", "status", "--json", "--endpoints", &endpoint])).await;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stalls = json["stalls"].as_array().expect("stalls");
    assert_eq!(stalls.len(), x_shards.len(), "{out}");
    assert!(stalls.iter().all(|s| s["key"].as_str().is_some_and(|k| k.starts_with("x/"))), "{out}");

    let (ok, out, err) = cli(args(&["cluster", "status", "--endpoints", &endpoint])).await;
    assert!(ok && out.contains("is stuck at key \"x/"), "cluster status names the stall: {out}{err}");

    // Every stored key stays readable while the job is stuck: a key the
    // active function fails on is looked for on every shard.
    let unreadable = read_all(&client, &keys).await;
    assert!(unreadable.is_empty(), "unreadable while stuck: {:?}", &unreadable[..unreadable.len().min(10)]);
    // New x keys cannot be written; the error names the function.
    match client.put("x/new", "v").await {
        Err(ringkv_client::Error::Rejected(m)) => assert!(m.contains("trapx"), "{m}"),
        other => panic!("a write the partition function fails on was not refused: {other:?}"),
    }
    (cluster, client, keys)
}

/// Reads every key of `keys` over and over until `stop`, recording wrong
/// answers and errors.
struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    violations: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    fn start(client: &Client, keys: Arc<Mutex<Vec<(String, String)>>>, n: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..n)
            .map(|r| {
                let (client, keys, stop, reads, violations, errors) =
                    (client.clone(), keys.clone(), stop.clone(), reads.clone(), violations.clone(), errors.clone());
                tokio::spawn(async move {
                    // A bound on the task, whatever happens.
                    for _ in 0..200 {
                        let mut snapshot = keys.lock().expect("lock").clone();
                        let start = r * snapshot.len() / n;
                        snapshot.rotate_left(start);
                        for (k, v) in snapshot {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            match client.get(k.clone()).await {
                                Ok(Some(got)) if got.value.as_ref() == v.as_bytes() => {
                                    reads.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Some(got)) => violations
                                    .lock()
                                    .expect("lock")
                                    .push(format!("{k} read {:?}, written {v:?}", String::from_utf8_lossy(&got.value))),
                                Ok(None) => violations.lock().expect("lock").push(format!("{k} not found")),
                                Err(e) => errors.lock().expect("lock").push(format!("{k}: {e}")),
                            }
                        }
                    }
                })
            })
            .collect();
        Readers { stop, reads, violations, errors, tasks }
    }

    /// Waits for `more` further good reads, stops, and returns (violations, errors).
    async fn finish(self, more: u64) -> (Vec<String>, Vec<String>) {
        let target = self.reads.load(Ordering::Relaxed) + more;
        let reads = self.reads.clone();
        eventually("the readers to read every key again", || {
            let n = reads.load(Ordering::Relaxed);
            async move { (n >= target).then_some(()) }
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("reader task");
        }
        let v = self.violations.lock().expect("lock").clone();
        let e = self.errors.lock().expect("lock").clone();
        (v, e)
    }
}

/// Reads every key once, retrying errors (not wrong answers) a few times.
async fn read_all(client: &Client, keys: &[(String, String)]) -> Vec<String> {
    futures::stream::iter(keys.to_vec())
        .map(|(k, v)| {
            let client = client.clone();
            async move {
                let mut last = None;
                for _ in 0..5 {
                    match client.get(k.clone()).await {
                        Ok(Some(got)) if got.value.as_ref() == v.as_bytes() => return None,
                        Ok(other) => return Some(format!("{k}: {other:?}")),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(format!("{k}: {last:?}"))
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Writes `x/live-N` keys until `stop`, adding the acknowledged ones to `keys`.
fn writer(
    client: &Client,
    keys: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let client = client.clone();
    tokio::spawn(async move {
        let mut acked = 0;
        for n in 0..5_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (k, v) = (format!("x/live-{n:05}"), format!("live{n}"));
            if client.put(k.clone(), v.clone()).await.is_ok() {
                keys.lock().expect("lock").push((k, v));
                acked += 1;
            } else {
                // Refused while a node still routes by trapx: try again later.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        acked
    })
}

/// Where every key is stored: key → shards.
async fn placement(cluster: &ProcCluster) -> BTreeMap<String, Vec<u32>> {
    let mut stored: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for shard in 0..SHARDS {
        let keys = eventually(&format!("a dump of shard {shard}"), || cluster.shard_keys(shard)).await;
        for k in keys {
            stored.entry(String::from_utf8_lossy(&k).into_owned()).or_default().push(shard);
        }
    }
    stored
}

/// Back-out by a removal or a replacement: readers and a writer run from the
/// moment the change is accepted until the job it started is over.
async fn back_out(client: &Client, keys: Vec<(String, String)>, replace: bool) -> Vec<(String, String)> {
    let keys = Arc::new(Mutex::new(keys));
    let started = Instant::now();
    if replace {
        client.deploy_hook(by_prefix()).await.expect("replacing the stuck function is accepted");
    } else {
        client.remove_hook("trapx").await.expect("removing the stuck function is accepted");
    }
    // The stuck job was epoch 1.
    let epoch = 2;
    eprintln!("the change was accepted after {:?}", started.elapsed());
    let readers = Readers::start(client, keys.clone(), 4);
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writing = writer(client, keys.clone(), stop_writer.clone());
    let done = eventually("the job that aborted the stuck one to finish", || {
        let client = client.clone();
        async move { client.reshard_status().await.ok().filter(|s| !s.running && s.last_epoch == epoch) }
    })
    .await;
    eprintln!("back-out finished after {:?}: {} keys moved", started.elapsed(), done.last_keys_moved);
    assert!(done.stalls.is_empty(), "{done:?}");
    let total = keys.lock().expect("lock").len() as u64;
    let (violations, errors) = readers.finish(total).await;
    stop_writer.store(true, Ordering::Relaxed);
    let acked = writing.await.expect("writer");
    assert!(acked > 0, "no x key could be written during the back-out");
    assert!(
        violations.is_empty(),
        "{} bad reads, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    // Not even a node still running the stuck job fails a read: it looks for
    // a key its active function fails on everywhere.
    assert!(
        errors.is_empty(),
        "{} reads failed during the back-out, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    let keys = keys.lock().expect("lock").clone();
    let lost = read_all(client, &keys).await;
    assert!(
        lost.is_empty(),
        "{} keys unreadable after the back-out, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_that_fails_on_some_keys_can_be_removed_while_its_job_is_stuck() {
    let (cluster, client, keys) = stuck_cluster().await;
    let keys = back_out(&client, keys, false).await;
    let s = client.reshard_status().await.expect("status");
    assert_eq!(s.partitioner, "none (whole key)");
    // Every key on its whole-key shard, once.
    let ring = ringkv::ring::RingConfig { shards: SHARDS, ..Default::default() };
    let stored = placement(&cluster).await;
    for (k, _) in &keys {
        assert_eq!(stored.get(k), Some(&vec![ring.shard_of_key(k.as_bytes())]), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_function_can_be_replaced_and_every_key_ends_on_its_shard_under_the_replacement() {
    let (cluster, client, keys) = stuck_cluster().await;
    let keys = back_out(&client, keys, true).await;
    let s = client.reshard_status().await.expect("status");
    assert_eq!(s.partitioner, "byprefix v2");
    // byprefix routes a key by what precedes its first '/'.
    let ring = ringkv::ring::RingConfig { shards: SHARDS, ..Default::default() };
    let stored = placement(&cluster).await;
    for (k, _) in &keys {
        let prefix = k.split('/').next().unwrap_or_default();
        let want = ring.shard_of_routed(k.as_bytes(), Some(prefix.as_bytes()));
        assert_eq!(stored.get(k), Some(&vec![want]), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_fails_on_an_existing_key_is_refused_naming_it() {
    let cluster = ProcCluster::start(1, &["--shards", "8"]).await;
    let client = cluster.client();
    client.put(&b"x\x00\xfe"[..], "v").await.expect("write");
    client.put("a/1", "v").await.expect("write");
    match client.deploy_hook(trap_x()).await {
        Err(ringkv_client::Error::InvalidArgument(m)) => {
            eprintln!("{m}");
            assert!(m.contains(r"x\x00\xfe"), "the key, escaped: {m}");
            assert!(m.contains("trapx") && m.contains("unreachable"), "the function and the error: {m}");
        }
        other => panic!("a function that traps on an existing key was deployed: {other:?}"),
    }
    let s = client.reshard_status().await.expect("status");
    assert_eq!((s.epoch, s.running, s.partitioner.as_str()), (0, false, "none (whole key)"));
    // A function that routes every existing key is deployed.
    client.deploy_hook(by_prefix()).await.expect("deploy byprefix");
}
