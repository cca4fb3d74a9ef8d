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
    /// The suppression hashes of the request (hex), again: projections
    /// rebuilt at this fact link none of these identifiers any more, even
    /// where another person's events name them. Empty in entries written
    /// before this field.
    #[serde(default)]
    pub suppressed: Vec<String>,
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

/// The subject a rejection naming a person is sealed under: its own, so
/// erasing it destroys no one else's key. `forget` finds it through the
/// keyed hashes of the identifiers in it, kept in its metadata
/// (`identifiers`).
pub fn rejection_subject(event_id: crate::EventId) -> String {
    format!("rejected:{}", event_id.0)
}

/// Object keys (compared without case, `_` and `-`) whose string values are
/// read as an identifier of that kind wherever they appear in a rejected
/// payload.
const IDENTIFIER_KEYS: [(&str, IdentifierKind); 15] = [
    ("userid", IdentifierKind::UserId),
    ("anonymousid", IdentifierKind::AnonymousId),
    ("previousid", IdentifierKind::AnonymousId),
    ("email", IdentifierKind::Email),
    ("emailaddress", IdentifierKind::Email),
    ("mail", IdentifierKind::Email),
    ("phone", IdentifierKind::Phone),
    ("phonenumber", IdentifierKind::Phone),
    ("mobile", IdentifierKind::Phone),
    ("mobilephone", IdentifierKind::Phone),
    ("mobilenumber", IdentifierKind::Phone),
    ("telephone", IdentifierKind::Phone),
    ("tel", IdentifierKind::Phone),
    ("cell", IdentifierKind::Phone),
    ("cellphone", IdentifierKind::Phone),
];

/// An object key as [`IDENTIFIER_KEYS`] compares it: lowercased, without
/// `_`, `-`, spaces or brackets (`user[email]` reads as `useremail`, so its
/// last part is tried too).
fn identifier_kind_of_key(key: &str) -> Option<IdentifierKind> {
    let last = key.rsplit(['[', '.']).next().unwrap_or(key);
    [key, last].iter().find_map(|key| {
        let folded: String =
            key.chars().filter(|c| !matches!(c, '_' | '-' | ' ' | '[' | ']')).flat_map(char::to_lowercase).collect();
        IDENTIFIER_KEYS.iter().find(|(name, _)| *name == folded).map(|(_, kind)| kind.clone())
    })
}

/// Every email address in free text.
fn emails_in(text: &str, mut push: impl FnMut(Identifier)) {
    let separators = |c: char| c.is_whitespace() || "\\\"',;:<>()[]{}=&?/|`".contains(c);
    for token in text.split(separators).filter(|token| token.contains('@')) {
        if let Ok(address) = crate::normalize::normalize_email(token.trim_matches('.')) {
            push(Identifier::new(IdentifierKind::Email, address));
        }
    }
}

/// Every identifier a payload that was *not* accepted may name, normalized
/// as ingest normalizes (emails lowercased, phones in E.164, read in
/// `default_region` when written without a country code): the values of
/// `userId`, `anonymousId`, `previousId`, `email`, `phone` (and their
/// common spellings) at any depth, and any string that reads as an email
/// address. Text that is not JSON (or was cut) is searched for email
/// addresses. Ingest seals a rejection naming any of them, and `forget`
/// finds it by them.
pub fn rejected_identifiers(raw: &str, default_region: Option<&str>) -> Vec<Identifier> {
    let mut found: Vec<Identifier> = Vec::new();
    let mut push = |identifier: Identifier| {
        if !found.contains(&identifier) {
            found.push(identifier);
        }
    };
    let email = |text: &str| crate::normalize::normalize_email(text).ok();
    let phone = |text: &str| {
        crate::normalize::normalize_phone(text, None)
            .or_else(|_| crate::normalize::normalize_phone(text, default_region))
            .ok()
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(value) => {
            let mut stack = vec![(None::<IdentifierKind>, &value)];
            while let Some((kind, value)) = stack.pop() {
                match value {
                    Value::Object(fields) => {
                        for (key, value) in fields {
                            // `context.externalIds`: `{id, type}` pairs name
                            // identifiers of a kind a workspace may declare.
                            if key.eq_ignore_ascii_case("externalIds")
                                && let Value::Array(entries) = value
                            {
                                for entry in entries {
                                    let kind = entry.get("type").and_then(Value::as_str).map(str::trim);
                                    let id = match entry.get("id") {
                                        Some(Value::String(id)) => Some(id.trim().to_owned()),
                                        Some(Value::Number(id)) => Some(id.to_string()),
                                        _ => None,
                                    };
                                    if let (Some(kind), Some(id)) = (kind, id)
                                        && !kind.is_empty()
                                        && !id.is_empty()
                                    {
                                        push(Identifier::new(IdentifierKind::from_name(kind), id));
                                    }
                                }
                            }
                            stack.push((identifier_kind_of_key(key), value));
                        }
                    }
                    Value::Array(items) => stack.extend(items.iter().map(|item| (kind.clone(), item))),
                    Value::String(text) => {
                        let text = text.trim();
                        if text.is_empty() {
                            continue;
                        }
                        match &kind {
                            Some(IdentifierKind::Phone) => {
                                if let Some(phone) = phone(text) {
                                    push(Identifier::new(IdentifierKind::Phone, phone));
                                }
                            }
                            Some(IdentifierKind::Email) | None => {
                                if let Some(address) = email(text) {
                                    push(Identifier::new(IdentifierKind::Email, address));
                                } else if text.contains('@') {
                                    emails_in(text, &mut push);
                                }
                            }
                            Some(kind) => push(Identifier::new(kind.clone(), text)),
                        }
                    }
                    // Ingest takes numeric ids as their text.
                    Value::Number(number) => match &kind {
                        Some(kind @ (IdentifierKind::UserId | IdentifierKind::AnonymousId)) => {
                            push(Identifier::new(kind.clone(), number.to_string()));
                        }
                        Some(IdentifierKind::Phone) => {
                            if let Some(phone) = phone(&number.to_string()) {
                                push(Identifier::new(IdentifierKind::Phone, phone));
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Err(_) => {
            // A form body or query string: its `key=value` pairs, decoded,
            // read like object fields; then any email anywhere in the text.
            if raw.contains('=') {
                let mut decoded = String::new();
                for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
                    decoded.push_str(&value);
                    decoded.push(' ');
                    match identifier_kind_of_key(key.trim()) {
                        Some(IdentifierKind::Phone) => {
                            if let Some(phone) = phone(value.trim()) {
                                push(Identifier::new(IdentifierKind::Phone, phone));
                            }
                        }
                        Some(IdentifierKind::Email) | None => {}
                        Some(kind) if !value.trim().is_empty() => push(Identifier::new(kind, value.trim())),
                        Some(_) => {}
                    }
                }
                emails_in(&decoded, &mut push);
            }
            emails_in(raw, &mut push);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(identifiers: &[Identifier]) -> Vec<String> {
        let mut names: Vec<String> = identifiers.iter().map(|id| format!("{}:{}", id.kind.name(), id.value)).collect();
        names.sort();
        names
    }

    #[test]
    fn a_rejected_payload_names_every_identifier_in_it_normalized() {
        let raw = json!({
            "type": "identify",
            "traits": {"Email": " Ann@Example.COM ", "firstName": "Ann", "phone_number": "0044 20 7946 0958"},
            "properties": {"contact": {"emails": ["bob@example.org"]}, "note": "call ann"},
            "user_id": 42,
            "context": {"traits": {"mobile": "(415) 555-2671"}},
        })
        .to_string();
        assert_eq!(
            names(&rejected_identifiers(&raw, Some("US"))),
            [
                "email:ann@example.com",
                "email:bob@example.org",
                "phone:+14155552671",
                "phone:+442079460958",
                "user_id:42"
            ]
        );
        assert!(rejected_identifiers(&json!({"event": "x", "properties": {"a": 1}}).to_string(), None).is_empty());
    }

    #[test]
    fn numeric_ids_phones_under_other_names_and_emails_in_free_text_are_found() {
        let raw = json!({
            "anonymousId": 55443322,
            "context": {"externalIds": [{"id": "x-7", "type": "crm_id"}, {"id": 9, "type": "loyalty"}]},
            "traits": {"Phone Number": "+1 415 555 0166", "telephone": "+1 (415) 555-0177", "cell": "0044 20 7946 0958"},
            "properties": {"note": "contact Zoe.Free@Example.com today"},
        })
        .to_string();
        assert_eq!(
            names(&rejected_identifiers(&raw, None)),
            [
                "anonymous_id:55443322",
                "crm_id:x-7",
                "email:zoe.free@example.com",
                "loyalty:9",
                "phone:+14155550166",
                "phone:+14155550177",
                "phone:+442079460958"
            ]
        );
    }

    #[test]
    fn a_form_body_is_read_pair_by_pair_and_decoded() {
        let raw = "event=user.signed_up&user[id]=4444&user[email]=form%40example.com&user[phone]=%2B14155550166&userId=u%C3%A9";
        assert_eq!(
            names(&rejected_identifiers(raw, None)),
            ["email:form@example.com", "phone:+14155550166", "user_id:4444", "user_id:u\u{e9}"]
        );
        // A stray escape or multibyte text after `%` is kept, never a panic.
        assert!(rejected_identifiers("a=%zz&b=%\u{e9}\u{e9}&email=%", None).is_empty());
    }

    #[test]
    fn text_that_is_not_json_is_searched_for_email_addresses() {
        let raw = r#"{"traits": {"email": "Cut@Example.com", "name": "a very long value that was cut"#;
        assert_eq!(names(&rejected_identifiers(raw, None)), ["email:cut@example.com"]);
        assert_eq!(
            names(&rejected_identifiers("customer=<dee@example.net>; note: none@", None)),
            ["email:dee@example.net"]
        );
    }

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
