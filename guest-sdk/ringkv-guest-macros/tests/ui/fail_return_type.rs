use ringkv_guest::{validate, Ctx};

#[validate]
fn boolean(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> bool {
    true
}

fn main() {}
