//! `ringkv.v1.Backup`: streams a shard's point-in-time dump from its leader
//! and describes the cluster (layout, partitioner, active hooks) from the
//! meta leader, for `ringkv backup`. A node that does not lead what is asked
//! answers `UNAVAILABLE` with the leader it knows in `ringkv-leader`, and the
//! CLI asks that node instead: dumps are never relayed through a follower.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use ringkv_client::proto::{self, backup_server::Backup};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::cluster::{shard_group, Node, NodeError, META_GROUP};
use crate::hooks::{FailPolicy, HookSpec};
use crate::storage::GroupId;

/// Metadata naming the leader a refused backup request should go to.
pub const LEADER_HEADER: &str = "ringkv-leader";

/// What `Describe` reports when keys route by their whole key (no partition function, no job).
pub const PARTITIONER_NONE: &str = "none";

pub struct BackupService {
    node: Node,
}

impl BackupService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// `e` as a status; a refusal because this node does not lead `gid`
    /// names the leader this node knows of.
    async fn status_for(&self, gid: GroupId, e: NodeError) -> Status {
        let refused_here = matches!(e, NodeError::Unavailable(_));
        let mut status = Status::from(e);
        if refused_here {
            if let Some(leader) = self.node.leader_hint(gid).await.filter(|l| *l != self.node.id()) {
                status.metadata_mut().insert(LEADER_HEADER, leader.into());
            }
        }
        status
    }
}

fn definition_of(spec: &HookSpec) -> proto::HookDefinition {
    proto::HookDefinition {
        name: spec.name.clone(),
        kind: super::hooks_service::kind_of(spec),
        stage: super::hooks_service::stage_of(spec),
        prefix: spec.prefix.clone().into(),
        source: spec.source.clone().into(),
        fail_open: spec.fail_policy == FailPolicy::Open,
        timeout_ms: spec.limits.timeout.as_millis() as u64,
    }
}

type DumpStream = Pin<Box<dyn Stream<Item = Result<proto::DumpShardChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Backup for BackupService {
    type DumpShardStream = DumpStream;

    async fn dump_shard(&self, req: Request<proto::DumpShardRequest>) -> Result<Response<DumpStream>, Status> {
        // Every key of the shard, whatever the prefix: admin on every key.
        super::authorize(&self.node, &req, "dump_shard", Need::Admin("back up")).await?;
        let r = req.into_inner();
        let shards = self.node.partition_view().shard_map().len() as u32;
        if r.shards != 0 && r.shards != shards {
            return Err(Status::invalid_argument(format!(
                "the cluster has {shards} shards, the request expected {}",
                r.shards
            )));
        }
        let dump = match self.node.dump_shard(r.shard).await {
            Ok(d) => d,
            Err(e) => return Err(self.status_for(shard_group(r.shard), e).await),
        };
        let (applied_index, read_at_ms, leader_id) = (dump.applied_index, dump.read_at_ms, self.node.id());
        let stream = ReceiverStream::new(dump.chunks).map(move |chunk| {
            let records = chunk.map_err(Status::from)?;
            Ok(proto::DumpShardChunk {
                records: records
                    .into_iter()
                    .map(|(key, e)| proto::BackupRecord {
                        key: key.into(),
                        value: e.value,
                        version: e.version,
                        expires_at_ms: e.expires_at,
                    })
                    .collect(),
                applied_index,
                read_at_ms,
                leader_id,
            })
        });
        Ok(Response::new(Box::pin(stream) as DumpStream))
    }

    async fn describe(
        &self,
        req: Request<proto::DescribeRequest>,
    ) -> Result<Response<proto::DescribeResponse>, Status> {
        super::authorize(&self.node, &req, "describe", Need::Admin("back up")).await?;
        let backup = match self.node.hooks_for_backup().await {
            Ok(b) => b,
            Err(e) => return Err(self.status_for(META_GROUP, e).await),
        };
        let ring = *self.node.ring();
        let nodes = self
            .node
            .members()?
            .into_iter()
            .map(|(id, addr, voter)| proto::NodeStatus {
                id,
                addr,
                role: if voter { "voter" } else { "learner" }.to_string(),
            })
            .collect();
        let hooks = backup
            .hooks
            .iter()
            .map(|spec| proto::BackedUpHook {
                definition: Some(definition_of(spec)),
                version: spec.version,
                sha256: spec.sha256.clone(),
                deployed_at_ms: spec.deployed_at_ms,
            })
            .collect();
        Ok(Response::new(proto::DescribeResponse {
            node_id: self.node.id(),
            shards: ring.shards,
            replication_factor: ring.replication_factor,
            nodes,
            partitioner: match self.node.partition_view().state {
                ref st if st.active.is_none() && st.job.is_none() => PARTITIONER_NONE.to_string(),
                ref st => match &st.resize {
                    Some(r) => format!("none, with a {} running", r.change),
                    None => crate::ring::partition::describe(st.active.as_ref()),
                },
            },
            shard_ids: self.node.partition_view().shard_map().ids().collect(),
            hooks,
            meta_applied_index: backup.meta_applied_index,
        }))
    }
}
