//! ringkv: a distributed key-value store.
//!
//! A tour of the node, bottom up (ARCHITECTURE.md has the design and its
//! reasons):
//!
//! - [`storage`] owns the node's single fjall database: its keyspaces and key
//!   layout, the stored value format, the group-commit writer thread, fsync
//!   poisoning, and giving disk space back once the node is quiet.
//! - [`raft`] runs openraft per group on that one database: the log store, the
//!   key-value state machine, snapshots (read views, never stored copies) and
//!   the tonic peer transport with its batched per-peer streams.
//! - [`ring`] maps keys to tokens, tokens to shards and shards to replicas (a
//!   pure function of the members and the ring settings), and holds the
//!   partition function and re-shard job as the meta group records them.
//! - [`cluster`] is the node itself: it starts the groups, bootstraps or joins
//!   a cluster, changes membership, places replicas, routes requests to
//!   leaders, batches writes and reads per group, spreads leadership, lets
//!   idle groups sleep, purges quiet groups' logs, re-shards, expires TTLs
//!   and reads consistent dumps for backups.
//! - [`hooks`] runs user validation and TTL hooks (sandboxed Luau and Wasm) on
//!   the write path and compiles the Wasm partition function; the deployed
//!   set comes from the meta group.
//! - [`api`] exposes the node over gRPC (`ringkv.v1.Kv`, `Cluster`, `Hooks`,
//!   `Backup`, `Auth` and the internal `Raft` service), converts protobuf
//!   there and nowhere else, and guards the port (per-IP connection cap,
//!   default deadline).
//! - [`auth`] authenticates requests (tokens, client certificates) and checks
//!   their roles and key prefixes before any service acts.
//! - [`tls`] loads and reloads the node's certificates, accepts TLS
//!   connections and tells node certificates from client certificates.
//! - [`http`] serves health, readiness, status, metrics and the cluster's
//!   request figures over HTTP.
//! - [`telemetry`] owns the Prometheus metrics: the recorder, every metric
//!   name, the gRPC layer that counts and times requests, scrape-time gauges.
//! - [`dashboard`] is the web page served at `/`, embedded in the binary.
//! - [`log_limit`] rate-limits log lines that would repeat on every message.
//! - [`config`] holds node settings with their defaults.
//! - [`cli`] is the `ringkv` command line.
//! - [`failpoint`] holds the crash points of the fault-injection tests.
//! - [`fuzzing`] exposes the network-facing decoders to the fuzz harnesses.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod failpoint;
pub mod fuzzing;
pub mod hooks;
pub mod http;
pub mod log_limit;
pub mod raft;
pub mod ring;
pub mod storage;
pub mod telemetry;
pub mod tls;
