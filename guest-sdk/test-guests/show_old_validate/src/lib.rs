//! A `validate` hook that reads the key's stored record (ABI version 2)
//! only when asked to: a put whose value is `show-old` is rejected with a
//! reason describing the record, `old_version 12, old_value 5 bytes: hello`
//! or `old_version 0, no old_value`; every other write is accepted without
//! reading it. For the host's tests of ABI version 2: both imports (a
//! non-empty stored value also takes the second `ringkv.old_value` call,
//! with a buffer of the value's length), the guard a read adds to a write,
//! and neither read nor guard for writes whose hook reads nothing.

use ringkv_guest::{validate, Ctx};

/// The value that asks the hook to show the stored record.
const SHOW: &[u8] = b"show-old";

#[validate]
fn show_old(_key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String> {
    if ctx.is_delete() || value != SHOW {
        return Ok(());
    }
    let version = ctx.old_version();
    Err(match ctx.old_value() {
        Some(old) => format!("old_version {version}, old_value {} bytes: {}", old.len(), String::from_utf8_lossy(old)),
        None => format!("old_version {version}, no old_value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    fn put() -> Ctx {
        Ctx::new(Op::Put, 0, None)
    }

    #[test]
    fn shows_the_stored_record_when_asked() {
        assert_eq!(
            show_old(b"k", SHOW, &put().with_old("hello", 12)),
            Err("old_version 12, old_value 5 bytes: hello".into())
        );
        assert_eq!(show_old(b"k", SHOW, &put().with_old("", 1)), Err("old_version 1, old_value 0 bytes: ".into()));
        assert_eq!(show_old(b"k", SHOW, &put()), Err("old_version 0, no old_value".into()));
    }

    #[test]
    fn accepts_every_other_write() {
        assert_eq!(show_old(b"k", b"v", &put().with_old("hello", 12)), Ok(()));
        assert_eq!(show_old(b"k", b"", &Ctx::new(Op::Delete, 0, None).with_old("hello", 12)), Ok(()));
    }
}
