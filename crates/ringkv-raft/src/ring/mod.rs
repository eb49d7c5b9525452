//! Ring: keys to tokens, tokens to shards, shards to replicas.
//!
//! - `token = xxh3_64(routing_key)` (XXH3, 64-bit, seed 0): fast, stable across
//!   versions and platforms, and specified publicly.
//! - The token space is cut into shard ranges ([`ShardMap`]): a cluster
//!   starts with `shards` equal ones, shard `i` owning
//!   `[⌈i·2⁶⁴/S⌉, ⌈(i+1)·2⁶⁴/S⌉)` ([`shard_start`]), which splits and
//!   merges then change.
//! - Each node places `vnodes` virtual points at `xxh3_64("ringkv-vnode" · id · i)`.
//! - [`place`] gives each shard its replicas: the first RF distinct nodes
//!   walking clockwise from the shard's start token, skipping nodes already at
//!   the load cap `⌈RF·S/N⌉`; then a fix-up pass moves replicas from nodes
//!   above `⌊RF·S/N⌋` to nodes below it. Every node ends with `⌊RF·S/N⌋` or
//!   `⌈RF·S/N⌉` replicas, so max − min ≤ 1.
//! - Movement: one node joining or leaving moves at most `2·RF·S/N + RF`
//!   replicas up to 10 nodes and `2·RF·S/N + RF·S/3` beyond (N = the larger
//!   member count), checked by property tests for 3 to 50 nodes. Measured with
//!   S=64, RF=3: 1.0–1.5× the ideal `RF·S/N` on average up to 10 nodes, about
//!   2.8× on average at 50 nodes, where S is far below the recommended 10× the
//!   node count.
//!
//! Placement is a pure function of the member set, the ring settings and
//! the shard map, so every node computes the same answer.

pub mod partition;
mod shard_map;

pub use shard_map::{ShardMap, ShardRange, MAX_SHARDS};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
pub use crate::ids::ShardId;

/// Ring settings, fixed when the cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingConfig {
    /// Number of shards S. Default 1 (ARCHITECTURE.md → Cost of many shards).
    pub shards: u32,
    /// Replicas per shard RF. Default 3; capped by the node count.
    pub replication_factor: u32,
    /// Virtual points per node V. Default 64.
    pub vnodes: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self { shards: 1, replication_factor: 3, vnodes: 64 }
    }
}

impl RingConfig {
    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.shards) {
            return Err(format!("shards must be between 1 and 4096, got {}", self.shards));
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err(format!("replication factor must be between 1 and 7, got {}", self.replication_factor));
        }
        if !(1..=1024).contains(&self.vnodes) {
            return Err(format!("vnodes must be between 1 and 1024, got {}", self.vnodes));
        }
        Ok(())
    }

    /// The shard owning `key` when its routing key is the whole key.
    pub fn shard_of_key(&self, key: &[u8]) -> ShardId {
        shard_of(token(key), self.shards)
    }

    /// The shard owning a key whose routing key is `routing_key` (what the
    /// partition function returned; `None`: the whole `key`).
    pub fn shard_of_routed(&self, key: &[u8], routing_key: Option<&[u8]>) -> ShardId {
        shard_of(token(routing_key.unwrap_or(key)), self.shards)
    }
}

/// The token of a routing key. Clients compute the same function
/// ([`ringkv_client::routing::token`]); this is it.
pub fn token(routing_key: &[u8]) -> u64 {
    ringkv_client::routing::token(routing_key)
}

/// The shard whose range holds `token`; the client's formula, so both agree.
pub fn shard_of(token: u64, shards: u32) -> ShardId {
    ringkv_client::routing::shard_of_token(token, shards)
}

/// First token of `shard`: the smallest token that [`shard_of`] maps to it.
pub fn shard_start(shard: ShardId, shards: u32) -> u64 {
    ((u128::from(shard) << 64).div_ceil(u128::from(shards))) as u64
}

fn vnode_token(node: NodeId, i: u32) -> u64 {
    let mut buf = Vec::with_capacity(24);
    buf.extend_from_slice(b"ringkv-vnode");
    buf.extend_from_slice(&node.to_be_bytes());
    buf.extend_from_slice(&i.to_be_bytes());
    token(&buf)
}

/// Replicas of every shard, indexed by shard id. The first replica is the
/// preferred leader.
pub type Placement = Vec<Vec<NodeId>>;

/// [`place_map`] over the `config.shards` equal ranges, indexed by shard.
pub fn place(config: &RingConfig, nodes: &BTreeSet<NodeId>) -> Placement {
    place_map(&ShardMap::uniform(config.shards), config, nodes).into_values().collect()
}

/// Computes the replicas of every shard of `map` for `nodes` (`config`
/// gives the replication factor and virtual points). Empty `nodes` gives
/// empty replica sets.
///
/// Every (shard, node) pair gets a distance: how far clockwise from the
/// shard's start the node's first virtual point lies. Pairs are taken in
/// increasing distance, each shard taking its first RF distinct nodes as in a
/// plain ring walk, except that a node already at the cap `⌈RF·S/N⌉` is
/// skipped. Taking pairs in one global order (not shard by shard) keeps a
/// join or leave from cascading through every later shard. A final pass lifts
/// nodes below `⌊RF·S/N⌋` by taking, for each, its nearest replica from the
/// most loaded node.
pub fn place_map(map: &ShardMap, config: &RingConfig, nodes: &BTreeSet<NodeId>) -> BTreeMap<ShardId, Vec<NodeId>> {
    let ranges: Vec<ShardRange> = map.ranges().collect();
    let s = ranges.len();
    if nodes.is_empty() {
        return ranges.iter().map(|r| (r.shard, Vec::new())).collect();
    }
    let n = nodes.len();
    let rf = (config.replication_factor as usize).min(n);
    let total = s * rf;
    let cap = total.div_ceil(n);
    let floor = total / n;

    let mut points: Vec<(u64, NodeId)> =
        nodes.iter().flat_map(|&id| (0..config.vnodes).map(move |i| (vnode_token(id, i), id))).collect();
    points.sort_unstable();

    // distance[(shard position, node)] = clockwise distance from the shard
    // start to the node's first point.
    let mut pairs: Vec<(u64, ShardId, NodeId)> = Vec::with_capacity(s * n);
    for (pos, range) in ranges.iter().enumerate() {
        let shard = pos as ShardId;
        let start = range.first;
        let first = points.partition_point(|(t, _)| *t < start);
        let mut seen = BTreeSet::new();
        for i in 0..points.len() {
            let (t, node) = points[(first + i) % points.len()];
            if seen.insert(node) {
                pairs.push((t.wrapping_sub(start), shard, node));
                if seen.len() == n {
                    break;
                }
            }
        }
    }
    pairs.sort_unstable();

    let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|&id| (id, 0)).collect();
    let mut placement: Vec<Vec<(u64, NodeId)>> = vec![Vec::with_capacity(rf); s];
    // Pass 1 respects the cap; pass 2 fills what the cap left short.
    for respect_cap in [true, false] {
        for &(dist, shard, node) in &pairs {
            let replicas = &mut placement[shard as usize];
            let l = load.entry(node).or_default();
            if replicas.len() < rf && (!respect_cap || *l < cap) && !replicas.iter().any(|(_, r)| *r == node) {
                replicas.push((dist, node));
                *l += 1;
            }
        }
    }
    let distance: BTreeMap<(ShardId, NodeId), u64> = pairs.iter().map(|&(d, sh, nd)| ((sh, nd), d)).collect();
    even_out(&mut placement, &mut load, &distance, floor, cap);
    placement
        .into_iter()
        .zip(&ranges)
        .map(|(mut r, range)| {
            r.sort_unstable();
            (range.shard, r.into_iter().map(|(_, node)| node).collect())
        })
        .collect()
}

/// Moves replicas until every node holds between `floor` and `cap`: the
/// least loaded node takes, from the most loaded one, the shard nearest to it
/// on the ring among those it does not already replicate.
fn even_out(
    placement: &mut [Vec<(u64, NodeId)>],
    load: &mut BTreeMap<NodeId, usize>,
    distance: &BTreeMap<(ShardId, NodeId), u64>,
    floor: usize,
    cap: usize,
) {
    loop {
        let over_cap = load.values().any(|&l| l > cap);
        let Some((&to, &to_load)) = load.iter().min_by_key(|(id, l)| (**l, **id)) else { return };
        if !(to_load < floor || (over_cap && to_load < cap)) {
            return;
        }
        let Some((&from, &from_load)) = load.iter().max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id))) else {
            return;
        };
        if from_load <= floor || from_load <= to_load + 1 {
            return;
        }
        let best = placement
            .iter()
            .enumerate()
            .filter(|(_, r)| r.iter().any(|(_, n)| *n == from) && !r.iter().any(|(_, n)| *n == to))
            .filter_map(|(shard, _)| distance.get(&(shard as ShardId, to)).map(|d| (*d, shard)))
            .min();
        let Some((dist, shard)) = best else { return };
        if let Some(slot) = placement[shard].iter_mut().find(|(_, n)| *n == from) {
            *slot = (dist, to);
        }
        *load.entry(from).or_default() -= 1;
        *load.entry(to).or_default() += 1;
    }
}

/// The replica that should lead each shard, spreading leaders evenly.
///
/// Shards in order first each take, among their replicas that are not
/// `down`, the one leading the fewest shards so far (ties: the earliest
/// listed). Greedy order alone can leave a node two or more above the even
/// share, so augmenting paths then move leadership off the busiest node
/// along a chain of shards until no chain ends at a node with room. That is
/// the optimal bottleneck assignment: with a balanced placement no node
/// leads more than `⌈S/N⌉`. A pure function of the recorded replicas, so
/// every node computes the same answer.
pub fn preferred_leaders(
    replicas: &BTreeMap<ShardId, Vec<NodeId>>,
    down: &BTreeSet<NodeId>,
) -> BTreeMap<ShardId, NodeId> {
    let mut leading: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (&shard, nodes) in replicas {
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !down.contains(n))
            .min_by_key(|(i, n)| (leading.get(n).copied().unwrap_or(0), *i))
            .map(|(_, n)| *n);
        if let Some(n) = best {
            *leading.entry(n).or_default() += 1;
            out.insert(shard, n);
        }
    }
    while shift_one_leader(replicas, down, &mut out, &mut leading) {}
    out
}

/// Moves one unit of leadership off the busiest node along the shortest
/// chain `busiest -s1-> a -s2-> b …` that ends at a node leading at least
/// two fewer shards. Returns false when no such chain exists.
fn shift_one_leader(
    replicas: &BTreeMap<ShardId, Vec<NodeId>>,
    down: &BTreeSet<NodeId>,
    out: &mut BTreeMap<ShardId, NodeId>,
    leading: &mut BTreeMap<NodeId, usize>,
) -> bool {
    // The busiest node, lowest id on ties, so the result is deterministic.
    let Some((&busiest, &max)) = leading.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n))) else {
        return false;
    };
    // Breadth-first over nodes; `via[n]` is the shard whose leadership
    // would move to `n`, taken from the node that currently leads it.
    let mut via: BTreeMap<NodeId, ShardId> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([busiest]);
    let mut end = None;
    'search: while let Some(from) = queue.pop_front() {
        for (&shard, _) in out.iter().filter(|(_, l)| **l == from) {
            for &to in &replicas[&shard] {
                if to == busiest || down.contains(&to) || via.contains_key(&to) {
                    continue;
                }
                via.insert(to, shard);
                if leading.get(&to).copied().unwrap_or(0) + 2 <= max {
                    end = Some(to);
                    break 'search;
                }
                queue.push_back(to);
            }
        }
    }
    let Some(mut to) = end else { return false };
    *leading.entry(to).or_default() += 1;
    loop {
        let shard = via[&to];
        let from = out.insert(shard, to).expect("every shard on the chain has a leader");
        if from == busiest {
            *leading.entry(busiest).or_default() -= 1;
            return true;
        }
        to = from;
    }
}

/// Replicas per node in a placement.
pub fn load_of(placement: &Placement) -> BTreeMap<NodeId, usize> {
    let mut load = BTreeMap::new();
    for r in placement.iter().flatten() {
        *load.entry(*r).or_default() += 1;
    }
    load
}

/// Replicas that `to` has and `from` lacks, summed over shards: the replica
/// moves needed to go from one placement to the other.
pub fn moves_between(from: &Placement, to: &Placement) -> usize {
    from.iter().zip(to).map(|(a, b)| b.iter().filter(|n| !a.contains(n)).count()).sum()
}

#[cfg(test)]
mod tests;
