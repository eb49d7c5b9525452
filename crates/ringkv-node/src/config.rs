//! Node settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{NodeId, RaftTuning};
use crate::ring::RingConfig;
pub use crate::tls::TlsConfig;

/// Request limits enforced at the API edge.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest key accepted, in bytes. Default 4 KiB.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Scan limit used when the request says 0. Default 1000.
    pub scan_default: u32,
    /// Largest scan limit honoured. Default 10000.
    pub scan_max: u32,
    /// Largest Lua hook source accepted by a deploy, in bytes. Default 256 KiB.
    pub max_hook_source_bytes: usize,
    /// Largest Wasm module accepted by a deploy, in bytes. Default 8 MiB.
    pub max_wasm_module_bytes: usize,
    /// Keys and values one scan returns at most, in bytes; a scan stops
    /// early (after at least one item) rather than exceed it. Default 64 MiB.
    pub max_scan_bytes: usize,
    /// Open gRPC connections accepted from one IP address; more are closed
    /// on accept. Peers share one connection per pair of nodes. Default 1024.
    pub max_connections_per_ip: usize,
    /// Concurrent requests (HTTP/2 streams) on one gRPC connection. Default 1024.
    pub max_concurrent_streams: u32,
}

impl Limits {
    /// The largest hook source or module a deploy of `kind` accepts.
    pub fn max_hook_bytes(&self, kind: crate::hooks::HookKind) -> usize {
        match kind {
            crate::hooks::HookKind::Lua => self.max_hook_source_bytes,
            crate::hooks::HookKind::Wasm => self.max_wasm_module_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            scan_default: 1000,
            scan_max: 10_000,
            max_hook_source_bytes: 256 * 1024,
            max_wasm_module_bytes: 8 * 1024 * 1024,
            max_scan_bytes: 64 * 1024 * 1024,
            max_connections_per_ip: 1024,
            max_concurrent_streams: 1024,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id, unique in the cluster and stable for the data directory. Default 1.
    pub id: NodeId,
    /// Address the gRPC server (client API and peer transport) binds. Default 127.0.0.1:7379.
    pub listen: String,
    /// Address other nodes and clients use to reach this node. Default: the bound address.
    pub advertise: Option<String>,
    /// Address of the HTTP endpoint (health, status). Default 127.0.0.1:7380; `None` disables it.
    pub http: Option<String>,
    /// Data directory. Default `./ringkv-data`.
    pub data_dir: PathBuf,
    /// Seeds of the cluster to join, without this node's own address. Empty
    /// (and not [`NodeConfig::founder`]): a new data directory bootstraps a
    /// new single-node cluster.
    pub join: Vec<String>,
    /// This node's own address was the first of its `--join` list: with a
    /// new data directory it creates the cluster, once every other seed has
    /// answered that it has none.
    pub founder: bool,
    /// Ring settings used when this node bootstraps a cluster; a joining node
    /// takes the cluster's. Default: 1 shard (see `serve --shards`).
    pub ring: RingConfig,
    /// The shard count was set explicitly (flag, environment or file): on a
    /// node of an existing cluster it must then equal the cluster's.
    pub shards_given: bool,
    pub raft: RaftTuning,
    pub limits: Limits,
    /// Server-side deadline of a client request. Default 5 s. A request that
    /// carries no `grpc-timeout` of its own is cut off at
    /// [`NodeConfig::default_deadline`].
    pub request_timeout: Duration,
    /// How often the leader looks for expired keys to delete. Default 1 s.
    pub ttl_sweep_interval: Duration,
    /// A member whose Raft transport has not answered the meta leader for
    /// this long is marked down and its replicas are re-created elsewhere.
    /// Default 30 s.
    pub down_timeout: Duration,
    /// A shard acknowledges client writes only while its Raft group has at
    /// least this many voters (capped at the replication factor), so an
    /// acknowledged write is on a majority of them. Default 1.
    pub min_replicas: usize,
    /// The spread policy (`cluster::resize_policy`): while the cluster has
    /// more active members than the replication factor, the meta leader
    /// splits shards until each member can hold about this many replicas.
    /// 0 turns automatic splits off. Default 4.
    pub auto_split_replicas_per_node: u32,
    /// The size and load policy (`cluster::resize_policy`).
    pub resize: ResizeThresholds,
    /// Percent of the time a shard's mover (a split, merge or partition
    /// function change moving keys) works; it rests the rest, after each
    /// batch, so client requests to the shard keep most of their
    /// throughput. 100 never rests. Default 50.
    pub move_share: u8,
    /// TLS on the gRPC port, the HTTP port and peer connections. Default: off.
    pub tls: Option<TlsConfig>,
    /// Authentication and authorization (`[auth]`). Default: off.
    pub auth: crate::auth::AuthConfig,
}

impl NodeConfig {
    /// The deadline given to a client request that arrives without one:
    /// twice `request_timeout`, since a request may first wait (up to
    /// `request_timeout`) for this node to catch up with the client's routing
    /// epoch and then (up to `request_timeout` again) for a leader and quorum.
    /// Membership changes (`AddNode`, `RemoveNode`) and the internal `Raft`
    /// service are exempt: they bound themselves.
    pub fn default_deadline(&self) -> Duration {
        self.request_timeout * 2
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: "127.0.0.1:7379".into(),
            advertise: None,
            http: Some("127.0.0.1:7380".into()),
            data_dir: PathBuf::from("ringkv-data"),
            join: Vec::new(),
            founder: false,
            ring: RingConfig::default(),
            shards_given: false,
            raft: RaftTuning::default(),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
            ttl_sweep_interval: Duration::from_secs(1),
            down_timeout: Duration::from_secs(30),
            min_replicas: 1,
            auto_split_replicas_per_node: 4,
            resize: ResizeThresholds::default(),
            move_share: 50,
            tls: None,
            auth: crate::auth::AuthConfig::default(),
        }
    }
}

/// When the meta leader splits a shard for its size or load, or merges two
/// neighbours (`cluster::resize_policy`). The meta leader's settings apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeThresholds {
    /// Split a shard whose leader stores more than this many bytes of keys
    /// and values. 0: never split for size. Default 512 MiB.
    pub split_bytes: u64,
    /// Split a shard serving more than this many requests per second
    /// (writes applied plus reads served) for [`Self::sustain`]. 0: never
    /// split for load. Default 0 (off; docs/partitioning.md says why).
    pub split_ops: u32,
    /// Merge two neighbouring shards that together store less than this
    /// and have both been cold for [`Self::sustain`]. 0: never merge on
    /// its own. At most a quarter of `split_bytes`. Default 64 MiB.
    pub merge_bytes: u64,
    /// How long a load must last before it splits or merges a shard.
    /// Default 60 s.
    pub sustain: Duration,
}

impl Default for ResizeThresholds {
    fn default() -> Self {
        Self { split_bytes: 512 << 20, split_ops: 0, merge_bytes: 64 << 20, sustain: Duration::from_secs(60) }
    }
}

/// The `--config` TOML file. Every field is optional: a missing one keeps
/// its default, and `RINGKV_*` environment variables and flags override
/// what the file says (see `docs/configuration.md`). Unknown fields are an
/// error, so a typo never silently leaves a default in place.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub id: Option<NodeId>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    /// `"off"` disables the HTTP endpoint.
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub join: Option<Vec<String>>,
    pub shards: Option<u32>,
    pub request_timeout: Option<Dur>,
    pub down_timeout: Option<Dur>,
    pub min_replicas: Option<usize>,
    pub auto_split_replicas_per_node: Option<u32>,
    pub split_size: Option<Size>,
    pub split_load: Option<u32>,
    pub merge_size: Option<Size>,
    pub resize_after: Option<Dur>,
    pub move_share: Option<u8>,
    /// `"text"` or `"json"`.
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub raft: RaftFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub auth: AuthFile,
}

/// `[tls]` in the config file: PEM file paths, all three or none.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// `[auth]` in the config file (see docs/security.md).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub enabled: Option<bool>,
    /// `[[auth.principals]]`: client certificate common names and their grants.
    #[serde(default)]
    pub principals: Vec<crate::auth::ConfiguredPrincipal>,
    /// `[[auth.tokens]]`: tokens by their argon2 hash (`ringkv auth hash-token`).
    #[serde(default)]
    pub tokens: Vec<crate::auth::StaticToken>,
}

/// How a served node writes its logs (to stderr).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, with its span fields.
    Json,
}

/// `[raft]` in the config file.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    pub heartbeat: Option<Dur>,
    pub election_timeout: Option<Dur>,
    pub snapshot_every: Option<u64>,
    pub keep_logs: Option<u64>,
    pub lease_reads: Option<bool>,
    pub quiesce: Option<bool>,
}

/// `[limits]` in the config file.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_key_bytes: Option<Size>,
    pub max_value_bytes: Option<Size>,
    pub scan_default: Option<u32>,
    pub scan_max: Option<u32>,
    pub max_hook_source_bytes: Option<Size>,
    pub max_wasm_module_bytes: Option<Size>,
    pub max_scan_bytes: Option<Size>,
    pub max_connections_per_ip: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
}

/// A size in bytes written like `4096`, `4KiB` or `1MiB` (KB, MB: powers of 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(text) => text.parse::<bytesize::ByteSize>().map(|b| Size(b.as_u64())).map_err(|e| {
                serde::de::Error::custom(format!("{e} in {text:?} (expected a size like 4096, 4KiB or 1MiB)"))
            }),
        }
    }
}

/// A duration written like `500ms`, `5s` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("{e} in {text:?} (expected a duration like 500ms, 5s or 2m)"))
        })
    }
}

impl ConfigFile {
    /// Reads and parses `path`; errors name the file, the line and the field.
    pub fn load(path: &std::path::Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a config file's text; an error names the line and its setting.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
                format!("line {line_no} (`{line}`): {}", e.message())
            }
            None => e.message().to_string(),
        })
    }
}

/// A complete, commented config file with every setting at its default
/// (`ringkv config example`).
pub const EXAMPLE: &str = r#"# ringkv node configuration. Every setting is optional and shows its default.
# Precedence: flags > RINGKV_* environment variables > this file > defaults.
# Durations read like 500ms, 5s, 2m; sizes like 4KiB, 1MiB (KB/MB are powers of 10).

# Node id: unique in the cluster and fixed for its data directory. (RINGKV_ID, --id)
id = 1
# gRPC address to bind: the client API and the peer transport. (RINGKV_LISTEN, --listen)
listen = "127.0.0.1:7379"
# Address other nodes and clients use to reach this node; default: the bound
# address. (RINGKV_ADVERTISE, --advertise)
# advertise = "10.0.0.1:7379"
# HTTP address for /healthz, /readyz, /status, /metrics and the dashboard; "off" disables it. (RINGKV_HTTP, --http)
http = "127.0.0.1:7380"
# Data directory. (RINGKV_DATA_DIR, --data-dir)
data_dir = "ringkv-data"
# Seeds of the cluster to join; empty: a new data directory bootstraps a new
# single-node cluster. Give every node of a multi-node cluster the same list:
# the node whose own address comes first creates the cluster, once every
# other seed answers that it has none; the others join. (RINGKV_JOIN, comma
# separated; --join)
join = []
# Shards a new cluster starts with; they split and merge online afterwards
# (on a node of an existing cluster it must equal the count the cluster was
# created with). (RINGKV_SHARDS, --shards)
shards = 1
# Once the cluster has more nodes than the replication factor (3), the meta
# leader splits shards, one at a time, until every node can hold about this
# many shard replicas (rounded up to a power of two shards). 0 turns
# automatic splits off; the meta leader's setting applies.
# (RINGKV_AUTO_SPLIT_REPLICAS_PER_NODE, --auto-split-replicas-per-node)
auto_split_replicas_per_node = 4
# Split a shard whose data (keys and values, uncompressed) grows past this,
# at a point that halves its keys; "0" never splits for size.
# (RINGKV_SPLIT_SIZE, --split-size)
split_size = "512MiB"
# Split a shard that serves more than this many requests per second (writes
# plus reads) for resize_after; 0 (the default) never splits for load.
# (RINGKV_SPLIT_LOAD, --split-load)
split_load = 0
# Merge two neighbouring shards that together hold less than this and have
# both been cold for resize_after; at most a quarter of split_size; "0"
# never merges. Never below the --shards a cluster was created with, nor
# below what auto_split_replicas_per_node asks for. (RINGKV_MERGE_SIZE, --merge-size)
merge_size = "64MiB"
# How long a load must last before it splits or merges a shard.
# (RINGKV_RESIZE_AFTER, --resize-after)
resize_after = "60s"
# Percent of the time a shard's mover (keys moving for a split, a merge or
# a partition function change) works; it rests the rest after each batch,
# so clients keep most of the shard's throughput. 100 never rests.
# (RINGKV_MOVE_SHARE, --move-share)
move_share = 50
# A shard acknowledges writes only while it has at least this many replicas
# (Raft voters; capped at the replication factor, 3). Set it to 3 for a
# cluster meant to have three nodes or more, so a write is never acknowledged
# by one node alone. (RINGKV_MIN_REPLICAS, --min-replicas)
min_replicas = 1
# Server-side deadline of a client request. A request without a grpc-timeout of
# its own is cut off at twice this. (RINGKV_REQUEST_TIMEOUT, --request-timeout)
request_timeout = "5s"
# A member unreachable this long is marked down and its replicas are
# re-created elsewhere. (RINGKV_DOWN_TIMEOUT, --down-timeout)
down_timeout = "30s"
# Log lines as human-readable "text" or one JSON object per event, "json".
# Levels come from RUST_LOG (default: ringkv's events at info, other crates'
# at warn, openraft's at error). (RINGKV_LOG_FORMAT, --log-format)
log_format = "text"

[raft]
# Heartbeat interval. (RINGKV_HEARTBEAT, --heartbeat)
heartbeat = "250ms"
# Minimum election timeout; the maximum is twice this.
# (RINGKV_ELECTION_TIMEOUT, --election-timeout)
election_timeout = "1250ms"
# Snapshot after this many log entries. (RINGKV_SNAPSHOT_EVERY, --snapshot-every)
snapshot_every = 10000
# Log entries kept after a snapshot for lagging followers. (RINGKV_KEEP_LOGS, --keep-logs)
keep_logs = 1000
# Leaders serve linearizable reads under a lease (a quarter of the maximum
# election timeout) instead of a heartbeat round per read batch; relies on
# clocks that run at roughly the same rate. (RINGKV_LEASE_READS, --lease-reads)
lease_reads = true
# Idle shard groups stop heartbeating; one beacon per peer keeps them asleep.
# (RINGKV_QUIESCE, --quiesce)
quiesce = true

[limits]
# Largest key. (RINGKV_MAX_KEY_BYTES, --max-key-bytes)
max_key_bytes = "4KiB"
# Largest value. (RINGKV_MAX_VALUE_BYTES, --max-value-bytes)
max_value_bytes = "1MiB"
# Scan limit used when a request says 0. (RINGKV_SCAN_DEFAULT, --scan-default)
scan_default = 1000
# Largest scan limit honoured. (RINGKV_SCAN_MAX, --scan-max)
scan_max = 10000
# Largest Lua hook source a deploy accepts. (RINGKV_MAX_HOOK_SOURCE_BYTES, --max-hook-source-bytes)
max_hook_source_bytes = "256KiB"
# Largest Wasm module a deploy accepts. (RINGKV_MAX_WASM_MODULE_BYTES, --max-wasm-module-bytes)
max_wasm_module_bytes = "8MiB"
# Keys and values one scan returns at most; a scan stops early rather than
# exceed it. (RINGKV_MAX_SCAN_BYTES, --max-scan-bytes)
max_scan_bytes = "64MiB"
# Open gRPC connections accepted from one IP address; more are closed.
# (RINGKV_MAX_CONNECTIONS_PER_IP, --max-connections-per-ip)
max_connections_per_ip = 1024
# Concurrent requests (HTTP/2 streams) on one gRPC connection.
# (RINGKV_MAX_CONCURRENT_STREAMS, --max-concurrent-streams)
max_concurrent_streams = 1024

# TLS on the gRPC port, the HTTP port and peer connections; off unless all
# three are set. The node certificate must be signed by the CA and carry the
# DNS name "ringkv-node" (`ringkv tls gen` makes one). Files are reloaded on
# SIGHUP and when they change. See docs/security.md.
# [tls]
# PEM certificate chain of this node. (RINGKV_TLS_CERT, --tls-cert)
# cert = "/etc/ringkv/tls/node.pem"
# Its private key. (RINGKV_TLS_KEY, --tls-key)
# key = "/etc/ringkv/tls/node.key"
# Cluster CA: verifies peers and client certificates. (RINGKV_TLS_CA, --tls-ca)
# ca = "/etc/ringkv/tls/ca.pem"

[auth]
# Refuse requests without a valid token or client certificate (docs/security.md).
# Needs [tls]. Off is for development only. (RINGKV_AUTH, --auth)
enabled = false
# Client certificates: the subject common name is the principal; roles are
# read, write (includes read) and admin (includes write); prefix limits the
# grant to keys starting with it (byte-exact; empty: every key).
# [[auth.principals]]
# name = "backup-bot"
# role = "admin"
# Tokens rkv_<name>_<secret> checked against an argon2 hash printed by
# `ringkv auth hash-token` (runtime tokens: `ringkv auth token create`).
# [[auth.tokens]]
# name = "ci"
# hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
# role = "write"
# prefix = "ci/"
"#;
