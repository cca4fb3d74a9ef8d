//! Shape checks: is this a Segment-spec message of a known type, with the
//! fields its type needs, each of the right JSON type?
//!
//! Liberal in what is accepted, strict in what is stored. Ids (`userId`,
//! `anonymousId`, `messageId`, `groupId`, `previousId`) may arrive as strings
//! or numbers and are stored as trimmed strings; `null` and empty or
//! whitespace-only strings count as missing.
//!
//! Two passes, so a rejection can keep the message exactly as it arrived:
//! [`check`] reads the message and collects *every* violation (it does not
//! stop at the first); [`store`] runs only on a message that passed and turns
//! it into the stored shape: known fields only, ids as strings, `null`s
//! removed, a `messageId` generated when missing.
//!
//! **Invariant:** `writeKey` (a secret) is never stored; the caller removes it
//! before either pass, and [`store`] drops it again defensively.

use onepd_domain::events::message::Violation;
use onepd_domain::limits;
use serde_json::{Map, Value};

/// The message types onepd accepts, as sent in `type`.
pub const TYPES: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// The top-level fields kept in a stored message; others are dropped and
/// their names listed in `enrichment.droppedFields`.
pub const STORED_FIELDS: [&str; 18] = [
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "integrations",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "channel",
    "version",
];

/// The fields holding ids: strings or numbers, stored as strings.
const ID_FIELDS: [&str; 5] = ["userId", "anonymousId", "messageId", "groupId", "previousId"];

/// The fields that must be JSON objects when present.
const OBJECT_FIELDS: [&str; 4] = ["properties", "traits", "context", "integrations"];

/// Fields that must be strings when present (whatever the type).
const TEXT_FIELDS: [&str; 4] = ["event", "name", "category", "channel"];

/// The secret a client may send inside the message; never stored.
pub const WRITE_KEY: &str = "writeKey";

/// A message type onepd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// An action the user performed (`event` names it).
    Track,
    /// Who the user is (`traits`).
    Identify,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// The user belongs to a group (`groupId`).
    Group,
    /// Two user ids are the same person (`previousId` → `userId`).
    Alias,
}

impl MessageType {
    /// Reads a `type` value (exact, lowercase).
    pub fn parse(text: &str) -> Option<MessageType> {
        Some(match text {
            "track" => MessageType::Track,
            "identify" => MessageType::Identify,
            "page" => MessageType::Page,
            "screen" => MessageType::Screen,
            "group" => MessageType::Group,
            "alias" => MessageType::Alias,
            _ => return None,
        })
    }

    /// The name sent in `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Identify => "identify",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }
}

/// A message that passed [`check`], in its stored shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    /// The stored message: known fields only, ids as strings, no `null`s.
    pub message: Map<String, Value>,
    /// Its type.
    pub message_type: MessageType,
    /// Its `messageId`, as sent or generated.
    pub message_id: String,
    /// Unknown top-level fields that were dropped, sorted.
    pub dropped: Vec<String>,
}

/// Collects every shape violation of `message`: an unknown or missing
/// `type`, missing required fields, ids that are neither strings nor
/// numbers, and object fields that are not objects.
pub fn check(message: &Map<String, Value>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let message_type = match message.get("type") {
        Some(Value::String(text)) => match MessageType::parse(text) {
            Some(message_type) => Some(message_type),
            None => {
                violations.push(Violation::new(
                    "type",
                    "type",
                    format!("type: expected one of {}, found {}", TYPES.join(", "), describe(&message["type"])),
                ));
                None
            }
        },
        None | Some(Value::Null) => {
            violations.push(Violation::new(
                "type",
                "required",
                format!("type: expected one of {}, found nothing", TYPES.join(", ")),
            ));
            None
        }
        Some(other) => {
            violations.push(Violation::new(
                "type",
                "type",
                format!("type: expected one of {}, found {}", TYPES.join(", "), describe(other)),
            ));
            None
        }
    };

    for field in ID_FIELDS {
        match message.get(field) {
            None | Some(Value::Null) => {}
            Some(value @ (Value::String(_) | Value::Number(_))) => {
                if let Some(problem) = id_problem(value) {
                    violations.push(Violation::new(field, "id", format!("{field}: {problem}")));
                }
            }
            Some(value) => violations.push(Violation::new(
                field,
                "type",
                format!("{field}: expected a string or number, found {}", describe(value)),
            )),
        }
    }
    for (path, value) in identifier_values(message) {
        if let Some(problem) = id_problem(value) {
            violations.push(Violation::new(&path, "id", format!("{path}: {problem}")));
        }
    }
    // Readers decode what is stored within a fixed depth: nothing deeper is
    // admitted (onepd_domain::limits).
    for (field, value) in message {
        if limits::nesting(value) > limits::MAX_FIELD_NESTING {
            violations.push(Violation::new(
                field,
                "nesting",
                format!("{field}: nesting deeper than {} levels", limits::MAX_FIELD_NESTING),
            ));
        }
    }
    if let Some(properties) = message.get("properties").and_then(Value::as_object) {
        for name in limits::AMOUNT_PROPERTIES {
            if let Some(Value::Number(number)) = properties.get(name)
                && number.as_f64().is_some_and(|amount| amount.abs() > limits::MAX_AMOUNT)
            {
                let field = format!("properties.{name}");
                violations.push(Violation::new(
                    &field,
                    "amount",
                    format!("{field}: expected an amount of at most 1e15 in magnitude, found {number}"),
                ));
            }
        }
    }
    for field in OBJECT_FIELDS {
        if let Some(value) = message.get(field)
            && !matches!(value, Value::Null | Value::Object(_))
        {
            violations.push(Violation::new(
                field,
                "type",
                format!("{field}: expected an object, found {}", describe(value)),
            ));
        }
    }
    for field in TEXT_FIELDS {
        if let Some(value) = message.get(field)
            && !matches!(value, Value::Null | Value::String(_))
            && !(field == "event" && message_type == Some(MessageType::Track))
        {
            violations.push(Violation::new(
                field,
                "type",
                format!("{field}: expected a string, found {}", describe(value)),
            ));
        }
    }

    let has = |field: &str| id(message.get(field)).is_some();
    match message_type {
        Some(MessageType::Alias) => {
            for field in ["previousId", "userId"] {
                if !has(field) && is_absent_or_text(message.get(field)) {
                    violations.push(required(field, "an id"));
                }
            }
        }
        Some(message_type) => {
            if !has("userId")
                && !has("anonymousId")
                && ["userId", "anonymousId"].iter().all(|f| is_absent_or_text(message.get(*f)))
            {
                violations.push(Violation::new(
                    "userId",
                    "required",
                    "userId: expected userId or anonymousId, found neither",
                ));
            }
            match message_type {
                MessageType::Track => match message.get("event") {
                    Some(Value::String(event)) if !event.trim().is_empty() => {}
                    None | Some(Value::Null) => violations.push(required("event", "a non-empty string")),
                    Some(Value::String(event)) => violations.push(Violation::new(
                        "event",
                        "required",
                        format!("event: expected a non-empty string, found {}", describe(&Value::from(event.as_str()))),
                    )),
                    Some(other) => violations.push(Violation::new(
                        "event",
                        "type",
                        format!("event: expected a non-empty string, found {}", describe(other)),
                    )),
                },
                MessageType::Group if !has("groupId") && is_absent_or_text(message.get("groupId")) => {
                    violations.push(required("groupId", "an id"));
                }
                _ => {}
            }
        }
        None => {}
    }
    violations
}

/// Why an id value cannot identify anyone, if it cannot: a number that
/// cannot be kept exactly, or text a read store cannot key (trimmed first,
/// as ids are stored).
fn id_problem(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) if !limits::is_exact_id_number(number) => Some(
            "expected a whole number of at most 64 bits or a string, found a number that cannot be kept exactly \
             (send large ids as strings)"
                .to_owned(),
        ),
        Value::String(text) => limits::identifier_problem(text.trim()),
        _ => None,
    }
}

/// Identifier values inside a message's objects, by dotted path: the email
/// and phone of `traits` and `context.traits`, and `context.externalIds[n].id`.
fn identifier_values(message: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    let context_traits = message.get("context").and_then(|context| context.get("traits"));
    for (root, prefix) in [(message.get("traits"), "traits"), (context_traits, "context.traits")] {
        for name in ["email", "phone"] {
            if let Some(value) = root.and_then(|traits| traits.get(name)) {
                found.push((format!("{prefix}.{name}"), value));
            }
        }
    }
    let external = message.get("context").and_then(|context| context.get("externalIds")).and_then(Value::as_array);
    for (index, entry) in external.into_iter().flatten().enumerate() {
        if let Some(value) = entry.get("id") {
            found.push((format!("context.externalIds[{index}].id"), value));
        }
    }
    found
}

/// Turns a message that passed [`check`] into its stored shape, calling
/// `new_message_id` when it has no `messageId`. Returns `None` when the
/// message did not pass (it has no known `type`).
pub fn store(message: Map<String, Value>, new_message_id: impl FnOnce() -> String) -> Option<Shaped> {
    let message_type = MessageType::parse(message.get("type")?.as_str()?)?;
    let mut stored = Map::new();
    let mut dropped = Vec::new();
    for (field, value) in message {
        if field == WRITE_KEY {
            continue;
        }
        if !STORED_FIELDS.contains(&field.as_str()) {
            dropped.push(field);
            continue;
        }
        let value = match value {
            Value::Null => continue,
            value if ID_FIELDS.contains(&field.as_str()) => match id(Some(&value)) {
                Some(id) => Value::String(id),
                None => continue,
            },
            Value::String(text) if field == "event" => Value::String(text.trim().to_owned()),
            value => value,
        };
        stored.insert(field, value);
    }
    dropped.sort();
    let message_id = match stored.get("messageId").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            let id = new_message_id();
            stored.insert("messageId".to_owned(), Value::String(id.clone()));
            id
        }
    };
    Some(Shaped { message: stored, message_type, message_id, dropped })
}

/// Reads an id: a string (trimmed, non-empty) or a number (as text).
pub fn id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => {
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_owned())
        }
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// What kind of JSON value `value` is, as named after "found" in an error
/// (`a number`, `an array`, `null`).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as shown after "found" in a violation: strings quoted,
/// objects and arrays named rather than printed, long text cut.
pub fn describe(value: &Value) -> String {
    const LIMIT: usize = 64;
    match value {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::String(text) if text.len() > LIMIT => {
            let mut end = LIMIT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", Value::from(&text[..end]))
        }
        other => other.to_string(),
    }
}

/// The violation for a missing required field.
fn required(field: &str, expected: &str) -> Violation {
    Violation::new(field, "required", format!("{field}: expected {expected}, found nothing"))
}

/// Whether a value is missing or text (so an empty id is reported as
/// missing, and a wrongly typed one only as its type violation).
fn is_absent_or_text(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null | Value::String(_)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    fn fields(violations: &[Violation]) -> Vec<(&str, &str)> {
        violations.iter().map(|v| (v.field.as_str(), v.rule.as_str())).collect()
    }

    #[test]
    fn a_track_with_an_event_and_a_user_passes() {
        assert_eq!(check(&object(json!({"type": "track", "event": "Signed Up", "userId": "u1"}))), vec![]);
    }

    #[test]
    fn a_track_without_an_event_names_the_event() {
        let violations = check(&object(json!({"type": "track", "userId": "u1"})));
        assert_eq!(
            violations,
            vec![Violation::new("event", "required", "event: expected a non-empty string, found nothing")]
        );
    }

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn fields_nested_deeper_than_readers_read_are_refused_naming_the_field() {
        let limit = onepd_domain::limits::MAX_FIELD_NESTING;
        for field in ["properties", "context", "traits", "integrations"] {
            let mut message = object(json!({"type": "identify", "userId": "u1"}));
            message.insert(field.into(), nested(limit));
            assert_eq!(check(&message), vec![], "{field} at the limit");
            message.insert(field.into(), nested(limit + 1));
            assert_eq!(
                check(&message),
                vec![Violation::new(field, "nesting", format!("{field}: nesting deeper than {limit} levels"))]
            );
        }
        let arrays = (0..limit).fold(json!([]), |inner, _| json!([inner]));
        let violations = check(&object(json!({"type": "identify", "userId": "u1", "traits": {"a": arrays}})));
        assert_eq!(violations[0].field, "traits");
    }

    #[test]
    fn ids_with_control_characters_or_too_long_are_refused() {
        let violations = check(&object(json!({"type": "track", "event": "E", "userId": "a\u{0}b"})));
        assert_eq!(violations, vec![Violation::new("userId", "id", "userId: contains the control character U+0000")]);
        let long = "x".repeat(onepd_domain::limits::MAX_IDENTIFIER_BYTES + 1);
        let violations = check(&object(json!({"type": "track", "event": "E", "anonymousId": long})));
        assert_eq!(violations[0].field, "anonymousId");
        let violations = check(&object(json!({"type": "identify", "userId": "u1",
            "traits": {"email": "a\u{7}@b.c"}, "context": {"externalIds": [{"id": "x\ny", "type": "crm_id"}]}})));
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["traits.email", "context.externalIds[0].id"]);
    }

    #[test]
    fn numeric_ids_beyond_64_bits_are_refused_rather_than_rounded() {
        let message: Map<String, Value> =
            serde_json::from_str(r#"{"type": "track", "event": "E", "userId": 12345678901234567890123}"#).unwrap();
        let violations = check(&message);
        assert_eq!(violations.len(), 1);
        assert_eq!((violations[0].field.as_str(), violations[0].rule.as_str()), ("userId", "id"));
        assert!(violations[0].message.contains("send large ids as strings"), "{}", violations[0].message);
        assert_eq!(check(&object(json!({"type": "track", "event": "E", "userId": 18446744073709551615u64}))), vec![]);
        let message: Map<String, Value> = serde_json::from_str(
            r#"{"type": "identify", "userId": "u", "context": {"externalIds": [{"id": 123456789012345678901234, "type": "crm_id"}]}}"#,
        )
        .unwrap();
        assert_eq!(check(&message)[0].field, "context.externalIds[0].id");
    }

    #[test]
    fn a_numeric_event_is_a_type_violation() {
        let violations = check(&object(json!({"type": "track", "event": 42, "userId": "u1"})));
        assert_eq!(violations, vec![Violation::new("event", "type", "event: expected a non-empty string, found 42")]);
    }

    #[test]
    fn an_amount_beyond_a_quadrillion_is_refused_naming_the_field() {
        let message = json!({"type": "track", "userId": "u", "event": "Order Completed",
                             "properties": {"revenue": 1e308, "price": 12.5}});
        let violations = check(message.as_object().unwrap());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "properties.revenue");
        assert!(violations[0].message.contains("at most 1e15"), "{violations:?}");
    }

    #[test]
    fn a_message_without_any_user_id_names_both() {
        let violations = check(&object(json!({"type": "identify", "userId": "  ", "anonymousId": null})));
        assert_eq!(
            violations,
            vec![Violation::new("userId", "required", "userId: expected userId or anonymousId, found neither")]
        );
    }

    #[test]
    fn every_violation_is_collected() {
        let violations = check(&object(json!({
            "type": "group", "userId": true, "properties": [1], "context": "x",
        })));
        assert_eq!(
            fields(&violations),
            vec![("userId", "type"), ("properties", "type"), ("context", "type"), ("groupId", "required")]
        );
    }

    #[test]
    fn an_alias_needs_previous_id_and_user_id_but_not_anonymous_id() {
        assert_eq!(check(&object(json!({"type": "alias", "userId": 7, "previousId": "a"}))), vec![]);
        let violations = check(&object(json!({"type": "alias", "anonymousId": "a"})));
        assert_eq!(fields(&violations), vec![("previousId", "required"), ("userId", "required")]);
    }

    #[test]
    fn an_unknown_type_lists_the_known_ones() {
        let violations = check(&object(json!({"type": "trak", "userId": "u1"})));
        assert_eq!(
            violations[0].message,
            r#"type: expected one of track, identify, page, screen, group, alias, found "trak""#
        );
    }

    #[test]
    fn numeric_ids_are_stored_as_strings_and_nulls_are_dropped() {
        let shaped = store(
            object(json!({"type": "identify", "userId": 42, "anonymousId": " a1 ", "traits": null, "messageId": 1.5})),
            || unreachable!("the message has an id"),
        )
        .unwrap();
        assert_eq!(
            Value::Object(shaped.message),
            json!({"type": "identify", "userId": "42", "anonymousId": "a1", "messageId": "1.5"})
        );
        assert_eq!(shaped.message_id, "1.5");
    }

    #[test]
    fn a_missing_message_id_is_generated() {
        let shaped =
            store(object(json!({"type": "page", "userId": "u1", "messageId": ""})), || "gen-1".into()).unwrap();
        assert_eq!(shaped.message_id, "gen-1");
        assert_eq!(shaped.message["messageId"], "gen-1");
    }

    #[test]
    fn unknown_fields_are_dropped_and_listed_but_the_write_key_is_not() {
        let shaped =
            store(object(json!({"type": "page", "userId": "u1", "writeKey": "secret", "zeta": 1, "alpha": 2})), || {
                "m".into()
            })
            .unwrap();
        assert!(!shaped.message.contains_key("writeKey"));
        assert!(!shaped.message.contains_key("zeta"));
        assert_eq!(shaped.dropped, vec!["alpha", "zeta"]);
    }

    #[test]
    fn long_strings_are_cut_when_described() {
        let described = describe(&Value::from("x".repeat(500)));
        assert!(described.len() < 80 && described.ends_with('…'));
    }
}
