//! `ringkv serve` and `ringkv dev`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cluster::Node;
use crate::config::{Limits, NodeConfig};
use crate::raft::{LinkFilter, RaftTuning};
use crate::ring::RingConfig;

#[derive(Args, Debug)]
pub struct ServeCommand {
    /// Node id, unique in the cluster and fixed for its data directory.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// gRPC address to bind (client API and peer transport).
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub listen: String,
    /// Address others use to reach this node (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP address for /healthz and /status.
    #[arg(long, default_value = "127.0.0.1:7380")]
    pub http: String,
    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Data directory.
    #[arg(long, default_value = "ringkv-data")]
    pub data_dir: PathBuf,
    /// Join the cluster reachable at these addresses instead of bootstrapping.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Number of shards of a new cluster (bootstrap only; fixed afterwards).
    /// Size it at about 10x the largest node count you expect: a cluster
    /// cannot spread data over more nodes than RF x shards. Default 1, the
    /// fastest for 3 nodes: more shards cost write throughput today
    /// (docs/performance.md).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Raft heartbeat interval.
    #[arg(long, default_value = "250ms", value_parser = super::parse_duration)]
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice this).
    #[arg(long, default_value = "1250ms", value_parser = super::parse_duration)]
    pub election_timeout: Duration,
    /// Snapshot after this many log entries since the last snapshot.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot for slightly lagging followers.
    #[arg(long, default_value_t = 1_000)]
    pub keep_logs: u64,
    /// Largest accepted value in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Server-side deadline of a client request.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    pub request_timeout: Duration,
    /// A member unreachable for this long is declared down and its shard
    /// replicas are re-created on other nodes.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub down_timeout: Duration,
}

impl ServeCommand {
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        anyhow::ensure!(self.id >= 1, "--id must be at least 1");
        anyhow::ensure!(!self.heartbeat.is_zero(), "--heartbeat must be positive");
        anyhow::ensure!(
            self.election_timeout > self.heartbeat * 2,
            "--election-timeout ({:?}) must be more than twice --heartbeat ({:?})",
            self.election_timeout,
            self.heartbeat
        );
        anyhow::ensure!(self.snapshot_every >= 1, "--snapshot-every must be at least 1");
        anyhow::ensure!(
            self.down_timeout >= Duration::from_secs(1) && self.down_timeout > self.election_timeout * 2,
            "--down-timeout ({:?}) must be at least 1s and more than twice --election-timeout ({:?}), \
             so a slow election never looks like a dead node",
            self.down_timeout,
            self.election_timeout
        );
        Ok(NodeConfig {
            id: self.id,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            http: (!self.no_http).then(|| self.http.clone()),
            data_dir: self.data_dir.clone(),
            join: self.join.clone(),
            ring: RingConfig { shards: self.shards, ..RingConfig::default() },
            raft: RaftTuning {
                heartbeat_ms: self.heartbeat.as_millis() as u64,
                election_min_ms: self.election_timeout.as_millis() as u64,
                election_max_ms: 2 * self.election_timeout.as_millis() as u64,
                snapshot_every: self.snapshot_every,
                keep_logs: self.keep_logs,
            },
            limits: Limits { max_value_bytes: self.max_value_bytes, ..Limits::default() },
            request_timeout: self.request_timeout,
            down_timeout: self.down_timeout,
            ..NodeConfig::default()
        })
    }

    pub async fn execute(self) -> anyhow::Result<()> {
        let config = self.config()?;
        // Starting can wait on a seed (joining); a stop signal still ends it.
        let node = tokio::select! {
            node = Node::start(config, LinkFilter::default()) => node.context("node failed to start")?,
            r = wait_for_stop_signal() => return r,
        };
        eprintln!("ringkv node {} serving gRPC on {}", node.id(), node.addr());
        wait_for_stop_signal().await?;
        tracing::info!("stop signal received, shutting down");
        node.shutdown().await;
        Ok(())
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DevCommand {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// gRPC port of node 1; node i uses base + 2(i-1) for gRPC and the next port for HTTP.
    #[arg(long, default_value_t = 7379)]
    pub base_port: u16,
    /// Parent directory of the nodes' data directories.
    #[arg(long, default_value = "ringkv-dev-data")]
    pub data_dir: PathBuf,
}

impl DevCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=9).contains(&self.nodes), "--nodes must be between 1 and 9");
        let exe = std::env::current_exe().context("locating the ringkv binary")?;
        let seed = format!("127.0.0.1:{}", self.base_port);
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for i in 1..=self.nodes {
            let grpc = self.base_port + 2 * (i as u16 - 1);
            let listen = format!("127.0.0.1:{grpc}");
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("serve")
                .args(["--id", &i.to_string(), "--listen", &listen])
                .args(["--http", &format!("127.0.0.1:{}", grpc + 1)])
                .arg("--data-dir")
                .arg(self.data_dir.join(format!("node{i}")));
            if i > 1 {
                cmd.args(["--join", &seed]);
            }
            let child = cmd.kill_on_drop(true).spawn().with_context(|| format!("starting node {i}"))?;
            children.push(child);
            endpoints.push(listen);
            if i == 1 {
                // Let node 1 bootstrap before the others ask it to add them.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        println!("ringkv dev cluster with {} nodes", self.nodes);
        println!("endpoints: {}", endpoints.join(","));
        println!("try: ringkv put hello world && ringkv get hello --endpoints {}", endpoints.join(","));
        println!("press Ctrl-C to stop");
        wait_for_stop_signal().await?;
        println!("stopping nodes...");
        for c in &children {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
            }
        }
        for mut c in children {
            match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = c.kill().await;
                }
            }
        }
        println!("stopped");
        Ok(())
    }
}
