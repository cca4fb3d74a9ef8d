//! The admin service (`onepd.admin.v1.AdminService`) through the real
//! server: a webhook destination created over gRPC receives what is sent,
//! its ledger reads back as the CLI shows it, pausing, resuming, replaying
//! and retrying dead letters work as `onepd destination|deliveries|replay`
//! do, and a token acts only in its own workspace and within its scopes.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use onepd_domain::{EventId, WorkspaceId};
use onepd_proto::admin::v1 as proto;
use onepd_proto::admin::v1::admin_service_client::AdminServiceClient;
use onepd_proto::admin::v1::{DestinationState, StartFrom, replay_request};
use serde_json::{Value, json};
use support::{PgDatabase, Server, onepd_json, with_token};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// A local webhook receiver: it accepts every batch and records the event
/// ids it carried.
#[derive(Clone)]
struct Stub {
    addr: SocketAddr,
    ids: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    async fn start() -> Stub {
        async fn handle(State(ids): State<Arc<Mutex<Vec<String>>>>, body: axum::body::Bytes) -> StatusCode {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            for event in body["batch"].as_array().into_iter().flatten() {
                ids.lock().unwrap().push(event["eventId"].as_str().unwrap_or_default().to_owned());
            }
            StatusCode::OK
        }
        let ids = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(post(handle)).with_state(ids.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Stub { addr, ids }
    }

    /// How many times the stub received each event id.
    fn received(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for id in self.ids.lock().unwrap().iter() {
            *counts.entry(id.clone()).or_default() += 1;
        }
        counts
    }

    /// Waits until every id of `ids` was received `times` times.
    async fn wait_for(&self, ids: &[String], times: usize, what: &str) {
        eventually(what, async || {
            let received = self.received();
            match ids.iter().all(|id| received.get(id).copied().unwrap_or(0) >= times) {
                true => Ok(()),
                false => Err(format!("received {received:?}")),
            }
        })
        .await;
    }
}

/// Retries `attempt` until it succeeds, failing the test after 20 s with
/// its last error.
async fn eventually<T>(what: &str, mut attempt: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within 20 s; last {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An admin service client sending `token` with every call.
#[derive(Clone)]
struct Admin {
    client: AdminServiceClient<Channel>,
    token: String,
}

impl Admin {
    async fn connect(server: &Server, token: &str) -> Admin {
        Admin { client: AdminServiceClient::new(server.channel().await), token: token.to_owned() }
    }

    async fn create(&self, request: proto::CreateDestinationRequest) -> Result<proto::Destination, tonic::Status> {
        self.client.clone().create_destination(with_token(request, &self.token)).await.map(|r| r.into_inner())
    }

    async fn list(&self) -> Result<Vec<proto::DestinationStatus>, tonic::Status> {
        let request = with_token(proto::ListDestinationsRequest {}, &self.token);
        self.client.clone().list_destinations(request).await.map(|r| r.into_inner().destinations)
    }

    /// The destination named `name`, once `done` holds for it.
    async fn status_where(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&proto::DestinationStatus) -> bool,
    ) -> proto::DestinationStatus {
        eventually(what, async || {
            let all = self.list().await.map_err(|status| format!("{status:?}"))?;
            let found = all.into_iter().find(|d| d.name == name).ok_or("no such destination")?;
            if done(&found) { Ok(found) } else { Err(format!("{found:?}")) }
        })
        .await
    }

    async fn pause(&self, destination: &str) -> Result<proto::PauseDestinationResponse, tonic::Status> {
        let request = with_token(proto::PauseDestinationRequest { destination: destination.into() }, &self.token);
        self.client.clone().pause_destination(request).await.map(|r| r.into_inner())
    }

    async fn resume(&self, destination: &str) -> Result<proto::ResumeDestinationResponse, tonic::Status> {
        let request = with_token(proto::ResumeDestinationRequest { destination: destination.into() }, &self.token);
        self.client.clone().resume_destination(request).await.map(|r| r.into_inner())
    }

    async fn deliveries(&self, destination: &str, dead: bool) -> Result<proto::ListDeliveriesResponse, tonic::Status> {
        let request =
            with_token(proto::ListDeliveriesRequest { destination: destination.into(), limit: 0, dead }, &self.token);
        self.client.clone().list_deliveries(request).await.map(|r| r.into_inner())
    }

    async fn show(&self, event_id: &str) -> Result<Vec<proto::EventDelivery>, tonic::Status> {
        let request = with_token(proto::ShowDeliveryRequest { event_id: event_id.into() }, &self.token);
        self.client.clone().show_delivery(request).await.map(|r| r.into_inner().deliveries)
    }

    async fn retry_dead(&self, destination: &str) -> Result<Option<proto::ReplayJob>, tonic::Status> {
        let request = with_token(proto::RetryDeadRequest { destination: destination.into() }, &self.token);
        self.client.clone().retry_dead(request).await.map(|r| r.into_inner().job)
    }

    async fn replay_from(&self, destination: &str, from: u64) -> Result<proto::ReplayJob, tonic::Status> {
        let request = proto::ReplayRequest {
            destination: destination.into(),
            start: Some(replay_request::Start::FromPosition(from)),
            end: None,
        };
        self.client.clone().replay(with_token(request, &self.token)).await.map(|r| r.into_inner())
    }
}

/// A webhook destination to `stub`, retrying quickly.
fn webhook(name: &str, stub: &Stub) -> proto::CreateDestinationRequest {
    proto::CreateDestinationRequest {
        name: name.into(),
        adapter: "webhook".into(),
        settings_json: json!({ "url": format!("http://{}/hook", stub.addr) }).to_string(),
        initial_backoff_ms: Some(50),
        max_backoff_ms: Some(200),
        ..proto::CreateDestinationRequest::default()
    }
}

/// Sends `messages` to `/v1/batch` with the server's write key.
async fn send(server: &Server, messages: Vec<Value>) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.http))
        .basic_auth(server.write_key.as_ref().unwrap(), Some(""))
        .json(&json!({ "batch": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn track(message_id: &str) -> Value {
    json!({ "type": "track", "messageId": message_id, "userId": "u-1", "event": "Item Viewed" })
}

/// The event id onepd gives a message of the default workspace.
fn event_id(server: &Server, message_id: &str) -> String {
    let workspace = WorkspaceId(server.workspace.as_ref().unwrap().parse::<Uuid>().unwrap());
    EventId::for_message(workspace, message_id).to_string()
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, what: &str) -> tonic::Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("{what}: expected {code:?}, found {other:?}"),
    }
}

async fn the_admin_service_does_what_the_cli_does(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Vec<String> = url.map(|url| vec!["--database-url".to_owned(), url.to_owned()]).unwrap_or_default();
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let cli = |args: &[&str]| onepd_json(dir.path(), &[args, &store_refs[..]].concat());
    let server = Server::start(dir.path(), &store_refs);
    let admin = Admin::connect(&server, server.admin_token.as_ref().unwrap()).await;
    let stub = Stub::start().await;

    // Settings a built-in adapter cannot use are refused before anything is recorded.
    let refused = assert_code(
        admin.create(proto::CreateDestinationRequest { settings_json: "{}".into(), ..webhook("hook", &stub) }).await,
        Code::InvalidArgument,
        "a webhook without a url",
    );
    assert!(refused.message().contains("webhook"), "{refused:?}");
    let refused = assert_code(
        admin
            .create(proto::CreateDestinationRequest { adapter: "carrier_pigeon".into(), ..webhook("hook", &stub) })
            .await,
        Code::InvalidArgument,
        "an unknown adapter",
    );
    assert!(refused.message().starts_with("adapter: "), "{refused:?}");

    let created = admin.create(webhook("hook", &stub)).await.expect("the webhook destination is created");
    assert_eq!((created.name.as_str(), created.adapter.as_str()), ("hook", "webhook"));
    assert!(created.start > 1, "a destination from now starts after the head: {created:?}");
    let taken = assert_code(admin.create(webhook("hook", &stub)).await, Code::InvalidArgument, "a name taken");
    assert!(taken.message().contains("exists already"), "{taken:?}");

    let ids: Vec<String> = ["a-1", "a-2", "a-3"].iter().map(|m| event_id(&server, m)).collect();
    send(&server, ["a-1", "a-2", "a-3"].iter().map(|m| track(m)).collect()).await;
    stub.wait_for(&ids, 1, "the three events reach the webhook").await;

    let status = admin.status_where("hook", "the ledger counts three deliveries", |d| d.delivered == 3).await;
    assert_eq!(status.destination_id, created.destination_id);
    assert_eq!(status.state(), DestinationState::Running);
    assert_eq!((status.adapter.as_str(), status.url.as_deref(), status.dead_letters), ("webhook", None, 0));
    assert!(status.attempts >= 1 && status.checkpoint > created.start, "{status:?}");
    assert!(status.open_job_ids.is_empty(), "{status:?}");

    let listed = admin.deliveries("hook", false).await.unwrap();
    assert!(listed.dead_letters.is_empty());
    assert!(!listed.attempts.is_empty());
    assert_eq!(listed.attempts.iter().map(|a| a.events).sum::<u64>(), 3, "{listed:?}");
    for attempt in &listed.attempts {
        assert_eq!((attempt.run.as_str(), attempt.attempt), ("live", 1), "{attempt:?}");
        assert!(attempt.failed.is_empty() && attempt.response.starts_with("delivered"), "{attempt:?}");
        assert!(onepd_domain::Timestamp::parse_rfc3339(&attempt.at).is_some(), "{attempt:?}");
    }

    let shown = admin.show(&ids[1]).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!((shown[0].destination.as_str(), shown[0].outcome.as_str()), ("hook", "delivered"));
    assert_eq!(shown[0].reason, None);
    assert_eq!(shown[0].attempt.as_ref().unwrap().run, "live");
    assert_code(admin.show(&Uuid::new_v4().to_string()).await, Code::NotFound, "an event never delivered");
    assert_code(admin.show("not-a-uuid").await, Code::InvalidArgument, "an event id that is no UUID");

    // Pausing and resuming, by name and by id, as `onepd destination pause|resume`.
    let paused = admin.pause("hook").await.unwrap();
    assert_eq!(paused.destination_id, created.destination_id);
    let again = assert_code(admin.pause("hook").await, Code::InvalidArgument, "pausing twice");
    assert!(again.message().contains("paused already"), "{again:?}");
    let status = admin.status_where("hook", "the destination shows paused", |_| true).await;
    assert_eq!(status.state(), DestinationState::Paused);
    admin.resume(&created.destination_id).await.unwrap();
    let status = admin.status_where("hook", "the destination shows running", |_| true).await;
    assert_eq!(status.state(), DestinationState::Running);
    assert_code(admin.resume("hook").await, Code::InvalidArgument, "resuming a running destination");
    assert_code(admin.pause("nowhere").await, Code::NotFound, "pausing a destination that does not exist");

    // A replay from the start sends every event again, beside live delivery.
    let job = admin.replay_from("hook", 1).await.unwrap();
    assert_eq!((job.destination_id.as_str(), job.from, job.count), (created.destination_id.as_str(), 1, 0));
    assert!(job.to >= status.checkpoint - 1, "{job:?}");
    stub.wait_for(&ids, 2, "the replay sends the events again").await;
    let status =
        admin.status_where("hook", "the replay job completes", |d| d.open_job_ids.is_empty() && d.delivered == 6).await;
    assert_eq!(status.dead_letters, 0);
    let replayed = admin.deliveries("hook", false).await.unwrap();
    assert!(replayed.attempts.iter().any(|a| a.run == format!("job {}", job.job_id)), "{replayed:?}");
    assert_code(admin.replay_from("hook", 0).await, Code::InvalidArgument, "a replay from position 0");
    // A time window that holds no event (the future) queues nothing and says so.
    let future = prost_types::Timestamp { seconds: 4_102_444_800, nanos: 0 };
    let request = proto::ReplayRequest {
        destination: "hook".into(),
        start: Some(replay_request::Start::FromTime(future)),
        end: None,
    };
    let empty = admin.client.clone().replay(with_token(request, &admin.token)).await.unwrap().into_inner();
    assert_eq!((empty.job_id.as_str(), empty.count), ("", 0), "{empty:?}");
    assert!(empty.from > empty.to, "{empty:?}");

    // Nothing is dead-lettered, so there is nothing to retry.
    assert_eq!(admin.retry_dead("hook").await.unwrap(), None);
    assert!(admin.deliveries("hook", true).await.unwrap().dead_letters.is_empty());

    // A token of another workspace sees none of it.
    cli(&["workspace", "create", "other"]);
    let other_token = cli(&["key", "issue", "--workspace", "other", "--admin", "--scope", "admin"]);
    let other = Admin::connect(&server, other_token["key"].as_str().unwrap()).await;
    let theirs = eventually("the other workspace's token is recognized", async || {
        other.list().await.map_err(|status| format!("{status:?}"))
    })
    .await;
    assert!(theirs.is_empty(), "another workspace's destinations are listed: {theirs:?}");
    for destination in ["hook", created.destination_id.as_str()] {
        assert_code(other.pause(destination).await, Code::NotFound, "pausing another workspace's destination");
        assert_code(other.deliveries(destination, false).await, Code::NotFound, "another workspace's deliveries");
        assert_code(other.replay_from(destination, 1).await, Code::NotFound, "replaying to another workspace");
        assert_code(other.retry_dead(destination).await, Code::NotFound, "retrying another workspace's dead letters");
    }
    assert_code(other.show(&ids[0]).await, Code::NotFound, "another workspace's event");
    assert_eq!(admin.status_where("hook", "still running", |_| true).await.state(), DestinationState::Running);

    // A read-only token reads, and changes nothing.
    let read_token = cli(&["key", "issue", "--workspace", "default", "--admin", "--scope", "read"]);
    let reader = Admin::connect(&server, read_token["key"].as_str().unwrap()).await;
    let seen = eventually("the read token is recognized", async || {
        reader.list().await.map_err(|status| format!("{status:?}"))
    })
    .await;
    assert_eq!(seen.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["hook"]);
    assert_eq!(reader.show(&ids[0]).await.unwrap().len(), 2, "the live attempt and the replay");
    let denied = assert_code(
        reader.create(webhook("second", &stub)).await,
        Code::PermissionDenied,
        "creating with a read token",
    );
    assert!(denied.message().contains("admin"), "{denied:?}");
    assert_code(reader.pause("hook").await, Code::PermissionDenied, "pausing with a read token");
    assert_code(reader.replay_from("hook", 1).await, Code::PermissionDenied, "replaying with a read token");
    let mut anonymous = AdminServiceClient::new(server.channel().await);
    let refused = anonymous.list_destinations(proto::ListDestinationsRequest {}).await;
    assert_code(refused, Code::Unauthenticated, "a call without a token");
    assert!(server.terminate().success(), "onepd serve exits 0 on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_creates_lists_pauses_replays_and_isolates_workspaces_on_sqlite() {
    the_admin_service_does_what_the_cli_does(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_creates_lists_pauses_replays_and_isolates_workspaces_on_postgres() {
    let db = PgDatabase::create().await;
    the_admin_service_does_what_the_cli_does(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_destination_created_over_grpc_receives_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = Admin::connect(&server, server.admin_token.as_ref().unwrap()).await;
    let ids: Vec<String> = ["b-1", "b-2"].iter().map(|m| event_id(&server, m)).collect();
    send(&server, ["b-1", "b-2"].iter().map(|m| track(m)).collect()).await;
    let stub = Stub::start().await;
    let request = proto::CreateDestinationRequest { from: StartFrom::Beginning.into(), ..webhook("backfill", &stub) };
    let created = admin.create(request).await.unwrap();
    assert_eq!(created.start, 1);
    stub.wait_for(&ids, 1, "the backfill reaches the webhook").await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_admin_service_and_only_what_the_server_serves() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let request = tonic_health::pb::HealthCheckRequest { service: "onepd.admin.v1.AdminService".into() };
    let status = health.check(request).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "onepd.admin.v1.AdminService",
            "onepd.audiences.v1.AudienceService",
            "onepd.audit.v1.AuditService",
            "onepd.import.v1.ImportService",
            "onepd.ingest.v1.IngestService",
            "onepd.profiles.v1.ProfileService",
        ]
    );
    drop((health, reflection, responses));
    assert!(server.terminate().success());
}
