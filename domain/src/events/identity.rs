//! Operator facts about identity resolution, kept in the workspace's stream
//! (`workspace-<id>`). They apply to the whole history: the identity and
//! profile projections rebuild under them, so a block or a rule change
//! re-derives old merges too. The log itself never changes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::envelope::{EventId, RecordedEvent};
use crate::identity::{Identifier, IdentityRules, ProfileId};

/// A workspace's identity rules were replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRulesChanged {
    /// The rules from now on, applied to all history on rebuild.
    pub rules: IdentityRules,
}

impl IdentityRulesChanged {
    /// The stored event type.
    pub const TYPE: &'static str = "IdentityRulesChanged";
}

/// An identifier may no longer link anything: it is treated as a blocked
/// value in every event, past and future.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierBlocked {
    /// The identifier (kind and normalized value).
    pub identifier: Identifier,
    /// Why, as the operator wrote it.
    #[serde(default)]
    pub reason: Option<String>,
}

impl IdentifierBlocked {
    /// The stored event type.
    pub const TYPE: &'static str = "IdentifierBlocked";
}

/// A block was lifted; the identifier links again, past events included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierUnblocked {
    /// The identifier.
    pub identifier: Identifier,
}

impl IdentifierUnblocked {
    /// The stored event type.
    pub const TYPE: &'static str = "IdentifierUnblocked";
}

/// A profile was split: the events that merged it no longer link on
/// replay. Each such event then contributes only its highest-priority
/// identifier, so the profiles it joined stay apart unless other events join
/// them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSplit {
    /// The profile as the operator saw it.
    pub profile_id: ProfileId,
    /// The events whose links are undone (the profile's merge events, or the
    /// ones the operator chose).
    pub unlinked_events: Vec<EventId>,
    /// Why, as the operator wrote it.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ProfileSplit {
    /// The stored event type.
    pub const TYPE: &'static str = "ProfileSplit";
}

/// The event types after which the profiles are derived again from the
/// whole log: the ones that change [`IdentityFacts`], and an erasure
/// (`SubjectErased`), after which a person's payloads can no longer be read.
pub const FACT_TYPES: [&str; 5] = [
    IdentityRulesChanged::TYPE,
    IdentifierBlocked::TYPE,
    IdentifierUnblocked::TYPE,
    ProfileSplit::TYPE,
    crate::events::erasure::SubjectErased::TYPE,
];

/// Everything the operators decided about one workspace's identity
/// resolution: its rules, blocked identifiers and unlinked events. A fold of
/// the events of [`FACT_TYPES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityFacts {
    /// The rules set by the last `IdentityRulesChanged`, if any.
    pub rules: Option<IdentityRules>,
    /// Identifiers blocked and not unblocked since.
    pub blocked: BTreeSet<Identifier>,
    /// Events whose links a `ProfileSplit` undid.
    pub unlinked: BTreeSet<EventId>,
    /// Suppression hashes (hex) of erased people's identifiers: the graph
    /// links none of them (checked through a keyed hasher the reader
    /// supplies, since the hashes need the master key).
    pub suppressed: BTreeSet<String>,
}

impl IdentityFacts {
    /// Folds one event in; events of other types, or whose payload does not
    /// decode, change nothing.
    pub fn apply(&mut self, event: &RecordedEvent) {
        if let Some(data) = event.data.value() {
            self.apply_data(&event.event_type, data);
        }
    }

    /// Folds one event given by its type and payload.
    pub fn apply_data(&mut self, event_type: &str, data: &serde_json::Value) {
        match event_type {
            IdentityRulesChanged::TYPE => {
                if let Ok(changed) = serde_json::from_value::<IdentityRulesChanged>(data.clone()) {
                    self.rules = Some(changed.rules);
                }
            }
            IdentifierBlocked::TYPE => {
                if let Ok(blocked) = serde_json::from_value::<IdentifierBlocked>(data.clone()) {
                    self.blocked.insert(blocked.identifier);
                }
            }
            IdentifierUnblocked::TYPE => {
                if let Ok(unblocked) = serde_json::from_value::<IdentifierUnblocked>(data.clone()) {
                    self.blocked.remove(&unblocked.identifier);
                }
            }
            ProfileSplit::TYPE => {
                if let Ok(split) = serde_json::from_value::<ProfileSplit>(data.clone()) {
                    self.unlinked.extend(split.unlinked_events);
                }
            }
            crate::events::erasure::SubjectErased::TYPE => {
                if let Ok(erased) = serde_json::from_value::<crate::events::erasure::SubjectErased>(data.clone()) {
                    self.suppressed.extend(erased.suppressed);
                }
            }
            _ => {}
        }
    }

    /// The rules the graph applies: the workspace's rules (or `defaults`)
    /// with the blocked identifiers added.
    pub fn effective_rules(&self, defaults: &IdentityRules) -> IdentityRules {
        let mut rules = self.rules.clone().unwrap_or_else(|| defaults.clone());
        rules.blocked_identifiers.extend(self.blocked.iter().cloned());
        rules
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::envelope::{Payload, Position, StreamId, Timestamp, WorkspaceId};
    use crate::identity::IdentifierKind;

    fn event(event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(1),
            event_id: EventId(Uuid::new_v4()),
            workspace_id: WorkspaceId(Uuid::from_u128(1)),
            stream_id: StreamId::new("workspace-1").unwrap(),
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
    fn a_block_then_an_unblock_leaves_the_identifier_usable() {
        let identifier = Identifier::new(IdentifierKind::Email, "shared@example.com");
        let mut facts = IdentityFacts::default();
        facts.apply(&event(IdentifierBlocked::TYPE, json!({"identifier": identifier})));
        assert!(facts.effective_rules(&IdentityRules::default()).is_blocked(&identifier));
        facts.apply(&event(IdentifierUnblocked::TYPE, json!({"identifier": identifier})));
        assert!(!facts.effective_rules(&IdentityRules::default()).is_blocked(&identifier));
    }

    #[test]
    fn blocks_outlive_a_rule_change_and_splits_accumulate() {
        let identifier = Identifier::new(IdentifierKind::UserId, "u1");
        let mut facts = IdentityFacts::default();
        facts.apply(&event(IdentifierBlocked::TYPE, json!({"identifier": identifier, "reason": "shared login"})));
        let rules = IdentityRules { default_limit: 2, ..IdentityRules::default() };
        facts.apply(&event(IdentityRulesChanged::TYPE, json!({ "rules": rules })));
        let (a, b) = (EventId(Uuid::from_u128(7)), EventId(Uuid::from_u128(8)));
        facts.apply(&event(ProfileSplit::TYPE, json!({"profile_id": Uuid::from_u128(9), "unlinked_events": [a]})));
        facts.apply(&event(ProfileSplit::TYPE, json!({"profile_id": Uuid::from_u128(9), "unlinked_events": [b]})));
        let effective = facts.effective_rules(&IdentityRules::default());
        assert_eq!(effective.default_limit, 2);
        assert!(effective.is_blocked(&identifier));
        assert_eq!(facts.unlinked, BTreeSet::from([a, b]));
    }
}
