//! Sensitive data through the real server: a healthcare workspace's
//! appointment reaches the Meta stub scrubbed (hashed identifiers and allowed
//! fields only) while an analytics receiver gets it whole; consent decides
//! what a destination gets and the ledger says why; and erasure (`onepd
//! forget`, gRPC `Forget`, `POST /v1/regulations`) leaves no trace of a
//! person in rebuilt profiles or full replays, rejects their later messages,
//! asks destinations to delete them, and keeps `onepd verify` passing — on
//! SQLite and PostgreSQL.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::time::{Duration, Instant};

use onepd_domain::{EventId, Position, WorkspaceId};
use onepd_proto::admin::v1::ForgetRequest;
use onepd_proto::admin::v1::admin_service_client::AdminServiceClient;
use onepd_proto::admin::v1::forget_request::Subject;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stub::{Mode, Stub};
use support::{PgDatabase, Server, onepd, onepd_json, with_token};
use uuid::Uuid;

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn store_args(url: Option<&str>) -> Vec<String> {
    url.map(|url| vec!["--database-url".to_owned(), url.to_owned()]).unwrap_or_default()
}

/// Runs `onepd ARGS… STORE…`, failing with its stderr unless it succeeds.
fn run(dir: &std::path::Path, args: &[&str], store: &[String]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(store.iter().map(String::as_str));
    let output = onepd(dir, &all);
    assert!(output.status.success(), "onepd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Each line of `onepd … --json` output, parsed.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|line| !line.trim().is_empty()).map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Sends one request to the tracking API; returns status and body.
async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http))
        .basic_auth(server.write_key.as_ref().unwrap(), Some(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send(server: &Server, messages: Vec<Value>) {
    let (status, body) = post(server, "/v1/batch", json!({ "batch": messages })).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("rejected").is_none_or(|rejected| rejected.as_array().is_some_and(Vec::is_empty)), "{body}");
}

fn event_id(server: &Server, message_id: &str) -> String {
    let workspace = WorkspaceId(server.workspace.as_ref().unwrap().parse::<Uuid>().unwrap());
    EventId::for_message(workspace, message_id).to_string()
}

/// Creates the destination `meta` (Meta's Conversions API) sending to `stub`.
fn create_meta(dir: &std::path::Path, stub: &Stub, store: &[String]) {
    let endpoint = format!("endpoint={}", stub.url());
    let args = [
        "destination",
        "create",
        "meta",
        "--adapter",
        "meta_capi",
        "--setting",
        "pixel_id=1",
        "--setting",
        "access_token=t",
        "--setting",
        &endpoint,
    ];
    run(dir, &args, store);
}

/// Waits until `done` holds, failing with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event a webhook stub accepted, flattened from its batches.
fn webhook_events(stub: &Stub) -> Vec<Value> {
    stub.bodies().into_iter().flat_map(|(_, body)| body["batch"].as_array().cloned().unwrap_or_default()).collect()
}

const DIAGNOSIS: &str = "Type 2 diabetes mellitus";
const DOCTOR: &str = "Dr. Imelda Quarterman";

async fn a_healthcare_appointment_reaches_meta_scrubbed_and_analytics_whole(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    run(
        dir.path(),
        &["policy", "set", "--industry", "healthcare", "--site-origin", "https://clinic.example.com"],
        &store,
    );
    // The plan classifies the diagnosis; the detectors find the rest.
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({"events": {"Appointment Booked": {"type": "object", "properties": {
            "diagnosis": {"type": "string", "classification": "phi"}}}}})
        .to_string(),
    )
    .unwrap();
    run(dir.path(), &["plan", "set", plan.to_str().unwrap()], &store);
    let meta = Stub::start(Mode::Accept).await;
    let analytics = Stub::start(Mode::Accept).await;
    let endpoint = format!("endpoint={}", meta.url());
    run(
        dir.path(),
        &[
            "destination",
            "create",
            "meta",
            "--adapter",
            "meta_capi",
            "--setting",
            "pixel_id=123",
            "--setting",
            "access_token=EAAtoken",
            "--setting",
            &endpoint,
            "--map-event",
            "Appointment Booked=Schedule",
        ],
        &store,
    );
    let hook = format!("url={}/hook", analytics.url());
    run(
        dir.path(),
        &[
            "destination",
            "create",
            "analytics",
            "--adapter",
            "webhook",
            "--setting",
            &hook,
            "--setting",
            "category=analytics",
            // A business associate agreement covers it: it gets everything.
            "--baa",
        ],
        &store,
    );
    let page = json!({
        "url": "https://clinic.example.com/book/endocrinology?condition=diabetes&patient=7781",
        "path": "/book/endocrinology",
        "title": "Diabetes care | Book with Dr. Quarterman",
        "referrer": "https://www.google.com/search?q=diabetes+clinic+near+me",
        "search": "?condition=diabetes&patient=7781",
    });
    send(
        &server,
        vec![
            json!({"type": "identify", "messageId": "hc-id", "userId": "patient-7781",
                   "traits": {"email": "Pat.Doe@Example.com", "phone": "+1 415 555 0100", "firstName": "Pat"}}),
            json!({"type": "track", "messageId": "hc-appt", "userId": "patient-7781", "event": "Appointment Booked",
                   "properties": {"diagnosis": DIAGNOSIS, "doctor": DOCTOR, "value": 150, "currency": "USD",
                                  "notes": "follow-up on HbA1c results", "member_id": "HP-99812"},
                   "context": {"page": page, "ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
                               "consent": {"categoryPreferences": {"marketing": true}}}}),
            json!({"type": "track", "messageId": "hc-lab", "userId": "patient-7781", "event": "Lab Result Viewed",
                   "properties": {"test": "HbA1c"}, "context": {"consent": {"categoryPreferences": {"marketing": true}}}}),
        ],
    )
    .await;
    meta.wait_for(Duration::from_secs(30), "the appointment reaches Meta", |stub| {
        stub.bodies().iter().any(|(_, body)| body.to_string().contains("Schedule"))
    })
    .await;
    let (_, body) = meta.bodies().into_iter().find(|(_, body)| body.to_string().contains("Schedule")).unwrap();
    let event = body["data"].as_array().unwrap().iter().find(|e| e["event_name"] == "Schedule").unwrap().clone();
    assert_eq!(event["event_id"], event_id(&server, "hc-appt"));
    assert_eq!(event["event_source_url"], "https://clinic.example.com", "{event}");
    assert_eq!(event["custom_data"], json!({"value": 150, "currency": "USD"}), "{event}");
    let user = event["user_data"].as_object().unwrap();
    assert_eq!(user["em"], json!([sha256_hex("pat.doe@example.com")]));
    assert_eq!(user["ph"], json!([sha256_hex("14155550100")]));
    assert!(!user.contains_key("client_ip_address") && !user.contains_key("client_user_agent"), "{event}");
    for (name, value) in user {
        for item in value.as_array().into_iter().flatten() {
            assert!(item.as_str().is_some_and(is_sha256_hex), "{name} is not a SHA-256: {event}");
        }
    }
    let sent = without_hashes_and_ids(&body.to_string()).to_lowercase();
    for secret in [
        "diabetes",
        "endocrinology",
        "quarterman",
        "hba1c",
        "hp-99812",
        "7781",
        "pat.doe",
        "203.0.113.9",
        "mozilla",
        "appointment booked",
        "lab result",
        "google.com",
    ] {
        assert!(!sent.contains(secret), "{secret:?} reached Meta: {body}");
    }
    // The unmapped custom event never reaches Meta.
    assert!(!meta.bodies().iter().any(|(_, body)| body.to_string().contains("Lab")));

    // The analytics receiver gets everything.
    analytics
        .wait_for(Duration::from_secs(30), "the analytics receiver gets the events", |stub| {
            webhook_events(stub).len() >= 3
        })
        .await;
    let appointment = webhook_events(&analytics).into_iter().find(|e| e["name"] == "Appointment Booked").unwrap();
    assert_eq!(appointment["message"]["properties"]["diagnosis"], DIAGNOSIS);
    assert_eq!(appointment["message"]["context"]["page"], page);

    // The ledger names what was scrubbed (never the values) and what was
    // withheld; an attempt is recorded just after the delivery.
    let ledger_of = |message_id: &str| {
        let id = event_id(&server, message_id);
        let mut args = vec!["deliveries", "show", "--event-id", id.as_str(), "--json"];
        args.extend(store_refs.iter().copied());
        let output = onepd(dir.path(), &args);
        json_lines(&String::from_utf8_lossy(&output.stdout))
    };
    eventually(Duration::from_secs(30), "meta's ledger records the appointment and the lab event", || {
        ["hc-appt", "hc-lab"]
            .iter()
            .all(|message_id| ledger_of(message_id).iter().any(|entry| entry["destination"] == "meta"))
    })
    .await;
    let shown = ledger_of("hc-appt");
    let to_meta = shown.iter().find(|entry| entry["destination"] == "meta").expect("an attempt to meta");
    let scrubbed: Vec<&str> = to_meta["scrubbed"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    // Keys the plan does not name are recorded by class and digest only.
    for key in ["doctor", "notes", "member_id"] {
        assert!(!scrubbed.iter().any(|field| field.contains(key)), "{key} named in the ledger: {scrubbed:?}");
    }
    assert!(scrubbed.iter().filter(|field| field.starts_with("properties.<")).count() >= 3, "{scrubbed:?}");
    for field in [
        "properties.diagnosis",
        "context.page.title",
        "context.page.referrer",
        "context.page.url",
        "identifiers.client_ip_address",
    ] {
        assert!(scrubbed.contains(&field), "{field} not in the ledger's scrubbed list {scrubbed:?}");
    }
    assert!(!to_meta.to_string().to_lowercase().contains("diabetes"), "a value in the ledger: {to_meta}");
    let lab = ledger_of("hc-lab");
    let withheld = lab.iter().find(|entry| entry["destination"] == "meta").expect("meta's ledger names the lab event");
    assert_eq!(withheld["outcome"], "withheld");
    assert_eq!(withheld["rule"], "policy");
    assert!(!withheld.to_string().contains("Lab Result"), "the event name is not in the ledger: {withheld}");

    // The audit view explains the same decision, with reasons.
    let explained = onepd_json(
        dir.path(),
        &[
            &["policy", "explain", "--destination", "meta", "--event-id", &event_id(&server, "hc-appt")][..],
            &store_refs[..],
        ]
        .concat(),
    );
    assert_eq!(explained["verdict"], "sent");
    assert_eq!(explained["category"], "ad_platform");
    let reasons: Vec<Value> = explained["details"]["scrubbed"].as_array().unwrap().clone();
    let diagnosis = reasons.iter().find(|r| r["field"] == "properties.diagnosis").expect("the diagnosis is explained");
    assert!(diagnosis["reason"].as_str().unwrap().starts_with("classified phi by the tracking plan"), "{diagnosis}");
    assert_eq!(explained["details"]["message"]["event"], "Schedule");
    let lab = onepd_json(
        dir.path(),
        &[
            &["policy", "explain", "--destination", "meta", "--event-id", &event_id(&server, "hc-lab")][..],
            &store_refs[..],
        ]
        .concat(),
    );
    assert_eq!(lab["verdict"], "withheld");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcare_appointment_reaches_meta_scrubbed_and_analytics_whole_on_sqlite() {
    a_healthcare_appointment_reaches_meta_scrubbed_and_analytics_whole(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcare_appointment_reaches_meta_scrubbed_and_analytics_whole_on_postgres() {
    let db = PgDatabase::create().await;
    a_healthcare_appointment_reaches_meta_scrubbed_and_analytics_whole(Some(&db.url)).await;
}

/// What a healthcare reviewer plants (and must not find at an ad platform
/// or at GA4, which no business associate agreement covers).
/// Whether `text` is a SHA-256 digest in lowercase hex.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `text` with every SHA-256 digest and UUID in it replaced by `#`: a
/// planted number's digits may occur in a random hash or id by chance
/// ("7781" in `…0e64d419`-like hex), which is not the number reaching a
/// platform. Hashes of the planted values are checked separately.
fn without_hashes_and_ids(text: &str) -> String {
    let is_id = |run: &str| {
        let bytes = run.as_bytes();
        (bytes.len() == 64 || bytes.len() == 32) && bytes.iter().all(u8::is_ascii_hexdigit)
            || bytes.len() == 36
                && bytes
                    .iter()
                    .enumerate()
                    .all(|(n, b)| if matches!(n, 8 | 13 | 18 | 23) { *b == b'-' } else { b.is_ascii_hexdigit() })
    };
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() || c == '-' {
            run.push(c);
            continue;
        }
        out.push_str(if is_id(&run) { "#" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

#[test]
fn hashes_and_ids_are_taken_out_and_planted_values_kept() {
    let hash = "83acca05b0075cc23fd3a2a84bf3f79b2e04b1b727a00d582f8b751ee8ae7781";
    let text = format!(
        r#"{{"external_id":["{hash}"],"event_id":"9845e9e1-af3b-57e9-b4b8-bd6914b5a571","fbc":"078-05-1120","zip":"60640"}}"#
    );
    let plain = without_hashes_and_ids(&text);
    assert!(!plain.contains("7781") && !plain.contains("9845e9e1"), "{plain}");
    assert!(plain.contains("\"078-05-1120\"") && plain.contains("60640"), "{plain}");
}

const PLANTED: [&str; 12] = [
    "078-05-1120",
    "1961-04-12",
    "19610412",
    "60640",
    "pt-48213",
    "HIV",
    "Type 2 diabetes",
    "Okafor",
    "hiv-prep",
    "Have you ever been diagnosed with HIV?",
    "Margaret Okafor DOB",
    "(312) 555-7734",
];

async fn a_healthcare_workspace_sends_ad_platforms_and_ga4_only_what_the_policy_allows(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let site = "https://www.northside-health.example";
    run(dir.path(), &["policy", "set", "--industry", "healthcare", "--site-origin", site], &store);
    let stubs: Vec<(&str, Stub)> = vec![
        ("meta", Stub::start(Mode::Accept).await),
        ("google", Stub::start(Mode::Accept).await),
        ("tiktok", Stub::start(Mode::Accept).await),
        ("ga4", Stub::start(Mode::Accept).await),
        ("bi", Stub::start(Mode::Accept).await),
    ];
    let stub = |name: &str| &stubs.iter().find(|(n, _)| *n == name).unwrap().1;
    let endpoint = |name: &str| format!("endpoint={}", stub(name).url());
    let create = |name: &str, adapter: &str, settings: &[String]| {
        let mut args: Vec<String> =
            vec!["destination".into(), "create".into(), name.into(), "--adapter".into(), adapter.into()];
        for setting in settings {
            args.extend(["--setting".to_owned(), setting.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(dir.path(), &args, &store);
    };
    create("meta", "meta_capi", &["pixel_id=123".into(), "access_token=EAAtoken".into(), endpoint("meta")]);
    create(
        "google",
        "google_ads",
        &[
            "customer_id=123-456-7890".into(),
            "developer_token=devtoken".into(),
            "access_token=ya29token".into(),
            "conversion_action=42".into(),
            endpoint("google"),
        ],
    );
    create("tiktok", "tiktok", &["access_token=tttoken".into(), "pixel_code=PIX".into(), endpoint("tiktok")]);
    create("ga4", "ga4", &["measurement_id=G-TEST".into(), "api_secret=gasecret".into(), endpoint("ga4")]);
    create("bi", "webhook", &[format!("url={}/hook", stub("bi").url())]);

    let consent = json!({"categoryPreferences": {"marketing": true}});
    send(
        &server,
        vec![json!({"type": "identify", "messageId": "hc2-id", "userId": "pt-48213",
            "traits": {"email": "margaret.okafor@example.com", "phone": "+1 (312) 555-7734", "firstName": "Margaret",
                       "lastName": "Okafor", "birthday": "1961-04-12", "gender": "female",
                       "address": {"postalCode": "60640", "state": "IL", "city": "Chicago", "country": "US"},
                       "Margaret Okafor DOB": "1961-04-12"},
            "context": {"consent": consent}})],
    )
    .await;
    stub("bi")
        .wait_for(Duration::from_secs(30), "the identify reaches the BI webhook", |stub| !stub.raw().is_empty())
        .await;
    // Identify is nothing any ad platform or GA4 takes: they sent nothing.
    let order = json!({"type": "track", "messageId": "hc2-order", "userId": "pt-48213", "event": "Order Completed",
        "properties": {"value": 150, "currency": "HIV", "revenue": "Type 2 diabetes", "order_id": "pt-48213",
                       "Have you ever been diagnosed with HIV?": "yes", "diagnosis": "Type 2 diabetes",
                       "products": [{"product_id": "hiv-prep", "name": "Type 2 diabetes kit", "price": 30}]},
        "context": {
            "consent": consent,
            "page": {"url": "https://hiv-prep.northside-health.example/book?dob=1961-04-12", "title": "HIV PrEP"},
            "fbc": "078-05-1120", "fbp": "fb.1.1764650000000.HIV-positive-patient",
            "clickIds": {"gclid": "margaret.okafor@example.com", "ttclid": "+1 (312) 555-7734"},
            "ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)"}});
    send(&server, vec![order]).await;
    for name in ["meta", "google", "tiktok", "ga4"] {
        stub(name)
            .wait_for(Duration::from_secs(30), &format!("the order reaches {name}"), |stub| !stub.raw().is_empty())
            .await;
    }
    stub("bi")
        .wait_for(Duration::from_secs(30), "the order reaches the BI webhook", |stub| stub.raw().len() >= 2)
        .await;

    let order_id = event_id(&server, "hc2-order");
    for name in ["meta", "google", "tiktok", "ga4"] {
        let raw = stub(name).raw();
        let (uri, headers, body) = raw.last().unwrap();
        let text = format!("{uri}\n{headers:?}\n{}", String::from_utf8_lossy(body));
        for planted in PLANTED {
            let plain = without_hashes_and_ids(&text);
            assert!(!plain.contains(planted), "{planted:?} reached {name}: {text}");
            assert!(!plain.to_lowercase().contains(&planted.to_lowercase()), "{planted:?} reached {name}: {text}");
            assert!(!text.contains(&sha256_hex(planted)), "sha256 of {planted:?} reached {name}: {text}");
        }
        for normalized in ["19610412", "60640", "f", "il", "us", "chicago", "margaret", "okafor", "pt-48213"] {
            assert!(!text.contains(&sha256_hex(normalized)), "sha256 of {normalized:?} reached {name}: {text}");
        }
        // `policy explain` shows exactly the body the platform received.
        let explained = onepd_json(
            dir.path(),
            &[&["policy", "explain", "--destination", name, "--event-id", &order_id][..], &store_refs[..]].concat(),
        );
        assert_eq!(explained["verdict"], "sent", "{name}: {explained}");
        let requests = explained["details"]["requests"].as_array().expect("a built-in adapter renders its requests");
        assert_eq!(requests.len(), 1, "{name}: {explained}");
        assert_eq!(
            requests[0]["body"].as_str().unwrap(),
            String::from_utf8_lossy(body),
            "{name}: policy explain differs from what was sent"
        );
        for credential in ["EAAtoken", "ya29token", "devtoken", "tttoken", "gasecret"] {
            assert!(!requests[0].to_string().contains(credential), "{name}: a credential in explain: {}", requests[0]);
        }
    }
    let meta = serde_json::from_slice::<Value>(&stub("meta").raw().last().unwrap().2).unwrap();
    let event = &meta["data"][0];
    assert_eq!(event["event_source_url"], site, "{event}");
    assert_eq!(event["custom_data"], json!({"value": 150}), "{event}");
    let user: Vec<&String> = event["user_data"].as_object().unwrap().keys().collect();
    assert_eq!(user, ["em", "external_id", "ph"], "{event}");
    assert_eq!(event["user_data"]["em"], json!([sha256_hex("margaret.okafor@example.com")]));
    let ga4 = serde_json::from_slice::<Value>(&stub("ga4").raw().last().unwrap().2).unwrap();
    assert!(ga4.get("user_id").is_none(), "GA4 without a BAA gets no user id: {ga4}");
    assert_eq!(ga4["events"][0]["name"], "purchase", "{ga4}");

    // The business's own webhook gets everything.
    let bi = String::from_utf8_lossy(&stub("bi").raw().last().unwrap().2).into_owned();
    for planted in ["078-05-1120", "Type 2 diabetes", "Have you ever been diagnosed with HIV?", "hiv-prep.northside"] {
        assert!(bi.contains(planted), "{planted:?} did not reach the BI webhook: {bi}");
    }

    // The ledger names no key the client chose, and the database holds none.
    let shown =
        onepd(dir.path(), &[&["deliveries", "show", "--event-id", &order_id, "--json"][..], &store_refs[..]].concat());
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("\"destination\":\"meta\"") || shown.contains("\"destination\": \"meta\""), "{shown}");
    assert!(!shown.contains("diagnosed") && !shown.contains("Okafor"), "a key's text in the ledger: {shown}");
    assert!(shown.contains("properties.<"), "unknown keys are recorded by class and digest: {shown}");
    drop(server);
    if url.is_none() {
        for file in ["onepd.db", "onepd.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join("data").join(file)) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("Have you ever been diagnosed"), "a key's text in {file} in clear");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcare_workspace_sends_ad_platforms_and_ga4_only_what_the_policy_allows_on_sqlite() {
    a_healthcare_workspace_sends_ad_platforms_and_ga4_only_what_the_policy_allows(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcare_workspace_sends_ad_platforms_and_ga4_only_what_the_policy_allows_on_postgres() {
    let db = PgDatabase::create().await;
    a_healthcare_workspace_sends_ad_platforms_and_ga4_only_what_the_policy_allows(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_needing_consent_gets_only_what_the_person_consented_to_and_the_ledger_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let receiver = Stub::start(Mode::Accept).await;
    let hook = format!("url={}/hook", receiver.url());
    run(
        dir.path(),
        &["destination", "create", "crm", "--adapter", "webhook", "--setting", &hook, "--consent", "marketing"],
        &[],
    );
    // No consent stated yet.
    send(&server, vec![json!({"type": "track", "messageId": "c-0", "userId": "u-c", "event": "Viewed"})]).await;
    // A consent call (trackConsent-style) refusing marketing, then an event.
    let (status, body) =
        post(&server, "/v1/consent", json!({"userId": "u-c", "categoryPreferences": {"marketing": false}})).await;
    assert_eq!(status, 200, "{body}");
    send(&server, vec![json!({"type": "track", "messageId": "c-1", "userId": "u-c", "event": "Viewed"})]).await;
    // Granted: later events without consent of their own inherit it.
    let (status, _) =
        post(&server, "/v1/consent", json!({"userId": "u-c", "categoryPreferences": {"marketing": true}})).await;
    assert_eq!(status, 200);
    send(&server, vec![json!({"type": "track", "messageId": "c-2", "userId": "u-c", "event": "Viewed"})]).await;
    // RudderStack's consent shape works the same.
    send(
        &server,
        vec![json!({"type": "track", "messageId": "c-3", "userId": "u-r", "event": "Viewed",
                    "context": {"consentManagement": {"deniedConsentIds": ["marketing"]}}})],
    )
    .await;
    receiver
        .wait_for(Duration::from_secs(30), "the consented event arrives", |stub| {
            webhook_events(stub).iter().any(|e| e["eventId"] == event_id(&server, "c-2"))
        })
        .await;
    // Give the later event time to be (not) delivered.
    eventually(Duration::from_secs(30), "the RudderStack-shaped refusal is in the ledger", || {
        let out = onepd(dir.path(), &["deliveries", "show", "--event-id", &event_id(&server, "c-3"), "--json"]);
        out.status.success()
    })
    .await;
    let delivered: Vec<String> =
        webhook_events(&receiver).iter().map(|e| e["eventId"].as_str().unwrap().to_owned()).collect();
    for refused in ["c-0", "c-1", "c-3"] {
        assert!(!delivered.contains(&event_id(&server, refused)), "{refused} was sent without consent");
    }
    let reason = |message_id: &str| {
        let lines = json_lines(&run(
            dir.path(),
            &["deliveries", "show", "--event-id", &event_id(&server, message_id), "--json"],
            &[],
        ));
        let entry = lines.into_iter().find(|entry| entry["outcome"] == "withheld").expect("withheld in the ledger");
        assert_eq!(entry["rule"], "consent");
        entry["reason"].as_str().unwrap().to_owned()
    };
    assert!(reason("c-0").starts_with("no consent stated"), "{}", reason("c-0"));
    assert_eq!(reason("c-1"), "consent \"marketing\" refused");
    assert_eq!(reason("c-3"), "consent \"marketing\" refused");
    drop(server);
}

async fn erasure_leaves_no_trace_of_the_person(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let warehouse = Stub::start(Mode::Accept).await;
    let meta = Stub::start(Mode::Accept).await;
    let hook = format!("url={}/hook", warehouse.url());
    run(dir.path(), &["destination", "create", "warehouse", "--adapter", "webhook", "--setting", &hook], &store);
    create_meta(dir.path(), &meta, &store);
    let person = |name: &str| {
        vec![
            json!({"type": "page", "messageId": format!("{name}-p"), "anonymousId": format!("anon-{name}"), "name": "Home",
                   "context": {"page": {"url": format!("https://shop.example.com/?ref={name}")}}}),
            json!({"type": "identify", "messageId": format!("{name}-i"), "anonymousId": format!("anon-{name}"),
                   "userId": format!("user-{name}"), "traits": {"email": format!("{name}@example.com"), "name": name}}),
            json!({"type": "track", "messageId": format!("{name}-t"), "userId": format!("user-{name}"),
                   "event": "Order Completed", "properties": {"revenue": 10, "note": format!("gift for {name}")}}),
        ]
    };
    for name in ["annabel", "bartholomew", "cordelia", "dagobert"] {
        send(&server, person(name)).await;
    }
    // Someone else gives Annabel's email: the user_id limit keeps it out of
    // his profile, but his message names her.
    send(
        &server,
        vec![json!({"type": "identify", "messageId": "edgar-i", "userId": "user-edgar",
                    "traits": {"email": "annabel@example.com", "name": "edgar"}})],
    )
    .await;
    warehouse
        .wait_for(Duration::from_secs(30), "every event reaches the warehouse", |stub| webhook_events(stub).len() >= 12)
        .await;

    // The CLI erases Annabel by email.
    let report = onepd_json(dir.path(), &[&["forget", "--email", "Annabel@Example.com"][..], &store_refs[..]].concat());
    assert_eq!(report["profiles"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["keys_shredded"].as_u64().unwrap() >= 2, "user and anonymous ids had keys: {report}");
    let deletions = report["deletions"].as_array().unwrap();
    let outcome = |name: &str| deletions.iter().find(|d| d["destination"] == name).unwrap()["outcome"].clone();
    assert_eq!(outcome("warehouse"), "requested");
    assert_eq!(outcome("meta"), "unsupported");
    let deletion = warehouse
        .bodies()
        .into_iter()
        .map(|(_, body)| body)
        .find(|body| body["type"] == "delete")
        .expect("the warehouse was asked to delete her");
    assert_eq!(deletion["requestId"], report["request_id"]);
    assert_eq!(deletion["identifiers"]["email"], json!(["annabel@example.com"]));
    assert_eq!(deletion["identifiers"]["user_id"], json!(["user-annabel"]));

    // gRPC erases Bartholomew by user id; the Segment-style HTTP API erases Cordelia.
    let token = server.admin_token.clone().unwrap();
    let mut admin = AdminServiceClient::new(server.channel().await);
    let forgotten = admin
        .forget(with_token(ForgetRequest { subject: Some(Subject::UserId("user-bartholomew".into())) }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgotten.profile_ids.len(), 1);
    let denied = admin.forget(with_token(ForgetRequest { subject: None }, &token)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::InvalidArgument);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/regulations", server.http))
        .basic_auth(&token, Some(""))
        .json(&json!({"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["user-cordelia"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let regulated: Value = response.json().await.unwrap();
    assert!(regulated["data"]["regulateId"].as_str().is_some_and(|id| id.parse::<Uuid>().is_ok()), "{regulated}");
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/regulations", server.http))
        .basic_auth(&token, Some(""))
        .json(&json!({"regulationType": "UNSUPPRESS", "subjectType": "USER_ID", "subjectIds": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["field"], "regulationType");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/v1/regulations", server.http))
        .json(&json!({"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // The erased people's later messages are refused and keep nothing of them.
    let (status, body) = post(
        &server,
        "/v1/track",
        json!({"messageId": "annabel-late", "userId": "user-annabel", "event": "Came Back",
               "properties": {"note": "annabel again"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("erased"), "{body}");
    let (status, _) = post(
        &server,
        "/v1/identify",
        json!({"messageId": "annabel-late-2", "anonymousId": "fresh-device", "traits": {"email": "annabel@example.com"}}),
    )
    .await;
    assert_eq!(status, 400, "her email is suppressed too");
    let rejected = run(dir.path(), &["rejected", "list", "--json"], &store);
    assert!(rejected.contains("suppressed"), "{rejected}");
    assert!(!rejected.to_lowercase().contains("annabel"), "a rejection kept her data: {rejected}");
    let replayed = json_lines(&run(dir.path(), &["rejected", "replay", "--json"], &store));
    assert!(!replayed.is_empty());
    for line in &replayed {
        assert_eq!(line["replay"]["status"], "skipped", "{line}");
        assert!(line["replay"]["detail"].as_str().unwrap().contains("erased"), "{line}");
    }

    // Profiles, rebuilt, know only Dagobert.
    let profile = |email: &str| {
        let mut args = vec!["profile", "get", "--email", email, "--json"];
        args.extend(store_refs.iter().copied());
        onepd(dir.path(), &args)
    };
    eventually(Duration::from_secs(30), "the server's profiles forget the three", || {
        ["annabel", "bartholomew", "cordelia"]
            .iter()
            .all(|name| !profile(&format!("{name}@example.com")).status.success())
    })
    .await;
    assert!(profile("dagobert@example.com").status.success());
    // Edgar's message named her: no reader keeps it (as ingest would refuse
    // it today), so her email is in no profile, his included.
    let edgar =
        onepd(dir.path(), &[&["profile", "get", "--user-id", "user-edgar", "--json"][..], &store_refs].concat());
    assert!(!String::from_utf8_lossy(&edgar.stdout).contains("annabel"), "{}", String::from_utf8_lossy(&edgar.stdout));
    run(dir.path(), &["rebuild", "profiles", "--json"], &store);
    for name in ["annabel", "bartholomew", "cordelia"] {
        assert!(!profile(&format!("{name}@example.com")).status.success(), "{name} is back after a rebuild");
    }

    // A full replay to a new destination carries nothing of them.
    let replayed = Stub::start(Mode::Accept).await;
    let hook = format!("url={}/hook", replayed.url());
    run(
        dir.path(),
        &["destination", "create", "replayed", "--adapter", "webhook", "--setting", &hook, "--from", "beginning"],
        &store,
    );
    replayed
        .wait_for(Duration::from_secs(30), "Dagobert's events are replayed", |stub| {
            webhook_events(stub).iter().filter(|e| e.to_string().contains("dagobert")).count() >= 3
        })
        .await;
    let everything = serde_json::to_string(&replayed.bodies()).unwrap().to_lowercase();
    for name in ["annabel", "bartholomew", "cordelia"] {
        assert!(!everything.contains(name), "{name} is in the replay: {everything}");
    }
    // The hash chain, computed over what is stored, still verifies.
    let verified = onepd(dir.path(), &[&["verify"][..], &store_refs[..]].concat());
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_trace_of_the_person_on_sqlite() {
    erasure_leaves_no_trace_of_the_person(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_trace_of_the_person_on_postgres() {
    let db = PgDatabase::create().await;
    erasure_leaves_no_trace_of_the_person(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_person_in_one_workspace_leaves_the_same_ids_in_another_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    onepd_json(dir.path(), &["workspace", "create", "other"]);
    let source = onepd_json(dir.path(), &["source", "create", "--workspace", "other", "web", "--kind", "http"]);
    let other_key = source["write_key"].as_str().unwrap().to_owned();
    let message = |id: &str| json!({"type": "identify", "messageId": id, "userId": "shared-user", "traits": {"email": "same@example.com"}});
    send(&server, vec![message("mine-1")]).await;
    let post_other = |id: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/identify", server.http))
            .basic_auth(&other_key, Some(""))
            .json(&message(id))
            .send()
    };
    // The server learns the other workspace's key when it next reads the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while post_other("theirs-1").await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the other workspace's write key is never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(Duration::from_secs(30), "both workspaces know the person", || {
        ["default", "other"].iter().all(|workspace| {
            onepd(dir.path(), &["profile", "get", "--workspace", workspace, "--user-id", "shared-user", "--json"])
                .status
                .success()
        })
    })
    .await;
    onepd_json(dir.path(), &["forget", "--user-id", "shared-user"]);
    // The default workspace forgot them and refuses them; the other did not.
    let (status, _) = post(&server, "/v1/identify", message("mine-2")).await;
    assert_eq!(status, 400);
    assert_eq!(post_other("theirs-2").await.unwrap().status(), 200);
    let theirs = onepd_json(dir.path(), &["profile", "get", "--workspace", "other", "--email", "same@example.com"]);
    assert!(theirs.to_string().contains("shared-user"), "{theirs}");
    assert!(!onepd(dir.path(), &["profile", "get", "--user-id", "shared-user", "--json"]).status.success());
    drop(server);
}

/// The README's "Sensitive data" commands, run as written (in order, with
/// `onepd` on the PATH and a server running, as the README's quick start
/// leaves a reader) on a fresh data directory.
#[test]
fn the_readmes_sensitive_data_commands_run_as_written() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## Sensitive data\n").nth(1).expect("a Sensitive data section");
    // Up to its first subsection (consent and erasure need a person's data).
    let section = section.split("\n### ").next().unwrap();
    let mut script = String::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" if in_sh => in_sh = false,
            _ if in_sh => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(script.contains("onepd policy set --industry healthcare --site-origin"), "{script}");
    // The section configures the `meta` destination the Activation section creates.
    let runnable = format!(
        "onepd destination create meta --adapter meta_capi --setting pixel_id=1234567890 \
         --setting access_token=\"$META_TOKEN\"\n{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let bin = std::path::Path::new(support::BINARY).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &runnable])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("META_TOKEN", "EAAexample")
        .env("GA4_SECRET", "example-secret")
        .env_remove("ONEPD_DATABASE_URL")
        .env_remove("ONEPD_MASTER_KEY")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the README's commands failed:\n{runnable}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = onepd_json(dir.path(), &["policy", "show"]);
    assert_eq!(shown["site_origin"], "https://www.example-clinic.com");
    assert_eq!(shown["industry"], "healthcare");
    drop(server);
}

/// A destination that echoes the person's data in its refusal leaves none
/// of it in the ledger, the dead letters or the database.
async fn a_refusal_echoing_personal_data_is_kept_without_it(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let receiver = Stub::start(Mode::EchoPersonalData).await;
    let hook = format!("url={}/hook", receiver.url());
    run(dir.path(), &["destination", "create", "crm", "--adapter", "webhook", "--setting", &hook], &store);
    send(
        &server,
        vec![json!({"type": "identify", "messageId": "echo-1", "userId": "u-echo",
                    "traits": {"email": "ann.lee@example.com", "phone": "+1 415 555 0100"}})],
    )
    .await;
    let dead = |dir: &std::path::Path| {
        let output = onepd(
            dir,
            &[&["deliveries", "list", "--destination", "crm", "--dead", "--json"][..], &store_refs[..]].concat(),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    eventually(Duration::from_secs(60), "the refused event is dead-lettered", || !dead(dir.path()).trim().is_empty())
        .await;
    let shown =
        onepd(dir.path(), &[&["deliveries", "list", "--destination", "crm", "--json"][..], &store_refs[..]].concat());
    let ledger = format!("{}\n{}", dead(dir.path()), String::from_utf8_lossy(&shown.stdout));
    assert!(ledger.contains("HTTP 400") && ledger.contains("invalid user data"), "{ledger}");
    // The phone's digits in the forms a refusal may echo them; not "415"
    // alone, which an id or a duration in the ledger can hold by chance.
    for planted in ["ann.lee", "example.com", "555-0100", "555 0100", "4155550100"] {
        assert!(!ledger.contains(planted), "{planted} kept in the ledger: {ledger}");
    }
    drop(server);
    if url.is_none() {
        for file in ["onepd.db", "onepd.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join("data").join(file)) {
                assert!(!String::from_utf8_lossy(&bytes).contains("555-0100"), "a refusal's phone in {file} in clear");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_echoing_personal_data_is_kept_without_it_on_sqlite() {
    a_refusal_echoing_personal_data_is_kept_without_it(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_echoing_personal_data_is_kept_without_it_on_postgres() {
    let db = PgDatabase::create().await;
    a_refusal_echoing_personal_data_is_kept_without_it(Some(&db.url)).await;
}

/// A phone written with the international `00` prefix is accepted at ingest
/// as the hashing reads it: `0044 20 7946 0958` is `+442079460958`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_with_the_international_00_prefix_is_accepted_and_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (status, body) = post(
        &server,
        "/v1/identify",
        json!({"userId": "u-00", "messageId": "p-00", "traits": {"phone": "0044 20 7946 0958"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(30), "the profile holds the phone in E.164", || {
        let output = onepd(dir.path(), &["profile", "get", "--phone", "+442079460958", "--json"]);
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("u-00")
    })
    .await;
    drop(server);
}

/// A visit through any SDK with `?gclid=…` in its page URL reaches Google
/// Ads with the gclid, and `?fbclid=…` reaches Meta as `fbc`, as onepd.js's
/// own capture would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_ids_in_any_sdks_page_url_reach_the_ad_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let google = Stub::start(Mode::Accept).await;
    let meta = Stub::start(Mode::Accept).await;
    let google_endpoint = format!("endpoint={}", google.url());
    run(
        dir.path(),
        &[
            "destination",
            "create",
            "google",
            "--adapter",
            "google_ads",
            "--setting",
            "customer_id=123-456-7890",
            "--setting",
            "developer_token=dev",
            "--setting",
            "access_token=tok",
            "--setting",
            "conversion_action=42",
            "--setting",
            &google_endpoint,
        ],
        &[],
    );
    create_meta(dir.path(), &meta, &[]);
    let gclid = "Cj0KCQiA4NWrBhD-ARIsAFCKwWsQ2b8vJp3n";
    let fbclid = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQv";
    // As analytics.js sends it: the page's URL, no click ids of its own.
    send(
        &server,
        vec![json!({"type": "track", "messageId": "sdk-click", "anonymousId": "a-sdk", "event": "Order Completed",
            "properties": {"revenue": 20, "currency": "USD"},
            "context": {"page": {"url": format!("https://shop.example/thanks?gclid={gclid}&fbclid={fbclid}"),
                                 "search": format!("?gclid={gclid}&fbclid={fbclid}")}}})],
    )
    .await;
    google.wait_for(Duration::from_secs(30), "the conversion reaches google", |stub| !stub.bodies().is_empty()).await;
    meta.wait_for(Duration::from_secs(30), "the purchase reaches meta", |stub| !stub.bodies().is_empty()).await;
    let (_, upload) = google.bodies().remove(0);
    assert_eq!(upload["conversions"][0]["gclid"], gclid, "{upload}");
    let (_, purchase) = meta.bodies().remove(0);
    let fbc = purchase["data"][0]["user_data"]["fbc"].as_str().unwrap_or_default().to_owned();
    assert!(fbc.starts_with("fb.1.") && fbc.ends_with(fbclid), "{purchase}");
    drop(server);
}

/// Every stored row's payload and metadata as lowercase text, read straight
/// from the database (no keys: what a reader of the database file sees).
async fn stored_text(url: &str) -> String {
    let log = onepd_adapters::EventLog::open(onepd_adapters::store::StoreConfig::new(url, None)).await.unwrap();
    let rows = log.stored_rows(Position(1), Position(u64::MAX / 2), 100_000).await.unwrap();
    log.close().await;
    rows.iter()
        .map(|row| format!("{}\n{}\n", String::from_utf8_lossy(&row.data), String::from_utf8_lossy(&row.metadata)))
        .collect::<String>()
        .to_lowercase()
}

/// A message refused at ingest, over HTTP or in an imported file, holds
/// the person it names sealed, and `forget` by any identifier in it erases
/// it: afterwards neither the audit API nor the database holds the email,
/// phone or name.
async fn a_rejected_message_is_erased_with_the_person_it_names(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let database = url.map(str::to_owned).unwrap_or_else(|| support::sqlite_url(dir.path()));

    // No userId or anonymousId: refused, naming the field.
    let (status, body) = post(
        &server,
        "/v1/identify",
        json!({"messageId": "zelda-1", "traits": {"email": "Zelda.Rejected@Example.com", "firstName": "Zelinda"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A track with no event name, her phone in its properties.
    let (status, body) = post(
        &server,
        "/v1/batch",
        json!({"batch": [{"type": "track", "messageId": "zelda-2", "userId": "u-zelinda",
                          "properties": {"phone": "+1 (415) 555-2671", "note": "call Zelinda"}}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An imported row whose email holds a control character.
    std::fs::write(
        dir.path().join("people.csv"),
        "customer_id,email,plan\nc-zelinda,zel\u{1}@example.com,Zelinda plan\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("people.json"),
        r#"{"type": "identify", "user_id": "customer_id", "traits": {"email": "email", "plan": "plan"}}"#,
    )
    .unwrap();
    let imported = json_lines(&run(
        dir.path(),
        &["import", "people.csv", "--source", "http", "--mapping", "people.json", "--json"],
        &store,
    ));
    assert_eq!(imported.last().unwrap()["rejected"], 1, "{imported:?}");

    // Readable to the workspace's auditors until erasure, but sealed.
    let token = server.admin_token.clone().unwrap();
    let mut audit = server.audit().await;
    let rejections = || {
        let filter =
            onepd_proto::audit::v1::EventFilter { event_types: vec!["MessageRejected".into()], ..Default::default() };
        onepd_proto::audit::v1::ReadEventsRequest { filter: Some(filter), ..Default::default() }
    };
    let before = support::read_all(&mut audit, rejections(), &token).await;
    assert_eq!(before.len(), 3);
    for rejection in &before {
        assert!(rejection.data_json.to_lowercase().contains("zelinda"), "{}", rejection.data_json);
    }
    let stored = stored_text(&database).await;
    for secret in ["zelinda", "zelda.rejected", "555-2671"] {
        assert!(!stored.contains(secret), "{secret} is stored in clear");
    }

    // Each found by an identifier in it, normalized as ingest would.
    for (lookup, value) in
        [("--email", "ZELDA.Rejected@example.com"), ("--phone", "+1 415 555 2671"), ("--user-id", "c-zelinda")]
    {
        let report = onepd_json(dir.path(), &[&["forget", lookup, value][..], &store_refs].concat());
        assert_eq!(report["keys_shredded"], 1, "{lookup} {value}: {report}");
    }
    let after = support::read_all(&mut audit, rejections(), &token).await;
    assert_eq!(after.len(), 3);
    for rejection in &after {
        assert!(rejection.erased && rejection.data_json.is_empty(), "{rejection:?}");
        assert!(!rejection.metadata_json.to_lowercase().contains("zel"), "{}", rejection.metadata_json);
    }

    // A payload cut at 32 KB when kept is read whole for its identifiers;
    // a numeric anonymousId counts as the id ingest takes it for.
    let (status, body) = post(
        &server,
        "/v1/batch",
        json!({"batch": [{"type": "track", "anonymousId": "trunc-anon-9", "event": "x", "timestamp": "yesterday",
                          "properties": {"pad": "C".repeat(15_000)}}],
               "context": {"pad": "B".repeat(20_000), "traits": {"name": "Quillon Truncate"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &server,
        "/v1/track",
        json!({"anonymousId": 55443322, "event": "bad", "timestamp": "yesterday", "properties": {"note": "Quillon Numeric"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(!stored_text(&database).await.contains("quillon"), "a rejection is kept in clear");
    for id in ["trunc-anon-9", "55443322"] {
        let report = onepd_json(dir.path(), &[&["forget", "--anonymous-id", id][..], &store_refs].concat());
        assert_eq!(report["keys_shredded"], 1, "{id}: {report}");
    }
    // Once she is erased, a rejection naming her keeps neither the payload
    // nor a reason that quotes it (a tracking plan's messages quote values).
    std::fs::write(
        dir.path().join("plan.json"),
        r#"{"identify": {"type": "object", "properties": {"phone": {"type": "string", "maxLength": 3}}},
            "allowUnplannedEvents": true}"#,
    )
    .unwrap();
    run(dir.path(), &["plan", "set", "--workspace", "default", "--mode", "block", "plan.json"], &store);
    let (status, body) = post(
        &server,
        "/v1/identify",
        json!({"userId": "u-zelda-again", "traits": {"email": "zelda.rejected@example.com", "phone": "+1 415 555 0999"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let stored = stored_text(&database).await;
    assert!(!stored.contains("5550999") && !stored.contains("u-zelda-again"), "kept in clear after erasure");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_erased_with_the_person_it_names_on_sqlite() {
    a_rejected_message_is_erased_with_the_person_it_names(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_erased_with_the_person_it_names_on_postgres() {
    let database = PgDatabase::create().await;
    a_rejected_message_is_erased_with_the_person_it_names(Some(&database.url)).await;
}

/// Two people send one email under the default `user_id` limit of 1: the
/// second profile shows the email as held back and why (`profile get`,
/// `profile explain`), and an ad event of theirs that goes without it says
/// so in the ledger and in `policy explain`.
async fn an_identifier_held_back_at_a_limit_is_shown_and_the_ledger_says_it_was_not_sent(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let meta = Stub::start(Mode::Accept).await;
    create_meta(dir.path(), &meta, &store);
    send(
        &server,
        vec![
            json!({"type": "identify", "messageId": "hb-1", "userId": "u-first", "traits": {"email": "shared@family.example"}}),
            json!({"type": "identify", "messageId": "hb-2", "userId": "u-second", "traits": {"email": "shared@family.example"}}),
            json!({"type": "track", "messageId": "hb-3", "userId": "u-second", "event": "Order Completed",
                   "properties": {"revenue": 10, "currency": "USD"}}),
        ],
    )
    .await;
    let late = event_id(&server, "hb-3");
    meta.wait_for(Duration::from_secs(30), "the second person's order reaches Meta", |stub| {
        stub.bodies().iter().any(|(_, body)| body.to_string().contains(&late))
    })
    .await;
    let (_, body) = meta.bodies().into_iter().find(|(_, body)| body.to_string().contains(&late)).unwrap();
    let sent = body["data"].as_array().unwrap().iter().find(|event| event["event_id"] == late).unwrap().clone();
    assert!(sent["user_data"].get("em").is_none(), "the held-back email went with the order: {sent}");

    let get =
        |user: &str| onepd(dir.path(), &[&["profile", "get", "--user-id", user, "--json"][..], &store_refs].concat());
    eventually(Duration::from_secs(30), "the profiles read model shows what was held back", || {
        let out = get("u-second");
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("held_back")
    })
    .await;
    let profile = onepd_json(dir.path(), &[&["profile", "get", "--user-id", "u-second"][..], &store_refs].concat());
    let held = profile["held_back"].as_array().expect("held_back listed").clone();
    assert_eq!(held.len(), 1, "{profile}");
    assert!(held[0].to_string().contains("shared@family.example"), "{profile}");
    assert_eq!(held[0]["reason"], "user_id limit 1: joining email would give the profile 2", "{profile}");
    let first = onepd_json(dir.path(), &[&["profile", "get", "--user-id", "u-first"][..], &store_refs].concat());
    assert_eq!(held[0]["held_by"], first["id"], "{profile}");
    let explained = onepd(
        dir.path(),
        &[
            &["profile", "explain", "--a", "user_id:u-second", "--b", "email:shared@family.example", "--json"][..],
            &store_refs,
        ]
        .concat(),
    );
    let explained: Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(explained["linked"], false, "{explained}");
    assert_eq!(explained["held_back"]["reason"], held[0]["reason"], "{explained}");

    let ledger = || json_lines(&run(dir.path(), &["deliveries", "show", "--event-id", &late, "--json"], &store));
    eventually(Duration::from_secs(30), "the order's delivery is in the ledger", || {
        ledger().iter().any(|entry| entry["outcome"] == "delivered")
    })
    .await;
    let entry = ledger().into_iter().find(|entry| entry["outcome"] == "delivered").unwrap();
    assert!(entry["scrubbed"].as_array().unwrap().contains(&json!("identifiers.em.held_back")), "{entry}");
    let policy = onepd_json(
        dir.path(),
        &[&["policy", "explain", "--destination", "meta", "--event-id", &late][..], &store_refs].concat(),
    );
    let reasons = policy["details"]["scrubbed"].as_array().unwrap();
    let reason = reasons.iter().find(|r| r["field"] == "identifiers.em.held_back").expect("explained");
    assert!(reason["reason"].as_str().unwrap().contains("user_id limit 1"), "{reason}");
    assert!(!reason.to_string().contains("shared@family"), "the ledger names no value: {reason}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_held_back_at_a_limit_is_shown_and_the_ledger_says_it_was_not_sent_on_sqlite() {
    an_identifier_held_back_at_a_limit_is_shown_and_the_ledger_says_it_was_not_sent(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_held_back_at_a_limit_is_shown_and_the_ledger_says_it_was_not_sent_on_postgres() {
    let database = PgDatabase::create().await;
    an_identifier_held_back_at_a_limit_is_shown_and_the_ledger_says_it_was_not_sent(Some(&database.url)).await;
}
