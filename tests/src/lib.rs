//! Test harness for ringkv clusters.
//!
//! - [`ProcCluster`] runs the real `ringkv` binary, one process per node, each
//!   with its own data directory and log file. Nodes can be killed with
//!   SIGKILL and restarted with the same command line.
//! - [`InProcCluster`] runs nodes inside the test process, sharing one
//!   [`LinkFilter`] so tests can cut links between nodes.
//! - [`guest`] builds and loads the Wasm hook modules the tests deploy.
//! - [`cli`] runs the `ringkv` binary as a user would; [`browser`] drives
//!   headless Chromium; [`hooks`] defines and waits for hooks; [`container`]
//!   builds the container image; [`python`] runs the Python client example.
//! - [`heavy`] lets one test at a time run a cluster that loads the
//!   machine (many nodes, crash loops, long writes), whatever the number of
//!   test threads.
//!
//! Tests wait for conditions by polling with generous limits; they never
//! assert on speed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringkv::cluster::Node;
use ringkv::config::NodeConfig;
use ringkv::raft::{LinkFilter, RaftTuning};
use ringkv::server::Server;
use ringkv_client::{Client, ClientOptions};

pub mod browser;
pub mod checker;
pub mod cli;
pub mod container;
pub mod guest;
pub mod history;
pub mod hooks;
pub mod nemesis;
pub mod python;
pub mod workload;

/// Upper bound for any condition a test waits for. Generous on purpose: tests
/// must pass on a loaded 2-core CI machine.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `f` until it returns `Some`, or panics after [`PATIENCE`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "timed out after {PATIENCE:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Held by a test that loads the machine for a long time (six nodes, a
/// crash loop, tens of thousands of writes): one such test runs at a time
/// in the test binary (`RINGKV_TEST_HEAVY` to allow more), the others wait
/// for the permit. Light tests run beside it on the other test threads.
pub async fn heavy() -> tokio::sync::SemaphorePermit<'static> {
    static HEAVY: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    HEAVY
        .get_or_init(|| {
            let permits = std::env::var("RINGKV_TEST_HEAVY").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
            tokio::sync::Semaphore::new(permits)
        })
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// Raft timing of in-process test clusters: faster than the served
/// defaults (250 ms heartbeats, 1.25–2.5 s election timeouts), so failover
/// tests finish sooner on loopback.
pub fn test_raft_tuning() -> RaftTuning {
    RaftTuning { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 1000, ..RaftTuning::default() }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A free port on `ip` (bound and released), handed out once per process.
///
/// Taken below Linux's ephemeral range (32768 and up): a port the kernel
/// picked with bind(0) and we released could be given to one of the many
/// outgoing connections of concurrently running clusters before the node
/// meant to listen on it binds it, and that node would fail to start.
pub fn free_port_on(ip: std::net::Ipv4Addr) -> u16 {
    const LOW: u32 = 21_000;
    const SPAN: u32 = 7_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {LOW}..{}", LOW + SPAN)
}

/// Path of the `ringkv` binary built next to this test executable, checked
/// once per process: it must be newer than every source it is built from and
/// have crash points compiled in (the `failpoints` feature this crate turns
/// on). A stale or feature-less binary fails the test with what to run,
/// instead of testing old code.
pub fn ringkv_bin() -> PathBuf {
    static CHECKED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_ringkv_bin).clone().unwrap_or_else(|e| panic!("{e}"))
}

const REBUILD: &str = "build it first with `cargo build --workspace --all-targets` (./test.sh does)";

fn check_ringkv_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    // target/<profile>/deps/<test> -> target/<profile>/ringkv
    let bin = exe.parent().and_then(Path::parent).ok_or("no target dir above the test binary")?.join("ringkv");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{} is missing ({e}): {REBUILD}", bin.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // What the binary is compiled from (not host/tests, whose edits rebuild no binary).
    let inputs =
        ["host/src", "host/assets", "host/Cargo.toml", "client/src", "client/build.rs", "client/Cargo.toml", "proto"];
    if let Some((path, _)) = inputs.iter().filter_map(|i| newest_file(&root.join(i))).find(|(_, t)| *t > built) {
        return Err(format!("{} is older than {}: {REBUILD}", bin.display(), path.display()));
    }
    let probe = Command::new(&bin).arg("--version").env("FAILPOINTS", "").output();
    match probe {
        Ok(out) if out.status.success() => Ok(bin),
        Ok(out) => Err(format!(
            "{} has no crash points ({}): {REBUILD}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{} does not run ({e}): {REBUILD}", bin.display())),
    }
}

/// The most recently modified file under `path` (or `path` itself), skipping
/// build output directories.
fn newest_file(path: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some((path.to_path_buf(), meta.modified().ok()?));
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_file(&e.path()))
        .max_by_key(|(_, t)| *t)
}

/// One node process.
pub struct ProcNode {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Extra environment of the next start (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ProcNode {
    fn spawn(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(bin)
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn ringkv");
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A cluster of `ringkv serve` processes on loopback.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, ProcNode>,
    bin: PathBuf,
    extra_args: Vec<String>,
    /// `Some(a.b.c)`: node `i` listens on `a.b.c.i` (a loopback alias of its
    /// own, so firewall rules can cut links between nodes); `None`: every
    /// node on 127.0.0.1.
    own_ips: Option<[u8; 3]>,
    /// Options of the clients the harness makes (TLS for TLS clusters).
    client_opts: ClientOptions,
}

impl ProcCluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join it. Returns once
    /// every node is a voter of every group. Clusters have 16 shards unless
    /// `extra_args` sets `--shards`, so routing across shards is exercised.
    pub async fn start(n: u64, extra_args: &[&str]) -> Self {
        Self::start_with(n, extra_args, None, ClientOptions::default()).await
    }

    /// Like [`ProcCluster::start`], with the harness's clients (waiting for
    /// the cluster, [`ProcCluster::client`]) using `client_opts`: for
    /// clusters started with `--tls-*` flags.
    pub async fn start_with_client_options(n: u64, extra_args: &[&str], client_opts: ClientOptions) -> Self {
        Self::start_with(n, extra_args, None, client_opts).await
    }

    /// Like [`ProcCluster::start`], but node `i` listens on its own loopback
    /// address `127.x.y.i`, unique to this cluster, so the nemesis can cut
    /// links between nodes with per-address firewall rules.
    pub async fn start_on_own_ips(n: u64, extra_args: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let pid = std::process::id();
        let prefix = [127, (pid % 250) as u8 + 1, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)];
        Self::start_with(n, extra_args, Some(prefix), ClientOptions::default()).await
    }

    /// Starts `n` nodes `gap` apart with `args` as given (the serve
    /// defaults otherwise, 1 shard included) and returns at once, without
    /// waiting for anything: a cluster in its first seconds.
    pub async fn launch(n: u64, args: &[&str], gap: Duration) -> Self {
        let mut c = Self::empty(args.iter().map(|s| s.to_string()).collect(), None, ClientOptions::default());
        for id in 1..=n {
            if id > 1 {
                tokio::time::sleep(gap).await;
            }
            c.add_process(id);
        }
        c
    }

    /// Starts `n` nodes at once as `ringkv dev` and the deployments do:
    /// every node gets every node's address in `--join` (node 1 first, so it
    /// creates the cluster), and `args`. Returns once they are settled.
    pub async fn start_seeded(n: u64, args: &[&str]) -> Self {
        let mut c = Self::empty(args.iter().map(|s| s.to_string()).collect(), None, ClientOptions::default());
        let ip = c.ip_of(1);
        let planned: Vec<(String, String)> =
            (1..=n).map(|_| (format!("{ip}:{}", free_port_on(ip)), format!("{ip}:{}", free_port_on(ip)))).collect();
        let seeds = planned.iter().map(|(grpc, _)| grpc.clone()).collect::<Vec<_>>().join(",");
        c.extra_args.extend(["--join".to_string(), seeds]);
        for (id, (grpc, http)) in (1..=n).zip(planned) {
            c.spawn_node(id, grpc, http, Vec::new());
        }
        c.wait_settled(n as usize).await;
        c
    }

    fn empty(extra_args: Vec<String>, own_ips: Option<[u8; 3]>, client_opts: ClientOptions) -> Self {
        ProcCluster {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            bin: ringkv_bin(),
            extra_args,
            own_ips,
            client_opts,
        }
    }

    async fn start_with(n: u64, extra_args: &[&str], own_ips: Option<[u8; 3]>, client_opts: ClientOptions) -> Self {
        let mut extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|a| a == "--shards") {
            extra.extend(["--shards".to_string(), "16".to_string()]);
        }
        let mut c = Self::empty(extra, own_ips, client_opts);
        for id in 1..=n {
            c.add_process(id);
            if id == 1 {
                c.wait_leader_on(1).await;
            }
        }
        c.wait_settled(n as usize).await;
        c
    }

    /// Starts node `id` (joining node 1 unless it is node 1).
    pub fn add_process(&mut self, id: u64) {
        let ip = self.ip_of(id);
        let grpc = format!("{ip}:{}", free_port_on(ip));
        let http = format!("{ip}:{}", free_port_on(ip));
        let join = if id != 1 {
            let seed = self.nodes.get(&1).map(|n| n.grpc.clone()).expect("node 1 first");
            vec!["--join".into(), seed]
        } else {
            Vec::new()
        };
        self.spawn_node(id, grpc, http, join);
    }

    fn spawn_node(&mut self, id: u64, grpc: String, http: String, join: Vec<String>) {
        let data_dir = self.dir.path().join(format!("node{id}"));
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            grpc.clone(),
            "--http".into(),
            http.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(join);
        args.extend(self.extra_args.iter().cloned());
        let log = self.dir.path().join(format!("node{id}.log"));
        let mut node = ProcNode { id, grpc, http, data_dir, log, args, env: Vec::new(), child: None };
        node.spawn(&self.bin);
        self.nodes.insert(id, node);
    }

    /// The address node `id` listens on.
    pub fn ip_of(&self, id: u64) -> std::net::Ipv4Addr {
        match self.own_ips {
            Some([a, b, c]) => std::net::Ipv4Addr::new(a, b, c, u8::try_from(id).expect("node ids below 256")),
            None => std::net::Ipv4Addr::LOCALHOST,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        Client::connect_with(self.endpoints(), self.client_opts.clone()).expect("client")
    }

    /// A client bound to one node.
    pub fn node_client(&self, id: u64) -> Client {
        // Ring routing off: tests ask what this node itself answers.
        Client::connect_with([&self.nodes[&id].grpc], self.client_opts.clone())
            .expect("client")
            .with_ring_routing(false)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).expect("node");
        let mut c = node.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
        c.wait().ok()
    }

    /// Restarts a stopped node with its original command line.
    pub fn restart(&mut self, id: u64) {
        let bin = self.bin.clone();
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.child.is_none(), "node {id} is still running");
        node.spawn(&bin);
    }

    /// Restarts a stopped node with extra environment variables (cleared
    /// for later restarts unless given again).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.restart(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.env.clear();
        }
    }

    /// True (and the process reaped) when node `id` has exited on its own.
    pub fn exited(&mut self, id: u64) -> bool {
        self.exit_status(id).is_some()
    }

    /// How node `id` ended, once it has exited on its own (the process is
    /// then reaped); `None` while it runs or when it was not running.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).expect("node");
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                node.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Panics unless node `id` ended at crash point `point`: its log ends
    /// with the line the crash point prints, and it died of `SIGABRT`
    /// (`std::process::abort`). Any other exit — a panic, an error, a
    /// different crash point — is not the crash the test armed.
    pub fn assert_crashed_at(&self, id: u64, point: &str, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let line = format!("crash point {point} reached");
        let tail = self.log_tail(id);
        assert!(
            tail.contains(&line),
            "node {id} exited ({status}) without reaching crash point {point}; its log ends:\n{tail}"
        );
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "node {id} reached crash point {point} but did not abort ({status}); its log ends:\n{tail}"
        );
    }

    /// The leader of `key`'s shard as seen by node `via`, once one is known.
    pub async fn leader_of_key(&self, via: u64, key: &str) -> u64 {
        let client = self.node_client(via);
        eventually(&format!("node {via} to know the leader of {key:?}'s shard"), || {
            let client = client.clone();
            async move { group_of_key(&client.status().await.ok()?, key).map(|g| g.leader_id).filter(|l| *l != 0) }
        })
        .await
    }

    async fn wait_leader_on(&self, via: u64) {
        let client = self.node_client(via);
        eventually(&format!("node {via} to know a leader of every group"), || {
            let client = client.clone();
            async move { client.status().await.ok()?.groups.iter().all(|g| g.leader_id != 0).then_some(()) }
        })
        .await
    }

    /// Waits until every running node sees `n` members, every shard placed
    /// where the ring wants it, and a leader in every group it hosts.
    pub async fn wait_settled(&self, n: usize) {
        for node in self.nodes.values().filter(|n| n.is_running()) {
            let client = self.node_client(node.id);
            eventually(&format!("node {} to see {n} members and settled shards", node.id), || {
                let client = client.clone();
                async move { settled(&client.status().await.ok()?, n).then_some(()) }
            })
            .await;
        }
    }

    /// Every key stored on `shard`, from a dump served by its leader
    /// (`None` while no node serves a complete one).
    pub async fn shard_keys(&self, shard: u32) -> Option<Vec<Vec<u8>>> {
        use futures::StreamExt;
        use ringkv_client::proto::{backup_client::BackupClient, DumpShardRequest};
        for addr in self.endpoints() {
            let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}")).ok()?.connect().await else {
                continue;
            };
            let mut client = BackupClient::new(ch).max_decoding_message_size(usize::MAX);
            let Ok(resp) = client.dump_shard(DumpShardRequest { shard, shards: 0 }).await else { continue };
            let mut stream = resp.into_inner();
            let mut keys = Vec::new();
            let mut complete = true;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => keys.extend(c.records.into_iter().map(|r| r.key.to_vec())),
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                return Some(keys);
            }
        }
        None
    }

    /// The last [`NOTABLE_LINES`] lines of a node's log that report a
    /// leader change, a warning or an error.
    pub fn notable_log_lines(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let notable: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("leader changed"))
            .collect();
        notable[notable.len().saturating_sub(NOTABLE_LINES)..].join("\n")
    }

    /// Last lines of a node's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// How many notable log lines of each node a failed test prints.
const NOTABLE_LINES: usize = 80;

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            // A failed test's output carries what each node said, so a CI
            // failure can be diagnosed without its data directories.
            for id in self.nodes.keys() {
                eprintln!("--- node {id}: leader changes, warnings and errors (last {NOTABLE_LINES}) ---");
                eprintln!("{}", self.notable_log_lines(*id));
            }
        }
        // RINGKV_KEEP_TEST_DIRS=1 keeps data directories and node logs for a post-mortem.
        if std::env::var_os("RINGKV_KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept cluster directory {}", dir.keep().display());
        }
    }
}

/// Nodes running inside the test process, with a shared link filter.
pub struct InProcCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    pub filter: LinkFilter,
    /// The nodes' servers, stopped by [`InProcCluster::shutdown`].
    servers: Vec<Server>,
}

impl InProcCluster {
    /// Starts `n` in-process nodes; node 1 bootstraps, the others join.
    pub async fn start(n: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let filter = LinkFilter::default();
        let mut nodes = BTreeMap::new();
        let mut servers = Vec::new();
        let mut seed = None;
        for id in 1..=n {
            let config = NodeConfig {
                id,
                listen: "127.0.0.1:0".into(),
                http: None,
                data_dir: dir.path().join(format!("node{id}")),
                join: seed.iter().cloned().collect(),
                // Few shards keep in-process clusters light; the ring logic is the same.
                ring: ringkv::ring::RingConfig { shards: 4, ..Default::default() },
                raft: test_raft_tuning(),
                request_timeout: Duration::from_secs(3),
                // Tests that want automatic splits run real processes.
                auto_split_replicas_per_node: 0,
                ..NodeConfig::default()
            };
            let server = Server::start(config, filter.clone()).await.expect("node starts");
            if seed.is_none() {
                seed = Some(server.node().addr().to_string());
            }
            nodes.insert(id, server.node().clone());
            servers.push(server);
        }
        let c = InProcCluster { dir, nodes, filter, servers };
        for id in 1..=n {
            let client = c.client(id);
            eventually("in-process cluster to form", || {
                let client = client.clone();
                async move { settled(&client.status().await.ok()?, n as usize).then_some(()) }
            })
            .await;
        }
        c
    }

    pub fn client(&self, id: u64) -> Client {
        Client::connect([self.nodes[&id].addr()]).expect("client")
    }

    pub async fn shutdown(self) {
        for s in &self.servers {
            s.shutdown().await;
        }
    }
}

/// True when the status shows `n` members, none of them down or unreachable
/// (a member marked so is left out of the placement target, so "no shard
/// moving" would not mean it holds its share), no shard moving, every shard
/// with min(3, n) replicas, and a leader in every group the node hosts.
pub fn settled(s: &ringkv_client::proto::StatusResponse, n: usize) -> bool {
    s.nodes.len() == n
        && s.down.is_empty()
        && s.unreachable.is_empty()
        && !s.shards.is_empty()
        && s.shards.iter().all(|r| !r.moving && r.replicas.len() == n.min(3))
        && s.groups.iter().all(|g| g.leader_id != 0)
}

/// The status entry of the shard group that holds `key`.
pub fn group_of_key<'a>(
    status: &'a ringkv_client::proto::StatusResponse,
    key: &str,
) -> Option<&'a ringkv_client::proto::GroupStatus> {
    let shards = status.groups.iter().filter(|g| g.kind == "shard").count() as u32;
    if shards == 0 {
        return None;
    }
    let group = ringkv::cluster::shard_group(ringkv::ring::shard_of(ringkv::ring::token(key.as_bytes()), shards));
    status.groups.iter().find(|g| g.group_id == group)
}

/// Installs a test log subscriber once (honours RUST_LOG).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl ProcCluster {
    /// A client that sends every request to node `id` (ring routing off), for
    /// tests about what that node itself answers.
    pub fn pinned_client(&self, id: u64) -> Client {
        self.node_client(id).with_ring_routing(false)
    }
}

impl InProcCluster {
    /// A client that sends every request to node `id` (ring routing off).
    pub fn pinned_client(&self, id: u64) -> Client {
        self.client(id).with_ring_routing(false)
    }
}

/// Sends `body` as the raw message of the gRPC method `path` on `channel`
/// and returns the status code: for tests of what a node does with bytes no
/// well-behaved client would send.
pub async fn raw_grpc_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: tonic::codegen::Bytes,
) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec: tonic_prost::ProstCodec<RawBytes, RawBytes> = tonic_prost::ProstCodec::default();
    match grpc.unary(tonic::Request::new(RawBytes(body)), path.parse().expect("path"), codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// A message that encodes as exactly the given bytes and decodes as anything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawBytes(pub tonic::codegen::Bytes);

impl prost::Message for RawBytes {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {}
}
