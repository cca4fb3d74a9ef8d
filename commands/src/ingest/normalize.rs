//! Normalization: the domain's canonical forms ([`onepd_domain::normalize`])
//! applied at the places a Segment message carries them.
//!
//! * Emails at `traits.email`, `context.traits.email`, `properties.email`.
//! * Phones (to E.164, read in the workspace's default region) at
//!   `traits.phone`, `context.traits.phone`, `properties.phone`.
//! * Countries (to ISO 3166-1 alpha-2) at `traits.address.country`,
//!   `traits.country`, `context.location.country`.
//! * Names (NFC, trimmed) at `traits.name`, `traits.firstName`,
//!   `traits.lastName` and the same under `context.traits`.
//! * Reserved traits sent in snake_case (`first_name`, `last_name`,
//!   `created_at`) are renamed to camelCase, unless the camelCase key is
//!   present too.
//!
//! **Invariants:** whenever a stored value differs from what arrived, the
//! value as it arrived is kept in `originals` under its dotted path as sent
//! (`traits.first_name`). A value that cannot be normalized is left as sent
//! and recorded as a violation (rule `email`, `phone` or `country`); it never
//! rejects the message.

use onepd_domain::events::message::Violation;
use onepd_domain::normalize::{nfc, normalize_country, normalize_email, normalize_phone};
use serde_json::{Map, Value};

use super::shape::describe;

/// The objects holding a person's traits.
const TRAIT_OBJECTS: [&[&str]; 2] = [&["traits"], &["context", "traits"]];

/// Where human names are, composed and trimmed.
const NAME_PATHS: [&[&str]; 6] = [
    &["traits", "name"],
    &["traits", "firstName"],
    &["traits", "lastName"],
    &["context", "traits", "name"],
    &["context", "traits", "firstName"],
    &["context", "traits", "lastName"],
];

/// Reserved traits clients send in snake_case, with their Segment names.
const RENAMED_TRAITS: [(&str, &str); 3] =
    [("first_name", "firstName"), ("last_name", "lastName"), ("created_at", "createdAt")];

/// Normalizes `message` in place; see the module doc for what and where.
pub fn apply(
    message: &mut Map<String, Value>,
    default_region: Option<&str>,
    originals: &mut Map<String, Value>,
    violations: &mut Vec<Violation>,
) {
    let mut renamed: Vec<String> = Vec::new();
    for parent in TRAIT_OBJECTS {
        if let Some(Value::Object(traits)) = get_mut(message, parent) {
            for (snake, camel) in RENAMED_TRAITS {
                if traits.contains_key(camel) {
                    continue;
                }
                if let Some(value) = traits.remove(snake) {
                    let prefix = parent.join(".");
                    originals.insert(format!("{prefix}.{snake}"), value.clone());
                    renamed.push(format!("{prefix}.{camel}"));
                    traits.insert(camel.to_owned(), value);
                }
            }
        }
    }

    let mut each = |path: &[&str], rule: &'static str, normalize: &dyn Fn(&str) -> Result<String, String>| {
        let Some(value) = get_mut(message, path) else {
            return;
        };
        let result = match &*value {
            Value::Null => return,
            // Ok(None): already normalized.
            Value::String(text) => normalize(text).map(|normalized| (normalized != *text).then_some(normalized)),
            // A phone sent as a number is still a phone number.
            Value::Number(number) if rule == "phone" => normalize(&number.to_string()).map(Some),
            other => {
                if rule != "name" {
                    let expected = match rule {
                        "email" => "an email address",
                        "phone" => "a phone number",
                        _ => "a country code or name",
                    };
                    let dotted = path.join(".");
                    let message = format!("{dotted}: expected {expected}, found {}", describe(other));
                    violations.push(Violation::new(dotted, rule, message));
                }
                return;
            }
        };
        let dotted = path.join(".");
        match result {
            Ok(None) => {}
            Ok(Some(normalized)) => {
                let original = std::mem::replace(value, Value::String(normalized));
                if !renamed.contains(&dotted) {
                    originals.insert(dotted, original);
                }
            }
            Err(error) => {
                let message = format!("{dotted}: {error}");
                violations.push(Violation::new(dotted, rule, message));
            }
        }
    };

    let email = |text: &str| normalize_email(text);
    let phone = |text: &str| normalize_phone(text, default_region);
    let name = |text: &str| Ok(nfc(text));
    for path in [&["traits", "email"][..], &["context", "traits", "email"], &["properties", "email"]] {
        each(path, "email", &email);
    }
    for path in [&["traits", "phone"][..], &["context", "traits", "phone"], &["properties", "phone"]] {
        each(path, "phone", &phone);
    }
    for path in [&["traits", "address", "country"][..], &["traits", "country"], &["context", "location", "country"]] {
        each(path, "country", &normalize_country);
    }
    for path in NAME_PATHS {
        each(path, "name", &name);
    }
}

/// The value at `path` under `message`, if every step is an object holding
/// the next key.
fn get_mut<'a>(message: &'a mut Map<String, Value>, path: &[&str]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let mut object = message;
    for key in parents {
        object = object.get_mut(*key)?.as_object_mut()?;
    }
    object.get_mut(*last)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn normalize(message: Value, region: Option<&str>) -> (Value, Map<String, Value>, Vec<Violation>) {
        let mut message = message.as_object().cloned().unwrap();
        let (mut originals, mut violations) = (Map::new(), Vec::new());
        apply(&mut message, region, &mut originals, &mut violations);
        (Value::Object(message), originals, violations)
    }

    #[test]
    fn an_email_is_normalized_and_its_original_kept() {
        let (message, originals, violations) =
            normalize(json!({"traits": {"email": " Ann@Example.COM "}, "properties": {"email": "b@c.de"}}), None);
        assert_eq!(message["traits"]["email"], "ann@example.com");
        assert_eq!(message["properties"]["email"], "b@c.de");
        assert_eq!(Value::Object(originals), json!({"traits.email": " Ann@Example.COM "}));
        assert!(violations.is_empty());
    }

    #[test]
    fn a_phone_becomes_e164_in_the_workspace_region() {
        let (message, originals, _) =
            normalize(json!({"context": {"traits": {"phone": "(415) 555-2671"}}}), Some("US"));
        assert_eq!(message["context"]["traits"]["phone"], "+14155552671");
        assert_eq!(originals["context.traits.phone"], "(415) 555-2671");
    }

    #[test]
    fn a_value_that_cannot_be_normalized_is_kept_and_reported() {
        let (message, originals, violations) =
            normalize(json!({"traits": {"email": "not-an-email", "phone": true}}), Some("US"));
        assert_eq!(message["traits"]["email"], "not-an-email");
        assert!(originals.is_empty());
        assert_eq!(
            violations,
            vec![
                Violation::new(
                    "traits.email",
                    "email",
                    r#"traits.email: expected an email address, found "not-an-email""#
                ),
                Violation::new("traits.phone", "phone", "traits.phone: expected a phone number, found true"),
            ]
        );
    }

    #[test]
    fn countries_become_alpha2_codes() {
        let (message, originals, _) = normalize(
            json!({"traits": {"address": {"country": "Germany"}, "country": "fr"}, "context": {"location": {"country": "USA"}}}),
            None,
        );
        assert_eq!(message["traits"]["address"]["country"], "DE");
        assert_eq!(message["traits"]["country"], "FR");
        assert_eq!(message["context"]["location"]["country"], "US");
        assert_eq!(originals.len(), 3);
    }

    #[test]
    fn snake_case_reserved_traits_are_renamed_and_their_originals_kept() {
        let (message, originals, _) =
            normalize(json!({"traits": {"first_name": " Ann ", "last_name": "Lee", "created_at": "2020-01-01"}}), None);
        assert_eq!(message["traits"], json!({"firstName": "Ann", "lastName": "Lee", "createdAt": "2020-01-01"}));
        assert_eq!(
            Value::Object(originals),
            json!({"traits.first_name": " Ann ", "traits.last_name": "Lee", "traits.created_at": "2020-01-01"})
        );
    }

    #[test]
    fn a_snake_case_trait_stays_when_the_camel_case_one_is_present() {
        let (message, originals, _) =
            normalize(json!({"context": {"traits": {"first_name": "A", "firstName": "B"}}}), None);
        assert_eq!(message["context"]["traits"], json!({"first_name": "A", "firstName": "B"}));
        assert!(originals.is_empty());
    }

    #[test]
    fn names_are_composed_and_trimmed() {
        let (message, originals, _) = normalize(json!({"traits": {"name": " Zoe\u{301} "}}), None);
        assert_eq!(message["traits"]["name"], "Zo\u{e9}");
        assert_eq!(originals["traits.name"], " Zoe\u{301} ");
    }

    #[test]
    fn a_numeric_phone_is_read_as_text() {
        let (message, originals, _) = normalize(json!({"properties": {"phone": 4155552671u64}}), Some("US"));
        assert_eq!(message["properties"]["phone"], "+14155552671");
        assert_eq!(originals["properties.phone"], 4155552671u64);
    }
}
