//! Entry points for the fuzz harnesses in `fuzz/`: every decoder that reads
//! bytes off the network, as a function of one byte slice that must never
//! panic, whatever the bytes. The harnesses call these, and so does a normal
//! unit test that replays the committed seeds and every crash ever found
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), so a fixed crash
//! stays fixed on every `cargo test`.

use prost::Message;
use ringkv_client::proto;

use crate::cluster::{ForwardReply, Forwarded, MembershipOp, MembershipReply};
use crate::command::{Command, KvProposal, MetaOp};
use crate::hooks::HookRecord;
use crate::raft::network::decode;
use crate::raft::types::TypeConfig;

/// The fuzz targets, by the name of their harness and corpus directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Protobuf decoding of every request a client (or peer) sends, plus the
    /// validation that turns a hook definition into a spec.
    ClientRequest,
    /// postcard decoding of every peer payload carried in a `RaftMessage`.
    PeerPayload,
    /// A hook record of the meta group and the registry changes applied to it.
    HookRecord,
    /// A snapshot payload received through InstallSnapshot.
    Snapshot,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::ClientRequest, Target::PeerPayload, Target::HookRecord, Target::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Target::ClientRequest => "client_request",
            Target::PeerPayload => "peer_payload",
            Target::HookRecord => "hook_record",
            Target::Snapshot => "snapshot",
        }
    }

    /// Feeds `data` to this target's decoders.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::ClientRequest => client_request(data),
            Target::PeerPayload => peer_payload(data),
            Target::HookRecord => hook_record(data),
            Target::Snapshot => snapshot(data),
        }
    }
}

/// Decodes `data` as every client request type (and the peer envelope),
/// the way tonic's prost codec does, and runs the hook definition checks.
pub fn client_request(data: &[u8]) {
    let _ = proto::PutRequest::decode(data);
    let _ = proto::GetRequest::decode(data);
    let _ = proto::DeleteRequest::decode(data);
    let _ = proto::ScanRequest::decode(data);
    let _ = proto::StatusRequest::decode(data);
    let _ = proto::RingRequest::decode(data);
    let _ = proto::AddNodeRequest::decode(data);
    let _ = proto::RemoveNodeRequest::decode(data);
    let _ = proto::ListHooksRequest::decode(data);
    let _ = proto::GetHookRequest::decode(data);
    let _ = proto::RemoveHookRequest::decode(data);
    let _ = proto::RollbackHookRequest::decode(data);
    let _ = proto::RaftMessage::decode(data);
    if let Ok(r) = proto::DeployHookRequest::decode(data) {
        let _ = crate::api::hook_spec_of(r.hook);
    }
    if let Ok(r) = proto::TestHookRequest::decode(data) {
        let _ = crate::api::hook_spec_of(r.hook);
    }
}

/// Decodes `data` as every payload the `Raft` service and its callers read.
pub fn peer_payload(data: &[u8]) {
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::VoteRequest<u64>>(data);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
    let _ = decode::<MembershipOp>(data);
    let _ = decode::<MembershipReply>(data);
    let _ = decode::<Forwarded>(data);
    let _ = decode::<ForwardReply>(data);
    let _ = decode::<Command>(data);
}

/// Decodes a hook record as the meta state machine stores it, then applies
/// each registry change to it.
pub fn hook_record(data: &[u8]) {
    let Ok(record) = decode::<HookRecord>(data) else { return };
    let _ = record.latest().map(|s| s.applies_to(b"key"));
    let mut removed = record.clone();
    let _ = removed.remove("fuzz");
    let mut rolled = record.clone();
    let _ = rolled.rollback("fuzz");
    if let Some(spec) = record.latest().cloned() {
        let mut deployed = record.clone();
        let _ = deployed.deploy(spec);
    }
}

/// Decodes and checks a snapshot payload as InstallSnapshot does before writing it.
pub fn snapshot(data: &[u8]) {
    let _ = crate::raft::state_machine::decode_snapshot(data);
}

/// Small valid inputs of each target, so fuzzing starts from real structure
/// (committed under `fuzz/seeds/<target>/`).
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    use crate::hooks::{FailPolicy, HookKind, HookLimits, HookSpec, Stage};
    use crate::raft::network::encode;
    use crate::storage::Envelope;
    let spec = HookSpec {
        name: "ttl-by-prefix".into(),
        kind: HookKind::Lua,
        stage: Stage::Ttl,
        prefix: b"session/".to_vec(),
        source: b"return function(ctx) return 60000 end".to_vec(),
        version: 3,
        sha256: "00".repeat(32),
        fail_policy: FailPolicy::Closed,
        limits: HookLimits::default(),
        deployed_at_ms: 1_700_000_000_000,
    };
    match target {
        Target::ClientRequest => vec![
            proto::PutRequest { key: "user/1".into(), value: "v".into(), ttl_ms: Some(1000), if_version: Some(0) }
                .encode_to_vec(),
            proto::ScanRequest { prefix: "user/".into(), limit: 10, consistency: 1, ..Default::default() }
                .encode_to_vec(),
            proto::DeployHookRequest {
                hook: Some(proto::HookDefinition {
                    name: "h".into(),
                    kind: 1,
                    stage: 1,
                    prefix: "p/".into(),
                    source: "return true".into(),
                    fail_open: false,
                    timeout_ms: 5,
                }),
                shadow: true,
            }
            .encode_to_vec(),
            proto::RaftMessage { group_id: 1, from: 2, payload: vec![1, 2, 3].into(), cluster_id: String::new() }
                .encode_to_vec(),
        ],
        Target::PeerPayload => vec![
            encode(&Forwarded::Scan { prefix: b"user/".to_vec(), limit: 100 }).to_vec(),
            encode(&Forwarded::Propose(
                KvProposal::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ttl_ms: None,
                    if_version: None,
                    hooks: None,
                }
                .into(),
            ))
            .to_vec(),
            encode(&MembershipOp::AddVoter { id: 4, addr: "127.0.0.1:7379".into() }).to_vec(),
            encode(&Command { now_ms: 1, ops: vec![MetaOp::DeployHook { spec: Box::new(spec.clone()) }.into()] })
                .to_vec(),
        ],
        Target::HookRecord => vec![
            encode(&HookRecord {
                current: Some(spec.clone()),
                previous: Some(spec.clone()),
                last_version: 3,
                shadow: Some(spec.clone()),
            })
            .to_vec(),
            encode(&HookRecord { current: None, previous: Some(spec), last_version: 9, shadow: None }).to_vec(),
        ],
        Target::Snapshot => {
            let env = |expires_at| Envelope { value: bytes::Bytes::from_static(b"value"), version: 7, expires_at };
            let marker = [7u64.to_be_bytes().as_slice(), b"a"].concat();
            vec![crate::raft::state_machine::encode_snapshot(
                vec![(b"a".to_vec(), env(None).encode()), (b"b".to_vec(), env(Some(1_700_000_000_000)).encode())],
                vec![marker],
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.expect("readable corpus entry").path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot read {}: {e}", dir.display()),
        }
    }

    /// The committed seeds are exactly what [`seeds`] produces today (set
    /// `RINGKV_WRITE_FUZZ_SEEDS=1` to rewrite them after a format change),
    /// and the valid ones still decode.
    #[test]
    fn committed_seeds_match_the_current_formats() {
        let rewrite = std::env::var_os("RINGKV_WRITE_FUZZ_SEEDS").is_some();
        for target in Target::ALL {
            let dir = fuzz_dir().join("seeds").join(target.name());
            let want = seeds(target);
            if rewrite {
                std::fs::create_dir_all(&dir).expect("seed dir");
                for (i, s) in want.iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), s).expect("write seed");
                }
            }
            for (i, s) in want.iter().enumerate() {
                let path = dir.join(format!("seed-{i}"));
                let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(&committed, s, "{} is stale: rerun with RINGKV_WRITE_FUZZ_SEEDS=1", path.display());
            }
        }
        assert!(decode::<HookRecord>(&seeds(Target::HookRecord)[0]).is_ok());
        let snapshot = crate::raft::state_machine::decode_snapshot(&seeds(Target::Snapshot)[0]).expect("snapshot");
        assert_eq!(snapshot.records.len(), 2);
        assert_eq!(snapshot.records[1].expires_at, Some(1_700_000_000_000));
        assert_eq!(snapshot.moved.len(), 1);
    }

    /// Every seed and every input that ever crashed a harness runs through
    /// its target without panicking.
    #[test]
    fn seeds_and_regressions_replay_without_panicking() {
        let mut replayed = 0;
        for target in Target::ALL {
            for kind in ["seeds", "regressions"] {
                for path in files_in(&fuzz_dir().join(kind).join(target.name())) {
                    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    target.run(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= Target::ALL.len(), "no corpus found under {}", fuzz_dir().display());
    }

    /// Length prefixes claiming huge sizes are refused without allocating them.
    #[test]
    fn huge_length_prefixes_fail_cleanly() {
        // postcard varint for u64::MAX-ish lengths followed by nothing.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        for target in Target::ALL {
            target.run(&huge);
            let mut prefixed = vec![0u8];
            prefixed.extend_from_slice(&huge);
            target.run(&prefixed);
        }
        assert!(crate::raft::state_machine::decode_snapshot(&huge).is_err());
        assert!(decode::<HookRecord>(&huge).is_err());
    }
}
