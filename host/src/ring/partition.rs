//! The cluster's partition function as the meta group records it, and the
//! re-shard job that a change of it starts.
//!
//! The state is plain data with pure transitions, applied identically by
//! every replica of the meta group:
//! - [`PartitionState::set`] makes a new partition function active (or
//!   none: the whole key routes) and opens a [`ReshardJob`] from the old one
//!   to the new one, under a new epoch. A change while a job runs aborts
//!   that job: the new job moves keys from *every* function a key may still
//!   sit under (the aborted job's `from` and `to`, and what it had itself
//!   inherited), so an operator can always back out of a job that cannot
//!   progress (see `cluster::partitioning` for why that keeps every key
//!   reachable).
//! - [`PartitionState::record_progress`] keeps each shard's progress; when
//!   every shard is done the job closes and the old functions are dropped.
//! - [`PartitionState::record_stall`] notes why a shard's mover cannot
//!   progress (the key and the error), so every node reports the same
//!   thing; the shard's next progress clears it.
//!
//! The state is stored postcard-encoded in the meta group, which has no
//! optional fields: fields added later go at the end and
//! [`PartitionState::decode`] reads a state stored before they existed.
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
    /// While a job runs that aborted others: the functions (besides
    /// `job.from`) a key may still sit under, newest first (`None`: the
    /// whole key).
    pub also_from: Vec<Option<HookSpec>>,
    /// Why shards of the running job cannot progress, by shard.
    pub stalls: BTreeMap<ShardId, ReshardStall>,
}

/// [`PartitionState`] as stored before jobs could be aborted.
#[derive(Deserialize)]
struct PartitionStateV1 {
    active: Option<HookSpec>,
    epoch: u64,
    last_version: u64,
    job: Option<ReshardJob>,
    last_job: Option<JobSummary>,
    generation: u64,
}

/// A shard whose mover stopped at a key it cannot move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardStall {
    /// The job it belongs to.
    pub epoch: u64,
    pub key: Vec<u8>,
    pub error: String,
    /// When it was first reported (the reporting leader's clock).
    pub since_ms: u64,
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

/// A key as messages show it: printable ASCII as is, other bytes escaped.
pub fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

impl PartitionState {
    /// Reads a stored state, also one stored before the fields added last.
    pub fn decode(raw: &[u8]) -> Result<PartitionState, postcard::Error> {
        match postcard::from_bytes::<PartitionState>(raw) {
            Ok(s) => Ok(s),
            Err(new) => match postcard::from_bytes::<PartitionStateV1>(raw) {
                Ok(v1) => Ok(PartitionState {
                    active: v1.active,
                    epoch: v1.epoch,
                    last_version: v1.last_version,
                    job: v1.job,
                    last_job: v1.last_job,
                    generation: v1.generation,
                    also_from: Vec::new(),
                    stalls: BTreeMap::new(),
                }),
                Err(_) => Err(new),
            },
        }
    }

    /// Every function a key may sit under besides the active one while the
    /// job runs, newest first (empty when no job runs).
    pub fn from_functions(&self) -> Vec<Option<&HookSpec>> {
        match &self.job {
            Some(job) => std::iter::once(job.from.as_ref()).chain(self.also_from.iter().map(Option::as_ref)).collect(),
            None => Vec::new(),
        }
    }

    /// The running job's `from` side as status shows it.
    pub fn describe_from(&self) -> Option<String> {
        self.job.as_ref()?;
        Some(self.from_functions().into_iter().map(describe).collect::<Vec<_>>().join(" + "))
    }

    /// Makes `spec` the partition function (`None`: the whole key) and
    /// opens the job that moves keys to it. Returns the new epoch, or the
    /// current one when `spec` is already active. A running job is aborted:
    /// the new job's keys may sit under any function of the old one.
    pub fn set(&mut self, spec: Option<HookSpec>, now_ms: u64) -> Result<u64, String> {
        if same_function(self.active.as_ref(), spec.as_ref()) {
            return Ok(self.epoch);
        }
        // The functions keys may still sit under once `spec` is active:
        // the active one, and while a job runs every function of its from
        // side; newest first, each once, none equal to `spec`.
        let mut older: Vec<Option<HookSpec>> = vec![self.active.clone()];
        if let Some(job) = self.job.take() {
            older.push(job.from);
            older.append(&mut self.also_from);
        }
        let mut from: Vec<Option<HookSpec>> = Vec::new();
        for f in older {
            if !same_function(f.as_ref(), spec.as_ref()) && !from.iter().any(|g| same_function(g.as_ref(), f.as_ref()))
            {
                from.push(f);
            }
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
        let mut from = from.into_iter();
        // Never empty: it holds the active function, which is not `spec`.
        let first = from.next().unwrap_or(None);
        self.also_from = from.collect();
        self.stalls.clear();
        self.job = Some(ReshardJob {
            epoch: self.epoch,
            from: first,
            to: spec.clone(),
            started_ms: now_ms,
            shards: BTreeMap::new(),
        });
        self.active = spec;
        self.generation += 1;
        Ok(self.epoch)
    }

    /// Records why `shard`'s mover in job `epoch` cannot progress. True
    /// when the state changed (a new stall, or a different key or error).
    pub fn record_stall(&mut self, epoch: u64, shard: ShardId, key: Vec<u8>, error: String, now_ms: u64) -> bool {
        let Some(job) = self.job.as_ref().filter(|j| j.epoch == epoch) else { return false };
        if job.shards.get(&shard).is_some_and(|p| p.done) {
            return false;
        }
        if self.stalls.get(&shard).is_some_and(|s| s.key == key && s.error == error) {
            return false;
        }
        self.stalls.insert(shard, ReshardStall { epoch, key, error, since_ms: now_ms });
        true
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
        if progress.done || progress.scanned > entry.scanned {
            self.stalls.remove(&shard);
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
        self.also_from.clear();
        self.stalls.clear();
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
        assert_eq!(st.set(Some(spec("tenants", "a")), 1000), Ok(1));
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
    fn a_change_while_a_job_runs_aborts_it_and_keeps_every_older_function() {
        let mut st = PartitionState::default();
        st.set(Some(spec("trapx", "a")), 0).expect("first change");
        assert!(st.record_stall(1, 2, b"x1".to_vec(), "trapped".into(), 5));
        assert!(!st.record_stall(1, 2, b"x1".to_vec(), "trapped".into(), 6), "the same stall again changes nothing");
        // Replacing the stuck function: keys may sit under none or trapx.
        assert_eq!(st.set(Some(spec("good", "b")), 10), Ok(2));
        let names = |st: &PartitionState| st.from_functions().into_iter().map(describe).collect::<Vec<_>>();
        assert_eq!(names(&st), vec!["trapx v1", "none (whole key)"]);
        assert!(st.stalls.is_empty(), "a new job starts without the old job's stalls");
        assert_eq!(st.generation, 2);
        // A stall of the aborted job is ignored.
        assert!(!st.record_stall(1, 2, b"x1".to_vec(), "trapped".into(), 11));
        // Back to the whole key: it leaves the from side, which keeps the rest.
        assert_eq!(st.set(None, 20), Ok(3));
        assert_eq!(names(&st), vec!["good v2", "trapx v1"]);
        assert_eq!(st.describe_from().as_deref(), Some("good v2 + trapx v1"));
        // Closing the job forgets them all.
        assert!(st.record_progress(3, 0, done(1), 1, 30));
        assert!(st.also_from.is_empty() && st.from_functions().is_empty());
    }

    #[test]
    fn removing_the_function_of_a_stuck_first_job_moves_keys_back_from_it() {
        let mut st = PartitionState::default();
        st.set(Some(spec("trapx", "a")), 0).expect("first change");
        assert_eq!(st.set(None, 10), Ok(2));
        let job = st.job.clone().expect("a new job");
        assert_eq!(
            (describe(job.from.as_ref()), describe(job.to.as_ref())),
            ("trapx v1".into(), "none (whole key)".into())
        );
        assert!(st.also_from.is_empty(), "the whole key is the job's target, not a place to look");
    }

    #[test]
    fn progress_clears_the_shards_stall() {
        let mut st = PartitionState::default();
        st.set(Some(spec("t", "a")), 0).expect("change");
        let p = |scanned| ShardProgress { scanned, moved: 0, cursor: None, done: false };
        st.record_progress(1, 0, p(10), 2, 0);
        st.record_stall(1, 0, b"k".to_vec(), "e".into(), 0);
        st.record_progress(1, 0, p(10), 2, 0);
        assert!(st.stalls.contains_key(&0), "no new key scanned: still stalled");
        st.record_progress(1, 0, p(11), 2, 0);
        assert!(st.stalls.is_empty());
    }

    #[test]
    fn a_state_stored_before_jobs_could_be_aborted_still_reads() {
        #[derive(Serialize)]
        struct V1<'a> {
            active: Option<HookSpec>,
            epoch: u64,
            last_version: u64,
            job: Option<ReshardJob>,
            last_job: Option<&'a JobSummary>,
            generation: u64,
        }
        let mut st = PartitionState::default();
        st.set(Some(spec("t", "a")), 0).expect("change");
        let old = V1 {
            active: st.active.clone(),
            epoch: st.epoch,
            last_version: st.last_version,
            job: st.job.clone(),
            last_job: None,
            generation: st.generation,
        };
        let raw = postcard::to_allocvec(&old).expect("encode");
        assert_eq!(PartitionState::decode(&raw).expect("decode"), st);
        let raw = postcard::to_allocvec(&st).expect("encode");
        assert_eq!(PartitionState::decode(&raw).expect("decode"), st);
    }

    #[test]
    fn setting_the_active_function_again_is_a_no_op() {
        let mut st = PartitionState::default();
        assert_eq!(st.set(None, 0), Ok(0), "none is already active");
        assert!(st.job.is_none());
        st.set(Some(spec("tenants", "a")), 0).expect("change");
        st.record_progress(1, 0, done(1), 1, 0);
        assert_eq!(st.set(Some(spec("tenants", "a")), 0), Ok(1));
        assert!(st.job.is_none());
        assert_eq!(st.set(Some(spec("tenants", "b")), 0), Ok(2), "new code is a change");
        assert_eq!(st.active.as_ref().map(|s| s.version), Some(2));
    }

    #[test]
    fn progress_never_moves_backwards() {
        let mut st = PartitionState::default();
        st.set(None, 0).expect("no-op");
        st.set(Some(spec("t", "a")), 0).expect("change");
        let p = |scanned| ShardProgress { scanned, moved: 0, cursor: None, done: false };
        st.record_progress(1, 0, p(10), 2, 0);
        st.record_progress(1, 0, p(5), 2, 0);
        assert_eq!(st.job.as_ref().map(|j| j.shards[&0].scanned), Some(10));
    }
}
