//! `ringkv tls`: makes a cluster CA and certificates, so TLS can be tried
//! (and tested) without openssl.

use std::path::PathBuf;

use clap::Subcommand;

use super::out::outln;
use crate::tls::gen::{generate_dir, Validity};

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Write a CA (reused when DIR already has ca.pem and ca.key), a node
    /// certificate and client certificates into DIR.
    Gen {
        /// Directory to write ca.pem/ca.key, node.pem/node.key and client-NAME.pem/.key into.
        #[arg(long)]
        out: PathBuf,
        /// Extra host names or IP addresses of the nodes, comma separated
        /// (ringkv-node, localhost and 127.0.0.1 are always included).
        #[arg(long, value_delimiter = ',')]
        node_names: Vec<String>,
        /// Client certificate to make for this principal (repeatable).
        #[arg(long)]
        client: Vec<String>,
        /// Days the node and client certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

impl TlsCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            TlsCommand::Gen { out, node_names, client, days } => {
                anyhow::ensure!(days >= 1, "--days must be at least 1");
                for path in generate_dir(&out, &node_names, &client, Validity::days(days))? {
                    outln!("{}", path.display())?;
                }
            }
        }
        Ok(())
    }
}
