//! Declarative mappings: a platform's webhook payload in, Segment-spec messages out.
//!
//! A mapping is JSON, stored as the source's configuration and checked once
//! by [`Mapping::parse`]; [`Mapping::apply`] then turns each payload into
//! zero or more messages. A shipped example (`mappings/generic_example.json`):
//!
//! ```json
//! {
//!   "platform": "acme",
//!   "description": "Acme's signup webhook",
//!   "delivery_id": { "header": "X-Acme-Delivery" },
//!   "messages": [
//!     {
//!       "when": { "pointer": "/event", "equals": "user.signed_up" },
//!       "type": "identify",
//!       "userId": { "template": "acme:{{/user/id}}", "required": true },
//!       "timestamp": "/occurred_at",
//!       "traits": {
//!         "email": { "pointer": "/user/email", "transform": "lowercase" },
//!         "name": "{{/user/first_name}} {{/user/last_name}}",
//!         "address.city": "/user/city",
//!         "plan": "free"
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! ## Format
//!
//! - `platform` (required): the prefix of every message id.
//! - `delivery_id` (required): where the platform's delivery id is, so a retry
//!   maps to the same ids: `{"header": "X-Shopify-Webhook-Id"}`,
//!   `{"pointer": "/id"}`, or `{"body": "sha256"}` (a hash of the raw body, for
//!   platforms without one). Each message's `messageId` is
//!   `"<platform>:<delivery id>:<index>"`, where the index is the message's
//!   position in `messages` (offset by the item's position times the number of
//!   messages when `for_each` is used with a header or body id).
//! - `for_each` (optional): a pointer to an array in the payload (`""` is the
//!   payload itself); each item is mapped on its own, and every pointer,
//!   including a `delivery_id` pointer, is then relative to the item (HubSpot
//!   sends batches of events, each with its own `eventId`).
//! - `messages` (required, non-empty): one template per message, with `type`
//!   (`identify`, `track`, `page`, `screen`, `group` or `alias`), an optional
//!   `when` condition (`{"pointer": "/type", "equals": "customer.created"}`,
//!   `"one_of": [...]` or `"exists": true`), the fields `userId`,
//!   `anonymousId`, `event`, `timestamp`, `name`, `category`, `groupId` and
//!   `previousId`, and the sections `traits`, `properties` and `context`,
//!   each an object of key → value. A dotted key (`address.city`) nests; a key
//!   with `{{/pointer}}` takes its name from the payload.
//! - `description` (optional): free text for people.
//!
//! A value is a string shorthand, another JSON literal, or an object:
//!
//! - `"/customer/email"`: a JSON pointer (a string starting with `/`).
//! - `"{{/first_name}} {{/last_name}}"`: a template (a string with `{{`).
//! - `"Order Completed"`, `42`, `true`: a literal.
//! - `{"pointer" | "template" | "literal": …}`, `{"first_of": [value, …]}`
//!   (the first that is present), or `{"each": "/line_items", "fields": {…}}`
//!   (an array of objects, one per item, with pointers relative to the item),
//!   with optional `"required": true` and `"transform"`: one name or a list of
//!   `lowercase`, `uppercase`, `string`, `number`, `cents_to_units`
//!   (integer minor units / 100; wrong for zero-decimal currencies such as
//!   JPY), `seconds_to_rfc3339`, `millis_to_rfc3339`.
//!
//! A value that is missing or `null` leaves its field out, unless it is
//! required: then the error names the pointer
//! (`/customer/email: expected a value, found nothing`).
//!
//! **Invariant:** pure and deterministic: the same request and payload give the
//! same messages, byte for byte, so ids are stable across retries.
//!
//! **Does not:** validate the messages against the Segment spec; the ingest
//! pipeline's shape checks do that, as for any other message.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Request;

/// A parsed, validated mapping; see the module documentation for the format.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    platform: String,
    delivery_id: DeliveryId,
    for_each: Option<String>,
    messages: Vec<MessageTemplate>,
}

/// Why a mapping could not be parsed, or could not map a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The mapping itself is wrong; `path` is where, as in `mapping.messages[0].type`.
    #[error("{path}: expected {expected}, found {found}")]
    Invalid {
        /// Where in the mapping.
        path: String,
        /// What is allowed there.
        expected: String,
        /// What is there.
        found: String,
    },
    /// A required value is absent (or `null`) in the payload.
    #[error("{pointer}: expected a value, found nothing")]
    Missing {
        /// The JSON pointer, absolute within the payload.
        pointer: String,
    },
    /// A payload value has the wrong type for its use or transform.
    #[error("{pointer}: expected {expected}, found {found}")]
    Mismatch {
        /// The JSON pointer (or template) the value came from.
        pointer: String,
        /// What the use needs.
        expected: String,
        /// What the payload has.
        found: String,
    },
    /// The header that carries the delivery id is absent.
    #[error("{header}: expected a delivery id, found nothing")]
    MissingHeader {
        /// The header's name.
        header: String,
    },
}

impl Mapping {
    /// Parses and validates a mapping, naming the first problem's place in it.
    pub fn parse(value: &Value) -> Result<Mapping, MappingError> {
        let object = expect_object(value, "mapping")?;
        for key in object.keys() {
            if !["platform", "description", "delivery_id", "for_each", "messages"].contains(&key.as_str()) {
                return Err(invalid(
                    &format!("mapping.{key}"),
                    "one of platform, description, delivery_id, for_each, messages",
                    &format!("{key:?}"),
                ));
            }
        }
        let platform = match object.get("platform") {
            Some(Value::String(platform)) if !platform.is_empty() && !platform.contains(':') => platform.clone(),
            other => return Err(invalid("mapping.platform", "a non-empty name without ':'", &describe_opt(other))),
        };
        let delivery_id = DeliveryId::parse(object.get("delivery_id"))?;
        let for_each = match object.get("for_each") {
            None => None,
            Some(Value::String(pointer)) if is_pointer(pointer) => Some(pointer.clone()),
            Some(other) => return Err(invalid("mapping.for_each", "a JSON pointer", &describe(other))),
        };
        let templates = match object.get("messages") {
            Some(Value::Array(templates)) if !templates.is_empty() => templates,
            other => return Err(invalid("mapping.messages", "a non-empty array", &describe_opt(other))),
        };
        let messages = templates
            .iter()
            .enumerate()
            .map(|(index, template)| MessageTemplate::parse(template, &format!("mapping.messages[{index}]")))
            .collect::<Result<_, _>>()?;
        Ok(Mapping { platform, delivery_id, for_each, messages })
    }

    /// The platform name that prefixes every message id.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// Maps one webhook payload to Segment-spec messages, each with `type`
    /// and a deterministic `messageId`. Templates whose `when` does not hold
    /// produce nothing, so the result may be empty.
    pub fn apply(&self, request: &Request<'_>, payload: &Value) -> Result<Vec<Value>, MappingError> {
        let root = Scope { value: payload, base: String::new() };
        let delivery = match &self.delivery_id {
            DeliveryId::Header(header) => Delivery::Shared(
                request
                    .header(header)
                    .map(|id| id.trim().to_owned())
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| MappingError::MissingHeader { header: header.clone() })?,
            ),
            DeliveryId::BodySha256 => Delivery::Shared(hex::encode(Sha256::digest(request.body))),
            DeliveryId::Pointer(pointer) => Delivery::PerItem(pointer),
        };
        let items: Vec<Scope<'_>> = match &self.for_each {
            None => vec![root],
            Some(pointer) => match payload.pointer(pointer) {
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| Scope { value: item, base: format!("{pointer}/{index}") })
                    .collect(),
                None | Some(Value::Null) => return Err(MappingError::Missing { pointer: display_pointer(pointer) }),
                Some(other) => return Err(mismatch(&display_pointer(pointer), "an array", other)),
            },
        };
        let mut messages = Vec::new();
        for (item_index, scope) in items.iter().enumerate() {
            // A per-item delivery id is unique by itself, so the index stays within
            // the item: a retry that batches events differently keeps its ids.
            let (delivery_id, offset) = match &delivery {
                Delivery::Shared(id) => (id.clone(), item_index * self.messages.len()),
                Delivery::PerItem(pointer) => (scope.delivery_id(pointer)?, 0),
            };
            for (index, template) in self.messages.iter().enumerate() {
                if let Some(mut message) = template.apply(scope)? {
                    let id = format!("{}:{}:{}", self.platform, delivery_id, offset + index);
                    message.insert("messageId".to_owned(), Value::String(id));
                    messages.push(Value::Object(message));
                }
            }
        }
        Ok(messages)
    }
}

impl Mapping {
    /// What this mapping can still read from a payload it cannot map: each
    /// message with the fields that resolve, the ones that do not left out
    /// (required or not), with no `messageId`. Only for finding whom a
    /// refused payload names (so erasure can find its rejection); never
    /// stored as a message.
    pub fn salvage(&self, payload: &Value) -> Vec<Value> {
        let root = Scope { value: payload, base: String::new() };
        let items: Vec<Scope<'_>> = match self.for_each.as_ref().and_then(|pointer| payload.pointer(pointer)) {
            Some(Value::Array(items)) => {
                let pointer = self.for_each.as_deref().unwrap_or_default();
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| Scope { value: item, base: format!("{pointer}/{index}") })
                    .collect()
            }
            _ => vec![root],
        };
        let mut messages = Vec::new();
        for scope in &items {
            for template in &self.messages {
                let mut message = Map::new();
                for (section, key, field) in &template.fields {
                    let Ok(Ok(found)) = field.resolve(scope) else { continue };
                    let Ok(Some(mut path)) = key.resolve(scope, false) else { continue };
                    if let Some(section) = section {
                        path.insert(0, (*section).to_owned());
                    }
                    insert_at(&mut message, &path, found.value);
                }
                if !message.is_empty() {
                    messages.push(Value::Object(message));
                }
            }
        }
        messages
    }
}

/// A request's delivery id: one for the whole request, or one per `for_each` item.
enum Delivery<'m> {
    Shared(String),
    PerItem(&'m str),
}

#[derive(Debug, Clone, PartialEq)]
enum DeliveryId {
    Header(String),
    Pointer(String),
    BodySha256,
}

impl DeliveryId {
    fn parse(value: Option<&Value>) -> Result<DeliveryId, MappingError> {
        let expected = r#"{"header": name}, {"pointer": "/id"} or {"body": "sha256"}"#;
        let Some(Value::Object(object)) = value else {
            return Err(invalid("mapping.delivery_id", expected, &describe_opt(value)));
        };
        match (object.len(), object.iter().next()) {
            (1, Some((key, Value::String(header)))) if key == "header" && !header.is_empty() => {
                Ok(DeliveryId::Header(header.clone()))
            }
            (1, Some((key, Value::String(pointer)))) if key == "pointer" && is_pointer(pointer) => {
                Ok(DeliveryId::Pointer(pointer.clone()))
            }
            (1, Some((key, Value::String(hash)))) if key == "body" && hash == "sha256" => Ok(DeliveryId::BodySha256),
            _ => Err(invalid("mapping.delivery_id", expected, &describe(&Value::Object(object.clone())))),
        }
    }
}

const MESSAGE_TYPES: [&str; 6] = ["identify", "track", "page", "screen", "group", "alias"];
const TOP_LEVEL_FIELDS: [&str; 8] =
    ["userId", "anonymousId", "event", "timestamp", "name", "category", "groupId", "previousId"];
const SECTIONS: [&str; 3] = ["traits", "properties", "context"];

#[derive(Debug, Clone, PartialEq)]
struct MessageTemplate {
    when: Option<Condition>,
    kind: String,
    /// (section, key, value); a `None` section is a top-level field.
    fields: Vec<(Option<&'static str>, Key, Field)>,
}

impl MessageTemplate {
    fn parse(value: &Value, path: &str) -> Result<MessageTemplate, MappingError> {
        let object = expect_object(value, path)?;
        let kind = match object.get("type") {
            Some(Value::String(kind)) if MESSAGE_TYPES.contains(&kind.as_str()) => kind.clone(),
            other => {
                return Err(invalid(
                    &format!("{path}.type"),
                    "identify, track, page, screen, group or alias",
                    &describe_opt(other),
                ));
            }
        };
        let mut template = MessageTemplate { when: None, kind, fields: Vec::new() };
        for (key, value) in object {
            let key_path = format!("{path}.{key}");
            if key == "type" {
                continue;
            } else if key == "when" {
                template.when = Some(Condition::parse(value, &key_path)?);
            } else if let Some(field) = TOP_LEVEL_FIELDS.iter().find(|field| *field == key) {
                template.fields.push((None, Key::Path(vec![(*field).to_owned()]), Field::parse(value, &key_path)?));
            } else if let Some(section) = SECTIONS.iter().find(|section| *section == key) {
                for (name, value) in expect_object(value, &key_path)? {
                    let field_path = format!("{key_path}.{name}");
                    template.fields.push((
                        Some(*section),
                        Key::parse(name, &field_path)?,
                        Field::parse(value, &field_path)?,
                    ));
                }
            } else {
                return Err(invalid(
                    &key_path,
                    &format!("type, when, {}, {}", TOP_LEVEL_FIELDS.join(", "), SECTIONS.join(", ")),
                    &format!("{key:?}"),
                ));
            }
        }
        Ok(template)
    }

    fn apply(&self, scope: &Scope<'_>) -> Result<Option<Map<String, Value>>, MappingError> {
        if let Some(when) = &self.when
            && !when.holds(scope)
        {
            return Ok(None);
        }
        let mut message = Map::new();
        message.insert("type".to_owned(), Value::String(self.kind.clone()));
        for (section, key, field) in &self.fields {
            let Some(value) = field.resolve_required(scope)? else { continue };
            let Some(mut path) = key.resolve(scope, field.required)? else { continue };
            if let Some(section) = section {
                path.insert(0, (*section).to_owned());
            }
            insert_at(&mut message, &path, value);
        }
        Ok(Some(message))
    }
}

fn insert_at(object: &mut Map<String, Value>, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("a key has at least one segment");
    let mut current = object;
    for parent in parents {
        let entry = current.entry(parent.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = entry.as_object_mut().expect("made an object above");
    }
    current.insert(last.clone(), value);
}

/// A key in `traits`, `properties`, `context` or an `each` item.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    /// A fixed key; dots nest (`address.city`).
    Path(Vec<String>),
    /// A key named by the payload, such as HubSpot's `{{/propertyName}}`.
    Template(Template),
}

impl Key {
    fn parse(name: &str, path: &str) -> Result<Key, MappingError> {
        if name.contains("{{") {
            return Ok(Key::Template(Template::parse(name, path)?));
        }
        let segments: Vec<String> = name.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(invalid(path, "a key without empty dotted segments", &format!("{name:?}")));
        }
        Ok(Key::Path(segments))
    }

    fn resolve(&self, scope: &Scope<'_>, required: bool) -> Result<Option<Vec<String>>, MappingError> {
        match self {
            Key::Path(segments) => Ok(Some(segments.clone())),
            Key::Template(template) => match template.render(scope)? {
                Ok(name) if !name.is_empty() => Ok(Some(vec![name])),
                Ok(_) => Ok(None),
                Err(pointer) if required => Err(MappingError::Missing { pointer }),
                Err(_) => Ok(None),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    pointer: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Exists(bool),
}

impl Condition {
    fn parse(value: &Value, path: &str) -> Result<Condition, MappingError> {
        let expected = r#"{"pointer": "/…", and one of "equals": value, "one_of": [values], "exists": bool}"#;
        let object = expect_object(value, path)?;
        let pointer = match object.get("pointer") {
            Some(Value::String(pointer)) if is_pointer(pointer) => pointer.clone(),
            _ => return Err(invalid(path, expected, &describe(value))),
        };
        let test = match (object.len(), object.get("equals"), object.get("one_of"), object.get("exists")) {
            (2, Some(equals), None, None) => Test::Equals(equals.clone()),
            (2, None, Some(Value::Array(values)), None) => Test::OneOf(values.clone()),
            (2, None, None, Some(Value::Bool(exists))) => Test::Exists(*exists),
            _ => return Err(invalid(path, expected, &describe(value))),
        };
        Ok(Condition { pointer, test })
    }

    fn holds(&self, scope: &Scope<'_>) -> bool {
        let found = scope.value.pointer(&self.pointer).filter(|value| !value.is_null());
        match &self.test {
            Test::Equals(expected) => found == Some(expected),
            Test::OneOf(values) => found.is_some_and(|found| values.contains(found)),
            Test::Exists(exists) => found.is_some() == *exists,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    source: Source,
    transforms: Vec<Transform>,
    required: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Pointer(String),
    Template(Template),
    Literal(Value),
    FirstOf(Vec<Field>),
    Each { pointer: String, fields: Vec<(Key, Field)> },
}

/// A value found in the payload, with where it came from for error messages.
struct Found {
    value: Value,
    origin: String,
}

impl Field {
    fn parse(value: &Value, path: &str) -> Result<Field, MappingError> {
        let plain = |source| Ok(Field { source, transforms: Vec::new(), required: false });
        let object = match value {
            Value::String(text) if text.contains("{{") => return plain(Source::Template(Template::parse(text, path)?)),
            Value::String(text) if text.starts_with('/') => return plain(Source::Pointer(text.clone())),
            Value::String(_) | Value::Number(_) | Value::Bool(_) => return plain(Source::Literal(value.clone())),
            Value::Object(object) => object,
            Value::Null | Value::Array(_) => {
                return Err(invalid(path, "a pointer, template, literal or object", &describe(value)));
            }
        };
        let mut source = None;
        let mut field = Field { source: Source::Literal(Value::Null), transforms: Vec::new(), required: false };
        for (key, value) in object {
            let key_path = format!("{path}.{key}");
            let parsed = match (key.as_str(), value) {
                ("pointer", Value::String(pointer)) if is_pointer(pointer) => Source::Pointer(pointer.clone()),
                ("template", Value::String(text)) => Source::Template(Template::parse(text, &key_path)?),
                ("literal", literal) => Source::Literal(literal.clone()),
                ("first_of", Value::Array(choices)) if !choices.is_empty() => Source::FirstOf(
                    choices
                        .iter()
                        .enumerate()
                        .map(|(index, choice)| Field::parse(choice, &format!("{key_path}[{index}]")))
                        .collect::<Result<_, _>>()?,
                ),
                ("each", Value::String(pointer)) if is_pointer(pointer) => {
                    let Some(fields) = object.get("fields") else {
                        return Err(invalid(&format!("{path}.fields"), "an object of item fields", "nothing"));
                    };
                    let fields = expect_object(fields, &format!("{path}.fields"))?
                        .iter()
                        .map(|(name, item)| {
                            let item_path = format!("{path}.fields.{name}");
                            Ok((Key::parse(name, &item_path)?, Field::parse(item, &item_path)?))
                        })
                        .collect::<Result<_, MappingError>>()?;
                    Source::Each { pointer: pointer.clone(), fields }
                }
                ("fields", _) if object.contains_key("each") => continue,
                ("required", Value::Bool(required)) => {
                    field.required = *required;
                    continue;
                }
                ("transform", Value::String(name)) => {
                    field.transforms = vec![Transform::parse(name, &key_path)?];
                    continue;
                }
                ("transform", Value::Array(names)) => {
                    field.transforms = names
                        .iter()
                        .map(|name| match name {
                            Value::String(name) => Transform::parse(name, &key_path),
                            other => Err(invalid(&key_path, "transform names", &describe(other))),
                        })
                        .collect::<Result<_, _>>()?;
                    continue;
                }
                ("pointer" | "template" | "first_of" | "each" | "required" | "transform", other) => {
                    return Err(invalid(&key_path, expected_for(key), &describe(other)));
                }
                (other, _) => {
                    return Err(invalid(
                        &key_path,
                        "pointer, template, literal, first_of, each, fields, required or transform",
                        &format!("{other:?}"),
                    ));
                }
            };
            if source.replace(parsed).is_some() {
                return Err(invalid(
                    path,
                    "exactly one of pointer, template, literal, first_of, each",
                    "more than one",
                ));
            }
        }
        field.source =
            source.ok_or_else(|| invalid(path, "one of pointer, template, literal, first_of, each", "none"))?;
        Ok(field)
    }

    /// The value, or `None` when it is absent and optional.
    fn resolve_required(&self, scope: &Scope<'_>) -> Result<Option<Value>, MappingError> {
        match self.resolve(scope)? {
            Ok(found) => Ok(Some(found.value)),
            Err(pointer) if self.required => Err(MappingError::Missing { pointer }),
            Err(_) => Ok(None),
        }
    }

    /// `Ok(Ok(found))`, or `Ok(Err(pointer))` naming the first absent pointer.
    fn resolve(&self, scope: &Scope<'_>) -> Result<Result<Found, String>, MappingError> {
        let found = match &self.source {
            Source::Literal(value) => Found { value: value.clone(), origin: format!("literal {}", describe(value)) },
            Source::Pointer(pointer) => match scope.value.pointer(pointer) {
                Some(value) if !value.is_null() => Found { value: value.clone(), origin: scope.absolute(pointer) },
                _ => return Ok(Err(scope.absolute(pointer))),
            },
            Source::Template(template) => match template.render(scope)? {
                Ok(text) => Found { value: Value::String(text), origin: format!("template {:?}", template.text) },
                Err(pointer) => return Ok(Err(pointer)),
            },
            Source::FirstOf(choices) => {
                let mut absent = Vec::new();
                let mut first = None;
                for choice in choices {
                    match choice.resolve(scope)? {
                        Ok(found) => {
                            first = Some(found);
                            break;
                        }
                        Err(pointer) => absent.push(pointer),
                    }
                }
                match first {
                    Some(found) => found,
                    None => return Ok(Err(absent.join(" or "))),
                }
            }
            Source::Each { pointer, fields } => {
                let origin = scope.absolute(pointer);
                let items = match scope.value.pointer(pointer) {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => return Ok(Err(origin)),
                    Some(other) => return Err(mismatch(&origin, "an array", other)),
                };
                let mut mapped = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    let item_scope = Scope { value: item, base: format!("{origin}/{index}") };
                    let mut object = Map::new();
                    for (key, field) in fields {
                        let Some(value) = field.resolve_required(&item_scope)? else { continue };
                        let Some(path) = key.resolve(&item_scope, field.required)? else { continue };
                        insert_at(&mut object, &path, value);
                    }
                    mapped.push(Value::Object(object));
                }
                Found { value: Value::Array(mapped), origin }
            }
        };
        let mut found = found;
        for transform in &self.transforms {
            found.value = transform.apply(found.value, &found.origin)?;
        }
        Ok(Ok(found))
    }
}

fn expected_for(key: &str) -> &'static str {
    match key {
        "pointer" | "each" => "a JSON pointer starting with '/'",
        "template" => "a template string",
        "first_of" => "a non-empty array of values",
        "required" => "true or false",
        _ => "a transform name or a list of them",
    }
}

/// A string with `{{/pointer}}` placeholders.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Pointer(String),
}

impl Template {
    fn parse(text: &str, path: &str) -> Result<Template, MappingError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(invalid(path, "every {{ closed by }}", &format!("{text:?}")));
            };
            let pointer = after[..end].trim();
            if !pointer.starts_with('/') {
                return Err(invalid(path, "{{/pointer}} placeholders", &format!("{{{{{pointer}}}}}")));
            }
            parts.push(Part::Pointer(pointer.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { text: text.to_owned(), parts })
    }

    /// The rendered text, or `Err(pointer)` naming the first absent placeholder.
    fn render(&self, scope: &Scope<'_>) -> Result<Result<String, String>, MappingError> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(literal) => text.push_str(literal),
                Part::Pointer(pointer) => match scope.value.pointer(pointer) {
                    None | Some(Value::Null) => return Ok(Err(scope.absolute(pointer))),
                    Some(Value::String(value)) => text.push_str(value),
                    Some(value @ (Value::Number(_) | Value::Bool(_))) => text.push_str(&value.to_string()),
                    Some(other) => {
                        return Err(mismatch(&scope.absolute(pointer), "a string, number or boolean", other));
                    }
                },
            }
        }
        Ok(Ok(text))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transform {
    Lowercase,
    Uppercase,
    String,
    Number,
    CentsToUnits,
    SecondsToRfc3339,
    MillisToRfc3339,
}

impl Transform {
    fn parse(name: &str, path: &str) -> Result<Transform, MappingError> {
        Ok(match name {
            "lowercase" => Transform::Lowercase,
            "uppercase" => Transform::Uppercase,
            "string" => Transform::String,
            "number" => Transform::Number,
            "cents_to_units" => Transform::CentsToUnits,
            "seconds_to_rfc3339" => Transform::SecondsToRfc3339,
            "millis_to_rfc3339" => Transform::MillisToRfc3339,
            other => {
                return Err(invalid(
                    path,
                    "lowercase, uppercase, string, number, cents_to_units, seconds_to_rfc3339 or millis_to_rfc3339",
                    &format!("{other:?}"),
                ));
            }
        })
    }

    fn apply(self, value: Value, origin: &str) -> Result<Value, MappingError> {
        match self {
            Transform::Lowercase | Transform::Uppercase => match value {
                Value::String(text) if self == Transform::Lowercase => Ok(Value::String(text.to_lowercase())),
                Value::String(text) => Ok(Value::String(text.to_uppercase())),
                other => Err(mismatch(origin, "a string", &other)),
            },
            Transform::String => match value {
                Value::String(_) => Ok(value),
                Value::Number(_) | Value::Bool(_) => Ok(Value::String(value.to_string())),
                other => Err(mismatch(origin, "a string, number or boolean", &other)),
            },
            Transform::Number => to_number(&value, origin).map(|number| match number.as_i64() {
                Some(integer) => Value::from(integer),
                None => Value::Number(number),
            }),
            Transform::CentsToUnits => {
                let cents = to_number(&value, origin)?;
                match cents.as_i64() {
                    Some(cents) => Ok(number_value(cents as f64 / 100.0, origin, &value)?),
                    None => Err(mismatch(origin, "an integer amount in minor units", &value)),
                }
            }
            Transform::SecondsToRfc3339 | Transform::MillisToRfc3339 => {
                let number = to_number(&value, origin)?;
                let millis = match (number.as_i64(), self) {
                    (Some(seconds), Transform::SecondsToRfc3339) => seconds.checked_mul(1000),
                    (Some(millis), _) => Some(millis),
                    (None, _) => None,
                };
                let datetime = millis.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis);
                match datetime {
                    Some(datetime) => Ok(Value::String(datetime.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))),
                    None => Err(mismatch(origin, "an integer Unix time", &value)),
                }
            }
        }
    }
}

fn to_number(value: &Value, origin: &str) -> Result<serde_json::Number, MappingError> {
    match value {
        Value::Number(number) => Ok(number.clone()),
        Value::String(text) => {
            let text = text.trim();
            if let Ok(integer) = text.parse::<i64>() {
                return Ok(integer.into());
            }
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .ok_or_else(|| mismatch(origin, "a number", value))
        }
        other => Err(mismatch(origin, "a number", other)),
    }
}

fn number_value(number: f64, origin: &str, original: &Value) -> Result<Value, MappingError> {
    serde_json::Number::from_f64(number).map(Value::Number).ok_or_else(|| mismatch(origin, "a finite number", original))
}

/// The part of the payload being mapped: the whole payload, a `for_each`
/// item or an `each` item, with its absolute pointer for error messages.
struct Scope<'a> {
    value: &'a Value,
    base: String,
}

impl Scope<'_> {
    fn absolute(&self, pointer: &str) -> String {
        display_pointer(&format!("{}{pointer}", self.base))
    }

    fn delivery_id(&self, pointer: &str) -> Result<String, MappingError> {
        match self.value.pointer(pointer) {
            Some(Value::String(id)) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            Some(Value::Number(id)) => Ok(id.to_string()),
            None | Some(Value::Null) => Err(MappingError::Missing { pointer: self.absolute(pointer) }),
            Some(other) => Err(mismatch(&self.absolute(pointer), "a delivery id (a string or number)", other)),
        }
    }
}

fn display_pointer(pointer: &str) -> String {
    if pointer.is_empty() { "payload".to_owned() } else { pointer.to_owned() }
}

fn is_pointer(text: &str) -> bool {
    text.is_empty() || text.starts_with('/')
}

fn expect_object<'v>(value: &'v Value, path: &str) -> Result<&'v Map<String, Value>, MappingError> {
    value.as_object().ok_or_else(|| invalid(path, "an object", &describe(value)))
}

fn invalid(path: &str, expected: &str, found: &str) -> MappingError {
    MappingError::Invalid { path: path.to_owned(), expected: expected.to_owned(), found: found.to_owned() }
}

fn mismatch(pointer: &str, expected: &str, found: &Value) -> MappingError {
    MappingError::Mismatch { pointer: pointer.to_owned(), expected: expected.to_owned(), found: describe(found) }
}

fn describe_opt(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), describe)
}

/// A short description of a value for error messages: scalars as JSON
/// (strings shortened), containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::String(text) if text.chars().count() > 64 => {
            format!("{:?}…", text.chars().take(64).collect::<String>())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> Request<'a> {
        Request { method: "POST", uri: "https://cdp.example.com/v1/webhooks/src_1", headers, body }
    }

    fn apply(mapping: Value, payload: Value) -> Result<Vec<Value>, MappingError> {
        let headers = vec![("X-Delivery".to_owned(), "d-1".to_owned())];
        Mapping::parse(&mapping).unwrap().apply(&request(&headers, b"{}"), &payload)
    }

    fn mapping(message: Value) -> Value {
        json!({"platform": "acme", "delivery_id": {"header": "x-delivery"}, "messages": [message]})
    }

    #[test]
    fn pointers_templates_literals_and_transforms_fill_a_message() {
        let messages = apply(
            mapping(json!({
                "type": "identify",
                "userId": "acme:{{/id}}",
                "timestamp": {"pointer": "/created", "transform": "seconds_to_rfc3339"},
                "traits": {
                    "email": {"pointer": "/email", "transform": "lowercase"},
                    "name": "{{/first}} {{/last}}",
                    "address.city": "/city",
                    "plan": "free",
                    "vip": true,
                    "age": {"pointer": "/age", "transform": "number"}
                },
                "context": {"integration.name": "acme"}
            })),
            json!({"id": 42, "created": 1700000000, "email": "Jo@Example.COM", "first": "Jo", "last": "Doe",
                   "city": "Oslo", "age": "41"}),
        )
        .unwrap();
        assert_eq!(
            messages,
            vec![json!({
                "type": "identify",
                "messageId": "acme:d-1:0",
                "userId": "acme:42",
                "timestamp": "2023-11-14T22:13:20Z",
                "traits": {"email": "jo@example.com", "name": "Jo Doe", "address": {"city": "Oslo"},
                           "plan": "free", "vip": true, "age": 41},
                "context": {"integration": {"name": "acme"}}
            })]
        );
    }

    #[test]
    fn a_missing_optional_value_leaves_its_field_out() {
        let messages = apply(
            mapping(json!({"type": "identify", "userId": "/id", "traits": {"email": "/email"}})),
            json!({"id": "u1", "email": null}),
        )
        .unwrap();
        assert_eq!(messages, vec![json!({"type": "identify", "messageId": "acme:d-1:0", "userId": "u1"})]);
    }

    #[test]
    fn a_missing_required_value_names_its_pointer() {
        let result = apply(
            mapping(json!({"type": "identify", "traits": {"email": {"pointer": "/customer/email", "required": true}}})),
            json!({"customer": {}}),
        );
        assert_eq!(result.unwrap_err().to_string(), "/customer/email: expected a value, found nothing");
    }

    #[test]
    fn a_template_with_a_missing_placeholder_names_the_placeholder() {
        let result = apply(
            mapping(json!({"type": "identify", "userId": {"template": "x:{{/customer/id}}", "required": true}})),
            json!({}),
        );
        assert_eq!(result.unwrap_err().to_string(), "/customer/id: expected a value, found nothing");
    }

    #[test]
    fn a_transform_on_the_wrong_type_names_the_value() {
        let result = apply(
            mapping(
                json!({"type": "track", "event": "x", "properties": {"total": {"pointer": "/total", "transform": "number"}}}),
            ),
            json!({"total": "lots"}),
        );
        assert_eq!(result.unwrap_err().to_string(), "/total: expected a number, found \"lots\"");
    }

    #[test]
    fn each_maps_an_array_item_by_item_with_absolute_pointers_in_errors() {
        let template = json!({"type": "track", "event": "Order Completed", "properties": {"products": {
            "each": "/items",
            "fields": {"sku": {"pointer": "/sku", "required": true}, "price": {"pointer": "/price", "transform": "number"}}
        }}});
        let messages = apply(mapping(template.clone()), json!({"items": [{"sku": "A", "price": "1.50"}]})).unwrap();
        assert_eq!(messages[0]["properties"]["products"], json!([{"sku": "A", "price": 1.5}]));

        let result = apply(mapping(template), json!({"items": [{"sku": "A"}, {"price": "2"}]}));
        assert_eq!(result.unwrap_err().to_string(), "/items/1/sku: expected a value, found nothing");
    }

    #[test]
    fn when_skips_a_template_whose_condition_does_not_hold_but_keeps_indexes() {
        let mapping = json!({"platform": "acme", "delivery_id": {"pointer": "/id"}, "messages": [
            {"when": {"pointer": "/kind", "equals": "a"}, "type": "track", "event": "A", "userId": "/u"},
            {"when": {"pointer": "/kind", "one_of": ["b", "c"]}, "type": "track", "event": "B", "userId": "/u"},
            {"when": {"pointer": "/u", "exists": true}, "type": "identify", "userId": "/u"}
        ]});
        let messages = apply(mapping, json!({"id": "evt_9", "kind": "c", "u": "u1"})).unwrap();
        let ids: Vec<&Value> = messages.iter().map(|message| &message["messageId"]).collect();
        assert_eq!(ids, [&json!("acme:evt_9:1"), &json!("acme:evt_9:2")]);
    }

    #[test]
    fn for_each_with_per_item_delivery_ids_gives_ids_independent_of_batch_position() {
        let mapping = json!({"platform": "acme", "for_each": "", "delivery_id": {"pointer": "/eventId"},
            "messages": [{"type": "identify", "userId": "/user", "traits": {"{{/name}}": "/value"}}]});
        let one = apply(mapping.clone(), json!([{"eventId": 7, "user": "u", "name": "plan", "value": "pro"}])).unwrap();
        let two = apply(
            mapping,
            json!([{"eventId": 6, "user": "v"}, {"eventId": 7, "user": "u", "name": "plan", "value": "pro"}]),
        )
        .unwrap();
        assert_eq!(one[0], two[1]);
        assert_eq!(
            one[0],
            json!({"type": "identify", "messageId": "acme:7:0", "userId": "u", "traits": {"plan": "pro"}})
        );
        assert_eq!(two[0], json!({"type": "identify", "messageId": "acme:6:0", "userId": "v"}));
    }

    #[test]
    fn a_body_hash_delivery_id_is_the_same_for_the_same_body() {
        let mapping = Mapping::parse(&json!({"platform": "p", "delivery_id": {"body": "sha256"},
            "messages": [{"type": "track", "event": "E", "anonymousId": "/a"}]}))
        .unwrap();
        let payload = json!({"a": "x"});
        let first = mapping.apply(&request(&[], b"{\"a\":\"x\"}"), &payload).unwrap();
        let again = mapping.apply(&request(&[], b"{\"a\":\"x\"}"), &payload).unwrap();
        let other = mapping.apply(&request(&[], b"{\"a\": \"x\"}"), &payload).unwrap();
        assert_eq!(first, again);
        assert_ne!(first[0]["messageId"], other[0]["messageId"]);
    }

    #[test]
    fn a_missing_delivery_header_is_named() {
        let mapping = Mapping::parse(&mapping(json!({"type": "track", "event": "E"}))).unwrap();
        let result = mapping.apply(&request(&[], b"{}"), &json!({}));
        assert_eq!(result.unwrap_err().to_string(), "x-delivery: expected a delivery id, found nothing");
    }

    #[test]
    fn first_of_takes_the_first_present_value_and_names_all_when_none_is() {
        let template = json!({"type": "identify", "traits": {"email": {"first_of": ["/customer/email", "/email"], "required": true}}});
        let messages = apply(mapping(template.clone()), json!({"email": "a@b.c"})).unwrap();
        assert_eq!(messages[0]["traits"]["email"], json!("a@b.c"));
        let result = apply(mapping(template), json!({}));
        assert_eq!(result.unwrap_err().to_string(), "/customer/email or /email: expected a value, found nothing");
    }

    #[test]
    fn cents_to_units_and_uppercase_convert_stripe_amounts() {
        let messages = apply(
            mapping(json!({"type": "track", "event": "E", "properties": {
                "revenue": {"pointer": "/amount", "transform": "cents_to_units"},
                "currency": {"pointer": "/currency", "transform": "uppercase"},
                "at": {"pointer": "/ms", "transform": "millis_to_rfc3339"}
            }})),
            json!({"amount": 1999, "currency": "usd", "ms": 1700000000123_i64}),
        )
        .unwrap();
        assert_eq!(
            messages[0]["properties"],
            json!({"revenue": 19.99, "currency": "USD", "at": "2023-11-14T22:13:20.123Z"})
        );
    }

    #[test]
    fn parse_errors_name_the_place_in_the_mapping() {
        let cases = [
            (
                json!({"platform": "a", "delivery_id": {"header": "h"}, "messages": [{"type": "tarck"}]}),
                "mapping.messages[0].type: expected identify, track, page, screen, group or alias, found \"tarck\"",
            ),
            (
                json!({"platform": "a", "delivery_id": {"header": "h"}, "messages": [{"type": "track", "traits": {"x": {"pointer": "/x", "transform": "titlecase"}}}]}),
                "mapping.messages[0].traits.x.transform: expected lowercase, uppercase, string, number, cents_to_units, seconds_to_rfc3339 or millis_to_rfc3339, found \"titlecase\"",
            ),
            (
                json!({"platform": "a", "delivery_id": {"header": "h"}, "messages": [{"type": "track", "event": "{{/x"}]}),
                "mapping.messages[0].event: expected every {{ closed by }}, found \"{{/x\"",
            ),
            (
                json!({"platform": "a", "delivery_id": {"id": "h"}, "messages": [{"type": "track"}]}),
                "mapping.delivery_id: expected {\"header\": name}, {\"pointer\": \"/id\"} or {\"body\": \"sha256\"}, found an object",
            ),
            (
                json!({"platform": "a", "delivery_id": {"header": "h"}, "messages": []}),
                "mapping.messages: expected a non-empty array, found an array",
            ),
            (
                json!({"platform": "a", "delivery_id": {"header": "h"}, "messages": [{"type": "track", "user_id": "/u"}]}),
                "mapping.messages[0].user_id: expected type, when, userId, anonymousId, event, timestamp, name, category, groupId, previousId, traits, properties, context, found \"user_id\"",
            ),
        ];
        for (mapping, expected) in cases {
            assert_eq!(Mapping::parse(&mapping).unwrap_err().to_string(), expected);
        }
    }
}
