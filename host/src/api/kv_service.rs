//! `ringkv.v1.Kv`: validates requests, then hands them to the node.

use std::pin::Pin;

use futures::Stream;
use ringkv_client::proto::{self, kv_server::Kv, Consistency};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::cluster::{Node, NodeError, Proposal};
use crate::raft::CommandResult;
use crate::storage::Envelope;

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

    /// One span per request, carrying the node and the key's shard group.
    fn span(&self, rpc: &'static str, group: u64) -> tracing::Span {
        tracing::info_span!("request", rpc, node = self.node.id(), group)
    }
}

fn consistency(raw: i32) -> Result<bool, Status> {
    match Consistency::try_from(raw) {
        Ok(Consistency::Linearizable) => Ok(true),
        Ok(Consistency::Eventual) => Ok(false),
        Err(_) => Err(Status::invalid_argument(format!("unknown consistency level {raw}"))),
    }
}

impl From<Envelope> for proto::GetResponse {
    fn from(e: Envelope) -> Self {
        proto::GetResponse { found: true, value: e.value, version: e.version, expires_at_ms: e.expires_at }
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<proto::ScanItem, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        let r = req.into_inner();
        self.check_key(&r.key)?;
        let max = self.node.config().limits.max_value_bytes;
        if r.value.len() > max {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {max} bytes",
                r.value.len()
            )));
        }
        let p =
            Proposal::Put { key: r.key.to_vec(), value: r.value.to_vec(), ttl_ms: r.ttl_ms, if_version: r.if_version };
        let group = self.node.group_for_key(&r.key);
        let result = self.node.propose(group, p).instrument(self.span("put", group)).await?;
        match result {
            CommandResult::Written { version } => Ok(Response::new(proto::PutResponse { version })),
            CommandResult::VersionMismatch { current } => Err(NodeError::VersionMismatch { current }.into()),
            other => Err(Status::internal(format!("unexpected put result {other:?}"))),
        }
    }

    async fn get(&self, req: Request<proto::GetRequest>) -> Result<Response<proto::GetResponse>, Status> {
        let r = req.into_inner();
        self.check_key(&r.key)?;
        let linearizable = consistency(r.consistency)?;
        let group = self.node.group_for_key(&r.key);
        let found = self.node.get(group, r.key.to_vec(), linearizable).instrument(self.span("get", group)).await?;
        Ok(Response::new(found.map(Into::into).unwrap_or_default()))
    }

    async fn delete(&self, req: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        let r = req.into_inner();
        self.check_key(&r.key)?;
        let p = Proposal::Delete { key: r.key.to_vec(), if_version: r.if_version };
        let group = self.node.group_for_key(&r.key);
        match self.node.propose(group, p).instrument(self.span("delete", group)).await? {
            CommandResult::Deleted { existed, version } => {
                Ok(Response::new(proto::DeleteResponse { deleted: existed, version }))
            }
            CommandResult::VersionMismatch { current } => Err(NodeError::VersionMismatch { current }.into()),
            other => Err(Status::internal(format!("unexpected delete result {other:?}"))),
        }
    }

    type ScanStream = ScanStream;

    async fn scan(&self, req: Request<proto::ScanRequest>) -> Result<Response<Self::ScanStream>, Status> {
        let r = req.into_inner();
        let limits = &self.node.config().limits;
        if r.prefix.len() > limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "prefix is {} bytes; the key limit is {} bytes",
                r.prefix.len(),
                limits.max_key_bytes
            )));
        }
        let limit = match r.limit {
            0 => limits.scan_default,
            n => n.min(limits.scan_max),
        };
        let linearizable = consistency(r.consistency)?;
        let items = self.node.scan_all(r.prefix.to_vec(), limit, linearizable).instrument(self.span("scan", 0)).await?;
        let stream = futures::stream::iter(items.into_iter().map(|(key, e)| {
            Ok(proto::ScanItem { key: key.into(), value: e.value, version: e.version, expires_at_ms: e.expires_at })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}
