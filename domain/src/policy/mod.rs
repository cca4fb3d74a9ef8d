//! The sensitive-data policy: what of one message may go to one destination.
//!
//! [`apply`] takes a Segment-spec message (`track`, `page`, `screen`,
//! `identify`, `group`, `alias`), the destination's [`Category`], the
//! workspace's [`WorkspacePolicy`], the destination's [`DestinationPolicy`]
//! and the tracking plan's [`Annotations`], and returns a [`Verdict`]: the
//! message to send with every change recorded as a [`Scrub`], or a reason to
//! withhold it. Three rules, by who receives the message:
//!
//! 1. **A restricted industry's ad platform** ([`restricted_ad_platform`];
//!    in healthcare also an analytics or marketing tool without a business
//!    associate agreement, [`treated_as`]): deny by default. Only the typed
//!    fields of [`RESTRICTED_AD_ALLOWLIST`] and the destination's
//!    `allow_fields` survive, each only with a value of its type (a number,
//!    an ISO 4217 currency, a click id of its documented shape, a value the
//!    operator enumerated); the page URL becomes the workspace's registered
//!    site origin; a `track` whose event name is not one of
//!    [`ALLOWED_EVENT_NAMES`] is renamed through the destination's
//!    `event_names` or withheld.
//! 2. **A general industry's ad platform:** every field classified as an
//!    identifier, PHI, financial or otherwise sensitive is removed.
//! 3. **Any other destination** (analytics, marketing automation, warehouse):
//!    the message goes whole, except the classes the destination lists in
//!    `remove`, which also apply on top of rules 1 and 2.
//!
//! A field is classified ([`classify`]) by the tracking plan's annotation
//! first, then by its key's name ([`classify_key`]), then by its value's
//! shape ([`classify_value`]).
//!
//! **Invariants:** pure: no I/O, no clock. A [`Scrub`]'s field and reason and
//! a withhold reason never hold a value from the message (they go to an audit
//! ledger, and an event name or a URL may itself be PHI); a key that neither
//! the Segment spec nor the tracking plan names is never written out either:
//! the path shows its class and a keyed digest instead
//! (`properties.<phi:5c1e0a92d4b7f316>`, see [`Scrub::field`]).

mod annotations;
mod detect;
pub mod formats;
mod known;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

pub use annotations::Annotations;
pub use detect::{classify_key, classify_value};
pub use known::legacy_field;

use crate::destination::{Category, IdentifierSource};
use crate::events::workspace::Industry;
use detect::Shape;

/// What kind of sensitive data a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Something a person can be found by: a name, an email, a phone
    /// number, an SSN, a record or account number, a full date.
    Identifier,
    /// Protected Health Information: a diagnosis, a medication, a provider.
    Phi,
    /// Card numbers, bank accounts, balances, income, wallet secrets.
    Financial,
    /// Text a person typed: notes, comments, searches, titles.
    FreeText,
    /// A link, which may carry any of the above in its path or query.
    Url,
    /// A device or network identifier: an IP address, an advertising id.
    Device,
    /// A place finer than a state: an address, a ZIP code, coordinates.
    Location,
    /// Age, religion, ethnicity, sexual orientation and the like.
    OtherSensitive,
}

impl Classification {
    /// Every classification, in declaration order.
    pub const ALL: [Classification; 8] = [
        Classification::Identifier,
        Classification::Phi,
        Classification::Financial,
        Classification::FreeText,
        Classification::Url,
        Classification::Device,
        Classification::Location,
        Classification::OtherSensitive,
    ];

    /// The name used in configuration and tracking plans (`free_text`).
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Identifier => "identifier",
            Classification::Phi => "phi",
            Classification::Financial => "financial",
            Classification::FreeText => "free_text",
            Classification::Url => "url",
            Classification::Device => "device",
            Classification::Location => "location",
            Classification::OtherSensitive => "other_sensitive",
        }
    }

    /// Every name, comma-separated, for error messages.
    pub(crate) fn names() -> String {
        Classification::ALL.map(Classification::as_str).join(", ")
    }

    /// The name in words, for a scrub's reason (`free text`).
    fn in_words(self) -> String {
        self.as_str().replace('_', " ")
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Classification {
    type Err = String;

    fn from_str(s: &str) -> Result<Classification, String> {
        Classification::ALL
            .into_iter()
            .find(|class| class.as_str() == s)
            .ok_or_else(|| format!("classification: expected one of {}, found \"{s}\"", Classification::names()))
    }
}

impl Industry {
    /// Whether what this industry sends to ad platforms is allowlisted
    /// rather than merely scrubbed: every industry but
    /// [`Industry::General`].
    pub fn is_restricted(self) -> bool {
        self != Industry::General
    }
}

/// Whether rule 1 (deny by default) applies: an ad platform of a
/// restricted industry.
pub fn restricted_ad_platform(category: Category, industry: Industry) -> bool {
    category == Category::AdPlatform && industry.is_restricted()
}

/// Whether a destination of `category` is treated as an ad platform: it is
/// one, or, in healthcare, it is a third-party analytics or marketing tool
/// that no business associate agreement covers (Google will not sign one
/// for GA4, for instance). The business's own warehouse or webhook never is.
pub fn treated_as(category: Category, workspace: &WorkspacePolicy, destination: &DestinationPolicy) -> Category {
    let third_party = matches!(category, Category::Analytics | Category::MarketingAutomation);
    if third_party && workspace.industry == Industry::Healthcare && !destination.baa {
        Category::AdPlatform
    } else {
        category
    }
}

/// The consent categories a destination needs: its own `--consent`, else,
/// for an ad platform (or what is treated as one) of a restricted industry,
/// [`DEFAULT_AD_CONSENT`], unless the destination says none is needed.
pub fn required_consent(
    declared: &[String],
    category: Category,
    workspace: &WorkspacePolicy,
    destination: &DestinationPolicy,
) -> Vec<String> {
    if !declared.is_empty() || destination.consent_not_required {
        return declared.to_vec();
    }
    if restricted_ad_platform(category, workspace.industry) {
        return vec![DEFAULT_AD_CONSENT.to_owned()];
    }
    Vec::new()
}

/// The consent category an ad platform of a restricted industry needs by
/// default.
pub const DEFAULT_AD_CONSENT: &str = "marketing";

/// The workspace-wide part of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspacePolicy {
    /// The workspace's industry; every industry but general is restricted.
    pub industry: Industry,
    /// Whether a healthcare workspace's ad platforms may receive the
    /// visitor's IP address and user agent (off by default: with a health
    /// site's URL they tie a person to a condition).
    pub allow_ip_user_agent: bool,
    /// The business's registered site origin (`https://www.example.com`):
    /// what a restricted industry's ad platform receives as the page URL,
    /// never the request's own host (a host can name a condition).
    pub site_origin: Option<String>,
}

/// Keys a workspace's policy uses, derived from the master key so that
/// neither is stored: one keys the hash of `external_id` for a restricted
/// industry's ad platforms (a user id like `pt-48213` is found from its
/// plain SHA-256 by trying every id), one keys the digests that stand for
/// unknown field names in the delivery ledger.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkspaceSecrets {
    /// Keys `external_id`.
    pub external_id: [u8; 32],
    /// Keys the digests of field paths.
    pub field_names: [u8; 32],
}

impl fmt::Debug for WorkspaceSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkspaceSecrets(…)")
    }
}

impl WorkspaceSecrets {
    /// Lowercase hex HMAC-SHA256 of `value` under the `external_id` key.
    pub fn external_id(&self, value: &str) -> String {
        hmac_hex(&self.external_id, value.as_bytes())
    }

    /// The first 16 hex digits of HMAC-SHA256 of `path` under the field
    /// names key: equal for equal paths of one workspace, unreadable
    /// without the key.
    pub fn field_digest(&self, path: &str) -> String {
        hmac_hex(&self.field_names, path.as_bytes())[..16].to_owned()
    }
}

fn hmac_hex(key: &[u8; 32], value: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(value);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks a site origin: `http` or `https`, a host, an optional port, and
/// nothing after; returns it lowercased without a trailing `/`.
pub fn site_origin(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    match origin(trimmed) {
        Some(found) if found.eq_ignore_ascii_case(trimmed) => Ok(found),
        _ => Err(format!(
            "site origin: expected scheme://host[:port] such as https://www.example.com, found {}",
            Value::from(text)
        )),
    }
}

/// One destination's part of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DestinationPolicy {
    /// Dotted paths a restricted industry's ad platform may receive beyond
    /// [`RESTRICTED_AD_ALLOWLIST`] (`properties.appointment_type`,
    /// `properties.products[].sku`). A field the tracking plan classifies,
    /// or whose value looks sensitive, is still removed.
    pub allow_fields: Vec<String>,
    /// Custom track event names mapped to one of [`ALLOWED_EVENT_NAMES`]
    /// (`"Appointment Booked" → "Schedule"`), for a restricted industry's ad
    /// platform, which otherwise does not receive custom events.
    pub event_names: BTreeMap<String, String>,
    /// Classes of fields removed before sending, whatever the category: how
    /// an analytics, marketing or warehouse destination is told to receive
    /// less than everything.
    pub remove: Vec<Classification>,
    /// Overrides the workspace's `allow_ip_user_agent` for this destination;
    /// `Some(false)` also withholds them for a non-healthcare industry.
    pub allow_ip_user_agent: Option<bool>,
    /// Whether a business associate agreement covers this destination. In
    /// healthcare an analytics or marketing tool without one is scrubbed as
    /// an ad platform is ([`treated_as`]).
    pub baa: bool,
    /// Personal details a restricted industry's ad platform may receive
    /// (hashed, or as the platform requires), each turned on explicitly:
    /// `first_name`, `last_name`, `gender`, `date_of_birth`, `city`,
    /// `state`, `postal_code`, `country`, `street`, `anonymous_id`. Off by
    /// default: a hash of a birth date or a ZIP code is recovered by trying
    /// every value.
    pub identifiers: Vec<IdentifierSource>,
    /// Whether an ad platform of a restricted industry may receive events
    /// without marketing consent (it needs [`DEFAULT_AD_CONSENT`] unless the
    /// destination declares its own categories or this is set).
    pub consent_not_required: bool,
}

/// One `allow_fields` entry: a path, and the values its field may take
/// (`properties.appointment_type=new|follow_up`); a path without values
/// takes numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedField {
    /// The dotted path.
    pub path: String,
    /// The values declared, or empty for numbers.
    pub values: Vec<String>,
}

impl AllowedField {
    /// Reads `PATH` or `PATH=VALUE|VALUE…`.
    pub fn parse(entry: &str) -> AllowedField {
        match entry.split_once('=') {
            Some((path, values)) => AllowedField {
                path: path.trim().to_owned(),
                values: values.split('|').map(|value| value.trim().to_owned()).collect(),
            },
            None => AllowedField { path: entry.trim().to_owned(), values: Vec::new() },
        }
    }
}

impl DestinationPolicy {
    /// Checks that every `allow_fields` entry is a dotted path without empty
    /// segments and every `event_names` target is an allowed generic name.
    pub fn validate(&self) -> Result<(), String> {
        for (i, entry) in self.allow_fields.iter().enumerate() {
            let AllowedField { path, values } = AllowedField::parse(entry);
            if values.iter().any(String::is_empty) {
                return Err(format!(
                    "allow_fields[{i}]: expected PATH or PATH=VALUE|VALUE… without empty values, found {}",
                    Value::from(entry.as_str())
                ));
            }
            let path = &path;
            let valid = !path.is_empty()
                && path.split('.').all(|segment| {
                    let name = segment.trim_end_matches("[]");
                    !name.is_empty() && !name.contains('[') && !name.contains(']')
                });
            if !valid {
                return Err(format!(
                    "allow_fields[{i}]: expected a dotted path such as properties.plan, found {}",
                    Value::from(path.as_str())
                ));
            }
        }
        for (i, source) in self.identifiers.iter().enumerate() {
            if !OPTIONAL_IDENTIFIERS.contains(source) {
                return Err(format!(
                    "identifiers[{i}]: expected one of {}, found \"{}\" (email, phone and click ids are always sent; \
                     user ids only as a keyed hash)",
                    OPTIONAL_IDENTIFIERS.map(IdentifierSource::as_str).join(", "),
                    source.as_str()
                ));
            }
        }
        for (custom, generic) in &self.event_names {
            if !ALLOWED_EVENT_NAMES.contains(&generic.as_str()) {
                return Err(format!(
                    "event_names.{}: expected one of {}, found {}",
                    Value::from(custom.as_str()),
                    ALLOWED_EVENT_NAMES.join(", "),
                    Value::from(generic.as_str())
                ));
            }
        }
        Ok(())
    }
}

/// What a field on a restricted industry's allowlist must hold; a value of
/// another type is removed, whatever it looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// One of the Segment call types.
    CallType,
    /// The track event name (decided by the event name rule).
    EventName,
    /// An RFC 3339 timestamp.
    Timestamp,
    /// `server`, `browser`, `mobile` or `client`.
    Channel,
    /// A JSON number (a string holding digits is not one: a ZIP code or a
    /// record number would pass as text) below 10,000,000 and of fewer
    /// than 8 significant digits (not a phone number, an SSN or a birth
    /// date as digits).
    Number,
    /// An active ISO 4217 code (`USD`).
    Currency,
    /// A click id or Meta cookie of its documented shape
    /// ([`formats::identifier_problem`]), as a string or as onepd.js keeps
    /// it (`{"value", "capturedAt"}`).
    ClickId(IdentifierSource),
    /// The page URL: replaced by the workspace's registered site origin.
    SiteOrigin,
}

impl FieldType {
    /// What the type is, for a removal's reason (`not a number`).
    fn expected(self) -> &'static str {
        match self {
            FieldType::CallType => "a Segment call type",
            FieldType::EventName => "an event name",
            FieldType::Timestamp => "an RFC 3339 timestamp",
            FieldType::Channel => "server, browser, mobile or client",
            FieldType::Number => "a number",
            FieldType::Currency => "an ISO 4217 currency code",
            FieldType::ClickId(_) => "a click id",
            FieldType::SiteOrigin => "a page URL",
        }
    }
}

/// What a restricted industry's ad platform receives, as dotted paths, each
/// with the type its value must have. `context.page.url` becomes the
/// workspace's registered site origin. Everything else (`userId`,
/// `anonymousId`, `messageId`, `originalTimestamp` and `sentAt` (client
/// clocks, not checked against the receipt), `traits`, `name`, `integrations`,
/// `context.ip`, `context.userAgent`, `context.page.path/title/referrer/search`,
/// `context.campaign`, `context.library`, `context.locale`,
/// `context.timezone`, other `properties`) is removed.
pub const RESTRICTED_AD_ALLOWLIST: &[(&str, FieldType)] = &[
    ("type", FieldType::CallType),
    ("event", FieldType::EventName),
    ("timestamp", FieldType::Timestamp),
    ("receivedAt", FieldType::Timestamp),
    ("channel", FieldType::Channel),
    ("context.fbc", FieldType::ClickId(IdentifierSource::Fbc)),
    ("context.fbp", FieldType::ClickId(IdentifierSource::Fbp)),
    ("context.clickIds.gclid", FieldType::ClickId(IdentifierSource::Gclid)),
    ("context.clickIds.gbraid", FieldType::ClickId(IdentifierSource::Gbraid)),
    ("context.clickIds.wbraid", FieldType::ClickId(IdentifierSource::Wbraid)),
    ("context.clickIds.ttclid", FieldType::ClickId(IdentifierSource::Ttclid)),
    // An fbclid has a gclid's alphabet.
    ("context.clickIds.fbclid", FieldType::ClickId(IdentifierSource::Gclid)),
    ("context.page.url", FieldType::SiteOrigin),
    ("properties.value", FieldType::Number),
    ("properties.revenue", FieldType::Number),
    ("properties.total", FieldType::Number),
    ("properties.price", FieldType::Number),
    ("properties.quantity", FieldType::Number),
    ("properties.currency", FieldType::Currency),
];

/// Personal details a destination may turn on for a restricted industry's
/// ad platform ([`DestinationPolicy::identifiers`]); every other identifier
/// the platform asks for is off (user ids go only as a keyed hash), except
/// hashed email and phone and the click ids.
pub const OPTIONAL_IDENTIFIERS: [IdentifierSource; 10] = [
    IdentifierSource::FirstName,
    IdentifierSource::LastName,
    IdentifierSource::Gender,
    IdentifierSource::DateOfBirth,
    IdentifierSource::City,
    IdentifierSource::State,
    IdentifierSource::PostalCode,
    IdentifierSource::Country,
    IdentifierSource::Street,
    IdentifierSource::AnonymousId,
];

/// Track event names that reveal nothing about a person beyond taking part
/// in commerce or signing up, so a restricted industry's ad platform may
/// receive them as they are: Segment's e-commerce and lifecycle spec names
/// and Meta's standard events. Product and search names stay out of the
/// list's reach: their properties (the product, the query) are not
/// allowlisted.
pub const ALLOWED_EVENT_NAMES: &[&str] = &[
    // Segment e-commerce and lifecycle.
    "Order Completed",
    "Order Refunded",
    "Order Cancelled",
    "Checkout Started",
    "Checkout Step Viewed",
    "Checkout Step Completed",
    "Payment Info Entered",
    "Cart Viewed",
    "Product Added",
    "Product Removed",
    "Product Viewed",
    "Product List Viewed",
    "Product Added to Wishlist",
    "Products Searched",
    "Promotion Viewed",
    "Promotion Clicked",
    "Coupon Applied",
    "Signed Up",
    "Signed In",
    "Signed Out",
    "Account Created",
    "Trial Started",
    // Meta standard events.
    "PageView",
    "Purchase",
    "Lead",
    "CompleteRegistration",
    "Schedule",
    "Contact",
    "SubmitApplication",
    "Subscribe",
    "StartTrial",
    "AddToCart",
    "InitiateCheckout",
    "AddPaymentInfo",
    "ViewContent",
    "Search",
    "FindLocation",
    "CustomizeProduct",
    "Donate",
    "AddToWishlist",
];

/// What found a field's classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The tracking plan's `"classification"` keyword.
    Annotation,
    /// The field's key ([`classify_key`]).
    KeyName,
    /// The field's value ([`classify_value`]).
    ValueShape,
}

impl Source {
    /// The name used in audit records (`key_name`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Annotation => "annotation",
            Source::KeyName => "key_name",
            Source::ValueShape => "value_shape",
        }
    }
}

/// What happened to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The field is gone.
    Removed,
    /// A URL kept only its `scheme://host[:port]`.
    ReducedToOrigin,
    /// The event name was replaced by a generic one.
    Renamed,
    /// The page URL was replaced by the workspace's registered site origin.
    ReplacedBySiteOrigin,
}

impl Action {
    /// The name used in audit records (`reduced_to_origin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Removed => "removed",
            Action::ReducedToOrigin => "reduced_to_origin",
            Action::Renamed => "renamed",
            Action::ReplacedBySiteOrigin => "replaced_by_site_origin",
        }
    }
}

/// One change made to a message, for the audit ledger. Neither field holds
/// a value from the message, nor a key the client chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrub {
    /// The dotted path of the field (`properties.products[].name`,
    /// `context.page.url`, `event`) when the Segment spec or the tracking
    /// plan names it; otherwise the known part of the path, then the
    /// field's class and the first 16 hex digits of a keyed HMAC of its
    /// whole path (`properties.<phi:5c1e0a92d4b7f316>`; `<phi>` alone
    /// without a master key), so that two deliveries can be compared
    /// without the key's text. A field removed from every element of an
    /// array is recorded once.
    pub field: String,
    /// What was done to it.
    pub action: Action,
    /// Why, in words (`phi by its name`, `card number by its value`).
    pub reason: String,
}

/// What may go to the destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send this message.
    Send {
        /// The message after scrubbing.
        message: Value,
        /// Every change made, in message order.
        scrubs: Vec<Scrub>,
        /// Whether the delivery must not attach the visitor's IP address
        /// and user agent (which the engine reads from the original event).
        withhold_ip_user_agent: bool,
    },
    /// Send nothing.
    Withhold {
        /// Why, in words that hold no value from the message.
        reason: String,
    },
}

/// Property names that hold an identifier: an ad platform's message never
/// carries them, whatever the industry.
pub const IDENTIFYING_PROPERTIES: [&str; 14] = [
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

/// The reason for removing a field outside a restricted allowlist.
const NOT_ALLOWLISTED: &str = "not on the allowlist of a restricted industry";

/// The classes a general industry's ad platform never receives.
const GENERAL_AD_REMOVES: [Classification; 4] =
    [Classification::Identifier, Classification::Phi, Classification::Financial, Classification::OtherSensitive];

/// Top-level fields every message has, which describe the call rather than
/// a person and are never classified (a timestamp is a date, but the
/// event's own).
const ENVELOPE: &[&str] = &[
    "type",
    "event",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "channel",
    "version",
    "integrations",
];

/// Parts of `context` that describe the SDK, app, device software, screen
/// or campaign: key names there (`context.library.name`,
/// `context.campaign.name`) name software and campaigns, not people, so
/// only annotations and value shapes apply.
const DESCRIPTIVE_CONTEXT: &[&str] = &[
    "context.library",
    "context.app",
    "context.os",
    "context.screen",
    "context.network",
    "context.campaign",
    "context.consent",
    "context.locale",
    "context.timezone",
];

/// What the tracking plan, the key's name and the value's shape say about
/// the field at `path` (a full dotted message path, `[]` for array
/// elements) under `key` in a message whose track event is `event_name`:
/// the first of annotation, key name and value shape that classifies it.
///
/// Envelope fields (`type`, `event`, `messageId`, the timestamps,
/// `channel`, `integrations`) are never classified. Key names do not apply
/// to the top-level `name` (a page's or screen's name) nor within the
/// descriptive parts of `context` (`library`, `app`, `os`, `campaign`, …).
/// A key named as an age whose value is over 89 is an identifier (Safe
/// Harbor). Only strings and numbers have a shape.
pub fn classify(
    event_name: Option<&str>,
    path: &str,
    key: &str,
    value: &Value,
    annotations: &Annotations,
) -> Option<(Classification, Source)> {
    classifications(event_name, path, key, value, annotations)
        .into_iter()
        .next()
        .map(|(class, source, _)| (class, source))
}

/// Every classification of a field, in [`classify`]'s order, with the
/// reason a scrub would give.
fn classifications(
    event_name: Option<&str>,
    path: &str,
    key: &str,
    value: &Value,
    annotations: &Annotations,
) -> Vec<(Classification, Source, String)> {
    let mut found = Vec::new();
    let top = path.split(['.', '[']).next().unwrap_or_default();
    if path.is_empty() || ENVELOPE.contains(&top) {
        return found;
    }
    if let Some(class) = annotations.of(event_name, path) {
        found.push((class, Source::Annotation, format!("classified {} by the tracking plan", class.in_words())));
    }
    let descriptive = path == "name"
        || DESCRIPTIVE_CONTEXT.iter().any(|prefix| {
            path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
    if !descriptive && let Some(mut class) = classify_key(key) {
        if class == Classification::OtherSensitive && is_over_89(key, value) {
            class = Classification::Identifier;
        }
        found.push((class, Source::KeyName, format!("{} by its name", class.in_words())));
    }
    let shape = match value {
        Value::String(text) => Shape::of_str(text),
        Value::Number(number) => Shape::of_number(number),
        _ => None,
    };
    if let Some(shape) = shape {
        found.push((shape.classification(), Source::ValueShape, format!("{} by its value", shape.describe())));
    }
    found
}

/// Whether `key` names an age and `value` is one over 89.
fn is_over_89(key: &str, value: &Value) -> bool {
    let age = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    detect::words(key).last().is_some_and(|word| word == "age") && age.is_some_and(|age| age > 89.0)
}

/// Decides what of `message` may go to a destination of `category` (the
/// category it is treated as, [`treated_as`]; see the module doc for the
/// rules). `secrets` key the digests that stand for unknown field names in
/// scrub records.
pub fn apply(
    message: &Value,
    category: Category,
    workspace: &WorkspacePolicy,
    destination: &DestinationPolicy,
    annotations: &Annotations,
    secrets: Option<&WorkspaceSecrets>,
) -> Verdict {
    if !message.is_object() {
        return Verdict::Withhold { reason: "message is not a json object".to_owned() };
    }
    let restricted = restricted_ad_platform(category, workspace.industry);
    let event_name = match message.get("type").and_then(Value::as_str) {
        Some("track") => message.get("event").and_then(Value::as_str),
        _ => None,
    };
    let mut remove: BTreeSet<Classification> = destination.remove.iter().copied().collect();
    if category == Category::AdPlatform && !restricted {
        remove.extend(GENERAL_AD_REMOVES);
    }
    let mut scrubber = Scrubber {
        event_name,
        annotations,
        secrets,
        site_origin: workspace.site_origin.as_deref(),
        remove,
        strict: restricted,
        allowed: BTreeMap::new(),
        scrubs: Vec::new(),
        recorded: BTreeSet::new(),
    };
    let mut output = message.clone();
    if restricted {
        if let Some(reason) = implausible_time(message) {
            return Verdict::Withhold { reason: reason.to_owned() };
        }
        if let Err(reason) = scrubber.rename_event(&mut output, destination) {
            return Verdict::Withhold { reason: reason.to_owned() };
        }
        scrubber.allowed = RESTRICTED_AD_ALLOWLIST
            .iter()
            .map(|(path, ty)| ((*path).to_owned(), Expect::Type(*ty)))
            .chain(destination.allow_fields.iter().map(|entry| {
                let AllowedField { path, values } = AllowedField::parse(entry);
                let expect = if values.is_empty() { Expect::Type(FieldType::Number) } else { Expect::Values(values) };
                (path, expect)
            }))
            .collect();
        scrubber.allowlist(&mut output, &Path::root(), "");
    } else if !scrubber.remove.is_empty() {
        scrubber.scrub(&mut output, &Path::root(), "");
    }
    let allow_ip_user_agent = destination.allow_ip_user_agent.unwrap_or(
        category != Category::AdPlatform || workspace.industry != Industry::Healthcare || workspace.allow_ip_user_agent,
    );
    Verdict::Send { message: output, scrubs: scrubber.scrubs, withhold_ip_user_agent: !allow_ip_user_agent }
}

/// Whether a number on a restricted allowlist reads as an identifier
/// rather than an amount or a count: 10,000,000 or more (`13125557734`,
/// `19610412`), or written with 8 or more significant digits
/// (`3125557734.5`, `0.0019610412`, `78051120.5`).
fn reads_as_identifier(number: &serde_json::Number) -> bool {
    if number.as_f64().is_some_and(|n| n.abs() >= 10_000_000.0) {
        return true;
    }
    let text = number.to_string();
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0');
    let significant = if mantissa.contains('.') { significant.trim_end_matches('0') } else { significant };
    significant.len() >= 8
}

/// The most an event's own time may be from when onepd received it, for a
/// restricted industry's ad platform (Google Ads takes conversions up to 90
/// days after the click; Meta and TikTok less): a time further away is
/// more likely a date planted in the field (a birth date) than the event's.
pub const MAX_EVENT_TIME_SKEW_DAYS: i64 = 90;

/// Why a restricted industry's ad platform may not take the message's
/// time: its `timestamp` (else `originalTimestamp`) is more than
/// [`MAX_EVENT_TIME_SKEW_DAYS`] from its `receivedAt`.
fn implausible_time(message: &Value) -> Option<&'static str> {
    let time = |field: &str| {
        message.get(field).and_then(Value::as_str).and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
    };
    let received = time("receivedAt")?;
    let at = time("timestamp").or_else(|| time("originalTimestamp"))?;
    let skew = (at - received).num_days().abs();
    (skew > MAX_EVENT_TIME_SKEW_DAYS).then_some("event time more than 90 days from when onepd received it")
}

/// Reduces a URL to `scheme://host[:port]`, lowercase, without user info;
/// `None` unless it is an `http` or `https` URL with a plausible host.
fn origin(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let plausible = |c: char| c.is_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_');
    (!host.is_empty() && host_port.chars().all(plausible)).then(|| format!("{scheme}://{}", host_port.to_lowercase()))
}

/// A field's path: `raw` for matching allowlists and annotations; `shown`,
/// the part of it onepd or the plan knows by name, for scrub records;
/// whether all of it is known.
#[derive(Debug, Clone)]
struct Path {
    raw: String,
    shown: String,
    known: bool,
}

impl Path {
    fn root() -> Path {
        Path { raw: String::new(), shown: String::new(), known: true }
    }

    fn child(&self, key: &str, event_name: Option<&str>, annotations: &Annotations) -> Path {
        let raw = if self.raw.is_empty() { key.to_owned() } else { format!("{}.{key}", self.raw) };
        let known = self.known && (known::is_spec_path(&raw) || annotations.declares(event_name, &raw));
        let shown = if known { raw.clone() } else { self.shown.clone() };
        Path { raw, shown, known }
    }

    fn items(&self) -> Path {
        let raw = format!("{}[]", self.raw);
        let shown = if self.known { raw.clone() } else { self.shown.clone() };
        Path { raw, shown, known: self.known }
    }
}

/// What an allowlisted field must hold.
#[derive(Debug, Clone)]
enum Expect {
    Type(FieldType),
    /// One of the values the operator declared.
    Values(Vec<String>),
}

/// How much of a field an allowlist lets through.
enum Allowance {
    /// The field, if its value has the type.
    Whole(Expect),
    /// Only the allowlisted paths under it.
    Within,
    /// Nothing.
    None,
}

/// One message's walk: the decisions and the record of them.
struct Scrubber<'a> {
    event_name: Option<&'a str>,
    annotations: &'a Annotations,
    secrets: Option<&'a WorkspaceSecrets>,
    site_origin: Option<&'a str>,
    /// Classes removed whatever found them.
    remove: BTreeSet<Classification>,
    /// Whether any classification by annotation or value shape removes a
    /// field (an allowlisted field of a restricted ad platform).
    strict: bool,
    /// The allowlist, for a restricted ad platform.
    allowed: BTreeMap<String, Expect>,
    scrubs: Vec<Scrub>,
    /// Fields already recorded, so an array's elements are recorded once.
    recorded: BTreeSet<(String, Action)>,
}

impl Scrubber<'_> {
    fn child(&self, path: &Path, key: &str) -> Path {
        let mut child = path.child(key, self.event_name, self.annotations);
        // A path the operator allowed by name is one onepd was told.
        if path.known && !child.known && self.allowed.contains_key(&child.raw) {
            child.known = true;
            child.shown = child.raw.clone();
        }
        child
    }

    /// How a scrub record names the field at `path`: its path when known,
    /// else the known part, its class and a keyed digest.
    fn name_of(&self, path: &Path, class: Option<Classification>) -> String {
        if path.known {
            return path.shown.clone();
        }
        let class = class.map_or("unclassified", Classification::as_str);
        let hidden = match self.secrets {
            Some(secrets) => format!("<{class}:{}>", secrets.field_digest(&path.raw)),
            None => format!("<{class}>"),
        };
        if path.shown.is_empty() { hidden } else { format!("{}.{hidden}", path.shown) }
    }

    fn record(&mut self, path: &Path, class: Option<Classification>, action: Action, reason: impl Into<String>) {
        let field = self.name_of(path, class);
        if self.recorded.insert((field.clone(), action)) {
            self.scrubs.push(Scrub { field, action, reason: reason.into() });
        }
    }

    /// The first classification of the field, for naming it in a record.
    fn class_of(&self, path: &Path, key: &str, value: &Value) -> Option<Classification> {
        if path.known {
            return None;
        }
        classify(self.event_name, &path.raw, key, value, self.annotations).map(|(class, _)| class)
    }

    /// Keeps a generic track event name, maps a custom one, or gives the
    /// reason to withhold the message; removes a custom `event` from any
    /// other call.
    fn rename_event(&mut self, message: &mut Value, destination: &DestinationPolicy) -> Result<(), &'static str> {
        let is_track = message.get("type").and_then(Value::as_str) == Some("track");
        let Some(event) = message.get_mut("event") else {
            return if is_track { Err("track call without an event name") } else { Ok(()) };
        };
        let name = event.as_str().filter(|name| ALLOWED_EVENT_NAMES.contains(name));
        if name.is_some() {
            return Ok(());
        }
        let event_path = Path::root().child("event", None, self.annotations);
        if !is_track {
            // Only a track call is named by its event; a stray one elsewhere
            // is dropped rather than withholding the call.
            if let Some(object) = message.as_object_mut() {
                object.remove("event");
            }
            self.record(&event_path, None, Action::Removed, NOT_ALLOWLISTED);
            return Ok(());
        }
        let Some(name) = event.as_str() else {
            return Err("event name is not a string");
        };
        let generic =
            destination.event_names.get(name).ok_or("custom event name is not mapped to an allowed generic name")?;
        if !ALLOWED_EVENT_NAMES.contains(&generic.as_str()) {
            return Err("custom event name is mapped to a name that is not an allowed generic name");
        }
        *event = Value::from(generic.as_str());
        self.record(&event_path, None, Action::Renamed, "custom event name mapped to a generic name");
        Ok(())
    }

    fn allowance(&self, path: &str) -> Allowance {
        if let Some(expect) = self.allowed.get(path) {
            Allowance::Whole(expect.clone())
        } else if path.is_empty()
            || self.allowed.keys().any(|allowed| {
                allowed.strip_prefix(path).is_some_and(|rest| rest.starts_with('.') || rest.starts_with("[]"))
            })
        {
            Allowance::Within
        } else {
            Allowance::None
        }
    }

    /// Rule 1: keeps what the allowlist lets through, has its type and is
    /// not sensitive; returns whether `value` (at `path`, under `key`) is
    /// kept.
    fn allowlist(&mut self, value: &mut Value, path: &Path, key: &str) -> bool {
        match self.allowance(&path.raw) {
            Allowance::Whole(expect) => self.typed(value, path, key, &expect),
            Allowance::Within => match value {
                Value::Object(object) => {
                    self.retain(object, path, Scrubber::allowlist);
                    true
                }
                Value::Array(items) => {
                    let items_path = path.items();
                    items.retain_mut(|item| self.allowlist(item, &items_path, key));
                    true
                }
                _ => {
                    let class = self.class_of(path, key, value);
                    self.record(path, class, Action::Removed, NOT_ALLOWLISTED);
                    false
                }
            },
            Allowance::None => {
                // The classification, when there is one, says why it matters.
                let found = classifications(self.event_name, &path.raw, key, value, self.annotations);
                let first = found.into_iter().next();
                let class = first.as_ref().map(|(class, _, _)| *class);
                match first {
                    Some((_, _, why)) => self.record(path, class, Action::Removed, format!("{why}; {NOT_ALLOWLISTED}")),
                    None => self.record(path, class, Action::Removed, NOT_ALLOWLISTED),
                }
                false
            }
        }
    }

    /// An allowlisted field: kept when its value has the type expected (an
    /// array when each element has it), and then only if nothing classifies
    /// it; returns whether it is kept.
    fn typed(&mut self, value: &mut Value, path: &Path, key: &str, expect: &Expect) -> bool {
        if let Value::Array(items) = value
            && !matches!(expect, Expect::Type(FieldType::ClickId(_)))
        {
            let items_path = path.items();
            items.retain_mut(|item| self.typed(item, &items_path, key, expect));
            return true;
        }
        let problem: Option<String> = match expect {
            Expect::Type(FieldType::SiteOrigin) => return self.site_origin(value, path),
            Expect::Type(FieldType::ClickId(source)) => return self.click_id(value, path, *source),
            Expect::Type(FieldType::Number) => match value {
                Value::Number(number) if reads_as_identifier(number) => Some(
                    "a number of 10,000,000 or more, or of 8 or more significant digits, which reads as an \
                     identifier (a phone number, an SSN, a date), not an amount"
                        .to_owned(),
                ),
                Value::Number(_) => None,
                _ => Some("not a number".to_owned()),
            },
            Expect::Type(ty) => {
                let fits = value.as_str().is_some_and(|text| match ty {
                    FieldType::CallType => ["track", "page", "screen", "identify", "group", "alias"].contains(&text),
                    FieldType::EventName => true,
                    FieldType::Timestamp => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                    FieldType::Channel => ["server", "browser", "mobile", "client"].contains(&text),
                    FieldType::Currency => formats::is_currency(text),
                    _ => false,
                });
                (!fits).then(|| format!("not {}", ty.expected()))
            }
            Expect::Values(values) => {
                let fits = value.as_str().is_some_and(|text| values.iter().any(|declared| declared == text));
                (!fits).then(|| "not one of the values declared for it".to_owned())
            }
        };
        if let Some(problem) = problem {
            let class = self.class_of(path, key, value);
            self.record(path, class, Action::Removed, problem);
            return false;
        }
        self.scrub(value, path, key)
    }

    /// The page URL: the workspace's registered site origin, or nothing.
    fn site_origin(&mut self, value: &mut Value, path: &Path) -> bool {
        match self.site_origin {
            Some(site) => {
                if value.as_str() != Some(site) {
                    self.record(
                        path,
                        None,
                        Action::ReplacedBySiteOrigin,
                        "replaced by the workspace's registered site origin",
                    );
                    *value = Value::from(site);
                }
                true
            }
            None => {
                self.record(
                    path,
                    None,
                    Action::Removed,
                    "no site origin registered for the workspace (onepd policy set --site-origin)",
                );
                false
            }
        }
    }

    /// A click id: a string of its documented shape, or onepd.js's
    /// `{"value", "capturedAt"}` with such a value.
    fn click_id(&mut self, value: &mut Value, path: &Path, source: IdentifierSource) -> bool {
        let problem = match value {
            Value::String(text) => formats::restricted_identifier_problem(source, text),
            Value::Object(object) => {
                let mut problem = None;
                object.retain(|key, inner| match key.as_str() {
                    "value" => match inner.as_str() {
                        Some(text) => {
                            problem = formats::restricted_identifier_problem(source, text);
                            true
                        }
                        None => {
                            problem = Some("not a click id");
                            true
                        }
                    },
                    "capturedAt" => inner.as_str().is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()),
                    _ => false,
                });
                if !object.contains_key("value") {
                    problem = Some("not a click id");
                }
                problem
            }
            _ => Some("not a click id"),
        };
        match problem {
            Some(rule) => {
                self.record(path, None, Action::Removed, rule);
                false
            }
            None => true,
        }
    }

    /// Rules 2 and 3 (and the fields rule 1 keeps): removes `value` if it
    /// is classified as something to remove, else scrubs what is under it;
    /// returns whether it is kept.
    fn scrub(&mut self, value: &mut Value, path: &Path, key: &str) -> bool {
        let found = classifications(self.event_name, &path.raw, key, value, self.annotations);
        let removal = found
            .into_iter()
            .find(|(class, source, _)| self.remove.contains(class) || (self.strict && *source != Source::KeyName));
        if let Some((class, _, reason)) = removal {
            self.record(path, Some(class), Action::Removed, reason);
            return false;
        }
        match value {
            Value::Object(object) => self.retain(object, path, Scrubber::scrub),
            Value::Array(items) => {
                let items_path = path.items();
                items.retain_mut(|item| self.scrub(item, &items_path, key));
            }
            _ => {}
        }
        true
    }

    /// Keeps the entries of `object` (at `path`) for which `keep` says so.
    fn retain(
        &mut self,
        object: &mut Map<String, Value>,
        path: &Path,
        keep: fn(&mut Self, &mut Value, &Path, &str) -> bool,
    ) {
        let keys: Vec<String> = object.keys().cloned().collect();
        for key in keys {
            let child = self.child(path, &key);
            if let Some(value) = object.get_mut(&key)
                && !keep(self, value, &child, &key)
            {
                object.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
