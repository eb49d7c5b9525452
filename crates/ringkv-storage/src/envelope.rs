//! The state machine's value format.

use super::StorageError;

/// A stored value with its version and optional expiry.
///
/// Encoded as `version (u64 BE) · expires_at (u64 BE, 0 = never) · value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub value: bytes::Bytes,
    /// The Raft log index of the write that produced this value.
    pub version: u64,
    /// Milliseconds since the Unix epoch; the key is invisible from then on.
    pub expires_at: Option<u64>,
}

const HEADER: usize = 16;

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.value.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        if raw.len() < HEADER {
            return Err(StorageError::Corrupt {
                keyspace: "sm_data",
                detail: format!("envelope of {} bytes", raw.len()),
            });
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let expires_at = word(8);
        Ok(Envelope {
            version: word(0),
            expires_at: (expires_at != 0).then_some(expires_at),
            value: bytes::Bytes::copy_from_slice(&raw[HEADER..]),
        })
    }

    /// True when the key is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for expires_at in [None, Some(1), Some(u64::MAX)] {
            let e = Envelope { value: bytes::Bytes::from_static(b"hello"), version: 42, expires_at };
            assert_eq!(Envelope::decode(&e.encode()).expect("decodes"), e);
        }
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(Envelope::decode(&[0u8; 15]).is_err());
    }

    #[test]
    fn expiry_is_inclusive_of_the_deadline() {
        let e = Envelope { value: bytes::Bytes::new(), version: 1, expires_at: Some(100) };
        assert!(!e.is_expired(99));
        assert!(e.is_expired(100));
    }
}
