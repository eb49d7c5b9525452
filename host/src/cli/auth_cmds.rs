//! `ringkv auth ...`: runtime tokens (create, revoke, list), who-am-I, and
//! hashing a token for the config file.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use ringkv_client::proto;
use serde_json::json;

use super::out::outln;
use super::ClientArgs;
use crate::auth::{parse_token, Role};

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Create, revoke and list runtime tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the principal and grants the given credentials authenticate as.
    Whoami(ClientArgs),
    /// Read a token (rkv_<name>_<secret>) from stdin and print its argon2
    /// hash as a ready-to-paste `[[auth.tokens]]` entry.
    HashToken(HashTokenArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create(CreateArgs),
    /// Revoke a token on every node.
    Revoke(RevokeArgs),
    /// List runtime tokens: names and grants, never secrets.
    List(ClientArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Token name: 1 to 64 letters, digits, '-', '_' or '.'.
    #[arg(long)]
    pub name: String,
    /// read, write (includes read) or admin (includes write).
    #[arg(long)]
    pub role: Role,
    /// Limit the grant to keys starting with these bytes.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct HashTokenArgs {
    /// Role written into the printed entry.
    #[arg(long, default_value = "read")]
    pub role: Role,
    /// Prefix written into the printed entry.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

fn grant_text(g: Option<&proto::Grant>) -> (String, String) {
    match g {
        Some(g) => (g.role.clone(), String::from_utf8_lossy(&g.prefix).into_owned()),
        None => (String::new(), String::new()),
    }
}

impl AuthCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self {
            AuthCommand::Token(TokenCommand::Create(a)) => {
                let token =
                    a.client.client()?.create_token(&a.name, a.role.as_str(), a.prefix.clone().into_bytes()).await?;
                if a.client.json {
                    outln!("{}", json!({ "name": a.name, "token": token }))?;
                } else {
                    outln!("{token}")?;
                    eprintln!("token {:?} created; this is the only time it is shown", a.name);
                }
            }
            AuthCommand::Token(TokenCommand::Revoke(a)) => {
                a.client.client()?.revoke_token(&a.name).await?;
                if a.client.json {
                    outln!("{}", json!({ "revoked": a.name }))?;
                } else {
                    outln!("revoked {}", a.name)?;
                }
            }
            AuthCommand::Token(TokenCommand::List(c)) => {
                let list = c.client()?.list_tokens().await?;
                if c.json {
                    let arr: Vec<_> = list
                        .tokens
                        .iter()
                        .map(|t| {
                            let (role, prefix) = grant_text(t.grant.as_ref());
                            json!({ "name": t.name, "role": role, "prefix": prefix, "created_at_ms": t.created_at_ms })
                        })
                        .collect();
                    outln!("{}", serde_json::Value::Array(arr))?;
                } else {
                    outln!("{:<24} {:<6} PREFIX", "NAME", "ROLE")?;
                    for t in &list.tokens {
                        let (role, prefix) = grant_text(t.grant.as_ref());
                        outln!("{:<24} {:<6} {prefix}", t.name, role)?;
                    }
                }
            }
            AuthCommand::Whoami(c) => {
                let me = c.client()?.who_am_i().await?;
                let grants: Vec<_> = me
                    .grants
                    .iter()
                    .map(|g| {
                        let (role, prefix) = grant_text(Some(g));
                        json!({ "role": role, "prefix": prefix })
                    })
                    .collect();
                if c.json {
                    outln!(
                        "{}",
                        json!({ "principal": me.principal, "auth_enabled": me.auth_enabled, "grants": grants })
                    )?;
                } else if !me.auth_enabled {
                    outln!("auth is off on this cluster: every request is allowed")?;
                } else {
                    outln!("{}", me.principal)?;
                    for g in &me.grants {
                        let (role, prefix) = grant_text(Some(g));
                        outln!("  {role} {}", if prefix.is_empty() { "(every key)".to_string() } else { prefix })?;
                    }
                }
            }
            AuthCommand::HashToken(a) => {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input).context("reading the token from stdin")?;
                let token = input.trim();
                let name = parse_token(token).map_err(|e| anyhow::anyhow!("{e}"))?.name.to_string();
                let hash = crate::auth::hash_secret(token).map_err(|e| anyhow::anyhow!("{e}"))?;
                outln!("[[auth.tokens]]")?;
                outln!("name = {}", toml_string(&name))?;
                outln!("hash = {}", toml_string(&hash))?;
                outln!("role = {}", toml_string(a.role.as_str()))?;
                if !a.prefix.is_empty() {
                    outln!("prefix = {}", toml_string(&a.prefix))?;
                }
            }
        }
        Ok(())
    }
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
