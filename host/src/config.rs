//! Node settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{NodeId, RaftTuning};
use crate::ring::RingConfig;

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
    /// Largest hook source accepted by a deploy, in bytes. Default 256 KiB.
    pub max_hook_source_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            scan_default: 1000,
            scan_max: 10_000,
            max_hook_source_bytes: 256 * 1024,
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
    /// Seeds of an existing cluster to join. Empty: bootstrap a new cluster.
    pub join: Vec<String>,
    /// Ring settings used when this node bootstraps a cluster; a joining node
    /// takes the cluster's. Default: 1 shard (see `serve --shards`).
    pub ring: RingConfig,
    pub raft: RaftTuning,
    pub limits: Limits,
    /// Server-side deadline of a client request. Default 5 s.
    pub request_timeout: Duration,
    /// How often the leader looks for expired keys to delete. Default 1 s.
    pub ttl_sweep_interval: Duration,
    /// A member whose Raft transport has not answered the meta leader for
    /// this long is marked down and its replicas are re-created elsewhere.
    /// Default 30 s.
    pub down_timeout: Duration,
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
            ring: RingConfig { shards: 1, ..RingConfig::default() },
            raft: RaftTuning::default(),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
            ttl_sweep_interval: Duration::from_secs(1),
            down_timeout: Duration::from_secs(30),
        }
    }
}
