//! Creating a workspace and issuing its admin tokens.

use onepd_domain::events::workspace::{AdminTokenIssued, TokenScope, WorkspaceCreated, workspace_stream};
use onepd_domain::{AppendRequest, EventId, ExpectedVersion, NewEvent, WorkspaceId};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The prefix of every admin token, so a leaked one is recognizable in logs
/// and by secret scanners.
pub const ADMIN_TOKEN_PREFIX: &str = "onepd_admin_";

/// An admin token to hand to its owner once, and the event recording its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedToken {
    /// The token itself: shown once, never stored.
    pub token: String,
    /// The event to append.
    pub event: NewEvent,
}

/// The lowercase hex SHA-256 under which a token is stored and looked up.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Decides the events that create a workspace named `name` with one admin
/// token. `secret` is the token's randomness and `token_id` its public name;
/// both come from the caller so this stays a pure decision.
pub fn create_workspace(
    workspace: WorkspaceId,
    name: &str,
    token_id: Uuid,
    secret: [u8; 32],
    actor: &str,
) -> (AppendRequest, String) {
    let created = NewEvent {
        event_id: EventId(Uuid::new_v5(&workspace.0, b"WorkspaceCreated")),
        workspace_id: workspace,
        event_type: WorkspaceCreated::TYPE.into(),
        schema_version: 1,
        data: serde_json::to_value(WorkspaceCreated { name: name.into() }).expect("serializable"),
        metadata: json!({ "actor": actor }),
        subject: None,
    };
    let issued = issue_admin_token(workspace, token_id, secret, vec![TokenScope::Admin], actor);
    let request = AppendRequest {
        stream_id: workspace_stream(workspace),
        expected: ExpectedVersion::NoStream,
        events: vec![created, issued.event],
    };
    (request, issued.token)
}

/// Decides the event that issues an admin token with `scopes`.
pub fn issue_admin_token(
    workspace: WorkspaceId,
    token_id: Uuid,
    secret: [u8; 32],
    scopes: Vec<TokenScope>,
    actor: &str,
) -> IssuedToken {
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(secret));
    let event = NewEvent {
        event_id: EventId(Uuid::new_v5(&token_id, b"AdminTokenIssued")),
        workspace_id: workspace,
        event_type: AdminTokenIssued::TYPE.into(),
        schema_version: 1,
        data: serde_json::to_value(AdminTokenIssued { token_id, token_sha256: token_sha256(&token), scopes })
            .expect("serializable"),
        metadata: json!({ "actor": actor }),
        subject: None,
    };
    IssuedToken { token, event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_workspace_records_its_name_and_only_the_hash_of_its_token() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let (request, token) = create_workspace(workspace, "default", Uuid::from_u128(2), [7; 32], "onepd serve");
        assert!(token.starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(request.expected, ExpectedVersion::NoStream);
        assert_eq!(request.stream_id.as_str(), format!("workspace-{}", workspace.0));
        assert_eq!(request.events[0].data, json!({ "name": "default" }));
        let stored = serde_json::to_string(&request.events[1].data).unwrap();
        assert!(!stored.contains(&token), "the token itself is never stored");
        assert!(stored.contains(&token_sha256(&token)));
    }

    #[test]
    fn creating_the_same_workspace_twice_decides_the_same_event_ids() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let (a, _) = create_workspace(workspace, "default", Uuid::from_u128(2), [7; 32], "x");
        let (b, _) = create_workspace(workspace, "default", Uuid::from_u128(2), [9; 32], "x");
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
    }
}
