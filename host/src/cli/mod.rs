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
mod shards;
mod tls_cmds;

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Serve(Box<ServeCommand>),
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
    /// Deploy and manage hooks: validate and TTL hooks (Lua or Wasm) and the
    /// partition function (Wasm).
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
    /// Nodes to contact: their gRPC addresses (host:port, comma separated;
    /// not the HTTP port of the dashboard and /metrics).
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

/// The command line definition, with every (sub)command's usage line as
/// `--help` shows it (`ringkv put [OPTIONS] <KEY> <VALUE>`). Without this,
/// clap's error messages print a usage built from the flags just given
/// (`ringkv put --ttl <TTL> <KEY> <VALUE>`), which reads as if they were
/// required.
pub fn command() -> clap::Command {
    fn plain(mut cmd: clap::Command) -> clap::Command {
        let usage = cmd.render_usage().to_string();
        let usage = usage.trim_end().strip_prefix("Usage: ").unwrap_or(usage.trim_end()).to_string();
        let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
        for name in names {
            cmd = cmd.mut_subcommand(name, plain);
        }
        cmd.override_usage(usage)
    }
    let mut cmd = Cli::command();
    cmd.build();
    plain(cmd)
}

/// Ends the command with a given exit status: quietly (what the command
/// printed says it all) or after printing `error: <message>`.
#[derive(Debug)]
pub(crate) struct Exit {
    code: u8,
    error: Option<anyhow::Error>,
}

impl Exit {
    pub(crate) fn quiet(code: u8) -> Exit {
        Exit { code, error: None }
    }

    /// `error` with exit status `code`, unless it already carries an [`Exit`].
    pub(crate) fn error(code: u8, error: anyhow::Error) -> anyhow::Error {
        match error.downcast::<Exit>() {
            Ok(exit) => exit.into(),
            Err(error) => Exit { code, error: Some(error) }.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}", one_line(e)),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}

/// Exit status of `hook test` when the test could not run at all.
pub(crate) const EXIT_TEST_FAILED: u8 = 3;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let parsed = command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // `hook test` keeps 1 and 2 for its hook's verdict (see its help).
            let args: Vec<String> = std::env::args().skip(1).take(2).collect();
            if e.use_stderr() && args == ["hook", "test"] {
                let _ = e.print();
                return ExitCode::from(EXIT_TEST_FAILED);
            }
            e.exit()
        }
    };
    let client_command = !matches!(cli.command, Command::Serve(_) | Command::Dev(_));
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
        Err(e) => match e.downcast::<Exit>() {
            Ok(Exit { code, error }) => {
                if let Some(e) = error {
                    eprintln!("error: {}{}", one_line(&e), hint(&e, client_command));
                }
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("error: {}{}", one_line(&e), hint(&e, client_command));
                ExitCode::FAILURE
            }
        },
    }
}

/// What to do about a client command that reached no node.
fn hint(e: &anyhow::Error, client_command: bool) -> &'static str {
    let unreachable =
        e.chain().any(|c| c.downcast_ref::<ringkv_client::Error>().is_some_and(ringkv_client::Error::is_unreachable));
    if client_command && unreachable {
        "; is a ringkv node running there? Give the nodes' gRPC addresses with --endpoints or RINGKV_ENDPOINTS"
    } else {
        ""
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

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_error(args: &[&str]) -> String {
        let e = command().try_get_matches_from(args).expect_err("a missing argument");
        e.render().to_string()
    }

    #[test]
    fn usage_lines_show_optional_flags_as_options_even_after_an_error() {
        let e = usage_error(&["ringkv", "put", "--ttl", "5s", "k"]);
        assert!(e.contains("Usage: ringkv put [OPTIONS] <KEY> <VALUE>"), "{e}");
        let e = usage_error(&["ringkv", "hook", "test", "--key", "k"]);
        assert!(e.contains("Usage: ringkv hook test [OPTIONS] --file <FILE> --key <KEY>"), "{e}");
        let e = usage_error(&["ringkv", "scan", "--all"]);
        assert!(e.contains("Usage: ringkv scan [OPTIONS] <PREFIX>"), "{e}");
    }

    #[test]
    fn the_definition_is_consistent() {
        command().debug_assert();
    }
}
