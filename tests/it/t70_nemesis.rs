//! Jepsen-style run: concurrent clients on a 3-node cluster (each node on its
//! own loopback address) while a nemesis kills, pauses and partitions nodes.
//! The history is checked for linearizability per key, acknowledged writes
//! for durability, eventual reads for phantoms and convergence, and a set
//! workload for lost and duplicated adds. A validate hook that reads the
//! stored version judges every register write, and is redeployed every 2 s
//! throughout (hook redeploys are part of the nemesis).
//!
//! Every fault is confirmed to take effect ([`Nemesis::confirm`]), the run
//! lasts at least one full cycle of the schedule so every fault kind runs,
//! and the history must hold acknowledged writes, successful reads and
//! unknown outcomes: a run that injected nothing or did nothing fails.
//! The set is read back with a linearizable scan, so keys nobody wrote and
//! duplicates are caught.
//!
//! Knobs (environment): `NEMESIS_SECS` (default 60; at least one full
//! cycle runs whatever it says), `NEMESIS_NODES` (default 3),
//! `NEMESIS_SEED` (default: from the clock, printed), `NEMESIS_OUT`
//! (default `target/nemesis`): every run writes its history and verdicts to
//! `<out>/<seed>/`. `NEMESIS_FAULTS=none` injects nothing, to show that
//! the test then fails. `scripts/soak.sh` runs the long version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_client::{Client, ClientOptions, Consistency, PutOptions};
use ringkv_tests::checker::{self, CheckOptions};
use ringkv_tests::history::{Op, Recorder, Versioned};
use ringkv_tests::nemesis::{Fault, Nemesis, Schedule, FAULT_FOR, QUIET_FOR};
use ringkv_tests::{eventually, ProcCluster};

const REGISTER_KEYS: usize = 8;
const REGISTER_CLIENTS: u64 = 6;
const SET_CLIENTS: u64 = 2;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A client whose requests give up after 2 s, so ops cut off by a fault end
/// as "unknown" quickly.
fn client_of(c: &ProcCluster) -> Client {
    let opts = ClientOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    Client::connect_with(c.endpoints(), opts).expect("client")
}

/// Small deterministic generator per client (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Register workload: puts of unique values, linearizable and eventual gets,
/// and compare-and-swaps on the last version this client saw.
async fn register_client(pid: u64, client: Client, rec: Recorder, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed ^ (pid + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("r/{}", rng.next() % REGISTER_KEYS as u64);
        n += 1;
        let value = format!("p{pid}-{n}");
        match rng.next() % 10 {
            0..=3 => {
                let p = rec.invoke(pid, &key, Op::Put { value: value.clone() });
                p.put_result(&client.put(key.clone(), value).await);
            }
            4..=6 => {
                let p = rec.invoke(pid, &key, Op::Get);
                let r = client.get(key.clone()).await;
                if let Ok(Some(v)) = &r {
                    seen.insert(key.clone(), v.version);
                }
                p.get_result(&r);
            }
            7 => {
                let p = rec.invoke(pid, &key, Op::GetEventual);
                p.get_result(&client.get_with(key.clone(), Consistency::Eventual).await);
            }
            _ => {
                let if_version = seen.get(&key).copied().unwrap_or(0);
                let p = rec.invoke(pid, &key, Op::Cas { if_version, value: value.clone() });
                let opts = PutOptions { if_version: Some(if_version), ..Default::default() };
                p.put_result(&client.put_with(key.clone(), value, opts).await);
            }
        }
    }
}

/// Set workload: every add is a fresh key.
async fn set_client(pid: u64, client: Client, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("s/{pid}-{n}");
        let p = rec.invoke(pid, &key, Op::Put { value: "1".into() });
        p.put_result(&client.put(key, "1").await);
    }
}

/// How long after healing a fault a write goes through again.
/// A validate hook on the register keys that reads the stored version (so
/// every register write carries a version guard and is judged again if the
/// key changed under it) and accepts everything; `generation` makes each
/// redeploy a new version.
fn guard_hook(generation: u64) -> ringkv_client::proto::HookDefinition {
    let source = format!(
        "-- generation {generation}\nfunction validate(key, value, ctx)\n    return ctx.old_version >= 0\nend\n"
    );
    ringkv_client::proto::HookDefinition {
        name: "nemesis-guard".into(),
        stage: ringkv_client::proto::HookStage::Validate as i32,
        prefix: "r/".into(),
        source: source.into(),
        timeout_ms: 200,
        ..Default::default()
    }
}

/// Hook redeploys join the faults: a new version of the guard hook every
/// 2 s while the nemesis runs (failures during faults are expected and
/// ignored). Returns how many deploys succeeded.
async fn hook_redeployer(client: Client, stop: Arc<AtomicBool>) -> u64 {
    let mut deployed = 0;
    let mut generation = 1;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        generation += 1;
        if client.deploy_hook(guard_hook(generation)).await.is_ok() {
            deployed += 1;
        }
    }
    deployed
}

async fn time_to_recover(client: &Client) -> Duration {
    let started = Instant::now();
    let mut i = 0u64;
    loop {
        i += 1;
        if client.put(format!("probe/{i}"), "x").await.is_ok() {
            return started.elapsed();
        }
        assert!(started.elapsed() < ringkv_tests::PATIENCE, "the cluster never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test]
async fn linearizable_and_durable_under_kill_pause_and_partitions() {
    let secs = env_u64("NEMESIS_SECS", 60);
    let nodes = env_u64("NEMESIS_NODES", 3);
    let seed = env_u64(
        "NEMESIS_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    );
    let out = std::env::var("NEMESIS_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nemesis"));
    let out = out.join(seed.to_string());
    let faults_on = match std::env::var("NEMESIS_FAULTS").as_deref() {
        Err(_) | Ok("all") => true,
        Ok("none") => false,
        Ok(other) => panic!("NEMESIS_FAULTS={other:?}: use \"all\" (the default) or \"none\""),
    };
    eprintln!(
        "nemesis run: {secs}s, {nodes} nodes, seed {seed}, faults {}; history and verdicts in {}",
        if faults_on { "on" } else { "OFF" },
        out.display()
    );

    let nemesis = Nemesis::new().expect("nemesis");
    let mut c = ProcCluster::start_on_own_ips(nodes, &["--shards", "4"]).await;
    let setup = client_of(&c);
    eventually("the guard hook to deploy", || {
        let setup = setup.clone();
        async move { setup.deploy_hook(guard_hook(1)).await.ok() }
    })
    .await;
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let redeployer = tokio::spawn(hook_redeployer(client_of(&c), stop.clone()));
    let mut workers = Vec::new();
    for pid in 0..REGISTER_CLIENTS {
        workers.push(tokio::spawn(register_client(pid, client_of(&c), rec.clone(), stop.clone(), seed)));
    }
    for pid in REGISTER_CLIENTS..REGISTER_CLIENTS + SET_CLIENTS {
        workers.push(tokio::spawn(set_client(pid, client_of(&c), rec.clone(), stop.clone())));
    }

    // The nemesis: one fault at a time, healed, then a quiet spell.
    let probe = client_of(&c);
    let mut schedule = Schedule::new(seed, c.nodes.keys().copied().collect());
    let mut recoveries: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut injected: Vec<Fault> = Vec::new();
    let started = Instant::now();
    // At least one full cycle, so every fault kind runs whatever NEMESIS_SECS says.
    let mut steps = 0;
    while started.elapsed() < Duration::from_secs(secs) || steps < Schedule::CYCLE {
        steps += 1;
        if !faults_on {
            tokio::time::sleep(FAULT_FOR + QUIET_FOR).await;
            continue;
        }
        let meta_leader =
            probe.status().await.ok().and_then(|s| s.groups.iter().find(|g| g.kind == "meta").map(|g| g.leader_id));
        let fault = schedule.next_fault(meta_leader.filter(|l| *l != 0));
        eprintln!("[{:>5.1}s] inject {fault:?}", started.elapsed().as_secs_f64());
        nemesis.inject(&mut c, &fault).await.expect("inject");
        // The fault stays for FAULT_FOR, or longer until it is seen to take effect.
        let (_, effect) = tokio::join!(tokio::time::sleep(FAULT_FOR), nemesis.confirm(&c, &fault));
        let effect = effect.unwrap_or_else(|e| panic!("{fault:?} did not take effect: {e}"));
        eprintln!("[{:>5.1}s] in effect: {effect}", started.elapsed().as_secs_f64());
        nemesis.heal(&mut c, &fault).await.expect("heal");
        let took = time_to_recover(&probe).await;
        eprintln!(
            "[{:>5.1}s] healed {}; writes go through again after {took:?}",
            started.elapsed().as_secs_f64(),
            fault.kind()
        );
        recoveries.entry(fault.kind()).or_default().push(took);
        injected.push(fault);
        tokio::time::sleep(QUIET_FOR).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("client task");
    }
    let redeploys = redeployer.await.expect("redeployer task");
    assert!(!injected.is_empty(), "no fault was injected");
    for kind in Fault::KINDS {
        assert!(injected.iter().any(|f| f.kind() == kind), "no {kind} fault ran: {injected:?}");
    }

    // Quiesce, then read every key linearizably.
    c.wait_settled(nodes as usize).await;
    let history = rec.history();
    history.save(&out).expect("save history");
    let keys: BTreeSet<String> = history.ops.iter().map(|o| o.key.clone()).collect();
    let reader = c.client();
    let mut final_reads: BTreeMap<String, Option<Versioned>> = BTreeMap::new();
    for key in &keys {
        let v = eventually(&format!("a final read of {key}"), || {
            let (reader, key) = (reader.clone(), key.clone());
            async move { reader.get(key).await.ok() }
        })
        .await;
        final_reads.insert(key.clone(), v.map(|v| Versioned::new(String::from_utf8_lossy(&v.value), v.version)));
    }

    let report = checker::check_history(&history.ops, &CheckOptions::default());
    report.save(&out).expect("save verdict");
    let durability = checker::check_durability(&history.ops, &final_reads);
    let phantoms = checker::check_eventual_reads(&history.ops);
    let (acked, unknown) = checker::set_adds(&history.ops, |k| k.starts_with("s/"));
    // The set as the cluster holds it, not as the history names it: keys
    // nobody wrote and keys listed twice show up here.
    let set_final = scan_all(&reader, "s/").await;
    let set = checker::check_set(&acked, &unknown, &set_final);

    // Eventual reads converge on every node once the cluster is quiet.
    let running: Vec<u64> = c.nodes.values().filter(|n| n.is_running()).map(|n| n.id).collect();
    for id in running {
        let node = c.node_client(id);
        let expected: BTreeMap<String, Option<Versioned>> =
            final_reads.iter().filter(|(k, _)| k.starts_with("r/")).map(|(k, v)| (k.clone(), v.clone())).collect();
        eventually(&format!("node {id}'s eventual reads to converge"), || {
            let (node, expected) = (node.clone(), expected.clone());
            async move {
                let mut observed = BTreeMap::new();
                for key in expected.keys() {
                    let v = node.get_with(key.clone(), Consistency::Eventual).await.ok()?;
                    observed
                        .insert(key.clone(), v.map(|v| Versioned::new(String::from_utf8_lossy(&v.value), v.version)));
                }
                checker::check_convergence(&format!("node {id}"), &expected, &observed).is_empty().then_some(())
            }
        })
        .await;
    }

    let counts = history.counts();
    let summary = format!(
        "seed {seed}: {} ops ({counts:?}); {} faults injected, {redeploys} hook redeploys; recovery p50/max per fault kind: {}\n\
         linearizable: {}; durability: {} acked writes, {} anomalies; eventual phantoms: {}; set: {set}",
        history.ops.len(),
        injected.len(),
        recoveries
            .iter()
            .map(|(k, v)| format!("{k} {:?}/{:?}", percentile(v.clone(), 0.5), percentile(v.clone(), 1.0)))
            .collect::<Vec<_>>()
            .join(", "),
        report.is_linearizable(),
        durability.acked_writes,
        durability.anomalies.len(),
        phantoms.len(),
    );
    std::fs::write(out.join("summary.txt"), &summary).expect("summary");
    eprintln!("{summary}");

    assert!(report.is_linearizable(), "not linearizable:\n{report}");
    assert!(durability.is_ok(), "acknowledged writes lost: {:?}", durability.anomalies);
    assert!(phantoms.is_empty(), "eventual reads returned values never written: {phantoms:?}");
    assert!(set.is_ok(), "set workload: {set}");
    // A floor that says the workload ran, not a throughput target: a loaded
    // CI machine did 1 903 ops in one run and 2 000 was too tight a bound.
    assert!(history.ops.len() >= 500, "only {} ops in {secs}s", history.ops.len());
    let ok = |f: fn(&Op) -> bool| history.ops.iter().filter(|o| f(&o.op) && o.outcome.is_ok()).count();
    assert!(ok(|op| op.written_value().is_some()) > 0, "no write was acknowledged");
    assert!(ok(|op| matches!(op, Op::Get)) > 0, "no linearizable read succeeded");
    assert!(ok(|op| matches!(op, Op::GetEventual)) > 0, "no eventual read succeeded");
    // Unknown outcomes are what the checker's hardest cases are made of.
    // Some op always ends unknown: a pause holds every request sent to the
    // paused node past the 2 s client timeout, and eventual reads are spread
    // over every replica, the paused one included. Unknown *writes* are
    // likely but not certain (the node paused or killed may lead no shard at
    // that moment), so only their count is reported.
    assert!(counts.unknown > 0, "no operation ended with an unknown outcome: {counts:?}");
}

/// Every key under `prefix`, read with linearizable scans. A scan returns
/// at most one page, so a full page is read again as one scan per next
/// character of the set's keys (`s/<client>-<n>`: digits and `-`).
async fn scan_all(client: &Client, prefix: &str) -> Vec<String> {
    const PAGE: u32 = 1000;
    let mut keys = Vec::new();
    let mut prefixes = vec![prefix.to_string()];
    while let Some(p) = prefixes.pop() {
        let items = eventually(&format!("a linearizable scan of {p:?}"), || {
            let (client, p) = (client.clone(), p.clone());
            async move { client.scan(p, PAGE, Consistency::Linearizable).await.ok() }
        })
        .await;
        let page: Vec<String> = items.iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()).collect();
        if page.len() < PAGE as usize {
            keys.extend(page);
            continue;
        }
        for k in &page {
            assert!(
                k[prefix.len()..].bytes().all(|b| b.is_ascii_digit() || b == b'-'),
                "set key {k:?} is not one any client writes, and would be missed by paging"
            );
        }
        keys.extend(page.into_iter().filter(|k| *k == p));
        prefixes.extend("0123456789-".chars().map(|c| format!("{p}{c}")));
    }
    keys.sort();
    keys
}
