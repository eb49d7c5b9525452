// Any `Display` reason works, and the context may be named by its full path.
use ringkv_guest::validate;

#[validate]
fn static_reason<'a>(key: &'a [u8], _value: &[u8], _ctx: &ringkv_guest::Ctx) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    Ok(())
}

fn main() {}
