use ringkv_guest::{validate, Ctx};

#[validate]
fn two(key: &[u8], _ctx: &Ctx) -> Result<(), String> {
    let _ = key;
    Ok(())
}

fn main() {}
