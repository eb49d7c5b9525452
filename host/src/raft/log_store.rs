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
use crate::storage::{group_key, log_index, log_key, GroupId, Storage, StorageError};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Log storage of one Raft group.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    storage: Storage,
    /// Latest committed log id handed to `save_committed`. openraft calls
    /// `save_committed` on its core task for every commit, so it must not wait
    /// for disk: the write is queued to the writer thread and this cache
    /// answers `read_committed` until it lands.
    committed: Arc<std::sync::Mutex<Option<LogId>>>,
}

impl LogStore {
    pub fn new(group: GroupId, storage: Storage) -> Self {
        Self { group, storage, committed: Arc::new(std::sync::Mutex::new(None)) }
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
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(log_key(self.group, *x)),
            Bound::Excluded(x) => Bound::Excluded(log_key(self.group, *x)),
            Bound::Unbounded => Bound::Included(log_key(self.group, u64::MAX)),
        };
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
        let purged: Option<LogId> = self.read_state(PURGED).await.map_err(io_read)?;
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
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
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
        // Queued, not awaited: losing it in a crash only means re-learning the
        // commit index from the leader. It rides along with the next log fsync.
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = committed;
        let key = group_key(self.group, COMMITTED);
        let val = encode(&committed);
        self.storage.submit(crate::storage::WriteOp {
            fill: Box::new(move |s, batch| {
                batch.insert(s.raft_state(), key, val);
                Ok(())
            }),
            done: Box::new(|r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "saving the commit index failed");
                }
            }),
            barrier: false,
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|p| p.into_inner()) {
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
        let records: Vec<([u8; 16], Vec<u8>)> =
            entries.into_iter().map(|e| (log_key(group, e.log_id.index), encode(&e))).collect();
        self.storage.submit(crate::storage::WriteOp {
            fill: Box::new(move |s, batch| {
                for (k, v) in records {
                    batch.insert(s.raft_log(), k, v);
                }
                Ok(())
            }),
            done: Box::new(move |r| callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())))),
            barrier: false,
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
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
        let group = self.group;
        let purged = encode(&log_id);
        self.storage
            .write_durable(true, move |s, batch| {
                batch.insert(s.raft_state(), group_key(group, PURGED), purged);
                for g in s.raft_log().range(log_key(group, 0)..=log_key(group, log_id.index)) {
                    let k = g.key().map_err(StorageError::fjall("purging the log"))?;
                    debug_assert!(log_index(&k).is_ok());
                    batch.remove(s.raft_log(), k);
                }
                Ok(())
            })
            .await
            .map_err(io_write)
    }
}
