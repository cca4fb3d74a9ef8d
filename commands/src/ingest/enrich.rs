//! Enrichment: what onepd derives from how and when a message arrived.
//!
//! * `receivedAt`: when onepd received the message.
//! * Timestamps: `timestamp`, `originalTimestamp` and `sentAt` are read as
//!   RFC 3339 / ISO 8601 (with `Z` or an offset, with or without fractional
//!   seconds) and stored as RFC 3339 UTC with milliseconds
//!   (`2026-11-29T04:22:59.123Z`). `timestamp` is corrected for the client's
//!   clock skew, as Segment does: with `original` = `originalTimestamp` if
//!   present else `timestamp`, `timestamp = receivedAt − (sentAt − original)`
//!   when both are known, else `original`, else `receivedAt`.
//! * The client IP: `context.ip` when it is an IP address, else the address a
//!   trusted proxy forwarded, else the connection's peer.
//! * Click ids: `gclid`, `gbraid`, `wbraid`, `fbclid`, `ttclid` and
//!   `msclkid` in the page URL's query (`context.page.url`, else
//!   `context.page.search`, else a page call's `properties.url`/`search`)
//!   become `context.clickIds.<name>` = `{value, capturedAt}` (capture time:
//!   `receivedAt`) unless the client sent one, and an `fbclid` gives Meta's
//!   `context.fbc` = `fb.1.<capture time in ms>.<fbclid>` unless sent: what
//!   onepd.js does in the browser, for every SDK and source. Enrichment lists
//!   them (`clickIdsFromUrl`).
//!
//! **Invariants:** a timestamp that cannot be read is a fatal violation (rule
//! `timestamp`), found by [`check_timestamps`] before anything is changed; an
//! unreadable `context.ip` is not fatal (rule `ip`) and is replaced.

use std::net::IpAddr;

use chrono::DateTime;
use onepd_domain::Timestamp;
use onepd_domain::events::message::Violation;
use serde_json::{Map, Value};

use super::Received;
use super::shape::describe;

/// The timestamps a message carried, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SentTimes {
    /// `timestamp`, when sent.
    pub timestamp: Option<Timestamp>,
    /// `originalTimestamp`, when sent.
    pub original_timestamp: Option<Timestamp>,
    /// `sentAt`, when sent.
    pub sent_at: Option<Timestamp>,
}

impl SentTimes {
    /// When the event happened by the client's clock: `originalTimestamp`,
    /// else `timestamp`.
    pub fn original(&self) -> Option<Timestamp> {
        self.original_timestamp.or(self.timestamp)
    }

    /// The event's time corrected for the client's clock skew (Segment's rule).
    /// A correction that would leave RFC 3339's years 0000–9999 (a client
    /// whose `sentAt` is centuries off) is not believed: the client's own
    /// time is kept, so every stored time stays readable by any receiver.
    pub fn corrected(&self, received_at: Timestamp) -> Timestamp {
        self.correction(received_at).0
    }

    /// [`SentTimes::corrected`], and whether a skew was there but not
    /// believed: the correction would leave years 0000–9999, or the client's
    /// clock is more than [`MAX_BELIEVED_SKEW_MICROS`] (ten years) off.
    pub fn correction(&self, received_at: Timestamp) -> (Timestamp, bool) {
        match (self.original(), self.sent_at) {
            (Some(original), Some(sent_at)) => {
                let skew = sent_at.0.saturating_sub(received_at.0);
                let corrected = Timestamp(received_at.0.saturating_sub(sent_at.0.saturating_sub(original.0)));
                let believed =
                    skew.abs() <= MAX_BELIEVED_SKEW_MICROS && (RFC3339_FIRST..=RFC3339_LAST).contains(&corrected.0);
                if believed { (corrected, false) } else { (original, true) }
            }
            (Some(original), None) => (original, false),
            (None, _) => (received_at, false),
        }
    }
}

/// The most a client's clock (`sentAt` against `receivedAt`) may be off for
/// its skew to be corrected: ten years, in microseconds.
pub const MAX_BELIEVED_SKEW_MICROS: i64 = 10 * 366 * 86_400 * 1_000_000;

/// 0000-01-01T00:00:00Z, in microseconds since the epoch.
const RFC3339_FIRST: i64 = -62_167_219_200_000_000;
/// 9999-12-31T23:59:59.999999Z, in microseconds since the epoch.
const RFC3339_LAST: i64 = 253_402_300_799_999_999;

/// Reads the message's timestamps, or returns a violation for each one that
/// is present (not `null`) but not RFC 3339.
pub fn check_timestamps(message: &Map<String, Value>) -> Result<SentTimes, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut read = |field: &str| match message.get(field) {
        None | Some(Value::Null) => None,
        Some(value) => {
            let at = value.as_str().and_then(parse_timestamp);
            if at.is_none() {
                violations.push(Violation::new(
                    field,
                    "timestamp",
                    format!("{field}: expected RFC 3339, found {}", describe(value)),
                ));
            }
            at
        }
    };
    let times = SentTimes {
        timestamp: read("timestamp"),
        original_timestamp: read("originalTimestamp"),
        sent_at: read("sentAt"),
    };
    if violations.is_empty() { Ok(times) } else { Err(violations) }
}

/// Adds `receivedAt`, the corrected `timestamp`, `originalTimestamp`, `sentAt`
/// and `context.ip` to `message`, and `clockSkewMs`, `ip` and `ipSource` to
/// `enrichment`. An unreadable `context.ip` is recorded in `violations` and
/// its value in `originals`.
pub fn apply(
    message: &mut Map<String, Value>,
    enrichment: &mut Map<String, Value>,
    originals: &mut Map<String, Value>,
    violations: &mut Vec<Violation>,
    received: &Received,
    times: SentTimes,
) {
    message.insert("receivedAt".to_owned(), Value::String(received.at.to_rfc3339()));
    let (corrected, ignored) = times.correction(received.at);
    message.insert("timestamp".to_owned(), Value::String(corrected.to_rfc3339()));
    if ignored {
        // Said, so a reader knows the event's time is the client's own.
        enrichment.insert("clockSkewIgnored".to_owned(), Value::Bool(true));
    }
    match times.original() {
        Some(original) => message.insert("originalTimestamp".to_owned(), Value::String(original.to_rfc3339())),
        None => message.remove("originalTimestamp"),
    };
    if let Some(sent_at) = times.sent_at {
        message.insert("sentAt".to_owned(), Value::String(sent_at.to_rfc3339()));
        let skew_ms = sent_at.0.saturating_sub(received.at.0) / 1_000;
        enrichment.insert("clockSkewMs".to_owned(), Value::from(skew_ms));
    }
    resolve_ip(message, enrichment, originals, violations, received);
    click_ids_from_url(message, enrichment, received);
}

/// The query parameters that carry ad platforms' click ids.
const CLICK_ID_PARAMETERS: [&str; 6] = ["gclid", "gbraid", "wbraid", "fbclid", "ttclid", "msclkid"];

/// Adds the click ids of the page URL's query to `context` (see the module
/// doc).
fn click_ids_from_url(message: &mut Map<String, Value>, enrichment: &mut Map<String, Value>, received: &Received) {
    let text =
        |value: Option<&Value>| value.and_then(Value::as_str).filter(|text| text.contains('=')).map(str::to_owned);
    let page = message.get("context").and_then(|context| context.get("page"));
    let properties = message.get("properties");
    let query = [
        text(page.and_then(|page| page.get("url"))),
        text(page.and_then(|page| page.get("search"))),
        text(properties.and_then(|p| p.get("url"))),
        text(properties.and_then(|p| p.get("search"))),
    ]
    .into_iter()
    .flatten()
    .find_map(|url| {
        let query = url.split_once('?').map_or(url.as_str(), |(_, query)| query);
        let query = query.split('#').next().unwrap_or_default();
        let found: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, value)| CLICK_ID_PARAMETERS.contains(&name.as_ref()) && !value.is_empty())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        (!found.is_empty()).then_some(found)
    });
    let Some(found) = query else { return };
    let Some(context) = message.entry("context").or_insert_with(|| Value::Object(Map::new())).as_object_mut() else {
        return;
    };
    let captured_at = received.at.to_rfc3339();
    let mut added = Vec::new();
    for (name, value) in found {
        let click_ids = context.entry("clickIds").or_insert_with(|| Value::Object(Map::new()));
        let Some(click_ids) = click_ids.as_object_mut() else { return };
        if click_ids.contains_key(&name) {
            continue;
        }
        if name == "fbclid" && !context.contains_key("fbc") {
            let ms = received.at.0.div_euclid(1_000);
            context.insert("fbc".to_owned(), Value::String(format!("fb.1.{ms}.{value}")));
        }
        let click_ids = context.get_mut("clickIds").and_then(Value::as_object_mut).expect("inserted above");
        click_ids.insert(name.clone(), serde_json::json!({ "value": value, "capturedAt": captured_at }));
        added.push(Value::String(name));
    }
    if !added.is_empty() {
        enrichment.insert("clickIdsFromUrl".to_owned(), Value::Array(added));
    }
}

/// Picks the client IP and writes it to `context.ip`.
fn resolve_ip(
    message: &mut Map<String, Value>,
    enrichment: &mut Map<String, Value>,
    originals: &mut Map<String, Value>,
    violations: &mut Vec<Violation>,
    received: &Received,
) {
    let sent = message.get("context").and_then(|context| context.get("ip")).filter(|ip| !ip.is_null());
    let from_context = sent.and_then(Value::as_str).and_then(|text| text.trim().parse::<IpAddr>().ok());
    if let (Some(sent), None) = (sent, from_context) {
        violations.push(Violation::new(
            "context.ip",
            "ip",
            format!("context.ip: expected an IP address, found {}", describe(sent)),
        ));
    }
    let resolved = from_context
        .map(|ip| (ip, "context"))
        .or(received.forwarded_ip.map(|ip| (ip, "forwarded")))
        .or(received.peer_ip.map(|ip| (ip, "peer")));
    let Some((ip, source)) = resolved else {
        // Nothing better is known: an unreadable value is still not stored.
        if let Some(Value::Object(context)) = message.get_mut("context")
            && let Some(sent) = context.remove("ip")
            && !sent.is_null()
        {
            originals.insert("context.ip".to_owned(), sent);
        }
        return;
    };
    let text = ip.to_string();
    let context = message.entry("context").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(context) = context {
        let previous = context.insert("ip".to_owned(), Value::String(text.clone()));
        if let Some(previous) = previous
            && !previous.is_null()
            && previous.as_str() != Some(text.as_str())
        {
            originals.insert("context.ip".to_owned(), previous);
        }
    }
    enrichment.insert("ip".to_owned(), Value::String(text));
    enrichment.insert("ipSource".to_owned(), Value::from(source));
}

/// Reads an RFC 3339 / ISO 8601 timestamp with `Z` or an offset; fractional
/// seconds are optional, and `+hhmm` offsets are accepted too.
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    Timestamp::parse_rfc3339(text).or_else(|| {
        let parsed = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z").ok()?;
        Some(Timestamp(parsed.timestamp_micros()))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn received(at: &str) -> Received {
        Received {
            at: parse_timestamp(at).unwrap(),
            source_id: Uuid::nil(),
            peer_ip: Some("10.0.0.1".parse().unwrap()),
            forwarded_ip: None,
            request_id: "r1".into(),
        }
    }

    /// The message, enrichment and originals after enrichment, and the violations.
    type Enriched = (Map<String, Value>, Map<String, Value>, Map<String, Value>, Vec<Violation>);

    fn enrich(message: Value, received: &Received) -> Enriched {
        let mut message = message.as_object().cloned().unwrap();
        let times = check_timestamps(&message).unwrap();
        let (mut enrichment, mut originals, mut violations) = (Map::new(), Map::new(), Vec::new());
        apply(&mut message, &mut enrichment, &mut originals, &mut violations, received, times);
        (message, enrichment, originals, violations)
    }

    #[test]
    fn a_skew_correction_beyond_year_9999_keeps_the_clients_time() {
        let times = SentTimes {
            timestamp: None,
            original_timestamp: parse_timestamp("9999-12-31T23:59:59Z"),
            sent_at: parse_timestamp("0001-01-01T00:00:00Z"),
        };
        let received = parse_timestamp("2026-12-01T08:00:00Z").unwrap();
        assert_eq!(times.corrected(received).to_rfc3339(), "9999-12-31T23:59:59.000Z");
        let reverse = SentTimes { original_timestamp: times.sent_at, sent_at: times.original_timestamp, ..times };
        assert_eq!(reverse.corrected(received).to_rfc3339(), "0001-01-01T00:00:00.000Z");
        let sane = SentTimes {
            timestamp: None,
            original_timestamp: parse_timestamp("2026-12-01T07:59:00Z"),
            sent_at: parse_timestamp("2026-12-01T08:00:30Z"),
        };
        assert_eq!(sane.corrected(received).to_rfc3339(), "2026-12-01T07:58:30.000Z");
    }

    #[test]
    fn an_implausible_skew_is_not_corrected_and_enrichment_says_so() {
        let received = received("2026-12-01T08:00:00.000Z");
        let (message, enrichment, _, _) =
            enrich(json!({"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}), &received);
        assert_eq!(message["timestamp"], "0001-01-01T00:00:00.000Z");
        assert_eq!(enrichment["clockSkewIgnored"], true);
        let (message, enrichment, _, _) =
            enrich(json!({"timestamp": "2026-12-01T07:00:00Z", "sentAt": "2040-12-01T08:00:00Z"}), &received);
        assert_eq!(message["timestamp"], "2026-12-01T07:00:00.000Z", "a clock 14 years off is not believed");
        assert_eq!(enrichment["clockSkewIgnored"], true);
        let (_, enrichment, _, _) =
            enrich(json!({"timestamp": "2026-12-01T07:59:00Z", "sentAt": "2026-12-01T08:00:30Z"}), &received);
        assert!(enrichment.get("clockSkewIgnored").is_none());
    }

    #[test]
    fn click_ids_in_the_page_url_are_captured_for_every_sdk_and_give_meta_its_fbc() {
        let received = received("2026-12-01T08:00:00.000Z");
        let (message, enrichment, _, _) = enrich(
            json!({"timestamp": "2026-12-01T07:59:59Z", "context": {"page": {
                "url": "https://shop.example/landing?utm_source=x&gclid=Cj0KCQiA4NWrBhD-ARIsAFCK&fbclid=IwAR2F4-dbP0l7Mn1Iaw#top"}}}),
            &received,
        );
        let context = &message["context"];
        assert_eq!(
            context["clickIds"]["gclid"],
            json!({"value": "Cj0KCQiA4NWrBhD-ARIsAFCK", "capturedAt": "2026-12-01T08:00:00.000Z"})
        );
        assert_eq!(context["clickIds"]["fbclid"]["value"], "IwAR2F4-dbP0l7Mn1Iaw");
        assert_eq!(context["fbc"], format!("fb.1.{}.IwAR2F4-dbP0l7Mn1Iaw", received.at.0 / 1_000));
        assert_eq!(enrichment["clickIdsFromUrl"], json!(["gclid", "fbclid"]));
        // What the client sent wins.
        let (message, _, _, _) = enrich(
            json!({"timestamp": "2026-12-01T07:59:59Z", "context": {"fbc": "fb.1.1.sent", "clickIds": {"gclid": "sent"},
                   "page": {"search": "?gclid=fromurl&fbclid=abc"}}}),
            &received,
        );
        assert_eq!(message["context"]["clickIds"]["gclid"], "sent");
        assert_eq!(message["context"]["fbc"], "fb.1.1.sent");
        assert_eq!(message["context"]["clickIds"]["fbclid"]["value"], "abc");
    }

    #[test]
    fn timestamps_are_stored_as_utc_with_milliseconds() {
        assert_eq!(
            parse_timestamp("2026-11-29T05:22:59.123456+01:00").unwrap().to_rfc3339(),
            "2026-11-29T04:22:59.123Z"
        );
        assert_eq!(parse_timestamp("2026-11-29T04:22:59Z").unwrap().to_rfc3339(), "2026-11-29T04:22:59.000Z");
        assert_eq!(parse_timestamp("2026-11-29T04:22:59+0000").unwrap().to_rfc3339(), "2026-11-29T04:22:59.000Z");
    }

    #[test]
    fn a_timestamp_that_is_not_rfc3339_is_named() {
        let message = json!({"timestamp": "yesterday", "sentAt": 5});
        let violations = check_timestamps(message.as_object().unwrap()).unwrap_err();
        assert_eq!(
            violations,
            vec![
                Violation::new("timestamp", "timestamp", r#"timestamp: expected RFC 3339, found "yesterday""#),
                Violation::new("sentAt", "timestamp", "sentAt: expected RFC 3339, found 5"),
            ]
        );
    }

    #[test]
    fn a_client_clock_ten_seconds_fast_is_corrected() {
        let received = received("2026-11-29T04:00:00.000Z");
        let (message, enrichment, _, _) =
            enrich(json!({"timestamp": "2026-11-29T03:59:55.000Z", "sentAt": "2026-11-29T04:00:10.000Z"}), &received);
        assert_eq!(message["timestamp"], "2026-11-29T03:59:45.000Z");
        assert_eq!(message["originalTimestamp"], "2026-11-29T03:59:55.000Z");
        assert_eq!(message["receivedAt"], "2026-11-29T04:00:00.000Z");
        assert_eq!(enrichment["clockSkewMs"], 10_000);
    }

    #[test]
    fn original_timestamp_wins_over_timestamp() {
        let times = SentTimes { timestamp: Some(Timestamp(1)), original_timestamp: Some(Timestamp(2)), sent_at: None };
        assert_eq!(times.corrected(Timestamp(99)), Timestamp(2));
    }

    #[test]
    fn without_timestamps_the_receive_time_is_used() {
        let received = received("2026-11-29T04:22:59.123Z");
        let (message, enrichment, _, _) = enrich(json!({}), &received);
        assert_eq!(message["timestamp"], "2026-11-29T04:22:59.123Z");
        assert!(message.get("originalTimestamp").is_none());
        assert!(enrichment.get("clockSkewMs").is_none());
    }

    #[test]
    fn the_ip_in_the_context_wins() {
        let (message, enrichment, _, violations) =
            enrich(json!({"context": {"ip": "203.0.113.9"}}), &received("2026-01-01T00:00:00Z"));
        assert_eq!(message["context"]["ip"], "203.0.113.9");
        assert_eq!(enrichment["ipSource"], "context");
        assert!(violations.is_empty());
    }

    #[test]
    fn a_forwarded_ip_wins_over_the_peer() {
        let mut received = received("2026-01-01T00:00:00Z");
        received.forwarded_ip = Some("198.51.100.7".parse().unwrap());
        let (message, enrichment, _, _) = enrich(json!({}), &received);
        assert_eq!(message["context"]["ip"], "198.51.100.7");
        assert_eq!(enrichment["ip"], "198.51.100.7");
        assert_eq!(enrichment["ipSource"], "forwarded");
    }

    #[test]
    fn an_unreadable_context_ip_is_replaced_by_the_peer() {
        let (message, enrichment, originals, violations) =
            enrich(json!({"context": {"ip": "localhost"}}), &received("2026-01-01T00:00:00Z"));
        assert_eq!(message["context"]["ip"], "10.0.0.1");
        assert_eq!(enrichment["ipSource"], "peer");
        assert_eq!(originals["context.ip"], "localhost");
        assert_eq!(
            violations,
            vec![Violation::new("context.ip", "ip", r#"context.ip: expected an IP address, found "localhost""#)]
        );
    }
}
