//! The `Destination` port: what an activation adapter says about itself
//! ([`Description`]) and how it takes a batch of prepared events
//! ([`Destination::deliver`]). Built-in adapters implement it in-process;
//! `onepd.destination.v1.DestinationAdapter` is the same shape over gRPC, so
//! an adapter in another process (or language) implements it too.
//!
//! The activation engine prepares each event before an adapter sees it: it
//! picks the identifiers the adapter asks for, normalizes and hashes them as
//! the adapter's [`IdentifierSpec`]s say ([`crate::hashing`]), and, for an
//! [`Category::AdPlatform`], strips raw identifiers out of the message. An
//! adapter only maps a prepared event to its platform's request.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{EventId, Position};

/// What kind of tool a destination is. The sensitive-data policy and the
/// raw-identifier rule depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// An advertising platform (Meta, Google Ads, TikTok): identifiers leave
    /// only hashed.
    AdPlatform,
    /// Product or web analytics inside the business.
    Analytics,
    /// Email, SMS and lifecycle tools.
    MarketingAutomation,
    /// The business's own warehouse or webhook receiver.
    Warehouse,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 4] =
        [Category::AdPlatform, Category::Analytics, Category::MarketingAutomation, Category::Warehouse];

    /// The name used in events, on the CLI and in APIs (`ad_platform`).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::AdPlatform => "ad_platform",
            Category::Analytics => "analytics",
            Category::MarketingAutomation => "marketing_automation",
            Category::Warehouse => "warehouse",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Category {
    type Err = String;

    fn from_str(s: &str) -> Result<Category, String> {
        Category::ALL.into_iter().find(|category| category.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
            format!("category: expected one of {}, found \"{s}\"", names.join(", "))
        })
    }
}

/// Where the engine reads an identifier's raw value from, for one event.
///
/// Profile identifiers (`email`, `phone`, `user_id`, `anonymous_id`) come
/// from the profile as of the event (every value it holds); personal details
/// come from the profile's traits as of the event; network and click ids come
/// from the event's own `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierSource {
    /// The profile's email addresses.
    Email,
    /// The profile's phone numbers (E.164, as normalized at ingest).
    Phone,
    /// The profile's user ids (the message's own `userId` first).
    UserId,
    /// The profile's anonymous ids (the message's own `anonymousId` first).
    AnonymousId,
    /// Trait `firstName` (or `first_name`).
    FirstName,
    /// Trait `lastName` (or `last_name`).
    LastName,
    /// Trait `gender`.
    Gender,
    /// Trait `birthday` (a date).
    DateOfBirth,
    /// Trait `address.city`.
    City,
    /// Trait `address.state`.
    State,
    /// Trait `address.postalCode` (or `address.postal_code`).
    PostalCode,
    /// Trait `address.country`.
    Country,
    /// Trait `address.street`.
    Street,
    /// The event's `context.ip`.
    Ip,
    /// The event's `context.userAgent`.
    UserAgent,
    /// Meta's click cookie, `context.fbc`.
    Fbc,
    /// Meta's browser cookie, `context.fbp`.
    Fbp,
    /// Google's click id, `context.clickIds.gclid`.
    Gclid,
    /// TikTok's click id, `context.clickIds.ttclid`.
    Ttclid,
    /// Google's web-to-app click id for iOS, `context.clickIds.wbraid`.
    Wbraid,
    /// Google's app click id for iOS, `context.clickIds.gbraid`.
    Gbraid,
}

impl IdentifierSource {
    /// Every source, in declaration order.
    pub const ALL: [IdentifierSource; 21] = [
        IdentifierSource::Email,
        IdentifierSource::Phone,
        IdentifierSource::UserId,
        IdentifierSource::AnonymousId,
        IdentifierSource::FirstName,
        IdentifierSource::LastName,
        IdentifierSource::Gender,
        IdentifierSource::DateOfBirth,
        IdentifierSource::City,
        IdentifierSource::State,
        IdentifierSource::PostalCode,
        IdentifierSource::Country,
        IdentifierSource::Street,
        IdentifierSource::Ip,
        IdentifierSource::UserAgent,
        IdentifierSource::Fbc,
        IdentifierSource::Fbp,
        IdentifierSource::Gclid,
        IdentifierSource::Ttclid,
        IdentifierSource::Wbraid,
        IdentifierSource::Gbraid,
    ];

    /// The name used in events and in the adapter protocol (`date_of_birth`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierSource::Email => "email",
            IdentifierSource::Phone => "phone",
            IdentifierSource::UserId => "user_id",
            IdentifierSource::AnonymousId => "anonymous_id",
            IdentifierSource::FirstName => "first_name",
            IdentifierSource::LastName => "last_name",
            IdentifierSource::Gender => "gender",
            IdentifierSource::DateOfBirth => "date_of_birth",
            IdentifierSource::City => "city",
            IdentifierSource::State => "state",
            IdentifierSource::PostalCode => "postal_code",
            IdentifierSource::Country => "country",
            IdentifierSource::Street => "street",
            IdentifierSource::Ip => "ip",
            IdentifierSource::UserAgent => "user_agent",
            IdentifierSource::Fbc => "fbc",
            IdentifierSource::Fbp => "fbp",
            IdentifierSource::Gclid => "gclid",
            IdentifierSource::Ttclid => "ttclid",
            IdentifierSource::Wbraid => "wbraid",
            IdentifierSource::Gbraid => "gbraid",
        }
    }

    /// Whether the value names or reaches a person (email, phone, user and
    /// anonymous ids, names, date of birth, street), so that it may leave for
    /// an ad platform only hashed. Coarse location and gender are sent as each
    /// platform documents (Meta hashes them, Google Ads takes city, state,
    /// postal code and country in clear); network and device values (IP, user
    /// agent, click ids, Meta's cookies) are sent as they are, as the
    /// platforms require.
    pub fn is_personal(self) -> bool {
        matches!(
            self,
            IdentifierSource::Email
                | IdentifierSource::Phone
                | IdentifierSource::UserId
                | IdentifierSource::AnonymousId
                | IdentifierSource::FirstName
                | IdentifierSource::LastName
                | IdentifierSource::DateOfBirth
                | IdentifierSource::Street
        )
    }
}

impl std::str::FromStr for IdentifierSource {
    type Err = String;

    fn from_str(s: &str) -> Result<IdentifierSource, String> {
        IdentifierSource::ALL.into_iter().find(|source| source.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = IdentifierSource::ALL.iter().map(|c| c.as_str()).collect();
            format!("identifier source: expected one of {}, found \"{s}\"", names.join(", "))
        })
    }
}

/// How a raw identifier is put in canonical form before it is (maybe)
/// hashed. Each platform documents its own; see [`crate::hashing`]. A value
/// that is empty or only whitespace is dropped whatever the normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Sent exactly as stored.
    None,
    /// Leading and trailing whitespace removed.
    Trim,
    /// Trimmed and lowercased.
    Lowercase,
    /// An email: trimmed, lowercased.
    Email,
    /// An email as Google Ads wants it: trimmed, lowercased, and for
    /// `gmail.com` and `googlemail.com` every `.` before the `@` removed.
    EmailGoogle,
    /// A phone as digits only, country code first, no `+` and no leading
    /// zeros (Meta). The number must carry its country code (`+…` or `00…`).
    PhoneDigits,
    /// A phone in E.164 with its `+` (Google Ads, TikTok). The number must
    /// carry its country code (`+…` or `00…`).
    PhoneE164,
    /// A first or last name: lowercased, composed (NFC), punctuation and
    /// symbols removed, runs of whitespace cut to one space and trimmed
    /// (Meta's `fn` and `ln`, Google Ads' `hashed_last_name`).
    Name,
    /// A first name as Google Ads wants it (`hashed_first_name`): lowercased,
    /// composed (NFC), runs of whitespace cut to one space and trimmed;
    /// punctuation kept.
    FirstNameGoogle,
    /// `f` or `m` (from `f`, `female`, `woman`, `m`, `male`, `man`, any case).
    Gender,
    /// A date as `YYYYMMDD`, from `YYYY-MM-DD` (or an ISO 8601 date-time),
    /// `YYYY/MM/DD`, `YYYY.MM.DD` or `YYYYMMDD`; a real date from 1900 on.
    DateYyyymmdd,
    /// A city: lowercased, composed (NFC), spaces, punctuation and symbols
    /// removed.
    City,
    /// A state or province: a US state, district or territory as its
    /// two-letter code, lowercased; any other region as [`Normalization::City`].
    State,
    /// A postal code: lowercased, spaces and dashes removed; a US ZIP+4 cut
    /// to its first five digits.
    PostalCode,
    /// An ISO 3166-1 alpha-2 country code, lowercased (Meta's `country`).
    Country,
    /// An ISO 3166-1 alpha-2 country code as ISO writes it, uppercase
    /// (Google Ads' `country_code`, sent in clear).
    CountryUppercase,
}

impl Normalization {
    /// Every normalization, in declaration order.
    pub const ALL: [Normalization; 16] = [
        Normalization::None,
        Normalization::Trim,
        Normalization::Lowercase,
        Normalization::Email,
        Normalization::EmailGoogle,
        Normalization::PhoneDigits,
        Normalization::PhoneE164,
        Normalization::Name,
        Normalization::FirstNameGoogle,
        Normalization::Gender,
        Normalization::DateYyyymmdd,
        Normalization::City,
        Normalization::State,
        Normalization::PostalCode,
        Normalization::Country,
        Normalization::CountryUppercase,
    ];
}

/// How a normalized identifier is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hashing {
    /// As normalized.
    None,
    /// Lowercase hex SHA-256 of the normalized UTF-8 value; a value that is
    /// already 64 hex digits is taken as hashed and not hashed again.
    Sha256,
}

/// One identifier an adapter accepts: its field name on the platform, where
/// the engine reads it from, and how it must be normalized and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierSpec {
    /// The platform's field name (`em`, `ph`, `hashed_email`).
    pub name: String,
    /// Where the raw value comes from.
    pub source: IdentifierSource,
    /// Canonical form before hashing.
    pub normalization: Normalization,
    /// Whether it is hashed.
    pub hashing: Hashing,
}

impl IdentifierSpec {
    /// A spec for field `name` read from `source`.
    pub fn new(name: &str, source: IdentifierSource, normalization: Normalization, hashing: Hashing) -> IdentifierSpec {
        IdentifierSpec { name: name.to_owned(), source, normalization, hashing }
    }
}

/// What an adapter says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The adapter's name (`meta_capi`).
    pub name: String,
    /// What kind of tool it delivers to.
    pub category: Category,
    /// The identifiers it accepts.
    pub identifiers: Vec<IdentifierSpec>,
    /// The most events one `deliver` call may carry (at least 1).
    pub max_batch_size: u32,
    /// The most events per second it should be sent; `None` for no limit.
    pub rate_limit_per_second: Option<f64>,
}

impl Description {
    /// Checks what the engine relies on: a batch size of at least one, and
    /// for an ad platform, every personal identifier hashed (raw identifiers
    /// never leave for an ad platform).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err(format!("adapter {}: max batch size must be at least 1", self.name));
        }
        if let Some(rate) = self.rate_limit_per_second
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(format!("adapter {}: rate limit must be a positive number of events per second", self.name));
        }
        if self.category == Category::AdPlatform
            && let Some(raw) =
                self.identifiers.iter().find(|spec| spec.source.is_personal() && spec.hashing != Hashing::Sha256)
        {
            return Err(format!(
                "adapter {}: {} ({}) must be hashed with sha256: raw identifiers never leave for an ad platform",
                self.name,
                raw.name,
                raw.source.as_str()
            ));
        }
        Ok(())
    }
}

/// One event as an adapter receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedEvent {
    /// The event's id: the destination's deduplication key, the same on
    /// every attempt and every replay.
    pub event_id: EventId,
    /// Its position in the log.
    pub position: Position,
    /// The Segment message type (`track`, `page`, `identify`, …).
    pub message_type: String,
    /// A track's `event`, or a page's or screen's `name`.
    pub name: Option<String>,
    /// The event's time (RFC 3339).
    pub timestamp: String,
    /// The Segment message. For an ad platform, without raw identifiers
    /// (`userId`, `anonymousId`, `traits`, `context.traits`, and any
    /// property named after an identifier).
    pub message: Value,
    /// The adapter's identifier fields (by [`IdentifierSpec::name`]), each
    /// with every value the profile holds, normalized and hashed as asked.
    pub identifiers: BTreeMap<String, Vec<String>>,
    /// The profile's chosen traits as of the event (never for an ad
    /// platform).
    pub traits: serde_json::Map<String, Value>,
    /// The profile the event was attributed to, if any.
    pub profile_id: Option<String>,
}

/// The message type of a change of audience membership handed to a
/// destination (see [`AudienceChange`]).
pub const AUDIENCE_MESSAGE_TYPE: &str = "audience";

/// A change of one person's membership in an audience, as a destination
/// receives it: a [`PreparedEvent`] whose `message_type` is
/// [`AUDIENCE_MESSAGE_TYPE`], whose `name` is the audience's name, whose
/// `identifiers` are the person's (every value the profile holds, prepared
/// as the destination describes), and whose message is
///
/// ```json
/// {"type": "audience", "action": "entered",
///  "audience": {"name": "repeat_buyers", "external_id": "23850000000000"}}
/// ```
///
/// `action` is `entered` (add the person to the platform's list or custom
/// audience) or `exited` (remove them). `external_id` is the platform's id
/// of the list or audience the onepd audience is connected to; it is absent
/// when the connection names none, and an adapter that needs one answers
/// [`Outcome::Permanent`] naming it. The event id is the id of the
/// `AudienceEntered` / `AudienceExited` event in the log: the same on every
/// attempt and every replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudienceChange<'a> {
    /// Whether the person entered (`true`) or exited (`false`).
    pub entered: bool,
    /// The onepd audience's name.
    pub audience: &'a str,
    /// The platform's id of the connected list or audience, if given.
    pub external_id: Option<&'a str>,
}

impl<'a> AudienceChange<'a> {
    /// The change `event` carries, or `None` when it is not an audience
    /// change (or is malformed).
    pub fn of(event: &'a PreparedEvent) -> Option<AudienceChange<'a>> {
        if event.message_type != AUDIENCE_MESSAGE_TYPE {
            return None;
        }
        let entered = match event.message.get("action")?.as_str()? {
            "entered" => true,
            "exited" => false,
            _ => return None,
        };
        let audience = event.message.get("audience")?;
        Some(AudienceChange {
            entered,
            audience: audience.get("name")?.as_str()?,
            external_id: audience.get("external_id").and_then(Value::as_str).filter(|id| !id.is_empty()),
        })
    }

    /// The message of an audience change.
    pub fn message(entered: bool, audience: &str, external_id: Option<&str>) -> Value {
        let mut named = serde_json::Map::new();
        named.insert("name".into(), Value::String(audience.to_owned()));
        if let Some(id) = external_id {
            named.insert("external_id".into(), Value::String(id.to_owned()));
        }
        serde_json::json!({
            "type": AUDIENCE_MESSAGE_TYPE,
            "action": if entered { "entered" } else { "exited" },
            "audience": named,
        })
    }
}

/// What became of one event of a delivered batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The destination took it.
    Delivered,
    /// It may succeed later (timeout, 408, 429, 5xx).
    Retryable {
        /// Why it failed (status and a short summary of the response).
        reason: String,
        /// How long the destination asked to wait, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// It will never succeed as sent (another 4xx); it goes to dead-letter.
    Permanent {
        /// Why it failed.
        reason: String,
    },
}

impl Outcome {
    /// A retryable outcome with an optional wait.
    pub fn retryable(reason: impl Into<String>, retry_after: Option<Duration>) -> Outcome {
        Outcome::Retryable { reason: reason.into(), retry_after_ms: retry_after.map(|d| d.as_millis() as u64) }
    }

    /// A permanent outcome.
    pub fn permanent(reason: impl Into<String>) -> Outcome {
        Outcome::Permanent { reason: reason.into() }
    }

    /// The outcome's name (`delivered`, `retryable`, `permanent`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        }
    }
}

/// The result for one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResult {
    /// The event.
    pub event_id: EventId,
    /// What became of it.
    pub outcome: Outcome,
}

/// Why a whole `deliver` call failed; the engine decides per event from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// Nothing was taken, but it may be later (timeout, connection refused,
    /// 408, 429, 5xx for the whole request).
    #[error("retryable: {reason}")]
    Retryable {
        /// Why.
        reason: String,
        /// How long the destination asked to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// The destination refused the batch as a whole without saying which
    /// events are bad (a 4xx for the request). The engine splits the batch
    /// to find them; a single event refused this way is dead-lettered.
    #[error("batch rejected: {reason}")]
    BatchRejected {
        /// Why.
        reason: String,
    },
    /// The adapter is misconfigured or cannot start (bad settings, an
    /// unknown adapter); nothing can be delivered until that is fixed.
    #[error("adapter: {0}")]
    Adapter(String),
}

/// A destination adapter: it describes itself and delivers batches.
#[async_trait]
pub trait Destination: Send + Sync {
    /// What the adapter accepts.
    async fn describe(&self) -> Result<Description, DeliverError>;

    /// Delivers `events` (at most the described batch size) and returns one
    /// result per event, in any order; an event without a result counts as
    /// retryable.
    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError>;

    /// The requests [`Destination::deliver`] would send for `events`, built
    /// by the same code, without sending them: what `onepd policy explain`
    /// shows and what tests compare with what a platform received. Adapters
    /// in another process keep the default, `None`: what they receive is
    /// the [`PreparedEvent`] itself.
    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        let _ = events;
        None
    }

    /// Asks the destination to delete what it holds about a person who was
    /// erased. Adapters whose platform has no deletion API keep the default,
    /// [`DeletionAnswer::Unsupported`].
    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let _ = request;
        Ok(DeletionAnswer::Unsupported)
    }
}

/// One HTTP request an adapter sends, as [`Destination::render`] builds it.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    /// `POST`, usually.
    pub method: String,
    /// The full URL, query included.
    pub url: String,
    /// The request's own headers (not those the HTTP client adds).
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: Vec<u8>,
    /// The events the request carries.
    pub events: Vec<EventId>,
    /// Values in `url` and `headers` that are credentials (access tokens,
    /// API secrets, signatures), which [`RenderedRequest::redacted`] hides.
    pub secrets: Vec<String>,
}

impl RenderedRequest {
    /// The URL and headers with every credential replaced by `<redacted>`,
    /// for showing to a person or writing to a log: a query parameter whose
    /// value is a credential keeps its name; a header value keeps its words
    /// around the credential (`Bearer <redacted>`).
    pub fn redacted(&self) -> (String, Vec<(String, String)>) {
        let secret = |value: &str| {
            self.secrets.iter().any(|secret| !secret.is_empty() && (value == secret || value == url_encoded(secret)))
        };
        let url = match self.url.split_once('?') {
            Some((base, query)) => {
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((name, value)) if secret(value) => format!("{name}=<redacted>"),
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{base}?{}", pairs.join("&"))
            }
            None => self.url.clone(),
        };
        let hide = |value: &str| {
            self.secrets
                .iter()
                .filter(|secret| !secret.is_empty())
                .fold(value.to_owned(), |value, secret| value.replace(secret.as_str(), "<redacted>"))
        };
        (url, self.headers.iter().map(|(name, value)| (name.clone(), hide(value))).collect())
    }
}

impl fmt::Debug for RenderedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (url, headers) = self.redacted();
        f.debug_struct("RenderedRequest")
            .field("method", &self.method)
            .field("url", &url)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("events", &self.events)
            .finish()
    }
}

/// `text` as a URL query value encodes it (`application/x-www-form-urlencoded`).
fn url_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A person's erasure, as one destination is asked to honour it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRequest {
    /// The erasure request (the same for every destination).
    pub request_id: uuid::Uuid,
    /// The profiles erased, as onepd sent them in `PreparedEvent::profile_id`.
    pub profile_ids: Vec<String>,
    /// The person's identifiers under the adapter's names, normalized and
    /// hashed exactly as on its events (so an ad platform gets only hashes).
    pub identifiers: BTreeMap<String, Vec<String>>,
}

/// What a destination made of a deletion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionAnswer {
    /// The destination accepted the request.
    Requested,
    /// The destination has no way to delete data.
    Unsupported,
}

#[cfg(test)]
mod rendered_tests {
    use super::*;

    #[test]
    fn credentials_are_hidden_but_the_names_that_carry_them_are_not() {
        let request = RenderedRequest {
            method: "POST".into(),
            url: "https://example.com/mp/collect?measurement_id=G-1&api_secret=sec".into(),
            headers: vec![("Authorization".into(), "Bearer sec".into())],
            body: Vec::new(),
            events: Vec::new(),
            secrets: vec!["sec".into()],
        };
        let (url, headers) = request.redacted();
        assert_eq!(url, "https://example.com/mp/collect?measurement_id=G-1&api_secret=<redacted>");
        assert_eq!(headers, [("Authorization".to_owned(), "Bearer <redacted>".to_owned())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: IdentifierSource, hashing: Hashing) -> IdentifierSpec {
        IdentifierSpec::new("x", source, Normalization::None, hashing)
    }

    fn description(category: Category, identifiers: Vec<IdentifierSpec>) -> Description {
        Description { name: "t".into(), category, identifiers, max_batch_size: 10, rate_limit_per_second: None }
    }

    #[test]
    fn an_ad_platform_that_asks_for_a_raw_email_is_refused() {
        let err = description(Category::AdPlatform, vec![spec(IdentifierSource::Email, Hashing::None)])
            .validate()
            .unwrap_err();
        assert!(err.contains("must be hashed"), "{err}");
    }

    #[test]
    fn an_ad_platform_may_take_a_raw_ip_and_an_analytics_tool_a_raw_email() {
        description(Category::AdPlatform, vec![spec(IdentifierSource::Ip, Hashing::None)]).validate().unwrap();
        description(Category::Analytics, vec![spec(IdentifierSource::Email, Hashing::None)]).validate().unwrap();
    }

    #[test]
    fn a_batch_size_of_zero_is_refused() {
        let mut d = description(Category::Warehouse, vec![]);
        d.max_batch_size = 0;
        assert!(d.validate().is_err());
    }

    #[test]
    fn names_round_trip() {
        for category in Category::ALL {
            assert_eq!(category.as_str().parse::<Category>().unwrap(), category);
        }
        for source in IdentifierSource::ALL {
            assert_eq!(source.as_str().parse::<IdentifierSource>().unwrap(), source);
            assert_eq!(serde_json::to_value(source).unwrap(), source.as_str());
        }
    }
}
