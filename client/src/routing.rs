//! Client-side routing: keys to shards, and the routing metadata.
//!
//! - `token = xxh3_64(key)` (XXH3, 64-bit, seed 0); shard `i` of `S` owns the
//!   tokens `t` with `⌊t·S / 2⁶⁴⌋ = i`. The node uses these same functions, so
//!   the formula exists once.
//! - Requests carry the epoch of the client's routing table (the meta group's
//!   applied index when it was fetched) in the [`EPOCH_HEADER`] metadata; a
//!   node whose meta group is behind that epoch catches up before it decides
//!   who owns the key's shard. Replies carry the node's epoch, and
//!   [`FORWARDED_HEADER`] names the node that actually served a request the
//!   receiving node could not serve itself (it was not the shard's leader, or
//!   for an eventual read, not a current replica).

/// Request and response metadata: a routing epoch (the meta group's applied index).
pub const EPOCH_HEADER: &str = "ringkv-epoch";
/// Response metadata: the id of the node that served a request the receiving
/// node forwarded (0 when unknown).
pub const FORWARDED_HEADER: &str = "ringkv-forwarded";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
