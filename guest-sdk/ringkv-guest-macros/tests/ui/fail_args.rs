use ringkv_guest::{validate, Ctx};

#[validate(prefix = "users/")]
fn with_args(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

fn main() {}
