//! The hook worker pool: a few dedicated OS threads that run hook calls, so
//! Lua never runs on (and never blocks) the async runtime. Each worker keeps
//! its own VMs (thread-local in the runtimes), which is what makes pooling
//! cheap: a call never waits for a VM, only for a free worker.
//!
//! The caller waits a bounded time for a worker to pick the job up, then at
//! most the job's deadline plus a grace period for it to finish, so time
//! spent queueing never counts against a hook's own deadline. A job whose
//! caller stopped waiting is skipped, not run. A hook stuck in a C function
//! the interrupt cannot reach still holds its worker, but the write it
//! judges is answered on time; the runtime discards that VM when the call
//! finally returns.

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
    #[error("no hook worker was free within {0:?}")]
    Busy(Duration),
    #[error("the hook call did not finish within {0:?}")]
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

    /// Runs `f` on a worker: waits at most `queue` for a worker to start
    /// it, then at most `deadline` plus a grace period for it to finish.
    pub async fn run<T, F>(&self, queue: Duration, deadline: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return; // the caller gave up while the job was queued
            }
            let _ = started_tx.send(());
            let _ = tx.send(f());
        });
        {
            let jobs = self.jobs.lock().map_err(|_| PoolError::Stopped)?;
            jobs.as_ref().ok_or(PoolError::Stopped)?.send(job).map_err(|_| PoolError::Stopped)?;
        }
        match tokio::time::timeout(queue, started_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PoolError::Stopped),
            Err(_) => return Err(PoolError::Busy(queue)),
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
        let q = Duration::from_secs(10);
        let pool = HookPool::new(2).expect("pool starts");
        assert_eq!(pool.run(q, Duration::from_millis(10), || 41 + 1).await, Ok(42));
        // A job that outlives its deadline (like a hook stuck in a C function):
        // the caller gets an answer, and the other worker keeps serving.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck = pool.run(q, Duration::from_millis(1), move || wait.recv().is_ok()).await;
        assert!(matches!(stuck, Err(PoolError::Deadline(_))));
        assert_eq!(pool.run(q, Duration::from_millis(10), || "still serving").await, Ok("still serving"));
        release.send(()).expect("job is waiting");
        pool.stop();
        assert_eq!(pool.run(q, Duration::from_millis(10), || ()).await, Err(PoolError::Stopped));
    }

    #[tokio::test]
    async fn a_job_whose_caller_gave_up_in_the_queue_is_skipped() {
        let pool = Arc::new(HookPool::new(1).expect("pool starts"));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let runner = pool.clone();
        let busy = tokio::spawn(async move {
            runner.run(Duration::from_secs(10), Duration::from_secs(10), move || wait.recv().is_ok()).await
        });
        // Wait until the only worker is busy.
        while pool.run(Duration::from_millis(1), Duration::ZERO, || ()).await
            != Err(PoolError::Busy(Duration::from_millis(1)))
        {}
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let gave_up = pool
            .run(Duration::from_millis(1), Duration::ZERO, move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await;
        assert_eq!(gave_up, Err(PoolError::Busy(Duration::from_millis(1))));
        release.send(()).expect("job is waiting");
        assert_eq!(busy.await.expect("task"), Ok(true));
        // The worker is free again and has passed over the abandoned job.
        assert_eq!(pool.run(Duration::from_secs(10), Duration::from_secs(10), || 7).await, Ok(7));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "an abandoned job ran");
    }
}
