//! The history a Jepsen-style run records, and the recorder clients share.
//!
//! A history is a list of [`OpRecord`]s: one per client operation on one key,
//! with the process that ran it, its invoke and completion times (nanoseconds
//! since the run started, from one monotonic clock), the operation and its
//! [`Outcome`]:
//!
//! - [`Outcome::Ok`]: the server acknowledged it, with the result
//!   ([`OpResult::Written`] with the new version for [`Op::Put`] and
//!   [`Op::Cas`], [`OpResult::Read`] for reads);
//! - [`Outcome::Fail`]: it definitely did not take effect (`ABORTED` version
//!   mismatch, `INVALID_ARGUMENT`, a hook rejection). A failed CAS still says
//!   something: its condition did not hold when it was applied;
//! - [`Outcome::Unknown`]: timeout, `UNAVAILABLE`, connection error, or the
//!   caller dropped the operation. It may or may not have taken effect, and if
//!   it did, at any time after its invoke: checkers treat its completion as
//!   +infinity whatever `complete_ns` says.
//!
//! The register model is ringkv's: a key holds `None` or a value with a
//! version, the Raft log index of the write that produced it. Versions are
//! unique per key and grow with every write to the key, but are not
//! consecutive (other keys of the same shard use indexes in between).
//! CAS is version-based, like `put_with(if_version)`: `if_version = 0` means
//! "the key must not exist".
//!
//! [`Recorder`] is what concurrent clients share (cheap to clone):
//! [`Recorder::invoke`] stamps the invoke time and returns a [`Pending`]
//! handle; completing the handle stamps the completion time. A handle dropped
//! without being completed (a cancelled task) records the op as unknown, so
//! no invoked operation is ever missing from the history.
//!
//! Histories are stored as JSON lines, one [`OpRecord`] per line
//! ([`History::save`] / [`History::load`]).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Identifies the client (logical process) that ran an op. A process runs
/// one op at a time.
pub type ProcessId = u64;

/// File name [`History::save`] writes inside a run's folder.
pub const HISTORY_FILE: &str = "history.jsonl";

/// An operation on one key of the register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Unconditional write (`Client::put`). Result: [`OpResult::Written`].
    Put { value: String },
    /// Compare-and-swap by version (`Client::put_with` with `if_version`):
    /// writes `value` only if the key's current version is `if_version`
    /// (`0`: only if the key does not exist). Result: [`OpResult::Written`];
    /// a mismatch is [`Outcome::Fail`].
    Cas { if_version: u64, value: String },
    /// Linearizable read. Result: [`OpResult::Read`].
    Get,
    /// Eventual read, served by any replica. Not part of the
    /// linearizability check; see `checker::check_eventual_reads`.
    GetEventual,
}

impl Op {
    /// The value this op writes, for puts and CAS.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Op::Put { value } | Op::Cas { value, .. } => Some(value),
            Op::Get | Op::GetEventual => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { value } => write!(f, "put {value:?}"),
            Op::Cas { if_version, value } => write!(f, "cas if_version={if_version} {value:?}"),
            Op::Get => write!(f, "get"),
            Op::GetEventual => write!(f, "get(eventual)"),
        }
    }
}

/// A value and the version (Raft log index) of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    pub value: String,
    pub version: u64,
}

impl Versioned {
    pub fn new(value: impl Into<String>, version: u64) -> Self {
        Self { value: value.into(), version }
    }
}

impl fmt::Display for Versioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.value, self.version)
    }
}

/// The result of an acknowledged op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    /// A put or CAS took effect with this new version.
    Written { version: u64 },
    /// A read returned this (`None`: the key did not exist).
    Read(Option<Versioned>),
}

/// How an op ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged, with its result.
    Ok(OpResult),
    /// Definitely did not take effect.
    Fail { reason: String },
    /// May or may not have taken effect, at any time after its invoke.
    Unknown { reason: String },
}

impl Outcome {
    /// Classifies a client error: errors that prove the op was not applied
    /// are [`Outcome::Fail`]; everything else (timeouts, `UNAVAILABLE`,
    /// transport errors, unexpected codes) is [`Outcome::Unknown`].
    pub fn from_client_error(e: &ringkv_client::Error) -> Outcome {
        use ringkv_client::Error as E;
        let reason = e.to_string();
        match e {
            E::InvalidArgument(_)
            | E::Rejected(_)
            | E::VersionMismatch(_)
            | E::BadEndpoint { .. }
            | E::Tls(_)
            | E::Unauthenticated(_)
            | E::PermissionDenied(_) => Outcome::Fail { reason },
            E::Unavailable(_) | E::DeadlineExceeded(_) | E::Other(_) => Outcome::Unknown { reason },
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(OpResult::Written { version }) => write!(f, "ok version={version}"),
            Outcome::Ok(OpResult::Read(Some(v))) => write!(f, "ok {v}"),
            Outcome::Ok(OpResult::Read(None)) => write!(f, "ok absent"),
            Outcome::Fail { reason } => write!(f, "FAIL ({reason})"),
            Outcome::Unknown { reason } => write!(f, "UNKNOWN ({reason})"),
        }
    }
}

/// One invoked operation and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Unique within the run, in invoke order.
    pub id: u64,
    pub process: ProcessId,
    pub key: String,
    pub op: Op,
    /// Nanoseconds since the run started, taken before the request was sent.
    pub invoke_ns: u64,
    /// Nanoseconds since the run started, taken after the reply arrived;
    /// `None` when the op never completed (dropped or still in flight).
    /// Checkers ignore it for [`Outcome::Unknown`] ops.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

impl OpRecord {
    /// The completion time checkers use: `None` (+infinity) for unknown ops.
    pub fn effective_complete(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Unknown { .. } => None,
            _ => self.complete_ns,
        }
    }
}

fn fmt_ms(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

impl fmt::Display for OpRecord {
    /// One line: `p3 #17 [12.345ms .. 13.001ms] put "v17" -> ok version=42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = match self.complete_ns {
            Some(ns) if self.outcome.is_unknown() => format!("{}?", fmt_ms(ns)),
            Some(ns) => fmt_ms(ns),
            None => "never".to_string(),
        };
        write!(
            f,
            "p{:<3} #{:<6} [{:>12} .. {:>13}] {:<40} -> {}",
            self.process,
            self.id,
            fmt_ms(self.invoke_ns),
            done,
            self.op.to_string(),
            self.outcome
        )
    }
}

/// Counts of outcomes in a history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

/// A recorded run: every op, in invoke order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<OpRecord>,
}

impl History {
    /// Writes one JSON object per line.
    pub fn write_jsonl(&self, path: &Path) -> io::Result<()> {
        let mut w = BufWriter::new(File::create(path)?);
        for op in &self.ops {
            serde_json::to_writer(&mut w, op)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// Reads what [`History::write_jsonl`] wrote. Blank lines are skipped.
    pub fn read_jsonl(path: &Path) -> io::Result<History> {
        let mut ops = Vec::new();
        for (n, line) in BufReader::new(File::open(path)?).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}:{}: {e}", path.display(), n + 1))
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Writes `dir/history.jsonl`, creating `dir`. Returns the file's path.
    pub fn save(&self, dir: &Path) -> io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(HISTORY_FILE);
        self.write_jsonl(&path)?;
        Ok(path)
    }

    /// Reads `dir/history.jsonl`.
    pub fn load(dir: &Path) -> io::Result<History> {
        Self::read_jsonl(&dir.join(HISTORY_FILE))
    }

    pub fn counts(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => c.ok += 1,
                Outcome::Fail { .. } => c.fail += 1,
                Outcome::Unknown { .. } => c.unknown += 1,
            }
        }
        c
    }
}

/// Records a history; clone it into every client task.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Debug)]
struct RecorderInner {
    start: Instant,
    /// Indexed by op id. Ops still in flight are recorded as unknown.
    ops: Mutex<Vec<OpRecord>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts the run's clock now.
    pub fn new() -> Self {
        Self { inner: Arc::new(RecorderInner { start: Instant::now(), ops: Mutex::new(Vec::new()) }) }
    }

    /// When the run started; every time in the history is relative to it.
    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn ops(&self) -> MutexGuard<'_, Vec<OpRecord>> {
        // A panicking client task must not hide the history from the checker.
        self.inner.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `process` is about to run `op` on `key`. Call it right
    /// before sending the request and complete the returned handle right
    /// after the reply.
    pub fn invoke(&self, process: ProcessId, key: impl Into<String>, op: Op) -> Pending {
        let key = key.into();
        let mut ops = self.ops();
        let index = ops.len();
        let id = index as u64;
        // Stamped last, under the lock: the request goes out after this.
        let invoke_ns = self.now_ns();
        ops.push(OpRecord {
            id,
            process,
            key,
            op,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown { reason: "in flight".into() },
        });
        Pending { recorder: self.clone(), index, done: false }
    }

    /// A snapshot of the history so far. Ops still in flight appear as
    /// unknown with no completion time.
    pub fn history(&self) -> History {
        History { ops: self.ops().clone() }
    }

    /// Number of ops invoked so far.
    pub fn len(&self) -> usize {
        self.ops().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An invoked op waiting for its outcome. Completing it consumes it;
/// dropping it uncompleted records the op as unknown.
#[must_use = "complete the op with its outcome"]
#[derive(Debug)]
pub struct Pending {
    recorder: Recorder,
    index: usize,
    done: bool,
}

impl Pending {
    /// The op's id in the history.
    pub fn id(&self) -> u64 {
        self.index as u64
    }

    fn finish(&mut self, outcome: Outcome, completed: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let now = self.recorder.now_ns();
        let mut ops = self.recorder.ops();
        if let Some(rec) = ops.get_mut(self.index) {
            rec.complete_ns = completed.then_some(now);
            rec.outcome = outcome;
        }
    }

    /// Records the outcome (completion time: now).
    pub fn complete(mut self, outcome: Outcome) {
        self.finish(outcome, true);
    }

    /// A put or CAS was acknowledged with `version`.
    pub fn written(self, version: u64) {
        self.complete(Outcome::Ok(OpResult::Written { version }));
    }

    /// A read returned `found`.
    pub fn read(self, found: Option<Versioned>) {
        self.complete(Outcome::Ok(OpResult::Read(found)));
    }

    /// The op definitely did not take effect.
    pub fn fail(self, reason: impl Into<String>) {
        self.complete(Outcome::Fail { reason: reason.into() });
    }

    /// The op may or may not have taken effect.
    pub fn unknown(self, reason: impl Into<String>) {
        self.complete(Outcome::Unknown { reason: reason.into() });
    }

    /// Records a client error, classified by [`Outcome::from_client_error`].
    pub fn error(self, e: &ringkv_client::Error) {
        self.complete(Outcome::from_client_error(e));
    }

    /// Records the result of `Client::put` / `Client::put_with`.
    pub fn put_result(self, r: &Result<u64, ringkv_client::Error>) {
        match r {
            Ok(version) => self.written(*version),
            Err(e) => self.error(e),
        }
    }

    /// Records the result of `Client::get` / `Client::get_with` (values are
    /// decoded as UTF-8, lossily).
    pub fn get_result(self, r: &Result<Option<ringkv_client::Value>, ringkv_client::Error>) {
        match r {
            Ok(found) => self.read(
                found
                    .as_ref()
                    .map(|v| Versioned { value: String::from_utf8_lossy(&v.value).into_owned(), version: v.version }),
            ),
            Err(e) => self.error(e),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Outcome::Unknown { reason: "dropped before completion".into() }, false);
    }
}
