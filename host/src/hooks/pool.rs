//! The hook worker pool: a few dedicated OS threads that run hook calls, so
//! Lua never runs on (and never blocks) the async runtime. Each worker keeps
//! its own VMs (thread-local in the runtimes), which is what makes pooling
//! cheap: a call never waits for a VM, only for a free worker.
//!
//! The caller waits at most the job's deadline plus a grace period. A hook
//! stuck in a C function the interrupt cannot reach still holds its worker,
//! but the write it judges is answered on time; the runtime discards that
//! VM when the call finally returns.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Extra time the caller allows past a job's own deadline before giving up
/// on the worker (covers queueing behind other calls and thread wake-ups).
const GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("no hook worker finished the call within {0:?}")]
    Deadline(Duration),
    #[error("the hook workers have stopped")]
    Stopped,
}

/// A fixed set of hook worker threads.
pub struct HookPool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    threads: usize,
}

impl HookPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize) -> std::io::Result<HookPool> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("ringkv-hook-{i}")).spawn(move || loop {
                // The lock is held only while waiting for a job, never while running one.
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            })?;
        }
        Ok(HookPool { jobs: Mutex::new(Some(tx)), threads })
    }

    /// A pool sized for this machine: one worker per core, at least two, so
    /// one slow hook never holds up every write.
    pub fn for_machine() -> std::io::Result<HookPool> {
        HookPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()).max(2))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker and waits for it, at most `deadline` plus a grace period.
    pub async fn run<T, F>(&self, deadline: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        {
            let jobs = self.jobs.lock().map_err(|_| PoolError::Stopped)?;
            jobs.as_ref().ok_or(PoolError::Stopped)?.send(job).map_err(|_| PoolError::Stopped)?;
        }
        let limit = deadline + GRACE;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(PoolError::Stopped),
            Err(_) => Err(PoolError::Deadline(limit)),
        }
    }

    /// Stops the workers once the queued jobs are done.
    pub fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_answers_a_stuck_one_at_its_deadline() {
        let pool = HookPool::new(2).expect("pool starts");
        assert_eq!(pool.run(Duration::from_millis(10), || 41 + 1).await, Ok(42));
        // A job that outlives its deadline (like a hook stuck in a C function):
        // the caller gets an answer, and the other worker keeps serving.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck = pool.run(Duration::from_millis(1), move || wait.recv().is_ok()).await;
        assert!(matches!(stuck, Err(PoolError::Deadline(_))));
        assert_eq!(pool.run(Duration::from_millis(10), || "still serving").await, Ok("still serving"));
        release.send(()).expect("job is waiting");
        pool.stop();
        assert_eq!(pool.run(Duration::from_millis(10), || ()).await, Err(PoolError::Stopped));
    }
}
