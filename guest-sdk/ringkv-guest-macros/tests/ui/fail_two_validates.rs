// One module has one export per stage.
use ringkv_guest::{validate, Ctx};

#[validate]
fn first(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

#[validate]
fn second(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

fn main() {}
