//! `ringkv.v1.Auth`: runtime token management (admin) and who-am-I.

use ringkv_client::proto::{self, auth_server::Auth};
use tonic::{Request, Response, Status};

use super::authorize;
use crate::auth::{Grant, Need, Role};
use crate::cluster::Node;

pub struct AuthService {
    node: Node,
}

impl AuthService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

fn grant_proto(g: &Grant) -> proto::Grant {
    proto::Grant { role: g.role.as_str().to_string(), prefix: g.prefix.clone().into() }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn create_token(
        &self,
        req: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        authorize(&self.node, &req, "create_token", Need::Admin("manage tokens")).await?;
        let r = req.into_inner();
        let role: Role = r.role.parse().map_err(Status::invalid_argument)?;
        let token = self.node.create_token(&r.name, role, r.prefix.to_vec()).await?;
        tracing::info!(token = %r.name, %role, "token created");
        Ok(Response::new(proto::CreateTokenResponse { token }))
    }

    async fn revoke_token(
        &self,
        req: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        authorize(&self.node, &req, "revoke_token", Need::Admin("manage tokens")).await?;
        let name = req.into_inner().name;
        self.node.revoke_token(&name).await?;
        tracing::info!(token = %name, "token revoked");
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        req: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        authorize(&self.node, &req, "list_tokens", Need::Admin("manage tokens")).await?;
        let tokens = self
            .node
            .token_records()
            .await?
            .iter()
            .map(|r| proto::TokenInfo {
                name: r.name.clone(),
                grant: Some(grant_proto(&r.grant)),
                created_at_ms: r.created_at_ms,
            })
            .collect();
        Ok(Response::new(proto::ListTokensResponse { tokens }))
    }

    async fn who_am_i(&self, req: Request<proto::WhoAmIRequest>) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let principal = authorize(&self.node, &req, "who_am_i", Need::Authenticated).await?;
        Ok(Response::new(match principal {
            Some(p) => proto::WhoAmIResponse {
                principal: p.name.clone(),
                grants: p.grants.iter().map(grant_proto).collect(),
                auth_enabled: true,
            },
            None => proto::WhoAmIResponse { auth_enabled: false, ..Default::default() },
        }))
    }
}
