//! `ringkv backup` and `ringkv restore`: copy a cluster's keys and hooks
//! into a directory (format in `backup_format`), and load such a directory
//! into a fresh cluster of any size and shard count.
//!
//! Backup asks each shard's leader for a point-in-time dump (`Backup.DumpShard`)
//! and the meta leader for the hooks (`Backup.Describe`), following the
//! `ringkv-leader` hint when it asked the wrong node. It writes into a
//! staging directory next to the target and renames it into place at the
//! end, so an interrupted backup never looks finished. Restore verifies
//! every checksum first, then writes the keys through the ordinary client
//! (so the new cluster's ring routes them), then deploys the hooks: a
//! validate hook never re-judges data the source cluster already accepted.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use ringkv_client::proto::{self, backup_client::BackupClient};
use ringkv_client::Channel;
use ringkv_client::{Consistency, PutOptions};
use serde_json::json;

use super::backup_format::{
    self as format, BackedUpHook, HooksEntry, HooksFile, Manifest, Record, ShardEntry, ShardReader, ShardWriter,
    SourceCluster,
};
use super::out::outln;
use super::ClientArgs;
use crate::api::{LEADER_HEADER, PARTITIONER_NONE};

/// How long backup keeps retrying one shard (or the cluster description)
/// while leaders move or nodes restart.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// The longest a dump may wait for its first or next chunk.
const CHUNK_WAIT: Duration = Duration::from_secs(30);
/// Attempts of one restored write that failed with `UNAVAILABLE` or a deadline.
const WRITE_ATTEMPTS: u32 = 8;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Progress lines on stderr: rewritten in place on a terminal, one line at
/// most every few seconds (and at every finished shard) otherwise.
struct Progress {
    what: &'static str,
    quiet: bool,
    tty: bool,
    shards: usize,
    shards_done: AtomicUsize,
    keys: AtomicU64,
    /// Keys expected in all, when known (restore).
    total_keys: Option<u64>,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(what: &'static str, quiet: bool, shards: usize, total_keys: Option<u64>) -> Self {
        Progress {
            what,
            quiet,
            tty: std::io::stderr().is_terminal(),
            shards,
            shards_done: AtomicUsize::new(0),
            keys: AtomicU64::new(0),
            total_keys,
            last: Mutex::new(None),
        }
    }

    fn line(&self) -> String {
        let keys = self.keys.load(Ordering::Relaxed);
        let keys = match self.total_keys {
            Some(t) => format!("{keys}/{t} keys"),
            None => format!("{keys} keys"),
        };
        format!("{}: {}/{} shards, {keys}", self.what, self.shards_done.load(Ordering::Relaxed), self.shards)
    }

    /// Prints the current state if it is time to (always when `force`).
    fn show(&self, force: bool) {
        if self.quiet {
            return;
        }
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !force && last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        if self.tty {
            eprint!("\r{}\x1b[K", self.line());
        } else {
            eprintln!("{}", self.line());
        }
    }

    fn add_keys(&self, n: u64) {
        self.keys.fetch_add(n, Ordering::Relaxed);
        self.show(false);
    }

    fn shard_done(&self) {
        self.shards_done.fetch_add(1, Ordering::Relaxed);
        self.show(true);
    }

    /// Ends the in-place line.
    fn finish(&self) {
        if !self.quiet && self.tty {
            eprintln!();
        }
    }

    fn note(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            if self.tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("{}: {msg}", self.what);
        }
    }
}

#[derive(Args, Debug)]
pub struct BackupCommand {
    /// Directory to write; it must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Shards dumped at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// gRPC channels to the cluster's nodes, by id, plus the seeds.
struct Nodes {
    by_id: BTreeMap<u64, Channel>,
    seeds: Vec<Channel>,
}

/// A channel to `addr` with the CLI's TLS settings and token. The request
/// timeout bounds only the wait for a response's headers; a dump's stream
/// is bounded chunk by chunk ([`CHUNK_WAIT`]).
fn channel(addr: &str, opts: &ringkv_client::ClientOptions) -> anyhow::Result<Channel> {
    Channel::connect_lazy(addr, opts).with_context(|| format!("bad address {addr:?}"))
}

/// What went wrong with one attempt at a leader-only call.
enum Failure {
    /// The node refused or failed; worth trying again (elsewhere).
    Status(tonic::Status),
    /// Local trouble or a bad request: stop.
    Fatal(anyhow::Error),
}

impl Nodes {
    /// Runs `call` on the node it must run on (a group's leader): first
    /// `first`, then wherever a refusal's `ringkv-leader` points, else every
    /// node in turn, until it succeeds or [`RETRY_FOR`] passes.
    async fn on_leader<T, F, Fut>(&self, what: &str, first: Option<u64>, mut call: F) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let all: Vec<Channel> = self.by_id.values().chain(&self.seeds).cloned().collect();
        let deadline = Instant::now() + RETRY_FOR;
        let mut hint = first;
        let mut turn = 0usize;
        loop {
            let target = match hint.take().and_then(|id| self.by_id.get(&id)) {
                Some(ch) => ch.clone(),
                None => {
                    turn += 1;
                    all[turn % all.len()].clone()
                }
            };
            let status = match call(target).await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e.context(what.to_string())),
                Err(Failure::Status(s)) => s,
            };
            // Bad input and missing credentials or grants are the same on every node.
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) {
                bail!("{what}: {}", status.message());
            }
            if Instant::now() >= deadline {
                bail!("{what}: no leader answered within {RETRY_FOR:?}; last error: {}", status.message());
            }
            hint = ringkv_client::routing::header_u64(status.metadata(), LEADER_HEADER);
            tracing::debug!(what, error = %status, ?hint, "retrying");
            tokio::time::sleep(Duration::from_millis(if hint.is_some() { 20 } else { 200 })).await;
        }
    }
}

/// A dump's records as written to one shard file.
async fn dump_shard_once(
    ch: Channel,
    shard: u32,
    shards: u32,
    dir: &Path,
    progress: &Progress,
) -> Result<ShardEntry, Failure> {
    let req = proto::DumpShardRequest { shard, shards };
    let mut client = BackupClient::new(ch).max_decoding_message_size(usize::MAX);
    let call = tokio::time::timeout(CHUNK_WAIT, client.dump_shard(req)).await;
    let mut stream = match call {
        Ok(r) => r.map_err(Failure::Status)?.into_inner(),
        Err(_) => return Err(Failure::Status(tonic::Status::deadline_exceeded("no answer to the dump request"))),
    };
    let file = format::shard_file_name(shard);
    let mut writer = ShardWriter::create(&dir.join(&file)).map_err(Failure::Fatal)?;
    let mut header = None;
    let mut counted = 0u64;
    let result = async {
        loop {
            let next = tokio::time::timeout(CHUNK_WAIT, stream.message())
                .await
                .map_err(|_| Failure::Status(tonic::Status::deadline_exceeded("the dump stalled")))?;
            let Some(chunk) = next.map_err(Failure::Status)? else { break };
            header.get_or_insert((chunk.applied_index, chunk.leader_id, chunk.read_at_ms));
            let n = chunk.records.len() as u64;
            for r in chunk.records {
                let record = Record {
                    key: r.key.to_vec(),
                    value: r.value.to_vec(),
                    version: r.version,
                    expires_at_ms: r.expires_at_ms,
                };
                writer.push(&record).map_err(Failure::Fatal)?;
            }
            counted += n;
            progress.add_keys(n);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // The retry dumps the shard again from the start.
        progress.keys.fetch_sub(counted, Ordering::Relaxed);
        return Err(e);
    }
    let Some((applied_index, leader_id, read_at_ms)) = header else {
        return Err(Failure::Status(tonic::Status::unavailable("the dump ended before its first chunk")));
    };
    let written = writer.finish().map_err(Failure::Fatal)?;
    Ok(ShardEntry {
        shard,
        file,
        keys: written.keys,
        bytes: written.bytes,
        sha256: written.sha256,
        applied_index,
        leader_id,
        read_at_ms,
    })
}

fn hook_of(h: proto::BackedUpHook) -> anyhow::Result<BackedUpHook> {
    let def = h.definition.context("a hook without a definition")?;
    let stage = match proto::HookStage::try_from(def.stage) {
        Ok(proto::HookStage::Validate) => "validate",
        Ok(proto::HookStage::Ttl) => "ttl",
        _ => bail!("hook {} has stage {}, which this ringkv does not know", def.name, def.stage),
    };
    let kind = match proto::HookKind::try_from(def.kind) {
        Ok(proto::HookKind::Lua | proto::HookKind::Unspecified) => "lua",
        Ok(proto::HookKind::Wasm) => "wasm",
        Err(_) => bail!("hook {} has kind {}, which this ringkv does not know", def.name, def.kind),
    };
    Ok(BackedUpHook {
        name: def.name,
        kind: kind.into(),
        stage: stage.into(),
        prefix: def.prefix.to_vec(),
        source: def.source.to_vec(),
        fail_open: def.fail_open,
        timeout_ms: def.timeout_ms,
        version: h.version,
        sha256: h.sha256,
        deployed_at_ms: h.deployed_at_ms,
    })
}

/// `out` may be written only if it does not exist or is an empty directory.
fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty; back up into a new or empty directory", out.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{} cannot be used", out.display()))),
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

impl BackupCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let started = Instant::now();
        check_out_dir(&self.out)?;
        let name = self.out.file_name().context("--out needs a directory name")?.to_string_lossy().to_string();
        let parent = match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let manifest = match self.write_into(&staging).await {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // An empty --out (checked above) gives way to the finished backup.
        if self.out.exists() {
            std::fs::remove_dir(&self.out).with_context(|| format!("replacing the empty {}", self.out.display()))?;
        }
        std::fs::rename(&staging, &self.out)
            .with_context(|| format!("moving {} to {}", staging.display(), self.out.display()))?;
        sync_dir(&parent)?;
        let elapsed = started.elapsed();
        if self.client.json {
            outln!(
                "{}",
                json!({
                    "dir": self.out.display().to_string(),
                    "shards": manifest.shards.len(),
                    "keys": manifest.total_keys,
                    "bytes": manifest.total_bytes,
                    "hooks": manifest.hooks.count,
                    "elapsed_ms": elapsed.as_millis() as u64,
                })
            )?;
        } else {
            outln!(
                "backed up {} keys from {} shards and {} hooks to {} ({} bytes) in {:.1?}",
                manifest.total_keys,
                manifest.shards.len(),
                manifest.hooks.count,
                self.out.display(),
                manifest.total_bytes,
                elapsed
            )?;
        }
        Ok(())
    }

    async fn write_into(&self, dir: &Path) -> anyhow::Result<Manifest> {
        let client = self.client.client()?;
        let ring = client.ring().await.context("fetching the cluster's routing table")?;
        let opts = ringkv_client::ClientOptions { timeout: CHUNK_WAIT, ..self.client.options()? };
        let mut nodes = Nodes { by_id: BTreeMap::new(), seeds: Vec::new() };
        for n in &ring.nodes {
            nodes.by_id.insert(n.id, channel(&n.addr, &opts)?);
        }
        for ep in &self.client.endpoints {
            nodes.seeds.push(channel(ep, &opts)?);
        }
        let described = nodes
            .on_leader("reading the hooks from the meta leader", None, |ch| async move {
                BackupClient::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .describe(proto::DescribeRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(Failure::Status)
            })
            .await?;
        if described.partitioner.starts_with("none, with a ") {
            bail!(
                "the cluster's shards are being resized ({}); back up when `ringkv cluster reshard status` shows it finished",
                described.partitioner.trim_start_matches("none, with a ")
            );
        }
        if described.partitioner != PARTITIONER_NONE {
            bail!(
                "the cluster routes keys by partition function {:?}; backups of partitioned clusters are not supported yet \
                 (remove the partition function, wait for `ringkv cluster reshard status` to finish, then back up)",
                described.partitioner
            );
        }
        let ids: Vec<u32> =
            if described.shard_ids.is_empty() { (0..described.shards).collect() } else { described.shard_ids.clone() };
        let shards = ids.len() as u32;
        let leaders: BTreeMap<u32, u64> = ring.routes.iter().map(|r| (r.shard, r.leader_id)).collect();
        let progress = Progress::new("backup", self.quiet, ids.len(), None);
        progress.show(true);
        let (nodes, progress) = (&nodes, &progress);
        let mut entries: Vec<ShardEntry> = futures::stream::iter(ids)
            .map(|shard| {
                let first = leaders.get(&shard).copied().filter(|l| *l != 0);
                async move {
                    let entry = nodes
                        .on_leader(&format!("dumping shard {shard}"), first, |ch| {
                            dump_shard_once(ch, shard, shards, dir, progress)
                        })
                        .await?;
                    progress.shard_done();
                    Ok::<_, anyhow::Error>(entry)
                }
            })
            .buffer_unordered(usize::from(self.parallel))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        progress.finish();
        entries.sort_by_key(|e| e.shard);
        let hooks = HooksFile {
            format_version: format::FORMAT_VERSION,
            meta_applied_index: described.meta_applied_index,
            hooks: described.hooks.into_iter().map(hook_of).collect::<anyhow::Result<_>>()?,
        };
        let (hooks_bytes, hooks_sha) = format::write_json(&dir.join(format::HOOKS_FILE), &hooks)?;
        let created_at_ms = now_ms();
        let manifest = Manifest {
            format: format::FORMAT_NAME.into(),
            format_version: format::FORMAT_VERSION,
            created_at: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(created_at_ms))
                .to_string(),
            created_at_ms,
            ringkv_version: env!("CARGO_PKG_VERSION").into(),
            partitioner: described.partitioner,
            source: SourceCluster {
                nodes: described.nodes.len(),
                node_ids: described.nodes.iter().map(|n| n.id).collect(),
                shards,
                replication_factor: described.replication_factor,
            },
            total_keys: entries.iter().map(|e| e.keys).sum(),
            total_bytes: entries.iter().map(|e| e.bytes).sum(),
            shards: entries,
            hooks: HooksEntry {
                file: format::HOOKS_FILE.into(),
                count: hooks.hooks.len(),
                bytes: hooks_bytes,
                sha256: hooks_sha,
            },
        };
        // The manifest goes last: a directory with one holds everything it names.
        format::write_json(&dir.join(format::MANIFEST_FILE), &manifest)?;
        sync_dir(dir)?;
        Ok(manifest)
    }
}

#[derive(Args, Debug)]
pub struct RestoreCommand {
    /// A directory written by `ringkv backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Restore even into a cluster that already holds keys or active hooks
    /// (keys in the backup overwrite them; its hooks judge the restored keys).
    #[arg(long)]
    pub force: bool,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A backed-up hook as a definition to deploy.
fn definition_of(h: &BackedUpHook) -> anyhow::Result<proto::HookDefinition> {
    let stage = match h.stage.as_str() {
        "validate" => proto::HookStage::Validate,
        "ttl" => proto::HookStage::Ttl,
        other => bail!("hook {} has stage {other:?}, which this ringkv does not know", h.name),
    };
    let kind = match h.kind.as_str() {
        "lua" => proto::HookKind::Lua,
        "wasm" => proto::HookKind::Wasm,
        other => bail!("hook {} has kind {other:?}, which this ringkv does not know", h.name),
    };
    Ok(proto::HookDefinition {
        name: h.name.clone(),
        kind: kind as i32,
        stage: stage as i32,
        prefix: h.prefix.clone().into(),
        source: h.source.clone().into(),
        fail_open: h.fail_open,
        timeout_ms: h.timeout_ms,
    })
}

/// What restoring one record did.
enum Restored {
    Written,
    /// Its expiry passed before it could be written.
    Expired,
}

async fn restore_record(client: &ringkv_client::Client, r: Record) -> anyhow::Result<Restored> {
    let mut attempt = 0;
    loop {
        let ttl = match r.expires_at_ms {
            None => None,
            Some(at) => match at.checked_sub(now_ms()).filter(|left| *left > 0) {
                Some(left) => Some(Duration::from_millis(left)),
                None => return Ok(Restored::Expired),
            },
        };
        let opts = PutOptions { ttl, if_version: None };
        match client.put_with(r.key.clone(), r.value.clone(), opts).await {
            Ok(_) => return Ok(Restored::Written),
            Err(e @ (ringkv_client::Error::Unavailable(_) | ringkv_client::Error::DeadlineExceeded(_)))
                if attempt + 1 < WRITE_ATTEMPTS =>
            {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying a restored write");
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(e) => bail!("writing key {}: {e}", format::lossy(&r.key)),
        }
    }
}

impl RestoreCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let started = Instant::now();
        let verified =
            format::verify(&self.from).with_context(|| format!("refusing to restore from {}", self.from.display()))?;
        let (manifest, hooks) = (verified.manifest, verified.hooks.hooks);
        let definitions = hooks.iter().map(definition_of).collect::<anyhow::Result<Vec<_>>>()?;
        let progress = Progress::new("restore", self.quiet, manifest.shards.len(), Some(manifest.total_keys));
        progress.note(format!(
            "{} verified: {} keys in {} shard files, {} hooks, taken {} from a {}-node, {}-shard cluster",
            self.from.display(),
            manifest.total_keys,
            manifest.shards.len(),
            hooks.len(),
            manifest.created_at,
            manifest.source.nodes,
            manifest.source.shards
        ));

        let client = self.client.client()?;
        let existing = client.scan("", 1, Consistency::Linearizable).await.context("checking the target cluster")?;
        let active: Vec<String> =
            client.list_hooks().await?.hooks.into_iter().filter(|h| h.active).map(|h| h.name).collect();
        if !self.force {
            if let Some(item) = existing.first() {
                bail!(
                    "the target cluster already holds keys (e.g. {}); restore into a fresh cluster, or pass --force to write over them",
                    format::lossy(&item.key)
                );
            }
            if !active.is_empty() {
                bail!(
                    "the target cluster already has active hooks ({}), which would judge the restored keys; restore into a fresh cluster, or pass --force",
                    active.join(", ")
                );
            }
        }

        // Keys first, hooks after: the source cluster already accepted these keys.
        progress.show(true);
        let expired = AtomicU64::new(0);
        for entry in &manifest.shards {
            let reader = ShardReader::open(&self.from.join(&entry.file))?;
            let (client, progress, expired) = (&client, &progress, &expired);
            let mut writes = futures::stream::iter(reader)
                .map(|record| async move {
                    match restore_record(client, record?).await? {
                        Restored::Written => {}
                        Restored::Expired => {
                            expired.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    progress.add_keys(1);
                    Ok::<_, anyhow::Error>(())
                })
                .buffer_unordered(usize::from(self.concurrency));
            while let Some(done) = writes.next().await {
                done?;
            }
            progress.shard_done();
        }
        progress.finish();
        for (hook, def) in hooks.iter().zip(definitions) {
            let mut attempt = 0;
            let deployed = loop {
                match client.deploy_hook(def.clone()).await {
                    Err(ringkv_client::Error::Unavailable(_)) if attempt + 1 < WRITE_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => break other.with_context(|| format!("deploying hook {}", hook.name))?,
                }
            };
            progress.note(format!("hook {} ({}) deployed as version {}", hook.name, hook.stage, deployed.version));
        }
        let expired = expired.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        if self.client.json {
            outln!(
                "{}",
                json!({
                    "keys": manifest.total_keys - expired,
                    "expired_skipped": expired,
                    "hooks": hooks.len(),
                    "elapsed_ms": elapsed.as_millis() as u64,
                })
            )?;
        } else {
            outln!(
                "restored {} keys ({expired} expired since the backup, skipped) and {} hooks from {} in {:.1?}",
                manifest.total_keys - expired,
                hooks.len(),
                self.from.display(),
                elapsed
            )?;
        }
        Ok(())
    }
}
