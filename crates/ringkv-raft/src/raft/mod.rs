//! Raft layer: openraft types, the fjall-backed log store and state machine,
//! and the tonic transport. Log entries carry `crate::command::Command`s;
//! the meta group's configuration records are `crate::meta`'s. Everything here is per group (`GroupId`), so a
//! node can run any number of groups on one database and one transport.

pub mod log_store;
pub mod network;
pub mod peer_stream;
pub mod snapshot;
pub mod state_machine;
pub mod types;

use std::sync::Arc;

pub use log_store::LogStore;
pub use network::{LinkFilter, NetworkFactory, Peers};
pub use state_machine::{ApplyMeta, StateMachine};
pub use types::{NodeId, Raft, TypeConfig};

use crate::storage::{GroupId, Storage};

/// Errors of the raft layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftLayerError {
    #[error("invalid raft settings: {0}")]
    InvalidConfig(String),
    #[error("raft stopped: {0}")]
    Fatal(#[from] openraft::error::Fatal<NodeId>),
}

/// Raft timing and log-retention settings shared by every group.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log after a snapshot, for followers slightly behind.
    pub keep_logs: u64,
    /// Leaders serve linearizable reads under a lease instead of a heartbeat
    /// round per read batch (`cluster::batching::ReadLease`).
    pub lease_reads: bool,
    /// Idle shard groups stop ticking (`cluster::quiescence`).
    pub quiesce: bool,
}

impl RaftTuning {
    /// How long a successful ReadIndex check lets a leader read without
    /// another: a quarter of the time followers refuse votes after hearing
    /// from it (openraft's leader lease, `election_timeout_max`).
    pub fn read_lease(&self) -> Option<std::time::Duration> {
        self.lease_reads.then(|| std::time::Duration::from_millis(self.election_max_ms / 4))
    }
}

/// The served defaults (`ringkv serve` and its config file), the only ones:
/// slow enough that a loaded machine does not trigger needless elections.
/// In-process test clusters on loopback pick faster timings themselves.
impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_min_ms: 1250,
            election_max_ms: 2500,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            lease_reads: true,
            quiesce: true,
        }
    }
}

/// Starts the openraft instance of one group; `apply_meta` for the meta
/// group, which holds the cluster configuration.
pub async fn start_group(
    node_id: NodeId,
    group: GroupId,
    storage: &Storage,
    peers: Arc<Peers>,
    tuning: &RaftTuning,
    apply_meta: Option<ApplyMeta>,
) -> Result<(Raft, StateMachine), RaftLayerError> {
    let config = openraft::Config {
        cluster_name: format!("ringkv-group-{group}"),
        heartbeat_interval: tuning.heartbeat_ms,
        election_timeout_min: tuning.election_min_ms,
        election_timeout_max: tuning.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: tuning.keep_logs,
        max_payload_entries: 128,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| RaftLayerError::InvalidConfig(e.to_string()))?);
    let sm = match apply_meta {
        Some(apply_meta) => StateMachine::with_meta(group, storage.clone(), apply_meta),
        None => StateMachine::new(group, storage.clone()),
    };
    let raft = Raft::new(
        node_id,
        config,
        NetworkFactory::new(group, peers),
        LogStore::new(group, storage.clone()),
        sm.clone(),
    )
    .await?;
    tokio::spawn(watch_leader(group, raft.server_metrics()));
    Ok((raft, sm))
}

/// Logs and counts every leader change of one group as this node sees it.
/// Ends when the group shuts down and its metrics channel closes.
async fn watch_leader(
    group: GroupId,
    mut server: tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, openraft::BasicNode>>,
) {
    let mut leader = server.borrow().current_leader;
    while server.changed().await.is_ok() {
        let (now, term) = {
            let m = server.borrow();
            (m.current_leader, m.vote.leader_id().term)
        };
        if now != leader {
            tracing::info!(group, term, from = ?leader, to = ?now, "raft leader changed");
            crate::telemetry::record_leader_change(group);
            leader = now;
        }
    }
}

/// On the leader: the highest index stored on a quorum of voters. Elsewhere
/// the applied index, a lower bound (followers do not expose their commit index).
pub fn commit_index(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> u64 {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let Some(repl) = m.replication.as_ref() else { return applied };
    let mut matched: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| {
            if id == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                repl.get(&id).copied().flatten().map_or(0, |l| l.index)
            }
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2].max(applied)
}
