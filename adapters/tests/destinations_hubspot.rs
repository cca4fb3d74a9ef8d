//! The HubSpot adapter against a stub speaking HubSpot's documented request
//! shapes: contacts upserted by email in one batch call, custom event
//! completions one by one, list memberships by record id, the rate-limit and
//! auth answers, a later request's failure, settings errors and GDPR delete.
//! How every adapter reads a 5xx, a 400 and a timeout is in
//! `destinations.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use onepd_domain::destination::{
    Category, DeletionAnswer, DeletionRequest, DeliverError, Destination, Hashing, Normalization, Outcome,
    PreparedEvent,
};
use serde_json::{Value, json};
use uuid::Uuid;

mod stub;
use stub::*;

const ANN: &[(&str, &[&str])] = &[("email", &["ann@example.com"]), ("user_id", &["u1"])];
const BOB: &[(&str, &[&str])] = &[("email", &["bob@example.com"])];
const NOBODY: &[(&str, &[&str])] = &[("user_id", &["u9"])];

const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
const SEND: &str = "/events/v3/send";

async fn hubspot(url: &str) -> Arc<dyn Destination> {
    let settings = json!({"access_token": "pat-na1-secret", "endpoint": url, "hub_id": "4321",
                          "event_names": {"Signed Up": "pe4321_signup_custom"}});
    adapter("hubspot", settings).await
}

/// A stub answering the batch upsert as HubSpot does, each contact with a
/// record id (`50{n}` for the n-th input), and every other call with 204.
async fn hubspot_stub() -> Stub {
    Stub::answering(|request, _| {
        if request.path == UPSERT {
            let results: Vec<Value> = (request.json()["inputs"].as_array().unwrap().iter())
                .enumerate()
                .map(|(n, input)| json!({"id": format!("50{n}"), "properties": {"email": input["id"]}}))
                .collect();
            Reply::ok(json!({"status": "COMPLETE", "results": results}))
        } else {
            Reply::status(204, "")
        }
    })
    .await
}

fn identify_ann(n: u128) -> PreparedEvent {
    let mut event = with_identifiers(identify(n), ANN);
    event.message["traits"] = json!({
        "firstName": "Ann",
        "last_name": "Lee",
        "phone": "+33612345678",
        "company": "Acme",
        "Plan Tier": "pro",
        "age": 41,
        "vip": true,
        "address": {"city": "Lyon"},
        "email": "ann@example.com",
        "nickname": null
    });
    // The destination's profile traits; the message's own win over them.
    event.traits = json!({"company": "Old Co", "lifetime_value": 59.5}).as_object().unwrap().clone();
    event
}

fn order(n: u128, identifiers: &[(&str, &[&str])]) -> PreparedEvent {
    with_identifiers(order_completed(n), identifiers)
}

fn signed_up(n: u128) -> PreparedEvent {
    let mut event = with_identifiers(
        event(n, "track", Some("Signed Up"), "2024-05-01T12:00:00Z", json!({"type": "track", "event": "Signed Up"})),
        ANN,
    );
    event.message["properties"] = json!({"plan": "pro", "seats": 3, "trial": false});
    event
}

fn deletion() -> DeletionRequest {
    DeletionRequest {
        request_id: Uuid::from_u128(9),
        profile_ids: vec!["p1".into()],
        identifiers: [("email".to_owned(), vec!["ann@example.com".to_owned(), "ann@work.example".to_owned()])]
            .into_iter()
            .collect(),
    }
}

fn permanent(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Permanent { reason } => reason,
        other => panic!("expected permanent, found {other:?}"),
    }
}

fn rejected(err: DeliverError) -> String {
    match err {
        DeliverError::BatchRejected { reason } => reason,
        other => panic!("expected a refused batch, found {other:?}"),
    }
}

#[tokio::test]
async fn hubspot_describes_itself_as_marketing_automation_taking_raw_email_and_phone() {
    let description = hubspot("http://127.0.0.1:9").await.describe().await.unwrap();
    assert_eq!(description.name, "hubspot");
    assert_eq!(description.category, Category::MarketingAutomation);
    assert_eq!(description.max_batch_size, 100);
    let email = description.identifiers.iter().find(|spec| spec.name == "email").expect("email");
    assert_eq!((email.normalization, email.hashing), (Normalization::Email, Hashing::None));
    let phone = description.identifiers.iter().find(|spec| spec.name == "phone").expect("phone");
    assert_eq!((phone.normalization, phone.hashing), (Normalization::PhoneE164, Hashing::None));
}

#[tokio::test]
async fn hubspot_upserts_every_identify_of_a_batch_in_one_request_by_email() {
    let stub = hubspot_stub().await;
    let mut bob = with_identifiers(identify(2), BOB);
    bob.message["traits"] = json!({"first_name": "Bob", "lastName": "Ray"});
    let results = hubspot(&stub.url).await.deliver(&[identify_ann(1), bob]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert_eq!(outcome_of(&results, 2), &Outcome::Delivered);

    let sent = stub.only_request();
    assert_eq!(sent.method, Method::POST);
    assert_eq!(sent.path, UPSERT);
    assert_eq!(sent.header("authorization"), Some("Bearer pat-na1-secret"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.json(),
        json!({"inputs": [
            {"idProperty": "email", "id": "ann@example.com", "properties": {
                "firstname": "Ann",
                "lastname": "Lee",
                "phone": "+33612345678",
                "company": "Acme",
                "plan_tier": "pro",
                "age": "41",
                "vip": "true",
                "address": "{\"city\":\"Lyon\"}",
                "lifetime_value": "59.5"
            }},
            {"idProperty": "email", "id": "bob@example.com", "properties": {"firstname": "Bob", "lastname": "Ray"}}
        ]})
    );
}

#[tokio::test]
async fn hubspot_upserts_a_full_batch_of_100_contacts_in_one_request() {
    let stub = hubspot_stub().await;
    let emails: Vec<String> = (0..100).map(|n| format!("person{n}@example.com")).collect();
    let batch: Vec<PreparedEvent> = (emails.iter().enumerate())
        .map(|(n, email)| with_identifiers(identify(n as u128), &[("email", &[email.as_str()])]))
        .collect();
    let results = hubspot(&stub.url).await.deliver(&batch).await.unwrap();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let sent = stub.only_request();
    assert_eq!(sent.json()["inputs"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn hubspot_sends_a_track_as_the_custom_event_named_in_event_names() {
    let stub = hubspot_stub().await;
    let results = hubspot(&stub.url).await.deliver(&[signed_up(1)]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);

    let sent = stub.only_request();
    assert_eq!(sent.method, Method::POST);
    assert_eq!(sent.path, SEND);
    assert_eq!(sent.header("authorization"), Some("Bearer pat-na1-secret"));
    assert_eq!(
        sent.json(),
        json!({"eventName": "pe4321_signup_custom", "email": "ann@example.com", "occurredAt": "2024-05-01T12:00:00Z",
               "properties": {"plan": "pro", "seats": "3", "trial": "false"}})
    );
}

#[tokio::test]
async fn hubspot_names_an_unmapped_track_after_the_hub_id_one_request_per_event() {
    let stub = hubspot_stub().await;
    let results = hubspot(&stub.url).await.deliver(&[order(1, ANN), order(2, BOB)]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let requests = stub.requests();
    assert_eq!(requests.len(), 2, "one request per event");
    let first = requests[0].json();
    assert_eq!(requests[0].path, SEND);
    assert_eq!(first["eventName"], "pe4321_order_completed");
    assert_eq!(first["email"], "ann@example.com");
    assert_eq!(first["occurredAt"], "2024-05-01T14:30:05.250+02:00");
    assert_eq!(first["properties"]["order_id"], "order-77");
    assert_eq!(first["properties"]["total"], "59.5");
    assert_eq!(requests[1].json()["email"], "bob@example.com");
}

#[tokio::test]
async fn hubspot_refuses_a_track_it_cannot_name_without_sending_it() {
    let stub = hubspot_stub().await;
    let unnamed = adapter("hubspot", json!({"access_token": "t", "endpoint": stub.url})).await;
    let results = unnamed.deliver(&[order(1, ANN)]).await.unwrap();
    let reason = permanent(outcome_of(&results, 1));
    assert!(reason.contains("settings.event_names") && reason.contains("settings.hub_id"), "{reason}");
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn hubspot_refuses_a_person_without_an_email_and_sends_the_rest() {
    let stub = hubspot_stub().await;
    let mut nameless = with_identifiers(identify(2), NOBODY);
    nameless.message["traits"] = json!({"firstName": "Nobody"});
    let batch = [identify_ann(1), nameless, order(3, NOBODY), audience_change(4, true, "vip", Some("77"), NOBODY)];
    let results = hubspot(&stub.url).await.deliver(&batch).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    for n in 2..=4 {
        let reason = permanent(outcome_of(&results, n));
        assert!(reason.contains("no email"), "event {n}: {reason}");
    }
    let sent = stub.only_request();
    assert_eq!(sent.path, UPSERT);
    assert_eq!(sent.json()["inputs"].as_array().unwrap().len(), 1, "only Ann is upserted");
}

#[tokio::test]
async fn hubspot_answers_page_screen_group_and_alias_delivered_without_sending() {
    let stub = hubspot_stub().await;
    let batch: Vec<PreparedEvent> = ["page", "screen", "group", "alias"]
        .into_iter()
        .enumerate()
        .map(|(n, kind)| {
            with_identifiers(event(n as u128, kind, None, "2024-05-01T12:00:00Z", json!({"type": kind})), ANN)
        })
        .collect();
    let results = hubspot(&stub.url).await.deliver(&batch).await.unwrap();
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn hubspot_adds_audience_entries_to_the_list_by_their_record_ids() {
    let stub = hubspot_stub().await;
    let changes = [
        audience_change(1, true, "repeat buyers", Some("77"), ANN),
        audience_change(2, true, "repeat buyers", Some("77"), BOB),
    ];
    let results = hubspot(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((&requests[0].method, requests[0].path.as_str()), (&Method::POST, UPSERT));
    assert_eq!(
        requests[0].json(),
        json!({"inputs": [{"idProperty": "email", "id": "ann@example.com", "properties": {}},
                          {"idProperty": "email", "id": "bob@example.com", "properties": {}}]})
    );
    assert_eq!(requests[1].method, Method::PUT);
    assert_eq!(requests[1].path, "/crm/v3/lists/77/memberships/add");
    assert_eq!(requests[1].header("authorization"), Some("Bearer pat-na1-secret"));
    assert_eq!(requests[1].json(), json!(["500", "501"]));
}

#[tokio::test]
async fn hubspot_removes_audience_exits_from_the_list_by_their_record_ids() {
    let stub = hubspot_stub().await;
    let changes = [
        audience_change(1, false, "repeat buyers", Some("77"), ANN),
        audience_change(2, true, "lapsed", Some("88"), BOB),
    ];
    let results = hubspot(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let calls: Vec<(String, Value)> =
        stub.requests().iter().map(|r| (format!("{} {}", r.method, r.path), r.json())).collect();
    assert_eq!(calls[0].0, format!("POST {UPSERT}"));
    assert_eq!(
        calls[1..],
        [
            ("PUT /crm/v3/lists/77/memberships/remove".to_owned(), json!(["500"])),
            ("PUT /crm/v3/lists/88/memberships/add".to_owned(), json!(["501"])),
        ],
        "one call per list and direction"
    );
}

#[tokio::test]
async fn hubspot_refuses_an_audience_connected_without_a_list_id() {
    let stub = hubspot_stub().await;
    let results = hubspot(&stub.url).await.deliver(&[audience_change(1, true, "vip", None, ANN)]).await.unwrap();
    let reason = permanent(outcome_of(&results, 1));
    assert!(reason.contains("list id") && reason.contains("\"vip\""), "{reason}");
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn hubspot_leaves_a_member_whose_record_id_was_not_returned_retryable() {
    // The upsert answers without Bob, so his list change cannot be sent.
    let stub = Stub::answering(|request, _| {
        if request.path == UPSERT {
            Reply::ok(json!({"results": [{"id": "500", "properties": {"email": "ann@example.com"}}]}))
        } else {
            Reply::status(204, "")
        }
    })
    .await;
    let changes = [audience_change(1, true, "vip", Some("77"), ANN), audience_change(2, true, "vip", Some("77"), BOB)];
    let results = hubspot(&stub.url).await.deliver(&changes).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert!(matches!(outcome_of(&results, 2), Outcome::Retryable { reason, .. } if reason.contains("record id")));
    assert_eq!(stub.requests()[1].json(), json!(["500"]));
}

#[tokio::test]
async fn hubspot_gives_a_later_requests_failure_to_the_events_it_carried() {
    let stub = Stub::answering(|request, _| match request.path.as_str() {
        UPSERT => Reply::ok(json!({"results": []})),
        _ if request.json()["email"] == "bob@example.com" => {
            Reply::status(400, r#"{"message":"Property values were not valid"}"#)
        }
        _ => Reply::status(503, "unavailable").with_header("Retry-After", "4"),
    })
    .await;
    let results = hubspot(&stub.url).await.deliver(&[identify_ann(1), order(2, ANN), order(3, BOB)]).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert!(
        matches!(outcome_of(&results, 2), Outcome::Retryable { retry_after_ms: Some(4000), .. }),
        "{:?}",
        outcome_of(&results, 2)
    );
    // As `http::as_outcome` reads a later refusal: retried alone, so that the
    // engine's split finds the event it belongs to.
    match outcome_of(&results, 3) {
        Outcome::Retryable { reason, .. } => {
            assert!(reason.contains("400") && reason.contains("Property values were not valid"), "{reason}")
        }
        other => panic!("expected retryable, found {other:?}"),
    }
    assert_eq!(stub.requests().len(), 3);
}

#[tokio::test]
async fn hubspot_retries_a_429_after_its_retry_after() {
    let stub =
        Stub::start(Reply::status(429, r#"{"policyName":"TEN_SECONDLY_ROLLING"}"#).with_header("Retry-After", "10"))
            .await;
    let err = hubspot(&stub.url).await.deliver(&[identify_ann(1), order(2, ANN)]).await.unwrap_err();
    assert!(
        matches!(err, DeliverError::Retryable { retry_after: Some(wait), .. } if wait == Duration::from_secs(10)),
        "{err:?}"
    );
    assert_eq!(stub.requests().len(), 1, "the first request's failure fails the batch");
}

#[tokio::test]
async fn hubspot_names_the_access_token_it_refused() {
    for status in [401, 403] {
        let stub = Stub::start(Reply::status(status, r#"{"category":"INVALID_AUTHENTICATION"}"#)).await;
        let reason = rejected(hubspot(&stub.url).await.deliver(&[order(1, ANN)]).await.unwrap_err());
        assert!(reason.contains("HubSpot refused the access token"), "{status}: {reason}");
        assert!(reason.contains(&status.to_string()), "{status}: {reason}");
        assert!(!reason.contains("pat-na1-secret"), "{reason}");
    }
}

#[tokio::test]
async fn hubspot_settings_errors_name_the_field() {
    let cases = [
        (json!({}), "access_token"),
        (json!({"access_token": " "}), "settings.access_token"),
        (json!({"access_token": "t", "endpoint": "ftp://x"}), "settings.endpoint"),
        (json!({"access_token": "t", "event_names": ["Order Completed"]}), "event_names"),
        (json!({"access_token": "t", "timeout_ms": 0}), "settings.timeout_ms"),
        (json!({"access_token": "t", "portal": "1"}), "portal"),
    ];
    for (settings, field) in cases {
        let err = onepd_adapters::destinations::built_in("hubspot", &settings).err().expect("refused");
        assert!(err.to_string().contains(field), "{settings}: {err}");
    }
}

#[tokio::test]
async fn hubspot_renders_what_it_sends_with_the_token_as_a_secret() {
    let stub = hubspot_stub().await;
    let hubspot = hubspot(&stub.url).await;
    let batch = [identify_ann(1), signed_up(2)];
    let rendered = hubspot.render(&batch).expect("renders");
    hubspot.deliver(&batch).await.unwrap();
    let sent = stub.requests();
    assert_eq!(rendered.len(), sent.len());
    for (rendered, sent) in rendered.iter().zip(&sent) {
        assert_eq!(rendered.method, sent.method.as_str());
        assert_eq!(rendered.url, format!("{}{}", stub.url, sent.path));
        assert_eq!(rendered.body, sent.body.to_vec());
        assert_eq!(rendered.secrets, ["pat-na1-secret"]);
    }
}

#[tokio::test]
async fn hubspot_gdpr_deletes_each_email_of_a_forgotten_person() {
    let stub = Stub::start(Reply::status(204, "")).await;
    assert_eq!(hubspot(&stub.url).await.delete(&deletion()).await.unwrap(), DeletionAnswer::Requested);
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    for (sent, email) in requests.iter().zip(["ann@example.com", "ann@work.example"]) {
        assert_eq!(sent.method, Method::POST);
        assert_eq!(sent.path, "/crm/v3/objects/contacts/gdpr-delete");
        assert_eq!(sent.header("authorization"), Some("Bearer pat-na1-secret"));
        assert_eq!(sent.json(), json!({"objectId": email, "idProperty": "email"}));
    }

    let refused = Stub::start(Reply::status(401, "")).await;
    let reason = rejected(hubspot(&refused.url).await.delete(&deletion()).await.unwrap_err());
    assert!(reason.contains("access token"), "{reason}");
}
