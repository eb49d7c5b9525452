use ringkv_guest::ttl;

#[ttl]
fn owned_ctx(_key: &[u8], _value: &[u8], _ctx: ringkv_guest::Ctx) -> Option<std::time::Duration> {
    None
}

fn main() {}
