//! Which admin tokens are valid, and for which workspace: a fold over
//! `AdminTokenIssued` and `AdminTokenRevoked`.

use std::collections::HashMap;

use onepd_domain::RecordedEvent;
use onepd_domain::WorkspaceId;
use onepd_domain::events::workspace::{AdminTokenIssued, AdminTokenRevoked, TokenScope};
use uuid::Uuid;

/// A valid token's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The workspace the token belongs to; it reads nothing else.
    pub workspace: WorkspaceId,
    /// The token's public name.
    pub token_id: Uuid,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
}

impl Grant {
    /// Whether the grant allows `needed`.
    pub fn allows(&self, needed: TokenScope) -> bool {
        self.scopes.iter().any(|scope| scope.allows(needed))
    }
}

/// Valid admin tokens by the SHA-256 of the token.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    by_hash: HashMap<String, Grant>,
    hash_by_id: HashMap<Uuid, String>,
}

impl crate::Fold for AdminTokens {
    const EVENT_TYPES: &'static [&'static str] = &[AdminTokenIssued::TYPE, AdminTokenRevoked::TYPE];

    fn apply(&mut self, event: &RecordedEvent) {
        let Some(data) = event.data.value() else { return };
        match event.event_type.as_str() {
            AdminTokenIssued::TYPE => {
                if let Ok(issued) = serde_json::from_value::<AdminTokenIssued>(data.clone()) {
                    self.hash_by_id.insert(issued.token_id, issued.token_sha256.clone());
                    self.by_hash.insert(
                        issued.token_sha256,
                        Grant { workspace: event.workspace_id, token_id: issued.token_id, scopes: issued.scopes },
                    );
                }
            }
            AdminTokenRevoked::TYPE => {
                // A workspace revokes only its own tokens.
                if let Ok(revoked) = serde_json::from_value::<AdminTokenRevoked>(data.clone())
                    && let Some(hash) = self.hash_by_id.get(&revoked.token_id).cloned()
                    && self.by_hash.get(&hash).is_some_and(|grant| grant.workspace == event.workspace_id)
                {
                    self.hash_by_id.remove(&revoked.token_id);
                    self.by_hash.remove(&hash);
                }
            }
            _ => {}
        }
    }
}

impl AdminTokens {
    /// The grant of the token whose SHA-256 is `token_sha256`, if valid.
    pub fn grant(&self, token_sha256: &str) -> Option<&Grant> {
        self.by_hash.get(token_sha256)
    }

    /// How many tokens are valid.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no token is valid.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fold;
    use onepd_domain::{EventId, Payload, Position, StreamId, Timestamp};
    use serde_json::json;

    fn recorded(event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(1),
            event_id: EventId(Uuid::now_v7()),
            workspace_id: WorkspaceId(Uuid::from_u128(9)),
            stream_id: StreamId::new("workspace-9").unwrap(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            data: Payload::Data(data),
            metadata: json!({}),
            sealed: false,
            recorded_at: Timestamp(0),
            hash: [0; 32],
        }
    }

    #[test]
    fn an_issued_token_grants_its_workspace_until_revoked() {
        let mut tokens = AdminTokens::default();
        let id = Uuid::from_u128(3);
        tokens.apply(&recorded(
            AdminTokenIssued::TYPE,
            json!({ "token_id": id, "token_sha256": "abc", "scopes": ["audit"] }),
        ));
        let grant = tokens.grant("abc").unwrap();
        assert_eq!(grant.workspace, WorkspaceId(Uuid::from_u128(9)));
        assert!(grant.allows(TokenScope::Audit));
        assert!(!grant.allows(TokenScope::Admin));
        tokens.apply(&recorded(AdminTokenRevoked::TYPE, json!({ "token_id": id })));
        assert!(tokens.grant("abc").is_none());
    }

    #[test]
    fn a_workspace_cannot_revoke_another_workspaces_token() {
        let mut tokens = AdminTokens::default();
        let id = Uuid::from_u128(3);
        tokens.apply(&recorded(
            AdminTokenIssued::TYPE,
            json!({ "token_id": id, "token_sha256": "abc", "scopes": ["audit"] }),
        ));
        let mut revoke = recorded(AdminTokenRevoked::TYPE, json!({ "token_id": id }));
        revoke.workspace_id = WorkspaceId(Uuid::from_u128(10));
        tokens.apply(&revoke);
        assert!(tokens.grant("abc").is_some());
    }

    #[test]
    fn an_admin_scope_allows_everything() {
        assert!(TokenScope::Admin.allows(TokenScope::Audit));
        assert!(!TokenScope::Read.allows(TokenScope::Audit));
    }
}
