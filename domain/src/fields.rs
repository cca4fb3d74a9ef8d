//! Which parts of an event's payload a reader decodes.
//!
//! Building a `serde_json::Value` tree, and dropping it, is most of what a
//! big read costs: every object is a map of owned strings. A reader that
//! looks at a few members of a payload (the profiles fold reads the ids,
//! traits, event name and revenue of a message, never its `context.page`
//! or `enrichment`) names them as [`Fields`], and the log decodes only
//! those. The rest is still parsed — so a payload is readable for such a
//! reader exactly when it is readable whole (valid JSON, UTF-8, nested no
//! deeper than [`crate::limits::READ_NESTING`]) — but nothing of it is
//! kept.

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The parts of a JSON value a reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fields {
    /// The whole value.
    #[default]
    All,
    /// Of an object, only these members, each with the parts of it to
    /// decode; members not named are left out. A value that is not an
    /// object is decoded whole.
    Only(&'static [(&'static str, Fields)]),
}

impl Fields {
    /// The parts `parts` names for `event_type`: all when it names none.
    pub fn of(parts: &[(&str, Fields)], event_type: &str) -> Fields {
        member(parts, event_type).unwrap_or_default()
    }

    /// Decodes `bytes` (one JSON value), keeping only these parts. Fails
    /// exactly where decoding the whole value would.
    pub fn decode(self, bytes: &[u8]) -> serde_json::Result<Value> {
        match self {
            Fields::All => serde_json::from_slice(bytes),
            Fields::Only(_) => {
                let mut deserializer = serde_json::Deserializer::from_slice(bytes);
                let value = self.deserialize(&mut deserializer)?;
                deserializer.end()?;
                Ok(value)
            }
        }
    }

    /// `value` with only these parts: what [`Fields::decode`] gives for
    /// its text.
    pub fn prune(self, value: Value) -> Value {
        match (self, value) {
            (Fields::Only(members), Value::Object(object)) => Value::Object(
                object
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.clone(), member(members, &name)?.prune(value))))
                    .collect(),
            ),
            (_, value) => value,
        }
    }
}

fn member(members: &[(&str, Fields)], name: &str) -> Option<Fields> {
    members.iter().find(|(wanted, _)| *wanted == name).map(|(_, fields)| *fields)
}

impl<'de> DeserializeSeed<'de> for Fields {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self {
            Fields::All => Value::deserialize(deserializer),
            Fields::Only(members) => deserializer.deserialize_any(Pruned(members)),
        }
    }
}

/// Decodes a value whole, but an object only in the members named.
struct Pruned(&'static [(&'static str, Fields)]);

impl<'de> Visitor<'de> for Pruned {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(Key(name)) = map.next_key::<Key>()? {
            match member(self.0, &name) {
                Some(fields) => {
                    object.insert(name.into_owned(), map.next_value_seed(fields)?);
                }
                None => {
                    map.next_value::<Skipped>()?;
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// An object's member name, borrowed from the input where it can be.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(value.to_owned())))
            }

            fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A value parsed and dropped. Unlike `serde::de::IgnoredAny`, which `serde_json`
/// skips without counting how deep it nests, it goes through the parser's
/// recursion limit, so a payload too deep to decode whole is refused here
/// too.
struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skipped;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_unit<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_none<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skipped, D::Error> {
        Skipped::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element::<Skipped>()?.is_some() {}
        Ok(Skipped)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
        while map.next_key::<Skipped>()?.is_some() {
            map.next_value::<Skipped>()?;
        }
        Ok(Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;
    use serde_json::json;

    const SOME: Fields = Fields::Only(&[
        (
            "message",
            Fields::Only(&[("userId", Fields::All), ("properties", Fields::Only(&[("revenue", Fields::All)]))]),
        ),
        ("violations", Fields::All),
    ]);

    #[test]
    fn only_the_named_members_are_decoded_and_the_rest_is_left_out() {
        let whole = json!({
            "message": {"userId": "u1", "context": {"page": {"url": "https://a"}},
                        "properties": {"revenue": 12.5, "sku": ["a", {"b": null}]}, "weird\"key": 1},
            "enrichment": {"ip": "203.0.113.7"},
            "violations": [{"field": "traits.email", "rule": "email"}]
        });
        let expected = json!({
            "message": {"userId": "u1", "properties": {"revenue": 12.5}},
            "violations": [{"field": "traits.email", "rule": "email"}]
        });
        let text = serde_json::to_vec(&whole).unwrap();
        assert_eq!(SOME.decode(&text).unwrap(), expected);
        assert_eq!(SOME.prune(whole.clone()), expected);
        assert_eq!(Fields::All.decode(&text).unwrap(), whole);
    }

    #[test]
    fn a_named_member_that_is_not_an_object_is_decoded_whole() {
        let whole = json!({"message": ["userId", {"x": 1}], "violations": "none"});
        let text = serde_json::to_vec(&whole).unwrap();
        assert_eq!(SOME.decode(&text).unwrap(), whole);
        assert_eq!(SOME.prune(whole.clone()), whole);
    }

    #[test]
    fn escaped_member_names_match_and_escaped_text_decodes() {
        let text = br#"{"mes\u0073age": {"userId": "a\"b\u00e9", "us\u0065rId2": 1}}"#;
        assert_eq!(SOME.decode(text).unwrap(), json!({"message": {"userId": "a\"bé"}}));
    }

    #[test]
    fn what_fails_to_decode_whole_fails_to_decode_in_part() {
        let deep = |depth: usize| format!("{{\"message\":{{\"context\":{}{}}}}}", "[".repeat(depth), "]".repeat(depth));
        for text in [
            deep(200),
            "{\"message\": {\"context\": \"\\ud800x\"}}".to_owned(),
            "{\"message\": {\"context\": 01}}".to_owned(),
            "{\"message\": {}} trailing".to_owned(),
            "{\"message\": {\"context\": [1,]}}".to_owned(),
        ] {
            assert!(Fields::All.decode(text.as_bytes()).is_err(), "{text:.60}");
            assert!(SOME.decode(text.as_bytes()).is_err(), "{text:.60}");
        }
        let mut invalid_utf8 = b"{\"message\": {\"context\": \"".to_vec();
        invalid_utf8.extend([0xff, 0xfe, b'"', b'}', b'}']);
        assert!(Fields::All.decode(&invalid_utf8).is_err());
        assert!(SOME.decode(&invalid_utf8).is_err());
        // Within the limit, a deep skipped member is fine.
        assert_eq!(SOME.decode(deep(100).as_bytes()).unwrap(), json!({"message": {}}));
        // `IgnoredAny` would have accepted the too-deep one: the reason for `Skipped`.
        let too_deep = deep(200);
        let mut deserializer = serde_json::Deserializer::from_str(&too_deep);
        assert!(IgnoredAny::deserialize(&mut deserializer).is_ok());
    }
}
