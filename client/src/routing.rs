//! Client-side routing: keys to shards, shards to nodes.
//!
//! - `token = xxh3_64(key)` (XXH3, 64-bit, seed 0); shard `i` of `S` owns the
//!   tokens `t` with `⌊t·S / 2⁶⁴⌋ = i`. The node uses these same functions, so
//!   the formula exists once.
//! - `Table` is the routing table a client caches: fetched with
//!   `Cluster.Ring`, it holds every shard's replicas and (when the answering
//!   node knew it) its leader, plus the members' addresses. Its epoch is the
//!   answering node's meta-group applied index.
//! - Requests carry the table's epoch in the [`EPOCH_HEADER`] metadata; a node
//!   whose meta group is behind that epoch catches up before it decides who
//!   owns the key's shard. Replies carry the node's epoch, and
//!   [`FORWARDED_HEADER`] names the node that actually served a request the
//!   receiving node could not serve itself (it was not the shard's leader, or
//!   for an eventual read, not a current replica).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::channel::Channel;

use crate::proto::RingResponse;

/// Request and response metadata: a routing epoch (the meta group's applied index).
pub const EPOCH_HEADER: &str = "ringkv-epoch";
/// Response metadata: the id of the node that served a request the receiving
/// node forwarded (0 when unknown).
pub const FORWARDED_HEADER: &str = "ringkv-forwarded";
/// Between nodes: the routing generation (partition view) a forwarded key
/// request was routed by.
pub const ROUTING_HEADER: &str = "ringkv-routing-gen";

/// A numeric routing header (`ringkv-epoch`, `ringkv-forwarded`) from gRPC metadata.
pub fn header_u64(meta: &tonic::metadata::MetadataMap, name: &str) -> Option<u64> {
    meta.get(name)?.to_str().ok()?.parse().ok()
}

/// The token of a routing key: XXH3-64 with seed 0.
pub fn token(routing_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(routing_key)
}

/// The shard, of `shards`, whose token range holds `token`.
pub fn shard_of_token(token: u64, shards: u32) -> u32 {
    ((u128::from(token) * u128::from(shards)) >> 64) as u32
}

/// The shard, of `shards`, holding `key` (its routing key is the whole key).
pub fn shard_of_key(key: &[u8], shards: u32) -> u32 {
    shard_of_token(token(key), shards)
}

/// A member of the cluster as the table knows it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) addr: String,
    pub(crate) channel: Channel,
    /// Milliseconds (on the router's clock) until which requests avoid this
    /// node because connecting to it failed.
    pub(crate) avoid_until: AtomicU64,
}

/// One shard's route.
#[derive(Debug)]
pub(crate) struct Route {
    /// Node id of the leader, 0 when unknown. Updated in place from replies.
    pub(crate) leader: AtomicU64,
    pub(crate) replicas: Vec<u64>,
}

/// A routing table fetched with `Cluster.Ring`. Immutable except for leader
/// hints and avoidance marks, which replies update in place.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) epoch: u64,
    pub(crate) shards: u32,
    pub(crate) members: HashMap<u64, Member>,
    /// Indexed by shard; shards the answer did not mention have no replicas.
    pub(crate) routes: Vec<Route>,
    /// (first token, shard) in token order, when the answer gave every
    /// shard's range (shards have split or merged); empty: the `shards`
    /// equal ranges.
    pub(crate) ranges: Vec<(u64, u32)>,
    /// A partition function decides keys' shards: the client cannot tell a
    /// key's shard, so it spreads key requests over the members.
    pub(crate) partitioned: bool,
}

impl Table {
    /// Builds a table from a `Ring` answer. `channel` gives the (shared)
    /// channel of an address; `previous` carries leader hints and avoidance
    /// marks over when they still apply.
    pub(crate) fn from_ring(
        ring: &RingResponse,
        mut channel: impl FnMut(&str) -> Option<Channel>,
        previous: Option<&Table>,
    ) -> Table {
        let mut members = HashMap::new();
        for n in &ring.nodes {
            let Some(ch) = channel(&n.addr) else { continue };
            let avoid = previous
                .and_then(|p| p.members.get(&n.id))
                .filter(|m| m.addr == n.addr)
                .map_or(0, |m| m.avoid_until.load(Ordering::Relaxed));
            members.insert(n.id, Member { addr: n.addr.clone(), channel: ch, avoid_until: AtomicU64::new(avoid) });
        }
        let mut ranges: Vec<(u64, u32)> =
            ring.routes.iter().filter_map(|r| r.first_token.map(|first| (first, r.shard))).collect();
        ranges.sort_unstable();
        // Only a table whose ranges start at token 0 and cover every
        // listed shard is used; anything else routes by the formula.
        if ranges.first().map(|r| r.0) != Some(0) {
            ranges.clear();
        }
        let slots = ring.routes.iter().map(|r| r.shard + 1).max().unwrap_or(0).max(ring.shards);
        let mut routes: Vec<Route> =
            (0..slots).map(|_| Route { leader: AtomicU64::new(0), replicas: Vec::new() }).collect();
        for r in &ring.routes {
            let Some(route) = routes.get_mut(r.shard as usize) else { continue };
            let mut leader = r.leader_id;
            if leader == 0 {
                // Keep a hint learned from replies while that node still holds a replica.
                let hint = previous
                    .filter(|p| p.shards == ring.shards && p.ranges.is_empty() == ranges.is_empty())
                    .and_then(|p| p.routes.get(r.shard as usize))
                    .map_or(0, |old| old.leader.load(Ordering::Relaxed));
                if r.replicas.contains(&hint) {
                    leader = hint;
                }
            }
            route.leader = AtomicU64::new(leader);
            route.replicas = r.replicas.clone();
        }
        // A server that gives ranges says separately whether a partition
        // function routes; an older one folds it into `partitioned`.
        let partitioned = if ranges.is_empty() { ring.partitioned } else { ring.function_routes };
        Table { epoch: ring.epoch, shards: ring.shards, members, routes, ranges, partitioned }
    }

    pub(crate) fn shard_of(&self, key: &[u8]) -> u32 {
        if self.ranges.is_empty() {
            return shard_of_key(key, self.shards);
        }
        let t = token(key);
        let i = self.ranges.partition_point(|(first, _)| *first <= t);
        self.ranges[i.saturating_sub(1)].1
    }

    /// Nodes to try for a request on `shard`, best first, without nodes
    /// avoided at `now_ms` unless nothing else is left. `leader_first` puts
    /// the known leader first (writes, linearizable reads); otherwise the
    /// replicas are rotated by `spread` so eventual reads share the load.
    pub(crate) fn candidates(&self, shard: u32, leader_first: bool, spread: usize, now_ms: u64) -> Vec<u64> {
        let Some(route) = self.routes.get(shard as usize) else { return Vec::new() };
        let known: Vec<u64> = route.replicas.iter().copied().filter(|id| self.members.contains_key(id)).collect();
        let mut out = Vec::with_capacity(known.len() + 1);
        let leader = route.leader.load(Ordering::Relaxed);
        if leader_first && leader != 0 && self.members.contains_key(&leader) {
            out.push(leader);
        }
        if !known.is_empty() {
            let start = if leader_first { 0 } else { spread % known.len() };
            for i in 0..known.len() {
                let id = known[(start + i) % known.len()];
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        let avoided = |id: &u64| self.members.get(id).is_some_and(|m| m.avoid_until.load(Ordering::Relaxed) > now_ms);
        if out.iter().any(|id| !avoided(id)) {
            out.retain(|id| !avoided(id));
        }
        out
    }

    /// Records that `leader` served a leader request on `shard`. Returns
    /// false when the table does not know it as a replica of the shard (the
    /// table is out of date).
    pub(crate) fn learn_leader(&self, shard: u32, leader: u64) -> bool {
        match self.routes.get(shard as usize) {
            Some(route) if leader != 0 && route.replicas.contains(&leader) && self.members.contains_key(&leader) => {
                route.leader.store(leader, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Makes requests avoid `node` until `until_ms`, and forgets it as a leader.
    pub(crate) fn avoid(&self, node: u64, until_ms: u64) {
        if let Some(m) = self.members.get(&node) {
            m.avoid_until.fetch_max(until_ms, Ordering::Relaxed);
        }
        for r in &self.routes {
            let _ = r.leader.compare_exchange(node, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeStatus, ShardRoute};

    fn lazy(addr: &str) -> Option<Channel> {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()
            .map(|e| Channel::new(e.connect_lazy(), None, addr))
    }

    fn ring(epoch: u64, routes: &[(u32, u64, &[u64])]) -> RingResponse {
        RingResponse {
            shards: 4,
            replication_factor: 3,
            vnodes: 64,
            partitioned: false,
            function_routes: false,
            cluster_id: String::new(),
            epoch,
            nodes: (1..=4)
                .map(|id| NodeStatus { id, addr: format!("127.0.0.1:{}", 7000 + id), role: "voter".into() })
                .collect(),
            routes: routes
                .iter()
                .map(|(shard, leader_id, replicas)| ShardRoute {
                    shard: *shard,
                    leader_id: *leader_id,
                    replicas: replicas.to_vec(),
                    ..ShardRoute::default()
                })
                .collect(),
        }
    }

    #[test]
    fn tokens_are_xxh3_with_seed_zero() {
        // XXH3-64 of the empty input, seed 0, as published by the xxHash project.
        assert_eq!(token(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(token(b"key"), xxhash_rust::xxh3::xxh3_64_with_seed(b"key", 0));
    }

    #[test]
    fn shards_cut_the_token_space_into_equal_ranges() {
        for shards in [1u32, 2, 3, 7, 16, 64, 4096] {
            assert_eq!(shard_of_token(0, shards), 0);
            assert_eq!(shard_of_token(u64::MAX, shards), shards - 1);
            for i in 1..shards.min(64) {
                // The first token of shard i is ⌈i·2⁶⁴/S⌉.
                let start = ((u128::from(i) << 64).div_ceil(u128::from(shards))) as u64;
                assert_eq!(shard_of_token(start, shards), i, "S={shards} i={i}");
                assert_eq!(shard_of_token(start - 1, shards), i - 1, "S={shards} i={i}");
            }
        }
        assert_eq!(shard_of_key(b"anything", 1), 0);
        assert_eq!(shard_of_key(b"k1", 16), shard_of_token(token(b"k1"), 16));
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let mut hits = [0u32; 16];
        for i in 0..16_000 {
            hits[shard_of_key(format!("key{i}").as_bytes(), 16) as usize] += 1;
        }
        assert!(hits.iter().all(|h| (700..=1300).contains(h)), "{hits:?}");
    }

    // Channels connect lazily but need a runtime to be created in.
    #[tokio::test]
    async fn keys_route_by_the_ranges_the_server_gives() {
        // Shard 0 of 2 split at 2^62: shard 2 owns [2^62, 2^63).
        let mut answer = ring(3, &[(0, 1, &[1, 2, 3]), (2, 1, &[1, 2, 3]), (1, 2, &[1, 2, 3])]);
        answer.shards = 2;
        answer.partitioned = true;
        for (route, (first, last)) in
            answer.routes.iter_mut().zip([(0, (1 << 62) - 1), (1 << 62, (1 << 63) - 1), (1 << 63, u64::MAX)])
        {
            route.first_token = Some(first);
            route.last_token = Some(last);
        }
        let t = Table::from_ring(&answer, lazy, None);
        assert!(!t.partitioned, "ranges without a partition function route by key");
        for i in 0..2000 {
            let key = format!("key{i}");
            let tok = token(key.as_bytes());
            let want = if tok < 1 << 62 {
                0
            } else if tok < 1 << 63 {
                2
            } else {
                1
            };
            assert_eq!(t.shard_of(key.as_bytes()), want, "{key}");
        }
        assert_eq!(t.candidates(2, true, 0, 0), vec![1, 2, 3]);
        // A partition function still hides the key's shard.
        answer.function_routes = true;
        assert!(Table::from_ring(&answer, lazy, None).partitioned);
        // An older server gives no ranges: the formula and its flag.
        let old = ring(3, &[(0, 1, &[1, 2, 3])]);
        let t = Table::from_ring(&old, lazy, None);
        assert!(t.ranges.is_empty() && !t.partitioned);
        assert_eq!(t.shard_of(b"k1"), shard_of_key(b"k1", 4));
    }

    #[tokio::test]
    async fn leader_requests_go_to_the_leader_first() {
        let t = Table::from_ring(&ring(7, &[(0, 2, &[1, 2, 3]), (1, 0, &[2, 3, 4])]), lazy, None);
        assert_eq!(t.epoch, 7);
        assert_eq!(t.candidates(0, true, 0, 0), vec![2, 1, 3]);
        // Leader unknown: the replicas in their recorded order.
        assert_eq!(t.candidates(1, true, 0, 0), vec![2, 3, 4]);
        // Shards the answer did not mention have no route.
        assert!(t.candidates(2, true, 0, 0).is_empty());
        assert!(t.candidates(99, true, 0, 0).is_empty());
    }

    #[tokio::test]
    async fn eventual_reads_rotate_over_the_replicas() {
        let t = Table::from_ring(&ring(1, &[(0, 2, &[1, 2, 3])]), lazy, None);
        let firsts: Vec<u64> = (0..6).map(|i| t.candidates(0, false, i, 0)[0]).collect();
        assert_eq!(firsts, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(t.candidates(0, false, 1, 0), vec![2, 3, 1]);
    }

    #[tokio::test]
    async fn avoided_nodes_go_last_unless_nothing_else_is_left() {
        let t = Table::from_ring(&ring(1, &[(0, 2, &[1, 2, 3]), (1, 0, &[2])]), lazy, None);
        t.avoid(2, 1_000);
        assert_eq!(t.candidates(0, true, 0, 500), vec![1, 3], "node 2 avoided, and forgotten as leader");
        assert_eq!(t.candidates(0, true, 0, 1_500), vec![1, 2, 3], "avoidance expires");
        assert_eq!(t.candidates(1, true, 0, 500), vec![2], "the only replica is still tried");
    }

    #[tokio::test]
    async fn leader_hints_are_learned_and_survive_a_refresh_while_valid() {
        let old = Table::from_ring(&ring(1, &[(0, 0, &[1, 2, 3]), (1, 0, &[2, 3, 4])]), lazy, None);
        assert!(old.learn_leader(0, 3));
        assert!(old.learn_leader(1, 4));
        assert!(!old.learn_leader(0, 4), "node 4 is not a replica of shard 0 in this table");
        assert_eq!(old.candidates(0, true, 0, 0)[0], 3);
        // The new answer knows no leaders; shard 1 moved off node 4.
        let new = Table::from_ring(&ring(2, &[(0, 0, &[1, 2, 3]), (1, 0, &[1, 2, 3])]), lazy, Some(&old));
        assert_eq!(new.routes[0].leader.load(Ordering::Relaxed), 3);
        assert_eq!(new.routes[1].leader.load(Ordering::Relaxed), 0);
        // A leader the answer names wins over the hint.
        let newer = Table::from_ring(&ring(3, &[(0, 1, &[1, 2, 3])]), lazy, Some(&new));
        assert_eq!(newer.routes[0].leader.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn members_without_a_usable_address_are_left_out() {
        let t = Table::from_ring(
            &ring(1, &[(0, 4, &[3, 4])]),
            |addr: &str| if addr.ends_with("7004") { None } else { lazy(addr) },
            None,
        );
        assert_eq!(t.candidates(0, true, 0, 0), vec![3]);
    }
}
