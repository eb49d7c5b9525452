//! `ringkv serve` and `ringkv dev`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::out::outln;
use crate::config::{ConfigFile, Limits, LogFormat, NodeConfig};
use crate::raft::{LinkFilter, RaftTuning};
use crate::ring::RingConfig;
use crate::server::Server;

/// `ringkv serve`. Every setting comes from, in order of precedence: its
/// flag, its `RINGKV_*` environment variable, the `--config` file, its
/// default (docs/configuration.md lists them all; `ringkv config example`
/// prints a complete file).
#[derive(Args, Debug, Default)]
pub struct ServeCommand {
    /// TOML config file (see `ringkv config example`).
    #[arg(long, env = "RINGKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id, unique in the cluster and fixed for its data directory. [default: 1]
    #[arg(long, env = "RINGKV_ID")]
    pub id: Option<u64>,
    /// Take the node id from the host name's `-N` suffix, plus one: the
    /// Kubernetes StatefulSet pod `ringkv-0` is node 1, `ringkv-2` node 3.
    /// For images without a shell; cannot be combined with an id.
    #[arg(long, env = "RINGKV_ID_FROM_HOSTNAME")]
    pub id_from_hostname: bool,
    /// gRPC address to bind (client API and peer transport). [default: 127.0.0.1:7379]
    #[arg(long, env = "RINGKV_LISTEN")]
    pub listen: Option<String>,
    /// Address others use to reach this node. [default: the bound address]
    #[arg(long, env = "RINGKV_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP address for /healthz, /readyz, /status, /metrics and the dashboard; "off" disables it. [default: 127.0.0.1:7380]
    #[arg(long, env = "RINGKV_HTTP")]
    pub http: Option<String>,
    /// Do not serve HTTP (same as --http off).
    #[arg(long)]
    pub no_http: bool,
    /// Data directory. [default: ringkv-data]
    #[arg(long, env = "RINGKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Join the cluster reachable at these addresses instead of bootstrapping.
    /// A seed equal to this node's own advertised address is skipped, so
    /// nodes can share one seed list: the seed itself bootstraps.
    #[arg(long, value_delimiter = ',', env = "RINGKV_JOIN")]
    pub join: Option<Vec<String>>,
    /// Number of shards a new cluster starts with (bootstrap only). Shards
    /// split online afterwards: automatically once the cluster has more
    /// nodes than the replication factor (--auto-split-replicas-per-node),
    /// or with `ringkv cluster split`. Default 1, the fastest for 3 nodes:
    /// more shards cost write throughput today (docs/performance.md).
    /// [default: 1]
    #[arg(long, env = "RINGKV_SHARDS")]
    pub shards: Option<u32>,
    /// A shard acknowledges writes only while it has at least this many
    /// replicas (Raft voters, capped at the replication factor, 3): below
    /// it, writes get UNAVAILABLE. Set 3 for a cluster meant to have three
    /// nodes or more, so no write is ever acknowledged by one node alone
    /// (e.g. while the other nodes are still joining). [default: 1]
    #[arg(long, env = "RINGKV_MIN_REPLICAS")]
    pub min_replicas: Option<usize>,
    /// Once the cluster has more nodes than the replication factor, split
    /// shards automatically, one at a time, until every node can hold about
    /// this many shard replicas (rounded up to a power of two shards). 0
    /// turns automatic splits off; the meta leader's setting applies.
    /// [default: 4]
    #[arg(long, env = "RINGKV_AUTO_SPLIT_REPLICAS_PER_NODE")]
    pub auto_split_replicas_per_node: Option<u32>,
    /// Split a shard whose data (keys and values, uncompressed, on its
    /// leader) grows past this size, at a point that halves its keys; 0
    /// never splits for size. [default: 512MiB]
    #[arg(long, env = "RINGKV_SPLIT_SIZE", value_parser = parse_size)]
    pub split_size: Option<usize>,
    /// Split a shard that serves more than this many requests per second
    /// (writes plus reads) for `--resize-after`; 0 never splits for load.
    /// [default: 0]
    #[arg(long, env = "RINGKV_SPLIT_LOAD")]
    pub split_load: Option<u32>,
    /// Merge two neighbouring shards that together hold less than this and
    /// have both been cold for `--resize-after`; at most a quarter of
    /// `--split-size`; 0 never merges. A cluster never merges below the
    /// `--shards` it was created with, nor below what
    /// `--auto-split-replicas-per-node` asks for. [default: 64MiB]
    #[arg(long, env = "RINGKV_MERGE_SIZE", value_parser = parse_size)]
    pub merge_size: Option<usize>,
    /// How long a load must last before it splits or merges a shard.
    /// [default: 60s]
    #[arg(long, env = "RINGKV_RESIZE_AFTER", value_parser = super::parse_duration)]
    pub resize_after: Option<Duration>,
    /// Percent of the time a shard's mover (keys moving for a split, a
    /// merge or a partition function change) works; it rests the rest
    /// after each batch, so clients keep most of the shard's throughput.
    /// 100 never rests. [default: 50]
    #[arg(long, env = "RINGKV_MOVE_SHARE", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub move_share: Option<u8>,
    /// Raft heartbeat interval. [default: 250ms]
    #[arg(long, env = "RINGKV_HEARTBEAT", value_parser = super::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Minimum election timeout (the maximum is twice this). [default: 1250ms]
    #[arg(long, env = "RINGKV_ELECTION_TIMEOUT", value_parser = super::parse_duration)]
    pub election_timeout: Option<Duration>,
    /// Snapshot after this many log entries since the last snapshot. [default: 10000]
    #[arg(long, env = "RINGKV_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept after a snapshot for slightly lagging followers. [default: 1000]
    #[arg(long, env = "RINGKV_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// Serve linearizable reads under a leader lease (true) or with a
    /// heartbeat round per read batch (false). [default: true]
    #[arg(long, env = "RINGKV_LEASE_READS", value_name = "BOOL")]
    pub lease_reads: Option<bool>,
    /// Let idle shard groups stop heartbeating (true) or keep every group
    /// ticking (false). [default: true]
    #[arg(long, env = "RINGKV_QUIESCE", value_name = "BOOL")]
    pub quiesce: Option<bool>,
    /// Largest accepted key, e.g. 4KiB. [default: 4KiB]
    #[arg(long, env = "RINGKV_MAX_KEY_BYTES", value_parser = parse_size)]
    pub max_key_bytes: Option<usize>,
    /// Largest accepted value, e.g. 1MiB. [default: 1MiB]
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES", value_parser = parse_size)]
    pub max_value_bytes: Option<usize>,
    /// Scan limit used when a request says 0. [default: 1000]
    #[arg(long, env = "RINGKV_SCAN_DEFAULT")]
    pub scan_default: Option<u32>,
    /// Largest scan limit honoured. [default: 10000]
    #[arg(long, env = "RINGKV_SCAN_MAX")]
    pub scan_max: Option<u32>,
    /// Largest Lua hook source a deploy accepts. [default: 256KiB]
    #[arg(long, env = "RINGKV_MAX_HOOK_SOURCE_BYTES", value_parser = parse_size)]
    pub max_hook_source_bytes: Option<usize>,
    /// Largest Wasm module a deploy accepts. [default: 8MiB]
    #[arg(long, env = "RINGKV_MAX_WASM_MODULE_BYTES", value_parser = parse_size)]
    pub max_wasm_module_bytes: Option<usize>,
    /// Keys and values one scan returns at most. [default: 64MiB]
    #[arg(long, env = "RINGKV_MAX_SCAN_BYTES", value_parser = parse_size)]
    pub max_scan_bytes: Option<usize>,
    /// Open gRPC connections accepted from one IP address. [default: 1024]
    #[arg(long, env = "RINGKV_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Concurrent requests (HTTP/2 streams) on one gRPC connection. [default: 1024]
    #[arg(long, env = "RINGKV_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Server-side deadline of a client request; one that carries no
    /// grpc-timeout is cut off at twice this. [default: 5s]
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT", value_parser = super::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// A member unreachable for this long is declared down and its shard
    /// replicas are re-created on other nodes. [default: 30s]
    #[arg(long, env = "RINGKV_DOWN_TIMEOUT", value_parser = super::parse_duration)]
    pub down_timeout: Option<Duration>,
    /// Log format on stderr: text or json (level from RUST_LOG). [default: text]
    #[arg(long, value_enum, env = "RINGKV_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// PEM certificate of this node (TLS on when cert, key and CA are set). [default: TLS off]
    #[arg(long, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster CA: verifies peers and client certificates.
    #[arg(long, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Refuse requests without a valid token or client certificate; needs TLS
    /// (docs/security.md). [default: off, for development only]
    #[arg(long, env = "RINGKV_AUTH")]
    pub auth: bool,
}

/// How long a stopping node spends handing its leaderships to other nodes.
const HAND_OFF_BUDGET: Duration = Duration::from_secs(5);
/// How long a stopping node waits for requests in flight; with the hand-off
/// this bounds the time from SIGTERM to exit (the default request timeout
/// is 5 s, so a request accepted just before the signal still finishes).
const DRAIN_BUDGET: Duration = Duration::from_secs(10);

/// Parses `4096`, `4KiB`, `1MiB`, `1.5MB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e| format!("{e} (expected a size like 4096, 4KiB or 1MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s} is too large"))
}

/// This machine's host name (a container's or pod's own), from the kernel.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("--id-from-hostname: reading the host name from /proc/sys/kernel/hostname")?;
    Ok(name.trim().to_string())
}

/// The node id of a host named like a StatefulSet pod, `NAME-ORDINAL`: the ordinal plus one (ids start at 1).
fn id_from_hostname(hostname: &str) -> anyhow::Result<u64> {
    let ordinal = hostname
        .rsplit_once('-')
        .map(|(_, suffix)| suffix)
        .filter(|suffix| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--id-from-hostname: host name {hostname:?} does not end in -NUMBER (like the StatefulSet pod ringkv-0)"
            )
        })?;
    ordinal
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| anyhow::anyhow!("--id-from-hostname: the number in host name {hostname:?} is too large"))
}

/// A size from the config file, as `usize`, naming the field on overflow.
fn file_size(v: Option<crate::config::Size>, field: &str) -> anyhow::Result<Option<usize>> {
    v.map(|b| usize::try_from(b.0).map_err(|_| anyhow::anyhow!("{field} = {} bytes is too large", b.0))).transpose()
}

/// The resize policy's thresholds: flags and environment over the config
/// file over `d`. Refuses a merge size above a quarter of the split size,
/// so a merged shard is never close to splitting again.
fn resize_thresholds(
    flags: &ServeCommand,
    file: &ConfigFile,
    d: &crate::config::ResizeThresholds,
) -> anyhow::Result<crate::config::ResizeThresholds> {
    let split_bytes = flags.split_size.map(|v| v as u64).or(file.split_size.map(|v| v.0)).unwrap_or(d.split_bytes);
    let merge_bytes = flags.merge_size.map(|v| v as u64).or(file.merge_size.map(|v| v.0)).unwrap_or(d.merge_bytes);
    let split_ops = flags.split_load.or(file.split_load).unwrap_or(d.split_ops);
    let sustain = flags.resize_after.or(file.resize_after.map(|v| v.0)).unwrap_or(d.sustain);
    anyhow::ensure!(
        split_bytes == 0 || merge_bytes <= split_bytes / 4,
        "merge_size (--merge-size, {merge_bytes} bytes) must be at most a quarter of split_size \
         (--split-size, {split_bytes} bytes), so a merged shard does not split again"
    );
    anyhow::ensure!(
        sustain >= Duration::from_secs(1),
        "resize_after (--resize-after) must be at least 1s, got {sustain:?}"
    );
    Ok(crate::config::ResizeThresholds { split_bytes, split_ops, merge_bytes, sustain })
}

impl ServeCommand {
    /// The log format: flag or environment, else the config file's. A file
    /// that does not parse is reported by [`ServeCommand::config`].
    pub fn log_format(&self) -> LogFormat {
        let from_file = || self.config.as_ref().and_then(|p| ConfigFile::load(p).ok()).and_then(|f| f.log_format);
        self.log_format.or_else(from_file).unwrap_or_default()
    }

    /// The node's settings: flags and environment over the config file over defaults.
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?,
            None => ConfigFile::default(),
        };
        let d = NodeConfig::default();
        let dl = Limits::default();
        let dr = RaftTuning::default();
        let id = match (self.id_from_hostname, self.id.or(file.id)) {
            (true, Some(_)) => {
                anyhow::bail!("--id-from-hostname cannot be combined with an id (--id, RINGKV_ID or the config file)")
            }
            (true, None) => id_from_hostname(&hostname()?)?,
            (false, id) => id.unwrap_or(d.id),
        };
        let heartbeat =
            self.heartbeat.or(file.raft.heartbeat.map(|v| v.0)).unwrap_or(Duration::from_millis(dr.heartbeat_ms));
        let election_timeout = self
            .election_timeout
            .or(file.raft.election_timeout.map(|v| v.0))
            .unwrap_or(Duration::from_millis(dr.election_min_ms));
        let snapshot_every = self.snapshot_every.or(file.raft.snapshot_every).unwrap_or(dr.snapshot_every);
        let keep_logs = self.keep_logs.or(file.raft.keep_logs).unwrap_or(dr.keep_logs);
        let lease_reads = self.lease_reads.or(file.raft.lease_reads).unwrap_or(dr.lease_reads);
        let quiesce = self.quiesce.or(file.raft.quiesce).unwrap_or(dr.quiesce);
        let request_timeout = self.request_timeout.or(file.request_timeout.map(|v| v.0)).unwrap_or(d.request_timeout);
        let down_timeout = self.down_timeout.or(file.down_timeout.map(|v| v.0)).unwrap_or(d.down_timeout);
        let min_replicas = self.min_replicas.or(file.min_replicas).unwrap_or(d.min_replicas);
        let auto_split_replicas_per_node = self
            .auto_split_replicas_per_node
            .or(file.auto_split_replicas_per_node)
            .unwrap_or(d.auto_split_replicas_per_node);
        anyhow::ensure!(
            auto_split_replicas_per_node <= 1024,
            "auto_split_replicas_per_node (--auto-split-replicas-per-node) must be at most 1024, got {auto_split_replicas_per_node}"
        );
        let resize = resize_thresholds(self, &file, &d.resize)?;
        let move_share = self.move_share.or(file.move_share).unwrap_or(d.move_share);
        anyhow::ensure!(
            (1..=100).contains(&move_share),
            "move_share (--move-share) must be a percent between 1 and 100, got {move_share}"
        );
        anyhow::ensure!(
            (1..=7).contains(&min_replicas),
            "min_replicas (--min-replicas) must be between 1 and 7, got {min_replicas}"
        );
        let http = if self.no_http {
            None
        } else {
            match self.http.clone().or(file.http).or(d.http) {
                Some(h) if h == "off" => None,
                other => other,
            }
        };
        let limits = Limits {
            max_key_bytes: self
                .max_key_bytes
                .or(file_size(file.limits.max_key_bytes, "limits.max_key_bytes")?)
                .unwrap_or(dl.max_key_bytes),
            max_value_bytes: self
                .max_value_bytes
                .or(file_size(file.limits.max_value_bytes, "limits.max_value_bytes")?)
                .unwrap_or(dl.max_value_bytes),
            scan_default: self.scan_default.or(file.limits.scan_default).unwrap_or(dl.scan_default),
            scan_max: self.scan_max.or(file.limits.scan_max).unwrap_or(dl.scan_max),
            max_hook_source_bytes: self
                .max_hook_source_bytes
                .or(file_size(file.limits.max_hook_source_bytes, "limits.max_hook_source_bytes")?)
                .unwrap_or(dl.max_hook_source_bytes),
            max_wasm_module_bytes: self
                .max_wasm_module_bytes
                .or(file_size(file.limits.max_wasm_module_bytes, "limits.max_wasm_module_bytes")?)
                .unwrap_or(dl.max_wasm_module_bytes),
            max_scan_bytes: self
                .max_scan_bytes
                .or(file_size(file.limits.max_scan_bytes, "limits.max_scan_bytes")?)
                .unwrap_or(dl.max_scan_bytes),
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(file.limits.max_connections_per_ip)
                .unwrap_or(dl.max_connections_per_ip),
            max_concurrent_streams: self
                .max_concurrent_streams
                .or(file.limits.max_concurrent_streams)
                .unwrap_or(dl.max_concurrent_streams),
        };
        let shards = self.shards.or(file.shards).unwrap_or(d.ring.shards);
        anyhow::ensure!(id >= 1, "id must be at least 1 (got {id})");
        anyhow::ensure!(shards >= 1, "shards must be at least 1");
        anyhow::ensure!(!heartbeat.is_zero(), "raft.heartbeat (--heartbeat) must be positive");
        anyhow::ensure!(
            election_timeout > heartbeat * 2,
            "raft.election_timeout (--election-timeout, {election_timeout:?}) must be more than twice \
             raft.heartbeat ({heartbeat:?})"
        );
        anyhow::ensure!(snapshot_every >= 1, "raft.snapshot_every (--snapshot-every) must be at least 1");
        anyhow::ensure!(
            down_timeout >= Duration::from_secs(1) && down_timeout > election_timeout * 2,
            "down_timeout (--down-timeout, {down_timeout:?}) must be at least 1s and more than twice \
             raft.election_timeout ({election_timeout:?}), so a slow election never looks like a dead node"
        );
        anyhow::ensure!(!request_timeout.is_zero(), "request_timeout (--request-timeout) must be positive");
        anyhow::ensure!(limits.max_key_bytes >= 1, "limits.max_key_bytes must be at least 1 byte");
        anyhow::ensure!(limits.max_value_bytes >= 1, "limits.max_value_bytes must be at least 1 byte");
        anyhow::ensure!(
            limits.scan_default >= 1 && limits.scan_default <= limits.scan_max,
            "limits.scan_default ({}) must be between 1 and limits.scan_max ({})",
            limits.scan_default,
            limits.scan_max
        );
        anyhow::ensure!(limits.max_scan_bytes >= 1, "limits.max_scan_bytes must be at least 1 byte");
        anyhow::ensure!(
            limits.max_connections_per_ip >= 1,
            "limits.max_connections_per_ip (--max-connections-per-ip) must be at least 1"
        );
        anyhow::ensure!(
            limits.max_concurrent_streams >= 1,
            "limits.max_concurrent_streams (--max-concurrent-streams) must be at least 1"
        );
        let tls = resolve_tls(
            self.tls_cert.clone().or(file.tls.cert),
            self.tls_key.clone().or(file.tls.key),
            self.tls_ca.clone().or(file.tls.ca),
        )?;
        let auth = crate::auth::AuthConfig {
            enabled: self.auth || file.auth.enabled.unwrap_or(false),
            principals: file.auth.principals,
            tokens: file.auth.tokens,
        };
        auth.validate().map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
        anyhow::ensure!(
            !auth.enabled || tls.is_some(),
            "auth needs TLS: tokens must not cross the network in plaintext, and the Raft port is protected \
             only by node certificates; configure [tls] (or --tls-cert/--tls-key/--tls-ca) as well"
        );
        let listen = self.listen.clone().or(file.listen).unwrap_or(d.listen);
        let advertise = self.advertise.clone().or(file.advertise);
        let own_addr = advertise.as_deref().unwrap_or(&listen);
        let seeds = self.join.clone().or(file.join).unwrap_or_default();
        let founder = seeds.first().is_some_and(|seed| seed == own_addr);
        let join: Vec<String> = seeds.into_iter().filter(|seed| seed != own_addr).collect();
        Ok(NodeConfig {
            id,
            tls,
            listen,
            advertise,
            http,
            data_dir: self.data_dir.clone().or(file.data_dir).unwrap_or(d.data_dir),
            join,
            founder,
            ring: RingConfig { shards, ..RingConfig::default() },
            shards_given: self.shards.or(file.shards).is_some(),
            raft: RaftTuning {
                heartbeat_ms: heartbeat.as_millis() as u64,
                election_min_ms: election_timeout.as_millis() as u64,
                election_max_ms: 2 * election_timeout.as_millis() as u64,
                snapshot_every,
                keep_logs,
                lease_reads,
                quiesce,
            },
            limits,
            request_timeout,
            down_timeout,
            min_replicas,
            auto_split_replicas_per_node,
            resize,
            move_share,
            auth,
            ..d
        })
    }

    pub async fn execute(self) -> anyhow::Result<()> {
        let config = self.config()?;
        if !config.auth.enabled && !is_loopback(&config.listen) {
            tracing::warn!(
                listen = %config.listen,
                "auth is off on a non-loopback address: anyone who reaches this port can read, write, deploy \
                 hooks and change membership (see docs/security.md)"
            );
        }
        crate::telemetry::install();
        // Starting can wait on a seed (joining); a stop signal still ends it.
        let server = tokio::select! {
            server = Server::start(config, LinkFilter::default()) => server.context("node failed to start")?,
            r = wait_for_stop_signal() => return r,
        };
        let node = server.node();
        tracing::info!(node = node.id(), addr = %node.addr(), "serving gRPC");
        wait_for_stop_signal().await?;
        tracing::info!("stop signal received: handing off leadership, then shutting down");
        let moved = node.hand_off_leadership(HAND_OFF_BUDGET).await;
        tracing::info!(groups = moved, "leadership handed off; finishing requests in flight");
        if !server.drain(DRAIN_BUDGET).await {
            tracing::warn!(budget = ?DRAIN_BUDGET, "requests still in flight after the drain budget; stopping anyway");
        }
        server.shutdown().await;
        Ok(())
    }
}

/// TLS settings: all of cert, key and CA, or none of them.
fn resolve_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> anyhow::Result<Option<crate::tls::TlsConfig>> {
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::TlsConfig { cert, key, ca })),
        (None, None, None) => Ok(None),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "tls.cert (--tls-cert)"),
                (key.is_none(), "tls.key (--tls-key)"),
                (ca.is_none(), "tls.ca (--tls-ca)"),
            ]
            .into_iter()
            .filter_map(|(m, name)| m.then_some(name))
            .collect();
            anyhow::bail!("TLS needs a certificate, its key and the cluster CA; missing: {}", missing.join(", "))
        }
    }
}

/// Whether `listen` binds only the loopback interface.
fn is_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
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
    /// Parent directory of the nodes' data directories (and their logs,
    /// node<i>.log, and pid files, node<i>.pid).
    #[arg(long, default_value = "ringkv-dev-data")]
    pub data_dir: PathBuf,
    /// Shard count of the cluster, passed to every node's `serve --shards`
    /// (fixed when the cluster is created; default: serve's, 1 shard).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Generate a throwaway CA, a node certificate and a client certificate
    /// into <data-dir>/tls and run the nodes with TLS.
    #[arg(long)]
    pub tls: bool,
    /// How long every node may take to answer /readyz with 200 before `dev`
    /// gives up and stops them.
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    pub ready_timeout: Duration,
}

impl DevCommand {
    /// Starts the nodes, waits until each is ready, prints how to reach
    /// them, then reports any node's exit until Ctrl-C, and stops the rest
    /// (see `dev_nodes` for what ends `dev` with an error).
    pub async fn execute(self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=9).contains(&self.nodes), "--nodes must be between 1 and 9");
        let last_port = u32::from(self.base_port) + 2 * self.nodes as u32 - 1;
        anyhow::ensure!(
            last_port <= u32::from(u16::MAX),
            "--base-port {} leaves no room for {} nodes (ports up to {last_port})",
            self.base_port,
            self.nodes
        );
        self.check_ports_free()?;
        let mut stop = super::dev_nodes::StopSignal::install()?;
        let mut nodes = super::dev_nodes::DevNodes::default();
        let result = self.run(&mut nodes, &mut stop).await;
        // Stopped by Ctrl-C, as expected: say so. On an error the error says it.
        let announce = if result.is_ok() { outln!("stopping nodes...") } else { Ok(()) };
        nodes.stop().await;
        result?;
        announce?;
        outln!("stopped")
    }

    /// Every port the nodes will listen on is free now: a taken one would
    /// only show as a node exiting at start.
    fn check_ports_free(&self) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            let grpc = self.base_port + 2 * (i as u16 - 1);
            for (port, what) in [(grpc, "gRPC"), (grpc + 1, "HTTP")] {
                if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                    anyhow::bail!(
                        "port {port} (node {i}'s {what} port) is not free: {e}; stop what listens there (another `ringkv dev`?) or pick other ports with --base-port"
                    );
                }
            }
        }
        Ok(())
    }

    async fn run(
        &self,
        nodes: &mut super::dev_nodes::DevNodes,
        stop: &mut super::dev_nodes::StopSignal,
    ) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the ringkv binary")?;
        // Every node gets every address: node 1, first in the list, creates
        // the cluster once the others answer that they have none, and a node
        // restarted without its data is refused instead of bootstrapping.
        let seeds: Vec<String> =
            (1..=self.nodes).map(|i| format!("127.0.0.1:{}", self.base_port + 2 * (i as u16 - 1))).collect();
        let seeds = seeds.join(",");
        // A write is acknowledged only on a majority of three replicas (or
        // of every node, when there are fewer).
        let min_replicas = self.nodes.min(3).to_string();
        let tls_dir = self.data_dir.join("tls");
        if self.tls {
            crate::tls::gen::generate_dir(&tls_dir, &[], &["dev".to_string()], crate::tls::gen::Validity::days(30))
                .context("generating the dev certificates")?;
        }
        let mut endpoints = Vec::new();
        let mut started = Vec::new();
        for i in 1..=self.nodes {
            let grpc = self.base_port + 2 * (i as u16 - 1);
            let listen = format!("127.0.0.1:{grpc}");
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("serve")
                .args(["--id", &i.to_string(), "--listen", &listen])
                .args(["--http", &format!("127.0.0.1:{}", grpc + 1)])
                .arg("--data-dir")
                .arg(self.data_dir.join(format!("node{i}")))
                .args(["--join", &seeds, "--min-replicas", &min_replicas]);
            if let Some(shards) = self.shards {
                cmd.args(["--shards", &shards.to_string()]);
            }
            if self.tls {
                cmd.arg("--tls-cert").arg(tls_dir.join("node.pem"));
                cmd.arg("--tls-key").arg(tls_dir.join("node.key"));
                cmd.arg("--tls-ca").arg(tls_dir.join("ca.pem"));
            }
            let log = self.data_dir.join(format!("node{i}.log"));
            let pid_file = self.data_dir.join(format!("node{i}.pid"));
            let pid = nodes.spawn(i, &mut cmd, format!("127.0.0.1:{}", grpc + 1), log.clone(), pid_file.clone())?;
            started.push(format!(
                "node {i}: pid {pid}, gRPC {listen}, log {}, pid file {}",
                log.display(),
                pid_file.display()
            ));
            endpoints.push(listen);
        }
        let probe_tls = if self.tls {
            let files = crate::tls::TlsConfig {
                cert: tls_dir.join("node.pem"),
                key: tls_dir.join("node.key"),
                ca: tls_dir.join("ca.pem"),
            };
            Some(crate::tls::load(&files).context("loading the dev certificates")?.peer_client)
        } else {
            None
        };
        let replicas = self.nodes.min(3) as usize;
        if !nodes.wait_ready(probe_tls, replicas, self.ready_timeout, stop).await? {
            return Ok(());
        }
        outln!("ringkv dev cluster with {} nodes, all ready", self.nodes)?;
        outln!("endpoints: {}", endpoints.join(","))?;
        for line in &started {
            outln!("{line}")?;
        }
        if self.tls {
            let dir = tls_dir.display();
            outln!("TLS on: certificates in {dir} (CA ca.pem, node node.pem, client client-dev.pem)")?;
            outln!("point the CLI at it with:")?;
            outln!("  export RINGKV_ENDPOINTS={}", endpoints.join(","))?;
            outln!("  export RINGKV_TLS_CA={dir}/ca.pem RINGKV_TLS_CERT={dir}/client-dev.pem RINGKV_TLS_KEY={dir}/client-dev.key")?;
            outln!("try: ringkv put hello world && ringkv get hello")?;
            outln!("HTTP: curl --cacert {dir}/ca.pem https://127.0.0.1:{}/readyz", self.base_port + 1)?;
        } else {
            outln!("try: ringkv put hello world && ringkv get hello --endpoints {}", endpoints.join(","))?;
        }
        outln!("a node that exits is reported here; the others keep running")?;
        outln!("press Ctrl-C to stop")?;
        nodes.supervise(stop).await
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeCommand,
    }

    /// RINGKV_* variables are process-wide: every test here holds this.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(args: &[&str]) -> anyhow::Result<NodeConfig> {
        let cli = Cli::try_parse_from(std::iter::once("ringkv").chain(args.iter().copied()))?;
        cli.serve.config()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write config");
        f
    }

    fn error(text: &str) -> String {
        let f = file(text);
        let path = f.path().to_str().expect("utf-8 path");
        match resolve(&["--config", path]) {
            Ok(c) => panic!("config {text:?} was accepted: {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_example_is_complete_and_resolves_to_the_defaults() {
        let _env = env_lock();
        let f = file(crate::config::EXAMPLE);
        let path = f.path().to_str().expect("utf-8 path");
        let mut from_example = resolve(&["--config", path]).expect("example parses");
        let from_nothing = resolve(&[]).expect("defaults");
        // The example spells the default shard count out, which counts as setting it.
        assert!(from_example.shards_given && !from_nothing.shards_given);
        from_example.shards_given = false;
        assert_eq!(format!("{from_example:?}"), format!("{from_nothing:?}"));
        // One set of defaults: what `serve` resolves to is `RaftTuning::default()`.
        assert_eq!(format!("{:?}", from_nothing.raft), format!("{:?}", RaftTuning::default()));
        assert_eq!(from_nothing.raft.heartbeat_ms, 250);
        assert_eq!(from_nothing.raft.election_min_ms, 1250);
        assert_eq!(from_nothing.limits.max_value_bytes, 1024 * 1024);
        assert_eq!(from_nothing.limits.max_hook_source_bytes, 256 * 1024);
        assert_eq!(from_nothing.down_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_first_seed_is_the_founder_and_a_node_skips_itself() {
        let _env = env_lock();
        let seeds = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";
        let first = resolve(&["--listen", "127.0.0.1:1", "--join", seeds]).expect("config");
        assert!(first.founder);
        assert_eq!(first.join, ["127.0.0.1:2", "127.0.0.1:3"]);
        let second = resolve(&["--listen", "127.0.0.1:2", "--join", seeds]).expect("config");
        assert!(!second.founder);
        assert_eq!(second.join, ["127.0.0.1:1", "127.0.0.1:3"]);
        let alone = resolve(&[]).expect("config");
        assert!(!alone.founder && alone.join.is_empty() && !alone.shards_given);
        assert!(resolve(&["--min-replicas", "0"]).is_err());
        assert_eq!(resolve(&["--min-replicas", "3"]).expect("config").min_replicas, 3);
    }

    #[test]
    fn flags_beat_environment_beats_file_beats_defaults() {
        let _env = env_lock();
        let f = file("id = 2\nlisten = \"127.0.0.1:1000\"\nshards = 8\n[raft]\nheartbeat = \"100ms\"\n");
        let path = f.path().to_str().expect("utf-8 path");
        std::env::set_var("RINGKV_LISTEN", "127.0.0.1:2000");
        std::env::set_var("RINGKV_SHARDS", "16");
        let c = resolve(&["--config", path, "--shards", "32"]);
        std::env::remove_var("RINGKV_LISTEN");
        std::env::remove_var("RINGKV_SHARDS");
        let c = c.expect("resolves");
        assert_eq!(c.id, 2, "file over default");
        assert_eq!(c.listen, "127.0.0.1:2000", "environment over file");
        assert_eq!(c.ring.shards, 32, "flag over environment");
        assert_eq!(c.raft.heartbeat_ms, 100, "file over default");
        assert_eq!(c.request_timeout, Duration::from_secs(5), "default");
    }

    #[test]
    fn durations_sizes_and_off_read_naturally() {
        let _env = env_lock();
        let f = file(
            "http = \"off\"\nrequest_timeout = \"1500ms\"\n[limits]\nmax_value_bytes = \"16MiB\"\nmax_key_bytes = 512\n",
        );
        let path = f.path().to_str().expect("utf-8 path");
        let c = resolve(&["--config", path]).expect("resolves");
        assert_eq!(c.http, None);
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.limits.max_value_bytes, 16 * 1024 * 1024);
        assert_eq!(c.limits.max_key_bytes, 512);
        let c = resolve(&["--max-value-bytes", "2KiB", "--http", "off"]).expect("resolves");
        assert_eq!(c.limits.max_value_bytes, 2048);
        assert_eq!(c.http, None);
    }

    #[test]
    fn resize_thresholds_read_sizes_and_keep_merges_far_from_splits() {
        let _env = env_lock();
        let d = resolve(&[]).expect("defaults").resize;
        assert_eq!((d.split_bytes, d.split_ops, d.merge_bytes), (512 << 20, 0, 64 << 20));
        let f = file("split_size = \"1GiB\"\nsplit_load = 500\nresize_after = \"5m\"\n");
        let path = f.path().to_str().expect("utf-8 path");
        let c = resolve(&["--config", path, "--merge-size", "128MiB"]).expect("resolves").resize;
        assert_eq!((c.split_bytes, c.split_ops, c.merge_bytes), (1 << 30, 500, 128 << 20));
        assert_eq!(c.sustain, Duration::from_secs(300));
        let too_close = resolve(&["--split-size", "100MiB", "--merge-size", "30MiB"]).map(|_| ());
        assert!(format!("{too_close:?}").contains("at most a quarter"), "{too_close:?}");
        assert!(resolve(&["--split-size", "0", "--merge-size", "30MiB"]).is_ok(), "no splits: any merge size");
        assert!(resolve(&["--resize-after", "100ms"]).is_err());
        assert_eq!(resolve(&[]).expect("defaults").move_share, 50);
        assert_eq!(resolve(&["--move-share", "100"]).expect("resolves").move_share, 100);
        assert!(resolve(&["--move-share", "0"]).is_err() && resolve(&["--move-share", "101"]).is_err());
    }

    #[test]
    fn tls_takes_its_files_from_the_table_and_the_flags() {
        let _env = env_lock();
        let f = file("[tls]\ncert = \"/etc/n.pem\"\nkey = \"/etc/n.key\"\nca = \"/etc/ca.pem\"\n");
        let path = f.path().to_str().expect("utf-8 path");
        let tls = resolve(&["--config", path, "--tls-ca", "/other/ca.pem"]).expect("resolves").tls.expect("TLS on");
        assert_eq!(tls.cert, PathBuf::from("/etc/n.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/n.key"));
        assert_eq!(tls.ca, PathBuf::from("/other/ca.pem"), "flag over file");
        assert!(resolve(&[]).expect("defaults").tls.is_none(), "TLS is off by default");
    }

    #[test]
    fn auth_settings_are_read_and_need_tls() {
        let _env = env_lock();
        let hash = crate::auth::hash_secret(&crate::auth::new_secret("ci")).expect("hash");
        let f = file(&format!(
            "[[auth.principals]]\nname = \"backup-bot\"\nrole = \"admin\"\n\n\
             [[auth.tokens]]\nname = \"ci\"\nhash = \"{hash}\"\nrole = \"write\"\nprefix = \"ci/\"\n"
        ));
        let path = f.path().to_str().expect("utf-8 path");
        let c = resolve(&["--config", path]).expect("resolves");
        assert!(!c.auth.enabled, "off by default");
        assert_eq!(c.auth.principals[0].role, crate::auth::Role::Admin);
        assert_eq!(c.auth.tokens[0].prefix, "ci/");
        let err = resolve(&["--config", path, "--auth"]).expect_err("auth without TLS").to_string();
        assert!(err.contains("auth needs TLS"), "{err}");
    }

    #[test]
    fn a_statefulset_pod_name_gives_its_ordinal_plus_one() {
        assert_eq!(id_from_hostname("ringkv-0").expect("pod 0"), 1);
        assert_eq!(id_from_hostname("ringkv-12").expect("pod 12"), 13);
        assert_eq!(id_from_hostname("my-kv-store-2").expect("dashes in the name"), 3);
        for bad in ["ringkv", "ringkv-", "ringkv-a1", "ringkv2", "", "ringkv-18446744073709551615", "ringkv-+1"] {
            let e = format!("{:#}", id_from_hostname(bad).expect_err(bad));
            assert!(e.contains("--id-from-hostname"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn id_from_hostname_refuses_an_explicit_id() {
        let _env = env_lock();
        let e = format!("{:#}", resolve(&["--id-from-hostname", "--id", "2"]).expect_err("both"));
        assert!(e.contains("cannot be combined with an id"), "{e}");
        let f = file("id = 2\n");
        let path = f.path().to_str().expect("utf-8 path");
        let e = format!("{:#}", resolve(&["--id-from-hostname", "--config", path]).expect_err("file id"));
        assert!(e.contains("cannot be combined with an id"), "{e}");
        // The environment variable is read like the flag (Kubernetes may set either).
        std::env::set_var("RINGKV_ID_FROM_HOSTNAME", "true");
        let from_env = resolve(&["--id", "2"]);
        std::env::set_var("RINGKV_ID_FROM_HOSTNAME", "false");
        let off = resolve(&["--id", "2"]);
        std::env::remove_var("RINGKV_ID_FROM_HOSTNAME");
        let e = format!("{:#}", from_env.expect_err("env and flag"));
        assert!(e.contains("cannot be combined with an id"), "{e}");
        assert_eq!(off.expect("RINGKV_ID_FROM_HOSTNAME=false is off").id, 2);
    }

    #[test]
    fn a_node_skips_itself_in_the_seed_list() {
        let _env = env_lock();
        let seeds = "kv-0.kv:7379,kv-1.kv:7379";
        let c = resolve(&["--advertise", "kv-0.kv:7379", "--join", "kv-0.kv:7379"]).expect("seed itself");
        assert!(c.join.is_empty(), "the only seed is this node: it bootstraps ({:?})", c.join);
        let c = resolve(&["--advertise", "kv-1.kv:7379", "--join", seeds]).expect("another seed");
        assert_eq!(c.join, ["kv-0.kv:7379"]);
        let c = resolve(&["--listen", "127.0.0.1:7000", "--join", "127.0.0.1:7000,127.0.0.1:7002"]).expect("listen");
        assert_eq!(c.join, ["127.0.0.1:7002"], "without --advertise the listen address is this node's own");
    }

    #[test]
    fn bad_config_is_refused_naming_the_field_and_the_problem() {
        let _env = env_lock();
        let cases = [
            ("idd = 2\n", "unknown field `idd`"),
            ("[raft]\nheartbeats = \"1s\"\n", "unknown field `heartbeats`"),
            ("[storage]\n", "unknown field `storage`"),
            ("id = \"one\"\n", "line 1 (`id = \"one\"`): invalid type: string \"one\""),
            ("id = -1\n", "line 1 (`id = -1`)"),
            ("id = 0\n", "id must be at least 1"),
            ("shards = 1.5\n", "line 1 (`shards = 1.5`): invalid type: floating point"),
            ("request_timeout = \"5 parsecs\"\n", "unknown time unit \"parsecs\""),
            ("request_timeout = 5\n", "line 1 (`request_timeout = 5`): invalid type: integer"),
            ("[limits]\nmax_value_bytes = \"1 MiBB\"\n", "line 2 (`max_value_bytes = \"1 MiBB\"`)"),
            ("[limits]\nmax_value_bytes = true\n", "line 2 (`max_value_bytes = true`)"),
            ("[limits]\nscan_default = 20000\n", "limits.scan_default (20000) must be between 1 and limits.scan_max"),
            ("join = \"a:1\"\n", "line 1 (`join = \"a:1\"`): invalid type: string \"a:1\", expected a sequence"),
            ("listen = 7379\n", "line 1 (`listen = 7379`): invalid type: integer `7379`, expected a string"),
            ("[raft]\nheartbeat = \"1s\"\n", "must be more than twice raft.heartbeat"),
            ("down_timeout = \"2s\"\n", "down_timeout (--down-timeout, 2s) must be at least 1s"),
            ("id = 1\nid = 2\n", "line 2 (`id = 2`): duplicate key"),
            ("id = \n", "line 1 (`id =`)"),
            ("[tls]\ncrt = \"a.pem\"\n", "unknown field `crt`"),
            ("[tls]\ncert = \"a.pem\"\n", "missing: tls.key (--tls-key), tls.ca (--tls-ca)"),
            ("[auth]\nenabled = true\n", "auth needs TLS"),
            ("[auth]\nenable = true\n", "unknown field `enable`"),
            ("[[auth.principals]]\nname = \"x\"\nrole = \"root\"\n", "unknown variant `root`"),
            ("[[auth.tokens]]\nname = \"ci\"\nhash = \"abc\"\nrole = \"read\"\n", "not an argon2 PHC string"),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert!(got.contains(want), "config {text:?}: error {got:?} does not contain {want:?}");
        }
        let missing = format!("{:#}", resolve(&["--config", "/nonexistent/ringkv.toml"]).expect_err("missing file"));
        assert!(missing.contains("cannot read /nonexistent/ringkv.toml"), "{missing}");
    }
}
