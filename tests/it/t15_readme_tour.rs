//! README.md's tour, run as written (issue 19): the commands are read from
//! README.md itself, run one by one in one `bash` against a real `ringkv
//! dev` cluster the test starts, and each output the README shows is
//! checked, so the README cannot drift from the binary.
//!
//! What is run: every line of every fenced block whose info string contains
//! `tour` (```` ```sh tour ````); other blocks (a real cluster's addresses,
//! TLS, containers, backup paths) are not. A line ending in `\` continues
//! on the next. No tour block, or a line the test cannot run, fails the test.
//!
//! The matching rule, for a line's comment (from its first ` # `):
//! - `# => TEXT` is checked output. Cut TEXT at its first ` (` (what
//!   follows explains); the rest, split at `…` (or `...`), must appear in
//!   the command's stdout and stderr, piece by piece, in order. The command
//!   must exit with N if TEXT ends with `(exit N)`, non-zero if TEXT starts
//!   with `error:`, and 0 otherwise.
//! - `# text` (no `=>`) is prose: not checked, but the command must exit 0,
//!   as must a line without a comment.
//!
//! What the test does instead of a line, or after it, each printed as it goes:
//! - Setup that takes minutes, from a fixed list ([`SETUP`]), is skipped:
//!   the suite has built `ringkv` and the toolchain is installed; the guest
//!   SDK's modules are built by the harness (`ringkv_tests::guest`).
//! - `ringkv dev ...` is started by the test in the background, with
//!   `--base-port` added, and waited for until it prints that every node is
//!   ready.
//! - After a line that starts a node in the background (`ringkv serve ...
//!   &`), the test waits until that node's `--http` address answers
//!   `/readyz` with 200 (a restarted node has caught up) before the next line.
//! - After a `kill` line, the test waits until every node still answering
//!   sees a leader among the answering nodes in every group it hosts (the
//!   README says a new leader is elected within a few seconds; a write sent
//!   sooner may wait longer than its 5 s deadline on a loaded machine).
//! - After a line that changes hooks (`ringkv hook deploy|rollback|remove`),
//!   the test waits until every node of `dev` lists the same hooks and runs
//!   each active validate and ttl hook's version: the command returns once
//!   the node that took it runs the change, and the others follow within
//!   moments (README says so), which a test must not race.
//!
//! Ports: the README's `127.0.0.1:7379` to `127.0.0.1:7396` (`dev`'s ports
//! for up to 9 nodes) become `127.0.0.1:B` to `B+17`, for a base `B` free
//! in this test process, in every command.
//!
//! The working directory is a temporary directory laid out like the
//! repository root: every top-level entry is a symlink to the repository's,
//! except `target/release/ringkv`, a symlink to the binary under test. No
//! `RINGKV_*` variable is inherited. At the end the shell's background jobs
//! get SIGTERM, `dev` gets SIGINT (Ctrl-C) and must exit 0 having removed
//! its pid files.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringkv_tests::cli::http_get;
use ringkv_tests::{eventually, free_port, heavy, ringkv_bin, PATIENCE};

/// Setup commands the test does not run, and why.
const SETUP: &[(&str, &str)] = &[
    ("cargo build --release -p ringkv", "the suite built ringkv; target/release/ringkv links to it"),
    ("rustup target add wasm32-unknown-unknown", "test.sh installs the target"),
    (
        "(cd guest-sdk && cargo build --target wasm32-unknown-unknown --release)",
        "the harness builds the guest SDK with the same command (ringkv_tests::guest)",
    ),
];

/// The README's first gRPC port (`ringkv dev`'s default `--base-port`) and
/// how many ports `dev` uses at most (9 nodes, two ports each).
const README_BASE: u16 = 7379;
const DEV_PORTS: u16 = 18;

/// Longest any one tour command may take before the test gives up on it.
const COMMAND_PATIENCE: Duration = Duration::from_secs(300);

/// One command of the tour.
#[derive(Debug)]
struct TourLine {
    /// README.md line of its first physical line.
    line: usize,
    /// The command as written, continuation lines included.
    text: String,
    /// Its comment, after the first ` # ` of its last physical line.
    comment: Option<String>,
}

impl TourLine {
    /// The command without its comment, on one line.
    fn command(&self) -> String {
        let last = self.text.lines().last().unwrap_or_default();
        let without = match last.find(" # ") {
            Some(i) => &last[..i],
            None => last,
        };
        let mut lines: Vec<&str> = self.text.lines().collect();
        lines.pop();
        lines.push(without);
        lines.iter().map(|l| l.trim().trim_end_matches('\\').trim()).collect::<Vec<_>>().join(" ")
    }
}

/// Every line of every tour block of `readme`, in order.
fn tour_lines(readme: &str) -> Vec<TourLine> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut tour = false;
    let mut pending: Option<TourLine> = None;
    for (i, raw) in readme.lines().enumerate() {
        let fence = raw.trim_start().strip_prefix("```");
        if let Some(info) = fence {
            if in_block {
                assert!(pending.is_none(), "README.md:{}: a tour block ends in a `\\` continuation", i + 1);
                in_block = false;
            } else {
                in_block = true;
                tour = info.split_whitespace().any(|w| w == "tour");
            }
            continue;
        }
        if !in_block || !tour {
            continue;
        }
        if pending.is_none() && raw.trim().is_empty() {
            continue;
        }
        let entry = pending.get_or_insert_with(|| TourLine { line: i + 1, text: String::new(), comment: None });
        if !entry.text.is_empty() {
            entry.text.push('\n');
        }
        entry.text.push_str(raw);
        if raw.trim_end().ends_with('\\') {
            continue;
        }
        let mut done = pending.take().expect("pending line");
        done.comment = raw.find(" # ").map(|c| raw[c + 3..].trim().to_string());
        out.push(done);
    }
    out
}

/// The exit status a line must have.
#[derive(Debug, PartialEq)]
enum Status {
    Zero,
    NonZero,
    Code(i32),
}

/// What a line's comment says its command prints and how it exits.
#[derive(Debug, PartialEq)]
struct Expect {
    pieces: Vec<String>,
    status: Status,
}

fn expectation(comment: Option<&str>) -> Expect {
    let Some(text) = comment.and_then(|c| c.strip_prefix("=>")).map(str::trim) else {
        return Expect { pieces: Vec::new(), status: Status::Zero };
    };
    let code =
        text.strip_suffix(')').and_then(|t| t.rsplit_once("(exit ")).and_then(|(_, n)| n.trim().parse::<i32>().ok());
    let status = match code {
        Some(n) => Status::Code(n),
        None if text.starts_with("error:") => Status::NonZero,
        None => Status::Zero,
    };
    let shown = text.split(" (").next().unwrap_or_default();
    let pieces = shown
        .split('…')
        .flat_map(|p| p.split("..."))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    Expect { pieces, status }
}

/// `None` when `output` and `status` match `expect`, else what is wrong.
fn mismatch(expect: &Expect, output: &str, status: i32) -> Option<String> {
    let status_ok = match expect.status {
        Status::Zero => status == 0,
        Status::NonZero => status != 0,
        Status::Code(n) => status == n,
    };
    if !status_ok {
        return Some(format!("exit status {status}, expected {:?}", expect.status));
    }
    let mut from = 0;
    for piece in &expect.pieces {
        match output[from..].find(piece.as_str()) {
            Some(at) => from += at + piece.len(),
            None => return Some(format!("{piece:?} is not in the output (after byte {from})")),
        }
    }
    None
}

/// `text` with the README's ports (`127.0.0.1:7379` and the 17 after it)
/// moved to the same offsets from `base`.
fn with_ports(text: &str, base: u16) -> String {
    const HOST: &str = "127.0.0.1:";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(HOST) {
        let (before, after) = rest.split_at(at + HOST.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<u16>() {
            Ok(p) if (README_BASE..README_BASE + DEV_PORTS).contains(&p) => {
                out.push_str(&(base + (p - README_BASE)).to_string())
            }
            _ => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// What the test does with a line.
#[derive(Debug, PartialEq)]
enum Step {
    /// Not run: a setup command of [`SETUP`], with why.
    Skip(&'static str),
    /// Not run: a build the harness does instead.
    BuildGuests,
    /// `ringkv dev` with these arguments (after `ringkv`).
    Dev(Vec<String>),
    /// Run in the shell; `Some(http)`: it starts a node in the background
    /// whose HTTP address is `http`.
    Run(Option<String>),
    /// Run in the shell; it changes hooks.
    HookChange,
    /// Run in the shell; it kills a node.
    Kill,
}

/// How the test runs `command` (ports already moved); `Err` for a command
/// the test cannot run.
fn step(command: &str) -> Result<Step, String> {
    if let Some((_, why)) = SETUP.iter().find(|(c, _)| *c == command) {
        if command.contains("guest-sdk") {
            return Ok(Step::BuildGuests);
        }
        return Ok(Step::Skip(why));
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.get(..2) == Some(&["ringkv", "dev"][..]) {
        if command.contains(['"', '\'', '$', '&', '|', ';', '<', '>', '`']) {
            return Err("`ringkv dev` with shell syntax: the test starts dev itself, with plain arguments".into());
        }
        return Ok(Step::Dev(words[1..].iter().map(|w| w.to_string()).collect()));
    }
    let assignment = words.first().and_then(|w| w.split_once('=')).is_some_and(|(name, _)| {
        name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    match words.first() {
        Some(&"ringkv") | Some(&"export") | Some(&"kill") => {}
        _ if assignment => {}
        _ => {
            return Err(format!(
            "neither a setup command the test knows ({}), nor `ringkv ...`, `export`, `kill` or a variable assignment",
            SETUP.iter().map(|(c, _)| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        ))
        }
    }
    if words.get(..2) == Some(&["ringkv", "serve"][..]) && command.ends_with('&') {
        let http = words.windows(2).find(|w| w[0] == "--http").map(|w| w[1].to_string());
        return match http {
            Some(h) => Ok(Step::Run(Some(h))),
            None => Err("a background `ringkv serve` without --http: the test cannot tell when it is ready".into()),
        };
    }
    if words.first() == Some(&"kill") {
        return Ok(Step::Kill);
    }
    if words.get(..2) == Some(&["ringkv", "hook"][..])
        && matches!(words.get(2), Some(&"deploy") | Some(&"rollback") | Some(&"remove"))
    {
        return Ok(Step::HookChange);
    }
    Ok(Step::Run(None))
}

/// Some(()) once every node of `nodes` that answers sees, in every group
/// it hosts, a leader that answers too.
async fn leaders_answer(nodes: Vec<String>) -> Option<()> {
    let mut answering = std::collections::BTreeSet::new();
    let mut statuses = Vec::new();
    for node in nodes {
        let Ok(client) = ringkv_client::Client::connect([node]) else { continue };
        if let Ok(s) = client.with_ring_routing(false).status().await {
            answering.insert(s.node_id);
            statuses.push(s);
        }
    }
    let led = |s: &ringkv_client::proto::StatusResponse| s.groups.iter().all(|g| answering.contains(&g.leader_id));
    (!statuses.is_empty() && statuses.iter().all(led)).then_some(())
}

/// Some(()) once every node in `nodes` lists the same hooks (name,
/// version, active) and runs each active validate and ttl hook's version.
async fn hooks_settled(nodes: Vec<String>) -> Option<()> {
    use ringkv_client::proto::HookStage;
    let mut lists = Vec::new();
    for node in nodes {
        let client = ringkv_client::Client::connect([node]).ok()?.with_ring_routing(false);
        let hooks = client.list_hooks().await.ok()?.hooks;
        for h in &hooks {
            let runs_here = h.stage == HookStage::Validate as i32 || h.stage == HookStage::Ttl as i32;
            let want = if h.active { h.version } else { 0 };
            if runs_here && h.running_version != want {
                return None;
            }
        }
        let mut list: Vec<(String, u64, bool)> = hooks.into_iter().map(|h| (h.name, h.version, h.active)).collect();
        list.sort();
        lists.push(list);
    }
    lists.windows(2).all(|w| w[0] == w[1]).then_some(())
}

/// `n` consecutive ports handed to this test by the harness's allocator,
/// so no other test of this process is given one of them.
fn consecutive_ports(n: u16) -> u16 {
    for _ in 0..1000 {
        let first = free_port();
        if (1..n).all(|i| first.checked_add(i) == Some(free_port())) {
            return first;
        }
    }
    panic!("no {n} consecutive free ports")
}

/// One `bash` reading commands from a pipe, so variables, the working
/// directory and background jobs carry from one tour line to the next.
struct Shell {
    stdin: ChildStdin,
    child: Child,
    lines: mpsc::Receiver<String>,
    token: String,
}

impl Shell {
    fn start(dir: &Path) -> Shell {
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc"]).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(k);
            }
        }
        // Its own process group, which its background jobs share (no job
        // control in a non-interactive shell): the guard kills them all.
        let mut child = cmd.process_group(0).spawn().expect("spawn bash");
        let stdout = child.stdout.take().expect("bash stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().expect("bash stdin");
        let token = format!("@@tour-{}-{}@@", std::process::id(), nanos_now());
        let mut shell = Shell { stdin, child, lines, token };
        shell.send("exec 2>&1");
        shell
    }

    fn send(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").expect("write to bash");
    }

    /// Runs `text` (stdin from /dev/null, so no command reads the script)
    /// and returns its stdout and stderr, interleaved, and its exit status.
    fn run(&mut self, text: &str) -> (String, i32) {
        self.send(&format!("{{ {text}\n}} </dev/null\nprintf '\\n{} %d\\n' \"$?\"", self.token));
        let deadline = Instant::now() + COMMAND_PATIENCE;
        let mut output = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(code) = line.strip_prefix(&self.token) {
                        // The newline printed before the token.
                        if output.last().is_some_and(|l: &String| l.is_empty()) {
                            output.pop();
                        }
                        return (output.join("\n"), code.trim().parse().expect("exit status"));
                    }
                    output.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("`{text}` did not finish within {COMMAND_PATIENCE:?}; its output:\n{}", output.join("\n"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("bash exited while running `{text}`; its output:\n{}", output.join("\n"))
                }
            }
        }
    }
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos()
}

/// Kills what the test started, even when an assertion failed: `dev` and
/// its nodes, the shell and its background jobs (each a process group).
#[derive(Default)]
struct Guard {
    groups: Vec<i32>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for pgid in &self.groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pgid), nix::sys::signal::SIGKILL);
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// Waits until `dev` (whose output goes to `out`) says every node is ready.
fn wait_dev_ready(dev: &mut Child, out: &Path) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if text.contains(", all ready") {
            return;
        }
        if let Ok(Some(status)) = dev.try_wait() {
            panic!("ringkv dev exited ({status}) before the cluster was ready:\n{text}");
        }
        // dev gives up by itself after its --ready-timeout (2 min); this is a backstop.
        assert!(start.elapsed() < 2 * PATIENCE, "ringkv dev not ready after {:?}:\n{text}", 2 * PATIENCE);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A directory laid out like the repository root, with `ringkv` at
/// `target/release/ringkv`.
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    for entry in std::fs::read_dir(root).expect("read the repository root") {
        let entry = entry.expect("directory entry");
        let name = entry.file_name();
        if [".git", "target", "ringkv-dev-data", "ringkv-data"].iter().any(|n| name == *n) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).expect("symlink");
    }
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).expect("target/release");
    std::os::unix::fs::symlink(ringkv_bin(), release.join("ringkv")).expect("symlink ringkv");
    dir
}

fn readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written() {
    let _heavy = heavy().await;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run_tour(&handle)).await.expect("the tour");
}

fn run_tour(rt: &tokio::runtime::Handle) {
    let lines = tour_lines(&readme());
    assert!(!lines.is_empty(), "README.md has no tour block (```sh tour): nothing would be tested");
    let base = consecutive_ports(DEV_PORTS);
    let planned: Vec<(&TourLine, String, Step)> = lines
        .iter()
        .map(|l| {
            let command = with_ports(&l.command(), base);
            let step = step(&command).unwrap_or_else(|e| panic!("README.md:{}: `{command}`: {e}", l.line));
            (l, command, step)
        })
        .collect();
    assert_eq!(
        planned.iter().filter(|(_, _, s)| matches!(s, Step::Dev(_))).count(),
        1,
        "the tour must start exactly one `ringkv dev`"
    );

    let dir = work_dir();
    let mut guard = Guard::default();
    let mut shell = Shell::start(dir.path());
    guard.groups.push(shell.child.id() as i32);
    let dev_out = dir.path().join("dev.out");
    let mut dev_pid = None;
    let mut dev_nodes: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for (line, command, step) in &planned {
        let at = format!("README.md:{}", line.line);
        match step {
            Step::Skip(why) => eprintln!("{at}: skipped `{command}`: {why}"),
            Step::BuildGuests => {
                eprintln!("{at}: instead of `{command}`: the harness builds the guest SDK");
                ringkv_tests::guest::guest_module_path("validate_json");
            }
            Step::Dev(args) => {
                let out = std::fs::File::create(&dev_out).expect("dev.out");
                let mut dev = Command::new(dir.path().join("target/release/ringkv"));
                dev.args(args).args(["--base-port", &base.to_string()]).current_dir(dir.path());
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("RINGKV_") {
                        dev.env_remove(k);
                    }
                }
                let child = dev
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("dev.out"))
                    .stderr(out)
                    .process_group(0)
                    .spawn()
                    .expect("spawn ringkv dev");
                eprintln!("{at}: started `{command} --base-port {base}` in the background (pid {})", child.id());
                let n: u16 = args
                    .windows(2)
                    .find(|w| w[0] == "--nodes")
                    .map_or(3, |w| w[1].parse().expect("dev --nodes is a number"));
                dev_nodes = (0..n).map(|i| format!("127.0.0.1:{}", base + 2 * i)).collect();
                guard.groups.push(child.id() as i32);
                dev_pid = Some(child.id());
                guard.children.push(child);
                wait_dev_ready(guard.children.last_mut().expect("dev"), &dev_out);
                eprintln!("{}", std::fs::read_to_string(&dev_out).unwrap_or_default());
            }
            Step::Run(_) | Step::HookChange | Step::Kill => {
                let text = with_ports(&line.text, base);
                let (output, status) = shell.run(&text);
                eprintln!("{at}: $ {text}\n{output}\n[exit {status}]");
                let expect = expectation(line.comment.as_deref());
                if let Some(wrong) = mismatch(&expect, &output, status) {
                    failures.push(format!("{at}: `{command}`: {wrong}; its output:\n{output}"));
                }
                if *step == Step::Kill {
                    let nodes = dev_nodes.clone();
                    rt.block_on(eventually(&format!("a leader in every group after {at}"), || {
                        leaders_answer(nodes.clone())
                    }));
                }
                if *step == Step::HookChange {
                    let nodes = dev_nodes.clone();
                    rt.block_on(eventually(&format!("every node to run the hooks as changed at {at}"), || {
                        hooks_settled(nodes.clone())
                    }));
                }
                if let Step::Run(Some(http)) = step {
                    rt.block_on(eventually(&format!("the node started at {at} to answer /readyz with 200"), || {
                        let http = http.clone();
                        async move { matches!(http_get(http, "/readyz").await, Some((200, _))).then_some(()) }
                    }));
                    eprintln!("{at}: the node at {http} is ready");
                }
            }
        }
    }

    // Stop the shell's background jobs (a node restarted by hand), then
    // dev, as Ctrl-C does.
    let (output, status) = shell.run("for p in $(jobs -p); do kill -TERM \"$p\"; done; wait");
    assert_eq!(status, 0, "stopping the tour's background jobs: {output}");
    let dev_pid = dev_pid.expect("dev was started");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dev_pid as i32), nix::sys::signal::SIGINT).expect("SIGINT dev");
    let dev = guard.children.iter_mut().find(|c| c.id() == dev_pid).expect("dev child");
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = dev.try_wait().expect("wait for dev") {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "ringkv dev did not stop within {PATIENCE:?} of SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    let dev_said = std::fs::read_to_string(&dev_out).unwrap_or_default();
    eprintln!("ringkv dev, stopped: {exit}\n{dev_said}");
    assert!(exit.success(), "ringkv dev did not exit 0 on SIGINT ({exit}):\n{dev_said}");
    if planned.iter().any(|(_, c, _)| c.starts_with("kill -9 ")) {
        assert!(dev_said.contains("exited with signal 9 (SIGKILL)"), "dev did not report the killed node:\n{dev_said}");
    }
    let pid_files: Vec<_> = std::fs::read_dir(dir.path().join("ringkv-dev-data"))
        .expect("ringkv-dev-data")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .map(|e| e.path())
        .collect();
    assert!(pid_files.is_empty(), "dev left pid files behind: {pid_files:?}");
    assert!(
        failures.is_empty(),
        "{} tour line(s) of README.md do not do what it says:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn lines_comments_and_continuations_are_read_from_tour_blocks_only() {
    let md = "intro\n```sh\nnot run\n```\n```sh tour\nringkv put a b   # => OK version=…\n\nringkv serve --id 1 \\\n  --http 127.0.0.1:7380 &\n```\n";
    let lines = tour_lines(md);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!((lines[0].line, lines[0].comment.as_deref()), (6, Some("=> OK version=…")));
    assert_eq!(lines[0].command(), "ringkv put a b");
    assert_eq!(lines[1].line, 8);
    assert_eq!(lines[1].command(), "ringkv serve --id 1 --http 127.0.0.1:7380 &");
    assert_eq!(step(&with_ports(&lines[1].command(), 30000)), Ok(Step::Run(Some("127.0.0.1:30001".into()))));
}

#[test]
fn the_matching_rule_checks_pieces_in_order_and_the_exit_status() {
    let e = expectation(Some("=> OK version=… hooks=json v1 (explained)"));
    assert_eq!(e, Expect { pieces: vec!["OK version=".into(), "hooks=json v1".into()], status: Status::Zero });
    assert_eq!(mismatch(&e, "OK version=12 hooks=json v1", 0), None);
    assert!(mismatch(&e, "hooks=json v1 OK version=12", 0).is_some(), "order matters");
    assert!(mismatch(&e, "OK version=12 hooks=json v1", 1).is_some(), "must exit 0");
    let err = expectation(Some("=> error: version mismatch: current version is … (a mismatch exits 1)"));
    assert_eq!(err.status, Status::NonZero);
    assert_eq!(mismatch(&err, "error: version mismatch: current version is 13", 1), None);
    let reject = expectation(Some("=> reject: too big (exit 1)"));
    assert_eq!((reject.pieces.clone(), reject.status), (vec!["reject: too big".to_string()], Status::Code(1)));
    assert_eq!(expectation(Some("gone 30 s later")), Expect { pieces: Vec::new(), status: Status::Zero });
    assert_eq!(expectation(None).status, Status::Zero);
}

#[test]
fn setup_lines_are_skipped_by_name_and_unknown_commands_refused() {
    assert_eq!(step("cargo build --release -p ringkv"), Ok(Step::Skip(SETUP[0].1)));
    assert_eq!(step("(cd guest-sdk && cargo build --target wasm32-unknown-unknown --release)"), Ok(Step::BuildGuests));
    assert_eq!(step("ringkv dev --nodes 3"), Ok(Step::Dev(vec!["dev".into(), "--nodes".into(), "3".into()])));
    assert_eq!(step("v=$(ringkv get k --json)"), Ok(Step::Run(None)));
    assert_eq!(step("ringkv hook rollback json"), Ok(Step::HookChange));
    assert_eq!(step("ringkv hook list"), Ok(Step::Run(None)));
    assert_eq!(step("kill -9 $(cat ringkv-dev-data/node1.pid)"), Ok(Step::Kill));
    assert!(step("cargo build --release").is_err());
    assert!(step("docker compose up -d").is_err());
    assert!(step("ringkv serve --id 1 &").is_err(), "no --http: readiness unknown");
    assert_eq!(
        with_ports("a 127.0.0.1:7379,127.0.0.1:7383 127.0.0.1:80 10.0.0.1:7379", 20000),
        "a 127.0.0.1:20000,127.0.0.1:20004 127.0.0.1:80 10.0.0.1:7379"
    );
}
