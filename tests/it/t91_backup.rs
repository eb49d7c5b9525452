//! `ringkv backup` and `ringkv restore` through the real binary:
//!
//! - a 3-node, 8-shard cluster holding 10 000 keys (a quarter validated by a
//!   JSON hook, a quarter given a TTL by a ttl hook, some with a client TTL,
//!   a tenth deleted, a few expired before the backup) is backed up, and the
//!   backup restored into a fresh 1-node, 3-shard cluster: every live key
//!   comes back with its value and (about) its expiry, no deleted or expired
//!   key does, both hooks come back with their stage, prefix and source, and
//!   the validate hook rejects bad writes afterwards;
//! - backup refuses a non-empty directory, and one that fails leaves no
//!   directory behind; restore refuses a non-empty target without `--force`,
//!   and a corrupted backup before writing anything; a node that does not
//!   lead a shard refuses to dump it and names the leader.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringkv_client::proto::{self, HookStage};
use ringkv_client::{Client, Consistency, Error, PutOptions};
use ringkv_tests::cli::{args, cli, now_ms};
use ringkv_tests::hooks::lua_hook as hook;
use ringkv_tests::{eventually, ProcCluster};

const VALIDATE_JSON: &str = include_str!("../../scripts/validate_json.lua");
const TTL_BY_PREFIX: &str = include_str!("../../scripts/ttl_by_prefix.lua");

const KEYS: u32 = 10_000;
/// Writes in flight while loading the source cluster.
const LOAD_CONCURRENCY: usize = 64;

/// Key `i` and its value: users/ keys hold JSON (the validate hook's
/// prefix), session/ keys get 30 minutes from the ttl hook, every fourth
/// other key a one-hour client TTL.
fn entry(i: u32) -> (String, String, Option<Duration>) {
    match i % 4 {
        0 => (format!("users/{i:05}"), format!(r#"{{"id": {i}, "name": "user {i}"}}"#), None),
        1 => (format!("session/{i:05}"), format!("token-{i}"), None),
        2 => (format!("plain/{i:05}"), format!("with client ttl {i}"), Some(Duration::from_secs(3600))),
        _ => (format!("plain/{i:05}"), format!("forever {i}"), None),
    }
}

/// Every live key of the cluster: (value, expiry), read key by key.
async fn read_back(client: &Client, keys: Vec<String>) -> BTreeMap<String, Option<(String, Option<u64>)>> {
    futures::stream::iter(keys)
        .map(|key| {
            let client = client.clone();
            async move {
                let got = client.get(key.clone()).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
                (key, got.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.expires_at_ms)))
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect()
        .await
}

/// The hooks a cluster lists as active: name → (stage, prefix, source).
async fn active_hooks(client: &Client) -> BTreeMap<String, (i32, Vec<u8>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for h in client.list_hooks().await.expect("list hooks").hooks.into_iter().filter(|h| h.active) {
        let full = client.get_hook(h.name.clone()).await.expect("get hook");
        out.insert(h.name, (full.stage, full.prefix.to_vec(), full.source.to_vec()));
    }
    out
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json")).expect("manifest JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_every_key_and_hook_into_a_cluster_of_another_size() {
    let source = ProcCluster::start(3, &["--shards", "8"]).await;
    let client = source.client();
    client.deploy_hook(hook("json-users", HookStage::Validate, "users/", VALIDATE_JSON)).await.expect("deploy json");
    client.deploy_hook(hook("ttl-by-prefix", HookStage::Ttl, "", TTL_BY_PREFIX)).await.expect("deploy ttl");
    let hooks_before = active_hooks(&client).await;
    assert_eq!(hooks_before.len(), 2, "{hooks_before:?}");

    futures::stream::iter(0..KEYS)
        .map(|i| {
            let client = client.clone();
            async move {
                let (key, value, ttl) = entry(i);
                client
                    .put_with(key.clone(), value, PutOptions { ttl, if_version: None })
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e}"));
                if i % 10 == 7 {
                    assert!(client.delete(key.clone()).await.expect("delete"), "{key} existed");
                }
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    // Keys that expire before the backup: the dump must leave them out.
    for i in 0..20 {
        let opts = PutOptions { ttl: Some(Duration::from_millis(100)), if_version: None };
        client.put_with(format!("short/{i}"), "gone soon", opts).await.expect("put short");
    }
    eventually("the short-lived keys to expire", || {
        let client = client.clone();
        async move { client.get("short/19").await.ok()?.is_none().then_some(()) }
    })
    .await;

    let all_keys: Vec<String> = (0..KEYS).map(|i| entry(i).0).chain((0..20).map(|i| format!("short/{i}"))).collect();
    let expected = read_back(&client, all_keys.clone()).await;
    let live = expected.values().filter(|v| v.is_some()).count();
    assert_eq!(live, (KEYS - KEYS / 10) as usize, "live keys in the source cluster");

    // Back up with the real binary.
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("backup");
    let endpoints = source.endpoints().join(",");
    let started = Instant::now();
    let (ok, out, err) = cli(args(&["backup", "--endpoints", &endpoints, "--out", dir.to_str().expect("utf-8")])).await;
    let backup_time = started.elapsed();
    assert!(ok, "backup failed: {out}\n{err}");
    assert!(out.contains(&format!("backed up {live} keys from 8 shards and 2 hooks")), "{out}");
    assert!(err.contains("backup: 8/8 shards"), "progress on stderr: {err}");
    let m = manifest(&dir);
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["partitioner"], "none");
    assert_eq!(m["source"]["nodes"], 3);
    assert_eq!(m["source"]["shards"], 8);
    assert_eq!(m["total_keys"], live as u64);
    assert_eq!(m["shards"].as_array().expect("shards").len(), 8);
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).expect("read dir").collect();
    assert_eq!(leftovers.len(), 1, "only the finished backup, no staging directory");

    // A second backup into the same, now non-empty, directory is refused.
    let (ok, _, err) = cli(args(&["backup", "--endpoints", &endpoints, "--out", dir.to_str().expect("utf-8")])).await;
    assert!(!ok && err.contains("is not empty"), "{err}");
    // A node that does not lead a shard refuses its dump and names the leader
    // (retried should leadership move between reading the ring and asking).
    eventually("a follower to refuse a dump and name the shard's leader", || {
        let (client, source) = (client.clone(), &source);
        async move {
            let ring = client.ring().await.ok()?;
            let route = ring.routes.iter().find(|r| r.leader_id != 0)?;
            let follower = source.nodes.values().find(|n| n.id != route.leader_id)?;
            let mut backup =
                proto::backup_client::BackupClient::connect(format!("http://{}", follower.grpc)).await.ok()?;
            let refusal = backup.dump_shard(proto::DumpShardRequest { shard: route.shard, shards: 8 }).await.err()?;
            let hint = refusal.metadata().get("ringkv-leader").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            (refusal.code() == tonic::Code::Unavailable && hint == Some(route.leader_id)).then_some(())
        }
    })
    .await;
    let mut backup = proto::backup_client::BackupClient::connect(format!("http://{}", source.nodes[&1].grpc))
        .await
        .expect("connect");
    let wrong_count = backup.dump_shard(proto::DumpShardRequest { shard: 0, shards: 5 }).await;
    assert_eq!(wrong_count.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    drop(source);
    // A backup that fails leaves nothing behind that could pass for one.
    let failed = work.path().join("failed");
    let (ok, _, err) =
        cli(args(&["backup", "--endpoints", &endpoints, "--out", failed.to_str().expect("utf-8")])).await;
    assert!(!ok, "a backup of a stopped cluster must fail: {err}");
    let names: Vec<String> = std::fs::read_dir(work.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["backup".to_string()], "no partial backup left: {err}");

    // Restore into one node with another shard count.
    let target = ProcCluster::start(1, &["--shards", "3"]).await;
    let target_client = target.client();
    let target_endpoints = target.endpoints().join(",");
    let started = Instant::now();
    let (ok, out, err) =
        cli(args(&["restore", "--endpoints", &target_endpoints, "--from", dir.to_str().expect("utf-8")])).await;
    let restore_time = started.elapsed();
    assert!(ok, "restore failed: {out}\n{err}");
    assert!(out.contains(&format!("restored {live} keys (0 expired since the backup, skipped) and 2 hooks")), "{out}");
    assert!(err.contains("restore: 3/8 shards"), "progress on stderr: {err}");
    eprintln!("10 000 keys, 3 nodes/8 shards -> 1 node/3 shards: backup {backup_time:.1?}, restore {restore_time:.1?}");

    let restored = read_back(&target_client, all_keys).await;
    for (key, want) in &expected {
        let got = &restored[key];
        match (want, got) {
            (None, None) => {}
            (Some((value, expiry)), Some((got_value, got_expiry))) => {
                assert_eq!(got_value, value, "{key}");
                match (expiry, got_expiry) {
                    (None, None) => {}
                    // The remaining TTL is restored, measured on the same clock,
                    // so the new expiry is the old one plus the time a write took.
                    (Some(at), Some(got_at)) => {
                        assert!(*got_at >= *at && *got_at <= *at + 120_000, "{key}: expiry {at} became {got_at}")
                    }
                    other => panic!("{key}: expiry changed: {other:?}"),
                }
            }
            other => panic!("{key}: expected {want:?}, restored {other:?}"),
        }
    }
    let scanned = target_client.scan("", 10_000, Consistency::Linearizable).await.expect("scan");
    assert_eq!(scanned.len(), live, "no key beyond the backed-up ones");

    // The hooks, and the validate hook judges new writes.
    assert_eq!(active_hooks(&target_client).await, hooks_before);
    match target_client.put("users/new", "not json").await {
        Err(Error::Rejected(msg)) => assert!(msg.contains("json-users"), "{msg}"),
        other => panic!("the restored validate hook must reject bad JSON, got {other:?}"),
    }
    let before = now_ms();
    target_client.put("session/new", "t").await.expect("put session");
    let at = target_client.get("session/new").await.expect("get").expect("written").expires_at_ms.expect("a TTL");
    assert!(at >= before + 29 * 60_000, "the restored ttl hook sets 30 minutes, got {}", at - before);

    // A second restore into the now non-empty cluster is refused...
    let (ok, _, err) =
        cli(args(&["restore", "--endpoints", &target_endpoints, "--from", dir.to_str().expect("utf-8")])).await;
    assert!(!ok && err.contains("already holds keys"), "{err}");
    // ...and a corrupted backup before anything is written, even with --force.
    let shard_file = dir.join("shard-00003.rkvs");
    let mut bytes = std::fs::read(&shard_file).expect("read shard file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&shard_file, bytes).expect("corrupt the shard file");
    let removed: Vec<&String> = expected.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).step_by(97).collect();
    for key in &removed {
        assert!(target_client.delete(key.to_string()).await.expect("delete"), "{key} was restored");
    }
    let (ok, _, err) =
        cli(args(&["restore", "--force", "--endpoints", &target_endpoints, "--from", dir.to_str().expect("utf-8")]))
            .await;
    assert!(!ok, "a corrupted backup must be refused: {err}");
    assert!(err.contains("shard-00003.rkvs does not match its sha256"), "{err}");
    for key in removed {
        assert!(target_client.get(key.to_string()).await.expect("get").is_none(), "{key} was written again");
    }
}
