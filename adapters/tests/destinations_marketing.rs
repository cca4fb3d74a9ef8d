//! The marketing automation adapters (Klaviyo, HubSpot, Mailchimp, Braze)
//! against a stub speaking each platform's documented request shape: what
//! each message becomes, list membership added and removed, the platform's
//! rate-limit answer and its auth error. How every adapter reads a 5xx, a
//! 400 and a timeout is in `destinations.rs`.

use std::time::Duration;

use axum::http::Method;
use onepd_domain::destination::{Category, DeletionAnswer, DeletionRequest, DeliverError, Outcome, PreparedEvent};
use serde_json::{Value, json};
use uuid::Uuid;

mod stub;
use stub::*;

const ANN: &[(&str, &[&str])] = &[("email", &["ann@example.com"]), ("user_id", &["u1"])];

fn identify_ann(n: u128) -> PreparedEvent {
    let mut event = with_identifiers(identify(n), ANN);
    event.message["traits"] = json!({"firstName": "Ann", "lastName": "Lee", "plan": "pro", "email": "ann@example.com"});
    event
}

fn order(n: u128) -> PreparedEvent {
    with_identifiers(order_completed(n), ANN)
}

fn deletion() -> DeletionRequest {
    DeletionRequest {
        request_id: Uuid::from_u128(9),
        profile_ids: vec!["p1".into()],
        identifiers: [
            ("email".to_owned(), vec!["ann@example.com".to_owned()]),
            ("user_id".to_owned(), vec!["u1".to_owned()]),
        ]
        .into_iter()
        .collect(),
    }
}

fn retry_after(err: DeliverError) -> Option<Duration> {
    match err {
        DeliverError::Retryable { retry_after, .. } => retry_after,
        other => panic!("expected retryable, found {other:?}"),
    }
}

fn rejected(err: DeliverError) -> String {
    match err {
        DeliverError::BatchRejected { reason } => reason,
        other => panic!("expected a refused batch, found {other:?}"),
    }
}

#[tokio::test]
async fn every_marketing_tool_is_marketing_automation_with_raw_identifiers() {
    for (name, settings) in [
        ("klaviyo", json!({"api_key": "pk"})),
        ("hubspot", json!({"access_token": "t"})),
        ("mailchimp", json!({"api_key": "k-us6", "list_id": "L"})),
        ("braze", json!({"api_key": "k", "endpoint": "https://rest.iad-01.braze.com"})),
    ] {
        let description = adapter(name, settings).await.describe().await.unwrap();
        assert_eq!(description.category, Category::MarketingAutomation, "{name}");
        let names: Vec<&str> = description.identifiers.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(names, ["email", "phone", "user_id", "anonymous_id"], "{name}");
    }
}

// ---------------------------------------------------------------------------
// Klaviyo.

async fn klaviyo(url: &str) -> std::sync::Arc<dyn onepd_domain::destination::Destination> {
    adapter("klaviyo", json!({"api_key": "pk_live", "endpoint": url})).await
}

#[tokio::test]
async fn klaviyo_sends_an_event_with_its_revision_and_key_and_a_profile_import() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let results = klaviyo(&stub.url).await.deliver(&[order(1), identify_ann(2), page_view(3)]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let requests = stub.requests();
    assert_eq!(requests.len(), 2, "the page is not sent");
    let event = &requests[0];
    assert_eq!((event.method.clone(), event.path.as_str()), (Method::POST, "/api/events/"));
    assert_eq!(event.header("authorization"), Some("Klaviyo-API-Key pk_live"));
    assert_eq!(event.header("revision"), Some("2024-10-15"));
    assert_eq!(event.header("content-type"), Some("application/vnd.api+json"));
    let body = event.json();
    let attributes = &body["data"]["attributes"];
    assert_eq!(body["data"]["type"], "event");
    assert_eq!(attributes["metric"]["data"]["attributes"]["name"], "Order Completed");
    assert_eq!(attributes["unique_id"], event_id(1).to_string());
    assert_eq!(attributes["value"], 59.5);
    assert_eq!(attributes["profile"]["data"]["attributes"], json!({"email": "ann@example.com", "external_id": "u1"}));

    let profile = requests[1].json();
    assert_eq!(requests[1].path, "/api/profile-import/");
    assert_eq!(
        profile["data"]["attributes"],
        json!({"email": "ann@example.com", "external_id": "u1", "first_name": "Ann", "last_name": "Lee",
               "properties": {"plan": "pro"}})
    );
}

#[tokio::test]
async fn klaviyo_subscribes_entries_to_the_list_and_unsubscribes_exits_the_last_change_winning() {
    let stub = Stub::start(Reply::status(202, "")).await;
    let bob: &[(&str, &[&str])] = &[("email", &["bob@example.com"])];
    let changes = [
        audience_change(1, true, "repeat buyers", Some("LIST1"), ANN),
        audience_change(2, true, "repeat buyers", Some("LIST1"), bob),
        audience_change(3, false, "repeat buyers", Some("LIST1"), bob),
        audience_change(4, true, "repeat buyers", None, ANN),
    ];
    let results = klaviyo(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(matches!(outcome_of(&results, 4), Outcome::Permanent { reason } if reason.contains("--external-id")));

    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    let add = requests.iter().find(|r| r.path == "/api/profile-subscription-bulk-create-jobs/").expect("an add");
    let body = add.json();
    assert_eq!(body["data"]["relationships"]["list"]["data"], json!({"type": "list", "id": "LIST1"}));
    let emails: Vec<&str> = (body["data"]["attributes"]["profiles"]["data"].as_array().unwrap().iter())
        .map(|p| p["attributes"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ann@example.com"], "bob entered and left in one batch: only his exit is sent");
    assert_eq!(outcome_of(&results, 2), &Outcome::Delivered, "superseded by the exit");
    let remove = requests.iter().find(|r| r.path == "/api/profile-subscription-bulk-delete-jobs/").expect("a remove");
    let removed = &remove.json()["data"]["attributes"]["profiles"]["data"][0]["attributes"];
    assert_eq!(removed, &json!({"email": "bob@example.com"}));
}

#[tokio::test]
async fn klaviyo_waits_as_its_429_says_and_names_a_refused_key() {
    let stub = Stub::start(Reply::status(429, "throttled").with_header("Retry-After", "30")).await;
    let err = klaviyo(&stub.url).await.deliver(&[order(1)]).await.unwrap_err();
    assert_eq!(retry_after(err), Some(Duration::from_secs(30)));

    let stub = Stub::start(Reply::status(401, r#"{"errors":[{"code":"not_authenticated"}]}"#)).await;
    let reason = rejected(klaviyo(&stub.url).await.deliver(&[order(1)]).await.unwrap_err());
    assert!(reason.contains("Klaviyo refused the API key") && reason.contains("401"), "{reason}");
}

#[tokio::test]
async fn klaviyo_deletes_a_forgotten_person_by_email() {
    let stub = Stub::start(Reply::status(202, "")).await;
    assert_eq!(klaviyo(&stub.url).await.delete(&deletion()).await.unwrap(), DeletionAnswer::Requested);
    let sent = stub.only_request();
    assert_eq!(sent.path, "/api/data-privacy-deletion-jobs/");
    assert_eq!(sent.json()["data"]["attributes"]["profile"]["data"]["attributes"]["email"], "ann@example.com");
}

// ---------------------------------------------------------------------------
// HubSpot.

async fn hubspot(url: &str) -> std::sync::Arc<dyn onepd_domain::destination::Destination> {
    let settings = json!({"access_token": "pat-1", "endpoint": url, "hub_id": "4321",
                          "event_names": {"Signed Up": "pe4321_signup_custom"}});
    adapter("hubspot", settings).await
}

/// A HubSpot stub: the upsert answers each email with a record id.
async fn hubspot_stub() -> Stub {
    Stub::answering(|request, _| {
        if request.path.ends_with("/batch/upsert") {
            let results: Vec<Value> = (request.json()["inputs"].as_array().unwrap().iter())
                .enumerate()
                .map(|(n, input)| json!({"id": format!("50{n}"), "properties": {"email": input["id"]}}))
                .collect();
            Reply::ok(json!({ "status": "COMPLETE", "results": results }))
        } else {
            Reply::status(204, "")
        }
    })
    .await
}

#[tokio::test]
async fn hubspot_upserts_contacts_by_email_and_sends_custom_events() {
    let stub = hubspot_stub().await;
    let mut signed_up = order(3);
    signed_up.name = Some("Signed Up".into());
    let results = hubspot(&stub.url).await.deliver(&[identify_ann(1), order(2), signed_up]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");

    let requests = stub.requests();
    assert_eq!(requests[0].path, "/crm/v3/objects/contacts/batch/upsert");
    assert_eq!(requests[0].header("authorization"), Some("Bearer pat-1"));
    assert_eq!(
        requests[0].json(),
        json!({"inputs": [{"idProperty": "email", "id": "ann@example.com",
                           "properties": {"firstname": "Ann", "lastname": "Lee", "plan": "pro"}}]})
    );
    let event = requests[1].json();
    assert_eq!(requests[1].path, "/events/v3/send");
    assert_eq!(event["eventName"], "pe4321_order_completed");
    assert_eq!(event["email"], "ann@example.com");
    assert_eq!(event["properties"]["total"], "59.5");
    assert_eq!(requests[2].json()["eventName"], "pe4321_signup_custom", "named in settings.event_names");
}

#[tokio::test]
async fn hubspot_refuses_an_event_it_cannot_name() {
    let stub = hubspot_stub().await;
    let unnamed = adapter("hubspot", json!({"access_token": "t", "endpoint": stub.url})).await;
    let results = unnamed.deliver(&[order(1)]).await.unwrap();
    assert!(
        matches!(outcome_of(&results, 1), Outcome::Permanent { reason } if reason.contains("settings.event_names or settings.hub_id"))
    );
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn hubspot_adds_entries_to_the_list_by_record_id_and_removes_exits() {
    let stub = hubspot_stub().await;
    let bob: &[(&str, &[&str])] = &[("email", &["bob@example.com"])];
    let changes = [
        audience_change(1, true, "repeat buyers", Some("77"), ANN),
        audience_change(2, false, "repeat buyers", Some("77"), bob),
        audience_change(3, true, "repeat buyers", None, ANN),
    ];
    let results = hubspot(&stub.url).await.deliver(&changes).await.unwrap();
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert_eq!(outcome_of(&results, 2), &Outcome::Delivered);
    assert!(matches!(outcome_of(&results, 3), Outcome::Permanent { reason } if reason.contains("list id")));

    let requests = stub.requests();
    let calls: Vec<(String, Value)> = requests.iter().map(|r| (format!("{} {}", r.method, r.path), r.json())).collect();
    assert_eq!(calls[0].0, "POST /crm/v3/objects/contacts/batch/upsert");
    let mut lists = calls[1..].to_vec();
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        lists,
        [
            ("PUT /crm/v3/lists/77/memberships/add".to_owned(), json!(["500"])),
            ("PUT /crm/v3/lists/77/memberships/remove".to_owned(), json!(["501"])),
        ],
        "ann's record id added, bob's removed"
    );
}

#[tokio::test]
async fn hubspot_retries_a_429_and_names_a_refused_token() {
    let stub =
        Stub::start(Reply::status(429, r#"{"policyName":"TEN_SECONDLY_ROLLING"}"#).with_header("Retry-After", "10"))
            .await;
    let err = hubspot(&stub.url).await.deliver(&[identify_ann(1)]).await.unwrap_err();
    assert_eq!(retry_after(err), Some(Duration::from_secs(10)));

    let stub = Stub::start(Reply::status(401, r#"{"category":"INVALID_AUTHENTICATION"}"#)).await;
    let reason = rejected(hubspot(&stub.url).await.deliver(&[identify_ann(1)]).await.unwrap_err());
    assert!(reason.contains("HubSpot refused the access token"), "{reason}");
}

#[tokio::test]
async fn hubspot_deletes_a_forgotten_contact_by_email() {
    let stub = Stub::start(Reply::status(204, "")).await;
    assert_eq!(hubspot(&stub.url).await.delete(&deletion()).await.unwrap(), DeletionAnswer::Requested);
    let sent = stub.only_request();
    assert_eq!(sent.path, "/crm/v3/objects/contacts/gdpr-delete");
    assert_eq!(sent.json(), json!({"objectId": "ann@example.com", "idProperty": "email"}));
}

// ---------------------------------------------------------------------------
// Mailchimp.

/// `printf %s 'ann@example.com' | md5sum`.
const ANN_HASH: &str = "257c57037d384ae37ea27a07e8a01665";

async fn mailchimp(url: &str) -> std::sync::Arc<dyn onepd_domain::destination::Destination> {
    adapter("mailchimp", json!({"api_key": "abc-us6", "list_id": "L1", "endpoint": url})).await
}

#[test]
fn a_subscriber_hash_is_the_md5_of_the_lowercase_email() {
    use onepd_adapters::destinations::mailchimp::{event_name, subscriber_hash};
    assert_eq!(subscriber_hash(" Ann@Example.com"), ANN_HASH);
    assert_eq!(event_name("Order Completed").as_deref(), Some("order_completed"));
    assert_eq!(event_name("Über-Checkout!! step 2").as_deref(), Some("ber-checkout_step_2"));
    assert_eq!(event_name("!"), None);
}

#[tokio::test]
async fn mailchimp_updates_the_member_and_sends_its_events() {
    let stub = Stub::start(Reply::ok(json!({}))).await;
    let results = mailchimp(&stub.url).await.deliver(&[identify_ann(1), order(2), page_view(3)]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (requests[0].method.clone(), requests[0].path.clone()),
        (Method::PUT, format!("/lists/L1/members/{ANN_HASH}"))
    );
    // base64("onepd:abc-us6")
    assert_eq!(requests[0].header("authorization"), Some("Basic b25lcGQ6YWJjLXVzNg=="));
    assert_eq!(
        requests[0].json(),
        json!({"email_address": "ann@example.com", "status_if_new": "subscribed",
               "merge_fields": {"FNAME": "Ann", "LNAME": "Lee"}})
    );
    assert_eq!(requests[1].path, format!("/lists/L1/members/{ANN_HASH}/events"));
    let event = requests[1].json();
    assert_eq!((&event["name"], &event["properties"]["order_id"]), (&json!("order_completed"), &json!("order-77")));
}

#[tokio::test]
async fn mailchimp_tags_members_of_an_audience_and_untags_those_who_leave() {
    let stub = Stub::start(Reply::status(204, "")).await;
    let changes = [
        audience_change(1, true, "repeat buyers", None, ANN),
        audience_change(2, false, "repeat buyers", Some("VIP"), ANN),
    ];
    let results = mailchimp(&stub.url).await.deliver(&changes).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let requests = stub.requests();
    let calls: Vec<(String, String, Value)> =
        requests.iter().map(|r| (r.method.to_string(), r.path.clone(), r.json())).collect();
    let member = format!("/lists/L1/members/{ANN_HASH}");
    assert_eq!(
        calls,
        [
            ("PUT".into(), member.clone(), json!({"email_address": "ann@example.com", "status_if_new": "subscribed"})),
            ("POST".into(), format!("{member}/tags"), json!({"tags": [{"name": "repeat buyers", "status": "active"}]})),
            ("POST".into(), format!("{member}/tags"), json!({"tags": [{"name": "VIP", "status": "inactive"}]})),
        ]
    );
}

#[tokio::test]
async fn mailchimp_reads_its_problem_answers() {
    let stub = Stub::start(Reply::status(429, r#"{"title":"Too Many Requests","detail":"10 simultaneous"}"#)).await;
    let err = mailchimp(&stub.url).await.deliver(&[order(1)]).await.unwrap_err();
    assert!(matches!(&err, DeliverError::Retryable { reason, .. } if reason.contains("10 simultaneous")), "{err:?}");

    let stub =
        Stub::start(Reply::status(401, r#"{"title":"API Key Invalid","detail":"Your API key may be invalid"}"#)).await;
    let reason = rejected(mailchimp(&stub.url).await.deliver(&[order(1)]).await.unwrap_err());
    assert!(reason.contains("Mailchimp refused the API key") && reason.contains("API Key Invalid"), "{reason}");
}

#[tokio::test]
async fn mailchimp_settings_name_what_is_wrong_and_deletion_is_permanent() {
    let err = onepd_adapters::destinations::built_in("mailchimp", &json!({"api_key": "nodc", "list_id": "L"}))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("settings.api_key"), "{err}");
    let err = onepd_adapters::destinations::built_in(
        "mailchimp",
        &json!({"api_key": "k-us6", "list_id": "L", "status_if_new": "maybe"}),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("settings.status_if_new"), "{err}");

    let stub = Stub::start(Reply::status(204, "")).await;
    assert_eq!(mailchimp(&stub.url).await.delete(&deletion()).await.unwrap(), DeletionAnswer::Requested);
    assert_eq!(stub.only_request().path, format!("/lists/L1/members/{ANN_HASH}/actions/delete-permanent"));
}

// ---------------------------------------------------------------------------
// Braze.

async fn braze(url: &str) -> std::sync::Arc<dyn onepd_domain::destination::Destination> {
    adapter("braze", json!({"api_key": "braze-key", "endpoint": url, "app_id": "app-1"})).await
}

#[tokio::test]
async fn braze_tracks_attributes_events_and_purchases_in_one_request() {
    let stub = Stub::start(Reply::status(201, r#"{"message":"success"}"#)).await;
    let results = braze(&stub.url).await.deliver(&[identify_ann(1), order(2)]).await.unwrap();
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let sent = stub.only_request();
    assert_eq!(sent.path, "/users/track");
    assert_eq!(sent.header("authorization"), Some("Bearer braze-key"));
    let body = sent.json();
    assert_eq!(
        body["attributes"],
        json!([{"external_id": "u1", "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "plan": "pro"}])
    );
    assert_eq!(body["events"][0]["name"], "Order Completed");
    assert_eq!(body["events"][0]["app_id"], "app-1");
    let purchases: Vec<(&str, f64, f64)> = (body["purchases"].as_array().unwrap().iter())
        .map(|p| (p["product_id"].as_str().unwrap(), p["price"].as_f64().unwrap(), p["quantity"].as_f64().unwrap()))
        .collect();
    assert_eq!(purchases, [("sku-1", 9.5, 3.0), ("sku-2", 31.0, 1.0)]);
    assert_eq!(body["purchases"][0]["currency"], "EUR");
}

#[tokio::test]
async fn braze_keeps_audiences_in_a_custom_attribute_array() {
    let stub = Stub::start(Reply::status(201, r#"{"message":"success"}"#)).await;
    let changes = [
        audience_change(1, true, "repeat buyers", None, ANN),
        audience_change(2, false, "lapsed", Some("segments"), ANN),
    ];
    braze(&stub.url).await.deliver(&changes).await.unwrap();
    assert_eq!(
        stub.only_request().json()["attributes"],
        json!([{"external_id": "u1", "onepd_audiences": {"add": ["repeat buyers"]}},
               {"external_id": "u1", "segments": {"remove": ["lapsed"]}}])
    );
}

#[tokio::test]
async fn braze_splits_arrays_past_75_and_reads_minor_errors_per_object() {
    let stub = Stub::start(Reply::status(
        201,
        r#"{"message":"success","errors":[{"type":"'time' is invalid","input_array":"events","index":1}]}"#,
    ))
    .await;
    let viewed = |n| {
        let mut event = order(n);
        event.name = Some("Product Viewed".into());
        event
    };
    let events: Vec<PreparedEvent> = (1..=76).map(viewed).collect();
    let results = braze(&stub.url).await.deliver(&events).await.unwrap();
    let requests = stub.requests();
    assert_eq!(requests.len(), 2, "76 events are two requests of at most 75 each");
    assert!(requests.iter().all(|r| r.json()["events"].as_array().unwrap().len() <= 75));
    // The first request's events[1] is event 2; the second holds only event 76.
    assert!(matches!(outcome_of(&results, 2), Outcome::Permanent { reason } if reason.contains("'time' is invalid")));
    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert_eq!(results.iter().filter(|r| r.outcome == Outcome::Delivered).count(), 75);
}

#[tokio::test]
async fn braze_waits_until_its_rate_limit_resets_and_names_a_refused_key() {
    let reset = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 20;
    let reset: &'static str = Box::leak(reset.to_string().into_boxed_str());
    let stub = Stub::start(Reply::status(429, "rate limited").with_header("X-RateLimit-Reset", reset)).await;
    let wait = retry_after(braze(&stub.url).await.deliver(&[order(1)]).await.unwrap_err()).expect("a wait");
    assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "{wait:?}");

    let stub = Stub::start(Reply::status(401, r#"{"message":"Invalid API key"}"#)).await;
    let reason = rejected(braze(&stub.url).await.deliver(&[order(1)]).await.unwrap_err());
    assert!(reason.contains("Braze refused the API key"), "{reason}");
}

#[tokio::test]
async fn braze_refuses_a_person_it_cannot_name_and_deletes_by_external_id() {
    let stub = Stub::start(Reply::status(201, r#"{"message":"success"}"#)).await;
    let nobody = with_identifiers(order_completed(1), &[("email", &["x@example.com"])]);
    let results = braze(&stub.url).await.deliver(&[nobody]).await.unwrap();
    assert!(matches!(outcome_of(&results, 1), Outcome::Permanent { reason } if reason.contains("user id")));
    assert!(stub.requests().is_empty());

    assert_eq!(braze(&stub.url).await.delete(&deletion()).await.unwrap(), DeletionAnswer::Requested);
    let sent = stub.only_request();
    assert_eq!((sent.path.as_str(), sent.json()), ("/users/delete", json!({"external_ids": ["u1"]})));
}
