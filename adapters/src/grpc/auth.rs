//! Admin tokens: who may call the administrative gRPC services, for which
//! workspace. Tokens arrive as `authorization: Bearer <token>` metadata and are
//! looked up by their SHA-256 in the [`AdminTokens`] projection, which follows
//! the log so tokens issued or revoked elsewhere take effect within moments.

use std::sync::Arc;

use onepd_commands::workspace::token_sha256;
use onepd_domain::StoreError;
use onepd_domain::events::workspace::TokenScope;
use onepd_projections::access::{AdminTokens, Grant};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::EventLog;
use crate::live::Live;

/// The valid admin tokens, kept current by a task that follows the log.
#[derive(Debug)]
pub struct TokenRegistry {
    tokens: Arc<Live<AdminTokens>>,
}

impl TokenRegistry {
    /// Reads every token event up to the head, then follows the log in the
    /// background for new ones.
    pub async fn follow(log: &EventLog) -> Result<Arc<TokenRegistry>, StoreError> {
        Ok(Arc::new(TokenRegistry { tokens: Live::follow(log, "admin_tokens").await? }))
    }

    /// Checks the request's token and that it allows `needed`.
    pub fn authorize(&self, metadata: &MetadataMap, needed: TokenScope) -> Result<Grant, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <admin token>\", found none"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <admin token>\""))?;
        let grant = self.tokens.read(|tokens| tokens.grant(&token_sha256(token)).cloned()).ok_or_else(|| {
            Status::unauthenticated("authorization: admin token not recognized (revoked or never issued)")
        })?;
        if !grant.allows(needed) {
            return Err(Status::permission_denied(
                format!("authorization: this admin token lacks the {needed:?} scope").to_lowercase(),
            ));
        }
        Ok(grant)
    }
}
