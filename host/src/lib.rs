//! ringkv: a distributed key-value store.
//!
//! A tour of the node, bottom up. Each module uses only the ones above it in
//! this list (the `layers` test checks it); ARCHITECTURE.md has the design
//! and its reasons.
//!
//! Two layers are crates of their own, below this one, re-exported here:
//!
//! - [`storage`] (`ringkv-storage`) owns the node's single fjall database:
//!   its keyspaces and key layout, the stored value format, the group-commit
//!   writer thread, fsync poisoning, and giving disk space back once the
//!   node is quiet; with [`failpoint`], the crash points of the
//!   fault-injection tests.
//! - [`hooks`] (`ringkv-hooks`) runs user validation and TTL hooks
//!   (sandboxed Luau and Wasm) and compiles the Wasm partition function.
//!
//! Then this crate's modules:
//!
//! - [`ids`] holds the node, group and shard identifiers and the wall clock
//!   that every layer shares; [`log_limit`] rate-limits log lines that would
//!   repeat on every message; [`dashboard`] is the web page served at `/`.
//! - [`tls`] loads and reloads the node's certificates, accepts TLS
//!   connections and tells node certificates from client certificates.
//! - [`telemetry`] owns the Prometheus recorder, describes every metric
//!   family and holds the gRPC layer that counts and times requests.
//! - [`auth`] authenticates requests (tokens, client certificates) and
//!   checks their roles and key prefixes.
//! - [`ring`] maps keys to tokens, tokens to shards and shards to replicas (a
//!   pure function of the members and the ring settings), and holds the
//!   partition function and re-shard job as the meta group records them.
//! - [`command`] holds the commands in the Raft log, typed by the state they
//!   change (a shard's keys or the cluster configuration), what a node
//!   proposes to a leader, and their encoding, fixed for older data and peers.
//! - [`raft`] runs openraft per group on that one database: the log store, the
//!   replicated state machine, snapshots (read views, never stored copies)
//!   and the tonic peer transport with its batched per-peer streams.
//! - [`meta`] owns the meta group's records (members, assignments, markers,
//!   leader hints, hooks, tokens, the partition state): applying meta ops to
//!   them and reading them back typed.
//! - [`config`] holds node settings with their defaults.
//! - [`cluster`] is the node itself: it starts the groups, bootstraps or joins
//!   a cluster, changes membership, places replicas, routes requests to
//!   leaders, batches writes and reads per group, spreads leadership, lets
//!   idle groups sleep, purges quiet groups' logs, splits, merges and
//!   re-shards, expires TTLs, reads consistent dumps for backups and fills
//!   the scrape-time gauges.
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
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod config;
pub mod dashboard;
pub use ringkv_storage::failpoint;
pub mod fuzzing;
pub use ringkv_hooks as hooks;
pub mod http;
pub mod ids;
#[cfg(test)]
mod layers;
pub mod log_limit;
pub mod meta;
pub mod raft;
pub mod ring;
pub mod server;
pub use ringkv_storage as storage;
pub mod telemetry;
pub mod tls;
