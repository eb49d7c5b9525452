//! HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness) and
//! `/status` (JSON cluster view).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::cluster::Node;

/// Serves HTTP on `listener` until the node shuts down.
pub async fn serve(node: Node, listener: tokio::net::TcpListener) {
    let mut stop = node.shutdown_signal();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .merge(crate::dashboard::routes())
        .with_state(node);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server stopped");
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
async fn readyz(State(node): State<Node>) -> (StatusCode, String) {
    match node.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", missing.join("\n"))),
    }
}

async fn status(State(node): State<Node>) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    crate::api::status_of(&node, false)
        .await
        .map(|s| Json(crate::api::status_json(&s)))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))
}
