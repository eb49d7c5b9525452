//! HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness), `/status`
//! (JSON cluster view), `/metrics` (Prometheus text) and `/cluster/load`
//! (every member's client request figures, JSON, for the dashboard). With
//! auth on, all but health, readiness and the dashboard's static files
//! (which hold no data) need a bearer token.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::cluster::Node;

/// The node's HTTP server. It starts before the node has its ring settings
/// (a joining node may wait a long time for its seed), answering liveness
/// with 200 and everything else with 503 "starting", and serves the full
/// app once [`HttpServer::serve_node`] hands it the node.
pub struct HttpServer {
    app: Arc<ArcSwapOption<Router>>,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    /// Starts serving on `listener` (HTTPS when `tls` is given); stops when
    /// dropped or [`HttpServer::stop`]ped.
    pub fn start(listener: tokio::net::TcpListener, tls: Option<Arc<crate::tls::TlsState>>) -> HttpServer {
        let app: Arc<ArcSwapOption<Router>> = Arc::new(ArcSwapOption::empty());
        let (stop, mut stopped) = watch::channel(false);
        let current = app.clone();
        let dispatch = tower::service_fn(move |req: axum::extract::Request| {
            let app = current.load_full();
            async move {
                let resp = match app {
                    Some(app) => app.as_ref().clone().oneshot(req).await?,
                    None => starting(req.uri().path()).into_response(),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let app = Router::new().fallback_service(dispatch);
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let result = match (tls, listener.local_addr()) {
                (Some(tls), Ok(local)) => {
                    let incoming = crate::tls::accept(listener, tls, |m| m.http_server.clone(), Some);
                    let listener = crate::tls::HttpsListener::new(incoming, local);
                    axum::serve(listener, app).with_graceful_shutdown(stopped).await
                }
                (Some(_), Err(e)) => Err(e),
                (None, _) => axum::serve(listener, app).with_graceful_shutdown(stopped).await,
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        HttpServer { app, stop }
    }

    /// Serves the full app for `node` from now on.
    pub fn serve_node(&self, node: Node) {
        self.app.store(Some(Arc::new(router(node))));
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
        // The app holds a handle to the node: drop it with the server.
        self.app.store(None);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answers of a node that is still starting.
fn starting(path: &str) -> (StatusCode, &'static str) {
    match path {
        "/healthz" => (StatusCode::OK, "starting\n"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready:\nstarting: waiting for the cluster's ring settings from a seed\n",
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the node is starting\n"),
    }
}

fn router(node: Node) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(
            Router::new()
                .route("/status", get(status))
                .route("/metrics", get(metrics))
                .route("/cluster/load", get(cluster_load))
                .route_layer(axum::middleware::from_fn_with_state(node.clone(), require_token)),
        )
        .merge(crate::dashboard::routes())
        .with_state(node)
}

/// Lets a request through only with a bearer token whose grants allow the
/// route: `/status` (members, addresses, hooks) needs admin, `/metrics` any
/// grant not limited to a key prefix. Refusals are logged once, here.
async fn require_token(
    State(node): State<Node>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::auth::{AuthError, Need, PeerIdentity};
    let path = req.uri().path().to_string();
    let need = match path.as_str() {
        "/metrics" | "/cluster/load" => Need::ClusterRead("metrics"),
        _ => Need::Admin("cluster status"),
    };
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    match node.auth().authorize(header.as_deref(), PeerIdentity::None, need).await {
        Ok(_) => next.run(req).await,
        Err(e) => {
            tracing::warn!(path, error = %e, "HTTP request refused");
            let code = match e {
                AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                AuthError::Denied(_) => StatusCode::FORBIDDEN,
            };
            (code, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], format!("{e}\n")).into_response()
        }
    }
}

async fn healthz(State(node): State<Node>) -> (StatusCode, &'static str) {
    if node.storage().is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "storage poisoned after a failed fsync\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// 200 once the node has joined and caught up with the shards it hosts
/// (see [`Node::readiness`]); 503 with what is missing, one item per line.
/// Either way, a `warning:` line for each shard this node hosts that is
/// under-replicated, and each shard with no live majority of replicas
/// anywhere. Those stay warnings: taking every node of a degraded cluster
/// out of service would turn lost redundancy into an outage.
async fn readyz(State(node): State<Node>) -> (StatusCode, String) {
    let warnings = replication_warnings(&node).await;
    match node.readiness().await {
        Ok(()) => (StatusCode::OK, format!("ready\n{warnings}")),
        Err(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n{warnings}", missing.join("\n"))),
    }
}

/// One `warning:` line per under-replicated shard this node hosts, or that
/// has lost a majority of its replicas.
async fn replication_warnings(node: &Node) -> String {
    let (Ok(routes), Ok(missing)) = (node.shard_routes().await, node.missing_members().await) else {
        return String::new();
    };
    let mut out = String::new();
    for r in routes.iter().filter(|r| r.under_replicated) {
        let live: Vec<u64> = r.replicas.iter().copied().filter(|n| !missing.contains(n)).collect();
        let no_majority = live.len() * 2 <= r.replicas.len();
        if r.replicas.contains(&node.id()) || no_majority {
            out.push_str(&format!(
                "warning: shard {} is under-replicated: {} of its replicas {:?} live{}\n",
                r.shard,
                live.len(),
                r.replicas,
                if no_majority { ", no majority: its writes wait until a replica returns" } else { "" }
            ));
        }
    }
    out
}

async fn status(State(node): State<Node>) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    crate::api::status_of(&node, false)
        .await
        .map(|s| Json(crate::api::status_json(&s)))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::cluster::metrics::render(&node).await,
    )
}

/// How long `/cluster/load` waits for a peer's figures: the page polls once a second.
const PEER_LOAD_WAIT: Duration = Duration::from_millis(800);

/// Every member's client key requests so far (`Cluster/Load`), this node's
/// own included, for the dashboard's cluster-wide charts: per node `requests`
/// and `buckets`, a cumulative latency histogram as `[upper bound in
/// seconds, count]` pairs (the last bound `"+Inf"`). A member that does not
/// answer within [`PEER_LOAD_WAIT`] is listed with `ok: false` and why, so
/// the page can show it as missing rather than idle. The caller's bearer
/// token goes on to the peers, which check it as this node did.
async fn cluster_load(
    State(node): State<Node>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let members = node.members().map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>().ok());
    let asks = members.into_iter().map(|(id, addr, _)| {
        let (node, token) = (node.clone(), token.clone());
        async move {
            let answer =
                if id == node.id() { Ok(crate::telemetry::load(id)) } else { peer_load(&node, id, &addr, token).await };
            match answer {
                Ok(l) => {
                    let buckets: Vec<serde_json::Value> = l
                        .bucket_le
                        .iter()
                        .zip(&l.bucket_count)
                        .map(|(le, n)| {
                            let le = if le.is_finite() { le.to_string() } else { "+Inf".to_string() };
                            serde_json::json!([le, n])
                        })
                        .collect();
                    serde_json::json!({"id": id, "addr": addr, "ok": true, "requests": l.requests, "buckets": buckets})
                }
                Err(error) => serde_json::json!({"id": id, "addr": addr, "ok": false, "error": error}),
            }
        }
    });
    let nodes = futures::future::join_all(asks).await;
    Ok(Json(serde_json::json!({"node_id": node.id(), "nodes": nodes})))
}

/// A peer's `Cluster/Load` answer, or why there is none.
async fn peer_load(
    node: &Node,
    id: u64,
    addr: &str,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<ringkv_client::proto::LoadResponse, String> {
    use ringkv_client::proto::{cluster_client::ClusterClient, LoadRequest};
    let channel = node.peers().channel(id, addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(LoadRequest {});
    req.set_timeout(PEER_LOAD_WAIT);
    if let Some(token) = token {
        req.metadata_mut().insert(crate::auth::AUTHORIZATION, token);
    }
    match tokio::time::timeout(PEER_LOAD_WAIT, ClusterClient::new(channel).load(req)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {PEER_LOAD_WAIT:?}")),
    }
}
