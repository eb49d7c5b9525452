//! Scrape-time gauges: the state that already lives in Raft, storage and
//! the hook registry, copied into the metric families of
//! [`crate::telemetry`] when `/metrics` is read rather than mirrored on
//! every change.

use metrics::{counter, gauge};

use super::Node;
use crate::telemetry::{
    shard_label, HOOK_CALLS, HOOK_ERRORS, HOOK_LIMIT_HITS, HOOK_REJECTS, HOOK_SHADOW_CALLS, HOOK_WASM_MEMORY_GROWS,
    RAFT_APPLIED_INDEX, RAFT_COMMIT_INDEX, RAFT_GROUPS, RAFT_IS_LEADER, RAFT_LAST_LOG_INDEX, RAFT_TERM, SHARDS_MOVING,
    SHARDS_UNDER_REPLICATED, STORAGE_PART_SIZE, STORAGE_SIZE,
};

/// Renders every family in Prometheus text format, after copying the state
/// that lives elsewhere into gauges.
pub async fn render(node: &Node) -> String {
    let handle = crate::telemetry::install();
    refresh(node).await;
    handle.render()
}

async fn refresh(node: &Node) {
    let groups = node.groups();
    gauge!(RAFT_GROUPS).set(groups.len() as f64);
    for g in &groups {
        let m = g.raft.metrics().borrow().clone();
        let shard = shard_label(g.id);
        let applied = m.last_applied.map_or(0, |l| l.index);
        gauge!(RAFT_TERM, "shard" => shard.clone()).set(m.current_term as f64);
        gauge!(RAFT_APPLIED_INDEX, "shard" => shard.clone()).set(applied as f64);
        gauge!(RAFT_LAST_LOG_INDEX, "shard" => shard.clone()).set(m.last_log_index.unwrap_or(0) as f64);
        gauge!(RAFT_COMMIT_INDEX, "shard" => shard.clone()).set(crate::raft::commit_index(&m) as f64);
        gauge!(RAFT_IS_LEADER, "shard" => shard).set(if m.current_leader == Some(node.id()) { 1.0 } else { 0.0 });
    }
    let storage = node.storage().clone();
    // The parts are every keyspace and the journals, so they add up to the total.
    if let Ok(Ok(parts)) = tokio::task::spawn_blocking(move || storage.disk_space_by_part()).await {
        gauge!(STORAGE_SIZE).set(parts.iter().map(|(_, bytes)| bytes).sum::<u64>() as f64);
        for (part, bytes) in parts {
            gauge!(STORAGE_PART_SIZE, "part" => part).set(bytes as f64);
        }
    }
    if let Ok(routes) = node.shard_routes().await {
        gauge!(SHARDS_MOVING).set(routes.iter().filter(|r| r.moving).count() as f64);
        gauge!(SHARDS_UNDER_REPLICATED).set(routes.iter().filter(|r| r.under_replicated).count() as f64);
    }
    for (name, s) in node.hooks().all_stats() {
        counter!(HOOK_CALLS, "hook" => name.clone()).absolute(s.calls);
        counter!(HOOK_REJECTS, "hook" => name.clone()).absolute(s.rejects);
        counter!(HOOK_ERRORS, "hook" => name.clone()).absolute(s.errors);
        counter!(HOOK_LIMIT_HITS, "hook" => name).absolute(s.limit_hits);
    }
    counter!(HOOK_WASM_MEMORY_GROWS).absolute(crate::hooks::wasm::memory_grows());
    for (name, version, s) in node.hooks().all_shadow_stats() {
        let outcomes = [
            ("agree", s.agreements),
            ("disagree", s.disagreements),
            ("error", s.calls.errors),
            ("limit", s.calls.limit_hits),
            ("skipped", s.skipped),
        ];
        for (outcome, n) in outcomes {
            counter!(HOOK_SHADOW_CALLS, "hook" => name.clone(), "version" => version.to_string(), "outcome" => outcome)
                .absolute(n);
        }
    }
}
