use ringkv_guest::{validate, Ctx};

#[validate]
fn nothing(_key: &[u8], _value: &[u8], _ctx: &Ctx) {}

fn main() {}
