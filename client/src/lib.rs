//! `ringkv-client`: an async Rust client for ringkv.
//!
//! The client holds one lazily connected HTTP/2 channel per endpoint and
//! reuses it for every request. Any node accepts any request and forwards it
//! to the right leader, so the client never sees "not leader". When an
//! endpoint is unreachable, idempotent requests (reads, scans, status) move
//! on to the next endpoint; writes are not retried, because a write whose
//! reply was lost may already be applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:7379"])?;
//! let version = client.put("greeting", "hello").await?;
//! let value = client.get("greeting").await?.expect("just written");
//! assert_eq!(value.version, version);
//! # Ok(()) }
//! ```

pub mod routing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Generated protobuf types and gRPC stubs for `ringkv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("ringkv.v1");
}

pub use proto::Consistency;

/// Errors returned by [`Client`], one variant per gRPC code the server uses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was malformed or exceeded a limit (`INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A hook rejected the write (`FAILED_PRECONDITION`).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A compare-and-swap did not match the current version (`ABORTED`).
    #[error("{0}")]
    VersionMismatch(String),
    /// No quorum or leader was reachable in time (`UNAVAILABLE`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request deadline passed (`DEADLINE_EXCEEDED`).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// An endpoint could not be parsed.
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// Any other status from the server.
    #[error("{}: {}", .0.code(), .0.message())]
    Other(tonic::Status),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::FailedPrecondition => Error::Rejected(msg),
            Code::Aborted => Error::VersionMismatch(msg),
            Code::Unavailable => Error::Unavailable(msg),
            Code::DeadlineExceeded => Error::DeadlineExceeded(msg),
            _ => Error::Other(s),
        }
    }
}

impl Error {
    /// True when retrying an idempotent request elsewhere may succeed.
    fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored value as returned by reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Bytes,
    /// The Raft log index of the write that produced this value.
    pub version: u64,
    /// Milliseconds since the Unix epoch after which the key is gone.
    pub expires_at_ms: Option<u64>,
}

/// One item of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Bytes,
    pub value: Value,
}

/// Options for [`Client::put_with`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Time to live. `None` keeps the key forever.
    pub ttl: Option<Duration>,
    /// Compare-and-swap: `Some(0)` means "must not exist".
    pub if_version: Option<u64>,
}

/// Client settings with documented defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request deadline sent to the server. Default: 10 s.
    pub timeout: Duration,
    /// TCP connect timeout per endpoint. Default: 3 s.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(3) }
    }
}

/// An async ringkv client. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct Client {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One lazily connected channel per endpoint, in the order given.
    channels: Vec<Channel>,
    /// Round-robin cursor: the endpoint the next request starts with.
    next: AtomicUsize,
}

type KvClient = proto::kv_client::KvClient<Channel>;
type ClusterClient = proto::cluster_client::ClusterClient<Channel>;

impl Client {
    /// Creates a client for the given `host:port` endpoints. Connections are
    /// opened on first use.
    pub fn connect<I, S>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, ClientOptions::default())
    }

    /// Like [`Client::connect`], with explicit options.
    pub fn connect_with<I, S>(endpoints: I, opts: ClientOptions) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut channels = Vec::new();
        for ep in endpoints {
            let ep = ep.as_ref().trim();
            if ep.is_empty() {
                continue;
            }
            let uri = if ep.contains("://") { ep.to_string() } else { format!("http://{ep}") };
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| Error::BadEndpoint { endpoint: ep.to_string(), reason: e.to_string() })?
                .timeout(opts.timeout)
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            channels.push(endpoint.connect_lazy());
        }
        if channels.is_empty() {
            return Err(Error::BadEndpoint { endpoint: String::new(), reason: "no endpoints given".into() });
        }
        Ok(Self { inner: std::sync::Arc::new(Inner { channels, next: AtomicUsize::new(0) }) })
    }

    fn channel(&self, attempt: usize) -> Channel {
        let n = self.inner.channels.len();
        let start = self.inner.next.load(Ordering::Relaxed);
        self.inner.channels[(start + attempt) % n].clone()
    }

    /// Runs an idempotent request, moving to the next endpoint when one is unavailable.
    async fn idempotent<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.inner.channels.len();
        let mut last = None;
        for attempt in 0..n.max(2) {
            match f(self.channel(attempt)).await.map_err(Error::from) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    // Start from the next endpoint next time too, so a dead node is skipped.
                    self.inner.next.fetch_add(1, Ordering::Relaxed);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Unavailable("no endpoint answered".into())))
    }

    /// Writes `value` under `key`. Returns the new version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes with a TTL and/or a compare-and-swap condition.
    pub async fn put_with(&self, key: impl Into<Bytes>, value: impl Into<Bytes>, opts: PutOptions) -> Result<u64> {
        let req = proto::PutRequest {
            key: key.into(),
            value: value.into(),
            ttl_ms: opts.ttl.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            if_version: opts.if_version,
        };
        let resp = KvClient::new(self.channel(0)).put(req).await?;
        Ok(resp.into_inner().version)
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Value>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads one key at the given consistency.
    pub async fn get_with(&self, key: impl Into<Bytes>, consistency: Consistency) -> Result<Option<Value>> {
        let key = key.into();
        let resp = self
            .idempotent(|ch| {
                let req = proto::GetRequest { key: key.clone(), consistency: consistency as i32 };
                async move { KvClient::new(ch).get(req).await }
            })
            .await?
            .into_inner();
        Ok(resp.found.then(|| Value { value: resp.value, version: resp.version, expires_at_ms: resp.expires_at_ms }))
    }

    /// Deletes a key. Returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        self.delete_if(key, None).await
    }

    /// Deletes a key if its version matches (`None`: unconditionally).
    pub async fn delete_if(&self, key: impl Into<Bytes>, if_version: Option<u64>) -> Result<bool> {
        let req = proto::DeleteRequest { key: key.into(), if_version };
        Ok(KvClient::new(self.channel(0)).delete(req).await?.into_inner().deleted)
    }

    /// Returns up to `limit` live keys starting with `prefix`, in key order.
    pub async fn scan(&self, prefix: impl Into<Bytes>, limit: u32, consistency: Consistency) -> Result<Vec<Item>> {
        let prefix = prefix.into();
        self.idempotent(|ch| {
            let req = proto::ScanRequest { prefix: prefix.clone(), limit, consistency: consistency as i32 };
            async move {
                let mut stream = KvClient::new(ch).scan(req).await?.into_inner();
                let mut items = Vec::new();
                while let Some(it) = stream.message().await? {
                    items.push(Item {
                        key: it.key,
                        value: Value { value: it.value, version: it.version, expires_at_ms: it.expires_at_ms },
                    });
                }
                Ok(items)
            }
        })
        .await
    }

    /// The answering node's view of the cluster.
    pub async fn status(&self) -> Result<proto::StatusResponse> {
        self.status_with(false).await
    }

    /// Like [`Client::status`]; `count_keys` also counts the keys of every
    /// group the node hosts (a full scan there).
    pub async fn status_with(&self, count_keys: bool) -> Result<proto::StatusResponse> {
        self.idempotent(|ch| async move { ClusterClient::new(ch).status(proto::StatusRequest { count_keys }).await })
            .await
            .map(|r| r.into_inner())
    }

    /// The routing table: ring settings, members and shard leaders.
    pub async fn ring(&self) -> Result<proto::RingResponse> {
        self.idempotent(|ch| async move { ClusterClient::new(ch).ring(proto::RingRequest {}).await })
            .await
            .map(|r| r.into_inner())
    }

    /// Adds node `id` at `addr`; it joins as a learner and is promoted to voter.
    pub async fn add_node(&self, id: u64, addr: impl Into<String>) -> Result<()> {
        let addr = addr.into();
        self.idempotent(|ch| {
            let req = proto::AddNodeRequest { id, addr: addr.clone() };
            async move { ClusterClient::new(ch).add_node(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        self.idempotent(|ch| async move { ClusterClient::new(ch).remove_node(proto::RemoveNodeRequest { id }).await })
            .await
            .map(|_| ())
    }
}
