use ringkv_guest::partition;

#[partition]
fn length(key: &[u8]) -> usize {
    key.len()
}

fn main() {}
