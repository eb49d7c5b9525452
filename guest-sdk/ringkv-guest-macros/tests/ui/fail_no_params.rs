use ringkv_guest::{partition, RoutingKey};

#[partition]
fn none() -> RoutingKey {
    RoutingKey::Whole
}

fn main() {}
