//! Audience sync to Google Ads Customer Match and TikTok custom audiences
//! against a stub: exactly the calls each platform documents, the adds and
//! removes hashed to its rules, and what is refused.

use onepd_domain::destination::{DeliverError, Outcome};
use onepd_domain::hashing::{google_ads_identifiers, sha256_hex, tiktok_identifiers};
use serde_json::{Value, json};

mod stub;
use stub::*;

fn google(url: &str) -> Value {
    json!({"customer_id": "123-456-7890", "developer_token": "dev-tok", "access_token": "oauth-tok",
           "conversion_action": "555", "endpoint": url})
}

/// Google answers the job's creation with its resource name.
async fn google_stub() -> Stub {
    Stub::answering(|request, _| {
        if request.path.ends_with("offlineUserDataJobs:create") {
            Reply::ok(json!({"resourceName": "customers/1234567890/offlineUserDataJobs/42"}))
        } else {
            Reply::ok(json!({}))
        }
    })
    .await
}

#[tokio::test]
async fn customer_match_creates_a_job_adds_the_entries_removes_the_exits_and_runs_it() {
    let stub = google_stub().await;
    let ads = adapter("google_ads", google(&stub.url)).await;
    // Google's normalization: gmail dots removed, lowercase, then SHA-256.
    let ann = prepared(&google_ads_identifiers(), "hashed_email", "Ann.Lee@Gmail.com");
    assert_eq!(ann, sha256_hex("annlee@gmail.com"));
    let bob = prepared(&google_ads_identifiers(), "hashed_email", "bob@example.com");
    let changes = [
        audience_change(1, true, "buyers", Some("9001"), &[("hashed_email", &[ann.as_str()])]),
        audience_change(2, false, "buyers", Some("9001"), &[("hashed_email", &[bob.as_str()])]),
        audience_change(3, true, "buyers", None, &[("hashed_email", &[ann.as_str()])]),
        audience_change(4, true, "buyers", Some("9001"), &[]),
    ];

    let results = ads.deliver(&changes).await.unwrap();

    assert_eq!((outcome_of(&results, 1), outcome_of(&results, 2)), (&Outcome::Delivered, &Outcome::Delivered));
    assert!(matches!(outcome_of(&results, 3), Outcome::Permanent { reason } if reason.contains("--external-id")));
    assert!(matches!(outcome_of(&results, 4), Outcome::Permanent { reason } if reason.contains("neither")));
    let requests = stub.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v18/customers/1234567890/offlineUserDataJobs:create",
            "/v18/customers/1234567890/offlineUserDataJobs/42:addOperations",
            "/v18/customers/1234567890/offlineUserDataJobs/42:run",
        ]
    );
    assert_eq!(requests[0].header("developer-token"), Some("dev-tok"));
    assert_eq!(
        requests[0].json()["job"],
        json!({"type": "CUSTOMER_MATCH_USER_LIST",
               "customerMatchUserListMetadata": {"userList": "customers/1234567890/userLists/9001"}})
    );
    let mut operations = requests[1].json()["operations"].as_array().unwrap().clone();
    operations.sort_by_key(|op| op.to_string());
    assert_eq!(
        operations,
        [
            json!({"create": {"userIdentifiers": [{"hashedEmail": ann}]}}),
            json!({"remove": {"userIdentifiers": [{"hashedEmail": bob}]}}),
        ]
    );
    let text: String = requests.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert!(!text.contains('@'), "no raw email: {text}");
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
    let ann = prepared(&google_ads_identifiers(), "hashed_email", "ann@example.com");
    let order = with_identifiers(order_completed(1), &[("hashed_email", &[ann.as_str()])]);
    let change = audience_change(2, true, "buyers", Some("9001"), &[("hashed_email", &[ann.as_str()])]);

    let results = ads.deliver(&[order, change]).await.unwrap();

    assert_eq!(outcome_of(&results, 1), &Outcome::Delivered, "the conversion went");
    assert!(matches!(outcome_of(&results, 2), Outcome::Retryable { .. }), "{results:?}");

    // Alone, the job's failure fails the delivery, as any first call does.
    let change = audience_change(3, true, "buyers", Some("9001"), &[("hashed_email", &[ann.as_str()])]);
    let err = ads.deliver(&[change]).await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
}

fn tiktok(url: &str, advertiser: Option<&str>) -> Value {
    let mut settings = json!({"access_token": "tt-tok", "pixel_code": "P", "endpoint": url});
    if let Some(advertiser) = advertiser {
        settings["advertiser_id"] = json!(advertiser);
    }
    settings
}

#[tokio::test]
async fn tiktok_maps_entries_and_exits_to_its_custom_audience_by_hashed_email_and_phone() {
    let stub = Stub::start(Reply::ok(json!({"code": 0, "message": "OK"}))).await;
    let tiktok_adapter = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    let email = prepared(&tiktok_identifiers(), "email", " Ann@Example.com ");
    assert_eq!(email, sha256_hex("ann@example.com"));
    let phone = prepared(&tiktok_identifiers(), "phone", "+1 (415) 555-0100");
    let changes = [
        audience_change(1, true, "buyers", Some("AUD1"), &[("email", &[email.as_str()]), ("phone", &[phone.as_str()])]),
        audience_change(2, false, "buyers", Some("AUD1"), &[("email", &[sha256_hex("bob@example.com").as_str()])]),
    ];

    let results = tiktok_adapter.deliver(&changes).await.unwrap();

    assert!(results.iter().all(|r| r.outcome == Outcome::Delivered), "{results:?}");
    let mut calls: Vec<Value> = stub.requests().iter().map(|r| r.json()).collect();
    calls.sort_by_key(|call| call["action"].to_string());
    assert_eq!(stub.requests()[0].path, "/open_api/v1.3/segment/mapping/");
    assert_eq!(stub.requests()[0].header("access-token"), Some("tt-tok"));
    assert_eq!(
        calls[0],
        json!({"advertiser_ids": ["7000"], "action": "add", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
               "batch_data": [[{"id": email, "audience_ids": ["AUD1"]}, {"id": phone, "audience_ids": ["AUD1"]}]]})
    );
    assert_eq!(calls[1]["action"], "delete");
    assert_eq!(calls[1]["batch_data"][0][0]["id"], sha256_hex("bob@example.com"));
    assert_eq!(calls[1]["batch_data"][0][1]["id"], "", "no phone: an empty id");
}

#[tokio::test]
async fn tiktok_refuses_an_audience_change_without_an_advertiser_or_an_audience_id() {
    let stub = Stub::start(Reply::ok(json!({"code": 0}))).await;
    let email = sha256_hex("ann@example.com");
    let change = |n, id| audience_change(n, true, "buyers", id, &[("email", &[email.as_str()])]);
    let without_advertiser = adapter("tiktok", tiktok(&stub.url, None)).await;
    let results = without_advertiser.deliver(&[change(1, Some("AUD1"))]).await.unwrap();
    assert!(
        matches!(outcome_of(&results, 1), Outcome::Permanent { reason } if reason.contains("settings.advertiser_id"))
    );
    let with_advertiser = adapter("tiktok", tiktok(&stub.url, Some("7000"))).await;
    let results = with_advertiser.deliver(&[change(2, None)]).await.unwrap();
    assert!(matches!(outcome_of(&results, 2), Outcome::Permanent { reason } if reason.contains("--external-id")));
    assert!(stub.requests().is_empty());

    // TikTok's rate limit is a code in a 200 answer.
    let limited = Stub::start(Reply::ok(json!({"code": 40100, "message": "Too many requests"}))).await;
    let adapter = adapter("tiktok", tiktok(&limited.url, Some("7000"))).await;
    let err = adapter.deliver(&[change(3, Some("AUD1"))]).await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
}
