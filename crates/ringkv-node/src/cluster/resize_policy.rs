//! When shards split and merge on their own: the resize policies of the
//! meta leader. One change at a time: a split or merge is a job, and no
//! other starts while one runs.
//!
//! **Spread.** A cluster starts with few shards (one by default), which is
//! fastest while it has no more nodes than the replication factor: every
//! node then holds every shard anyway. Once it has more, there must be
//! enough shard replicas for placement to spread data evenly. The meta
//! leader splits the shard with the widest token range until the cluster
//! has [`target_shards`]: a power of two of at least
//! `auto_split_replicas_per_node × N / RF` shards (N active members).
//! Splits come before the rebalancer's moves (which wait for them): a new
//! shard starts on its parent's replicas, so splitting first moves each
//! replica once, and the moves carry smaller shards. Powers of two keep
//! the ranges equal: with uniform hashing each shard holds about the same
//! bytes, so spreading replicas evenly spreads bytes evenly.
//!
//! **Size and load** ([`plan`]). Every few seconds the meta leader asks
//! each member for the shards it hosts ([`ShardLoad`]): the leader's size
//! and a split point that halves its keys, and every replica's request
//! counters. It splits a shard larger than `--split-size`, or busier than
//! `--split-load` requests per second for `--resize-after`, and merges two
//! neighbours that together hold less than `--merge-size` and have both
//! been cold for `--resize-after`.
//!
//! Hysteresis, against the split and merge storms other stores suffer:
//! - a merged shard holds at most a quarter of the split size and half the
//!   split load, so it does not split again;
//! - merges never take the cluster below the `--shards` it was created
//!   with, nor below the spread target of its *members* (down or draining
//!   ones included), so a node failing or a cluster whose size wobbles
//!   does not merge what the spread policy split;
//! - after any change the clocks start again, and a size counts only if it
//!   was measured after the change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Node, NodeError, META_GROUP};
use crate::config::ResizeThresholds;
use crate::raft::network::{decode, encode};
use crate::ring::partition::ShardChange;
use crate::ring::{ShardId, ShardMap, ShardRange};

/// The shard count the spread policy aims for with `members` active
/// members, replication factor `rf` and `per_node` replicas per node
/// wanted (0: the policy is off). Never fewer than `current`.
pub fn target_shards(members: usize, rf: usize, per_node: u32, current: usize) -> usize {
    let rf = rf.min(members).max(1);
    if per_node == 0 || members <= rf {
        return current;
    }
    let wanted = (per_node as usize * members).div_ceil(rf).next_power_of_two();
    wanted.min(crate::ring::MAX_SHARDS).max(current)
}

/// The spread target's floor for merges: the shards `members` members
/// want with the spread policy, ignoring how many there are now.
fn spread_floor(members: usize, rf: usize, per_node: u32) -> usize {
    target_shards(members, rf, per_node, 1)
}

/// The shard the policy splits next: the widest range (the lowest first
/// token among equals), if it holds more than one token.
pub fn widest(map: &ShardMap) -> Option<ShardRange> {
    map.ranges().filter(|r| r.last > r.first).max_by_key(|r| (r.last - r.first, std::cmp::Reverse(r.first)))
}

impl Node {
    /// On the meta leader: starts the next split the spread policy wants,
    /// if any. True when it started one.
    pub(super) async fn spread_by_splitting(&self) -> Result<bool, NodeError> {
        let per_node = self.config().auto_split_replicas_per_node;
        let view = self.partition_view();
        if per_node == 0 || view.state.job.is_some() {
            return Ok(false);
        }
        let members = self.active_members().await?.len();
        let rf = self.ring().replication_factor as usize;
        let map = view.shard_map();
        let target = target_shards(members, rf, per_node, map.len());
        let Some(shard) = widest(map).filter(|_| map.len() < target) else { return Ok(false) };
        tracing::info!(
            shard = shard.shard,
            shards = map.len(),
            target,
            members,
            "splitting a shard to spread data over the nodes"
        );
        match self.resize_shards(ShardChange::Split { shard: shard.shard, at: None, new_shard: None }).await {
            Ok(_) => Ok(true),
            // Another change started in between: the next round looks again.
            Err(NodeError::Refused(why)) => {
                tracing::debug!(reason = %why, "automatic split not started");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// One shard as a member hosting it reports it ([`Node::shard_loads`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardLoad {
    pub shard: ShardId,
    /// The shard's size, when the reporting member leads it.
    pub size: Option<LeaderSize>,
    /// Ops this replica applied since its process started.
    pub applied_ops: u64,
    /// Client reads this replica served since its process started.
    pub served_reads: u64,
}

/// A shard's size as its leader last measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderSize {
    /// Keys and stored values, uncompressed.
    pub bytes: u64,
    /// How long before the answer it was measured.
    pub age_ms: u64,
    /// A token that splits the shard's keys about in half (the median of a
    /// sample's routing tokens), when asked for and the sample holds more
    /// than one token.
    pub split_token: Option<u64>,
}

/// A shard as [`plan`] sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardStats {
    /// `None` until its leader measured it after the last change.
    pub bytes: Option<u64>,
    pub split_token: Option<u64>,
    /// Writes applied by its leader plus reads served by its replicas, per
    /// second, between the last two polls; `None` without two readings.
    pub ops_per_sec: Option<f64>,
    /// How long it has been above the split load, or cold (below a quarter
    /// of it, or at any rate when load splits are off).
    pub hot_for: Duration,
    pub cold_for: Duration,
}

/// Why [`plan`] chose a change, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Size,
    Load,
    SmallAndCold,
}

/// What bounds [`plan`] besides the thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Merges keep at least this many shards.
    pub floor: usize,
    /// Load splits stop at this many shards: enough for every active
    /// member to lead a few (a split shard's halves help only on leaders of
    /// their own).
    pub load_cap: usize,
}

/// The change the size and load policy wants now, if any: first a split of
/// the largest shard over the split size, then of the busiest shard over
/// the split load for the sustain time, then a merge of the smallest pair
/// of cold neighbours under the merge size. A shard whose sampled keys all
/// share one token (a single routing key) is not split for size: no split
/// point would move any of them.
pub fn plan(
    map: &ShardMap,
    stats: &BTreeMap<ShardId, ShardStats>,
    t: &ResizeThresholds,
    bounds: &Bounds,
) -> Option<(ShardChange, Reason)> {
    let inside = |r: &ShardRange, at: u64| r.first < at && at <= r.last;
    let ranges: Vec<(ShardRange, &ShardStats)> =
        map.ranges().filter_map(|r| stats.get(&r.shard).map(|s| (r, s))).collect();
    if map.len() < crate::ring::MAX_SHARDS {
        if t.split_bytes > 0 {
            let biggest = ranges
                .iter()
                .filter(|(r, s)| {
                    s.bytes.is_some_and(|b| b > t.split_bytes) && s.split_token.is_some_and(|at| inside(r, at))
                })
                .max_by_key(|(_, s)| s.bytes);
            if let Some((r, s)) = biggest {
                return Some((ShardChange::Split { shard: r.shard, at: s.split_token, new_shard: None }, Reason::Size));
            }
        }
        if t.split_ops > 0 && map.len() < bounds.load_cap {
            let hottest = ranges
                .iter()
                .filter(|(r, s)| {
                    r.last > r.first
                        && s.hot_for >= t.sustain
                        && s.ops_per_sec.is_some_and(|o| o > f64::from(t.split_ops))
                })
                .max_by(|(_, a), (_, b)| {
                    a.ops_per_sec.partial_cmp(&b.ops_per_sec).unwrap_or(std::cmp::Ordering::Equal)
                });
            if let Some((r, s)) = hottest {
                let at = s.split_token.filter(|at| inside(r, *at));
                return Some((ShardChange::Split { shard: r.shard, at, new_shard: None }, Reason::Load));
            }
        }
    }
    if t.merge_bytes == 0 || map.len() <= bounds.floor {
        return None;
    }
    let mergeable = |s: &ShardStats| s.bytes.is_some() && s.cold_for >= t.sustain;
    ranges
        .windows(2)
        .filter_map(|pair| {
            let ((a, sa), (b, sb)) = (&pair[0], &pair[1]);
            let both = sa.bytes.unwrap_or(0) + sb.bytes.unwrap_or(0);
            (mergeable(sa) && mergeable(sb) && both < t.merge_bytes).then_some((a, sa, b, sb, both))
        })
        .min_by_key(|(a, _, _, _, both)| (*both, a.first))
        .map(|(a, sa, b, sb, _)| {
            // The larger keeps its keys where they are; the smaller moves.
            let (keep, absorb) = if sa.bytes >= sb.bytes { (a.shard, b.shard) } else { (b.shard, a.shard) };
            (ShardChange::Merge { keep, absorb }, Reason::SmallAndCold)
        })
}

/// Every replica's counters at one poll, by shard and member.
type ReplicaCounters = BTreeMap<(ShardId, u64), Counters>;

/// Counters of one replica at one poll.
#[derive(Debug, Clone, Copy)]
struct Counters {
    applied_ops: u64,
    served_reads: u64,
}

/// The meta leader's memory between polls: the last counters per shard and
/// member, since when each shard has been hot or cold, and when the
/// partition state last changed (sizes measured before it do not count).
pub(super) struct LoadTracker {
    polled: Option<(Instant, ReplicaCounters)>,
    hot_since: BTreeMap<ShardId, Instant>,
    cold_since: BTreeMap<ShardId, Instant>,
    epoch: Option<u64>,
    changed_at: Instant,
}

impl Default for LoadTracker {
    fn default() -> Self {
        Self {
            polled: None,
            hot_since: BTreeMap::new(),
            cold_since: BTreeMap::new(),
            epoch: None,
            changed_at: Instant::now(),
        }
    }
}

impl LoadTracker {
    /// Forgets everything: the partition state changed, or a job runs.
    fn restart(&mut self, epoch: u64) {
        *self = LoadTracker { epoch: Some(epoch), ..LoadTracker::default() };
    }

    /// Time between polls: a few per sustain time, between 1 s and 10 s.
    fn poll_every(t: &ResizeThresholds) -> Duration {
        (t.sustain / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// Folds one poll's reports (by member) into per-shard stats.
    fn update(
        &mut self,
        now: Instant,
        reports: &BTreeMap<u64, Vec<ShardLoad>>,
        t: &ResizeThresholds,
    ) -> BTreeMap<ShardId, ShardStats> {
        let counters: ReplicaCounters = reports
            .iter()
            .flat_map(|(member, loads)| {
                loads.iter().map(|l| {
                    ((l.shard, *member), Counters { applied_ops: l.applied_ops, served_reads: l.served_reads })
                })
            })
            .collect();
        let mut stats: BTreeMap<ShardId, ShardStats> = BTreeMap::new();
        for (member, loads) in reports {
            for l in loads {
                let s = stats.entry(l.shard).or_default();
                let Some(size) = &l.size else { continue };
                let measured_at = now.checked_sub(Duration::from_millis(size.age_ms)).unwrap_or(now);
                if measured_at >= self.changed_at {
                    s.bytes = Some(size.bytes);
                    s.split_token = size.split_token;
                }
                // The leader's applied ops are the shard's writes; every
                // replica's reads count.
                if let Some((at, before)) = &self.polled {
                    let secs = now.duration_since(*at).as_secs_f64();
                    let delta = |f: fn(&Counters) -> u64, m: u64| {
                        let b = before.get(&(l.shard, m))?;
                        let n = counters.get(&(l.shard, m))?;
                        f(n).checked_sub(f(b))
                    };
                    let writes = delta(|c| c.applied_ops, *member);
                    let reads: Option<u64> =
                        reports.keys().filter_map(|m| delta(|c| c.served_reads, *m)).reduce(|a, b| a + b);
                    if let (Some(w), true) = (writes, secs > 0.0) {
                        s.ops_per_sec = Some((w + reads.unwrap_or(0)) as f64 / secs);
                    }
                }
            }
        }
        let cold_below = f64::from(t.split_ops) / 4.0;
        for (shard, s) in &mut stats {
            let (hot, cold) = match s.ops_per_sec {
                Some(o) => (t.split_ops > 0 && o > f64::from(t.split_ops), t.split_ops == 0 || o < cold_below),
                None => (false, false),
            };
            for (on, since, dur) in
                [(hot, &mut self.hot_since, &mut s.hot_for), (cold, &mut self.cold_since, &mut s.cold_for)]
            {
                if on {
                    *dur = now.duration_since(*since.entry(*shard).or_insert(now));
                } else {
                    since.remove(shard);
                }
            }
        }
        self.polled = Some((now, counters));
        stats
    }
}

impl Node {
    /// The data shards this node hosts ([`ShardLoad`]), measuring those it
    /// leads (as old as [`super::Group::approximate_size`] allows), with a split point
    /// for each at least `split_point_over` bytes large.
    pub async fn shard_loads(&self, split_point_over: u64) -> Vec<ShardLoad> {
        let view = self.partition_view();
        let mut out = Vec::new();
        for g in self.groups() {
            let Some(shard) = g.id.checked_sub(1).and_then(|s| ShardId::try_from(s).ok()) else { continue };
            let leads = g.raft.metrics().borrow().current_leader == Some(self.id());
            let size = if leads {
                match g.approximate_size().await {
                    Ok((size, at)) => Some(LeaderSize {
                        bytes: size.bytes,
                        age_ms: at.elapsed().as_millis() as u64,
                        split_token: (size.bytes >= split_point_over)
                            .then(|| median_token(size.sample.iter().filter_map(|k| view.token(k).ok()).collect()))
                            .flatten(),
                    }),
                    Err(e) => {
                        tracing::debug!(shard, error = %e, "measuring a shard for the resize policy");
                        None
                    }
                }
            } else {
                None
            };
            out.push(ShardLoad { shard, size, applied_ops: g.sm.applied_ops(), served_reads: g.sm.served_reads() });
        }
        out
    }

    /// Every member's [`Node::shard_loads`]; a member that does not answer
    /// within a second is left out.
    async fn poll_shard_loads(&self, split_point_over: u64) -> BTreeMap<u64, Vec<ShardLoad>> {
        let members = self.members().unwrap_or_default();
        let polls = members.into_iter().map(|(id, addr, _)| async move {
            if id == self.id() {
                return Some((id, self.shard_loads(split_point_over).await));
            }
            let mut client = self.peers().raft_client(id, &addr).ok()?;
            let msg = self.peers().message(META_GROUP, encode(&split_point_over));
            let reply = tokio::time::timeout(Duration::from_secs(1), client.shard_loads(msg)).await.ok()?;
            let reply = reply.map_err(|e| tracing::debug!(node = id, error = %e, "polling shard loads")).ok()?;
            let reply = reply.into_inner();
            self.peers().check_reply(id, &reply).ok()?;
            Some((id, decode(&reply.payload).ok()?))
        });
        futures::future::join_all(polls).await.into_iter().flatten().collect()
    }

    /// On the meta leader, called every rebalance round: polls the members
    /// when due and starts the change [`plan`] wants, if any. True when it
    /// started one.
    pub(super) async fn resize_by_size_and_load(&self, tracker: &mut LoadTracker) -> Result<bool, NodeError> {
        let t = self.config().resize.clone();
        if t.split_bytes == 0 && t.split_ops == 0 && t.merge_bytes == 0 {
            return Ok(false);
        }
        let view = self.partition_view();
        if view.state.job.is_some() || tracker.epoch != Some(view.state.epoch) {
            tracker.restart(view.state.epoch);
            return Ok(false);
        }
        let now = Instant::now();
        if tracker.polled.as_ref().is_some_and(|(at, _)| now.duration_since(*at) < LoadTracker::poll_every(&t)) {
            return Ok(false);
        }
        let reports = self.poll_shard_loads(t.split_bytes.max(1)).await;
        let stats = tracker.update(now, &reports, &t);
        let rf = self.ring().replication_factor as usize;
        let per_node = self.config().auto_split_replicas_per_node;
        let members = self.members()?.len();
        let bounds = Bounds {
            floor: spread_floor(members, rf, per_node).max(self.ring().shards as usize),
            load_cap: self.active_members().await?.len() * 4,
        };
        let Some((change, reason)) = plan(view.shard_map(), &stats, &t, &bounds) else { return Ok(false) };
        let shown = |id: &ShardId| stats.get(id).cloned().unwrap_or_default();
        let (bytes, ops) = match &change {
            ShardChange::Split { shard, .. } => (shown(shard).bytes, shown(shard).ops_per_sec),
            ShardChange::Merge { keep, absorb } => (
                Some(shown(keep).bytes.unwrap_or(0) + shown(absorb).bytes.unwrap_or(0)),
                Some(shown(keep).ops_per_sec.unwrap_or(0.0) + shown(absorb).ops_per_sec.unwrap_or(0.0)),
            ),
        };
        tracing::info!(%change, ?reason, bytes, ops_per_sec = ops, shards = view.shard_map().len(), "resizing shards");
        match self.resize_shards(change).await {
            Ok(_) => {
                metrics::counter!(crate::telemetry::AUTO_RESIZES, "reason" => reason.label()).increment(1);
                Ok(true)
            }
            // Another change started in between, or the map moved on.
            Err(NodeError::Refused(why) | NodeError::InvalidArgument(why)) => {
                tracing::debug!(reason = %why, "automatic resize not started");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Load => "load",
            Reason::SmallAndCold => "merge",
        }
    }
}

/// The median of `tokens`, moved up to the first token above the smallest
/// when it equals it (a split point must leave keys on both sides); `None`
/// when they are all one token.
fn median_token(mut tokens: Vec<u64>) -> Option<u64> {
    tokens.sort_unstable();
    let first = *tokens.first()?;
    let median = tokens[tokens.len() / 2];
    if median > first {
        return Some(median);
    }
    tokens.into_iter().find(|t| *t > first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_split_while_every_node_holds_every_shard() {
        for members in 1..=3 {
            assert_eq!(target_shards(members, 3, 4, 1), 1, "{members} members");
        }
        assert_eq!(target_shards(5, 3, 0, 1), 1, "the policy is off");
    }

    #[test]
    fn enough_shards_for_every_node_to_hold_its_share() {
        // 4 replicas per node over 5 nodes, RF 3: 7 shards, rounded up to 8
        // (24 replicas: 4 or 5 per node).
        assert_eq!(target_shards(5, 3, 4, 1), 8);
        assert_eq!(target_shards(4, 3, 4, 1), 8);
        assert_eq!(target_shards(7, 3, 4, 1), 16);
        assert_eq!(target_shards(100, 3, 8, 1), 512);
        // Never fewer than there are, never more than the map may hold.
        assert_eq!(target_shards(5, 3, 4, 64), 64);
        assert_eq!(target_shards(5000, 3, 8, 1), crate::ring::MAX_SHARDS);
    }

    #[test]
    fn splitting_the_widest_range_keeps_ranges_equal() -> Result<(), String> {
        let mut map = ShardMap::uniform(1);
        while map.len() < 8 {
            let next = widest(&map).ok_or("nothing to split")?;
            map = map.split(next.shard, None)?;
        }
        let widths: Vec<u64> = map.ranges().map(|r| r.last - r.first).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
        // From three equal ranges, the lowest first.
        assert_eq!(widest(&ShardMap::uniform(3)).map(|r| r.shard), Some(0));
        Ok(())
    }

    fn thresholds() -> ResizeThresholds {
        ResizeThresholds { split_bytes: 1000, split_ops: 100, merge_bytes: 250, sustain: Duration::from_secs(60) }
    }

    fn bounds(floor: usize) -> Bounds {
        Bounds { floor, load_cap: 12 }
    }

    fn sized(bytes: u64, split_token: Option<u64>) -> ShardStats {
        ShardStats { bytes: Some(bytes), split_token, ..ShardStats::default() }
    }

    fn cold(bytes: u64, for_secs: u64) -> ShardStats {
        ShardStats { ops_per_sec: Some(1.0), cold_for: Duration::from_secs(for_secs), ..sized(bytes, None) }
    }

    #[test]
    fn the_largest_shard_over_the_split_size_splits_at_its_sampled_median() {
        let map = ShardMap::uniform(2);
        let mid = 1u64 << 63;
        let stats = BTreeMap::from([(0, sized(1500, Some(5))), (1, sized(2500, Some(mid + 7)))]);
        assert_eq!(
            plan(&map, &stats, &thresholds(), &bounds(1)),
            Some((ShardChange::Split { shard: 1, at: Some(mid + 7), new_shard: None }, Reason::Size))
        );
        // A sample of one routing key has no split point: nothing to do.
        let one_key = BTreeMap::from([(0, sized(5000, None)), (1, sized(10, None))]);
        assert_eq!(plan(&map, &one_key, &thresholds(), &bounds(1)), None);
        // A stale split point outside the range is not used.
        let stale = BTreeMap::from([(0, sized(5000, Some(mid + 1))), (1, sized(10, None))]);
        assert_eq!(plan(&map, &stale, &thresholds(), &bounds(1)), None);
        // An unmeasured shard is not split.
        let unknown = BTreeMap::from([(0, ShardStats::default())]);
        assert_eq!(plan(&ShardMap::uniform(1), &unknown, &thresholds(), &bounds(1)), None);
    }

    #[test]
    fn a_load_splits_only_once_sustained_and_below_the_cap() {
        let map = ShardMap::uniform(1);
        let hot = |secs| ShardStats { ops_per_sec: Some(500.0), hot_for: Duration::from_secs(secs), ..sized(10, None) };
        let stats = |s| BTreeMap::from([(0, s)]);
        assert_eq!(plan(&map, &stats(hot(59)), &thresholds(), &bounds(1)), None, "not sustained yet");
        assert_eq!(
            plan(&map, &stats(hot(60)), &thresholds(), &bounds(1)),
            Some((ShardChange::Split { shard: 0, at: None, new_shard: None }, Reason::Load))
        );
        let capped = Bounds { floor: 1, load_cap: 1 };
        assert_eq!(plan(&map, &stats(hot(600)), &thresholds(), &capped), None, "at the cap");
        let off = ResizeThresholds { split_ops: 0, ..thresholds() };
        assert_eq!(plan(&map, &stats(hot(600)), &off, &bounds(1)), None, "load splits off");
    }

    #[test]
    fn the_smallest_pair_of_cold_neighbours_merges_into_the_larger() {
        let map = ShardMap::uniform(4);
        let stats = BTreeMap::from([(0, cold(200, 60)), (1, cold(40, 60)), (2, cold(30, 60)), (3, cold(100, 60))]);
        assert_eq!(
            plan(&map, &stats, &thresholds(), &bounds(1)),
            Some((ShardChange::Merge { keep: 1, absorb: 2 }, Reason::SmallAndCold))
        );
        // Not below the floor, not before the sustain time, not when a
        // neighbour's size is unknown or the pair is too large.
        assert_eq!(plan(&map, &stats, &thresholds(), &bounds(4)), None);
        let young = BTreeMap::from([(0, cold(10, 59)), (1, cold(10, 59))]);
        assert_eq!(plan(&ShardMap::uniform(2), &young, &thresholds(), &bounds(1)), None);
        let unknown = BTreeMap::from([(0, cold(10, 60)), (1, ShardStats { bytes: None, ..cold(10, 60) })]);
        assert_eq!(plan(&ShardMap::uniform(2), &unknown, &thresholds(), &bounds(1)), None);
        let large = BTreeMap::from([(0, cold(200, 60)), (1, cold(50, 60))]);
        assert_eq!(plan(&ShardMap::uniform(2), &large, &thresholds(), &bounds(1)), None);
        let off = ResizeThresholds { merge_bytes: 0, ..thresholds() };
        assert_eq!(plan(&map, &stats, &off, &bounds(1)), None);
    }

    #[test]
    fn a_merged_shard_is_far_from_splitting_again() {
        // The thresholds' invariants (checked by `serve`): a merge makes a
        // shard under a quarter of the split size and, with both halves
        // under a quarter of the split load, under half of it.
        let t = thresholds();
        assert!(t.merge_bytes * 4 <= t.split_bytes);
        let map = ShardMap::uniform(2);
        let merged = map.merge(0, 1).map_err(|e| e.to_string());
        let stats = BTreeMap::from([(0, ShardStats { ops_per_sec: Some(49.0), ..sized(249, Some(1)) })]);
        assert_eq!(merged.map(|m| plan(&m, &stats, &t, &bounds(1))), Ok(None));
    }

    fn report(shard: ShardId, leader: bool, writes: u64, reads: u64) -> ShardLoad {
        ShardLoad {
            shard,
            size: leader.then_some(LeaderSize { bytes: 100, age_ms: 0, split_token: Some(9) }),
            applied_ops: writes,
            served_reads: reads,
        }
    }

    #[test]
    fn rates_are_the_leaders_writes_and_every_replicas_reads() {
        let t = thresholds();
        let mut tracker = LoadTracker::default();
        let start = Instant::now() + Duration::from_secs(1);
        let first = BTreeMap::from([(1, vec![report(0, true, 1000, 10)]), (2, vec![report(0, false, 990, 20)])]);
        let stats = tracker.update(start, &first, &t);
        assert_eq!(stats.get(&0).and_then(|s| s.ops_per_sec), None, "one reading");
        assert_eq!(stats.get(&0).and_then(|s| s.bytes), Some(100));
        let second = BTreeMap::from([(1, vec![report(0, true, 1600, 110)]), (2, vec![report(0, false, 1590, 320)])]);
        let stats = tracker.update(start + Duration::from_secs(2), &second, &t);
        // (600 writes + 100 + 300 reads) / 2 s.
        assert_eq!(stats.get(&0).and_then(|s| s.ops_per_sec), Some(500.0));
        assert_eq!(stats.get(&0).map(|s| s.hot_for), Some(Duration::ZERO), "hot from now");
        let third = BTreeMap::from([(1, vec![report(0, true, 2600, 110)])]);
        let stats = tracker.update(start + Duration::from_secs(4), &third, &t);
        assert_eq!(stats.get(&0).map(|s| s.hot_for), Some(Duration::from_secs(2)));
        // A restarted leader (counters went back) gives no rate and ends the spell.
        let restarted = BTreeMap::from([(1, vec![report(0, true, 5, 0)])]);
        let stats = tracker.update(start + Duration::from_secs(6), &restarted, &t);
        assert_eq!(stats.get(&0).and_then(|s| s.ops_per_sec), None);
        assert_eq!(stats.get(&0).map(|s| s.hot_for), Some(Duration::ZERO));
    }

    #[test]
    fn sizes_measured_before_the_last_change_do_not_count() {
        let t = thresholds();
        let mut tracker = LoadTracker::default();
        tracker.restart(7);
        let now = Instant::now() + Duration::from_secs(1);
        let old = ShardLoad {
            size: Some(LeaderSize { bytes: 5000, age_ms: 60_000, split_token: Some(9) }),
            ..report(0, true, 0, 0)
        };
        let stats = tracker.update(now, &BTreeMap::from([(1, vec![old])]), &t);
        assert_eq!(stats.get(&0).and_then(|s| s.bytes), None);
    }

    #[test]
    fn the_split_point_leaves_keys_on_both_sides() {
        assert_eq!(median_token(vec![5, 1, 9, 3, 7]), Some(5));
        assert_eq!(median_token(vec![1, 1, 1, 2]), Some(2));
        assert_eq!(median_token(vec![4, 4, 4]), None);
        assert_eq!(median_token(Vec::new()), None);
        assert_eq!(spread_floor(3, 3, 4), 1);
        assert_eq!(spread_floor(5, 3, 4), 8);
    }
}
