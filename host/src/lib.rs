//! ringkv: a distributed key-value store.
//!
//! A tour of the node, bottom up:
//!
//! - [`storage`] owns the node's single fjall database: its keyspaces, key
//!   layout, the group-commit writer thread and fsync poisoning.
//! - [`raft`] runs openraft per group on top of it: the log store, the
//!   key-value state machine with snapshots, and the tonic peer transport.
//! - [`cluster`] is the node itself: it starts the groups, bootstraps or joins
//!   a cluster, changes membership, routes requests to leaders and expires TTLs.
//! - [`api`] exposes the node over gRPC (`ringkv.v1.Kv`, `Cluster`, and the
//!   internal `Raft` service) and converts protobuf at the edge.
//! - [`hooks`] runs user validation and TTL hooks (sandboxed Lua) on the
//!   write path, and keeps the deployed set in step with the meta group.
//! - [`http`] serves health, readiness, status and metrics over HTTP;
//!   [`telemetry`] owns the Prometheus metrics; [`dashboard`] is the web
//!   page served at `/`.
//! - [`auth`] authenticates requests (tokens, client certificates) and
//!   checks their roles and key prefixes before any service acts.
//! - [`failpoint`] holds the crash points of the fault-injection tests;
//!   [`fuzzing`] exposes the network-facing decoders to the fuzz harnesses.
//! - [`tls`] loads and reloads the node's certificates, accepts TLS
//!   connections and tells node certificates from client certificates.
//! - [`config`] holds node settings with their defaults; [`cli`] is the
//!   `ringkv` command line.

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
