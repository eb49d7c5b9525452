//! `ringkv bench`: closed-loop load against ringkv (or etcd, for comparison).
//!
//! Each of `--clients` tasks sends one request, waits for the reply, records
//! its latency and sends the next, until `--duration` passes (or Ctrl-C or
//! SIGTERM: the run stops early and reports what it measured). Latencies go
//! into one HDR histogram per task, merged at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;

use super::client_cmds::ConsistencyArg;
use super::out::outln;
use super::ClientArgs;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    Put,
    Get,
    /// 50% puts, 50% gets.
    Mixed,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchTarget {
    #[default]
    Ringkv,
    /// An etcd v3 cluster (needs a build with `--features etcd`).
    Etcd,
}

#[derive(Args, Debug)]
pub struct BenchCommand {
    #[arg(long, value_enum, default_value = "put")]
    pub op: BenchOp,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Write JSON objects (`{"id":..,"name":..,...}` padded to about
    /// --value-size bytes) instead of filler bytes, e.g. to measure a
    /// validation hook that parses JSON.
    #[arg(long)]
    pub value_json: bool,
    /// Write fresh random bytes for every put instead of filler bytes:
    /// values that do not compress, e.g. to measure disk use.
    #[arg(long, conflicts_with = "value_json")]
    pub value_random: bool,
    /// Size of the key space; keys are `bench/00000000` ...
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Spread the keys over this many tenants, as `t0007/00000042` (the
    /// tenant is the part a tenant partition function routes by); 0: `bench/...`.
    #[arg(long, default_value_t = 0)]
    pub tenants: u64,
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    /// Skip writing every key once before measuring. Without this flag,
    /// get and mixed runs first write all --keys keys (progress on stderr);
    /// put runs never preload.
    #[arg(long)]
    pub no_preload: bool,
    /// Which system to drive.
    #[arg(long, value_enum, default_value_t)]
    pub target: BenchTarget,
    /// Send every request to the endpoints in turn (the receiving node
    /// forwards it) instead of routing it to the shard's leader or replicas
    /// by the cluster's routing table.
    #[arg(long)]
    pub no_ring_routing: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One system the bench can drive.
#[derive(Clone)]
enum Target {
    Ringkv(ringkv_client::Client),
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::Client),
}

impl Target {
    async fn put(&self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Ringkv(c) => c.put(key, value).await.map(|_| ())?,
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => c.kv_client().put(key, value, None).await.map(|_| ())?,
        }
        Ok(())
    }

    async fn get(&self, key: String, consistency: ConsistencyArg) -> anyhow::Result<()> {
        match self {
            Target::Ringkv(c) => c.get_with(key, consistency.into()).await.map(|_| ())?,
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                let opts = match consistency {
                    ConsistencyArg::Linearizable => None,
                    ConsistencyArg::Eventual => Some(etcd_client::GetOptions::new().with_serializable()),
                };
                c.kv_client().get(key, opts).await.map(|_| ())?
            }
        }
        Ok(())
    }
}

/// A JSON object of about `size` bytes with the fields example hooks check.
fn json_value(size: usize) -> Vec<u8> {
    let mut v = json!({
        "id": 4217, "name": "bench-user", "email": "bench-user@example.com",
        "tags": ["a", "b", "c"], "active": true, "score": 12.5, "pad": "",
    });
    let len = v.to_string().len();
    v["pad"] = json!("x".repeat(size.saturating_sub(len)));
    v.to_string().into_bytes()
}

/// The values a run writes.
#[derive(Clone)]
enum Values {
    /// The same bytes every time.
    Fixed(Vec<u8>),
    /// Fresh random bytes of this length every time.
    Random(usize),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Fixed(v) => v.len(),
            Values::Random(n) => *n,
        }
    }

    fn next(&self) -> Vec<u8> {
        match self {
            Values::Fixed(v) => v.clone(),
            Values::Random(n) => {
                let mut v = vec![0u8; *n];
                rand::rng().fill(&mut v[..]);
                v
            }
        }
    }
}

fn key_name(i: u64, tenants: u64) -> String {
    match tenants {
        0 => format!("bench/{i:08}"),
        n => format!("t{:04}/{i:08}", i % n),
    }
}

impl BenchCommand {
    async fn target(&self) -> anyhow::Result<Target> {
        match self.target {
            BenchTarget::Ringkv => Ok(Target::Ringkv(self.client.client()?.with_ring_routing(!self.no_ring_routing))),
            #[cfg(feature = "etcd")]
            BenchTarget::Etcd => Ok(Target::Etcd(
                etcd_client::Client::connect(&self.client.endpoints, None).await.context("connecting to etcd")?,
            )),
            #[cfg(not(feature = "etcd"))]
            BenchTarget::Etcd => {
                anyhow::bail!("this ringkv was built without etcd support; rebuild with --features etcd")
            }
        }
    }

    pub async fn execute(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.keys >= 1, "--keys must be at least 1");
        let target = self.target().await?;
        let values = match (self.value_json, self.value_random) {
            (true, _) => Values::Fixed(json_value(self.value_size)),
            (false, true) => Values::Random(self.value_size),
            (false, false) => Values::Fixed(vec![b'x'; self.value_size]),
        };
        if self.op != BenchOp::Put && !self.no_preload {
            self.preload(&target, &values).await?;
        }
        let started = Instant::now();
        let deadline = started + self.duration;
        // Ctrl-C or SIGTERM ends the run early, still reporting what it measured.
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(stop_on_signal(stop.clone()));
        let mut tasks = Vec::new();
        for _ in 0..self.clients {
            let target = target.clone();
            let values = values.clone();
            let (op, keys, consistency, tenants) = (self.op, self.keys, self.consistency, self.tenants);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).context("histogram")?;
                let mut errors = 0u64;
                let mut first_error = None;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let (k, is_put) = {
                        let mut rng = rand::rng();
                        let is_put = match op {
                            BenchOp::Put => true,
                            BenchOp::Get => false,
                            BenchOp::Mixed => rng.random_bool(0.5),
                        };
                        (rng.random_range(0..keys), is_put)
                    };
                    let start = Instant::now();
                    let r = if is_put {
                        target.put(key_name(k, tenants), values.next()).await
                    } else {
                        target.get(key_name(k, tenants), consistency).await
                    };
                    match r {
                        Ok(()) => hist.record(start.elapsed().as_micros() as u64).context("recording")?,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                Ok::<_, anyhow::Error>((hist, errors, first_error))
            }));
        }
        let mut hist = Histogram::<u64>::new(3).context("histogram")?;
        let mut errors = 0;
        let mut first_error = None;
        for t in tasks {
            let (h, e, fe) = t.await.context("bench task panicked")??;
            hist.add(h).context("merging histograms")?;
            errors += e;
            if first_error.is_none() {
                first_error = fe;
            }
        }
        let secs = started.elapsed().min(self.duration).as_secs_f64();
        let ops = hist.len() as f64 / secs;
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let target_name = format!("{:?}", self.target).to_lowercase();
        if self.client.json {
            outln!(
                "{}",
                json!({
                    "target": target_name, "op": format!("{:?}", self.op).to_lowercase(),
                    "consistency": format!("{:?}", self.consistency).to_lowercase(),
                    "clients": self.clients, "value_bytes": values.len(), "ring_routing": !self.no_ring_routing, "duration_s": secs, "ops": hist.len(), "ops_per_sec": ops,
                    "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "errors": errors,
                    "first_error": first_error,
                })
            )?;
        } else {
            outln!(
                "{target_name} {:?} clients={} ops/s={ops:.0} p50={:.2}ms p99={:.2}ms p999={:.2}ms errors={errors}",
                self.op,
                self.clients,
                ms(0.5),
                ms(0.99),
                ms(0.999)
            )?;
            if let Some(e) = first_error {
                outln!("first error: {e}")?;
            }
        }
        Ok(())
    }

    /// Writes every key once, with the same concurrency, printing progress
    /// on stderr every second.
    async fn preload(&self, target: &Target, values: &Values) -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (keys, tenants) = (self.keys, self.tenants);
        eprintln!(
            "preloading {keys} keys ({} to {}) before the {} {} run; --no-preload skips this",
            key_name(0, tenants),
            key_name(keys - 1, tenants),
            humantime::format_duration(self.duration),
            format!("{:?}", self.op).to_lowercase()
        );
        let next = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let progress = tokio::spawn({
            let written = written.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    eprintln!("{}", preload_progress(written.load(Ordering::Relaxed), keys));
                }
            }
        });
        let mut tasks = Vec::new();
        for _ in 0..self.clients {
            let (target, values, next, written) = (target.clone(), values.clone(), next.clone(), written.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return Ok::<_, anyhow::Error>(());
                    }
                    target.put(key_name(i, tenants), values.next()).await?;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut result = Ok(());
        for t in tasks {
            if let Err(e) = t.await.context("preload task panicked").and_then(|r| r.context("preloading")) {
                result = result.and(Err(e));
            }
        }
        progress.abort();
        result?;
        eprintln!(
            "preloaded {keys} keys in {:.1} s; measuring for {}",
            started.elapsed().as_secs_f64(),
            humantime::format_duration(self.duration)
        );
        Ok(())
    }
}

/// One line of preload progress: `preloading 34000/100000 keys (34%)`.
fn preload_progress(done: u64, keys: u64) -> String {
    format!("preloading {done}/{keys} keys ({}%)", done * 100 / keys.max(1))
}

/// Sets `stop` on Ctrl-C or SIGTERM.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_differ_and_fixed_ones_do_not() {
        let random = Values::Random(64);
        let (a, b) = (random.next(), random.next());
        assert_eq!((a.len(), b.len()), (64, 64));
        assert_ne!(a, b);
        let fixed = Values::Fixed(b"xx".to_vec());
        assert_eq!(fixed.next(), fixed.next());
    }

    #[test]
    fn preload_progress_counts_keys_and_percent() {
        assert_eq!(preload_progress(34_000, 100_000), "preloading 34000/100000 keys (34%)");
        assert_eq!(preload_progress(0, 7), "preloading 0/7 keys (0%)");
    }
}
