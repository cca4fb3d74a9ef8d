//! `tiktok`: TikTok Events API 2.0, web events for a pixel.
//!
//! One batch is one request:
//!
//! ```text
//! POST {endpoint}/open_api/v1.3/event/track/
//! Access-Token: {access_token}
//! {"event_source": "web", "event_source_id": "{pixel_code}", "test_event_code"?,
//!  "data": [{"event", "event_time", "event_id",
//!            "user": {"email", "phone", "external_id", "ip", "user_agent", "ttclid"},
//!            "properties": {"currency", "value", "content_type", "contents": [...],
//!                           "order_id", "query"},
//!            "page": {"url", "referrer"}}]}
//! ```
//!
//! Reference: <https://business-api.tiktok.com/portal/docs?id=1771101276978178>
//! (Events API 2.0, `event/track`), and its error codes
//! <https://business-api.tiktok.com/portal/docs?id=1737172488964097>.
//!
//! - `event`: Segment e-commerce events map to TikTok standard events
//!   (`Order Completed` → `CompletePayment`, …, a page → `Pageview`); any
//!   other track keeps its name as a custom event.
//! - `event_id` is onepd's event id, TikTok's deduplication key.
//! - `user`: `email`, `phone` and `external_id` arrive SHA-256 hashed,
//!   `ip`, `user_agent` and `ttclid` as they are
//!   ([`onepd_domain::hashing::tiktok_identifiers`]); each is sent as one
//!   string (the first value), as the reference shows.
//! - Identify, group, alias and screen messages are answered
//!   [`Outcome::Delivered`] without being sent: TikTok takes events only.
//!
//! **Custom audiences.** Audience entries and exits ([`AudienceChange`]) go
//! to the TikTok audience the connection's external id names, for the
//! advertiser in `settings.advertiser_id`, one call per audience and action
//! per batch (after the events' call):
//!
//! ```text
//! POST {endpoint}/open_api/v1.3/segment/mapping/
//! {"advertiser_ids": ["{advertiser_id}"], "action": "add" | "delete",
//!  "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
//!  "batch_data": [[{"id": sha256(email), "audience_ids": ["{audience}"]},
//!                  {"id": sha256(phone), "audience_ids": ["{audience}"]}], ...]}
//! ```
//!
//! Reference: <https://business-api.tiktok.com/portal/docs?id=1739940567842817>
//! (custom audience mapping, `segment/mapping`), with the same
//! `Access-Token` header as the events' call.
//!
//! - An entry is an `add`, an exit a `delete`; one call per audience and
//!   action, every person one row of `batch_data`.
//! - Each row follows `id_schema`: the email (trimmed, lowercase, SHA-256)
//!   then the phone (E.164, SHA-256), as the engine prepares them for
//!   [`onepd_domain::hashing::tiktok_identifiers`]; a missing one is an
//!   empty `id`.
//! - The last change of a person in an audience in a batch wins; the
//!   changes it supersedes ride in the same call and share its outcome.
//! - A batch holds at most 1000 changes, so a call carries at most 1000
//!   rows.
//! - Refused (permanent) without sending: any audience change when
//!   `settings.advertiser_id` is not set, a change whose audience has no
//!   external id, a person with neither email nor phone.
//! - The first call of a delivery that fails fails the delivery; a later
//!   call's failure becomes the outcome of the changes it carried.
//!
//! TikTok answers HTTP 200 with a `code`: 0 is success; 40100 (too many
//! requests) and 5xxxx (TikTok's own faults) are retryable; any other code
//! refuses the batch.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::EventId;
use onepd_domain::destination::{
    AudienceChange, Category, DeliverError, Description, Destination, EventResult, Outcome, PreparedEvent,
    RenderedRequest,
};
use onepd_domain::hashing::tiktok_identifiers;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdapterError;
use super::http;
use super::mapping::{self, json_number};

/// The adapter's name.
pub const NAME: &str = "tiktok";

/// The most events one request carries.
pub const MAX_BATCH_SIZE: u32 = 1000;

/// TikTok's "too many requests" code.
const RATE_LIMITED: i64 = 40100;

/// The `user` fields, each sent as its first value.
const USER_FIELDS: [&str; 6] = ["email", "phone", "external_id", "ip", "user_agent", "ttclid"];

/// The settings `onepd destination create --adapter tiktok` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// An Events API access token.
    access_token: String,
    /// The pixel the events are for (`event_source_id`).
    pixel_code: String,
    /// The Business API's base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// Routes events to Events Manager's Test Events tab.
    #[serde(default)]
    test_event_code: Option<String>,
    /// The advertiser whose custom audiences connected audiences sync to.
    #[serde(default)]
    advertiser_id: Option<String>,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://business-api.tiktok.com".to_owned()
}

/// The TikTok Events API adapter.
#[derive(Debug, Clone)]
pub struct TikTok {
    url: String,
    segment_url: String,
    advertiser_id: Option<String>,
    access_token: String,
    pixel_code: String,
    test_event_code: Option<String>,
    timeout: Duration,
}

impl TikTok {
    /// The adapter configured with `settings`: `access_token` and
    /// `pixel_code` are required; `endpoint`, `test_event_code`,
    /// `advertiser_id` (needed for audience changes only) and `timeout_ms`
    /// are optional.
    pub fn new(settings: &Value) -> Result<TikTok, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "access_token", &settings.access_token)?;
        mapping::required(NAME, "pixel_code", &settings.pixel_code)?;
        let endpoint = mapping::base_url(NAME, "endpoint", &settings.endpoint)?;
        Ok(TikTok {
            url: format!("{endpoint}/open_api/v1.3/event/track/"),
            segment_url: format!("{endpoint}/open_api/v1.3/segment/mapping/"),
            advertiser_id: settings.advertiser_id.map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()),
            access_token: settings.access_token,
            pixel_code: settings.pixel_code.trim().to_owned(),
            test_event_code: settings.test_event_code.filter(|code| !code.is_empty()),
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }
}

#[async_trait]
impl Destination for TikTok {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::AdPlatform,
            identifiers: tiktok_identifiers(),
            max_batch_size: MAX_BATCH_SIZE,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (changes, others): (Vec<PreparedEvent>, Vec<PreparedEvent>) =
            events.iter().cloned().partition(|event| AudienceChange::of(event).is_some());
        let (mut results, mut sent_before) = self.send_events(&others).await?;
        let (known, requests) = self.segment_requests(&changes)?;
        results.extend(known);
        for request in requests {
            let outcome = match self.send(&request).await {
                Ok(()) => Outcome::Delivered,
                Err(err) if !sent_before => return Err(err),
                Err(err) => http::as_outcome(&err),
            };
            sent_before = true;
            results.extend(
                request.events.iter().map(|event_id| EventResult { event_id: *event_id, outcome: outcome.clone() }),
            );
        }
        Ok(results)
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        let (changes, others): (Vec<PreparedEvent>, Vec<PreparedEvent>) =
            events.iter().cloned().partition(|event| AudienceChange::of(event).is_some());
        let mut requests: Vec<RenderedRequest> = self.build(&others).ok()?.request.into_iter().collect();
        requests.extend(self.segment_requests(&changes).ok()?.1);
        Some(requests)
    }
}

impl TikTok {
    /// Sends the events' call, if any: the results, and whether a call was made.
    async fn send_events(&self, events: &[PreparedEvent]) -> Result<(Vec<EventResult>, bool), DeliverError> {
        let mapping::Built { mut results, sent, request } = self.build(events)?;
        let Some(request) = request else { return Ok((results, false)) };
        self.send(&request).await?;
        results.extend(http::every(&sent, &Outcome::Delivered));
        Ok((results, true))
    }

    /// Sends one call and reads TikTok's `code`.
    async fn send(&self, request: &RenderedRequest) -> Result<(), DeliverError> {
        let answer = http::post_rendered(request, self.timeout).await?;
        let answer = answer.json();
        let code = answer["code"].as_i64();
        match code {
            Some(0) => {}
            Some(code) => {
                let message = answer["message"].as_str().unwrap_or_default();
                let reason = format!("tiktok code {code}: {message}");
                return Err(if code == RATE_LIMITED || (50000..60000).contains(&code) {
                    DeliverError::Retryable { reason, retry_after: None }
                } else {
                    DeliverError::BatchRejected { reason }
                });
            }
            None => {
                return Err(DeliverError::Retryable {
                    reason: "tiktok answered without a code".to_owned(),
                    retry_after: None,
                });
            }
        }
        Ok(())
    }

    /// The audience changes as segment mapping calls, one per audience and
    /// action, and the changes refused or superseded.
    fn segment_requests(
        &self,
        changes: &[PreparedEvent],
    ) -> Result<(Vec<EventResult>, Vec<RenderedRequest>), DeliverError> {
        let mut known = Vec::new();
        // (audience, person) → (entered, row, events)
        let mut latest: BTreeMap<(String, String), (bool, Value, Vec<EventId>)> = BTreeMap::new();
        for event in changes {
            let Some(change) = AudienceChange::of(event) else { continue };
            let refuse = |reason: &str| EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) };
            if self.advertiser_id.is_none() {
                known.push(refuse(
                    "syncing a TikTok audience needs settings.advertiser_id: set the advertiser the audience belongs to",
                ));
                continue;
            }
            let Some(audience) = change.external_id else {
                known.push(refuse(&format!(
                    "audience {:?} is connected without TikTok's audience id: connect it again with --external-id AUDIENCE_ID",
                    change.audience
                )));
                continue;
            };
            let first = |field: &str| event.identifiers.get(field).and_then(|values| values.first()).cloned();
            let (email, phone) = (first("email"), first("phone"));
            if email.is_none() && phone.is_none() {
                known.push(refuse("a TikTok audience needs a hashed email or phone: the person has neither"));
                continue;
            }
            let row = json!([
                {"id": email.clone().unwrap_or_default(), "audience_ids": [audience]},
                {"id": phone.clone().unwrap_or_default(), "audience_ids": [audience]},
            ]);
            let person = format!("{}|{}", email.unwrap_or_default(), phone.unwrap_or_default());
            let entry = latest.entry((audience.to_owned(), person)).or_insert((true, Value::Null, Vec::new()));
            (entry.0, entry.1) = (change.entered, row);
            entry.2.push(event.event_id);
        }
        let mut calls: BTreeMap<(String, bool), (Vec<Value>, Vec<EventId>)> = BTreeMap::new();
        for ((audience, _), (entered, row, events)) in latest {
            let call = calls.entry((audience, entered)).or_default();
            call.0.push(row);
            call.1.extend(events);
        }
        let advertiser = self.advertiser_id.clone().unwrap_or_default();
        let requests = (calls.into_iter())
            .map(|((_, entered), (rows, events))| {
                let body = json!({
                    "advertiser_ids": [advertiser],
                    "action": if entered { "add" } else { "delete" },
                    "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
                    "batch_data": rows,
                });
                let headers = vec![("Access-Token".to_owned(), self.access_token.clone())];
                http::json_post(&self.segment_url, &[], headers, &body, events, vec![self.access_token.clone()])
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((known, requests))
    }
}

impl TikTok {
    /// The results known without sending, the events sent, and the one
    /// request (none when nothing is for TikTok).
    fn build(&self, events: &[PreparedEvent]) -> Result<mapping::Built, DeliverError> {
        // TikTok takes events only (see the module doc).
        let mapping::Mapped { results, sent, records: data } =
            mapping::map_events(events, |event| match event.message_type.as_str() {
                "track" | "page" => Some(web_event(event)),
                _ => None,
            });
        if data.is_empty() {
            return Ok(mapping::Built { results, sent, request: None });
        }
        let mut body = json!({ "event_source": "web", "event_source_id": self.pixel_code, "data": data });
        if let Some(code) = &self.test_event_code {
            body["test_event_code"] = json!(code);
        }
        let request = http::json_post(
            &self.url,
            &[],
            vec![("Access-Token".to_owned(), self.access_token.clone())],
            &body,
            sent.iter().map(|event| event.event_id),
            vec![self.access_token.clone()],
        )?;
        Ok(mapping::Built { results, sent, request: Some(request) })
    }
}

/// TikTok's standard event for a Segment event name.
fn standard_event(name: &str) -> Option<&'static str> {
    Some(match name {
        "Order Completed" => "CompletePayment",
        "Product Added" => "AddToCart",
        "Checkout Started" => "InitiateCheckout",
        "Product Viewed" => "ViewContent",
        "Products Searched" => "Search",
        "Signed Up" => "CompleteRegistration",
        "Product Added to Wishlist" => "AddToWishlist",
        "Payment Info Entered" => "AddPaymentInfo",
        "Order Placed" => "PlaceAnOrder",
        _ => return None,
    })
}

/// One entry of `data`, or why the event cannot be sent.
fn web_event(event: &PreparedEvent) -> Result<Value, String> {
    let name = match (event.message_type.as_str(), event.name.as_deref()) {
        ("page", _) => "Pageview".to_owned(),
        (_, Some(name)) if !name.trim().is_empty() => standard_event(name).unwrap_or(name).to_owned(),
        _ => return Err("track without an event name".to_owned()),
    };
    let mut web_event = Map::new();
    web_event.insert("event".into(), json!(name));
    web_event.insert("event_time".into(), json!(mapping::unix_seconds(&event.timestamp)?));
    web_event.insert("event_id".into(), json!(event.event_id.to_string()));
    let user: Map<String, Value> = USER_FIELDS
        .iter()
        .filter_map(|field| Some((field.to_string(), json!(event.identifiers.get(*field)?.first()?))))
        .collect();
    web_event.insert("user".into(), Value::Object(user));
    let properties = event_properties(mapping::properties(&event.message));
    if !properties.is_empty() {
        web_event.insert("properties".into(), Value::Object(properties));
    }
    let mut page = Map::new();
    if let Some(url) = mapping::page_url(&event.message) {
        page.insert("url".into(), json!(url));
    }
    if let Some(referrer) = mapping::page_referrer(&event.message) {
        page.insert("referrer".into(), json!(referrer));
    }
    if !page.is_empty() {
        web_event.insert("page".into(), Value::Object(page));
    }
    Ok(Value::Object(web_event))
}

/// `properties` from the Segment e-commerce properties.
fn event_properties(properties: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(currency) = mapping::currency(properties) {
        out.insert("currency".into(), json!(currency));
    }
    if let Some(value) = mapping::value(properties) {
        out.insert("value".into(), json_number(value));
    }
    if let Some(order_id) = mapping::order_id(properties) {
        out.insert("order_id".into(), json!(order_id));
    }
    if let Some(query) = properties.get("query").and_then(mapping::text) {
        out.insert("query".into(), json!(query));
    }
    let contents: Vec<Value> = mapping::products(properties)
        .into_iter()
        .filter_map(|product| {
            let mut content = Map::new();
            content.insert("content_id".into(), json!(product.id?));
            if let Some(name) = product.name {
                content.insert("content_name".into(), json!(name));
            }
            if let Some(category) = product.category {
                content.insert("content_category".into(), json!(category));
            }
            if let Some(price) = product.price {
                content.insert("price".into(), json_number(price));
            }
            if let Some(quantity) = product.quantity {
                content.insert("quantity".into(), json_number(quantity));
            }
            Some(Value::Object(content))
        })
        .collect();
    if !contents.is_empty() {
        out.insert("content_type".into(), json!("product"));
        out.insert("contents".into(), json!(contents));
    }
    out
}
