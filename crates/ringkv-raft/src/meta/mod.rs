//! The meta group's state (group 0): members' addresses, shard
//! assignments and moves, node markers (draining, down, unreachable), shard
//! leader hints, hook and token records, and the partition state with its
//! re-shard job.
//!
//! This module owns their records in the meta group's keyspace, applying
//! [`MetaOp`]s to them ([`apply`], which the raft layer's state machine calls
//! for the meta group's entries, in the same atomic batch as the rest of the
//! entry), and reading them back typed ([`MetaState`]). Shard groups never
//! hold these records: their state machines apply only key ops.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::TokenRecord;
use crate::command::{CommandResult, MetaOp};
use crate::hooks::HookRecord;
use crate::ids::NodeId;
use crate::raft::log_store::{decode, encode};
use crate::raft::state_machine::ApplyBatch;
use crate::raft::StateMachine;
use crate::ring::partition::{PartitionState, ShardChange};
use crate::storage::{Envelope, StorageError};

/// Prefix of member records in the meta group's data.
const NODE_PREFIX: &[u8] = b"\0node/";
/// Prefix of shard assignments in the meta group's data.
const SHARD_PREFIX: &[u8] = b"\0shard/";
/// Prefix of markers of shards with a move under way.
const PENDING_PREFIX: &[u8] = b"\0pending/";
/// Prefix of draining markers in the meta group's data.
const DRAIN_PREFIX: &[u8] = b"\0drain/";
/// Prefix of down markers in the meta group's data.
const DOWN_PREFIX: &[u8] = b"\0down/";
/// Prefix of unreachable markers in the meta group's data.
const UNREACHABLE_PREFIX: &[u8] = b"\0unreachable/";
/// Prefix of shard leader hints: (leader, term) per shard.
const LEADER_PREFIX: &[u8] = b"\0leader/";
/// Prefix of hook records ([`HookRecord`]) by hook name.
const HOOK_PREFIX: &[u8] = b"\0hook/";
/// Prefix of runtime token records ([`TokenRecord`]) by token name.
const TOKEN_PREFIX: &[u8] = b"\0token/";
/// The meta group's [`PartitionState`].
const PARTITION_KEY: &[u8] = b"\0partition";

fn decode_partition(raw: &[u8]) -> Result<PartitionState, StorageError> {
    PartitionState::decode(raw).map_err(|e| StorageError::Corrupt { keyspace: "sm_data", detail: e.to_string() })
}

fn decode_hook_record(raw: &[u8]) -> Result<HookRecord, StorageError> {
    HookRecord::decode(raw).map_err(|e| StorageError::Corrupt { keyspace: "sm_data", detail: e.to_string() })
}

fn be_u32(b: &[u8]) -> Result<u32, StorageError> {
    <[u8; 4]>::try_from(b).map(u32::from_be_bytes).map_err(|_| StorageError::Corrupt {
        keyspace: "sm_data",
        detail: format!("bad meta key of {} bytes", b.len()),
    })
}

fn be_u64(b: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(b).map(u64::from_be_bytes).map_err(|_| StorageError::Corrupt {
        keyspace: "sm_data",
        detail: format!("bad meta key of {} bytes", b.len()),
    })
}

/// Typed reads of the meta group's records from this node's replica.
#[derive(Clone)]
pub struct MetaState {
    /// The meta group's state machine.
    sm: StateMachine,
}

impl MetaState {
    pub fn new(sm: StateMachine) -> Self {
        MetaState { sm }
    }

    /// The nodes holding a marker under `prefix` (draining, down, unreachable).
    async fn marked_nodes(&self, prefix: &'static [u8]) -> Result<BTreeSet<NodeId>, StorageError> {
        self.sm.records_under(prefix).await?.iter().map(|(k, _)| be_u64(k)).collect()
    }

    /// The replicas recorded for each shard.
    pub async fn assignments(&self) -> Result<BTreeMap<u32, Vec<NodeId>>, StorageError> {
        let mut out = BTreeMap::new();
        for (suffix, value) in self.sm.records_under(SHARD_PREFIX).await? {
            out.insert(be_u32(&suffix)?, decode::<Vec<NodeId>>(&value, "sm_data")?);
        }
        Ok(out)
    }

    /// Shards with a move under way.
    pub async fn pending_moves(&self) -> Result<BTreeSet<u32>, StorageError> {
        self.sm.records_under(PENDING_PREFIX).await?.iter().map(|(k, _)| be_u32(k)).collect()
    }

    /// Nodes marked as draining.
    pub async fn draining(&self) -> Result<BTreeSet<NodeId>, StorageError> {
        self.marked_nodes(DRAIN_PREFIX).await
    }

    /// The last reported (leader, term) of each shard.
    pub async fn leader_hints(&self) -> Result<BTreeMap<u32, (NodeId, u64)>, StorageError> {
        let mut out = BTreeMap::new();
        for (suffix, value) in self.sm.records_under(LEADER_PREFIX).await? {
            out.insert(be_u32(&suffix)?, decode::<(NodeId, u64)>(&value, "sm_data")?);
        }
        Ok(out)
    }

    /// Every hook record, by name.
    pub async fn hook_records(&self) -> Result<Vec<HookRecord>, StorageError> {
        self.sm.records_under(HOOK_PREFIX).await?.iter().map(|(_, v)| decode_hook_record(v)).collect()
    }

    /// Every runtime token record (hashes only), by name.
    pub async fn token_records(&self) -> Result<Vec<TokenRecord>, StorageError> {
        self.sm.records_under(TOKEN_PREFIX).await?.iter().map(|(_, v)| decode::<TokenRecord>(v, "sm_data")).collect()
    }

    /// The partition function and the re-shard job.
    pub fn partition_state(&self) -> Result<PartitionState, StorageError> {
        match self.sm.get_blocking(PARTITION_KEY, 0)? {
            Some(e) => decode_partition(&e.value),
            None => Ok(PartitionState::default()),
        }
    }

    /// Nodes marked as down.
    pub async fn down(&self) -> Result<BTreeSet<NodeId>, StorageError> {
        self.marked_nodes(DOWN_PREFIX).await
    }

    /// Nodes marked as unreachable (silent for a few seconds).
    pub async fn unreachable(&self) -> Result<BTreeSet<NodeId>, StorageError> {
        self.marked_nodes(UNREACHABLE_PREFIX).await
    }
}

/// Applies one meta op of the entry at `index`, proposed at the leader's
/// clock `now`, to the entry's write batch.
pub fn apply(b: &mut ApplyBatch<'_>, index: u64, now: u64, op: MetaOp) -> Result<CommandResult, StorageError> {
    Ok(match op {
        MetaOp::SetNode { id, addr } => {
            let key = [NODE_PREFIX, &id.to_be_bytes()].concat();
            let old = b.current(&key)?;
            b.set(key, old.as_ref(), Some(Envelope { value: addr.into(), version: index, expires_at: None }));
            CommandResult::Done
        }
        MetaOp::RemoveNode { id } => {
            let key = [NODE_PREFIX, &id.to_be_bytes()].concat();
            let old = b.current(&key)?;
            b.set(key, old.as_ref(), None);
            CommandResult::Done
        }
        MetaOp::SetAssignment { shard, replicas, pending } => {
            let key = [SHARD_PREFIX, &shard.to_be_bytes()].concat();
            let old = b.current(&key)?;
            let value = encode(&replicas);
            b.set(key, old.as_ref(), Some(Envelope { value: value.into(), version: index, expires_at: None }));
            b.set_marker([PENDING_PREFIX, &shard.to_be_bytes()].concat(), pending, index)?;
            CommandResult::Done
        }
        MetaOp::SetDraining { id, draining } => {
            b.set_marker([DRAIN_PREFIX, &id.to_be_bytes()].concat(), draining, index)?;
            CommandResult::Done
        }
        MetaOp::SetDown { id, down } => {
            b.set_marker([DOWN_PREFIX, &id.to_be_bytes()].concat(), down, index)?;
            CommandResult::Done
        }
        MetaOp::SetLeaderHint { shard, leader, term } => {
            let key = [LEADER_PREFIX, &shard.to_be_bytes()].concat();
            let old = b.current(&key)?;
            let newer = match &old {
                Some(e) => decode::<(NodeId, u64)>(&e.value, "sm_data")?.1 <= term,
                None => true,
            };
            if newer {
                let value = encode(&(leader, term)).into();
                b.set(key, old.as_ref(), Some(Envelope { value, version: index, expires_at: None }));
            }
            CommandResult::Done
        }
        MetaOp::DeployHook { spec } => {
            let name = spec.name.clone();
            update_hook(b, &name, index, |r| {
                let replaced = r.current.as_ref().map_or(0, |c| c.version);
                let version = r.deploy(*spec)?;
                Ok((version, replaced))
            })?
        }
        MetaOp::RemoveHook { name } => update_hook(b, &name, index, |r| Ok((0, r.remove(&name)?)))?,
        MetaOp::RollbackHook { name } => update_hook(b, &name, index, |r| r.rollback(&name))?,
        MetaOp::DeployShadowHook { spec } => {
            let name = spec.name.clone();
            update_hook(b, &name, index, |r| r.deploy_shadow(*spec))?
        }
        MetaOp::PromoteHook { name } => update_hook(b, &name, index, |r| r.promote(&name))?,
        MetaOp::RemoveShadowHook { name } => update_hook(b, &name, index, |r| Ok((0, r.remove_shadow(&name)?)))?,
        MetaOp::CreateToken { record } => {
            let key = [TOKEN_PREFIX, record.name.as_bytes()].concat();
            let old = b.current(&key)?;
            if old.is_some() {
                return Ok(CommandResult::TokenRefused {
                    reason: format!("a token named {:?} exists; revoke it first", record.name),
                });
            }
            let value = encode(&*record).into();
            b.set(key, None, Some(Envelope { value, version: index, expires_at: None }));
            CommandResult::TokenChanged { existed: false }
        }
        MetaOp::RevokeToken { name } => {
            let key = [TOKEN_PREFIX, name.as_bytes()].concat();
            let old = b.current(&key)?;
            let existed = old.is_some();
            if existed {
                b.set(key, old.as_ref(), None);
            }
            CommandResult::TokenChanged { existed }
        }
        MetaOp::SetPartitioner { spec, shards } => {
            let _ = shards;
            update_partition(b, index, |st| match st.set(spec.map(|s| *s), now) {
                Ok(epoch) => CommandResult::PartitionChanged { epoch },
                Err(reason) => CommandResult::PartitionRefused { reason },
            })?
        }
        MetaOp::ReshardProgress { epoch, shard, progress, shards } => {
            let mut retired = Vec::new();
            update_partition(b, index, |st| {
                retired = st.record_progress(epoch, shard, progress, shards, now).unwrap_or_default();
            })?;
            // A merged-away shard has no keys left: forgetting its
            // assignment makes every node drop its group.
            for shard in retired {
                for prefix in [SHARD_PREFIX, PENDING_PREFIX, LEADER_PREFIX] {
                    let key = [prefix, &shard.to_be_bytes()].concat();
                    let old = b.current(&key)?;
                    if old.is_some() {
                        b.set(key, old.as_ref(), None);
                    }
                }
            }
            CommandResult::Done
        }
        MetaOp::ResizeShards { change, shards } => {
            let mut result = None;
            update_partition(b, index, |st| result = Some(st.resize(change, shards, now)))?;
            match result {
                Some(Ok((epoch, change))) => {
                    if let ShardChange::Split { shard, new_shard: Some(new), .. } = change {
                        // The new shard starts on its parent's replicas.
                        if let Some(parent) = b.current(&[SHARD_PREFIX, &shard.to_be_bytes()].concat())? {
                            let key = [SHARD_PREFIX, &new.to_be_bytes()].concat();
                            let env = Envelope { value: parent.value, version: index, expires_at: None };
                            b.set(key, None, Some(env));
                        }
                    }
                    CommandResult::Resized { epoch, change }
                }
                Some(Err(reason)) => CommandResult::PartitionRefused { reason },
                None => CommandResult::Done,
            }
        }
        MetaOp::SetUnreachable { id, unreachable } => {
            b.set_marker([UNREACHABLE_PREFIX, &id.to_be_bytes()].concat(), unreachable, index)?;
            CommandResult::Done
        }
        MetaOp::ReshardStalled { epoch, shard, key, error } => update_partition(b, index, |st| {
            st.record_stall(epoch, shard, key, error, now);
            CommandResult::Done
        })?,
    })
}

/// Changes the meta group's partition state; `change` returns the
/// result to report (nothing is written when the state is unchanged).
fn update_partition<R>(
    b: &mut ApplyBatch<'_>,
    index: u64,
    change: impl FnOnce(&mut PartitionState) -> R,
) -> Result<R, StorageError> {
    let old = b.current(PARTITION_KEY)?;
    let mut state = match &old {
        Some(e) => decode_partition(&e.value)?,
        None => PartitionState::default(),
    };
    let before = state.clone();
    let result = change(&mut state);
    if state != before {
        let value = encode(&state).into();
        b.set(PARTITION_KEY.to_vec(), old.as_ref(), Some(Envelope { value, version: index, expires_at: None }));
    }
    Ok(result)
}

/// Changes one hook record; `change` returns (now active, replaced) or
/// why the change is refused (then nothing is written).
fn update_hook(
    b: &mut ApplyBatch<'_>,
    name: &str,
    index: u64,
    change: impl FnOnce(&mut HookRecord) -> Result<(u64, u64), String>,
) -> Result<CommandResult, StorageError> {
    let key = [HOOK_PREFIX, name.as_bytes()].concat();
    let old = b.current(&key)?;
    let mut record = match &old {
        Some(e) => decode_hook_record(&e.value)?,
        None => HookRecord::default(),
    };
    let before = record.clone();
    match change(&mut record) {
        Ok((version, replaced)) => {
            if record != before {
                let value = encode(&record).into();
                b.set(key, old.as_ref(), Some(Envelope { value, version: index, expires_at: None }));
            }
            Ok(CommandResult::HookChanged { version, replaced })
        }
        Err(reason) => Ok(CommandResult::HookRefused { reason }),
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::command::{Command, Op};
    use crate::ids::META_GROUP;
    use crate::raft::types::{Entry, LogId};
    use crate::storage::Storage;

    async fn apply(sm: &mut StateMachine, index: u64, ops: Vec<MetaOp>) -> Vec<CommandResult> {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let ops = ops.into_iter().map(Op::Meta).collect();
        let entry = Entry { log_id, payload: EntryPayload::Normal(Command { now_ms: 1000, ops }) };
        sm.apply([entry]).await.expect("apply").pop().expect("one entry")
    }

    #[tokio::test]
    async fn the_meta_group_applies_configuration_and_reads_it_back_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::with_meta(META_GROUP, storage, super::apply);
        let ops = vec![
            MetaOp::SetAssignment { shard: 0, replicas: vec![1, 2, 3], pending: true },
            MetaOp::SetDraining { id: 2, draining: true },
            MetaOp::SetLeaderHint { shard: 0, leader: 3, term: 4 },
            MetaOp::SetLeaderHint { shard: 0, leader: 1, term: 2 },
            MetaOp::RevokeToken { name: "none".into() },
        ];
        let results = apply(&mut sm, 5, ops).await;
        assert_eq!(results[4], CommandResult::TokenChanged { existed: false });
        let state = MetaState::new(sm.clone());
        assert_eq!(state.assignments().await.expect("read"), BTreeMap::from([(0, vec![1, 2, 3])]));
        assert_eq!(state.pending_moves().await.expect("read"), BTreeSet::from([0]));
        assert_eq!(state.draining().await.expect("read"), BTreeSet::from([2]));
        // An older term's report never replaces a newer one.
        assert_eq!(state.leader_hints().await.expect("read"), BTreeMap::from([(0, (3, 4))]));
        apply(&mut sm, 6, vec![MetaOp::SetDraining { id: 2, draining: false }]).await;
        assert!(state.draining().await.expect("read").is_empty());
    }

    #[tokio::test]
    async fn a_shard_group_ignores_meta_ops_alike_on_every_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::new(1, storage);
        let op = MetaOp::SetAssignment { shard: 0, replicas: vec![1], pending: false };
        assert_eq!(apply(&mut sm, 1, vec![op]).await, vec![CommandResult::Done]);
        assert!(MetaState::new(sm).assignments().await.expect("read").is_empty());
    }
}
