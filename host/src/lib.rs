//! ringkv: a distributed key-value store.
//!
//! A tour of the node, bottom up. Each module uses only the ones above it in
//! this list (the `layers` test checks it); ARCHITECTURE.md has the design
//! and its reasons.
//!
//! The lower layers are crates of their own, re-exported here under their
//! module names, so `crate::raft::…` reads the same in this crate as in
//! theirs:
//!
//! - [`storage`] (`ringkv-storage`) owns the node's single fjall database:
//!   its keyspaces and key layout, the stored value format, the group-commit
//!   writer thread, fsync poisoning, and giving disk space back once the
//!   node is quiet; with [`failpoint`], the crash points of the
//!   fault-injection tests.
//! - [`hooks`] (`ringkv-hooks`) runs user validation and TTL hooks
//!   (sandboxed Luau and Wasm) and compiles the Wasm partition function.
//! - `ringkv-raft` is the replicated state, bottom up: [`ids`] and
//!   [`log_limit`], [`tls`], [`telemetry`], [`auth`], [`ring`], [`command`],
//!   [`raft`] and [`meta`] (its own `//!` tour says what each owns).
//! - `ringkv-node` is the node below its servers: [`config`] (node settings
//!   with their defaults) and [`cluster`], the node itself: it starts the
//!   groups, bootstraps or joins a cluster, changes membership, places
//!   replicas, routes requests to leaders, batches writes and reads per
//!   group, spreads leadership, lets idle groups sleep, purges quiet groups'
//!   logs, splits, merges and re-shards, expires TTLs, reads consistent
//!   dumps for backups and fills the scrape-time gauges.
//!
//! Then this crate's modules:
//!
//! - [`dashboard`] is the web page served at `/`.
//! - [`api`] exposes the node over gRPC (`ringkv.v1.Kv`, `Cluster`, `Hooks`,
//!   `Backup`, `Auth` and the internal `Raft` service), converts protobuf
//!   there and nowhere else, and guards the port (per-IP connection cap,
//!   default deadline).
//! - [`http`] serves health, readiness, status, metrics and the cluster's
//!   request figures over HTTP.
//! - [`server`] is the process wiring: the order in which the node and its
//!   gRPC and HTTP servers start and stop.
//! - [`cli`] is the `ringkv` command line; [`fuzzing`] exposes the
//!   network-facing decoders to the fuzz harnesses.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod cli;
pub mod dashboard;
pub use ringkv_storage::failpoint;
pub mod fuzzing;
pub use ringkv_hooks as hooks;
pub use ringkv_node::{cluster, config};
pub use ringkv_raft::{auth, command, ids, log_limit, meta, raft, ring, telemetry, tls};
pub mod http;
#[cfg(test)]
mod layers;
pub mod server;
pub use ringkv_storage as storage;
