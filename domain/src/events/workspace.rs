//! Facts about a workspace's configuration, kept in its own stream
//! (`workspace-<id>`) so changes to it are checked with optimistic concurrency.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{StreamId, WorkspaceId};

/// The stream holding a workspace's configuration.
pub fn workspace_stream(workspace: WorkspaceId) -> StreamId {
    StreamId::new(format!("workspace-{}", workspace.0)).expect("a workspace stream id is valid")
}

/// A workspace came into being.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceCreated {
    /// Its human name, unique per installation (`default`).
    pub name: String,
}

impl WorkspaceCreated {
    /// The stored event type.
    pub const TYPE: &'static str = "WorkspaceCreated";
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Read profiles and other projections.
    Read,
    /// Read, follow and verify the event log.
    Audit,
    /// Everything, including configuration.
    Admin,
}

impl TokenScope {
    /// Whether a token with this scope may do what `needed` allows.
    pub fn allows(self, needed: TokenScope) -> bool {
        self == TokenScope::Admin || self == needed
    }
}

/// An admin token was issued. Only its SHA-256 is stored; the token itself
/// is shown once to whoever issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenIssued {
    /// Names the token for revocation and audit, without revealing it.
    pub token_id: Uuid,
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    /// What the token may do.
    pub scopes: Vec<TokenScope>,
}

impl AdminTokenIssued {
    /// The stored event type.
    pub const TYPE: &'static str = "AdminTokenIssued";
}

/// An admin token was revoked; it authenticates nothing from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenRevoked {
    /// The token revoked.
    pub token_id: Uuid,
}

impl AdminTokenRevoked {
    /// The stored event type.
    pub const TYPE: &'static str = "AdminTokenRevoked";
}
