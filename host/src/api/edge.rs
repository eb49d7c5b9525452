//! The gRPC port's defences below the services: the per-IP connection cap
//! on accepted sockets, the default deadline of requests that carry none,
//! and the gRPC codes of requests tonic refuses before a service sees them
//! (undecodable or oversized messages).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Code, Status};

/// How often a refused connection may be logged (the count of the ones in
/// between goes into the next line), so a flood cannot flood the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts open connections per remote IP and admits new ones up to a cap.
#[derive(Clone)]
pub struct ConnectionLimiter {
    max_per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refusals: Arc<Mutex<RefusalLog>>,
}

#[derive(Default)]
struct RefusalLog {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl ConnectionLimiter {
    pub fn new(max_per_ip: usize) -> Self {
        Self { max_per_ip, open: Arc::default(), refusals: Arc::default() }
    }

    /// Admits `conn` if its IP has fewer than the cap open; otherwise drops
    /// (closes) it and returns `None`.
    pub fn admit(&self, conn: TcpStream) -> Option<LimitedConn> {
        let ip = match conn.peer_addr() {
            Ok(a) => a.ip(),
            // Already gone: nothing to serve.
            Err(_) => return None,
        };
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(ip).or_insert(0);
            if *n < self.max_per_ip {
                *n += 1;
                return Some(LimitedConn { inner: conn, slot: Slot { ip, open: self.open.clone() } });
            }
        }
        self.log_refusal(ip);
        None
    }

    /// Connections currently open from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&ip).copied().unwrap_or(0)
    }

    fn log_refusal(&self, ip: IpAddr) {
        let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        log.unlogged += 1;
        let due = log.last_logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY);
        if due {
            tracing::warn!(
                %ip,
                limit = self.max_per_ip,
                refused = log.unlogged,
                "refusing gRPC connections: too many open from one IP (limits.max_connections_per_ip)"
            );
            log.last_logged = Some(Instant::now());
            log.unlogged = 0;
        }
    }
}

/// An admitted connection's place in the per-IP count, given back on drop.
struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accepted TCP connection that counts against its IP's cap while open.
pub struct LimitedConn {
    inner: TcpStream,
    slot: Slot,
}

impl LimitedConn {
    pub fn ip(&self) -> IpAddr {
        self.slot.ip
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// True for RPCs that get the default deadline when the client sets none.
/// Membership changes wait for data to move (bounded by their own, longer
/// deadline) and the `Raft` service is node-to-node traffic whose senders
/// set deadlines themselves.
fn takes_default_deadline(path: &str) -> bool {
    const EXEMPT: &[&str] = &["/ringkv.v1.Cluster/AddNode", "/ringkv.v1.Cluster/RemoveNode"];
    !path.starts_with("/ringkv.v1.Raft/") && !EXEMPT.contains(&path)
}

/// tonic answers an undecodable request with `INTERNAL` and an oversized one
/// with `OUT_OF_RANGE` before any service runs; both are the client's
/// fault, so they become `INVALID_ARGUMENT` and `RESOURCE_EXHAUSTED`.
fn client_fault(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(Status::invalid_argument(format!("malformed request: {message}")))
        }
        Code::OutOfRange if message.contains("decoded message length too large") => {
            Some(Status::resource_exhausted(format!("request too large: {message}")))
        }
        _ => None,
    }
}

/// Applies [`EdgeService`] to the gRPC router.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLayer {
    pub default_deadline: Duration,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService { inner, default_deadline: self.default_deadline }
    }
}

/// Gives deadline-less requests the default deadline and maps tonic's
/// request-decoding failures to client-error codes.
#[derive(Clone, Debug)]
pub struct EdgeService<S> {
    inner: S,
    default_deadline: Duration,
}

impl<S, B, R> tower::Service<http::Request<B>> for EdgeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let deadline = (!req.headers().contains_key("grpc-timeout") && takes_default_deadline(&path))
            .then_some(self.default_deadline);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = match deadline {
                None => fut.await?,
                Some(d) => match tokio::time::timeout(d, fut).await {
                    Ok(r) => r?,
                    Err(_) => {
                        tracing::warn!(rpc = %path, deadline = ?d, "request without a deadline cut off at the server default");
                        return Ok(Status::deadline_exceeded(format!(
                            "no reply within the server's default deadline of {d:?} (set a grpc-timeout to choose another)"
                        ))
                        .into_http());
                    }
                },
            };
            if let Some(status) = resp.extensions().get::<Status>().and_then(client_fault) {
                tracing::debug!(rpc = %path, error = %status.message(), "request refused before reaching its service");
                let headers = resp.headers_mut();
                headers.remove(Status::GRPC_STATUS);
                headers.remove(Status::GRPC_MESSAGE);
                headers.remove(Status::GRPC_STATUS_DETAILS);
                if let Err(e) = status.add_header(headers) {
                    tracing::debug!(error = %e, "could not rewrite a refused request's status");
                }
                resp.extensions_mut().insert(status);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_failures_become_client_errors() {
        let s =
            client_fault(&Status::internal("failed to decode Protobuf message: invalid wire type")).expect("mapped");
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = client_fault(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ))
        .expect("mapped");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(client_fault(&Status::internal("storage is broken")).is_none());
        assert!(client_fault(&Status::unavailable("no quorum")).is_none());
    }

    #[test]
    fn membership_and_peer_rpcs_keep_their_own_deadlines() {
        assert!(takes_default_deadline("/ringkv.v1.Kv/Put"));
        assert!(takes_default_deadline("/ringkv.v1.Kv/Scan"));
        assert!(takes_default_deadline("/ringkv.v1.Cluster/Status"));
        assert!(takes_default_deadline("/ringkv.v1.Hooks/Deploy"));
        assert!(!takes_default_deadline("/ringkv.v1.Cluster/RemoveNode"));
        assert!(!takes_default_deadline("/ringkv.v1.Raft/AppendEntries"));
    }

    /// A handler that never answers.
    #[derive(Clone)]
    struct Stuck;

    impl tower::Service<http::Request<()>> for Stuck {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    fn request(path: &str, grpc_timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(format!("http://node{path}"));
        if let Some(t) = grpc_timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).expect("request")
    }

    #[tokio::test]
    async fn a_request_without_a_deadline_gets_the_default_one() {
        use tower::{Layer, Service};
        let mut svc = EdgeLayer { default_deadline: Duration::from_millis(20) }.layer(Stuck);
        let resp = svc.call(request("/ringkv.v1.Kv/Put", None)).await.expect("a reply");
        let status = resp.extensions().get::<Status>().expect("a status");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(resp.headers().get("grpc-status").map(|v| v.as_bytes()), Some(b"4".as_ref()));

        // The client's own deadline (tonic enforces it outside this layer)
        // and exempt RPCs are left alone: these stay pending.
        let own = tokio::time::timeout(Duration::from_millis(200), svc.call(request("/ringkv.v1.Kv/Put", Some("1H"))));
        assert!(own.await.is_err(), "a client deadline is not replaced by the default");
        let exempt = tokio::time::timeout(Duration::from_millis(200), svc.call(request("/ringkv.v1.Raft/Vote", None)));
        assert!(exempt.await.is_err(), "peer RPCs get no default deadline");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_until_one_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limiter = ConnectionLimiter::new(2);
        let mut admitted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            let (conn, _) = listener.accept().await.expect("accept");
            if let Some(c) = limiter.admit(conn) {
                admitted.push(c);
            }
        }
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(admitted.len(), 2);
        assert_eq!(limiter.open_from(ip), 2);
        admitted.pop();
        assert_eq!(limiter.open_from(ip), 1);
        clients.push(TcpStream::connect(addr).await.expect("connect"));
        let (conn, _) = listener.accept().await.expect("accept");
        assert!(limiter.admit(conn).is_some(), "a freed slot admits the next connection");
    }
}
