//! Per-group batching on the leader.
//!
//! - **Writes.** openraft 0.9 appends (and fsyncs) each proposal on its own
//!   before taking the next, so one client write per Raft entry caps a group
//!   at one fsync per write. The write batcher packs every write queued while
//!   earlier batches are in flight into one entry (at most [`MAX_OPS`] ops or
//!   [`MAX_BYTES`]), with up to [`MAX_IN_FLIGHT`] entries in flight. An entry
//!   never holds two ops on the same key: every op in it gets the entry's log
//!   index as its version, and per-key versions must stay unique.
//! - **Hooks.** Writes not yet judged are judged per batch, just before
//!   the batch becomes an entry: one hand-off to each hook worker for the
//!   whole batch instead of one per write. Rejected writes leave the batch
//!   and are answered at once.
//! - **Linearizable reads.** Each ReadIndex check costs a heartbeat round to a
//!   quorum. The read batcher runs one check for every read queued before it
//!   started; reads arriving during a check wait for the next one, so every
//!   read's check begins after the read did.
//! - **Read leases.** A successful check also grants the leader a lease: for
//!   a quarter of the maximum election timeout, counted from *before* the
//!   check's heartbeats left, reads need no check at all (see [`ReadLease`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::quiescence::Quiet;
use super::routing::Attempt;
use super::NodeError;
use crate::command::{Command, CommandResult, KvProposal, MetaOp, Op, Proposal};
use crate::hooks::HookRegistry;
use crate::raft::types::now_ms;
use crate::raft::{Raft, StateMachine};
use crate::storage::GroupId;

/// Most ops in one Raft entry.
pub const MAX_OPS: usize = 1024;
/// Most key + value bytes in one Raft entry (a single larger write still goes alone).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Entries a group's batcher keeps in flight at once.
pub const MAX_IN_FLIGHT: usize = 2;

pub type WriteReply = Result<Attempt<CommandResult>, NodeError>;
pub type ReadReply = Result<Attempt<()>, NodeError>;

struct WriteItem {
    proposal: Proposal,
    /// Hooks already ran on it (or it is not a hooked write).
    judged: bool,
    reply: oneshot::Sender<WriteReply>,
}

/// Handles to a group's batcher tasks.
pub struct Batchers {
    writes: mpsc::UnboundedSender<WriteItem>,
    reads: mpsc::UnboundedSender<oneshot::Sender<ReadReply>>,
    /// One permit per entry in flight; holding them all pauses the writes.
    in_flight: Arc<Semaphore>,
    lease: Arc<ReadLease>,
    /// Told of every request, so a sleeping leader wakes.
    quiet: Quiet,
}

/// A leader's read lease: while it holds, the local state machine already
/// has every write acknowledged before now, so a linearizable read needs no
/// ReadIndex round.
///
/// Why that is safe:
/// - A check (`ensure_linearizable`) succeeds once a quorum answered
///   heartbeats sent after `started`. openraft followers refuse to vote for
///   `election_timeout_max` after hearing from their leader, so no other
///   node can win an election, nor commit a write, before `started` plus that
///   time on any member's clock. The lease lasts a quarter of it, which leaves
///   room for clocks that run at different rates.
/// - The one vote this node could still grant is its own: openraft's leader
///   does not refuse votes after it has led for a while (the leader handover
///   in `leadership.rs` relies on that). So every Vote request for the group
///   revokes the lease *before* openraft sees it ([`ReadLease::revoke`]), and
///   a check that was running when a vote arrived grants no lease.
/// - Every write this leader acknowledged was applied here first (openraft
///   answers `client_write` after the apply), and the first check of a term
///   waits for the previous leaders' entries to be applied. So a read served
///   under the lease sees every write that finished before it began.
pub struct ReadLease {
    /// `None` turns leases off (`raft.lease_reads = false`).
    length: Option<Duration>,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    until: Option<Instant>,
    /// Bumped by every revocation, so a check that overlapped one grants nothing.
    revocations: u64,
}

impl ReadLease {
    pub fn new(length: Option<Duration>) -> Self {
        Self { length, state: Mutex::new(LeaseState::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while reads may skip the ReadIndex round.
    pub fn holds(&self) -> bool {
        self.state().until.is_some_and(|until| Instant::now() < until)
    }

    /// Notes the start of a check: pass the result to [`ReadLease::grant`].
    fn begin(&self) -> (Instant, u64) {
        (Instant::now(), self.state().revocations)
    }

    /// Grants the lease after a successful check that began at `begun`,
    /// unless a revocation happened since.
    fn grant(&self, (started, revocations): (Instant, u64)) {
        let Some(length) = self.length else { return };
        let mut state = self.state();
        if state.revocations == revocations {
            state.until = Some(started + length);
        }
    }

    /// Ends the lease now: called before this node may grant a vote, and
    /// when a check finds this node no longer leads.
    pub fn revoke(&self) {
        let mut state = self.state();
        state.revocations += 1;
        state.until = None;
    }
}

impl Batchers {
    /// Starts the batcher tasks of one group; they end when the returned
    /// handle is dropped.
    pub fn start(
        group: GroupId,
        raft: Raft,
        hooks: Arc<HookRegistry>,
        sm: StateMachine,
        lease: ReadLease,
    ) -> (Batchers, [tokio::task::JoinHandle<()>; 2]) {
        let (wtx, wrx) = mpsc::unbounded_channel();
        let (rtx, rrx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let judge = Judge { hooks, sm };
        let lease = Arc::new(lease);
        let quiet = Quiet::new(raft.clone());
        let w = tokio::spawn(write_loop(group, raft.clone(), wrx, in_flight.clone(), judge));
        let r = tokio::spawn(read_loop(group, raft, rrx, lease.clone()));
        (Batchers { writes: wtx, reads: rtx, in_flight, lease, quiet }, [w, r])
    }

    /// The group's read lease; the Raft service revokes it before a vote.
    pub fn lease(&self) -> &ReadLease {
        &self.lease
    }

    /// The group's quiescence state here.
    pub(super) fn quiet(&self) -> &Quiet {
        &self.quiet
    }

    /// Waits until every entry in flight has been applied and holds new
    /// writes back (they queue) until the returned guard is dropped.
    pub async fn pause_writes(&self) -> Result<OwnedSemaphorePermit, NodeError> {
        self.in_flight.clone().acquire_many_owned(MAX_IN_FLIGHT as u32).await.map_err(|_| stopped())
    }

    /// Proposes through the batcher; `Retry` when this node is not the
    /// leader. Unless `judged`, the batcher runs the hooks on it first.
    pub async fn write(&self, proposal: Proposal, judged: bool) -> WriteReply {
        self.quiet.touch();
        let (tx, rx) = oneshot::channel();
        self.writes.send(WriteItem { proposal, judged, reply: tx }).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits for a ReadIndex check that started after this call, or returns
    /// at once while this node holds the read lease.
    pub async fn read_barrier(&self) -> ReadReply {
        self.quiet.touch();
        if self.lease.holds() {
            metrics::counter!(crate::telemetry::READ_BARRIERS, "kind" => "lease").increment(1);
            return Ok(Attempt::Done(()));
        }
        metrics::counter!(crate::telemetry::READ_BARRIERS, "kind" => "read_index").increment(1);
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> NodeError {
    NodeError::Unavailable("the raft group is shutting down".into())
}

/// About how many bytes a proposal adds to a log entry (the batch limit).
fn size_of(p: &Proposal) -> usize {
    match p {
        Op::Kv(p) => match p {
            KvProposal::Put { key, value, .. } | KvProposal::MoveIn { key, value, .. } => key.len() + value.len(),
            KvProposal::Delete { key, .. } | KvProposal::Expire { key, .. } | KvProposal::MoveOut { key, .. } => {
                key.len()
            }
            KvProposal::MoveInBatch { records, .. } => records.iter().map(|r| r.key.len() + r.value.len()).sum(),
            KvProposal::MoveOutBatch { keys, .. } => keys.iter().map(|(k, _)| k.len()).sum(),
            KvProposal::ClearMoveMarkers { .. } | KvProposal::ClearMoveMarkersUpTo { .. } => 0,
        },
        Op::Meta(op) => match op {
            MetaOp::ReshardProgress { progress, .. } => progress.cursor.as_ref().map_or(0, Vec::len),
            MetaOp::SetPartitioner { spec, .. } => spec.as_ref().map_or(0, |s| s.source.len()),
            MetaOp::SetNode { addr, .. } => addr.len(),
            MetaOp::SetAssignment { replicas, .. } => replicas.len() * 8,
            MetaOp::RemoveNode { .. }
            | MetaOp::SetDraining { .. }
            | MetaOp::SetDown { .. }
            | MetaOp::SetLeaderHint { .. }
            | MetaOp::RemoveHook { .. }
            | MetaOp::RollbackHook { .. }
            | MetaOp::PromoteHook { .. }
            | MetaOp::RemoveShadowHook { .. }
            | MetaOp::RevokeToken { .. }
            | MetaOp::SetUnreachable { .. }
            | MetaOp::ResizeShards { .. } => 0,
            MetaOp::ReshardStalled { key, error, .. } => key.len() + error.len(),
            MetaOp::CreateToken { record } => record.hash.len() + record.grant.prefix.len(),
            MetaOp::DeployHook { spec } | MetaOp::DeployShadowHook { spec } => spec.source.len() + spec.prefix.len(),
        },
    }
}

/// What the write batcher needs to judge writes.
struct Judge {
    hooks: Arc<HookRegistry>,
    /// The group's replica here, for hooks that read the stored value.
    sm: StateMachine,
}

impl Judge {
    /// Runs the hooks on the writes of a batch not judged yet; answers the
    /// rejected ones and returns the rest, ready to propose.
    async fn batch(&self, items: Vec<WriteItem>) -> Vec<WriteItem> {
        if self.hooks.current().is_empty() || items.iter().all(|i| i.judged) {
            return items;
        }
        let (todo, mut ready): (Vec<WriteItem>, Vec<WriteItem>) = items.into_iter().partition(|i| !i.judged);
        let writes: Vec<_> = todo.iter().filter_map(|i| super::hooks::write_of(&i.proposal, &self.sm)).collect();
        if writes.len() != todo.len() {
            // Only puts and deletes are sent unjudged; anything else passes as is.
            ready.extend(todo);
            return ready;
        }
        for (item, verdict) in todo.into_iter().zip(self.hooks.judge_many(writes).await) {
            match verdict {
                Ok(j) => ready.push(WriteItem { proposal: super::hooks::with_judgement(item.proposal, j), ..item }),
                Err(e) => {
                    let _ = item.reply.send(Err(super::hooks::judge_error(e)));
                }
            }
        }
        ready
    }
}

async fn write_loop(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<WriteItem>,
    in_flight: Arc<Semaphore>,
    judge: Judge,
) {
    let judge = Arc::new(judge);
    // An item that conflicted with the previous batch and opens the next one.
    let mut carry: Option<WriteItem> = None;
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // Taken only once there is work, so an idle group holds no permit
        // and `pause_writes` can take them all.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        let mut bytes = size_of(&first.proposal);
        if let Some(k) = first.proposal.key() {
            keys.insert(k.to_vec());
        }
        let mut items = vec![first];
        while items.len() < MAX_OPS && bytes < MAX_BYTES {
            let Ok(item) = rx.try_recv() else { break };
            if item.proposal.key().is_some_and(|k| keys.contains(k)) || bytes + size_of(&item.proposal) > MAX_BYTES {
                carry = Some(item);
                break;
            }
            if let Some(k) = item.proposal.key() {
                keys.insert(k.to_vec());
            }
            bytes += size_of(&item.proposal);
            items.push(item);
        }
        let raft = raft.clone();
        let judge = judge.clone();
        tokio::spawn(async move {
            let items = judge.batch(items).await;
            if items.is_empty() {
                return;
            }
            let now = now_ms();
            let (ops, replies): (Vec<_>, Vec<_>) =
                items.into_iter().map(|i| (i.proposal.into_op(now), i.reply)).unzip();
            let n = ops.len();
            let result = raft.client_write(Command { now_ms: now, ops }).await;
            drop(permit);
            match result {
                Ok(resp) if resp.data.len() == n => {
                    for (reply, r) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(Attempt::Done(r)));
                    }
                }
                Ok(resp) => {
                    let msg = format!("group {group}: {} results for {n} ops", resp.data.len());
                    for reply in replies {
                        let _ = reply.send(Err(NodeError::Internal(msg.clone())));
                    }
                }
                // Stopped: the replica is leaving this node; another replica answers.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                | Err(RaftError::Fatal(openraft::error::Fatal::Stopped)) => {
                    for reply in replies {
                        let _ = reply.send(Ok(Attempt::Retry));
                    }
                }
                Err(e) => {
                    let msg = format!("raft group {group}: {e}");
                    for reply in replies {
                        let _ = reply.send(Err(NodeError::Unavailable(msg.clone())));
                    }
                }
            }
        });
    }
}

async fn read_loop(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<ReadReply>>,
    lease: Arc<ReadLease>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let begun = lease.begin();
        let outcome = match raft.ensure_linearizable().await {
            Ok(_) => Ok(true),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))
            | Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
            | Err(RaftError::Fatal(openraft::error::Fatal::Stopped)) => Ok(false),
            Err(RaftError::Fatal(e)) => Err(format!("raft group {group} stopped: {e}")),
        };
        if matches!(outcome, Ok(true)) {
            lease.grant(begun);
        } else {
            lease.revoke();
        }
        for w in waiters {
            let _ = w.send(match &outcome {
                Ok(true) => Ok(Attempt::Done(())),
                Ok(false) => Ok(Attempt::Retry),
                Err(m) => Err(NodeError::Unavailable(m.clone())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_successful_check_grants_the_lease() {
        let lease = ReadLease::new(Some(LONG));
        assert!(!lease.holds(), "no lease before any check");
        lease.grant(lease.begin());
        assert!(lease.holds());
    }

    #[test]
    fn a_vote_during_the_check_grants_nothing() {
        let lease = ReadLease::new(Some(LONG));
        let begun = lease.begin();
        lease.revoke();
        lease.grant(begun);
        assert!(!lease.holds(), "the check overlapped a vote: its quorum may already be gone");
        lease.grant(lease.begin());
        assert!(lease.holds(), "a check begun after the vote grants it again");
    }

    #[test]
    fn a_vote_ends_a_held_lease() {
        let lease = ReadLease::new(Some(LONG));
        lease.grant(lease.begin());
        lease.revoke();
        assert!(!lease.holds());
    }

    #[test]
    fn the_lease_counts_from_before_the_check() {
        let lease = ReadLease::new(Some(Duration::ZERO));
        lease.grant(lease.begin());
        assert!(!lease.holds(), "a zero-length lease counted from the check's start has already ended");
    }

    #[test]
    fn leases_can_be_turned_off() {
        let lease = ReadLease::new(None);
        lease.grant(lease.begin());
        assert!(!lease.holds());
    }

    #[test]
    fn the_lease_is_a_quarter_of_the_longest_election_timeout() {
        let tuning = crate::raft::RaftTuning { election_max_ms: 2_500, ..Default::default() };
        assert_eq!(tuning.read_lease(), Some(Duration::from_millis(625)));
        let off = crate::raft::RaftTuning { lease_reads: false, ..tuning };
        assert_eq!(off.read_lease(), None);
    }
}
