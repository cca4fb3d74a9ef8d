//! One event, as one destination receives it.
//!
//! [`prepare`] decides, for an accepted message and the profile it was
//! attributed to (as of that event), whether the destination receives it
//! and, if so, the [`PreparedEvent`] its adapter gets:
//!
//! 1. **Filters.** Message types and track names the destination asks for;
//!    the message's `integrations` switches (Segment's semantics: the
//!    destination's name or adapter name, else `All`, else on); the consent
//!    categories the destination needs, each granted (`true`) in
//!    `context.consent.categoryPreferences`.
//! 2. **Identifiers.** Each identifier the adapter accepts, read from the
//!    profile as of the event (every email, phone and id it held then; the
//!    message's own ids first), its traits (names, birthday, address) or the
//!    message's context (IP, user agent, click ids), then normalized and
//!    hashed to the adapter's rules ([`onepd_domain::hashing::prepare`]).
//!    Without a profile, the message's own values are used.
//! 3. **Raw identifiers never leave for an ad platform.** Its message is sent
//!    without `userId`, `anonymousId`, `previousId`, `traits`,
//!    `context.traits`, `context.ip`, `context.userAgent` and properties
//!    named after an identifier (`email`, `phone`, names, address); its
//!    identifiers are the hashed ones (and the network ids the platform
//!    needs in clear). Other categories get the message whole, with the
//!    destination's chosen traits.
//!
//! What was hashed and what was removed are returned by field name (never
//! by value) for the delivery ledger.

use std::collections::{BTreeMap, BTreeSet};

use onepd_domain::RecordedEvent;
use onepd_domain::destination::{Category, Description, Hashing, IdentifierSource, PreparedEvent};
use onepd_domain::events::destination::DestinationCreated;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::hashing;
use onepd_domain::identity::IdentifierKind;
use serde_json::{Map, Value};

use crate::profile::ProfileView;

/// A destination as the preparation needs it: its configuration and what
/// its adapter described.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The destination's configuration.
    pub destination: &'a DestinationCreated,
    /// Its adapter's description.
    pub description: &'a Description,
}

/// What the preparation did to an event, by field name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Identifier fields sent hashed (`em`).
    pub hashed: BTreeSet<String>,
    /// Fields removed from the message (`userId`, `properties.email`).
    pub scrubbed: BTreeSet<String>,
}

/// Top-level message fields that name a person.
const IDENTIFYING_FIELDS: [&str; 4] = ["userId", "anonymousId", "previousId", "traits"];
/// `context` fields that name a person or their device.
const IDENTIFYING_CONTEXT: [&str; 3] = ["traits", "ip", "userAgent"];
/// Property names that hold an identifier.
const IDENTIFYING_PROPERTIES: [&str; 14] = [
    "email",
    "phone",
    "userId",
    "user_id",
    "anonymousId",
    "firstName",
    "first_name",
    "lastName",
    "last_name",
    "name",
    "birthday",
    "address",
    "street",
    "ip",
];

/// The event as `target` receives it with what was hashed and removed, or
/// `None` when the destination does not receive it (not an accepted
/// message, an erased payload, or filtered out).
pub fn prepare(
    event: &RecordedEvent,
    profile: Option<&ProfileView<'_>>,
    target: Target<'_>,
) -> Option<(PreparedEvent, Notes)> {
    if event.event_type != MessageAccepted::TYPE {
        return None;
    }
    let message = event.data.value()?.get("message")?;
    let message_type = message.get("type").and_then(Value::as_str)?.to_owned();
    let name = match message_type.as_str() {
        "track" => message.get("event"),
        _ => message.get("name"),
    }
    .and_then(Value::as_str)
    .map(str::to_owned);
    if !admits(message, &message_type, name.as_deref(), target) {
        return None;
    }
    let mut notes = Notes::default();
    let mut identifiers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for spec in &target.description.identifiers {
        let mut values: Vec<String> = Vec::new();
        for raw in raw_values(spec.source, message, profile) {
            if let Some(value) = hashing::prepare(spec, &raw)
                && !values.contains(&value)
            {
                values.push(value);
            }
        }
        if !values.is_empty() {
            if spec.hashing == Hashing::Sha256 {
                notes.hashed.insert(spec.name.clone());
            }
            identifiers.insert(spec.name.clone(), values);
        }
    }
    let ad_platform = target.description.category == Category::AdPlatform;
    let mut sent = message.clone();
    let mut traits = Map::new();
    if ad_platform {
        strip_identifiers(&mut sent, &mut notes.scrubbed);
    } else if let Some(profile) = profile.and_then(|profile| profile.traits) {
        for name in &target.destination.traits {
            if let Some(found) = profile.get(name) {
                traits.insert(name.clone(), found.value.clone());
            }
        }
    }
    let timestamp = ["timestamp", "receivedAt"]
        .iter()
        .find_map(|field| message.get(*field)?.as_str())
        .map_or_else(|| event.recorded_at.to_rfc3339(), str::to_owned);
    Some((
        PreparedEvent {
            event_id: event.event_id,
            position: event.position,
            message_type,
            name,
            timestamp,
            message: sent,
            identifiers,
            traits,
            profile_id: profile.map(|profile| profile.id.to_string()),
        },
        notes,
    ))
}

/// Whether the destination's filters, the message's `integrations` and its
/// consent admit it.
fn admits(message: &Value, message_type: &str, name: Option<&str>, target: Target<'_>) -> bool {
    let filters = &target.destination.filters;
    if !filters.event_types.is_empty() && !filters.event_types.iter().any(|t| t == message_type) {
        return false;
    }
    if message_type == "track"
        && !filters.event_names.is_empty()
        && !name.is_some_and(|name| filters.event_names.iter().any(|n| n == name))
    {
        return false;
    }
    if let Some(integrations) = message.get("integrations").and_then(Value::as_object) {
        let switch =
            [target.destination.name.as_str(), target.destination.adapter.as_str(), "All"].iter().find_map(|key| {
                match integrations.get(*key) {
                    Some(Value::Bool(on)) => Some(*on),
                    // An object (per-destination options) means "on".
                    Some(Value::Object(_)) => Some(true),
                    _ => None,
                }
            });
        if switch == Some(false) {
            return false;
        }
    }
    if !filters.consent_categories.is_empty() {
        let granted = message.pointer("/context/consent/categoryPreferences").and_then(Value::as_object);
        let all_granted = filters
            .consent_categories
            .iter()
            .all(|category| granted.and_then(|g| g.get(category)).and_then(Value::as_bool) == Some(true));
        if !all_granted {
            return false;
        }
    }
    true
}

/// Every raw value of `source` for this event: the profile's (the message's
/// own first) for identifiers, traits for personal details, the context for
/// network and click ids.
fn raw_values(source: IdentifierSource, message: &Value, profile: Option<&ProfileView<'_>>) -> Vec<String> {
    let kind = match source {
        IdentifierSource::Email => Some((IdentifierKind::Email, "/traits/email", "/context/traits/email")),
        IdentifierSource::Phone => Some((IdentifierKind::Phone, "/traits/phone", "/context/traits/phone")),
        IdentifierSource::UserId => Some((IdentifierKind::UserId, "/userId", "/userId")),
        IdentifierSource::AnonymousId => Some((IdentifierKind::AnonymousId, "/anonymousId", "/anonymousId")),
        _ => None,
    };
    if let Some((kind, own, context)) = kind {
        let mut values: Vec<String> = [own, context]
            .iter()
            .filter_map(|pointer| message.pointer(pointer).and_then(Value::as_str).map(str::to_owned))
            .collect();
        if let Some(profile) = profile {
            values.extend(profile.identifiers.iter().filter(|id| id.kind == kind).map(|id| id.value.clone()));
        }
        return values;
    }
    let traits: &[&str] = match source {
        IdentifierSource::FirstName => &["firstName", "first_name"],
        IdentifierSource::LastName => &["lastName", "last_name"],
        IdentifierSource::Gender => &["gender"],
        IdentifierSource::DateOfBirth => &["birthday"],
        IdentifierSource::City => &["address.city"],
        IdentifierSource::State => &["address.state"],
        IdentifierSource::PostalCode => &["address.postalCode", "address.postal_code"],
        IdentifierSource::Country => &["address.country"],
        IdentifierSource::Street => &["address.street"],
        _ => &[],
    };
    if !traits.is_empty() {
        return traits.iter().find_map(|name| trait_value(name, message, profile)).into_iter().collect();
    }
    let pointer = match source {
        IdentifierSource::Ip => "/context/ip",
        IdentifierSource::UserAgent => "/context/userAgent",
        IdentifierSource::Fbc => "/context/fbc",
        IdentifierSource::Fbp => "/context/fbp",
        IdentifierSource::Gclid => "/context/clickIds/gclid",
        IdentifierSource::Ttclid => "/context/clickIds/ttclid",
        _ => return Vec::new(),
    };
    match message.pointer(pointer) {
        Some(Value::String(value)) => vec![value.clone()],
        // The browser library keeps a click id with when it was seen.
        Some(Value::Object(click)) => {
            click.get("value").and_then(Value::as_str).map(str::to_owned).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// A trait (`address.city` reads into an `address` object) from the profile
/// as of the event, else from the message's own traits.
fn trait_value(name: &str, message: &Value, profile: Option<&ProfileView<'_>>) -> Option<String> {
    let (head, tail) = name.split_once('.').map_or((name, None), |(head, tail)| (head, Some(tail)));
    let pick = |value: &Value| -> Option<String> {
        let value = match tail {
            Some(tail) => value.get(tail)?,
            None => value,
        };
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let from_profile = profile.and_then(|p| p.traits).and_then(|traits| traits.get(head)).and_then(|t| pick(&t.value));
    from_profile.or_else(|| {
        ["/traits", "/context/traits"].iter().find_map(|pointer| pick(message.pointer(pointer)?.get(head)?))
    })
}

/// Removes what names a person from a message bound for an ad platform,
/// noting each field removed.
fn strip_identifiers(message: &mut Value, scrubbed: &mut BTreeSet<String>) {
    let Some(object) = message.as_object_mut() else { return };
    for field in IDENTIFYING_FIELDS {
        if object.remove(field).is_some() {
            scrubbed.insert(field.to_owned());
        }
    }
    if let Some(context) = object.get_mut("context").and_then(Value::as_object_mut) {
        for field in IDENTIFYING_CONTEXT {
            if context.remove(field).is_some() {
                scrubbed.insert(format!("context.{field}"));
            }
        }
    }
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for field in IDENTIFYING_PROPERTIES {
            if properties.remove(field).is_some() {
                scrubbed.insert(format!("properties.{field}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::destination::{Category, Description, Hashing, IdentifierSource, IdentifierSpec, Normalization};
    use onepd_domain::events::destination::{DestinationFilters, RetryPolicy};
    use onepd_domain::identity::ProfileId;
    use onepd_domain::{EventId, Payload, Position, StreamId, Timestamp, WorkspaceId};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::profile::Trait;
    use onepd_domain::identity::Identifier;

    fn event(message: Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(7),
            event_id: EventId(Uuid::from_u128(7)),
            workspace_id: WorkspaceId(Uuid::from_u128(1)),
            stream_id: StreamId::new("source-x").unwrap(),
            stream_version: 1,
            event_type: MessageAccepted::TYPE.into(),
            schema_version: 1,
            data: Payload::Data(json!({ "message": message })),
            metadata: json!({}),
            sealed: true,
            recorded_at: Timestamp(0),
            hash: [0; 32],
        }
    }

    fn destination(filters: DestinationFilters) -> DestinationCreated {
        DestinationCreated {
            destination_id: Uuid::from_u128(9),
            name: "meta".into(),
            adapter: "meta_capi".into(),
            url: None,
            settings: json!({}),
            filters,
            traits: vec!["plan".into()],
            start: Position(1),
            retry: RetryPolicy::default(),
        }
    }

    fn description(category: Category) -> Description {
        Description {
            name: "t".into(),
            category,
            identifiers: vec![
                IdentifierSpec::new("em", IdentifierSource::Email, Normalization::Email, Hashing::Sha256),
                IdentifierSpec::new("ip", IdentifierSource::Ip, Normalization::Trim, Hashing::None),
                IdentifierSpec::new("fn", IdentifierSource::FirstName, Normalization::Name, Hashing::Sha256),
            ],
            max_batch_size: 10,
            rate_limit_per_second: None,
        }
    }

    fn order() -> Value {
        json!({
            "type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": "a1",
            "properties": {"revenue": 10, "email": "ann@example.com"},
            "context": {"ip": "203.0.113.7", "traits": {"email": "ann@example.com"}},
            "timestamp": "2026-11-29T10:00:00.000Z",
        })
    }

    fn trait_of(value: Value) -> Trait {
        Trait {
            value,
            position: Position(1),
            event_id: EventId(Uuid::from_u128(1)),
            source_id: None,
            timestamp: Timestamp(0),
        }
    }

    #[test]
    fn an_ad_platform_gets_the_profiles_identifiers_hashed_and_no_raw_identifier_in_the_message() {
        let identifiers = vec![
            Identifier::new(IdentifierKind::Email, "ann@example.com"),
            Identifier::new(IdentifierKind::Email, "ann.work@example.com"),
        ];
        let traits: BTreeMap<String, Trait> =
            [("firstName".to_owned(), trait_of(json!("Ann"))), ("plan".to_owned(), trait_of(json!("pro")))].into();
        let profile = ProfileView { id: ProfileId(Uuid::from_u128(3)), identifiers, traits: Some(&traits) };
        let created = destination(DestinationFilters::default());
        let described = description(Category::AdPlatform);
        let (prepared, notes) =
            prepare(&event(order()), Some(&profile), Target { destination: &created, description: &described })
                .unwrap();
        assert_eq!(prepared.event_id, EventId(Uuid::from_u128(7)));
        assert_eq!(
            prepared.identifiers["em"],
            vec![hashing::sha256_hex("ann@example.com"), hashing::sha256_hex("ann.work@example.com")]
        );
        assert_eq!(prepared.identifiers["fn"], vec![hashing::sha256_hex("ann")]);
        assert_eq!(prepared.identifiers["ip"], vec!["203.0.113.7".to_owned()]);
        let sent = prepared.message.to_string();
        assert!(!sent.contains("ann@example.com") && !sent.contains("u1") && !sent.contains("203.0.113.7"), "{sent}");
        assert!(prepared.traits.is_empty(), "traits never go to an ad platform");
        assert_eq!(notes.hashed.iter().map(String::as_str).collect::<Vec<_>>(), ["em", "fn"]);
        assert!(notes.scrubbed.contains("properties.email") && notes.scrubbed.contains("userId"), "{notes:?}");
    }

    #[test]
    fn an_analytics_tool_gets_the_message_whole_and_the_chosen_traits() {
        let traits: BTreeMap<String, Trait> =
            [("plan".to_owned(), trait_of(json!("pro"))), ("secret".to_owned(), trait_of(json!("x")))].into();
        let profile = ProfileView { id: ProfileId(Uuid::from_u128(3)), identifiers: vec![], traits: Some(&traits) };
        let created = destination(DestinationFilters::default());
        let described = description(Category::Analytics);
        let (prepared, notes) =
            prepare(&event(order()), Some(&profile), Target { destination: &created, description: &described })
                .unwrap();
        assert_eq!(prepared.message, order());
        assert_eq!(Value::Object(prepared.traits), json!({"plan": "pro"}));
        assert!(notes.scrubbed.is_empty());
        // Without a profile, the message's own values are used.
        assert_eq!(prepared.identifiers["em"], vec![hashing::sha256_hex("ann@example.com")]);
    }

    #[test]
    fn filters_integrations_and_consent_decide_what_is_sent() {
        let described = description(Category::AdPlatform);
        let admitted = |filters: DestinationFilters, message: Value| {
            let created = destination(filters);
            prepare(&event(message), None, Target { destination: &created, description: &described }).is_some()
        };
        assert!(admitted(DestinationFilters::default(), order()));
        let only_pages = DestinationFilters { event_types: vec!["page".into()], ..DestinationFilters::default() };
        assert!(!admitted(only_pages, order()));
        let only_signups =
            DestinationFilters { event_names: vec!["Signed Up".into()], ..DestinationFilters::default() };
        assert!(!admitted(only_signups, order()));
        let mut off = order();
        off["integrations"] = json!({"All": false});
        assert!(!admitted(DestinationFilters::default(), off.clone()));
        off["integrations"]["meta"] = json!(true);
        assert!(admitted(DestinationFilters::default(), off));
        let mut named_off = order();
        named_off["integrations"] = json!({"meta_capi": false});
        assert!(!admitted(DestinationFilters::default(), named_off));
        let marketing =
            DestinationFilters { consent_categories: vec!["marketing".into()], ..DestinationFilters::default() };
        assert!(!admitted(marketing.clone(), order()), "no consent given");
        let mut refused = order();
        refused["context"]["consent"] = json!({"categoryPreferences": {"marketing": false}});
        assert!(!admitted(marketing.clone(), refused));
        let mut granted = order();
        granted["context"]["consent"] = json!({"categoryPreferences": {"marketing": true}});
        assert!(admitted(marketing, granted));
    }
}
