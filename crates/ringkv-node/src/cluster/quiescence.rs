//! Quiescence: shard groups with nothing to do stop ticking.
//!
//! An idle Raft group still costs a heartbeat per follower per interval, and
//! each heartbeat wakes openraft's tasks on both ends. With hundreds of
//! groups that is most of an idle node's CPU. So, as TiKV's hibernate
//! regions do, a leader puts a group that has been idle for a while to
//! sleep, and one message per peer per heartbeat interval (a *beacon*)
//! replaces the heartbeats of every sleeping group:
//!
//! - **Falling asleep.** A shard group this node leads becomes a candidate
//!   once it has taken no client request for [`IDLE_FOR`] heartbeat
//!   intervals, every voter holds every entry, and its membership is a plain
//!   set of voters (no learner, no joint change). The next beacon lists it;
//!   a follower that agrees on the leader and term stops its openraft tick
//!   (no election timer) and says so. When every follower agreed, the leader
//!   stops its tick too (no heartbeats).
//! - **Staying asleep.** The leader's beacon lists its sleeping groups every
//!   interval. A follower that hears no beacon listing a group for the
//!   maximum election timeout wakes it: its tick resumes, and as its leader
//!   has been silent since long before, it campaigns at once. So a dead,
//!   paused or cut-off leader costs a sleeping group a little less time than
//!   an awake one (which waits openraft's leader lease plus an election
//!   timeout).
//! - **Waking.** A client request through the group's batchers wakes the
//!   leader at once ([`Quiet::touch`]); so does a new log entry, a follower
//!   that refused the beacon, or losing leadership, at the next interval.
//!   An awake leader no longer lists the group, so its followers wake within
//!   an election timeout; until then openraft replicates as usual, since
//!   entries and commit updates do not wait for the tick.
//!
//! Safety does not depend on any of this: ticks only start elections and
//! heartbeats, and every Raft rule (votes, the followers' leader lease that
//! read leases rely on) still holds. The meta group never sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::membership::{MembershipOp, MembershipReply};
use super::workers::Worker;
use super::{Group, Node, META_GROUP};
use crate::raft::{NodeId, Raft};
use crate::storage::GroupId;

/// Heartbeat intervals without a client request before a group may sleep.
pub const IDLE_FOR: u32 = 8;

/// A group's quiescence state on this node.
pub struct Quiet {
    raft: Raft,
    /// True while the group sleeps here in either role: the hot path reads only this.
    asleep: AtomicBool,
    state: Mutex<State>,
    /// When the batchers last took a client request, in ms since [`clock_base`].
    last_request_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Awake,
    /// Leading, listed in beacons, tick still running: asleep once every follower agrees.
    Candidate {
        index: Option<u64>,
    },
    /// Leading with the tick stopped, as of log index `index`.
    Leading {
        index: Option<u64>,
    },
    /// Following `leader` with the tick stopped; `heard` is its last beacon listing the group.
    Following {
        leader: NodeId,
        heard: Instant,
    },
}

/// A fixed instant the request timestamps count from.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn ms_since_base(at: Instant) -> u64 {
    at.saturating_duration_since(clock_base()).as_millis() as u64
}

impl Quiet {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            asleep: AtomicBool::new(false),
            state: Mutex::new(State::Awake),
            last_request_ms: AtomicU64::new(ms_since_base(Instant::now())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client request reached the group's batchers: a sleeping leader
    /// wakes now. A sleeping follower stays asleep (awake under a sleeping
    /// leader it would campaign); the request is forwarded to the leader,
    /// which wakes.
    pub fn touch(&self) {
        self.last_request_ms.store(ms_since_base(Instant::now()), Ordering::Relaxed);
        if self.asleep.load(Ordering::Relaxed) {
            let mut state = self.state();
            if matches!(*state, State::Leading { .. } | State::Candidate { .. }) {
                self.set(&mut state, State::Awake);
            }
        }
    }

    /// Moves to `next`, starting or stopping openraft's tick to match.
    fn set(&self, state: &mut State, next: State) {
        let ticking = matches!(next, State::Awake | State::Candidate { .. });
        let was_ticking = matches!(*state, State::Awake | State::Candidate { .. });
        if ticking != was_ticking {
            self.raft.runtime_config().tick(ticking);
        }
        self.asleep.store(!matches!(next, State::Awake), Ordering::Relaxed);
        *state = next;
    }

    fn idle_since(&self) -> Instant {
        clock_base() + Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed))
    }

    /// True while the group sleeps here (either role).
    pub fn is_asleep(&self) -> bool {
        matches!(*self.state(), State::Leading { .. } | State::Following { .. })
    }
}

/// What a leader needs to know about one of its groups to decide on sleep.
struct LeaderView {
    followers: BTreeSet<NodeId>,
    term: u64,
    last_index: Option<u64>,
    /// Every follower holds every entry, and the membership is plain voters.
    settled: bool,
}

fn leader_view(g: &Group, me: NodeId) -> Option<LeaderView> {
    let m = g.raft.metrics();
    let m = m.borrow();
    if m.current_leader != Some(me) {
        return None;
    }
    let membership = m.membership_config.membership();
    let plain = membership.get_joint_config().len() == 1 && membership.learner_ids().next().is_none();
    let followers: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != me).collect();
    let matched = |id: &NodeId| {
        m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index) == m.last_log_index
    };
    let settled = plain && !followers.is_empty() && followers.iter().all(matched);
    Some(LeaderView { followers, term: m.current_term, last_index: m.last_log_index, settled })
}

impl Node {
    /// Puts idle groups to sleep and keeps them asleep (module docs).
    /// Started only with `raft.quiesce` on.
    pub(super) async fn quiescence_loop(self, w: Worker) {
        let interval = Duration::from_millis(self.config().raft.heartbeat_ms);
        let wake_after = Duration::from_millis(self.config().raft.election_max_ms);
        let mut stop = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            w.round();
            let groups: Vec<Arc<Group>> = self.groups().into_iter().filter(|g| g.id != META_GROUP).collect();
            let beacons = self.reconcile_sleep(&groups, interval * IDLE_FOR, wake_after);
            let mut agreed: BTreeMap<GroupId, BTreeSet<NodeId>> = BTreeMap::new();
            let node = &self;
            // Bounded by the interval, so a peer that does not answer (cut
            // off, paused) delays no other peer's next beacon.
            let replies = futures::future::join_all(beacons.into_iter().map(|(peer, groups)| async move {
                let beacon = MembershipOp::Sleep { leader: node.id(), groups };
                let reply = tokio::time::timeout(interval, node.send_membership_op(META_GROUP, peer, &beacon)).await;
                (peer, reply.unwrap_or(MembershipReply::NotLeader))
            }))
            .await;
            for (peer, reply) in replies {
                if let MembershipReply::Asleep(groups) = reply {
                    for g in groups {
                        agreed.entry(g).or_default().insert(peer);
                    }
                }
            }
            self.settle_sleep(&groups, &agreed);
            let asleep = groups.iter().filter(|g| g.quiet().is_asleep()).count();
            metrics::gauge!(crate::telemetry::RAFT_GROUPS_QUIESCENT).set(asleep as f64);
        }
    }

    /// One interval's checks before the beacons go out: wakes what must
    /// wake, picks new candidates, and returns each peer's beacon: the
    /// (group, term) pairs it follows this node in, asleep or about to be.
    fn reconcile_sleep(
        &self,
        groups: &[Arc<Group>],
        idle_for: Duration,
        wake_after: Duration,
    ) -> BTreeMap<NodeId, Vec<(GroupId, u64)>> {
        let me = self.id();
        let now = Instant::now();
        let mut beacons: BTreeMap<NodeId, Vec<(GroupId, u64)>> = BTreeMap::new();
        for g in groups {
            let quiet = g.quiet();
            let view = leader_view(g, me);
            let mut state = quiet.state();
            let next = match (*state, &view) {
                (State::Following { leader, heard }, _) => {
                    let still = g.raft.metrics().borrow().current_leader == Some(leader);
                    if !still || now.duration_since(heard) > wake_after {
                        State::Awake
                    } else {
                        continue;
                    }
                }
                (State::Leading { index } | State::Candidate { index }, Some(v))
                    if v.settled && v.last_index == index =>
                {
                    *state
                }
                (State::Leading { .. } | State::Candidate { .. }, _) => State::Awake,
                (State::Awake, Some(v)) if v.settled && now.duration_since(quiet.idle_since()) >= idle_for => {
                    State::Candidate { index: v.last_index }
                }
                (State::Awake, _) => continue,
            };
            quiet.set(&mut state, next);
            if let (State::Leading { .. } | State::Candidate { .. }, Some(v)) = (next, view) {
                for f in v.followers {
                    beacons.entry(f).or_default().push((g.id, v.term));
                }
            }
        }
        beacons
    }

    /// After the beacons: candidates every follower agreed to sleep; sleeping
    /// groups a follower did not agree on wake.
    fn settle_sleep(&self, groups: &[Arc<Group>], agreed: &BTreeMap<GroupId, BTreeSet<NodeId>>) {
        let me = self.id();
        for g in groups {
            let quiet = g.quiet();
            let mut state = quiet.state();
            let index = match *state {
                State::Leading { index } | State::Candidate { index } => index,
                _ => continue,
            };
            let all_agreed = leader_view(g, me)
                .is_some_and(|v| v.last_index == index && agreed.get(&g.id).is_some_and(|a| v.followers.is_subset(a)));
            let next = if all_agreed { State::Leading { index } } else { State::Awake };
            if next != *state {
                quiet.set(&mut state, next);
            }
        }
    }

    /// A beacon from `leader`: each listed group this node follows `leader`
    /// in, at that term, sleeps (or stays asleep). Returns those groups.
    pub(super) fn beacon_from(&self, leader: NodeId, groups: Vec<(GroupId, u64)>) -> Vec<GroupId> {
        if !self.config().raft.quiesce {
            return Vec::new();
        }
        let now = Instant::now();
        groups
            .into_iter()
            .filter(|(gid, term)| {
                if *gid == META_GROUP {
                    return false;
                }
                let Ok(g) = self.group(*gid) else { return false };
                let follows = {
                    let m = g.raft.metrics();
                    let m = m.borrow();
                    m.current_leader == Some(leader) && m.current_term == *term && leader != self.id()
                };
                let quiet = g.quiet();
                let mut state = quiet.state();
                match (*state, follows) {
                    (State::Awake | State::Following { .. }, true) => {
                        quiet.set(&mut state, State::Following { leader, heard: now });
                        true
                    }
                    _ => false,
                }
            })
            .map(|(gid, _)| gid)
            .collect()
    }
}
