//! `ringkv.v1.Kv`: validates requests, then hands them to the node.
//!
//! Routing metadata (see `ringkv_client::routing`): a request's
//! `ringkv-epoch` makes the node first catch up with the cluster
//! configuration the client routed by; every reply, errors included, carries
//! the node's own epoch, and a reply to a key request this node did not serve
//! itself carries `ringkv-forwarded` with the node that did, so the client
//! refreshes its routing table.

use std::pin::Pin;

use futures::Stream;
use ringkv_client::proto::{self, kv_server::Kv, Consistency};
use ringkv_client::routing::{header_u64, EPOCH_HEADER, FORWARDED_HEADER};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::authorize;
use crate::auth::Need;
use crate::cluster::{Node, NodeError, RequestContext, ServedBy};
use crate::command::{CommandResult, KvProposal};
use crate::hooks::HookUse;
use crate::storage::Envelope;
use crate::telemetry::ConsistencySlot;

pub struct KvService {
    node: Node,
}

impl KvService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        let max = self.node.config().limits.max_key_bytes;
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        if key.len() > max {
            return Err(Status::invalid_argument(format!("key is {} bytes; the limit is {max} bytes", key.len())));
        }
        Ok(())
    }

    /// One span per request, carrying the node.
    fn span(&self, rpc: &'static str) -> tracing::Span {
        tracing::info_span!("request", rpc, node = self.node.id())
    }

    /// Waits until this node's meta group has applied the epoch the client
    /// routed by (bounded by the request timeout), so ownership is never
    /// decided from an older configuration than the client's.
    async fn catch_up(&self, meta: &MetadataMap) -> Result<(), Status> {
        let Some(epoch) = header_u64(meta, EPOCH_HEADER) else { return Ok(()) };
        self.node.wait_meta_epoch(epoch, self.node.config().request_timeout).await.map_err(Status::from)
    }

    /// Runs a key request: catches up with the client's epoch, serves it
    /// (`serve` notes in `served` which node did), and marks the reply with
    /// this node's epoch and, when another node served it, that node.
    async fn routed<T, R, F, Fut>(&self, req: Request<T>, served: &ServedBy, serve: F) -> Result<Response<R>, Status>
    where
        F: FnOnce(T) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let result = match self.catch_up(req.metadata()).await {
            Ok(()) => serve(req.into_inner()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(reply) => {
                let mut resp = Response::new(reply);
                resp.metadata_mut().insert(EPOCH_HEADER, self.node.meta_epoch().into());
                if let Some(id) = served.get().filter(|id| *id != self.node.id()) {
                    resp.metadata_mut().insert(FORWARDED_HEADER, id.into());
                }
                Ok(resp)
            }
            Err(status) => Err(self.with_epoch(status)),
        }
    }

    /// `status` marked with this node's epoch, as every reply is.
    fn with_epoch(&self, mut status: Status) -> Status {
        status.metadata_mut().insert(EPOCH_HEADER, self.node.meta_epoch().into());
        status
    }
}

fn consistency(raw: i32) -> Result<bool, Status> {
    match Consistency::try_from(raw) {
        Ok(Consistency::Linearizable) => Ok(true),
        Ok(Consistency::Eventual) => Ok(false),
        Err(_) => Err(Status::invalid_argument(format!("unknown consistency level {raw}"))),
    }
}

fn get_response(e: Envelope) -> proto::GetResponse {
    proto::GetResponse { found: true, value: e.value, version: e.version, expires_at_ms: e.expires_at }
}

fn hook_version(h: HookUse) -> proto::HookVersion {
    proto::HookVersion { name: h.name, version: h.version }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<proto::ScanItem, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        ConsistencySlot::set(&req, true);
        authorize(&self.node, &req, "put", Need::Write(&req.get_ref().key)).await?;
        let served = ServedBy::default();
        self.routed(req, &served, |r| self.serve_put(r, RequestContext::client(&served))).await
    }

    async fn get(&self, req: Request<proto::GetRequest>) -> Result<Response<proto::GetResponse>, Status> {
        let linearizable = consistency(req.get_ref().consistency).map_err(|s| self.with_epoch(s))?;
        ConsistencySlot::set(&req, linearizable);
        authorize(&self.node, &req, "get", Need::Read(&req.get_ref().key)).await?;
        let served = ServedBy::default();
        self.routed(req, &served, |r| self.serve_get(r, linearizable, RequestContext::client(&served))).await
    }

    async fn delete(&self, req: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        ConsistencySlot::set(&req, true);
        authorize(&self.node, &req, "delete", Need::Write(&req.get_ref().key)).await?;
        let served = ServedBy::default();
        self.routed(req, &served, |r| self.serve_delete(r, RequestContext::client(&served))).await
    }

    type ScanStream = ScanStream;

    async fn scan(&self, req: Request<proto::ScanRequest>) -> Result<Response<Self::ScanStream>, Status> {
        let linearizable = consistency(req.get_ref().consistency).map_err(|s| self.with_epoch(s))?;
        ConsistencySlot::set(&req, linearizable);
        authorize(&self.node, &req, "scan", Need::Scan(&req.get_ref().prefix)).await?;
        let epoch_status = |s: Status| self.with_epoch(s);
        self.catch_up(req.metadata()).await.map_err(epoch_status)?;
        let (items, more) = self.serve_scan(req.into_inner(), linearizable).await.map_err(epoch_status)?;
        let last = items.len().saturating_sub(1);
        let stream = futures::stream::iter(items.into_iter().enumerate().map(move |(i, (key, e))| {
            Ok(proto::ScanItem {
                key: key.into(),
                value: e.value,
                version: e.version,
                expires_at_ms: e.expires_at,
                more: more && i == last,
            })
        }));
        let mut resp = Response::new(Box::pin(stream) as ScanStream);
        resp.metadata_mut().insert(EPOCH_HEADER, self.node.meta_epoch().into());
        Ok(resp)
    }
}

/// The requests themselves, without routing metadata.
impl KvService {
    async fn serve_put(&self, r: proto::PutRequest, ctx: RequestContext<'_>) -> Result<proto::PutResponse, Status> {
        self.check_key(&r.key)?;
        let max = self.node.config().limits.max_value_bytes;
        if r.value.len() > max {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {max} bytes",
                r.value.len()
            )));
        }
        let p = KvProposal::Put {
            key: r.key.to_vec(),
            value: r.value.to_vec(),
            ttl_ms: r.ttl_ms,
            if_version: r.if_version,
            hooks: None,
        };
        self.node.check_writable()?;
        let result = self.node.write_key(ctx, &r.key, p).instrument(self.span("put")).await?;
        match result {
            CommandResult::Written { version, hooks } => {
                Ok(proto::PutResponse { version, hooks: hooks.into_iter().map(hook_version).collect() })
            }
            CommandResult::VersionMismatch { current } => Err(NodeError::VersionMismatch { current }.into()),
            other => Err(Status::internal(format!("unexpected put result {other:?}"))),
        }
    }

    async fn serve_get(
        &self,
        r: proto::GetRequest,
        linearizable: bool,
        ctx: RequestContext<'_>,
    ) -> Result<proto::GetResponse, Status> {
        self.check_key(&r.key)?;
        let found = self.node.get_key(ctx, &r.key, linearizable).instrument(self.span("get")).await?;
        Ok(found.map(get_response).unwrap_or_default())
    }

    async fn serve_delete(
        &self,
        r: proto::DeleteRequest,
        ctx: RequestContext<'_>,
    ) -> Result<proto::DeleteResponse, Status> {
        self.check_key(&r.key)?;
        let p = KvProposal::Delete { key: r.key.to_vec(), if_version: r.if_version, hooks: None };
        self.node.check_writable()?;
        match self.node.write_key(ctx, &r.key, p).instrument(self.span("delete")).await? {
            CommandResult::Deleted { existed, version, hooks } => Ok(proto::DeleteResponse {
                deleted: existed,
                version,
                hooks: hooks.into_iter().map(hook_version).collect(),
            }),
            CommandResult::VersionMismatch { current } => Err(NodeError::VersionMismatch { current }.into()),
            other => Err(Status::internal(format!("unexpected delete result {other:?}"))),
        }
    }

    /// The page of a scan, and whether more keys under the prefix follow it.
    async fn serve_scan(
        &self,
        r: proto::ScanRequest,
        linearizable: bool,
    ) -> Result<(Vec<(Vec<u8>, Envelope)>, bool), Status> {
        let limits = &self.node.config().limits;
        if r.prefix.len() > limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "prefix is {} bytes; the key limit is {} bytes",
                r.prefix.len(),
                limits.max_key_bytes
            )));
        }
        if r.start_after.len() > limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "start_after is {} bytes; the key limit is {} bytes",
                r.start_after.len(),
                limits.max_key_bytes
            )));
        }
        let limit = match r.limit {
            0 => limits.scan_default,
            n => n.min(limits.scan_max),
        };
        // One key past the page tells whether more follow.
        let mut items = self
            .node
            .scan_all(r.prefix.to_vec(), r.start_after.to_vec(), limit.saturating_add(1), linearizable)
            .instrument(self.span("scan"))
            .await?;
        let mut more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let n = items.len();
        let items = within_bytes(items, limits.max_scan_bytes);
        more |= items.len() < n;
        Ok((items, more))
    }
}

/// The first items of a scan whose keys and values fit in `max_bytes`, and
/// always the first item, so a client paging by the last key makes progress.
fn within_bytes(mut items: Vec<(Vec<u8>, Envelope)>, max_bytes: usize) -> Vec<(Vec<u8>, Envelope)> {
    let mut total = 0usize;
    let fits = items
        .iter()
        .take_while(|(k, e)| {
            total = total.saturating_add(k.len() + e.value.len());
            total <= max_bytes
        })
        .count();
    items.truncate(fits.max(1));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value_len: usize) -> (Vec<u8>, Envelope) {
        (key.as_bytes().to_vec(), Envelope { value: vec![0u8; value_len].into(), version: 1, expires_at: None })
    }

    #[test]
    fn a_scan_stops_at_the_byte_budget_but_returns_at_least_one_item() {
        let items = vec![item("a", 9), item("b", 9), item("c", 9)];
        assert_eq!(within_bytes(items.clone(), 20).len(), 2);
        assert_eq!(within_bytes(items.clone(), 30).len(), 3);
        assert_eq!(within_bytes(items.clone(), 19).len(), 1);
        assert_eq!(within_bytes(items, 1).len(), 1, "one oversized item still goes out");
        assert!(within_bytes(Vec::new(), 1).is_empty());
    }
}
