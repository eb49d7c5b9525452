//! The token format `rkv_<name>_<secret>` and its argon2 hashes. The name
//! part finds the one record to check (no scan over every hash); the secret
//! is 32 random bytes in hex.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "rkv_";

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// Shortest secret accepted in a config-file token (a generated one has 64 hex digits).
const MIN_SECRET: usize = 32;

/// The parts of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenParts<'a> {
    pub name: &'a str,
    pub secret: &'a str,
}

/// Token names: 1 to 64 letters, digits, '-', '.' or '_'.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("bad token name {name:?}: use 1 to {MAX_TOKEN_NAME} letters, digits, '-', '_' or '.'"))
    }
}

/// Splits `rkv_<name>_<secret>`. The secret holds no '_', so the last one
/// separates it from a name that may contain some. Errors never repeat the token.
pub fn parse_token(token: &str) -> Result<TokenParts<'_>, String> {
    let malformed = || "malformed token (expected rkv_<name>_<secret>)".to_string();
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(malformed)?;
    let (name, secret) = rest.rsplit_once('_').ok_or_else(malformed)?;
    if check_token_name(name).is_err()
        || secret.len() < MIN_SECRET
        || !secret.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(malformed());
    }
    Ok(TokenParts { name, secret })
}

/// A new token for `name`: `rkv_<name>_<64 hex digits>`.
pub fn new_secret(name: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{name}_{hex}")
}

/// The argon2id PHC string of a whole token, with a random salt.
pub fn hash_secret(token: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    Argon2::default().hash_password(token.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| format!("hashing: {e}"))
}

/// Whether `token` matches the PHC string `hash` (constant time in argon2).
pub fn verify(token: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(token.as_bytes(), &parsed).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a stored token hash does not parse");
            false
        }
    }
}
