//! Client subcommands: `put`, `get`, `delete`, `scan`, `cluster ...`.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use ringkv_client::{Consistency, PutOptions, Value};
use serde_json::json;

use super::out::outln;
use super::ClientArgs;

#[derive(ValueEnum, Debug, Clone, Copy, Default)]
pub enum ConsistencyArg {
    #[default]
    Linearizable,
    Eventual,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Eventual => Consistency::Eventual,
        }
    }
}

fn value_json(key: &[u8], v: &Value) -> serde_json::Value {
    json!({
        "key": String::from_utf8_lossy(key),
        "value": String::from_utf8_lossy(&v.value),
        "version": v.version,
        "expires_at_ms": v.expires_at_ms,
    })
}

#[derive(Args, Debug)]
pub struct PutCommand {
    pub key: String,
    pub value: String,
    /// Time to live, e.g. 30s or 5m.
    #[arg(long, value_parser = super::parse_duration)]
    pub ttl: Option<Duration>,
    /// Write only if the current version is this (0: only if absent).
    #[arg(long)]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl PutCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let opts = PutOptions { ttl: self.ttl, if_version: self.if_version };
        let r = self.client.client()?.put_detailed(self.key, self.value, opts).await?;
        let hooks: Vec<String> = r.hooks.iter().map(|h| format!("{} v{}", h.name, h.version)).collect();
        if self.client.json {
            outln!("{}", json!({ "version": r.version, "hooks": hooks }))?;
        } else if hooks.is_empty() {
            outln!("OK version={}", r.version)?;
        } else {
            outln!("OK version={} hooks={}", r.version, hooks.join(","))?;
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct GetCommand {
    pub key: String,
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl GetCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let found = self.client.client()?.get_with(self.key.clone(), self.consistency.into()).await?;
        match (found, self.client.json) {
            (Some(v), true) => {
                let mut j = value_json(self.key.as_bytes(), &v);
                j["found"] = json!(true);
                outln!("{j}")?;
            }
            (None, true) => outln!("{}", json!({ "key": self.key, "found": false }))?,
            (Some(v), false) => outln!("{}", String::from_utf8_lossy(&v.value))?,
            (None, false) => outln!("(not found)")?,
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct DeleteCommand {
    pub key: String,
    /// Delete only if the current version is this.
    #[arg(long)]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl DeleteCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let deleted = self.client.client()?.delete_if(self.key, self.if_version).await?;
        if self.client.json {
            outln!("{}", json!({ "deleted": deleted }))?;
        } else {
            outln!("{}", if deleted { "deleted" } else { "(not found)" })?;
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct ScanCommand {
    /// Only keys starting with this ("" for every key).
    pub prefix: String,
    /// Keys per request (0: the server's default, 1000; the server caps it
    /// at its maximum, 10 000 by default). When more keys match, stderr
    /// says so and names the key to continue after.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Only keys after this one (exclusive): the last key of the previous page.
    #[arg(long)]
    pub after: Option<String>,
    /// Every key under the prefix, fetched page by page (--limit keys a page).
    #[arg(long)]
    pub all: bool,
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl ScanCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let client = self.client.client()?;
        let mut after = bytes::Bytes::from(self.after.clone().unwrap_or_default());
        let mut json_items = Vec::new();
        let mut shown = 0usize;
        loop {
            let page = client.scan_page(self.prefix.clone(), after, self.limit, self.consistency.into()).await?;
            shown += page.items.len();
            for i in &page.items {
                if self.client.json {
                    json_items.push(value_json(&i.key, &i.value));
                } else {
                    outln!("{}\t{}", String::from_utf8_lossy(&i.key), String::from_utf8_lossy(&i.value.value))?;
                }
            }
            match page.next_after() {
                Some(next) if self.all => after = next,
                Some(next) => {
                    eprintln!("{}", more_hint(shown, &next));
                    break;
                }
                None => break,
            }
        }
        if self.client.json {
            outln!("{}", serde_json::Value::Array(json_items))?;
        }
        Ok(())
    }
}

/// The stderr line after a page that is not the last: how many keys were
/// shown and how to go on.
fn more_hint(shown: usize, last_key: &[u8]) -> String {
    format!(
        "showing {shown} keys; more exist: continue with --after {}, or use --all to list every key",
        shell_word(&String::from_utf8_lossy(last_key))
    )
}

/// `s` as one shell word: as is when it needs no quoting, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/_.:,=+@%-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, and per Raft group the leader, term and log indexes.
    Status(ClientArgs),
    /// Add a node that is already running.
    ///
    /// While the meta group (which holds membership, hooks and the shard
    /// map) has fewer than five voters, the node joins it as a learner,
    /// catches up and is promoted to voter; once there are five voters it
    /// joins as a learner and stays one (it is not promoted later, even when
    /// a voter is removed). Voter or learner, the node stores data: the
    /// rebalancer then moves shard replicas onto it.
    AddNode {
        id: u64,
        addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every shard: its token range, leader, replicas, keys, size, writes and reads per second.
    ///
    /// Asks every member for the groups it hosts, twice, `--window` apart;
    /// a shard's keys and writes per second are its leader's (or, without a
    /// reachable leader, another replica's), its reads per second the sum
    /// over its replicas.
    Shards {
        /// Time between the two readings the write rates come from.
        #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
        window: std::time::Duration,
        /// Count every shard's keys now (a full scan on every node) instead
        /// of reporting the last count (at most 10 s old, or 100 times as
        /// old as the last count took, if longer).
        #[arg(long)]
        exact: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Split a shard's token range in two, online.
    ///
    /// The shard keeps the lower part; a new shard, on the same replicas,
    /// gets the upper part, and its keys move while clients read and write.
    /// The rebalancer may then move the new shard's replicas to other
    /// nodes. Waits for the keys to move, showing progress, unless
    /// `--no-wait`.
    Split {
        /// The shard to split (`ringkv cluster shards` lists them).
        shard: u32,
        /// The first token of the new shard, in hex (`0x…`) or decimal;
        /// default: the middle of the range.
        #[arg(long, value_parser = parse_token)]
        at: Option<u64>,
        /// Return once the split has started.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Merge a shard into its neighbour on the ring, online.
    ///
    /// ABSORB's keys move to KEEP, whose range then covers both; ABSORB is
    /// retired. Waits for the keys to move, showing progress, unless
    /// `--no-wait`.
    Merge {
        /// The shard that stays.
        keep: u32,
        /// The adjacent shard whose keys move into KEEP.
        absorb: u32,
        /// Return once the merge has started.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Online re-sharding after a partition function change.
    #[command(subcommand)]
    Reshard(ReshardCommand),
}

/// A token on the command line: hex with `0x`, or decimal.
fn parse_token(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{s:?} is not a token (a u64, in hex with 0x or in decimal): {e}"))
}

#[derive(Subcommand, Debug)]
pub enum ReshardCommand {
    /// The partition function and the running (or last) re-shard job's progress.
    Status(ClientArgs),
}

impl ClusterCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self {
            ClusterCommand::Reshard(ReshardCommand::Status(args)) => {
                let r = args.client()?.reshard_status().await?;
                if args.json {
                    outln!("{}", crate::api::reshard_json(&r))?;
                } else {
                    print_reshard(&r)?;
                }
            }
            ClusterCommand::Split { shard, at, no_wait, client } => {
                let c = client.client()?;
                let r = c.split_shard(shard, at).await?;
                follow_resize(&c, &r, no_wait, client.json).await?;
            }
            ClusterCommand::Merge { keep, absorb, no_wait, client } => {
                let c = client.client()?;
                let r = c.merge_shards(keep, absorb).await?;
                follow_resize(&c, &r, no_wait, client.json).await?;
            }
            ClusterCommand::Shards { window, exact, client } => {
                let shards = super::shards::collect(&client, window, exact).await?;
                if client.json {
                    outln!("{}", super::shards::to_json(&shards))?;
                } else {
                    super::shards::print(&shards)?;
                }
            }
            ClusterCommand::Status(args) => {
                let s = args.client()?.status().await?;
                if args.json {
                    outln!("{}", crate::api::status_json(&s))?;
                } else {
                    print_status(&s)?;
                }
            }
            ClusterCommand::AddNode { id, addr, client } => {
                let c = client.client()?;
                c.add_node(id, addr.clone()).await?;
                // The role the meta group gave it; the node answering the
                // status may not have heard of it yet.
                let role = c.status().await.ok().and_then(|s| s.nodes.into_iter().find(|n| n.id == id)).map(|n| n.role);
                if client.json {
                    outln!("{}", json!({ "added": id, "addr": addr, "role": role }))?;
                } else {
                    match role.as_deref() {
                        Some("voter") => outln!("node {id} at {addr} joined as a voter")?,
                        Some("learner") => outln!(
                            "node {id} at {addr} joined as a learner of the meta group (it has five voters); \
                             it stores data all the same"
                        )?,
                        _ => outln!("node {id} at {addr} added")?,
                    }
                }
            }
            ClusterCommand::RemoveNode { id, client } => {
                client.client()?.remove_node(id).await?;
                if client.json {
                    outln!("{}", json!({ "removed": id }))?;
                } else {
                    outln!("node {id} removed")?;
                }
            }
        }
        Ok(())
    }
}

/// Human-readable status: members with their shard and leader counts, the
/// meta group, and shards without a leader.
fn print_status(s: &ringkv_client::proto::StatusResponse) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let shards = &s.shards;
    let mut replicas: BTreeMap<u64, usize> = BTreeMap::new();
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for r in shards {
        for v in &r.replicas {
            *replicas.entry(*v).or_default() += 1;
        }
        if r.leader_id != 0 {
            *leaders.entry(r.leader_id).or_default() += 1;
        }
    }
    outln!("answered by node {}; {} shards", s.node_id, shards.len())?;
    outln!("{:<6} {:<13} {:<7} {:<8} ADDR", "NODE", "ROLE", "SHARDS", "LEADING")?;
    for n in &s.nodes {
        let role = if s.down.contains(&n.id) {
            format!("{} DOWN", n.role)
        } else if s.unreachable.contains(&n.id) {
            format!("{} UNREACH", n.role)
        } else if s.draining.contains(&n.id) {
            format!("{}*", n.role)
        } else {
            n.role.clone()
        };
        outln!(
            "{:<6} {:<13} {:<7} {:<8} {}",
            n.id,
            role,
            replicas.get(&n.id).copied().unwrap_or(0),
            leaders.get(&n.id).copied().unwrap_or(0),
            n.addr
        )?;
    }
    if let Some(m) = s.groups.iter().find(|g| g.kind == "meta") {
        outln!()?;
        outln!(
            "meta group: leader {} term {} last_log {} commit {} applied {}",
            m.leader_id,
            m.term,
            m.last_log_index,
            m.commit_index,
            m.applied_index
        )?;
    }
    let moving: Vec<String> = shards.iter().filter(|r| r.moving).map(|r| r.shard.to_string()).collect();
    if !moving.is_empty() {
        outln!("shards moving: {}", moving.join(", "))?;
    }
    let under: Vec<String> = shards.iter().filter(|r| r.under_replicated).map(|r| r.shard.to_string()).collect();
    if !under.is_empty() {
        outln!("shards under-replicated: {}", under.join(", "))?;
    }
    if !s.draining.is_empty() {
        outln!("* draining")?;
    }
    if !s.hooks.is_empty() {
        outln!()?;
        outln!("hooks (calls on node {}):", s.node_id)?;
        for h in &s.hooks {
            let st = h.stats.unwrap_or_default();
            outln!(
                "  {} v{} {}{}: {} calls, {} rejects, {} errors, {} limit hits, p99 {} us",
                h.name,
                h.version,
                crate::api::stage_name(h.stage),
                if h.active { "" } else { " (removed)" },
                st.calls,
                st.rejects,
                st.errors,
                st.limit_hits,
                st.p99_us
            )?;
        }
    }
    print_workers(s)?;
    if let Some(r) = &s.reshard {
        outln!()?;
        print_reshard(r)?;
    }
    outln!("(use --json for every shard and group)")
}

/// Errors older than this are history, not news: `cluster status` lists a
/// worker only while it is not running or failed within this window.
const RECENT_WORKER_ERROR_MS: u64 = 10 * 60 * 1000;

/// The answering node's background workers: a count, then each one that
/// stopped or failed in the last ten minutes, with its last error.
fn print_workers(s: &ringkv_client::proto::StatusResponse) -> anyhow::Result<()> {
    if s.workers.is_empty() {
        return Ok(());
    }
    let running = s.workers.iter().filter(|w| w.state == "running").count();
    outln!()?;
    outln!("workers on node {}: {running} of {} running", s.node_id, s.workers.len())?;
    for w in &s.workers {
        let recent_error = !w.last_error.is_empty() && w.last_error_ms_ago < RECENT_WORKER_ERROR_MS;
        if w.state != "running" || recent_error {
            let last = if w.last_error.is_empty() {
                String::new()
            } else {
                format!("; last error {:.0} s ago: {}", w.last_error_ms_ago as f64 / 1000.0, w.last_error)
            };
            outln!("  {} {}: {} rounds, {} errors{last}", w.name, w.state, w.rounds, w.errors)?;
        }
    }
    Ok(())
}

/// Reports a started split or merge and, unless `no_wait`, waits for its
/// job to finish, printing its progress (to stderr, so `--json` output
/// stays one document).
async fn follow_resize(
    c: &ringkv_client::Client,
    r: &ringkv_client::proto::ResizeShardsResponse,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        outln!("{} started (job epoch {})", r.change, r.epoch)?;
    }
    let mut finished = None;
    if !no_wait {
        let started = std::time::Instant::now();
        let mut last_line = String::new();
        loop {
            let s = c.reshard_status().await?;
            if !s.running || s.epoch != r.epoch {
                finished = Some(s);
                break;
            }
            let line = format!("  {}/{} shards done, {} keys moved", s.shards_done, s.shards_total, s.keys_moved);
            if line != last_line {
                eprintln!("{line} ({:.0} s)", started.elapsed().as_secs_f64());
                last_line = line;
            }
            for st in &s.stalls {
                eprintln!("  shard {} waits at key \"{}\": {} (retrying)", st.shard, st.key, st.error);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    if json {
        outln!(
            "{}",
            json!({
                "epoch": r.epoch, "change": r.change, "new_shard": r.new_shard,
                "at": r.at.map(|t| format!("{t:016x}")),
                "finished": finished.as_ref().map(|s| s.last_epoch == r.epoch),
                "keys_moved": finished.as_ref().filter(|s| s.last_epoch == r.epoch).map(|s| s.last_keys_moved),
            })
        )?;
    } else if let Some(s) = finished {
        if s.last_epoch == r.epoch {
            outln!(
                "done: {} keys moved in {:.1} s",
                s.last_keys_moved,
                s.last_finished_ms.saturating_sub(s.last_started_ms) as f64 / 1000.0
            )?;
        } else {
            outln!("the job was replaced by job {}; see `ringkv cluster reshard status`", s.epoch)?;
        }
    } else {
        outln!("follow it with `ringkv cluster reshard status` or `ringkv cluster shards`")?;
    }
    Ok(())
}

/// The partition function and re-shard progress, for people.
fn print_reshard(r: &ringkv_client::proto::ReshardStatusResponse) -> anyhow::Result<()> {
    outln!("partition function: {} (epoch {})", r.partitioner, r.epoch)?;
    if r.running {
        let secs = crate::raft::types::now_ms().saturating_sub(r.started_ms) / 1000;
        let what =
            if r.resize.is_empty() { format!("re-sharding from {} to {}", r.from, r.to) } else { r.resize.clone() };
        outln!(
            "{what}: {}/{} shards done, {} keys scanned, {} moved, running for {secs} s",
            r.shards_done,
            r.shards_total,
            r.keys_scanned,
            r.keys_moved
        )?;
        for st in &r.stalls {
            let secs = crate::raft::types::now_ms().saturating_sub(st.since_ms) / 1000;
            outln!("  shard {} is stuck at key \"{}\" for {secs} s: {}", st.shard, st.key, st.error)?;
        }
        if !r.stalls.is_empty() {
            outln!(
                "  the movers keep retrying; to back out, remove the partition function or deploy a fixed one \
                 (this aborts the job, and keys already moved go back or on to the new function)"
            )?;
        }
    } else if r.last_epoch > 0 {
        outln!(
            "last re-shard (epoch {}) finished: {} keys scanned, {} moved in {:.1} s",
            r.last_epoch,
            r.last_keys_scanned,
            r.last_keys_moved,
            r.last_finished_ms.saturating_sub(r.last_started_ms) as f64 / 1000.0
        )?;
    } else {
        outln!("no re-shard has run")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_more_hint_names_a_key_the_shell_passes_back_unchanged() {
        assert_eq!(
            more_hint(1000, b"user/0999"),
            "showing 1000 keys; more exist: continue with --after user/0999, or use --all to list every key"
        );
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
