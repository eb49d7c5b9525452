//! `ringkv hook ...`: deploy, list, show, remove, roll back and dry-run hooks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ringkv_client::proto;
use serde_json::json;

use super::out::outln;
use super::ClientArgs;

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum StageArg {
    Validate,
    Ttl,
    /// The cluster's partition function (Wasm only; deploying, replacing or
    /// removing it re-shards the data online).
    Partition,
}

impl From<StageArg> for proto::HookStage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Validate => proto::HookStage::Validate,
            StageArg::Ttl => proto::HookStage::Ttl,
            StageArg::Partition => proto::HookStage::Partition,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindArg {
    Lua,
    /// A WebAssembly module built with the guest SDK (guest-sdk/).
    Wasm,
}

/// The first bytes of every WebAssembly module.
const WASM_MAGIC: &[u8] = b"\0asm";

/// The kind of hook `source` is: `asked` if given and it fits the file,
/// else a WebAssembly module when it starts with the Wasm magic bytes and a
/// Lua script otherwise.
fn hook_kind(source: &[u8], asked: Option<KindArg>, file: &std::path::Path) -> anyhow::Result<KindArg> {
    let wasm = source.starts_with(WASM_MAGIC);
    match (asked, wasm) {
        (None, true) | (Some(KindArg::Wasm), true) => Ok(KindArg::Wasm),
        (None, false) | (Some(KindArg::Lua), false) => Ok(KindArg::Lua),
        (Some(KindArg::Lua), true) => anyhow::bail!(
            "{} is a WebAssembly module (it starts with \\0asm), not a Lua script: drop --kind lua (the kind is \
             detected from the file) or pass --kind wasm",
            file.display()
        ),
        (Some(KindArg::Wasm), false) => anyhow::bail!(
            "{} is not a WebAssembly module (a module starts with \\0asm): drop --kind wasm to use it as a Lua script",
            file.display()
        ),
    }
}

/// The definition flags `deploy` and `test` share.
#[derive(Args, Debug)]
pub struct DefinitionArgs {
    /// The Lua script or WebAssembly module (`.wasm`).
    #[arg(long)]
    pub file: PathBuf,
    /// What the file is; by default detected from its contents (a
    /// WebAssembly module starts with the bytes \0asm, anything else is Lua).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only keys starting with this run the hook (default: every key).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Let writes through when the hook fails (error or broken limit)
    /// instead of rejecting them.
    #[arg(long)]
    pub fail_open: bool,
    /// Wall-clock deadline of one call (default 10ms, at most 1s).
    #[arg(long, value_parser = super::parse_duration)]
    pub timeout: Option<Duration>,
}

impl DefinitionArgs {
    fn definition(&self, name: String, stage: StageArg) -> anyhow::Result<proto::HookDefinition> {
        let source = std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let kind = hook_kind(&source, self.kind, &self.file)?;
        Ok(proto::HookDefinition {
            name,
            kind: match kind {
                KindArg::Lua => proto::HookKind::Lua as i32,
                KindArg::Wasm => proto::HookKind::Wasm as i32,
            },
            stage: proto::HookStage::from(stage) as i32,
            prefix: self.prefix.clone().into_bytes().into(),
            source: source.into(),
            fail_open: self.fail_open,
            timeout_ms: self.timeout.map_or(0, |d| d.as_millis().max(1) as u64),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// Deploy a hook, or a new version of one, to every node.
    Deploy {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        stage: StageArg,
        /// Deploy as the hook's shadow version: it runs beside the active
        /// version on every write that one judges, its decisions counted
        /// (`hook list`) and never enforced. `hook promote NAME` makes it
        /// active; `hook remove --shadow NAME` drops it.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        def: DefinitionArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List hooks with their versions and this node's call statistics.
    List(ClientArgs),
    /// Show one hook and its source.
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deactivate a hook. A validate or TTL hook is kept, and `hook rollback
    /// NAME` makes it active again. The partition function is not kept:
    /// removing it re-shards keys back to whole-key routing, and only
    /// deploying it again brings it back.
    Remove {
        name: String,
        /// Drop the hook's shadow version instead; the active one stays.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a hook's shadow version the active one, on every node at once
    /// (one meta-group entry): each write is judged by exactly one of them.
    Promote {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a validate or TTL hook's previous version active again (or a
    /// removed one active again). The partition function has no rollback:
    /// deploy the version you want.
    Rollback {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Dry-run a hook on one write in the server's sandbox; nothing is written.
    ///
    /// Exit status: 0 the hook accepts the write (or sets its TTL, or routes
    /// the key), 1 it rejects the write, 2 the hook fails (it does not load
    /// or compile, errors at run time, or breaks its deadline or memory
    /// limit), 3 the test could not run (bad flags, unreadable file, no
    /// cluster).
    Test {
        #[arg(long, value_enum, default_value = "validate")]
        stage: StageArg,
        #[command(flatten)]
        def: DefinitionArgs,
        #[arg(long)]
        key: String,
        /// The value written; omit it to test a delete.
        #[arg(long)]
        value: Option<String>,
        /// The TTL the client asks for.
        #[arg(long, value_parser = super::parse_duration)]
        ttl: Option<Duration>,
        /// What ctx.old_value returns (default: no stored value).
        #[arg(long)]
        old_value: Option<String>,
        /// What ctx.old_version returns when --old-value is given.
        #[arg(long, default_value_t = 1)]
        old_version: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn stage_name(raw: i32) -> &'static str {
    match proto::HookStage::try_from(raw) {
        Ok(proto::HookStage::Validate) => "validate",
        Ok(proto::HookStage::Ttl) => "ttl",
        Ok(proto::HookStage::Partition) => "partition",
        _ => "?",
    }
}

fn info_json(h: &proto::HookInfo) -> serde_json::Value {
    let stats = h.stats.unwrap_or_default();
    json!({
        "name": h.name,
        "kind": if h.kind == proto::HookKind::Wasm as i32 { "wasm" } else { "lua" },
        "stage": stage_name(h.stage),
        "prefix": String::from_utf8_lossy(&h.prefix),
        "version": h.version,
        "active": h.active,
        "previous_version": h.previous_version,
        "sha256": h.sha256,
        "fail_open": h.fail_open,
        "timeout_ms": h.timeout_ms,
        "deployed_at_ms": h.deployed_at_ms,
        "stats": {
            "calls": stats.calls, "rejects": stats.rejects, "errors": stats.errors,
            "limit_hits": stats.limit_hits, "fail_open_passes": stats.fail_open_passes,
            "p50_us": stats.p50_us, "p99_us": stats.p99_us, "max_us": stats.max_us,
        },
        "shadow": h.shadow.as_ref().map(crate::api::shadow_json),
    })
}

/// `--json` output of a change that made `version` active in place of `replaced`.
fn change_json(name: &str, version: u64, replaced: u64) -> serde_json::Value {
    json!({ "name": name, "version": version, "replaced_version": replaced })
}

impl HookCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self {
            HookCommand::Deploy { name, stage, shadow, def, client } => {
                let definition = def.definition(name.clone(), stage)?;
                let c = client.client()?;
                let r =
                    if shadow { c.deploy_shadow_hook(definition).await? } else { c.deploy_hook(definition).await? };
                if client.json {
                    outln!("{}", json!({ "name": name, "version": r.version, "sha256": r.sha256, "shadow": shadow }))?;
                } else if shadow {
                    outln!("deployed {name} v{} as a shadow (sha256 {})", r.version, r.sha256)?;
                    outln!("it judges writes beside the active version without enforcing; compare with `ringkv hook list`, then `ringkv hook promote {name}` or `ringkv hook remove --shadow {name}`")?;
                } else {
                    outln!("deployed {name} v{} (sha256 {})", r.version, r.sha256)?;
                    if matches!(stage, StageArg::Partition) {
                        outln!("keys are being re-sharded in the background: ringkv cluster reshard status")?;
                    }
                }
            }
            HookCommand::List(client) => {
                let r = client.client()?.list_hooks().await?;
                if client.json {
                    let hooks: Vec<_> = r.hooks.iter().map(info_json).collect();
                    outln!("{}", json!({ "node": r.node_id, "hooks": hooks }))?;
                } else if r.hooks.is_empty() {
                    outln!("no hooks deployed")?;
                } else {
                    outln!(
                        "{:<24} {:<9} {:<16} {:>5} {:<8} {:>9} {:>8} {:>7} {:>7} {:>8}",
                        "NAME",
                        "STAGE",
                        "PREFIX",
                        "VER",
                        "STATE",
                        "CALLS",
                        "REJECTS",
                        "ERRORS",
                        "LIMITS",
                        "P99(us)"
                    )?;
                    for h in &r.hooks {
                        let s = h.stats.unwrap_or_default();
                        outln!(
                            "{:<24} {:<9} {:<16} {:>5} {:<8} {:>9} {:>8} {:>7} {:>7} {:>8}",
                            h.name,
                            stage_name(h.stage),
                            String::from_utf8_lossy(&h.prefix),
                            h.version,
                            if h.active { "active" } else { "removed" },
                            s.calls,
                            s.rejects,
                            s.errors,
                            s.limit_hits,
                            s.p99_us
                        )?;
                        if let Some(sh) = &h.shadow {
                            let st = sh.stats.unwrap_or_default();
                            outln!(
                                "  shadow v{}: {} calls, {} agree, {} disagree, {} errors, {} limit hits, {} skipped, p99 {}us",
                                sh.version,
                                st.calls,
                                sh.agreements,
                                sh.disagreements,
                                st.errors,
                                st.limit_hits,
                                sh.skipped,
                                st.p99_us
                            )?;
                            for d in &sh.recent_disagreements {
                                outln!("    {:?}: active {}, shadow {}", d.key, d.active, d.shadow)?;
                            }
                        }
                    }
                    outln!("(call statistics are node {}'s)", r.node_id)?;
                }
            }
            HookCommand::Get { name, client } => {
                let h = client.client()?.get_hook(name).await?;
                if client.json {
                    let mut j = info_json(&h);
                    if h.kind == proto::HookKind::Wasm as i32 {
                        j["source_bytes"] = json!(h.source.len());
                    } else {
                        j["source"] = json!(String::from_utf8_lossy(&h.source));
                    }
                    outln!("{j}")?;
                } else {
                    outln!(
                        "{} v{} {} stage={} prefix={:?} timeout={}ms {} sha256={}",
                        h.name,
                        h.version,
                        if h.active { "active" } else { "removed" },
                        stage_name(h.stage),
                        String::from_utf8_lossy(&h.prefix),
                        h.timeout_ms,
                        if h.fail_open { "fail-open" } else { "fail-closed" },
                        h.sha256
                    )?;
                    if h.kind == proto::HookKind::Wasm as i32 {
                        outln!("(a WebAssembly module of {} bytes)", h.source.len())?;
                    } else {
                        outln!("{}", String::from_utf8_lossy(&h.source))?;
                    }
                }
            }
            HookCommand::Remove { name, shadow: true, client } => {
                let v = client.client()?.remove_shadow_hook(name.clone()).await?;
                if client.json {
                    outln!("{}", json!({ "name": name, "removed_version": v, "shadow": true }))?;
                } else {
                    outln!("removed the shadow version v{v} of {name}; its active version is unchanged")?;
                }
            }
            HookCommand::Promote { name, client } => {
                let r = client.client()?.promote_hook(name.clone()).await?;
                if client.json {
                    outln!("{}", change_json(&name, r.version, r.replaced_version))?;
                } else {
                    outln!(
                        "promoted {name} v{} to active (it replaced v{}; `hook rollback {name}` goes back)",
                        r.version,
                        r.replaced_version
                    )?;
                }
            }
            HookCommand::Remove { name, shadow: false, client } => {
                let v = client.client()?.remove_hook(name.clone()).await?;
                if client.json {
                    outln!("{}", json!({ "name": name, "removed_version": v }))?;
                } else {
                    outln!("removed {name} v{v} (a validate or ttl hook comes back with `hook rollback {name}`; removing the partition function re-shards keys back to whole-key routing)")?;
                }
            }
            HookCommand::Rollback { name, client } => {
                let r = client.client()?.rollback_hook(name.clone()).await.map_err(|e| match e {
                    ringkv_client::Error::Other(s) if s.code() == tonic::Code::NotFound => anyhow::anyhow!(
                        "{} (if that was the partition function: a removed partition function is not kept for \
                         rollback; deploy it again with `ringkv hook deploy --stage partition`)",
                        ringkv_client::Error::Other(s)
                    ),
                    e => e.into(),
                })?;
                if client.json {
                    outln!("{}", change_json(&name, r.version, r.replaced_version))?;
                } else {
                    match r.replaced_version {
                        0 => outln!("{name} is now v{} (it had been removed)", r.version)?,
                        was => outln!("{name} is now v{} (was v{was})", r.version)?,
                    }
                }
            }
            HookCommand::Test { stage, def, key, value, ttl, old_value, old_version, client } => {
                let code = test_hook(stage, def, key, value, ttl, old_value, old_version, client)
                    .await
                    .map_err(|e| super::Exit::error(super::EXIT_TEST_FAILED, e))?;
                if code != 0 {
                    return Err(super::Exit::quiet(code).into());
                }
            }
        }
        Ok(())
    }
}

/// Exit status of `hook test` when the hook rejects the write.
const EXIT_REJECT: u8 = 1;
/// Exit status of `hook test` when the hook fails (load, compile, run time, limits).
const EXIT_HOOK_ERROR: u8 = 2;

/// The exit status for a dry run's decision: 0 accept (or a TTL or route),
/// 1 reject, 2 error.
fn decision_exit_code(decision: &str) -> u8 {
    match decision {
        "reject" => EXIT_REJECT,
        "error" => EXIT_HOOK_ERROR,
        _ => 0,
    }
}

/// Runs `hook test`, prints the decision and returns its exit status; a
/// hook that does not load is an error with exit status 2.
#[allow(clippy::too_many_arguments)]
async fn test_hook(
    stage: StageArg,
    def: DefinitionArgs,
    key: String,
    value: Option<String>,
    ttl: Option<Duration>,
    old_value: Option<String>,
    old_version: u64,
    client: ClientArgs,
) -> anyhow::Result<u8> {
    let definition = def.definition("test".into(), stage)?;
    let req = proto::TestHookRequest {
        hook: Some(definition),
        key: key.into_bytes().into(),
        value: value.map(|v| v.into_bytes().into()),
        client_ttl_ms: ttl.map(|d| d.as_millis() as u64),
        old_value: old_value.map(|v| v.into_bytes().into()),
        old_version,
    };
    let r = match client.client()?.test_hook(req).await {
        Ok(r) => r,
        Err(ringkv_client::Error::InvalidArgument(m)) if m.starts_with(LOAD_FAILED) => {
            return Err(super::Exit::error(EXIT_HOOK_ERROR, anyhow::anyhow!(m)));
        }
        Err(e) => return Err(e.into()),
    };
    let took = format!("{} us", r.elapsed_us);
    if client.json {
        outln!(
            "{}",
            json!({ "decision": r.decision, "message": r.message, "ttl_ms": r.ttl_ms,
                    "elapsed_us": r.elapsed_us, "read_old_value": r.read_old_value })
        )?;
    } else {
        match r.decision.as_str() {
            "reject" | "error" | "route" => outln!("{}: {} ({took})", r.decision, r.message)?,
            "ttl" => outln!("ttl: expires {} ms after the write ({took})", r.ttl_ms)?,
            d => outln!("{d} ({took})")?,
        }
    }
    Ok(decision_exit_code(&r.decision))
}

/// How the server's message starts when a hook under test does not load.
const LOAD_FAILED: &str = "hook does not load";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_comes_from_the_file_and_a_wrong_kind_flag_is_refused() {
        let file = std::path::Path::new("h.wasm");
        let wasm = b"\0asm\x01\0\0\0";
        let lua = b"function validate(k, v, ctx) return true end";
        assert_eq!(hook_kind(wasm, None, file).expect("a kind"), KindArg::Wasm);
        assert_eq!(hook_kind(lua, None, file).expect("a kind"), KindArg::Lua);
        assert_eq!(hook_kind(wasm, Some(KindArg::Wasm), file).expect("a kind"), KindArg::Wasm);
        assert_eq!(hook_kind(lua, Some(KindArg::Lua), file).expect("a kind"), KindArg::Lua);
        let e = hook_kind(wasm, Some(KindArg::Lua), file).expect_err("refused").to_string();
        assert!(e.starts_with("h.wasm is a WebAssembly module") && e.contains("drop --kind lua"), "{e}");
        let e = hook_kind(lua, Some(KindArg::Wasm), file).expect_err("refused").to_string();
        assert!(e.contains("is not a WebAssembly module"), "{e}");
    }

    #[test]
    fn hook_test_exits_0_accept_1_reject_2_error() {
        for (decision, code) in
            [("accept", 0), ("ttl", 0), ("keep-ttl", 0), ("no-expiry", 0), ("route", 0), ("reject", 1), ("error", 2)]
        {
            assert_eq!(decision_exit_code(decision), code, "{decision}");
        }
    }
}
