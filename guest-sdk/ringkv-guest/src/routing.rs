//! [`RoutingKey`]: what a partitioner returns.

/// The part of a key that decides its shard: keys with equal routing keys
/// land on the same shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoutingKey {
    /// Route by the whole key (what happens without a partitioner).
    Whole,
    /// Route by these bytes (at most 4096; may be empty, which sends every
    /// such key to one shard).
    Key(Vec<u8>),
}

impl RoutingKey {
    /// Route by the whole key.
    pub fn whole() -> Self {
        RoutingKey::Whole
    }

    /// Route by `bytes`.
    pub fn key(bytes: impl Into<Vec<u8>>) -> Self {
        RoutingKey::Key(bytes.into())
    }
}

impl From<&[u8]> for RoutingKey {
    fn from(bytes: &[u8]) -> Self {
        RoutingKey::Key(bytes.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for RoutingKey {
    fn from(bytes: &[u8; N]) -> Self {
        RoutingKey::Key(bytes.to_vec())
    }
}

impl From<Vec<u8>> for RoutingKey {
    fn from(bytes: Vec<u8>) -> Self {
        RoutingKey::Key(bytes)
    }
}

impl From<&str> for RoutingKey {
    fn from(s: &str) -> Self {
        RoutingKey::Key(s.as_bytes().to_vec())
    }
}

impl From<String> for RoutingKey {
    fn from(s: String) -> Self {
        RoutingKey::Key(s.into_bytes())
    }
}
