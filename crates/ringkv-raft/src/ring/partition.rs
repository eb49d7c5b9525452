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

use super::{ShardId, ShardMap};
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
    /// The shard ranges keys route by; `None`: the ring's `shards` equal
    /// ranges (a cluster that never split or merged a shard).
    pub map: Option<ShardMap>,
    /// While a resize job runs: the ranges before it (a key may still sit
    /// in its shard under them) and the change. `None` otherwise.
    pub resize: Option<Resize>,
}

/// A split or merge in progress: the job moves keys from `from_map` to the
/// active map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub from_map: ShardMap,
    pub change: ShardChange,
}

/// A change of the shard ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardChange {
    /// `shard` keeps `[first, at)`; the new shard `new_shard` gets the rest
    /// (`at` and `new_shard` are settled when the change is applied; `at`
    /// `None` asks for the middle of the range).
    Split { shard: ShardId, at: Option<u64>, new_shard: Option<ShardId> },
    /// `absorb`'s range joins its neighbour `keep`'s; `absorb` is retired.
    Merge { keep: ShardId, absorb: ShardId },
}

impl std::fmt::Display for ShardChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardChange::Split { shard, at, new_shard } => {
                write!(f, "split of shard {shard}")?;
                if let Some(at) = at {
                    write!(f, " at {at:#018x}")?;
                }
                match new_shard {
                    Some(n) => write!(f, " into shards {shard} and {n}"),
                    None => Ok(()),
                }
            }
            ShardChange::Merge { keep, absorb } => write!(f, "merge of shard {absorb} into shard {keep}"),
        }
    }
}

/// [`PartitionState`] as stored before shard maps. (postcard writes a
/// nested struct as its fields in order, so `v1` reads the first six.)
#[derive(Deserialize)]
struct PartitionStateV2 {
    v1: PartitionStateV1,
    also_from: Vec<Option<HookSpec>>,
    stalls: BTreeMap<ShardId, ReshardStall>,
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
    /// Reads a stored state, also one stored before the fields added since.
    pub fn decode(raw: &[u8]) -> Result<PartitionState, postcard::Error> {
        let err = match postcard::from_bytes::<PartitionState>(raw) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let (v1, also_from, stalls) = match postcard::from_bytes::<PartitionStateV2>(raw) {
            Ok(v2) => (v2.v1, v2.also_from, v2.stalls),
            Err(_) => match postcard::from_bytes::<PartitionStateV1>(raw) {
                Ok(v1) => (v1, Vec::new(), BTreeMap::new()),
                Err(_) => return Err(err),
            },
        };
        Ok(PartitionState {
            active: v1.active,
            epoch: v1.epoch,
            last_version: v1.last_version,
            job: v1.job,
            last_job: v1.last_job,
            generation: v1.generation,
            also_from,
            stalls,
            map: None,
            resize: None,
        })
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
        if let Some(r) = &self.resize {
            return Err(format!("a {} is running; change the partition function when it finishes", r.change));
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

    /// The shard ranges keys route by (`shards`: the ring's shard count,
    /// which gives the ranges of a cluster that never resized a shard).
    pub fn shard_map(&self, shards: u32) -> ShardMap {
        self.map.clone().unwrap_or_else(|| ShardMap::uniform(shards))
    }

    /// The shards a key may sit on while the running job has not finished:
    /// the ranges before a resize, otherwise the active ones.
    pub fn from_map(&self, shards: u32) -> ShardMap {
        match &self.resize {
            Some(r) => r.from_map.clone(),
            None => self.shard_map(shards),
        }
    }

    /// Splits or merges shards: makes the changed ranges active and opens
    /// the job that moves the keys whose shard changed. Refused while any
    /// job runs (one change of routing at a time). Returns the new epoch
    /// and the change as settled (a split's point and new shard).
    pub fn resize(&mut self, change: ShardChange, shards: u32, now_ms: u64) -> Result<(u64, ShardChange), String> {
        if let Some(job) = &self.job {
            let what = match &self.resize {
                Some(r) => r.change.to_string(),
                None => format!("re-shard job {} (a partition function change)", job.epoch),
            };
            return Err(format!("a {what} is running; split or merge shards when it finishes"));
        }
        let from_map = self.shard_map(shards);
        let (map, change) = match change {
            ShardChange::Split { shard, at, .. } => {
                let map = from_map.split(shard, at)?;
                let new_shard = from_map.next_id();
                let at = map.range(new_shard).map(|r| r.first);
                (map, ShardChange::Split { shard, at, new_shard: Some(new_shard) })
            }
            ShardChange::Merge { keep, absorb } => (from_map.merge(keep, absorb)?, change),
        };
        // Only shards that lose part of their range have keys to move; the
        // rest are done from the start.
        let unchanged: BTreeMap<ShardId, ShardProgress> = from_map
            .ranges()
            .filter(|old| map.range(old.shard).is_some_and(|new| new.first <= old.first && old.last <= new.last))
            .map(|old| (old.shard, ShardProgress { done: true, ..ShardProgress::default() }))
            .collect();
        self.epoch += 1;
        self.stalls.clear();
        self.job = Some(ReshardJob {
            epoch: self.epoch,
            from: self.active.clone(),
            to: self.active.clone(),
            started_ms: now_ms,
            shards: unchanged,
        });
        self.map = Some(map);
        self.resize = Some(Resize { from_map, change });
        self.generation += 1;
        Ok((self.epoch, change))
    }

    /// Shards a finished resize retired (a merge's absorbed shard).
    fn retired(&self) -> Vec<ShardId> {
        match (&self.resize, &self.map) {
            (Some(r), Some(map)) => r.from_map.ids().filter(|id| !map.contains(*id)).collect(),
            _ => Vec::new(),
        }
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
    /// Closes the job once every shard keys may sit on is done (`shards`:
    /// the ring's shard count). Returns the shards the closed job retired,
    /// or `None` when the job did not close.
    pub fn record_progress(
        &mut self,
        epoch: u64,
        shard: ShardId,
        progress: ShardProgress,
        shards: u32,
        now_ms: u64,
    ) -> Option<Vec<ShardId>> {
        let scanned_shards = self.from_map(shards);
        let job = self.job.as_mut().filter(|j| j.epoch == epoch)?;
        let entry = job.shards.entry(shard).or_default();
        if entry.done || progress.scanned < entry.scanned {
            return None;
        }
        if progress.done || progress.scanned > entry.scanned {
            self.stalls.remove(&shard);
        }
        *entry = progress;
        if scanned_shards.ids().any(|s| !job.shards.get(&s).is_some_and(|p| p.done)) {
            return None;
        }
        let (scanned, moved) = job.totals();
        let (from, to) = match &self.resize {
            Some(r) => (r.change.to_string(), format!("{} shards", self.map.as_ref().map_or(0, ShardMap::len))),
            None => (describe(job.from.as_ref()), describe(job.to.as_ref())),
        };
        let job = job.clone();
        let retired = self.retired();
        self.last_job = Some(JobSummary {
            epoch: job.epoch,
            from,
            to,
            started_ms: job.started_ms,
            finished_ms: now_ms,
            scanned,
            moved,
        });
        self.job = None;
        self.resize = None;
        self.also_from.clear();
        self.stalls.clear();
        self.generation += 1;
        Some(retired)
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
        assert!(st.record_progress(1, 0, done(4), 2, 1100).is_none());
        // A report from an old job changes nothing.
        assert!(st.record_progress(0, 1, done(4), 2, 1100).is_none());
        assert!(st.record_progress(1, 1, done(6), 2, 1200).is_some());
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
        assert!(st.record_progress(3, 0, done(1), 1, 30).is_some());
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
    fn a_split_opens_a_job_on_the_parent_only_and_closes_into_the_new_map() {
        let mut st = PartitionState::default();
        let split = ShardChange::Split { shard: 1, at: None, new_shard: None };
        let (epoch, settled) = st.resize(split, 2, 100).expect("split");
        assert_eq!(settled, ShardChange::Split { shard: 1, at: Some(3 << 62), new_shard: Some(2) });
        assert_eq!((epoch, st.generation), (1, 1));
        assert_eq!(st.shard_map(2).ids().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(st.from_map(2), ShardMap::uniform(2));
        // Shard 0 keeps its range: nothing of it moves.
        let job = st.job.clone().expect("job");
        assert_eq!(job.shards.keys().collect::<Vec<_>>(), vec![&0]);
        assert!(job.shards[&0].done);
        // One change at a time, and no function change during it.
        let refused = st.resize(ShardChange::Merge { keep: 0, absorb: 1 }, 2, 110).expect_err("busy");
        assert!(refused.contains("split of shard 1") && refused.contains("is running"), "{refused}");
        assert!(st.set(Some(spec("t", "a")), 120).expect_err("busy").contains("split of shard 1"));
        // The new shard is not scanned: the parent alone closes the job.
        assert_eq!(st.record_progress(1, 1, done(8), 2, 200), Some(Vec::new()));
        assert!(st.job.is_none() && st.resize.is_none());
        assert_eq!(st.generation, 2);
        assert_eq!(st.from_map(2).ids().collect::<Vec<_>>(), vec![0, 1, 2]);
        let summary = st.last_job.clone().expect("summary");
        assert!(summary.from.starts_with("split of shard 1"), "{summary:?}");
    }

    #[test]
    fn a_merge_retires_the_absorbed_shard_when_its_keys_have_moved() {
        let mut st = PartitionState::default();
        st.resize(ShardChange::Split { shard: 0, at: None, new_shard: None }, 2, 0).expect("split");
        st.record_progress(1, 0, done(2), 2, 0).expect("split closes");
        st.resize(ShardChange::Merge { keep: 0, absorb: 2 }, 2, 0).expect("merge");
        assert_eq!(st.shard_map(2).ids().collect::<Vec<_>>(), vec![0, 1]);
        // Keys may still sit on shard 2 until its pass is done.
        assert_eq!(st.from_map(2).ids().collect::<Vec<_>>(), vec![0, 2, 1]);
        assert_eq!(st.record_progress(2, 2, done(4), 2, 0), Some(vec![2]));
        assert_eq!(st.shard_map(2).ranges().collect::<Vec<_>>(), ShardMap::uniform(2).ranges().collect::<Vec<_>>());
        // A function change is allowed again, and covers the new map.
        assert_eq!(st.set(Some(spec("t", "a")), 0), Ok(3));
        assert_eq!(st.from_map(2).ids().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn a_resize_is_refused_while_a_function_change_runs() {
        let mut st = PartitionState::default();
        st.set(Some(spec("t", "a")), 0).expect("change");
        let refused = st.resize(ShardChange::Split { shard: 0, at: None, new_shard: None }, 2, 0).expect_err("busy");
        assert!(refused.contains("partition function change"), "{refused}");
        let bad = ShardChange::Split { shard: 0, at: Some(0), new_shard: None };
        st.record_progress(1, 0, done(1), 2, 0);
        st.record_progress(1, 1, done(1), 2, 0);
        assert!(st.resize(bad, 2, 0).expect_err("bad point").contains("not inside"));
        assert!(st.job.is_none(), "a refused change opens no job");
    }

    #[test]
    fn a_state_stored_before_shard_maps_still_reads() {
        let mut st = PartitionState::default();
        st.set(Some(spec("t", "a")), 0).expect("change");
        let mut raw = postcard::to_allocvec(&st).expect("encode");
        // The two options added last, both `None`: one zero byte each.
        assert_eq!(raw.split_off(raw.len() - 2), vec![0, 0]);
        assert_eq!(PartitionState::decode(&raw).expect("decode"), st);
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
