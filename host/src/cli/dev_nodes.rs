//! `ringkv dev`'s node processes: each started with its output in a log
//! file and its pid in a pid file (removed once it exits), waited on until
//! its `/readyz` answers 200 and every shard has its replicas, watched so
//! that an exit is reported (and the process reaped) as it happens, and
//! stopped with SIGTERM on Ctrl-C.
//!
//! A node that exits before the cluster is ready fails `dev` as a whole (the
//! others are stopped): there is no cluster to try things on. A node that
//! exits later is reported and the others keep running, since killing a node
//! is how one tries failover (README's tour); `dev` ends, with an error,
//! only when no node it started is left.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How long a stopping node may take (it hands off leadership and drains
/// requests first) before it is killed.
const STOP_BUDGET: Duration = Duration::from_secs(10);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(200);
/// One readiness request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// SIGINT (Ctrl-C) or SIGTERM, listened for from the moment it is made, so a
/// Ctrl-C while the nodes start is not lost.
pub struct StopSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignal {
    pub fn install() -> anyhow::Result<StopSignal> {
        Ok(StopSignal {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// How a node process ended.
struct Exit {
    id: u64,
    status: std::io::Result<ExitStatus>,
}

struct Running {
    http: String,
    log: PathBuf,
}

/// The node processes `dev` started and has not yet seen exit.
pub struct DevNodes {
    running: BTreeMap<u64, Running>,
    logs: BTreeMap<u64, PathBuf>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    stop: watch::Sender<bool>,
}

impl Default for DevNodes {
    fn default() -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        DevNodes { running: BTreeMap::new(), logs: BTreeMap::new(), exits_tx, exits, stop: watch::channel(false).0 }
    }
}

impl DevNodes {
    /// Starts node `id` with `cmd`, its stdout and stderr going to `log`
    /// (truncated), writes its pid to `pid_file` and watches it. `http` is
    /// its HTTP address, for readiness. Returns its pid.
    ///
    /// The pid file lets a user signal exactly this node (`kill -9 $(cat
    /// ringkv-dev-data/node1.pid)`) rather than whatever matches a pattern;
    /// it is removed as soon as the node is reaped, so it never names a pid
    /// the system may have given to another process since.
    pub fn spawn(
        &mut self,
        id: u64,
        cmd: &mut tokio::process::Command,
        http: String,
        log: PathBuf,
        pid_file: PathBuf,
    ) -> anyhow::Result<u32> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating node {id}'s log {}", log.display()))?;
        let stdout = file.try_clone().with_context(|| format!("opening {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(&pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing node {id}'s pid file {}", pid_file.display()))?;
        let mut stop = self.stop.subscribe();
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // The only change is to true; an error means `DevNodes` is gone.
                _ = stop.changed() => terminate(&mut child).await,
            };
            let _ = std::fs::remove_file(&pid_file);
            let _ = tx.send(Exit { id, status });
        });
        self.running.insert(id, Running { http, log: log.clone() });
        self.logs.insert(id, log);
        Ok(pid)
    }

    /// Waits until every node answers `/readyz` with 200 (`tls`: over HTTPS
    /// with this client configuration) and `/status` shows every shard with
    /// `replicas` replicas, none moving. A node is ready as soon as the
    /// replicas it hosts are, while shards may still be on fewer nodes:
    /// killing one then (the README's tour) would leave those shards
    /// without a quorum. Fails, naming the node, its log and what it last
    /// said, if one exits first or is not ready by `timeout`.
    /// `Ok(false)`: stopped by a signal first.
    pub async fn wait_ready(
        &mut self,
        tls: Option<Arc<rustls::ClientConfig>>,
        replicas: usize,
        timeout: Duration,
        stop: &mut StopSignal,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut pending: BTreeSet<u64> = self.running.keys().copied().collect();
        let mut why: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            if let Ok(exit) = self.exits.try_recv() {
                return Err(self.failed_to_start(exit));
            }
            for id in pending.clone() {
                match readyz(&self.running[&id].http, tls.as_ref()).await {
                    Ok(()) => {
                        pending.remove(&id);
                    }
                    Err(e) => {
                        why.insert(id, e);
                    }
                }
            }
            if pending.is_empty() {
                let first = self.running.iter().next().map(|(id, r)| (*id, r.http.clone()));
                match first {
                    Some((id, http)) => match placed(&http, tls.as_ref(), replicas).await {
                        Ok(()) => return Ok(true),
                        Err(e) => {
                            pending.insert(id);
                            why.insert(id, e);
                        }
                    },
                    None => return Ok(true),
                }
            }
            if Instant::now() > deadline {
                let detail: Vec<String> = pending
                    .iter()
                    .map(|id| {
                        format!(
                            "node {id}: {} (its log: {})",
                            why.get(id).map_or("no answer", |w| w.as_str()),
                            self.running[id].log.display()
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "the cluster was not ready within {timeout:?} ({}); stopped every node (a slow machine may need a longer --ready-timeout)",
                    detail.join("; ")
                );
            }
            tokio::select! {
                Some(exit) = self.exits.recv() => return Err(self.failed_to_start(exit)),
                _ = stop.recv() => return Ok(false),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn failed_to_start(&mut self, exit: Exit) -> anyhow::Error {
        let log = self.forget(exit.id);
        let said = last_line(&log).map(|l| format!(": {l}")).unwrap_or_default();
        anyhow::anyhow!(
            "node {} {} before the cluster was ready{said}; its log: {}; stopped every node",
            exit.id,
            describe(&exit.status),
            log.display()
        )
    }

    /// Runs until a stop signal, reporting each node's exit on stderr as it
    /// happens. Fails when no node is left.
    pub async fn supervise(&mut self, stop: &mut StopSignal) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                // A Ctrl-C in the terminal reaches the nodes too: see it
                // before their exits, which it causes.
                biased;
                _ = stop.recv() => return Ok(()),
                Some(exit) = self.exits.recv() => {
                    let log = self.forget(exit.id);
                    let left: Vec<String> = self.running.keys().map(|id| id.to_string()).collect();
                    if left.is_empty() {
                        anyhow::bail!(
                            "node {} {}; its log: {}; no node is left, stopping",
                            exit.id,
                            describe(&exit.status),
                            log.display()
                        );
                    }
                    eprintln!(
                        "node {} {}; its log: {}; still running: {}",
                        exit.id,
                        describe(&exit.status),
                        log.display(),
                        left.join(", ")
                    );
                }
            }
        }
    }

    /// SIGTERM to every node still running, SIGKILL to any that has not
    /// exited after [`STOP_BUDGET`]; returns once all are reaped. Reports a
    /// node that did not exit cleanly.
    pub async fn stop(self) {
        let DevNodes { running, logs, exits_tx, mut exits, stop } = self;
        drop(exits_tx);
        let _ = stop.send(true);
        while let Some(exit) = exits.recv().await {
            let clean = matches!(&exit.status, Ok(s) if s.success());
            if running.contains_key(&exit.id) && !clean {
                let log = logs.get(&exit.id).map(|l| l.display().to_string()).unwrap_or_default();
                eprintln!("node {} {} while stopping; its log: {log}", exit.id, describe(&exit.status));
            }
        }
    }

    /// Marks node `id` as exited; returns its log.
    fn forget(&mut self, id: u64) -> PathBuf {
        self.running.remove(&id);
        self.logs.get(&id).cloned().unwrap_or_default()
    }
}

/// SIGTERM, then SIGKILL after [`STOP_BUDGET`]; reaps the child.
async fn terminate(child: &mut tokio::process::Child) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_BUDGET, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// "exited with status 1", "exited with signal 9 (SIGKILL)".
fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(name) => format!("exited with signal {sig} ({name})"),
                Err(_) => format!("exited with signal {sig}"),
            },
            (None, None) => format!("exited ({s})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

/// The last non-empty line of `log`, trimmed to a sensible length: a node
/// that fails to start says why there (`error: ...`).
fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(400).collect())
}

/// `GET /readyz` on `addr`: `Ok` on 200, else what the node said (or why
/// it could not be asked), on one line.
async fn readyz(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<(), String> {
    match get(addr, "/readyz", tls).await? {
        (200, _) => Ok(()),
        (code, body) => Err(format!("/readyz {code}: {}", body.trim().replace('\n', " "))),
    }
}

/// `Ok` once `/status` on `addr` shows shards, each with `replicas`
/// replicas and not moving; else which shards are still being placed.
async fn placed(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>, replicas: usize) -> Result<(), String> {
    let (code, body) = get(addr, "/status", tls).await?;
    if code != 200 {
        return Err(format!("/status {code}"));
    }
    let status: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("/status: {e}"))?;
    let shards = status["shards"].as_array().map(Vec::as_slice).unwrap_or_default();
    let waiting: Vec<String> = shards
        .iter()
        .filter(|s| s["moving"] != serde_json::json!(false) || s["replicas"].as_array().map_or(0, Vec::len) != replicas)
        .map(|s| s["shard"].to_string())
        .collect();
    if shards.is_empty() || !waiting.is_empty() {
        return Err(format!("shards not yet on {replicas} nodes: {}", waiting.join(", ")));
    }
    Ok(())
}

/// `GET path` on `addr`: the status code and body, or why it could not be
/// asked, on one line.
async fn get(addr: &str, path: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<(u16, String), String> {
    let ask = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("HTTP port {addr}: {e}"))?;
        let reply = match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(crate::tls::NODE_NAME).map_err(|e| e.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("HTTPS {addr}: {e}"))?;
                exchange(stream, addr, path).await
            }
            None => exchange(tcp, addr, path).await,
        };
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply.as_str(), ""));
        match head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
            Some(code) => Ok((code, body.to_string())),
            None => Err(format!("HTTP port {addr}: no HTTP reply")),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask).await.unwrap_or_else(|_| Err(format!("HTTP port {addr}: no answer")))
}

/// Sends the request and reads the reply; a connection closed without a
/// TLS close_notify still yields what was read.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, addr: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_by_status_or_signal() {
        assert_eq!(describe(&Ok(ExitStatus::from_raw(1 << 8))), "exited with status 1");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(9))), "exited with signal 9 (SIGKILL)");
    }

    #[test]
    fn the_last_log_line_is_the_last_non_empty_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("node1.log");
        std::fs::write(&log, "starting\nerror: cannot bind 127.0.0.1:7379: in use\n\n").expect("write");
        assert_eq!(last_line(&log).as_deref(), Some("error: cannot bind 127.0.0.1:7379: in use"));
        assert_eq!(last_line(&dir.path().join("missing.log")), None);
    }
}
