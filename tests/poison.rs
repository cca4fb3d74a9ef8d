//! The poison corpus, through the real server on SQLite and PostgreSQL:
//! inputs that once stopped onepd's read side for every workspace — deep
//! nesting, control characters in identifiers, integers beyond 64 bits, an
//! operator fact, an erasure, and an undecodable event already in the log —
//! and, after each, ordinary events of two workspaces that must still reach
//! the profile API and a webhook destination. The bad input gets its 400
//! naming the field, or sits in quarantine with a reason; lag returns to 0;
//! a stalled destination shows in `destination list`, `/metrics` and
//! `/healthz`; `onepd rebuild profiles` equals live; `onepd verify` passes.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use onepd_adapters::{EventLog, StoreConfig};
use onepd_domain::identity::{CustomKind, CustomSource, IdentifierKind, IdentityRules};
use onepd_domain::{AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, StreamId, WorkspaceId};
use onepd_proto::admin::v1::admin_service_client::AdminServiceClient;
use onepd_proto::admin::v1::{DestinationState, ListDestinationsRequest};
use onepd_proto::audit::v1::ReadEventsRequest;
use onepd_proto::ingest::v1 as pb;
use onepd_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use serde_json::{Value, json};
use stub::{Mode, Stub};
use support::{PgDatabase, Server, onepd, read_all, sqlite_url, with_write_key};
use uuid::Uuid;

/// `{"a": {"a": … 1 …}}`, `levels` objects deep.
fn objects(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// `[[… 1 …]]`, `levels` arrays deep.
fn arrays(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

struct Deployment {
    dir: tempfile::TempDir,
    store: Vec<String>,
}

impl Deployment {
    fn new(url: Option<&str>) -> Deployment {
        let store = url.map(|url| vec!["--database-url".to_owned(), url.to_owned()]).unwrap_or_default();
        Deployment { dir: tempfile::tempdir().unwrap(), store }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store_refs(&self) -> Vec<&str> {
        self.store.iter().map(String::as_str).collect()
    }

    /// `onepd ARGS… STORE…`, whatever its exit.
    fn cli_output(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(self.store_refs());
        onepd(self.path(), &all)
    }

    /// `onepd ARGS… STORE…`, failing the test unless it succeeds.
    fn cli(&self, args: &[&str]) -> String {
        let output = self.cli_output(args);
        assert!(output.status.success(), "onepd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Each line of `onepd ARGS… --json`, parsed.
    fn cli_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        self.cli(&all)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn database_url(&self) -> String {
        self.store.get(1).cloned().unwrap_or_else(|| sqlite_url(self.path()))
    }
}

/// Posts `body` (JSON text) to the tracking API with `key`.
async fn post_raw(server: &Server, key: &str, path: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http))
        .basic_auth(key, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(server: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    post_raw(server, key, path, body.to_string()).await
}

/// Sends `message` alone and expects 400 naming `field` with `says` in the message.
async fn refused(server: &Server, key: &str, path: &str, message: Value, field: &str, says: &str) {
    let (status, body) = post(server, key, path, message.clone()).await;
    assert_eq!(status, 400, "{path} {message:.200}: {body}");
    assert_eq!(body["field"], field, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains(says), "{body}");
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.http)).await.unwrap().text().await.unwrap()
}

/// The value of the metric line starting with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

async fn profile_status(server: &Server, workspace: &str, token: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/spaces/{workspace}/collections/users/profiles/{id}/traits", server.http))
        .basic_auth(token, Some(""))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Appends, straight into the store (as an older onepd would have), an
/// accepted message nested deeper than any reader decodes, and one whose
/// user id holds a NUL. Returns the deep event's position.
async fn plant_legacy_events(url: &str, workspace: WorkspaceId) -> u64 {
    let log = EventLog::open(StoreConfig::new(url, None)).await.expect("open the log");
    let accepted = |message: Value| NewEvent {
        event_id: EventId(Uuid::new_v4()),
        workspace_id: workspace,
        event_type: "MessageAccepted".into(),
        schema_version: 1,
        data: json!({ "message": message, "enrichment": {}, "originals": {}, "violations": [] }),
        metadata: json!({ "message_type": "track" }),
        subject: None,
    };
    let deep = accepted(json!({"type": "track", "messageId": "legacy-deep", "userId": "legacy-user",
        "event": "Deep", "properties": objects(130)}));
    let nul = accepted(json!({"type": "identify", "messageId": "legacy-nul", "userId": "nul\u{0}id",
        "anonymousId": "anon-nul", "traits": {"plan": "legacy"}}));
    let request = AppendRequest {
        stream_id: StreamId::new("source-legacy").unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![deep, nul],
    };
    let outcome = log.append(request).await.expect("append the legacy events");
    // Identity rules set before kind names were checked: one with a NUL,
    // one longer than a read-store key can hold.
    let long_kind: String = (0..3_000).map(|n| char::from(b'a' + ((n * 7 + n / 26) % 26) as u8)).collect();
    let rules = IdentityRules::default()
        .with_custom(CustomKind { name: "k\u{0}x".into(), from: CustomSource::ExternalId })
        .with_custom(CustomKind { name: long_kind.clone(), from: CustomSource::Trait("rk".into()) });
    let rules = IdentityRules {
        link_kinds: [
            IdentityRules::default().link_kinds,
            vec![IdentifierKind::from_name("k\u{0}x"), IdentifierKind::from_name(&long_kind)],
        ]
        .concat(),
        ..rules
    };
    let changed = NewEvent {
        event_id: EventId(Uuid::new_v4()),
        workspace_id: workspace,
        event_type: "IdentityRulesChanged".into(),
        schema_version: 1,
        data: json!({ "rules": rules }),
        metadata: json!({ "actor": "an older onepd" }),
        subject: None,
    };
    let request = AppendRequest {
        stream_id: StreamId::new(format!("workspace-{workspace}")).unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![changed],
    };
    log.append(request).await.expect("append the legacy rules");
    log.close().await;
    outcome.positions[0].0
}

/// Both workspaces, as the canaries need them: after each kind of hostile
/// input, an ordinary identify in each must still reach its webhook and the
/// profile API.
struct Canaries<'a> {
    workspace: String,
    other: String,
    key: String,
    other_key: String,
    token: String,
    other_token: String,
    hook: &'a Stub,
    other_hook: &'a Stub,
}

impl Canaries<'_> {
    /// Sends `canary-<after>` in both workspaces and waits until both are
    /// delivered and readable.
    async fn still_flow(&self, server: &Server, after: &str) {
        let id = format!("canary-{after}");
        let mut expected = Vec::new();
        for (workspace, key, stub) in
            [(&self.workspace, &self.key, self.hook), (&self.other, &self.other_key, self.other_hook)]
        {
            let (status, body) = post(server, key, "/v1/identify", json!({"userId": id, "messageId": id})).await;
            assert_eq!(status, 200, "{after}: {body}");
            expected.push((EventId::for_message(WorkspaceId(workspace.parse().unwrap()), &id).to_string(), stub));
        }
        for (event_id, stub) in &expected {
            let what = format!("the canary after {after} is delivered");
            stub.wait_for(Duration::from_secs(30), &what, |stub| stub.webhook_ids().contains_key(event_id)).await;
        }
        let profile = format!("user_id:{id}");
        eventually(Duration::from_secs(30), &format!("the canary after {after} is readable"), || async {
            profile_status(server, &self.workspace, &self.token, &profile).await == 200
                && profile_status(server, &self.other, &self.other_token, &profile).await == 200
        })
        .await;
    }
}

async fn the_read_side_survives_the_poison_corpus(url: Option<&str>) {
    let deployment = Deployment::new(url);
    let server = Server::start(deployment.path(), &deployment.store_refs());
    let key = server.write_key.clone().unwrap();
    let token = server.admin_token.clone().unwrap();
    let workspace = server.workspace.clone().unwrap();

    // A second workspace, with its own source, token and destination.
    let other = deployment.cli_json(&["workspace", "create", "other"]);
    let other_id = other[0]["workspace_id"].as_str().or(other[0]["id"].as_str()).unwrap().to_owned();
    let source = deployment.cli_json(&["source", "create", "--workspace", "other", "web", "--kind", "http"]);
    let other_key = source[0]["write_key"].as_str().unwrap().to_owned();
    let issued = deployment.cli_json(&["key", "issue", "--workspace", "other", "--admin", "--scope", "read"]);
    let other_token = issued[0]["key"].as_str().unwrap().to_owned();

    let hook = Stub::start(Mode::Accept).await;
    let other_hook = Stub::start(Mode::Accept).await;
    let hook_url = format!("url={}/hook", hook.url());
    let other_url = format!("url={}/hook", other_hook.url());
    deployment.cli(&["destination", "create", "hook", "--adapter", "webhook", "--setting", &hook_url]);
    deployment.cli(&[
        "destination",
        "create",
        "other-hook",
        "--workspace",
        "other",
        "--adapter",
        "webhook",
        "--setting",
        &other_url,
    ]);
    // An external adapter nobody serves: its run cannot start.
    deployment.cli(&["destination", "create", "dead-adapter", "--adapter", "grpc", "--url", "http://127.0.0.1:9"]);

    // The server learns the other workspace's key when it next reads the log.
    eventually(Duration::from_secs(10), "the other workspace's key works", || async {
        post(&server, &other_key, "/v1/identify", json!({"userId": "o-before", "messageId": "o-before"})).await.0 == 200
    })
    .await;

    let canaries = Canaries {
        workspace: workspace.clone(),
        other: other_id.clone(),
        key: key.clone(),
        other_key: other_key.clone(),
        token: token.clone(),
        other_token: other_token.clone(),
        hook: &hook,
        other_hook: &other_hook,
    };
    canaries.still_flow(&server, "start").await;

    // Deep nesting, in every object field and in arrays: 400 naming the field.
    let limit = "nesting deeper than 64 levels";
    refused(
        &server,
        &key,
        "/v1/track",
        json!({"userId": "u", "event": "E", "properties": objects(126)}),
        "properties",
        limit,
    )
    .await;
    refused(&server, &key, "/v1/identify", json!({"userId": "u", "traits": arrays(125)}), "traits", "nesting").await;
    refused(&server, &key, "/v1/identify", json!({"userId": "u", "traits": {"x": arrays(64)}}), "traits", limit).await;
    refused(&server, &key, "/v1/page", json!({"userId": "u", "context": objects(65)}), "context", limit).await;
    refused(
        &server,
        &key,
        "/v1/track",
        json!({"userId": "u", "event": "E", "integrations": objects(70)}),
        "integrations",
        limit,
    )
    .await;
    canaries.still_flow(&server, "nesting").await;
    // Control characters in every identifier field: 400 naming the field.
    for bad in ["a\u{0}b", "a\u{7}b", "a\u{1f}b", "a\u{7f}b", "a\u{85}b"] {
        refused(&server, &key, "/v1/track", json!({"userId": bad, "event": "E"}), "userId", "control character").await;
        refused(&server, &key, "/v1/track", json!({"anonymousId": bad, "event": "E"}), "anonymousId", "control").await;
        refused(
            &server,
            &key,
            "/v1/track",
            json!({"userId": "u", "messageId": bad, "event": "E"}),
            "messageId",
            "control",
        )
        .await;
    }
    refused(&server, &key, "/v1/group", json!({"userId": "u", "groupId": "g\u{0}"}), "groupId", "control").await;
    refused(&server, &key, "/v1/alias", json!({"userId": "u", "previousId": "p\u{0}"}), "previousId", "control").await;
    let nested_identifiers = [
        (json!({"userId": "u", "traits": {"email": "a\u{0}@b.co"}}), "traits.email"),
        (json!({"userId": "u", "traits": {"phone": "+1\u{0}415"}}), "traits.phone"),
        (json!({"userId": "u", "context": {"traits": {"email": "a\u{1b}@b.co"}}}), "context.traits.email"),
        (json!({"userId": "u", "context": {"traits": {"phone": "+1\u{7f}"}}}), "context.traits.phone"),
        (
            json!({"userId": "u", "context": {"externalIds": [{"id": "c\u{0}", "type": "crm_id", "collection": "users"}]}}),
            "context.externalIds[0].id",
        ),
    ];
    for (message, field) in nested_identifiers {
        refused(&server, &key, "/v1/identify", message, field, "control").await;
    }
    canaries.still_flow(&server, "control-characters").await;
    // Integers beyond 64 bits would be rounded into one another: refused.
    for huge in ["12345678901234567890123", "12345678901234567890124"] {
        let (status, body) = post_raw(&server, &key, "/v1/track", format!(r#"{{"userId":{huge},"event":"E"}}"#)).await;
        assert_eq!((status, body["field"].as_str()), (400, Some("userId")), "{body}");
    }
    canaries.still_flow(&server, "huge-integers").await;
    // In a batch, the bad message is rejected and the good one kept.
    let (status, body) = post(
        &server,
        &key,
        "/v1/batch",
        json!({"batch": [
            {"type": "track", "userId": "u", "event": "E", "properties": objects(100)},
            {"type": "track", "userId": "u-batch", "event": "Kept", "messageId": "kept-1"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"].as_array().map(Vec::len), Some(1), "{body}");
    canaries.still_flow(&server, "batch").await;
    // gRPC: a Struct deeper than protobuf decodes is INVALID_ARGUMENT naming
    // the field (each JSON level is two protobuf levels, so this is reached
    // before onepd's own limit).
    let mut ingest = IngestServiceClient::new(server.channel().await);
    let track = |message_id: &str, properties: Value| pb::Track {
        common: Some(pb::Common { message_id: message_id.into(), user_id: "u".into(), ..Default::default() }),
        event: "E".into(),
        properties: Some(prost_struct(&properties)),
    };
    let refusal = ingest.track(with_write_key(track("grpc-deep", objects(70)), &key)).await.unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    assert!(refusal.message().contains("Track.properties: recursion limit reached"), "{refusal:?}");
    let answer = ingest.track(with_write_key(track("grpc-ok", objects(20)), &key)).await.unwrap().into_inner();
    assert!(
        matches!(answer.result.and_then(|r| r.outcome), Some(pb::message_result::Outcome::Accepted(_))),
        "a 20-level gRPC track is accepted"
    );
    canaries.still_flow(&server, "grpc").await;

    // A log that already holds an undecodable event (and a NUL id), written
    // by an older onepd: planted while the server is stopped.
    assert!(server.terminate().success());
    let workspace_id = WorkspaceId(workspace.parse().unwrap());
    let deep_position = plant_legacy_events(&deployment.database_url(), workspace_id).await;
    let log_file = deployment.path().join("serve.log");
    let server = Server::start_logging(deployment.path(), &deployment.store_refs(), &log_file);
    canaries.still_flow(&server, "legacy-events").await;

    // Identifiers of the legacy rules' kinds no read store can key.
    let (status, body) = post(
        &server,
        &key,
        "/v1/identify",
        json!({"userId": "kinds", "traits": {"rk": "v3"}, "context": {"externalIds": [{"id": "v1", "type": "k\u{0}x"}]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Such rules are refused today, naming the kind.
    let rules_file = deployment.path().join("bad-rules.json");
    std::fs::write(&rules_file, json!({"custom": [{"name": "k\u{0}x", "from": "external_id"}]}).to_string()).unwrap();
    let refused_rules = deployment.cli_output(&["identity", "rules", "set", rules_file.to_str().unwrap()]);
    assert_eq!(refused_rules.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused_rules.stderr).contains("control character"), "{refused_rules:?}");
    canaries.still_flow(&server, "legacy-kinds").await;

    // An operator fact and an erasure.
    post(&server, &key, "/v1/identify", json!({"userId": "gone-user", "traits": {"email": "gone@example.com"}})).await;
    deployment.cli(&["identity", "block", "email:blocked@example.com"]);
    canaries.still_flow(&server, "block").await;
    deployment.cli_json(&["forget", "--user-id", "gone-user"]);
    canaries.still_flow(&server, "forget").await;

    // Ordinary events of both workspaces still flow, to profiles and destinations.
    let (status, body) = post(
        &server,
        &key,
        "/v1/identify",
        json!({"userId": "u-after", "messageId": "after-1", "traits": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        post(&server, &other_key, "/v1/identify", json!({"userId": "o-after", "messageId": "o-after"})).await;
    assert_eq!(status, 200, "{body}");
    let after_id = EventId::for_message(workspace_id, "after-1").to_string();
    let other_after = EventId::for_message(WorkspaceId(other_id.parse().unwrap()), "o-after").to_string();
    let kept = EventId::for_message(workspace_id, "kept-1").to_string();
    hook.wait_for(Duration::from_secs(30), "the default workspace's events are delivered", |stub| {
        let ids = stub.webhook_ids();
        ids.contains_key(&after_id) && ids.contains_key(&kept)
    })
    .await;
    other_hook
        .wait_for(Duration::from_secs(30), "the other workspace's event is delivered", |stub| {
            stub.webhook_ids().contains_key(&other_after)
        })
        .await;
    eventually(Duration::from_secs(30), "both workspaces' profiles are readable", || async {
        profile_status(&server, &workspace, &token, "user_id:u-after").await == 200
            && profile_status(&server, &other_id, &other_token, "user_id:o-after").await == 200
            && profile_status(&server, &workspace, &token, "anonymous_id:anon-nul").await == 200
            && profile_status(&server, &workspace, &token, "user_id:kinds").await == 200
    })
    .await;
    assert_eq!(hook.webhook_ids()[&after_id], 1, "delivered twice: {:?}", hook.webhook_ids());

    // The undecodable event sits in quarantine, for the projection and the
    // destination that read it, with a reason.
    eventually(Duration::from_secs(20), "the deep event is quarantined by both readers", || async {
        let listed = deployment.cli_json(&["quarantine", "list"]);
        let readers: Vec<&str> = listed
            .iter()
            .filter(|entry| entry["position"] == deep_position)
            .filter_map(|entry| entry["reader"].as_str())
            .collect();
        readers.contains(&"profiles") && readers.contains(&"destination:hook")
    })
    .await;
    let listed = deployment.cli_json(&["quarantine", "list"]);
    assert!(listed.iter().all(|entry| entry["reason"].as_str().unwrap().contains("recursion limit")), "{listed:?}");
    assert!(
        deployment.cli_json(&["quarantine", "list", "--workspace", "other"]).is_empty(),
        "another workspace's quarantine is not shown"
    );
    // The audit API reads the whole log, and marks the event.
    let mut audit = server.audit().await;
    let events = read_all(&mut audit, ReadEventsRequest::default(), &token).await;
    let planted = events.iter().find(|event| event.position == deep_position).expect("the deep event is read");
    assert!(planted.unreadable.contains("recursion limit"), "{planted:?}");
    // A retry finds it still unreadable and keeps it (exit 1).
    let retried = deployment.cli_output(&["quarantine", "retry"]);
    assert_eq!(retried.status.code(), Some(1), "{}", String::from_utf8_lossy(&retried.stderr));
    assert!(String::from_utf8_lossy(&retried.stdout).contains("still unreadable"));
    // An event an older onepd could not read, but this one can: a retry
    // releases it, rebuilds the profiles and replays it to the destination.
    let readable = events.iter().find(|event| event.event_id == after_id).expect("after-1 is in the log").position;
    let hook_id = deployment
        .cli_json(&["destination", "list"])
        .into_iter()
        .find(|entry| entry["name"] == "hook")
        .and_then(|entry| entry["destination_id"].as_str().map(str::to_owned))
        .unwrap();
    let readable_id = EventId::for_message(workspace_id, "after-1");
    plant_quarantine_records(
        &deployment.database_url(),
        workspace_id,
        (readable, readable_id),
        hook_id.parse().unwrap(),
    )
    .await;
    let retried = deployment.cli_output(&["quarantine", "retry", "--position", &readable.to_string()]);
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let said = String::from_utf8_lossy(&retried.stdout).to_string();
    assert!(said.contains("replay requested") && said.contains("released"), "{said}");
    assert!(
        !deployment.cli_json(&["quarantine", "list"]).iter().any(|entry| entry["position"] == readable),
        "a released record is no longer listed"
    );
    hook.wait_for(Duration::from_secs(30), "the released event is replayed", |stub| {
        stub.webhook_ids().get(&after_id) == Some(&2)
    })
    .await;

    // Health: lag back to 0, the quarantine counted, the stalled destination shown.
    eventually(Duration::from_secs(30), "lag returns to 0", || async {
        let text = metrics(&server).await;
        metric(&text, r#"onepd_projection_lag_events{projection="profiles"}"#) == Some(0.0)
            && metric(&text, r#"onepd_activation_lag_events{destination="hook"}"#) == Some(0.0)
            && metric(&text, r#"onepd_activation_lag_events{destination="other-hook"}"#) == Some(0.0)
    })
    .await;
    let text = metrics(&server).await;
    assert!(metric(&text, r#"onepd_quarantined_events_total{reader="profiles"}"#).is_some(), "{text}");
    assert!(metric(&text, r#"onepd_quarantined_events_total{reader="destination:hook"}"#).is_some(), "{text}");
    assert!(metric(&text, r#"onepd_activation_lag_events{destination="dead-adapter"}"#) > Some(0.0), "{text}");
    assert!(metric(&text, r#"onepd_activation_checkpoint{destination="hook"}"#) > Some(0.0), "{text}");
    let listed = deployment.cli_json(&["destination", "list"]);
    let named = |name: &str| listed.iter().find(|entry| entry["name"] == name).unwrap().clone();
    assert_eq!(named("dead-adapter")["state"], "stalled", "{listed:?}");
    assert!(named("dead-adapter")["state_detail"].as_str().unwrap().starts_with("stalled since "), "{listed:?}");
    assert_eq!(named("hook")["state"], "running", "{listed:?}");
    assert_eq!(named("hook")["quarantined"], 1, "{listed:?}");
    let mut admin = AdminServiceClient::new(server.channel().await);
    let listed = admin
        .list_destinations(support::with_token(ListDestinationsRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .destinations;
    let named = |name: &str| listed.iter().find(|entry| entry.name == name).unwrap().clone();
    assert_eq!(named("dead-adapter").state(), DestinationState::Stalled, "{listed:?}");
    assert!(named("dead-adapter").state_detail.starts_with("stalled since "), "{listed:?}");
    assert_eq!((named("hook").state(), named("hook").quarantined), (DestinationState::Running, 1), "{listed:?}");
    let health: Value = reqwest::get(format!("{}/healthz", server.http)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["stalled_destinations"][0]["destination"], "dead-adapter", "{health}");
    assert_eq!(health["projection"]["state"], "running", "{health}");

    // A rebuild gives what live gave; the chain verifies.
    let read = |args: &[&str]| deployment.cli_json(&[&["profile", "get"][..], args].concat());
    let live = (read(&["--user-id", "u-after"]), read(&["--anonymous-id", "anon-nul"]));
    deployment.cli(&["rebuild", "profiles"]);
    assert_eq!((read(&["--user-id", "u-after"]), read(&["--anonymous-id", "anon-nul"])), live);
    deployment.cli(&["verify"]);
    drop(server);
}

/// Records, as an older onepd would have, that the profiles projection and
/// the destination `destination` could not read the event at `position`
/// (whose id is `event_id`).
async fn plant_quarantine_records(
    url: &str,
    workspace: WorkspaceId,
    (position, event_id): (u64, EventId),
    destination: Uuid,
) {
    use onepd_domain::events::quarantine::{DESTINATION_READER, EventQuarantined, PROFILES_READER, quarantine_stream};
    let log = EventLog::open(StoreConfig::new(url, None)).await.expect("open the log");
    for (reader, destination, stream) in [
        (PROFILES_READER, None, quarantine_stream(workspace)),
        (DESTINATION_READER, Some(destination), onepd_domain::events::destination::destination_stream(destination)),
    ] {
        let record = EventQuarantined {
            position: onepd_domain::Position(position),
            event_id,
            event_type: "MessageAccepted".into(),
            reader: reader.into(),
            destination_id: destination,
            reason: "payload: unknown variant, from an older onepd".into(),
        };
        let event = NewEvent {
            event_id: record.record_id(),
            workspace_id: workspace,
            event_type: EventQuarantined::TYPE.into(),
            schema_version: 1,
            data: serde_json::to_value(&record).unwrap(),
            metadata: json!({ "actor": reader }),
            subject: None,
        };
        let request = AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events: vec![event] };
        log.append(request).await.expect("append a quarantine record");
    }
    log.close().await;
}

fn prost_struct(value: &Value) -> prost_types::Struct {
    fn convert(value: &Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => {
                Kind::ListValue(prost_types::ListValue { values: items.iter().map(convert).collect() })
            }
            Value::Object(_) => Kind::StructValue(prost_struct(value)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    let map = value.as_object().unwrap();
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), convert(v))).collect() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_side_survives_the_poison_corpus_on_sqlite() {
    the_read_side_survives_the_poison_corpus(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_side_survives_the_poison_corpus_on_postgres() {
    let db = PgDatabase::create().await;
    the_read_side_survives_the_poison_corpus(Some(&db.url)).await;
}
