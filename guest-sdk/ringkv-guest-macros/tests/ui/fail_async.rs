use ringkv_guest::{validate, Ctx};

#[validate]
async fn later(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

fn main() {}
