//! The node's side of runtime tokens: creating and revoking them through the
//! meta group, and keeping this node's token table in step with what the
//! meta group has applied (so a revoke reaches every node's check within
//! milliseconds of being applied there).

use super::workers::Worker;
use super::{Node, NodeError, META_GROUP};
use crate::auth::{check_token_name, hash_secret, new_secret, Grant, Role, TokenRecord};
use crate::command::{CommandResult, MetaOp};
use crate::raft::types::now_ms;

impl Node {
    /// Keeps the authenticator's runtime tokens equal to the meta group's
    /// records: reloads them whenever the meta group applies something.
    pub(super) async fn token_sync_loop(self, w: Worker) {
        let mut stop = self.shutdown_signal();
        let meta = self.meta();
        let mut metrics = meta.group().raft.metrics();
        let mut seen_applied = None;
        let mut installed: Option<Vec<TokenRecord>> = None;
        loop {
            let applied = metrics.borrow_and_update().last_applied;
            // The first round loads the tokens a restarted node already has.
            if applied != seen_applied || installed.is_none() {
                match meta.token_records().await {
                    Ok(records) => {
                        if installed.as_ref() != Some(&records) {
                            self.auth().set_runtime_tokens(records.clone());
                            installed = Some(records);
                        }
                        seen_applied = applied;
                        w.round();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading token records");
                        w.failed(&e);
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                r = metrics.changed() => if r.is_err() { break },
            }
        }
    }

    /// Creates a runtime token and returns it; only its hash is stored.
    pub async fn create_token(&self, name: &str, role: Role, prefix: Vec<u8>) -> Result<String, NodeError> {
        check_token_name(name).map_err(NodeError::InvalidArgument)?;
        if prefix.len() > self.config().limits.max_key_bytes {
            return Err(NodeError::InvalidArgument("token prefix is longer than the key limit".into()));
        }
        if self.auth().is_static_token(name) {
            return Err(NodeError::Refused(format!("{name:?} names a token of the config file")));
        }
        let token = new_secret(name);
        let to_hash = token.clone();
        let hash = tokio::task::spawn_blocking(move || hash_secret(&to_hash))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(NodeError::Internal)?;
        let record =
            TokenRecord { name: name.to_string(), hash, grant: Grant { role, prefix }, created_at_ms: now_ms() };
        match self.propose(META_GROUP, MetaOp::CreateToken { record: Box::new(record) }).await? {
            CommandResult::TokenChanged { .. } => Ok(token),
            CommandResult::TokenRefused { reason } => Err(NodeError::Refused(reason)),
            other => Err(NodeError::Internal(format!("unexpected create-token result {other:?}"))),
        }
    }

    /// Revokes a runtime token cluster-wide; `NotFound` if there is none.
    pub async fn revoke_token(&self, name: &str) -> Result<(), NodeError> {
        match self.propose(META_GROUP, MetaOp::RevokeToken { name: name.to_string() }).await? {
            CommandResult::TokenChanged { existed: true } => Ok(()),
            CommandResult::TokenChanged { existed: false } => {
                Err(NodeError::NotFound(format!("no runtime token named {name:?}")))
            }
            other => Err(NodeError::Internal(format!("unexpected revoke-token result {other:?}"))),
        }
    }

    /// Every runtime token as this node's copy of the meta group holds them.
    pub async fn token_records(&self) -> Result<Vec<TokenRecord>, NodeError> {
        self.meta().token_records().await
    }
}
