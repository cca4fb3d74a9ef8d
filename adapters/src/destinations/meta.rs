//! `meta_capi`: Meta Conversions API, server events for a pixel.
//!
//! One batch is one request (Meta takes up to 1,000 events per request):
//!
//! ```text
//! POST {endpoint}/{api_version}/{pixel_id}/events?access_token=…
//! {"data": [{"event_name", "event_time", "event_id", "action_source",
//!            "event_source_url", "user_data": {…}, "custom_data": {…}}],
//!  "test_event_code"?}
//! ```
//!
//! Reference: <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters>
//! (server event, customer information and custom data parameters).
//!
//! - `event_name`: Segment e-commerce events map to Meta standard events
//!   (`Order Completed` → `Purchase`, …, a page → `PageView`); any other
//!   track keeps its name as a custom event.
//! - `event_id` is onepd's event id, Meta's deduplication key, so a retry or
//!   a replay is not counted twice.
//! - `user_data`: the hashed fields (`em`, `ph`, `fn`, `ln`, `ge`, `db`,
//!   `ct`, `st`, `zp`, `country`, `external_id`) as arrays of every value
//!   the profile holds; `client_ip_address`, `client_user_agent`, `fbc` and
//!   `fbp` as single strings, as Meta documents. Values arrive normalized and
//!   hashed ([`onepd_domain::hashing::meta_identifiers`]).
//! - `custom_data`: `value`, `currency`, `order_id`, `content_ids`,
//!   `contents`, `content_type`, `num_items`, `content_name`,
//!   `content_category` and `search_string` from the properties.
//!
//! **Custom Audiences.** An entry or exit of an audience connected to the
//! destination ([`AudienceChange`]) adds the person to, or removes them
//! from, the custom audience whose id the connection names:
//!
//! ```text
//! POST|DELETE {endpoint}/{api_version}/{custom_audience_id}/users?access_token=…
//! {"payload": {"schema": ["EMAIL_SHA256", "PHONE_SHA256", "FN", "LN", "GEN",
//!                         "CT", "ST", "ZIP", "COUNTRY", "EXTERN_ID"],
//!              "data": [["<sha256>", "<sha256>", "", …], …]}}
//! ```
//!
//! Reference: <https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users>
//! (multi-key matching, hashed as for the Conversions API, at most 10,000
//! rows per call). One row per person, or more when the person has several
//! emails or phones (row *i* carries each field's *i*-th value, `""` where
//! there is none). The changes of one batch go out as one `POST` (adds) and
//! one `DELETE` (removes) per custom audience: a batch holds at most 1,000
//! events, inside Meta's 10,000 rows, so no upload `session` is needed. Adding
//! and removing are idempotent at Meta, so a batch sent again after a failure
//! changes nothing twice.
//!
//! Meta takes only track and page events. Identify, group, alias and screen
//! messages are answered [`Outcome::Delivered`] without being sent: there is
//! nothing for Meta to take, and dead-lettering them would only add noise.
//!
//! Meta refuses a request as a whole (HTTP 400 with `error`); an error Meta
//! marks transient (`is_transient`) or a rate-limit code (4, 17, 32, 613) is
//! retryable even when its status is 400 or 403.

use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::destination::{
    AudienceChange, Category, DeliverError, Description, Destination, EventResult, Outcome, PreparedEvent,
    RenderedRequest,
};
use onepd_domain::hashing::meta_identifiers;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdapterError;
use super::http::{self, Refusal};
use super::mapping::{self, json_number};

/// The adapter's name.
pub const NAME: &str = "meta_capi";

/// The most events Meta takes in one request.
pub const MAX_BATCH_SIZE: u32 = 1000;

/// Meta error codes that mean "too many calls, slow down".
const RATE_LIMIT_CODES: [i64; 4] = [4, 17, 32, 613];

/// Hashed `user_data` fields, sent as arrays.
const HASHED_FIELDS: [&str; 11] = ["em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"];

/// The custom audience schema, and the identifier field each column is read
/// from.
const AUDIENCE_SCHEMA: [(&str, &str); 10] = [
    ("EMAIL_SHA256", "em"),
    ("PHONE_SHA256", "ph"),
    ("FN", "fn"),
    ("LN", "ln"),
    ("GEN", "ge"),
    ("CT", "ct"),
    ("ST", "st"),
    ("ZIP", "zp"),
    ("COUNTRY", "country"),
    ("EXTERN_ID", "external_id"),
];

/// Unhashed `user_data` fields, sent as single strings.
const SINGLE_FIELDS: [&str; 4] = ["client_ip_address", "client_user_agent", "fbc", "fbp"];

/// The settings `onepd destination create --adapter meta_capi` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The pixel (dataset) the events are for.
    pixel_id: String,
    /// A Conversions API access token for the pixel.
    access_token: String,
    /// The Graph API's base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// The Graph API version.
    #[serde(default = "default_api_version")]
    api_version: String,
    /// Routes events to Events Manager's Test Events tab.
    #[serde(default)]
    test_event_code: Option<String>,
    /// Where the conversions happened (`website`, `app`, `physical_store`, …).
    #[serde(default = "default_action_source")]
    action_source: String,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://graph.facebook.com".to_owned()
}

fn default_api_version() -> String {
    "v21.0".to_owned()
}

fn default_action_source() -> String {
    "website".to_owned()
}

/// The Meta Conversions API adapter.
#[derive(Debug, Clone)]
pub struct MetaCapi {
    url: String,
    /// `{endpoint}/{api_version}`: where custom audiences are.
    graph: String,
    access_token: String,
    test_event_code: Option<String>,
    action_source: String,
    timeout: Duration,
}

impl MetaCapi {
    /// The adapter configured with `settings`: `pixel_id` and `access_token`
    /// are required; `endpoint`, `api_version`, `test_event_code`,
    /// `action_source` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<MetaCapi, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "pixel_id", &settings.pixel_id)?;
        mapping::required(NAME, "access_token", &settings.access_token)?;
        mapping::required(NAME, "api_version", &settings.api_version)?;
        mapping::required(NAME, "action_source", &settings.action_source)?;
        if !settings.pixel_id.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Err(mapping::settings_error(
                NAME,
                format!("settings.pixel_id: expected digits, found \"{}\"", settings.pixel_id),
            ));
        }
        let endpoint = mapping::base_url(NAME, "endpoint", &settings.endpoint)?;
        Ok(MetaCapi {
            url: format!("{endpoint}/{}/{}/events", settings.api_version.trim(), settings.pixel_id.trim()),
            graph: format!("{endpoint}/{}", settings.api_version.trim()),
            access_token: settings.access_token,
            test_event_code: settings.test_event_code.filter(|code| !code.is_empty()),
            action_source: settings.action_source,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    /// One entry of `data`, or why the event cannot be sent.
    fn server_event(&self, event: &PreparedEvent) -> Result<Value, String> {
        let event_name = match (event.message_type.as_str(), event.name.as_deref()) {
            ("page", _) => "PageView".to_owned(),
            (_, Some(name)) if !name.trim().is_empty() => standard_event(name).unwrap_or(name).to_owned(),
            _ => return Err("track without an event name".to_owned()),
        };
        let mut server_event = Map::new();
        server_event.insert("event_name".into(), json!(event_name));
        server_event.insert("event_time".into(), json!(mapping::unix_seconds(&event.timestamp)?));
        server_event.insert("event_id".into(), json!(event.event_id.to_string()));
        server_event.insert("action_source".into(), json!(self.action_source));
        if let Some(url) = mapping::page_url(&event.message) {
            server_event.insert("event_source_url".into(), json!(url));
        }
        server_event.insert("user_data".into(), Value::Object(user_data(event)));
        let custom_data = custom_data(&event_name, mapping::properties(&event.message));
        if !custom_data.is_empty() {
            server_event.insert("custom_data".into(), Value::Object(custom_data));
        }
        Ok(Value::Object(server_event))
    }
}

impl MetaCapi {
    /// The results known without sending, the events sent, and the one
    /// request (none when nothing is for Meta).
    fn build(&self, events: &[PreparedEvent]) -> Result<mapping::Built, DeliverError> {
        // Not a conversion (identify, group, alias): nothing for Meta to take
        // (see the module doc).
        let mapping::Mapped { results, sent, records: data } = mapping::map_events(events, |event| {
            matches!(event.message_type.as_str(), "track" | "page").then(|| self.server_event(event))
        });
        if data.is_empty() {
            return Ok(mapping::Built { results, sent, request: None });
        }
        let mut body = json!({ "data": data });
        if let Some(code) = &self.test_event_code {
            body["test_event_code"] = json!(code);
        }
        let request = http::json_post(
            &self.url,
            &[("access_token", &self.access_token)],
            Vec::new(),
            &body,
            sent.iter().map(|event| event.event_id),
            vec![self.access_token.clone()],
        )?;
        Ok(mapping::Built { results, sent, request: Some(request) })
    }

    /// Every request of a batch: the conversions, then the custom audience
    /// changes; the results known without sending; the events sent.
    fn build_all(&self, events: &[PreparedEvent]) -> Result<AllRequests, DeliverError> {
        let (changes, others): (Vec<PreparedEvent>, Vec<PreparedEvent>) =
            events.iter().cloned().partition(|event| AudienceChange::of(event).is_some());
        let mapping::Built { mut results, mut sent, request } = self.build(&others)?;
        let mut requests: Vec<RenderedRequest> = request.into_iter().collect();
        // By custom audience and direction, in the order first met.
        let mut groups: Vec<ChangeGroup> = Vec::new();
        for event in changes {
            let change = AudienceChange::of(&event).expect("partitioned");
            let Some(audience_id) = change.external_id.map(str::to_owned) else {
                results.push(EventResult {
                    event_id: event.event_id,
                    outcome: Outcome::permanent(format!(
                        "audience {:?} is connected without Meta's custom audience id: connect it again with \
                         --external-id <custom audience id>",
                        change.audience
                    )),
                });
                continue;
            };
            // Meta's ids are digits; anything else would change the path.
            if audience_id.is_empty() || !audience_id.bytes().all(|b| b.is_ascii_digit()) {
                results.push(EventResult {
                    event_id: event.event_id,
                    outcome: Outcome::permanent(format!(
                        "audience {:?}: Meta's custom audience id is digits, found {audience_id:?}",
                        change.audience
                    )),
                });
                continue;
            }
            let rows = audience_rows(&event);
            if rows.is_empty() {
                results.push(EventResult {
                    event_id: event.event_id,
                    outcome: Outcome::permanent("the person has no identifier Meta's custom audiences match on"),
                });
                continue;
            }
            let key = (audience_id, change.entered);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push((event, rows)),
                None => groups.push((key, vec![(event, rows)])),
            }
        }
        let schema: Vec<&str> = AUDIENCE_SCHEMA.iter().map(|(column, _)| *column).collect();
        for ((audience_id, add), members) in groups {
            let data: Vec<Value> = members.iter().flat_map(|(_, rows)| rows.iter().cloned()).collect();
            let body = json!({ "payload": { "schema": schema, "data": data } });
            let mut request = http::json_post(
                &format!("{}/{audience_id}/users", self.graph),
                &[("access_token", &self.access_token)],
                Vec::new(),
                &body,
                members.iter().map(|(event, _)| event.event_id),
                vec![self.access_token.clone()],
            )?;
            if !add {
                request.method = "DELETE".to_owned();
            }
            requests.push(request);
            sent.extend(members.into_iter().map(|(event, _)| event));
        }
        Ok((results, sent, requests))
    }
}

/// Every request of a batch, the results known without sending and the
/// events sent.
type AllRequests = (Vec<EventResult>, Vec<PreparedEvent>, Vec<RenderedRequest>);

/// The changes to one custom audience in one direction (its id, whether
/// they are adds), each with its rows.
type ChangeGroup = ((String, bool), Vec<(PreparedEvent, Vec<Value>)>);

/// The custom audience rows of one person: row *i* holds each column's
/// *i*-th value, `""` where there is none.
fn audience_rows(event: &PreparedEvent) -> Vec<Value> {
    let values = |field: &str| event.identifiers.get(field).map(Vec::as_slice).unwrap_or_default();
    let rows = AUDIENCE_SCHEMA.iter().map(|(_, field)| values(field).len()).max().unwrap_or(0);
    (0..rows)
        .map(|row| {
            let cells: Vec<&str> =
                AUDIENCE_SCHEMA.iter().map(|(_, field)| values(field).get(row).map_or("", String::as_str)).collect();
            json!(cells)
        })
        .collect()
}

#[async_trait]
impl Destination for MetaCapi {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::AdPlatform,
            identifiers: meta_identifiers(),
            max_batch_size: MAX_BATCH_SIZE,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (mut results, sent, requests) = self.build_all(events)?;
        // Any refusal refuses the batch: the engine retries or splits it,
        // and sending a part again changes nothing twice (see the module doc).
        for request in &requests {
            if let Err(refusal) = http::send_rendered(request, self.timeout).await? {
                return Err(classify(refusal));
            }
        }
        results.extend(http::every(&sent, &Outcome::Delivered));
        Ok(results)
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        Some(self.build_all(events).ok()?.2)
    }
}

/// Meta's standard event for a Segment e-commerce event name.
fn standard_event(name: &str) -> Option<&'static str> {
    Some(match name {
        "Order Completed" => "Purchase",
        "Product Added" => "AddToCart",
        "Checkout Started" => "InitiateCheckout",
        "Product Viewed" => "ViewContent",
        "Products Searched" => "Search",
        "Signed Up" => "CompleteRegistration",
        "Product Added to Wishlist" => "AddToWishlist",
        "Payment Info Entered" => "AddPaymentInfo",
        _ => return None,
    })
}

/// `user_data` from the prepared identifiers.
fn user_data(event: &PreparedEvent) -> Map<String, Value> {
    let mut user_data = Map::new();
    for field in HASHED_FIELDS {
        if let Some(values) = event.identifiers.get(field).filter(|values| !values.is_empty()) {
            user_data.insert(field.to_owned(), json!(values));
        }
    }
    for field in SINGLE_FIELDS {
        if let Some(value) = event.identifiers.get(field).and_then(|values| values.first()) {
            user_data.insert(field.to_owned(), json!(value));
        }
    }
    user_data
}

/// `custom_data` from the Segment e-commerce properties.
fn custom_data(event_name: &str, properties: &Map<String, Value>) -> Map<String, Value> {
    let mut custom_data = Map::new();
    if let Some(value) = mapping::value(properties) {
        custom_data.insert("value".into(), json_number(value));
    }
    if let Some(currency) = mapping::currency(properties) {
        custom_data.insert("currency".into(), json!(currency));
    }
    if let Some(order_id) = mapping::order_id(properties) {
        custom_data.insert("order_id".into(), json!(order_id));
    }
    let products = mapping::products(properties);
    let ids: Vec<&str> = products.iter().filter_map(|p| p.id.as_deref()).collect();
    if !ids.is_empty() {
        custom_data.insert("content_ids".into(), json!(ids));
        custom_data.insert("content_type".into(), json!("product"));
        let contents: Vec<Value> = products
            .iter()
            .filter_map(|product| {
                let mut content = Map::new();
                content.insert("id".into(), json!(product.id.as_deref()?));
                if let Some(quantity) = product.quantity {
                    content.insert("quantity".into(), json_number(quantity));
                }
                if let Some(price) = product.price {
                    content.insert("item_price".into(), json_number(price));
                }
                Some(Value::Object(content))
            })
            .collect();
        custom_data.insert("contents".into(), json!(contents));
        let items: f64 = products.iter().map(|p| p.quantity.unwrap_or(1.0)).sum();
        custom_data.insert("num_items".into(), json_number(items));
    }
    if let Some(name) = properties.get("name").and_then(mapping::text) {
        custom_data.insert("content_name".into(), json!(name));
    }
    if let Some(category) = properties.get("category").and_then(mapping::text) {
        custom_data.insert("content_category".into(), json!(category));
    }
    if event_name == "Search"
        && let Some(query) = properties.get("query").and_then(mapping::text)
    {
        custom_data.insert("search_string".into(), json!(query));
    }
    custom_data
}

/// Meta's refusal: a transient error or a rate limit may pass later, whatever
/// the status; anything else is read by status.
fn classify(refusal: Refusal) -> DeliverError {
    let error = refusal.json();
    let error = &error["error"];
    let transient = error["is_transient"].as_bool().unwrap_or(false);
    let rate_limited = error["code"].as_i64().is_some_and(|code| RATE_LIMIT_CODES.contains(&code));
    if transient || rate_limited {
        return DeliverError::Retryable { reason: refusal.reason(), retry_after: refusal.retry_after };
    }
    refusal.classify()
}
