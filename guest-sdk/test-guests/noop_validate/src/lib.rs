//! A `validate` hook that accepts everything: the smallest possible hook,
//! for measuring what a Wasm call itself costs.

use ringkv_guest::{validate, Ctx};

#[validate]
fn accept(_key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    #[test]
    fn accepts_puts_and_deletes() {
        assert_eq!(accept(b"k", b"v", &Ctx::new(Op::Put, 0, None)), Ok(()));
        assert_eq!(accept(b"k", b"", &Ctx::new(Op::Delete, 0, None)), Ok(()));
    }
}
