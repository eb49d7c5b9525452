//! The example hooks in `scripts/` on a 3-node cluster of real processes:
//!
//! - validate_json, ttl_by_prefix, max_size and immutable_keys accept, reject
//!   and set TTLs as `scripts/README.md` documents, through every node;
//!   16 concurrent creates of one new `audit/` key: exactly one wins.
//! - A deploy that does not compile is refused with the Lua error and its
//!   line, and the version before it keeps judging writes; redeploy, remove
//!   and rollback switch the behaviour on every node.
//! - `ringkv hook deploy/test/list/get/remove` and `ringkv put` through the
//!   real CLI binary.
//! - A ttl hook's short TTL: the keys become invisible and are then removed
//!   from storage on every replica.

use std::time::Duration;

use ringkv_client::proto::HookStage;
use ringkv_client::{Client, Error, PutOptions};
use ringkv_tests::cli::{args, cli, now_ms};
use ringkv_tests::hooks::{judged_by, lua_hook as hook, wait_removed, wait_running};
use ringkv_tests::{eventually, ProcCluster};

const VALIDATE_JSON: &str = include_str!("../../scripts/validate_json.lua");
const TTL_BY_PREFIX: &str = include_str!("../../scripts/ttl_by_prefix.lua");
const MAX_SIZE: &str = include_str!("../../scripts/max_size.lua");
const IMMUTABLE_KEYS: &str = include_str!("../../scripts/immutable_keys.lua");

const NODES: [u64; 3] = [1, 2, 3];

fn script_path(name: &str) -> String {
    format!("{}/../scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Asserts that `result` is a hook rejection whose message is exactly `want`.
fn assert_rejected<T: std::fmt::Debug>(result: Result<T, Error>, want: &str, what: &str) {
    match result {
        Err(Error::Rejected(msg)) => assert_eq!(msg, want, "{what}"),
        other => panic!("{what}: expected a rejection {want:?}, got {other:?}"),
    }
}

/// Puts `key` and checks that the hook-set TTL is about `ttl` from the write
/// (the leader's clock lies between the times before and after the call).
async fn assert_expiry(client: &Client, key: &str, client_ttl: Option<Duration>, ttl: Option<Duration>) {
    let before = now_ms();
    let r = client
        .put_detailed(key.to_string(), "v", PutOptions { ttl: client_ttl, if_version: None })
        .await
        .expect("put under a ttl hook");
    let after = now_ms();
    assert!(judged_by(&r).contains(&"ttl-by-prefix v1".to_string()), "{key}: {:?}", judged_by(&r));
    let got = client.get(key.to_string()).await.expect("get").expect("just written");
    match ttl {
        None => assert_eq!(got.expires_at_ms, None, "{key} must not expire"),
        Some(ttl) => {
            let ttl = ttl.as_millis() as u64;
            let at = got.expires_at_ms.expect("an expiry");
            // A second of slack for clock granularity; the window is about the
            // put's own duration, not about speed.
            assert!(
                at + 1000 >= before + ttl && at <= after + ttl + 1000,
                "{key} expires at {at}, want {ttl} ms after a write between {before} and {after}"
            );
            println!("{key}: expires {} ms after the put returned (TTL {ttl} ms)", at as i64 - after as i64);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_hooks_accept_reject_and_set_ttls_through_every_node() {
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let deploys = [
        hook("json-records", HookStage::Validate, "json/", VALIDATE_JSON),
        hook("ttl-by-prefix", HookStage::Ttl, "", TTL_BY_PREFIX),
        hook("max-size", HookStage::Validate, "blob/", MAX_SIZE),
        hook("audit-immutable", HookStage::Validate, "audit/", IMMUTABLE_KEYS),
    ];
    for d in deploys {
        let name = d.name.clone();
        let r = client.deploy_hook(d).await.expect("deploy");
        assert_eq!(r.version, 1, "{name}");
        assert_eq!(r.sha256.len(), 64, "{name}: {}", r.sha256);
    }
    let big = "x".repeat(2000);
    wait_running(&c, "json-records", 1, ("json/p", Some("nope")), "reject: value is not JSON").await;
    wait_running(&c, "ttl-by-prefix", 1, ("session/p", Some("v")), "ttl: 1800000 ms").await;
    wait_running(&c, "max-size", 1, ("blob/p", Some(big.as_str())), "reject: value is 2000 bytes; the limit is 1024")
        .await;
    wait_running(&c, "audit-immutable", 1, ("audit/p", Some("v")), "accept").await;

    for id in NODES {
        let nc = c.node_client(id);

        // validate_json: objects with a numeric id and a string name pass.
        let key = format!("json/{id}/ok");
        let r = nc.put_detailed(key.clone(), format!(r#"{{"id": {id}, "name": "node {id}"}}"#), PutOptions::default());
        let r = r.await.expect("a valid record is accepted");
        assert_eq!(judged_by(&r), ["json-records v1", "ttl-by-prefix v1"], "validate hooks run before ttl hooks");
        let bad = [
            ("not json", "value is not JSON (expected ident at line 1 column 2)"),
            ("{\"id\": 1", "value is not JSON (EOF while parsing an object at line 1 column 8)"),
            ("[1, 2]", "value is not a JSON object (it is an array)"),
            ("\"text\"", "value is not a JSON object (it is a string)"),
            (r#"{"id": 1}"#, r#"missing field "name""#),
            (r#"{"name": "x"}"#, r#"missing field "id""#),
            (r#"{"id": "7", "name": "x"}"#, r#"field "id" must be a number, not string"#),
            (r#"{"id": 7, "name": null}"#, r#"field "name" must be a string, not null"#),
        ];
        for (i, (value, reason)) in bad.iter().enumerate() {
            let key = format!("json/{id}/bad{i}");
            assert_rejected(
                nc.put(key.clone(), *value).await,
                &format!("rejected by hook json-records v1: {reason}"),
                &format!("node {id}, {value:?}"),
            );
            assert_eq!(nc.get(key.clone()).await.expect("get"), None, "a rejected write leaves nothing");
        }
        assert!(nc.delete(format!("json/{id}/ok")).await.expect("deletes pass validate_json"));
        nc.put(format!("plain/{id}"), "not json").await.expect("keys outside json/ are not checked");

        // ttl_by_prefix: session/ 30 min and cache/ 60 s whatever the client
        // asked; other keys keep the client's TTL, or none.
        let five_min = Some(Duration::from_secs(300));
        assert_expiry(&nc, &format!("session/{id}"), Some(Duration::from_secs(5)), Some(Duration::from_secs(1800)))
            .await;
        assert_expiry(&nc, &format!("cache/{id}"), None, Some(Duration::from_secs(60))).await;
        assert_expiry(&nc, &format!("other/{id}/ttl"), five_min, five_min).await;
        assert_expiry(&nc, &format!("other/{id}/none"), None, None).await;

        // max_size: up to 1024 bytes.
        let r = nc.put_detailed(format!("blob/{id}/small"), "y".repeat(1024), PutOptions::default());
        assert_eq!(judged_by(&r.await.expect("1024 bytes pass")), ["max-size v1", "ttl-by-prefix v1"]);
        assert_rejected(
            nc.put(format!("blob/{id}/big"), "y".repeat(1025)).await,
            "rejected by hook max-size v1: value is 1025 bytes; the limit is 1024 bytes",
            "1025 bytes",
        );
        assert!(nc.delete(format!("blob/{id}/small")).await.expect("deletes pass max_size"));

        // immutable_keys: create once; never overwrite or delete.
        let key = format!("audit/{id}/entry");
        let created = nc.put(key.clone(), "first").await.expect("creating an audit key");
        for via in NODES {
            assert_rejected(
                c.node_client(via).put(key.clone(), "second").await,
                &format!(
                    "rejected by hook audit-immutable v1: {key} already exists (version {created}); \
                     audit keys are never overwritten"
                ),
                &format!("overwrite through node {via}"),
            );
            assert_rejected(
                c.node_client(via).delete(key.clone()).await,
                &format!("rejected by hook audit-immutable v1: {key} is an audit key; audit keys are never deleted"),
                &format!("delete through node {via}"),
            );
        }
        let stored = nc.get(key.clone()).await.expect("get").expect("still there");
        assert_eq!((&stored.value[..], stored.version), (&b"first"[..], created));
    }

    // Concurrent creates of one new audit key: the hook read ctx.old_version,
    // so every write but the first to apply is judged again and rejected.
    let clients: Vec<Client> = NODES.iter().map(|id| c.node_client(*id)).collect();
    for round in 0..4 {
        let key = format!("audit/race/{round}");
        let mut tasks = Vec::new();
        for i in 0..16usize {
            let (client, key) = (clients[i % clients.len()].clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                (i, client.put_detailed(key, format!("writer {i}"), PutOptions::default()).await)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("writer task") {
                (i, Ok(r)) => winners.push((i, r.version)),
                (_, Err(Error::Rejected(msg))) => assert!(
                    msg.starts_with(&format!("rejected by hook audit-immutable v1: {key} already exists (version "))
                        && msg.ends_with("audit keys are never overwritten"),
                    "{msg}"
                ),
                (i, Err(e)) => panic!("writer {i} of {key}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{key}: exactly one create wins, got {winners:?}");
        let (winner, version) = winners[0];
        let stored = client.get(key.clone()).await.expect("get").expect("created");
        assert_eq!((&stored.value[..], stored.version), (format!("writer {winner}").as_bytes(), version));
        println!("{key}: writer {winner} won, 15 rejected");
    }
}

#[tokio::test]
async fn bad_deploys_change_nothing_and_remove_and_rollback_switch_every_node() {
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let v1 = client.deploy_hook(hook("max-size", HookStage::Validate, "blob/", MAX_SIZE)).await.expect("deploy");
    assert_eq!(v1.version, 1);
    let big = "x".repeat(2000);
    let medium = "x".repeat(100);
    wait_running(&c, "max-size", 1, ("blob/p", Some(big.as_str())), "value is 2000 bytes; the limit is 1024 bytes")
        .await;

    // A syntax error on line 3: refused with the error and its line; nothing is committed.
    let broken =
        "function validate(key, value, ctx)\n  local n = #value\n  local limit = = 10\n  return n < limit\nend\n";
    match client.deploy_hook(hook("max-size", HookStage::Validate, "blob/", broken)).await {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains("max-size"), "names the hook: {msg}");
            assert!(msg.contains(":3:") || msg.contains("line 3"), "gives the line: {msg}");
            println!("syntax error refused: {msg}");
        }
        other => panic!("a syntax error must be refused, got {other:?}"),
    }
    // Other bad definitions: a bad name, a missing stage function, no stage.
    match client.deploy_hook(hook("bad name!", HookStage::Validate, "", MAX_SIZE)).await {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("name"), "{msg}"),
        other => panic!("a bad name must be refused, got {other:?}"),
    }
    match client.deploy_hook(hook("max-size", HookStage::Ttl, "blob/", MAX_SIZE)).await {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("ttl"), "names the missing function: {msg}"),
        other => panic!("a ttl hook without ttl() must be refused, got {other:?}"),
    }
    let mut no_stage = hook("max-size", HookStage::Validate, "blob/", MAX_SIZE);
    no_stage.stage = HookStage::Unspecified as i32;
    assert!(matches!(client.deploy_hook(no_stage).await, Err(Error::InvalidArgument(_))));
    for id in NODES {
        let listed = c.node_client(id).list_hooks().await.expect("list");
        assert_eq!(listed.hooks.len(), 1, "node {id}: {listed:?}");
        let h = &listed.hooks[0];
        assert_eq!(
            (h.name.as_str(), h.version, h.active, h.sha256.as_str()),
            ("max-size", 1, true, v1.sha256.as_str())
        );
        let nc = c.node_client(id);
        let r = nc.put_detailed(format!("blob/{id}/medium"), medium.clone(), PutOptions::default());
        assert_eq!(judged_by(&r.await.expect("v1 accepts 100 bytes")), ["max-size v1"]);
        assert_rejected(
            nc.put(format!("blob/{id}/big"), big.clone()).await,
            "rejected by hook max-size v1: value is 2000 bytes; the limit is 1024 bytes",
            "v1 still judges writes after a refused deploy",
        );
    }

    // v2: a 16-byte limit. Deploying it again changes nothing.
    let v2_source = MAX_SIZE.replace("local LIMIT = 1024", "local LIMIT = 16");
    assert_ne!(v2_source, MAX_SIZE);
    let v2 = client.deploy_hook(hook("max-size", HookStage::Validate, "blob/", &v2_source)).await.expect("deploy v2");
    assert_eq!(v2.version, 2);
    let again = client.deploy_hook(hook("max-size", HookStage::Validate, "blob/", &v2_source)).await.expect("same");
    assert_eq!((again.version, again.sha256.as_str()), (2, v2.sha256.as_str()), "an identical deploy is a no-op");
    wait_running(&c, "max-size", 2, ("blob/p", Some(medium.as_str())), "the limit is 16 bytes").await;
    for id in NODES {
        assert_rejected(
            c.node_client(id).put(format!("blob/{id}/medium"), medium.clone()).await,
            "rejected by hook max-size v2: value is 100 bytes; the limit is 16 bytes",
            &format!("v2 through node {id}"),
        );
    }

    // Rollback: v1 again (and v2 becomes the previous version).
    let rb = client.rollback_hook("max-size").await.expect("rollback");
    assert_eq!((rb.version, rb.replaced_version), (1, 2));
    wait_running(&c, "max-size", 1, ("blob/p", Some(medium.as_str())), "accept").await;
    for id in NODES {
        let nc = c.node_client(id);
        let r = nc.put_detailed(format!("blob/{id}/medium"), medium.clone(), PutOptions::default());
        assert_eq!(judged_by(&r.await.expect("v1 accepts 100 bytes")), ["max-size v1"], "node {id}");
        assert_rejected(
            nc.put(format!("blob/{id}/big"), big.clone()).await,
            "rejected by hook max-size v1: value is 2000 bytes; the limit is 1024 bytes",
            &format!("v1 after rollback, through node {id}"),
        );
    }
    let info = client.get_hook("max-size").await.expect("get");
    assert_eq!((info.version, info.previous_version, info.active), (1, 2, true));
    assert_eq!(info.source, MAX_SIZE.as_bytes(), "Get returns the active version's source");

    // Remove: writes are no longer judged; rollback brings the hook back.
    assert_eq!(client.remove_hook("max-size").await.expect("remove"), 1);
    wait_removed(&c, "max-size").await;
    for id in NODES {
        let nc = c.node_client(id);
        let r = nc.put_detailed(format!("blob/{id}/big"), big.clone(), PutOptions::default());
        assert!(r.await.expect("no hook after remove").hooks.is_empty(), "node {id}");
    }
    let info = client.get_hook("max-size").await.expect("a removed hook is still known");
    assert_eq!((info.version, info.active), (1, false));
    let rb = client.rollback_hook("max-size").await.expect("rollback after remove");
    assert_eq!((rb.version, rb.replaced_version), (1, 0));
    wait_running(&c, "max-size", 1, ("blob/p", Some(big.as_str())), "the limit is 1024 bytes").await;
    for id in NODES {
        assert_rejected(
            c.node_client(id).put(format!("blob/{id}/big2"), big.clone()).await,
            "rejected by hook max-size v1: value is 2000 bytes; the limit is 1024 bytes",
            &format!("restored v1 through node {id}"),
        );
    }
    match client.rollback_hook("max-size").await {
        Err(Error::Rejected(msg)) => assert!(msg.contains("no previous version"), "{msg}"),
        other => panic!("nothing left to roll back to, got {other:?}"),
    }
    match client.get_hook("no-such-hook").await {
        Err(Error::Other(s)) => assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}"),
        other => panic!("an unknown hook is NOT_FOUND, got {other:?}"),
    }
}

#[tokio::test]
async fn the_cli_deploys_tests_lists_and_removes_hooks() {
    let c = ProcCluster::start(3, &[]).await;
    let all = c.endpoints().join(",");
    let json_script = script_path("validate_json.lua");

    // `hook test` runs a script file on one write in the server's sandbox.
    let test_cases: [(&[&str], &str); 9] = [
        (
            &["--file", &json_script, "--key", "k", "--value", "nope"],
            "reject: value is not JSON (expected ident at line 1 column 2) (",
        ),
        (&["--file", &json_script, "--key", "k", "--value", r#"{"id": 1}"#], r#"reject: missing field "name" ("#),
        (&["--file", &json_script, "--key", "k", "--value", r#"{"id": 1, "name": "n"}"#], "accept ("),
        (&["--file", &json_script, "--key", "k"], "accept ("),
        (
            &["--stage", "ttl", "--file", &script_path("ttl_by_prefix.lua"), "--key", "session/a", "--value", "v"],
            "ttl: expires 1800000 ms after the write (",
        ),
        (
            &[
                "--stage",
                "ttl",
                "--file",
                &script_path("ttl_by_prefix.lua"),
                "--key",
                "x",
                "--value",
                "v",
                "--ttl",
                "5s",
            ],
            "keep-ttl (",
        ),
        (
            &["--file", &script_path("max_size.lua"), "--key", "k", "--value", &"z".repeat(1500)],
            "reject: value is 1500 bytes; the limit is 1024 bytes (",
        ),
        (&["--file", &script_path("immutable_keys.lua"), "--key", "audit/1", "--value", "v"], "accept ("),
        (
            &[
                "--file",
                &script_path("immutable_keys.lua"),
                "--key",
                "audit/1",
                "--value",
                "v",
                "--old-value",
                "v0",
                "--old-version",
                "42",
            ],
            "reject: audit/1 already exists (version 42); audit keys are never overwritten (",
        ),
    ];
    for (extra, want) in test_cases {
        let mut a = args(&["hook", "test", "--timeout", "1s", "--endpoints", &all]);
        a.extend(args(extra));
        let (ok, out, err) = cli(a.clone()).await;
        // `hook test` exits 0 on accept and 1 on reject (docs/cli.md).
        assert_eq!(ok, !want.starts_with("reject"), "{a:?}: exit status does not match {want:?}: {out} {err}");
        assert!(
            out.trim().starts_with(want) && out.trim().ends_with(" us)"),
            "{a:?}: {out:?} should start with {want:?}"
        );
        println!("hook test {extra:?}: {}", out.trim());
    }
    let (ok, out, err) = cli(args(&[
        "hook",
        "test",
        "--json",
        "--endpoints",
        &all,
        "--timeout",
        "1s",
        "--file",
        &json_script,
        "--key",
        "k",
        "--value",
        "[]",
    ]))
    .await;
    assert!(!ok, "a rejection exits 1: {out} {err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("hook test --json is JSON");
    assert_eq!(j["decision"], "reject", "{j}");
    assert_eq!(j["message"], "value is not a JSON object (it is an array)", "{j}");

    // Deploy, then put through the CLI: the put names the hook version.
    let (ok, out, err) = cli(args(&[
        "hook",
        "deploy",
        "--name",
        "json-cli",
        "--stage",
        "validate",
        "--prefix",
        "cli/",
        "--file",
        &json_script,
        "--timeout",
        "1s",
        "--json",
        "--endpoints",
        &all,
    ]))
    .await;
    assert!(ok, "deploy failed: {err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("deploy --json is JSON");
    assert_eq!((j["name"].as_str(), j["version"].as_u64()), (Some("json-cli"), Some(1)), "{j}");
    wait_running(&c, "json-cli", 1, ("cli/p", Some("nope")), "reject: value is not JSON").await;
    for id in NODES {
        let node = c.nodes[&id].grpc.clone();
        let (ok, out, err) =
            cli(args(&["put", &format!("cli/{id}"), r#"{"id": 1, "name": "n"}"#, "--endpoints", &node])).await;
        assert!(ok, "put through node {id}: {err}");
        assert!(out.trim().starts_with("OK version=") && out.trim().ends_with(" hooks=json-cli v1"), "{out:?}");
        let (ok, out, err) = cli(args(&["put", &format!("cli/{id}/bad"), "nope", "--endpoints", &node])).await;
        assert!(!ok, "a rejected put exits non-zero: {out}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
        assert!(err.contains("rejected by hook json-cli v1: value is not JSON"), "{err}");
    }

    let (ok, out, err) = cli(args(&["hook", "list", "--json", "--endpoints", &all])).await;
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("hook list --json is JSON");
    let hooks = j["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 1, "{j}");
    assert_eq!((hooks[0]["name"].as_str(), hooks[0]["stage"].as_str()), (Some("json-cli"), Some("validate")));
    assert_eq!((hooks[0]["prefix"].as_str(), hooks[0]["timeout_ms"].as_u64()), (Some("cli/"), Some(1000)));
    let (ok, out, err) = cli(args(&["hook", "list", "--endpoints", &all])).await;
    assert!(ok && out.contains("json-cli") && out.contains("active"), "{out}{err}");
    let (ok, out, err) = cli(args(&["hook", "get", "json-cli", "--endpoints", &all])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("json-cli v1 active stage=validate"), "{out}");
    assert!(out.contains("function validate(key, value, ctx)"), "get prints the source: {out}");

    // Rollback with nothing to roll back to fails with one line; remove works.
    let (ok, _, err) = cli(args(&["hook", "rollback", "json-cli", "--endpoints", &all])).await;
    assert!(!ok && err.contains("no previous version"), "{err}");
    let (ok, out, err) = cli(args(&["hook", "remove", "json-cli", "--endpoints", &all])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("removed json-cli v1"), "{out}");
    wait_removed(&c, "json-cli").await;
    let (ok, out, err) = cli(args(&["put", "cli/after", "nope", "--endpoints", &all])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim().split(' ').count(), 2, "no hooks judged it: {out}");

    // A shadow version: it judges writes beside the active one and is only counted.
    let deploy = |shadow: bool, script: &str| {
        let mut a = args(&["hook", "deploy", "--name", "size-cli", "--stage", "validate", "--prefix", "cs/"]);
        a.extend(args(&["--file", &script_path(script), "--timeout", "1s", "--endpoints", &all]));
        if shadow {
            a.push("--shadow".into());
        }
        cli(a)
    };
    let (ok, out, err) = deploy(false, "validate_json.lua").await;
    assert!(ok && out.starts_with("deployed size-cli v1 "), "{out}{err}");
    wait_running(&c, "size-cli", 1, ("cs/p", Some("nope")), "reject: value is not JSON").await;
    let (ok, out, err) = deploy(true, "max_size.lua").await;
    assert!(ok && out.starts_with("deployed size-cli v2 as a shadow "), "{out}{err}");
    for id in NODES {
        let nc = c.node_client(id);
        eventually(&format!("node {id} to run size-cli's shadow v2"), || {
            let nc = nc.clone();
            async move {
                let listed = nc.list_hooks().await.ok()?;
                let h = listed.hooks.iter().find(|h| h.name == "size-cli")?;
                h.shadow.as_ref().is_some_and(|s| s.running_version == 2).then_some(())
            }
        })
        .await;
    }
    // Valid JSON over 1024 bytes: the active version accepts, the shadow would not.
    let big = format!(r#"{{"id": 1, "name": "{}"}}"#, "n".repeat(1100));
    let (ok, out, err) = cli(args(&["put", "cs/big", &big, "--endpoints", &all])).await;
    assert!(ok && out.trim().ends_with(" hooks=size-cli v1"), "judged by the active version only: {out}{err}");
    let (ok, out, err) = cli(args(&["put", "cs/small", r#"{"id": 2, "name": "s"}"#, "--endpoints", &all])).await;
    assert!(ok, "{out}{err}");
    let mut seen = (0, 0, Vec::new());
    for id in NODES {
        let node = c.nodes[&id].grpc.clone();
        let (ok, out, err) = cli(args(&["hook", "list", "--json", "--endpoints", &node])).await;
        assert!(ok, "{err}");
        let j: serde_json::Value = serde_json::from_str(out.trim()).expect("hook list --json is JSON");
        let hooks = j["hooks"].as_array().expect("hooks");
        let shadow = &hooks.iter().find(|h| h["name"] == "size-cli").expect("size-cli")["shadow"];
        assert_eq!(shadow["version"], 2, "{j}");
        seen.0 += shadow["agreements"].as_u64().expect("agreements");
        seen.1 += shadow["disagreements"].as_u64().expect("disagreements");
        seen.2.extend(shadow["recent_disagreements"].as_array().expect("recent").iter().cloned());
    }
    assert_eq!((seen.0, seen.1), (1, 1), "the small value agreed, the big one did not");
    assert_eq!((seen.2[0]["key"].as_str(), seen.2[0]["active"].as_str()), (Some("cs/big"), Some("accept")));
    let shadow_said = seen.2[0]["shadow"].as_str().expect("shadow decision");
    assert!(shadow_said.starts_with("reject: value is "), "{shadow_said}");
    let (ok, out, err) = cli(args(&["hook", "list", "--endpoints", &all])).await;
    assert!(ok && out.contains("  shadow v2: "), "{out}{err}");
    let (ok, out, err) = cli(args(&["hook", "remove", "--shadow", "size-cli", "--endpoints", &all])).await;
    assert!(ok && out.starts_with("removed the shadow version v2 of size-cli"), "{out}{err}");
    let (ok, out, err) = deploy(true, "max_size.lua").await;
    assert!(ok && out.starts_with("deployed size-cli v3 as a shadow "), "{out}{err}");
    let (ok, out, err) = cli(args(&["hook", "promote", "size-cli", "--endpoints", &all])).await;
    assert!(ok && out.starts_with("promoted size-cli v3 to active (it replaced v1"), "{out}{err}");
    let too_big = "z".repeat(1100);
    wait_running(&c, "size-cli", 3, ("cs/p", Some(too_big.as_str())), "reject: value is 1100 bytes").await;
    let (ok, _, err) = cli(args(&["put", "cs/big2", &big, "--endpoints", &all])).await;
    assert!(!ok && err.contains("rejected by hook size-cli v3: value is"), "{err}");
}

#[tokio::test]
async fn keys_given_a_short_ttl_by_a_hook_vanish_and_are_swept_from_storage() {
    let c = ProcCluster::start(3, &[]).await;
    let client = c.client();
    let source = "function ttl(key, value, ctx)\n  return 0.3\nend\n";
    let r = client.deploy_hook(hook("short-ttl", HookStage::Ttl, "short/", source)).await.expect("deploy");
    wait_running(&c, "short-ttl", r.version, ("short/p", Some("v")), "ttl: 300 ms").await;

    // Keys without a TTL, then keys the client wants kept for an hour but the
    // hook gives 0.3 s.
    const KEEP: u64 = 5;
    for i in 0..KEEP {
        client.put(format!("keep/{i}"), "v").await.expect("put");
    }
    let hour = PutOptions { ttl: Some(Duration::from_secs(3600)), if_version: None };
    let short: Vec<String> = (0..30).map(|i| format!("short/{i}")).collect();
    for (i, key) in short.iter().enumerate() {
        let via = c.node_client(NODES[i % NODES.len()]);
        let r = via.put_detailed(key.clone(), "gone soon", hour.clone()).await.expect("put");
        assert_eq!(judged_by(&r), ["short-ttl v1"], "{key}");
    }
    // Invisible to reads...
    for key in &short {
        eventually(&format!("{key} to expire"), || {
            let (client, key) = (client.clone(), key.clone());
            async move { client.get(key).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }
    assert!(client.scan("short/", 100, ringkv_client::Consistency::Linearizable).await.expect("scan").is_empty());
    // ...and then deleted from storage on every replica: only the kept keys remain.
    for id in NODES {
        let nc = c.node_client(id);
        let peak = std::cell::Cell::new(0);
        let left = eventually(&format!("node {id} to sweep the short keys"), || {
            let (nc, peak) = (nc.clone(), &peak);
            async move {
                let s = nc.status_with(true).await.ok()?;
                let keys: u64 = s.groups.iter().filter(|g| g.kind == "shard").map(|g| g.keys).sum();
                peak.set(peak.get().max(keys));
                (keys == KEEP).then_some(keys)
            }
        })
        .await;
        println!("node {id}: {left} keys stored after the sweep (most seen while waiting: {})", peak.get());
    }
}
