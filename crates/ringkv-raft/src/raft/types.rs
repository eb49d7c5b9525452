//! openraft type configuration: one for every group, whose log entries carry
//! a [`Command`].

use crate::command::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Type configuration shared by every Raft group on the node.
    pub TypeConfig:
        D = Command,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub use crate::ids::NodeId;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

pub use crate::ids::now_ms;
