//! Client load that checks itself while the cluster changes under it:
//! writers put new keys and remember what was acknowledged, readers read
//! acknowledged keys back and record every miss or wrong value. Used by the
//! online re-sharding, split and merge tests.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ringkv_client::{Client, Error};

/// A bound on each background task, whatever happens.
const MAX_OPS_PER_TASK: u64 = 200_000;

/// Puts `key`, retrying transient failures (a leader change), a few times.
pub async fn put_retrying(client: &Client, key: String, value: String) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..5 {
        match client.put(key.clone(), value.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| Error::Unavailable("no attempt".into())))
}

/// Tries a writer of [`Workload::start`] makes while the cluster answers
/// UNAVAILABLE.
const WRITE_TRIES: u32 = 3;

/// Puts `key`, trying again (`tries` times in all) while the cluster
/// answers UNAVAILABLE, as an application would: that code says the write
/// may be retried (a shard without a leader for a moment, a node going away).
async fn put_if_unavailable_again(client: &Client, key: &str, value: &str, tries: u32) -> Result<u64, Error> {
    let mut tried = 0;
    loop {
        tried += 1;
        match client.put(key.to_string(), value.to_string()).await {
            Err(Error::Unavailable(_)) if tried < tries => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return other,
        }
    }
}

/// Puts `keys` (key, value) 64 at a time, retrying each a few times;
/// panics naming the first that could not be written.
pub async fn load(client: &Client, keys: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let loaded: Vec<Result<(String, String), String>> = futures::stream::iter(keys)
        .map(|(k, v)| {
            let client = client.clone();
            async move { put_retrying(&client, k.clone(), v.clone()).await.map(|_| (k, v)).map_err(|e| e.to_string()) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    loaded.into_iter().map(|r| r.unwrap_or_else(|e| panic!("initial load: {e}"))).collect()
}

/// Writers and readers running in the background until [`Workload::finish`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    /// Every acknowledged (key, value), the initial ones first.
    pub acked: Arc<Mutex<Vec<(String, String)>>>,
    /// Keys whose write failed (not acknowledged: allowed to be lost, or to land).
    pub failed_writes: Arc<Mutex<BTreeSet<String>>>,
    /// The first few of those failures: key and error.
    pub write_errors: Arc<Mutex<Vec<String>>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// Reads that returned the acknowledged value.
    pub reads: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts `writers` writers putting `key(writer, n)` and `readers`
    /// readers reading back keys of `acked` (which must not be empty).
    pub fn start(
        client: &Client,
        acked: Vec<(String, String)>,
        writers: usize,
        readers: usize,
        key: fn(usize, u64) -> String,
    ) -> Workload {
        Self::start_with_tries(client, acked, writers, readers, key, WRITE_TRIES)
    }

    /// [`Workload::start`] whose writers try each write `tries` times while
    /// the cluster answers UNAVAILABLE: for a test whose claim is that every
    /// write succeeds in the end, however long a slow machine makes an
    /// election take (each try waits up to the request timeout).
    pub fn start_with_tries(
        client: &Client,
        acked: Vec<(String, String)>,
        writers: usize,
        readers: usize,
        key: fn(usize, u64) -> String,
        tries: u32,
    ) -> Workload {
        let mut w = Workload {
            stop: Arc::default(),
            acked: Arc::new(Mutex::new(acked)),
            failed_writes: Arc::default(),
            write_errors: Arc::default(),
            violations: Arc::default(),
            reads: Arc::default(),
            tasks: Vec::new(),
        };
        for i in 0..writers {
            let (client, stop, acked) = (client.clone(), w.stop.clone(), w.acked.clone());
            let (failed, errors) = (w.failed_writes.clone(), w.write_errors.clone());
            w.tasks.push(tokio::spawn(async move {
                for n in 0..MAX_OPS_PER_TASK {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (k, v) = (key(i, n), format!("live{n}"));
                    match put_if_unavailable_again(&client, &k, &v, tries).await {
                        Ok(_) => acked.lock().expect("lock").push((k, v)),
                        Err(e) => {
                            let mut errors = errors.lock().expect("lock");
                            if errors.len() < 10 {
                                errors.push(format!("{k}: {e}"));
                            }
                            failed.lock().expect("lock").insert(k);
                        }
                    }
                }
            }));
        }
        for r in 0..readers {
            let (client, stop, acked, violations, reads) =
                (client.clone(), w.stop.clone(), w.acked.clone(), w.violations.clone(), w.reads.clone());
            w.tasks.push(tokio::spawn(async move {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ r as u64;
                for _ in 0..MAX_OPS_PER_TASK {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let picked = {
                        let a = acked.lock().expect("lock");
                        a[(x % a.len() as u64) as usize].clone()
                    };
                    match client.get(picked.0.clone()).await {
                        Ok(Some(v)) if v.value.as_ref() == picked.1.as_bytes() => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(v)) => violations.lock().expect("lock").push(format!(
                            "{} read {:?}, acknowledged {:?}",
                            picked.0,
                            String::from_utf8_lossy(&v.value),
                            picked.1
                        )),
                        Ok(None) => violations.lock().expect("lock").push(format!("{} not found", picked.0)),
                        // Unavailable around a crash: not an answer, not a violation.
                        Err(_) => {}
                    }
                }
            }));
        }
        w
    }

    /// Lets the readers read 200 more keys, stops every task, and panics if
    /// a read missed an acknowledged key or returned a wrong value. Returns
    /// the acknowledged writes.
    pub async fn finish(self) -> Vec<(String, String)> {
        let more = self.reads.load(Ordering::Relaxed) + 200;
        crate::eventually("readers to keep reading", || {
            let n = self.reads.load(Ordering::Relaxed);
            async move { (n >= more).then_some(()) }
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let violations = self.violations.lock().expect("lock").clone();
        assert!(
            violations.is_empty(),
            "{} bad reads, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(10)]
        );
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

/// Reads every acknowledged key back and panics naming those lost or
/// holding another value.
pub async fn assert_none_lost(client: &Client, acked: &[(String, String)]) {
    let lost: Vec<String> = futures::stream::iter(acked.to_vec())
        .map(|(k, v)| {
            let client = client.clone();
            async move {
                match client.get(k.clone()).await {
                    Ok(Some(got)) if got.value.as_ref() == v.as_bytes() => None,
                    other => Some(format!("{k}: {other:?}")),
                }
            }
        })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(lost.is_empty(), "{} acknowledged writes lost, first: {:?}", lost.len(), &lost[..lost.len().min(10)]);
}
