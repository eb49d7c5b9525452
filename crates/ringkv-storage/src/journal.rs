//! Fsyncing fjall's journal without holding fjall's journal lock.
//!
//! `Database::persist(SyncData)` keeps the journal writer's mutex for the
//! whole fsync (about 2.4 ms on the CI disk), so every other writer — each
//! group's state machine applying entries — waits behind every log fsync.
//! With many Raft groups that wait dominated write latency.
//!
//! Instead the writer thread asks fjall only to flush its userspace buffer to
//! the OS (`PersistMode::Buffer`, under the lock, microseconds), then calls
//! `fdatasync` on its own handle to the active journal file, without the
//! lock. This is durable because:
//! - after the flush, every committed batch sits in the OS page cache of the
//!   journal file that was active at flush time;
//! - fjall's journal files are `<id>.jnl` in the database folder, a new one
//!   with a higher id on each rotation, and a rotation fsyncs the journal it
//!   seals (`SyncAll`) before switching;
//! - so syncing the newest journal found *after* the flush covers the data:
//!   either it is the file the data went to, or that file was sealed, and
//!   therefore synced, by a rotation in between.
//!
//! This leans on fjall 3.1's journal layout; `finds_the_active_journal`
//! checks it, so an fjall upgrade that changes it fails the tests.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StorageError;

/// The writer thread's handle on the active journal file.
pub(super) struct JournalSyncer {
    dir: PathBuf,
    open: Option<(PathBuf, File)>,
}

impl JournalSyncer {
    pub(super) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), open: None }
    }

    /// `fdatasync` of the newest journal file. Call after fjall flushed its buffer.
    pub(super) fn sync(&mut self) -> Result<(), StorageError> {
        let newest = newest_journal(&self.dir)?;
        let file = match &self.open {
            Some((path, file)) if *path == newest => file,
            _ => {
                let file = File::open(&newest).map_err(|e| io_err("opening the journal", &newest, e))?;
                &self.open.insert((newest.clone(), file)).1
            }
        };
        file.sync_data().map_err(|e| io_err("fsyncing the journal", &newest, e))
    }
}

/// The journal file with the highest id in `dir`.
pub(super) fn newest_journal(dir: &Path) -> Result<PathBuf, StorageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("listing journals", dir, e))?;
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let path = entry.map_err(|e| io_err("listing journals", dir, e))?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            if newest.as_ref().is_none_or(|(best, _)| id > *best) {
                newest = Some((id, path));
            }
        }
    }
    newest.map(|(_, p)| p).ok_or_else(|| StorageError::Corrupt {
        keyspace: "journal",
        detail: format!("no journal file (<id>.jnl) in {}", dir.display()),
    })
}

fn io_err(context: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Fjall {
        context,
        source: fjall::Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["0.jnl", "7.jnl", "12.jnl", "lock", "version", "3.jnl.tmp"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        assert_eq!(newest_journal(dir.path()).expect("newest"), dir.path().join("12.jnl"));
    }

    #[test]
    fn no_journal_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(newest_journal(dir.path()).is_err());
    }
}
