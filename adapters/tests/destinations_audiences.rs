//! Audience sync to Google Ads Customer Match and TikTok custom audiences
//! against a stub: exactly the calls each platform documents, the adds and
//! removes hashed to its rules, the failures between calls, and what is
//! refused.

use std::time::Duration;

use onepd_domain::destination::{DeliverError, Outcome, PreparedEvent};
use onepd_domain::hashing::{google_ads_identifiers, tiktok_identifiers};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod stub;
use stub::*;

/// SHA-256 as lowercase hex, computed here rather than by the code under test.
fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// No request body holds a raw email.
fn assert_no_raw_email(stub: &Stub) {
    for request in stub.requests() {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        assert!(!body.contains('@'), "a raw email in {}: {body}", request.path);
    }
}

fn is_retryable(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retryable { .. })
}

fn permanent_reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Permanent { reason } => reason,
        other => panic!("expected a permanent outcome, found {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Google Ads Customer Match.

fn google(url: &str) -> Value {
    json!({"customer_id": "123-456-7890", "developer_token": "dev-tok", "access_token": "oauth-tok",
           "conversion_action": "555", "endpoint": url})
}

const JOB: &str = "customers/1234567890/offlineUserDataJobs/42";
const CREATE: &str = "/v18/customers/1234567890/offlineUserDataJobs:create";
const ADD: &str = "/v18/customers/1234567890/offlineUserDataJobs/42:addOperations";
const RUN: &str = "/v18/customers/1234567890/offlineUserDataJobs/42:run";

/// Google's answer to each call, `add` and `run` replaced where a test says.
async fn google_stub(add: Reply, run: Reply) -> Stub {
    Stub::answering(move |request, _| {
        if request.path.ends_with("offlineUserDataJobs:create") {
            Reply::ok(json!({"resourceName": JOB}))
        } else if request.path.ends_with(":addOperations") {
            add.clone()
        } else if request.path.ends_with(":run") {
            run.clone()
        } else {
            Reply::ok(json!({}))
        }
    })
    .await
}

async fn google_answering_ok() -> Stub {
    google_stub(Reply::ok(json!({})), Reply::ok(json!({}))).await
}

fn hashed_email(raw: &str) -> String {
    prepared(&google_ads_identifiers(), "hashed_email", raw)
}

/// A Customer Match change for list `list` of a person with `email`.
fn list_change(n: u128, entered: bool, list: Option<&str>, email: &str) -> PreparedEvent {
    audience_change(n, entered, "buyers", list, &[("hashed_email", &[email])])
}

fn paths(stub: &Stub) -> Vec<String> {
    stub.requests().iter().map(|r| r.path.clone()).collect()
}

#[tokio::test]
async fn customer_match_creates_a_job_adds_the_entries_removes_the_exits_and_runs_it() {
    let stub = google_answering_ok().await;
    let mut settings = google(&stub.url);
    settings["login_customer_id"] = json!("999-000-1111");
    let ads = adapter("google_ads", settings).await;
    // Google's normalization example: lowercase, gmail dots removed.
    let ann = hashed_email("Ann.Lee@Gmail.com");
    assert_eq!(ann, sha256("annlee@gmail.com"));
    let phone = prepared(&google_ads_identifiers(), "hashed_phone_number", "+1 (415) 555-0100");
    assert_eq!(phone, sha256("+14155550100"));
    let bob = hashed_email("bob@example.com");
    let changes = [
        audience_change(
            1,
            true,
            "buyers",
            Some("9001"),
            &[("hashed_email", &[ann.as_str()]), ("hashed_phone_number", &[phone.as_str()])],
        ),
        list_change(2, false, Some("9001"), &bob),
    ];

    let results = ads.deliver(&changes).await.unwrap();

    assert_eq!((outcome_of(&results, 1), outcome_of(&results, 2)), (&Outcome::Delivered, &Outcome::Delivered));
    let requests = stub.requests();
    assert_eq!(paths(&stub), [CREATE, ADD, RUN]);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.header("authorization"), Some("Bearer oauth-tok"));
        assert_eq!(request.header("developer-token"), Some("dev-tok"));
        assert_eq!(request.header("login-customer-id"), Some("9990001111"));
    }
    assert_eq!(
        requests[0].json(),
        json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST",
                       "customerMatchUserListMetadata": {"userList": "customers/1234567890/userLists/9001"}}})
    );
    let mut add = requests[1].json();
    add["operations"].as_array_mut().unwrap().sort_by_key(|op| op.to_string());
    assert_eq!(
        add,
        json!({"operations": [
                   {"create": {"userIdentifiers": [{"hashedEmail": ann}, {"hashedPhoneNumber": phone}]}},
                   {"remove": {"userIdentifiers": [{"hashedEmail": bob}]}},
               ],
               "enablePartialFailure": true})
    );
    assert_eq!(requests[2].json(), json!({}));
    assert_no_raw_email(&stub);
}

#[tokio::test]
async fn customer_match_runs_one_job_per_user_list_and_the_last_change_of_a_person_wins() {
    let stub = google_answering_ok().await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");
    let changes = [
        list_change(1, true, Some("9001"), &ann),
        list_change(2, true, Some("9002"), &ann),
        list_change(3, false, Some("9001"), &ann),
    ];

    let results = ads.deliver(&changes).await.unwrap();

    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    assert_eq!(results.len(), 3);
    let requests = stub.requests();
    assert_eq!(paths(&stub), [CREATE, ADD, RUN, CREATE, ADD, RUN]);
    assert_eq!(
        requests[0].json()["job"]["customerMatchUserListMetadata"]["userList"],
        "customers/1234567890/userLists/9001"
    );
    assert_eq!(
        requests[1].json()["operations"],
        json!([{"remove": {"userIdentifiers": [{"hashedEmail": ann}]}}]),
        "the exit after the entry wins"
    );
    assert_eq!(
        requests[3].json()["job"]["customerMatchUserListMetadata"]["userList"],
        "customers/1234567890/userLists/9002"
    );
    assert_eq!(requests[4].json()["operations"], json!([{"create": {"userIdentifiers": [{"hashedEmail": ann}]}}]));
}

#[tokio::test]
async fn customer_match_sends_a_full_batch_in_one_job_and_at_most_20_identifiers_a_person() {
    let stub = google_answering_ok().await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    assert_eq!(ads.describe().await.unwrap().max_batch_size, 2000);
    let many: Vec<String> = (0..25).map(|i| hashed_email(&format!("ann{i}@example.com"))).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut changes = vec![audience_change(0, true, "buyers", Some("9001"), &[("hashed_email", &many)])];
    let emails: Vec<String> = (1..2000).map(|i| hashed_email(&format!("person{i}@example.com"))).collect();
    for (i, email) in emails.iter().enumerate() {
        changes.push(list_change(i as u128 + 1, true, Some("9001"), email));
    }

    let results = ads.deliver(&changes).await.unwrap();

    assert_eq!(results.len(), 2000);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered));
    assert_eq!(paths(&stub), [CREATE, ADD, RUN]);
    let operations = stub.requests()[1].json()["operations"].as_array().unwrap().clone();
    assert_eq!(operations.len(), 2000);
    let most = operations.iter().map(|op| op["create"]["userIdentifiers"].as_array().unwrap().len()).max();
    assert_eq!(most, Some(20), "Google takes at most 20 identifiers per operation");
}

#[tokio::test]
async fn customer_match_refuses_a_change_without_a_list_id_with_a_list_id_not_digits_or_without_email_or_phone() {
    let stub = google_answering_ok().await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");
    let changes = [
        list_change(1, true, None, &ann),
        list_change(2, true, Some("../9001"), &ann),
        audience_change(3, true, "buyers", Some("9001"), &[("gclid", &["Cj0"])]),
    ];

    let results = ads.deliver(&changes).await.unwrap();

    assert!(permanent_reason(outcome_of(&results, 1)).contains("--external-id"), "{results:?}");
    assert!(permanent_reason(outcome_of(&results, 2)).contains("digits, found \"../9001\""), "{results:?}");
    assert!(permanent_reason(outcome_of(&results, 3)).contains("hashed email or phone"), "{results:?}");
    assert!(stub.requests().is_empty(), "nothing to send");
}

#[tokio::test]
async fn customer_match_declares_the_consent_the_settings_give_and_refuses_an_unknown_status() {
    let stub = google_answering_ok().await;
    let mut settings = google(&stub.url);
    settings["ad_user_data_consent"] = json!("GRANTED");
    settings["ad_personalization_consent"] = json!("DENIED");
    let ads = adapter("google_ads", settings.clone()).await;

    ads.deliver(&[list_change(1, true, Some("9001"), &hashed_email("ann@example.com"))]).await.unwrap();

    assert_eq!(
        stub.requests()[0].json()["job"]["customerMatchUserListMetadata"]["consent"],
        json!({"adUserData": "GRANTED", "adPersonalization": "DENIED"})
    );
    settings["ad_user_data_consent"] = json!("YES");
    let err = onepd_adapters::destinations::built_in("google_ads", &settings).err().expect("refused");
    assert!(err.to_string().contains("settings.ad_user_data_consent"), "{err}");
}

#[tokio::test]
async fn customer_match_and_conversions_of_one_batch_are_both_sent() {
    let stub = google_answering_ok().await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");
    let order = with_identifiers(order_completed(1), &[("hashed_email", &[ann.as_str()])]);

    let results = ads.deliver(&[order, list_change(2, true, Some("9001"), &ann), identify(3)]).await.unwrap();

    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    assert_eq!(results.len(), 3);
    assert_eq!(paths(&stub), ["/v18/customers/1234567890:uploadClickConversions", CREATE, ADD, RUN]);
    assert_eq!(stub.requests()[0].json()["conversions"][0]["userIdentifiers"][0]["hashedEmail"], json!(ann));
    assert_no_raw_email(&stub);
}

#[tokio::test]
async fn customer_match_after_conversions_turns_a_failed_job_into_the_changes_outcomes() {
    let stub = Stub::answering(|request, _| {
        if request.path.ends_with(":uploadClickConversions") {
            Reply::ok(json!({}))
        } else {
            Reply::status(500, "backend error")
        }
    })
    .await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");
    let order = with_identifiers(order_completed(1), &[("hashed_email", &[ann.as_str()])]);

    let results = ads.deliver(&[order, list_change(2, true, Some("9001"), &ann)]).await.unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered, "the conversion went");
    assert!(is_retryable(outcome_of(&results, 2)), "{results:?}");

    // Alone, the job's creation is the first call: its failure fails the
    // delivery, as any first call's does; a refusal names the status.
    let err = ads.deliver(&[list_change(3, true, Some("9001"), &ann)]).await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
    let refusing = Stub::start(Reply::status(403, "PERMISSION_DENIED: developer token not approved")).await;
    let ads = adapter("google_ads", google(&refusing.url)).await;
    let err = ads.deliver(&[list_change(4, true, Some("9001"), &ann)]).await.unwrap_err();
    assert!(
        matches!(&err, DeliverError::BatchRejected { reason } if reason.contains("403") && reason.contains("PERMISSION_DENIED")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_failed_add_operations_is_the_changes_outcome_and_the_job_is_not_run() {
    let stub =
        google_stub(Reply::status(503, "unavailable").with_header("Retry-After", "7"), Reply::ok(json!({}))).await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");

    let results = ads.deliver(&[list_change(1, true, Some("9001"), &ann)]).await.unwrap();

    assert_eq!(
        outcome_of(&results, 1),
        &Outcome::Retryable {
            reason: "HTTP 503 Service Unavailable: unavailable".to_owned(),
            retry_after_ms: Some(7000)
        }
    );
    assert_eq!(paths(&stub), [CREATE, ADD]);
}

#[tokio::test]
async fn a_failed_run_is_the_outcome_of_the_changes_it_carried() {
    let stub =
        google_stub(Reply::ok(json!({})), Reply::status(429, "RESOURCE_EXHAUSTED").with_header("Retry-After", "7"))
            .await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");
    let changes =
        [list_change(1, true, Some("9001"), &ann), list_change(2, false, Some("9001"), &hashed_email("b@x.org"))];

    let results = ads.deliver(&changes).await.unwrap();

    for n in [1, 2] {
        assert!(
            matches!(outcome_of(&results, n), Outcome::Retryable { retry_after_ms: Some(7000), .. }),
            "{results:?}"
        );
    }
    assert_eq!(paths(&stub), [CREATE, ADD, RUN]);
}

#[tokio::test]
async fn a_second_list_failing_after_the_first_ran_fails_only_its_own_changes() {
    let stub = Stub::answering(|request, _| {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        if body.contains("userLists/9002") {
            Reply::status(500, "backend error")
        } else if request.path.ends_with(":create") {
            Reply::ok(json!({"resourceName": JOB}))
        } else {
            Reply::ok(json!({}))
        }
    })
    .await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    let ann = hashed_email("ann@example.com");

    let results = ads
        .deliver(&[list_change(1, true, Some("9001"), &ann), list_change(2, true, Some("9002"), &ann)])
        .await
        .unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    assert!(is_retryable(outcome_of(&results, 2)), "{results:?}");
    assert_eq!(paths(&stub), [CREATE, ADD, RUN, CREATE]);
}

#[tokio::test]
async fn an_operation_google_refuses_is_permanent_for_its_change_and_the_job_still_runs() {
    let partial = json!({"partialFailureError": {
        "code": 3,
        "message": "The hashed value is not valid.",
        "details": [{"errors": [{
            "errorCode": {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"},
            "message": "The SHA256 encoded value is malformed.",
            "location": {"fieldPathElements": [{"fieldName": "operations", "index": 1},
                                               {"fieldName": "create"}]}
        }]}]
    }});
    let stub = google_stub(Reply::ok(partial), Reply::ok(json!({}))).await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    // Operations follow the persons' hashed identifiers: "aaaa…" before "ffff…".
    let changes =
        [list_change(1, true, Some("9001"), &"a".repeat(64)), list_change(2, true, Some("9001"), &"f".repeat(64))];

    let results = ads.deliver(&changes).await.unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered);
    let reason = permanent_reason(outcome_of(&results, 2));
    assert!(reason.contains("INVALID_SHA256_FORMAT"), "{reason}");
    assert_eq!(paths(&stub), [CREATE, ADD, RUN]);
    assert_eq!(
        stub.requests()[1].json()["operations"][1]["create"]["userIdentifiers"][0]["hashedEmail"],
        "f".repeat(64)
    );
}

#[tokio::test]
async fn customer_match_previews_its_three_calls_with_the_tokens_masked() {
    let ads = adapter("google_ads", google("http://127.0.0.1:1")).await;
    let rendered = ads.render(&[list_change(1, false, Some("9001"), &hashed_email("ann@example.com"))]).unwrap();

    let urls: Vec<&str> = rendered.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(urls.len(), 3);
    assert!(urls[0].ends_with(CREATE), "{urls:?}");
    assert!(urls[1].ends_with(":addOperations") && urls[2].ends_with(":run"), "{urls:?}");
    assert!(rendered.iter().all(|r| r.secrets.contains(&"oauth-tok".to_owned())));
}

// ---------------------------------------------------------------------------
// TikTok custom audiences.

fn tiktok(url: &str, advertiser: Option<&str>) -> Value {
    let mut settings = json!({"access_token": "tt-tok", "pixel_code": "P", "endpoint": url});
    if let Some(advertiser) = advertiser {
        settings["advertiser_id"] = json!(advertiser);
    }
    settings
}

const MAPPING: &str = "/open_api/v1.3/segment/mapping/";

fn tiktok_email(raw: &str) -> String {
    prepared(&tiktok_identifiers(), "email", raw)
}

#[tokio::test]
async fn tiktok_adds_the_entries_and_deletes_the_exits_by_hashed_email_and_phone() {
    let stub = Stub::start(Reply::ok(json!({"code": 0, "message": "OK"}))).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    // TikTok's normalization: trimmed, lowercase, SHA-256.
    let email = tiktok_email(" Ann@Example.com ");
    assert_eq!(email, sha256("ann@example.com"));
    let phone = prepared(&tiktok_identifiers(), "phone", "+1 (415) 555-0100");
    assert_eq!(phone, sha256("+14155550100"));
    let bob = tiktok_email("bob@example.com");
    let changes = [
        audience_change(1, true, "buyers", Some("AUD1"), &[("email", &[email.as_str()]), ("phone", &[phone.as_str()])]),
        audience_change(2, false, "buyers", Some("AUD1"), &[("email", &[bob.as_str()])]),
    ];

    let results = tiktok_adapter.deliver(&changes).await.unwrap();

    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", MAPPING));
        assert_eq!(request.header("access-token"), Some("tt-tok"));
    }
    let mut calls: Vec<Value> = requests.iter().map(|r| r.json()).collect();
    calls.sort_by_key(|call| call["action"].to_string());
    assert_eq!(
        calls,
        [
            json!({"advertiser_ids": ["7000"], "action": "add", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
                   "batch_data": [[{"id": email, "audience_ids": ["AUD1"]}, {"id": phone, "audience_ids": ["AUD1"]}]]}),
            json!({"advertiser_ids": ["7000"], "action": "delete", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
                   "batch_data": [[{"id": bob, "audience_ids": ["AUD1"]}, {"id": "", "audience_ids": ["AUD1"]}]]}),
        ]
    );
    assert_no_raw_email(&stub);
}

#[tokio::test]
async fn tiktok_sends_a_full_batch_in_one_call_and_the_last_change_of_a_person_wins() {
    let stub = Stub::start(Reply::ok(json!({"code": 0}))).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    assert_eq!(tiktok_adapter.describe().await.unwrap().max_batch_size, 1000);
    let ann = tiktok_email("ann@example.com");
    let mut changes = vec![
        audience_change(0, true, "buyers", Some("AUD1"), &[("email", &[ann.as_str()])]),
        audience_change(1, false, "buyers", Some("AUD1"), &[("email", &[ann.as_str()])]),
    ];
    let emails: Vec<String> = (2..1000).map(|i| tiktok_email(&format!("p{i}@example.com"))).collect();
    for (i, email) in emails.iter().enumerate() {
        changes.push(audience_change(i as u128 + 2, true, "buyers", Some("AUD1"), &[("email", &[email.as_str()])]));
    }

    let results = tiktok_adapter.deliver(&changes).await.unwrap();

    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered));
    let mut calls: Vec<Value> = stub.requests().iter().map(|r| r.json()).collect();
    calls.sort_by_key(|call| call["action"].to_string());
    assert_eq!(calls.len(), 2, "one add and one delete");
    assert_eq!(calls[0]["batch_data"].as_array().unwrap().len(), 998);
    assert_eq!(calls[1]["action"], "delete", "the exit after the entry wins");
    assert_eq!(
        calls[1]["batch_data"],
        json!([[{"id": ann, "audience_ids": ["AUD1"]}, {"id": "", "audience_ids": ["AUD1"]}]])
    );
}

#[tokio::test]
async fn tiktok_refuses_an_audience_change_without_an_advertiser_an_audience_id_or_an_email_or_phone() {
    let stub = Stub::start(Reply::ok(json!({"code": 0}))).await;
    let email = tiktok_email("ann@example.com");
    let change = |n, id| audience_change(n, true, "buyers", id, &[("email", &[email.as_str()])]);
    let without_advertiser = adapter("tiktok", tiktok(&stub.url, None)).await;
    let results = without_advertiser.deliver(&[change(1, Some("AUD1"))]).await.unwrap();
    assert!(permanent_reason(outcome_of(&results, 1)).contains("settings.advertiser_id"), "{results:?}");

    let with_advertiser = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    let nobody = audience_change(3, true, "buyers", Some("AUD1"), &[("ip", &["10.0.0.1"])]);
    let results = with_advertiser.deliver(&[change(2, None), nobody]).await.unwrap();
    assert!(permanent_reason(outcome_of(&results, 2)).contains("--external-id"), "{results:?}");
    assert!(permanent_reason(outcome_of(&results, 3)).contains("neither"), "{results:?}");
    assert!(stub.requests().is_empty(), "nothing to send");
}

#[tokio::test]
async fn tiktok_sends_the_events_and_the_audience_changes_of_one_batch() {
    let stub = Stub::answering(|request, _| {
        if request.path == MAPPING {
            Reply::ok(json!({"code": 40100, "message": "Too many requests"}))
        } else {
            Reply::ok(json!({"code": 0}))
        }
    })
    .await;
    let tiktok_adapter = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    let email = tiktok_email("ann@example.com");
    let order = with_identifiers(order_completed(1), &[("email", &[email.as_str()])]);
    let change = audience_change(2, true, "buyers", Some("AUD1"), &[("email", &[email.as_str()])]);

    let results = tiktok_adapter.deliver(&[order, change]).await.unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered, "the event went");
    assert!(
        matches!(outcome_of(&results, 2), Outcome::Retryable { reason, .. } if reason.contains("40100")),
        "the mapping's rate limit after the events' call is the change's outcome: {results:?}"
    );
    let paths = paths(&stub);
    assert_eq!(paths, ["/open_api/v1.3/event/track/", MAPPING]);
    assert_no_raw_email(&stub);
}

#[tokio::test]
async fn tiktok_reads_the_code_of_a_mapping_call_that_goes_first() {
    let email = tiktok_email("ann@example.com");
    let change = audience_change(1, true, "buyers", Some("AUD1"), &[("email", &[email.as_str()])]);
    let limited = Stub::start(Reply::ok(json!({"code": 40100, "message": "Too many requests"}))).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&limited.url, Some("7000"))).await;
    let err = tiktok_adapter.deliver(std::slice::from_ref(&change)).await.unwrap_err();
    assert!(matches!(&err, DeliverError::Retryable { retry_after: None, .. }), "{err:?}");

    let unauthorized = Stub::start(Reply::ok(json!({"code": 40105, "message": "Access token is incorrect"}))).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&unauthorized.url, Some("7000"))).await;
    let err = tiktok_adapter.deliver(std::slice::from_ref(&change)).await.unwrap_err();
    assert!(
        matches!(&err, DeliverError::BatchRejected { reason } if reason.contains("40105") && reason.contains("Access token")),
        "{err:?}"
    );

    let down = Stub::start(Reply::status(503, "busy").with_header("Retry-After", "7")).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&down.url, Some("7000"))).await;
    let err = tiktok_adapter.deliver(&[change]).await.unwrap_err();
    assert!(matches!(&err, DeliverError::Retryable { retry_after: Some(wait), .. } if *wait == Duration::from_secs(7)));
}
