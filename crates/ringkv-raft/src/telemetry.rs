//! Prometheus metrics: the process-wide recorder, the name of every metric
//! family and the gRPC layer that counts and times each RPC. It sits below
//! every layer that records (storage, hooks, Raft), so it reads none of
//! them: the gauges copied from their state at scrape time are filled by
//! `cluster::metrics`.
//!
//! Hot paths record through the `metrics` facade (an atomic add once the
//! handle is resolved).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ids::{GroupId, META_GROUP};

/// Requests by `rpc`, `consistency` and gRPC `code`.
pub const REQUESTS: &str = "ringkv_requests_total";
/// Requests that ended with a code other than OK, same labels.
pub const REQUEST_ERRORS: &str = "ringkv_request_errors_total";
/// Request latency by `rpc` and `consistency`.
pub const REQUEST_DURATION: &str = "ringkv_request_duration_seconds";
/// Requests this node forwarded to another replica, by `kind`.
pub const FORWARDED: &str = "ringkv_forwarded_requests_total";
/// Requests another node forwarded here, by `kind`.
pub const FORWARDED_SERVED: &str = "ringkv_forwarded_served_total";
/// Per hosted group (`shard` is the shard number or `meta`).
pub const RAFT_TERM: &str = "ringkv_raft_term";
pub const RAFT_COMMIT_INDEX: &str = "ringkv_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "ringkv_raft_applied_index";
pub const RAFT_LAST_LOG_INDEX: &str = "ringkv_raft_last_log_index";
pub const RAFT_IS_LEADER: &str = "ringkv_raft_is_leader";
pub const RAFT_LEADER_CHANGES: &str = "ringkv_raft_leader_changes_total";
pub const RAFT_PROPOSAL_DURATION: &str = "ringkv_raft_proposal_duration_seconds";
pub const RAFT_GROUPS: &str = "ringkv_raft_groups_hosted";
/// Shard groups asleep on this node, as leader or follower (`cluster::quiescence`).
pub const RAFT_GROUPS_QUIESCENT: &str = "ringkv_raft_groups_quiescent";
/// Raft messages this node refused without handling them, by `reason`
/// (`no_group`: for a group it does not host; `foreign_cluster`).
pub const RAFT_MESSAGES_DROPPED: &str = "ringkv_raft_messages_dropped_total";
/// Linearizable read barriers, by `kind`: `lease` (served under the leader's
/// read lease) or `read_index` (a heartbeat round to a quorum).
pub const READ_BARRIERS: &str = "ringkv_read_barriers_total";
/// Batches written on the peer streams, and the messages they carried: the
/// ratio is the mean batch size (`raft::peer_stream`).
pub const RAFT_BATCHES_SENT: &str = "ringkv_raft_batches_sent_total";
pub const RAFT_BATCHED_MESSAGES: &str = "ringkv_raft_batched_messages_total";
pub const STORAGE_SIZE: &str = "ringkv_storage_size_bytes";
pub const STORAGE_PART_SIZE: &str = "ringkv_storage_part_bytes";
pub use ringkv_storage::{STORAGE_FSYNC_DURATION, STORAGE_GROUP_COMMIT_OPS};
/// Hook counters and run time by `hook`.
pub const HOOK_CALLS: &str = "ringkv_hook_calls_total";
pub const HOOK_REJECTS: &str = "ringkv_hook_rejects_total";
pub const HOOK_ERRORS: &str = "ringkv_hook_errors_total";
pub const HOOK_LIMIT_HITS: &str = "ringkv_hook_limit_hits_total";
pub use ringkv_hooks::HOOK_DURATION;
/// Shadow version calls by `hook`, `version` and `outcome` (`agree`,
/// `disagree`, `error`, `limit`, `skipped`).
pub const HOOK_SHADOW_CALLS: &str = "ringkv_hook_shadow_calls_total";
/// Times a Wasm hook's memory grew during a call on this node: each makes
/// the next call in that slot pay an `mprotect` (guest-sdk/ABI.md).
pub const HOOK_WASM_MEMORY_GROWS: &str = "ringkv_hook_wasm_memory_grows_total";
/// Shards whose replica set is changing, and shards below the replication factor.
pub const SHARDS_MOVING: &str = "ringkv_shards_moving";
pub const SHARDS_UNDER_REPLICATED: &str = "ringkv_shards_under_replicated";
/// Replica moves the rebalancer finished, by `result` (`ok`, `failed`).
pub const REBALANCE_MOVES: &str = "ringkv_rebalance_moves_total";
pub const AUTO_RESIZES: &str = "ringkv_auto_resizes_total";
/// Moves in the rebalancer's current round (0 when in place).
pub const REBALANCE_PENDING: &str = "ringkv_rebalance_pending_moves";
/// Re-sharding after a partition function change: keys this node's shard
/// leaders scanned and moved, and shards it finished, in the running job.
pub const RESHARD_SCANNED: &str = "ringkv_reshard_keys_scanned_total";
pub const RESHARD_MOVED: &str = "ringkv_reshard_keys_moved_total";
pub const RESHARD_SHARDS_DONE: &str = "ringkv_reshard_shards_done_total";

/// Latency buckets from 50µs to 10s: wide enough for a cached eventual read
/// and for a write that waited out a leader election.
const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The client key requests (Kv RPCs) this process served, for
/// `Cluster/Load`: a count and a latency histogram over [`LATENCY_BUCKETS`].
/// Kept apart from the `metrics` recorder, whose histograms are summaries
/// drained on every scrape. Process-wide like that recorder: one node per
/// process, except in tests that run several in one.
struct Load {
    requests: AtomicU64,
    /// Requests per bucket (not cumulative); the last one is past every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

static LOAD: Load =
    Load { requests: AtomicU64::new(0), buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1] };

fn record_load(seconds: f64) {
    LOAD.requests.fetch_add(1, Ordering::Relaxed);
    let i = LATENCY_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(LATENCY_BUCKETS.len());
    LOAD.buckets[i].fetch_add(1, Ordering::Relaxed);
}

/// This process's client key requests so far, as `Cluster/Load` answers.
pub fn load(node_id: u64) -> ringkv_client::proto::LoadResponse {
    let mut bucket_le = LATENCY_BUCKETS.to_vec();
    bucket_le.push(f64::INFINITY);
    let mut below = 0;
    let bucket_count = LOAD
        .buckets
        .iter()
        .map(|b| {
            below += b.load(Ordering::Relaxed);
            below
        })
        .collect();
    ringkv_client::proto::LoadResponse {
        node_id,
        requests: LOAD.requests.load(Ordering::Relaxed),
        bucket_le,
        bucket_count,
    }
}

/// Installs the process-wide recorder (once) and returns its handle. Metrics
/// recorded before this call are dropped, so `serve` calls it first thing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORAGE_GROUP_COMMIT_OPS.into()), BATCH_BUCKETS))
            .expect("the bucket lists are constant and non-empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder is only installed by embedders (or tests) that
        // collect metrics their own way; ours then renders nothing, which is
        // what they asked for.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        let upkeep = handle.clone();
        // Histograms buffer samples until rendered; drain them even when
        // nobody scrapes, so memory stays bounded.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "gRPC requests served, by rpc, consistency and gRPC status code");
    describe_counter!(REQUEST_ERRORS, "gRPC requests that ended with a status other than OK");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "gRPC request latency at this node");
    describe_counter!(FORWARDED, "requests this node sent on to the leader or another replica");
    describe_counter!(FORWARDED_SERVED, "requests another node forwarded to this one");
    describe_gauge!(RAFT_TERM, "current Raft term of each hosted group");
    describe_gauge!(RAFT_COMMIT_INDEX, "commit index (on followers: the applied index, a lower bound)");
    describe_gauge!(RAFT_APPLIED_INDEX, "last log index applied to the state machine");
    describe_gauge!(RAFT_LAST_LOG_INDEX, "last log index stored");
    describe_gauge!(RAFT_IS_LEADER, "1 when this node leads the group");
    describe_counter!(RAFT_LEADER_CHANGES, "times this node saw the group's leader change");
    describe_histogram!(RAFT_PROPOSAL_DURATION, Unit::Seconds, "time from proposal to applied result, at the leader");
    describe_gauge!(RAFT_GROUPS, "Raft groups hosted by this node, meta group included");
    describe_gauge!(RAFT_GROUPS_QUIESCENT, "shard groups asleep on this node (no ticks), as leader or follower");
    describe_counter!(RAFT_MESSAGES_DROPPED, "Raft messages refused unhandled, by reason (no_group, foreign_cluster)");
    describe_counter!(READ_BARRIERS, "linearizable read barriers, by kind: lease or read_index");
    describe_counter!(RAFT_BATCHES_SENT, "batches of Raft messages written on the peer streams");
    describe_counter!(
        RAFT_BATCHED_MESSAGES,
        "Raft messages sent in those batches (AppendEntries and Vote of every group)"
    );
    describe_gauge!(STORAGE_SIZE, Unit::Bytes, "disk space used by the node's data directory");
    describe_gauge!(STORAGE_PART_SIZE, Unit::Bytes, "disk space of one keyspace's tables, or of the journals");
    describe_histogram!(STORAGE_FSYNC_DURATION, Unit::Seconds, "group commit: writing the batch and fsyncing the log");
    describe_histogram!(STORAGE_GROUP_COMMIT_OPS, "log and state-machine ops per group commit");
    describe_counter!(HOOK_CALLS, "hook calls on this node, by hook");
    describe_counter!(HOOK_REJECTS, "writes a validate hook rejected");
    describe_counter!(HOOK_ERRORS, "hook calls that failed (runtime error, bad return value)");
    describe_counter!(HOOK_LIMIT_HITS, "hook calls stopped by a time, memory or instruction limit");
    describe_histogram!(HOOK_DURATION, Unit::Seconds, "hook call run time");
    describe_counter!(HOOK_WASM_MEMORY_GROWS, "times a Wasm hook's memory grew during a call on this node");
    describe_counter!(HOOK_SHADOW_CALLS, "shadow hook versions' calls on this node, by how they compared");
    describe_gauge!(SHARDS_MOVING, "shards whose replica set is being changed");
    describe_gauge!(SHARDS_UNDER_REPLICATED, "shards with fewer live voters than the replication factor");
    describe_counter!(REBALANCE_MOVES, "replica moves finished by this node's rebalancer, by result");
    describe_counter!(
        AUTO_RESIZES,
        "shard splits and merges this node started as meta leader for size or load, by reason"
    );
    describe_gauge!(REBALANCE_PENDING, "replica moves in the rebalancer's current round");
    describe_counter!(RESHARD_SCANNED, "keys scanned by this node's re-shard passes");
    describe_counter!(RESHARD_MOVED, "keys moved to their new shard by this node's re-shard passes");
    describe_counter!(RESHARD_SHARDS_DONE, "shards whose re-shard pass this node finished");
}

/// Counts one re-shard batch of a shard: `scanned` and `moved` keys more;
/// `done` when the batch finished the shard.
pub fn record_reshard_batch(scanned: u64, moved: u64, done: bool) {
    counter!(RESHARD_SCANNED).increment(scanned);
    counter!(RESHARD_MOVED).increment(moved);
    if done {
        counter!(RESHARD_SHARDS_DONE).increment(1);
    }
}

/// The `shard` label of a group.
pub fn shard_label(group: GroupId) -> String {
    if group == META_GROUP {
        "meta".to_string()
    } else {
        (group - 1).to_string()
    }
}

/// Times one proposal at the leader.
pub fn record_proposal(group: GroupId, elapsed: Duration) {
    histogram!(RAFT_PROPOSAL_DURATION, "shard" => shard_label(group)).record(elapsed.as_secs_f64());
}

/// Counts a leader change seen by this node.
pub fn record_leader_change(group: GroupId) {
    counter!(RAFT_LEADER_CHANGES, "shard" => shard_label(group)).increment(1);
}

/// Which consistency a key request asked for, filled in by the Kv service
/// and read by [`GrpcMetricsLayer`] once the reply is out.
#[derive(Clone, Default)]
pub struct ConsistencySlot(Arc<AtomicU8>);

impl ConsistencySlot {
    const LINEARIZABLE: u8 = 1;
    const EVENTUAL: u8 = 2;

    /// Records the level a request ran at, if the request carries a slot.
    pub fn set<T>(req: &tonic::Request<T>, linearizable: bool) {
        if let Some(slot) = req.extensions().get::<ConsistencySlot>() {
            let v = if linearizable { Self::LINEARIZABLE } else { Self::EVENTUAL };
            slot.0.store(v, Ordering::Relaxed);
        }
    }

    fn label(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            Self::LINEARIZABLE => "linearizable",
            Self::EVENTUAL => "eventual",
            _ => "none",
        }
    }
}

/// Counts and times every gRPC request by method, consistency and status.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let rpc = rpc_label(req.uri().path());
        let slot = ConsistencySlot::default();
        req.extensions_mut().insert(slot.clone());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => status_code(resp),
                Err(_) => tonic::Code::Unknown,
            };
            let consistency = slot.label();
            let code_label = code_label(code);
            counter!(REQUESTS, "rpc" => rpc, "consistency" => consistency, "code" => code_label).increment(1);
            if code != tonic::Code::Ok {
                counter!(REQUEST_ERRORS, "rpc" => rpc, "consistency" => consistency, "code" => code_label).increment(1);
            }
            let seconds = started.elapsed().as_secs_f64();
            histogram!(REQUEST_DURATION, "rpc" => rpc, "consistency" => consistency).record(seconds);
            if rpc.starts_with("Kv/") {
                record_load(seconds);
            }
            result
        })
    }
}

/// The gRPC status of a reply: an error reply carries it in its headers
/// (tonic also leaves the `Status` in the extensions); a successful unary
/// reply only in its trailers, which come later and always say OK.
fn status_code<R>(resp: &http::Response<R>) -> tonic::Code {
    if let Some(status) = resp.extensions().get::<tonic::Status>() {
        return status.code();
    }
    match resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()) {
        Some(code) => tonic::Code::from_i32(code),
        None => tonic::Code::Ok,
    }
}

/// `/ringkv.v1.Kv/Put` → `Kv/Put`. Paths that name no known service are
/// folded into `other`, so a scanner cannot blow up the label set.
fn rpc_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/ringkv.v1.Kv/Put",
        "/ringkv.v1.Kv/Get",
        "/ringkv.v1.Kv/Delete",
        "/ringkv.v1.Kv/Scan",
        "/ringkv.v1.Cluster/Status",
        "/ringkv.v1.Cluster/AddNode",
        "/ringkv.v1.Cluster/RemoveNode",
        "/ringkv.v1.Cluster/Ring",
        "/ringkv.v1.Cluster/Load",
        "/ringkv.v1.Hooks/Deploy",
        "/ringkv.v1.Hooks/List",
        "/ringkv.v1.Hooks/Get",
        "/ringkv.v1.Hooks/Remove",
        "/ringkv.v1.Hooks/Rollback",
        "/ringkv.v1.Hooks/Test",
        "/ringkv.v1.Hooks/Promote",
        "/ringkv.v1.Raft/AppendEntries",
        "/ringkv.v1.Raft/Vote",
        "/ringkv.v1.Raft/InstallSnapshot",
        "/ringkv.v1.Raft/ChangeMembership",
        "/ringkv.v1.Raft/Forward",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ];
    match KNOWN.iter().find(|k| **k == path) {
        Some(k) => k.strip_prefix("/ringkv.v1.").unwrap_or(&k[1..]),
        None => "other",
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_short_and_bounded() {
        assert_eq!(rpc_label("/ringkv.v1.Kv/Put"), "Kv/Put");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        assert_eq!(rpc_label("/ringkv.v1.Kv/Nope"), "other");
        assert_eq!(rpc_label("/../../etc/passwd"), "other");
    }

    #[test]
    fn status_comes_from_the_error_or_defaults_to_ok() {
        let err: http::Response<()> = tonic::Status::unavailable("x").into_http();
        assert_eq!(status_code(&err), tonic::Code::Unavailable);
        let ok = http::Response::new(());
        assert_eq!(status_code(&ok), tonic::Code::Ok);
        let mut hdr = http::Response::new(());
        hdr.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&hdr), tonic::Code::NotFound);
    }

    #[test]
    fn load_histograms_are_cumulative_and_end_at_infinity() {
        let before = load(7);
        record_load(0.003);
        record_load(60.0);
        let after = load(7);
        assert_eq!(after.node_id, 7);
        assert_eq!(after.bucket_le.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(after.bucket_le.last(), Some(&f64::INFINITY));
        assert!(after.bucket_count.windows(2).all(|w| w[0] <= w[1]), "cumulative: {:?}", after.bucket_count);
        // Other tests may serve requests meanwhile: compare what grew at least.
        assert!(after.requests >= before.requests + 2);
        let at = |l: &ringkv_client::proto::LoadResponse, le: f64| {
            l.bucket_count[l.bucket_le.iter().position(|b| *b == le).expect("a bound")]
        };
        assert!(at(&after, 0.005) > at(&before, 0.005), "3 ms is under the 5 ms bound");
        assert!(
            after.bucket_count.last() > after.bucket_count.get(LATENCY_BUCKETS.len() - 1),
            "60 s is past the last finite bound"
        );
    }

    #[test]
    fn shard_labels_name_the_meta_group() {
        assert_eq!(shard_label(META_GROUP), "meta");
        assert_eq!(shard_label(crate::ids::shard_group(7)), "7");
    }
}
