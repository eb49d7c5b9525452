//! What a user sees when things go wrong around the binary: a CLI whose
//! stdout reader has gone (`ringkv scan "" | head -1`), endpoints where no
//! node listens or that are a node's HTTP port, removing a node that
//! is not a member, `ringkv dev` whose nodes cannot start or die while it
//! runs, and `/healthz` over HTTP after a failed fsync.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringkv::config::NodeConfig;
use ringkv::raft::LinkFilter;
use ringkv::server::Server;
use ringkv_tests::cli::{cli, http_get};
use ringkv_tests::{eventually, ringkv_bin, ProcCluster, PATIENCE};

/// The status a shell shows for a program that stopped on a closed pipe.
const CLOSED_PIPE_STATUS: i32 = 141;

/// Waits for `child` to exit within [`PATIENCE`]; kills it and panics if it does not.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Runs `ringkv ARGS` with stdout a pipe whose read end is already closed,
/// as in `ringkv ARGS | true`; returns the exit status and stderr.
fn run_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child =
        Command::new(ringkv_bin()).args(args).stdout(writer).stderr(Stdio::piped()).spawn().expect("spawn ringkv");
    let stderr = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || read_all(stderr));
    let status = wait_exit(&mut child, &format!("ringkv {}", args.join(" ")));
    (status, err.join().expect("stderr reader"))
}

/// No panic, no error about the pipe (client warnings may appear).
fn assert_quiet(stderr: &str) {
    for bad in ["panicked", "Broken pipe", "error:"] {
        assert!(!stderr.contains(bad), "{bad:?} on stderr: {stderr}");
    }
}

#[tokio::test]
async fn commands_whose_stdout_closes_exit_quietly_with_status_141() {
    let c = ProcCluster::start(1, &[]).await;
    let endpoint = c.nodes[&1].grpc.clone();
    let client = c.client();
    // 100 lines of 2 KiB: more than a pipe holds, so `scan` is still
    // writing when the reader goes.
    let value = "v".repeat(2048);
    for i in 0..100 {
        client.put(format!("k{i:03}"), value.clone()).await.expect("put");
    }

    let scan = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(ringkv_bin())
            .args(["scan", "", "--endpoints", &endpoint])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scan");
        let stderr = child.stderr.take().expect("stderr");
        let err = std::thread::spawn(move || read_all(stderr));
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("first line");
        drop(out); // `head -1` has its line and exits.
        let status = wait_exit(&mut child, "scan");
        (first, status, err.join().expect("stderr reader"), endpoint)
    });
    let (first, status, err, endpoint) = scan.await.expect("join");
    assert!(first.starts_with('k') && first.contains('\t'), "{first:?}");
    assert_eq!(status.code(), Some(CLOSED_PIPE_STATUS), "scan into a closed pipe: {status:?}, stderr {err:?}");
    assert_quiet(&err);

    let (status, err) =
        tokio::task::spawn_blocking(move || run_into_closed_pipe(&["cluster", "status", "--endpoints", &endpoint]))
            .await
            .expect("join");
    assert_eq!(status.code(), Some(CLOSED_PIPE_STATUS), "cluster status into a closed pipe: {err:?}");
    assert_quiet(&err);

    // A command that needs no cluster goes the same way.
    let (status, err) =
        tokio::task::spawn_blocking(|| run_into_closed_pipe(&["config", "example"])).await.expect("join");
    assert_eq!(status.code(), Some(CLOSED_PIPE_STATUS), "config example into a closed pipe: {err:?}");
    assert!(err.is_empty(), "nothing on stderr: {err:?}");
}

#[tokio::test]
async fn removing_a_node_that_is_not_a_member_fails_naming_the_members() {
    let c = ProcCluster::start(1, &[]).await;
    let endpoint = c.nodes[&1].grpc.clone();
    let (ok, out, err) = cli(ringkv_tests::cli::args(&["cluster", "remove-node", "9", "--endpoints", &endpoint])).await;
    assert!(!ok, "removing node 9 of a one-node cluster must fail: {out}");
    assert!(!out.contains("removed"), "{out}");
    assert!(err.contains("node 9 is not a member of the cluster; members: 1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    let s = c.client().status().await.expect("status");
    assert_eq!(s.nodes.len(), 1, "nothing changed: {s:?}");
}

/// A base port whose `count` ports from it are free, in 20000-21000 (below
/// `free_port`'s range and t110's), distinct within this process.
fn dev_base(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = (std::process::id() % 50) as u16 * 20;
    loop {
        let n = NEXT.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let base = 20_000 + (start + n) % (1_000 - count);
        if (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

fn dev(base: u16, nodes: u64, data_dir: &std::path::Path) -> Child {
    Command::new(ringkv_bin())
        .args(["dev", "--nodes", &nodes.to_string(), "--base-port", &base.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dev")
}

/// `dev`'s output so far, read on threads so the test never blocks on it.
struct Output {
    lines: mpsc::Receiver<(bool, String)>,
    out: String,
    err: String,
}

impl Output {
    fn of(child: &mut Child) -> Output {
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (is_err, r) in [(false, Box::new(stdout) as Box<dyn Read + Send>), (true, Box::new(stderr))] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((is_err, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Output { lines, out: String::new(), err: String::new() }
    }

    /// Reads until a line of stdout (`err`: stderr) contains `needle`;
    /// returns that line. Panics after [`PATIENCE`] or when both streams close.
    fn until(&mut self, err: bool, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_err, line)) => {
                    let text = if is_err { &mut self.err } else { &mut self.out };
                    text.push_str(&line);
                    text.push('\n');
                    if is_err == err && line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); stdout:\n{}\nstderr:\n{}", self.out, self.err),
            }
        }
    }

    /// Everything written until both streams closed (the process exited).
    fn rest(&mut self) {
        while let Ok((is_err, line)) = self.lines.recv_timeout(PATIENCE) {
            let text = if is_err { &mut self.err } else { &mut self.out };
            text.push_str(&line);
            text.push('\n');
        }
    }
}

#[tokio::test]
async fn dev_refuses_to_start_on_taken_ports_and_when_a_node_cannot_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every port taken, as by another `ringkv dev`.
    let base = dev_base(4);
    let held: Vec<_> =
        (base..base + 4).map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).expect("hold the port")).collect();
    let (status, out, err) = tokio::task::spawn_blocking({
        let data = dir.path().join("taken");
        move || {
            let mut child = dev(base, 2, &data);
            let mut output = Output::of(&mut child);
            let status = wait_exit(&mut child, "dev on taken ports");
            output.rest();
            (status, output.out, output.err)
        }
    })
    .await
    .expect("join");
    drop(held);
    assert!(!status.success(), "dev must fail: {status:?}\n{out}");
    assert!(!out.contains("press Ctrl-C"), "{out}");
    assert!(err.contains(&format!("port {base} (node 1's gRPC port) is not free")), "{err}");

    // Node 2 cannot create its data directory: a file is in the way.
    let data = dir.path().join("blocked");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("node2"), "not a directory").expect("write");
    let base = dev_base(4);
    let (status, out, err) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let mut child = dev(base, 2, &data);
            let mut output = Output::of(&mut child);
            let status = wait_exit(&mut child, "dev with a node that cannot start");
            output.rest();
            (status, output.out, output.err)
        }
    })
    .await
    .expect("join");
    assert!(!status.success(), "dev must fail: {status:?}\n{out}");
    assert!(!out.contains("press Ctrl-C"), "{out}");
    let log = data.join("node2.log");
    assert!(err.contains("node 2 exited with status 1 before the cluster was ready: error:"), "{err}");
    assert!(err.contains(&format!("its log: {}", log.display())), "{err}");
    assert!(std::fs::read_to_string(&log).expect("node 2's log").contains("error:"));
    // Node 1 started, and was stopped with the rest.
    assert!(std::net::TcpStream::connect(("127.0.0.1", base)).is_err(), "node 1 is stopped");
}

/// State of process `pid` from /proc (`None`: gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn pid_of(banner_line: &str) -> i32 {
    banner_line
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {banner_line:?}"))
}

#[tokio::test]
async fn dev_reports_and_reaps_a_killed_node_and_ends_when_none_is_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dev_base(4);
    let data = dir.path().to_path_buf();
    let (killed_line, survivor, out) = tokio::task::spawn_blocking(move || {
        let mut child = dev(base, 2, &data);
        let mut output = Output::of(&mut child);
        // The banner comes once both nodes are ready, and names their pids.
        let node1 = pid_of(&output.until(false, "node 1: pid "));
        let node2 = pid_of(&output.until(false, "node 2: pid "));
        output.until(false, "press Ctrl-C to stop");

        nix::sys::signal::kill(nix::unistd::Pid::from_raw(node2), nix::sys::signal::SIGKILL).expect("kill node 2");
        let line = output.until(true, "node 2 exited");
        // Reaped by the time it is reported: no zombie left.
        assert!(!matches!(proc_state(node2), Some('Z')), "node 2 is a zombie");
        assert!(child.try_wait().expect("try_wait").is_none(), "dev keeps running with node 1: {line}");
        let survivor = std::net::TcpStream::connect(("127.0.0.1", base)).is_ok();

        // The last node gone, dev ends with an error.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(node1), nix::sys::signal::SIGKILL).expect("kill node 1");
        let status = wait_exit(&mut child, "dev after its last node died");
        output.rest();
        assert!(!status.success(), "{status:?}\nstderr:\n{}", output.err);
        assert!(output.err.contains("node 1 exited with signal 9 (SIGKILL)"), "{}", output.err);
        assert!(output.err.contains("no node is left"), "{}", output.err);
        assert!(!matches!(proc_state(node1), Some('Z')), "node 1 is a zombie");
        (line, survivor, output.out)
    })
    .await
    .expect("join");
    let log = dir.path().join("node2.log");
    assert_eq!(
        killed_line,
        format!("node 2 exited with signal 9 (SIGKILL); its log: {}; still running: 1", log.display())
    );
    assert!(survivor, "node 1 still serves after node 2 died");
    assert!(!out.contains("stopped"), "{out}");
}

/// `/healthz` and `/readyz` over HTTP once a failed fsync poisoned the
/// node's storage (the unit test in `storage` covers the store itself).
#[tokio::test]
async fn healthz_answers_503_over_http_after_a_failed_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", ringkv_tests::free_port());
    let config = NodeConfig {
        id: 1,
        listen: "127.0.0.1:0".into(),
        http: Some(http.clone()),
        data_dir: dir.path().join("node1"),
        ring: ringkv::ring::RingConfig { shards: 1, ..Default::default() },
        raft: ringkv_tests::test_raft_tuning(),
        ..NodeConfig::default()
    };
    let server = Server::start(config, LinkFilter::default()).await.expect("node starts");
    let node = server.node();
    eventually("/readyz to answer 200", || {
        let http = http.clone();
        async move { (http_get(http, "/readyz").await?.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(http_get(http.clone(), "/healthz").await, Some((200, "ok\n".to_string())));

    node.storage().fail_next_fsync();
    let client = ringkv_client::Client::connect([node.addr().to_string()]).expect("client");
    assert!(client.put("k", "v").await.is_err(), "a write whose fsync failed is not acknowledged");
    assert!(node.storage().is_poisoned());
    assert_eq!(
        http_get(http.clone(), "/healthz").await,
        Some((503, "storage poisoned after a failed fsync\n".to_string()))
    );
    let (code, body) = http_get(http, "/readyz").await.expect("GET /readyz");
    assert_eq!(code, 503);
    assert!(body.contains("storage is poisoned after a failed fsync"), "{body}");
    server.shutdown().await;
}

/// A loopback address nobody listens on.
fn dead_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    format!("127.0.0.1:{port}")
}

/// A client command that reaches no node names the addresses it tried and
/// how to give others; one pointed at a node's HTTP port says that it is
/// not the gRPC port and which one probably is.
#[tokio::test]
async fn dead_and_wrong_endpoints_are_named_with_what_to_do() {
    let (a, b) = (dead_endpoint(), dead_endpoint());
    let hint = "; is a ringkv node running there? Give the nodes' gRPC addresses with --endpoints or RINGKV_ENDPOINTS";
    for cmd in ["get", "put"] {
        let mut argv = vec![cmd, "k"];
        if cmd == "put" {
            argv.push("v");
        }
        argv.extend(["--endpoints", &a]);
        let (ok, _, err) = cli(ringkv_tests::cli::args(&argv)).await;
        assert!(!ok, "{cmd}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
        assert!(err.starts_with(&format!("error: cannot connect to {a} (")), "{cmd}: {err}");
        assert!(err.trim_end().ends_with(hint), "{cmd}: {err}");
    }
    let both = format!("{a},{b}");
    let (ok, _, err) = cli(ringkv_tests::cli::args(&["scan", "", "--endpoints", &both])).await;
    assert!(!ok);
    assert!(err.starts_with(&format!("error: cannot connect to any of {a}, {b} (")), "{err}");

    let c = ProcCluster::start(1, &[]).await;
    let (http, grpc) = (c.nodes[&1].http.clone(), c.nodes[&1].grpc.clone());
    let (ok, _, err) = cli(ringkv_tests::cli::args(&["get", "k", "--endpoints", &http])).await;
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(
        err.starts_with(&format!(
            "error: bad endpoint {http}: it answers plain HTTP (status 404), not gRPC; this looks like ringkv's \
             HTTP port, not its gRPC port"
        )),
        "{err}"
    );
    let port = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).expect("port");
    if port(&http) == port(&grpc) + 1 {
        assert!(err.contains(&format!("try {grpc})")), "names the gRPC port: {err}");
    }
}
