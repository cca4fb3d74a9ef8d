//! `mailchimp`: Mailchimp audience members, member events and tags
//! (Marketing API 3.0).
//!
//! A member of an audience (a "list") is addressed by its
//! `subscriber_hash`, the lowercase hex MD5 of the lowercased email
//! ([`subscriber_hash`]). Every request carries
//! `Authorization: Basic base64("onepd:{api_key}")` (Mailchimp takes any
//! user name with the key as password); the key's suffix after its last `-`
//! names the data center (`…-us6` → `https://us6.api.mailchimp.com/3.0`),
//! unless `endpoint` is set.
//!
//! ```text
//! PUT  {endpoint}/lists/{list_id}/members/{hash}                an identify: add or update the member
//! {"email_address": "ann@example.com", "status_if_new": "subscribed",
//!  "merge_fields": {"FNAME", "LNAME", "PHONE"}}            (merge_fields: only those present)
//!
//! POST {endpoint}/lists/{list_id}/members/{hash}/events         a track
//! {"name": "order_completed", "properties": {"total": "59.5", …}, "occurred_at": "<timestamp>"}
//!
//! POST {endpoint}/lists/{list_id}/members/{hash}/tags           an audience entry or exit
//! {"tags": [{"name": "repeat_buyers", "status": "active" | "inactive"}]}
//!
//! POST {endpoint}/lists/{list_id}/members/{hash}/actions/delete-permanent   an erasure
//! ```
//!
//! References:
//! <https://mailchimp.com/developer/marketing/api/list-members/add-or-update-list-member/>,
//! <https://mailchimp.com/developer/marketing/api/list-member-events/add-event/>,
//! <https://mailchimp.com/developer/marketing/api/list-member-tags/add-or-remove-member-tags/>,
//! <https://mailchimp.com/developer/marketing/api/list-members/delete-list-member-permanent/>,
//! <https://mailchimp.com/developer/marketing/docs/methods-parameters/#subscriber-hash>,
//! errors <https://mailchimp.com/developer/marketing/docs/errors/>.
//!
//! What each message becomes:
//!
//! - **identify**: the member upsert above. `merge_fields` come from the
//!   traits `firstName` / `first_name` (`FNAME`), `lastName` / `last_name`
//!   (`LNAME`) and `phone` (`PHONE`), the profile's chosen traits with the
//!   message's own over them. `status_if_new` (setting, `subscribed` by
//!   default; or `pending` for double opt-in, `transactional`,
//!   `unsubscribed`) applies only to a new member: an existing member's
//!   status is never changed.
//! - **track**: a member event. Mailchimp's event names are 2 to 30 of
//!   `a-z`, `0-9`, `_` and `-`: the name is lowercased, every other
//!   character becomes `_`, runs of `_` collapse into one, and it is cut at
//!   30 characters (`Order Completed` → `order_completed`); a name shorter
//!   than 2 characters after that is refused (permanent). Property values
//!   are sent as text (strings as they are, anything else as its JSON);
//!   `null` properties are left out. **An event for an email that is not a
//!   member of the audience is refused by Mailchimp (404)**, which becomes
//!   [`DeliverError::BatchRejected`] (or, after another request of the
//!   batch was taken, that event's retryable outcome until the engine splits
//!   it out and dead-letters it): identify people before their events.
//! - **audience change** ([`AudienceChange`]): the membership is a tag
//!   named after the connection's external id or, when it names none, the
//!   onepd audience's name. An entry first upserts the member
//!   (`email_address` and `status_if_new` only) so the tag has someone to
//!   land on, then makes the tag `active`; an exit only makes it
//!   `inactive`.
//! - **page, screen, group, alias**: answered [`Outcome::Delivered`] without
//!   being sent: Mailchimp has no place for them.
//! - An event whose person has no email is refused (permanent): Mailchimp
//!   members are addressed by email. The first email the profile holds is
//!   used.
//!
//! Identifiers arrive raw: `email` normalized as an email and `phone` as
//! E.164, neither hashed ([`Category::MarketingAutomation`]).
//!
//! **Batches.** Mailchimp's member endpoints take one member per request,
//! so a batch (at most [`MAX_BATCH_SIZE`] events) goes out as one request
//! after another, in order. When the very first request fails, the whole
//! call fails with its error, so the engine retries or splits the batch as
//! for a one-request adapter; a later request's failure becomes the outcome
//! of its event ([`http::as_outcome`]), and that event's remaining request
//! (an entry's tag) is not sent. Upserts and tag changes are idempotent, so
//! a batch sent again changes nothing twice.
//!
//! **Answers.** Errors are `application/problem+json`
//! (`{"type", "title", "status", "detail", "instance"}`, with `errors` per
//! field on a 400): `title` and `detail` go into the reason. 408, 429 and
//! 5xx are retryable (with `Retry-After` when given); 401 and 403 refuse the
//! batch saying the API key was refused; any other 4xx refuses the batch.
//!
//! **Erasure.** Each of the person's emails is deleted permanently; a 404
//! (not a member) means there is nothing to delete.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use md5::{Digest, Md5};
use onepd_domain::EventId;
use onepd_domain::destination::{
    AudienceChange, Category, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult,
    Hashing, IdentifierSource, IdentifierSpec, Normalization, Outcome, PreparedEvent, RenderedRequest,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{self, Refusal};
use super::{AdapterError, mapping};

/// The adapter's name.
pub const NAME: &str = "mailchimp";

/// The most events one batch carries (each is one or two requests).
pub const MAX_BATCH_SIZE: u32 = 100;

/// The statuses `status_if_new` may take.
const STATUSES: [&str; 4] = ["subscribed", "pending", "transactional", "unsubscribed"];

/// The longest event name Mailchimp takes.
const EVENT_NAME_MAX: usize = 30;

/// The shortest event name Mailchimp takes.
const EVENT_NAME_MIN: usize = 2;

/// The settings `onepd destination create --adapter mailchimp` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A Marketing API key; its suffix names the data center (`…-us6`).
    api_key: String,
    /// The audience (list) id.
    list_id: String,
    /// The API's base URL, `/3.0` included (a test server in tests); by
    /// default the key's data center.
    #[serde(default)]
    endpoint: Option<String>,
    /// The status of a member onepd adds.
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
    /// `{endpoint}/lists/{list_id}`: every request goes below it.
    list_url: String,
    /// `Basic base64("onepd:{api_key}")`.
    authorization: String,
    /// The key, listed among a rendered request's secrets.
    api_key: String,
    /// The status of a member onepd adds.
    status_if_new: String,
    /// How long one request may take.
    timeout: Duration,
}

/// How Mailchimp addresses a member: the lowercase hex MD5 of the
/// lowercased email.
pub fn subscriber_hash(email: &str) -> String {
    hex::encode(Md5::digest(email.to_lowercase().as_bytes()))
}

/// Mailchimp's form of an event name (see the module doc), or `None` when
/// fewer than 2 characters are left.
pub fn event_name(name: &str) -> Option<String> {
    let mut converted = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' { c } else { '_' };
        // Runs of `_` collapse into one.
        if c == '_' && converted.ends_with('_') {
            continue;
        }
        converted.push(c);
    }
    // Every character is ASCII by now: a char is a byte.
    converted.truncate(EVENT_NAME_MAX);
    (converted.len() >= EVENT_NAME_MIN).then_some(converted)
}

impl Mailchimp {
    /// The adapter configured with `settings`: `api_key` and `list_id` are
    /// required; `endpoint` (needed when the key names no data center),
    /// `status_if_new` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<Mailchimp, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "api_key", &settings.api_key)?;
        mapping::required(NAME, "list_id", &settings.list_id)?;
        let api_key = settings.api_key.trim().to_owned();
        let list_id = settings.list_id.trim();
        // The id goes into every path: anything else would change it.
        if !list_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(mapping::settings_error(
                NAME,
                format!("settings.list_id: expected letters, digits, _ or -, found {list_id:?}"),
            ));
        }
        let endpoint = match settings.endpoint.as_deref() {
            Some(endpoint) => mapping::base_url(NAME, "endpoint", endpoint)?,
            None => format!("https://{}.api.mailchimp.com/3.0", data_center(&api_key)?),
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
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("onepd:{api_key}"));
        Ok(Mailchimp {
            list_url: format!("{endpoint}/lists/{list_id}"),
            authorization: format!("Basic {credentials}"),
            api_key,
            status_if_new: settings.status_if_new,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    /// A JSON request to `{list_url}{path}` with the key's authorization.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        events: impl IntoIterator<Item = EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let headers = vec![("Authorization".to_owned(), self.authorization.clone())];
        // The base64 credentials are what a preview must hide; the key
        // itself never appears, but is listed in case it ever does.
        let secrets = vec![self.authorization.trim_start_matches("Basic ").to_owned(), self.api_key.clone()];
        http::json_request(method, &format!("{}{path}", self.list_url), &[], headers, body, events, secrets)
    }

    /// The member upsert for `email`, with `merge_fields` when any.
    fn upsert(
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

    /// The requests for one event, in order, or its outcome without
    /// sending.
    fn requests_for(&self, event: &PreparedEvent) -> Result<Result<Vec<RenderedRequest>, Outcome>, DeliverError> {
        let change = AudienceChange::of(event);
        if change.is_none() && !matches!(event.message_type.as_str(), "identify" | "track") {
            // Page, screen, group, alias: nothing for Mailchimp (module doc).
            return Ok(Err(Outcome::Delivered));
        }
        let Some(email) = first_email(event) else {
            return Ok(Err(Outcome::permanent(
                "email: Mailchimp addresses a member by email, and the person has none",
            )));
        };
        let hash = subscriber_hash(email);
        if let Some(change) = change {
            let mut requests = Vec::with_capacity(2);
            if change.entered {
                requests.push(self.upsert(email, Map::new(), event.event_id)?);
            }
            let tag = change.external_id.unwrap_or(change.audience);
            let status = if change.entered { "active" } else { "inactive" };
            let body = json!({"tags": [{"name": tag, "status": status}]});
            requests.push(self.request("POST", &format!("/members/{hash}/tags"), &body, [event.event_id])?);
            return Ok(Ok(requests));
        }
        if event.message_type == "identify" {
            return Ok(Ok(vec![self.upsert(email, merge_fields(event), event.event_id)?]));
        }
        match event_body(event) {
            Ok(body) => {
                Ok(Ok(vec![self.request("POST", &format!("/members/{hash}/events"), &body, [event.event_id])?]))
            }
            Err(reason) => Ok(Err(Outcome::permanent(reason))),
        }
    }

    /// The outcomes known without sending, and each sent event's requests
    /// in order.
    fn build(&self, events: &[PreparedEvent]) -> Result<Plan, DeliverError> {
        let mut plan = Plan { known: Vec::new(), chains: Vec::new() };
        for event in events {
            match self.requests_for(event)? {
                Ok(requests) => plan.chains.push((event.event_id, requests)),
                Err(outcome) => plan.known.push(EventResult { event_id: event.event_id, outcome }),
            }
        }
        Ok(plan)
    }
}

/// A batch before sending.
struct Plan {
    /// Outcomes known without sending (delivered without sending, or
    /// permanent).
    known: Vec<EventResult>,
    /// Each sent event and its requests, in order.
    chains: Vec<(EventId, Vec<RenderedRequest>)>,
}

/// The data center a key names (`…-us6` → `us6`).
fn data_center(api_key: &str) -> Result<&str, AdapterError> {
    api_key
        .rsplit_once('-')
        .map(|(_, dc)| dc)
        .filter(|dc| !dc.is_empty() && dc.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            mapping::settings_error(
                NAME,
                "settings.api_key: expected a key ending in its data center (…-us6), found none; or set \
                 settings.endpoint",
            )
        })
}

/// The person's first email.
fn first_email(event: &PreparedEvent) -> Option<&str> {
    event.identifiers.get("email")?.iter().map(|email| email.trim()).find(|email| !email.is_empty())
}

/// `FNAME`, `LNAME` and `PHONE`, those the traits hold: the profile's chosen
/// traits, with the message's own over them.
fn merge_fields(event: &PreparedEvent) -> Map<String, Value> {
    let own = event.message.get("traits").and_then(Value::as_object);
    let trait_text = |names: &[&str]| {
        names.iter().find_map(|name| {
            own.and_then(|own| own.get(*name))
                .and_then(mapping::text)
                .or_else(|| event.traits.get(*name).and_then(mapping::text))
        })
    };
    let mut fields = Map::new();
    for (field, names) in
        [("FNAME", &["firstName", "first_name"][..]), ("LNAME", &["lastName", "last_name"]), ("PHONE", &["phone"])]
    {
        if let Some(value) = trait_text(names) {
            fields.insert(field.to_owned(), Value::String(value));
        }
    }
    fields
}

/// A track as a member event, or why it cannot be sent.
fn event_body(event: &PreparedEvent) -> Result<Value, String> {
    let name = event.name.as_deref().unwrap_or_default();
    let converted = event_name(name).ok_or_else(|| {
        format!("event name {name:?}: Mailchimp needs 2 to 30 characters of a-z, 0-9, _ or -, found too few")
    })?;
    let properties: Map<String, Value> = mapping::properties(&event.message)
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), Value::String(text))
        })
        .collect();
    Ok(json!({"name": converted, "properties": properties, "occurred_at": event.timestamp}))
}

/// Mailchimp's refusal: 401 and 403 name the API key; anything else is read
/// by status. The problem's `title` and `detail` (and a 400's per-field
/// `errors`) lead the reason.
fn refused(refusal: Refusal) -> DeliverError {
    let problem = refusal.json();
    let mut parts: Vec<String> =
        ["title", "detail"].iter().filter_map(|key| problem[*key].as_str()).map(str::to_owned).collect();
    if let Some(errors) = problem["errors"].as_array() {
        parts.extend(errors.iter().filter_map(|error| {
            let message = error["message"].as_str()?;
            Some(match error["field"].as_str().filter(|field| !field.is_empty()) {
                Some(field) => format!("{field}: {message}"),
                None => message.to_owned(),
            })
        }));
    }
    let reason = if parts.is_empty() {
        refusal.reason()
    } else {
        format!("{}: {}", http::reason(refusal.status, ""), parts.join(": "))
    };
    if matches!(refusal.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return DeliverError::BatchRejected { reason: format!("Mailchimp refused the API key: {reason}") };
    }
    if http::is_retryable_status(refusal.status) {
        DeliverError::Retryable { reason, retry_after: refusal.retry_after }
    } else {
        DeliverError::BatchRejected { reason }
    }
}

/// Sends `request`, reading a refusal as Mailchimp's.
async fn send(request: &RenderedRequest, timeout: Duration) -> Result<(), DeliverError> {
    http::send_rendered(request, timeout).await?.map(drop).map_err(refused)
}

#[async_trait]
impl Destination for Mailchimp {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::MarketingAutomation,
            identifiers: vec![
                IdentifierSpec::new("email", IdentifierSource::Email, Normalization::Email, Hashing::None),
                IdentifierSpec::new("phone", IdentifierSource::Phone, Normalization::PhoneE164, Hashing::None),
            ],
            max_batch_size: MAX_BATCH_SIZE,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let Plan { mut known, chains } = self.build(events)?;
        let mut sent_any = false;
        for (event_id, requests) in chains {
            let mut outcome = Outcome::Delivered;
            for request in &requests {
                let first = !sent_any;
                sent_any = true;
                match send(request, self.timeout).await {
                    Ok(()) => {}
                    // Nothing was taken yet: the call fails as a one-request
                    // adapter's would (see the module doc).
                    Err(err) if first => return Err(err),
                    Err(err) => {
                        outcome = http::as_outcome(&err);
                        // An entry's tag without its member would fail too.
                        break;
                    }
                }
            }
            known.push(EventResult { event_id, outcome });
        }
        Ok(known)
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        let plan = self.build(events).ok()?;
        Some(plan.chains.into_iter().flat_map(|(_, requests)| requests).collect())
    }

    /// Deletes each of the person's emails permanently; a person without an
    /// email is no member, so there is nothing to delete.
    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let emails = request.identifiers.get("email").map(Vec::as_slice).unwrap_or_default();
        for email in emails.iter().map(|email| email.trim()).filter(|email| !email.is_empty()) {
            let path = format!("/members/{}/actions/delete-permanent", subscriber_hash(email));
            let rendered = self.request("POST", &path, &json!({}), [])?;
            match http::send_rendered(&rendered, self.timeout).await? {
                Ok(_) => {}
                // Not a member: nothing to delete.
                Err(refusal) if refusal.status == StatusCode::NOT_FOUND => {}
                Err(refusal) => return Err(refused(refusal)),
            }
        }
        Ok(DeletionAnswer::Requested)
    }
}
