//! Generated messages of every restricted industry, with sensitive values
//! planted everywhere a person's data can hide: nothing planted reaches a
//! restricted ad platform, and an analytics destination gets it all.

use proptest::prelude::*;

use super::*;

const RESTRICTED: [Industry; 5] = [
    Industry::Healthcare,
    Industry::Pharmaceutical,
    Industry::FinancialServices,
    Industry::Insurance,
    Industry::Cryptocurrency,
];

/// Every planted text and URL part contains `zq`, so one search finds any
/// of them; [`SHAPED`] values are found by their own text.
const MARKER: &str = "zq";

/// Free text that only deny-by-default removes (no shape gives it away).
const TEXT: &[&str] = &[
    "Type 2 diabetes zq-diag",
    "HIV positive zq-hiv",
    "chemotherapy cycle 3 zq-chemo",
    "Dr. Zq Quillfeather",
    "referred for oncology zq-onc",
    "bipolar disorder zq-bp",
    "metformin 500mg zq-rx",
];

/// Values whose shape gives them away, even under an allowlisted key.
const SHAPED: &[&str] = &[
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "123-45-6789",
    "(555) 867-5309",
    "+14155550123",
    "1985-04-12",
    "198.51.100.77",
];

/// The card number planted as a JSON number.
const CARD_NUMBER: u64 = 4111111111111111;

/// Keys that say nothing, or little, about what they hold.
const KEYS: &[&str] = &["note", "x1", "details", "diagnosis", "comment", "patient", "data", "info", "a", "label"];

/// The standard allowlist's `properties`.
const ALLOWLISTED: &[&str] = &["value", "revenue", "total", "currency", "price", "quantity"];

const CUSTOM_EVENT: &str = "Diabetes Screening zq-evt";

fn base(kind: u8) -> Value {
    let mut message = json!({
        "messageId": "550e8400-e29b-41d4-a716-446655440000",
        "anonymousId": "7d1c2f4e-6a55-4c6b-9f0e-2b1f3c4d5e6f",
        "userId": "jane.zq@example.com",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"value": 120, "currency": "USD"},
        "context": {
            "ip": "198.51.100.77",
            "userAgent": "Mozilla/5.0 zq-ua",
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "page": {
                "url": "https://clinic.example.com/zq-path-diabetes?patient=zq-query-123&email=jane.zq%40example.com#zq-frag",
                "path": "/zq-path-diabetes",
                "title": "zq-title Diabetes care",
                "referrer": "https://search.example.com/?q=zq-ref",
                "search": "?patient=zq-query-123",
            },
        },
    });
    match kind {
        0 => {
            message["type"] = json!("track");
            message["event"] = json!(CUSTOM_EVENT);
        }
        1 => {
            message["type"] = json!("track");
            message["event"] = json!("Order Completed");
        }
        2 => {
            message["type"] = json!("page");
            message["name"] = json!("zq-pagename Diabetes care");
        }
        3 => {
            message["type"] = json!("screen");
            message["name"] = json!("zq-screen Results");
        }
        _ => {
            message["type"] = json!("identify");
            message["traits"] = json!({"firstName": "Zq-Jane", "email": "jane.zq@example.com"});
        }
    }
    message
}

/// Plants a sensitive value: `place` says where, `key` and `marker` which.
fn plant(message: &mut Value, place: usize, key: usize, marker: usize) {
    let key = KEYS[key % KEYS.len()];
    let any = TEXT.iter().chain(SHAPED).nth(marker % (TEXT.len() + SHAPED.len())).copied().unwrap_or_default();
    let shaped = SHAPED[marker % SHAPED.len()];
    match place {
        0 => message["properties"][key] = json!(any),
        1 => message["properties"]["visit"][key]["inner"] = json!(any),
        2 => {
            if !message["properties"]["products"].is_array() {
                message["properties"]["products"] = json!([]);
            }
            if let Some(products) = message["properties"]["products"].as_array_mut() {
                products.push(json!({"sku": "a1", key: any}));
            }
        }
        3 => message["traits"][key] = json!(any),
        4 => message["context"]["traits"][key] = json!(any),
        5 => message["context"]["campaign"][key] = json!(any),
        6 => message["properties"][ALLOWLISTED[marker % ALLOWLISTED.len()]] = json!(shaped),
        7 => message["properties"][ALLOWLISTED[marker % ALLOWLISTED.len()]] = json!(CARD_NUMBER),
        8 => message["context"][key] = json!(any),
        9 => message[key] = json!([any, {"deeper": any}]),
        _ => message["properties"]["tags"] = json!([any, "ok"]),
    }
}

fn message() -> impl Strategy<Value = Value> {
    (0..5u8, prop::collection::vec((0..11usize, 0..KEYS.len(), 0..64usize), 0..10)).prop_map(|(kind, plants)| {
        let mut message = base(kind);
        for (place, key, marker) in plants {
            plant(&mut message, place, key, marker);
        }
        message
    })
}

/// The planted values found in `text`.
fn leaks(text: &str) -> Vec<String> {
    let mut found: Vec<String> =
        SHAPED.iter().filter(|shaped| text.contains(**shaped)).map(|shaped| (*shaped).to_owned()).collect();
    if text.to_lowercase().contains(MARKER) {
        found.push(text.to_owned());
    }
    if text.contains(&CARD_NUMBER.to_string()) {
        found.push(CARD_NUMBER.to_string());
    }
    found
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nothing_planted_reaches_a_restricted_ad_platform(
        message in message(),
        industry in prop::sample::select(RESTRICTED.to_vec()),
        mapped in any::<bool>(),
        allow_ip_user_agent in any::<bool>(),
    ) {
        let workspace = WorkspacePolicy { industry, allow_ip_user_agent, site_origin: None };
        let mut destination = DestinationPolicy::default();
        if mapped {
            destination.event_names.insert(CUSTOM_EVENT.to_owned(), "Schedule".to_owned());
        }
        match apply(&message, Category::AdPlatform, &workspace, &destination, &Annotations::default()) {
            Verdict::Send { message: output, scrubs, .. } => {
                let output = serde_json::to_string(&output).unwrap();
                prop_assert!(leaks(&output).is_empty(), "leaked {:?} in {}", leaks(&output), output);
                for scrub in scrubs {
                    prop_assert!(leaks(&scrub.field).is_empty(), "{scrub:?}");
                    prop_assert!(leaks(&scrub.reason).is_empty(), "{scrub:?}");
                }
            }
            Verdict::Withhold { reason } => {
                prop_assert!(leaks(&reason).is_empty(), "{reason}");
                prop_assert!(!mapped && message["event"] == CUSTOM_EVENT);
            }
        }
    }

    #[test]
    fn an_analytics_destination_receives_every_planted_value(
        message in message(),
        industry in prop::sample::select(RESTRICTED.to_vec()),
    ) {
        let workspace = WorkspacePolicy { industry, allow_ip_user_agent: false, site_origin: None };
        let verdict = apply(&message, Category::Analytics, &workspace, &DestinationPolicy::default(), &Annotations::default());
        prop_assert_eq!(verdict, Verdict::Send { message, scrubs: Vec::new(), withhold_ip_user_agent: false });
    }
}
