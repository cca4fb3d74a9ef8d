//! The built-in destination adapters against local stub servers: each test
//! configures an adapter's endpoint to a stub on 127.0.0.1 that records what
//! it receives, delivers a few prepared events (identifiers hashed as the
//! engine would, with `onepd_domain::hashing::prepare`), and checks the exact
//! request and how the answer is read.
//!
//! Run with `cargo test -p onepd-adapters --test destinations`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::Method;
use hmac::{Hmac, Mac};
use onepd_adapters::destinations::{AdapterError, BUILT_IN, built_in};
use onepd_domain::destination::{Category, DeletionAnswer, DeletionRequest, DeliverError, Outcome, PreparedEvent};
use onepd_domain::hashing::{google_ads_identifiers, meta_identifiers, sha256_hex, tiktok_identifiers};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

mod stub;
use stub::*;

// ---------------------------------------------------------------------------
// Meta Conversions API.

#[tokio::test]
async fn meta_capi_sends_a_purchase_with_the_hashed_email_and_the_event_id_as_dedup_key() {
    let stub = Stub::start(Reply::ok(json!({"events_received": 2, "messages": [], "fbtrace_id": "x"}))).await;
    let meta = adapter(
        "meta_capi",
        json!({"pixel_id": "1234567890", "access_token": "tok-1", "endpoint": stub.url, "test_event_code": "TEST42"}),
    )
    .await;
    let table = meta_identifiers();
    let email = prepared(&table, "em", " Ann@Example.com ");
    let phone = prepared(&table, "ph", "+1 (650) 555-1234");
    let purchase = with_identifiers(
        order_completed(1),
        &[
            ("em", &[email.as_str()]),
            ("ph", &[phone.as_str()]),
            ("client_ip_address", &["203.0.113.9"]),
            ("client_user_agent", &["Mozilla/5.0"]),
            ("fbc", &["fb.1.1554763741205.AbCdEf"]),
        ],
    );

    let results = meta.deliver(&[purchase, page_view(2), identify(3)]).await.unwrap();

    let request = stub.only_request();
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/v21.0/1234567890/events");
    assert_eq!(request.query.get("access_token").map(String::as_str), Some("tok-1"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    assert_eq!(body["test_event_code"], "TEST42");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "the identify is not sent: {body}");
    let purchase = &data[0];
    assert_eq!(purchase["event_name"], "Purchase");
    assert_eq!(purchase["event_id"], event_id(1).to_string());
    assert_eq!(purchase["event_time"], 1_714_566_605);
    assert_eq!(purchase["action_source"], "website");
    assert_eq!(purchase["event_source_url"], "https://shop.example/checkout/done");
    assert_eq!(email, sha256_hex("ann@example.com"));
    assert_eq!(purchase["user_data"]["em"], json!([email]));
    assert_eq!(purchase["user_data"]["ph"], json!([phone]));
    assert_eq!(purchase["user_data"]["client_ip_address"], "203.0.113.9");
    assert_eq!(purchase["user_data"]["client_user_agent"], "Mozilla/5.0");
    assert_eq!(purchase["user_data"]["fbc"], "fb.1.1554763741205.AbCdEf");
    let custom = &purchase["custom_data"];
    assert_eq!(custom["value"], 59.5);
    assert_eq!(custom["currency"], "EUR");
    assert_eq!(custom["order_id"], "order-77");
    assert_eq!(custom["content_ids"], json!(["sku-1", "sku-2"]));
    assert_eq!(custom["contents"][0], json!({"id": "sku-1", "quantity": 3, "item_price": 9.5}));
    assert_eq!(custom["num_items"], 4);
    let page = &data[1];
    assert_eq!(page["event_name"], "PageView");
    assert_eq!(page["event_source_url"], "https://shop.example/");
    for n in 1..=3 {
        assert_eq!(outcome_of(&results, n), &Outcome::Delivered, "event {n}");
    }
}

#[tokio::test]
async fn meta_capi_retries_a_rate_limit_meta_answers_with_a_400() {
    let body = json!({"error": {"message": "User request limit reached", "type": "OAuthException", "code": 17}});
    let stub = Stub::start(Reply::status(400, body.to_string())).await;
    let meta = adapter("meta_capi", json!({"pixel_id": "1", "access_token": "t", "endpoint": stub.url})).await;

    let err = meta.deliver(&[order_completed(1)]).await.unwrap_err();

    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
}

#[tokio::test]
async fn meta_capi_keeps_the_access_token_out_of_error_reasons() {
    let meta = adapter(
        "meta_capi",
        json!({"pixel_id": "1", "access_token": "very-secret-token", "endpoint": "http://127.0.0.1:9"}),
    )
    .await;

    let err = meta.deliver(&[order_completed(1)]).await.unwrap_err();

    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
    assert!(!err.to_string().contains("very-secret-token"), "{err}");
}

// ---------------------------------------------------------------------------
// Google Ads enhanced conversions.

fn google_settings(url: &str) -> Value {
    json!({
        "customer_id": "123-456-7890",
        "developer_token": "dev-tok",
        "access_token": "oauth-tok",
        "login_customer_id": "999-000-1111",
        "conversion_actions": {"Order Completed": "555", "Signed Up": "customers/1234567890/conversionActions/777"},
        "endpoint": url,
    })
}

#[tokio::test]
async fn google_ads_uploads_conversions_with_hashed_identifiers_and_utc_date_times() {
    let stub = Stub::start(Reply::ok(json!({"results": [{}, {}], "jobId": "1"}))).await;
    let google = adapter("google_ads", google_settings(&stub.url)).await;
    let table = google_ads_identifiers();
    let email = prepared(&table, "hashed_email", "Jane.Doe@gmail.com");
    let phone = prepared(&table, "hashed_phone_number", "+1 650 555 1234");
    let purchase = with_identifiers(
        order_completed(1),
        &[("hashed_email", &[email.as_str()]), ("hashed_phone_number", &[phone.as_str()]), ("gclid", &["Cj0KCQ-test"])],
    );
    let viewed = event(2, "track", Some("Product Viewed"), "2024-05-01T12:00:00Z", json!({"type": "track"}));
    let signed_up = with_identifiers(
        event(3, "track", Some("Signed Up"), "2024-05-02T00:00:00Z", json!({"type": "track"})),
        &[("hashed_email", &[email.as_str()])],
    );

    let results = google.deliver(&[purchase, viewed, signed_up]).await.unwrap();

    let request = stub.only_request();
    assert_eq!(request.path, "/v18/customers/1234567890:uploadClickConversions");
    assert_eq!(request.header("authorization"), Some("Bearer oauth-tok"));
    assert_eq!(request.header("developer-token"), Some("dev-tok"));
    assert_eq!(request.header("login-customer-id"), Some("9990001111"));
    let body = request.json();
    assert_eq!(body["partialFailure"], true);
    let conversions = body["conversions"].as_array().unwrap();
    assert_eq!(conversions.len(), 2, "Product Viewed has no conversion action: {body}");
    let purchase = &conversions[0];
    assert_eq!(purchase["conversionAction"], "customers/1234567890/conversionActions/555");
    assert_eq!(purchase["conversionDateTime"], "2024-05-01 12:30:05+00:00");
    assert_eq!(purchase["conversionValue"], 59.5);
    assert_eq!(purchase["currencyCode"], "EUR");
    assert_eq!(purchase["orderId"], "order-77");
    assert_eq!(purchase["gclid"], "Cj0KCQ-test");
    assert_eq!(email, sha256_hex("janedoe@gmail.com"));
    assert_eq!(
        purchase["userIdentifiers"],
        json!([
            {"userIdentifierSource": "FIRST_PARTY", "hashedEmail": email},
            {"userIdentifierSource": "FIRST_PARTY", "hashedPhoneNumber": phone}
        ])
    );
    let signed_up = &conversions[1];
    assert_eq!(signed_up["conversionAction"], "customers/1234567890/conversionActions/777");
    assert_eq!(signed_up["conversionDateTime"], "2024-05-02 00:00:00+00:00");
    assert_eq!(signed_up["orderId"], event_id(3).to_string(), "without an order id, the event id deduplicates");
    for n in 1..=3 {
        assert_eq!(outcome_of(&results, n), &Outcome::Delivered, "event {n}");
    }
}

#[tokio::test]
async fn google_ads_turns_a_partial_failure_into_a_permanent_outcome_for_that_conversion() {
    let answer = json!({
        "partialFailureError": {
            "code": 3,
            "message": "The click was not found.",
            "details": [{
                "@type": "type.googleapis.com/google.ads.googleads.v18.errors.GoogleAdsFailure",
                "errors": [{
                    "errorCode": {"conversionUploadError": "CLICK_NOT_FOUND"},
                    "message": "The click was not found.",
                    "location": {"fieldPathElements": [{"fieldName": "conversions", "index": 1}, {"fieldName": "gclid"}]}
                }]
            }]
        },
        "results": [{"gclid": "a"}, {}]
    });
    let stub = Stub::start(Reply::ok(answer)).await;
    let google = adapter("google_ads", google_settings(&stub.url)).await;
    let good = with_identifiers(order_completed(1), &[("gclid", &["a"])]);
    let bad = with_identifiers(order_completed(2), &[("gclid", &["b"])]);

    let results = google.deliver(&[good, bad]).await.unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    match outcome_of(&results, 2) {
        Outcome::Permanent { reason } => assert!(reason.contains("CLICK_NOT_FOUND"), "{reason}"),
        other => panic!("expected permanent, found {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// TikTok Events API.

#[tokio::test]
async fn tiktok_sends_standard_events_with_the_access_token_header_and_hashed_email() {
    let stub = Stub::start(Reply::ok(json!({"code": 0, "message": "OK", "request_id": "r", "data": {}}))).await;
    let tiktok =
        adapter("tiktok", json!({"access_token": "tt-tok", "pixel_code": "CPIXEL123", "endpoint": stub.url})).await;
    let table = tiktok_identifiers();
    let email = prepared(&table, "email", "Ann@Example.com");
    let purchase = with_identifiers(
        order_completed(1),
        &[("email", &[email.as_str()]), ("ttclid", &["E.C.P.abc"]), ("ip", &["203.0.113.9"])],
    );

    let results = tiktok.deliver(&[purchase, page_view(2), identify(3)]).await.unwrap();

    let request = stub.only_request();
    assert_eq!(request.path, "/open_api/v1.3/event/track/");
    assert_eq!(request.header("access-token"), Some("tt-tok"));
    let body = request.json();
    assert_eq!(body["event_source"], "web");
    assert_eq!(body["event_source_id"], "CPIXEL123");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "the identify is not sent: {body}");
    let purchase = &data[0];
    assert_eq!(purchase["event"], "CompletePayment");
    assert_eq!(purchase["event_id"], event_id(1).to_string());
    assert_eq!(purchase["event_time"], 1_714_566_605);
    assert_eq!(purchase["user"], json!({"email": email, "ttclid": "E.C.P.abc", "ip": "203.0.113.9"}));
    assert_eq!(purchase["properties"]["value"], 59.5);
    assert_eq!(purchase["properties"]["currency"], "EUR");
    assert_eq!(purchase["properties"]["contents"][1]["content_id"], "sku-2");
    assert_eq!(purchase["page"]["url"], "https://shop.example/checkout/done");
    assert_eq!(data[1]["event"], "Pageview");
    assert_eq!(data[1]["page"], json!({"url": "https://shop.example/", "referrer": "https://search.example/"}));
    for n in 1..=3 {
        assert_eq!(outcome_of(&results, n), &Outcome::Delivered, "event {n}");
    }
}

#[tokio::test]
async fn tiktok_reads_the_code_in_its_200_answer() {
    for (code, retryable) in [(40100, true), (50000, true), (40002, false)] {
        let stub = Stub::start(Reply::ok(json!({"code": code, "message": "no"}))).await;
        let tiktok = adapter("tiktok", json!({"access_token": "t", "pixel_code": "P", "endpoint": stub.url})).await;

        let err = tiktok.deliver(&[order_completed(1)]).await.unwrap_err();

        match (retryable, &err) {
            (true, DeliverError::Retryable { reason, .. }) | (false, DeliverError::BatchRejected { reason }) => {
                assert!(reason.contains(&code.to_string()), "{reason}")
            }
            _ => panic!("code {code}: unexpected {err:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// GA4 Measurement Protocol.

#[tokio::test]
async fn ga4_groups_events_by_client_and_sends_at_most_25_per_request() {
    let stub = Stub::start(Reply::status(204, "")).await;
    let ga4 = adapter("ga4", json!({"measurement_id": "G-TEST1", "api_secret": "sec", "endpoint": stub.url})).await;
    let mut events: Vec<PreparedEvent> = (1..=30)
        .map(|n| {
            event(
                n,
                "track",
                Some("Video Played"),
                "2024-05-01T12:00:00Z",
                json!({"type": "track", "anonymousId": "client-a", "userId": "user-a", "properties": {"videoId": n as u64, "muted": true}}),
            )
        })
        .collect();
    let mut page = page_view(31);
    page.message["anonymousId"] = json!("client-b");
    events.push(page);
    events.push(identify(32));

    let results = ga4.deliver(&events).await.unwrap();

    let requests = stub.requests();
    assert_eq!(requests.len(), 3, "25 + 5 for client-a, 1 for client-b");
    for request in &requests {
        assert_eq!(request.path, "/mp/collect");
        assert_eq!(request.query.get("measurement_id").map(String::as_str), Some("G-TEST1"));
        assert_eq!(request.query.get("api_secret").map(String::as_str), Some("sec"));
    }
    let bodies: Vec<Value> = requests.iter().map(Captured::json).collect();
    let sizes: Vec<(String, usize)> = bodies
        .iter()
        .map(|b| (b["client_id"].as_str().unwrap().to_owned(), b["events"].as_array().unwrap().len()))
        .collect();
    let mut sizes_sorted = sizes.clone();
    sizes_sorted.sort();
    assert_eq!(sizes_sorted, [("client-a".to_owned(), 5), ("client-a".to_owned(), 25), ("client-b".to_owned(), 1)]);
    let first_a = bodies.iter().find(|b| b["client_id"] == "client-a").unwrap();
    assert_eq!(first_a["user_id"], "user-a");
    assert_eq!(first_a["timestamp_micros"], 1_714_564_800_000_000_i64);
    assert_eq!(first_a["events"][0]["name"], "video_played");
    assert_eq!(first_a["events"][0]["params"]["video_id"], 1);
    assert_eq!(first_a["events"][0]["params"]["muted"], "true");
    let b = bodies.iter().find(|b| b["client_id"] == "client-b").unwrap();
    assert!(b.get("user_id").is_none(), "{b}");
    assert_eq!(b["events"][0]["name"], "page_view");
    assert_eq!(
        b["events"][0]["params"],
        json!({"page_location": "https://shop.example/", "page_title": "Shop", "page_referrer": "https://search.example/"})
    );
    assert_eq!(results.len(), 32);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
}

#[tokio::test]
async fn ga4_maps_an_order_to_a_purchase_with_items() {
    let stub = Stub::start(Reply::status(204, "")).await;
    let ga4 = adapter("ga4", json!({"measurement_id": "G-TEST1", "api_secret": "sec", "endpoint": stub.url})).await;

    ga4.deliver(&[order_completed(1)]).await.unwrap();

    let purchase = &stub.only_request().json()["events"][0];
    assert_eq!(purchase["name"], "purchase");
    assert_eq!(purchase["params"]["transaction_id"], "order-77");
    assert_eq!(purchase["params"]["value"], 59.5);
    assert_eq!(purchase["params"]["currency"], "EUR");
    assert_eq!(
        purchase["params"]["items"][0],
        json!({"item_id": "sku-1", "item_name": "Mug", "price": 9.5, "quantity": 3})
    );
}

// ---------------------------------------------------------------------------
// Signed webhook.

#[tokio::test]
async fn webhook_signs_the_exact_body_it_sends() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let webhook = adapter(
        "webhook",
        json!({"url": format!("{}/hooks/onepd", stub.url), "secret": "whsec", "headers": {"X-Tenant": "acme"}}),
    )
    .await;
    let mut purchase = with_identifiers(order_completed(1), &[("email", &["ann@example.com"])]);
    purchase.traits.insert("plan".into(), json!("pro"));

    let results = webhook.deliver(&[purchase, identify(2)]).await.unwrap();

    let request = stub.only_request();
    assert_eq!(request.path, "/hooks/onepd");
    assert_eq!(request.header("x-tenant"), Some("acme"));
    let signature = request.header("x-onepd-signature").expect("a signature header");
    let (t, v1) = signature.split_once(",v1=").expect("t=…,v1=…");
    let t = t.strip_prefix("t=").expect("t=");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse::<u64>().unwrap()) < 60, "t is the current time: {t}");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    mac.verify_slice(&hex::decode(v1).unwrap()).expect("the signature verifies");
    let body = request.json();
    assert!(body["sentAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{body}");
    let first = &body["batch"][0];
    assert_eq!(first["eventId"], event_id(1).to_string());
    assert_eq!(first["position"], 101);
    assert_eq!(first["type"], "track");
    assert_eq!(first["name"], "Order Completed");
    assert_eq!(first["timestamp"], "2024-05-01T14:30:05.250+02:00");
    assert_eq!(first["message"]["properties"]["order_id"], "order-77");
    assert_eq!(first["identifiers"], json!({"email": ["ann@example.com"]}));
    assert_eq!(first["traits"], json!({"plan": "pro"}));
    assert_eq!(first["profileId"], "profile-1");
    assert_eq!(body["batch"][1]["type"], "identify");
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
}

#[tokio::test]
async fn a_tampered_webhook_body_does_not_verify() {
    let stub = Stub::start(Reply::status(200, "")).await;
    let webhook = adapter("webhook", json!({"url": stub.url, "secret": "whsec"})).await;

    webhook.deliver(&[identify(1)]).await.unwrap();

    let request = stub.only_request();
    let signature = request.header("x-onepd-signature").unwrap();
    let (t, v1) = signature.trim_start_matches("t=").split_once(",v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body[..request.body.len() - 1]);
    assert!(mac.verify_slice(&hex::decode(v1).unwrap()).is_err());
}

#[tokio::test]
async fn a_webhook_without_a_secret_sends_no_signature() {
    let stub = Stub::start(Reply::status(200, "")).await;
    let webhook = adapter("webhook", json!({"url": stub.url})).await;

    webhook.deliver(&[identify(1)]).await.unwrap();

    assert_eq!(stub.only_request().header("x-onepd-signature"), None);
}

#[tokio::test]
async fn a_webhook_is_asked_to_delete_an_erased_person_in_a_signed_request_and_ad_platforms_say_unsupported() {
    let stub = Stub::start(Reply::status(200, "")).await;
    let webhook = adapter("webhook", json!({"url": stub.url, "secret": "whsec"})).await;
    let request = DeletionRequest {
        request_id: Uuid::now_v7(),
        profile_ids: vec!["profile-1".into()],
        identifiers: BTreeMap::from([("email".to_owned(), vec!["ann@example.com".to_owned()])]),
    };

    assert_eq!(webhook.delete(&request).await.unwrap(), DeletionAnswer::Requested);

    let sent = stub.only_request();
    let signature = sent.header("x-onepd-signature").expect("signed");
    let (t, v1) = signature.trim_start_matches("t=").split_once(",v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&sent.body);
    mac.verify_slice(&hex::decode(v1).unwrap()).expect("the signature verifies");
    let body = sent.json();
    assert_eq!(body["type"], "delete");
    assert_eq!(body["requestId"], request.request_id.to_string());
    assert_eq!(body["profileIds"], json!(["profile-1"]));
    assert_eq!(body["identifiers"], json!({"email": ["ann@example.com"]}));
    for name in ["meta_capi", "tiktok", "google_ads", "ga4"] {
        let platform = adapter(name, settings_for(name, "http://127.0.0.1:9", None)).await;
        assert_eq!(platform.delete(&request).await.unwrap(), DeletionAnswer::Unsupported, "{name}");
    }
}

// ---------------------------------------------------------------------------
// How every adapter reads a failed request.

/// Settings for `adapter` that send `order_completed` to `url`.
fn settings_for(adapter: &str, url: &str, timeout_ms: Option<u64>) -> Value {
    let mut settings = match adapter {
        "meta_capi" => json!({"pixel_id": "1", "access_token": "t", "endpoint": url}),
        "google_ads" => google_settings(url),
        "tiktok" => json!({"access_token": "t", "pixel_code": "P", "endpoint": url}),
        "ga4" => json!({"measurement_id": "G-1", "api_secret": "s", "endpoint": url}),
        "webhook" => json!({"url": url}),
        "klaviyo" => json!({"api_key": "pk_test", "endpoint": url}),
        "hubspot" => json!({"access_token": "pat-test", "hub_id": "123", "endpoint": url}),
        "mailchimp" => json!({"api_key": "key-us6", "list_id": "L1", "endpoint": url}),
        "braze" => json!({"api_key": "braze-key", "endpoint": url}),
        other => panic!("no settings for {other}"),
    };
    if let Some(ms) = timeout_ms {
        settings["timeout_ms"] = json!(ms);
    }
    settings
}

/// An event every adapter sends.
fn sendable() -> PreparedEvent {
    with_identifiers(order_completed(1), &[("gclid", &["g"]), ("email", &["ann@example.com"]), ("user_id", &["u1"])])
}

#[tokio::test]
async fn a_500_with_retry_after_is_retryable_after_that_wait_for_every_adapter() {
    for name in BUILT_IN {
        let stub = Stub::start(Reply::status(500, "boom").with_header("Retry-After", "7")).await;
        let destination = adapter(name, settings_for(name, &stub.url, None)).await;

        let err = destination.deliver(&[sendable()]).await.unwrap_err();

        match err {
            DeliverError::Retryable { reason, retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)), "{name}");
                assert!(reason.contains("500"), "{name}: {reason}");
            }
            other => panic!("{name}: expected retryable, found {other:?}"),
        }
        assert_eq!(stub.requests().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_429_is_retryable_for_every_adapter() {
    for name in BUILT_IN {
        let stub = Stub::start(Reply::status(429, "slow down")).await;
        let destination = adapter(name, settings_for(name, &stub.url, None)).await;

        let err = destination.deliver(&[sendable()]).await.unwrap_err();

        assert!(matches!(err, DeliverError::Retryable { retry_after: None, .. }), "{name}: {err:?}");
    }
}

#[tokio::test]
async fn a_400_rejects_the_batch_with_the_status_and_the_body_for_every_adapter() {
    for name in BUILT_IN {
        let stub = Stub::start(Reply::status(400, r#"{"error":{"message":"bad field"}}"#)).await;
        let destination = adapter(name, settings_for(name, &stub.url, None)).await;

        let err = destination.deliver(&[sendable()]).await.unwrap_err();

        match err {
            DeliverError::BatchRejected { reason } => {
                assert!(reason.contains("400") && reason.contains("bad field"), "{name}: {reason}")
            }
            other => panic!("{name}: expected batch rejected, found {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_destination_that_never_answers_is_retryable_once_the_client_times_out() {
    for name in BUILT_IN {
        let stub = Stub::start(Reply::hang()).await;
        let destination = adapter(name, settings_for(name, &stub.url, Some(200))).await;
        let started = Instant::now();

        let err = destination.deliver(&[sendable()]).await.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(5), "{name}: took {:?}", started.elapsed());
        match err {
            DeliverError::Retryable { reason, .. } => assert!(reason.contains("timed out"), "{name}: {reason}"),
            other => panic!("{name}: expected retryable, found {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    let destination = adapter("webhook", json!({"url": "http://127.0.0.1:9/"})).await;

    let err = destination.deliver(&[identify(1)]).await.unwrap_err();

    assert!(matches!(&err, DeliverError::Retryable { reason, .. } if reason.contains("connection failed")), "{err:?}");
}

// ---------------------------------------------------------------------------
// Descriptions and settings.

#[tokio::test]
async fn ad_platforms_describe_the_domain_identifier_tables() {
    let meta = adapter("meta_capi", settings_for("meta_capi", "http://127.0.0.1:1", None)).await;
    let google = adapter("google_ads", settings_for("google_ads", "http://127.0.0.1:1", None)).await;
    let tiktok = adapter("tiktok", settings_for("tiktok", "http://127.0.0.1:1", None)).await;

    let meta = meta.describe().await.unwrap();
    let google = google.describe().await.unwrap();
    let tiktok = tiktok.describe().await.unwrap();

    assert_eq!(
        (meta.category, meta.max_batch_size, meta.identifiers),
        (Category::AdPlatform, 1000, meta_identifiers())
    );
    assert_eq!(
        (tiktok.category, tiktok.max_batch_size, tiktok.identifiers),
        (Category::AdPlatform, 1000, tiktok_identifiers())
    );
    assert_eq!((google.category, google.max_batch_size), (Category::AdPlatform, 2000));
    let names: Vec<&str> = google.identifiers.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        names,
        ["hashed_email", "hashed_phone_number", "gclid", "gbraid", "wbraid"],
        "click uploads take email, phone and click ids only"
    );
    for name in BUILT_IN {
        let description = adapter(name, settings_for(name, "http://127.0.0.1:1", None)).await.describe().await.unwrap();
        assert_eq!(description.name, name);
        description.validate().unwrap_or_else(|err| panic!("{err}"));
    }
}

#[tokio::test]
async fn ga4_and_the_webhook_describe_their_categories_and_batch_sizes() {
    let ga4 = adapter("ga4", settings_for("ga4", "http://127.0.0.1:1", None)).await.describe().await.unwrap();
    assert_eq!((ga4.category, ga4.max_batch_size), (Category::Analytics, 500));

    let webhook =
        adapter("webhook", json!({"url": "http://127.0.0.1:1", "batch_size": 50, "category": "marketing_automation"}))
            .await
            .describe()
            .await
            .unwrap();
    assert_eq!((webhook.category, webhook.max_batch_size), (Category::MarketingAutomation, 50));
    let names: Vec<&str> = webhook.identifiers.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(names, ["email", "phone", "user_id", "anonymous_id"]);
}

#[test]
fn an_unknown_adapter_is_refused_by_name() {
    let err = built_in("nope", &json!({})).err().expect("an error");
    assert_eq!(err, AdapterError::Unknown("nope".into()));
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let cases = [
        ("meta_capi", json!({"access_token": "t"}), "pixel_id"),
        ("meta_capi", json!({"pixel_id": 7, "access_token": "t"}), "settings.pixel_id"),
        ("meta_capi", json!({"pixel_id": "1", "access_token": "t", "pixel": "x"}), "pixel"),
        ("meta_capi", json!({"pixel_id": "1", "access_token": " "}), "settings.access_token"),
        ("meta_capi", json!({"pixel_id": "1", "access_token": "t", "endpoint": "ftp://x"}), "settings.endpoint"),
        (
            "google_ads",
            json!({"customer_id": "1", "developer_token": "d", "access_token": "a"}),
            "settings.conversion_action",
        ),
        (
            "google_ads",
            json!({"customer_id": "abc", "developer_token": "d", "access_token": "a", "conversion_action": "1"}),
            "settings.customer_id",
        ),
        ("tiktok", json!({"access_token": "t"}), "pixel_code"),
        ("ga4", json!({"measurement_id": "G-1"}), "api_secret"),
        ("ga4", json!({"measurement_id": "G-1", "api_secret": "s", "timeout_ms": 0}), "settings.timeout_ms"),
        ("webhook", json!({"url": "http://x", "batch_size": 0}), "settings.batch_size"),
        ("webhook", json!({"url": "http://x", "headers": {"X-Bad": "a\nb"}}), "settings.headers"),
        ("webhook", json!({"url": "http://x", "category": "ad_platform"}), "must be hashed"),
        ("webhook", json!({"url": "http://x", "identifiers": [{"name": "em"}]}), "settings.identifiers[0]"),
    ];
    for (adapter, settings, field) in cases {
        match built_in(adapter, &settings) {
            Err(AdapterError::Settings { adapter: named, reason }) => {
                assert_eq!(named, adapter);
                assert!(reason.contains(field), "{adapter} {settings}: {reason}");
            }
            Err(other) => panic!("{adapter} {settings}: unexpected {other}"),
            Ok(_) => panic!("{adapter} {settings}: accepted"),
        }
    }
}

#[tokio::test]
async fn ga4_refuses_an_audience_change_it_cannot_sync_rather_than_drop_it() {
    for name in ["ga4"] {
        let stub = Stub::start(Reply::ok(json!({"code": 0}))).await;
        let destination = adapter(name, settings_for(name, &stub.url, None)).await;
        let change = audience_change(9, true, "buyers", Some("123"), &[]);

        let results = destination.deliver(&[change]).await.unwrap();

        assert!(
            matches!(outcome_of(&results, 9), Outcome::Permanent { reason } if reason.contains("does not sync audiences")),
            "{name}: {results:?}"
        );
        assert!(stub.requests().is_empty(), "{name}: nothing is sent");
    }
}

#[tokio::test]
async fn meta_refuses_a_custom_audience_id_that_is_not_digits_without_sending_anything() {
    let stub = Stub::start(Reply::ok(json!({}))).await;
    let meta = adapter("meta_capi", settings_for("meta_capi", &stub.url, None)).await;
    let email = prepared(&meta_identifiers(), "em", "ann@example.com");
    let change = audience_change(7, true, "buyers", Some("123/../../me?x="), &[("em", &[email.as_str()])]);

    let results = meta.deliver(&[change]).await.unwrap();

    assert!(
        matches!(outcome_of(&results, 7), Outcome::Permanent { reason } if reason.contains("is digits")),
        "{results:?}"
    );
    assert!(stub.requests().is_empty(), "nothing is sent");
}
