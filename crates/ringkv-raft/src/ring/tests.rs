use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// The ring most tests place: 64 shards (the default is 1, which places
/// nothing worth checking).
const SIXTY_FOUR: RingConfig = RingConfig { shards: 64, replication_factor: 3, vnodes: 64 };

fn nodes(ids: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    ids.into_iter().collect()
}

fn check_placement(config: &RingConfig, members: &BTreeSet<u64>) {
    let p = place(config, members);
    let rf = (config.replication_factor as usize).min(members.len());
    assert_eq!(p.len(), config.shards as usize);
    for (shard, replicas) in p.iter().enumerate() {
        assert_eq!(replicas.len(), rf, "shard {shard} has {replicas:?}");
        let distinct: BTreeSet<_> = replicas.iter().collect();
        assert_eq!(distinct.len(), rf, "shard {shard} repeats a node: {replicas:?}");
        assert!(replicas.iter().all(|r| members.contains(r)), "shard {shard} uses a non-member");
    }
    let load = load_of(&p);
    let total = config.shards as usize * rf;
    let (floor, cap) = (total / members.len(), total.div_ceil(members.len()));
    for m in members {
        let l = load.get(m).copied().unwrap_or(0);
        assert!(
            (floor..=cap).contains(&l),
            "node {m} has {l} replicas, outside [{floor}, {cap}] for {} nodes",
            members.len()
        );
    }
}

#[test]
fn shards_split_the_token_space_evenly() {
    for s in [1u32, 3, 64, 1000] {
        assert_eq!(shard_of(0, s), 0);
        assert_eq!(shard_of(u64::MAX, s), s - 1);
        for i in 0..s {
            assert_eq!(shard_of(shard_start(i, s), s), i, "start of shard {i} of {s}");
            if i > 0 {
                assert_eq!(shard_of(shard_start(i, s) - 1, s), i - 1);
            }
        }
    }
}

#[test]
fn token_is_the_documented_xxh3() {
    // XXH3-64 of the empty input with seed 0, as published by the XXH3 reference.
    assert_eq!(token(b""), 0x2D06800538D394C2);
}

#[test]
fn nodes_and_clients_map_keys_to_the_same_shards() {
    for shards in [1u32, 4, 16, 64, 1000, 4096] {
        let config = RingConfig { shards, ..SIXTY_FOUR };
        for i in 0..5_000u32 {
            let key = format!("key/{i}/{}", i.wrapping_mul(2_654_435_761));
            let host = config.shard_of_key(key.as_bytes());
            assert_eq!(host, ringkv_client::routing::shard_of_key(key.as_bytes(), shards), "{key:?} S={shards}");
            // And both follow the documented formula: ⌊xxh3_64(key)·S / 2⁶⁴⌋.
            let reference = (u128::from(xxhash_rust::xxh3::xxh3_64(key.as_bytes())) * u128::from(shards)) >> 64;
            assert_eq!(u128::from(host), reference, "{key:?} S={shards}");
        }
    }
}

#[test]
fn placement_is_deterministic_and_balanced_for_3_to_50_nodes() {
    let config = SIXTY_FOUR;
    for n in 3..=50u64 {
        let members = nodes(1..=n);
        assert_eq!(place(&config, &members), place(&config, &members));
        check_placement(&config, &members);
    }
}

#[test]
fn fewer_nodes_than_rf_caps_the_replica_count() {
    let config = SIXTY_FOUR;
    for n in 1..=2u64 {
        check_placement(&config, &nodes(1..=n));
    }
    assert!(place(&config, &BTreeSet::new()).iter().all(|r| r.is_empty()));
}

/// The documented bound on replica moves when one node joins or leaves a
/// cluster whose larger size is `n`: `2·RF·S/n + RF` up to 10 nodes, and
/// `2·RF·S/n + RF·S/3` beyond, where S=64 is well below the recommended 10×
/// the node count and keeping every node within one replica of the others
/// cascades. See `movement_report` for measured distributions.
fn movement_bound(config: &RingConfig, n: usize) -> usize {
    let total = (config.shards * config.replication_factor) as usize;
    let slack = if n <= 10 { config.replication_factor as usize } else { total / 3 };
    (2 * total).div_ceil(n) + slack
}

#[test]
#[ignore = "prints the movement distribution; run with --ignored --nocapture"]
fn movement_report() {
    let config = SIXTY_FOUR;
    for n in [3usize, 4, 5, 6, 8, 10, 16, 20, 32, 50] {
        let mut worst = 0.0f64;
        let mut sum = 0.0;
        for seed in 0..50u64 {
            let members: BTreeSet<u64> = (0..n as u64).map(|i| 1 + i * 7919 + seed * 104_729).collect();
            let mut more = members.clone();
            more.insert(10_000_000 + seed);
            let moved = moves_between(&place(&config, &members), &place(&config, &more));
            let ideal = (config.shards * config.replication_factor) as f64 / (n + 1) as f64;
            worst = worst.max(moved as f64 / ideal);
            sum += moved as f64 / ideal;
        }
        println!("n={n:>2} -> {}: mean moved/ideal {:.2}, worst {:.2}", n + 1, sum / 50.0, worst);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn balanced_for_any_member_ids(ids in proptest::collection::btree_set(1u64..1_000_000, 3..=50)) {
        check_placement(&SIXTY_FOUR, &ids);
    }

    #[test]
    fn adding_a_node_moves_few_replicas(ids in proptest::collection::btree_set(1u64..1_000_000, 3..=49), new in 1_000_000u64..2_000_000) {
        let config = SIXTY_FOUR;
        let mut more = ids.clone();
        more.insert(new);
        let moved = moves_between(&place(&config, &ids), &place(&config, &more));
        let bound = movement_bound(&config, more.len());
        prop_assert!(moved <= bound, "adding node {} to {} nodes moved {} replicas; bound {}", new, ids.len(), moved, bound);
        // The new node receives its share.
        let load = load_of(&place(&config, &more));
        prop_assert!(load.get(&new).copied().unwrap_or(0) >= (config.shards * config.replication_factor) as usize / more.len());
    }

    #[test]
    fn removing_a_node_moves_few_replicas(ids in proptest::collection::btree_set(1u64..1_000_000, 4..=50), pick in any::<prop::sample::Index>()) {
        let config = SIXTY_FOUR;
        let gone = *pick.get(&ids.iter().copied().collect::<Vec<_>>());
        let mut fewer = ids.clone();
        fewer.remove(&gone);
        let before = place(&config, &ids);
        let after = place(&config, &fewer);
        prop_assert!(after.iter().all(|r| !r.contains(&gone)));
        let moved = moves_between(&before, &after);
        let bound = movement_bound(&config, ids.len());
        prop_assert!(moved <= bound, "removing node {} from {} nodes moved {} replicas; bound {}", gone, ids.len(), moved, bound);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn small_clusters_move_at_most_twice_the_ideal(ids in proptest::collection::btree_set(1u64..1_000_000, 3..=9), new in 1_000_000u64..2_000_000) {
        let config = SIXTY_FOUR;
        let mut more = ids.clone();
        more.insert(new);
        let moved = moves_between(&place(&config, &ids), &place(&config, &more));
        let bound = movement_bound(&config, more.len());
        prop_assert!(moved <= bound, "{} -> {} nodes moved {}; bound {}", ids.len(), more.len(), moved, bound);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No node leads more than the even share `⌈S/N⌉` over a balanced placement.
    #[test]
    fn preferred_leaders_are_spread_evenly(n in 2u64..=30, shards in 1u32..=256) {
        let members = nodes(1..=n);
        let config = RingConfig { shards, ..SIXTY_FOUR };
        let p = place(&config, &members);
        let replicas: BTreeMap<ShardId, Vec<NodeId>> =
            p.iter().enumerate().map(|(s, r)| (s as ShardId, r.clone())).collect();
        let leaders = preferred_leaders(&replicas, &BTreeSet::new());
        prop_assert_eq!(leaders.len(), shards as usize);
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (shard, l) in &leaders {
            prop_assert!(p[*shard as usize].contains(l));
            *count.entry(*l).or_default() += 1;
        }
        let even = (shards as usize).div_ceil(n as usize);
        let max = count.values().copied().max().unwrap_or(0);
        prop_assert!(max <= even, "a node leads {} shards; the even share is {}: {:?}", max, even, count);
    }
}

#[test]
fn preferred_leaders_skip_down_nodes() {
    let replicas = BTreeMap::from([(0, vec![1, 2, 3]), (1, vec![1, 2, 3]), (2, vec![2, 1, 3])]);
    let leaders = preferred_leaders(&replicas, &nodes([1]));
    assert!(leaders.values().all(|l| *l != 1), "{leaders:?}");
    assert_eq!(leaders.len(), 3);
}
