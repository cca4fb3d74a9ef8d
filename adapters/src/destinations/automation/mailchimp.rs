//! `mailchimp`: Mailchimp audience members, tags and events (Marketing
//! API 3.0).
//!
//! A member is addressed by its `subscriber_hash`, the MD5 of the lowercase
//! email in hex. Every request carries `Authorization: Basic
//! base64("onepd:{api_key}")`; the key's suffix names the data center
//! (`…-us6` → `https://us6.api.mailchimp.com/3.0`):
//!
//! ```text
//! PUT  {endpoint}/lists/{list_id}/members/{hash}          an identify: add or update the member
//! {"email_address", "status_if_new": "subscribed", "merge_fields": {"FNAME", "LNAME", "PHONE"}}
//!
//! POST {endpoint}/lists/{list_id}/members/{hash}/events   a track
//! {"name": "order_completed", "properties": {"total": "59.5", ...}, "occurred_at"}
//!
//! POST {endpoint}/lists/{list_id}/members/{hash}/tags     an audience entry or exit
//! {"tags": [{"name": "repeat buyers", "status": "active" | "inactive"}]}
//! ```
//!
//! References: <https://mailchimp.com/developer/marketing/api/list-members/add-or-update-list-member/>,
//! <https://mailchimp.com/developer/marketing/api/list-member-events/add-event/>,
//! <https://mailchimp.com/developer/marketing/api/list-member-tags/add-or-remove-member-tags/>,
//! <https://mailchimp.com/developer/marketing/api/list-members/delete-list-member-permanent/>,
//! errors <https://mailchimp.com/developer/marketing/docs/errors/>.
//!
//! - One request per event (Mailchimp's member endpoints take one member).
//! - `status_if_new` (`subscribed` by default, as Segment's Mailchimp
//!   destination does; or `pending` for double opt-in, `transactional`,
//!   `unsubscribed`) applies only to a new member: an existing member's
//!   status is never changed.
//! - Event names follow Mailchimp's rules (letters, digits, `_` and `-`,
//!   2–30 characters): lowercased, anything else as `_`, cut at 30
//!   (`Order Completed` → `order_completed`). Property values are sent as
//!   text. An event for an email that is not a member yet is refused by
//!   Mailchimp (404), so identify people first.
//! - Audience membership is a tag: the connected audience's external id,
//!   or the onepd audience's name when none is given. An entry first adds
//!   the member (`status_if_new`) so the tag has someone to land on, then
//!   makes the tag active; an exit makes it inactive.
//! - Page, screen, group and alias messages are answered delivered without
//!   being sent. A person without an email is refused (permanent).
//! - Erasure: the member is deleted permanently.
//!
//! Errors are `application/problem+json` (`title`, `detail`): both go into
//! the reason. 429 is retried; 401 / 403 refuse the batch naming the key.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use md5::{Digest, Md5};
use onepd_domain::EventId;
use onepd_domain::destination::{
    AudienceChange, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Outcome,
    PreparedEvent, RenderedRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::lifecycle::{self, Outcomes};
use crate::destinations::http::{self, Refusal};
use crate::destinations::{AdapterError, mapping};

/// The adapter's name.
pub const NAME: &str = "mailchimp";

/// The most events one batch carries.
pub const MAX_BATCH_SIZE: u32 = 100;

/// The statuses `status_if_new` may take.
const STATUSES: [&str; 4] = ["subscribed", "pending", "transactional", "unsubscribed"];

/// The settings `onepd destination create --adapter mailchimp` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A Marketing API key (`…-us6`).
    api_key: String,
    /// The audience (list) id.
    list_id: String,
    /// The API's base URL, `/3.0` included; by default the key's data center.
    #[serde(default)]
    endpoint: Option<String>,
    /// The status of a member added by onepd.
    #[serde(default = "default_status")]
    status_if_new: String,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_status() -> String {
    "subscribed".to_owned()
}

/// The Mailchimp adapter.
#[derive(Debug, Clone)]
pub struct Mailchimp {
    list_url: String,
    authorization: String,
    api_key: String,
    status_if_new: String,
    timeout: Duration,
}

/// The MD5 of the lowercase email, in hex: how Mailchimp addresses a member.
pub fn subscriber_hash(email: &str) -> String {
    hex::encode(Md5::digest(email.trim().to_lowercase().as_bytes()))
}

impl Mailchimp {
    /// The adapter configured with `settings`: `api_key` and `list_id` are
    /// required; `endpoint` (required when the key names no data center),
    /// `status_if_new` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<Mailchimp, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "api_key", &settings.api_key)?;
        mapping::required(NAME, "list_id", &settings.list_id)?;
        let endpoint = match settings.endpoint.as_deref() {
            Some(endpoint) => mapping::base_url(NAME, "endpoint", endpoint)?,
            None => {
                let dc = (settings.api_key.trim().rsplit_once('-').map(|(_, dc)| dc))
                    .filter(|dc| !dc.is_empty() && dc.chars().all(|c| c.is_ascii_alphanumeric()))
                    .ok_or_else(|| {
                        mapping::settings_error(
                            NAME,
                            "settings.api_key: expected a key ending in its data center (…-us6), or set settings.endpoint",
                        )
                    })?;
                format!("https://{dc}.api.mailchimp.com/3.0")
            }
        };
        if !STATUSES.contains(&settings.status_if_new.as_str()) {
            return Err(mapping::settings_error(
                NAME,
                format!(
                    "settings.status_if_new: expected one of {}, found {:?}",
                    STATUSES.join(", "),
                    settings.status_if_new
                ),
            ));
        }
        let list: String =
            settings.list_id.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("onepd:{}", settings.api_key));
        Ok(Mailchimp {
            list_url: format!("{endpoint}/lists/{list}"),
            authorization: format!("Basic {credentials}"),
            api_key: settings.api_key,
            status_if_new: settings.status_if_new,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        events: impl IntoIterator<Item = EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let headers = vec![("Authorization".to_owned(), self.authorization.clone())];
        let url = format!("{}{path}", self.list_url);
        let secrets = vec![self.authorization.clone(), self.api_key.clone()];
        http::json_request(method, &url, &[], headers, body, events, secrets)
    }

    /// The member upsert for `email`, with `merge_fields` when any.
    fn member(
        &self,
        email: &str,
        merge_fields: Map<String, Value>,
        event: EventId,
    ) -> Result<RenderedRequest, DeliverError> {
        let mut body = json!({"email_address": email, "status_if_new": self.status_if_new});
        if !merge_fields.is_empty() {
            body["merge_fields"] = Value::Object(merge_fields);
        }
        self.request("PUT", &format!("/members/{}", subscriber_hash(email)), &body, [event])
    }

    /// The results known without sending and the requests, in order.
    fn build(&self, events: &[PreparedEvent]) -> Result<(Vec<EventResult>, Vec<RenderedRequest>), DeliverError> {
        let mut known = Vec::new();
        let mut requests = Vec::new();
        for event in events {
            let refuse = |reason: String| EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) };
            let change = AudienceChange::of(event);
            if change.is_none() && !matches!(event.message_type.as_str(), "identify" | "track") {
                known.push(EventResult { event_id: event.event_id, outcome: Outcome::Delivered });
                continue;
            }
            let Some(email) = lifecycle::first(event, "email") else {
                known.push(refuse("Mailchimp members are addressed by email: the person has none".to_owned()));
                continue;
            };
            let hash = subscriber_hash(email);
            if let Some(change) = change {
                if change.entered {
                    requests.push(self.member(email, Map::new(), event.event_id)?);
                }
                let tag = change.external_id.unwrap_or(change.audience);
                let status = if change.entered { "active" } else { "inactive" };
                let body = json!({"tags": [{"name": tag, "status": status}]});
                requests.push(self.request("POST", &format!("/members/{hash}/tags"), &body, [event.event_id])?);
            } else if event.message_type == "identify" {
                requests.push(self.member(email, merge_fields(&lifecycle::traits(event)), event.event_id)?);
            } else {
                match event_body(event) {
                    Ok(body) => {
                        let path = format!("/members/{hash}/events");
                        requests.push(self.request("POST", &path, &body, [event.event_id])?);
                    }
                    Err(reason) => known.push(refuse(reason)),
                }
            }
        }
        Ok((known, requests))
    }
}

/// `FNAME`, `LNAME` and `PHONE` from the traits, those present.
fn merge_fields(traits: &Map<String, Value>) -> Map<String, Value> {
    let mut fields = Map::new();
    let names: [(&str, &[&str]); 3] =
        [("FNAME", &["firstName", "first_name"]), ("LNAME", &["lastName", "last_name"]), ("PHONE", &["phone"])];
    for (field, names) in names {
        if let Some(value) = lifecycle::trait_text(traits, names) {
            fields.insert(field.into(), json!(value));
        }
    }
    fields
}

/// Mailchimp's form of an event name (see the module doc), or `None` when
/// fewer than 2 characters are left.
pub fn event_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '_' };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    let out: String = out.trim_matches('_').chars().take(30).collect();
    (out.len() >= 2).then_some(out)
}

/// A track as a member event, or why it cannot be sent.
fn event_body(event: &PreparedEvent) -> Result<Value, String> {
    let name = event.name.as_deref().unwrap_or_default();
    let converted = event_name(name)
        .ok_or_else(|| format!("event name {name:?}: Mailchimp needs 2 to 30 letters, digits, _ or -"))?;
    let properties: Map<String, Value> = (mapping::properties(&event.message).iter())
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| (name.clone(), json!(lifecycle::as_text(value))))
        .collect();
    Ok(json!({"name": converted, "properties": properties, "occurred_at": event.timestamp}))
}

/// A refusal, with Mailchimp's `title` and `detail` in the reason.
fn refused(refusal: Refusal) -> DeliverError {
    let problem = refusal.json();
    let detail: Vec<&str> = [problem["title"].as_str(), problem["detail"].as_str()].into_iter().flatten().collect();
    let err = lifecycle::refused(refusal, "Mailchimp", "API key");
    if detail.is_empty() {
        return err;
    }
    let detail = detail.join(": ");
    match err {
        DeliverError::Retryable { reason, retry_after } => {
            DeliverError::Retryable { reason: format!("{reason} ({detail})"), retry_after }
        }
        DeliverError::BatchRejected { reason } => {
            DeliverError::BatchRejected { reason: format!("{reason} ({detail})") }
        }
        other => other,
    }
}

#[async_trait]
impl Destination for Mailchimp {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(lifecycle::description(NAME, MAX_BATCH_SIZE))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (known, requests) = self.build(events)?;
        let mut outcomes = Outcomes::known(known);
        for request in &requests {
            outcomes.send(request, self.timeout, refused).await?;
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
            let path = format!("/members/{}/actions/delete-permanent", subscriber_hash(&email));
            let rendered = self.request("POST", &path, &json!({}), [])?;
            match http::send_rendered(&rendered, self.timeout).await? {
                Ok(_) => {}
                // Not a member: nothing to delete.
                Err(refusal) if refusal.status == reqwest::StatusCode::NOT_FOUND => {}
                Err(refusal) => return Err(refused(refusal)),
            }
        }
        Ok(DeletionAnswer::Requested)
    }
}
