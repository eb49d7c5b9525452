//! The node's background workers: each a named task with one shape to
//! start it, stop it and ask how it is doing, after Garage's `Worker`.
//!
//! A worker is started with [`Workers::spawn`] and stops on the node's
//! shutdown signal; one that panics is reported as such, not restarted
//! (its loop state is lost, and a panic is a bug to fix). Its loop reports
//! through its [`Worker`] handle: a round of work done, or an error it will
//! retry. The registry keeps those figures with the task, so `ringkv
//! cluster status` and `/status` show, per worker, whether it still runs,
//! how many rounds it did and its last error with its age: the view an
//! operator needs when keys stop expiring or shards stop moving, without
//! reading the logs of every node.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;

use super::Node;

/// A worker's own handle: how it reports what it did.
#[derive(Clone)]
pub struct Worker(Arc<Report>);

#[derive(Default)]
struct Report {
    rounds: AtomicU64,
    errors: AtomicU64,
    /// The last error and when it happened.
    last_error: Mutex<Option<(String, Instant)>>,
    /// A [`WorkerState`] as its discriminant, set when the task ends.
    state: AtomicU8,
}

impl Worker {
    /// One round of work is done (whether or not it found anything to do).
    pub fn round(&self) {
        self.0.rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// A round failed with `error`; the worker retries on its next round.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.0.errors.fetch_add(1, Ordering::Relaxed);
        *self.0.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((error.to_string(), Instant::now()));
    }
}

/// The state of a worker's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    Running = 0,
    /// It returned: on shutdown, or because the node has no meta group.
    Stopped = 1,
    /// It panicked (the panic was logged); the node goes on without it.
    Panicked = 2,
}

impl WorkerState {
    fn from_u8(v: u8) -> WorkerState {
        match v {
            0 => WorkerState::Running,
            1 => WorkerState::Stopped,
            _ => WorkerState::Panicked,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Stopped => "stopped",
            WorkerState::Panicked => "panicked",
        }
    }
}

/// What a worker did, as [`Workers::statuses`] reports it.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub name: &'static str,
    pub state: WorkerState,
    pub rounds: u64,
    pub errors: u64,
    /// The last error and how long ago it happened.
    pub last_error: Option<(String, std::time::Duration)>,
}

struct Entry {
    name: &'static str,
    worker: Worker,
    task: JoinHandle<()>,
}

/// Every worker the node started, in start order.
#[derive(Default)]
pub struct Workers {
    entries: Mutex<Vec<Entry>>,
}

impl Workers {
    /// Starts `run` as the worker `name`, handing it its [`Worker`].
    pub fn spawn<F>(&self, name: &'static str, run: impl FnOnce(Worker) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let worker = Worker(Arc::default());
        let (work, report) = (run(worker.clone()), worker.0.clone());
        let task = tokio::spawn(async move {
            // A panic is caught here so the status can say so; tokio would
            // only keep it for whoever awaits the task.
            let ended = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
                Ok(()) => WorkerState::Stopped,
                Err(_) => {
                    tracing::error!(worker = name, "background worker panicked; the node goes on without it");
                    WorkerState::Panicked
                }
            };
            report.state.store(ended as u8, Ordering::Release);
        });
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).push(Entry { name, worker, task });
    }

    /// Each worker's state and figures, in start order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|e| {
                let state = WorkerState::from_u8(e.worker.0.state.load(Ordering::Acquire));
                let last_error = e
                    .worker
                    .0
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|(error, at)| (error.clone(), at.elapsed()));
                WorkerStatus {
                    name: e.name,
                    state,
                    rounds: e.worker.0.rounds.load(Ordering::Relaxed),
                    errors: e.worker.0.errors.load(Ordering::Relaxed),
                    last_error,
                }
            })
            .collect()
    }

    /// Stops every worker and waits for it (they also stop on the node's
    /// shutdown signal; this ends those blocked elsewhere).
    pub async fn stop(&self) {
        let entries = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()));
        for e in entries {
            e.task.abort();
            let _ = e.task.await;
        }
    }
}

impl Node {
    /// Starts a background worker named `name` (see [`Workers`]).
    pub(super) fn spawn_worker<F>(&self, name: &'static str, run: impl FnOnce(Worker) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.workers.spawn(name, run);
    }

    /// This node's background workers and how they are doing.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.inner.workers.statuses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until every worker has ended (the tasks run on the test runtime).
    async fn ended(workers: &Workers) -> Vec<WorkerStatus> {
        loop {
            let statuses = workers.statuses();
            if statuses.iter().all(|s| s.state != WorkerState::Running) {
                return statuses;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn rounds_errors_and_how_a_worker_ended_are_reported() {
        let workers = Workers::default();
        workers.spawn("counts", |w| async move {
            w.round();
            w.failed(&"first");
            w.round();
            w.failed(&"second");
            w.round();
        });
        workers.spawn("panics", |w| async move {
            w.round();
            panic!("a bug");
        });
        let statuses = ended(&workers).await;
        assert_eq!(statuses.len(), 2);
        let (counts, panics) = (&statuses[0], &statuses[1]);
        assert_eq!((counts.name, counts.state, counts.rounds, counts.errors), ("counts", WorkerState::Stopped, 3, 2));
        assert_eq!(counts.last_error.as_ref().map(|(e, _)| e.as_str()), Some("second"));
        assert_eq!((panics.name, panics.state, panics.rounds, panics.errors), ("panics", WorkerState::Panicked, 1, 0));
        assert!(panics.last_error.is_none());
    }

    #[tokio::test]
    async fn a_running_worker_is_running_until_stopped() {
        let workers = Workers::default();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        workers.spawn("waits", |w| async move {
            w.round();
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started.await.expect("the worker starts");
        let statuses = workers.statuses();
        assert_eq!((statuses[0].state, statuses[0].rounds), (WorkerState::Running, 1));
        workers.stop().await;
        assert!(workers.statuses().is_empty(), "stopped workers leave the registry");
    }
}
