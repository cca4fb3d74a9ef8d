//! `webhook`: the business's own HTTP receiver, signed.
//!
//! One batch is one request:
//!
//! ```text
//! POST {url}
//! Content-Type: application/json
//! X-Onepd-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}   (when a secret is set)
//! {settings.headers…}
//! {"batch": [{"eventId", "position", "type", "name", "timestamp", "message",
//!             "identifiers", "traits", "profileId"}],
//!  "sentAt": "2024-05-01T12:30:05.123Z"}
//! ```
//!
//! When a person is erased, the receiver gets one more request, signed the
//! same way, asking it to delete them:
//!
//! ```text
//! {"type": "delete", "requestId", "profileIds": [...],
//!  "identifiers": {"email": [...], "user_id": [...], ...}, "sentAt"}
//! ```
//!
//! A receiver verifies the signature by recomputing the HMAC over the
//! timestamp, a `.` and the raw body, comparing in constant time, and
//! refusing an old `t` (replays). `eventId` is the deduplication key: a
//! retried or replayed batch carries the same ids.
//!
//! Any 2xx delivers the batch; 408, 429 and 5xx are retried, any other
//! status refuses it. How often and how long to retry is the destination's
//! retry policy in the activation engine, not a setting of this adapter.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use onepd_domain::destination::{
    Category, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Hashing,
    IdentifierSource, IdentifierSpec, Normalization, Outcome, PreparedEvent, RenderedRequest,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::AdapterError;
use super::http;
use super::mapping;

/// The adapter's name.
pub const NAME: &str = "webhook";

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Onepd-Signature";

/// The batch size when the settings do not say.
const DEFAULT_BATCH_SIZE: u32 = 100;

/// The largest batch size a setting may ask for.
const MAX_BATCH_SIZE: u32 = 10_000;

/// The settings `onepd destination create --adapter webhook` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Where batches are POSTed.
    url: String,
    /// The HMAC key; without one, batches go unsigned.
    #[serde(default)]
    secret: Option<String>,
    /// Extra headers for every request (an `Authorization`, say).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The most events per request.
    #[serde(default = "default_batch_size")]
    batch_size: u32,
    /// The receiver's category, for the sensitive-data policy.
    #[serde(default = "default_category")]
    category: Category,
    /// The identifiers to send; by default email, phone, user and anonymous
    /// ids, unhashed.
    #[serde(default)]
    identifiers: Option<Vec<IdentifierSpec>>,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_batch_size() -> u32 {
    DEFAULT_BATCH_SIZE
}

fn default_category() -> Category {
    Category::Warehouse
}

/// The identifiers a webhook gets unless its settings say otherwise.
pub fn default_identifiers() -> Vec<IdentifierSpec> {
    vec![
        IdentifierSpec::new("email", IdentifierSource::Email, Normalization::Email, Hashing::None),
        IdentifierSpec::new("phone", IdentifierSource::Phone, Normalization::PhoneE164, Hashing::None),
        IdentifierSpec::new("user_id", IdentifierSource::UserId, Normalization::Trim, Hashing::None),
        IdentifierSpec::new("anonymous_id", IdentifierSource::AnonymousId, Normalization::Trim, Hashing::None),
    ]
}

/// The signed-webhook adapter.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    secret: Option<String>,
    headers: HeaderMap,
    description: Description,
    timeout: Duration,
}

impl Webhook {
    /// The adapter configured with `settings`: `url` is required; `secret`,
    /// `headers`, `batch_size`, `category`, `identifiers` and `timeout_ms`
    /// are optional.
    pub fn new(settings: &Value) -> Result<Webhook, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        let url = mapping::base_url(NAME, "url", &settings.url)?;
        if let Some(secret) = &settings.secret {
            mapping::required(NAME, "secret", secret)?;
        }
        if !(1..=MAX_BATCH_SIZE).contains(&settings.batch_size) {
            return Err(mapping::settings_error(
                NAME,
                format!("settings.batch_size: expected 1 to {MAX_BATCH_SIZE}, found {}", settings.batch_size),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                mapping::settings_error(NAME, format!("settings.headers: \"{name}\" is not a header name"))
            })?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| mapping::settings_error(NAME, format!("settings.headers.{name}: not a header value")))?;
            headers.insert(header, value);
        }
        let description = Description {
            name: NAME.to_owned(),
            category: settings.category,
            identifiers: settings.identifiers.unwrap_or_else(default_identifiers),
            max_batch_size: settings.batch_size,
            rate_limit_per_second: None,
        };
        description.validate().map_err(|reason| mapping::settings_error(NAME, format!("settings: {reason}")))?;
        Ok(Webhook {
            url,
            secret: settings.secret,
            headers,
            description,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }
}

impl Webhook {
    /// The request that POSTs `body` to the receiver, signed when a secret
    /// is set.
    fn request(
        &self,
        body: &Value,
        now: SystemTime,
        events: impl IntoIterator<Item = onepd_domain::EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        // Configured header values may be credentials too.
        let mut secrets: Vec<String> = headers.iter().map(|(_, value)| value.clone()).collect();
        let mut request = http::json_post(&self.url, &[], headers, body, events, Vec::new())?;
        if let Some(secret) = &self.secret {
            let unix = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            let signed = signature(secret, unix, &request.body);
            secrets.push(signed.clone());
            request.headers.push((SIGNATURE_HEADER.to_owned(), signed));
        }
        request.secrets = secrets;
        Ok(request)
    }

    /// The batch request for `events`.
    fn batch(&self, events: &[PreparedEvent], now: SystemTime) -> Result<RenderedRequest, DeliverError> {
        let batch: Vec<Value> = events
            .iter()
            .map(|event| {
                json!({
                    "eventId": event.event_id.to_string(),
                    "position": event.position.0,
                    "type": event.message_type,
                    "name": event.name,
                    "timestamp": event.timestamp,
                    "message": event.message,
                    "identifiers": event.identifiers,
                    "traits": event.traits,
                    "profileId": event.profile_id,
                })
            })
            .collect();
        let sent_at = chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.request(&json!({ "batch": batch, "sentAt": sent_at }), now, events.iter().map(|event| event.event_id))
    }
}

#[async_trait]
impl Destination for Webhook {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(self.description.clone())
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let request = self.batch(events, SystemTime::now())?;
        http::post_rendered(&request, self.timeout).await?;
        Ok(http::every(events, &Outcome::Delivered))
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        if events.is_empty() {
            return Some(Vec::new());
        }
        Some(vec![self.batch(events, SystemTime::now()).ok()?])
    }

    async fn delete(&self, deletion: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let now = SystemTime::now();
        let sent_at = chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = json!({
            "type": "delete",
            "requestId": deletion.request_id.to_string(),
            "profileIds": deletion.profile_ids,
            "identifiers": deletion.identifiers,
            "sentAt": sent_at,
        });
        http::post_rendered(&self.request(&body, now, [])?, self.timeout).await?;
        Ok(DeletionAnswer::Requested)
    }
}

/// `t={unix},v1={hex HMAC-SHA256(secret, "{unix}.{body}")}`.
pub fn signature(secret: &str, unix: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}
