//! ringkv's replicated state and the layers it stands on.
//!
//! A tour, bottom up. Each module uses only the ones above it in this list
//! (the `layers` test in the `ringkv` crate checks it); below them are the
//! [`storage`] and [`hooks`] crates, re-exported here under those names.
//!
//! - [`ids`] holds the node, group and shard identifiers and the wall clock
//!   that every layer shares; [`log_limit`] rate-limits log lines that would
//!   repeat on every message.
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
//!
//! The node that runs groups, routes requests and serves clients is the
//! `ringkv` crate above this one.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod command;
pub use ringkv_hooks as hooks;
pub use ringkv_storage::failpoint;
pub mod ids;
pub mod log_limit;
pub mod meta;
pub mod raft;
pub mod ring;
pub use ringkv_storage as storage;
pub mod telemetry;
pub mod tls;
