//! End to end with the built binary only: three `ringkv serve` processes
//! joined with `--join`, driven by the `ringkv` CLI; what the CLI prints for
//! hooks, scans and bench.

use std::process::Command;

use ringkv_tests::cli::{cli_blocking, http_get};
use ringkv_tests::{ringkv_bin, ProcCluster};

/// A node process started by a test, killed when the test ends, even by a
/// failed assertion, so no stray node outlives it.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn serve_three_nodes_then_put_get_and_status_through_the_cli() {
    let c = ProcCluster::start(3, &[]).await;
    let all = c.endpoints().join(",");
    let n2 = c.nodes[&2].grpc.clone();
    let n3 = c.nodes[&3].grpc.clone();

    let (ok, out, err) = tokio::task::spawn_blocking({
        let all = all.clone();
        move || cli_blocking(&["put", "greeting", "hello world", "--endpoints", &all, "--json"])
    })
    .await
    .expect("join");
    assert!(ok, "put failed: {err}");
    let put: serde_json::Value = serde_json::from_str(out.trim()).expect("put --json is JSON");
    let version = put["version"].as_u64().expect("version");
    assert!(version > 0);

    let (ok, out, err) = tokio::task::spawn_blocking(move || cli_blocking(&["get", "greeting", "--endpoints", &n3]))
        .await
        .expect("join");
    assert!(ok, "get failed: {err}");
    assert_eq!(out.trim(), "hello world");

    let (ok, out, err) = tokio::task::spawn_blocking({
        let n2 = n2.clone();
        move || cli_blocking(&["get", "greeting", "--consistency", "eventual", "--json", "--endpoints", &n2])
    })
    .await
    .expect("join");
    assert!(ok, "eventual get failed: {err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect("get --json is JSON");
    // An eventual read may be stale, but once it sees the key it sees this write.
    if got["found"].as_bool() == Some(true) {
        assert_eq!(got["value"], "hello world");
        assert_eq!(got["version"].as_u64(), Some(version));
    }

    let (ok, out, err) =
        tokio::task::spawn_blocking(move || cli_blocking(&["cluster", "status", "--json", "--endpoints", &n2]))
            .await
            .expect("join");
    assert!(ok, "status failed: {err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("status --json is JSON");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(nodes.iter().all(|n| n["role"] == "voter"), "{status}");
    let groups = status["groups"].as_array().expect("groups");
    assert!(groups.iter().any(|g| g["kind"] == "shard" && g["leader_id"].as_u64().unwrap_or(0) != 0), "{status}");
    // Every documented background worker runs on the answering node.
    let workers = status["workers"].as_array().expect("workers");
    let names: Vec<&str> = workers.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "hook-sync",
            "token-sync",
            "partition-sync",
            "ttl-sweeper",
            "reconcile",
            "rebalance",
            "leader-balance",
            "quiescence",
            "compaction",
            "reshard"
        ],
        "{status}"
    );
    assert!(workers.iter().all(|w| w["state"] == "running"), "{status}");
    let n2 = c.nodes[&2].grpc.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli_blocking(&["cluster", "status", "--endpoints", &n2]))
        .await
        .expect("join");
    assert!(ok, "status failed: {err}");
    assert!(out.contains("of 10 running"), "{out}");

    // Errors print one line and exit non-zero.
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || cli_blocking(&["put", "", "x", "--endpoints", &all])).await.expect("join");
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("empty"), "{err}");
}

#[tokio::test]
async fn dev_starts_a_local_cluster_and_stops_it_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Three consecutive port pairs, below Linux's ephemeral range (32768 and
    // up): there another test's outgoing connection could hold one, and dev
    // would exit before it is ready (it failed that way once in CI).
    // t91_cli_faults uses 20000-20999.
    let base = 21_000 + (std::process::id() % 1_400) as u16 * 8;
    let mut dev = Command::new(ringkv_bin())
        .args(["dev", "--nodes", "3", "--shards", "4", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dev");
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + 2 * i)).collect();
    // dev says "all ready" once every node is ready and every shard is on 3 nodes.
    let stdout = dev.stdout.take().expect("dev stdout");
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("dev stdout");
            let ready = line.contains(", all ready");
            seen.push(line);
            if ready {
                break;
            }
        }
        // Keep reading: dev exits 141 when its output is cut off.
        std::thread::spawn(move || lines.for_each(drop));
        seen.join("\n")
    })
    .await
    .expect("join");
    assert!(banner.contains("ringkv dev cluster with 3 nodes, all ready"), "dev ended before ready: {banner}");
    let client = ringkv_client::Client::connect(&endpoints).expect("client");
    let status = client.status().await.expect("status once dev is ready");
    assert_eq!(status.nodes.iter().filter(|n| n.role == "voter").count(), 3, "{status:?}");
    assert_eq!(status.shards.len(), 4, "--shards reaches every node: {status:?}");
    assert!(status.shards.iter().all(|s| s.replicas.len() == 3 && !s.moving), "every shard placed: {status:?}");
    client.put("dev", "works").await.expect("put");
    // Each node's pid is in <data-dir>/node<i>.pid, and names a running ringkv node.
    for i in 1..=3 {
        let pid_file = dir.path().join(format!("node{i}.pid"));
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("the pid file names a process");
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains(&format!("serve --id {i} ")), "node{i}.pid names {cmdline:?}");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dev.id() as i32), nix::sys::signal::SIGINT).expect("signal");
    let exit = tokio::task::spawn_blocking(move || dev.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "dev exits cleanly on Ctrl-C: {exit:?}");
    assert!(std::net::TcpStream::connect(&endpoints[1]).is_err(), "nodes are stopped");
    for i in 1..=3 {
        assert!(!dir.path().join(format!("node{i}.pid")).exists(), "node{i}.pid is removed once the node has exited");
    }
}

/// `serve --config`: a bad file stops the node at start naming the line and
/// the setting; a good one is honoured, with a flag and a `RINGKV_*`
/// variable layered over it.
#[tokio::test]
async fn serve_reads_a_config_file_under_environment_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\n[raft]\nheartbeats = \"1s\"\n").expect("write");
    let out = Command::new(ringkv_bin()).args(["serve", "--config"]).arg(&bad).output().expect("run serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config must stop the node");
    assert!(err.contains("line 3") && err.contains("unknown field `heartbeats`"), "{err}");

    let port = ringkv_tests::free_port();
    let good = dir.path().join("node.toml");
    let config = format!(
        "id = 5\nlisten = \"127.0.0.1:1\"\nhttp = \"off\"\ndata_dir = {:?}\n[limits]\nmax_value_bytes = \"1KiB\"\n",
        dir.path().join("data")
    );
    std::fs::write(&good, config).expect("write");
    let node = Command::new(ringkv_bin())
        .args(["serve", "--config"])
        .arg(&good)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RINGKV_MAX_VALUE_BYTES", "2KiB")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut node = KillOnDrop(node);
    let client = ringkv_client::Client::connect([format!("127.0.0.1:{port}")]).expect("client");
    let status = ringkv_tests::eventually("the configured node to serve on the flag's port", || {
        let client = client.clone();
        async move { client.status().await.ok() }
    })
    .await;
    assert_eq!(status.node_id, 5, "the file's id");
    ringkv_tests::eventually("the node to accept writes", || {
        let client = client.clone();
        async move { client.put("k", vec![b'x'; 2000]).await.ok() }
    })
    .await;
    let too_big = client.put("k", vec![b'x'; 3000]).await;
    assert!(matches!(too_big, Err(ringkv_client::Error::InvalidArgument(_))), "the environment's 2KiB: {too_big:?}");
    node.stop();
}

/// Operability of one served node: standard gRPC health checking and
/// reflection (so grpcurl and grpc-health-probe work without our protos),
/// and `--log-format json` writing one JSON object per line.
#[tokio::test]
async fn a_node_answers_grpc_health_and_reflection_and_logs_json() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    let port = ringkv_tests::free_port();
    let log = dir.path().join("node.log");
    let node = Command::new(ringkv_bin())
        .args(["serve", "--http", "off", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn serve");
    let mut node = KillOnDrop(node);
    let url = format!("http://127.0.0.1:{port}");
    let channel = ringkv_tests::eventually("the node to accept connections", || {
        let url = url.clone();
        async move { tonic::transport::Endpoint::from_shared(url).ok()?.connect().await.ok() }
    })
    .await;

    for service in ["", "ringkv.v1.Kv", "ringkv.v1.Cluster", "ringkv.v1.Hooks"] {
        let req = HealthCheckRequest { service: service.into() };
        let status = HealthClient::new(channel.clone()).check(req).await.expect("health check").into_inner().status;
        assert_eq!(status, 1, "{service:?} is SERVING");
    }

    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("reflection reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(services)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}")
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for want in ["ringkv.v1.Kv", "ringkv.v1.Cluster", "ringkv.v1.Hooks", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "reflection lists {want}: {names:?}");
    }

    // The gRPC server answers before the node finishes starting (it
    // bootstraps meanwhile): stop it only once it says it has started.
    ringkv_tests::eventually("the node to log that it started", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).ok().filter(|t| t.contains("node started")).map(|_| ()) }
    })
    .await;
    node.stop();
    let text = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the node logged something");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "structured: {line}");
    }
    assert!(lines.iter().any(|l| l.contains("node started")), "{text}");
}

async fn wait_readyz(addr: &str, want: u16, what: &str) -> String {
    wait_readyz_saying(addr, want, "", what).await
}

/// Waits until `/readyz` answers `want` with a body containing `saying`.
async fn wait_readyz_saying(addr: &str, want: u16, saying: &str, what: &str) -> String {
    ringkv_tests::eventually(what, || {
        let addr = addr.to_string();
        async move {
            http_get(addr, "/readyz")
                .await
                .filter(|(code, body)| *code == want && body.contains(saying))
                .map(|(_, body)| body)
        }
    })
    .await
}

/// `/readyz` follows the node: ready once joined and caught up, not ready
/// when its shards lose their leader, ready again when they have one.
#[tokio::test]
async fn readyz_tracks_joining_and_losing_the_quorum() {
    // No automatic splits: readiness of a fixed set of shards.
    let mut c = ProcCluster::start(3, &["--shards", "4", "--auto-split-replicas-per-node", "0"]).await;
    for id in 1..=3 {
        wait_readyz(&c.nodes[&id].http, 200, &format!("node {id} to be ready")).await;
    }

    // A joining node is ready once it has caught up.
    c.add_process(4);
    wait_readyz(&c.nodes[&4].http, 200, "the new node 4 to be ready").await;
    assert_eq!(http_get(c.nodes[&4].http.clone(), "/healthz").await.map(|(code, _)| code), Some(200), "alive");

    // Three of four nodes gone: node 3's groups lose their leader. (Until
    // its election timer fires, a group may first be reported for entries
    // the dead leader sent but never committed.)
    c.kill(1);
    c.kill(2);
    c.kill(4);
    wait_readyz_saying(&c.nodes[&3].http, 503, "no leader", "node 3 to report its groups without a leader").await;
    c.restart(1);
    c.restart(2);
    c.restart(4);
    wait_readyz(&c.nodes[&3].http, 200, "node 3 to be ready again").await;
}

/// A node waiting for an unreachable seed is alive but not ready: its HTTP
/// endpoint is up before it has the cluster's ring settings, so a liveness
/// probe does not restart it while it waits.
#[tokio::test]
async fn a_node_waiting_for_its_seed_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, http, dead_seed) = (ringkv_tests::free_port(), ringkv_tests::free_port(), ringkv_tests::free_port());
    let node = Command::new(ringkv_bin())
        .args(["serve", "--id", "2", "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http", &format!("127.0.0.1:{http}"), "--join", &format!("127.0.0.1:{dead_seed}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let _node = KillOnDrop(node);
    let addr = format!("127.0.0.1:{http}");
    let body = wait_readyz(&addr, 503, "the waiting node to answer /readyz").await;
    assert!(body.contains("waiting for the cluster's ring settings"), "{body}");
    assert_eq!(http_get(addr.clone(), "/healthz").await.map(|(code, _)| code), Some(200), "alive");
    assert_eq!(http_get(addr, "/status").await.map(|(code, _)| code), Some(503), "no status yet");
}

/// SIGTERM under load: the node hands its leaderships to the others, exits
/// 0, no acknowledged write is lost and no client request hangs. README.md
/// promises that clients "see a new leader at once instead of after an
/// election timeout": every writer keeps getting writes acknowledged after
/// the node is gone. Writes in flight during the stop may fail, but only as
/// unknown outcomes (unavailable, cancelled, timed out), never as a definite
/// refusal. Not asserted, because it does not hold yet (see the printed
/// lines): that no write fails once failover was seen, and that survivors
/// lead every group the moment the node exits — on a loaded machine the
/// hand-off leaves groups to an election and writes time out meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_off_leadership_and_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const WRITERS: usize = 4;
    let mut c = ProcCluster::start(3, &["--shards", "4"]).await;
    let status = c.client().status().await.expect("status");
    let victim = status.groups.iter().find(|g| g.kind == "meta").map(|g| g.leader_id).expect("meta leader");
    let survivors: Vec<String> = c.nodes.values().filter(|n| n.id != victim).map(|n| n.grpc.clone()).collect();
    let opts = ringkv_client::ClientOptions {
        timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    // A failed assertion must stop the writers too: against a dropped
    // cluster they would spin on refused connections and the runtime, and
    // the test, would never end.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(stop.clone());
    // Acknowledged writes per writer, and how many of them completed after the victim had exited.
    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let acks_after: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let failed_after_failover: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let exited = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = ringkv_client::Client::connect_with(c.endpoints(), opts.clone()).expect("client");
        let (stop, acks, acks_after, exited) = (stop.clone(), acks.clone(), acks_after.clone(), exited.clone());
        let failed_after_failover = failed_after_failover.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("term/{w}/{n}");
                let after = exited.load(Ordering::Relaxed);
                match client.put(key.clone(), "v").await {
                    Ok(_) => {
                        acked.push(key);
                        acks[w].fetch_add(1, Ordering::Relaxed);
                        if after {
                            acks_after[w].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        let indeterminate = matches!(
                            e,
                            ringkv_client::Error::Unavailable(_)
                                | ringkv_client::Error::DeadlineExceeded(_)
                                | ringkv_client::Error::Other(_)
                        );
                        assert!(indeterminate, "{key}: a write was refused during the stop: {e}");
                        if acks_after[w].load(Ordering::Relaxed) > 0 {
                            failed_after_failover.lock().expect("lock").push(format!("{key}: {e}"));
                        }
                        failed.push(format!("{key}: {e}"));
                    }
                }
            }
            (acked, failed)
        }));
    }
    let every_writer = |counts: Arc<Vec<AtomicU64>>, at_least: u64| async move {
        counts.iter().all(|n| n.load(Ordering::Relaxed) >= at_least).then_some(())
    };
    ringkv_tests::eventually("every writer to get writes acknowledged before the stop", || {
        every_writer(acks.clone(), 20)
    })
    .await;
    let started = std::time::Instant::now();
    let exit = tokio::task::block_in_place(|| c.stop(victim)).expect("the node was running");
    exited.store(true, Ordering::Relaxed);
    println!("node {victim} exited {exit:?} {:?} after SIGTERM", started.elapsed());
    assert!(exit.success(), "SIGTERM exits 0: {exit:?}");
    // Reported, not asserted (see above): whether the survivors already lead
    // every group the moment the node has exited.
    let (mut groups, mut led) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for id in c.nodes.keys().filter(|id| **id != victim) {
        if let Ok(s) = c.node_client(*id).status().await {
            for g in &s.groups {
                groups.insert(g.group_id);
                if g.role == "leader" {
                    led.insert(g.group_id);
                }
            }
        }
    }
    println!("groups led by a survivor the moment node {victim} exited: {led:?} of {groups:?}");
    ringkv_tests::eventually("every writer to get writes acknowledged after the node is gone", || {
        every_writer(acks_after.clone(), 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, f) = w.await.expect("writer task");
        acked.extend(a);
        failed.extend(f);
    }
    println!("{} writes acknowledged, {} failed around the stop: {failed:?}", acked.len(), failed.len());
    assert!(!acked.is_empty(), "no write was acknowledged");
    let failed_after_failover = failed_after_failover.lock().expect("lock").clone();
    println!("writes failed after the writer had seen the failover: {failed_after_failover:?}");
    let log = c.log_tail(victim);
    assert!(log.contains("leadership handed off; finishing requests in flight"), "{log}");
    assert!(!log.contains("requests still in flight after the drain budget"), "nothing hung: {log}");
    let reader = ringkv_client::Client::connect(&survivors).expect("client");
    for key in &acked {
        let got = ringkv_tests::eventually(&format!("{key} to be readable"), || {
            let (reader, key) = (reader.clone(), key.clone());
            async move { reader.get(key).await.ok() }
        })
        .await;
        assert!(got.is_some(), "acknowledged write {key} is lost");
    }
}

/// `/metrics` is valid Prometheus text and, after some traffic, holds every
/// family the operations guide documents, with the labels it promises.
#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_cover_the_documented_families() {
    use prometheus_parse::{Scrape, Value};
    use ringkv_client::proto;

    let c = ProcCluster::start(3, &["--shards", "4"]).await;
    let client = c.client();
    client
        .deploy_hook(proto::HookDefinition {
            name: "max-size".into(),
            kind: proto::HookKind::Lua as i32,
            stage: proto::HookStage::Validate as i32,
            prefix: b"m/".to_vec().into(),
            source: std::fs::read("../scripts/max_size.lua").expect("read scripts/max_size.lua").into(),
            fail_open: false,
            timeout_ms: 1000,
        })
        .await
        .expect("deploy");
    // Through every node, so each one serves, forwards and judges something.
    for id in 1..=3 {
        let pinned = c.pinned_client(id);
        for i in 0..20 {
            ringkv_tests::eventually("a put through a pinned node", || {
                let (pinned, key) = (pinned.clone(), format!("m/{id}/{i}"));
                async move { pinned.put(key, "v").await.ok() }
            })
            .await;
            let _ = pinned.get(format!("m/{id}/{i}")).await;
            let _ = pinned.get_with(format!("m/{id}/{i}"), ringkv_client::Consistency::Eventual).await;
        }
        let rejected = pinned.put(format!("m/{id}/big"), vec![b'x'; 2048]).await;
        assert!(rejected.is_err(), "the hook rejects a big value");
    }

    let mut merged: Vec<prometheus_parse::Sample> = Vec::new();
    for id in 1..=3 {
        let (code, body) = http_get(c.nodes[&id].http.clone(), "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text");
        assert!(!scrape.samples.is_empty(), "node {id} exports samples");
        for family in ["ringkv_raft_term", "ringkv_raft_applied_index", "ringkv_storage_size_bytes"] {
            assert!(scrape.samples.iter().any(|s| s.metric == family), "node {id} exports {family}:\n{body}");
        }
        merged.extend(scrape.samples);
    }
    let has = |metric: &str, labels: &[(&str, &str)]| {
        merged.iter().any(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    };
    // prometheus-parse folds a histogram's _bucket, _sum and _count lines
    // into one sample named after the family.
    for (metric, labels) in [
        ("ringkv_requests_total", vec![("rpc", "Kv/Put"), ("consistency", "linearizable"), ("code", "OK")]),
        ("ringkv_requests_total", vec![("rpc", "Kv/Get"), ("consistency", "eventual")]),
        ("ringkv_requests_total", vec![("rpc", "Kv/Put"), ("code", "FAILED_PRECONDITION")]),
        ("ringkv_request_errors_total", vec![("rpc", "Kv/Put")]),
        ("ringkv_request_duration_seconds", vec![("rpc", "Kv/Get"), ("consistency", "linearizable")]),
        ("ringkv_request_duration_seconds", vec![("rpc", "Kv/Put")]),
        ("ringkv_raft_commit_index", vec![("shard", "meta")]),
        ("ringkv_raft_is_leader", vec![("shard", "0")]),
        ("ringkv_raft_leader_changes_total", vec![]),
        ("ringkv_raft_proposal_duration_seconds", vec![]),
        ("ringkv_storage_fsync_duration_seconds", vec![]),
        ("ringkv_hook_calls_total", vec![("hook", "max-size")]),
        ("ringkv_hook_rejects_total", vec![("hook", "max-size")]),
        ("ringkv_hook_limit_hits_total", vec![("hook", "max-size")]),
        ("ringkv_hook_duration_seconds", vec![("hook", "max-size")]),
        ("ringkv_shards_moving", vec![]),
        ("ringkv_shards_under_replicated", vec![]),
        ("ringkv_rebalance_pending_moves", vec![]),
        ("ringkv_forwarded_requests_total", vec![("kind", "propose")]),
        ("ringkv_forwarded_served_total", vec![("kind", "propose")]),
    ] {
        assert!(has(metric, &labels), "no {metric} with {labels:?} on any node");
        if metric.ends_with("_seconds") {
            let histogram = merged.iter().any(|s| s.metric == metric && matches!(s.value, Value::Histogram(_)));
            assert!(histogram, "{metric} is a histogram");
        }
    }
    let rejects: f64 = merged
        .iter()
        .filter(|s| s.metric == "ringkv_hook_rejects_total")
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(rejects >= 3.0, "each node's leader rejected a big value, {rejects} rejects counted");
}

/// Runs `ringkv ARGS`; returns (exit status, stdout, stderr).
async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(ringkv_bin()).args(&args).output().expect("run ringkv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// Keys of a `scan` output, one `key\tvalue` line each.
fn scanned_keys(out: &str) -> Vec<String> {
    out.lines().map(|l| l.split('\t').next().unwrap_or_default().to_string()).collect()
}

/// `scan` says when it shows only part of the keys and how to go on, and
/// pages through more keys than the server returns at once (`--scan-max 5`)
/// sorted and complete across 16 shards spread over three nodes; `bench`
/// says what it preloads.
#[tokio::test]
async fn scan_pages_through_every_key_and_bench_reports_its_preload() {
    let c = ProcCluster::start(3, &["--scan-default", "3", "--scan-max", "5"]).await;
    let ep = c.nodes[&2].grpc.clone();
    let client = c.client();
    let want: Vec<String> = (0..23).map(|i| format!("p/{i:02}")).collect();
    for k in &want {
        client.put(k.clone(), format!("v{k}")).await.expect("put");
    }
    client.put("q/outside", "x").await.expect("put");

    let (code, out, err) = run(&["scan", "p/", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(scanned_keys(&out), want[..3], "the server's default page: {out}");
    assert_eq!(
        err.trim(),
        "showing 3 keys; more exist: continue with --after p/02, or use --all to list every key",
        "{err}"
    );

    let (code, out, err) = run(&["scan", "p/", "--after", "p/02", "--limit", "1000", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(scanned_keys(&out), want[3..8], "--limit is capped at --scan-max: {out}");
    assert!(err.contains("continue with --after p/07"), "{err}");

    // A page that ends exactly at the last key says nothing more exists.
    let (code, out, err) = run(&["scan", "p/", "--after", "p/19", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(scanned_keys(&out), want[20..], "{out}");
    assert!(err.is_empty(), "no hint on the last page: {err}");

    for consistency in ["linearizable", "eventual"] {
        let (code, out, err) = run(&["scan", "p/", "--all", "--consistency", consistency, "--endpoints", &ep]).await;
        assert_eq!(code, Some(0), "{err}");
        if consistency == "linearizable" {
            assert_eq!(scanned_keys(&out), want, "every key once, in order: {out}");
        } else {
            let got = scanned_keys(&out);
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(got, sorted, "eventual pages are sorted and repeat nothing: {out}");
        }
        assert!(err.is_empty(), "{err}");
    }
    let (code, out, err) = run(&["scan", "p/", "--all", "--limit", "4", "--json", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{err}");
    let items: serde_json::Value = serde_json::from_str(out.trim()).expect("scan --json is JSON");
    let keys: Vec<&str> = items.as_array().expect("array").iter().filter_map(|i| i["key"].as_str()).collect();
    assert_eq!(keys, want, "{out}");

    // The client library pages the same way.
    let mut after: Vec<u8> = Vec::new();
    let mut paged = Vec::new();
    loop {
        let page = client.scan_page("p/", after, 0, ringkv_client::Consistency::Linearizable).await.expect("page");
        assert!(page.items.len() <= 3, "{page:?}");
        paged.extend(page.items.iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()));
        match page.next_after() {
            Some(next) => after = next.to_vec(),
            None => break,
        }
    }
    assert_eq!(paged, want);

    let (code, out, err) =
        run(&["bench", "--op", "get", "--keys", "300", "--clients", "4", "--duration", "1s", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ops/s="), "{out}");
    assert!(
        err.contains("preloading 300 keys (bench/00000000 to bench/00000299) before the 1s get run"),
        "says what it does before the run: {err}"
    );
    assert!(err.contains("preloaded 300 keys in"), "{err}");
}

/// Hook commands in plain words: a rejection names the hook, a missing hook
/// is "no hook named", `hook test` exits 0 accept, 1 reject, 2 hook error
/// and 3 when it cannot run, a `.wasm` file needs no `--kind`, and a removed
/// validate hook comes back with `rollback` while a removed partition
/// function says it is not kept.
#[tokio::test]
async fn hook_commands_speak_plain_words_and_hook_test_exits_by_verdict() {
    let c = ProcCluster::start(1, &[]).await;
    let ep = c.nodes[&1].grpc.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, body: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        p.to_string_lossy().into_owned()
    };
    let small = file(
        "small.lua",
        b"function validate(key, value, ctx)\n  if value ~= nil and #value > 3 then return false, 'too long' end\n  return true\nend\n",
    );
    let spin = file("spin.lua", b"function validate(key, value, ctx)\n  while true do end\nend\n");
    let broken = file("broken.lua", b"function validate(key, value, ctx\n");
    let noop = file("noop.wasm", &ringkv_tests::guest::hostile("noop_validate"));
    let reject = file("reject.wasm", &ringkv_tests::guest::hostile("reject_validate"));
    let wasm_spin = file("spin.wasm", &ringkv_tests::guest::hostile("infinite_loop"));
    let partition = file("tenants.wasm", &ringkv_tests::guest::hostile("partition_prefix"));

    let test = |f: &str, value: &str| {
        let (f, value, ep) = (f.to_string(), value.to_string(), ep.clone());
        async move {
            run(&[
                "hook",
                "test",
                "--file",
                &f,
                "--key",
                "k",
                "--value",
                &value,
                "--timeout",
                "10ms",
                "--endpoints",
                &ep,
            ])
            .await
        }
    };
    let (code, out, err) = test(&small, "abc").await;
    assert_eq!(code, Some(0), "accept: {out} {err}");
    let (code, out, err) = test(&small, "abcdef").await;
    assert_eq!(code, Some(1), "reject: {out} {err}");
    assert!(out.starts_with("reject: too long"), "{out}");
    let (code, out, err) = test(&spin, "x").await;
    assert_eq!(code, Some(2), "a broken deadline is a hook error: {out} {err}");
    assert!(out.starts_with("error: ") && out.contains("deadline"), "{out}");
    let (code, out, err) = test(&broken, "x").await;
    assert_eq!(code, Some(2), "a script that does not load is a hook error: {out} {err}");
    assert!(err.starts_with("error: hook does not load"), "{err}");
    // Wasm modules are recognised without --kind.
    let (code, out, err) = test(&noop, "x").await;
    assert_eq!(code, Some(0), "a wasm module without --kind: {out} {err}");
    let (code, out, err) = test(&reject, "").await;
    assert_eq!(code, Some(1), "{out} {err}");
    let (code, out, err) = test(&wasm_spin, "x").await;
    assert_eq!(code, Some(2), "{out} {err}");
    let (code, _, err) =
        run(&["hook", "test", "--kind", "lua", "--file", &noop, "--key", "k", "--endpoints", &ep]).await;
    assert_eq!(code, Some(3), "the test cannot run: {err}");
    assert!(err.contains("is a WebAssembly module") && err.contains("drop --kind lua"), "{err}");
    let (code, _, err) = run(&["hook", "test", "--file", &small, "--endpoints", &ep]).await;
    assert_eq!(code, Some(3), "a missing --key: {err}");
    assert!(err.contains("Usage: ringkv hook test [OPTIONS]"), "{err}");

    let (code, out, err) =
        run(&["hook", "deploy", "--name", "small", "--stage", "validate", "--file", &small, "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, _, err) = run(&["put", "a", "too long", "--endpoints", &ep]).await;
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "error: rejected by hook small v1: too long");
    let (code, _, err) = run(&["hook", "get", "nosuch", "--endpoints", &ep]).await;
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "error: no hook named \"nosuch\"");

    let (code, out, err) = run(&["hook", "remove", "small", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, _, err) = run(&["put", "a", "too long", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "no hook once removed: {err}");
    let (code, out, err) = run(&["hook", "rollback", "small", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out.trim(), "small is now v1 (it had been removed)");
    let (_, _, err) = run(&["put", "a", "too long", "--endpoints", &ep]).await;
    assert_eq!(err.trim(), "error: rejected by hook small v1: too long", "the rolled-back hook judges again");

    let (code, out, err) =
        run(&["hook", "deploy", "--name", "tenants", "--stage", "partition", "--file", &partition, "--endpoints", &ep])
            .await;
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, out, err) = run(&["hook", "remove", "tenants", "--endpoints", &ep]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, _, err) = run(&["hook", "rollback", "tenants", "--endpoints", &ep]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no hook named \"tenants\"") && err.contains("not kept for rollback"), "{err}");
    let (_, help, _) = run(&["hook", "remove", "--help"]).await;
    assert!(help.contains("The partition function is not kept"), "{help}");
}

/// `cluster shards` lists every shard once, their token ranges cover the
/// whole ring, and with `--exact` their keys add up to what was written;
/// the reads behind its read rates are counted where they are served.
#[tokio::test]
async fn cluster_shards_lists_each_shard_with_its_range_keys_and_rate() {
    let c = ProcCluster::start(3, &["--shards", "4"]).await;
    let client = c.client();
    for i in 0..40 {
        client.put(format!("shards/{i}"), "v").await.expect("put");
    }
    for i in 0..40 {
        client.get(format!("shards/{i}")).await.expect("get");
    }
    // Every read is counted by the replica that served it.
    let mut served = 0;
    for addr in c.endpoints() {
        let status = ringkv_client::Client::connect([addr]).expect("client").status().await.expect("status");
        served += status.groups.iter().filter(|g| g.kind == "shard").map(|g| g.served_reads).sum::<u64>();
    }
    assert!(served >= 40, "{served} reads counted for 40 served");
    let all = c.endpoints().join(",");
    let shards = ringkv_tests::eventually("every shard reported with all 40 keys", || {
        let all = all.clone();
        async move {
            let args = ["cluster", "shards", "--json", "--exact", "--window", "200ms", "--endpoints"];
            let (ok, out, _) = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().copied().chain([all.as_str()]).collect();
                cli_blocking(&args)
            })
            .await
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
            let shards = v["shards"].as_array()?.clone();
            let keys: u64 = shards.iter().map(|s| s["keys"].as_u64().unwrap_or(0)).sum();
            let reported = shards
                .iter()
                .all(|s| s["reported_by"].is_u64() && s["writes_per_sec"].is_f64() && s["reads_per_sec"].is_f64());
            (ok && keys == 40 && reported).then_some(shards)
        }
    })
    .await;
    assert_eq!(shards.len(), 4);
    let token = |s: &serde_json::Value, field: &str| {
        u64::from_str_radix(s[field].as_str().expect("hex token"), 16).expect("hex token")
    };
    assert_eq!(token(&shards[0], "first_token"), 0);
    assert_eq!(token(&shards[3], "last_token"), u64::MAX);
    for pair in shards.windows(2) {
        assert_eq!(token(&pair[0], "last_token") + 1, token(&pair[1], "first_token"), "{pair:?}");
    }
    for s in &shards {
        assert_eq!(s["replicas"].as_array().map(Vec::len), Some(3), "{s}");
        // Each key and value is stored with a 16-byte envelope.
        let (keys, bytes) = (s["keys"].as_u64().unwrap_or(0), s["bytes"].as_u64().unwrap_or(0));
        assert!(bytes >= keys * 17, "size of {keys} keys: {s}");
    }

    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        cli_blocking(&["cluster", "shards", "--window", "100ms", "--endpoints", &all])
    })
    .await
    .expect("join");
    assert!(ok, "cluster shards failed: {err}");
    assert!(out.starts_with("SHARD") && out.lines().next().is_some_and(|h| h.contains("SIZE")), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with(char::is_numeric)).count(), 4, "{out}");
}
