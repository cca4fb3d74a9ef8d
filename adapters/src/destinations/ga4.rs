//! `ga4`: Google Analytics 4 Measurement Protocol, web streams.
//!
//! A batch becomes one request per client and user, at most 25 events each:
//!
//! ```text
//! POST {endpoint}/mp/collect?measurement_id={measurement_id}&api_secret={api_secret}
//! {"client_id", "user_id"?, "timestamp_micros",
//!  "events": [{"name", "params": {…}, "timestamp_micros"}]}
//! ```
//!
//! References: <https://developers.google.com/analytics/devguides/collection/protocol/ga4/sending-events>
//! (request format and limits: 25 events per request, names up to 40
//! characters of letters, digits and underscores starting with a letter),
//! <https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference/events>
//! (recommended events).
//!
//! - `client_id` is the message's `anonymousId` (else the profile id),
//!   `user_id` its `userId`.
//! - Event names: Segment e-commerce events map to GA4 recommended events
//!   (`Order Completed` → `purchase`, …); any other track becomes its name in
//!   snake case. A page is `page_view` with `page_location`, `page_title` and
//!   `page_referrer`; a screen is `screen_view` with `screen_name`.
//! - Params: the scalar properties (names in snake case, strings cut to 100
//!   characters, at most 25), `products` as `items`, `order_id` as
//!   `transaction_id`, `query` as `search_term`, and `value` from
//!   value/total/revenue.
//! - Identify, group and alias messages are answered [`Outcome::Delivered`]
//!   without being sent: GA4 takes events only.
//!
//! The Measurement Protocol does not validate events: a 2xx means the
//! request was taken. Each request's answer becomes the outcome of its
//! events; when every request fails, the whole call fails as the first did.

use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::destination::{
    AUDIENCE_MESSAGE_TYPE, Category, DeliverError, Description, Destination, EventResult, Outcome, PreparedEvent,
    RenderedRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdapterError;
use super::http;
use super::mapping::{self, json_number};

/// The adapter's name.
pub const NAME: &str = "ga4";

/// The most events one `deliver` call takes; they are split into requests
/// of at most [`EVENTS_PER_REQUEST`] per client.
pub const MAX_BATCH_SIZE: u32 = 500;

/// The most events one Measurement Protocol request may carry.
pub const EVENTS_PER_REQUEST: usize = 25;

/// The longest event or parameter name.
const MAX_NAME_CHARS: usize = 40;

/// The longest string parameter value.
const MAX_VALUE_CHARS: usize = 100;

/// The most parameters one event may carry.
const MAX_PARAMS: usize = 25;

/// Event names GA4 keeps for itself.
const RESERVED_NAMES: [&str; 20] = [
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_remove",
    "app_update",
    "error",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_open",
    "os_update",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
];

/// Name prefixes GA4 keeps for itself.
const RESERVED_PREFIXES: [&str; 3] = ["firebase_", "ga_", "google_"];

/// The settings `onepd destination create --adapter ga4` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The web stream's measurement id (`G-XXXXXXX`).
    measurement_id: String,
    /// A Measurement Protocol API secret of the stream.
    api_secret: String,
    /// The collection base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://www.google-analytics.com".to_owned()
}

/// The GA4 Measurement Protocol adapter.
#[derive(Debug, Clone)]
pub struct Ga4 {
    url: String,
    measurement_id: String,
    api_secret: String,
    timeout: Duration,
}

impl Ga4 {
    /// The adapter configured with `settings`: `measurement_id` and
    /// `api_secret` are required; `endpoint` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<Ga4, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "measurement_id", &settings.measurement_id)?;
        mapping::required(NAME, "api_secret", &settings.api_secret)?;
        let endpoint = mapping::base_url(NAME, "endpoint", &settings.endpoint)?;
        Ok(Ga4 {
            url: format!("{endpoint}/mp/collect"),
            measurement_id: settings.measurement_id.trim().to_owned(),
            api_secret: settings.api_secret,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    /// The request for one chunk of `group`.
    fn request(&self, group: &Group<'_>, chunk: &[(&PreparedEvent, Value)]) -> Result<RenderedRequest, DeliverError> {
        let first_micros = chunk.iter().filter_map(|(_, e)| e["timestamp_micros"].as_i64()).min();
        let mut body = json!({
            "client_id": group.client_id,
            "events": chunk.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        });
        if let Some(user_id) = &group.user_id {
            body["user_id"] = json!(user_id);
        }
        if let Some(micros) = first_micros {
            body["timestamp_micros"] = json!(micros);
        }
        http::json_post(
            &self.url,
            &[("measurement_id", &self.measurement_id), ("api_secret", &self.api_secret)],
            Vec::new(),
            &body,
            chunk.iter().map(|(event, _)| event.event_id),
            vec![self.api_secret.clone()],
        )
    }

    /// The results known without sending and the requests, each at most
    /// [`EVENTS_PER_REQUEST`] events of one client and user.
    fn build(&self, events: &[PreparedEvent]) -> Result<(Vec<EventResult>, Vec<RenderedRequest>), DeliverError> {
        let mut results = Vec::with_capacity(events.len());
        let mut groups: Vec<Group> = Vec::new();
        for event in events {
            if event.message_type == AUDIENCE_MESSAGE_TYPE {
                // GA4 builds its audiences itself: a change cannot be synced.
                let outcome = Outcome::permanent(mapping::AUDIENCES_NOT_SYNCED);
                results.push(EventResult { event_id: event.event_id, outcome });
                continue;
            }
            if !matches!(event.message_type.as_str(), "track" | "page" | "screen") {
                // GA4 takes events only (see the module doc).
                results.push(EventResult { event_id: event.event_id, outcome: Outcome::Delivered });
                continue;
            }
            let client_id = mapping::string_at(&event.message, &["anonymousId"])
                .map(str::to_owned)
                .or_else(|| event.profile_id.clone());
            let Some(client_id) = client_id else {
                let outcome = Outcome::permanent("no anonymousId or profile to use as the GA4 client_id");
                results.push(EventResult { event_id: event.event_id, outcome });
                continue;
            };
            let ga_event = match ga_event(event) {
                Ok(ga_event) => ga_event,
                Err(reason) => {
                    results.push(EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) });
                    continue;
                }
            };
            let user_id = mapping::string_at(&event.message, &["userId"]).map(str::to_owned);
            match groups.iter_mut().find(|g| g.client_id == client_id && g.user_id == user_id) {
                Some(group) => group.events.push((event, ga_event)),
                None => groups.push(Group { client_id, user_id, events: vec![(event, ga_event)] }),
            }
        }
        let mut requests = Vec::new();
        for group in &groups {
            for chunk in group.events.chunks(EVENTS_PER_REQUEST) {
                requests.push(self.request(group, chunk)?);
            }
        }
        Ok((results, requests))
    }
}

/// The events of one client and user, in batch order.
struct Group<'a> {
    client_id: String,
    user_id: Option<String>,
    events: Vec<(&'a PreparedEvent, Value)>,
}

#[async_trait]
impl Destination for Ga4 {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::Analytics,
            // The client and user ids come from the message itself.
            identifiers: Vec::new(),
            max_batch_size: MAX_BATCH_SIZE,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (mut results, requests) = self.build(events)?;
        let mut failures = Vec::new();
        for request in &requests {
            let outcome = match http::post_rendered(request, self.timeout).await {
                Ok(_) => Outcome::Delivered,
                Err(err @ DeliverError::Adapter(_)) => return Err(err),
                Err(err) => {
                    let outcome = http::as_outcome(&err);
                    failures.push(err);
                    outcome
                }
            };
            results.extend(
                request.events.iter().map(|event_id| EventResult { event_id: *event_id, outcome: outcome.clone() }),
            );
        }
        if !requests.is_empty() && failures.len() == requests.len() {
            return Err(failures.swap_remove(0));
        }
        Ok(results)
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        Some(self.build(events).ok()?.1)
    }
}

/// One GA4 event, or why the event cannot be sent.
fn ga_event(event: &PreparedEvent) -> Result<Value, String> {
    let properties = mapping::properties(&event.message);
    let mut params = Map::new();
    let name = match event.message_type.as_str() {
        "page" => {
            if let Some(url) = mapping::page_url(&event.message) {
                params.insert("page_location".into(), json!(url));
            }
            let title = mapping::string_at(&event.message, &["properties", "title"])
                .or_else(|| mapping::string_at(&event.message, &["context", "page", "title"]));
            if let Some(title) = title {
                params.insert("page_title".into(), json!(cut(title)));
            }
            if let Some(referrer) = mapping::page_referrer(&event.message) {
                params.insert("page_referrer".into(), json!(referrer));
            }
            "page_view".to_owned()
        }
        "screen" => {
            if let Some(name) = event.name.as_deref() {
                params.insert("screen_name".into(), json!(cut(name)));
            }
            "screen_view".to_owned()
        }
        _ => match event.name.as_deref().map(event_name) {
            Some(name) if !name.is_empty() => name,
            _ => return Err("track without an event name GA4 can take".to_owned()),
        },
    };
    if let Some(value) = mapping::value(properties) {
        params.insert("value".into(), json_number(value));
    }
    if let Some(currency) = mapping::currency(properties) {
        params.insert("currency".into(), json!(currency));
    }
    if let Some(order_id) = mapping::order_id(properties) {
        params.insert("transaction_id".into(), json!(order_id));
    }
    if let Some(query) = properties.get("query").and_then(mapping::text) {
        params.insert("search_term".into(), json!(cut(&query)));
    }
    let items: Vec<Value> = mapping::products(properties)
        .into_iter()
        .filter(|product| product.id.is_some() || product.name.is_some())
        .map(|product| {
            let mut item = Map::new();
            if let Some(id) = product.id {
                item.insert("item_id".into(), json!(id));
            }
            if let Some(name) = product.name {
                item.insert("item_name".into(), json!(cut(&name)));
            }
            if let Some(category) = product.category {
                item.insert("item_category".into(), json!(cut(&category)));
            }
            if let Some(price) = product.price {
                item.insert("price".into(), json_number(price));
            }
            if let Some(quantity) = product.quantity {
                item.insert("quantity".into(), json_number(quantity));
            }
            Value::Object(item)
        })
        .collect();
    if !items.is_empty() {
        params.insert("items".into(), json!(items));
    }
    // Mapped above, or not a parameter of their own.
    const TAKEN: [&str; 13] = [
        "value", "total", "revenue", "currency", "order_id", "orderId", "query", "products", "url", "title",
        "referrer", "path", "search",
    ];
    for (key, value) in properties {
        if params.len() >= MAX_PARAMS {
            break;
        }
        if TAKEN.contains(&key.as_str()) {
            continue;
        }
        let value = match value {
            Value::String(s) => json!(cut(s)),
            Value::Number(_) => value.clone(),
            Value::Bool(b) => json!(b.to_string()),
            _ => continue,
        };
        let key = snake_case(key);
        if !key.is_empty() && !params.contains_key(&key) {
            params.insert(key, value);
        }
    }
    // An event's own time, so events of one request keep their times.
    let micros = mapping::unix_micros(&event.timestamp)?;
    Ok(json!({ "name": name, "params": params, "timestamp_micros": micros }))
}

/// The GA4 name for a track event: a recommended event for a Segment
/// e-commerce name, else the name in snake case, kept clear of GA4's
/// reserved names.
pub fn event_name(name: &str) -> String {
    let recommended = match name {
        "Order Completed" => "purchase",
        "Order Refunded" => "refund",
        "Product Added" => "add_to_cart",
        "Product Removed" => "remove_from_cart",
        "Cart Viewed" => "view_cart",
        "Checkout Started" => "begin_checkout",
        "Payment Info Entered" => "add_payment_info",
        "Product Viewed" => "view_item",
        "Product Clicked" => "select_item",
        "Product List Viewed" => "view_item_list",
        "Products Searched" => "search",
        "Product Added to Wishlist" => "add_to_wishlist",
        "Promotion Viewed" => "view_promotion",
        "Promotion Clicked" => "select_promotion",
        "Signed Up" => "sign_up",
        "Signed In" => "login",
        _ => "",
    };
    if !recommended.is_empty() {
        return recommended.to_owned();
    }
    let name = snake_case(name);
    if name.is_empty() {
        return name;
    }
    let reserved = RESERVED_NAMES.contains(&name.as_str()) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p));
    let name =
        if reserved || !name.starts_with(|c: char| c.is_ascii_alphabetic()) { format!("event_{name}") } else { name };
    name.chars().take(MAX_NAME_CHARS).collect::<String>().trim_end_matches('_').to_owned()
}

/// Lowercase letters, digits and single underscores (`Video Played!` →
/// `video_played`), at most 40 characters.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            // camelCase splits at the capital.
            if c.is_ascii_uppercase() && previous_lower && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = c.is_ascii_lowercase();
            out.push(c.to_ascii_lowercase());
        } else {
            previous_lower = false;
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        }
    }
    let out: String = out.trim_end_matches('_').chars().take(MAX_NAME_CHARS).collect();
    out.trim_end_matches('_').to_owned()
}

/// `value` cut to GA4's 100 characters.
fn cut(value: &str) -> String {
    value.chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_names_become_ga4_names() {
        assert_eq!(event_name("Order Completed"), "purchase");
        assert_eq!(event_name("Video Played!"), "video_played");
        assert_eq!(event_name("newsletterSignup"), "newsletter_signup");
        assert_eq!(event_name("3D Model Viewed"), "event_3d_model_viewed");
        assert_eq!(event_name("session_start"), "event_session_start");
        assert!(event_name(&"long name ".repeat(10)).len() <= 40);
        assert_eq!(event_name("!!!"), "");
    }
}
