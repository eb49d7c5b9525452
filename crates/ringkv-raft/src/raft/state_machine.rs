//! The replicated key-value state machine of one Raft group, and its snapshots.
//!
//! A shard's state machine applies [`KvOp`]s. The meta group's also applies
//! [`MetaOp`]s, through the [`ApplyMeta`] it is started with
//! (`crate::meta::apply`): this layer knows how to store records, not what
//! the cluster configuration means.
//!
//! Applying a batch of entries and recording `applied` is one atomic fjall
//! batch. Snapshots are cut from a cross-keyspace fjall snapshot, so the data
//! and the `applied` marker they carry always agree; they are not stored,
//! and their records are read only when one is sent (`raft::snapshot`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjall::{OwnedWriteBatch, Readable};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::log_store::{decode, encode};
use super::snapshot::SnapshotData as SnapshotBytes;
use super::types::{Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::command::{Command, CommandResult, KvOp, MetaOp, MovedRecord, Op};
use crate::storage::{expiry_key, group_key, Envelope, GroupId, Storage, StorageError};

const APPLIED: &[u8] = b"applied";
const MEMBERSHIP: &[u8] = b"membership";
/// Prefix (in `sm_meta`, after the group) of the markers of keys a re-shard
/// job moved into a shard: `moved/` · job epoch (u64 BE) · user key.
const MOVED_PREFIX: &[u8] = b"moved/";

/// What a replica of a group stores, from [`StateMachine::measure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaSize {
    pub keys: u64,
    /// Keys plus stored values (with their envelopes), as written, before
    /// compression.
    pub bytes: u64,
    /// Keys drawn uniformly from the group's records.
    pub sample: Vec<Vec<u8>>,
}

fn moved_key(group: GroupId, epoch: u64, key: &[u8]) -> Vec<u8> {
    group_key(group, &[MOVED_PREFIX, &epoch.to_be_bytes(), key].concat())
}

/// Snapshot payload: every live record of the group as (user key, encoded
/// envelope). The group's re-shard markers follow it as a second postcard
/// value (see [`encode_snapshot`]).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One record of a received snapshot, checked before anything is written.
pub struct SnapshotRecord {
    /// The user key.
    pub key: Vec<u8>,
    /// The encoded [`Envelope`], stored as is.
    pub raw: Vec<u8>,
    pub expires_at: Option<u64>,
}

/// A received snapshot, checked before anything is written.
pub struct ReceivedSnapshot {
    pub records: Vec<SnapshotRecord>,
    /// The group's re-shard markers: job epoch (u64 BE) · user key.
    pub moved: Vec<Vec<u8>>,
}

/// Decodes a snapshot payload sent by a leader and checks every record's
/// envelope and marker. The bytes come off the network, so a malformed
/// payload is an error, never a panic (fuzzed by
/// `fuzz/fuzz_targets/snapshot.rs`). A payload from a node that sent no
/// markers carries none.
pub fn decode_snapshot(data: &[u8]) -> Result<ReceivedSnapshot, StorageError> {
    let corrupt = |e: postcard::Error| StorageError::Corrupt { keyspace: "snapshot", detail: e.to_string() };
    let (payload, rest) = postcard::take_from_bytes::<SnapshotData>(data).map_err(corrupt)?;
    let moved: Vec<Vec<u8>> = if rest.is_empty() { Vec::new() } else { decode(rest, "snapshot")? };
    if moved.iter().any(|m| m.len() < 8) {
        let detail = "a re-shard marker without its job epoch".to_string();
        return Err(StorageError::Corrupt { keyspace: "snapshot", detail });
    }
    let records = payload
        .records
        .into_iter()
        .map(|(key, raw)| {
            let expires_at = Envelope::decode(&raw)?.expires_at;
            Ok(SnapshotRecord { key, raw, expires_at })
        })
        .collect::<Result<_, StorageError>>()?;
    Ok(ReceivedSnapshot { records, moved })
}

/// Encodes a snapshot payload from (user key, encoded envelope) records and
/// re-shard markers (epoch · user key). The markers go after the records
/// as a value of their own: a node that knows only the records reads them
/// and ignores the rest (postcard stops at the end of a value).
pub fn encode_snapshot(records: Vec<(Vec<u8>, Vec<u8>)>, moved: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = encode(&SnapshotData { records });
    out.extend(encode(&moved));
    out
}

/// State machine of one Raft group.
#[derive(Clone)]
pub struct StateMachine {
    group: GroupId,
    storage: Storage,
    /// Ops this replica applied since the process started (shared by every
    /// clone): two readings give the group's write rate.
    applied_ops: Arc<AtomicU64>,
    /// Client reads (point reads and scan pages) this replica served since
    /// the process started: two readings give its read rate.
    served_reads: Arc<AtomicU64>,
    /// How this group applies meta ops: set for the meta group only.
    apply_meta: Option<ApplyMeta>,
}

/// Builds snapshots of one group.
pub struct SnapshotBuilder {
    group: GroupId,
    storage: Storage,
}

fn sm_err(e: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::read_snapshot(None, AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// A shard group's state machine: it applies key ops only.
    pub fn new(group: GroupId, storage: Storage) -> Self {
        Self { group, storage, applied_ops: Arc::default(), served_reads: Arc::default(), apply_meta: None }
    }

    /// The meta group's state machine: meta ops go to `apply_meta`.
    pub fn with_meta(group: GroupId, storage: Storage, apply_meta: ApplyMeta) -> Self {
        Self { apply_meta: Some(apply_meta), ..Self::new(group, storage) }
    }

    /// Every record under `prefix`: (the key after the prefix, the value).
    pub async fn records_under(&self, prefix: &'static [u8]) -> Result<Vec<(Vec<u8>, bytes::Bytes)>, StorageError> {
        let group = self.group;
        self.storage
            .blocking(move |s| {
                let mut out = Vec::new();
                for g in s.sm_data().prefix(group_key(group, prefix)) {
                    let (k, v) = g.into_inner().map_err(StorageError::fjall("reading records"))?;
                    out.push((k[8 + prefix.len()..].to_vec(), Envelope::decode(&v)?.value));
                }
                Ok(out)
            })
            .await
    }

    /// Ops (puts, deletes, expiries, moves, meta changes) this replica has
    /// applied since the process started.
    pub fn applied_ops(&self) -> u64 {
        self.applied_ops.load(Ordering::Relaxed)
    }

    /// Client reads (point reads and scan pages) this replica has served
    /// since the process started; a hook reading a stored value is not one.
    pub fn served_reads(&self) -> u64 {
        self.served_reads.load(Ordering::Relaxed)
    }

    /// Reads one key. Expired keys are invisible.
    ///
    /// Runs on the calling task: a point read is a memtable or block-cache
    /// lookup almost always, far cheaper than the two thread hand-offs of the
    /// blocking pool (docs/performance.md). Scans still go to the pool.
    pub async fn get(&self, key: Vec<u8>, now_ms: u64) -> Result<Option<Envelope>, StorageError> {
        self.served_reads.fetch_add(1, Ordering::Relaxed);
        self.get_blocking(&key, now_ms)
    }

    /// Reads one key on the calling thread (a hook worker); expired keys are invisible.
    pub fn get_blocking(&self, key: &[u8], now_ms: u64) -> Result<Option<Envelope>, StorageError> {
        Ok(read_envelope(&self.storage, self.group, key)?.filter(|e| !e.is_expired(now_ms)))
    }

    /// Returns up to `limit` live records whose key starts with `prefix`.
    pub async fn scan(
        &self,
        prefix: Vec<u8>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, StorageError> {
        self.scan_after(prefix, Vec::new(), limit, now_ms).await
    }

    /// Like [`StateMachine::scan`], only keys after `after` (exclusive; empty:
    /// from the first key under `prefix`). Starts reading at `after`, so
    /// paging through a large prefix costs each page only its own keys.
    pub async fn scan_after(
        &self,
        prefix: Vec<u8>,
        after: Vec<u8>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, StorageError> {
        self.served_reads.fetch_add(1, Ordering::Relaxed);
        use std::ops::Bound;
        let group = self.group;
        self.storage
            .blocking(move |s| {
                let mut out = Vec::new();
                let under = group_key(group, &prefix);
                // A key after `after` that is under the prefix is at least the
                // prefix itself, so the range starts at whichever is later.
                let start = match !after.is_empty() && after >= prefix {
                    true => Bound::Excluded(group_key(group, &after)),
                    false => Bound::Included(under.clone()),
                };
                let range = s.sm_data().range::<Vec<u8>, _>((start, Bound::Unbounded));
                for g in range {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = g.into_inner().map_err(StorageError::fjall("scanning"))?;
                    if !k.starts_with(&under) {
                        break;
                    }
                    let env = Envelope::decode(&v)?;
                    if !env.is_expired(now_ms) {
                        out.push((k[8..].to_vec(), env));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// This group's records (live or not yet swept) in one scan: how many,
    /// their stored bytes, and up to `sample` of their keys, each record
    /// equally likely (a reservoir), from which a size-weighted split point
    /// is chosen (`cluster::resize_policy`).
    pub async fn measure(&self, sample: usize) -> Result<ReplicaSize, StorageError> {
        let group = self.group;
        self.storage
            .blocking(move |s| {
                use rand::Rng;
                let mut rng = rand::rng();
                let mut size = ReplicaSize::default();
                for g in s.sm_data().prefix(group.to_be_bytes()) {
                    let (k, v) = g.into_inner().map_err(StorageError::fjall("measuring a group"))?;
                    let user_key = &k[8..];
                    size.keys += 1;
                    size.bytes += (user_key.len() + v.len()) as u64;
                    if size.sample.len() < sample {
                        size.sample.push(user_key.to_vec());
                    } else if sample > 0 {
                        let slot = rng.random_range(0..size.keys) as usize;
                        if slot < sample {
                            size.sample[slot] = user_key.to_vec();
                        }
                    }
                }
                Ok(size)
            })
            .await
    }

    /// Keys whose TTL passed by `now_ms`, with the version that carries the TTL.
    pub async fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let group = self.group;
        self.storage
            .blocking(move |s| {
                let mut out = Vec::new();
                let range = expiry_key(group, 0, b"")..expiry_key(group, now_ms.saturating_add(1), b"");
                for g in s.sm_expiry().range(range).take(limit) {
                    let k = g.key().map_err(StorageError::fjall("reading the TTL index"))?;
                    let user_key = k[16..].to_vec();
                    if let Some(env) = read_envelope(s, group, &user_key)? {
                        out.push((user_key, env.version));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Up to `limit` records (live or expired, not yet swept) with keys
    /// after `after`, in key order: a re-shard pass over the shard.
    pub async fn records_after(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Envelope)>, StorageError> {
        let group = self.group;
        self.storage
            .blocking(move |s| {
                use std::ops::Bound;
                let start = match &after {
                    Some(k) => Bound::Excluded(group_key(group, k)),
                    None => Bound::Included(group_key(group, b"")),
                };
                let end = match group.checked_add(1) {
                    Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                    None => Bound::Unbounded,
                };
                let (mut out, mut bytes) = (Vec::new(), 0);
                for g in s.sm_data().range::<Vec<u8>, _>((start, end)).take(limit) {
                    let (k, v) = g.into_inner().map_err(StorageError::fjall("scanning for a re-shard"))?;
                    bytes += k.len() + v.len();
                    out.push((k[8..].to_vec(), Envelope::decode(&v)?));
                    if bytes >= max_bytes {
                        break;
                    }
                }
                Ok(out)
            })
            .await
    }
}

/// The last log id the state machine of `group` has committed to storage.
pub(crate) fn durable_applied(s: &Storage, group: GroupId) -> Result<Option<LogId>, StorageError> {
    match s.sm_meta().get(group_key(group, APPLIED)).map_err(StorageError::fjall("reading the applied index"))? {
        Some(v) => Ok(Some(decode::<LogId>(&v, "sm_meta")?)),
        None => Ok(None),
    }
}

/// The last log id the state machine of `group` had applied in `view`, a
/// cross-keyspace snapshot (backups read a shard's records from the same view).
pub fn applied_in(s: &Storage, view: &fjall::Snapshot, group: GroupId) -> Result<Option<LogId>, StorageError> {
    match view.get(s.sm_meta(), group_key(group, APPLIED)).map_err(StorageError::fjall("reading the applied index"))? {
        Some(v) => Ok(Some(decode::<LogId>(&v, "sm_meta")?)),
        None => Ok(None),
    }
}

fn read_envelope(s: &Storage, group: GroupId, key: &[u8]) -> Result<Option<Envelope>, StorageError> {
    match s.sm_data().get(group_key(group, key)).map_err(StorageError::fjall("reading a value"))? {
        Some(raw) => Ok(Some(Envelope::decode(&raw)?)),
        None => Ok(None),
    }
}

/// Applies the ops the raft layer does not interpret, the meta group's, to
/// an entry's [`ApplyBatch`] (`crate::meta::apply`): given the entry's index,
/// the leader's clock and the op.
pub type ApplyMeta = fn(&mut ApplyBatch<'_>, u64, u64, MetaOp) -> Result<CommandResult, StorageError>;

/// Applies a run of commands, then writes their net effect as one batch.
///
/// fjall gives every item of a batch the same sequence number, so a key must
/// appear at most once per batch: writes are collected here and deduplicated.
pub struct ApplyBatch<'a> {
    s: &'a Storage,
    group: GroupId,
    /// How this group applies meta ops (the meta group only).
    apply_meta: Option<ApplyMeta>,
    /// Final state of every user key touched by this run (`None` = deleted).
    data: HashMap<Vec<u8>, Option<Envelope>>,
    /// TTL index changes by index key: `true` = insert, `false` = remove.
    expiry: HashMap<Vec<u8>, bool>,
    /// Re-shard move markers set by this run (`sm_meta` keys).
    moved: std::collections::HashSet<Vec<u8>>,
    /// Re-shard jobs whose markers this run clears.
    cleared: Vec<u64>,
    /// This run clears the markers of every job up to this epoch.
    cleared_up_to: Option<u64>,
}

impl ApplyBatch<'_> {
    /// The record `key` holds as of the ops applied so far.
    pub fn current(&self, key: &[u8]) -> Result<Option<Envelope>, StorageError> {
        match self.data.get(key) {
            Some(v) => Ok(v.clone()),
            None => read_envelope(self.s, self.group, key),
        }
    }

    /// Replaces `key`'s record `old` (as [`Self::current`] gave it) with
    /// `new` (`None`: deletes it), keeping the TTL index in step.
    pub fn set(&mut self, key: Vec<u8>, old: Option<&Envelope>, new: Option<Envelope>) {
        if let Some(t) = old.and_then(|e| e.expires_at) {
            self.expiry.insert(expiry_key(self.group, t, &key), false);
        }
        if let Some(t) = new.as_ref().and_then(|e| e.expires_at) {
            self.expiry.insert(expiry_key(self.group, t, &key), true);
        }
        self.data.insert(key, new);
    }

    /// Sets (`on`) or clears a meta-group marker: a record whose presence is its value.
    pub fn set_marker(&mut self, key: Vec<u8>, on: bool, index: u64) -> Result<(), StorageError> {
        let old = self.current(&key)?;
        let new = on.then(|| Envelope { value: bytes::Bytes::new(), version: index, expires_at: None });
        self.set(key, old.as_ref(), new);
        Ok(())
    }

    fn into_batch(self) -> OwnedWriteBatch {
        let mut batch = self.s.db().batch();
        for (key, env) in self.data {
            match env {
                Some(env) => batch.insert(self.s.sm_data(), group_key(self.group, &key), env.encode()),
                None => batch.remove(self.s.sm_data(), group_key(self.group, &key)),
            }
        }
        for (key, insert) in self.expiry {
            if insert {
                batch.insert(self.s.sm_expiry(), key, Vec::new());
            } else {
                batch.remove(self.s.sm_expiry(), key);
            }
        }
        for key in self.moved {
            batch.insert(self.s.sm_meta(), key, Vec::new());
        }
        for epoch in self.cleared {
            for g in self.s.sm_meta().prefix(moved_key(self.group, epoch, b"")) {
                match g.key() {
                    Ok(k) => batch.remove(self.s.sm_meta(), k),
                    Err(e) => tracing::warn!(group = self.group, error = %e, "listing re-shard markers to clear"),
                }
            }
        }
        if let Some(epoch) = self.cleared_up_to {
            let (from, to) = (moved_key(self.group, 0, b""), moved_key(self.group, epoch.saturating_add(1), b""));
            for g in self.s.sm_meta().range(from..to) {
                match g.key() {
                    Ok(k) => batch.remove(self.s.sm_meta(), k),
                    Err(e) => tracing::warn!(group = self.group, error = %e, "listing re-shard markers to clear"),
                }
            }
        }
        batch
    }

    /// Deletes `key` if it still holds `version`.
    fn expire(&mut self, key: Vec<u8>, version: u64) -> Result<(), StorageError> {
        let old = self.current(&key)?;
        if old.as_ref().is_some_and(|e| e.version == version) {
            self.set(key, old.as_ref(), None);
        }
        Ok(())
    }

    /// Writes a record moved in by re-shard job `epoch`, unless the job
    /// already moved it here or this shard holds a record of the key (a
    /// write since the job began: newer than the copy). Either way the key
    /// is marked as moved in the job. True when it wrote the record.
    fn move_in(&mut self, epoch: u64, record: MovedRecord) -> Result<bool, StorageError> {
        let MovedRecord { key, value, version, expires_at } = record;
        if self.was_moved(epoch, &key)? {
            return Ok(false);
        }
        self.moved.insert(moved_key(self.group, epoch, &key));
        if self.current(&key)?.is_some() {
            return Ok(false);
        }
        self.set(key, None, Some(Envelope { value: value.into(), version, expires_at }));
        Ok(true)
    }

    /// Whether re-shard job `epoch` already moved `key` into this shard.
    fn was_moved(&self, epoch: u64, key: &[u8]) -> Result<bool, StorageError> {
        let marker = moved_key(self.group, epoch, key);
        if self.moved.contains(&marker) {
            return Ok(true);
        }
        Ok(self.s.sm_meta().get(marker).map_err(StorageError::fjall("reading a re-shard marker"))?.is_some())
    }

    fn apply(&mut self, index: u64, cmd: Command) -> Result<Vec<CommandResult>, StorageError> {
        let now = cmd.now_ms;
        cmd.ops.into_iter().map(|op| self.apply_op(index, now, op)).collect()
    }

    fn apply_op(&mut self, index: u64, now: u64, op: Op) -> Result<CommandResult, StorageError> {
        match op {
            Op::Kv(op) => self.apply_kv(index, now, op),
            Op::Meta(op) => match self.apply_meta {
                Some(apply_meta) => apply_meta(self, index, now, op),
                None => {
                    // Only the meta group logs meta ops; a shard group
                    // ignores one alike on every replica.
                    tracing::warn!(group = self.group, ?op, "a meta op in a shard group's log: ignored");
                    Ok(CommandResult::Done)
                }
            },
        }
    }

    fn apply_kv(&mut self, index: u64, now: u64, op: KvOp) -> Result<CommandResult, StorageError> {
        Ok(match op {
            KvOp::Put { key, value, expires_at, if_version, hooks } => {
                let old = self.current(&key)?;
                let live = old.as_ref().filter(|e| !e.is_expired(now)).map_or(0, |e| e.version);
                if if_version.is_some_and(|want| want != live) {
                    return Ok(CommandResult::VersionMismatch { current: live });
                }
                let hooks = hooks.map(|h| *h).unwrap_or_default();
                if hooks.guard.is_some_and(|seen| seen != live) {
                    return Ok(CommandResult::HookStale { current: live });
                }
                let version = next_version(index, old.as_ref());
                let env = Envelope { value: value.into(), version, expires_at };
                self.set(key, old.as_ref(), Some(env));
                CommandResult::Written { version, hooks: hooks.used }
            }
            KvOp::Delete { key, if_version, hooks } => {
                let old = self.current(&key)?;
                let live = old.as_ref().filter(|e| !e.is_expired(now)).map_or(0, |e| e.version);
                if if_version.is_some_and(|want| want != live) {
                    return Ok(CommandResult::VersionMismatch { current: live });
                }
                let hooks = hooks.map(|h| *h).unwrap_or_default();
                if hooks.guard.is_some_and(|seen| seen != live) {
                    return Ok(CommandResult::HookStale { current: live });
                }
                let version = next_version(index, old.as_ref());
                if old.is_some() {
                    self.set(key, old.as_ref(), None);
                }
                CommandResult::Deleted { existed: live != 0, version, hooks: hooks.used }
            }
            KvOp::Expire { key, version } => {
                self.expire(key, version)?;
                CommandResult::Done
            }
            KvOp::MoveIn { key, value, version, expires_at, epoch } => CommandResult::MovedIn {
                written: self.move_in(epoch, MovedRecord { key, value, version, expires_at })?,
            },
            KvOp::MoveInBatch { records, epoch } => {
                let mut written = 0;
                for record in records {
                    written += u64::from(self.move_in(epoch, record)?);
                }
                CommandResult::MovedInBatch { written }
            }
            KvOp::ExpireBatch { keys } => {
                for (key, version) in keys {
                    self.expire(key, version)?;
                }
                CommandResult::Done
            }
            KvOp::ClearMoveMarkers { epoch } => {
                self.cleared.push(epoch);
                CommandResult::Done
            }
            KvOp::ClearMoveMarkersUpTo { epoch } => {
                self.cleared_up_to = self.cleared_up_to.max(Some(epoch));
                CommandResult::Done
            }
        })
    }
}

/// The version a write of a key gives it at log index `index`: the index,
/// unless the key's record holds a version as high (it moved here from a
/// shard whose log is further on, by a split, a merge or a partition
/// function change, keeping its version), then one more. So a key's versions
/// only grow, and a compare-and-swap holding a version the key had before
/// it moved can never match a later write.
fn next_version(index: u64, old: Option<&Envelope>) -> u64 {
    old.map_or(index, |e| index.max(e.version.saturating_add(1)))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let group = self.group;
        self.storage
            .blocking(move |s| {
                let applied = match s.sm_meta().get(group_key(group, APPLIED)).map_err(sm_err)? {
                    Some(v) => Some(decode::<LogId>(&v, "sm_meta").map_err(sm_err)?),
                    None => None,
                };
                let membership = match s.sm_meta().get(group_key(group, MEMBERSHIP)).map_err(sm_err)? {
                    Some(v) => decode::<StoredMembership>(&v, "sm_meta").map_err(sm_err)?,
                    None => StoredMembership::default(),
                };
                Ok((applied, membership))
            })
            .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let group = self.group;
        let started = std::time::Instant::now();
        let n = entries.len();
        // On this task unless fjall could stall the commit: two thread
        // hand-offs per apply cost more than the apply (docs/performance.md).
        let may_stall = self.storage.state_machine_write_may_stall();
        let applied_ops = self.applied_ops.clone();
        let apply_meta = self.apply_meta;
        self.storage
            .run(may_stall, move |s| {
                let mut ap = ApplyBatch {
                    s,
                    group,
                    apply_meta,
                    data: HashMap::new(),
                    expiry: HashMap::new(),
                    moved: Default::default(),
                    cleared: Vec::new(),
                    cleared_up_to: None,
                };
                let mut results = Vec::with_capacity(entries.len());
                let mut last = None;
                let mut membership = None;
                for entry in entries {
                    last = Some(entry.log_id);
                    results.push(match entry.payload {
                        EntryPayload::Blank => Vec::new(),
                        EntryPayload::Normal(cmd) => {
                            applied_ops.fetch_add(cmd.ops.len() as u64, Ordering::Relaxed);
                            ap.apply(entry.log_id.index, cmd).map_err(sm_err)?
                        }
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(entry.log_id), m));
                            Vec::new()
                        }
                    });
                }
                let mut batch = ap.into_batch();
                if let Some(last) = last {
                    batch.insert(s.sm_meta(), group_key(group, APPLIED), encode(&last));
                }
                if let Some(m) = membership {
                    batch.insert(s.sm_meta(), group_key(group, MEMBERSHIP), encode(&m));
                }
                let work = started.elapsed();
                crate::failpoint::crash_point("apply");
                batch.commit().map_err(sm_err)?;
                tracing::trace!(
                    group,
                    entries = n,
                    queued_and_applied_us = work.as_micros() as u64,
                    total_us = started.elapsed().as_micros() as u64,
                    "applied"
                );
                Ok(results)
            })
            .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { group: self.group, storage: self.storage.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBytes>, RaftStorageError> {
        Ok(Box::new(SnapshotBytes::from_bytes(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), RaftStorageError> {
        let group = self.group;
        let meta = meta.clone();
        self.storage
            .blocking(move |s| {
                let data = snapshot.into_bytes_blocking().map_err(snap_err)?;
                let ReceivedSnapshot { records, moved } = decode_snapshot(&data).map_err(snap_err)?;
                drop(data);
                let mut batch = s.db().batch();
                // A key may appear once per batch: only remove what the snapshot does not rewrite.
                let incoming: std::collections::HashSet<Vec<u8>> =
                    records.iter().map(|r| group_key(group, &r.key)).collect();
                let new_expiry: std::collections::HashSet<Vec<u8>> =
                    records.iter().filter_map(|r| r.expires_at.map(|t| expiry_key(group, t, &r.key))).collect();
                for g in s.sm_data().prefix(group.to_be_bytes()) {
                    let k = g.key().map_err(sm_err)?;
                    if !incoming.contains(k.as_ref()) {
                        batch.remove(s.sm_data(), k);
                    }
                }
                for g in s.sm_expiry().prefix(group.to_be_bytes()) {
                    let k = g.key().map_err(sm_err)?;
                    if !new_expiry.contains(k.as_ref()) {
                        batch.remove(s.sm_expiry(), k);
                    }
                }
                for k in new_expiry {
                    batch.insert(s.sm_expiry(), k, Vec::new());
                }
                for r in records {
                    batch.insert(s.sm_data(), group_key(group, &r.key), r.raw);
                }
                // The markers are part of the state: without them a late
                // copy of a moved key that was deleted since would come back
                // here and nowhere else.
                let markers: std::collections::HashSet<Vec<u8>> =
                    moved.iter().map(|m| group_key(group, &[MOVED_PREFIX, m].concat())).collect();
                for g in s.sm_meta().prefix(group_key(group, MOVED_PREFIX)) {
                    let k = g.key().map_err(sm_err)?;
                    if !markers.contains(k.as_ref()) {
                        batch.remove(s.sm_meta(), k);
                    }
                }
                for k in markers {
                    batch.insert(s.sm_meta(), k, Vec::new());
                }
                if let Some(last) = &meta.last_log_id {
                    batch.insert(s.sm_meta(), group_key(group, APPLIED), encode(last));
                }
                batch.insert(s.sm_meta(), group_key(group, MEMBERSHIP), encode(&meta.last_membership));
                // The log the snapshot covers goes in the same batch: see `LogStore::pending_purge`.
                if let Some(last) = &meta.last_log_id {
                    super::log_store::purge_into(s, &mut batch, group, last).map_err(sm_err)?;
                }
                crate::failpoint::crash_point("snapshot-install");
                batch.commit().map_err(sm_err)
            })
            .await
    }

    /// The state machine as it is now: after an install, that is the
    /// installed snapshot or a later state, as openraft requires.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let snapshot = snapshot_of(self.group, &self.storage)?;
        Ok(snapshot.meta.last_log_id.is_some().then_some(snapshot))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        snapshot_of(self.group, &self.storage)
    }
}

/// A snapshot of `group` as of now: `applied` and membership read from one
/// fjall read view, records collected from the same view when first read.
fn snapshot_of(group: GroupId, storage: &Storage) -> Result<Snapshot, RaftStorageError> {
    let view = storage.db().snapshot();
    let applied = match view.get(storage.sm_meta(), group_key(group, APPLIED)).map_err(snap_err)? {
        Some(v) => Some(decode::<LogId>(&v, "sm_meta").map_err(snap_err)?),
        None => None,
    };
    let membership = match view.get(storage.sm_meta(), group_key(group, MEMBERSHIP)).map_err(snap_err)? {
        Some(v) => decode::<StoredMembership>(&v, "sm_meta").map_err(snap_err)?,
        None => StoredMembership::default(),
    };
    // The state at a log id is the same on every replica, so the id names
    // the content: openraft's test suite expects the current snapshot to be
    // the one built or installed, not a new one at the same point.
    let snapshot_id = match &applied {
        Some(l) => format!("{}-{}-{}", group, l.leader_id, l.index),
        None => format!("{group}-none"),
    };
    let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
    let storage = storage.clone();
    let collect = Box::new(move || {
        let mut records = Vec::new();
        for g in view.prefix(storage.sm_data(), group.to_be_bytes()) {
            let (k, v) = g.into_inner().map_err(std::io::Error::other)?;
            records.push((k[8..].to_vec(), v.to_vec()));
        }
        let marker_prefix = group_key(group, MOVED_PREFIX);
        let mut moved = Vec::new();
        for g in view.prefix(storage.sm_meta(), &marker_prefix) {
            let k = g.key().map_err(std::io::Error::other)?;
            moved.push(k[marker_prefix.len()..].to_vec());
        }
        Ok(encode_snapshot(records, moved))
    });
    Ok(Snapshot { meta, snapshot: Box::new(SnapshotBytes::lazy(collect)) })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    /// Applies `ops` as the entry at `index` and returns their results.
    async fn apply(sm: &mut StateMachine, index: u64, ops: Vec<KvOp>) -> Vec<CommandResult> {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Normal(Command { now_ms: 1000, ops: ops.into_iter().map(Op::Kv).collect() }),
        };
        sm.apply([entry]).await.expect("apply").pop().expect("one entry")
    }

    fn move_in(key: &str, version: u64, epoch: u64) -> KvOp {
        KvOp::MoveIn { key: key.into(), value: b"moved".to_vec(), version, expires_at: None, epoch }
    }

    #[tokio::test]
    async fn a_moved_keys_versions_keep_growing_on_a_shard_whose_log_is_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::new(1, storage);
        // Moved in at version 1305 by a shard further on than this one.
        apply(&mut sm, 1, vec![move_in("k", 1305, 1)]).await;
        let put = |v: &str| KvOp::Put {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
            expires_at: None,
            if_version: None,
            hooks: None,
        };
        assert_eq!(
            apply(&mut sm, 2, vec![put("a")]).await,
            vec![CommandResult::Written { version: 1306, hooks: vec![] }]
        );
        // Two writes of the key in one entry: still one version each.
        let both = apply(&mut sm, 3, vec![put("b"), put("c")]).await;
        assert_eq!(
            both,
            vec![
                CommandResult::Written { version: 1307, hooks: vec![] },
                CommandResult::Written { version: 1308, hooks: vec![] }
            ]
        );
        // Once the log is past it, the version is the log index again.
        assert_eq!(
            apply(&mut sm, 5000, vec![put("d")]).await,
            vec![CommandResult::Written { version: 5000, hooks: vec![] }]
        );
        // A key written here first starts at the log index.
        let fresh = KvOp::Put { key: b"f".to_vec(), value: vec![], expires_at: None, if_version: None, hooks: None };
        assert_eq!(
            apply(&mut sm, 5001, vec![fresh]).await,
            vec![CommandResult::Written { version: 5001, hooks: vec![] }]
        );
    }

    #[tokio::test]
    async fn a_move_lands_once_per_job_and_never_over_a_newer_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::new(1, storage);
        // The first move writes the key with its old version.
        assert_eq!(apply(&mut sm, 1, vec![move_in("a", 77, 1)]).await, vec![CommandResult::MovedIn { written: true }]);
        let got = sm.get(b"a".to_vec(), 0).await.expect("get").expect("moved in");
        assert_eq!((got.version, got.value.as_ref()), (77, b"moved".as_ref()));
        // Deleted since: a late copy of the same job does not bring it back.
        let delete = KvOp::Delete { key: b"a".to_vec(), if_version: None, hooks: None };
        apply(&mut sm, 2, vec![delete]).await;
        assert_eq!(apply(&mut sm, 3, vec![move_in("a", 77, 1)]).await, vec![CommandResult::MovedIn { written: false }]);
        assert!(sm.get(b"a".to_vec(), 0).await.expect("get").is_none());
        // A key written here first keeps the newer write.
        let put =
            KvOp::Put { key: b"b".to_vec(), value: b"new".to_vec(), expires_at: None, if_version: None, hooks: None };
        apply(&mut sm, 4, vec![put]).await;
        assert_eq!(apply(&mut sm, 5, vec![move_in("b", 2, 1)]).await, vec![CommandResult::MovedIn { written: false }]);
        assert_eq!(sm.get(b"b".to_vec(), 0).await.expect("get").map(|e| e.value.to_vec()), Some(b"new".to_vec()));
        // Once the job's markers are cleared, a later job moves the key again.
        apply(&mut sm, 6, vec![KvOp::ClearMoveMarkers { epoch: 1 }]).await;
        assert_eq!(apply(&mut sm, 7, vec![move_in("a", 9, 2)]).await, vec![CommandResult::MovedIn { written: true }]);
    }

    /// The current snapshot of `sm`, as the bytes a leader would send.
    async fn snapshot_bytes(sm: &mut StateMachine) -> (SnapshotMeta, Vec<u8>) {
        let snapshot = sm.get_current_snapshot().await.expect("snapshot").expect("something applied");
        let bytes = tokio::task::spawn_blocking(move || snapshot.snapshot.into_bytes_blocking())
            .await
            .expect("collect task")
            .expect("collect");
        (snapshot.meta, bytes)
    }

    #[tokio::test]
    async fn a_replica_caught_up_by_snapshot_has_the_jobs_move_markers_and_no_others() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut leader = StateMachine::new(1, Storage::open(dir_a.path()).expect("storage"));
        let mut behind = StateMachine::new(1, Storage::open(dir_b.path()).expect("storage"));
        // The leader moved `a` in for job 1, and a client deleted it since.
        apply(&mut leader, 1, vec![move_in("a", 77, 1)]).await;
        let delete = KvOp::Delete { key: b"a".to_vec(), if_version: None, hooks: None };
        apply(&mut leader, 2, vec![delete]).await;
        // The lagging replica holds a marker the snapshot's state does not.
        apply(&mut behind, 1, vec![move_in("z", 5, 9)]).await;
        let (meta, bytes) = snapshot_bytes(&mut leader).await;
        behind.install_snapshot(&meta, Box::new(SnapshotBytes::from_bytes(bytes))).await.expect("install");
        // A late copy of job 1's move is refused on both replicas alike...
        let written = |w| vec![CommandResult::MovedIn { written: w }];
        assert_eq!(apply(&mut leader, 3, vec![move_in("a", 77, 1)]).await, written(false));
        assert_eq!(apply(&mut behind, 3, vec![move_in("a", 77, 1)]).await, written(false));
        assert!(behind.get(b"a".to_vec(), 0).await.expect("get").is_none());
        // ...and job 9's marker, which the leader never had, is gone.
        assert_eq!(apply(&mut leader, 4, vec![move_in("z", 5, 9)]).await, written(true));
        assert_eq!(apply(&mut behind, 4, vec![move_in("z", 5, 9)]).await, written(true));
    }

    #[test]
    fn a_snapshot_without_markers_still_decodes() {
        // What a node that sent no markers sends: the records value alone.
        let env = Envelope { value: bytes::Bytes::from_static(b"v"), version: 3, expires_at: None };
        let old = encode(&SnapshotData { records: vec![(b"k".to_vec(), env.encode())] });
        let snapshot = decode_snapshot(&old).expect("decodes");
        assert_eq!((snapshot.records.len(), snapshot.moved.len()), (1, 0));
        // A marker too short to hold its job epoch is refused.
        let mut bad = old.clone();
        bad.extend(encode(&vec![vec![1u8, 2, 3]]));
        assert!(decode_snapshot(&bad).is_err());
    }

    #[tokio::test]
    async fn clearing_up_to_an_epoch_clears_the_markers_of_every_aborted_job_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::new(1, storage);
        apply(&mut sm, 1, vec![move_in("a", 5, 1), move_in("b", 5, 2), move_in("c", 5, 3)]).await;
        let delete = |k: &str| KvOp::Delete { key: k.as_bytes().to_vec(), if_version: None, hooks: None };
        apply(&mut sm, 2, vec![delete("a"), delete("b"), delete("c")]).await;
        apply(&mut sm, 3, vec![KvOp::ClearMoveMarkersUpTo { epoch: 2 }]).await;
        // Jobs 1 and 2 forgot their moves; job 3 still refuses a late copy.
        let again = vec![move_in("a", 5, 1), move_in("b", 5, 2), move_in("c", 5, 3)];
        let written = |w| CommandResult::MovedIn { written: w };
        assert_eq!(apply(&mut sm, 4, again).await, vec![written(true), written(true), written(false)]);
    }

    #[tokio::test]
    async fn a_batch_of_moves_obeys_the_single_move_rules_key_by_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("storage");
        let mut sm = StateMachine::new(1, storage);
        let record =
            |k: &str, version| MovedRecord { key: k.into(), value: b"moved".to_vec(), version, expires_at: None };
        // "b" was written here first, "c" already moved in by this job.
        let put =
            KvOp::Put { key: b"b".to_vec(), value: b"new".to_vec(), expires_at: None, if_version: None, hooks: None };
        apply(&mut sm, 1, vec![put, move_in("c", 3, 1)]).await;
        let batch = KvOp::MoveInBatch { records: vec![record("a", 7), record("b", 2), record("c", 3)], epoch: 1 };
        assert_eq!(apply(&mut sm, 2, vec![batch]).await, vec![CommandResult::MovedInBatch { written: 1 }]);
        let version = |sm: &StateMachine, k: &str| {
            sm.get_blocking(k.as_bytes(), 0).expect("get").map(|e| (e.version, e.value.to_vec()))
        };
        assert_eq!(version(&sm, "a"), Some((7, b"moved".to_vec())));
        assert_eq!(version(&sm, "b"), Some((1, b"new".to_vec())), "the newer write stays");
        // The old shard's side: only keys still at the copied version go.
        let expire = KvOp::ExpireBatch { keys: vec![(b"a".to_vec(), 7), (b"b".to_vec(), 2)] };
        assert_eq!(apply(&mut sm, 3, vec![expire]).await, vec![CommandResult::Done]);
        assert_eq!(version(&sm, "a"), None);
        assert_eq!(version(&sm, "b"), Some((1, b"new".to_vec())), "a newer version is not the copy's");
    }
}
