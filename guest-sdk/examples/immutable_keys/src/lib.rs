//! A `validate` hook for audit trails: keys under `audit/` can be created
//! once and are then never overwritten or deleted; other keys pass. The
//! Rust port of `scripts/immutable_keys.lua`, with the same reject reasons.
//!
//! It reads the key's stored version ([`Ctx::old_version`], ABI version 2),
//! which makes every write it accepts conditional on the key still being
//! absent: if another write creates the key first, the leader runs the hook
//! again and it rejects. So when many clients create the same audit key at
//! once, exactly one of them succeeds.
//!
//! ```text
//! ringkv hook deploy --kind wasm --stage validate --name audit-immutable --prefix audit/ \
//!     --file target/wasm32-unknown-unknown/release/immutable_keys.wasm
//! ```

use ringkv_guest::{validate, Ctx};

/// The keys this hook guards. Checked here too, so the module is correct
/// even when deployed without `--prefix`.
const PREFIX: &[u8] = b"audit/";

#[validate]
fn immutable_keys(key: &[u8], _value: &[u8], ctx: &Ctx) -> Result<(), String> {
    if !key.starts_with(PREFIX) {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(key);
    // Decided before reading the stored version: a delete is refused
    // whether or not the key exists, and the read would only add a guard.
    if ctx.is_delete() {
        return Err(format!("{shown} is an audit key; audit keys are never deleted"));
    }
    match ctx.old_version() {
        0 => Ok(()),
        version => Err(format!("{shown} already exists (version {version}); audit keys are never overwritten")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    fn put() -> Ctx {
        Ctx::new(Op::Put, 1_700_000_000_000, None)
    }

    fn delete() -> Ctx {
        Ctx::new(Op::Delete, 1_700_000_000_000, None)
    }

    #[test]
    fn audit_keys_can_be_created() {
        assert_eq!(immutable_keys(b"audit/7", b"x", &put()), Ok(()));
        assert_eq!(immutable_keys(b"audit/", b"", &put()), Ok(()), "the prefix itself is an audit key");
    }

    #[test]
    fn existing_audit_keys_are_never_overwritten() {
        assert_eq!(
            immutable_keys(b"audit/7", b"x", &put().with_old("y", 12)),
            Err("audit/7 already exists (version 12); audit keys are never overwritten".into())
        );
        // Whatever it holds: an empty stored value is still a record.
        assert_eq!(
            immutable_keys(b"audit/7", b"", &put().with_old("", 1)),
            Err("audit/7 already exists (version 1); audit keys are never overwritten".into())
        );
    }

    #[test]
    fn audit_keys_are_never_deleted_whether_or_not_they_exist() {
        let reason = Err("audit/7 is an audit key; audit keys are never deleted".into());
        assert_eq!(immutable_keys(b"audit/7", b"", &delete().with_old("y", 12)), reason);
        assert_eq!(immutable_keys(b"audit/7", b"", &delete()), reason);
    }

    #[test]
    fn reasons_show_keys_that_are_not_utf8_lossily() {
        assert_eq!(
            immutable_keys(b"audit/\xff", b"", &delete()),
            Err("audit/\u{fffd} is an audit key; audit keys are never deleted".into())
        );
    }

    #[test]
    fn other_keys_pass_even_when_they_exist() {
        for key in ["users/1", "audit", "Audit/1", "audits/1", "x/audit/1", ""] {
            assert_eq!(immutable_keys(key.as_bytes(), b"x", &put().with_old("y", 3)), Ok(()), "{key}");
            assert_eq!(immutable_keys(key.as_bytes(), b"", &delete().with_old("y", 3)), Ok(()), "{key}");
        }
    }
}
