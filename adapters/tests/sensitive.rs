//! No planted value reaches a restricted destination by any field.
//!
//! Each case plants realistic sensitive values (an SSN, a birth date, a
//! ZIP code, a patient id, a condition, a name, contact details) in every
//! field a destination can read — traits, properties, nested objects and
//! arrays, key names, page URLs (host included), titles, referrers,
//! campaigns, custom event names, click ids and Meta's cookies, allowlisted
//! fields (`currency`, `value`, products), the user id and the profile's
//! traits — prepares the event exactly as a delivery does
//! ([`onepd_projections::activation::prepare`]) for every built-in ad
//! platform (Meta, Google Ads, TikTok) of every restricted industry, and
//! GA4 in healthcare (no business associate agreement), delivers it to a
//! local stub, and searches the request the stub received — method, URL,
//! headers and body — for each planted value in clear, lowercased,
//! URL-encoded, as digits only, and as the SHA-256 of its raw or
//! normalized form. Hashed email and phone are the platforms' matching
//! keys and may appear hashed. The business's own webhook gets everything,
//! which shows the search finds what is there.
//!
//! The same cases check that `policy explain`'s rendering
//! ([`Destination::render`]) is byte for byte what was delivered.
//!
//! Run with `cargo test -p onepd-adapters --test sensitive`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use onepd_adapters::destinations::built_in;
use onepd_domain::destination::{Destination, PreparedEvent, RenderedRequest};
use onepd_domain::events::destination::{DestinationCreated, DestinationFilters, RetryPolicy};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::Industry;
use onepd_domain::hashing::sha256_hex;
use onepd_domain::identity::{Identifier, IdentifierKind, ProfileId};
use onepd_domain::policy::{Annotations, DestinationPolicy, WorkspacePolicy, WorkspaceSecrets};
use onepd_domain::{EventId, Payload, Position, RecordedEvent, StreamId, Timestamp, WorkspaceId};
use onepd_projections::activation::{Notes, Prepared, Target, prepare};
use onepd_projections::profile::{ProfileView, Trait};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// One request the stub received.
#[derive(Debug, Clone)]
struct Captured {
    method: Method,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    /// Everything a platform reads, as one text to search.
    fn text(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|(name, value)| format!("{name}: {value}")).collect();
        format!("{} {}\n{}\n{}", self.method, self.uri, headers.join("\n"), String::from_utf8_lossy(&self.body))
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Captured>>>);

impl Sink {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

async fn capture(State(sink): State<Sink>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> String {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
        .collect();
    sink.0.lock().unwrap().push(Captured { method, uri: uri.to_string(), headers, body: body.to_vec() });
    // TikTok reads a code; the others a 2xx.
    json!({"code": 0, "events_received": 1}).to_string()
}

async fn start_stub() -> (String, Sink) {
    let sink = Sink::default();
    let app = Router::new().fallback(capture).with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, sink)
}

const RESTRICTED: [Industry; 5] = [
    Industry::Healthcare,
    Industry::Pharmaceutical,
    Industry::FinancialServices,
    Industry::Insurance,
    Industry::Cryptocurrency,
];

/// Sensitive values, each with its normalized forms (whose SHA-256 must not
/// reach a restricted destination either). Email and phone are listed
/// apart: their hashes are the matching keys.
const PLANTED: &[(&str, &[&str])] = &[
    ("078-05-1120", &["078051120"]),
    ("1961-04-12", &["19610412"]),
    ("60640", &["60640"]),
    ("pt-48213", &["pt-48213"]),
    ("Type 2 diabetes", &["type 2 diabetes"]),
    ("HIV", &["hiv"]),
    ("HIV-positive-patient", &["hiv-positive-patient"]),
    ("Margaret Okafor", &["margaret okafor", "margaretokafor"]),
    ("Okafor", &["okafor"]),
    ("Margaret", &["margaret"]),
    ("female", &["f"]),
    ("Chicago", &["chicago"]),
    ("IL", &["il"]),
    ("4422 N Clarendon Ave", &["4422 n clarendon ave"]),
    ("hiv-prep", &["hiv-prep"]),
    ("Quarterman", &["quarterman"]),
    ("HIV positive Type 2 diabetes", &["hiv positive type 2 diabetes"]),
    ("HIVpositiveMargaretOkafor2024", &["hivpositivemargaretokafor2024"]),
    ("Diabetes2-Metformin500mg-Okafor7", &["diabetes2-metformin500mg-okafor7"]),
    ("Depression1.Sertraline50mg.Okafor1", &["depression1.sertraline50mg.okafor1"]),
    ("mArGaReToKaFoRhIvPoSiTiVe1", &["margaretokaforhivpositive1"]),
    ("3125557734.5", &["3125557734.5"]),
    ("0.0019610412", &["0.0019610412"]),
];

/// The matching keys: found in clear they leak, hashed they are allowed.
const CONTACT: &[&str] = &["margaret.okafor@example.com", "+1 (312) 555-7734", "13125557734"];

/// Key names that are themselves sensitive.
const KEYS: &[&str] = &["Have you ever been diagnosed with HIV?", "Margaret Okafor DOB", "hiv_status"];

/// Every form of `value` a search must not find.
fn forms(value: &str, hashed_too: bool, normalized: &[&str]) -> Vec<String> {
    let mut forms = vec![value.to_owned(), value.to_lowercase(), urlencode(value), urlencode(&value.to_lowercase())];
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 5 {
        forms.push(digits);
    }
    if hashed_too {
        forms.push(sha256_hex(value));
        forms.push(sha256_hex(&value.to_lowercase()));
        forms.extend(normalized.iter().map(|form| sha256_hex(form)));
    }
    forms.sort();
    forms.dedup();
    forms
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A message with `pick(i)` planted at every readable place.
fn planted(pick: &dyn Fn(usize) -> &'static str, key: &str, custom_event: bool, page: bool, dated: bool) -> Value {
    let phi = |i: usize| Value::from(pick(i));
    let event = if custom_event { "HIV Test Booked" } else { "Order Completed" };
    let mut message = json!({
        "type": if page { "page" } else { "track" },
        "messageId": pick(3),
        "userId": "pt-48213",
        "anonymousId": pick(4),
        // A birth date planted as the event's time.
        "timestamp": if dated { "1961-04-12T00:00:00.000Z" } else { "2026-11-29T10:00:00.000Z" },
        "receivedAt": "2026-11-29T10:00:05.000Z",
        "channel": pick(5),
        "integrations": {"All": true, "Meta": {"note": pick(6)}},
        "traits": {"email": CONTACT[0], "phone": CONTACT[1], "birthday": "1961-04-12", key: pick(7)},
        "properties": {
            "diagnosis": phi(8),
            "currency": "HIV",
            "value": pick(9),
            "revenue": "Type 2 diabetes",
            "price": 13125557734u64,
            "quantity": 19610412,
            "total": if page { json!(3125557734.5) } else { json!(0.0019610412) },
            "order_id": pick(10),
            "query": pick(11),
            "name": pick(12),
            "category": pick(13),
            "title": pick(14),
            "url": format!("https://hiv-prep.northside-health.example/{}", urlencode(pick(15))),
            "products": [{"product_id": pick(0), "sku": pick(1), "name": pick(2), "price": 12, "quantity": 1}],
            key: {"nested": [pick(7), {"deeper": pick(8)}]},
            "value_note": [pick(9), pick(10)],
        },
        "context": {
            "page": {
                "url": format!("https://hiv-prep.northside-health.example/{}?q={}", urlencode(pick(0)), urlencode(pick(1))),
                "title": pick(2), "path": format!("/{}", urlencode(pick(3))),
                "referrer": format!("https://search.example/?q={}", urlencode(pick(4))),
                "search": format!("?q={}", urlencode(pick(5))),
            },
            "campaign": {"name": pick(6), "term": pick(7), "source": pick(8)},
            "library": {"name": pick(9), "version": pick(10)},
            "locale": pick(11), "timezone": pick(12),
            "fbc": if dated { "fb.1.19610412000.IwAR2F4dbP0l7Mn1IawQQGCINEz7PYXQv" } else { "078-05-1120" },
            "fbp": if page { "fb.1.1596403881668.13125557734" } else { "fb.1.1764650000000.HIV-positive-patient" },
            "clickIds": {
                "gclid": match (custom_event, page) {
                    (true, _) => CONTACT[0],
                    (false, true) => "mArGaReToKaFoRhIvPoSiTiVe1",
                    (false, false) => "HIVpositiveMargaretOkafor2024",
                },
                "ttclid": {"value": if page { CONTACT[1] } else { "Depression1.Sertraline50mg.Okafor1" },
                           "capturedAt": "2026-11-29T09:00:00Z"},
                "wbraid": "Type 2 diabetes",
                "gbraid": if mapped_marker(key) { "Diabetes2-Metformin500mg-Okafor7" } else { pick(13) },
                key: pick(14),
            },
            "traits": {"firstName": "Margaret", "lastName": "Okafor", key: pick(15),
                       "email": "HIV positive Type 2 diabetes"},
            "consent": {"categoryPreferences": {"marketing": true, key: true}},
            "ip": "198.51.100.23",
            // Outside healthcare IP and user agent are matching fields sent as
            // the browser sent them (format-checked); in healthcare, withheld.
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
    });
    if !page {
        message["event"] = json!(event);
    } else {
        message["name"] = json!(pick(0));
    }
    message
}

/// Varies which odd click id a case plants, by its key.
fn mapped_marker(key: &str) -> bool {
    key.len().is_multiple_of(2)
}

fn profile_traits() -> BTreeMap<String, Trait> {
    let traits = json!({
        "firstName": "Margaret", "lastName": "Okafor", "gender": "female", "birthday": "1961-04-12",
        "address": {"street": "4422 N Clarendon Ave", "city": "Chicago", "state": "IL", "postalCode": "60640",
                    "country": "US"},
    });
    traits
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| {
            let found = Trait {
                value: value.clone(),
                position: Position(1),
                event_id: EventId(Uuid::from_u128(1)),
                source_id: None,
                timestamp: Timestamp(0),
            };
            (name.clone(), found)
        })
        .collect()
}

fn recorded(message: Value) -> RecordedEvent {
    RecordedEvent {
        position: Position(7),
        event_id: EventId(Uuid::from_u128(7)),
        workspace_id: WorkspaceId(Uuid::from_u128(1)),
        stream_id: StreamId::new("source-x").unwrap(),
        stream_version: 1,
        event_type: MessageAccepted::TYPE.into(),
        schema_version: 1,
        data: Payload::Data(json!({ "message": message })),
        metadata: json!({}),
        sealed: true,
        recorded_at: Timestamp(0),
        hash: [0; 32],
    }
}

fn created(adapter: &str, settings: Value, policy: DestinationPolicy) -> DestinationCreated {
    DestinationCreated {
        destination_id: Uuid::from_u128(9),
        name: adapter.into(),
        adapter: adapter.into(),
        url: None,
        settings,
        filters: DestinationFilters::default(),
        traits: vec!["firstName".into(), "birthday".into()],
        start: Position(1),
        retry: RetryPolicy::default(),
        policy,
    }
}

/// The built-in adapters at `url`: name, settings.
fn adapters(url: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("meta_capi", json!({"pixel_id": "123", "access_token": "EAAtoken", "endpoint": url})),
        (
            "google_ads",
            json!({"customer_id": "123-456-7890", "developer_token": "dev", "access_token": "tok",
                   "conversion_action": "42", "endpoint": url}),
        ),
        ("tiktok", json!({"access_token": "tok", "pixel_code": "PIX", "endpoint": url})),
        ("ga4", json!({"measurement_id": "G-TEST", "api_secret": "sec", "endpoint": url})),
        ("webhook", json!({"url": format!("{url}/hook")})),
    ]
}

/// What one adapter received and what explaining the event rendered.
struct Outcome {
    prepared: Prepared,
    rendered: Vec<RenderedRequest>,
    received: Vec<Captured>,
}

async fn deliver(
    adapter: &Arc<dyn Destination>,
    created: &DestinationCreated,
    workspace: &WorkspacePolicy,
    message: Value,
    sink: &Sink,
) -> Outcome {
    let description = adapter.describe().await.unwrap();
    let annotations = Annotations::default();
    let secrets = WorkspaceSecrets { external_id: [3; 32], field_names: [4; 32] };
    let traits = profile_traits();
    let profile = ProfileView {
        id: ProfileId(Uuid::from_u128(5)),
        identifiers: vec![
            Identifier::new(IdentifierKind::Email, CONTACT[0]),
            Identifier::new(IdentifierKind::Phone, "+13125557734"),
            Identifier::new(IdentifierKind::UserId, "pt-48213"),
        ],
        traits: Some(&traits),
        consent: None,
        held_back: &[],
    };
    let target = Target {
        destination: created,
        description: &description,
        workspace,
        annotations: &annotations,
        secrets: Some(&secrets),
    };
    let prepared = prepare(&recorded(message), Some(&profile), target);
    let (rendered, received) = match &prepared {
        Prepared::Send(event, _) => {
            let events: Vec<PreparedEvent> = vec![event.clone()];
            let rendered = adapter.render(&events).expect("built-in adapters render");
            adapter.deliver(&events).await.unwrap();
            (rendered, sink.take())
        }
        _ => (Vec::new(), Vec::new()),
    };
    Outcome { prepared, rendered, received }
}

/// Every planted value found in `text`, with the form it was found in.
fn leaks(text: &str, healthcare: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (value, normalized) in PLANTED {
        for form in forms(value, true, normalized) {
            if contains_word(text, &form) {
                found.push(format!("{value:?} as {form:?}"));
            }
        }
    }
    for value in CONTACT {
        for form in forms(value, false, &[]) {
            if contains_word(text, &form) {
                found.push(format!("{value:?} as {form:?}"));
            }
        }
    }
    for key in KEYS {
        for form in forms(key, false, &[]) {
            if text.contains(&form) {
                found.push(format!("key {key:?} as {form:?}"));
            }
        }
    }
    if healthcare {
        for value in ["198.51.100.23", "Mozilla/5.0"] {
            if text.contains(value) {
                found.push(format!("{value:?} in healthcare"));
            }
        }
    }
    found
}

/// Whether `form` occurs in `text` not as part of a longer run of letters
/// and digits (`IL` inside `EMAIL` is not a leak; `il` alone is).
fn contains_word(text: &str, form: &str) -> bool {
    let short = form.chars().count() <= 3;
    text.match_indices(form).any(|(at, _)| {
        if !short {
            return true;
        }
        let before = text[..at].chars().next_back();
        let after = text[at + form.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

fn stub() -> &'static (String, Sink) {
    static STUB: std::sync::OnceLock<(String, Sink)> = std::sync::OnceLock::new();
    STUB.get_or_init(|| runtime().block_on(start_stub()))
}

/// The rendered requests are what the stub received, byte for byte.
fn same_requests(adapter: &str, rendered: &[RenderedRequest], received: &[Captured]) -> Result<(), TestCaseError> {
    prop_assert_eq!(rendered.len(), received.len(), "{}: rendered {:?}, received {:?}", adapter, rendered, received);
    for (rendered, received) in rendered.iter().zip(received) {
        let url = reqwest::Url::parse(&rendered.url).unwrap();
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        prop_assert_eq!(&path, &received.uri, "{}", adapter);
        prop_assert_eq!(rendered.method.as_str(), received.method.as_str());
        for (name, value) in &rendered.headers {
            let sent = received.headers.iter().find(|(got, _)| got.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            prop_assert_eq!(sent, Some(value), "{}: header {}", adapter, name);
        }
        if adapter != "webhook" {
            prop_assert_eq!(&rendered.body, &received.body, "{}: the explained body is not the delivered one", adapter);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_planted_value_reaches_a_restricted_destination_by_any_field_and_explain_renders_what_was_sent(
        industry in prop::sample::select(RESTRICTED.to_vec()),
        offset in 0..PLANTED.len(),
        key in prop::sample::select(KEYS.to_vec()),
        custom_event in any::<bool>(),
        mapped in any::<bool>(),
        page in any::<bool>(),
        dated in any::<bool>(),
    ) {
        let pick = move |i: usize| PLANTED[(i + offset) % PLANTED.len()].0;
        let message = planted(&pick, key, custom_event, page, dated);
        let workspace = WorkspacePolicy {
            industry,
            allow_ip_user_agent: false,
            site_origin: Some("https://www.northside-health.example".into()),
        };
        let healthcare = industry == Industry::Healthcare;
        let (url, sink) = stub();
        for (name, settings) in adapters(url) {
            let adapter = built_in(name, &settings).unwrap();
            let mut policy = DestinationPolicy::default();
            if mapped {
                policy.event_names = [("HIV Test Booked".to_owned(), "Purchase".to_owned())].into();
            }
            let created = created(name, settings, policy);
            let outcome = runtime().block_on(deliver(&adapter, &created, &workspace, message.clone(), sink));
            same_requests(name, &outcome.rendered, &outcome.received)?;
            let text: String = outcome.received.iter().map(Captured::text).collect::<Vec<_>>().join("\n");
            let restricted = name != "webhook" && (name != "ga4" || healthcare);
            if restricted {
                let found = leaks(&text, healthcare);
                prop_assert!(found.is_empty(), "{} in {:?} received {:?}:\n{}", name, industry, found, text);
                // The ledger's record of the scrub names no key the client chose.
                if let Prepared::Send(_, Notes { scrubbed, .. }) = &outcome.prepared {
                    let record = format!("{scrubbed:?}");
                    for key in KEYS {
                        prop_assert!(!record.contains(key), "{} in the scrub record {}", key, record);
                    }
                }
                if dated || (custom_event && !mapped && !page) {
                    prop_assert!(matches!(outcome.prepared, Prepared::Withheld { rule: "policy", .. }), "{:?}", outcome.prepared);
                } else if name == "meta_capi" {
                    // Not vacuous: the event went, with its matching key
                    // hashed and the registered origin as its URL.
                    prop_assert!(text.contains(&sha256_hex(CONTACT[0])), "meta got no hashed email: {}", text);
                    prop_assert!(text.contains("https://www.northside-health.example"), "{}", text);
                }
            } else if name == "webhook" {
                // The business's own receiver gets everything: the search
                // finds what is there.
                prop_assert!(!leaks(&text, healthcare).is_empty(), "the webhook got nothing planted: {}", text);
                prop_assert!(text.contains("Type 2 diabetes") && text.contains(key), "{}", text);
            }
        }
    }
}
