//! gRPC edge: the public `Kv`, `Cluster`, `Hooks`, `Backup` and `Auth` services and the internal `Raft`
//! transport service. Protobuf types are converted here and nowhere else.

mod auth_service;
mod backup_service;
mod cluster_service;
pub mod edge;
mod hooks_service;
mod kv_service;
mod raft_service;

use ringkv_client::proto::auth_server::AuthServer;
use ringkv_client::proto::backup_server::BackupServer;
use ringkv_client::proto::cluster_server::ClusterServer;
use ringkv_client::proto::hooks_server::HooksServer;
use ringkv_client::proto::kv_server::KvServer;
use ringkv_client::proto::raft_server::RaftServer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::cluster::Node;
use crate::raft::network::MAX_PEER_MESSAGE;

pub use backup_service::{LEADER_HEADER, PARTITIONER_NONE};
pub use cluster_service::{reshard_json, shadow_json, stage_name, status_json, status_of};
pub use hooks_service::spec_of as hook_spec_of;

/// Serves every gRPC service on `listener` until the node shuts down.
pub async fn serve(node: Node, listener: tokio::net::TcpListener) {
    let mut stop = node.shutdown_signal();
    let mut drain = node.drain_signal();
    let limits = &node.config().limits;
    // Client messages are bounded by the value limit plus room for the key and framing.
    let max_client_message = limits.max_value_bytes + limits.max_key_bytes + 64 * 1024;
    let connections = edge::ConnectionLimiter::new(limits.max_connections_per_ip);
    // Standard gRPC health checking (grpc.health.v1) and reflection, so
    // tools like grpcurl and grpc-health-probe work without the protos.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvServer<kv_service::KvService>>().await;
    health.set_serving::<ClusterServer<cluster_service::ClusterService>>().await;
    health.set_serving::<HooksServer<hooks_service::HooksService>>().await;
    health.set_serving::<AuthServer<auth_service::AuthService>>().await;
    health.set_serving::<BackupServer<backup_service::BackupService>>().await;
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringkv_client::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection unavailable");
            None
        }
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .layer(crate::telemetry::GrpcMetricsLayer)
        .layer(edge::EdgeLayer { default_deadline: node.config().default_deadline() })
        .add_service(
            KvServer::new(kv_service::KvService::new(node.clone())).max_decoding_message_size(max_client_message),
        )
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(AuthServer::new(auth_service::AuthService::new(node.clone())))
        .add_service(
            ClusterServer::new(cluster_service::ClusterService::new(node.clone()))
                .max_decoding_message_size(MAX_ADMIN_MESSAGE),
        )
        .add_service(
            // A test request carries a source and a write's new and old values.
            HooksServer::new(hooks_service::HooksService::new(node.clone())).max_decoding_message_size(
                limits.max_hook_source_bytes.max(limits.max_wasm_module_bytes)
                    + 2 * limits.max_value_bytes
                    + limits.max_key_bytes
                    + 64 * 1024,
            ),
        )
        .add_service(BackupServer::new(backup_service::BackupService::new(node.clone())))
        .add_service(
            RaftServer::new(raft_service::RaftService::new(node.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        );
    let shutdown = async move {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = drain.wait_for(|s| *s) => {}
        }
    };
    // With TLS, connections arrive as rustls streams, so `Request::peer_certs`
    // sees the client's verified certificate chain.
    let result = match node.tls() {
        Some(tls) => {
            use futures::StreamExt;
            let incoming =
                crate::tls::accept(listener, tls.clone(), |m| m.grpc_server.clone(), move |c| connections.admit(c));
            let incoming =
                tokio_stream::wrappers::ReceiverStream::new(incoming).map(|(conn, _)| Ok::<_, std::io::Error>(conn));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        None => router.serve_with_incoming_shutdown(nodelay(listener, connections), shutdown).await,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}

/// Largest `Cluster` request: they carry ids and addresses only.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// Accepted connections with Nagle's algorithm off, each admitted by the
/// per-IP connection cap (refused ones are closed at once). tonic's own
/// `tcp_nodelay` only applies to listeners it binds itself; without this,
/// small replies wait for the peer's delayed ACK (about 40 ms).
fn nodelay(
    listener: tokio::net::TcpListener,
    connections: edge::ConnectionLimiter,
) -> impl futures::Stream<Item = std::io::Result<edge::LimitedConn>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).filter_map(move |conn| {
        let admitted = match conn {
            Err(e) => Some(Err(e)),
            Ok(conn) => {
                if let Err(e) = conn.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not disable Nagle on an accepted connection");
                }
                connections.admit(conn).map(Ok)
            }
        };
        std::future::ready(admitted)
    })
}

/// Authenticates `req` and checks that its principal may do `need`
/// (everything passes with auth off). A refusal is logged here, once,
/// naming the principal but never a token.
pub(crate) async fn authorize<T>(
    node: &Node,
    req: &tonic::Request<T>,
    rpc: &'static str,
    need: crate::auth::Need<'_>,
) -> Result<Option<std::sync::Arc<crate::auth::Principal>>, Status> {
    let header = req.metadata().get(crate::auth::AUTHORIZATION).map(|v| v.as_bytes());
    node.auth().authorize(header, crate::auth::peer_identity(req), need).await.map_err(|e| {
        tracing::warn!(rpc, error = %e, "request refused");
        match e {
            crate::auth::AuthError::Unauthenticated(m) => Status::unauthenticated(m),
            crate::auth::AuthError::Denied(d) => Status::permission_denied(d.to_string()),
        }
    })
}
