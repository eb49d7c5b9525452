//! openraft's storage conformance suite against the fjall log store and
//! state machine, for a data group and for a non-zero group id sharing a
//! database with another group.

use openraft::testing::{StoreBuilder, Suite};
use ringkv::raft::{LogStore, StateMachine, TypeConfig};
use ringkv::storage::Storage;

struct FjallStoreBuilder {
    group: u64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FjallStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let storage = Storage::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, LogStore::new(self.group, storage.clone()), StateMachine::new(self.group, storage)))
    }
}

#[test]
fn conformance_group_1() -> Result<(), openraft::StorageError<u64>> {
    Suite::test_all(FjallStoreBuilder { group: 1 })
}

#[test]
fn conformance_high_group_id() -> Result<(), openraft::StorageError<u64>> {
    Suite::test_all(FjallStoreBuilder { group: u64::MAX - 1 })
}
