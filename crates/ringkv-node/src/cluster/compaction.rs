//! Disk space of quiet groups: their Raft logs are purged, and the node's
//! fjall database is flushed and compacted once nothing is written.
//!
//! openraft compacts a group's log only after `--snapshot-every` entries,
//! keeping `--keep-logs` behind the snapshot. A group that goes quiet before
//! that keeps its whole log on disk for as long as it stays quiet: with
//! large values that was as much again as the data itself. So every
//! [`ROUND`] this worker looks at each group on the node, and one that
//! appended nothing for a whole round and has applied everything gets a
//! snapshot (cheap: see `raft::snapshot`) and then a purge of its log up to
//! the last entry that every replica holds. A leader knows what each
//! follower holds; a follower purges what it has applied, which costs
//! nothing should it lead later, since a replica that lacks a purged entry
//! is sent a snapshot. While the node's log tables exceed
//! [`LOG_SPACE_LIMIT`], busy groups are purged the same way each round: the
//! log is then bounded by size, not only by openraft's entry count. Then
//! [`QuietCompaction`] flushes the memtables so fjall can delete old
//! journals, and compacts the purged entries away.

use std::collections::BTreeMap;
use std::time::Duration;

use super::workers::Worker;
use super::Node;
use crate::storage::{GroupId, QuietCompaction};

/// How often the worker looks. A quiet group's log is gone within three
/// rounds (seen idle, snapshot, purge), and its space within two more (the
/// node quiet for a whole round after the purge, then the compaction).
pub const ROUND: Duration = Duration::from_secs(2);

/// While the node's Raft log tables take more than this, every group's log
/// is purged each round up to what all its replicas hold, busy or not: with
/// large values, `--snapshot-every` entries can be gigabytes.
pub const LOG_SPACE_LIMIT: u64 = 64 * 1024 * 1024;

/// What to do next for one group's log.
#[derive(Debug, PartialEq, Eq)]
enum LogStep {
    Nothing,
    Snapshot,
    Purge(u64),
}

/// `last_log` and `applied` as openraft reports them now, `seen_last_log`
/// a round ago; `held_by_all` is the highest index every replica holds as
/// far as this node knows (`applied` on a follower); `over_limit` says the
/// node's log tables are above [`LOG_SPACE_LIMIT`].
fn next_log_step(
    seen_last_log: Option<u64>,
    last_log: u64,
    applied: u64,
    snapshot: u64,
    purged: Option<u64>,
    held_by_all: u64,
    over_limit: bool,
) -> LogStep {
    let quiet = seen_last_log == Some(last_log) && applied == last_log;
    let target = held_by_all.min(applied);
    let purged = purged.unwrap_or(0);
    // Under load the target moves on every round: purge what the last
    // snapshot covers first, or a busy group would only ever snapshot.
    let upto = target.min(snapshot);
    if !(quiet || over_limit) || target <= purged {
        LogStep::Nothing
    } else if upto > purged {
        LogStep::Purge(upto)
    } else {
        LogStep::Snapshot
    }
}

impl Node {
    pub(super) async fn compaction_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        let mut seen: BTreeMap<GroupId, u64> = BTreeMap::new();
        let mut compaction = QuietCompaction::default();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(ROUND) => {}
            }
            w.round();
            let mut now_seen = BTreeMap::new();
            let mut settled = true;
            let over_limit = self.storage().raft_log().disk_space() > LOG_SPACE_LIMIT;
            for group in self.groups() {
                let m = group.raft.metrics().borrow().clone();
                let last_log = m.last_log_index.unwrap_or(0);
                let applied = m.last_applied.map_or(0, |l| l.index);
                let held_by_all = match &m.replication {
                    Some(followers) => followers
                        .iter()
                        .filter(|(id, _)| **id != self.id())
                        .map(|(_, matched)| matched.map_or(0, |l| l.index))
                        .min()
                        .unwrap_or(applied),
                    None => applied,
                };
                let step = next_log_step(
                    seen.get(&group.id).copied(),
                    last_log,
                    applied,
                    m.snapshot.map_or(0, |l| l.index),
                    m.purged.map(|l| l.index),
                    held_by_all,
                    over_limit,
                );
                now_seen.insert(group.id, last_log);
                if step != LogStep::Nothing {
                    // The purge writes; compacting before it lands would be wasted.
                    settled = false;
                }
                let result = match step {
                    LogStep::Nothing => continue,
                    LogStep::Snapshot => group.raft.trigger().snapshot().await,
                    LogStep::Purge(upto) => group.raft.trigger().purge_log(upto).await,
                };
                tracing::debug!(group = group.id, ?step, "quiet group's log");
                if let Err(e) = result {
                    tracing::debug!(group = group.id, error = %e, "compacting a quiet group's log");
                    w.failed(&e);
                }
            }
            seen = now_seen;
            let storage = self.storage().clone();
            let started = std::time::Instant::now();
            let (result, back) = storage.blocking(move |s| (compaction.round(s, settled), compaction)).await;
            compaction = back;
            match result {
                Ok(true) => tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "node quiet: flushed and compacted to give disk space back"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "compacting a quiet node's storage");
                    w.failed(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_that_appended_in_the_last_round_is_left_alone() {
        assert_eq!(next_log_step(None, 10, 10, 0, None, 10, false), LogStep::Nothing, "first sight");
        assert_eq!(next_log_step(Some(9), 10, 10, 0, None, 10, false), LogStep::Nothing, "appended since");
        assert_eq!(next_log_step(Some(10), 10, 9, 0, None, 10, false), LogStep::Nothing, "not all applied");
    }

    #[test]
    fn a_quiet_group_is_snapshotted_then_purged_to_what_every_replica_holds() {
        assert_eq!(next_log_step(Some(10), 10, 10, 2, Some(2), 10, false), LogStep::Snapshot);
        assert_eq!(next_log_step(Some(10), 10, 10, 4, Some(2), 10, false), LogStep::Purge(4), "what is snapshotted");
        assert_eq!(next_log_step(Some(10), 10, 10, 10, Some(2), 10, false), LogStep::Purge(10));
        assert_eq!(next_log_step(Some(10), 10, 10, 10, Some(2), 7, false), LogStep::Purge(7), "a lagging follower");
        assert_eq!(next_log_step(Some(10), 10, 10, 10, Some(7), 7, false), LogStep::Nothing, "already purged");
        assert_eq!(next_log_step(Some(0), 0, 0, 0, None, 0, false), LogStep::Nothing, "empty log");
    }

    #[test]
    fn over_the_space_limit_a_busy_group_is_purged_to_what_every_replica_holds() {
        // Appending (last log 20, seen 10) and applying behind (15).
        assert_eq!(next_log_step(Some(10), 20, 15, 2, Some(2), 18, true), LogStep::Snapshot);
        assert_eq!(
            next_log_step(Some(10), 20, 15, 4, Some(2), 18, true),
            LogStep::Purge(4),
            "the last snapshot's part"
        );
        assert_eq!(next_log_step(Some(10), 20, 15, 15, Some(2), 18, true), LogStep::Purge(15), "not past applied");
        assert_eq!(next_log_step(Some(10), 20, 15, 15, Some(2), 12, true), LogStep::Purge(12), "nor past a follower");
    }
}
