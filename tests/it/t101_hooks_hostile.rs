//! Hostile hook scripts on a 3-node cluster: each is deployed as a validate
//! hook on a prefix of its own, and a put under that prefix is rejected
//! (fail-closed) with a message naming the hook and the cause, through every
//! node, while puts elsewhere — judged by a benign hook that uses the string
//! library — keep succeeding on every node.
//!
//! - Limits: infinite loops (deadline or instruction budget), deep
//!   recursion, memory bombs (`string.rep` doubling, table growth, `x .. x`),
//!   backtracking patterns in `string.find` and `string.gsub`, an error
//!   object whose `__tostring` never returns.
//! - Sandbox: `os`, `io`, `require`, `load`/`loadstring` of bytecode,
//!   `debug`, `string.dump`, `collectgarbage`, `getfenv`/`setfenv`, `rawset`,
//!   `print` are absent; the string library and its metatable cannot be
//!   changed; no state survives from one call to the next.
//! - A script without its stage function is refused at deploy.
//! - A fail-open hook that fails lets the write through, and `List` counts
//!   errors, limit hits and fail-open passes.
//! - A flood of concurrent writes under a runaway hook does not get writes
//!   judged by another hook on the same shard leader rejected.
//! - The runaway scripts deployed as shadow versions of the benign hook
//!   (`deploy --shadow`) fail only themselves: every write is accepted as
//!   the benign hook decides, and each failure is counted for the shadow.

use std::time::Instant;

use ringkv_client::proto::{self, HookDefinition, HookStage};
use ringkv_client::{Client, Error, PutOptions};
use ringkv_tests::hooks::lua_hook;
use ringkv_tests::{eventually, ProcCluster};

const NODES: [u64; 3] = [1, 2, 3];

/// Deadline of the hostile hooks that are expected to run out of time.
const SHORT_MS: u64 = 20;
/// Deadline of hooks expected to fail another way (an error, a memory limit):
/// long enough that a stalled 2-core machine cannot turn it into a deadline.
const LONG_MS: u64 = 1000;

/// The benign hook on `ok/`: string methods work as they should.
const BENIGN: &str = r#"
function validate(key, value, ctx)
	if ("x"):upper() ~= "X" or string.upper("y") ~= "Y" or ("abc"):sub(2, 2) ~= "b" or #string.rep("ab", 3) ~= 6 then
		return false, "the string library has been changed"
	end
	return true
end
"#;

/// One hostile script: its hook name (also its prefix, `h/NAME/`), deadline,
/// source, and the causes its rejection may give (any one of them).
struct Case {
    name: &'static str,
    timeout_ms: u64,
    source: &'static str,
    causes: &'static [&'static str],
}

const DEADLINE: &[&str] = &["exceeded its deadline", "exceeded its instruction budget"];
const MEMORY: &[&str] = &["exceeded its memory limit"];
const ERROR: &[&str] = &["raised an error"];

const LIMIT_CASES: &[Case] = &[
    Case {
        name: "loop",
        timeout_ms: SHORT_MS,
        source: "function validate(key, value, ctx)\n  while true do end\nend\n",
        causes: DEADLINE,
    },
    Case {
        // With a long deadline the instruction budget may run out first.
        name: "loop-long",
        timeout_ms: LONG_MS,
        source: "function validate(key, value, ctx)\n  local n = 0\n  repeat n += 1 until false\nend\n",
        causes: DEADLINE,
    },
    Case {
        name: "recursion",
        timeout_ms: LONG_MS,
        source: "local function dive(n)\n  return dive(n + 1) + 1\nend\n\
                 function validate(key, value, ctx)\n  return dive(1) > 0\nend\n",
        causes: &["stack overflow", "exceeded its memory limit"],
    },
    Case {
        name: "rep-bomb",
        timeout_ms: LONG_MS,
        source: "function validate(key, value, ctx)\n  local s = 'x'\n  while true do s = string.rep(s, 2) end\nend\n",
        causes: MEMORY,
    },
    Case {
        name: "table-bomb",
        timeout_ms: LONG_MS,
        // Tables of 64 slots (about 1 KiB each), not of one: one-slot tables
        // reach the memory limit so slowly that a loaded machine's stalls
        // could run out the deadline first.
        source: "function validate(key, value, ctx)\n  local t, i = {}, 0\n  while true do\n    i += 1\n    t[i] = table.create(64, i)\n  end\nend\n",
        causes: MEMORY,
    },
    Case {
        name: "concat-bomb",
        timeout_ms: LONG_MS,
        source: "function validate(key, value, ctx)\n  local x = 'x'\n  while true do x = x .. x end\nend\n",
        causes: MEMORY,
    },
    Case {
        name: "find-backtrack",
        timeout_ms: SHORT_MS,
        source: "function validate(key, value, ctx)\n  return string.rep('a', 30000):find(string.rep('a*', 40) .. 'b') ~= nil\nend\n",
        causes: DEADLINE,
    },
    Case {
        name: "gsub-backtrack",
        timeout_ms: SHORT_MS,
        source: "function validate(key, value, ctx)\n  local s = string.rep('a', 40)\n  \
                 local out = string.gsub(s, string.rep('a?', 40) .. string.rep('a', 40) .. 'b', '')\n  \
                 return out == s\nend\n",
        causes: DEADLINE,
    },
    Case {
        name: "tostring-loop",
        timeout_ms: SHORT_MS,
        source: "function validate(key, value, ctx)\n  \
                 error(setmetatable({}, { __tostring = function() while true do end end }))\nend\n",
        causes: &["exceeded its deadline", "exceeded its instruction budget", "raised an error"],
    },
    Case {
        name: "tostring-error",
        timeout_ms: LONG_MS,
        source: "function validate(key, value, ctx)\n  \
                 error(setmetatable({}, { __tostring = function() error('nested') end }))\nend\n",
        causes: ERROR,
    },
];

const SANDBOX_CASES: &[Case] = &[
    Case { name: "os-exit", timeout_ms: LONG_MS, source: "function validate(k, v, c)\n  os.exit(1)\nend\n", causes: ERROR },
    Case {
        name: "os-execute",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  return os.execute('true') == 0\nend\n",
        causes: ERROR,
    },
    Case {
        name: "io-open",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  local f = io.open('/etc/passwd')\n  return false, f:read('*a')\nend\n",
        causes: ERROR,
    },
    Case {
        name: "require",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  local m = require('os')\n  return m ~= nil\nend\n",
        causes: ERROR,
    },
    Case {
        name: "load-bytecode",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  local f = load('\\27Lua\\81\\0\\1\\4\\8\\4\\8\\0')\n  return f() ~= nil\nend\n",
        causes: ERROR,
    },
    Case {
        name: "loadstring",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  local f = loadstring('return true')\n  return f()\nend\n",
        causes: ERROR,
    },
    Case {
        name: "debug",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  debug.sethook(function() end, '', 1)\n  return debug.getinfo(1) ~= nil\nend\n",
        causes: ERROR,
    },
    Case {
        name: "string-dump",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  return #string.dump(validate) > 0\nend\n",
        causes: ERROR,
    },
    Case {
        name: "collectgarbage",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  collectgarbage('collect')\n  return true\nend\n",
        causes: ERROR,
    },
    Case {
        name: "setfenv",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  setfenv(1, {})\n  return true\nend\n",
        causes: ERROR,
    },
    Case {
        name: "getfenv",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  return getfenv(0) ~= nil\nend\n",
        causes: ERROR,
    },
    Case {
        name: "rawset",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  rawset(string, 'upper', nil)\n  return true\nend\n",
        causes: ERROR,
    },
    Case {
        name: "print",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  print('hello')\n  return true\nend\n",
        causes: ERROR,
    },
    Case {
        // Every way of changing the string library fails; the error reports
        // which attempts failed (all of them must).
        name: "string-tamper",
        timeout_ms: LONG_MS,
        source: r#"
local function pwned() return "pwned" end
function validate(key, value, ctx)
	local lib = pcall(function() string.upper = pwned end)
	local index = pcall(function() getmetatable("").__index = { upper = pwned } end)
	local method = pcall(function() getmetatable("").__index.upper = pwned end)
	local meta = pcall(function() setmetatable(getmetatable(""), { __index = { upper = pwned } }) end)
	error(string.format("tampering: lib=%s index=%s method=%s meta=%s", tostring(lib), tostring(index), tostring(method), tostring(meta)))
end
"#,
        causes: &["tampering: lib=false index=false method=false meta=false"],
    },
    Case {
        // The same, unprotected: the first attempt raises.
        name: "string-tamper-raw",
        timeout_ms: LONG_MS,
        source: "function validate(k, v, c)\n  string.upper = function() return 'pwned' end\n  return true\nend\n",
        causes: ERROR,
    },
];

fn hook(name: &str, prefix: &str, source: &str, timeout_ms: u64) -> HookDefinition {
    HookDefinition { timeout_ms, ..lua_hook(name, HookStage::Validate, prefix, source) }
}

/// True once the node `client` talks to runs the hook `name` (its registry,
/// not just its meta group, has it): a dry run of the deployed hook by name
/// finds it.
async fn runs(client: &Client, name: &str, key: &str) -> bool {
    let req = proto::TestHookRequest {
        hook: Some(HookDefinition { name: name.into(), ..Default::default() }),
        key: key.as_bytes().to_vec().into(),
        value: Some(b"v".to_vec().into()),
        ..Default::default()
    };
    client.test_hook(req).await.is_ok()
}

/// Waits until every node lists `n` active hooks and runs `last` (the last
/// one deployed: a node's registry swaps in every hook of the meta state it
/// loads at once, so it then runs the earlier ones too).
async fn wait_deployed(c: &ProcCluster, n: usize, last: &str, key: &str) {
    for id in NODES {
        let nc = c.node_client(id);
        eventually(&format!("node {id} to list {n} hooks and run {last}"), || {
            let nc = nc.clone();
            async move {
                let active = nc.list_hooks().await.ok()?.hooks.iter().filter(|h| h.active).count();
                (active == n && runs(&nc, last, key).await).then_some(())
            }
        })
        .await;
    }
}

/// Deploys `cases`, then the benign hook on `ok/`, and waits until every
/// node runs them all.
async fn deploy(c: &ProcCluster, cases: &[Case]) {
    let client = c.client();
    let mut all: Vec<HookDefinition> =
        cases.iter().map(|case| hook(case.name, &format!("h/{}/", case.name), case.source, case.timeout_ms)).collect();
    all.push(hook("benign", "ok/", BENIGN, LONG_MS));
    let n = all.len();
    for d in all {
        let name = d.name.clone();
        let r = client.deploy_hook(d).await.unwrap_or_else(|e| panic!("deploying {name}: {e}"));
        assert_eq!(r.version, 1, "{name}");
    }
    wait_deployed(c, n, "benign", "ok/probe").await;
}

/// Puts outside the hostile prefixes, through every node, judged by the
/// benign hook; prints how long each took.
async fn normal_puts_succeed(c: &ProcCluster, after: &str) {
    let mut took = Vec::new();
    for id in NODES {
        let nc = c.node_client(id);
        let key = format!("ok/{after}/{id}");
        let start = Instant::now();
        let r = nc.put_detailed(key.clone(), "fine", PutOptions::default()).await;
        let r = r.unwrap_or_else(|e| panic!("{key} through node {id} after {after}: {e}"));
        took.push(format!("node {id} {:?}", start.elapsed()));
        assert_eq!(r.hooks.len(), 1, "{key}: {:?}", r.hooks);
        assert_eq!((r.hooks[0].name.as_str(), r.hooks[0].version), ("benign", 1));
        let plain = format!("plain/{after}/{id}");
        nc.put(plain.clone(), "x").await.unwrap_or_else(|e| panic!("{plain} through node {id} after {after}: {e}"));
    }
    println!("  normal puts after {after}: {}", took.join(", "));
}

/// Puts under each case's prefix through every node: each is rejected,
/// naming the hook and one of the case's causes. Normal puts follow each case.
async fn run_cases(c: &ProcCluster, cases: &[Case]) {
    for case in cases {
        for id in NODES {
            let key = format!("h/{}/{id}", case.name);
            let start = Instant::now();
            let result = c.node_client(id).put(key.clone(), "v").await;
            let took = start.elapsed();
            let msg = match result {
                Err(Error::Rejected(msg)) => msg,
                other => panic!("{key} through node {id}: expected a rejection, got {other:?}"),
            };
            println!("{} via node {id} ({took:?}): {msg}", case.name);
            assert!(msg.starts_with(&format!("hook {} v1 ", case.name)), "{key}: names the hook: {msg}");
            assert!(msg.ends_with("the write is rejected (fail-closed)"), "{key}: {msg}");
            assert!(case.causes.iter().any(|cause| msg.contains(cause)), "{key}: one of {:?} in {msg}", case.causes);
            assert_eq!(c.node_client(id).get(key.clone()).await.expect("get"), None, "{key} was not written");
        }
        normal_puts_succeed(c, case.name).await;
    }
}

/// `name`'s statistics summed over every node (each node counts the calls it ran).
async fn stats(c: &ProcCluster, name: &str) -> proto::HookStats {
    let mut sum = proto::HookStats::default();
    for id in NODES {
        let listed = c.node_client(id).list_hooks().await.expect("list");
        let s = listed.hooks.iter().find(|h| h.name == name).and_then(|h| h.stats).unwrap_or_default();
        sum.calls += s.calls;
        sum.rejects += s.rejects;
        sum.errors += s.errors;
        sum.limit_hits += s.limit_hits;
        sum.fail_open_passes += s.fail_open_passes;
        sum.max_us = sum.max_us.max(s.max_us);
    }
    sum
}

/// Every hostile put was one failed call, counted as an error or a limit hit.
async fn assert_failures_counted(c: &ProcCluster, cases: &[Case]) {
    for case in cases {
        let s = stats(c, case.name).await;
        println!(
            "{}: calls {} errors {} limit hits {} rejects {} slowest {} us",
            case.name, s.calls, s.errors, s.limit_hits, s.rejects, s.max_us
        );
        assert_eq!(s.calls, NODES.len() as u64, "{}: {s:?}", case.name);
        assert_eq!(s.errors + s.limit_hits, s.calls, "{}: every call failed: {s:?}", case.name);
        assert_eq!(s.rejects, 0, "{}: {s:?}", case.name);
        if case.causes == MEMORY || case.causes == DEADLINE {
            assert_eq!(s.limit_hits, s.calls, "{}: limits are counted as limit hits: {s:?}", case.name);
        }
        if case.causes == ERROR {
            assert_eq!(s.errors, s.calls, "{}: errors are counted as errors: {s:?}", case.name);
        }
    }
}

/// Waits until every node runs shadow version `version` of `name`.
async fn wait_shadow_running(c: &ProcCluster, name: &str, version: u64) {
    for id in NODES {
        let nc = c.node_client(id);
        eventually(&format!("node {id} to run {name}'s shadow v{version}"), || {
            let nc = nc.clone();
            async move {
                let listed = nc.list_hooks().await.ok()?;
                let h = listed.hooks.iter().find(|h| h.name == name)?;
                h.shadow.as_ref().is_some_and(|s| s.version == version && s.running_version == version).then_some(())
            }
        })
        .await;
    }
}

/// Shadow version `version` of `name`, summed over every node.
async fn shadow_stats(c: &ProcCluster, name: &str, version: u64) -> proto::ShadowInfo {
    let mut sum = proto::ShadowInfo { stats: Some(proto::HookStats::default()), ..Default::default() };
    for id in NODES {
        let listed = c.node_client(id).list_hooks().await.expect("list");
        let Some(s) = listed.hooks.iter().find(|h| h.name == name).and_then(|h| h.shadow.clone()) else { continue };
        if s.version != version {
            continue;
        }
        let (st, total) = (s.stats.unwrap_or_default(), sum.stats.as_mut().expect("stats"));
        total.calls += st.calls;
        total.errors += st.errors;
        total.limit_hits += st.limit_hits;
        sum.agreements += s.agreements;
        sum.disagreements += s.disagreements;
        sum.skipped += s.skipped;
    }
    sum
}

#[tokio::test]
async fn runaway_shadows_fail_only_themselves() {
    let c = ProcCluster::start(3, &[]).await;
    deploy(&c, &[]).await;
    let admin = c.client();
    for case in LIMIT_CASES {
        let shadow = hook("benign", "ok/", case.source, case.timeout_ms);
        let r = admin.deploy_shadow_hook(shadow).await.unwrap_or_else(|e| panic!("shadow {}: {e}", case.name));
        wait_shadow_running(&c, "benign", r.version).await;
        // Judged by the benign hook v1 alone, accepted, through every node.
        normal_puts_succeed(&c, case.name).await;
        let s = shadow_stats(&c, "benign", r.version).await;
        let st = s.stats.unwrap_or_default();
        println!(
            "shadow {} (v{}): calls {} errors {} limit hits {} skipped {}",
            case.name, r.version, st.calls, st.errors, st.limit_hits, s.skipped
        );
        // Each put ran the shadow, which failed, or skipped it while
        // throttled; a put retried after a slow call is judged again.
        assert!(st.errors + st.limit_hits + s.skipped >= NODES.len() as u64, "{}: {s:?}", case.name);
        assert_eq!(st.calls, st.errors + st.limit_hits, "{}: every call failed: {s:?}", case.name);
        assert_eq!((s.agreements, s.disagreements), (0, 0), "{}: a failed call is not compared", case.name);
    }
    let last = admin.remove_shadow_hook("benign").await.expect("remove the shadow");
    assert_eq!(last, LIMIT_CASES.len() as u64 + 1, "the last shadow's version");
    normal_puts_succeed(&c, "shadow removed").await;
}

#[tokio::test]
async fn runaway_scripts_hit_their_limits_and_other_writes_go_on() {
    let c = ProcCluster::start(3, &[]).await;
    deploy(&c, LIMIT_CASES).await;
    normal_puts_succeed(&c, "start").await;
    run_cases(&c, LIMIT_CASES).await;
    assert_failures_counted(&c, LIMIT_CASES).await;
    // The hostile hooks are still deployed and still fail; nothing else is affected.
    run_cases(&c, &LIMIT_CASES[..1]).await;
}

#[tokio::test]
async fn scripts_cannot_leave_the_sandbox_change_the_libraries_or_keep_state() {
    let c = ProcCluster::start(3, &[]).await;
    let client: Client = c.client();

    // A script without the stage function is refused; nothing is deployed.
    for (stage, source) in [
        (HookStage::Validate, "function validat(key, value, ctx)\n  return true\nend\n"),
        (HookStage::Validate, "local x = 1\n"),
        (HookStage::Ttl, "function validate(key, value, ctx)\n  return true\nend\n"),
        (HookStage::Validate, "validate = 42\n"),
    ] {
        let mut d = hook("no-function", "h/none/", source, LONG_MS);
        d.stage = stage as i32;
        match client.deploy_hook(d).await {
            Err(Error::InvalidArgument(msg)) => {
                let function = if stage == HookStage::Ttl { "ttl" } else { "validate" };
                assert!(msg.contains("no-function") && msg.contains(function), "{msg}");
                println!("refused at deploy: {msg}");
            }
            other => panic!("a script without {stage:?}'s function must be refused, got {other:?}"),
        }
    }
    assert!(client.list_hooks().await.expect("list").hooks.is_empty());

    deploy(&c, SANDBOX_CASES).await;
    normal_puts_succeed(&c, "start").await;
    run_cases(&c, SANDBOX_CASES).await;
    assert_failures_counted(&c, SANDBOX_CASES).await;

    // Fail-open: a hook that errors or runs out of time lets the write through.
    let mut erroring =
        hook("open-error", "h/open-error/", "function validate(k, v, c)\n  error('boom')\nend\n", LONG_MS);
    erroring.fail_open = true;
    let mut looping =
        hook("open-loop", "h/open-loop/", "function validate(k, v, c)\n  while true do end\nend\n", SHORT_MS);
    looping.fail_open = true;
    for d in [erroring, looping] {
        client.deploy_hook(d).await.expect("deploy a fail-open hook");
    }
    let deployed = SANDBOX_CASES.len() + 3;
    wait_deployed(&c, deployed, "open-loop", "h/open-loop/probe").await;
    for name in ["open-error", "open-loop"] {
        for id in NODES {
            let key = format!("h/{name}/{id}");
            let r = c.node_client(id).put_detailed(key.clone(), "through", PutOptions::default()).await;
            let r = r.unwrap_or_else(|e| panic!("{key}: a fail-open hook lets the write through: {e}"));
            assert_eq!(r.hooks.len(), 1, "{key}: the hook is named even though it failed: {:?}", r.hooks);
            let got = c.node_client(id).get(key.clone()).await.expect("get").expect("written");
            assert_eq!(&got.value[..], b"through");
        }
        let s = stats(&c, name).await;
        println!("{name}: {s:?}");
        // At least one call per write: a write retried while leadership
        // moves (the leader balancer runs) is judged again. Every call
        // failed and was let through.
        assert!(s.calls >= 3 && s.fail_open_passes == s.calls, "{name}: {s:?}");
        if name == "open-error" {
            assert_eq!(s.errors, s.calls, "{name}: {s:?}");
        } else {
            assert_eq!(s.limit_hits, s.calls, "{name}: {s:?}");
        }
    }
    normal_puts_succeed(&c, "fail-open").await;

    // No state survives between calls: neither globals nor the script's
    // top-level locals.
    let stateful = r#"
local calls = 0
function validate(key, value, ctx)
	calls += 1
	if calls > 1 then
		return false, `a top-level local kept its value: {calls} calls`
	end
	local ok = pcall(function() remembered = (remembered or 0) + 1 end)
	if ok and remembered ~= 1 then
		return false, `a global kept its value: {remembered}`
	end
	return true
end
"#;
    client.deploy_hook(hook("stateless", "h/state/", stateful, LONG_MS)).await.expect("deploy");
    wait_deployed(&c, deployed + 1, "stateless", "h/state/probe").await;
    // Same key, so the same shard leader (and maybe the same worker) runs every call.
    for i in 0..20 {
        let via = c.node_client(NODES[i % NODES.len()]);
        via.put("h/state/one", format!("{i}")).await.unwrap_or_else(|e| panic!("call {i}: state survived: {e}"));
    }
}

/// Clients writing at once under the runaway hook's prefix: twice the two
/// hook workers a 2-core node has, few enough that a write queued behind them
/// waits well under the 5 s request timeout.
const FLOOD_WRITERS: usize = 4;

/// A runaway hook hammered by concurrent writes must not take other hooks'
/// writes down with it: while clients keep writing under a prefix whose hook
/// runs until its 1 s limit, writes judged by the benign hook on the same
/// shard leader (so sharing its hook workers) still succeed, maybe slower,
/// and every flood write is rejected by the runaway hook's own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_runaway_calls_does_not_starve_other_hooks_on_the_same_leader() {
    let c = ProcCluster::start(3, &[]).await;
    let runaway = &LIMIT_CASES[1];
    assert_eq!((runaway.name, runaway.timeout_ms), ("loop-long", LONG_MS));
    deploy(&c, std::slice::from_ref(runaway)).await;
    let flood_key = format!("h/{}/flood", runaway.name);
    let leader = c.leader_of_key(1, &flood_key).await;
    let mut benign = Vec::new();
    for i in 0.. {
        let key = format!("ok/flood/{i}");
        if c.leader_of_key(1, &key).await == leader {
            benign.push(key);
        }
        if benign.len() == 3 {
            break;
        }
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..FLOOD_WRITERS {
        let (nc, key, stop) = (c.node_client(NODES[i % NODES.len()]), flood_key.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut messages = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                messages.push(match nc.put(key.clone(), "v").await {
                    Err(Error::Rejected(msg)) => msg,
                    other => format!("not a rejection: {other:?}"),
                });
            }
            messages
        }));
    }
    // Once the runaway hook has been called, the flood is on. Its calls are
    // summed over every node: a loaded machine may move the shard's
    // leadership, and the hook runs wherever the leader is.
    let leader_client = c.node_client(leader);
    eventually("the flood to reach the runaway hook", || async {
        let mut calls = 0;
        for id in NODES {
            let listed = c.node_client(id).list_hooks().await.ok()?;
            calls += listed.hooks.iter().find(|h| h.name == runaway.name)?.stats?.calls;
        }
        (calls > 0).then_some(())
    })
    .await;
    let mut benign_results = Vec::new();
    for key in &benign {
        let start = Instant::now();
        let r = leader_client.put_detailed(key.clone(), "fine", PutOptions::default()).await;
        println!(
            "{key} on node {leader} during the flood: {:?} after {:?}",
            r.as_ref().map(|r| r.version),
            start.elapsed()
        );
        benign_results.push((key.clone(), r));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_messages = Vec::new();
    for f in flood {
        flood_messages.extend(f.await.expect("flood task"));
    }
    let own_limit = |m: &String| {
        m.starts_with(&format!("hook {} v1 ", runaway.name))
            && DEADLINE.iter().any(|cause| m.contains(cause))
            && m.ends_with("the write is rejected (fail-closed)")
    };
    let others: Vec<&String> = flood_messages.iter().filter(|m| !own_limit(m)).collect();
    println!(
        "{} flood writes: {} rejected by the runaway hook's own limit, {} otherwise, e.g. {:?}",
        flood_messages.len(),
        flood_messages.len() - others.len(),
        others.len(),
        others.first()
    );
    for (key, r) in benign_results {
        r.unwrap_or_else(|e| panic!("{key}: a benign hook's write failed during a flood of runaway calls: {e}"));
    }
    assert!(others.is_empty(), "flood writes must fail by the runaway hook's own limit: {others:?}");
}
