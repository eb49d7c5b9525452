use ringkv_guest::{partition, RoutingKey};

#[partition]
fn generic<K: AsRef<[u8]>>(key: &[u8]) -> RoutingKey {
    RoutingKey::from(key)
}

fn main() {}
