//! The cluster's partition function as the meta group records it, and the
//! re-shard job that a change of it starts.
//!
//! The state is plain data with pure transitions, applied identically by
//! every replica of the meta group:
//! - [`PartitionState::set`] makes a new partition function active (or
//!   none: the whole key routes) and opens a [`ReshardJob`] from the old one
//!   to the new one, under a new epoch. A second change while a job runs is
//!   refused.
//! - [`PartitionState::record_progress`] keeps each shard's progress; when
//!   every shard is done the job closes and the old function is dropped.
//!
//! Compiling and running the functions is the hooks layer's business; moving
//! keys is the cluster's (`cluster::partitioning`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ShardId;
use crate::hooks::HookSpec;

/// The partition function and the re-shard job, if one runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The function new writes route by; `None`: the whole key.
    pub active: Option<HookSpec>,
    /// Raised by every change of the function.
    pub epoch: u64,
    /// The highest version given to a partition function.
    pub last_version: u64,
    /// The running job: keys still move from `from` to `to`.
    pub job: Option<ReshardJob>,
    /// The last job that finished.
    pub last_job: Option<JobSummary>,
    /// Counts changes to how keys route (a new function, a job closing).
    /// A node serving a key checks that the node that routed it did so
    /// with the same generation.
    pub generation: u64,
}

/// Moving every key whose shard changed from one partition function to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardJob {
    pub epoch: u64,
    /// The function keys route by before the job (`None`: the whole key).
    pub from: Option<HookSpec>,
    pub to: Option<HookSpec>,
    /// The deploying node's clock, ms since the Unix epoch.
    pub started_ms: u64,
    /// Progress reported by each shard's leader so far.
    pub shards: BTreeMap<ShardId, ShardProgress>,
}

/// One shard's part of a re-shard job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    /// Keys of the shard looked at so far.
    pub scanned: u64,
    /// Keys written to their new shard and deleted here.
    pub moved: u64,
    /// The last key handled: a new leader resumes after it.
    pub cursor: Option<Vec<u8>>,
    pub done: bool,
}

/// A finished job, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub epoch: u64,
    pub from: String,
    pub to: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub scanned: u64,
    pub moved: u64,
}

/// How a partition function is named in messages and status.
pub fn describe(spec: Option<&HookSpec>) -> String {
    match spec {
        Some(s) => format!("{} v{}", s.name, s.version),
        None => "none (whole key)".to_string(),
    }
}

fn same_function(a: Option<&HookSpec>, b: Option<&HookSpec>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.name == b.name && a.sha256 == b.sha256 && a.limits == b.limits,
        _ => false,
    }
}

impl ReshardJob {
    pub fn shards_done(&self) -> usize {
        self.shards.values().filter(|p| p.done).count()
    }

    pub fn totals(&self) -> (u64, u64) {
        self.shards.values().fold((0, 0), |(s, m), p| (s + p.scanned, m + p.moved))
    }
}

impl PartitionState {
    /// Makes `spec` the partition function (`None`: the whole key) and
    /// opens the job that moves keys to it. Returns the new epoch, or the
    /// current one when `spec` is already active. Refused while a job runs.
    pub fn set(&mut self, spec: Option<HookSpec>, now_ms: u64, shards: u32) -> Result<u64, String> {
        if let Some(job) = &self.job {
            return Err(format!(
                "a re-shard job is still running (epoch {}, from {} to {}: {} of {shards} shards done); \
                 wait for it to finish before changing the partition function again (ringkv cluster reshard status)",
                job.epoch,
                describe(job.from.as_ref()),
                describe(job.to.as_ref()),
                job.shards_done(),
            ));
        }
        if same_function(self.active.as_ref(), spec.as_ref()) {
            return Ok(self.epoch);
        }
        let spec = match spec {
            Some(mut s) => {
                self.last_version = self.last_version.checked_add(1).ok_or("no partition function versions left")?;
                s.version = self.last_version;
                Some(s)
            }
            None => None,
        };
        self.epoch += 1;
        self.job = Some(ReshardJob {
            epoch: self.epoch,
            from: self.active.take(),
            to: spec.clone(),
            started_ms: now_ms,
            shards: BTreeMap::new(),
        });
        self.active = spec;
        self.generation += 1;
        Ok(self.epoch)
    }

    /// Records one shard's progress in job `epoch` (reports from an old job
    /// or an old leader that would move progress backwards are ignored).
    /// Closes the job once all `shards` are done. True when this closed it.
    pub fn record_progress(
        &mut self,
        epoch: u64,
        shard: ShardId,
        progress: ShardProgress,
        shards: u32,
        now_ms: u64,
    ) -> bool {
        let Some(job) = self.job.as_mut().filter(|j| j.epoch == epoch) else { return false };
        let entry = job.shards.entry(shard).or_default();
        if entry.done || progress.scanned < entry.scanned {
            return false;
        }
        *entry = progress;
        if (0..shards).any(|s| !job.shards.get(&s).is_some_and(|p| p.done)) {
            return false;
        }
        let (scanned, moved) = job.totals();
        self.last_job = Some(JobSummary {
            epoch: job.epoch,
            from: describe(job.from.as_ref()),
            to: describe(job.to.as_ref()),
            started_ms: job.started_ms,
            finished_ms: now_ms,
            scanned,
            moved,
        });
        self.job = None;
        self.generation += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{FailPolicy, HookKind, HookLimits, Stage};

    fn spec(name: &str, sha: &str) -> HookSpec {
        HookSpec {
            name: name.into(),
            kind: HookKind::Wasm,
            stage: Stage::Partition,
            prefix: Vec::new(),
            source: Vec::new(),
            version: 0,
            sha256: sha.into(),
            fail_policy: FailPolicy::Closed,
            limits: HookLimits::default(),
            deployed_at_ms: 0,
        }
    }

    fn done(scanned: u64) -> ShardProgress {
        ShardProgress { scanned, moved: scanned / 2, cursor: None, done: true }
    }

    #[test]
    fn a_change_opens_a_job_that_closes_when_every_shard_is_done() {
        let mut st = PartitionState::default();
        assert_eq!(st.set(Some(spec("tenants", "a")), 1000, 2), Ok(1));
        let job = st.job.clone().expect("job opened");
        assert_eq!((job.epoch, job.from.is_none(), st.generation), (1, true, 1));
        assert_eq!(st.active.as_ref().map(|s| s.version), Some(1));
        assert!(!st.record_progress(1, 0, done(4), 2, 1100));
        // A report from an old job changes nothing.
        assert!(!st.record_progress(0, 1, done(4), 2, 1100));
        assert!(st.record_progress(1, 1, done(6), 2, 1200));
        assert!(st.job.is_none());
        assert_eq!(st.generation, 2);
        let summary = st.last_job.clone().expect("summary");
        assert_eq!((summary.scanned, summary.moved, summary.finished_ms), (10, 5, 1200));
        assert_eq!(summary.from, "none (whole key)");
    }

    #[test]
    fn a_second_change_while_a_job_runs_is_refused_with_the_reason() {
        let mut st = PartitionState::default();
        st.set(Some(spec("tenants", "a")), 0, 4).expect("first change");
        let err = st.set(None, 0, 4).expect_err("refused");
        assert!(err.contains("re-shard job is still running"), "{err}");
        assert!(err.contains("0 of 4 shards done"), "{err}");
    }

    #[test]
    fn setting_the_active_function_again_is_a_no_op() {
        let mut st = PartitionState::default();
        assert_eq!(st.set(None, 0, 4), Ok(0), "none is already active");
        assert!(st.job.is_none());
        st.set(Some(spec("tenants", "a")), 0, 1).expect("change");
        st.record_progress(1, 0, done(1), 1, 0);
        assert_eq!(st.set(Some(spec("tenants", "a")), 0, 1), Ok(1));
        assert!(st.job.is_none());
        assert_eq!(st.set(Some(spec("tenants", "b")), 0, 1), Ok(2), "new code is a change");
        assert_eq!(st.active.as_ref().map(|s| s.version), Some(2));
    }

    #[test]
    fn progress_never_moves_backwards() {
        let mut st = PartitionState::default();
        st.set(None, 0, 2).expect("no-op");
        st.set(Some(spec("t", "a")), 0, 2).expect("change");
        let p = |scanned| ShardProgress { scanned, moved: 0, cursor: None, done: false };
        st.record_progress(1, 0, p(10), 2, 0);
        st.record_progress(1, 0, p(5), 2, 0);
        assert_eq!(st.job.as_ref().map(|j| j.shards[&0].scanned), Some(10));
    }
}
