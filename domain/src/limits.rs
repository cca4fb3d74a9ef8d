//! What the log accepts is what every reader reads: the one set of limits
//! ingest enforces and readers rely on.
//!
//! Readers decode stored payloads with `serde_json`, whose parser refuses
//! JSON nested deeper than [`READ_NESTING`] levels. Ingest therefore refuses
//! any message field nested deeper than [`MAX_FIELD_NESTING`], which leaves
//! [`ENVELOPE_NESTING`] levels for what the log wraps around a message (the
//! event's `data`, the `message` object, the field itself) and a wide
//! margin besides. A unit test below proves the margin against the parser
//! itself, and the store's conformance suite appends and reads back the
//! deepest message ingest admits.
//!
//! Identifier values become keys of the read store (`identifier/user_id:…`),
//! which PostgreSQL keeps as `TEXT` in a b-tree: a NUL byte is refused by the
//! database and a key longer than about 2,700 bytes does not fit an index
//! entry. Ingest refuses such identifiers ([`identifier_problem`]) and
//! custom kind names ([`kind_problem`]); the identity projection leaves out
//! any identifier it cannot key ([`is_keyable`]) that events or rules
//! stored before these rules hold.

use serde_json::Value;

/// The deepest a message field (`properties`, `traits`, `context`, …) may
/// nest: `{}` or `[]` is one level, `{"a": {}}` two.
pub const MAX_FIELD_NESTING: usize = 64;

/// Levels a stored event adds above a message field: `data` → `message` →
/// the field (`MessageAccepted`), with room to spare for future envelopes.
pub const ENVELOPE_NESTING: usize = 8;

/// The deepest JSON a reader decodes: what `serde_json`'s recursion limit
/// (128) admits, which every reader's decode of a stored payload goes
/// through.
pub const READ_NESTING: usize = 127;

/// The longest identifier value, in bytes (`userId`, `anonymousId`,
/// `previousId`, `groupId`, `messageId`, emails, phones, custom ids).
pub const MAX_IDENTIFIER_BYTES: usize = 1_024;

/// The longest name of a custom identifier kind (`crm_id`), in bytes.
pub const MAX_KIND_BYTES: usize = 64;

/// The longest identifier value a reader keys, in bytes: twice what ingest
/// admits, since normalization (lower-casing an email) may lengthen a value.
pub const MAX_STORED_IDENTIFIER_BYTES: usize = 2 * MAX_IDENTIFIER_BYTES;

/// The longest read-store key of an identifier (`kind:value`) that fits a
/// PostgreSQL b-tree entry (2,704 bytes) with the rest of the key
/// (generation, workspace, collection) and room to spare.
pub const MAX_KEY_BYTES: usize = 2_400;

// Whatever ingest admits, wrapped in the log's envelope, must decode.
const _: () = assert!(MAX_FIELD_NESTING + ENVELOPE_NESTING <= READ_NESTING);
// Whatever identifier a reader keys fits the read store's index.
const _: () = assert!(MAX_KIND_BYTES + 1 + MAX_STORED_IDENTIFIER_BYTES <= MAX_KEY_BYTES);

/// How deeply `value` nests: 0 for a scalar, 1 for `{}` or `[]`, one more
/// per level inside. Iterative, so a hostile value cannot exhaust the stack.
pub fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(depth + 1);
                stack.extend(fields.values().map(|item| (item, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Why `value` cannot be an identifier, if it cannot: a control character
/// (NUL and the rest of Unicode's `Cc`), or more than
/// [`MAX_IDENTIFIER_BYTES`].
pub fn identifier_problem(value: &str) -> Option<String> {
    key_text_problem(value, MAX_IDENTIFIER_BYTES)
}

/// Why `text` cannot be part of a read-store key: a control character, or
/// more than `max` bytes.
fn key_text_problem(text: &str, max: usize) -> Option<String> {
    if let Some(found) = text.chars().find(|c| c.is_control()) {
        return Some(format!("contains the control character U+{:04X}", found as u32));
    }
    if text.len() > max {
        return Some(format!("longer than {max} bytes ({} bytes)", text.len()));
    }
    None
}

/// Why `name` cannot name a custom identifier kind, if it cannot: a control
/// character, or more than [`MAX_KIND_BYTES`].
pub fn kind_problem(name: &str) -> Option<String> {
    key_text_problem(name, MAX_KIND_BYTES)
}

/// Whether a reader can key an identifier of kind `kind` with `value`: no
/// control character in either, the kind at most [`MAX_KIND_BYTES`] and the
/// value at most [`MAX_STORED_IDENTIFIER_BYTES`]. Ingest admits less
/// ([`identifier_problem`]); this is what a reader holds events stored
/// before those rules, and rules set before them, to.
pub fn is_keyable(kind: &str, value: &str) -> bool {
    kind_problem(kind).is_none() && key_text_problem(value, MAX_STORED_IDENTIFIER_BYTES).is_none()
}

/// Whether a JSON number names an id exactly: an integer that fits 64 bits.
/// `serde_json` reads larger integers as floating point, which keeps only
/// about 17 significant digits, so two different 23-digit ids would read
/// the same; such ids must be sent as strings.
pub fn is_exact_id_number(number: &serde_json::Number) -> bool {
    number.is_i64() || number.is_u64()
}

/// The largest magnitude an amount (`properties.revenue`, `value`, `total`,
/// `subtotal`, `price`, `tax`, `shipping`, `discount`) may have: a
/// quadrillion. Larger numbers are not amounts (`1e308` would saturate a
/// profile's revenue) and are refused at ingest, naming the field.
pub const MAX_AMOUNT: f64 = 1e15;

/// The properties read as amounts.
pub const AMOUNT_PROPERTIES: [&str; 8] =
    ["revenue", "value", "total", "subtotal", "price", "tax", "shipping", "discount"];

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn readers_decode_exactly_read_nesting_levels() {
        // The limit readers rely on is the parser's own: if serde_json's
        // limit (or the decode readers use) changes, this fails.
        assert!(serde_json::from_str::<Value>(&nested(READ_NESTING)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(READ_NESTING + 1)).is_err());
    }

    #[test]
    fn the_deepest_admitted_field_decodes_inside_the_envelope() {
        let field = nested(MAX_FIELD_NESTING);
        let envelope =
            format!("{{\"message\":{{\"properties\":{{\"deep\":{field}}}}},\"enrichment\":{{}},\"originals\":{{}}}}");
        let value: Value = serde_json::from_str(&envelope).unwrap();
        assert_eq!(nesting(&value["message"]["properties"]["deep"]), MAX_FIELD_NESTING);
        assert!(nesting(&value) + ENVELOPE_NESTING - 3 <= READ_NESTING);
    }

    #[test]
    fn nesting_counts_objects_and_arrays_and_not_scalars() {
        assert_eq!(nesting(&serde_json::json!(1)), 0);
        assert_eq!(nesting(&serde_json::json!({})), 1);
        assert_eq!(nesting(&serde_json::json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn nesting_survives_values_deeper_than_any_stack() {
        let mut value = Value::Null;
        for _ in 0..200_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(nesting(&value), 200_000);
        // Dropping so deep a value recursively would overflow the stack.
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn identifiers_with_control_characters_or_too_long_are_refused() {
        assert_eq!(identifier_problem("a\u{0}b").unwrap(), "contains the control character U+0000");
        assert!(identifier_problem("tab\there").is_some());
        assert!(identifier_problem("\u{85}").is_some());
        assert!(identifier_problem(&"x".repeat(MAX_IDENTIFIER_BYTES + 1)).is_some());
        assert_eq!(identifier_problem(&"x".repeat(MAX_IDENTIFIER_BYTES)), None);
        assert_eq!(identifier_problem("user-42 é"), None);
    }

    #[test]
    fn kinds_with_control_characters_or_too_long_are_refused_and_not_keyed() {
        assert!(kind_problem("crm_id").is_none());
        assert!(kind_problem("k\u{0}x").is_some());
        assert!(kind_problem(&"k".repeat(MAX_KIND_BYTES + 1)).is_some());
        assert!(is_keyable("crm_id", &"v".repeat(MAX_STORED_IDENTIFIER_BYTES)));
        assert!(!is_keyable("crm_id", &"v".repeat(MAX_STORED_IDENTIFIER_BYTES + 1)));
        assert!(!is_keyable("k\u{0}x", "v"));
        assert!(!is_keyable("crm_id", "a\u{0}b"));
    }

    #[test]
    fn only_integers_of_64_bits_are_exact_ids() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert!(is_exact_id_number(&number("12345")));
        assert!(is_exact_id_number(&number("-7")));
        assert!(is_exact_id_number(&number("18446744073709551615")));
        assert!(!is_exact_id_number(&number("12345678901234567890123")));
        assert!(!is_exact_id_number(&number("1.5")));
    }
}
