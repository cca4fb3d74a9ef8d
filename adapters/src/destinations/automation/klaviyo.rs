//! `klaviyo`: Klaviyo events, profiles and list subscriptions.
//!
//! Every request carries `Authorization: Klaviyo-API-Key {api_key}`, the
//! dated `revision` header (`settings.revision`, by default `2024-10-15`)
//! and JSON:API content types (`application/vnd.api+json`):
//!
//! ```text
//! POST {endpoint}/api/events/                   a track, one request each
//! {"data": {"type": "event", "attributes": {
//!    "properties": {...}, "time", "value"?, "unique_id": "{event id}",
//!    "metric": {"data": {"type": "metric", "attributes": {"name": "Order Completed"}}},
//!    "profile": {"data": {"type": "profile", "attributes": {"email", "phone_number", "external_id"}}}}}}
//!
//! POST {endpoint}/api/profile-import/           an identify: create or update the profile
//! {"data": {"type": "profile", "attributes": {"email", "phone_number", "external_id",
//!    "first_name", "last_name", "properties": {other traits}}}}
//!
//! POST {endpoint}/api/profile-subscription-bulk-create-jobs/   audience entries, per list
//! {"data": {"type": "profile-subscription-bulk-create-job", "attributes": {"profiles": {"data": [
//!    {"type": "profile", "attributes": {"email", "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
//!  "relationships": {"list": {"data": {"type": "list", "id": "{list id}"}}}}}
//!
//! POST {endpoint}/api/profile-subscription-bulk-delete-jobs/   audience exits, per list (same shape, no subscriptions)
//! ```
//!
//! References: <https://developers.klaviyo.com/en/reference/create_event>,
//! <https://developers.klaviyo.com/en/reference/create_or_update_profile>,
//! <https://developers.klaviyo.com/en/reference/bulk_subscribe_profiles>,
//! <https://developers.klaviyo.com/en/reference/bulk_unsubscribe_profiles>,
//! <https://developers.klaviyo.com/en/reference/request_profile_deletion>,
//! rate limits and errors: <https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling>.
//!
//! - `unique_id` is onepd's event id, Klaviyo's deduplication key; `value`
//!   is the Segment e-commerce `revenue` / `total` / `value`.
//! - Audience membership is list subscription: the connected audience's
//!   external id is the Klaviyo list id. An entry **subscribes the email to
//!   email marketing** on that list (Klaviyo's only bulk way to put an
//!   email on a list without a Klaviyo profile id); require consent first
//!   with the destination's `--consent marketing` filter. An exit
//!   unsubscribes it from the list. A change without a list id or an email
//!   is refused (permanent).
//! - Page, screen, group and alias messages are answered delivered without
//!   being sent: Klaviyo keeps events and profiles.
//! - Erasure: a data privacy deletion job per email.
//!
//! Klaviyo answers 429 with `Retry-After` (retried after that wait) and
//! 401 / 403 for a refused key (the batch is refused, naming the key).

use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::destination::{
    AudienceChange, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Outcome,
    PreparedEvent, RenderedRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::lifecycle::{self, Lists, Outcomes};
use crate::destinations::mapping::{self, json_number};
use crate::destinations::{AdapterError, http};

/// The adapter's name.
pub const NAME: &str = "klaviyo";

/// The most events one batch carries (and profiles one subscription job).
pub const MAX_BATCH_SIZE: u32 = 100;

/// The settings `onepd destination create --adapter klaviyo` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A private API key.
    api_key: String,
    /// The API's base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// The API revision (the `revision` header).
    #[serde(default = "default_revision")]
    revision: String,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://a.klaviyo.com".to_owned()
}

fn default_revision() -> String {
    "2024-10-15".to_owned()
}

/// The Klaviyo adapter.
#[derive(Debug, Clone)]
pub struct Klaviyo {
    endpoint: String,
    api_key: String,
    revision: String,
    timeout: Duration,
}

impl Klaviyo {
    /// The adapter configured with `settings`: `api_key` is required;
    /// `endpoint`, `revision` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<Klaviyo, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "api_key", &settings.api_key)?;
        mapping::required(NAME, "revision", &settings.revision)?;
        Ok(Klaviyo {
            endpoint: mapping::base_url(NAME, "endpoint", &settings.endpoint)?,
            api_key: settings.api_key,
            revision: settings.revision.trim().to_owned(),
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    /// A JSON:API `POST` to `path`.
    fn post(
        &self,
        path: &str,
        body: &Value,
        events: impl IntoIterator<Item = onepd_domain::EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let headers = vec![
            ("Authorization".to_owned(), format!("Klaviyo-API-Key {}", self.api_key)),
            ("revision".to_owned(), self.revision.clone()),
            ("Accept".to_owned(), "application/vnd.api+json".to_owned()),
        ];
        let url = format!("{}{path}", self.endpoint);
        let mut request = http::json_post(&url, &[], headers, body, events, vec![self.api_key.clone()])?;
        request.headers[0].1 = "application/vnd.api+json".to_owned();
        Ok(request)
    }

    /// The results known without sending and the requests, in order.
    fn build(&self, events: &[PreparedEvent]) -> Result<(Vec<EventResult>, Vec<RenderedRequest>), DeliverError> {
        let mut known = Vec::new();
        let mut requests = Vec::new();
        let mut lists = Lists::default();
        for event in events {
            let refuse = |reason: String| EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) };
            if let Some(change) = AudienceChange::of(event) {
                let Some(list) = change.external_id else {
                    known.push(refuse(format!(
                        "audience {:?} is connected without a Klaviyo list id: connect it with --external-id LIST_ID",
                        change.audience
                    )));
                    continue;
                };
                let Some(email) = lifecycle::first(event, "email") else {
                    known.push(refuse("Klaviyo list subscriptions need an email: the person has none".to_owned()));
                    continue;
                };
                lists.change(list, email, change.entered, event.event_id);
                continue;
            }
            match event.message_type.as_str() {
                "track" => match self.event_body(event) {
                    Ok(body) => requests.push(self.post("/api/events/", &body, [event.event_id])?),
                    Err(reason) => known.push(refuse(reason)),
                },
                "identify" => match profile_attributes(event) {
                    Some(attributes) => {
                        let body = json!({"data": {"type": "profile", "attributes": attributes}});
                        requests.push(self.post("/api/profile-import/", &body, [event.event_id])?);
                    }
                    None => known.push(refuse(
                        "a Klaviyo profile needs an email, a phone number or an external id: the person has none"
                            .to_owned(),
                    )),
                },
                _ => known.push(EventResult { event_id: event.event_id, outcome: Outcome::Delivered }),
            }
        }
        for ((list, entered), members) in lists.grouped() {
            let profiles: Vec<Value> = (members.iter())
                .map(|(email, _)| {
                    let mut attributes = json!({"email": email});
                    if entered {
                        attributes["subscriptions"] = json!({"email": {"marketing": {"consent": "SUBSCRIBED"}}});
                    }
                    json!({"type": "profile", "attributes": attributes})
                })
                .collect();
            let kind =
                if entered { "profile-subscription-bulk-create-job" } else { "profile-subscription-bulk-delete-job" };
            let body = json!({"data": {
                "type": kind,
                "attributes": {"profiles": {"data": profiles}},
                "relationships": {"list": {"data": {"type": "list", "id": list}}},
            }});
            let path = if entered {
                "/api/profile-subscription-bulk-create-jobs/"
            } else {
                "/api/profile-subscription-bulk-delete-jobs/"
            };
            requests.push(self.post(path, &body, members.iter().flat_map(|(_, ids)| ids.iter().copied()))?);
        }
        Ok((known, requests))
    }

    /// A track as a Klaviyo event, or why it cannot be sent.
    fn event_body(&self, event: &PreparedEvent) -> Result<Value, String> {
        let name = event.name.as_deref().filter(|name| !name.trim().is_empty()).ok_or("track without an event name")?;
        let profile = profile_identifiers(event)
            .ok_or("a Klaviyo event needs an email, a phone number or an external id: the person has none")?;
        let properties = mapping::properties(&event.message);
        let mut attributes = json!({
            "properties": properties,
            "time": event.timestamp,
            "unique_id": event.event_id.to_string(),
            "metric": {"data": {"type": "metric", "attributes": {"name": name}}},
            "profile": {"data": {"type": "profile", "attributes": profile}},
        });
        if let Some(value) = mapping::value(properties) {
            attributes["value"] = json_number(value);
        }
        Ok(json!({"data": {"type": "event", "attributes": attributes}}))
    }
}

/// `email`, `phone_number` and `external_id`, those the person has.
fn profile_identifiers(event: &PreparedEvent) -> Option<Map<String, Value>> {
    let mut profile = Map::new();
    for (field, identifier) in [("email", "email"), ("phone_number", "phone"), ("external_id", "user_id")] {
        if let Some(value) = lifecycle::first(event, identifier) {
            profile.insert(field.into(), json!(value));
        }
    }
    (!profile.is_empty()).then_some(profile)
}

/// A profile's attributes from an identify: identifiers, names, and the
/// other traits as `properties`.
fn profile_attributes(event: &PreparedEvent) -> Option<Map<String, Value>> {
    let mut attributes = profile_identifiers(event)?;
    let mut traits = lifecycle::traits(event);
    for (field, names) in [("first_name", ["firstName", "first_name"]), ("last_name", ["lastName", "last_name"])] {
        if let Some(value) = lifecycle::trait_text(&traits, &names) {
            attributes.insert(field.into(), json!(value));
        }
        for name in names {
            traits.remove(name);
        }
    }
    for identifier in ["email", "phone", "userId", "user_id"] {
        traits.remove(identifier);
    }
    if !traits.is_empty() {
        attributes.insert("properties".into(), Value::Object(traits));
    }
    Some(attributes)
}

#[async_trait]
impl Destination for Klaviyo {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(lifecycle::description(NAME, MAX_BATCH_SIZE))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (known, requests) = self.build(events)?;
        let mut outcomes = Outcomes::known(known);
        for request in &requests {
            outcomes.send(request, self.timeout, |refusal| lifecycle::refused(refusal, "Klaviyo", "API key")).await?;
        }
        Ok(outcomes.into_results())
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        Some(self.build(events).ok()?.1)
    }

    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let emails = request.identifiers.get("email").cloned().unwrap_or_default();
        if emails.is_empty() {
            return Ok(DeletionAnswer::Unsupported);
        }
        for email in emails {
            let body = json!({"data": {"type": "data-privacy-deletion-job", "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}});
            let rendered = self.post("/api/data-privacy-deletion-jobs/", &body, [])?;
            match http::send_rendered(&rendered, self.timeout).await? {
                Ok(_) => {}
                Err(refusal) => return Err(lifecycle::refused(refusal, "Klaviyo", "API key")),
            }
        }
        Ok(DeletionAnswer::Requested)
    }
}
