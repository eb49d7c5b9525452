//! A `validate` hook that panics with `boom on <key>` for keys starting with
//! `panic/` and accepts all others: tests that the host reports a guest
//! panic with its message and keeps serving.

use ringkv_guest::{validate, Ctx};

#[validate]
fn panic_on_prefix(key: &[u8], _value: &[u8], _ctx: &Ctx) -> Result<(), String> {
    if key.starts_with(b"panic/") {
        panic!("boom on {}", String::from_utf8_lossy(key));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    #[test]
    fn accepts_other_keys() {
        assert_eq!(panic_on_prefix(b"ok/panic/", b"v", &Ctx::new(Op::Put, 0, None)), Ok(()));
    }

    #[test]
    #[should_panic(expected = "boom on panic/x")]
    fn panics_on_the_prefix() {
        let _ = panic_on_prefix(b"panic/x", b"v", &Ctx::new(Op::Put, 0, None));
    }
}
