//! Authentication and authorization: who a request comes from (a bearer
//! token or a client certificate) and whether that principal may do what the
//! request asks (roles and byte-exact key prefixes). The services in `api`
//! and `http` call [`Authenticator::authorize`] before doing anything else;
//! the token table itself lives in the meta group (`cluster::auth`).

mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use token::{check_token_name, hash_secret, new_secret, parse_token, TokenParts, TOKEN_PREFIX};

/// The metadata key (gRPC) and header (HTTP) carrying `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// What a principal may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Get and Scan.
    Read,
    /// Read, plus Put and Delete.
    Write,
    /// Write, plus hooks, membership, backup, token management and cluster status.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected read, write or admin)")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role, limited to keys that start with `prefix` (raw bytes; empty: every key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub role: Role,
    pub prefix: Vec<u8>,
}

impl Grant {
    fn covers_key(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{} on every key", self.role)
        } else {
            write!(f, "{} on prefix {}", self.role, show_bytes(&self.prefix))
        }
    }
}

/// An authenticated caller and its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// The principal of a connection that presented a node certificate:
    /// cluster nodes are trusted with everything (a joining node adds itself).
    pub fn node() -> Principal {
        Principal { name: "node".into(), grants: vec![Grant { role: Role::Admin, prefix: Vec::new() }] }
    }

    /// Whether the grants allow `need`; the error says what is missing.
    pub fn check(&self, need: &Need<'_>) -> Result<(), Denied> {
        let allowed = match need {
            Need::Authenticated => true,
            Need::Read(key) => self.grants.iter().any(|g| g.role >= Role::Read && g.covers_key(key)),
            Need::Write(key) => self.grants.iter().any(|g| g.role >= Role::Write && g.covers_key(key)),
            // Every key a scan can return starts with its prefix, so a scan
            // prefix that starts with the grant's prefix stays inside it.
            Need::Scan(prefix) => self.grants.iter().any(|g| g.role >= Role::Read && g.covers_key(prefix)),
            Need::ClusterRead(_) => self.grants.iter().any(|g| g.prefix.is_empty()),
            Need::Admin(_) => self.grants.iter().any(|g| g.role == Role::Admin && g.prefix.is_empty()),
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied { principal: self.name.clone(), missing: need.to_string(), grants: self.grants.clone() })
        }
    }
}

/// What a request needs from its principal.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Any authenticated principal (the routing table, `WhoAmI`).
    Authenticated,
    /// Read access to this key.
    Read(&'a [u8]),
    /// Write access to this key.
    Write(&'a [u8]),
    /// Read access to every key under this scan prefix.
    Scan(&'a [u8]),
    /// A grant of any role that is not limited to a prefix (`/metrics`):
    /// cluster-wide figures, no keys or values.
    ClusterRead(&'static str),
    /// The admin role on every key, for the named operation.
    Admin(&'static str),
}

impl fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Authenticated => f.write_str("authentication"),
            Need::Read(key) => write!(f, "read on key {}", show_bytes(key)),
            Need::Write(key) => write!(f, "write on key {}", show_bytes(key)),
            Need::Scan(prefix) => write!(f, "read on every key under scan prefix {}", show_bytes(prefix)),
            Need::ClusterRead(what) => write!(f, "a grant not limited to a prefix ({what})"),
            Need::Admin(what) => write!(f, "admin on every key ({what})"),
        }
    }
}

/// A request its principal may not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub missing: String,
    pub grants: Vec<Grant>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grants: Vec<String> = self.grants.iter().map(ToString::to_string).collect();
        let grants = if grants.is_empty() { "none".to_string() } else { grants.join(", ") };
        write!(f, "principal {:?} lacks {} (its grants: {grants})", self.principal, self.missing)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials that do not check out. The message
    /// never contains the token.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    Denied(Denied),
}

// Who is at the other end of a connection, from its verified TLS client
// certificate: owned by the TLS module (security contract item 3).
pub use crate::tls::{peer_identity, PeerIdentity};

/// `[auth]` settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Refuse requests without valid credentials. Default off (dev only).
    pub enabled: bool,
    /// Client certificate common names and their grants.
    pub principals: Vec<ConfiguredPrincipal>,
    /// Tokens whose hashes are in the config file.
    pub tokens: Vec<StaticToken>,
}

/// A `[[auth.principals]]` entry: a certificate common name and one grant.
/// Several entries with the same name add up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredPrincipal {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub prefix: String,
}

/// A `[[auth.tokens]]` entry: the token `rkv_<name>_<secret>` is checked
/// against `hash` (an argon2 PHC string, from `ringkv auth hash-token`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub name: String,
    pub hash: String,
    pub role: Role,
    #[serde(default)]
    pub prefix: String,
}

/// A runtime token as the meta group stores it: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// argon2id PHC string of the whole token.
    pub hash: String,
    pub grant: Grant,
    pub created_at_ms: u64,
}

impl AuthConfig {
    /// Checks names, roles and hashes so a bad entry stops the node at start.
    pub fn validate(&self) -> Result<(), String> {
        for t in &self.tokens {
            check_token_name(&t.name).map_err(|e| format!("auth.tokens: {e}"))?;
            argon2::password_hash::PasswordHash::new(&t.hash).map_err(|e| {
                format!(
                    "auth.tokens {:?}: hash is not an argon2 PHC string ({e}); use `ringkv auth hash-token`",
                    t.name
                )
            })?;
        }
        let mut names: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("auth.tokens: the name {:?} is used twice", w[0]));
        }
        if self.principals.iter().any(|p| p.name.is_empty()) {
            return Err("auth.principals: a principal needs a name (the certificate's common name)".into());
        }
        Ok(())
    }
}

/// Most verified tokens kept; past this the cache starts over (a flood of
/// distinct valid tokens is not a real workload).
const MAX_CACHED: usize = 10_000;

/// Concurrent argon2 verifications (each takes ~19 MiB and tens of ms by
/// design); more wait, so a flood of bad tokens cannot exhaust memory.
const MAX_VERIFYING: usize = 2;

/// Checks credentials and grants for one node.
pub struct Authenticator {
    config: AuthConfig,
    /// Certificate principals by common name.
    cert_principals: HashMap<String, Arc<Principal>>,
    state: Mutex<TokenState>,
    verifying: tokio::sync::Semaphore,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("enabled", &self.config.enabled).finish_non_exhaustive()
    }
}

/// The runtime token table and the verified-token cache, under one lock so
/// that a revoke and a verification that started before it cannot
/// interleave into a cached revoked token.
#[derive(Default)]
struct TokenState {
    runtime: HashMap<String, TokenRecord>,
    /// Bumped whenever `runtime` changes; a verification caches its result
    /// only if the generation it started from is still current.
    generation: u64,
    /// SHA-256 of the full token → its principal.
    cache: HashMap<[u8; 32], Arc<Principal>>,
}

/// Where a token's hash and grant come from.
struct TokenEntry {
    hash: String,
    grant: Grant,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Authenticator {
        let mut cert_principals: HashMap<String, Principal> = HashMap::new();
        for p in &config.principals {
            cert_principals
                .entry(p.name.clone())
                .or_insert_with(|| Principal { name: p.name.clone(), grants: Vec::new() })
                .grants
                .push(Grant { role: p.role, prefix: p.prefix.as_bytes().to_vec() });
        }
        Authenticator {
            config,
            cert_principals: cert_principals.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            state: Mutex::new(TokenState::default()),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether a token name is taken by a config-file token (runtime tokens
    /// may not shadow one).
    pub fn is_static_token(&self, name: &str) -> bool {
        self.config.tokens.iter().any(|t| t.name == name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the runtime token table (the meta group applied a change).
    /// Forgets every verified token, so a revoked one is refused from now on.
    pub fn set_runtime_tokens(&self, records: Vec<TokenRecord>) {
        let mut state = self.lock();
        state.runtime = records.into_iter().map(|r| (r.name.clone(), r)).collect();
        state.generation += 1;
        state.cache.clear();
    }

    /// Authenticates a request and checks `need`. With auth off every
    /// request passes as `None`. `authorization` is the raw header value.
    pub async fn authorize(
        &self,
        authorization: Option<&[u8]>,
        peer: PeerIdentity,
        need: Need<'_>,
    ) -> Result<Option<Arc<Principal>>, AuthError> {
        if !self.config.enabled {
            return Ok(None);
        }
        let principal = self.authenticate(authorization, peer).await?;
        principal.check(&need).map_err(AuthError::Denied)?;
        Ok(Some(principal))
    }

    /// Who the request comes from: a bearer token wins over a certificate.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: PeerIdentity,
    ) -> Result<Arc<Principal>, AuthError> {
        if let Some(raw) = authorization {
            let token = bearer(raw)?;
            return self.verify_token(token).await;
        }
        match peer {
            PeerIdentity::Node => Ok(Arc::new(Principal::node())),
            PeerIdentity::Client { common_name } => Ok(self
                .cert_principals
                .get(&common_name)
                .cloned()
                .unwrap_or_else(|| Arc::new(Principal { name: common_name, grants: Vec::new() }))),
            PeerIdentity::None => Err(AuthError::Unauthenticated(
                "authentication required: send `authorization: Bearer <token>` or a client certificate".into(),
            )),
        }
    }

    /// Verifies a token: from the cache, or by its argon2 hash.
    async fn verify_token(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let parts = parse_token(token).map_err(AuthError::Unauthenticated)?;
        let (entry, generation) = {
            let state = self.lock();
            if let Some(p) = state.cache.get(&digest) {
                return Ok(p.clone());
            }
            let entry = self
                .config
                .tokens
                .iter()
                .find(|t| t.name == parts.name)
                .map(|t| TokenEntry {
                    hash: t.hash.clone(),
                    grant: Grant { role: t.role, prefix: t.prefix.as_bytes().to_vec() },
                })
                .or_else(|| {
                    state.runtime.get(parts.name).map(|r| TokenEntry { hash: r.hash.clone(), grant: r.grant.clone() })
                });
            (entry, state.generation)
        };
        let unknown = || AuthError::Unauthenticated("invalid, unknown or revoked token".into());
        let entry = entry.ok_or_else(unknown)?;
        let permit = self.verifying.acquire().await.map_err(|_| unknown())?;
        let owned = token.to_string();
        let hash = entry.hash.clone();
        let ok = tokio::task::spawn_blocking(move || token::verify(&owned, &hash)).await.unwrap_or(false);
        drop(permit);
        if !ok {
            return Err(unknown());
        }
        let principal = Arc::new(Principal { name: parts.name.to_string(), grants: vec![entry.grant] });
        let mut state = self.lock();
        if state.generation == generation {
            if state.cache.len() >= MAX_CACHED {
                state.cache.clear();
            }
            state.cache.insert(digest, principal.clone());
        }
        Ok(principal)
    }
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer(raw: &[u8]) -> Result<&str, AuthError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| AuthError::Unauthenticated("the authorization header is not valid text".into()))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| AuthError::Unauthenticated("the authorization header must read `Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Unauthenticated("the authorization header must read `Bearer <token>`".into()));
    }
    Ok(token.trim())
}

/// Bytes for a message: printable ASCII as is, the rest escaped, long
/// values cut (keys are up to 4 KiB).
pub fn show_bytes(b: &[u8]) -> String {
    const SHOWN: usize = 64;
    let escaped: String = b.iter().take(SHOWN).flat_map(|c| std::ascii::escape_default(*c)).map(char::from).collect();
    if b.len() > SHOWN {
        format!("\"{escaped}\"… ({} bytes)", b.len())
    } else {
        format!("\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests;
