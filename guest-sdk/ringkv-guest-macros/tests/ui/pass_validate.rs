use ringkv_guest::{validate, Ctx};

#[validate]
fn reject_empty(_key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String> {
    if !ctx.is_delete() && value.is_empty() {
        return Err("empty value".to_string());
    }
    Ok(())
}

fn main() {
    let ctx = Ctx::new(ringkv_guest::Op::Put, 0, None);
    assert!(reject_empty(b"k", b"", &ctx).is_err());
}
