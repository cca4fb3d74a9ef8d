//! The sensitive-data policy: what of one message may go to one destination.
//!
//! [`apply`] takes a Segment-spec message (`track`, `page`, `screen`,
//! `identify`, `group`, `alias`), the destination's [`Category`], the
//! workspace's [`WorkspacePolicy`], the destination's [`DestinationPolicy`]
//! and the tracking plan's [`Annotations`], and returns a [`Verdict`]: the
//! message to send with every change recorded as a [`Scrub`], or a reason to
//! withhold it. Three rules, by who receives the message:
//!
//! 1. **A restricted industry's ad platform** ([`restricted_ad_platform`]):
//!    deny by default. Only [`RESTRICTED_AD_ALLOWLIST`] and the destination's
//!    `allow_fields` survive; the page URL is reduced to its origin; a
//!    `track` whose event name is not one of [`ALLOWED_EVENT_NAMES`] is
//!    renamed through the destination's `event_names` or withheld.
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
//! ledger, and an event name or a URL may itself be PHI); a key that looks
//! like a value (an email, a number) or is longer than 64 characters is shown
//! as `<redacted>` in a field's path.

mod annotations;
mod detect;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use annotations::Annotations;
pub use detect::{classify_key, classify_value};

use crate::destination::Category;
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

/// The workspace-wide part of the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspacePolicy {
    /// The workspace's industry; every industry but general is restricted.
    pub industry: Industry,
    /// Whether a healthcare workspace's ad platforms may receive the
    /// visitor's IP address and user agent (off by default: with a health
    /// site's URL they tie a person to a condition).
    pub allow_ip_user_agent: bool,
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
}

impl DestinationPolicy {
    /// Checks that every `allow_fields` entry is a dotted path without empty
    /// segments and every `event_names` target is an allowed generic name.
    pub fn validate(&self) -> Result<(), String> {
        for (i, path) in self.allow_fields.iter().enumerate() {
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

/// What a restricted industry's ad platform receives, as dotted paths (a
/// path keeps everything under it). `context.page.url` is reduced to its
/// origin (`scheme://host[:port]`). Everything else (`userId`,
/// `anonymousId`, `traits`, `name`, `context.ip`, `context.userAgent`,
/// `context.page.path/title/referrer/search`, `context.campaign`,
/// `context.device`, `context.app`, other `properties`) is removed.
pub const RESTRICTED_AD_ALLOWLIST: &[&str] = &[
    "type",
    "event",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "channel",
    "integrations",
    "context.library",
    "context.locale",
    "context.timezone",
    "context.consent",
    "context.os",
    "context.screen",
    "context.fbc",
    "context.fbp",
    "context.clickIds",
    "context.page.url",
    "properties.value",
    "properties.revenue",
    "properties.total",
    "properties.currency",
    "properties.price",
    "properties.quantity",
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
}

impl Action {
    /// The name used in audit records (`reduced_to_origin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Removed => "removed",
            Action::ReducedToOrigin => "reduced_to_origin",
            Action::Renamed => "renamed",
        }
    }
}

/// One change made to a message, for the audit ledger. Neither field holds
/// a value from the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrub {
    /// The dotted path of the field (`properties.diagnosis`,
    /// `properties.products[].name`, `context.page.url`, `event`). A field
    /// removed from every element of an array is recorded once.
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

/// Decides what of `message` may go to a destination of `category` (see the
/// module doc for the rules).
pub fn apply(
    message: &Value,
    category: Category,
    workspace: &WorkspacePolicy,
    destination: &DestinationPolicy,
    annotations: &Annotations,
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
        remove,
        strict: restricted,
        allowed: BTreeSet::new(),
        scrubs: Vec::new(),
        recorded: BTreeSet::new(),
    };
    let mut output = message.clone();
    if restricted {
        if let Err(reason) = scrubber.rename_event(&mut output, destination) {
            return Verdict::Withhold { reason: reason.to_owned() };
        }
        scrubber.allowed = RESTRICTED_AD_ALLOWLIST
            .iter()
            .map(|path| (*path).to_owned())
            .chain(destination.allow_fields.iter().cloned())
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

/// A field's path: `raw` for matching allowlists and annotations, `shown`
/// for scrub records (keys that look like values redacted).
struct Path {
    raw: String,
    shown: String,
}

impl Path {
    fn root() -> Path {
        Path { raw: String::new(), shown: String::new() }
    }

    fn child(&self, key: &str) -> Path {
        let shown = if key.chars().count() > 64 || classify_value(key).is_some() { "<redacted>" } else { key };
        if self.raw.is_empty() {
            Path { raw: key.to_owned(), shown: shown.to_owned() }
        } else {
            Path { raw: format!("{}.{key}", self.raw), shown: format!("{}.{shown}", self.shown) }
        }
    }

    fn items(&self) -> Path {
        Path { raw: format!("{}[]", self.raw), shown: format!("{}[]", self.shown) }
    }
}

/// How much of a field an allowlist lets through.
enum Allowance {
    /// The field and everything under it.
    Whole,
    /// Only the allowlisted paths under it.
    Within,
    /// Nothing.
    None,
}

/// One message's walk: the decisions and the record of them.
struct Scrubber<'a> {
    event_name: Option<&'a str>,
    annotations: &'a Annotations,
    /// Classes removed whatever found them.
    remove: BTreeSet<Classification>,
    /// Whether any classification by annotation or value shape removes a
    /// field (an allowlisted field of a restricted ad platform).
    strict: bool,
    /// The allowlist, for a restricted ad platform.
    allowed: BTreeSet<String>,
    scrubs: Vec<Scrub>,
    /// Fields already recorded, so an array's elements are recorded once.
    recorded: BTreeSet<(String, Action)>,
}

impl Scrubber<'_> {
    fn record(&mut self, path: &Path, action: Action, reason: impl Into<String>) {
        if self.recorded.insert((path.shown.clone(), action)) {
            self.scrubs.push(Scrub { field: path.shown.clone(), action, reason: reason.into() });
        }
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
        if !is_track {
            // Only a track call is named by its event; a stray one elsewhere
            // is dropped rather than withholding the call.
            if let Some(object) = message.as_object_mut() {
                object.remove("event");
            }
            self.record(&Path::root().child("event"), Action::Removed, NOT_ALLOWLISTED);
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
        self.record(&Path::root().child("event"), Action::Renamed, "custom event name mapped to a generic name");
        Ok(())
    }

    fn allowance(&self, path: &str) -> Allowance {
        if self.allowed.contains(path) {
            Allowance::Whole
        } else if path.is_empty()
            || self.allowed.iter().any(|allowed| {
                allowed.strip_prefix(path).is_some_and(|rest| rest.starts_with('.') || rest.starts_with("[]"))
            })
        {
            Allowance::Within
        } else {
            Allowance::None
        }
    }

    /// Rule 1: keeps what the allowlist lets through and is not sensitive;
    /// returns whether `value` (at `path`, under `key`) is kept.
    fn allowlist(&mut self, value: &mut Value, path: &Path, key: &str) -> bool {
        match self.allowance(&path.raw) {
            Allowance::Whole if path.raw == "context.page.url" => match value.as_str().and_then(origin) {
                Some(reduced) => {
                    if value.as_str() != Some(reduced.as_str()) {
                        self.record(path, Action::ReducedToOrigin, "query string and path removed");
                        *value = Value::from(reduced);
                    }
                    true
                }
                None => {
                    self.record(path, Action::Removed, "not an http or https url, so no origin to keep");
                    false
                }
            },
            Allowance::Whole => self.scrub(value, path, key),
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
                    self.record(path, Action::Removed, NOT_ALLOWLISTED);
                    false
                }
            },
            Allowance::None => {
                // The classification, when there is one, says why it matters.
                let found = classifications(self.event_name, &path.raw, key, value, self.annotations);
                match found.into_iter().next() {
                    Some((_, _, why)) => self.record(path, Action::Removed, format!("{why}; {NOT_ALLOWLISTED}")),
                    None => self.record(path, Action::Removed, NOT_ALLOWLISTED),
                }
                false
            }
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
        if let Some((_, _, reason)) = removal {
            self.record(path, Action::Removed, reason);
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
            let child = path.child(&key);
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
