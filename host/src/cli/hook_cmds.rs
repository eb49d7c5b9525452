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

#[derive(ValueEnum, Debug, Clone, Copy, Default)]
pub enum KindArg {
    #[default]
    Lua,
    /// A WebAssembly module built with the guest SDK (guest-sdk/).
    Wasm,
}

/// The definition flags `deploy` and `test` share.
#[derive(Args, Debug)]
pub struct DefinitionArgs {
    /// The Lua script, or the `.wasm` module with `--kind wasm`.
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub kind: KindArg,
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
        Ok(proto::HookDefinition {
            name,
            kind: match self.kind {
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
    /// Deactivate a hook (kept, so `rollback` can restore it).
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a hook's previous version active again.
    Rollback {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Dry-run a script on one write in the server's sandbox; nothing is written.
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
    })
}

impl HookCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self {
            HookCommand::Deploy { name, stage, def, client } => {
                let definition = def.definition(name.clone(), stage)?;
                let r = client.client()?.deploy_hook(definition).await?;
                if client.json {
                    outln!("{}", json!({ "name": name, "version": r.version, "sha256": r.sha256 }))?;
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
            HookCommand::Remove { name, client } => {
                let v = client.client()?.remove_hook(name.clone()).await?;
                if client.json {
                    outln!("{}", json!({ "name": name, "removed_version": v }))?;
                } else {
                    outln!("removed {name} v{v} (a validate or ttl hook comes back with `hook rollback {name}`; removing the partition function re-shards keys back to whole-key routing)")?;
                }
            }
            HookCommand::Rollback { name, client } => {
                let r = client.client()?.rollback_hook(name.clone()).await?;
                if client.json {
                    outln!(
                        "{}",
                        json!({ "name": name, "version": r.version, "replaced_version": r.replaced_version })
                    )?;
                } else {
                    match r.replaced_version {
                        0 => outln!("{name} is now v{} (it had been removed)", r.version)?,
                        was => outln!("{name} is now v{} (was v{was})", r.version)?,
                    }
                }
            }
            HookCommand::Test { stage, def, key, value, ttl, old_value, old_version, client } => {
                let definition = def.definition("test".into(), stage)?;
                let req = proto::TestHookRequest {
                    hook: Some(definition),
                    key: key.into_bytes().into(),
                    value: value.map(|v| v.into_bytes().into()),
                    client_ttl_ms: ttl.map(|d| d.as_millis() as u64),
                    old_value: old_value.map(|v| v.into_bytes().into()),
                    old_version,
                };
                let r = client.client()?.test_hook(req).await?;
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
            }
        }
        Ok(())
    }
}
