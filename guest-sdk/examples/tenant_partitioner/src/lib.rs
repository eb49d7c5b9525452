//! A partitioner: keys are `<tenant>/<rest>` and all of a tenant's keys
//! land on one shard, so the routing key is the key up to (not including)
//! its first `/`. A key without `/` is routed by the whole key.
//!
//! ```text
//! ringkv hook deploy --kind wasm --stage partition --name tenants \
//!     --file target/wasm32-unknown-unknown/release/tenant_partitioner.wasm
//! ```

use ringkv_guest::{partition, RoutingKey};

#[partition]
fn tenant(key: &[u8]) -> RoutingKey {
    match key.iter().position(|&b| b == b'/') {
        Some(slash) => RoutingKey::from(&key[..slash]),
        None => RoutingKey::whole(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_part_before_the_first_slash() {
        assert_eq!(tenant(b"acme/users/1"), RoutingKey::from("acme"));
        assert_eq!(tenant(b"acme/"), RoutingKey::from("acme"));
        assert_eq!(tenant(b"/orphan"), RoutingKey::Key(Vec::new()));
    }

    #[test]
    fn keys_without_a_slash_route_by_the_whole_key() {
        assert_eq!(tenant(b"acme"), RoutingKey::Whole);
        assert_eq!(tenant(b""), RoutingKey::Whole);
    }
}
