use ringkv_guest::{ttl, Ctx};

#[ttl]
fn seconds(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> u64 {
    60
}

fn main() {}
