//! Storage layer: the node's single fjall database and its on-disk layout.
//!
//! Every Raft group on the node (the meta group and each data shard) shares
//! one fjall [`Database`] and therefore one journal. Keys in every keyspace
//! start with the big-endian group id, so a group's data is one contiguous
//! range and groups never collide.
//!
//! Keyspaces: `raft_log`, `raft_state` (Raft's log and vote), `sm_data`,
//! `sm_meta`, `sm_expiry` (each group's state machine and TTL index) and
//! `node_meta` (the node's own records, the one keyspace without the group
//! prefix). Every key and value format is listed once, in ARCHITECTURE.md →
//! Storage layout.
//!
//! Durability: Raft log appends, vote saves, truncations and purges go through
//! one writer thread ([`Storage::submit`]) that commits everything queued as a
//! single batch and then issues one fsync — group commit across all groups.
//! State machine writes are committed without fsync: the log is the source of
//! truth and is replayed from `applied` after a crash. Because the journal is
//! sequential, each log fsync also makes earlier state machine writes durable.
//!
//! A failed fsync poisons the store: every later write fails, so the node stops
//! acknowledging instead of carrying on with state it cannot trust.
//!
//! The crash points of the fault-injection tests ([`failpoint`]) live here,
//! in the lowest ringkv crate, so every layer can place one; this crate
//! names the metrics it records, and `ringkv::telemetry` describes them.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod envelope;
pub mod failpoint;
mod journal;

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use envelope::Envelope;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

/// A keyspace's memtable is flushed at this size (fjall's default: 64 MiB).
/// Every put reads and inserts into the memtables of the log and the state
/// machine, and a skiplist that large costs a cache miss per level: a
/// node's put throughput fell by a fifth as they filled under load.
const MAX_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// Disk space of sealed journals at which fjall flushes the keyspaces that
/// keep the oldest alive; fjall's minimum.
const MAX_JOURNALS_BYTES: u64 = 64 * 1024 * 1024;

/// Identifies one Raft group on the node. 0 is the meta group.
pub type GroupId = u64;

/// Group commit: writing the batch and fsyncing the log (seconds).
pub const STORAGE_FSYNC_DURATION: &str = "ringkv_storage_fsync_duration_seconds";
/// Log and state-machine ops per group commit.
pub const STORAGE_GROUP_COMMIT_OPS: &str = "ringkv_storage_group_commit_ops";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("fjall error while {context}: {source}")]
    Fjall {
        context: &'static str,
        #[source]
        source: fjall::Error,
    },
    #[error("storage is poisoned after a failed fsync; restart the node after checking the disk")]
    Poisoned,
    #[error("corrupt record in {keyspace}: {detail}")]
    Corrupt { keyspace: &'static str, detail: String },
    #[error("storage writer thread has stopped")]
    WriterGone,
    #[error("could not lock data directory {path}: {reason}")]
    Locked { path: String, reason: String },
}

impl StorageError {
    pub fn fjall(context: &'static str) -> impl FnOnce(fjall::Error) -> StorageError {
        move |source| StorageError::Fjall { context, source }
    }
}

/// Adds an op's mutations to the shared batch.
pub type FillFn = Box<dyn FnOnce(&Storage, &mut OwnedWriteBatch) -> Result<(), StorageError> + Send>;
/// Completion callback of an op, run after the fsync.
pub type DoneFn = Box<dyn FnOnce(Result<(), Arc<StorageError>>) + Send>;

/// One unit of work for the group-commit writer thread.
pub struct WriteOp {
    /// Adds this op's mutations to the shared batch. Gets the storage so it
    /// can read committed state (truncate/purge need the key range).
    pub fill: FillFn,
    /// Called after the batch holding this op is fsynced (or failed).
    pub done: DoneFn,
    /// The op reads committed state: it runs in a batch of its own, after
    /// everything queued before it is committed (fsync still happens once).
    pub barrier: bool,
}

/// Handle to the node's fjall database. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    pub raft_log: Keyspace,
    pub raft_state: Keyspace,
    pub sm_data: Keyspace,
    pub sm_meta: Keyspace,
    pub sm_expiry: Keyspace,
    pub node_meta: Keyspace,
    /// Feeds the group-commit writer thread; `None` once shut down.
    writer: std::sync::Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer_thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Set when an fsync failed; every later write is refused.
    poisoned: AtomicBool,
    /// A group's records were deleted: the next quiet round compacts the
    /// data keyspaces, whose tombstones nothing else would compact.
    reclaim_data: AtomicBool,
    /// The writer thread's fsync of the journal, outside fjall's lock.
    journal: std::sync::Mutex<journal::JournalSyncer>,
    /// Keeps the OS-level lock on the data directory for the process lifetime.
    _dir_lock: std::fs::File,
    /// Test hook: makes the next group commit fail as if fsync had.
    #[cfg(any(test, feature = "failpoints"))]
    fail_next_sync: AtomicBool,
}

impl Storage {
    /// Opens (or creates) the database under `dir`.
    ///
    /// Takes an exclusive lock on `dir/LOCK` so two processes can never share
    /// a data directory.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Locked { path: dir.display().to_string(), reason: e.to_string() })?;
        let dir_lock = lock_dir(dir)?;
        let db_dir = dir.join("fjall");
        let db = Database::builder(&db_dir)
            // The writer thread decides when to fsync; batches must not flush on their own.
            .manual_journal_persist(true)
            // Sealed journals above this make fjall flush the keyspaces that
            // hold them back (its default is 512 MiB): `raft_state` and
            // `sm_meta` take small writes and may never fill a memtable.
            .max_journaling_size(MAX_JOURNALS_BYTES)
            .open()
            .map_err(StorageError::fjall("opening the database"))?;
        // Data directories before snapshots were built on demand stored a
        // full copy of each group's data here; nothing reads it any more.
        if db.keyspace_exists("snapshots") {
            let old = db
                .keyspace("snapshots", KeyspaceCreateOptions::default)
                .map_err(StorageError::fjall("opening the old snapshots keyspace"))?;
            db.delete_keyspace(old).map_err(StorageError::fjall("deleting the old snapshots keyspace"))?;
            tracing::info!("deleted the stored snapshots of an older version; snapshots are now built when sent");
        }
        let ks = |name: &'static str| {
            let options = || KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_BYTES);
            db.keyspace(name, options).map_err(StorageError::fjall("opening a keyspace"))
        };
        let inner = Inner {
            raft_log: ks("raft_log")?,
            raft_state: ks("raft_state")?,
            sm_data: ks("sm_data")?,
            sm_meta: ks("sm_meta")?,
            sm_expiry: ks("sm_expiry")?,
            node_meta: ks("node_meta")?,
            db,
            writer: std::sync::Mutex::new(None),
            writer_thread: std::sync::Mutex::new(None),
            poisoned: AtomicBool::new(false),
            reclaim_data: AtomicBool::new(false),
            journal: std::sync::Mutex::new(journal::JournalSyncer::new(&db_dir)),
            _dir_lock: dir_lock,
            #[cfg(any(test, feature = "failpoints"))]
            fail_next_sync: AtomicBool::new(false),
        };
        let storage = Storage { inner: Arc::new(inner) };
        let (tx, rx) = mpsc::channel::<WriteOp>();
        // The writer holds only a weak handle, so dropping the last Storage
        // drops the sender and the thread ends on its own.
        let weak = Arc::downgrade(&storage.inner);
        let handle = std::thread::Builder::new()
            .name("ringkv-log-writer".into())
            .spawn(move || writer_loop(weak, rx))
            .map_err(|e| StorageError::Locked { path: dir.display().to_string(), reason: e.to_string() })?;
        *lock(&storage.inner.writer) = Some(tx);
        *lock(&storage.inner.writer_thread) = Some(handle);
        Ok(storage)
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }
    pub fn raft_log(&self) -> &Keyspace {
        &self.inner.raft_log
    }
    pub fn raft_state(&self) -> &Keyspace {
        &self.inner.raft_state
    }
    pub fn sm_data(&self) -> &Keyspace {
        &self.inner.sm_data
    }
    pub fn sm_meta(&self) -> &Keyspace {
        &self.inner.sm_meta
    }
    pub fn sm_expiry(&self) -> &Keyspace {
        &self.inner.sm_expiry
    }
    pub fn node_meta(&self) -> &Keyspace {
        &self.inner.node_meta
    }

    /// Whether a write batch to the state machine's keyspaces could stall
    /// now: fjall holds back writers (sleeping 10-100 ms at a time) once a
    /// keyspace has 4 sealed memtables waiting for flush or 20 level-0 runs.
    /// The margins here are wide (2 memtables, 16 tables; runs never exceed
    /// tables), so while this is false a commit returns in microseconds.
    pub fn state_machine_write_may_stall(&self) -> bool {
        [self.sm_data(), self.sm_meta(), self.sm_expiry()]
            .iter()
            .any(|k| k.sealed_memtable_count() >= 2 || k.l0_table_count() >= 16)
    }

    /// Runs fjall work that usually takes microseconds on the calling task,
    /// or on the blocking pool when `may_block` says it could wait longer.
    pub async fn run<T, F>(&self, may_block: bool, f: F) -> T
    where
        F: FnOnce(&Storage) -> T + Send + 'static,
        T: Send + 'static,
    {
        if may_block {
            self.blocking(f).await
        } else {
            f(self)
        }
    }

    /// Disk space by part: each keyspace's tables, and the journals.
    pub fn disk_space_by_part(&self) -> Result<Vec<(&'static str, u64)>, StorageError> {
        let mut parts: Vec<(&'static str, u64)> =
            self.keyspaces().iter().map(|(name, ks)| (*name, ks.disk_space())).collect();
        let journals = self.inner.db.journal_disk_space().map_err(StorageError::fjall("measuring the journals"))?;
        parts.push(("journals", journals));
        Ok(parts)
    }

    fn keyspaces(&self) -> [(&'static str, &Keyspace); 6] {
        [
            ("raft_log", self.raft_log()),
            ("raft_state", self.raft_state()),
            ("sm_data", self.sm_data()),
            ("sm_meta", self.sm_meta()),
            ("sm_expiry", self.sm_expiry()),
            ("node_meta", self.node_meta()),
        ]
    }

    /// Frees the tables that hold only records of a deleted group. The
    /// deletion's tombstones must be durable first; this drops whole tables
    /// (no rewrite), and the next [`QuietCompaction`] compacts the data
    /// keyspaces for what shares a table with another group.
    pub fn drop_group_tables(&self, group: GroupId) -> Result<(), StorageError> {
        self.inner.reclaim_data.store(true, Ordering::Release);
        use fjall::AbstractTree;
        let lo = group.to_be_bytes().to_vec();
        let range = match group.checked_add(1) {
            Some(next) => (Bound::Included(lo), Bound::Excluded(next.to_be_bytes().to_vec())),
            None => (Bound::Included(lo), Bound::Unbounded),
        };
        // Every keyspace but `node_meta` starts its keys with the group.
        for (_, ks) in self.keyspaces().into_iter().filter(|(name, _)| *name != "node_meta") {
            ks.tree
                .drop_range::<Vec<u8>, _>(range.clone())
                .map_err(|e| StorageError::Fjall { context: "dropping a deleted group's tables", source: e.into() })?;
        }
        Ok(())
    }

    /// Makes this store's next group commit fail as if its fsync had, which
    /// poisons it: for tests of what a node shows then (the `failpoints`
    /// feature; per store, where a `FAILPOINTS` point is per process).
    #[cfg(feature = "failpoints")]
    pub fn fail_next_fsync(&self) {
        self.inner.fail_next_sync.store(true, Ordering::Release);
    }

    /// True after an fsync failure.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Queues a durable write. `op.done` runs on the writer thread once the
    /// batch containing it is fsynced.
    pub fn submit(&self, op: WriteOp) {
        if self.is_poisoned() {
            (op.done)(Err(Arc::new(StorageError::Poisoned)));
            return;
        }
        let sender = lock(&self.inner.writer).clone();
        match sender {
            Some(tx) => {
                if let Err(mpsc::SendError(op)) = tx.send(op) {
                    (op.done)(Err(Arc::new(StorageError::WriterGone)));
                }
            }
            None => (op.done)(Err(Arc::new(StorageError::WriterGone))),
        }
    }

    /// Like [`Storage::submit`], but waits for the fsync.
    pub async fn write_durable(
        &self,
        barrier: bool,
        fill: impl FnOnce(&Storage, &mut OwnedWriteBatch) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), Arc<StorageError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(WriteOp {
            fill: Box::new(fill),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
            barrier,
        });
        rx.await.unwrap_or(Err(Arc::new(StorageError::WriterGone)))
    }

    /// Runs blocking fjall work on tokio's blocking pool, never on an async worker.
    pub async fn blocking<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&Storage) -> T + Send + 'static,
        T: Send + 'static,
    {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || f(&me)).await {
            Ok(v) => v,
            // A panic inside storage code is a bug; surface it on the caller.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Stops the writer thread after it drains what is queued.
    pub fn shutdown(&self) {
        lock(&self.inner.writer).take();
        if let Some(h) = lock(&self.inner.writer_thread).take() {
            let _ = h.join();
        }
        let _ = self.inner.db.persist(PersistMode::SyncAll);
    }

    /// Commits one group of queued ops: everything waiting, up to a cap.
    fn writer_batch(&self, rx: &mpsc::Receiver<WriteOp>, first: WriteOp) {
        const MAX_OPS_PER_BATCH: usize = 4096;
        let mut ops = vec![first];
        while ops.len() < MAX_OPS_PER_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut dones = Vec::with_capacity(ops.len());
        let n = ops.len();
        let started = std::time::Instant::now();
        let result = self.commit_group(ops, &mut dones).map_err(|e| {
            if !matches!(e, StorageError::Poisoned) {
                tracing::error!(error = %e, "log write failed; poisoning storage, this node stops acknowledging writes");
                self.inner.poisoned.store(true, Ordering::Release);
            }
            Arc::new(e)
        });
        tracing::trace!(ops = n, micros = started.elapsed().as_micros() as u64, "group commit");
        metrics::histogram!(STORAGE_FSYNC_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(STORAGE_GROUP_COMMIT_OPS).record(n as f64);
        if result.is_ok() {
            crate::failpoint::crash_point("log-after-fsync");
        }
        for done in dones {
            done(result.clone());
        }
    }

    /// Commits `ops` as few batches as the barriers allow, then fsyncs once.
    fn commit_group(&self, ops: Vec<WriteOp>, dones: &mut Vec<DoneFn>) -> Result<(), StorageError> {
        let mut batch = self.inner.db.batch();
        let mut err = None;
        for op in ops {
            dones.push(op.done);
            if err.is_some() {
                continue;
            }
            if self.is_poisoned() {
                err = Some(StorageError::Poisoned);
                continue;
            }
            if op.barrier {
                // The op reads committed state and may touch keys queued
                // before or after it: give it a batch of its own, since a key
                // may appear only once per fjall batch.
                let queued = std::mem::replace(&mut batch, self.inner.db.batch());
                let mut own = self.inner.db.batch();
                let r = queued
                    .commit()
                    .map_err(StorageError::fjall("committing a log batch"))
                    .and_then(|()| (op.fill)(self, &mut own))
                    .and_then(|()| own.commit().map_err(StorageError::fjall("committing a log batch")));
                if let Err(e) = r {
                    err = Some(e);
                }
                continue;
            }
            if let Err(e) = (op.fill)(self, &mut batch) {
                err = Some(e);
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        batch.commit().map_err(StorageError::fjall("committing a log batch"))?;
        #[cfg(any(test, feature = "failpoints"))]
        if self.inner.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Err(StorageError::Fjall {
                context: "fsyncing the journal",
                source: fjall::Error::Io(std::io::Error::other("injected fsync failure")),
            });
        }
        // Flush fjall's buffer under its lock, fsync without it (see `journal`).
        self.inner.db.persist(PersistMode::Buffer).map_err(StorageError::fjall("flushing the journal"))?;
        crate::failpoint::crash_point("log-before-fsync");
        lock(&self.inner.journal).sync()
    }
}

fn writer_loop(weak: std::sync::Weak<Inner>, rx: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let Some(inner) = weak.upgrade() else { return };
        Storage { inner }.writer_batch(&rx, first);
    }
}

/// `node_meta` key of the last quiet compaction's sequence number.
const QUIET_MARK: &[u8] = b"quiet_compaction";

/// Raft log tables smaller than this are not worth a compaction when quiet.
const QUIET_LOG_COMPACT_MIN: u64 = 1024 * 1024;

/// Gives back the space of a node that has gone quiet; run once a round.
///
/// While a node writes, flushes and compactions reclaim space as a side
/// effect. When it stops, three kinds of space stay: journals (fjall deletes
/// one only once every keyspace has flushed past it, and `raft_state` or
/// `sm_meta` may never fill a memtable), tables a compaction replaced (fjall
/// deletes them only at the keyspace's next flush or compaction), and
/// deleted records (compaction runs only when a level fills). So after a
/// whole round without a write (no record newer than a round ago), once
/// per quiet spell, this
/// - flushes the memtables that hold something, if a sealed journal or
///   (in their keyspace) a replaced table is waiting;
/// - compacts `raft_log` if its tables hold more than
///   [`QUIET_LOG_COMPACT_MIN`] (purged entries);
/// - compacts the data keyspaces if a group was deleted since the last time.
///
/// A node with an occasional small write does none of it, so it does not
/// turn each write into a table of its own.
#[derive(Default)]
pub struct QuietCompaction {
    seen_seqno: Option<u64>,
    done_at: Option<u64>,
}

impl QuietCompaction {
    /// One round; blocking. Returns true when it flushed or compacted.
    /// With `may_work` false (other work for the disk is under way, such as
    /// log purges) it only watches.
    pub fn round(&mut self, s: &Storage, may_work: bool) -> Result<bool, StorageError> {
        use fjall::AbstractTree;
        // The sequence number of the newest record written: flushes and
        // compactions keep records' numbers (fjall's own counter also moves
        // for them, and a node compacting for a minute after a load looked
        // busy the whole time). The mark written below starts a new spell;
        // `done_at` keeps a round from starting the same work again.
        let seqno = s.keyspaces().iter().filter_map(|(_, ks)| ks.tree.get_highest_seqno()).max().unwrap_or(0);
        let quiet = self.seen_seqno == Some(seqno);
        self.seen_seqno = Some(seqno);
        if !may_work || !quiet || self.done_at == Some(seqno) {
            return Ok(false);
        }
        self.done_at = Some(seqno);
        // A flush frees replaced tables only in its own keyspace, and only
        // a memtable with something in it flushes.
        let sealed_journal = s.db().journal_count() > 1;
        let to_flush: Vec<&Keyspace> = s
            .keyspaces()
            .into_iter()
            .map(|(_, ks)| ks)
            .filter(|ks| {
                !ks.tree.active_memtable().is_empty() && (sealed_journal || ks.tree.version_free_list_len() > 0)
            })
            .collect();
        let flush = !to_flush.is_empty();
        for ks in to_flush {
            ks.rotate_memtable().map_err(StorageError::fjall("flushing a quiet keyspace"))?;
        }
        let compact_log = s.raft_log().disk_space() > QUIET_LOG_COMPACT_MIN;
        let compact_data = s.inner.reclaim_data.swap(false, Ordering::AcqRel);
        let mut compact = Vec::new();
        if compact_log {
            compact.push(s.raft_log());
        }
        if compact_data {
            compact.extend([s.sm_data(), s.sm_expiry()]);
        }
        for ks in compact {
            // Tombstones must be in a table before compaction can drop the
            // records they delete.
            ks.rotate_memtable_and_wait().map_err(StorageError::fjall("flushing a keyspace to compact"))?;
            ks.major_compact().map_err(StorageError::fjall("compacting a quiet keyspace"))?;
        }
        let worked = flush || compact_log || compact_data;
        if worked {
            // fjall deletes replaced tables and flushed journals when a
            // memtable rotates; the memtables may all be empty by now, so
            // one small record gives that rotation something to flush.
            s.node_meta()
                .insert(QUIET_MARK, seqno.to_be_bytes())
                .map_err(StorageError::fjall("writing the quiet-compaction mark"))?;
            s.node_meta().rotate_memtable().map_err(StorageError::fjall("flushing the quiet-compaction mark"))?;
        }
        Ok(worked)
    }
}

/// Adds the removal of every record of `group` (log, raft state, data, TTL
/// index) to `batch`. Used when a replica leaves this node.
pub fn remove_group(s: &Storage, batch: &mut OwnedWriteBatch, group: GroupId) -> Result<(), StorageError> {
    let prefix = group.to_be_bytes();
    for ks in [s.raft_log(), s.raft_state(), s.sm_data(), s.sm_meta(), s.sm_expiry()] {
        for g in ks.prefix(prefix) {
            batch.remove(ks, g.key().map_err(StorageError::fjall("deleting a group"))?);
        }
    }
    Ok(())
}

/// Key of a group-scoped record: group id (big-endian) followed by `suffix`.
pub fn group_key(group: GroupId, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Key of a log entry: group · index, both big-endian so they sort numerically.
pub fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Key in the TTL index: group · expires_at · user key.
pub fn expiry_key(group: GroupId, expires_at: u64, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + user_key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::Locked { path: path.display().to_string(), reason: e.to_string() })?;
    file.try_lock().map_err(|e| StorageError::Locked {
        path: path.display().to_string(),
        reason: format!("{e} (is another ringkv process using this data directory?)"),
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static [u8]) -> impl FnOnce(&Storage, &mut OwnedWriteBatch) -> Result<(), StorageError> + Send {
        move |s, batch| {
            batch.insert(s.raft_state(), key, b"v".to_vec());
            Ok(())
        }
    }

    #[tokio::test]
    async fn durable_writes_are_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        s.write_durable(false, put(b"a")).await.expect("write");
        assert!(s.raft_state().get(b"a").expect("read").is_some());
    }

    #[tokio::test]
    async fn a_failed_fsync_poisons_the_store_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        s.inner.fail_next_sync.store(true, Ordering::Release);
        let first = s.write_durable(false, put(b"a")).await;
        assert!(first.is_err(), "the write whose fsync failed is not acknowledged");
        assert!(s.is_poisoned());
        let later = s.write_durable(false, put(b"b")).await;
        assert!(matches!(later.as_ref().map_err(|e| &**e), Err(StorageError::Poisoned)), "{later:?}");
    }

    #[tokio::test]
    async fn the_synced_journal_is_the_one_fjall_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        let marker = b"journal-sync-marker-5f2c".to_vec();
        let value = marker.clone();
        s.write_durable(false, move |s, batch| {
            batch.insert(s.raft_state(), b"k", value);
            Ok(())
        })
        .await
        .expect("write");
        // The file the syncer resolves is the one holding the write.
        let synced = journal::newest_journal(&dir.path().join("fjall")).expect("journal");
        let bytes = std::fs::read(&synced).expect("read journal");
        assert!(bytes.windows(marker.len()).any(|w| w == marker), "the write is in {}", synced.display());
    }

    /// Writes `n` records of 4 KiB for `group` into `ks` and flushes them to a table.
    fn fill_table(s: &Storage, ks: &Keyspace, group: GroupId, n: u64) {
        for i in 0..n {
            ks.insert(group_key(group, &i.to_be_bytes()), vec![i as u8; 4096]).expect("insert");
        }
        ks.rotate_memtable_and_wait().expect("flush");
        assert!(s.db().journal_count() >= 1);
    }

    #[tokio::test]
    async fn a_removed_group_gives_its_tables_back_and_others_keep_theirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        fill_table(&s, s.sm_data(), 1, 200);
        fill_table(&s, s.sm_data(), 2, 200);
        let before = s.sm_data().disk_space();
        s.write_durable(true, |s, batch| remove_group(s, batch, 1)).await.expect("remove");
        s.drop_group_tables(1).expect("drop tables");
        let after = s.sm_data().disk_space();
        assert!(after <= before / 2 + 4096, "group 1's table is gone: {before} -> {after} bytes");
        assert_eq!(s.sm_data().prefix(1u64.to_be_bytes()).count(), 0, "group 1 reads as empty");
        assert_eq!(s.sm_data().prefix(2u64.to_be_bytes()).count(), 200, "group 2 is untouched");
        // What shared a table with another group goes at the next quiet round.
        let mut quiet = QuietCompaction::default();
        assert!(!quiet.round(&s, true).expect("round"), "the first round only looks");
        assert!(quiet.round(&s, true).expect("round"), "a quiet round compacts the data after a deletion");
        assert_eq!(s.sm_data().prefix(2u64.to_be_bytes()).count(), 200, "and keeps group 2");
    }

    #[tokio::test]
    async fn deleting_a_group_whose_tables_it_shares_keeps_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        // Every flush holds records of every group, so tables straddle groups.
        for round in 0..6u64 {
            for g in 1..=4u64 {
                for i in 0..100u64 {
                    s.sm_data()
                        .insert(group_key(g, &(round * 100 + i).to_be_bytes()), vec![g as u8; 2048])
                        .expect("insert");
                }
            }
            s.sm_data().rotate_memtable_and_wait().expect("flush");
        }
        s.sm_data().major_compact().expect("compact");
        s.write_durable(true, |s, batch| remove_group(s, batch, 2)).await.expect("remove");
        s.drop_group_tables(2).expect("drop tables");
        let mut quiet = QuietCompaction::default();
        for _ in 0..4 {
            quiet.round(&s, true).expect("round");
        }
        for g in [1u64, 3, 4] {
            assert_eq!(s.sm_data().prefix(g.to_be_bytes()).count(), 600, "group {g} keeps every record");
        }
        assert_eq!(s.sm_data().prefix(2u64.to_be_bytes()).count(), 0);
        // And after a restart.
        drop(s);
        let s = Storage::open(dir.path()).expect("reopen");
        for g in [1u64, 3, 4] {
            assert_eq!(s.sm_data().prefix(g.to_be_bytes()).count(), 600, "group {g} after a restart");
        }
    }

    #[tokio::test]
    async fn a_quiet_store_compacts_its_purged_log_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        fill_table(&s, s.raft_log(), 1, 500);
        let full = s.raft_log().disk_space();
        assert!(full > QUIET_LOG_COMPACT_MIN, "{full} bytes of log tables");
        // A purge: tombstones for every entry, as `log_store::purge_into` writes them.
        s.write_durable(true, |s, batch| {
            for i in 0..500u64 {
                batch.remove(s.raft_log(), group_key(1, &i.to_be_bytes()));
            }
            Ok(())
        })
        .await
        .expect("purge");
        let mut quiet = QuietCompaction::default();
        assert!(!quiet.round(&s, true).expect("round"), "the first round only looks");
        assert!(quiet.round(&s, true).expect("round"), "a round without writes compacts");
        assert!(!quiet.round(&s, true).expect("round"), "and not again in the same quiet spell");
        let after = s.raft_log().disk_space();
        assert!(after < full / 10, "purged entries left the disk: {full} -> {after}");
        assert!(!quiet.round(&s, false).expect("round"), "a round that may not work does none");
        assert_eq!(s.raft_log().prefix(1u64.to_be_bytes()).count(), 0);
        // The work above may take a round or two more to release what it replaced.
        for _ in 0..6 {
            quiet.round(&s, true).expect("round");
        }
        // Then an occasional small write is not flushed into a table of its own.
        let tables = s.raft_state().table_count();
        for i in 0..3u8 {
            s.raft_state().insert([b'w', i], b"v").expect("a small write");
            assert!(!quiet.round(&s, true).expect("round"), "a write since the last round");
            assert!(!quiet.round(&s, true).expect("round"), "quiet, but nothing worth a flush or a compaction");
        }
        assert_eq!(s.raft_state().table_count(), tables);
        assert!(s.raft_state().get([b'w', 2]).expect("read").is_some());
    }

    #[test]
    fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Storage::open(dir.path()).expect("open");
        // The lock is per open file description, so a second open in the same process is refused too.
        assert!(matches!(Storage::open(dir.path()), Err(StorageError::Locked { .. })));
    }
}
