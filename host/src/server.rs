//! The node process: the order in which the node and its servers start, and
//! the order in which they stop. The node ([`crate::cluster::Node`]) is the
//! domain object; this module is the wiring around it, so the cluster layer
//! never reaches up into the gRPC or HTTP layers.
//!
//! Start-up order, and why:
//! 1. the data directory, checked against the node id, before anything
//!    listens (a directory of another node must not serve);
//! 2. the gRPC listener is bound, so the advertised address is known;
//! 3. the HTTP server, before the ring settings: a joining node may wait
//!    long for its seed, and a liveness probe must not kill it meanwhile;
//! 4. the node opens its groups;
//! 5. the gRPC server starts, so peers can reach the node;
//! 6. only then does the node bootstrap or join ([`Node::run`]).

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cluster::{Node, NodeError};
use crate::config::NodeConfig;
use crate::http::HttpServer;
use crate::raft::LinkFilter;

/// A running node with its gRPC and HTTP servers.
pub struct Server {
    node: Node,
    /// The gRPC server, awaited by [`Server::drain`].
    grpc: Mutex<Option<JoinHandle<()>>>,
    /// The HTTP server (`--http`), stopped on shutdown.
    http: Option<HttpServer>,
}

impl Server {
    /// Starts a node and its servers, then bootstraps a new cluster or joins
    /// an existing one. On an error, whatever started is stopped again.
    pub async fn start(config: NodeConfig, filter: LinkFilter) -> Result<Server, NodeError> {
        let storage = Node::open_storage(&config).await?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot listen on {}: {e}", config.listen)))?;
        let bound = listener.local_addr().map_err(|e| NodeError::Startup(e.to_string()))?;
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::TlsState::load(t.clone()).map_err(|e| NodeError::Startup(e.to_string()))?),
            None => None,
        };
        let http = match &config.http {
            Some(http) => Some(HttpServer::start(
                tokio::net::TcpListener::bind(http)
                    .await
                    .map_err(|e| NodeError::Startup(format!("cannot listen on {http} (http): {e}")))?,
                tls.clone(),
            )),
            None => None,
        };
        let node = Node::open(config, storage, bound, tls, filter).await?;
        let server =
            Server { grpc: Mutex::new(Some(tokio::spawn(crate::api::serve(node.clone(), listener)))), http, node };
        if let Some(http) = &server.http {
            http.serve_node(server.node.clone());
        }
        if let Err(e) = server.node.run().await {
            server.shutdown().await;
            return Err(e);
        }
        Ok(server)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops taking requests and waits, at most `budget`, for the ones in
    /// flight to finish (see [`Node::start_draining`]). True when everything
    /// in flight finished within `budget`.
    pub async fn drain(&self, budget: Duration) -> bool {
        self.node.start_draining();
        let grpc = self.grpc.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(grpc) = grpc else { return true };
        let abort = grpc.abort_handle();
        match tokio::time::timeout(budget, grpc).await {
            Ok(_) => true,
            Err(_) => {
                abort.abort();
                false
            }
        }
    }

    /// Stops both servers, then the node. Idempotent.
    pub async fn shutdown(&self) {
        if let Some(http) = &self.http {
            http.stop();
        }
        let grpc = self.grpc.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(grpc) = grpc {
            grpc.abort();
            let _ = grpc.await;
        }
        self.node.shutdown().await;
    }
}
