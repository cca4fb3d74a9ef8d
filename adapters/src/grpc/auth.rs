//! Admin tokens: who may call the administrative gRPC services and the HTTP
//! profile API, for which workspace. Over gRPC, tokens arrive as
//! `authorization: Bearer <token>` metadata. They are looked up by their
//! SHA-256 in the [`AdminTokens`] projection, which follows the log so tokens
//! issued or revoked elsewhere take effect within moments.
//!
//! [`TokenRegistry::authorize_token`] is the one check; each edge only finds
//! the token (gRPC metadata here, HTTP Basic credentials in
//! [`crate::http::profiles`]) and maps [`AuthError`] to its own status.

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
        Ok(self.authorize_token(token, needed)?)
    }

    /// Checks `token`, however it arrived (gRPC metadata, HTTP Basic
    /// credentials), and that it allows `needed`.
    pub fn authorize_token(&self, token: &str, needed: TokenScope) -> Result<Grant, AuthError> {
        let grant =
            self.tokens.read(|tokens| tokens.grant(&token_sha256(token)).cloned()).ok_or(AuthError::Unrecognized)?;
        if !grant.allows(needed) {
            return Err(AuthError::MissingScope(needed));
        }
        Ok(grant)
    }
}

/// Why an admin token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No valid token has this hash: it was revoked, or never issued.
    #[error("authorization: admin token not recognized (revoked or never issued)")]
    Unrecognized,
    /// The token is valid but lacks the scope the call needs.
    #[error("authorization: this admin token lacks the {} scope", scope_name(*.0))]
    MissingScope(TokenScope),
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        match err {
            AuthError::Unrecognized => Status::unauthenticated(err.to_string()),
            AuthError::MissingScope(_) => Status::permission_denied(err.to_string()),
        }
    }
}

/// A scope's name as tokens are issued with it (`read`, `audit`, `admin`).
fn scope_name(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Read => "read",
        TokenScope::Audit => "audit",
        TokenScope::Admin => "admin",
    }
}
