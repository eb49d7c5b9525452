//! The Raft log of one group, stored in the shared fjall database.
//!
//! Appends, vote saves, truncations and purges are handed to the storage
//! writer thread, which group-commits them with one fsync per batch. Reads
//! run on tokio's blocking pool.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};

use super::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};
use crate::storage::{group_key, log_key, GroupId, Storage, StorageError};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Log storage of one Raft group.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    storage: Storage,
    /// Latest committed log id handed to `save_committed`. openraft calls
    /// `save_committed` on its core task for every commit, so it must neither
    /// wait for disk nor wake the writer thread: the value is kept here and
    /// written with the next log append.
    committed: Arc<std::sync::Mutex<CommittedCell>>,
    /// The newest entries, so replication (which reads what was just
    /// appended) rarely touches fjall or the blocking pool.
    tail: Arc<std::sync::Mutex<LogTail>>,
    /// A purge openraft asked for beyond what the state machine holds
    /// durably. openraft 0.9 purges the log right after *starting* a
    /// snapshot install, without waiting for it; purging on disk then, and
    /// crashing before the install commits, leaves a node whose log starts
    /// after its state machine ends (openraft refuses to start it). So such
    /// a purge is only remembered here; the install's own batch purges the
    /// log on disk atomically with the new state (see [`purge_into`]).
    pending_purge: Arc<std::sync::Mutex<Option<LogId>>>,
}

#[derive(Default)]
struct CommittedCell {
    latest: Option<LogId>,
    /// Set when `latest` changed since it was last written.
    dirty: bool,
}

/// A bounded in-memory copy of the last appended entries, contiguous by index.
#[derive(Default)]
struct LogTail {
    /// Entries with their encoded size.
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

/// Most entries and bytes kept in a group's [`LogTail`].
const TAIL_MAX_ENTRIES: usize = 1024;
const TAIL_MAX_BYTES: usize = 8 * 1024 * 1024;

impl LogTail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// Adds entries that follow the current tail (or restarts it on a gap).
    fn push(&mut self, entries: &[(Entry, usize)]) {
        for (e, size) in entries {
            let contiguous = self.entries.back().is_none_or(|(last, _)| last.log_id.index + 1 == e.log_id.index);
            if !contiguous {
                self.entries.clear();
                self.bytes = 0;
            }
            self.entries.push_back((e.clone(), *size));
            self.bytes += size;
        }
        while self.entries.len() > TAIL_MAX_ENTRIES || (self.bytes > TAIL_MAX_BYTES && self.entries.len() > 1) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Entries `[start, end)` if the tail holds all of them.
    fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        Some(self.entries.iter().skip(from).take((end - start) as usize).map(|(e, _)| e.clone()).collect())
    }

    /// Drops entries with index >= `index`.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops entries with index <= `index`.
    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }
}

impl LogStore {
    pub fn new(group: GroupId, storage: Storage) -> Self {
        Self {
            group,
            storage,
            committed: Arc::new(std::sync::Mutex::new(CommittedCell::default())),
            tail: Arc::new(std::sync::Mutex::new(LogTail::default())),
            pending_purge: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn pending_purge(&self) -> Option<LogId> {
        *self.pending_purge.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, LogTail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read_state<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        tag: &'static [u8],
    ) -> Result<Option<T>, StorageError> {
        let key = group_key(self.group, tag);
        self.storage
            .blocking(move |s| {
                let raw = s.raft_state().get(&key).map_err(StorageError::fjall("reading raft state"))?;
                raw.map(|v| decode(&v, "raft_state")).transpose()
            })
            .await
    }

    async fn write_state<T: serde::Serialize>(&self, tag: &'static [u8], value: &T) -> Result<(), Arc<StorageError>> {
        let key = group_key(self.group, tag);
        let val = encode(value);
        self.storage
            .write_durable(false, move |s, batch| {
                batch.insert(s.raft_state(), key, val);
                Ok(())
            })
            .await
    }
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain in-memory structs to a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(raw: &[u8], keyspace: &'static str) -> Result<T, StorageError> {
    postcard::from_bytes(raw).map_err(|e| StorageError::Corrupt { keyspace, detail: e.to_string() })
}

fn io_read(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::fmt::Display) -> RaftStorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(end) = end_exclusive {
            if let Some(hit) = self.tail().range(start, end) {
                return Ok(hit);
            }
        }
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(log_key(self.group, *x)),
            Bound::Excluded(x) => Bound::Excluded(log_key(self.group, *x)),
            Bound::Unbounded => Bound::Included(log_key(self.group, u64::MAX)),
        };
        // Entries up to a purge not yet done on disk count as gone.
        let start = start.max(self.pending_purge().map_or(0, |p| p.index + 1));
        let from = log_key(self.group, start);
        self.storage
            .blocking(move |s| {
                let mut out = Vec::new();
                for guard in s.raft_log().range::<[u8; 16], _>((Bound::Included(from), end)) {
                    let (_, v) = guard.into_inner().map_err(StorageError::fjall("reading the log"))?;
                    out.push(decode::<Entry>(&v, "raft_log")?);
                }
                Ok::<_, StorageError>(out)
            })
            .await
            .map_err(io_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let durable: Option<LogId> = self.read_state(PURGED).await.map_err(io_read)?;
        let purged = durable.max(self.pending_purge());
        let group = self.group;
        let last = self
            .storage
            .blocking(move |s| {
                let range = log_key(group, 0)..=log_key(group, u64::MAX);
                match s.raft_log().range(range).next_back() {
                    Some(g) => {
                        let (_, v) = g.into_inner().map_err(StorageError::fjall("reading the log"))?;
                        Ok(Some(decode::<Entry>(&v, "raft_log")?.log_id))
                    }
                    None => Ok::<_, StorageError>(None),
                }
            })
            .await
            .map_err(io_read)?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.max(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.write_state(VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_state(VOTE).await.map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Kept in memory and written with the next append: losing it in a
        // crash only means re-learning the commit index from the leader.
        let mut cell = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        cell.latest = committed;
        cell.dirty = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        if let Some(c) = self.committed.lock().unwrap_or_else(|p| p.into_inner()).latest {
            return Ok(Some(c));
        }
        Ok(self.read_state::<Option<LogId>>(COMMITTED).await.map_err(io_read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let group = self.group;
        let mut records: Vec<([u8; 16], Vec<u8>)> = Vec::new();
        let mut cached = Vec::new();
        for e in entries {
            let raw = encode(&e);
            records.push((log_key(group, e.log_id.index), raw));
            let size = records.last().map_or(0, |(_, v)| v.len());
            cached.push((e, size));
        }
        self.tail().push(&cached);
        let committed = {
            let mut cell = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut cell.dirty).then_some(cell.latest)
        };
        self.storage.submit(crate::storage::WriteOp {
            fill: Box::new(move |s, batch| {
                for (k, v) in records {
                    batch.insert(s.raft_log(), k, v);
                }
                if let Some(c) = committed {
                    batch.insert(s.raft_state(), group_key(group, COMMITTED), encode(&c));
                }
                Ok(())
            }),
            done: Box::new(move |r| callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())))),
            barrier: false,
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.tail().truncate(log_id.index);
        let group = self.group;
        self.storage
            .write_durable(true, move |s, batch| {
                for g in s.raft_log().range(log_key(group, log_id.index)..=log_key(group, u64::MAX)) {
                    let k = g.key().map_err(StorageError::fjall("truncating the log"))?;
                    batch.remove(s.raft_log(), k);
                }
                Ok(())
            })
            .await
            .map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.tail().purge(log_id.index);
        let group = self.group;
        let applied = self.storage.blocking(move |s| super::state_machine::durable_applied(s, group)).await;
        if applied.map_err(io_read)?.is_none_or(|a| a.index < log_id.index) {
            // A snapshot install is on its way; it purges on disk itself.
            let mut pending = self.pending_purge.lock().unwrap_or_else(|p| p.into_inner());
            *pending = (*pending).max(Some(log_id));
            return Ok(());
        }
        self.storage.write_durable(true, move |s, batch| purge_into(s, batch, group, &log_id)).await.map_err(io_write)
    }
}

/// Adds the purge of `group`'s log up to `log_id` (inclusive) to `batch`.
pub(crate) fn purge_into(
    s: &Storage,
    batch: &mut fjall::OwnedWriteBatch,
    group: GroupId,
    log_id: &LogId,
) -> Result<(), StorageError> {
    // Entries up to the previous purge are removed already. A scan from
    // index 0 walked all their tombstones on every purge, work that grew
    // with the log's history until compaction dropped them: a node's put
    // throughput fell by a quarter within a minute of load.
    let state_key = group_key(group, PURGED);
    let from = match s.raft_state().get(&state_key).map_err(StorageError::fjall("purging the log"))? {
        Some(raw) => decode::<LogId>(&raw, "raft_state")?.index.saturating_add(1),
        None => 0,
    };
    batch.insert(s.raft_state(), state_key, encode(log_id));
    if from <= log_id.index {
        for g in s.raft_log().range(log_key(group, from)..=log_key(group, log_id.index)) {
            let k = g.key().map_err(StorageError::fjall("purging the log"))?;
            batch.remove(s.raft_log(), k);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> (Entry, usize) {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        (Entry { log_id, payload: EntryPayload::Blank }, 10)
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn tail_serves_only_ranges_it_fully_holds() {
        let mut t = LogTail::default();
        t.push(&[entry(5), entry(6), entry(7)]);
        assert_eq!(indexes(t.range(5, 8)), Some(vec![5, 6, 7]));
        assert_eq!(indexes(t.range(6, 7)), Some(vec![6]));
        assert_eq!(t.range(4, 6), None, "starts before the tail");
        assert_eq!(t.range(6, 9), None, "ends after the tail");
        assert_eq!(t.range(6, 6), None, "empty range goes to storage");
    }

    #[test]
    fn tail_follows_truncate_purge_and_gaps() {
        let mut t = LogTail::default();
        t.push(&[entry(1), entry(2), entry(3), entry(4)]);
        t.truncate(3);
        assert_eq!(indexes(t.range(1, 3)), Some(vec![1, 2]));
        assert_eq!(t.range(3, 4), None);
        t.push(&[entry(3)]);
        t.purge(1);
        assert_eq!(indexes(t.range(2, 4)), Some(vec![2, 3]));
        t.push(&[entry(10)]);
        assert_eq!(t.first_index(), Some(10), "a gap restarts the tail");
        assert_eq!(t.bytes, 10);
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = LogTail::default();
        let many: Vec<_> = (1..=(TAIL_MAX_ENTRIES as u64 + 10)).map(entry).collect();
        t.push(&many);
        assert_eq!(t.entries.len(), TAIL_MAX_ENTRIES);
        assert_eq!(t.first_index(), Some(11));
        assert_eq!(t.bytes, TAIL_MAX_ENTRIES * 10);
    }
}
