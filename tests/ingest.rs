//! Ingest end to end: `onepd serve` driven through the gRPC IngestService and
//! the Segment-compatible HTTP API, the log read back through the audit API.

mod support;

use std::io::Write;
use std::time::Duration;

use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest};
use onepd_proto::ingest::v1 as pb;
use onepd_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use pb::message_result::Outcome;
use serde_json::{Value, json};
use support::{PgDatabase, Server, onepd, onepd_json, read_all, with_write_key};
use tonic::Code;

fn structure(value: Value) -> prost_types::Struct {
    fn convert(value: Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s),
            Value::Array(items) => {
                Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(convert).collect() })
            }
            Value::Object(_) => Kind::StructValue(structure(value)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    let Value::Object(map) = value else { panic!("not an object") };
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, convert(v))).collect() }
}

fn track(message_id: &str, user: &str, event: &str, properties: Value) -> pb::Message {
    pb::Message {
        kind: Some(pb::message::Kind::Track(pb::Track {
            common: Some(pb::Common {
                message_id: message_id.into(),
                user_id: user.into(),
                context: Some(structure(json!({
                    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
                }))),
                ..Default::default()
            }),
            event: event.into(),
            properties: Some(structure(properties)),
        })),
    }
}

fn identify(message_id: &str, user: &str, traits: Value) -> pb::Message {
    pb::Message {
        kind: Some(pb::message::Kind::Identify(pb::Identify {
            common: Some(pb::Common { message_id: message_id.into(), user_id: user.into(), ..Default::default() }),
            traits: Some(structure(traits)),
        })),
    }
}

fn data(event: &onepd_proto::audit::v1::Event) -> Value {
    serde_json::from_str(&event.data_json).unwrap()
}

async fn messages(server: &Server, token: &str, event_type: &str) -> Vec<onepd_proto::audit::v1::Event> {
    let mut audit = server.audit().await;
    let filter = EventFilter { event_types: vec![event_type.into()], stream_id: String::new() };
    read_all(&mut audit, ReadEventsRequest { filter: Some(filter), ..Default::default() }, token).await
}

/// The gRPC half of the acceptance: batch, unary and streaming calls; per
/// message results; the log holds each accepted message once, enriched and
/// normalized; a retry is a duplicate with the original position.
async fn grpc_ingest_stores_each_message_once(server: &Server) {
    let key = server.write_key.clone().expect("the banner prints a write key");
    let token = server.admin_token.clone().unwrap();
    let mut client = IngestServiceClient::new(server.channel().await);

    let batch = pb::BatchRequest {
        messages: vec![
            identify("id-1", "user-1", json!({ "email": "  Ann.Example@Example.COM ", "phone": "+1 (415) 555-2671" })),
            track("tr-1", "user-1", "Order Completed", json!({ "revenue": 12.5, "currency": "USD" })),
            track("tr-2", "user-1", "", json!({})),
        ],
        sent_at: None,
    };
    let first = client.batch(with_write_key(batch.clone(), &key)).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.duplicates, first.rejected), (2, 0, 1));
    let positions: Vec<_> = first
        .results
        .iter()
        .map(|r| match r.outcome.as_ref().unwrap() {
            Outcome::Accepted(a) => a.position,
            Outcome::Rejected(r) => {
                assert_eq!(r.reasons[0].field, "event");
                assert_eq!(r.reasons[0].rule, "required");
                r.position
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();

    // A retry of the same batch is all duplicates, at the original positions.
    let retry = client.batch(with_write_key(batch, &key)).await.unwrap().into_inner();
    assert_eq!((retry.accepted, retry.duplicates), (0, 2));
    for (result, position) in retry.results.iter().zip(&positions) {
        match result.outcome.as_ref().unwrap() {
            Outcome::Duplicate(d) => assert_eq!(d.original_position, *position),
            Outcome::Rejected(r) => assert_eq!(r.position, *position, "a retried rejection is recorded once"),
            other => panic!("unexpected {other:?}"),
        }
    }

    // Unary and streaming calls.
    let unary = client
        .track(with_write_key(
            match track("tr-3", "user-2", "Signed Up", json!({})).kind {
                Some(pb::message::Kind::Track(t)) => t,
                _ => unreachable!(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(unary.result.unwrap().outcome, Some(Outcome::Accepted(_))));
    let chunks = (0..5).map(|chunk| pb::BatchRequest {
        messages: (0..20).map(|i| track(&format!("st-{chunk}-{i}"), "user-3", "Viewed", json!({ "i": i }))).collect(),
        sent_at: None,
    });
    let summary = client.stream(with_write_key(tokio_stream::iter(chunks), &key)).await.unwrap().into_inner();
    assert_eq!((summary.messages, summary.accepted, summary.rejected), (100, 100, 0));

    // The log: each message once, enriched and normalized.
    let accepted = messages(server, &token, "MessageAccepted").await;
    assert_eq!(accepted.len(), 2 + 1 + 100);
    let ids: std::collections::HashSet<_> = accepted.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), accepted.len());
    let identify = data(&accepted[0]);
    assert_eq!(identify["message"]["traits"]["email"], "ann.example@example.com");
    assert_eq!(identify["originals"]["traits.email"], "  Ann.Example@Example.COM ");
    assert_eq!(identify["message"]["traits"]["phone"], "+14155552671");
    assert!(identify["message"]["receivedAt"].is_string());
    assert_eq!(identify["enrichment"]["ipSource"], "peer");
    assert_eq!(identify["message"]["context"]["ip"], "127.0.0.1");
    let order = data(&accepted[1]);
    assert_eq!(order["message"]["event"], "Order Completed");
    assert_eq!(order["enrichment"]["userAgent"]["os"]["family"], "iOS");
    assert!(accepted[1].sealed, "message payloads are sealed with their subject's key");
    let rejected = messages(server, &token, "MessageRejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(data(&rejected[0])["reasons"][0]["field"], "event");

    // A wrong key is UNAUTHENTICATED.
    let wrong = client
        .batch(with_write_key(pb::BatchRequest { messages: vec![], sent_at: None }, "onepd_wk_nope"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_stores_each_message_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    grpc_ingest_stores_each_message_once(&server).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_stores_each_message_once_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let database = PgDatabase::create().await;
    let server = Server::start(dir.path(), &["--database-url", &database.url]);
    grpc_ingest_stores_each_message_once(&server).await;
    assert!(server.terminate().success());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_speaks_segment_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let token = server.admin_token.clone().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(format!("{}/v1/{path}", server.http));

    let ok = post("track")
        .basic_auth(&key, Some(""))
        .json(&json!({ "userId": "u1", "event": "Signed Up", "messageId": "not-a-uuid:1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({ "success": true }));
    // A retry (as the Segment SDKs send one, with X-Retry-Count) is a duplicate, not a second event.
    let retry = post("track")
        .basic_auth(&key, Some(""))
        .header("x-retry-count", "1")
        .json(&json!({ "userId": "u1", "event": "Signed Up", "messageId": "not-a-uuid:1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);

    // writeKey in the body, a text/plain content type and a gzipped batch.
    let body = json!({
        "writeKey": key,
        "batch": [{ "type": "page", "anonymousId": "a1", "name": "Home" }, { "type": "track", "event": "" , "userId": "u1"}],
        "sentAt": "2026-11-29T00:00:00Z",
    });
    let batch = post("batch")
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    let answer: Value = batch.json().await.unwrap();
    assert_eq!(answer["success"], true);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert_eq!(answer["rejected"][0]["reasons"][0]["field"], "event");

    // `/v1/import` takes a batch of historical messages; the timestamp is kept.
    let import = post("import")
        .basic_auth(&key, Some(""))
        .json(&json!({ "batch": [{ "type": "identify", "userId": "u9", "timestamp": "2024-01-02T03:04:05Z",
                                    "traits": { "country": "germany", "first_name": "Jo" } }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 200);

    // A single message that breaks a rule: 400 naming the field and the rule.
    let invalid = post("alias").basic_auth(&key, Some("")).json(&json!({ "userId": "u1" })).send().await.unwrap();
    assert_eq!(invalid.status(), 400);
    let invalid: Value = invalid.json().await.unwrap();
    assert_eq!(invalid["code"], "invalid_message");
    assert_eq!(invalid["field"], "previousId");

    // Size limits and malformed bodies.
    let big = json!({ "userId": "u1", "event": "x", "properties": { "blob": "x".repeat(33 * 1024) } });
    let too_big = post("track").basic_auth(&key, Some("")).json(&big).send().await.unwrap();
    assert_eq!(too_big.status(), 400);
    let too_big: Value = too_big.json().await.unwrap();
    assert_eq!(too_big["code"], "message_too_large");
    assert!(too_big["message"].as_str().unwrap().contains("32 KB"), "{too_big}");
    let many: Vec<Value> =
        (0..40).map(|i| json!({ "type": "track", "userId": "u", "event": "x", "properties": { "b": "y".repeat(15_000), "i": i } })).collect();
    let batch_too_big = post("batch").basic_auth(&key, Some("")).json(&json!({ "batch": many })).send().await.unwrap();
    assert_eq!(batch_too_big.status(), 400);
    let batch_too_big: Value = batch_too_big.json().await.unwrap();
    assert_eq!(batch_too_big["code"], "batch_too_large");
    assert!(batch_too_big["message"].as_str().unwrap().contains("500 KB"), "{batch_too_big}");
    let malformed = post("batch").basic_auth(&key, Some("")).body("{\"batch\": [").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Value>().await.unwrap()["code"], "malformed_json");

    // Wrong or missing key: 401.
    let wrong = post("track")
        .basic_auth("onepd_wk_wrong", Some(""))
        .json(&json!({ "userId": "u", "event": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await.unwrap()["code"], "unauthorized");
    let missing = post("track").json(&json!({ "userId": "u", "event": "x" })).send().await.unwrap();
    assert_eq!(missing.status(), 401);

    // CORS for browsers.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/batch", server.http))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    let accepted = messages(&server, &token, "MessageAccepted").await;
    assert_eq!(accepted.len(), 3, "the track, the page and the import");
    assert_eq!(data(&accepted[0])["message"]["messageId"], "not-a-uuid:1");
    assert_eq!(data(&accepted[1])["message"]["sentAt"], "2026-11-29T00:00:00.000Z");
    let imported = data(&accepted[2]);
    assert_eq!(imported["message"]["timestamp"], "2024-01-02T03:04:05.000Z");
    assert_eq!(imported["message"]["traits"]["country"], "DE");
    assert_eq!(imported["message"]["traits"]["firstName"], "Jo");
    assert_eq!(imported["originals"]["traits.first_name"], "Jo");
    let rejected = messages(&server, &token, "MessageRejected").await;
    assert_eq!(rejected.len(), 2, "the batch's bad track and the alias");

    let metrics = reqwest::get(format!("{}/metrics", server.http)).await.unwrap().text().await.unwrap();
    let counted = |outcome: &str, reason: &str| {
        metrics.lines().any(|line| {
            line.starts_with("onepd_ingest_messages_total{")
                && line.contains(&format!("outcome=\"{outcome}\""))
                && line.contains(&format!("reason=\"{reason}\""))
        })
    };
    assert!(counted("accepted", "") && counted("rejected", "required"), "{metrics}");
    assert!(metrics.contains("onepd_append_latency_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("onepd_ingest_batch_size_bucket"), "{metrics}");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_key_of_one_workspace_never_writes_into_another_and_a_revoked_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key_a = server.write_key.clone().unwrap();
    let token_a = server.admin_token.clone().unwrap();
    let b = onepd_json(dir.path(), &["workspace", "create", "shop-b", "--industry", "healthcare"]);
    let token_b = b["admin_token"].as_str().unwrap().to_owned();
    let source_b =
        onepd_json(dir.path(), &["source", "create", "--workspace", "shop-b", "web", "--kind", "javascript"]);
    let key_b = source_b["write_key"].as_str().unwrap().to_owned();

    let http = reqwest::Client::new();
    let send = |key: String, user: &'static str| {
        let request = http
            .post(format!("{}/v1/track", server.http))
            .basic_auth(key, Some(""))
            .json(&json!({ "userId": user, "event": "Visited", "messageId": "same-id" }));
        async move {
            for _ in 0..100 {
                let response = request.try_clone().unwrap().send().await.unwrap();
                if response.status() != 401 {
                    return response.status();
                }
                // The new key takes effect once the server has followed the log to it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the key never took effect");
        }
    };
    assert_eq!(send(key_a.clone(), "alice").await, 200);
    assert_eq!(send(key_b.clone(), "bob").await, 200);

    let in_a = messages(&server, &token_a, "MessageAccepted").await;
    let in_b = messages(&server, &token_b, "MessageAccepted").await;
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_b.len(), 1);
    assert_eq!(data(&in_a[0])["message"]["userId"], "alice");
    assert_eq!(data(&in_b[0])["message"]["userId"], "bob");
    assert_ne!(in_a[0].event_id, in_b[0].event_id, "the same messageId in two workspaces is two events");
    assert_eq!(in_b[0].workspace_id, b["workspace_id"].as_str().unwrap());

    let listed: Vec<Value> = String::from_utf8(onepd(dir.path(), &["workspace", "list", "--json"]).stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.iter().map(|w| w["name"].as_str().unwrap()).collect::<Vec<_>>(), ["default", "shop-b"]);
    assert_eq!(listed[1]["industry"], "healthcare");

    // Revoking B's key: from then on 401 over HTTP and UNAUTHENTICATED over gRPC.
    let revoked =
        onepd_json(dir.path(), &["key", "revoke", "--workspace", "shop-b", source_b["write_key_id"].as_str().unwrap()]);
    assert!(revoked["revoked_at_position"].as_u64().is_some());
    let mut status = 200;
    for _ in 0..100 {
        status = http
            .post(format!("{}/v1/track", server.http))
            .basic_auth(&key_b, Some(""))
            .json(&json!({ "userId": "bob", "event": "Visited" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 401);
    let mut client = IngestServiceClient::new(server.channel().await);
    let refused = client
        .batch(with_write_key(
            pb::BatchRequest { messages: vec![track("m", "bob", "x", json!({}))], sent_at: None },
            &key_b,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Workspace A cannot revoke B's keys either.
    let foreign =
        onepd(dir.path(), &["key", "revoke", "--workspace", "default", source_b["write_key_id"].as_str().unwrap()]);
    assert_eq!(foreign.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("not found in this workspace"));
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_blocked_by_the_tracking_plan_is_kept_and_replayed_once_the_plan_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let plan = dir.path().join("plan.json");
    let strict = json!({ "events": { "Order Completed": {
        "type": "object", "required": ["revenue"], "properties": { "revenue": { "type": "number" } } } } });
    std::fs::write(&plan, strict.to_string()).unwrap();
    onepd_json(dir.path(), &["plan", "set", "--mode", "block", plan.to_str().unwrap()]);

    let mut client = IngestServiceClient::new(server.channel().await);
    let mut result = None;
    for attempt in 0..100 {
        let batch = pb::BatchRequest {
            messages: vec![track(&format!("order-{attempt}"), "u1", "Order Completed", json!({ "revenue": "12 USD" }))],
            sent_at: None,
        };
        let response = client.batch(with_write_key(batch, &key)).await.unwrap().into_inner();
        if response.rejected == 1 {
            result = Some(response.results[0].clone());
            break;
        }
        // The plan takes effect once the server has followed the log to it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(Outcome::Rejected(rejected)) = result.and_then(|r| r.outcome) else { panic!("never rejected") };
    assert_eq!(rejected.reasons[0].field, "properties.revenue");
    assert_eq!(rejected.reasons[0].rule, "tracking_plan");

    let open = String::from_utf8(onepd(dir.path(), &["rejected", "list", "--json"]).stdout).unwrap();
    let open: Vec<Value> = open.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["reasons"][0]["field"], "properties.revenue");

    let loose = json!({ "events": { "Order Completed": { "type": "object" } } });
    std::fs::write(&plan, loose.to_string()).unwrap();
    onepd_json(dir.path(), &["plan", "set", "--mode", "block", plan.to_str().unwrap()]);
    let replayed = onepd(dir.path(), &["rejected", "replay", "--json"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let replayed: Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(replayed["replay"]["status"], "accepted", "{replayed}");
    let still_open = onepd(dir.path(), &["rejected", "list", "--json"]).stdout;
    assert!(still_open.is_empty(), "{}", String::from_utf8_lossy(&still_open));
    let token = server.admin_token.clone().unwrap();
    let accepted = messages(&server, &token, "MessageAccepted").await;
    let replayed_message = accepted
        .iter()
        .map(data)
        .find(|d| d["message"]["messageId"] == open[0]["message_id"])
        .expect("the replayed message is accepted");
    assert_eq!(replayed_message["message"]["properties"]["revenue"], "12 USD");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_answers_429_with_retry_after_and_stores_exactly_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-in-flight", "2"]);
    let key = server.write_key.clone().unwrap();
    let token = server.admin_token.clone().unwrap();
    let http = reqwest::Client::new();
    let requests = (0..64).map(|i| {
        let request = http.post(format!("{}/v1/batch", server.http)).basic_auth(&key, Some("")).json(&json!({
            "batch": [
                { "type": "track", "userId": "u", "event": "A", "messageId": format!("{i}-a") },
                { "type": "track", "userId": "u", "event": "B", "messageId": format!("{i}-b") },
            ]
        }));
        async move { request.send().await.unwrap() }
    });
    let responses = futures::future::join_all(requests).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + busy.len(), 64);
    assert!(!busy.is_empty(), "64 concurrent batches against room for one should meet a full server");
    assert_eq!(busy[0].headers()["retry-after"], "1");
    let too_big = http
        .post(format!("{}/v1/batch", server.http))
        .basic_auth(&key, Some(""))
        .json(&json!({ "batch": [{ "type": "track", "userId": "u", "event": "A" }, { "type": "track", "userId": "u", "event": "A" }, { "type": "track", "userId": "u", "event": "A" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 400, "a batch larger than the whole allowance could never be admitted");
    assert_eq!(messages(&server, &token, "MessageAccepted").await.len(), ok * 2);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    async fn stored_ip(extra: &[&str]) -> (Value, Value) {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), extra);
        let response = reqwest::Client::new()
            .post(format!("{}/v1/page", server.http))
            .basic_auth(server.write_key.clone().unwrap(), Some(""))
            .header("x-forwarded-for", "203.0.113.50, 198.51.100.7")
            .json(&json!({ "anonymousId": "a1", "name": "Home" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let accepted = messages(&server, server.admin_token.as_deref().unwrap(), "MessageAccepted").await;
        let data = data(&accepted[0]);
        assert!(server.terminate().success());
        (data["message"]["context"]["ip"].clone(), data["enrichment"]["ipSource"].clone())
    }
    assert_eq!(stored_ip(&[]).await, (json!("127.0.0.1"), json!("peer")));
    assert_eq!(stored_ip(&["--trusted-proxies", "127.0.0.1"]).await, (json!("198.51.100.7"), json!("forwarded")));
}

/// An unknown path, a method a route does not take and a path that is not
/// UTF-8 answer in the API's JSON error shape, not an empty or text body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_error_is_the_apis_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let answers = [
        (client.get(format!("{}/nope", server.http)), 404, "not_found"),
        (client.put(format!("{}/v1/track", server.http)), 405, "method_not_allowed"),
        (client.get(format!("{}/v1/track", server.http)), 405, "method_not_allowed"),
        (client.get(format!("{}/v1/nope", server.http)), 404, "not_found"),
        (client.post(format!("{}/v1/%FF%FE", server.http)).body("{}"), 400, "invalid_path"),
        (
            client.post(format!("{}/v1/track", server.http)).header("x-padding", "a".repeat(100 * 1024)).body("{}"),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in answers {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/json"), "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
    }
    // analytics.js's own usage counters, posted to `/v1/m`, are answered and
    // not stored (no rejection either).
    let telemetry = json!({"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1, "tags": {}}]});
    let response = client.post(format!("{}/v1/m", server.http)).json(&telemetry).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let token = server.admin_token.clone().unwrap();
    assert!(messages(&server, &token, "MessageRejected").await.is_empty());
    assert!(messages(&server, &token, "MessageAccepted").await.is_empty());
    drop(server);
}

/// An amount no business has (`revenue: 1e308`, which would saturate a
/// profile's total) is refused at ingest, naming the field; a client clock
/// centuries off is not used to correct the event's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_amount_is_refused_and_an_absurd_clock_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().expect("the banner prints a write key");
    let client = reqwest::Client::new();
    let track = |body: Value| client.post(format!("{}/v1/track", server.http)).basic_auth(&key, Some("")).json(&body);
    let refused = track(json!({"userId": "u-amount", "event": "Order Completed", "properties": {"revenue": 1e308}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "properties.revenue", "{body}");
    let accepted = track(json!({"userId": "u-clock", "event": "Signed Up", "messageId": "clock-1",
        "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}))
    .send()
    .await
    .unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    drop(server);
}

/// analytics.js adds `X-Retry-Count` to every retry and posts to one-letter
/// paths: a preflight asking for any header is allowed (as Segment's API
/// does), and `/v1/t`, `/v1/p`, `/v1/i`, `/v1/g`, `/v1/a` and `/v1/s` take
/// their calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sdks_retry_headers_and_one_letter_paths_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/t", server.http))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-retry-count")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(allowed.contains("x-retry-count"), "{allowed}");
    let key = server.write_key.clone().expect("the banner prints a write key");
    let bodies = [
        ("t", json!({"anonymousId": "a1", "event": "Viewed"})),
        ("p", json!({"anonymousId": "a1", "name": "Home"})),
        ("i", json!({"anonymousId": "a1", "traits": {"plan": "pro"}})),
        ("g", json!({"anonymousId": "a1", "groupId": "g1"})),
        ("a", json!({"userId": "u1", "previousId": "a1"})),
        ("s", json!({"anonymousId": "a1", "name": "Home"})),
    ];
    for (path, mut body) in bodies {
        body["writeKey"] = json!(key);
        let answer = http
            .post(format!("{}/v1/{path}", server.http))
            .header("x-retry-count", "1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200, "/v1/{path}: {}", answer.text().await.unwrap());
    }
    drop(server);
}
