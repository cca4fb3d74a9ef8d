//! Webhook sources through the real server: each shipped platform's sample
//! payload, signed as the platform signs it, becomes messages once (a
//! platform's retry is a duplicate); a bad signature or an unmappable payload
//! is refused and kept as a `MessageRejected` with its reason.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{PgDatabase, Server, onepd, onepd_json, read_all};

const SECRET: &str = "whsec_e2e_secret";

/// A platform's sample payload, shared with the mappings' unit tests.
fn fixture(name: &str) -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("commands/tests/fixtures/webhooks").join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn hmac(parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Creates a webhook source called `name` and configures it with `args`;
/// returns its id.
fn webhook_source(dir: &Path, store: &[&str], name: &str, args: &[&str]) -> String {
    let mut create = vec!["source", "create", name, "--kind", "webhook"];
    create.extend_from_slice(store);
    let created = onepd_json(dir, &create);
    let mut configure = vec!["webhook", "configure", name];
    configure.extend_from_slice(args);
    configure.extend_from_slice(store);
    let configured = onepd_json(dir, &configure);
    assert_eq!(configured["path"], format!("/v1/webhooks/{}", created["source_id"].as_str().unwrap()));
    created["source_id"].as_str().unwrap().to_owned()
}

/// Posts `body` with `headers` to the source's webhook URL, retrying while
/// the server has not yet read the source's configuration (404).
async fn post(server: &Server, path: &str, headers: &[(&str, String)], body: &[u8]) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = client.post(format!("{}{path}", server.http)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::NOT_FOUND || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(server: &Server, event_type: &str) -> Vec<Value> {
    let token = server.admin_token.as_deref().unwrap();
    let mut audit = server.audit().await;
    let filter = EventFilter { event_types: vec![event_type.into()], stream_id: String::new() };
    read_all(&mut audit, ReadEventsRequest { filter: Some(filter), ..Default::default() }, token)
        .await
        .iter()
        .map(|event| serde_json::from_str(&event.data_json).unwrap())
        .collect()
}

fn with_id<'a>(messages: &'a [Value], id: &str) -> Vec<&'a Value> {
    messages.iter().filter(|data| data["message"]["messageId"] == id).collect()
}

async fn shipped_platforms_become_messages_once_and_bad_signatures_are_kept_as_rejections(
    server: &Server,
    dir: &Path,
    store: &[&str],
) {
    // Shopify: orders/create and customers/create, HMAC of the body in base64.
    let shop = webhook_source(dir, store, "shop", &["--platform", "shopify", "--secret", SECRET]);
    let path = format!("/v1/webhooks/{shop}");
    let order = &fixture("shopify_orders_create")[..];
    let shopify_headers = |body: &[u8], topic: &str, delivery: &str| {
        vec![
            ("content-type", "application/json".to_owned()),
            ("x-shopify-hmac-sha256", BASE64.encode(hmac(&[body]))),
            ("x-shopify-topic", topic.to_owned()),
            ("x-shopify-webhook-id", delivery.to_owned()),
        ]
    };
    let (status, body) = post(server, &path, &shopify_headers(order, "orders/create", "dlv-order-1"), order).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["topic"], "orders/create");
    assert_eq!((body["messages"].as_u64(), body["accepted"].as_u64()), (Some(2), Some(2)), "{body}");
    // Shopify retries with the same X-Shopify-Webhook-Id: nothing new.
    let (status, body) = post(server, &path, &shopify_headers(order, "orders/create", "dlv-order-1"), order).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(0), Some(2)), "{body}");

    let customer = &fixture("shopify_customers_create")[..];
    let (status, body) =
        post(server, &path, &shopify_headers(customer, "customers/create", "dlv-customer-1"), customer).await;
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{body}");

    // A tampered body: 401, kept as a rejection naming the signature.
    let mut tampered = shopify_headers(order, "orders/create", "dlv-order-2");
    let forged = String::from_utf8_lossy(order).replace("\"total_price\"", "\"total_price_x\"");
    let (status, body) = post(server, &path, &tampered, forged.as_bytes()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("invalid_signature"), Some("signature")));
    // An unmapped topic is answered 200 so Shopify keeps the subscription, and kept too.
    tampered = shopify_headers(order, "orders/paid", "dlv-order-3");
    let (status, body) = post(server, &path, &tampered, order).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ignored"], "no mapping serves topic \"orders/paid\"");

    // Stripe: checkout.session.completed and customer.created, `t=…,v1=…`.
    let pay = webhook_source(dir, store, "payments", &["--platform", "stripe", "--secret", SECRET]);
    let path = format!("/v1/webhooks/{pay}");
    let stripe_headers = |body: &[u8], at: i64| {
        let t = at.to_string();
        vec![("stripe-signature", format!("t={t},v1={}", hex::encode(hmac(&[t.as_bytes(), b".", body]))))]
    };
    for name in ["stripe_checkout_session_completed", "stripe_customer_created"] {
        let payload = &fixture(name)[..];
        let (status, body) = post(server, &path, &stripe_headers(payload, unix_now() - 5), payload).await;
        assert_eq!((status, body["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{name}: {body}");
    }
    // A signature older than the tolerance (a replayed request) is refused.
    let payload = &fixture("stripe_customer_created")[..];
    let (status, body) = post(server, &path, &stripe_headers(payload, unix_now() - 3_600), payload).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("tolerance is 300 s"), "{body}");

    // HubSpot v3: signs method, the URI it called, body and timestamp.
    let crm = webhook_source(
        dir,
        store,
        "crm",
        &["--platform", "hubspot", "--secret", SECRET, "--public-url", "https://cdp.example.com"],
    );
    let path = format!("/v1/webhooks/{crm}");
    let contacts = &fixture("hubspot_contact")[..];
    let hubspot_headers = |body: &[u8], uri: &str| {
        let t = (unix_now() * 1000).to_string();
        vec![
            ("x-hubspot-signature-v3", BASE64.encode(hmac(&[b"POST", uri.as_bytes(), body, t.as_bytes()]))),
            ("x-hubspot-request-timestamp", t),
        ]
    };
    let called = format!("https://cdp.example.com{path}");
    let (status, body) = post(server, &path, &hubspot_headers(contacts, &called), contacts).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hubspot_messages = body["accepted"].as_u64().unwrap();
    assert!(hubspot_messages >= 2, "{body}");
    // Signed for another address: refused.
    let (status, _) = post(server, &path, &hubspot_headers(contacts, "https://evil.example.com/x"), contacts).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // What the log holds: each message once, with ids from the platform's delivery id.
    let accepted = stored(server, "MessageAccepted").await;
    let order_completed = with_id(&accepted, "shopify:dlv-order-1:1");
    assert_eq!(order_completed.len(), 1);
    let message = &order_completed[0]["message"];
    assert_eq!(message["event"], "Order Completed");
    // The customer's browser address from the order, never the platform's (the caller's).
    assert_eq!(message["context"]["ip"], "203.0.113.7", "{message}");
    assert_eq!(with_id(&accepted, "stripe:evt_1OqkNbLkdIwHu7ixC2Yz5fXm:0").len(), 1);
    assert_eq!(accepted.len() as u64, 2 + 1 + 2 + hubspot_messages);

    let rejected = stored(server, "MessageRejected").await;
    let rules: Vec<&str> = rejected.iter().map(|data| data["reasons"][0]["rule"].as_str().unwrap()).collect();
    assert_eq!(
        rules.iter().filter(|rule| **rule == "webhook_signature").count(),
        3,
        "shopify, stripe and hubspot each refused one: {rules:?}"
    );
    assert_eq!(rules.iter().filter(|rule| **rule == "webhook_topic").count(), 1, "{rules:?}");
    // A payload that failed verification is kept as its size and digest
    // only: anyone can post one.
    assert!(!rejected.iter().any(|data| data["raw"].as_str().unwrap().contains("total_price_x")));
    let digests = rejected.iter().filter(|data| data["raw"].as_str().unwrap().contains("\"sha256\"")).count();
    assert_eq!(digests, 3, "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_platforms_become_messages_once_and_bad_signatures_are_kept_as_rejections_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    shipped_platforms_become_messages_once_and_bad_signatures_are_kept_as_rejections(&server, dir.path(), &[]).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_platforms_become_messages_once_and_bad_signatures_are_kept_as_rejections_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let database = PgDatabase::create().await;
    let server = Server::start(dir.path(), &["--database-url", &database.url]);
    let store = ["--database-url", database.url.as_str()];
    shipped_platforms_become_messages_once_and_bad_signatures_are_kept_as_rejections(&server, dir.path(), &store).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_mapping_users_write_runs_with_hmac_or_with_the_sources_write_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mapping = dir.path().join("acme.json");
    std::fs::write(&mapping, fixture_mapping()).unwrap();
    let mapping_arg = format!("--mapping={}", mapping.display());

    // Signed with a generic HMAC header, GitHub style.
    let signed = webhook_source(
        dir.path(),
        &[],
        "acme",
        &[
            "--platform",
            "generic",
            "--secret",
            SECRET,
            "--signature-header",
            "X-Acme-Signature",
            "--signature-prefix",
            "sha256=",
            &mapping_arg,
        ],
    );
    let body = &fixture("generic_example")[..];
    let headers = vec![
        ("x-acme-signature", format!("sha256={}", hex::encode(hmac(&[body])))),
        ("x-acme-delivery", "dlv_01".to_owned()),
    ];
    let (status, answer) = post(&server, &format!("/v1/webhooks/{signed}"), &headers, body).await;
    assert_eq!((status, answer["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{answer}");

    // Unsigned: authenticated by the source's own write key, in the URL.
    let unsigned_source = onepd_json(dir.path(), &["source", "create", "acme-unsigned", "--kind", "webhook"]);
    let key = unsigned_source["write_key"].as_str().unwrap();
    let configured =
        onepd(dir.path(), &["webhook", "configure", "acme-unsigned", "--platform", "generic", &mapping_arg]);
    assert!(configured.status.success(), "{}", String::from_utf8_lossy(&configured.stderr));
    let path = format!("/v1/webhooks/{}", unsigned_source["source_id"].as_str().unwrap());
    let headers = vec![("x-acme-delivery", "dlv_02".to_owned())];
    let (status, answer) = post(&server, &format!("{path}?key={key}"), &headers, body).await;
    assert_eq!((status, answer["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{answer}");
    let (status, answer) = post(&server, &path, &headers, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // The default source's key belongs to another source.
    let other = server.write_key.as_deref().unwrap();
    let (status, _) = post(&server, &format!("{path}?key={other}"), &headers, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A payload the mapping cannot map: 400 naming the pointer, kept.
    let broken = json!({"event": "user.signed_up", "user": {"email": "x@example.com"}}).to_string();
    let (status, answer) = post(&server, &format!("{path}?key={key}"), &headers, broken.as_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "/user/id", "{answer}");
    let rejected = stored(&server, "MessageRejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reasons"][0]["rule"], "webhook_mapping");

    // A payload that maps but for one required field names the customer only
    // through the mapping (`acme:{{/user/id}}`): it is sealed for that id,
    // kept nowhere in clear, and erased by it.
    let partial =
        json!({"event": "purchase.completed", "user": {"id": 4242, "first_name": "Wendolyn", "last_name": "Hooker"},
                         "purchase": {"amount_cents": 100}})
        .to_string();
    let (status, answer) = post(&server, &format!("{path}?key={key}"), &headers, partial.as_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "/purchase/id", "{answer}");
    let data = dir.path().join("data");
    let on_disk: Vec<u8> = ["onepd.db", "onepd.db-wal"]
        .iter()
        .flat_map(|file| std::fs::read(data.join(file)).unwrap_or_default())
        .collect();
    assert!(!String::from_utf8_lossy(&on_disk).contains("Wendolyn"), "the refused payload is stored in clear");
    let report = onepd_json(dir.path(), &["forget", "--user-id", "acme:4242"]);
    assert_eq!(report["keys_shredded"], 1, "{report}");

    // Configuring a source of another kind is refused with the reason.
    let refused = onepd(dir.path(), &["webhook", "configure", "http", "--platform", "generic", &mapping_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("expected a source of kind webhook, found kind http"));
    // The secret is never shown.
    let shown = onepd(dir.path(), &["webhook", "show", "acme"]);
    assert!(shown.status.success());
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(SECRET));
    assert!(server.terminate().success());
}

/// The shipped generic example, which users copy and edit.
fn fixture_mapping() -> String {
    let output = onepd(Path::new("."), &["webhook", "mappings", "--platform", "generic", "--topic", "example"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Anyone can post to a webhook URL: a request that fails verification is
/// kept as its size and digest only, and past a per-source cap it is
/// answered 429 and not kept at all, so unsigned posts cannot grow the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_posts_keep_only_a_digest_and_are_capped_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let shop = webhook_source(dir.path(), &[], "shop", &["--platform", "shopify", "--secret", SECRET]);
    let path = format!("/v1/webhooks/{shop}");
    let body = |n: usize| {
        format!("{{\"email\": \"ann.lee@example.com\", \"n\": {n}, \"padding\": \"{}\"}}", "x".repeat(30 * 1024))
    };
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-shopify-hmac-sha256", "forged".to_owned()),
        ("x-shopify-topic", "orders/create".to_owned()),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..70 {
        let (status, _) = post(&server, &path, &headers, body(n).as_bytes()).await;
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&60), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&10), "{statuses:?}");
    let rejections = stored(&server, "MessageRejected").await;
    assert_eq!(rejections.len(), 60, "past the cap nothing is kept");
    for rejection in &rejections {
        let text = rejection.to_string();
        assert!(text.len() < 2_000 && !text.contains("ann.lee") && !text.contains("xxxx"), "{text}");
    }
    drop(server);
}
