//! Erasure: a person asked to be forgotten. The log is never rewritten;
//! instead the keys that seal the person's payloads are destroyed
//! (crypto-shredding), their identifiers go on the workspace's suppression
//! list, and the projections are rebuilt without them.
//!
//! Both events live in the workspace's stream (`workspace-<id>`) and hold no
//! personal data: profiles by id, identifiers only as keyed hashes that
//! cannot be reversed without the master key.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::identity::{Identifier, IdentifierKind, ProfileId};

/// Erasure was asked for. From this event on, messages about any of the
/// `suppressed` identifiers are rejected (without their payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectErasureRequested {
    /// The request, as the caller is told it (`regulateId` over HTTP).
    pub request_id: Uuid,
    /// How the person was named: `email`, `user_id`, `anonymous_id`,
    /// `phone` or `profile` (the kinds only, never the values).
    pub lookups: Vec<String>,
    /// The profiles found, as they were before erasure.
    pub profiles: Vec<ProfileId>,
    /// Every identifier of those profiles (and the ones given), as
    /// suppression hashes (hex).
    pub suppressed: Vec<String>,
    /// Where the request came from: `cli`, `grpc` or `http`.
    pub requested_via: String,
}

impl SubjectErasureRequested {
    /// The stored event type.
    pub const TYPE: &'static str = "SubjectErasureRequested";
}

/// The person's subject keys were destroyed: every payload sealed with
/// them is unreadable from now on. Projections that meet this event rebuild,
/// so nothing derived from those payloads survives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectErased {
    /// The request this completes.
    pub request_id: Uuid,
    /// The profiles erased.
    pub profiles: Vec<ProfileId>,
    /// How many subjects were named (every identifier value of the person).
    pub subjects: u32,
    /// How many of them had a key that was destroyed.
    pub keys_shredded: u32,
}

impl SubjectErased {
    /// The stored event type.
    pub const TYPE: &'static str = "SubjectErased";
}

/// The text whose keyed hash goes on the suppression list for `identifier`.
pub fn suppression_subject(identifier: &Identifier) -> String {
    format!("suppressed:{}:{}", identifier.kind.name(), identifier.value)
}

/// The identifiers a message names directly, as stored (normalized):
/// `userId`, `anonymousId`, an alias's `previousId`, and the email and phone
/// in `traits` or `context.traits`. Ingest checks these against the
/// suppression list.
pub fn message_identifiers(message: &Value) -> Vec<Identifier> {
    let mut found = Vec::new();
    let mut push = |kind: IdentifierKind, value: Option<&Value>| {
        if let Some(value) = value.and_then(Value::as_str).map(str::trim).filter(|value| !value.is_empty()) {
            let identifier = Identifier::new(kind, value);
            if !found.contains(&identifier) {
                found.push(identifier);
            }
        }
    };
    push(IdentifierKind::UserId, message.get("userId"));
    push(IdentifierKind::AnonymousId, message.get("anonymousId"));
    push(IdentifierKind::AnonymousId, message.get("previousId"));
    for traits in ["/traits", "/context/traits"] {
        push(IdentifierKind::Email, message.pointer(&format!("{traits}/email")));
        push(IdentifierKind::Phone, message.pointer(&format!("{traits}/phone")));
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_names_its_ids_and_the_email_and_phone_of_its_traits() {
        let message = json!({
            "userId": "u1", "anonymousId": "a1", "previousId": "a0",
            "traits": {"email": "ann@example.com"},
            "context": {"traits": {"email": "ann@example.com", "phone": "+14155550100"}},
        });
        let names: Vec<String> =
            message_identifiers(&message).iter().map(|id| format!("{}:{}", id.kind.name(), id.value)).collect();
        assert_eq!(
            names,
            ["user_id:u1", "anonymous_id:a1", "anonymous_id:a0", "email:ann@example.com", "phone:+14155550100"]
        );
        assert!(message_identifiers(&json!({"userId": " ", "event": "x"})).is_empty());
    }

    #[test]
    fn the_suppression_subject_names_the_kind_so_equal_values_of_two_kinds_differ() {
        let a = suppression_subject(&Identifier::new(IdentifierKind::UserId, "42"));
        let b = suppression_subject(&Identifier::new(IdentifierKind::AnonymousId, "42"));
        assert_ne!(a, b);
    }
}
