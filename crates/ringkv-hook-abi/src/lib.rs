#![forbid(unsafe_code)]
//! The byte records a ringkv Wasm hook and its host exchange (see
//! `guest-sdk/ABI.md`), written once for both sides: the host
//! (`ringkv-hooks`) encodes inputs and decodes outputs, the guest SDK
//! (`ringkv-guest`) decodes inputs and encodes outputs, and both use the
//! functions here, so the two sides cannot drift apart.
//!
//! Decoding checks only the record's shape. What a value means (a TTL of
//! 0 ms, a routing key over the limit) is each side's business, as are the
//! words around an error: a decode error names what is wrong, nothing more.

/// The ABI version a module built today declares (`ringkv_abi_version`).
pub const ABI_VERSION: i32 = 2;

/// The oldest ABI version the host still runs.
pub const OLDEST_ABI_VERSION: i32 = 1;

/// The longest reject reason or log message the host keeps, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The longest routing key a partition function may return, in bytes.
pub const MAX_ROUTING_KEY_BYTES: usize = 4096;

/// Size of the fixed header of a `validate`/`ttl` input record.
pub const INPUT_HEADER_BYTES: usize = 32;

const FLAG_VALUE: u8 = 1;
const FLAG_CLIENT_TTL: u8 = 2;

/// The write a hook judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Put,
    Delete,
}

impl WriteOp {
    /// Its name as Lua hooks and the hook API see it.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOp::Put => "put",
            WriteOp::Delete => "delete",
        }
    }
}

/// A `validate`/`ttl` input record, borrowing key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input<'a> {
    pub op: WriteOp,
    pub key: &'a [u8],
    /// The written value (`None` for a delete).
    pub value: Option<&'a [u8]>,
    /// The leader's clock, in ms since the epoch.
    pub now_ms: u64,
    /// The TTL the client asked for, if any.
    pub client_ttl_ms: Option<u64>,
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b) as usize
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

impl<'a> Input<'a> {
    /// The record's size, or `None` when key or value do not fit the
    /// header's u32 lengths or the whole does not fit an i32 (a guest
    /// allocation's size).
    pub fn encoded_len(&self) -> Option<usize> {
        let value_len = self.value.map_or(0, <[u8]>::len);
        u32::try_from(self.key.len()).ok()?;
        u32::try_from(value_len).ok()?;
        let total = INPUT_HEADER_BYTES.checked_add(self.key.len())?.checked_add(value_len)?;
        i32::try_from(total).ok().map(|_| total)
    }

    /// Writes the record into `out`, which is exactly
    /// [`Input::encoded_len`] bytes (the host writes it straight into the
    /// guest's memory).
    pub fn encode_into(&self, out: &mut [u8]) {
        let value = self.value.unwrap_or_default();
        let mut flags = 0u8;
        if self.value.is_some() {
            flags |= FLAG_VALUE;
        }
        if self.client_ttl_ms.is_some() {
            flags |= FLAG_CLIENT_TTL;
        }
        let (header, rest) = out.split_at_mut(INPUT_HEADER_BYTES);
        header[0] = match self.op {
            WriteOp::Put => 0,
            WriteOp::Delete => 1,
        };
        header[1] = flags;
        header[2..4].fill(0);
        header[4..8].copy_from_slice(&(self.key.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&(value.len() as u32).to_le_bytes());
        header[12..16].fill(0);
        header[16..24].copy_from_slice(&self.now_ms.to_le_bytes());
        header[24..32].copy_from_slice(&self.client_ttl_ms.unwrap_or(0).to_le_bytes());
        let (key, value_out) = rest.split_at_mut(self.key.len());
        key.copy_from_slice(self.key);
        value_out.copy_from_slice(value);
    }

    /// The record as a new vector.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = vec![0; self.encoded_len()?];
        self.encode_into(&mut out);
        Some(out)
    }

    /// Decodes a record. Reserved fields are not checked, so a later host
    /// may use them without breaking old modules.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < INPUT_HEADER_BYTES {
            return Err(format!("{} bytes, shorter than the {INPUT_HEADER_BYTES}-byte header", bytes.len()));
        }
        let op = match bytes[0] {
            0 => WriteOp::Put,
            1 => WriteOp::Delete,
            other => return Err(format!("unknown op {other} (0 = put, 1 = delete)")),
        };
        let flags = bytes[1];
        let key_len = u32_at(bytes, 4);
        let value_len = u32_at(bytes, 8);
        let body = &bytes[INPUT_HEADER_BYTES..];
        if key_len.checked_add(value_len) != Some(body.len()) {
            return Err(format!(
                "key_len {key_len} + value_len {value_len} does not match the {} bytes after the header",
                body.len()
            ));
        }
        if flags & FLAG_VALUE == 0 && value_len != 0 {
            return Err(format!("value_len {value_len} but the value-present flag is not set"));
        }
        let (key, value) = body.split_at(key_len);
        Ok(Input {
            op,
            key,
            value: (flags & FLAG_VALUE != 0).then_some(value),
            now_ms: u64_at(bytes, 16),
            client_ttl_ms: (flags & FLAG_CLIENT_TTL != 0).then(|| u64_at(bytes, 24)),
        })
    }
}

/// A `validate` output record: `[0]` accept, `[1, reason...]` reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    Accept,
    /// The reason as the guest wrote it (UTF-8 by convention, unchecked).
    Reject(&'a [u8]),
}

impl<'a> Verdict<'a> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Verdict::Accept => vec![0],
            Verdict::Reject(reason) => [&[1u8][..], reason].concat(),
        }
    }

    pub fn decode(out: &'a [u8]) -> Result<Self, String> {
        match out {
            [0] => Ok(Verdict::Accept),
            [1, reason @ ..] => Ok(Verdict::Reject(reason)),
            [] => Err("an empty validate record".into()),
            [0, ..] => Err(format!("an accept record of {} bytes (it is 1 byte)", out.len())),
            [code, ..] => Err(format!("validate result code {code} (0 = accept, 1 = reject)")),
        }
    }
}

/// A `ttl` output record: `[0]` keep the client's TTL, `[1]` never
/// expire, `[2, u64 ms]` expire after that many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlChoice {
    Keep,
    Never,
    Ms(u64),
}

impl TtlChoice {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TtlChoice::Keep => vec![0],
            TtlChoice::Never => vec![1],
            TtlChoice::Ms(ms) => [&[2u8][..], &ms.to_le_bytes()].concat(),
        }
    }

    pub fn decode(out: &[u8]) -> Result<Self, String> {
        match out {
            [0] => Ok(TtlChoice::Keep),
            [1] => Ok(TtlChoice::Never),
            [2, ms @ ..] if ms.len() == 8 => Ok(TtlChoice::Ms(u64_at(ms, 0))),
            [] => Err("an empty ttl record".into()),
            [code @ (0 | 1), ..] => Err(format!("a ttl record {code} of {} bytes (it is 1 byte)", out.len())),
            [2, ..] => Err(format!("a ttl record 2 of {} bytes (it is 9: 2 and a u64 of ms)", out.len())),
            [code, ..] => Err(format!("ttl result code {code} (0 = keep, 1 = no expiry, 2 = ms)")),
        }
    }
}

/// A `partition` output record: `[0]` route by the whole key,
/// `[1, key...]` route by that routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing<'a> {
    Whole,
    Key(&'a [u8]),
}

impl<'a> Routing<'a> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Routing::Whole => vec![0],
            Routing::Key(key) => [&[1u8][..], key].concat(),
        }
    }

    pub fn decode(out: &'a [u8]) -> Result<Self, String> {
        match out {
            [0] => Ok(Routing::Whole),
            [1, key @ ..] => Ok(Routing::Key(key)),
            [] => Err("an empty partition record".into()),
            [0, ..] => Err(format!("a whole-key record of {} bytes (it is 1 byte)", out.len())),
            [code, ..] => Err(format!("partition result code {code} (0 = whole key, 1 = routing key)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_record_round_trips_with_its_exact_layout() {
        let input = Input {
            op: WriteOp::Put,
            key: b"k1",
            value: Some(b"val"),
            now_ms: 0x0102_0304_0506_0708,
            client_ttl_ms: Some(0x7f7e),
        };
        let bytes = input.encode().expect("fits");
        let mut expected = vec![0, 3, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        expected.extend_from_slice(&0x7f7eu64.to_le_bytes());
        expected.extend_from_slice(b"k1val");
        assert_eq!(bytes, expected);
        assert_eq!(Input::decode(&bytes), Ok(input));
    }

    #[test]
    fn a_delete_has_no_value_and_no_ttl() {
        let input = Input { op: WriteOp::Delete, key: b"", value: None, now_ms: 5, client_ttl_ms: None };
        let bytes = input.encode().expect("fits");
        assert_eq!(bytes.len(), INPUT_HEADER_BYTES);
        assert_eq!(bytes[..2], [1, 0]);
        assert_eq!(Input::decode(&bytes), Ok(input));
    }

    #[test]
    fn malformed_input_records_name_what_is_wrong() {
        let good = Input { op: WriteOp::Put, key: b"k", value: Some(b"v"), now_ms: 1, client_ttl_ms: None }
            .encode()
            .expect("fits");
        let err = |b: &[u8]| Input::decode(b).expect_err("malformed");
        assert!(err(&good[..10]).contains("shorter than the 32-byte header"));
        let mut op = good.clone();
        op[0] = 9;
        assert!(err(&op).contains("unknown op 9"));
        assert!(err(&good[..good.len() - 1]).contains("does not match"));
        let mut flag = good.clone();
        flag[1] = 0;
        assert!(err(&flag).contains("value-present flag"));
    }

    #[test]
    fn output_records_round_trip_and_bad_ones_are_named() {
        for v in [Verdict::Accept, Verdict::Reject(b"no"), Verdict::Reject(b"")] {
            assert_eq!(Verdict::decode(&v.encode()), Ok(v));
        }
        for t in [TtlChoice::Keep, TtlChoice::Never, TtlChoice::Ms(0), TtlChoice::Ms(u64::MAX)] {
            assert_eq!(TtlChoice::decode(&t.encode()), Ok(t));
        }
        for r in [Routing::Whole, Routing::Key(b"tenant"), Routing::Key(b"")] {
            assert_eq!(Routing::decode(&r.encode()), Ok(r));
        }
        assert_eq!(Verdict::decode(&[]), Err("an empty validate record".into()));
        assert_eq!(Verdict::decode(&[0, 0]), Err("an accept record of 2 bytes (it is 1 byte)".into()));
        assert_eq!(Verdict::decode(&[7]), Err("validate result code 7 (0 = accept, 1 = reject)".into()));
        assert_eq!(TtlChoice::decode(&[2, 1]), Err("a ttl record 2 of 2 bytes (it is 9: 2 and a u64 of ms)".into()));
        assert_eq!(TtlChoice::decode(&[1, 1]), Err("a ttl record 1 of 2 bytes (it is 1 byte)".into()));
        assert_eq!(Routing::decode(&[0, 1]), Err("a whole-key record of 2 bytes (it is 1 byte)".into()));
        assert_eq!(Routing::decode(&[3]), Err("partition result code 3 (0 = whole key, 1 = routing key)".into()));
    }
}
