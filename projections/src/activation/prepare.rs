//! One event, as one destination receives it.
//!
//! [`prepare`] decides, for an accepted message and the profile it was
//! attributed to (as of that event), what the destination gets
//! ([`Prepared`]):
//!
//! 1. **Subscription.** Message types and track names the destination asks
//!    for; anything else is [`Prepared::Skipped`] (not recorded).
//! 2. **Switches and consent** ([`Prepared::Withheld`], recorded in the
//!    ledger): the message's `integrations` (Segment's semantics: the
//!    destination's name or adapter name, else `All`, else on), and the
//!    consent categories the destination needs — each granted in the
//!    message's own consent, else in the person's latest consent as of the
//!    event ([`onepd_domain::consent`]).
//!    An ad platform of a restricted industry (or what is treated as one)
//!    needs marketing consent unless the destination says otherwise
//!    ([`policy::required_consent`]).
//! 3. **Raw identifiers never leave for an ad platform** — nor, in
//!    healthcare, for an analytics or marketing tool without a business
//!    associate agreement ([`policy::treated_as`]). Its message loses
//!    `userId`, `anonymousId`, `previousId`, `traits`, `context.traits`,
//!    `context.ip`, `context.userAgent` and properties named after an
//!    identifier.
//! 4. **The sensitive-data policy** ([`onepd_domain::policy::apply`]): for a
//!    restricted industry's ad platform, deny by default (the typed
//!    allowlist, the page URL replaced by the site origin, custom event
//!    names mapped or the event withheld); classified fields removed where
//!    the destination's policy says so.
//! 5. **Identifiers.** Each identifier the adapter accepts: click ids and
//!    Meta's cookies from the *scrubbed* message (so what the policy removed
//!    is never sent by another road); emails, phones and ids from the
//!    profile as of the event (every value it held then; the message's own
//!    first); personal details from its traits; IP and user agent from the
//!    message's context. Each is checked against its documented shape
//!    ([`policy::formats`]), then normalized and hashed to the adapter's
//!    rules ([`onepd_domain::hashing::prepare`]). Without a profile, the
//!    message's own values are used. A restricted industry's ad platform
//!    gets only hashed email and phone, click ids (and IP and user agent as
//!    the healthcare rule says), the user id as a keyed hash, and the
//!    personal details the destination turned on, each with a warning.
//!    Other categories also get the destination's chosen traits.
//!
//! What was hashed, removed, reduced or renamed is returned by field name
//! with the reason (never a value) for the delivery ledger and `onepd
//! policy explain`.

use std::collections::BTreeMap;

use onepd_domain::consent;
use onepd_domain::destination::{
    AUDIENCE_MESSAGE_TYPE, AudienceChange, Category, Description, Hashing, IdentifierSource, PreparedEvent,
};
use onepd_domain::events::audience::{AudienceEntered, AudienceExited, ComputedTraitChanged};
use onepd_domain::events::destination::DestinationCreated;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::hashing;
use onepd_domain::identity::IdentifierKind;
use onepd_domain::policy::{self, Annotations, Classification, Verdict, WorkspacePolicy, WorkspaceSecrets};
use onepd_domain::{RecordedEvent, Timestamp};
use serde_json::{Map, Value};

use crate::profile::ProfileView;

/// A destination as the preparation needs it: its configuration, what its
/// adapter described, and the sensitive-data policy of its workspace.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The destination's configuration (its policy included).
    pub destination: &'a DestinationCreated,
    /// Its adapter's description.
    pub description: &'a Description,
    /// The workspace's industry and settings.
    pub workspace: &'a WorkspacePolicy,
    /// Classifications from the workspace's tracking plan.
    pub annotations: &'a Annotations,
    /// The workspace's keys for keyed hashes; `None` without a master key
    /// (user ids are then not sent to a restricted industry's ad platform).
    pub secrets: Option<&'a WorkspaceSecrets>,
}

/// What the preparation did to an event, by field name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Identifier fields sent hashed (`em`).
    pub hashed: std::collections::BTreeSet<String>,
    /// Identifier fields sent as a keyed hash (`external_id`), also in
    /// `hashed`.
    pub keyed: std::collections::BTreeSet<String>,
    /// Fields removed, reduced or renamed (`userId`, `properties.diagnosis`,
    /// `context.page.url`), each with why; names and reasons only, never
    /// values.
    pub scrubbed: BTreeMap<String, String>,
    /// What a reviewer should know about what is sent (a personal detail a
    /// destination turned on for a restricted industry's ad platform).
    pub warnings: Vec<String>,
}

/// What becomes of one event for one destination.
// Made once per event and consumed at once: boxing the common variant would
// only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Send it, in this form.
    Send(PreparedEvent, Notes),
    /// The destination's filters admit it, but it is not sent; the ledger
    /// records why.
    Withheld {
        /// `integrations`, `consent` or `policy`.
        rule: &'static str,
        /// Why, without any value from the event.
        reason: String,
    },
    /// Not for this destination: not an accepted message, an erased
    /// payload, or a type or name the destination does not subscribe to.
    Skipped,
}

/// Top-level message fields that name a person.
const IDENTIFYING_FIELDS: [&str; 4] = ["userId", "anonymousId", "previousId", "traits"];
/// `context` fields that name a person or their device.
const IDENTIFYING_CONTEXT: [&str; 3] = ["traits", "ip", "userAgent"];
/// Why an identifier is not sent to an ad platform of a restricted industry.
const WITHHELD_IP_USER_AGENT: &str = "IP address and user agent withheld for healthcare";

/// The event as `target` receives it (see the module doc).
pub fn prepare(event: &RecordedEvent, profile: Option<&ProfileView<'_>>, target: Target<'_>) -> Prepared {
    if event.event_type != MessageAccepted::TYPE {
        return Prepared::Skipped;
    }
    let Some(message) = event.data.value().and_then(|data| data.get("message")) else { return Prepared::Skipped };
    let Some(message_type) = message.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Prepared::Skipped;
    };
    let name = match message_type.as_str() {
        "track" => message.get("event"),
        _ => message.get("name"),
    }
    .and_then(Value::as_str)
    .map(str::to_owned);
    if !subscribed(&message_type, name.as_deref(), target) {
        return Prepared::Skipped;
    }
    if switched_off(message, target) {
        return Prepared::Withheld { rule: "integrations", reason: "turned off by the message's integrations".into() };
    }
    let policy = &target.destination.policy;
    let category = policy::treated_as(target.description.category, target.workspace, policy);
    // The message's own consent, else the person's latest as of it.
    if let Some(withheld) = withheld_for_consent(category, target, || consent::stated(message), profile) {
        return withheld;
    }

    let ad_platform = category == Category::AdPlatform;
    let mut notes = Notes::default();
    let mut sent = message.clone();
    if ad_platform {
        strip_identifiers(&mut sent, &mut notes.scrubbed);
    }
    let verdict = policy::apply(&sent, category, target.workspace, policy, target.annotations, target.secrets);
    let withhold_ip_user_agent = match verdict {
        Verdict::Withhold { reason } => return Prepared::Withheld { rule: "policy", reason },
        Verdict::Send { message, scrubs, withhold_ip_user_agent } => {
            sent = message;
            for scrub in scrubs {
                notes.scrubbed.entry(scrub.field).or_insert(scrub.reason);
            }
            withhold_ip_user_agent
        }
    };
    let name = match message_type.as_str() {
        "track" => sent.get("event"),
        _ => sent.get("name"),
    }
    .and_then(Value::as_str)
    .map(str::to_owned);

    let identifiers =
        prepare_identifiers(message, &sent, profile, target, category, withhold_ip_user_agent, &mut notes);
    let traits = chosen_traits(profile, target, ad_platform, &mut notes);
    // The time as the policy left it (a restricted ad platform's was
    // checked against when onepd received the event).
    let timestamp = ["timestamp", "receivedAt"]
        .iter()
        .find_map(|field| sent.get(*field).or_else(|| message.get(*field))?.as_str())
        .map_or_else(|| event.recorded_at.to_rfc3339(), str::to_owned);
    Prepared::Send(
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
    )
}

/// One entry or exit of an audience connected to the destination
/// (`AudienceEntered` / `AudienceExited` at `event`) as the destination
/// receives it: an [`AudienceChange`] message naming the audience and the
/// platform's `external_id`, with the person's identifiers prepared as for
/// any event (hashed for an ad platform, the policy's removals and the
/// restricted-industry rules applied) and their chosen traits. The
/// destination's consent categories are checked against the person's
/// latest consent. Anything else is skipped.
pub fn prepare_audience_change(
    event: &RecordedEvent,
    external_id: Option<&str>,
    profile: Option<&ProfileView<'_>>,
    target: Target<'_>,
) -> Prepared {
    let Some(data) = event.data.value() else { return Prepared::Skipped };
    let entered = match event.event_type.as_str() {
        AudienceEntered::TYPE => true,
        AudienceExited::TYPE => false,
        _ => return Prepared::Skipped,
    };
    let (Some(audience), Some(at)) = (
        data.get("audience").and_then(Value::as_str),
        data.get("at").and_then(|at| serde_json::from_value::<Timestamp>(at.clone()).ok()),
    ) else {
        return Prepared::Skipped;
    };
    let policy = &target.destination.policy;
    let category = policy::treated_as(target.description.category, target.workspace, policy);
    if let Some(withheld) = withheld_for_consent(category, target, || None, profile) {
        return withheld;
    }
    let mut notes = Notes::default();
    let nothing = Value::Object(Map::new());
    let identifiers = prepare_identifiers(&nothing, &nothing, profile, target, category, false, &mut notes);
    let traits = chosen_traits(profile, target, category == Category::AdPlatform, &mut notes);
    Prepared::Send(
        PreparedEvent {
            event_id: event.event_id,
            position: event.position,
            message_type: AUDIENCE_MESSAGE_TYPE.to_owned(),
            name: Some(audience.to_owned()),
            timestamp: at.to_rfc3339(),
            message: AudienceChange::message(entered, audience, external_id),
            identifiers,
            traits,
            profile_id: profile.map(|profile| profile.id.to_string()),
        },
        notes,
    )
}

/// A change of computed traits (`ComputedTraitChanged` at `event`) as a
/// destination that chose some of them (`--trait NAME`) receives it: an
/// `identify` whose `traits` hold the chosen traits' new values (`null`
/// when there is nothing to compute from any more), the way Segment Engage
/// sends computed traits. Its identifiers are the person's as of the
/// change, prepared as for any event; its `traits` are the destination's
/// other chosen traits beside the new values. The policy classifies each
/// value as it classifies any trait (withheld when none may be sent), and
/// the destination's consent categories are checked. Skipped for a
/// destination that chose none of them, and for an ad platform (which
/// never receives traits).
pub fn prepare_computed_change(
    event: &RecordedEvent,
    profile: Option<&ProfileView<'_>>,
    target: Target<'_>,
) -> Prepared {
    if event.event_type != ComputedTraitChanged::TYPE {
        return Prepared::Skipped;
    }
    let Some(Ok(changed)) = event.data.value().map(|data| serde_json::from_value::<ComputedTraitChanged>(data.clone()))
    else {
        return Prepared::Skipped;
    };
    let chosen: Vec<(&String, &Value)> =
        changed.values.iter().filter(|(name, _)| target.destination.traits.contains(*name)).collect();
    if chosen.is_empty() {
        return Prepared::Skipped;
    }
    let policy = &target.destination.policy;
    let category = policy::treated_as(target.description.category, target.workspace, policy);
    if category == Category::AdPlatform {
        return Prepared::Skipped;
    }
    if let Some(withheld) = withheld_for_consent(category, target, || None, profile) {
        return withheld;
    }
    let mut notes = Notes::default();
    let nothing = Value::Object(Map::new());
    let identifiers = prepare_identifiers(&nothing, &nothing, profile, target, category, false, &mut notes);
    let mut traits = chosen_traits(profile, target, false, &mut notes);
    let mut sent = Map::new();
    for (name, value) in &chosen {
        traits.remove(*name);
        if keep_trait(name, value, target, &mut notes) {
            traits.insert((*name).clone(), (*value).clone());
            sent.insert((*name).clone(), (*value).clone());
        }
    }
    if sent.is_empty() {
        // Nothing of the change may be sent.
        let names: Vec<&str> = chosen.iter().map(|(name, _)| name.as_str()).collect();
        return Prepared::Withheld {
            rule: "policy",
            reason: format!("the computed traits {names:?} are classified sensitive for this destination"),
        };
    }
    Prepared::Send(
        PreparedEvent {
            event_id: event.event_id,
            position: event.position,
            message_type: "identify".to_owned(),
            name: None,
            timestamp: changed.at.to_rfc3339(),
            message: serde_json::json!({"type": "identify", "traits": sent, "timestamp": changed.at.to_rfc3339()}),
            identifiers,
            traits,
            profile_id: profile.map(|profile| profile.id.to_string()),
        },
        notes,
    )
}

/// `Withheld` when the destination's consent categories are not all
/// granted: by `stated` (a message's own consent), else by the person's
/// latest consent.
fn withheld_for_consent(
    category: Category,
    target: Target<'_>,
    stated: impl FnOnce() -> Option<BTreeMap<String, bool>>,
    profile: Option<&ProfileView<'_>>,
) -> Option<Prepared> {
    let policy = &target.destination.policy;
    let required =
        policy::required_consent(&target.destination.filters.consent_categories, category, target.workspace, policy);
    if required.is_empty() {
        return None;
    }
    let granted = stated()
        .or_else(|| profile.and_then(|profile| profile.consent).and_then(|found| consent::categories(&found.value)));
    consent::check(&required, granted.as_ref()).err().map(|reason| Prepared::Withheld { rule: "consent", reason })
}

/// The destination's identifier fields for one event: each read from the
/// message (`sent` for click ids, what the policy left) or the profile,
/// normalized and hashed as the description asks, or withheld with a note.
fn prepare_identifiers(
    message: &Value,
    sent: &Value,
    profile: Option<&ProfileView<'_>>,
    target: Target<'_>,
    category: Category,
    withhold_ip_user_agent: bool,
    notes: &mut Notes,
) -> BTreeMap<String, Vec<String>> {
    let policy = &target.destination.policy;
    let restricted = policy::restricted_ad_platform(category, target.workspace.industry);
    let mut identifiers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for spec in &target.description.identifiers {
        // Click ids are read from what the policy left of the message.
        let read_from = if is_click_id(spec.source) { sent } else { message };
        let raw = raw_values(spec.source, read_from, profile);
        if let Some(reason) = held_back_note(spec.source, &raw, profile) {
            // Named apart from the field's other notes: the ledger keeps
            // names only, and this name says why.
            notes.scrubbed.insert(format!("identifiers.{}.held_back", spec.name), reason);
        }
        if raw.is_empty() {
            continue;
        }
        let network = matches!(spec.source, IdentifierSource::Ip | IdentifierSource::UserAgent);
        if network && withhold_ip_user_agent {
            withhold(notes, &spec.name, WITHHELD_IP_USER_AGENT);
            continue;
        }
        let keyed = restricted && spec.source == IdentifierSource::UserId;
        if restricted && !keyed {
            match restricted_use(spec.source, policy) {
                RestrictedUse::Allowed => {}
                RestrictedUse::Off => {
                    let reason = format!(
                        "off for a restricted industry's ad platform: a hash of {} is recovered by trying every \
                         value (turn on with --identifier {})",
                        spec.source.as_str().replace('_', " "),
                        spec.source.as_str()
                    );
                    withhold(notes, &spec.name, &reason);
                    continue;
                }
                RestrictedUse::TurnedOn => notes.warnings.push(format!(
                    "{} ({}) is sent to an ad platform of a restricted industry because the destination turned \
                     it on; a hash of it is recovered by trying every value",
                    spec.name,
                    spec.source.as_str()
                )),
            }
        }
        let class = class_of(spec.source);
        if policy.remove.contains(&class) {
            let reason = format!("{} removed for this destination", class.as_str());
            withhold(notes, &spec.name, &reason);
            continue;
        }
        let mut values: Vec<String> = Vec::new();
        let mut problem = None;
        for raw in raw {
            let problem_of = if restricted {
                policy::formats::restricted_identifier_problem
            } else {
                policy::formats::identifier_problem
            };
            if let Some(rule) = problem_of(spec.source, &raw) {
                problem = Some(rule);
                continue;
            }
            let value = if keyed {
                match (target.secrets, hashing::normalize(spec.normalization, &raw)) {
                    (Some(secrets), Some(normalized)) => Some(secrets.external_id(&normalized)),
                    (None, _) => {
                        problem = Some("no master key to key its hash with, so not sent to a restricted industry");
                        None
                    }
                    (_, None) => None,
                }
            } else {
                hashing::prepare(spec, &raw)
            };
            if let Some(value) = value
                && !values.contains(&value)
            {
                values.push(value);
            }
        }
        if let Some(rule) = problem {
            withhold(notes, &spec.name, &format!("withheld: {rule}"));
        }
        if !values.is_empty() {
            if keyed {
                notes.keyed.insert(spec.name.clone());
                notes.hashed.insert(spec.name.clone());
            } else if spec.hashing == Hashing::Sha256 {
                notes.hashed.insert(spec.name.clone());
            }
            identifiers.insert(spec.name.clone(), values);
        }
    }
    identifiers
}

/// The profile's traits the destination chose (none for an ad platform),
/// less those the policy removes for it.
fn chosen_traits(
    profile: Option<&ProfileView<'_>>,
    target: Target<'_>,
    ad_platform: bool,
    notes: &mut Notes,
) -> Map<String, Value> {
    let mut traits = Map::new();
    if !ad_platform && let Some(profile) = profile.and_then(|profile| profile.traits) {
        for trait_name in &target.destination.traits {
            let Some(found) = profile.get(trait_name) else { continue };
            if keep_trait(trait_name, &found.value, target, notes) {
                traits.insert(trait_name.clone(), found.value.clone());
            }
        }
    }
    traits
}

/// Whether the policy lets the trait `name` with `value` go to the
/// destination; a removal is noted.
fn keep_trait(name: &str, value: &Value, target: Target<'_>, notes: &mut Notes) -> bool {
    let path = format!("traits.{name}");
    let removed = policy::classify(None, &path, name, value, target.annotations)
        .filter(|(class, _)| target.destination.policy.remove.contains(class));
    match removed {
        Some((class, _)) => {
            notes.scrubbed.insert(path, format!("classified {} and removed for this destination", class.as_str()));
            false
        }
        None => true,
    }
}

/// Whether a restricted industry's ad platform gets an identifier.
enum RestrictedUse {
    /// Always: hashed email and phone, click ids, IP and user agent (the
    /// healthcare rule aside).
    Allowed,
    /// Only when the destination turns it on.
    Off,
    /// The destination turned it on.
    TurnedOn,
}

fn restricted_use(source: IdentifierSource, policy: &policy::DestinationPolicy) -> RestrictedUse {
    if matches!(
        source,
        IdentifierSource::Email | IdentifierSource::Phone | IdentifierSource::Ip | IdentifierSource::UserAgent
    ) || is_click_id(source)
    {
        RestrictedUse::Allowed
    } else if policy.identifiers.contains(&source) {
        RestrictedUse::TurnedOn
    } else {
        RestrictedUse::Off
    }
}

/// Click ids and Meta's cookies, read from the scrubbed message.
fn is_click_id(source: IdentifierSource) -> bool {
    matches!(
        source,
        IdentifierSource::Fbc
            | IdentifierSource::Fbp
            | IdentifierSource::Gclid
            | IdentifierSource::Ttclid
            | IdentifierSource::Wbraid
            | IdentifierSource::Gbraid
    )
}

/// What an identifier source holds, for a destination that removes
/// classes of data (`--remove identifier` leaves out emails, phones, ids and
/// names, hashed or not).
fn class_of(source: IdentifierSource) -> Classification {
    match source {
        IdentifierSource::Email
        | IdentifierSource::Phone
        | IdentifierSource::UserId
        | IdentifierSource::AnonymousId
        | IdentifierSource::FirstName
        | IdentifierSource::LastName
        | IdentifierSource::DateOfBirth => Classification::Identifier,
        IdentifierSource::City
        | IdentifierSource::State
        | IdentifierSource::PostalCode
        | IdentifierSource::Country
        | IdentifierSource::Street => Classification::Location,
        IdentifierSource::Gender => Classification::OtherSensitive,
        IdentifierSource::Ip
        | IdentifierSource::UserAgent
        | IdentifierSource::Fbc
        | IdentifierSource::Fbp
        | IdentifierSource::Gclid
        | IdentifierSource::Ttclid
        | IdentifierSource::Wbraid
        | IdentifierSource::Gbraid => Classification::Device,
    }
}

/// Notes an identifier left out.
/// Why an identifier of `source` the person gave is not sent: the profile
/// names it among those a limit kept out (held by another profile), and
/// this event does not carry it itself. Names the kind and the rule, never
/// the value.
fn held_back_note(source: IdentifierSource, raw: &[String], profile: Option<&ProfileView<'_>>) -> Option<String> {
    let kind = match source {
        IdentifierSource::Email => IdentifierKind::Email,
        IdentifierSource::Phone => IdentifierKind::Phone,
        IdentifierSource::UserId => IdentifierKind::UserId,
        IdentifierSource::AnonymousId => IdentifierKind::AnonymousId,
        _ => return None,
    };
    let held =
        profile?.held_back.iter().find(|held| held.identifier.kind == kind && !raw.contains(&held.identifier.value))?;
    let holder = match held.held_by {
        Some(holder) => format!("it belongs to profile {}", holder.0),
        None => "it was not stored".to_owned(),
    };
    Some(format!(
        "held back: a {kind} this person gave (position {}) is not in their profile, {holder} ({})",
        held.position.0, held.reason
    ))
}

fn withhold(notes: &mut Notes, name: &str, reason: &str) {
    notes.scrubbed.insert(format!("identifiers.{name}"), reason.to_owned());
}

/// Whether the destination subscribes to the message's type and name.
fn subscribed(message_type: &str, name: Option<&str>, target: Target<'_>) -> bool {
    let filters = &target.destination.filters;
    if !filters.event_types.is_empty() && !filters.event_types.iter().any(|t| t == message_type) {
        return false;
    }
    !(message_type == "track"
        && !filters.event_names.is_empty()
        && !name.is_some_and(|name| filters.event_names.iter().any(|n| n == name)))
}

/// Whether the message's `integrations` turn this destination off.
fn switched_off(message: &Value, target: Target<'_>) -> bool {
    let Some(integrations) = message.get("integrations").and_then(Value::as_object) else { return false };
    let switch =
        [target.destination.name.as_str(), target.destination.adapter.as_str(), "All"].iter().find_map(|key| {
            match integrations.get(*key) {
                Some(Value::Bool(on)) => Some(*on),
                // An object (per-destination options) means "on".
                Some(Value::Object(_)) => Some(true),
                _ => None,
            }
        });
    switch == Some(false)
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
        IdentifierSource::Wbraid => "/context/clickIds/wbraid",
        IdentifierSource::Gbraid => "/context/clickIds/gbraid",
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
fn strip_identifiers(message: &mut Value, scrubbed: &mut BTreeMap<String, String>) {
    const WHY: &str = "raw identifiers never go to an ad platform";
    let Some(object) = message.as_object_mut() else { return };
    for field in IDENTIFYING_FIELDS {
        if object.remove(field).is_some() {
            scrubbed.insert(field.to_owned(), WHY.into());
        }
    }
    if let Some(context) = object.get_mut("context").and_then(Value::as_object_mut) {
        for field in IDENTIFYING_CONTEXT {
            if context.remove(field).is_some() {
                scrubbed.insert(format!("context.{field}"), WHY.into());
            }
        }
    }
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for field in policy::IDENTIFYING_PROPERTIES {
            if properties.remove(field).is_some() {
                scrubbed.insert(format!("properties.{field}"), WHY.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::destination::{Category, Description, Hashing, IdentifierSource, IdentifierSpec, Normalization};
    use onepd_domain::events::destination::{DestinationFilters, RetryPolicy};
    use onepd_domain::events::workspace::Industry;
    use onepd_domain::identity::{Identifier, ProfileId};
    use onepd_domain::policy::{DestinationPolicy, WorkspaceSecrets};
    use onepd_domain::{EventId, Payload, Position, StreamId, Timestamp, WorkspaceId};
    use proptest::prelude::*;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::profile::Trait;

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
            policy: Default::default(),
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

    /// Prepares with the general industry and no plan.
    fn prepared(
        message: Value,
        profile: Option<&ProfileView<'_>>,
        created: &DestinationCreated,
        described: &Description,
    ) -> Prepared {
        let workspace = WorkspacePolicy::default();
        let annotations = Annotations::default();
        prepare(
            &event(message),
            profile,
            Target {
                destination: created,
                description: described,
                workspace: &workspace,
                annotations: &annotations,
                secrets: None,
            },
        )
    }

    fn sent(outcome: Prepared) -> (PreparedEvent, Notes) {
        match outcome {
            Prepared::Send(event, notes) => (event, notes),
            other => panic!("expected the event to be sent, found {other:?}"),
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
        let profile = ProfileView {
            id: ProfileId(Uuid::from_u128(3)),
            identifiers,
            traits: Some(&traits),
            consent: None,
            held_back: &[],
        };
        let created = destination(DestinationFilters::default());
        let described = description(Category::AdPlatform);
        let (prepared, notes) = sent(prepared(order(), Some(&profile), &created, &described));
        assert_eq!(prepared.event_id, EventId(Uuid::from_u128(7)));
        assert_eq!(
            prepared.identifiers["em"],
            vec![hashing::sha256_hex("ann@example.com"), hashing::sha256_hex("ann.work@example.com")]
        );
        assert_eq!(prepared.identifiers["fn"], vec![hashing::sha256_hex("ann")]);
        assert_eq!(prepared.identifiers["ip"], vec!["203.0.113.7".to_owned()]);
        let text = prepared.message.to_string();
        assert!(!text.contains("ann@example.com") && !text.contains("u1") && !text.contains("203.0.113.7"), "{text}");
        assert!(prepared.traits.is_empty(), "traits never go to an ad platform");
        assert_eq!(notes.hashed.iter().map(String::as_str).collect::<Vec<_>>(), ["em", "fn"]);
        assert!(notes.scrubbed.contains_key("properties.email") && notes.scrubbed.contains_key("userId"), "{notes:?}");
    }

    #[test]
    fn an_analytics_tool_gets_the_message_whole_and_the_chosen_traits() {
        let traits: BTreeMap<String, Trait> =
            [("plan".to_owned(), trait_of(json!("pro"))), ("secret".to_owned(), trait_of(json!("x")))].into();
        let profile = ProfileView {
            id: ProfileId(Uuid::from_u128(3)),
            identifiers: vec![],
            traits: Some(&traits),
            consent: None,
            held_back: &[],
        };
        let created = destination(DestinationFilters::default());
        let described = description(Category::Analytics);
        let (prepared, notes) = sent(prepared(order(), Some(&profile), &created, &described));
        assert_eq!(prepared.message, order());
        assert_eq!(Value::Object(prepared.traits), json!({"plan": "pro"}));
        assert!(notes.scrubbed.is_empty());
        // Without a profile, the message's own values are used.
        assert_eq!(prepared.identifiers["em"], vec![hashing::sha256_hex("ann@example.com")]);
    }

    #[test]
    fn subscriptions_skip_and_integrations_and_consent_withhold() {
        let described = description(Category::AdPlatform);
        let outcome = |filters: DestinationFilters, message: Value| {
            let created = destination(filters);
            prepared(message, None, &created, &described)
        };
        let is_sent = |outcome: &Prepared| matches!(outcome, Prepared::Send(..));
        assert!(is_sent(&outcome(DestinationFilters::default(), order())));
        let only_pages = DestinationFilters { event_types: vec!["page".into()], ..DestinationFilters::default() };
        assert_eq!(outcome(only_pages, order()), Prepared::Skipped);
        let only_signups =
            DestinationFilters { event_names: vec!["Signed Up".into()], ..DestinationFilters::default() };
        assert_eq!(outcome(only_signups, order()), Prepared::Skipped);
        let mut off = order();
        off["integrations"] = json!({"All": false});
        assert!(matches!(
            outcome(DestinationFilters::default(), off.clone()),
            Prepared::Withheld { rule: "integrations", .. }
        ));
        off["integrations"]["meta"] = json!(true);
        assert!(is_sent(&outcome(DestinationFilters::default(), off)));
        let mut named_off = order();
        named_off["integrations"] = json!({"meta_capi": false});
        assert!(!is_sent(&outcome(DestinationFilters::default(), named_off)));
        let marketing =
            DestinationFilters { consent_categories: vec!["marketing".into()], ..DestinationFilters::default() };
        assert!(matches!(outcome(marketing.clone(), order()), Prepared::Withheld { rule: "consent", .. }));
        let mut refused = order();
        refused["context"]["consent"] = json!({"categoryPreferences": {"marketing": false}});
        assert_eq!(
            outcome(marketing.clone(), refused),
            Prepared::Withheld { rule: "consent", reason: "consent \"marketing\" refused".into() }
        );
        let mut granted = order();
        granted["context"]["consent"] = json!({"categoryPreferences": {"marketing": true}});
        assert!(is_sent(&outcome(marketing, granted)));
    }

    #[test]
    fn an_event_without_consent_of_its_own_takes_the_persons_latest() {
        let described = description(Category::Analytics);
        let created = destination(DestinationFilters {
            consent_categories: vec!["marketing".into()],
            ..DestinationFilters::default()
        });
        let granted = trait_of(json!({"categoryPreferences": {"marketing": true}}));
        let profile = ProfileView {
            id: ProfileId(Uuid::from_u128(3)),
            identifiers: vec![],
            traits: None,
            consent: Some(&granted),
            held_back: &[],
        };
        assert!(matches!(prepared(order(), Some(&profile), &created, &described), Prepared::Send(..)));
        // The message's own refusal wins over the profile's grant.
        let mut refused = order();
        refused["context"]["consentManagement"] = json!({"deniedConsentIds": ["marketing"]});
        assert!(matches!(prepared(refused, Some(&profile), &created, &described), Prepared::Withheld { .. }));
    }

    #[test]
    fn healthcare_withholds_ip_and_user_agent_from_ad_platforms_unless_allowed() {
        let described = description(Category::AdPlatform);
        let created = destination(DestinationFilters::default());
        let annotations = Annotations::default();
        let mut workspace =
            WorkspacePolicy { industry: Industry::Healthcare, allow_ip_user_agent: false, site_origin: None };
        let target = |workspace: &WorkspacePolicy| {
            let target = Target {
                destination: &created,
                description: &described,
                workspace,
                annotations: &annotations,
                secrets: None,
            };
            sent(prepare(&event(consented(order())), None, target))
        };
        let (withheld, notes) = target(&workspace);
        assert!(!withheld.identifiers.contains_key("ip"), "{withheld:?}");
        assert_eq!(notes.scrubbed["identifiers.ip"], WITHHELD_IP_USER_AGENT);
        workspace.allow_ip_user_agent = true;
        let (allowed, _) = target(&workspace);
        assert_eq!(allowed.identifiers["ip"], vec!["203.0.113.7".to_owned()]);
    }

    /// `message` with marketing consent granted.
    fn consented(mut message: Value) -> Value {
        message["context"]["consent"] = json!({"categoryPreferences": {"marketing": true}});
        message
    }

    fn healthcare() -> WorkspacePolicy {
        WorkspacePolicy {
            industry: Industry::Healthcare,
            allow_ip_user_agent: false,
            site_origin: Some("https://www.northside-health.example".into()),
        }
    }

    const SECRETS: WorkspaceSecrets = WorkspaceSecrets { external_id: [7; 32], field_names: [8; 32] };

    /// Prepares `message` for `described` in `workspace` with the test keys
    /// and a profile holding `traits`.
    fn prepared_in(
        workspace: &WorkspacePolicy,
        created: &DestinationCreated,
        described: &Description,
        message: Value,
        traits: &BTreeMap<String, Trait>,
    ) -> Prepared {
        let annotations = Annotations::default();
        let profile = ProfileView {
            id: ProfileId(Uuid::from_u128(3)),
            identifiers: vec![Identifier::new(IdentifierKind::Email, "margaret@example.com")],
            traits: Some(traits),
            consent: None,
            held_back: &[],
        };
        let target = Target {
            destination: created,
            description: described,
            workspace,
            annotations: &annotations,
            secrets: Some(&SECRETS),
        };
        prepare(&event(message), Some(&profile), target)
    }

    fn patient() -> (Value, BTreeMap<String, Trait>) {
        let message = consented(json!({
            "type": "track", "event": "Order Completed", "userId": "pt-48213",
            "properties": {"value": 10, "currency": "USD"},
            "context": {
                "fbc": "078-05-1120", "fbp": "1961-04-12",
                "clickIds": {"gclid": "margaret@example.com", "ttclid": "+1 (312) 555-7734"},
            },
            "timestamp": "2026-11-29T10:00:00.000Z",
        }));
        let traits: BTreeMap<String, Trait> = [
            ("birthday".to_owned(), trait_of(json!("1961-04-12"))),
            ("gender".to_owned(), trait_of(json!("female"))),
            ("firstName".to_owned(), trait_of(json!("Margaret"))),
            ("address".to_owned(), trait_of(json!({"postalCode": "60640", "state": "IL", "country": "US"}))),
        ]
        .into();
        (message, traits)
    }

    fn every_platform() -> Description {
        let mut identifiers = onepd_domain::hashing::meta_identifiers();
        identifiers.extend(onepd_domain::hashing::google_ads_identifiers());
        identifiers
            .extend(onepd_domain::hashing::tiktok_identifiers().into_iter().filter(|spec| spec.name == "ttclid"));
        Description { identifiers, ..description(Category::AdPlatform) }
    }

    #[test]
    fn click_ids_come_from_the_scrubbed_message_and_a_malformed_one_is_withheld_by_rule() {
        let (message, traits) = patient();
        let created = destination(DestinationFilters::default());
        let (prepared, notes) = sent(prepared_in(&healthcare(), &created, &every_platform(), message, &traits));
        for name in ["fbc", "fbp", "gclid", "ttclid"] {
            assert!(!prepared.identifiers.contains_key(name), "{name}: {prepared:?}");
        }
        assert_eq!(notes.scrubbed["context.fbc"], "not fb.<subdomain index>.<creation time in ms>.<fbclid>");
        // In general industry the policy keeps click ids, and the format
        // check alone withholds what is not one.
        let (message, traits) = patient();
        let general = WorkspacePolicy::default();
        let (prepared, notes) = sent(prepared_in(&general, &created, &every_platform(), message, &traits));
        assert!(
            !prepared.identifiers.contains_key("gclid") && !prepared.identifiers.contains_key("fbp"),
            "{prepared:?}"
        );
        assert!(
            notes.scrubbed.keys().any(|field| field.starts_with("identifiers.") || field.starts_with("context.")),
            "{notes:?}"
        );
        let text = format!("{prepared:?} {notes:?}");
        for planted in ["078-05-1120", "1961-04-12", "margaret@example.com", "555-7734"] {
            assert!(!text.contains(planted), "{planted} in {text}");
        }
        // Free text that no detector classifies stays in a general
        // industry's message; the format check alone keeps it out.
        let mut words = patient().0;
        words["context"]["clickIds"]["gclid"] = json!("Type 2 diabetes");
        let (prepared, notes) = sent(prepared_in(&general, &created, &every_platform(), words, &traits));
        assert!(!prepared.identifiers.contains_key("gclid"), "{prepared:?}");
        assert!(notes.scrubbed["identifiers.gclid"].starts_with("withheld: not a click id"), "{notes:?}");
        // A well-formed click id goes through.
        let mut good = patient().0;
        good["context"]["clickIds"]["gclid"] =
            json!({"value": "Cj0KCQiA4NWrBhD-ARIsAFCKwWsQ2b8vJp3n", "capturedAt": "2026-11-29T09:00:00Z"});
        let (prepared, _) = sent(prepared_in(&healthcare(), &created, &every_platform(), good, &traits));
        assert_eq!(prepared.identifiers["gclid"], ["Cj0KCQiA4NWrBhD-ARIsAFCKwWsQ2b8vJp3n"]);
    }

    #[test]
    fn a_restricted_industrys_ad_platform_gets_hashed_email_a_keyed_user_id_and_personal_details_only_when_turned_on() {
        let (message, traits) = patient();
        let mut created = destination(DestinationFilters::default());
        let (prepared, notes) = sent(prepared_in(&healthcare(), &created, &every_platform(), message.clone(), &traits));
        assert_eq!(prepared.identifiers["em"], [hashing::sha256_hex("margaret@example.com")]);
        assert_eq!(prepared.identifiers["external_id"], [SECRETS.external_id("pt-48213")]);
        assert_ne!(prepared.identifiers["external_id"], [hashing::sha256_hex("pt-48213")]);
        assert!(notes.keyed.contains("external_id"));
        for name in ["db", "ge", "fn", "zp", "st", "country", "address_info.postal_code", "address_info.state"] {
            assert!(!prepared.identifiers.contains_key(name), "{name}: {prepared:?}");
            assert!(notes.scrubbed[&format!("identifiers.{name}")].starts_with("off for a restricted industry"));
        }
        assert!(notes.warnings.is_empty());
        created.policy.identifiers = vec![IdentifierSource::DateOfBirth];
        let (prepared, notes) = sent(prepared_in(&healthcare(), &created, &every_platform(), message.clone(), &traits));
        assert_eq!(prepared.identifiers["db"], [hashing::sha256_hex("19610412")]);
        assert!(notes.warnings.iter().any(|warning| warning.starts_with("db (date_of_birth)")), "{notes:?}");
        // The general industry keeps Meta's documented hashing of everything.
        let (prepared, _) =
            sent(prepared_in(&WorkspacePolicy::default(), &created, &every_platform(), message, &traits));
        assert_eq!(prepared.identifiers["external_id"], [hashing::sha256_hex("pt-48213")]);
        assert!(prepared.identifiers.contains_key("zp"));
    }

    #[test]
    fn in_healthcare_analytics_without_a_baa_is_scrubbed_like_an_ad_platform_and_ads_need_marketing_consent() {
        let (message, traits) = patient();
        let mut created = destination(DestinationFilters::default());
        let analytics = description(Category::Analytics);
        let (prepared, notes) = sent(prepared_in(&healthcare(), &created, &analytics, message.clone(), &traits));
        assert!(prepared.message.get("userId").is_none() && prepared.traits.is_empty(), "{prepared:?}");
        assert_eq!(notes.scrubbed["userId"], "raw identifiers never go to an ad platform");
        created.policy.baa = true;
        let (prepared, _) = sent(prepared_in(&healthcare(), &created, &analytics, message.clone(), &traits));
        assert_eq!(prepared.message, message, "a BAA-covered tool gets the message whole");
        // Ad platforms of a restricted industry need marketing consent.
        let mut refused = message.clone();
        refused["context"]["consent"] = json!({"categoryPreferences": {"marketing": false}});
        let ads = description(Category::AdPlatform);
        let created = destination(DestinationFilters::default());
        assert!(matches!(
            prepared_in(&healthcare(), &created, &ads, refused.clone(), &traits),
            Prepared::Withheld { rule: "consent", .. }
        ));
        let mut without = created.clone();
        without.policy.consent_not_required = true;
        assert!(matches!(prepared_in(&healthcare(), &without, &ads, refused, &traits), Prepared::Send(..)));
    }

    #[test]
    fn a_destination_removing_a_class_gets_no_identifier_of_it_hashed_or_not() {
        let described = description(Category::Warehouse);
        let mut created = destination(DestinationFilters::default());
        created.policy = DestinationPolicy { remove: vec![Classification::Identifier], ..DestinationPolicy::default() };
        let (prepared, notes) = sent(prepared(order(), None, &created, &described));
        assert!(!prepared.identifiers.contains_key("em") && !prepared.identifiers.contains_key("fn"), "{prepared:?}");
        assert_eq!(prepared.identifiers["ip"], vec!["203.0.113.7".to_owned()], "IP is a device id, not removed");
        assert_eq!(notes.scrubbed["identifiers.em"], "identifier removed for this destination");
        assert!(!prepared.message.to_string().contains("ann@example.com"), "{}", prepared.message);
    }

    /// Markers planted as sensitive values: no hex digits only, so a SHA-256
    /// can never contain one.
    const MARKERS: [&str; 8] = [
        "zq-diagnosis-marker",
        "zq-doctor-marker",
        "zq-note-marker",
        "zq-title-marker",
        "zq-path-marker",
        "zq-query-marker",
        "zq-event-marker",
        "zq-trait-marker",
    ];

    fn planted(event_named: bool, key: &str, card: bool) -> Value {
        let mut properties = json!({
            "diagnosis": MARKERS[0], "doctor": MARKERS[1], key: MARKERS[2],
            "value": 99, "currency": "USD",
            "nested": {"details": MARKERS[2]},
        });
        if card {
            properties["payment"] = json!("4111 1111 1111 1111");
        }
        json!({
            "type": "track",
            "event": if event_named { MARKERS[6].to_owned() } else { "Order Completed".to_owned() },
            "userId": "zq-user", "messageId": "m-1", "timestamp": "2026-11-29T10:00:00.000Z",
            "properties": properties,
            "traits": {"condition": MARKERS[7]},
            "context": {
                "traits": {"email": "zq-person@example.com", "illness": MARKERS[7]},
                "page": {
                    "url": format!("https://clinic.example.com/{}/?q={}", MARKERS[4], MARKERS[5]),
                    "title": MARKERS[3], "path": format!("/{}", MARKERS[4]),
                    "referrer": format!("https://search.example.com/?q={}", MARKERS[5]),
                    "search": format!("?q={}", MARKERS[5]),
                },
                "ip": "198.51.100.23", "userAgent": "zq-agent",
                "consent": {"categoryPreferences": {"marketing": true}},
            },
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_sensitive_value_reaches_a_restricted_industrys_ad_platform_while_analytics_gets_it(
            industry in prop::sample::select(vec![
                Industry::Healthcare, Industry::Pharmaceutical, Industry::FinancialServices,
                Industry::Insurance, Industry::Cryptocurrency,
            ]),
            event_named in any::<bool>(),
            key in prop::sample::select(vec!["note", "x1", "details", "freeform", "memo"]),
            card in any::<bool>(),
            mapped in any::<bool>(),
        ) {
            let message = planted(event_named, key, card);
            let workspace = WorkspacePolicy { industry, allow_ip_user_agent: false, site_origin: None };
            let annotations = Annotations::default();
            let mut created = destination(DestinationFilters::default());
            if mapped {
                created.policy = DestinationPolicy {
                    event_names: [(MARKERS[6].to_owned(), "Purchase".to_owned())].into(),
                    ..DestinationPolicy::default()
                };
            }
            let meta = Description {
                identifiers: onepd_domain::hashing::meta_identifiers(),
                ..description(Category::AdPlatform)
            };
            let target = Target { destination: &created, description: &meta, workspace: &workspace, annotations: &annotations, secrets: None };
            let profile_traits: BTreeMap<String, Trait> = [("condition".to_owned(), trait_of(json!(MARKERS[7])))].into();
            let profile = ProfileView {
                id: ProfileId(Uuid::from_u128(3)),
                identifiers: vec![Identifier::new(IdentifierKind::Email, "zq-person@example.com")],
                traits: Some(&profile_traits),
                consent: None,
                held_back: &[],
            };
            let outcome = prepare(&event(message.clone()), Some(&profile), target);
            let text = match &outcome {
                Prepared::Send(prepared, notes) => format!(
                    "{} {:?} {:?} {:?} {:?}",
                    prepared.message, prepared.identifiers, prepared.traits, prepared.name, notes
                ),
                Prepared::Withheld { reason, .. } => reason.clone(),
                Prepared::Skipped => String::new(),
            };
            for marker in MARKERS.iter().chain(&["zq-person", "zq-user", "4111"]) {
                prop_assert!(!text.contains(marker), "{marker} reached the ad platform: {text}");
            }
            // The IP address and user agent are withheld in healthcare only;
            // elsewhere they are the platform's matching fields, in clear.
            if industry == Industry::Healthcare {
                for marker in ["zq-agent", "198.51.100.23"] {
                    prop_assert!(!text.contains(marker), "{marker} reached a healthcare ad platform: {text}");
                }
            }
            if event_named && !mapped {
                prop_assert!(matches!(outcome, Prepared::Withheld { rule: "policy", .. }), "{outcome:?}");
            } else {
                prop_assert!(matches!(outcome, Prepared::Send(..)), "{outcome:?}");
            }

            // An analytics destination of the same workspace that a business
            // associate agreement covers gets everything (without one, in
            // healthcare, it is scrubbed like an ad platform).
            let analytics = description(Category::Analytics);
            let mut covered = created.clone();
            covered.policy.baa = true;
            let target = Target { destination: &covered, description: &analytics, workspace: &workspace, annotations: &annotations, secrets: None };
            let (whole, notes) = sent(prepare(&event(message.clone()), Some(&profile), target));
            prop_assert_eq!(&whole.message, &message);
            prop_assert!(notes.scrubbed.is_empty());
        }
    }
}
