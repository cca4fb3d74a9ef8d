//! What the adapters share in reading settings and Segment messages: settings
//! errors that name the field, endpoints, event times, and the Segment
//! e-commerce spec's properties (value, currency, products).
//!
//! **Does not:** normalize or hash identifiers; they arrive prepared.

use std::time::Duration;

use onepd_domain::destination::{EventResult, Outcome, PreparedEvent};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::AdapterError;
use super::http::DEFAULT_TIMEOUT;

/// Why an audience change is refused by an adapter that cannot sync
/// audiences yet: a permanent outcome, so it is dead-lettered where an
/// operator sees it, never taken as delivered.
pub(crate) const AUDIENCES_NOT_SYNCED: &str = "this adapter does not sync audiences yet: connect the audience to a destination that does (meta_capi, google_ads, tiktok, klaviyo, hubspot, mailchimp, braze, webhook)";

/// Reads `settings` into `T`; an error names the setting (`settings.pixel_id:
/// invalid type: integer `7`, expected a string`).
pub(crate) fn parse_settings<T: DeserializeOwned>(adapter: &str, settings: &Value) -> Result<T, AdapterError> {
    let settings = if settings.is_null() { &Value::Object(Map::new()) } else { settings };
    serde_path_to_error::deserialize(settings).map_err(|err| {
        let path = err.path().to_string();
        let reason = if path == "." {
            format!("settings: {}", err.inner())
        } else {
            format!("settings.{path}: {}", err.inner())
        };
        AdapterError::Settings { adapter: adapter.to_owned(), reason }
    })
}

/// A settings error for `adapter`.
pub(crate) fn settings_error(adapter: &str, reason: impl Into<String>) -> AdapterError {
    AdapterError::Settings { adapter: adapter.to_owned(), reason: reason.into() }
}

/// Checks that the setting `field` is not blank.
pub(crate) fn required(adapter: &str, field: &str, value: &str) -> Result<(), AdapterError> {
    if value.trim().is_empty() {
        return Err(settings_error(adapter, format!("settings.{field}: must not be empty")));
    }
    Ok(())
}

/// The setting `field` as a base URL: http or https, without a trailing `/`.
pub(crate) fn base_url(adapter: &str, field: &str, value: &str) -> Result<String, AdapterError> {
    let url = reqwest::Url::parse(value.trim()).map_err(|err| {
        settings_error(adapter, format!("settings.{field}: expected a URL, found \"{value}\": {err}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(settings_error(
            adapter,
            format!("settings.{field}: expected an http or https URL, found \"{value}\""),
        ));
    }
    Ok(value.trim().trim_end_matches('/').to_owned())
}

/// The request timeout a `timeout_ms` setting asks for.
pub(crate) fn timeout(adapter: &str, timeout_ms: Option<u64>) -> Result<Duration, AdapterError> {
    match timeout_ms {
        None => Ok(DEFAULT_TIMEOUT),
        Some(0) => Err(settings_error(adapter, "settings.timeout_ms: must be at least 1")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// The event's time as Unix microseconds, or the reason it has none.
pub(crate) fn unix_micros(timestamp: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .map(|at| at.timestamp_micros())
        .map_err(|_| format!("timestamp: expected RFC 3339, found \"{timestamp}\""))
}

/// The event's time as Unix seconds, or the reason it has none.
pub(crate) fn unix_seconds(timestamp: &str) -> Result<i64, String> {
    unix_micros(timestamp).map(|micros| micros.div_euclid(1_000_000))
}

/// The event's time in UTC as `yyyy-mm-dd hh:mm:ss+00:00`.
pub(crate) fn utc_date_time(timestamp: &str) -> Result<String, String> {
    let micros = unix_micros(timestamp)?;
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| format!("timestamp: out of range: \"{timestamp}\""))?;
    Ok(at.format("%Y-%m-%d %H:%M:%S+00:00").to_string())
}

/// The message's `properties`, or an empty map.
pub(crate) fn properties(message: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    message.get("properties").and_then(Value::as_object).unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// A string at `path` in `value` (`["context", "page", "url"]`).
pub(crate) fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |at, key| at.get(key))?.as_str().filter(|s| !s.is_empty())
}

/// The page URL: a page's `properties.url`, else `context.page.url`.
pub(crate) fn page_url(message: &Value) -> Option<&str> {
    string_at(message, &["properties", "url"]).or_else(|| string_at(message, &["context", "page", "url"]))
}

/// The referrer: a page's `properties.referrer`, else `context.page.referrer`.
pub(crate) fn page_referrer(message: &Value) -> Option<&str> {
    string_at(message, &["properties", "referrer"]).or_else(|| string_at(message, &["context", "page", "referrer"]))
}

/// A number, or a string that holds one (`"12.5"`).
pub(crate) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

/// A string, or a number written as one (ids are either).
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The event's monetary value: `value`, else `total`, else `revenue`, else
/// `price` (Segment e-commerce spec).
pub(crate) fn value(properties: &Map<String, Value>) -> Option<f64> {
    ["value", "total", "revenue", "price"].iter().find_map(|key| properties.get(*key).and_then(number))
}

/// The ISO 4217 currency, upper-cased.
pub(crate) fn currency(properties: &Map<String, Value>) -> Option<String> {
    properties.get("currency").and_then(Value::as_str).map(|c| c.trim().to_uppercase()).filter(|c| !c.is_empty())
}

/// The order id.
pub(crate) fn order_id(properties: &Map<String, Value>) -> Option<String> {
    properties.get("order_id").or_else(|| properties.get("orderId")).and_then(text)
}

/// One product of an e-commerce event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Product {
    /// `product_id`, else `sku`, else `id`.
    pub id: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `category`.
    pub category: Option<String>,
    /// `price`.
    pub price: Option<f64>,
    /// `quantity`.
    pub quantity: Option<f64>,
}

impl Product {
    fn from_object(object: &Map<String, Value>) -> Product {
        Product {
            id: ["product_id", "sku", "id"].iter().find_map(|key| object.get(*key).and_then(text)),
            name: object.get("name").and_then(text),
            category: object.get("category").and_then(text),
            price: object.get("price").and_then(number),
            quantity: object.get("quantity").and_then(number),
        }
    }
}

/// The event's products: each of `properties.products`, or the event itself
/// when it is about one product (`Product Added`, `Product Viewed`).
pub(crate) fn products(properties: &Map<String, Value>) -> Vec<Product> {
    if let Some(list) = properties.get("products").and_then(Value::as_array) {
        return list.iter().filter_map(Value::as_object).map(Product::from_object).collect();
    }
    let single = Product::from_object(properties);
    if properties.contains_key("product_id") || properties.contains_key("sku") { vec![single] } else { vec![] }
}

/// A JSON number from an `f64`, whole numbers without a fraction.
pub(crate) fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null)
    }
}

/// A batch mapped to a platform's records.
pub(super) struct Mapped<T> {
    /// The results known before sending: events the platform takes no such
    /// thing as (delivered without sending) and events that cannot be mapped
    /// (permanent).
    pub results: Vec<EventResult>,
    /// The events to send, in the order of `records`.
    pub sent: Vec<PreparedEvent>,
    /// The platform's records.
    pub records: Vec<T>,
}

/// A batch built into one request.
pub(super) struct Built {
    /// The results known without sending (see [`Mapped::results`]).
    pub results: Vec<EventResult>,
    /// The events the request carries.
    pub sent: Vec<PreparedEvent>,
    /// The request; `None` when nothing in the batch is for the platform.
    pub request: Option<onepd_domain::destination::RenderedRequest>,
}

/// Maps each event with `map`: `None` skips it (answered delivered without
/// sending), `Some(Err(reason))` refuses it for good.
pub(super) fn map_events<T>(
    events: &[PreparedEvent],
    mut map: impl FnMut(&PreparedEvent) -> Option<Result<T, String>>,
) -> Mapped<T> {
    let mut mapped = Mapped { results: Vec::with_capacity(events.len()), sent: Vec::new(), records: Vec::new() };
    for event in events {
        match map(event) {
            None => mapped.results.push(EventResult { event_id: event.event_id, outcome: Outcome::Delivered }),
            Some(Ok(record)) => {
                mapped.records.push(record);
                mapped.sent.push(event.clone());
            }
            Some(Err(reason)) => {
                mapped.results.push(EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) })
            }
        }
    }
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn google_ads_date_times_are_utc_with_an_explicit_offset() {
        assert_eq!(utc_date_time("2024-05-01T14:30:05.250+02:00").unwrap(), "2024-05-01 12:30:05+00:00");
    }

    #[test]
    fn a_product_event_is_its_own_product() {
        let props = json!({"product_id": 42, "name": "Mug", "price": "9.5", "quantity": 2});
        let products = products(props.as_object().unwrap());
        assert_eq!(products.len(), 1);
        assert_eq!(products[0].id.as_deref(), Some("42"));
        assert_eq!(products[0].price, Some(9.5));
    }

    #[test]
    fn whole_numbers_stay_integers() {
        assert_eq!(json_number(3.0), json!(3));
        assert_eq!(json_number(3.5), json!(3.5));
    }
}
