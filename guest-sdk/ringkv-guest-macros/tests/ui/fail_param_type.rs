use ringkv_guest::{validate, Ctx};

#[validate]
fn stringly(key: &str, _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    let _ = key;
    Ok(())
}

fn main() {}
