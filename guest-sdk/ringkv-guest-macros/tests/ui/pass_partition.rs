use ringkv_guest::partition;

// Anything `Into<RoutingKey>` is a routing key.
#[partition]
fn tenant(key: &[u8]) -> Vec<u8> {
    key.split(|&b| b == b'/').next().unwrap_or_default().to_vec()
}

fn main() {
    assert_eq!(tenant(b"a/b"), b"a");
}
