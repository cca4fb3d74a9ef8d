//! The Klaviyo adapter against a stub speaking Klaviyo's JSON:API request
//! shapes: the exact request each message becomes (method, path, headers,
//! body), list subscriptions added and removed per list, the 429 and
//! 401 / 403 answers, a later request's failure, settings errors and
//! deletion. How every adapter reads a 5xx, a 400 and a timeout is in
//! `destinations.rs`.

use std::time::Duration;

use axum::http::Method;
use onepd_adapters::destinations::built_in;
use onepd_domain::destination::{
    Category, DeletionAnswer, DeletionRequest, DeliverError, Destination, Hashing, Normalization, Outcome,
    PreparedEvent,
};
use serde_json::{Value, json};
use uuid::Uuid;

mod stub;
use stub::*;

const ANN: &[(&str, &[&str])] = &[("email", &["ann@example.com"]), ("phone", &["+33612345678"]), ("user_id", &["u1"])];
const BOB: &[(&str, &[&str])] = &[("email", &["bob@example.com"])];

async fn klaviyo(url: &str) -> std::sync::Arc<dyn Destination> {
    adapter("klaviyo", json!({"api_key": "pk_live_1", "endpoint": url})).await
}

fn order(n: u128) -> PreparedEvent {
    with_identifiers(order_completed(n), ANN)
}

fn identify_ann(n: u128) -> PreparedEvent {
    let mut event = with_identifiers(identify(n), ANN);
    event.traits.insert("plan".into(), json!("free"));
    event.traits.insert("city".into(), json!("Lyon"));
    event.message["traits"] =
        json!({"firstName": "Ann", "last_name": "Lee", "plan": "pro", "email": "ann@example.com"});
    event
}

fn deletion(emails: &[&str]) -> DeletionRequest {
    let mut identifiers = std::collections::BTreeMap::new();
    identifiers.insert("user_id".to_owned(), vec!["u1".to_owned()]);
    if !emails.is_empty() {
        identifiers.insert("email".to_owned(), emails.iter().map(|e| (*e).to_owned()).collect());
    }
    DeletionRequest { request_id: Uuid::from_u128(9), profile_ids: vec!["p1".into()], identifiers }
}

fn assert_klaviyo_headers(request: &Captured) {
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.header("authorization"), Some("Klaviyo-API-Key pk_live_1"));
    assert_eq!(request.header("revision"), Some("2024-10-15"));
    assert_eq!(request.header("content-type"), Some("application/vnd.api+json"));
    assert_eq!(request.header("accept"), Some("application/vnd.api+json"));
}

fn emails_of(body: &Value) -> Vec<String> {
    (body["data"]["attributes"]["profiles"]["data"].as_array().expect("profiles").iter())
        .map(|profile| profile["attributes"]["email"].as_str().expect("an email").to_owned())
        .collect()
}

#[tokio::test]
async fn klaviyo_describes_itself_as_marketing_automation_taking_raw_identifiers_100_at_a_time() {
    let description = klaviyo("http://127.0.0.1:9").await.describe().await.unwrap();
    assert_eq!(description.name, "klaviyo");
    assert_eq!(description.category, Category::MarketingAutomation);
    assert_eq!(description.max_batch_size, 100);
    let email = description.identifiers.iter().find(|spec| spec.name == "email").expect("email");
    assert_eq!((email.normalization, email.hashing), (Normalization::Email, Hashing::None));
    let phone = description.identifiers.iter().find(|spec| spec.name == "phone").expect("phone");
    assert_eq!((phone.normalization, phone.hashing), (Normalization::PhoneE164, Hashing::None));
    description.validate().unwrap();
}

#[tokio::test]
async fn a_track_becomes_one_event_with_its_metric_value_unique_id_and_profile() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let destination = klaviyo(&stub.url).await;
    let results = destination.deliver(&[order(1)]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);

    let sent = stub.only_request();
    assert_eq!(sent.path, "/api/events/");
    assert_klaviyo_headers(&sent);
    assert_eq!(
        sent.json(),
        json!({"data": {"type": "event", "attributes": {
            "properties": {
                "order_id": "order-77",
                "total": 59.5,
                "currency": "eur",
                "products": [
                    {"product_id": "sku-1", "name": "Mug", "price": 9.5, "quantity": 3},
                    {"product_id": "sku-2", "name": "Tea", "price": 31, "quantity": 1}
                ]
            },
            "time": "2024-05-01T14:30:05.250+02:00",
            "value": 59.5,
            "unique_id": event_id(1).to_string(),
            "metric": {"data": {"type": "metric", "attributes": {"name": "Order Completed"}}},
            "profile": {"data": {"type": "profile", "attributes": {
                "email": "ann@example.com", "phone_number": "+33612345678", "external_id": "u1"}}}
        }}})
    );

    // What a preview shows is what was sent, with the key hidden.
    let rendered = destination.render(&[order(1)]).expect("klaviyo renders");
    assert_eq!(rendered.len(), 1);
    assert_eq!(rendered[0].body, sent.body.to_vec());
    let (_, headers) = rendered[0].redacted();
    assert!(headers.contains(&("Authorization".to_owned(), "Klaviyo-API-Key <redacted>".to_owned())), "{headers:?}");
}

#[tokio::test]
async fn each_track_of_a_batch_is_its_own_request() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let results = klaviyo(&stub.url).await.deliver(&[order(1), order(2)]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let ids: Vec<Value> = stub.requests().iter().map(|r| r.json()["data"]["attributes"]["unique_id"].clone()).collect();
    assert_eq!(ids, [json!(event_id(1).to_string()), json!(event_id(2).to_string())]);
}

#[tokio::test]
async fn an_identify_imports_the_profile_with_names_and_the_other_traits_as_properties() {
    let stub = Stub::start(Reply::status(201, "{}")).await;
    let results = klaviyo(&stub.url).await.deliver(&[identify_ann(1)]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);

    let sent = stub.only_request();
    assert_eq!(sent.path, "/api/profile-import/");
    assert_klaviyo_headers(&sent);
    assert_eq!(
        sent.json(),
        json!({"data": {"type": "profile", "attributes": {
            "email": "ann@example.com",
            "phone_number": "+33612345678",
            "external_id": "u1",
            "first_name": "Ann",
            "last_name": "Lee",
            // The message's own traits win over the profile's.
            "properties": {"plan": "pro", "city": "Lyon"}
        }}})
    );
}

#[tokio::test]
async fn page_screen_group_and_alias_are_delivered_without_a_request() {
    let stub = Stub::start(Reply::status(500, "")).await;
    let others = [
        with_identifiers(page_view(1), ANN),
        with_identifiers(event(2, "screen", Some("Home"), "2024-05-01T12:00:00Z", json!({"type": "screen"})), ANN),
        with_identifiers(event(3, "group", None, "2024-05-01T12:00:00Z", json!({"type": "group"})), ANN),
        with_identifiers(event(4, "alias", None, "2024-05-01T12:00:00Z", json!({"type": "alias"})), ANN),
    ];
    let results = klaviyo(&stub.url).await.deliver(&others).await.unwrap();
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn an_event_without_any_identifier_is_refused_naming_what_is_missing() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let results = klaviyo(&stub.url).await.deliver(&[order_completed(1)]).await.unwrap();
    assert!(
        matches!(outcome_of(&results, 1), Outcome::Permanent { reason } if reason.contains("email")),
        "{results:?}"
    );
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn entries_subscribe_to_their_list_and_exits_unsubscribe_one_request_per_list_and_direction() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let changes = [
        audience_change(1, true, "repeat buyers", Some("LIST1"), ANN),
        audience_change(2, true, "repeat buyers", Some("LIST1"), BOB),
        audience_change(3, true, "vip", Some("LIST2"), ANN),
        audience_change(4, false, "lapsed", Some("LIST3"), BOB),
    ];
    let results = klaviyo(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let requests = stub.requests();
    assert_eq!(requests.len(), 3);
    requests.iter().for_each(assert_klaviyo_headers);
    let subscribed = |email: &str| {
        json!({"type": "profile", "attributes": {
            "email": email, "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}})
    };
    let to_list = |list: &str| {
        (requests.iter())
            .find(|r| r.json()["data"]["relationships"]["list"]["data"]["id"] == list)
            .unwrap_or_else(|| panic!("no request for {list}"))
    };

    let list1 = to_list("LIST1");
    assert_eq!(list1.path, "/api/profile-subscription-bulk-create-jobs/");
    assert_eq!(
        list1.json(),
        json!({"data": {
            "type": "profile-subscription-bulk-create-job",
            "attributes": {"profiles": {"data": [subscribed("ann@example.com"), subscribed("bob@example.com")]}},
            "relationships": {"list": {"data": {"type": "list", "id": "LIST1"}}}
        }})
    );
    assert_eq!(emails_of(&to_list("LIST2").json()), ["ann@example.com"]);

    let list3 = to_list("LIST3");
    assert_eq!(list3.path, "/api/profile-subscription-bulk-delete-jobs/");
    assert_eq!(
        list3.json(),
        json!({"data": {
            "type": "profile-subscription-bulk-delete-job",
            "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {"email": "bob@example.com"}}]}},
            "relationships": {"list": {"data": {"type": "list", "id": "LIST3"}}}
        }})
    );
}

#[tokio::test]
async fn a_full_batch_of_entries_to_one_list_is_one_job() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let changes: Vec<PreparedEvent> = (0..100)
        .map(|n| {
            let email = format!("person{n}@example.com");
            audience_change(n, true, "everyone", Some("LIST1"), &[("email", &[email.as_str()])])
        })
        .collect();
    let results = klaviyo(&stub.url).await.deliver(&changes).await.unwrap();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered));
    assert_eq!(emails_of(&stub.only_request().json()).len(), 100);
}

#[tokio::test]
async fn an_audience_change_without_a_list_id_or_an_email_is_refused_naming_it() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let phone_only: &[(&str, &[&str])] = &[("phone", &["+33612345678"])];
    let changes = [
        audience_change(1, true, "repeat buyers", None, ANN),
        audience_change(2, false, "repeat buyers", Some("LIST1"), phone_only),
    ];
    let results = klaviyo(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(
        matches!(outcome_of(&results, 1), Outcome::Permanent { reason } if reason.contains("--external-id LIST_ID")),
        "{results:?}"
    );
    assert!(
        matches!(outcome_of(&results, 2), Outcome::Permanent { reason } if reason.contains("email")),
        "{results:?}"
    );
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn a_429_is_retried_after_the_wait_klaviyo_gives() {
    let stub =
        Stub::start(Reply::status(429, r#"{"errors":[{"code":"throttled"}]}"#).with_header("Retry-After", "30")).await;
    let err = klaviyo(&stub.url).await.deliver(&[order(1), order(2)]).await.unwrap_err();
    match err {
        DeliverError::Retryable { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(30))),
        other => panic!("expected retryable, found {other:?}"),
    }
    assert_eq!(stub.requests().len(), 1, "the batch stops at the first refusal");
}

#[tokio::test]
async fn a_refused_api_key_refuses_the_batch_naming_the_key_and_the_status() {
    for status in [401, 403] {
        let stub = Stub::start(Reply::status(status, r#"{"errors":[{"code":"not_authenticated"}]}"#)).await;
        match klaviyo(&stub.url).await.deliver(&[identify_ann(1)]).await.unwrap_err() {
            DeliverError::BatchRejected { reason } => {
                assert!(reason.contains("API key") && reason.contains(&status.to_string()), "{reason}")
            }
            other => panic!("expected a refused batch, found {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_later_request_failing_fails_only_the_events_it_carried() {
    let stub = Stub::sequence(vec![Reply::status(202, ""), Reply::status(503, "busy")]).await;
    let results = klaviyo(&stub.url).await.deliver(&[order(1), order(2)]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert!(matches!(outcome_of(&results, 2), Outcome::Retryable { reason, .. } if reason.contains("503")));
}

#[tokio::test]
async fn settings_errors_name_the_setting() {
    let error = |settings: Value| built_in("klaviyo", &settings).err().expect("refused").to_string();
    let missing = error(json!({}));
    assert!(missing.contains("api_key"), "{missing}");
    let blank = error(json!({"api_key": " "}));
    assert!(blank.contains("settings.api_key") && blank.contains("empty"), "{blank}");
    let endpoint = error(json!({"api_key": "pk", "endpoint": "ftp://a.klaviyo.com"}));
    assert!(endpoint.contains("settings.endpoint"), "{endpoint}");
    let unknown = error(json!({"api_key": "pk", "list": "L"}));
    assert!(unknown.contains("list"), "{unknown}");
}

#[tokio::test]
async fn the_endpoint_and_revision_default_to_klaviyo_s_and_may_be_set() {
    let defaults = adapter("klaviyo", json!({"api_key": "pk"})).await;
    let rendered = defaults.render(&[order(1)]).expect("klaviyo renders");
    assert_eq!(rendered[0].url, "https://a.klaviyo.com/api/events/");
    assert!(rendered[0].headers.contains(&("revision".to_owned(), "2024-10-15".to_owned())));

    let stub = Stub::start(Reply::status(202, "")).await;
    let newer = adapter("klaviyo", json!({"api_key": "pk", "endpoint": stub.url, "revision": "2025-01-15"})).await;
    newer.deliver(&[order(1)]).await.unwrap();
    assert_eq!(stub.only_request().header("revision"), Some("2025-01-15"));
}

#[tokio::test]
async fn a_forgotten_person_is_deleted_by_each_email() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let answer = klaviyo(&stub.url).await.delete(&deletion(&["ann@example.com", "ann@work.example"])).await.unwrap();
    assert_eq!(answer, DeletionAnswer::Requested);
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    for (request, email) in requests.iter().zip(["ann@example.com", "ann@work.example"]) {
        assert_eq!(request.path, "/api/data-privacy-deletion-jobs/");
        assert_klaviyo_headers(request);
        assert_eq!(
            request.json(),
            json!({"data": {"type": "data-privacy-deletion-job", "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}})
        );
    }
}

#[tokio::test]
async fn a_person_without_an_email_cannot_be_deleted_and_a_refused_key_is_named() {
    let stub = Stub::start(Reply::status(202, "")).await;
    assert_eq!(klaviyo(&stub.url).await.delete(&deletion(&[])).await.unwrap(), DeletionAnswer::Unsupported);
    assert!(stub.requests().is_empty());

    let stub = Stub::start(Reply::status(403, "forbidden")).await;
    match klaviyo(&stub.url).await.delete(&deletion(&["ann@example.com"])).await.unwrap_err() {
        DeliverError::BatchRejected { reason } => assert!(reason.contains("API key"), "{reason}"),
        other => panic!("expected a refused deletion, found {other:?}"),
    }
}
