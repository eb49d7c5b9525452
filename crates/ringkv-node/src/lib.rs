//! ringkv's node: what runs on one machine, below its servers.
//!
//! - [`config`] holds node settings with their defaults.
//! - [`cluster`] is the node itself: it starts the groups, bootstraps or joins
//!   a cluster, changes membership, places replicas, routes requests to
//!   leaders, batches writes and reads per group, spreads leadership, lets
//!   idle groups sleep, purges quiet groups' logs, splits, merges and
//!   re-shards, expires TTLs, reads consistent dumps for backups and fills
//!   the scrape-time gauges.
//!
//! Below it are `ringkv-raft` (the replicated state), `ringkv-hooks` and
//! `ringkv-storage`, re-exported here under their module names so a path
//! such as `crate::raft::…` reads alike in every crate; above it the
//! `ringkv` crate serves the node over gRPC and HTTP and holds the CLI.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cluster;
pub mod config;
pub use ringkv_hooks as hooks;
pub use ringkv_raft::{auth, command, failpoint, ids, log_limit, meta, raft, ring, storage, telemetry, tls};
