//! The shard map: which shard owns which range of the token space.
//!
//! A cluster starts with `S` equal ranges ([`ShardMap::uniform`], the ranges
//! `RingConfig::shards` has always meant). Splits and merges then change the
//! ranges online: a split gives the upper part of a shard's range to a new
//! shard, a merge gives a shard's whole range to its neighbour and retires
//! it. The map always tiles the token space: the first range starts at 0,
//! every range ends where the next starts, the last ends at `u64::MAX`.
//!
//! Shard ids are never reused (`next_id` only grows): a retired shard's
//! group may linger on a node until its reconciler drops it, and must never
//! be mistaken for a new shard with the same id.

use serde::{Deserialize, Serialize};

use super::ShardId;

/// The token ranges of the shards, in token order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// (first token, shard), sorted by first token; the first is 0.
    ranges: Vec<(u64, ShardId)>,
    /// The id the next new shard gets.
    next_id: ShardId,
}

/// One shard's range, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub shard: ShardId,
    pub first: u64,
    /// The last token of the range (inclusive).
    pub last: u64,
}

/// Most shards a map may hold (as many groups as `RingConfig` allows).
pub const MAX_SHARDS: usize = 4096;

impl ShardMap {
    /// `shards` equal ranges: shard `i` owns `[⌈i·2⁶⁴/S⌉, ⌈(i+1)·2⁶⁴/S⌉)`,
    /// the ranges the client's formula ([`super::shard_of`]) computes.
    pub fn uniform(shards: u32) -> ShardMap {
        let shards = shards.max(1);
        ShardMap { ranges: (0..shards).map(|i| (super::shard_start(i, shards), i)).collect(), next_id: shards }
    }

    /// The shard whose range holds `token`.
    pub fn shard_of(&self, token: u64) -> ShardId {
        let i = self.ranges.partition_point(|(first, _)| *first <= token);
        // `ranges[0].0 == 0`, so `i >= 1`.
        self.ranges[i.saturating_sub(1)].1
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Never true: a map holds at least one shard.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every shard id, in token order.
    pub fn ids(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.ranges.iter().map(|(_, id)| *id)
    }

    pub fn contains(&self, shard: ShardId) -> bool {
        self.position(shard).is_some()
    }

    fn position(&self, shard: ShardId) -> Option<usize> {
        self.ranges.iter().position(|(_, id)| *id == shard)
    }

    /// Every shard's range, in token order.
    pub fn ranges(&self) -> impl Iterator<Item = ShardRange> + '_ {
        (0..self.ranges.len()).map(|i| self.range_at(i))
    }

    fn range_at(&self, i: usize) -> ShardRange {
        let (first, shard) = self.ranges[i];
        let last = self.ranges.get(i + 1).map_or(u64::MAX, |(next, _)| next - 1);
        ShardRange { shard, first, last }
    }

    /// `shard`'s range, if the map holds it.
    pub fn range(&self, shard: ShardId) -> Option<ShardRange> {
        self.position(shard).map(|i| self.range_at(i))
    }

    /// The id the next shard created by a split gets.
    pub fn next_id(&self) -> ShardId {
        self.next_id
    }

    /// The map after splitting `shard` at token `at` (default: the middle of
    /// its range): the shard keeps `[first, at)`, a new shard
    /// ([`Self::next_id`]) gets `[at, last]`.
    pub fn split(&self, shard: ShardId, at: Option<u64>) -> Result<ShardMap, String> {
        let i = self.position(shard).ok_or_else(|| format!("there is no shard {shard}"))?;
        let r = self.range_at(i);
        if r.first == r.last {
            return Err(format!("shard {shard} holds a single token and cannot be split"));
        }
        if self.ranges.len() >= MAX_SHARDS {
            return Err(format!("the cluster already has {MAX_SHARDS} shards, the most it may have"));
        }
        let at = at.unwrap_or(r.first + (r.last - r.first) / 2 + 1);
        if at <= r.first || at > r.last {
            return Err(format!(
                "the split point {at:#018x} is not inside shard {shard}'s range ({:#018x}..={:#018x}, its first token excluded)",
                r.first, r.last
            ));
        }
        let new_id = self.next_id.checked_add(1).ok_or("no shard ids left")?;
        let mut ranges = self.ranges.clone();
        ranges.insert(i + 1, (at, self.next_id));
        Ok(ShardMap { ranges, next_id: new_id })
    }

    /// The map after `absorb`'s range joins `keep`'s, its neighbour in token
    /// order (either side); `absorb` is retired.
    pub fn merge(&self, keep: ShardId, absorb: ShardId) -> Result<ShardMap, String> {
        let k = self.position(keep).ok_or_else(|| format!("there is no shard {keep}"))?;
        let a = self.position(absorb).ok_or_else(|| format!("there is no shard {absorb}"))?;
        if k.abs_diff(a) != 1 {
            return Err(format!(
                "shards {keep} and {absorb} are not neighbours on the ring; only adjacent ranges merge"
            ));
        }
        let mut ranges = self.ranges.clone();
        let first = ranges[k.min(a)].0;
        ranges.remove(a);
        ranges[k.min(a)] = (first, keep);
        Ok(ShardMap { ranges, next_id: self.next_id })
    }

    /// Checks that the ranges tile the token space and ids are distinct and
    /// below `next_id` (a map read from the meta group or a peer).
    pub fn validate(&self) -> Result<(), String> {
        if self.ranges.first().map(|r| r.0) != Some(0) {
            return Err("the first shard range does not start at token 0".into());
        }
        if self.ranges.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("shard ranges are not in increasing token order".into());
        }
        let mut ids: Vec<ShardId> = self.ids().collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) || ids.last().is_some_and(|m| *m >= self.next_id) {
            return Err("shard ids repeat or exceed the next id".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uniform_maps_agree_with_the_clients_formula() {
        for s in [1u32, 2, 3, 7, 64, 4096] {
            let map = ShardMap::uniform(s);
            assert_eq!(map.len(), s as usize);
            assert_eq!(map.validate(), Ok(()), "{s} shards");
            for r in map.ranges() {
                assert_eq!(super::super::shard_of(r.first, s), r.shard);
                assert_eq!(super::super::shard_of(r.last, s), r.shard);
                assert_eq!(map.shard_of(r.first), r.shard);
                assert_eq!(map.shard_of(r.last), r.shard);
            }
        }
    }

    #[test]
    fn split_gives_the_upper_half_to_a_new_shard() -> Result<(), String> {
        let map = ShardMap::uniform(2).split(0, None)?;
        assert_eq!(map.len(), 3);
        assert_eq!(map.ids().collect::<Vec<_>>(), vec![0, 2, 1]);
        assert_eq!(map.range(0), Some(ShardRange { shard: 0, first: 0, last: (1 << 62) - 1 }));
        assert_eq!(map.range(2), Some(ShardRange { shard: 2, first: 1 << 62, last: (1 << 63) - 1 }));
        assert_eq!(map.next_id(), 3);
        Ok(())
    }

    #[test]
    fn bad_splits_and_merges_are_refused_with_the_reason() {
        let map = ShardMap::uniform(4);
        let refused = |r: Result<ShardMap, String>| r.err().unwrap_or_default();
        assert!(refused(map.split(9, None)).contains("no shard 9"));
        assert!(refused(map.split(1, Some(1 << 62))).contains("not inside"), "a range's first token");
        assert!(refused(map.split(1, Some(1 << 63))).contains("not inside"), "the next range's first token");
        assert!(refused(map.merge(0, 2)).contains("not neighbours"));
        assert!(refused(map.merge(0, 0)).contains("not neighbours"));
        assert!(refused(map.merge(0, 7)).contains("no shard 7"));
    }

    #[test]
    fn merge_undoes_a_split_and_never_reuses_the_id() -> Result<(), String> {
        let map = ShardMap::uniform(3);
        let split = map.split(1, None)?;
        let merged = split.merge(1, 3)?;
        assert_eq!(merged.ranges().collect::<Vec<_>>(), map.ranges().collect::<Vec<_>>());
        assert_eq!(merged.next_id(), 4);
        assert_eq!(merged.split(1, None)?.ids().collect::<Vec<_>>(), vec![0, 1, 4, 2]);
        // The lower shard may also be the one absorbed.
        let m = split.merge(3, 1)?;
        assert_eq!(m.range(3).map(|r| (r.first, r.last)), map.range(1).map(|r| (r.first, r.last)));
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Change {
        Split { pick: usize, at: u64 },
        Merge { pick: usize, upper: bool },
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (any::<usize>(), any::<u64>()).prop_map(|(pick, at)| Change::Split { pick, at }),
            (any::<usize>(), any::<bool>()).prop_map(|(pick, upper)| Change::Merge { pick, upper }),
        ]
    }

    proptest! {
        /// Any sequence of splits and merges keeps the ranges tiling the
        /// token space exactly, every token owned by the shard whose range
        /// holds it, and ids unique.
        #[test]
        fn ranges_always_tile_the_token_space(start in 1u32..8, changes in proptest::collection::vec(change(), 0..64), probes in proptest::collection::vec(any::<u64>(), 16)) {
            let mut map = ShardMap::uniform(start);
            for c in changes {
                let ids: Vec<ShardId> = map.ids().collect();
                let next = match c {
                    Change::Split { pick, at } => {
                        let shard = ids[pick % ids.len()];
                        let r = map.range(shard).ok_or_else(|| TestCaseError::fail("picked shard missing"))?;
                        let at = (r.last > r.first).then(|| r.first + 1 + at % (r.last - r.first));
                        map.split(shard, at)
                    }
                    Change::Merge { pick, upper } => {
                        let i = pick % ids.len();
                        let j = if upper { i + 1 } else { i.wrapping_sub(1) };
                        match ids.get(j) {
                            Some(other) => map.merge(ids[i], *other),
                            None => continue,
                        }
                    }
                };
                if let Ok(m) = next {
                    map = m;
                }
                prop_assert!(map.validate().is_ok(), "{:?}", map.validate());
                let ranges: Vec<ShardRange> = map.ranges().collect();
                prop_assert_eq!(ranges[0].first, 0);
                prop_assert_eq!(ranges[ranges.len() - 1].last, u64::MAX);
                for w in ranges.windows(2) {
                    prop_assert_eq!(w[0].last + 1, w[1].first);
                }
                for &t in &probes {
                    let s = map.shard_of(t);
                    let r = map.range(s).ok_or_else(|| TestCaseError::fail("owner has no range"))?;
                    prop_assert!(r.first <= t && t <= r.last);
                }
            }
        }
    }
}
