// A look-alike `Ctx` passes the syntax check; the typed check catches it.
use ringkv_guest::validate;

struct Ctx;

#[validate]
fn wrong_ctx(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = Ctx;
}
