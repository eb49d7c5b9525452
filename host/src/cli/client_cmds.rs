//! Client subcommands: `put`, `get`, `delete`, `scan`, `cluster ...`.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use ringkv_client::{Consistency, PutOptions, Value};
use serde_json::json;

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
        let version = self.client.client()?.put_with(self.key, self.value, opts).await?;
        if self.client.json {
            println!("{}", json!({ "version": version }));
        } else {
            println!("OK version={version}");
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
                println!("{j}");
            }
            (None, true) => println!("{}", json!({ "key": self.key, "found": false })),
            (Some(v), false) => println!("{}", String::from_utf8_lossy(&v.value)),
            (None, false) => println!("(not found)"),
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
            println!("{}", json!({ "deleted": deleted }));
        } else {
            println!("{}", if deleted { "deleted" } else { "(not found)" });
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct ScanCommand {
    pub prefix: String,
    /// Maximum number of keys (0: server default).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl ScanCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let items = self.client.client()?.scan(self.prefix, self.limit, self.consistency.into()).await?;
        if self.client.json {
            let arr: Vec<_> = items.iter().map(|i| value_json(&i.key, &i.value)).collect();
            println!("{}", serde_json::Value::Array(arr));
        } else {
            for i in items {
                println!("{}\t{}", String::from_utf8_lossy(&i.key), String::from_utf8_lossy(&i.value.value));
            }
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, and per Raft group the leader, term and log indexes.
    Status(ClientArgs),
    /// Add a node that is already running (it becomes a learner, then a voter).
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
}

impl ClusterCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self {
            ClusterCommand::Status(args) => {
                let s = args.client()?.status().await?;
                if args.json {
                    println!("{}", crate::api::status_json(&s));
                } else {
                    println!("answered by node {}", s.node_id);
                    println!("{:<6} {:<8} ADDR", "NODE", "ROLE");
                    for n in &s.nodes {
                        println!("{:<6} {:<8} {}", n.id, n.role, n.addr);
                    }
                    println!();
                    println!(
                        "{:<6} {:<5} {:<7} {:<6} {:<10} {:<10} {:<10}",
                        "GROUP", "KIND", "LEADER", "TERM", "LAST_LOG", "COMMIT", "APPLIED"
                    );
                    for g in &s.groups {
                        println!(
                            "{:<6} {:<5} {:<7} {:<6} {:<10} {:<10} {:<10}",
                            g.group_id, g.kind, g.leader_id, g.term, g.last_log_index, g.commit_index, g.applied_index
                        );
                    }
                }
            }
            ClusterCommand::AddNode { id, addr, client } => {
                client.client()?.add_node(id, addr.clone()).await?;
                if client.json {
                    println!("{}", json!({ "added": id, "addr": addr }));
                } else {
                    println!("node {id} at {addr} is a voter");
                }
            }
            ClusterCommand::RemoveNode { id, client } => {
                client.client()?.remove_node(id).await?;
                if client.json {
                    println!("{}", json!({ "removed": id }));
                } else {
                    println!("node {id} removed");
                }
            }
        }
        Ok(())
    }
}
