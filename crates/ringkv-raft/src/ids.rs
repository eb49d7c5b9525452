//! The identifiers and the clock every layer shares: nodes, Raft groups and
//! shards, and the wall-clock milliseconds entries are stamped with. They
//! live at the bottom so that storage, hooks and the ring need not reach up
//! into the Raft or cluster layers for a type alias.

/// A member of the cluster, for its whole life (never reused).
pub type NodeId = u64;

/// Identifies one Raft group on the node. 0 is the meta group (defined with
/// the storage that keys every group's data by it).
pub use ringkv_storage::GroupId;

/// Index of a shard, `0..shards`.
pub type ShardId = u32;

/// The group holding cluster configuration.
pub const META_GROUP: GroupId = 0;

/// The Raft group of a shard: shard `i` is group `i + 1`.
pub fn shard_group(shard: ShardId) -> GroupId {
    GroupId::from(shard) + 1
}

/// Milliseconds since the Unix epoch, by this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
