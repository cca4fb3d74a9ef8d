//! What would change if a workspace's graph were built under other rules:
//! the profiles that would merge and the ones that would split.

use std::collections::BTreeSet;

use onepd_domain::identity::{Identifier, ProfileId};
use serde::Serialize;

use super::WorkspaceIdentities;

/// One difference between two builds of a workspace's graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileChange {
    /// `merge`: profiles of today would become one; `split`: a profile of
    /// today would come apart (or lose identifiers).
    pub change: &'static str,
    /// The profiles of today involved.
    pub current: Vec<ProfileId>,
    /// The profiles they would become.
    pub proposed: Vec<ProfileId>,
    /// The identifiers involved, sorted.
    pub identifiers: Vec<Identifier>,
    /// Identifiers of today's profile that would be in no profile at all.
    pub dropped: Vec<Identifier>,
}

/// The merges and splits going from `current` to `proposed`, merges first,
/// each list ordered by its first profile.
pub fn compare(current: &WorkspaceIdentities, proposed: &WorkspaceIdentities) -> Vec<ProfileChange> {
    let mut changes = Vec::new();
    for profile in proposed.profiles() {
        let identifiers = proposed.identifiers(profile);
        let before: BTreeSet<ProfileId> =
            identifiers.iter().filter_map(|identifier| current.profile_of(identifier)).collect();
        if before.len() > 1 {
            changes.push(ProfileChange {
                change: "merge",
                current: before.into_iter().collect(),
                proposed: vec![profile],
                identifiers,
                dropped: Vec::new(),
            });
        }
    }
    for profile in current.profiles() {
        let identifiers = current.identifiers(profile);
        let after: BTreeSet<ProfileId> =
            identifiers.iter().filter_map(|identifier| proposed.profile_of(identifier)).collect();
        let dropped: Vec<Identifier> =
            identifiers.iter().filter(|identifier| proposed.profile_of(identifier).is_none()).cloned().collect();
        if after.len() > 1 || !dropped.is_empty() {
            changes.push(ProfileChange {
                change: "split",
                current: vec![profile],
                proposed: after.into_iter().collect(),
                identifiers,
                dropped,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use onepd_domain::identity::{IdentifierKind, IdentityRules};
    use onepd_domain::{EventId, Payload, Position, RecordedEvent, StreamId, Timestamp, WorkspaceId};
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::*;
    use crate::identity::IdentityGraph;

    const WORKSPACE: WorkspaceId = WorkspaceId(Uuid::from_u128(3));

    fn build(rules: IdentityRules, messages: &[Value]) -> IdentityGraph {
        let mut graph = IdentityGraph::new(rules);
        for (index, message) in messages.iter().enumerate() {
            graph.resolve_event(&RecordedEvent {
                position: Position(index as u64 + 1),
                event_id: EventId(Uuid::from_u128(index as u128 + 1)),
                workspace_id: WORKSPACE,
                stream_id: StreamId::new("source-s").unwrap(),
                stream_version: index as u64 + 1,
                event_type: "MessageAccepted".into(),
                schema_version: 1,
                data: Payload::Data(json!({"message": message, "violations": []})),
                metadata: json!({}),
                sealed: false,
                recorded_at: Timestamp(0),
                hash: [0; 32],
            });
        }
        graph
    }

    #[test]
    fn raising_a_limit_shows_the_profiles_that_would_merge_and_blocking_shows_the_split() {
        let messages = [
            json!({"type": "identify", "userId": "u1", "traits": {"email": "family@example.com"}}),
            json!({"type": "identify", "userId": "u2", "traits": {"email": "family@example.com"}}),
        ];
        let today = build(IdentityRules::default(), &messages);
        let looser = build(IdentityRules::default().with_limit(IdentifierKind::UserId, 2), &messages);
        let changes = compare(today.workspace(WORKSPACE).unwrap(), looser.workspace(WORKSPACE).unwrap());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].change, "merge");
        assert_eq!(changes[0].current.len(), 2);

        let mut blocking = IdentityRules::default().with_limit(IdentifierKind::UserId, 2);
        blocking.blocked_values.push("family@example.com".into());
        let blocked = build(blocking, &messages);
        let changes = compare(looser.workspace(WORKSPACE).unwrap(), blocked.workspace(WORKSPACE).unwrap());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].change, "split");
        assert_eq!(changes[0].proposed.len(), 2);
        assert_eq!(changes[0].dropped, [Identifier::new(IdentifierKind::Email, "family@example.com")]);
    }

    #[test]
    fn the_same_rules_change_nothing() {
        let messages = [json!({"type": "identify", "userId": "u1", "anonymousId": "a1"})];
        let a = build(IdentityRules::default(), &messages);
        let b = build(IdentityRules::default(), &messages);
        assert!(compare(a.workspace(WORKSPACE).unwrap(), b.workspace(WORKSPACE).unwrap()).is_empty());
    }
}
