//! When shards split on their own: the spread policy.
//!
//! A cluster starts with few shards (one by default), which is fastest while
//! it has no more nodes than the replication factor: every node then holds
//! every shard anyway. Once it has more, there must be enough shard
//! replicas for placement to spread data evenly. The meta leader, while no
//! split, merge or re-shard job runs, splits the shard with the widest token
//! range until the cluster has [`target_shards`]: a power of two of at least
//! `auto_split_replicas_per_node × N / RF` shards (N active members).
//! Splits come before the rebalancer's moves (which wait for them): a new
//! shard starts on its parent's replicas, so splitting first moves each
//! replica once, and the moves carry smaller shards.
//!
//! Hysteresis: the policy only ever splits, one shard at a time (a split is
//! a job, and no other starts while one runs); nodes leaving never trigger
//! a merge, so a cluster whose size wobbles does not split and merge back
//! and forth.
//! Powers of two keep the ranges equal: with uniform hashing each shard
//! holds about the same bytes, so spreading replicas evenly spreads bytes
//! evenly.

use super::{Node, NodeError};
use crate::ring::partition::ShardChange;
use crate::ring::{ShardMap, ShardRange};

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
}
