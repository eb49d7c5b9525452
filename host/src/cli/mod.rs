//! The `ringkv` command line: one `XxxCommand` per subcommand, each with an
//! `execute` method.

mod auth_cmds;
mod backup_cmds;
mod backup_format;
mod bench;
mod client_cmds;
mod dev_nodes;
mod hook_cmds;
pub(crate) mod out;
mod serve;
mod tls_cmds;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use out::{out, outln};

pub use auth_cmds::AuthCommand;
pub use backup_cmds::{BackupCommand, RestoreCommand};
pub use bench::BenchCommand;
pub use client_cmds::{ClusterCommand, DeleteCommand, GetCommand, PutCommand, ScanCommand};
pub use hook_cmds::HookCommand;
pub use serve::{DevCommand, ServeCommand};
pub use tls_cmds::TlsCommand;

#[derive(Parser, Debug)]
#[command(name = "ringkv", version, about = "ringkv: a distributed key-value store with user logic next to the data")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: a single-node cluster on 127.0.0.1:7379.
    Serve(ServeCommand),
    /// Run a local multi-node cluster for trying things out.
    Dev(DevCommand),
    /// Write a value.
    Put(PutCommand),
    /// Read a value.
    Get(GetCommand),
    /// Delete a key.
    Delete(DeleteCommand),
    /// List keys under a prefix.
    Scan(ScanCommand),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Deploy and manage validation and TTL hooks.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Closed-loop load generator.
    Bench(BenchCommand),
    /// Tokens and credentials (docs/security.md).
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Write a consistent copy of every shard and hook to a directory.
    Backup(BackupCommand),
    /// Load a backup into a fresh cluster of any size and shard count.
    Restore(RestoreCommand),
    /// Node configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Certificates for TLS.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a complete, commented config file with every default.
    Example,
    /// Check a config (file, environment and flags, as `serve` would read
    /// them) and print the settings it resolves to.
    Check(Box<ServeCommand>),
}

impl ConfigCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            ConfigCommand::Example => out!("{}", crate::config::EXAMPLE),
            ConfigCommand::Check(serve) => outln!("{:#?}", serve.config()?),
        }
    }
}

/// Flags every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Nodes to contact, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7379", env = "RINGKV_ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
    /// PEM certificate of the cluster CA: talk TLS to the nodes.
    #[arg(long, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (needs --tls-key and --tls-ca).
    #[arg(long, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Bearer token for clusters with auth on (prefer the environment
    /// variable: a flag shows in the process list).
    #[arg(long, env = "RINGKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<ringkv_client::Client> {
        Ok(ringkv_client::Client::connect_with(&self.endpoints, self.options()?)?)
    }

    /// Client options from the flags: TLS when `--tls-ca` is given.
    pub fn options(&self) -> anyhow::Result<ringkv_client::ClientOptions> {
        let mut opts = ringkv_client::ClientOptions { token: self.token.clone(), ..Default::default() };
        match &self.tls_ca {
            Some(ca) => {
                opts.tls =
                    Some(ringkv_client::TlsOptions::from_files(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())?)
            }
            None => anyhow::ensure!(
                self.tls_cert.is_none() && self.tls_key.is_none(),
                "--tls-cert and --tls-key need --tls-ca (the CA that signed the nodes' certificates)"
            ),
        }
        Ok(opts)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(c) => Some(c.log_format()),
        Command::Dev(_) => Some(crate::config::LogFormat::Text),
        _ => None,
    };
    init_tracing(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(c) => c.execute().await,
            Command::Dev(c) => c.execute().await,
            Command::Put(c) => c.execute().await,
            Command::Get(c) => c.execute().await,
            Command::Delete(c) => c.execute().await,
            Command::Scan(c) => c.execute().await,
            Command::Cluster(c) => c.execute().await,
            Command::Hook(c) => c.execute().await,
            Command::Bench(c) => c.execute().await,
            Command::Auth(c) => c.execute().await,
            Command::Backup(c) => c.execute().await,
            Command::Restore(c) => c.execute().await,
            Command::Config(c) => c.execute(),
            Command::Tls(c) => c.execute(),
        }
    });
    match result.and_then(|()| out::flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`ringkv scan "" | head -1`): stop
        // quietly, as a program killed by SIGPIPE would (see `out`).
        Err(e) if out::is_closed(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ").replace('\n', " ")
}

/// Logs to stderr. Without `RUST_LOG`, servers log ringkv's own events at
/// `info` and other crates' at `warn`, openraft's at `error` (it logs routine
/// elections and retries at `warn`), minus openraft's line for every failed
/// RPC to a peer: the transport logs those itself, rate-limited. Client
/// commands log at `warn`. `RUST_LOG` replaces all of that (e.g.
/// `RUST_LOG=ringkv=debug,openraft=info`); docs/operations.md.
fn init_tracing(server: Option<crate::config::LogFormat>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    const SERVER_DEFAULT: &str = "warn,ringkv=info,openraft=error";
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let defaulted = from_env.is_none();
    let filter = from_env
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(if server.is_some() { SERVER_DEFAULT } else { "warn" }));
    // openraft 0.9 logs `error!(err, "RPCError")` in its replication loop for
    // every failed message (hundreds a second to a dead peer). Its other
    // errors there (storage) name the field `error`, so they still show.
    let quiet = defaulted.then(|| {
        tracing_subscriber::filter::filter_fn(|m| {
            !(m.is_event()
                && *m.level() == tracing::Level::ERROR
                && m.target() == "openraft::replication"
                && m.fields().field("err").is_some())
        })
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match server {
        Some(crate::config::LogFormat::Json) => {
            builder.json().with_current_span(true).with_span_list(false).finish().with(quiet).try_init()
        }
        _ => builder.finish().with(quiet).try_init(),
    };
}

/// Parses `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected a duration like 500ms, 10s or 2m)"))
}
