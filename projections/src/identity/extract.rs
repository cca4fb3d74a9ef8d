//! The identifiers one accepted message carries, as the identity rules see
//! them: blocked values, kinds that may not link and values the ingest
//! pipeline flagged as invalid are already left out, and so are values no
//! read store can key (`onepd_domain::limits::identifier_problem`).

use onepd_domain::identity::{CustomSource, Identifier, IdentifierKind, IdentityRules};
use onepd_domain::limits;
use serde_json::Value;

/// What one message says about identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Its usable identifiers, deduplicated, highest priority first (ties by
    /// kind, then value).
    pub identifiers: Vec<Identifier>,
    /// Whether it is an `alias` call.
    pub alias: bool,
}

/// The identifiers `message` carries under `rules`, or `None` for messages
/// that do not link people (`group`). `violations` is the event's list of
/// `(field, rule)` pairs; a value flagged `email` or `phone` there is not an
/// identifier. `known_user_id` tells whether a value is already known as a
/// `user_id`, which decides the kind of an alias's `previousId`.
pub(crate) fn observed(
    message: &Value,
    violations: &[(&str, &str)],
    rules: &IdentityRules,
    known_user_id: impl Fn(&str) -> bool,
) -> Option<Observed> {
    let message_type = message.get("type").and_then(Value::as_str).unwrap_or_default();
    if message_type == "group" {
        return None;
    }
    let alias = message_type == "alias";
    let invalid =
        |path: &str| violations.iter().any(|&(field, rule)| field == path && matches!(rule, "email" | "phone"));
    // A previousId is an anonymous id unless that exact value already names
    // a user.
    let previous_id =
        |value: &str| vec![if known_user_id(value) { IdentifierKind::UserId } else { IdentifierKind::AnonymousId }];
    let mut found = named(message, rules, previous_id, invalid);
    found.retain(|identifier| rules.links(&identifier.kind) && !rules.is_blocked(identifier));
    by_priority(&mut found, rules);
    Some(Observed { identifiers: found, alias })
}

/// Every identifier `message` names, unfiltered: `userId`, `anonymousId`, an
/// alias's `previousId` (as each kind `previous_id` gives for its value),
/// emails and phones under `traits` and `context.traits` (but for paths
/// `invalid` names), and the rules' custom kinds.
pub(crate) fn named(
    message: &Value,
    rules: &IdentityRules,
    previous_id: impl Fn(&str) -> Vec<IdentifierKind>,
    invalid: impl Fn(&str) -> bool,
) -> Vec<Identifier> {
    let mut found = Vec::new();
    if let Some(value) = message.get("userId").and_then(scalar) {
        found.push(Identifier::new(IdentifierKind::UserId, value));
    }
    if let Some(value) = message.get("anonymousId").and_then(scalar) {
        found.push(Identifier::new(IdentifierKind::AnonymousId, value));
    }
    if message.get("type").and_then(Value::as_str) == Some("alias")
        && let Some(value) = message.get("previousId").and_then(scalar)
    {
        for kind in previous_id(&value) {
            found.push(Identifier::new(kind, value.clone()));
        }
    }
    for (kind, name) in [(IdentifierKind::Email, "email"), (IdentifierKind::Phone, "phone")] {
        for (root, prefix) in [(message.get("traits"), "traits"), (context_traits(message), "context.traits")] {
            let Some(value) = root.and_then(|traits| traits.get(name)).and_then(scalar) else { continue };
            if !invalid(&format!("{prefix}.{name}")) {
                found.push(Identifier::new(kind.clone(), value));
            }
        }
    }
    for custom in &rules.custom {
        let kind = IdentifierKind::from_name(&custom.name);
        match &custom.from {
            CustomSource::ExternalId => {
                let entries = message.pointer("/context/externalIds").and_then(Value::as_array);
                for entry in entries.into_iter().flatten() {
                    if entry.get("type").and_then(Value::as_str) == Some(custom.name.as_str())
                        && let Some(value) = entry.get("id").and_then(scalar)
                    {
                        found.push(Identifier::new(kind.clone(), value));
                    }
                }
            }
            CustomSource::Trait(name) => {
                for root in [message.get("traits"), context_traits(message)] {
                    if let Some(value) = root.and_then(|traits| traits.get(name)).and_then(scalar) {
                        found.push(Identifier::new(kind.clone(), value));
                    }
                }
            }
        }
    }
    // An identifier the read store cannot key (a control character, too
    // long) is no identifier: ingest refuses them, but older events may
    // hold them.
    found.retain(|identifier| limits::is_keyable(identifier.kind.name(), &identifier.value));
    found
}

/// Sorts `found` highest priority first (ties by kind, then value) and drops
/// repeats.
pub(crate) fn by_priority(found: &mut Vec<Identifier>, rules: &IdentityRules) {
    found.sort_by(|a, b| (rules.rank(&a.kind), &a.kind, &a.value).cmp(&(rules.rank(&b.kind), &b.kind, &b.value)));
    found.dedup();
}

fn context_traits(message: &Value) -> Option<&Value> {
    message.get("context").and_then(|context| context.get("traits"))
}

/// A string without surrounding whitespace (as ingest stores `userId`), a
/// number as written; anything else, or nothing left, is no identifier.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::identity::CustomKind;
    use serde_json::json;

    use super::*;

    fn names(message: Value, violations: &[(&str, &str)], rules: &IdentityRules) -> Vec<String> {
        let observed = observed(&message, violations, rules, |value| value == "known-user").unwrap();
        observed.identifiers.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_identify_yields_its_ids_email_and_phone_by_priority() {
        let message = json!({"type": "identify", "userId": "u1", "anonymousId": "a1",
            "traits": {"email": "ann@example.com"}, "context": {"traits": {"phone": "+14155552671", "email": "ann@example.com"}}});
        assert_eq!(
            names(message, &[], &IdentityRules::default()),
            ["user_id:u1", "email:ann@example.com", "phone:+14155552671", "anonymous_id:a1"]
        );
    }

    #[test]
    fn blocked_and_invalid_values_are_left_out() {
        let message = json!({"type": "track", "userId": "null", "anonymousId": "a1", "traits": {"email": "not-an-email"},
            "context": {"traits": {"phone": "12"}}});
        let violations = [("traits.email", "email"), ("context.traits.phone", "phone")];
        assert_eq!(names(message, &violations, &IdentityRules::default()), ["anonymous_id:a1"]);
    }

    #[test]
    fn values_no_read_store_can_key_are_no_identifiers() {
        let long = "x".repeat(onepd_domain::limits::MAX_STORED_IDENTIFIER_BYTES + 1);
        let message = json!({"type": "track", "userId": "a\u{0}b", "anonymousId": long,
            "context": {"traits": {"email": "ok@example.com"}}});
        assert_eq!(names(message, &[], &IdentityRules::default()), ["email:ok@example.com"]);
    }

    #[test]
    fn a_group_call_links_nobody() {
        let message = json!({"type": "group", "userId": "u1", "groupId": "g1"});
        assert_eq!(observed(&message, &[], &IdentityRules::default(), |_| false), None);
    }

    #[test]
    fn an_alias_previous_id_is_a_user_id_only_when_already_known_as_one() {
        let rules = IdentityRules::default();
        let unknown = json!({"type": "alias", "userId": "u2", "previousId": "p1"});
        assert_eq!(names(unknown, &[], &rules), ["user_id:u2", "anonymous_id:p1"]);
        let known = json!({"type": "alias", "userId": "u2", "previousId": "known-user"});
        assert_eq!(names(known, &[], &rules), ["user_id:known-user", "user_id:u2"]);
        let not_alias = json!({"type": "track", "userId": "u2", "previousId": "p1"});
        assert_eq!(names(not_alias, &[], &rules), ["user_id:u2"]);
    }

    #[test]
    fn declared_custom_kinds_come_from_external_ids_or_traits() {
        let rules = IdentityRules::default()
            .with_custom(CustomKind { name: "crm_id".into(), from: CustomSource::ExternalId })
            .with_custom(CustomKind { name: "shop_id".into(), from: CustomSource::Trait("shopId".into()) });
        let message = json!({"type": "identify", "traits": {"shopId": 77},
            "context": {"externalIds": [{"id": "c-1", "type": "crm_id"}, {"id": "x", "type": "other"}]}});
        assert_eq!(names(message, &[], &rules), ["crm_id:c-1", "shop_id:77"]);
    }

    #[test]
    fn custom_values_are_trimmed_and_kinds_no_store_can_key_are_left_out() {
        let bad_kind = "k\u{0}x".to_owned();
        let rules = IdentityRules::default()
            .with_custom(CustomKind { name: "crm_id".into(), from: CustomSource::ExternalId })
            .with_custom(CustomKind { name: bad_kind.clone(), from: CustomSource::ExternalId });
        let rules = IdentityRules {
            link_kinds: vec![IdentifierKind::from_name("crm_id"), IdentifierKind::from_name(&bad_kind)],
            ..rules
        };
        let message = json!({"type": "identify", "context": {"externalIds": [
            {"id": " c-2 ", "type": "crm_id"}, {"id": "v", "type": bad_kind}]}});
        assert_eq!(names(message, &[], &rules), ["crm_id:c-2"]);
    }

    #[test]
    fn kinds_that_may_not_link_are_left_out() {
        let rules = IdentityRules { link_kinds: vec![IdentifierKind::UserId], ..Default::default() };
        let message = json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "a@b.co"}});
        assert_eq!(names(message, &[], &rules), ["user_id:u1"]);
    }
}
