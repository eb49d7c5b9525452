//! `ringkv-client`: an async Rust client for ringkv.
//!
//! **Routing.** Any node accepts any request and forwards it to the right
//! node, so the endpoints you give are only seeds. On the first key request
//! the client fetches the routing table (`Cluster.Ring`: every shard's
//! replicas and leader, the members' addresses, and the table's epoch) and
//! from then on sends writes and linearizable reads straight to the leader
//! of the key's shard, and eventual reads to the shard's replicas in turn.
//! Every request carries the table's epoch; a node that is behind it catches
//! up with the cluster configuration before deciding who owns the key, and
//! every reply carries the node's epoch and says when the node had to forward
//! the request. A newer epoch, a forwarded reply or an unreachable node makes
//! the client refresh its table in the background (one fetch at a time, at
//! most every 100 ms); a stale table costs a forwarding hop, never a wrong
//! answer. If the table cannot be fetched the client falls back to sending
//! requests to the seeds in turn, and [`Client::with_ring_routing`] turns
//! routing off altogether. Scans fan out on the server and go to any seed.
//!
//! The client keeps one lazily connected HTTP/2 channel per node address and
//! reuses it for every request. When a node is unreachable, idempotent
//! requests (reads, scans, status) move on to the next candidate; writes are
//! retried elsewhere only when the connection was refused (so nothing was
//! sent), because a write whose reply was lost may already be applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:7379"])?;
//! let version = client.put("greeting", "hello").await?;
//! let value = client.get("greeting").await?.expect("just written");
//! assert_eq!(value.version, version);
//! # Ok(()) }
//! ```

mod channel;
pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tonic::metadata::MetadataMap;
use tonic::transport::Endpoint;

pub use channel::Channel;
use tonic::Code;

use routing::{header_u64, Table, EPOCH_HEADER, FORWARDED_HEADER};

/// Generated protobuf types and gRPC stubs for `ringkv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("ringkv.v1");

    /// Encoded `FileDescriptorSet` of every `ringkv.v1` proto file (for gRPC
    /// server reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ringkv_descriptor.bin"));
}

pub use proto::Consistency;
use proto::RingResponse;

/// Errors returned by [`Client`], one variant per gRPC code the server uses.
///
/// `Display` gives the server's message in plain words, without gRPC's code
/// names: a hook rejection reads `rejected by hook json v1: <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was malformed or exceeded a limit (`INVALID_ARGUMENT`).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A hook rejected the write, or the cluster refused a change it cannot
    /// make in its current state (`FAILED_PRECONDITION`). The message says
    /// which (`rejected by hook json v1: …`).
    #[error("{0}")]
    Rejected(String),
    /// A compare-and-swap did not match the current version (`ABORTED`).
    #[error("{0}")]
    VersionMismatch(String),
    /// No quorum or leader was reachable in time, or no endpoint accepted a
    /// connection (`UNAVAILABLE`; then the message starts with
    /// `cannot connect to` and names the addresses tried).
    #[error("{}", unavailable_text(.0))]
    Unavailable(String),
    /// The request deadline passed (`DEADLINE_EXCEEDED`).
    #[error("timed out: {0}")]
    DeadlineExceeded(String),
    /// No credentials, or a token the cluster does not accept (`UNAUTHENTICATED`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The principal lacks the grant the request needs (`PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An endpoint could not be parsed, or is not a ringkv gRPC port.
    #[error("bad endpoint {endpoint}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// A TLS file could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Any other status from the server (`NOT_FOUND`, `ALREADY_EXISTS`, ...).
    #[error("{}", other_text(.0))]
    Other(tonic::Status),
}

/// What an `Unavailable` error's message starts with when no connection
/// could be made at all.
const CANNOT_CONNECT: &str = "cannot connect to ";

fn unavailable_text(msg: &str) -> String {
    if msg.starts_with(CANNOT_CONNECT) {
        msg.to_string()
    } else {
        format!("cluster unavailable: {msg}")
    }
}

/// The server's message, with a plain word in front where the code adds
/// meaning the message may not carry.
fn other_text(s: &tonic::Status) -> String {
    let msg = s.message();
    let lead = match s.code() {
        Code::Unimplemented => "not supported by this server",
        Code::Internal => "internal error on the server",
        Code::ResourceExhausted => "over a limit",
        Code::Cancelled => "cancelled",
        Code::DataLoss => "data loss",
        // NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE, UNKNOWN: the message says it.
        _ if !msg.is_empty() => return msg.to_string(),
        _ => "failed",
    };
    match msg {
        "" => lead.to_string(),
        m => format!("{lead}: {m}"),
    }
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
            Code::Unauthenticated => Error::Unauthenticated(msg),
            Code::PermissionDenied => Error::PermissionDenied(msg),
            _ => Error::Other(s),
        }
    }
}

impl Error {
    /// True when retrying an idempotent request elsewhere may succeed.
    fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// True when no endpoint tried accepted a connection: nothing listens
    /// there, or it is not reachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unavailable(m) if m.starts_with(CANNOT_CONNECT))
    }

    /// The error for `status`, got from the node at `addr`: a failed
    /// connection names the address, and an answer in plain HTTP (a web
    /// server, such as a node's HTTP port) says that it is not a gRPC port.
    fn from_node(status: tonic::Status, addr: &str) -> Error {
        if let Some(cause) = connect_failure(&status) {
            return Error::Unavailable(format!("{CANNOT_CONNECT}{addr} ({cause})"));
        }
        if status.message().contains("grpc-status header missing") {
            let http = status.message().rsplit(' ').next().unwrap_or("?").to_string();
            let mut reason = format!(
                "it answers plain HTTP (status {http}), not gRPC; this looks like ringkv's HTTP port, not its gRPC port"
            );
            if let Some(grpc) = grpc_port_guess(addr) {
                reason.push_str(&format!(" (a node's gRPC port is usually its HTTP port minus 1: try {grpc})"));
            }
            return Error::BadEndpoint { endpoint: addr.to_string(), reason };
        }
        Error::from(status)
    }
}

/// `addr` with its port one lower: where a node whose HTTP port is `addr`
/// usually serves gRPC (`serve` puts HTTP on the gRPC port plus 1).
fn grpc_port_guess(addr: &str) -> Option<String> {
    let (scheme, rest) = addr.split_once("://").map_or(("", addr), |(s, r)| (s, r));
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.trim_end_matches('/').parse().ok()?;
    let guess = format!("{host}:{}", port.checked_sub(1)?);
    Some(if scheme.is_empty() { guess } else { format!("{scheme}://{guess}") })
}

/// The innermost cause when `status` comes from a connection that could not
/// be made (refused, timed out, TLS handshake failed): the request was never
/// sent. `None` for anything else.
fn connect_failure(status: &tonic::Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut connect = false;
    let mut innermost = None;
    while let Some(e) = source {
        connect |= e.is::<tonic::ConnectError>()
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        innermost = Some(e.to_string());
        source = e.source();
    }
    connect.then(|| innermost.unwrap_or_else(|| status.message().to_string()))
}

/// The final error of a request tried on several nodes: when none of them
/// accepted a connection, one message naming every address tried.
fn give_up(last: Option<Error>, unreachable: &[String]) -> Error {
    let mut addrs: Vec<&str> = Vec::new();
    for a in unreachable {
        if !addrs.contains(&a.as_str()) {
            addrs.push(a);
        }
    }
    match (last, unreachable.last()) {
        (Some(Error::Unavailable(m)), Some(addr)) if addrs.len() > 1 && m.starts_with(CANNOT_CONNECT) => {
            let cause = m
                .strip_prefix(&format!("{CANNOT_CONNECT}{addr} ("))
                .and_then(|c| c.strip_suffix(')'))
                .unwrap_or("no connection");
            Error::Unavailable(format!("{CANNOT_CONNECT}any of {} ({cause})", addrs.join(", ")))
        }
        (Some(e), _) => e,
        (None, _) => Error::Unavailable("no node answered".into()),
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

/// One page of a scan ([`Client::scan_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The page's items, in key order.
    pub items: Vec<Item>,
    /// More keys under the prefix follow the last item.
    pub more: bool,
}

impl ScanPage {
    /// The key to pass as `after` for the next page; `None` on the last page.
    pub fn next_after(&self) -> Option<Bytes> {
        self.items.last().filter(|_| self.more).map(|i| i.key.clone())
    }
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
#[derive(Clone)]
pub struct ClientOptions {
    /// Per-request deadline sent to the server. Default: 10 s.
    pub timeout: Duration,
    /// TCP connect timeout per endpoint. Default: 3 s.
    pub connect_timeout: Duration,
    /// TLS to every node (endpoints become `https://`). Default: plaintext.
    pub tls: Option<TlsOptions>,
    /// Bearer token sent with every request (`rkv_<name>_<secret>`), for
    /// clusters with auth on. Default: none.
    pub token: Option<String>,
}

/// Never prints the token: options end up in debug output of a `Client`.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(3), tls: None, token: None }
    }
}

/// How the client speaks TLS: the CA that signed the nodes' certificates
/// and, for mutual TLS, a client certificate whose Common Name is the
/// principal.
#[derive(Clone)]
pub struct TlsOptions {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    // Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsOptions {
    /// Trusts the CA certificates in `ca_pem` (PEM).
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self { ca_pem: ca_pem.into(), identity: None, domain: None }
    }

    /// Presents a client certificate (PEM chain and its PEM private key).
    pub fn with_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Verifies every node's certificate against this name instead of the
    /// endpoint's host (nodes use `ringkv-node` among themselves).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the CA and, when both are given, the client certificate and key from PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())));
        let tls = Self::new(read(ca)?);
        match (cert, key) {
            (Some(c), Some(k)) => Ok(tls.with_client_cert(read(c)?, read(k)?)),
            (None, None) => Ok(tls),
            _ => Err(Error::Tls("a client certificate needs both the certificate and its key".into())),
        }
    }

    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// An async ringkv client. Cheap to clone; clones share connections and the
/// routing table.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One lazily connected channel per seed endpoint, in the order given.
    channels: Vec<Channel>,
    /// Round-robin cursor: the seed the next unrouted request starts with.
    next: AtomicUsize,
    opts: ClientOptions,
    /// Send key requests to the nodes the routing table names.
    ring_routing: AtomicBool,
    router: Router,
}

/// The cached routing table and what keeps it fresh.
#[derive(Debug)]
struct Router {
    table: ArcSwapOption<Table>,
    /// Every channel by node address (seeds included), shared across tables.
    pool: Mutex<HashMap<String, Channel>>,
    /// Held while fetching the table: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is scheduled or running.
    scheduled: AtomicBool,
    /// The table is known to be out of date.
    stale: AtomicBool,
    /// The newest epoch a reply reported.
    wanted_epoch: AtomicU64,
    /// No fetch before this time (ms on `clock`): the rate limit.
    next_fetch_ms: AtomicU64,
    /// Rotates eventual reads over a shard's replicas.
    spread: AtomicUsize,
    clock: Instant,
}

/// Least time between two fetches of the routing table.
const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// Wait after a fetch that reached no node.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// How long one node may take to answer a routing-table fetch.
const RING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long requests avoid a node that refused a connection.
const AVOID_FOR: Duration = Duration::from_secs(1);

impl Router {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

type KvClient = proto::kv_client::KvClient<Channel>;
type ClusterClient = proto::cluster_client::ClusterClient<Channel>;
type HooksClient = proto::hooks_client::HooksClient<Channel>;
type AuthClient = proto::auth_client::AuthClient<Channel>;

/// What a key request needs from the node it goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Writes and linearizable reads: the shard's leader.
    Leader,
    /// Eventual reads: any current replica of the shard.
    Replica,
}

/// A routing-table address as a channel key (no scheme).
fn pool_key(addr: &str) -> &str {
    addr.split_once("://").map_or(addr, |(_, rest)| rest)
}

/// A lazily connected channel to `addr` that carries the client's token.
pub(crate) fn connect_lazy(addr: &str, opts: &ClientOptions) -> Result<Channel> {
    let authorization = match &opts.token {
        Some(token) => {
            Some(channel::bearer(token).map_err(|reason| Error::BadEndpoint { endpoint: addr.to_string(), reason })?)
        }
        None => None,
    };
    Ok(Channel::new(endpoint(addr, opts)?.connect_lazy(), authorization, addr))
}

fn endpoint(addr: &str, opts: &ClientOptions) -> Result<Endpoint> {
    let bad = |reason: String| Error::BadEndpoint { endpoint: addr.to_string(), reason };
    let uri = match (addr.split_once("://"), &opts.tls) {
        (Some(("https", _)), None) => {
            return Err(bad("an https:// endpoint needs TLS options (the CA: --tls-ca)".into()));
        }
        // With TLS options every node is reached over TLS, whatever the address says.
        (Some((_, rest)), Some(_)) => format!("https://{rest}"),
        (None, Some(_)) => format!("https://{addr}"),
        (Some(_), None) => addr.to_string(),
        (None, None) => format!("http://{addr}"),
    };
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|e| bad(e.to_string()))?
        .timeout(opts.timeout)
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(tls) = &opts.tls {
        ep = ep.tls_config(tls.tonic()).map_err(|e| Error::Tls(e.to_string()))?;
    }
    Ok(ep)
}

/// Wraps a message in a request carrying the routing epoch.
fn request<T>(msg: T, epoch: Option<u64>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(e) = epoch {
        req.metadata_mut().insert(EPOCH_HEADER, e.into());
    }
    req
}

/// True when the connection to the node was refused, so the request was
/// never sent and may be sent elsewhere even if it is a write.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

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
        let mut pool = HashMap::new();
        for ep in endpoints {
            let ep = ep.as_ref().trim();
            if ep.is_empty() {
                continue;
            }
            let channel = connect_lazy(ep, &opts)?;
            pool.entry(pool_key(ep).to_string()).or_insert_with(|| channel.clone());
            channels.push(channel);
        }
        if channels.is_empty() {
            return Err(Error::BadEndpoint { endpoint: String::new(), reason: "no endpoints given".into() });
        }
        let router = Router {
            table: ArcSwapOption::empty(),
            pool: Mutex::new(pool),
            fetching: tokio::sync::Mutex::new(()),
            scheduled: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            wanted_epoch: AtomicU64::new(0),
            next_fetch_ms: AtomicU64::new(0),
            spread: AtomicUsize::new(0),
            clock: Instant::now(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                channels,
                next: AtomicUsize::new(0),
                opts,
                ring_routing: AtomicBool::new(true),
                router,
            }),
        })
    }

    /// Turns routing by the ring table on (the default) or off. Off, every
    /// request goes to the given endpoints in turn and the receiving node
    /// forwards it. Applies to every clone of this client.
    pub fn with_ring_routing(self, on: bool) -> Self {
        self.inner.ring_routing.store(on, Ordering::Relaxed);
        self
    }

    /// The epoch of the cached routing table, `None` before the first fetch
    /// (or with routing off).
    pub fn routing_epoch(&self) -> Option<u64> {
        self.inner.router.table.load().as_ref().map(|t| t.epoch)
    }

    /// Fetches the routing table now (even with routing off) and returns its
    /// epoch. Key requests fetch it on their own; this is for warming up and
    /// for tests.
    pub async fn refresh_routing(&self) -> Result<u64> {
        let _fetching = self.inner.router.fetching.lock().await;
        match self.fetch_table().await {
            (Some(t), true) => Ok(t.epoch),
            _ => Err(Error::Unavailable("no node answered with a routing table".into())),
        }
    }

    fn channel(&self, attempt: usize) -> Channel {
        let n = self.inner.channels.len();
        let start = self.inner.next.load(Ordering::Relaxed);
        self.inner.channels[(start + attempt) % n].clone()
    }

    /// The epoch to send with requests that are not routed by key.
    fn current_epoch(&self) -> Option<u64> {
        if !self.inner.ring_routing.load(Ordering::Relaxed) {
            return None;
        }
        self.routing_epoch()
    }

    /// Runs an idempotent request, moving to the next endpoint when one is unavailable.
    async fn idempotent<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.inner.channels.len();
        let mut last = None;
        let mut unreachable = Vec::new();
        // The endpoints in turn from where the last request left off; read
        // once, since a failure below moves the shared cursor.
        let start = self.inner.next.load(Ordering::Relaxed);
        for attempt in 0..n.max(2) {
            let channel = self.inner.channels[(start + attempt) % n].clone();
            let addr = channel.addr().to_string();
            match f(channel).await.map_err(|s| Error::from_node(s, &addr)) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    // Start from the next endpoint next time too, so a dead node is skipped.
                    self.inner.next.fetch_add(1, Ordering::Relaxed);
                    if e.is_unreachable() {
                        unreachable.push(addr);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(give_up(last, &unreachable))
    }

    /// Sends a request about `key` to the node the routing table picks for
    /// `target`, moving on to the shard's other replicas and then the seeds
    /// when a node is unavailable (`retry`: the request is idempotent) or
    /// refused the connection (any request: it was never sent). Without a
    /// table, only the seeds, in turn.
    async fn keyed<T, F, Fut>(&self, key: &[u8], target: Target, retry: bool, f: F) -> Result<T>
    where
        F: Fn(Channel, Option<u64>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let router = &self.inner.router;
        let table = self.table().await;
        let shard = table.as_ref().map_or(0, |t| t.shard_of(key));
        let mut candidates: Vec<(Option<u64>, Channel)> = match &table {
            Some(t) if t.partitioned => {
                // Any member forwards the request to the key's shard.
                let mut ids: Vec<u64> = t.members.keys().copied().collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    let spread = router.spread.fetch_add(1, Ordering::Relaxed) % ids.len();
                    ids.rotate_left(spread);
                }
                ids.into_iter().filter_map(|id| t.members.get(&id).map(|m| (Some(id), m.channel.clone()))).collect()
            }
            Some(t) => {
                let spread = match target {
                    Target::Leader => 0,
                    Target::Replica => router.spread.fetch_add(1, Ordering::Relaxed),
                };
                t.candidates(shard, target == Target::Leader, spread, router.now_ms())
                    .into_iter()
                    .filter_map(|id| t.members.get(&id).map(|m| (Some(id), m.channel.clone())))
                    .collect()
            }
            None => Vec::new(),
        };
        // The seeds as the unrouted client tries them (one of them twice if
        // there is only one), after the routed candidates, all but the first
        // of which are extra tries: a stale table costs no availability.
        let routed = candidates.len();
        let unrouted = self.inner.channels.len().max(2);
        candidates.extend((0..unrouted).map(|i| (None, self.channel(i))));
        let tries = unrouted + routed.saturating_sub(1);
        let epoch = table.as_ref().map(|t| t.epoch);
        let mut last = None;
        let mut unreachable = Vec::new();
        for (node, channel) in candidates.into_iter().take(tries) {
            let addr = channel.addr().to_string();
            match f(channel, epoch).await {
                Ok(resp) => {
                    if let Some(t) = &table {
                        self.observe(t, shard, target, resp.metadata());
                    }
                    return Ok(resp.into_inner());
                }
                Err(status) => {
                    let refused = connection_refused(&status);
                    if let Some(t) = &table {
                        self.observe_error(t, node, &status, refused);
                    }
                    let e = Error::from_node(status, &addr);
                    if !(refused || (retry && e.is_retryable())) {
                        return Err(e);
                    }
                    if e.is_unreachable() {
                        unreachable.push(addr);
                    }
                    if node.is_none() {
                        // Start from the next seed next time too, so a dead node is skipped.
                        self.inner.next.fetch_add(1, Ordering::Relaxed);
                    }
                    last = Some(e);
                }
            }
        }
        Err(give_up(last, &unreachable))
    }

    /// Learns from a reply: a newer epoch or a forwarded request marks the
    /// table stale; a forwarded leader request also names the leader.
    fn observe(&self, table: &Table, shard: u32, target: Target, meta: &MetadataMap) {
        let router = &self.inner.router;
        let mut stale = false;
        if let Some(epoch) = header_u64(meta, EPOCH_HEADER) {
            if epoch > table.epoch {
                router.wanted_epoch.fetch_max(epoch, Ordering::Relaxed);
                stale = true;
            }
        }
        if let Some(served_by) = header_u64(meta, FORWARDED_HEADER).filter(|_| !table.partitioned) {
            if target == Target::Leader {
                table.learn_leader(shard, served_by);
            }
            stale = true;
        }
        if stale {
            router.stale.store(true, Ordering::Relaxed);
            self.schedule_refresh();
        }
    }

    /// Learns from an error: an unavailable node marks the table stale, and
    /// one that refused the connection is avoided for a while.
    fn observe_error(&self, table: &Table, node: Option<u64>, status: &tonic::Status, refused: bool) {
        let router = &self.inner.router;
        if let Some(epoch) = header_u64(status.metadata(), EPOCH_HEADER) {
            router.wanted_epoch.fetch_max(epoch, Ordering::Relaxed);
        }
        if refused {
            if let Some(id) = node {
                table.avoid(id, router.now_ms() + AVOID_FOR.as_millis() as u64);
            }
        }
        if refused || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
            router.stale.store(true, Ordering::Relaxed);
            self.schedule_refresh();
        }
    }

    /// The routing table, fetched on first use (the caller waits for that
    /// fetch; concurrent callers share it). `None` when routing is off or no
    /// table could be fetched: the caller falls back to the seeds. Once a
    /// fetch has failed, later callers retry it at most every second and do
    /// not wait for a retry someone else is running.
    async fn table(&self) -> Option<Arc<Table>> {
        if !self.inner.ring_routing.load(Ordering::Relaxed) {
            return None;
        }
        let router = &self.inner.router;
        if let Some(t) = router.table.load_full() {
            if router.stale.load(Ordering::Relaxed) || router.wanted_epoch.load(Ordering::Relaxed) > t.epoch {
                self.schedule_refresh();
            }
            return Some(t);
        }
        let tried = router.next_fetch_ms.load(Ordering::Relaxed) > 0;
        if tried && router.now_ms() < router.next_fetch_ms.load(Ordering::Relaxed) {
            return None;
        }
        let _fetching = if tried { router.fetching.try_lock().ok()? } else { router.fetching.lock().await };
        if let Some(t) = router.table.load_full() {
            return Some(t);
        }
        if router.now_ms() < router.next_fetch_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.fetch_table().await.0
    }

    /// Starts a background refresh unless one is running or the rate limit holds it back.
    fn schedule_refresh(&self) {
        let router = &self.inner.router;
        if router.now_ms() < router.next_fetch_ms.load(Ordering::Relaxed)
            || router.scheduled.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            router.scheduled.store(false, Ordering::Release);
            return;
        };
        let client = self.clone();
        runtime.spawn(async move {
            let router = &client.inner.router;
            {
                let _fetching = router.fetching.lock().await;
                if router.now_ms() >= router.next_fetch_ms.load(Ordering::Relaxed) {
                    client.fetch_table().await;
                }
            }
            router.scheduled.store(false, Ordering::Release);
        });
    }

    /// Fetches the routing table from the known members, then the seeds, until
    /// one answers with an epoch at least as new as any reply reported.
    /// Called with `fetching` held. Returns the table now in use, and whether
    /// any node answered.
    async fn fetch_table(&self) -> (Option<Arc<Table>>, bool) {
        let router = &self.inner.router;
        let started = router.now_ms();
        let current = router.table.load_full();
        let wanted = router.wanted_epoch.load(Ordering::Relaxed).max(current.as_ref().map_or(0, |t| t.epoch));
        let mut sources: Vec<Channel> = Vec::new();
        if let Some(t) = &current {
            let mut members: Vec<(&u64, &routing::Member)> = t.members.iter().collect();
            members.sort_unstable_by_key(|(id, _)| **id);
            let n = members.len().max(1);
            let start = router.spread.fetch_add(1, Ordering::Relaxed) % n;
            for i in 0..members.len() {
                let (_, m) = members[(start + i) % n];
                if m.avoid_until.load(Ordering::Relaxed) <= started {
                    sources.push(m.channel.clone());
                }
            }
        }
        sources.extend((0..self.inner.channels.len()).map(|i| self.channel(i)));
        let mut best: Option<RingResponse> = None;
        for channel in sources {
            let mut cluster = ClusterClient::new(channel);
            let r = match tokio::time::timeout(RING_TIMEOUT, cluster.ring(proto::RingRequest {})).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "fetching the routing table");
                    continue;
                }
                Err(_) => {
                    tracing::debug!("no routing table within {RING_TIMEOUT:?}");
                    continue;
                }
            };
            let done = r.epoch >= wanted;
            if best.as_ref().is_none_or(|b| r.epoch > b.epoch) {
                best = Some(r);
            }
            if done {
                break;
            }
        }
        let next = match &best {
            Some(_) => REFRESH_EVERY,
            None => FETCH_RETRY,
        };
        router.next_fetch_ms.store(started + next.as_millis() as u64, Ordering::Relaxed);
        let Some(ring) = best else { return (current, false) };
        if ring.shards == 0 || current.as_ref().is_some_and(|t| ring.epoch < t.epoch) {
            return (current, true);
        }
        let table = Arc::new(Table::from_ring(&ring, |addr| self.pooled_channel(addr), current.as_deref()));
        tracing::debug!(epoch = table.epoch, "routing table refreshed");
        if table.epoch >= router.wanted_epoch.load(Ordering::Relaxed) {
            router.stale.store(false, Ordering::Relaxed);
        }
        router.table.store(Some(table.clone()));
        (Some(table), true)
    }

    /// The shared channel to `addr`, created on first use.
    fn pooled_channel(&self, addr: &str) -> Option<Channel> {
        let mut pool = self.inner.router.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = pool.get(pool_key(addr)) {
            return Some(ch.clone());
        }
        match connect_lazy(addr, &self.inner.opts) {
            Ok(ch) => {
                pool.insert(pool_key(addr).to_string(), ch.clone());
                Some(ch)
            }
            Err(e) => {
                tracing::warn!(addr, error = %e, "a member's address is unusable");
                None
            }
        }
    }

    /// Writes `value` under `key`. Returns the new version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes with a TTL and/or a compare-and-swap condition.
    pub async fn put_with(&self, key: impl Into<Bytes>, value: impl Into<Bytes>, opts: PutOptions) -> Result<u64> {
        Ok(self.put_detailed(key, value, opts).await?.version)
    }

    /// Like [`Client::put_with`], and also tells which hook versions judged the write.
    pub async fn put_detailed(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<proto::PutResponse> {
        let msg = proto::PutRequest {
            key: key.into(),
            value: value.into(),
            ttl_ms: opts.ttl.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            if_version: opts.if_version,
        };
        let key = msg.key.clone();
        self.keyed(&key, Target::Leader, false, |ch, epoch| {
            let req = request(msg.clone(), epoch);
            async move { KvClient::new(ch).put(req).await }
        })
        .await
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Value>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads one key at the given consistency.
    pub async fn get_with(&self, key: impl Into<Bytes>, consistency: Consistency) -> Result<Option<Value>> {
        let key = key.into();
        let target = match consistency {
            Consistency::Eventual => Target::Replica,
            Consistency::Linearizable => Target::Leader,
        };
        let resp = self
            .keyed(&key, target, true, |ch, epoch| {
                let req = request(proto::GetRequest { key: key.clone(), consistency: consistency as i32 }, epoch);
                async move { KvClient::new(ch).get(req).await }
            })
            .await?;
        Ok(resp.found.then(|| Value { value: resp.value, version: resp.version, expires_at_ms: resp.expires_at_ms }))
    }

    /// Deletes a key. Returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        self.delete_if(key, None).await
    }

    /// Deletes a key if its version matches (`None`: unconditionally).
    pub async fn delete_if(&self, key: impl Into<Bytes>, if_version: Option<u64>) -> Result<bool> {
        let msg = proto::DeleteRequest { key: key.into(), if_version };
        let key = msg.key.clone();
        let resp = self
            .keyed(&key, Target::Leader, false, |ch, epoch| {
                let req = request(msg.clone(), epoch);
                async move { KvClient::new(ch).delete(req).await }
            })
            .await?;
        Ok(resp.deleted)
    }

    /// Returns up to `limit` live keys starting with `prefix`, in key order
    /// (0: the server's default, 1000; the server caps `limit` at its
    /// maximum, 10 000). Whether more keys match is lost here: use
    /// [`Client::scan_page`] to page through them.
    /// The receiving node reads every shard and merges, so this goes to any endpoint.
    pub async fn scan(&self, prefix: impl Into<Bytes>, limit: u32, consistency: Consistency) -> Result<Vec<Item>> {
        Ok(self.scan_page(prefix, Bytes::new(), limit, consistency).await?.items)
    }

    /// One page of a scan: up to `limit` live keys starting with `prefix`
    /// and after `after` (exclusive; empty: from the first), in key order,
    /// and whether more follow. Pass the page's [`ScanPage::next_after`] as
    /// `after` for the next page; pages are sorted and complete across
    /// shards. A server without paging ignores `after` and never says more
    /// follow.
    pub async fn scan_page(
        &self,
        prefix: impl Into<Bytes>,
        after: impl Into<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<ScanPage> {
        let (prefix, after) = (prefix.into(), after.into());
        let epoch = self.current_epoch();
        self.idempotent(|ch| {
            let msg = proto::ScanRequest {
                prefix: prefix.clone(),
                limit,
                consistency: consistency as i32,
                start_after: after.clone(),
            };
            let req = request(msg, epoch);
            async move {
                let mut stream = KvClient::new(ch).scan(req).await?.into_inner();
                let mut page = ScanPage::default();
                while let Some(it) = stream.message().await? {
                    page.more = it.more;
                    page.items.push(Item {
                        key: it.key,
                        value: Value { value: it.value, version: it.version, expires_at_ms: it.expires_at_ms },
                    });
                }
                Ok(page)
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

    /// The partition function and the progress of its re-shard job.
    pub async fn reshard_status(&self) -> Result<proto::ReshardStatusResponse> {
        self.idempotent(|ch| async move { ClusterClient::new(ch).reshard_status(proto::ReshardStatusRequest {}).await })
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
        self.add_node_with(proto::AddNodeRequest { id, addr: addr.into(), ..Default::default() }).await
    }

    /// [`Client::add_node`] with every field of the request: a joining node
    /// also says which cluster it expects and whether its data directory is new.
    pub async fn add_node_with(&self, req: proto::AddNodeRequest) -> Result<()> {
        self.idempotent(|ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).add_node(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Splits `shard` at token `at` (default: the middle of its range): a
    /// new shard on the same replicas gets the upper part, and a job moves
    /// its keys ([`Client::reshard_status`] follows it).
    pub async fn split_shard(&self, shard: u32, at: Option<u64>) -> Result<proto::ResizeShardsResponse> {
        self.idempotent(
            |ch| async move { ClusterClient::new(ch).split_shard(proto::SplitShardRequest { shard, at }).await },
        )
        .await
        .map(|r| r.into_inner())
    }

    /// Merges shard `absorb` into its neighbour `keep`: its keys move to
    /// `keep`, whose range then covers both, and `absorb` is retired.
    pub async fn merge_shards(&self, keep: u32, absorb: u32) -> Result<proto::ResizeShardsResponse> {
        self.idempotent(|ch| async move {
            ClusterClient::new(ch).merge_shards(proto::MergeShardsRequest { keep, absorb }).await
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Deploys a hook (a new one or a new version); returns its version and sha256.
    pub async fn deploy_hook(&self, hook: proto::HookDefinition) -> Result<proto::DeployHookResponse> {
        self.deploy(hook, false).await
    }

    /// Deploys a hook's shadow version: it runs beside the active version,
    /// its decisions counted (`HookInfo.shadow`) and never enforced.
    pub async fn deploy_shadow_hook(&self, hook: proto::HookDefinition) -> Result<proto::DeployHookResponse> {
        self.deploy(hook, true).await
    }

    async fn deploy(&self, hook: proto::HookDefinition, shadow: bool) -> Result<proto::DeployHookResponse> {
        self.idempotent(|ch| {
            let req = proto::DeployHookRequest { hook: Some(hook.clone()), shadow };
            async move { HooksClient::new(ch).deploy(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Makes a hook's shadow version the active one.
    pub async fn promote_hook(&self, name: impl Into<String>) -> Result<proto::PromoteHookResponse> {
        let name = name.into();
        self.idempotent(|ch| {
            let req = proto::PromoteHookRequest { name: name.clone() };
            async move { HooksClient::new(ch).promote(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Every hook, with the answering node's call statistics.
    pub async fn list_hooks(&self) -> Result<proto::ListHooksResponse> {
        self.idempotent(|ch| async move { HooksClient::new(ch).list(proto::ListHooksRequest {}).await })
            .await
            .map(|r| r.into_inner())
    }

    /// One hook, with its source.
    pub async fn get_hook(&self, name: impl Into<String>) -> Result<proto::HookInfo> {
        let name = name.into();
        self.idempotent(|ch| {
            let req = proto::GetHookRequest { name: name.clone() };
            async move { HooksClient::new(ch).get(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Deactivates a hook (kept for rollback); returns the removed version.
    pub async fn remove_hook(&self, name: impl Into<String>) -> Result<u64> {
        self.remove(name.into(), false).await
    }

    /// Drops a hook's shadow version. Returns the version dropped.
    pub async fn remove_shadow_hook(&self, name: impl Into<String>) -> Result<u64> {
        self.remove(name.into(), true).await
    }

    async fn remove(&self, name: String, shadow: bool) -> Result<u64> {
        self.idempotent(|ch| {
            let req = proto::RemoveHookRequest { name: name.clone(), shadow };
            async move { HooksClient::new(ch).remove(req).await }
        })
        .await
        .map(|r| r.into_inner().removed_version)
    }

    /// Makes a hook's previous version active again.
    pub async fn rollback_hook(&self, name: impl Into<String>) -> Result<proto::RollbackHookResponse> {
        let name = name.into();
        self.idempotent(|ch| {
            let req = proto::RollbackHookRequest { name: name.clone() };
            async move { HooksClient::new(ch).rollback(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Dry-runs a hook on one write in the server's sandbox.
    pub async fn test_hook(&self, req: proto::TestHookRequest) -> Result<proto::TestHookResponse> {
        self.idempotent(|ch| {
            let req = req.clone();
            async move { HooksClient::new(ch).test(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Creates a runtime token with one grant (`role`: read, write or admin;
    /// empty `prefix`: every key). Returns the token; it is shown only once.
    pub async fn create_token(
        &self,
        name: impl Into<String>,
        role: impl Into<String>,
        prefix: impl Into<Bytes>,
    ) -> Result<String> {
        let msg = proto::CreateTokenRequest { name: name.into(), role: role.into(), prefix: prefix.into() };
        self.idempotent(|ch| {
            let req = msg.clone();
            async move { AuthClient::new(ch).create_token(req).await }
        })
        .await
        .map(|r| r.into_inner().token)
    }

    /// Revokes a runtime token on every node.
    pub async fn revoke_token(&self, name: impl Into<String>) -> Result<()> {
        let name = name.into();
        self.idempotent(|ch| {
            let req = proto::RevokeTokenRequest { name: name.clone() };
            async move { AuthClient::new(ch).revoke_token(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Every runtime token's name and grant (never secrets).
    pub async fn list_tokens(&self) -> Result<proto::ListTokensResponse> {
        self.idempotent(|ch| async move { AuthClient::new(ch).list_tokens(proto::ListTokensRequest {}).await })
            .await
            .map(|r| r.into_inner())
    }

    /// The principal this client authenticates as, and its grants.
    pub async fn who_am_i(&self) -> Result<proto::WhoAmIResponse> {
        self.idempotent(|ch| async move { AuthClient::new(ch).who_am_i(proto::WhoAmIRequest {}).await })
            .await
            .map(|r| r.into_inner())
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        self.idempotent(|ch| async move { ClusterClient::new(ch).remove_node(proto::RemoveNodeRequest { id }).await })
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_told_apart_from_other_failures() {
        // A loopback port nobody listens on any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let client = Client::connect([format!("127.0.0.1:{port}")]).expect("client");
        let status = KvClient::new(client.channel(0))
            .put(proto::PutRequest { key: "k".into(), value: "v".into(), ttl_ms: None, if_version: None })
            .await
            .expect_err("nobody listens");
        assert!(connection_refused(&status), "{status:?}");
        assert!(!connection_refused(&tonic::Status::unavailable("no quorum")));
    }

    #[tokio::test]
    async fn debug_output_never_shows_the_token() {
        let opts =
            ClientOptions { token: Some("rkv_app_0123456789abcdef0123456789abcdef".into()), ..Default::default() };
        let client = Client::connect_with(["127.0.0.1:1"], opts).expect("client");
        let shown = format!("{client:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[tokio::test]
    async fn without_a_reachable_cluster_requests_fail_and_no_table_is_cached() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let client = Client::connect([format!("127.0.0.1:{port}")]).expect("client");
        let addr = format!("127.0.0.1:{port}");
        for e in [client.put("k", "v").await.expect_err("put"), client.get("k").await.expect_err("get")] {
            assert!(matches!(e, Error::Unavailable(_)) && e.is_unreachable(), "{e:?}");
            assert!(e.to_string().starts_with(&format!("cannot connect to {addr} (")), "{e}");
        }
        assert_eq!(client.routing_epoch(), None);
        assert!(client.refresh_routing().await.is_err());
    }

    #[test]
    fn errors_read_in_plain_words_without_grpc_code_names() {
        let shown = |s: tonic::Status| Error::from(s).to_string();
        assert_eq!(
            shown(tonic::Status::failed_precondition("rejected by hook json v1: not JSON")),
            "rejected by hook json v1: not JSON"
        );
        assert_eq!(shown(tonic::Status::not_found("no hook named \"x\"")), "no hook named \"x\"");
        assert_eq!(
            shown(tonic::Status::unavailable("no leader for shard 3")),
            "cluster unavailable: no leader for shard 3"
        );
        assert_eq!(shown(tonic::Status::deadline_exceeded("after 10s")), "timed out: after 10s");
        assert_eq!(shown(tonic::Status::invalid_argument("key is empty")), "invalid request: key is empty");
        assert_eq!(shown(tonic::Status::internal("boom")), "internal error on the server: boom");
        assert_eq!(shown(tonic::Status::already_exists("")), "failed");
    }

    #[test]
    fn an_http_answer_names_the_endpoint_and_the_likely_grpc_port() {
        let s = tonic::Status::unimplemented("grpc-status header missing, mapped from HTTP status code 404");
        assert_eq!(
            Error::from_node(s, "127.0.0.1:7380").to_string(),
            "bad endpoint 127.0.0.1:7380: it answers plain HTTP (status 404), not gRPC; this looks like ringkv's \
             HTTP port, not its gRPC port (a node's gRPC port is usually its HTTP port minus 1: try 127.0.0.1:7379)"
        );
        assert_eq!(grpc_port_guess("http://node-1:8001").as_deref(), Some("http://node-1:8000"));
        assert_eq!(grpc_port_guess("node-1:0"), None);
        assert_eq!(grpc_port_guess("no-port"), None);
    }

    #[test]
    fn giving_up_on_several_unreachable_nodes_names_each_once() {
        let last = Error::Unavailable(format!("{CANNOT_CONNECT}b:2 (Connection refused (os error 111))"));
        let e = give_up(Some(last), &["a:1".into(), "b:2".into(), "a:1".into(), "b:2".into()]);
        assert_eq!(e.to_string(), "cannot connect to any of a:1, b:2 (Connection refused (os error 111))");
        let one = Error::Unavailable(format!("{CANNOT_CONNECT}a:1 (refused)"));
        assert_eq!(give_up(Some(one), &["a:1".into(), "a:1".into()]).to_string(), "cannot connect to a:1 (refused)");
        assert!(!give_up(Some(Error::Unavailable("no quorum".into())), &[]).is_unreachable());
    }
}
