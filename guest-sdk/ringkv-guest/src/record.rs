//! The ABI's records (see ABI.md): decoding a call's input and encoding its
//! output, as plain byte-slice functions so they are unit-tested natively.
//! The raw-pointer side lives in `__private` in lib.rs.

use std::alloc::Layout;
use std::fmt;
use std::time::Duration;

use ringkv_hook_abi::{Routing, TtlChoice, Verdict, WriteOp};

use crate::{Ctx, IntoTtl, Op, RoutingKey, Ttl, MAX_MESSAGE_BYTES, MAX_ROUTING_KEY_BYTES};

/// A decoded `validate`/`ttl` input record, borrowing key and value.
#[derive(Debug, PartialEq, Eq)]
pub struct Input<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub ctx: Ctx,
}

/// An input record that breaks the ABI: a host/SDK mismatch, never the
/// user's data, so it stops the call loudly instead of being guessed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedInput(String);

impl fmt::Display for MalformedInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed input record from the host (ABI version {}): {}", crate::ABI_VERSION, self.0)
    }
}

impl std::error::Error for MalformedInput {}

/// Decodes a `validate`/`ttl` input record. Reserved fields are not
/// checked, so a later host may use them without breaking old modules.
pub fn decode_input(bytes: &[u8]) -> Result<Input<'_>, MalformedInput> {
    let record = ringkv_hook_abi::Input::decode(bytes).map_err(MalformedInput)?;
    let op = match record.op {
        WriteOp::Put => Op::Put,
        WriteOp::Delete => Op::Delete,
    };
    let client_ttl = record.client_ttl_ms.map(Duration::from_millis);
    Ok(Input {
        key: record.key,
        value: record.value.unwrap_or_default(),
        ctx: Ctx::from_host(op, record.now_ms, client_ttl),
    })
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Encodes a `validate` output record: `[0]` accept, `[1, reason...]` reject.
pub fn encode_validate(verdict: Result<(), String>) -> Vec<u8> {
    match verdict {
        Ok(()) => Verdict::Accept.encode(),
        Err(reason) => Verdict::Reject(cut(&reason, MAX_MESSAGE_BYTES).as_bytes()).encode(),
    }
}

/// Encodes a `ttl` output record: `[0]` keep, `[1]` never, `[2, u64 ms]`.
pub fn encode_ttl(ttl: Ttl) -> Vec<u8> {
    match ttl {
        Ttl::Keep => TtlChoice::Keep,
        Ttl::Never => TtlChoice::Never,
        Ttl::After(d) => TtlChoice::Ms(Ttl::millis(d)),
    }
    .encode()
}

/// Encodes a `partition` output record: `[0]` whole key, `[1, key...]`.
/// A routing key over the ABI's limit is the hook's bug: an error naming
/// its size, which the caller turns into a panic.
pub fn encode_partition(routing: RoutingKey) -> Result<Vec<u8>, String> {
    match routing {
        RoutingKey::Whole => Ok(Routing::Whole.encode()),
        RoutingKey::Key(key) if key.len() > MAX_ROUTING_KEY_BYTES => Err(format!(
            "the partitioner returned a {}-byte routing key; at most {MAX_ROUTING_KEY_BYTES} bytes are allowed",
            key.len()
        )),
        RoutingKey::Key(key) => Ok(Routing::Key(&key).encode()),
    }
}

/// What a `#[validate]` function may return.
#[diagnostic::on_unimplemented(
    message = "a `#[validate]` function must return `Result<(), String>` (or `Result<(), E>` with `E: Display`), not `{Self}`",
    label = "not a validation verdict"
)]
pub trait ValidateOutput {
    fn into_verdict(self) -> Result<(), String>;
}

impl<E: fmt::Display> ValidateOutput for Result<(), E> {
    fn into_verdict(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// What a `#[partition]` function may return: [`RoutingKey`] or a type it
/// converts from. Listed one by one rather than as a blanket impl over
/// `Into<RoutingKey>` so a wrong return type gets this trait's message
/// instead of one about `From`.
#[diagnostic::on_unimplemented(
    message = "a `#[partition]` function must return `RoutingKey` (or `Vec<u8>`, `String`, `&'static [u8]`, `&'static str`), not `{Self}`",
    label = "not a routing key"
)]
pub trait PartitionOutput {
    fn into_routing_key(self) -> RoutingKey;
}

macro_rules! partition_output {
    ($($ty:ty),*) => {$(
        impl PartitionOutput for $ty {
            fn into_routing_key(self) -> RoutingKey {
                self.into()
            }
        }
    )*};
}

partition_output!(RoutingKey, Vec<u8>, String, &[u8], &str);

impl<const N: usize> PartitionOutput for &[u8; N] {
    fn into_routing_key(self) -> RoutingKey {
        self.into()
    }
}

fn decode_or_panic(input: &[u8]) -> Input<'_> {
    match decode_input(input) {
        Ok(input) => input,
        Err(e) => panic!("{e}"),
    }
}

/// One `validate` call from input bytes to output bytes.
pub fn run_validate_bytes<R: ValidateOutput>(input: &[u8], hook: fn(&[u8], &[u8], &Ctx) -> R) -> Vec<u8> {
    let Input { key, value, ctx } = decode_or_panic(input);
    encode_validate(hook(key, value, &ctx).into_verdict())
}

/// One `ttl` call from input bytes to output bytes.
pub fn run_ttl_bytes<R: IntoTtl>(input: &[u8], hook: fn(&[u8], &[u8], &Ctx) -> R) -> Vec<u8> {
    let Input { key, value, ctx } = decode_or_panic(input);
    encode_ttl(hook(key, value, &ctx).into_ttl())
}

/// One `partition` call from input bytes (the key) to output bytes.
pub fn run_partition_bytes<R: PartitionOutput>(key: &[u8], hook: fn(&[u8]) -> R) -> Vec<u8> {
    match encode_partition(hook(key).into_routing_key()) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// The block `ringkv_alloc` hands out: `len` bytes, 8-aligned, never freed.
/// `None` for a negative length or a failed allocation.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn alloc_input(len: i32) -> Option<*mut u8> {
    let len = usize::try_from(len).ok()?;
    // A zero-size allocation is not allowed; one byte keeps the pointer
    // real (non-zero) for an empty input.
    let layout = Layout::from_size_align(len.max(1), 8).ok()?;
    // SAFETY: the layout's size is non-zero.
    let ptr = unsafe { std::alloc::alloc(layout) };
    (!ptr.is_null()).then_some(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written out here, not taken from the ABI crate, so these tests check
    // the layout ABI.md documents.
    const FLAG_VALUE: u8 = 1;
    const FLAG_CLIENT_TTL: u8 = 2;

    fn record(op: u8, flags: u8, key: &[u8], value: &[u8], now_ms: u64, ttl_ms: u64) -> Vec<u8> {
        let mut r = vec![op, flags, 0, 0];
        r.extend_from_slice(&(key.len() as u32).to_le_bytes());
        r.extend_from_slice(&(value.len() as u32).to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&now_ms.to_le_bytes());
        r.extend_from_slice(&ttl_ms.to_le_bytes());
        r.extend_from_slice(key);
        r.extend_from_slice(value);
        r
    }

    #[test]
    fn decodes_a_put_with_a_client_ttl() {
        let bytes = record(0, FLAG_VALUE | FLAG_CLIENT_TTL, b"users/1", b"{}", 1_700_000_000_123, 5000);
        let input = decode_input(&bytes).expect("a well-formed put");
        assert_eq!(input.key, b"users/1");
        assert_eq!(input.value, b"{}");
        assert_eq!(input.ctx, Ctx::new(Op::Put, 1_700_000_000_123, Some(Duration::from_secs(5))));
        assert!(!input.ctx.is_delete());
    }

    #[test]
    fn decodes_a_delete_without_value_or_ttl() {
        let bytes = record(1, 0, b"k", b"", 7, 0);
        let input = decode_input(&bytes).expect("a well-formed delete");
        assert_eq!((input.key, input.value), (&b"k"[..], &b""[..]));
        assert!(input.ctx.is_delete());
        assert_eq!(input.ctx.client_ttl(), None);
        assert_eq!(input.ctx.now_ms(), 7);
    }

    #[test]
    fn decodes_an_empty_key_and_value() {
        let bytes = record(0, FLAG_VALUE, b"", b"", 0, 0);
        let input = decode_input(&bytes).expect("empty key and value are legal");
        assert!(input.key.is_empty() && input.value.is_empty());
    }

    #[test]
    fn malformed_records_name_what_is_wrong() {
        let short = decode_input(&[0; 31]).expect_err("too short");
        assert!(short.to_string().contains("31 bytes, shorter than the 32-byte header"), "{short}");

        let bad_op = decode_input(&record(2, 0, b"k", b"", 0, 0)).expect_err("op 2");
        assert!(bad_op.to_string().contains("unknown op 2"), "{bad_op}");

        let mut long_key = record(0, FLAG_VALUE, b"key", b"v", 0, 0);
        long_key[4..8].copy_from_slice(&100u32.to_le_bytes());
        let e = decode_input(&long_key).expect_err("key_len past the end");
        assert!(e.to_string().contains("key_len 100 + value_len 1 does not match the 4 bytes"), "{e}");

        let mut trailing = record(0, FLAG_VALUE, b"key", b"v", 0, 0);
        trailing.push(0);
        assert!(decode_input(&trailing).is_err(), "bytes after the value are not ignored");

        let mut overflow = record(0, FLAG_VALUE, b"key", b"v", 0, 0);
        overflow[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        overflow[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_input(&overflow).is_err(), "lengths that overflow when added");

        let e = decode_input(&record(0, 0, b"k", b"v", 0, 0)).expect_err("value without its flag");
        assert!(e.to_string().contains("value-present flag is not set"), "{e}");
        assert!(e.to_string().starts_with("malformed input record from the host (ABI version 2)"), "{e}");
    }

    #[test]
    fn encodes_validate_verdicts() {
        assert_eq!(encode_validate(Ok(())), [0]);
        assert_eq!(encode_validate(Err("no".into())), [1, b'n', b'o']);
        assert_eq!(encode_validate(Err(String::new())), [1]);
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        // 1023 ASCII bytes then a 2-byte character straddling the limit.
        let reason = format!("{}é and more", "a".repeat(1023));
        let out = encode_validate(Err(reason));
        assert_eq!(out.len(), 1 + 1023);
        assert!(std::str::from_utf8(&out[1..]).is_ok());
    }

    #[test]
    fn encodes_ttls_rounding_up_to_whole_milliseconds() {
        assert_eq!(encode_ttl(Ttl::Keep), [0]);
        assert_eq!(encode_ttl(Ttl::Never), [1]);
        let ms = |t: Ttl| {
            let out = encode_ttl(t);
            assert_eq!((out.len(), out[0]), (9, 2));
            u64::from_le_bytes(out[1..9].try_into().expect("8 bytes"))
        };
        assert_eq!(ms(Ttl::After(Duration::from_secs(60))), 60_000);
        assert_eq!(ms(Ttl::After(Duration::from_micros(1500))), 2);
        assert_eq!(ms(Ttl::After(Duration::from_nanos(1))), 1);
        assert_eq!(ms(Ttl::After(Duration::ZERO)), 1, "0 is not a legal TTL on the wire");
        assert_eq!(ms(Ttl::After(Duration::MAX)), u64::MAX);
        assert_eq!(None::<Duration>.into_ttl(), Ttl::Keep);
        assert_eq!(Some(Duration::from_secs(1)).into_ttl(), Ttl::After(Duration::from_secs(1)));
    }

    #[test]
    fn encodes_routing_keys() {
        assert_eq!(encode_partition(RoutingKey::whole()), Ok(vec![0]));
        assert_eq!(encode_partition("t1".into()), Ok(vec![1, b't', b'1']));
        assert_eq!(encode_partition(RoutingKey::Key(Vec::new())), Ok(vec![1]));
        assert_eq!(encode_partition(RoutingKey::Key(vec![7; 4096])).map(|o| o.len()), Ok(4097));
        let e = encode_partition(RoutingKey::Key(vec![7; 4097])).expect_err("over the limit");
        assert!(e.contains("4097-byte routing key; at most 4096"), "{e}");
    }

    fn reject_empty_values(_key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String> {
        if !ctx.is_delete() && value.is_empty() {
            return Err("empty value".into());
        }
        Ok(())
    }

    #[test]
    fn runs_a_validate_call_end_to_end() {
        let put = record(0, FLAG_VALUE, b"k", b"", 0, 0);
        assert_eq!(run_validate_bytes(&put, reject_empty_values), b"\x01empty value");
        let delete = record(1, 0, b"k", b"", 0, 0);
        assert_eq!(run_validate_bytes(&delete, reject_empty_values), [0]);
    }

    #[test]
    #[should_panic(expected = "malformed input record from the host")]
    fn a_malformed_record_stops_the_call() {
        run_validate_bytes(&[0; 8], reject_empty_values);
    }

    #[test]
    fn runs_ttl_and_partition_calls_end_to_end() {
        let put = record(0, FLAG_VALUE | FLAG_CLIENT_TTL, b"k", b"v", 0, 250);
        let keep_client: fn(&[u8], &[u8], &Ctx) -> Option<Duration> = |_, _, ctx| ctx.client_ttl();
        assert_eq!(run_ttl_bytes(&put, keep_client), [2, 250, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run_partition_bytes(b"a/b", |k: &[u8]| k[..1].to_vec()), [1, b'a']);
    }

    #[test]
    #[should_panic(expected = "at most 4096 bytes are allowed")]
    fn an_oversized_routing_key_stops_the_call() {
        run_partition_bytes(b"k", |_| vec![0u8; 5000]);
    }

    #[test]
    fn alloc_gives_aligned_memory_and_refuses_negative_lengths() {
        for len in [0, 1, 7, 33, 4096] {
            let ptr = alloc_input(len).expect("allocation");
            assert_eq!(ptr as usize % 8, 0, "len {len}");
        }
        assert_eq!(alloc_input(-1), None);
    }
}
