//! Checkers for recorded histories ([`crate::history`]): linearizability of
//! the register, durability of acknowledged writes, eventual reads and sets.
//!
//! # Linearizability ([`check_history`])
//!
//! A register history is linearizable iff each key's sub-history is
//! (P-compositionality), so the history is split per key and keys are
//! checked independently, on several threads.
//!
//! ## The model
//!
//! A key's state is `None` (absent, the initial state: keys must be fresh)
//! or `Some((value, version))`. Versions are Raft log indexes: unique per
//! key, strictly increasing with every write to it, not consecutive.
//!
//! - `Put(v)` acknowledged with version `n`: allowed iff `n` is greater than
//!   the current version; the state becomes `(v, n)`.
//! - `Cas(if_version = x, v)` acknowledged with `n`: allowed iff the current
//!   version is `x` (`x = 0`: the key is absent) and `n > x`; the state becomes
//!   `(v, n)`. A *failed* CAS (`ABORTED`) is allowed iff its condition did not
//!   hold; the state is unchanged.
//! - `Get` returning `None` is allowed iff the key is absent; returning
//!   `(v, n)` iff the state is exactly `(v, n)`.
//!
//! Writes whose outcome is unknown have no version. After one, the state is
//! `(v, unknown version ≥ floor)`, `floor` being one more than the least
//! version the previous state could have had. A later read returning
//! `(v, n)` with `n ≥ floor` reveals the version (the state becomes exact),
//! a later acknowledged write needs a version `> floor`, a CAS with
//! `if_version = x ≥ floor` may succeed (revealing `x`). Choosing unknown
//! versions as small as possible is never worse, so tracking only the floor
//! is exact for puts, reads and successful CAS. One relaxation: a failed CAS
//! on an unknown version `≥ floor` is always allowed (the hole it punches in
//! the possible versions is not tracked, except at the floor itself). It
//! can hide an anomaly, never invent one.
//!
//! Histories are filtered before the search:
//! - unknown and failed reads, failed puts and eventual reads are dropped
//!   (they constrain nothing / definitely did not happen);
//! - unknown writes get a return time of +infinity: they may be linearized
//!   anywhere after their invoke, or never (the search succeeds as soon as
//!   every *completed* op is linearized; the leftovers go at the end, which
//!   is always allowed: a put always applies, an unknown CAS whose condition
//!   fails is a no-op);
//! - on keys where no CAS failed and every CAS names version 0 or the version
//!   of an acknowledged write, an unknown write whose value no read returned
//!   is dropped: nothing can observe it (no read returns its value, no CAS
//!   can name its version), so removing it from any linearization leaves a
//!   linearization, and never happening is one of its choices anyway;
//! - on other keys, unknown puts whose value no read returned all have the
//!   same effect (an unobservable value, one more unknown version), so they
//!   are made interchangeable (see below).
//!
//! ## The algorithm
//!
//! Wing & Gong's search with Lowe's memoization, as in Porcupine. Calls and
//! returns are sorted by time into a doubly linked list (a call sorts before
//! a return at the same instant, so touching intervals count as
//! concurrent). The calls before the first return are the candidates: the
//! search linearizes one if the model allows it and the configuration (the
//! set of linearized ops as a bitset, the model state) was not seen before,
//! lifts it out of the list and starts over from the head. Reaching a return
//! means that op had to be linearized already: backtrack. Nothing left to
//! backtrack is a violation. Three reductions, each exact (it never turns a
//! linearizable history into a violation; checked against a brute-force
//! search in the tests):
//! - **forced reads**: a candidate read matching the state, when the version
//!   is exact or only one op writes that value, is linearized first and
//!   alone: no write can come before it in any linearization from there
//!   (what it returns would be gone for good), so this loses nothing;
//! - **interchangeable unknown puts**: of the unread unknown puts available
//!   in a configuration, only the earliest is tried;
//! - **dead unknown CAS**: one whose named version the state has passed is
//!   skipped (versions only grow).
//!
//! Complexity: the memo bounds the work by the number of distinct
//! configurations, at most about `n · 2^c · s` for `n` ops, concurrency `c`
//! and `s` reachable states; each step costs `O(n/64)` for the bitset, each
//! configuration `O(c)` to scan its candidates. Unknown writes stay
//! concurrent with everything after their invoke, which is why the
//! reductions above matter. The search is bounded by
//! [`CheckOptions::max_steps`] per key (a step = one attempt to linearize
//! an op; memory is at most one memo entry of `n/64 + 2` words per step):
//! past it the key's verdict is [`KeyVerdict::TooComplex`], never a hang.
//! For scale (debug build): 1 000 ops on one key from 10 concurrent clients
//! with 10% unknown outcomes take 30k–500k steps, about a second at most.
//!
//! ## Minimal failing sub-history
//!
//! For a violating key the ops are shrunk greedily (chunks of halving size,
//! then single ops until nothing more can go): a removal is kept if the rest
//! is still a violation and still well formed, i.e. every remaining
//! observation keeps a cause: a read keeps a write of the value it returned,
//! a successful CAS a write that can have made the version it named, a CAS
//! that failed because the key existed some write. The result is 1-minimal:
//! removing any single further op makes it linearizable or ill formed.
//!
//! # Other checks
//!
//! - [`check_durability`]: given a final linearizable read of every key
//!   after healing, every acknowledged write is present or was overwritten
//!   by a write that may have been linearized after it.
//! - [`check_eventual_reads`]: eventual reads only return values some put
//!   (acknowledged or unknown) wrote, with that put's version when known,
//!   and not before the put was invoked. [`check_convergence`] compares what
//!   each replica serves after quiescence with the final reads.
//! - [`check_set`]: every acknowledged add is present, nothing is present
//!   that was never attempted (or definitely failed), nothing twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::history::{Op, OpRecord, OpResult, Outcome, Versioned};

/// Limits for [`check_history`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Search steps (attempts to linearize an op) per key before giving up
    /// with [`KeyVerdict::TooComplex`]. Default: 2 000 000.
    pub max_steps: u64,
    /// Shrink violations to a minimal failing sub-history. Default: true.
    pub shrink: bool,
    /// Total search steps the shrinking of one key may spend; when spent,
    /// the smallest violating sub-history found so far is reported.
    /// Default: 20 000 000.
    pub shrink_max_steps: u64,
    /// Keys checked in parallel. Default: the available parallelism.
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_steps: 2_000_000,
            shrink: true,
            shrink_max_steps: 20_000_000,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

/// The verdict for one key.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum KeyVerdict {
    /// Linearizable. `ops`: ops searched after filtering.
    Ok { ops: usize, steps: u64 },
    /// Not linearizable.
    Violation(Violation),
    /// The search ran out of steps: neither proven nor refuted.
    TooComplex { ops: usize, steps: u64 },
    /// The history of this key is not well formed (e.g. a read with a write
    /// result, a completion before the invoke).
    Malformed { reason: String },
}

impl KeyVerdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, KeyVerdict::Ok { .. })
    }
}

/// A key whose history is not linearizable.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub key: String,
    /// The minimal failing sub-history (all of the key's checked ops when
    /// shrinking is off), in invoke order.
    pub ops: Vec<OpRecord>,
    /// Ops of the key that took part in the search.
    pub checked_ops: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: NOT LINEARIZABLE; minimal failing sub-history ({} of {} ops):",
            self.key,
            self.ops.len(),
            self.checked_ops
        )?;
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Verdicts of [`check_history`], per key.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub keys: BTreeMap<String, KeyVerdict>,
}

impl Report {
    /// True iff every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(KeyVerdict::is_ok)
    }

    pub fn violations(&self) -> Vec<&Violation> {
        self.keys
            .values()
            .filter_map(|v| match v {
                KeyVerdict::Violation(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// Keys that are neither proven nor refuted (too complex or malformed).
    pub fn undecided(&self) -> Vec<(&str, &KeyVerdict)> {
        self.keys
            .iter()
            .filter(|(_, v)| matches!(v, KeyVerdict::TooComplex { .. } | KeyVerdict::Malformed { .. }))
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    /// Writes `dir/verdict.txt` (this report's `Display`) and
    /// `dir/verdict.json`, creating `dir`.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("verdict.txt"), self.to_string())?;
        std::fs::write(dir.join("verdict.json"), serde_json::to_vec_pretty(self)?)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut ok, mut bad, mut complex, mut malformed) = (0, 0, 0, 0);
        for v in self.keys.values() {
            match v {
                KeyVerdict::Ok { .. } => ok += 1,
                KeyVerdict::Violation(_) => bad += 1,
                KeyVerdict::TooComplex { .. } => complex += 1,
                KeyVerdict::Malformed { .. } => malformed += 1,
            }
        }
        writeln!(
            f,
            "linearizability: {} keys: {ok} linearizable, {bad} violations, {complex} too complex, {malformed} malformed",
            self.keys.len()
        )?;
        for (key, v) in &self.keys {
            match v {
                KeyVerdict::Ok { .. } => {}
                KeyVerdict::Violation(v) => write!(f, "{v}")?,
                KeyVerdict::TooComplex { ops, steps } => {
                    writeln!(f, "key {key:?}: TOO COMPLEX: gave up after {steps} steps over {ops} ops")?
                }
                KeyVerdict::Malformed { reason } => writeln!(f, "key {key:?}: MALFORMED: {reason}")?,
            }
        }
        Ok(())
    }
}

/// Checks a whole history for linearizability, key by key.
pub fn check_history(ops: &[OpRecord], opts: &CheckOptions) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<(&str, Vec<&OpRecord>)> = by_key.into_iter().collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..opts.threads.clamp(1, keys.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, recs)) = keys.get(i) else { break };
                let verdict = check_key(key, recs, opts);
                results.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), verdict);
            });
        }
    });
    Report { keys: results.into_inner().unwrap_or_else(|e| e.into_inner()) }
}

/// Checks the ops of one key (every record must be on `key`).
pub fn check_key(key: &str, recs: &[&OpRecord], opts: &CheckOptions) -> KeyVerdict {
    if let Some(r) = recs.iter().find(|r| r.key != key) {
        return KeyVerdict::Malformed { reason: format!("op #{} is on key {:?}, not {key:?}", r.id, r.key) };
    }
    let kops = match prepare(recs) {
        Ok(k) => k,
        Err(reason) => return KeyVerdict::Malformed { reason },
    };
    match search(&kops, opts.max_steps) {
        Search::Linearizable { steps } => KeyVerdict::Ok { ops: kops.len(), steps },
        Search::TooComplex { steps } => KeyVerdict::TooComplex { ops: kops.len(), steps },
        Search::Violation { steps } => {
            let keep: Vec<usize> = if opts.shrink {
                // Each trial may spend what the full search needed, and more.
                let per_trial = steps.saturating_mul(2).max(100_000).min(opts.max_steps);
                shrink(&kops, per_trial, opts.shrink_max_steps)
            } else {
                (0..kops.len()).collect()
            };
            let mut ops: Vec<OpRecord> = keep.iter().map(|&i| recs[kops[i].rec].clone()).collect();
            ops.sort_by_key(|o| (o.invoke_ns, o.id));
            KeyVerdict::Violation(Violation { key: key.to_string(), ops, checked_ops: kops.len() })
        }
    }
}

// ---------------------------------------------------------------------------
// Model

/// An op as the search sees it. Values are interned per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An acknowledged linearizable read.
    Read(Option<(u32, u64)>),
    /// A put (`cond: None`) or CAS that took effect (version known) or may
    /// have (version unknown).
    Write { value: u32, version: Option<u64>, cond: Option<u64> },
    /// A CAS whose condition did not hold.
    CasFail { if_version: u64 },
}

#[derive(Debug, Clone, Copy)]
struct KOp {
    invoke: u64,
    /// `None`: +infinity (unknown outcome).
    ret: Option<u64>,
    kind: Kind,
    /// Index into the key's records.
    rec: usize,
}

/// Register state. `version` is exact when `known`, else the least version
/// the state can have (its floor). For an absent key it is the floor for
/// the next write (0 initially: versions start at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    value: Option<u32>,
    version: u64,
    known: bool,
}

const INITIAL: State = State { value: None, version: 0, known: true };

impl State {
    /// Encodes the state into two words for the memo.
    fn words(self) -> [u64; 2] {
        [self.value.map_or(0, |v| u64::from(v) + 1), self.version | (u64::from(self.known) << 63)]
    }
}

/// Applies `kind` to `s`; `None` if the model forbids it.
fn step(s: State, kind: &Kind) -> Option<State> {
    match *kind {
        Kind::Read(None) => s.value.is_none().then_some(s),
        Kind::Read(Some((value, version))) => {
            if s.value != Some(value) {
                None
            } else if s.known {
                (s.version == version).then_some(s)
            } else {
                (version >= s.version).then_some(State { value: s.value, version, known: true })
            }
        }
        Kind::Write { value, version, cond } => {
            // The current version, chosen as small as allowed when unknown.
            let current = match cond {
                None => s.version,
                Some(0) => {
                    if s.value.is_some() {
                        return None;
                    }
                    s.version
                }
                Some(x) => {
                    s.value?;
                    let holds = if s.known { s.version == x } else { x >= s.version };
                    if !holds {
                        return None;
                    }
                    x
                }
            };
            match version {
                Some(n) => (n > current).then_some(State { value: Some(value), version: n, known: true }),
                None => Some(State { value: Some(value), version: current.saturating_add(1), known: false }),
            }
        }
        Kind::CasFail { if_version } => {
            if if_version == 0 {
                s.value.is_some().then_some(s)
            } else if s.value.is_none() {
                Some(s)
            } else if s.known {
                (s.version != if_version).then_some(s)
            } else if if_version == s.version {
                // The unknown version is not the floor: raise it.
                Some(State { version: s.version.saturating_add(1), ..s })
            } else {
                Some(s)
            }
        }
    }
}

/// Turns a key's records into search ops (see the module doc for what is
/// dropped).
fn prepare(recs: &[&OpRecord]) -> Result<Vec<KOp>, String> {
    fn intern<'a>(values: &mut HashMap<&'a str, u32>, s: &'a str) -> u32 {
        let next = u32::try_from(values.len()).unwrap_or(u32::MAX);
        *values.entry(s).or_insert(next)
    }
    let mut values = HashMap::new();
    let mut out = Vec::new();
    for (i, &r) in recs.iter().enumerate() {
        if let Some(c) = r.complete_ns {
            if c < r.invoke_ns {
                return Err(format!("op #{} completed ({c}) before it was invoked ({})", r.id, r.invoke_ns));
            }
        }
        let done =
            || r.complete_ns.ok_or_else(|| format!("op #{} has outcome {} but no completion time", r.id, r.outcome));
        let unknown = r.outcome.is_unknown();
        let kind = match (&r.op, &r.outcome) {
            (Op::GetEventual, _) | (Op::Get, Outcome::Fail { .. } | Outcome::Unknown { .. }) => None,
            (Op::Put { .. }, Outcome::Fail { .. }) => None,
            (Op::Get, Outcome::Ok(OpResult::Read(found))) => {
                Some(Kind::Read(found.as_ref().map(|v| (intern(&mut values, &v.value), v.version))))
            }
            (Op::Put { value }, Outcome::Ok(OpResult::Written { version })) => {
                Some(Kind::Write { value: intern(&mut values, value), version: Some(*version), cond: None })
            }
            (Op::Put { value }, Outcome::Unknown { .. }) => {
                Some(Kind::Write { value: intern(&mut values, value), version: None, cond: None })
            }
            (Op::Cas { if_version, value }, Outcome::Ok(OpResult::Written { version })) => Some(Kind::Write {
                value: intern(&mut values, value),
                version: Some(*version),
                cond: Some(*if_version),
            }),
            (Op::Cas { if_version, value }, Outcome::Unknown { .. }) => {
                Some(Kind::Write { value: intern(&mut values, value), version: None, cond: Some(*if_version) })
            }
            (Op::Cas { if_version, .. }, Outcome::Fail { .. }) => Some(Kind::CasFail { if_version: *if_version }),
            (op, outcome) => return Err(format!("op #{}: `{op}` cannot have outcome `{outcome}`", r.id)),
        };
        if let Some(kind) = kind {
            let ret = if unknown { None } else { Some(done()?) };
            out.push(KOp { invoke: r.invoke_ns, ret, kind, rec: i });
        }
    }
    simplify_unknown_writes(&mut out);
    Ok(out)
}

/// The value of an unknown put whose value nobody read: such puts all have
/// the same effect, so the search treats them as interchangeable.
const BLUR: u32 = u32::MAX;

fn is_blur(kind: &Kind) -> bool {
    matches!(kind, Kind::Write { value: BLUR, version: None, cond: None })
}

/// An unknown CAS that can no longer apply: versions only grow, so once the
/// current version (or its floor) passed the one it names, it never will.
/// Skipped without counting a step: pending unknown CAS ops stay in every
/// later configuration.
fn is_dead(s: State, kind: &Kind) -> bool {
    match *kind {
        Kind::Write { version: None, cond: Some(0), .. } => s.value.is_some(),
        Kind::Write { version: None, cond: Some(x), .. } => s.version > x,
        _ => false,
    }
}

/// Drops unknown writes nothing can observe, or makes unread unknown puts
/// interchangeable; see the module doc for why each is sound.
fn simplify_unknown_writes(ops: &mut Vec<KOp>) {
    let read_values: HashSet<u32> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read(Some((v, _))) => Some(v),
            _ => None,
        })
        .collect();
    let acked_versions: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Write { version: Some(v), .. } => Some(v),
            _ => None,
        })
        .collect();
    let cas_blind = ops.iter().all(|o| match o.kind {
        Kind::CasFail { .. } => false,
        Kind::Write { cond: Some(x), .. } => x == 0 || acked_versions.contains(&x),
        _ => true,
    });
    if cas_blind {
        ops.retain(|o| !matches!(o.kind, Kind::Write { version: None, value, .. } if !read_values.contains(&value)));
        return;
    }
    for o in ops {
        if let Kind::Write { value, version: None, cond: None } = &mut o.kind {
            if !read_values.contains(value) {
                *value = BLUR;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Search

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable { steps: u64 },
    Violation { steps: u64 },
    TooComplex { steps: u64 },
}

/// FxHash-style hasher for the memo: its keys are plain words.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const NIL: usize = usize::MAX;

/// The Wing–Gong–Lowe search over one key's ops; see the module doc.
struct Searcher<'a> {
    ops: &'a [KOp],
    /// Doubly linked list of entries: `2i` is the call of op `i`, `2i + 1`
    /// its return, `2n` the head.
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    bits: Vec<u64>,
    memo: HashSet<Box<[u64]>, BuildHasherDefault<WordHasher>>,
    scratch: Vec<u64>,
    stack: Vec<Frame>,
    state: State,
    completed_left: usize,
    /// Whether the current configuration already tried an unread unknown
    /// put: the others available are interchangeable with it.
    blur_tried: bool,
    /// Per op: a read of a value exactly one op writes.
    sole_writer: Vec<bool>,
}

/// An op linearized on the current path, with what to restore when it is
/// taken back.
struct Frame {
    op: usize,
    state: State,
    blur_tried: bool,
    /// Linearized as the only choice: backtracking past it backtracks its
    /// configuration too.
    forced: bool,
}

enum Phase {
    /// Entered a new configuration.
    Enter,
    /// Trying the candidates from this list entry on.
    Scan(usize),
    /// The current configuration has no way forward.
    Backtrack,
}

impl<'a> Searcher<'a> {
    fn new(ops: &'a [KOp]) -> Self {
        let n = ops.len();
        let head = 2 * n;
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, o) in ops.iter().enumerate() {
            // At equal times calls sort first: touching intervals overlap.
            order.push((o.invoke, 0, 2 * i));
            order.push((o.ret.unwrap_or(u64::MAX), 1, 2 * i + 1));
        }
        order.sort_unstable();
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &(_, _, e) in &order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }
        let mut writers: HashMap<u32, usize> = HashMap::new();
        for o in ops {
            if let Kind::Write { value, .. } = o.kind {
                *writers.entry(value).or_default() += 1;
            }
        }
        let sole_writer =
            ops.iter().map(|o| matches!(o.kind, Kind::Read(Some((v, _))) if writers.get(&v) == Some(&1))).collect();
        Self {
            sole_writer,
            ops,
            next,
            prev,
            head,
            bits: vec![0; n.div_ceil(64)],
            memo: HashSet::default(),
            scratch: Vec::with_capacity(n.div_ceil(64) + 2),
            stack: Vec::new(),
            state: INITIAL,
            completed_left: ops.iter().filter(|o| o.ret.is_some()).count(),
            blur_tried: false,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Linearizes op `i` leading to state `s`, unless that configuration was
    /// seen before. Returns whether it did.
    fn enter(&mut self, i: usize, s: State, forced: bool) -> bool {
        self.bits[i / 64] |= 1 << (i % 64);
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.bits);
        self.scratch.extend_from_slice(&s.words());
        if self.memo.contains(self.scratch.as_slice()) {
            self.bits[i / 64] &= !(1 << (i % 64));
            return false;
        }
        self.memo.insert(self.scratch.clone().into_boxed_slice());
        self.stack.push(Frame { op: i, state: self.state, blur_tried: self.blur_tried, forced });
        self.state = s;
        self.unlink(2 * i);
        self.unlink(2 * i + 1);
        if self.ops[i].ret.is_some() {
            self.completed_left -= 1;
        }
        true
    }

    /// Takes back the last linearized op; `None` when there is none.
    fn leave(&mut self) -> Option<Frame> {
        let f = self.stack.pop()?;
        let i = f.op;
        self.state = f.state;
        self.blur_tried = f.blur_tried;
        self.bits[i / 64] &= !(1 << (i % 64));
        self.relink(2 * i + 1);
        self.relink(2 * i);
        if self.ops[i].ret.is_some() {
            self.completed_left += 1;
        }
        Some(f)
    }

    /// A read the current configuration may linearize first without loss
    /// of generality: a candidate read that matches the state, when the
    /// state's version is exact or the read's value has a single writer.
    /// In any linearization from here no write can precede such a read (the
    /// value and version it returns would be gone for good: versions only
    /// grow, and nothing else writes the value), so moving it first keeps
    /// every later state; it only fixes the current version earlier, which
    /// a concrete linearization has fixed anyway.
    fn forced_read(&self) -> Option<(usize, State)> {
        let mut e = self.next[self.head];
        while e != NIL && e.is_multiple_of(2) {
            let i = e / 2;
            if matches!(self.ops[i].kind, Kind::Read(_)) && (self.state.known || self.sole_writer[i]) {
                if let Some(s) = step(self.state, &self.ops[i].kind) {
                    return Some((i, s));
                }
            }
            e = self.next[e];
        }
        None
    }

    fn run(&mut self, max_steps: u64) -> Search {
        let mut steps = 0u64;
        let mut phase = Phase::Enter;
        loop {
            phase = match phase {
                Phase::Enter => {
                    if self.completed_left == 0 {
                        return Search::Linearizable { steps };
                    }
                    self.blur_tried = false;
                    match self.forced_read() {
                        Some((i, s)) => {
                            steps += 1;
                            if steps > max_steps {
                                return Search::TooComplex { steps };
                            }
                            if self.enter(i, s, true) {
                                Phase::Enter
                            } else {
                                Phase::Backtrack
                            }
                        }
                        None => Phase::Scan(self.next[self.head]),
                    }
                }
                Phase::Scan(e) if e != NIL && e.is_multiple_of(2) => {
                    let i = e / 2;
                    let kind = &self.ops[i].kind;
                    if is_blur(kind) && self.blur_tried || is_dead(self.state, kind) {
                        Phase::Scan(self.next[e])
                    } else {
                        self.blur_tried |= is_blur(kind);
                        steps += 1;
                        if steps > max_steps {
                            return Search::TooComplex { steps };
                        }
                        match step(self.state, kind) {
                            Some(s) if self.enter(i, s, false) => Phase::Enter,
                            _ => Phase::Scan(self.next[e]),
                        }
                    }
                }
                // A return (or the end): its op had to be linearized by now.
                Phase::Scan(_) | Phase::Backtrack => match self.leave() {
                    None => return Search::Violation { steps },
                    Some(f) if f.forced => Phase::Backtrack,
                    Some(f) => Phase::Scan(self.next[2 * f.op]),
                },
            };
        }
    }
}

fn search(ops: &[KOp], max_steps: u64) -> Search {
    Searcher::new(ops).run(max_steps)
}

/// Shrinks a violating history; returns the indexes of the ops kept.
fn shrink(ops: &[KOp], per_trial: u64, total: u64) -> Vec<usize> {
    // deps[i]: ops one of which must stay while i stays (empty: none), so
    // that what i observed keeps a cause: a read the write of its value, a
    // successful CAS a write that can have made the version it named, a CAS
    // that failed because the key existed some write.
    let writes = |pred: &dyn Fn(&Kind) -> bool| -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, w)| matches!(w.kind, Kind::Write { .. }) && pred(&w.kind))
            .map(|(j, _)| j)
            .collect()
    };
    let deps: Vec<Vec<usize>> = ops
        .iter()
        .map(|o| match o.kind {
            Kind::Read(Some((v, _))) => writes(&|k| matches!(*k, Kind::Write { value, .. } if value == v)),
            Kind::Write { cond: Some(x), .. } if x > 0 => {
                let exact = writes(&|k| matches!(*k, Kind::Write { version: Some(n), .. } if n == x));
                if exact.is_empty() {
                    writes(&|k| matches!(*k, Kind::Write { version: None, .. }))
                } else {
                    exact
                }
            }
            Kind::CasFail { if_version: 0 } => writes(&|_| true),
            _ => Vec::new(),
        })
        .collect();
    let mut keep: Vec<usize> = (0..ops.len()).collect();
    let mut spent = 0u64;
    let mut chunk = (keep.len() / 2).max(1);
    loop {
        let before = keep.len();
        let mut start = 0;
        while start < keep.len() && spent < total {
            let end = (start + chunk).min(keep.len());
            let trial: Vec<usize> = keep[..start].iter().chain(&keep[end..]).copied().collect();
            let mut kept = vec![false; ops.len()];
            for &i in &trial {
                kept[i] = true;
            }
            let well_formed = trial.iter().all(|&i| deps[i].is_empty() || deps[i].iter().any(|&j| kept[j]));
            let violates = well_formed && !trial.is_empty() && {
                let sub: Vec<KOp> = trial.iter().map(|&i| ops[i]).collect();
                let r = search(&sub, per_trial);
                spent += match r {
                    Search::Linearizable { steps } | Search::Violation { steps } | Search::TooComplex { steps } => {
                        steps.max(1)
                    }
                };
                matches!(r, Search::Violation { .. })
            };
            if violates {
                keep = trial;
            } else {
                start = end;
            }
        }
        if spent >= total {
            return keep;
        }
        if chunk == 1 {
            // A removal can make an earlier op removable: repeat until stable.
            if keep.len() == before {
                return keep;
            }
        } else {
            chunk /= 2;
        }
    }
}

// ---------------------------------------------------------------------------
// Durability

/// Result of [`check_durability`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurabilityReport {
    pub keys_checked: usize,
    pub acked_writes: usize,
    pub anomalies: Vec<DurabilityAnomaly>,
}

impl DurabilityReport {
    pub fn is_ok(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// What [`check_durability`] found wrong.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DurabilityAnomaly {
    /// An acknowledged write is neither present nor overwritten.
    LostWrite { key: String, write: OpRecord, final_read: Option<Versioned>, reason: String },
    /// The final read itself is impossible (a value never written, or a
    /// version that does not match the write of that value).
    BadFinalRead { key: String, final_read: Versioned, reason: String },
    /// A key with acknowledged writes has no final read: the harness must
    /// read every key it wrote.
    NoFinalRead { key: String },
}

impl fmt::Display for DurabilityAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurabilityAnomaly::LostWrite { key, write, final_read, reason } => {
                let fin = final_read.as_ref().map_or("absent".to_string(), ToString::to_string);
                write!(f, "LOST WRITE on {key:?} (final read: {fin}): {reason}\n  {write}")
            }
            DurabilityAnomaly::BadFinalRead { key, final_read, reason } => {
                write!(f, "BAD FINAL READ on {key:?}: {final_read}: {reason}")
            }
            DurabilityAnomaly::NoFinalRead { key } => write!(f, "NO FINAL READ of {key:?}"),
        }
    }
}

impl fmt::Display for DurabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "durability: {} keys, {} acknowledged writes, {} anomalies",
            self.keys_checked,
            self.acked_writes,
            self.anomalies.len()
        )?;
        for a in &self.anomalies {
            writeln!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Checks that no acknowledged write was lost, given a linearizable read of
/// every written key taken after the cluster healed and every client
/// stopped.
///
/// An acknowledged write `A` with version `n` is lost when:
/// - the key is absent at the end (ringkv's register workload never deletes);
/// - the final version is below `n` (versions grow with every write);
/// - the final version is `n` but the value is not `A`'s;
/// - every write of the final value completed before `A` was invoked (so the
///   final value cannot come from a write linearized after `A`).
///
/// Writes with unknown outcome count as possibly overwriting, never as lost.
/// No false positives as long as versions are unique per key.
pub fn check_durability(history: &[OpRecord], final_reads: &BTreeMap<String, Option<Versioned>>) -> DurabilityReport {
    let mut writes: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in history {
        if op.op.written_value().is_some() && !matches!(op.outcome, Outcome::Fail { .. }) {
            writes.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut keys: BTreeSet<&str> = writes.keys().copied().collect();
    keys.extend(final_reads.keys().map(String::as_str));
    let mut report = DurabilityReport { keys_checked: keys.len(), ..Default::default() };
    let none = Vec::new();
    for key in keys {
        let ws = writes.get(key).unwrap_or(&none);
        let acked: Vec<(&OpRecord, u64)> = ws
            .iter()
            .filter_map(|w| match w.outcome {
                Outcome::Ok(OpResult::Written { version }) => Some((*w, version)),
                _ => None,
            })
            .collect();
        report.acked_writes += acked.len();
        let Some(fin) = final_reads.get(key) else {
            if !acked.is_empty() {
                report.anomalies.push(DurabilityAnomaly::NoFinalRead { key: key.to_string() });
            }
            continue;
        };
        let lost = |w: &OpRecord, reason: String| DurabilityAnomaly::LostWrite {
            key: key.to_string(),
            write: w.clone(),
            final_read: fin.clone(),
            reason,
        };
        let Some(fin) = fin else {
            for (w, _) in &acked {
                report.anomalies.push(lost(w, "the key is absent at the end".into()));
            }
            continue;
        };
        let writers: Vec<&OpRecord> =
            ws.iter().copied().filter(|w| w.op.written_value() == Some(fin.value.as_str())).collect();
        if writers.is_empty() {
            report.anomalies.push(DurabilityAnomaly::BadFinalRead {
                key: key.to_string(),
                final_read: fin.clone(),
                reason: "no put or CAS wrote this value".into(),
            });
            continue;
        }
        let writer_versions: Vec<Option<u64>> = writers
            .iter()
            .map(|w| match w.outcome {
                Outcome::Ok(OpResult::Written { version }) => Some(version),
                _ => None,
            })
            .collect();
        if writer_versions.iter().all(|v| v.is_some_and(|v| v != fin.version)) {
            report.anomalies.push(DurabilityAnomaly::BadFinalRead {
                key: key.to_string(),
                final_read: fin.clone(),
                reason: format!("the value was written with version(s) {writer_versions:?}"),
            });
        }
        for (w, version) in &acked {
            let reason = if *version > fin.version {
                Some(format!("the final version {} is older than this write's version {version}", fin.version))
            } else if *version == fin.version && w.op.written_value() != Some(fin.value.as_str()) {
                Some("the final read has this write's version but another value".to_string())
            } else if w.op.written_value() == Some(fin.value.as_str()) {
                None
            } else if writers.iter().all(|f| f.effective_complete().is_some_and(|c| c < w.invoke_ns)) {
                let ids: Vec<u64> = writers.iter().map(|f| f.id).collect();
                Some(format!("the final value was written by op(s) {ids:?}, which completed before this write began"))
            } else {
                None
            };
            if let Some(reason) = reason {
                report.anomalies.push(lost(w, reason));
            }
        }
    }
    report
}

// ---------------------------------------------------------------------------
// Eventual reads

/// An eventual read that returned something impossible.
#[derive(Debug, Clone, Serialize)]
pub struct EventualAnomaly {
    pub read: OpRecord,
    pub reason: String,
}

impl fmt::Display for EventualAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BAD EVENTUAL READ: {}\n  {}", self.reason, self.read)
    }
}

/// Checks every acknowledged [`Op::GetEventual`]: it returns `None`, or a
/// value some put or CAS (acknowledged or unknown) on that key wrote, with
/// that write's version when known, and not before the write was invoked.
pub fn check_eventual_reads(history: &[OpRecord]) -> Vec<EventualAnomaly> {
    let mut writes: HashMap<(&str, &str), Vec<&OpRecord>> = HashMap::new();
    for op in history {
        if let Some(v) = op.op.written_value() {
            if !matches!(op.outcome, Outcome::Fail { .. }) {
                writes.entry((op.key.as_str(), v)).or_default().push(op);
            }
        }
    }
    let mut out = Vec::new();
    for read in history {
        let (Op::GetEventual, Outcome::Ok(OpResult::Read(Some(found)))) = (&read.op, &read.outcome) else {
            continue;
        };
        let writers = writes.get(&(read.key.as_str(), found.value.as_str())).map_or(&[][..], Vec::as_slice);
        let invoked_before = |w: &&&OpRecord| read.complete_ns.is_none_or(|c| w.invoke_ns <= c);
        let version_fits = |w: &&&OpRecord| match w.outcome {
            Outcome::Ok(OpResult::Written { version }) => version == found.version,
            _ => true,
        };
        let reason = if writers.is_empty() {
            Some("no put or CAS wrote this value".to_string())
        } else if !writers.iter().any(|w| invoked_before(&w)) {
            Some("read before any write of this value was invoked".to_string())
        } else if !writers.iter().any(|w| invoked_before(&w) && version_fits(&w)) {
            Some("the version does not match the write of this value".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(EventualAnomaly { read: read.clone(), reason });
        }
    }
    out
}

/// Compares what one replica serves (eventual reads after quiescence) with
/// the final linearizable reads; returns one line per mismatch. Every key of
/// `expected` must have been read from the replica.
pub fn check_convergence(
    replica: &str,
    expected: &BTreeMap<String, Option<Versioned>>,
    observed: &BTreeMap<String, Option<Versioned>>,
) -> Vec<String> {
    let show = |v: &Option<Versioned>| v.as_ref().map_or("absent".to_string(), ToString::to_string);
    expected
        .iter()
        .filter_map(|(key, want)| match observed.get(key) {
            None => Some(format!("{replica}: {key:?} was not read")),
            Some(got) if got != want => {
                Some(format!("{replica}: {key:?} is {} but the final read is {}", show(got), show(want)))
            }
            Some(_) => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Sets

/// Result of [`check_set`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetReport {
    pub acked: usize,
    pub unknown: usize,
    /// Unknown adds found present (they happened after all).
    pub unknown_present: usize,
    /// Acknowledged adds missing from the final set.
    pub lost: Vec<String>,
    /// Present elements never attempted, or whose add definitely failed.
    pub unexpected: Vec<String>,
    /// Elements present more than once.
    pub duplicates: Vec<String>,
}

impl SetReport {
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.duplicates.is_empty()
    }
}

impl fmt::Display for SetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "set: {} acknowledged adds, {} unknown ({} present); {} lost, {} unexpected, {} duplicated",
            self.acked,
            self.unknown,
            self.unknown_present,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicates.len()
        )?;
        for (what, list) in [("lost", &self.lost), ("unexpected", &self.unexpected), ("duplicated", &self.duplicates)] {
            if !list.is_empty() {
                writeln!(f, "  {what}: {list:?}")?;
            }
        }
        Ok(())
    }
}

/// Checks the final contents of a set (e.g. a scan after healing) against
/// the adds: `acked` must all be present, anything present must be in
/// `acked` or `unknown`, and nothing may appear twice.
pub fn check_set(acked: &BTreeSet<String>, unknown: &BTreeSet<String>, final_read: &[String]) -> SetReport {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for e in final_read {
        *seen.entry(e.as_str()).or_default() += 1;
    }
    SetReport {
        acked: acked.len(),
        unknown: unknown.len(),
        unknown_present: unknown.iter().filter(|e| !acked.contains(*e) && seen.contains_key(e.as_str())).count(),
        lost: acked.iter().filter(|e| !seen.contains_key(e.as_str())).cloned().collect(),
        unexpected: seen
            .keys()
            .filter(|e| !acked.contains(**e) && !unknown.contains(**e))
            .map(|e| e.to_string())
            .collect(),
        duplicates: seen.iter().filter(|(_, n)| **n > 1).map(|(e, _)| e.to_string()).collect(),
    }
}

/// The set adds of a history: puts (any value) on keys `is_element` accepts,
/// split into acknowledged and unknown. Failed adds are in neither.
pub fn set_adds(history: &[OpRecord], is_element: impl Fn(&str) -> bool) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for op in history {
        if op.op.written_value().is_none() || !is_element(&op.key) {
            continue;
        }
        match op.outcome {
            Outcome::Ok(_) => {
                acked.insert(op.key.clone());
            }
            Outcome::Unknown { .. } => {
                unknown.insert(op.key.clone());
            }
            Outcome::Fail { .. } => {}
        }
    }
    unknown.retain(|e| !acked.contains(e));
    (acked, unknown)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::{History, Recorder};

    /// Builds histories by hand. Times are plain numbers (nanoseconds).
    #[derive(Default)]
    struct H {
        ops: Vec<OpRecord>,
    }

    impl H {
        fn push(&mut self, p: u64, key: &str, op: Op, t: (u64, Option<u64>), outcome: Outcome) -> &mut Self {
            let id = self.ops.len() as u64;
            self.ops.push(OpRecord { id, process: p, key: key.into(), op, invoke_ns: t.0, complete_ns: t.1, outcome });
            self
        }
        fn put(&mut self, p: u64, key: &str, value: &str, t: (u64, u64), version: u64) -> &mut Self {
            let op = Op::Put { value: value.into() };
            self.push(p, key, op, (t.0, Some(t.1)), Outcome::Ok(OpResult::Written { version }))
        }
        fn put_unknown(&mut self, p: u64, key: &str, value: &str, invoke: u64) -> &mut Self {
            let op = Op::Put { value: value.into() };
            self.push(p, key, op, (invoke, Some(invoke + 5)), Outcome::Unknown { reason: "timeout".into() })
        }
        fn put_fail(&mut self, p: u64, key: &str, value: &str, t: (u64, u64)) -> &mut Self {
            let op = Op::Put { value: value.into() };
            self.push(p, key, op, (t.0, Some(t.1)), Outcome::Fail { reason: "invalid".into() })
        }
        fn get(&mut self, p: u64, key: &str, t: (u64, u64), found: Option<(&str, u64)>) -> &mut Self {
            let found = found.map(|(v, n)| Versioned::new(v, n));
            self.push(p, key, Op::Get, (t.0, Some(t.1)), Outcome::Ok(OpResult::Read(found)))
        }
        fn get_eventual(&mut self, p: u64, key: &str, t: (u64, u64), found: Option<(&str, u64)>) -> &mut Self {
            let found = found.map(|(v, n)| Versioned::new(v, n));
            self.push(p, key, Op::GetEventual, (t.0, Some(t.1)), Outcome::Ok(OpResult::Read(found)))
        }
        /// `result`: `Ok(version)` or `Err(())` for ABORTED.
        fn cas(
            &mut self,
            p: u64,
            key: &str,
            if_version: u64,
            value: &str,
            t: (u64, u64),
            r: Result<u64, ()>,
        ) -> &mut Self {
            let op = Op::Cas { if_version, value: value.into() };
            let outcome = match r {
                Ok(version) => Outcome::Ok(OpResult::Written { version }),
                Err(()) => Outcome::Fail { reason: "version mismatch".into() },
            };
            self.push(p, key, op, (t.0, Some(t.1)), outcome)
        }
        fn cas_unknown(&mut self, p: u64, key: &str, if_version: u64, value: &str, invoke: u64) -> &mut Self {
            let op = Op::Cas { if_version, value: value.into() };
            self.push(p, key, op, (invoke, None), Outcome::Unknown { reason: "dropped".into() })
        }
        fn check(&self) -> Report {
            check_history(&self.ops, &CheckOptions::default())
        }
    }

    fn assert_linearizable(h: &H) {
        let r = h.check();
        assert!(r.is_linearizable(), "expected linearizable:\n{r}");
    }

    fn assert_violation(h: &H) -> Violation {
        let r = h.check();
        let v = r.violations();
        assert_eq!(v.len(), 1, "expected one violation:\n{r}");
        v[0].clone()
    }

    #[test]
    fn checker_sequential_history_is_linearizable() {
        let mut h = H::default();
        h.get(1, "k", (0, 1), None)
            .put(1, "k", "a", (2, 3), 4)
            .get(2, "k", (4, 5), Some(("a", 4)))
            .put(2, "k", "b", (6, 7), 9)
            .get(1, "k", (8, 9), Some(("b", 9)))
            .cas(1, "k", 9, "c", (10, 11), Ok(12))
            .get(2, "k", (12, 13), Some(("c", 12)));
        assert_linearizable(&h);
    }

    #[test]
    fn checker_concurrent_puts_and_gets_in_either_order_are_linearizable() {
        // Two overlapping puts; the versions order them a then b. A read
        // overlapping both may see either.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 10), 3)
            .put(2, "k", "b", (1, 11), 5)
            .get(3, "k", (2, 12), Some(("a", 3)))
            .get(4, "k", (2, 12), Some(("b", 5)))
            .get(3, "k", (13, 14), Some(("b", 5)));
        assert_linearizable(&h);
        // Same intervals, the other order.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 10), 5).put(2, "k", "b", (1, 11), 3).get(3, "k", (2, 12), Some(("b", 3))).get(
            3,
            "k",
            (13, 14),
            Some(("a", 5)),
        );
        assert_linearizable(&h);
        // A read that starts before a put and ends after it may miss it.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).get(2, "k", (2, 10), Some(("a", 1))).put(1, "k", "b", (3, 4), 2);
        assert_linearizable(&h);
    }

    #[test]
    fn checker_cas_winner_and_losers_are_linearizable() {
        let mut h = H::default();
        h.cas(1, "k", 0, "init", (0, 1), Ok(2))
            .cas(1, "k", 2, "w1", (2, 10), Err(()))
            .cas(2, "k", 2, "w2", (2, 10), Ok(7))
            .cas(3, "k", 2, "w3", (3, 9), Err(()))
            .cas(4, "k", 0, "w4", (3, 9), Err(()))
            .get(1, "k", (11, 12), Some(("w2", 7)));
        assert_linearizable(&h);
    }

    #[test]
    fn checker_two_cas_winners_on_one_version_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "init", (0, 1), 2).cas(1, "k", 2, "w1", (2, 10), Ok(5)).cas(2, "k", 2, "w2", (2, 10), Ok(7));
        assert_violation(&h);
    }

    #[test]
    fn checker_failed_cas_whose_condition_held_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "init", (0, 1), 2).cas(1, "k", 2, "w1", (2, 3), Err(())).get(1, "k", (4, 5), Some(("init", 2)));
        assert_violation(&h);
        // Absent key: a CAS expecting absence cannot fail.
        let mut h = H::default();
        h.cas(1, "k", 0, "w1", (2, 3), Err(()));
        assert_violation(&h);
    }

    #[test]
    fn checker_stale_read_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).put(1, "k", "b", (2, 3), 2).get(2, "k", (4, 5), Some(("a", 1)));
        let v = assert_violation(&h);
        assert_eq!(v.ops.len(), 3, "{v}");
    }

    #[test]
    fn checker_lost_write_is_violation() {
        // b is acknowledged, yet every later read sees the older a.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1)
            .get(2, "k", (0, 2), Some(("a", 1)))
            .put(2, "k", "b", (3, 6), 2)
            .get(1, "k", (4, 5), Some(("a", 1)))
            .get(1, "k", (7, 8), Some(("a", 1)))
            .get(2, "k", (9, 10), Some(("a", 1)));
        assert_violation(&h);
    }

    #[test]
    fn checker_phantom_read_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).get(2, "k", (2, 3), Some(("ghost", 2)));
        assert_violation(&h);
        // A read of a value only a failed put wrote is a phantom too.
        let mut h = H::default();
        h.put_fail(1, "k", "a", (0, 1)).get(2, "k", (2, 3), Some(("a", 1)));
        assert_violation(&h);
        // So is a value read with another version than it was written with.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).get(2, "k", (2, 3), Some(("a", 2)));
        assert_violation(&h);
    }

    #[test]
    fn checker_read_absent_after_put_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).get(2, "k", (2, 3), None);
        assert_violation(&h);
    }

    #[test]
    fn checker_version_going_backwards_is_violation() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 5).put(1, "k", "b", (2, 3), 4);
        assert_violation(&h);
    }

    #[test]
    fn checker_unknown_put_revealed_by_read_is_linearizable() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1)
            .put_unknown(2, "k", "b", 10)
            .get(1, "k", (20, 21), Some(("a", 1)))
            // Applied long after the client gave up.
            .get(1, "k", (50, 60), Some(("b", 7)))
            .put(1, "k", "c", (61, 62), 9)
            .get(1, "k", (63, 64), Some(("c", 9)));
        assert_linearizable(&h);
        // An unknown CAS revealed by a read.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 3).cas_unknown(2, "k", 3, "b", 10).get(1, "k", (50, 60), Some(("b", 8)));
        assert_linearizable(&h);
    }

    #[test]
    fn checker_unknown_put_never_observed_is_linearizable() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1)
            .put_unknown(2, "k", "b", 2)
            .get(1, "k", (20, 21), Some(("a", 1)))
            .put(1, "k", "c", (22, 23), 5)
            .get(1, "k", (24, 25), Some(("c", 5)));
        assert_linearizable(&h);
        // Also with a failed CAS on the key (no pruning of the unknown put).
        h.cas(3, "k", 1, "d", (26, 27), Err(()));
        assert_linearizable(&h);
    }

    #[test]
    fn checker_unknown_put_observed_before_its_invoke_is_violation() {
        let mut h = H::default();
        h.get(1, "k", (0, 10), Some(("b", 3))).put_unknown(2, "k", "b", 20);
        assert_violation(&h);
    }

    #[test]
    fn checker_unknown_put_observed_then_unobserved_is_violation() {
        // Once a read saw b, a later read cannot go back to a.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).put_unknown(2, "k", "b", 2).get(1, "k", (10, 11), Some(("b", 4))).get(
            1,
            "k",
            (12, 13),
            Some(("a", 1)),
        );
        assert_violation(&h);
    }

    #[test]
    fn checker_unknown_versions_must_leave_room() {
        // Two unknown puts, then a's version 1 and c's version 2 leave no
        // version for b in between: b cannot have happened before c.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).put_unknown(2, "k", "b", 2).get(1, "k", (10, 11), Some(("b", 2))).put(
            1,
            "k",
            "c",
            (12, 13),
            2,
        );
        assert_violation(&h);
        // With room, fine.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).put_unknown(2, "k", "b", 2).get(1, "k", (10, 11), Some(("b", 2))).put(
            1,
            "k",
            "c",
            (12, 13),
            3,
        );
        assert_linearizable(&h);
    }

    #[test]
    fn checker_unknown_write_can_explain_failed_cas() {
        // The CAS on version 1 failed: only the unknown put in between explains it.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).put_unknown(2, "k", "b", 2).cas(1, "k", 1, "c", (10, 11), Err(()));
        assert_linearizable(&h);
        // Without the unknown put it is a violation.
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1).cas(1, "k", 1, "c", (10, 11), Err(()));
        assert_violation(&h);
    }

    #[test]
    fn checker_splits_per_key() {
        let mut h = H::default();
        h.put(1, "good", "a", (0, 1), 1)
            .put(1, "bad", "a", (0, 1), 2)
            .put(2, "bad", "b", (2, 3), 3)
            .get(1, "good", (4, 5), Some(("a", 1)))
            .get(2, "bad", (4, 5), Some(("a", 2)));
        let r = h.check();
        assert!(r.keys["good"].is_ok(), "{r}");
        let v = r.violations();
        assert_eq!(v.len(), 1, "{r}");
        assert_eq!(v[0].key, "bad");
    }

    #[test]
    fn checker_minimal_subhistory_of_buried_stale_read_is_small() {
        let mut h = H::default();
        let mut t = 0;
        let mut version = 0;
        let mut pair = |h: &mut H, t: &mut u64, i: usize| {
            version += 2;
            let v = format!("v{i}");
            h.put(1 + (i as u64 % 3), "k", &v, (*t, *t + 3), version);
            h.get(4, "k", (*t + 4, *t + 6), Some((&v, version)));
            *t += 7;
        };
        for i in 0..25 {
            pair(&mut h, &mut t, i);
        }
        // The stale read: y completed before the read of x began.
        h.put(1, "k", "x", (t, t + 2), 100).put(2, "k", "y", (t + 3, t + 5), 101).get(
            3,
            "k",
            (t + 6, t + 8),
            Some(("x", 100)),
        );
        t += 9;
        let _ = version;
        let mut version = 200;
        for i in 25..50 {
            version += 2;
            let v = format!("v{i}");
            h.put(1, "k", &v, (t, t + 3), version).get(4, "k", (t + 4, t + 6), Some((&v, version)));
            t += 7;
        }
        let v = assert_violation(&h);
        println!("{v}");
        assert_eq!(v.checked_ops, 103);
        assert!(v.ops.len() <= 3, "{v}");
        assert!(v
            .ops
            .iter()
            .any(|o| o.op == Op::Get && o.outcome == Outcome::Ok(OpResult::Read(Some(Versioned::new("x", 100))))));
    }

    #[test]
    fn checker_too_complex_is_reported_not_hung() {
        // 20 concurrent unknown puts, each revealed by a concurrent read,
        // and a concurrent read of a value nobody wrote: refuting it means
        // trying the puts in (nearly) every order.
        let mut h = H::default();
        for i in 0..20 {
            h.put_unknown(i, "k", &format!("u{i}"), 0);
        }
        for i in 0..20 {
            h.get(100 + i, "k", (1, 1000), Some((&format!("u{i}"), 100 + i)));
        }
        h.get(200, "k", (1, 1000), Some(("nobody", 1)));
        let opts = CheckOptions { max_steps: 10_000, ..Default::default() };
        let r = check_history(&h.ops, &opts);
        assert!(matches!(r.keys["k"], KeyVerdict::TooComplex { .. }), "{r}");
        assert!(!r.is_linearizable());
        assert_eq!(r.undecided().len(), 1);
        // Without the phantom read the same history is found linearizable.
        h.ops.pop();
        assert!(check_history(&h.ops, &opts).is_linearizable());
    }

    #[test]
    fn checker_malformed_history_is_reported() {
        let mut h = H::default();
        h.push(1, "k", Op::Get, (0, Some(1)), Outcome::Ok(OpResult::Written { version: 1 }));
        let r = h.check();
        assert!(matches!(r.keys["k"], KeyVerdict::Malformed { .. }), "{r}");
        let mut h = H::default();
        h.put(1, "k", "a", (5, 1), 1);
        assert!(matches!(h.check().keys["k"], KeyVerdict::Malformed { .. }));
    }

    // -- random histories ---------------------------------------------------

    /// splitmix64: deterministic and good enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    /// A linearizable history: `procs` processes each run `per_proc` ops on
    /// `keys` keys back to back; each op takes effect at a random point in
    /// its interval (unknown ones maybe later, maybe never), and results
    /// come from a sequential register applied in that order. Versions come
    /// from one counter with gaps, like a shard's log.
    fn random_history(seed: u64, keys: usize, procs: u64, per_proc: usize, unknown_pct: u64) -> Vec<OpRecord> {
        let mut rng = Rng(seed);
        struct Planned {
            rec: OpRecord,
            at: u64,
            unknown: bool,
            applies: bool,
        }
        let mut planned = Vec::new();
        for p in 0..procs {
            let mut t = rng.below(50);
            for n in 0..per_proc {
                let invoke = t + rng.below(20);
                let duration = 1 + rng.below(200);
                let complete = invoke + duration;
                let key = format!("k{}", rng.below(keys as u64));
                let op = match rng.below(100) {
                    0..45 => Op::Put { value: format!("p{p}-{n}") },
                    45..80 => Op::Get,
                    // The CAS version is filled in during the simulation.
                    _ => Op::Cas { if_version: 0, value: format!("p{p}-{n}") },
                };
                let unknown = rng.percent(unknown_pct);
                let at = if unknown { invoke + rng.below(3 * duration) } else { invoke + rng.below(duration + 1) };
                let applies = !unknown || rng.percent(50);
                let rec = OpRecord {
                    id: 0,
                    process: p,
                    key,
                    op,
                    invoke_ns: invoke,
                    complete_ns: Some(complete),
                    outcome: Outcome::Unknown { reason: "timeout".into() },
                };
                planned.push(Planned { rec, at, unknown, applies });
                t = complete;
            }
        }
        planned.sort_by_key(|p| (p.at, p.rec.invoke_ns));
        let mut state: HashMap<String, Versioned> = HashMap::new();
        // What each process last saw per key, for realistic CAS versions.
        let mut seen: HashMap<(u64, String), u64> = HashMap::new();
        let mut log = 0u64;
        for pl in &mut planned {
            let r = &mut pl.rec;
            let cur = state.get(&r.key).cloned();
            let is_unknown_op = pl.unknown;
            match &mut r.op {
                Op::Put { value } => {
                    if pl.applies {
                        log += 1 + rng.below(3);
                        state.insert(r.key.clone(), Versioned::new(value.clone(), log));
                        seen.insert((r.process, r.key.clone()), log);
                        if !is_unknown_op {
                            r.outcome = Outcome::Ok(OpResult::Written { version: log });
                        }
                    }
                }
                Op::Get | Op::GetEventual => {
                    if let Some(v) = &cur {
                        seen.insert((r.process, r.key.clone()), v.version);
                    }
                    if !is_unknown_op {
                        r.outcome = Outcome::Ok(OpResult::Read(cur.clone()));
                    }
                }
                Op::Cas { if_version, value } => {
                    *if_version = if rng.percent(10) {
                        rng.below(log + 1)
                    } else {
                        seen.get(&(r.process, r.key.clone())).copied().unwrap_or(0)
                    };
                    let holds = cur.as_ref().map_or(0, |v| v.version) == *if_version;
                    if pl.applies && holds {
                        log += 1 + rng.below(3);
                        state.insert(r.key.clone(), Versioned::new(value.clone(), log));
                        seen.insert((r.process, r.key.clone()), log);
                        if !is_unknown_op {
                            r.outcome = Outcome::Ok(OpResult::Written { version: log });
                        }
                    } else if pl.applies && !is_unknown_op {
                        r.outcome = Outcome::Fail { reason: "version mismatch".into() };
                    }
                }
            }
        }
        let mut ops: Vec<OpRecord> = planned.into_iter().map(|p| p.rec).collect();
        ops.sort_by_key(|o| o.invoke_ns);
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i as u64;
        }
        ops
    }

    #[test]
    fn checker_large_random_linearizable_history_is_ok_within_the_step_budget() {
        // (seed, keys, ops per process, % unknown); always 10 processes.
        for (seed, keys, per_proc, unknown_pct) in [(1, 4, 200, 0), (2, 4, 200, 5), (3, 4, 200, 10), (4, 1, 50, 10)] {
            // 2000 ops over 4 keys (~500 ops per key, concurrency ~2.5 per
            // key), or 500 ops on one key (concurrency ~10).
            let ops = random_history(seed, keys, 10, per_proc, unknown_pct);
            let counts = History { ops: ops.clone() }.counts();
            let start = std::time::Instant::now();
            let r = check_history(&ops, &CheckOptions::default());
            let took = start.elapsed();
            let steps: u64 = r
                .keys
                .values()
                .map(|v| match v {
                    KeyVerdict::Ok { steps, .. } | KeyVerdict::TooComplex { steps, .. } => *steps,
                    _ => 0,
                })
                .sum();
            println!("seed {seed}: {counts:?}: {steps} steps in {took:?}");
            // "Quickly" is the step budget, not the clock: a key that needs
            // more than `max_steps` is TooComplex, which is not linearizable.
            assert!(r.is_linearizable(), "seed {seed}:\n{r}");
        }
    }

    #[test]
    fn checker_random_history_with_injected_stale_read_is_violation() {
        let mut ops = random_history(7, 2, 10, 100, 0);
        // Append, after everything, two sequential puts and a read of the first.
        let end = ops.iter().filter_map(|o| o.complete_ns).max().unwrap() + 10;
        let mut h = H { ops: std::mem::take(&mut ops) };
        h.put(1, "k0", "late-x", (end, end + 1), 1_000_000).put(1, "k0", "late-y", (end + 2, end + 3), 1_000_001).get(
            2,
            "k0",
            (end + 4, end + 5),
            Some(("late-x", 1_000_000)),
        );
        let v = assert_violation(&h);
        assert_eq!(v.key, "k0");
        assert!(v.ops.len() <= 3, "{v}");
    }

    /// Linearizability by exhaustive search, independent of the checker's
    /// model: concrete versions (unknown writes try every version that can
    /// matter), every real-time-respecting order, unknown ops optional.
    fn brute_force_linearizable(ops: &[OpRecord]) -> bool {
        #[derive(Clone)]
        struct B {
            invoke: u64,
            ret: Option<u64>,
            op: Op,
            result: Option<OpResult>,
            failed: bool,
        }
        let mut bs = Vec::new();
        let mut max_v = 0;
        for o in ops {
            let (result, failed, ret) = match &o.outcome {
                Outcome::Ok(r) => (Some(r.clone()), false, o.complete_ns),
                Outcome::Fail { .. } => (None, true, o.complete_ns),
                Outcome::Unknown { .. } => (None, false, None),
            };
            let keep = !matches!(
                (&o.op, &o.outcome),
                (Op::GetEventual, _)
                    | (Op::Get, Outcome::Fail { .. } | Outcome::Unknown { .. })
                    | (Op::Put { .. }, Outcome::Fail { .. })
            );
            if let Op::Cas { if_version, .. } = o.op {
                max_v = max_v.max(if_version);
            }
            match &result {
                Some(OpResult::Written { version }) => max_v = max_v.max(*version),
                Some(OpResult::Read(Some(v))) => max_v = max_v.max(v.version),
                _ => {}
            }
            if keep {
                bs.push(B { invoke: o.invoke_ns, ret, op: o.op.clone(), result, failed });
            }
        }
        let bound = max_v + bs.len() as u64 + 1;
        type St = Option<(String, u64)>;
        fn next_states(b: &B, s: &St, bound: u64) -> Vec<St> {
            let cur = s.as_ref().map_or(0, |(_, n)| *n);
            let cond_holds = |x: u64| if x == 0 { s.is_none() } else { s.as_ref().is_some_and(|(_, n)| *n == x) };
            match (&b.op, &b.result) {
                (Op::Get, Some(OpResult::Read(r))) => {
                    let ok = match (r, s) {
                        (None, None) => true,
                        (Some(v), Some((sv, sn))) => v.value == *sv && v.version == *sn,
                        _ => false,
                    };
                    if ok {
                        vec![s.clone()]
                    } else {
                        vec![]
                    }
                }
                (Op::Put { value }, Some(OpResult::Written { version })) if *version > cur => {
                    vec![Some((value.clone(), *version))]
                }
                (Op::Cas { if_version, value }, Some(OpResult::Written { version }))
                    if cond_holds(*if_version) && *version > cur =>
                {
                    vec![Some((value.clone(), *version))]
                }
                (Op::Cas { if_version, .. }, None) if b.failed => {
                    if cond_holds(*if_version) {
                        vec![]
                    } else {
                        vec![s.clone()]
                    }
                }
                (Op::Put { value }, None) => (cur + 1..=bound).map(|n| Some((value.clone(), n))).collect(),
                (Op::Cas { if_version, value }, None) if cond_holds(*if_version) => {
                    (cur + 1..=bound).map(|n| Some((value.clone(), n))).collect()
                }
                _ => vec![],
            }
        }
        fn dfs(bs: &[B], done: &mut Vec<bool>, s: &St, bound: u64) -> bool {
            let left: Vec<usize> = (0..bs.len()).filter(|&i| !done[i]).collect();
            if left.iter().all(|&i| bs[i].ret.is_none()) {
                return true;
            }
            for &i in &left {
                let blocked = left.iter().any(|&j| j != i && bs[j].ret.is_some_and(|r| r < bs[i].invoke));
                if blocked {
                    continue;
                }
                for ns in next_states(&bs[i], s, bound) {
                    done[i] = true;
                    let ok = dfs(bs, done, &ns, bound);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        let mut done = vec![false; bs.len()];
        dfs(&bs, &mut done, &None, bound)
    }

    /// A small random history on key "k": half simulated (linearizable),
    /// some of those with one result altered, some entirely random.
    fn small_history(rng: &mut Rng) -> Vec<OpRecord> {
        let values = ["a", "b", "c"];
        match rng.below(3) {
            0 | 1 => {
                let procs = 1 + rng.below(4);
                let mut ops = random_history(rng.next(), 1, procs, 1 + rng.below(3) as usize, 25);
                ops.truncate(7);
                for o in &mut ops {
                    o.key = "k".into();
                }
                if rng.percent(50) && !ops.is_empty() {
                    let i = rng.below(ops.len() as u64) as usize;
                    let o = &mut ops[i];
                    o.outcome = match (&o.op, rng.below(4)) {
                        (_, 0) => Outcome::Unknown { reason: "mutated".into() },
                        (Op::Cas { .. } | Op::Put { .. }, 1) => Outcome::Fail { reason: "mutated".into() },
                        (Op::Cas { .. } | Op::Put { .. }, _) => {
                            Outcome::Ok(OpResult::Written { version: 1 + rng.below(8) })
                        }
                        (_, 1) => Outcome::Ok(OpResult::Read(None)),
                        (_, _) => {
                            let v = ops_value(rng, &values);
                            Outcome::Ok(OpResult::Read(Some(Versioned::new(v, 1 + rng.below(8)))))
                        }
                    };
                }
                ops
            }
            _ => {
                let n = 1 + rng.below(6);
                (0..n)
                    .map(|i| {
                        let invoke = rng.below(10);
                        let complete = Some(invoke + rng.below(6));
                        let value = ops_value(rng, &values).to_string();
                        let (op, outcome) = match rng.below(3) {
                            0 => {
                                let outcome = match rng.below(6) {
                                    0 => Outcome::Unknown { reason: "t".into() },
                                    1 => Outcome::Fail { reason: "f".into() },
                                    _ => Outcome::Ok(OpResult::Written { version: 1 + rng.below(6) }),
                                };
                                (Op::Put { value }, outcome)
                            }
                            1 => {
                                let found = (!rng.percent(25)).then(|| Versioned::new(value, 1 + rng.below(6)));
                                (Op::Get, Outcome::Ok(OpResult::Read(found)))
                            }
                            _ => {
                                let outcome = match rng.below(3) {
                                    0 => Outcome::Unknown { reason: "t".into() },
                                    1 => Outcome::Fail { reason: "f".into() },
                                    _ => Outcome::Ok(OpResult::Written { version: 1 + rng.below(6) }),
                                };
                                (Op::Cas { if_version: rng.below(6), value }, outcome)
                            }
                        };
                        OpRecord {
                            id: i,
                            process: i,
                            key: "k".into(),
                            op,
                            invoke_ns: invoke,
                            complete_ns: complete,
                            outcome,
                        }
                    })
                    .collect()
            }
        }
    }

    fn ops_value<'a>(rng: &mut Rng, values: &[&'a str]) -> &'a str {
        values[rng.below(values.len() as u64) as usize]
    }

    #[test]
    fn checker_agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(42);
        let opts = CheckOptions { threads: 1, ..Default::default() };
        let (mut lin, mut bad, mut relaxed) = (0, 0, 0);
        for round in 0..10_000 {
            let ops = small_history(&mut rng);
            let truth = brute_force_linearizable(&ops);
            let r = check_history(&ops, &opts);
            let show = || ops.iter().map(|o| format!("{o}\n")).collect::<String>();
            if truth {
                assert!(r.is_linearizable(), "round {round}: false violation:\n{}{r}", show());
                lin += 1;
            } else if r.is_linearizable() {
                // Allowed only through the documented relaxation: a failed
                // CAS on a state whose version is unknown.
                assert!(
                    ops.iter().any(|o| matches!(o.op, Op::Cas { .. }) && matches!(o.outcome, Outcome::Fail { .. }))
                        && ops.iter().any(|o| o.op.written_value().is_some() && o.outcome.is_unknown()),
                    "round {round}: missed violation:\n{}",
                    show()
                );
                relaxed += 1;
            } else {
                bad += 1;
                // The reported sub-history is itself a violation.
                for v in r.violations() {
                    assert!(!brute_force_linearizable(&v.ops), "round {round}: sub-history is linearizable:\n{v}");
                }
            }
        }
        println!("{lin} linearizable, {bad} violations, {relaxed} accepted through the relaxation");
        assert!(lin > 1_000 && bad > 1_000, "{lin} {bad}");
    }

    #[test]
    fn checker_shrunk_violations_are_small_real_violations() {
        // Medium histories with one read altered: every violation found
        // shrinks to a sub-history the brute force also rejects.
        let mut rng = Rng(9);
        let mut sizes = BTreeMap::new();
        for round in 0..300 {
            let mut ops = random_history(rng.next(), 1, 4, 12, 10);
            let writes: Vec<(String, u64)> = ops
                .iter()
                .filter_map(|o| match (&o.op, &o.outcome) {
                    (Op::Put { value } | Op::Cas { value, .. }, Outcome::Ok(OpResult::Written { version })) => {
                        Some((value.clone(), *version))
                    }
                    _ => None,
                })
                .collect();
            let reads: Vec<usize> =
                (0..ops.len()).filter(|&i| ops[i].op == Op::Get && ops[i].outcome.is_ok()).collect();
            if writes.is_empty() || reads.is_empty() {
                continue;
            }
            let (value, version) = writes[rng.below(writes.len() as u64) as usize].clone();
            let r = reads[rng.below(reads.len() as u64) as usize];
            ops[r].outcome = Outcome::Ok(OpResult::Read(Some(Versioned::new(value, version))));
            let report = check_history(&ops, &CheckOptions { threads: 1, ..Default::default() });
            for v in report.violations() {
                *sizes.entry(v.ops.len()).or_insert(0) += 1;
                assert!(v.ops.len() <= 8, "round {round}: not shrunk enough:\n{v}");
                assert!(!brute_force_linearizable(&v.ops), "round {round}: sub-history is linearizable:\n{v}");
            }
        }
        println!("minimal sub-history sizes: {sizes:?}");
        assert!(sizes.values().sum::<usize>() > 50, "{sizes:?}");
    }

    // -- durability, eventual reads, sets, recording ------------------------

    fn finals(entries: &[(&str, Option<(&str, u64)>)]) -> BTreeMap<String, Option<Versioned>> {
        entries.iter().map(|(k, v)| (k.to_string(), v.map(|(v, n)| Versioned::new(v, n)))).collect()
    }

    #[test]
    fn checker_durability_accepts_present_or_overwritten_writes() {
        let mut h = H::default();
        h.put(1, "a", "a1", (0, 1), 1)
            .put(1, "a", "a2", (2, 3), 2)
            // b2 is concurrent with b1 and may have been linearized after it.
            .put(1, "b", "b1", (0, 10), 5)
            .put(2, "b", "b2", (5, 6), 3)
            // c's last write timed out but happened.
            .put(1, "c", "c1", (0, 1), 1)
            .put_unknown(1, "c", "c2", 2);
        let r = check_durability(
            &h.ops,
            &finals(&[("a", Some(("a2", 2))), ("b", Some(("b1", 5))), ("c", Some(("c2", 9)))]),
        );
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.acked_writes, 5);
    }

    #[test]
    fn checker_durability_finds_lost_writes() {
        let mut h = H::default();
        h.put(1, "a", "a1", (0, 1), 1)
            .put(1, "a", "a2", (2, 3), 2)
            .put(1, "b", "b1", (0, 1), 1)
            .put(1, "c", "c1", (0, 1), 1)
            .put(1, "d", "d1", (0, 1), 1);
        let r = check_durability(&h.ops, &finals(&[("a", Some(("a1", 1))), ("b", None), ("c", Some(("zzz", 7)))]));
        println!("{r}");
        let kinds: Vec<String> = r
            .anomalies
            .iter()
            .map(|a| match a {
                DurabilityAnomaly::LostWrite { key, write, .. } => format!("lost {key} #{}", write.id),
                DurabilityAnomaly::BadFinalRead { key, .. } => format!("bad {key}"),
                DurabilityAnomaly::NoFinalRead { key } => format!("none {key}"),
            })
            .collect();
        assert_eq!(kinds, ["lost a #1", "lost b #2", "bad c", "none d"]);

        // The final value's only write completed before the acked one began,
        // even with a version that looks fine.
        let mut h = H::default();
        h.put(1, "a", "a1", (0, 1), 3).put(1, "a", "a2", (2, 3), 2);
        let r = check_durability(&h.ops, &finals(&[("a", Some(("a1", 3)))]));
        assert_eq!(r.anomalies.len(), 1, "{r}");
    }

    #[test]
    fn checker_eventual_reads_only_return_written_values() {
        let mut h = H::default();
        h.put(1, "k", "a", (0, 1), 1)
            .put_unknown(1, "k", "b", 2)
            .get_eventual(2, "k", (3, 4), None)
            .get_eventual(2, "k", (5, 6), Some(("a", 1)))
            .get_eventual(2, "k", (7, 8), Some(("b", 5)));
        assert!(check_eventual_reads(&h.ops).is_empty());
        // The linearizability checker ignores eventual reads.
        assert_linearizable(&h);

        let mut h = H::default();
        h.put(1, "k", "a", (10, 11), 1)
            .get_eventual(2, "k", (0, 5), Some(("a", 1)))
            .get_eventual(2, "k", (12, 13), Some(("a", 2)))
            .get_eventual(2, "k", (12, 13), Some(("ghost", 1)));
        let bad = check_eventual_reads(&h.ops);
        let reasons: Vec<&str> = bad.iter().map(|a| a.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("before"));
        assert!(reasons[1].contains("version"));
        assert!(reasons[2].contains("no put"));
    }

    #[test]
    fn checker_convergence_reports_mismatches() {
        let want = finals(&[("a", Some(("x", 1))), ("b", None)]);
        assert!(check_convergence("n1", &want, &want).is_empty());
        let got = finals(&[("a", Some(("old", 0)))]);
        assert_eq!(check_convergence("n2", &want, &got).len(), 2);
    }

    #[test]
    fn checker_sets() {
        let mut h = H::default();
        h.put(1, "set/1", "", (0, 1), 1)
            .put(1, "set/2", "", (0, 1), 2)
            .put_unknown(1, "set/3", "", 2)
            .put_unknown(1, "set/4", "", 2)
            .put_fail(1, "set/5", "", (0, 1))
            .put(1, "other", "", (0, 1), 3);
        let (acked, unknown) = set_adds(&h.ops, |k| k.starts_with("set/"));
        assert_eq!(acked.len(), 2);
        assert_eq!(unknown.len(), 2);
        let s = |v: &[&str]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let ok = check_set(&acked, &unknown, &s(&["set/1", "set/2", "set/3"]));
        assert!(ok.is_ok(), "{ok}");
        assert_eq!(ok.unknown_present, 1);
        let bad = check_set(&acked, &unknown, &s(&["set/2", "set/3", "set/3", "set/5", "set/9"]));
        println!("{bad}");
        assert_eq!(bad.lost, ["set/1"]);
        assert_eq!(bad.unexpected, ["set/5", "set/9"]);
        assert_eq!(bad.duplicates, ["set/3"]);
    }

    #[test]
    fn checker_recorder_history_round_trips_through_jsonl() {
        let rec = Recorder::new();
        let r2 = rec.clone();
        let p = rec.invoke(1, "k", Op::Put { value: "a".into() });
        let g = r2.invoke(2, "k", Op::Get);
        p.written(3);
        g.read(Some(Versioned::new("a", 3)));
        rec.invoke(1, "k", Op::Cas { if_version: 3, value: "b".into() }).fail("version mismatch");
        let dropped = rec.invoke(3, "k", Op::Put { value: "c".into() });
        drop(dropped);
        let _in_flight = rec.invoke(4, "k", Op::Get);
        let h = rec.history();
        assert_eq!(h.ops.len(), 5);
        assert!(h.ops.iter().all(|o| o.complete_ns.is_none_or(|c| c >= o.invoke_ns)));
        assert_eq!(h.ops[3].outcome, Outcome::Unknown { reason: "dropped before completion".into() });
        assert_eq!(h.ops[3].complete_ns, None);
        assert!(h.ops[4].outcome.is_unknown());
        assert_eq!(h.counts(), crate::history::OutcomeCounts { ok: 2, fail: 1, unknown: 2 });

        let dir = tempfile::tempdir().unwrap();
        h.save(dir.path()).unwrap();
        let back = History::load(dir.path()).unwrap();
        assert_eq!(back, h);
        let report = check_history(&back.ops, &CheckOptions::default());
        // The failed CAS on version 3 while the state was a@3 is a violation.
        assert_eq!(report.violations().len(), 1, "{report}");
        report.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("verdict.txt")).unwrap();
        assert!(text.contains("NOT LINEARIZABLE"), "{text}");
        println!("{text}");
    }

    #[test]
    fn checker_client_errors_are_classified() {
        use ringkv_client::Error as E;
        assert!(matches!(Outcome::from_client_error(&E::VersionMismatch("x".into())), Outcome::Fail { .. }));
        assert!(matches!(Outcome::from_client_error(&E::InvalidArgument("x".into())), Outcome::Fail { .. }));
        assert!(Outcome::from_client_error(&E::Unavailable("x".into())).is_unknown());
        assert!(Outcome::from_client_error(&E::DeadlineExceeded("x".into())).is_unknown());
        assert!(Outcome::from_client_error(&E::Other(tonic::Status::internal("x"))).is_unknown());
    }
}
