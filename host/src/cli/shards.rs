//! `ringkv cluster shards`: every shard's token range, leader, replicas,
//! keys, write and read rates, gathered from every member of the cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringkv_client::proto::GroupStatus;
use serde_json::json;

use super::out::outln;
use super::ClientArgs;
use crate::cluster::shard_group;
use crate::ring::ShardMap;

/// One shard as the command shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    pub shard: u32,
    /// First and last token of the shard's range, both included; `None`
    /// for a shard a merge is retiring.
    pub tokens: Option<(u64, u64)>,
    /// 0 when no leader is known.
    pub leader: u64,
    pub replicas: Vec<u64>,
    pub moving: bool,
    pub under_replicated: bool,
    /// The node whose figures `keys` and `writes_per_sec` are: the leader,
    /// or another replica when the leader did not answer; `None` when no
    /// replica did.
    pub reported_by: Option<u64>,
    pub keys: Option<u64>,
    /// Bytes of keys and stored values (uncompressed), as old as `keys`.
    pub bytes: Option<u64>,
    /// `None` without two readings from the same replica, or when its
    /// process restarted between them.
    pub writes_per_sec: Option<f64>,
    /// Client reads per second over every replica that answered twice
    /// (eventual reads go to any replica); `None` when none did.
    pub reads_per_sec: Option<f64>,
}

/// Each answering member's groups, by member id and group id.
type Readings = BTreeMap<u64, BTreeMap<u64, GroupStatus>>;

/// Reads every member twice, `window` apart (the second time counting keys
/// now when `exact`), and puts each shard's figures together.
pub async fn collect(args: &ClientArgs, window: Duration, exact: bool) -> anyhow::Result<Vec<ShardRow>> {
    let seed = args.client()?.status().await?;
    let opts = args.options()?;
    let mut members = Vec::new();
    for n in &seed.nodes {
        members.push((n.id, ringkv_client::Client::connect_with([n.addr.as_str()], opts.clone())?));
    }
    let first = read_all(&members, false).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let second = read_all(&members, exact).await;
    let elapsed = started.elapsed();
    // A server older than split and merge gives no ranges: its shards
    // are the equal ranges of their count.
    let uniform = ShardMap::uniform(u32::try_from(seed.shards.len())?);
    let mut rows: Vec<ShardRow> = seed
        .shards
        .iter()
        .map(|route| {
            let group = shard_group(route.shard);
            // The leader's figures, else those of any replica that answered.
            let reporter = std::iter::once(route.leader_id)
                .chain(route.replicas.iter().copied())
                .find(|id| *id != 0 && second.get(id).is_some_and(|groups| groups.contains_key(&group)));
            let now = reporter.and_then(|id| second.get(&id)?.get(&group));
            let before = reporter.and_then(|id| first.get(&id)?.get(&group));
            ShardRow {
                shard: route.shard,
                tokens: match (route.first_token, route.last_token) {
                    (Some(first), Some(last)) => Some((first, last)),
                    _ if seed.shards.iter().all(|r| r.first_token.is_none()) => {
                        uniform.range(route.shard).map(|r| (r.first, r.last))
                    }
                    _ => None,
                },
                leader: route.leader_id,
                replicas: route.replicas.clone(),
                moving: route.moving,
                under_replicated: route.under_replicated,
                reported_by: reporter,
                keys: now.map(|g| g.keys),
                bytes: now.map(|g| g.bytes),
                writes_per_sec: match (before, now) {
                    (Some(b), Some(n)) => rate(b.applied_ops, n.applied_ops, elapsed),
                    _ => None,
                },
                reads_per_sec: route
                    .replicas
                    .iter()
                    .filter_map(|id| {
                        let (b, n) = (first.get(id)?.get(&group)?, second.get(id)?.get(&group)?);
                        rate(b.served_reads, n.served_reads, elapsed)
                    })
                    .reduce(|a, b| a + b),
            }
        })
        .collect();
    // Token order; retiring shards last.
    rows.sort_by_key(|r| (r.tokens.is_none(), r.tokens, r.shard));
    Ok(rows)
}

async fn read_all(members: &[(u64, ringkv_client::Client)], exact: bool) -> Readings {
    let reads = members.iter().map(|(id, client)| async move { (*id, client.status_with(exact).await) });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter_map(|(id, status)| {
            let groups = status.ok()?.groups.into_iter().map(|g| (g.group_id, g)).collect();
            Some((id, groups))
        })
        .collect()
}

/// Ops per second between two readings of a replica's applied-op counter.
fn rate(before: u64, now: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

pub fn to_json(rows: &[ShardRow]) -> serde_json::Value {
    json!({
        "shards": rows.iter().map(|r| json!({
            "shard": r.shard,
            // Hex strings: a u64 does not fit a JSON number exactly.
            "first_token": r.tokens.map(|t| format!("{:016x}", t.0)),
            "last_token": r.tokens.map(|t| format!("{:016x}", t.1)),
            "leader_id": r.leader,
            "replicas": r.replicas,
            "moving": r.moving,
            "under_replicated": r.under_replicated,
            "reported_by": r.reported_by,
            "keys": r.keys,
            "bytes": r.bytes,
            "writes_per_sec": r.writes_per_sec,
            "reads_per_sec": r.reads_per_sec,
        })).collect::<Vec<_>>(),
    })
}

pub fn print(rows: &[ShardRow]) -> anyhow::Result<()> {
    outln!(
        "{:<6} {:<33} {:<7} {:<12} {:>10} {:>10} {:>10} {:>10}  STATE",
        "SHARD",
        "TOKENS (hex, both ends included)",
        "LEADER",
        "REPLICAS",
        "KEYS",
        "SIZE",
        "WRITES/S",
        "READS/S"
    )?;
    let mut from_other = false;
    for r in rows {
        let leader = if r.leader == 0 { "-".to_string() } else { r.leader.to_string() };
        let replicas = r.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let other = r.reported_by.is_some_and(|id| id != r.leader);
        from_other |= other;
        let mark = if other { "*" } else { "" };
        let keys = r.keys.map_or("-".to_string(), |k| format!("{k}{mark}"));
        let size =
            r.bytes.map_or("-".to_string(), |b| format!("{}{mark}", bytesize::ByteSize(b).display().iec_short()));
        let per_sec = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.1}"));
        let tokens = match r.tokens {
            Some((first, last)) => format!("{first:016x}-{last:016x}"),
            None => "-".to_string(),
        };
        let state = [(r.tokens.is_none(), "retiring"), (r.moving, "moving"), (r.under_replicated, "under-replicated")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!(
            "{:<6} {:<33} {:<7} {:<12} {:>10} {:>10} {:>10} {:>10}  {}",
            r.shard,
            tokens,
            leader,
            replicas,
            keys,
            size,
            per_sec(r.writes_per_sec),
            per_sec(r.reads_per_sec),
            state
        );
        outln!("{}", line.trim_end())?;
    }
    if from_other {
        outln!("* from another replica: the leader did not answer")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_between_readings_gives_no_rate() {
        assert_eq!(rate(10, 30, Duration::from_secs(2)), Some(10.0));
        assert_eq!(rate(30, 10, Duration::from_secs(2)), None);
        assert_eq!(rate(1, 1, Duration::ZERO), None);
    }
}
