//! Profiles end to end: messages sent to `onepd serve` over the Segment HTTP
//! API, then read back as unified profiles through the gRPC ProfileService,
//! the HTTP Profile API and the CLI, once the background projection has
//! caught up.
//!
//! Each test starts one server and plays one scenario through it. The
//! projection runs behind ingest, so every read that follows a write waits
//! with [`eventually`] until the answer it expects appears (or fails after
//! ten seconds with the last answer seen). Scenarios that touch storage
//! (merging, limits, blocking with a rebuild, point-in-time reads, a
//! rebuild from the CLI) run on SQLite and on PostgreSQL.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use onepd_domain::identity::ProfileId;
use onepd_domain::{EventId, WorkspaceId};
use onepd_proto::audiences::v1 as ab;
use onepd_proto::audiences::v1::audience_service_client::AudienceServiceClient;
use onepd_proto::profiles::v1 as pb;
use onepd_proto::profiles::v1::profile_service_client::ProfileServiceClient;
use serde_json::{Value, json};
use support::{PgDatabase, Server, with_token};
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

/// How long the projection may take to reflect a write.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Polls `check` until it gives a value, failing the test once [`CATCH_UP`]
/// has passed with `what` and the last thing `check` saw.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not so within {} s; last saw {last}", CATCH_UP.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A running server with the default workspace's credentials, and where
/// its store is, so the CLI can be pointed at it.
struct Deployment {
    // Declared first so it is dropped (killed) before the database.
    server: Server,
    /// Reads the default workspace's profiles.
    reader: Reader,
    write_key: String,
    /// The id of the default workspace's `http` source.
    source_id: String,
    /// The flags that point the CLI at the server's store: none for SQLite,
    /// whose file the CLI finds in `./data` as the server does.
    store_args: Vec<String>,
    _database: Option<PgDatabase>,
    dir: tempfile::TempDir,
}

impl Deployment {
    async fn sqlite() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[]);
        Deployment::over(server, dir, None, Vec::new()).await
    }

    async fn postgres() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let database = PgDatabase::create().await;
        let server = Server::start(dir.path(), &["--database-url", &database.url]);
        let store_args = vec!["--database-url".to_owned(), database.url.clone()];
        Deployment::over(server, dir, Some(database), store_args).await
    }

    async fn over(
        server: Server,
        dir: tempfile::TempDir,
        database: Option<PgDatabase>,
        store_args: Vec<String>,
    ) -> Deployment {
        let source_id = server
            .banner
            .iter()
            .find_map(|line| line.trim().strip_prefix("http source").map(|rest| rest.trim().to_owned()))
            .expect("the banner names the http source");
        let reader = Reader::connect(
            &server,
            server.workspace.clone().expect("the banner names the default workspace"),
            server.admin_token.clone().expect("the banner prints an admin token"),
        )
        .await;
        let write_key = server.write_key.clone().expect("the banner prints a write key");
        Deployment { server, reader, write_key, source_id, store_args, _database: database, dir }
    }

    /// Sends `messages` as one Segment batch with the default write key.
    async fn send(&self, messages: Vec<Value>) {
        send_batch(&self.server, &self.write_key, messages).await;
    }

    /// The id of the event an ingested message with `message_id` became.
    fn event_id(&self, message_id: &str) -> String {
        event_id_in(&self.reader.workspace, message_id)
    }

    /// Runs `onepd <args>` against the server's store.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.store_args.iter().map(String::as_str));
        support::onepd(self.dir.path(), &all)
    }

    /// Runs `onepd <args> --json` against the server's store and parses what
    /// it printed, failing the test when it exits non-zero.
    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.store_args.iter().map(String::as_str));
        support::onepd_json(self.dir.path(), &all)
    }

    fn stop(self) {
        let Deployment { server, .. } = self;
        assert!(server.terminate().success(), "onepd serve exits 0 on SIGTERM");
    }
}

/// Sends `messages` as one batch to `POST /v1/batch` with `write_key`,
/// retrying while the key is not recognized yet (a key issued by the CLI
/// takes effect once the server has followed the log to it).
async fn send_batch(server: &Server, write_key: &str, messages: Vec<Value>) {
    let request = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.http))
        .basic_auth(write_key, Some(""))
        .json(&json!({ "batch": messages }));
    let body: Value = eventually("the write key is accepted", async || {
        let response = request.try_clone().unwrap().send().await.map_err(|err| err.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|err| err.to_string())?;
        match status.as_u16() {
            200 => Ok(body),
            401 => Err(format!("401 {body}")),
            other => panic!("POST /v1/batch answered {other}: {body}"),
        }
    })
    .await;
    assert_eq!(body["success"], true, "{body}");
    assert!(body.get("rejected").is_none_or(|rejected| rejected.as_array().is_some_and(Vec::is_empty)), "{body}");
}

fn event_id_in(workspace: &str, message_id: &str) -> String {
    EventId::for_message(WorkspaceId(Uuid::parse_str(workspace).unwrap()), message_id).to_string()
}

/// The deterministic id of the profile the event of `message_id` created.
fn profile_created_by(workspace: &str, message_id: &str) -> String {
    let workspace = WorkspaceId(Uuid::parse_str(workspace).unwrap());
    ProfileId::created_by(workspace, EventId::for_message(workspace, message_id)).to_string()
}

fn page(message_id: &str, anonymous_id: &str, name: &str) -> Value {
    json!({ "type": "page", "messageId": message_id, "anonymousId": anonymous_id, "name": name })
}

fn identify(message_id: &str, user_id: &str, anonymous_id: Option<&str>, traits: Value) -> Value {
    let mut message = json!({ "type": "identify", "messageId": message_id, "userId": user_id, "traits": traits });
    if let Some(anonymous_id) = anonymous_id {
        message["anonymousId"] = json!(anonymous_id);
    }
    message
}

fn track(message_id: &str, user_id: &str, event: &str) -> Value {
    json!({ "type": "track", "messageId": message_id, "userId": user_id, "event": event })
}

/// Reads one workspace's profiles with one admin token, over gRPC and HTTP.
#[derive(Clone)]
struct Reader {
    grpc: ProfileServiceClient<Channel>,
    http: reqwest::Client,
    base: String,
    workspace: String,
    token: String,
}

impl Reader {
    async fn connect(server: &Server, workspace: String, token: String) -> Reader {
        Reader {
            grpc: ProfileServiceClient::new(server.channel().await),
            http: reqwest::Client::new(),
            base: server.http.clone(),
            workspace,
            token,
        }
    }

    async fn get(&self, kind: &str, value: &str) -> Result<pb::Profile, Status> {
        self.get_request(pb::GetProfileRequest {
            profile: Some(pb::get_profile_request::Profile::Identifier(identifier(kind, value))),
            as_of: None,
        })
        .await
    }

    async fn get_as_of(&self, kind: &str, value: &str, position: u64) -> Result<pb::Profile, Status> {
        self.get_request(pb::GetProfileRequest {
            profile: Some(pb::get_profile_request::Profile::Identifier(identifier(kind, value))),
            as_of: Some(pb::get_profile_request::AsOf::AsOfPosition(position)),
        })
        .await
    }

    async fn get_as_of_time(
        &self,
        kind: &str,
        value: &str,
        time: std::time::SystemTime,
    ) -> Result<pb::Profile, Status> {
        let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap();
        let time =
            prost_types::Timestamp { seconds: since_epoch.as_secs() as i64, nanos: since_epoch.subsec_nanos() as i32 };
        self.get_request(pb::GetProfileRequest {
            profile: Some(pb::get_profile_request::Profile::Identifier(identifier(kind, value))),
            as_of: Some(pb::get_profile_request::AsOf::AsOfTime(time)),
        })
        .await
    }

    async fn get_by_id(&self, id: &str) -> Result<pb::Profile, Status> {
        self.get_request(pb::GetProfileRequest {
            profile: Some(pb::get_profile_request::Profile::ProfileId(id.into())),
            as_of: None,
        })
        .await
    }

    async fn get_request(&self, request: pb::GetProfileRequest) -> Result<pb::Profile, Status> {
        Ok(self.grpc.clone().get_profile(with_token(request, &self.token)).await?.into_inner())
    }

    /// The profile holding `kind:value`, once `settled` holds of it.
    async fn profile_where(
        &self,
        kind: &str,
        value: &str,
        what: &str,
        settled: impl Fn(&pb::Profile) -> bool,
    ) -> pb::Profile {
        eventually(what, async || match self.get(kind, value).await {
            Ok(profile) if settled(&profile) => Ok(profile),
            Ok(profile) => Err(format!("{profile:?}")),
            Err(status) => Err(format!("{status:?}")),
        })
        .await
    }

    /// Waits until no profile holds `kind:value`.
    async fn until_not_found(&self, kind: &str, value: &str, what: &str) {
        eventually(what, async || match self.get(kind, value).await {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await
    }

    async fn timeline(&self, kind: &str, value: &str, before: u64, limit: u32) -> pb::GetTimelineResponse {
        let request = pb::GetTimelineRequest {
            profile: Some(pb::get_timeline_request::Profile::Identifier(identifier(kind, value))),
            before,
            limit,
        };
        self.grpc.clone().get_timeline(with_token(request, &self.token)).await.expect("GetTimeline").into_inner()
    }

    async fn explain(&self, a: (&str, &str), b: (&str, &str)) -> Result<pb::ExplainMergeResponse, Status> {
        let request = pb::ExplainMergeRequest { a: Some(identifier(a.0, a.1)), b: Some(identifier(b.0, b.1)) };
        Ok(self.grpc.clone().explain_merge(with_token(request, &self.token)).await?.into_inner())
    }

    async fn merges(&self, kind: &str, value: &str) -> pb::ListMergesResponse {
        let request = pb::ListMergesRequest {
            profile: Some(pb::list_merges_request::Profile::Identifier(identifier(kind, value))),
        };
        self.grpc.clone().list_merges(with_token(request, &self.token)).await.expect("ListMerges").into_inner()
    }

    /// `GET /v1/spaces/{workspace}/collections/users/profiles/{id}/{resource}`
    /// with this reader's token as the Basic user name.
    async fn http_get(&self, id: &str, resource_and_query: &str) -> (u16, Value) {
        self.http_get_in(&self.workspace, id, resource_and_query).await
    }

    /// The same, naming another workspace in the path.
    async fn http_get_in(&self, workspace: &str, id: &str, resource_and_query: &str) -> (u16, Value) {
        let url = format!("{}/v1/spaces/{workspace}/collections/users/profiles/{id}/{resource_and_query}", self.base);
        let response = self.http.get(url).basic_auth(&self.token, Some("")).send().await.expect("GET the profile API");
        let status = response.status().as_u16();
        (status, response.json().await.expect("the profile API answers JSON"))
    }
}

fn identifier(kind: &str, value: &str) -> pb::Identifier {
    pb::Identifier { kind: kind.into(), value: value.into() }
}

/// The profile's identifiers as sorted `kind:value` texts.
fn identifiers(profile: &pb::Profile) -> Vec<String> {
    let mut all: Vec<String> = profile.identifiers.iter().map(|id| format!("{}:{}", id.kind, id.value)).collect();
    all.sort();
    all
}

fn holds(profile: &pb::Profile, kind: &str, value: &str) -> bool {
    profile.identifiers.iter().any(|id| id.kind == kind && id.value == value)
}

/// A trait's value as text, when it is a string.
fn trait_text(profile: &pb::Profile, name: &str) -> Option<String> {
    use prost_types::value::Kind;
    match profile.traits.get(name)?.value.as_ref()?.kind.as_ref()? {
        Kind::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

/// The text traits of a profile, by name.
fn text_traits(profile: &pb::Profile) -> BTreeMap<String, String> {
    profile.traits.keys().filter_map(|name| Some((name.clone(), trait_text(profile, name)?))).collect()
}

/// Anonymous pages, then an identify carrying the anonymous id, the user id
/// and an email: one profile, found by any of the three, with traits that
/// say where they came from and a timeline that pages newest first.
async fn anonymous_browsing_then_a_login_become_one_profile(deployment: Deployment) {
    let reader = &deployment.reader;
    deployment
        .send(vec![
            page("s1-page-1", "a1", "Home"),
            page("s1-page-2", "a1", "Pricing"),
            page("s1-page-3", "a1", "Signup"),
        ])
        .await;
    deployment
        .send(vec![identify("s1-identify", "u1", Some("a1"), json!({ "email": "Ann@Example.COM", "name": "Ann" }))])
        .await;

    let profile = reader
        .profile_where("email", "ann@example.com", "the login merges the browsing", |profile| profile.event_count == 4)
        .await;
    assert_eq!(identifiers(&profile), ["anonymous_id:a1", "email:ann@example.com", "user_id:u1"]);
    assert_eq!(
        profile.id,
        profile_created_by(&reader.workspace, "s1-page-1"),
        "the profile's id is derived from the event that created it: the first page"
    );
    for (kind, value) in [("user_id", "u1"), ("anonymous_id", "a1"), ("email", " Ann@Example.COM ")] {
        let same = reader.get(kind, value).await.unwrap_or_else(|status| panic!("{kind}:{value}: {status:?}"));
        assert_eq!(same.id, profile.id, "{kind}:{value} names the same profile");
        assert_eq!(identifiers(&same), identifiers(&profile));
    }

    // Traits carry their provenance: the identify's position, event and source.
    let timeline = reader.timeline("user_id", "u1", 0, 0).await;
    let identify_position = timeline.entries[0].position;
    let email = &profile.traits["email"];
    assert_eq!(trait_text(&profile, "email").as_deref(), Some("ann@example.com"), "normalized as at ingest");
    assert_eq!(trait_text(&profile, "name").as_deref(), Some("Ann"));
    assert_eq!(email.position, identify_position);
    assert_eq!(email.event_id, deployment.event_id("s1-identify"));
    assert_eq!(email.source_id, deployment.source_id);
    assert!(email.timestamp.is_some());
    assert_eq!(profile.event_counts, [("identify".to_owned(), 1), ("page".to_owned(), 3)].into());
    assert_eq!(profile.sources, std::slice::from_ref(&deployment.source_id));
    assert!(profile.first_seen.is_some() && profile.last_seen.is_some());
    assert!(profile.merges.is_empty(), "the login extended the anonymous profile; no two profiles merged");

    // The timeline: newest first, each entry naming its event.
    let names: Vec<(&str, &str)> = timeline.entries.iter().map(|e| (e.r#type.as_str(), e.name.as_str())).collect();
    assert_eq!(names, [("identify", ""), ("page", "Signup"), ("page", "Pricing"), ("page", "Home")]);
    assert!(timeline.entries.windows(2).all(|pair| pair[0].position > pair[1].position), "{timeline:?}");
    assert_eq!(timeline.entries[3].event_id, deployment.event_id("s1-page-1"));
    assert!(timeline.entries.iter().all(|entry| entry.profile_id == profile.id));
    assert_eq!(timeline.next_before, 0, "one page holds them all");

    // … a page at a time.
    let first = reader.timeline("anonymous_id", "a1", 0, 3).await;
    assert_eq!(first.entries, timeline.entries[..3]);
    assert_eq!(first.next_before, timeline.entries[2].position);
    let second = reader.timeline("anonymous_id", "a1", first.next_before, 3).await;
    assert_eq!(second.entries, timeline.entries[3..]);
    assert_eq!(second.next_before, 0, "the last page");

    // The HTTP Profile API gives the same profile.
    let (status, traits) = reader.http_get("user_id:u1", "traits").await;
    assert_eq!(status, 200, "{traits}");
    assert_eq!(traits["traits"], json!({ "email": "ann@example.com", "name": "Ann" }));
    let (_, verbose) = reader.http_get("anonymous_id:a1", "traits?verbose=true&include=email").await;
    assert_eq!(verbose["traits"]["email"]["position"], identify_position);
    assert_eq!(verbose["traits"]["email"]["event_id"], deployment.event_id("s1-identify"));
    assert_eq!(verbose["traits"]["email"]["source_id"], deployment.source_id);
    let (_, events) = reader.http_get("email:ann@example.com", "events?limit=2").await;
    let events_names: Vec<&Value> = events["data"].as_array().unwrap().iter().map(|e| &e["type"]).collect();
    assert_eq!(events_names, [&json!("identify"), &json!("page")]);
    assert_eq!(events["data"][1]["name"], "Signup");
    assert_eq!(events["cursor"]["has_more"], true);
    let (_, rest) = reader
        .http_get("email:ann@example.com", &format!("events?next={}", events["cursor"]["next"].as_str().unwrap()))
        .await;
    let rest_names: Vec<&Value> = rest["data"].as_array().unwrap().iter().map(|e| &e["name"]).collect();
    assert_eq!(rest_names, [&json!("Pricing"), &json!("Home")]);
    assert_eq!(rest["cursor"]["has_more"], false);
    let (_, external) = reader.http_get("user_id:u1", "external_ids").await;
    let mut external: Vec<String> = external["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| format!("{}:{}", id["type"].as_str().unwrap(), id["id"].as_str().unwrap()))
        .collect();
    external.sort();
    assert_eq!(external, identifiers(&profile));
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_browsing_then_a_login_become_one_profile_on_sqlite() {
    anonymous_browsing_then_a_login_become_one_profile(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_browsing_then_a_login_become_one_profile_on_postgres() {
    anonymous_browsing_then_a_login_become_one_profile(Deployment::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_sharing_a_blocked_email_stay_apart_and_neither_holds_it() {
    let deployment = Deployment::sqlite().await;
    let reader = &deployment.reader;
    deployment
        .send(vec![
            identify("s2-1", "u1", None, json!({ "email": "test@test.com" })),
            identify("s2-2", "u2", None, json!({ "email": "test@test.com" })),
        ])
        .await;
    let u2 = reader.profile_where("user_id", "u2", "u2 gets a profile", |_| true).await;
    let u1 = reader.get("user_id", "u1").await.expect("u1 has a profile");
    assert_ne!(u1.id, u2.id);
    assert_eq!(identifiers(&u1), ["user_id:u1"]);
    assert_eq!(identifiers(&u2), ["user_id:u2"]);
    let email = reader.get("email", "test@test.com").await.unwrap_err();
    assert_eq!(email.code(), Code::NotFound);
    assert_eq!(email.message(), "profile: no profile holds email:test@test.com");
    let apart = reader.explain(("user_id", "u1"), ("user_id", "u2")).await.unwrap();
    assert!(!apart.linked);
    assert_eq!((apart.a_profile_id.as_str(), apart.b_profile_id.as_str()), (u1.id.as_str(), u2.id.as_str()));
    let (status, body) = reader.http_get("email:test@test.com", "traits").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    deployment.stop();
}

/// Two identifies share an email but carry different user ids: the user_id
/// limit of 1 keeps them apart, and the email (of lower priority) stays with
/// the profile that had it.
async fn a_user_id_limit_stops_a_merge_through_a_shared_email(deployment: Deployment) {
    let reader = &deployment.reader;
    deployment.send(vec![identify("s3-1", "u1", None, json!({ "email": "shared@example.com" }))]).await;
    deployment.send(vec![identify("s3-2", "u2", None, json!({ "email": "shared@example.com" }))]).await;
    let u2 = reader.profile_where("user_id", "u2", "u2 gets a profile", |_| true).await;
    let u1 = reader.get("user_id", "u1").await.expect("u1 has a profile");
    assert_ne!(u1.id, u2.id, "two user ids never share a profile");
    assert_eq!(identifiers(&u1), ["email:shared@example.com", "user_id:u1"]);
    assert_eq!(identifiers(&u2), ["user_id:u2"], "the email was left out of u2's event");
    assert_eq!(u2.id, profile_created_by(&reader.workspace, "s3-2"));
    assert_eq!(reader.get("email", "shared@example.com").await.unwrap().id, u1.id);
    let merges = reader.merges("user_id", "u2").await;
    assert_eq!(merges.profile_id, u2.id);
    assert!(merges.merges.is_empty(), "{merges:?}");
    assert!(reader.merges("user_id", "u1").await.merges.is_empty());
    let explained = reader.explain(("email", "shared@example.com"), ("user_id", "u2")).await.unwrap();
    assert!(!explained.linked, "{explained:?}");
    assert_eq!(explained.a_profile_id, u1.id);
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_limit_stops_a_merge_through_a_shared_email_on_sqlite() {
    a_user_id_limit_stops_a_merge_through_a_shared_email(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_limit_stops_a_merge_through_a_shared_email_on_postgres() {
    a_user_id_limit_stops_a_merge_through_a_shared_email(Deployment::postgres().await).await;
}

/// One user browses on two devices and logs in on both; blocking the second
/// device's anonymous id afterwards rebuilds the profiles without it, and
/// unblocking it merges it back.
async fn blocking_an_identifier_after_the_fact_splits_the_profile_until_unblocked(deployment: Deployment) {
    let reader = &deployment.reader;
    deployment
        .send(vec![
            page("s4-page-a1", "a1", "Home"),
            identify("s4-login-a1", "u1", Some("a1"), json!({ "email": "ann@example.com" })),
        ])
        .await;
    deployment.send(vec![page("s4-page-a2", "a2", "Home"), identify("s4-login-a2", "u1", Some("a2"), json!({}))]).await;
    let merged = reader
        .profile_where("user_id", "u1", "both devices join u1's profile", |profile| {
            holds(profile, "anonymous_id", "a2")
        })
        .await;
    assert_eq!(identifiers(&merged), ["anonymous_id:a1", "anonymous_id:a2", "email:ann@example.com", "user_id:u1"]);
    assert_eq!(merged.id, profile_created_by(&reader.workspace, "s4-page-a1"), "the oldest profile survives");
    assert_eq!(merged.merges.len(), 1, "{merged:?}");
    assert_eq!(merged.merges[0].absorbed, profile_created_by(&reader.workspace, "s4-page-a2"));
    assert_eq!(reader.get("anonymous_id", "a2").await.unwrap().id, merged.id);

    let blocked = deployment.cli_json(&["identity", "block", "anonymous_id:a2", "--reason", "shared kiosk"]);
    assert!(blocked["position"].as_u64().is_some(), "{blocked}");
    reader.until_not_found("anonymous_id", "a2", "the blocked anonymous id is in no profile").await;
    let split = reader.get("user_id", "u1").await.expect("u1 keeps its profile");
    assert_eq!(identifiers(&split), ["anonymous_id:a1", "email:ann@example.com", "user_id:u1"]);
    assert_eq!(split.id, merged.id, "the rebuild gives the surviving profile the same id");
    assert!(split.merges.is_empty(), "{split:?}");
    assert_eq!(split.event_counts.get("page"), Some(&1), "the blocked device's page is attributed to nobody");
    let (status, body) = reader.http_get("anonymous_id:a2", "traits").await;
    assert_eq!(status, 404, "{body}");

    let unblocked = deployment.cli_json(&["identity", "unblock", "anonymous_id:a2"]);
    assert!(unblocked["position"].as_u64() > blocked["position"].as_u64(), "{unblocked}");
    let again = reader
        .profile_where("anonymous_id", "a2", "the unblocked anonymous id joins u1 again", |profile| {
            profile.id == merged.id
        })
        .await;
    assert_eq!(identifiers(&again), identifiers(&merged));
    assert_eq!(again.event_counts, merged.event_counts);
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_an_identifier_after_the_fact_splits_the_profile_until_unblocked_on_sqlite() {
    blocking_an_identifier_after_the_fact_splits_the_profile_until_unblocked(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_an_identifier_after_the_fact_splits_the_profile_until_unblocked_on_postgres() {
    blocking_an_identifier_after_the_fact_splits_the_profile_until_unblocked(Deployment::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_merge_names_the_event_that_linked_two_identifiers() {
    let deployment = Deployment::sqlite().await;
    let reader = &deployment.reader;
    deployment.send(vec![identify("login-7f3a", "u1", Some("a1"), json!({}))]).await;
    deployment.send(vec![identify("s5-other", "u2", None, json!({}))]).await;
    reader.profile_where("user_id", "u2", "both identifies are projected", |_| true).await;
    let profile = reader.get("anonymous_id", "a1").await.unwrap();

    let explained = reader.explain(("anonymous_id", "a1"), ("user_id", "u1")).await.unwrap();
    assert!(explained.linked, "{explained:?}");
    assert_eq!(explained.profile_id, profile.id);
    assert_eq!((&explained.a_profile_id, &explained.b_profile_id), (&profile.id, &profile.id));
    assert_eq!(explained.links.len(), 1, "{explained:?}");
    let link = &explained.links[0];
    assert_eq!(link.event_id, deployment.event_id("login-7f3a"));
    assert!(link.position > 0);
    assert_eq!(link.position, reader.timeline("user_id", "u1", 0, 0).await.entries[0].position);
    assert_eq!(link.from, Some(identifier("user_id", "u1")), "a link starts at the event's anchor");
    assert_eq!(link.to, Some(identifier("anonymous_id", "a1")));
    assert_eq!(link.source_id, deployment.source_id);
    assert_eq!(link.rule, "seen together");

    let unrelated = reader.explain(("anonymous_id", "a1"), ("user_id", "u2")).await.unwrap();
    assert!(!unrelated.linked);
    assert!(unrelated.links.is_empty() && unrelated.profile_id.is_empty(), "{unrelated:?}");
    assert_eq!(unrelated.a_profile_id, profile.id);
    assert_eq!(unrelated.b_profile_id, reader.get("user_id", "u2").await.unwrap().id);
    let unknown = reader.explain(("anonymous_id", "a1"), ("user_id", "nobody")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(unknown.message(), "b: no profile holds user_id:nobody");

    // The CLI explains the same way: exit 0 when linked, 1 when not.
    let cli = deployment.cli_json(&["profile", "explain", "--a", "anonymous_id:a1", "--b", "user_id:u1"]);
    assert_eq!(cli["linked"], true);
    assert_eq!(cli["profile_id"], profile.id);
    assert_eq!(cli["links"][0]["event_id"], deployment.event_id("login-7f3a"));
    let apart = deployment.cli(&["profile", "explain", "--a", "anonymous_id:a1", "--b", "user_id:u2", "--json"]);
    assert_eq!(apart.status.code(), Some(1), "{}", String::from_utf8_lossy(&apart.stderr));
    let apart: Value = serde_json::from_slice(&apart.stdout).unwrap();
    assert_eq!(apart["linked"], false);
    deployment.stop();
}

/// u1 was seen on one device; a1 browses on another, then logs in as u1 with
/// a plan: read as of the last page, a1's profile is the anonymous one.
async fn a_point_in_time_read_returns_the_profile_as_it_stood_before_the_merge(deployment: Deployment) {
    let reader = &deployment.reader;
    deployment.send(vec![track("s6-signup", "u1", "Signed Up")]).await;
    deployment.send(vec![page("s6-page-1", "a1", "Home"), page("s6-page-2", "a1", "Pricing")]).await;
    let anonymous =
        reader.profile_where("anonymous_id", "a1", "the pages are projected", |profile| profile.event_count == 2).await;
    let before_login = reader.timeline("anonymous_id", "a1", 0, 0).await.entries[0].position;
    // Every event so far was recorded before this instant, the login after it.
    let between = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    deployment.send(vec![identify("s6-login", "u1", Some("a1"), json!({ "plan": "pro" }))]).await;
    let user_profile = profile_created_by(&reader.workspace, "s6-signup");
    let now = reader
        .profile_where("anonymous_id", "a1", "the login merges a1 into u1", |profile| profile.id == user_profile)
        .await;
    assert_eq!(identifiers(&now), ["anonymous_id:a1", "user_id:u1"]);
    assert_eq!(trait_text(&now, "plan").as_deref(), Some("pro"));
    assert_eq!(now.merges.len(), 1, "{now:?}");
    let merge = &now.merges[0];
    assert_eq!((&merge.survivor, &merge.absorbed), (&user_profile, &anonymous.id));
    assert_eq!(merge.event_id, deployment.event_id("s6-login"));
    assert_eq!(now.event_count, 4);
    let by_old_id = reader.get_by_id(&anonymous.id).await.expect("an absorbed profile's id names the survivor");
    assert_eq!(by_old_id.id, user_profile);
    // Each event of the timeline names the profile it was attributed to then.
    let owner = |id: &str| match id {
        id if id == user_profile => "u1's profile",
        id if id == anonymous.id => "a1's profile",
        _ => "another profile",
    };
    let timeline = reader.timeline("user_id", "u1", 0, 0).await;
    let attributed: Vec<(&str, &str)> =
        timeline.entries.iter().map(|entry| (entry.r#type.as_str(), owner(&entry.profile_id))).collect();
    assert_eq!(
        attributed,
        [("identify", "u1's profile"), ("page", "a1's profile"), ("page", "a1's profile"), ("track", "u1's profile")]
    );

    let then = reader.get_as_of("anonymous_id", "a1", before_login).await.expect("a1 existed then");
    assert_eq!(then.id, anonymous.id, "the id it had then");
    assert_eq!(identifiers(&then), ["anonymous_id:a1"]);
    assert!(!then.traits.contains_key("plan"), "{then:?}");
    assert!(then.merges.is_empty(), "{then:?}");
    assert_eq!(then.event_count, 2);
    assert_eq!(then.event_counts, [("page".to_owned(), 2)].into());
    let at_time = reader.get_as_of_time("anonymous_id", "a1", between).await.expect("a1 existed then");
    assert_eq!(at_time, then, "as of a time reads the same past as as of the position then");
    let u1_then = reader.get_as_of("user_id", "u1", before_login).await.expect("u1 existed then");
    assert_eq!(u1_then.id, user_profile);
    assert_eq!(identifiers(&u1_then), ["user_id:u1"]);
    assert_eq!(u1_then.event_counts, [("Signed Up".to_owned(), 1)].into());
    let first = reader.timeline("user_id", "u1", 0, 0).await.entries.last().unwrap().position;
    let too_early = reader.get_as_of("anonymous_id", "a1", first).await.unwrap_err();
    assert_eq!(too_early.code(), Code::NotFound, "a1 was not seen before its first page");
    assert_eq!(too_early.message(), format!("profile: no profile holds anonymous_id:a1 as of position {first}"));

    // The HTTP Profile API reads the same past.
    let (status, past) = reader.http_get("anonymous_id:a1", &format!("traits?as_of={before_login}")).await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(past["traits"], json!({}));
    let (_, present) = reader.http_get("anonymous_id:a1", "traits").await;
    assert_eq!(present["traits"], json!({ "plan": "pro" }));
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_read_returns_the_profile_as_it_stood_before_the_merge_on_sqlite() {
    a_point_in_time_read_returns_the_profile_as_it_stood_before_the_merge(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_read_returns_the_profile_as_it_stood_before_the_merge_on_postgres() {
    a_point_in_time_read_returns_the_profile_as_it_stood_before_the_merge(Deployment::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_never_reads_the_profiles_of_another_workspace() {
    let deployment = Deployment::sqlite().await;
    let default = &deployment.reader;
    let created = deployment.cli_json(&["workspace", "create", "other"]);
    let other_workspace = created["workspace_id"].as_str().unwrap().to_owned();
    let source = deployment.cli_json(&["source", "create", "--workspace", "other", "web", "--kind", "http"]);
    let other_key = source["write_key"].as_str().unwrap().to_owned();
    let read_token = deployment.cli_json(&["key", "issue", "--workspace", "other", "--admin", "--scope", "read"]);
    let other =
        Reader::connect(&deployment.server, other_workspace.clone(), read_token["key"].as_str().unwrap().into()).await;

    send_batch(&deployment.server, &other_key, vec![identify("s7-other", "u1", None, json!({ "name": "Other" }))])
        .await;
    let theirs = eventually("the other workspace's token reads its profile", async || {
        // A token issued by the CLI takes effect once the server has followed the log to it.
        match other.get("user_id", "u1").await {
            Ok(profile) => Ok(profile),
            Err(status) => Err(format!("{status:?}")),
        }
    })
    .await;
    assert_eq!(trait_text(&theirs, "name").as_deref(), Some("Other"));

    let by_identifier = default.get("user_id", "u1").await.unwrap_err();
    assert_eq!(by_identifier.code(), Code::NotFound, "{by_identifier:?}");
    let by_id = default.get_by_id(&theirs.id).await.unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound, "{by_id:?}");
    let (status, body) = default.http_get_in(&other_workspace, "user_id:u1", "traits").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(!body.to_string().contains("Other"), "{body}");
    let (status, body) = default.http_get("user_id:u1", "traits").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = default.http_get(&format!("profile_id:{}", theirs.id), "events").await;
    assert_eq!(status, 404, "another workspace's profile id is unknown here: {body}");
    let (status, body) = other.http_get("user_id:u1", "traits").await;
    assert_eq!((status, &body["traits"]), (200, &json!({ "name": "Other" })), "{body}");

    // The same user id in the default workspace is another person.
    deployment.send(vec![identify("s7-default", "u1", None, json!({ "name": "Default" }))]).await;
    let ours = default.profile_where("user_id", "u1", "the default workspace's u1 is projected", |_| true).await;
    assert_eq!(text_traits(&ours), [("name".to_owned(), "Default".to_owned())].into());
    assert_ne!(ours.id, theirs.id);
    let theirs_again = other.get("user_id", "u1").await.unwrap();
    assert_eq!(text_traits(&theirs_again), [("name".to_owned(), "Other".to_owned())].into());
    assert_eq!(theirs_again.id, theirs.id);
    let (status, _) = other.http_get_in(&default.workspace, "user_id:u1", "traits").await;
    assert_eq!(status, 404);

    // A token of the right workspace without the read scope is refused.
    let audit_only = deployment.cli_json(&["key", "issue", "--workspace", "other", "--admin", "--scope", "audit"]);
    let auditor =
        Reader::connect(&deployment.server, other_workspace.clone(), audit_only["key"].as_str().unwrap().into()).await;
    let refused = eventually("the audit token is known", async || match auditor.get("user_id", "u1").await {
        Err(status) if status.code() == Code::PermissionDenied => Ok(status),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert!(refused.message().contains("read"), "{refused:?}");
    let (status, body) = auditor.http_get("user_id:u1", "traits").await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")), "{body}");
    deployment.stop();
}

/// `onepd rebuild profiles` builds the read model again beside the live one
/// while the server answers from it; afterwards every answer is the same,
/// and the server follows the log into the new read model.
async fn a_rebuild_while_the_server_runs_gives_the_same_answers(deployment: Deployment) {
    let reader = &deployment.reader;
    deployment
        .send(vec![
            track("s8-signup", "u1", "Signed Up"),
            page("s8-page", "a1", "Home"),
            identify("s8-login", "u1", Some("a1"), json!({ "email": "ann@example.com", "plan": "pro" })),
            identify("s8-bob", "u2", None, json!({ "email": "bob@example.com", "name": "Bob" })),
            identify("s8-shared", "u3", None, json!({ "email": "bob@example.com" })),
        ])
        .await;
    reader.profile_where("user_id", "u3", "every message is projected", |_| true).await;
    let lookups = [
        ("user_id", "u1"),
        ("anonymous_id", "a1"),
        ("email", "ann@example.com"),
        ("user_id", "u2"),
        ("email", "bob@example.com"),
        ("user_id", "u3"),
    ];
    let mut before = Vec::new();
    for (kind, value) in lookups {
        before.push(reader.get(kind, value).await.unwrap());
    }
    assert_eq!(before[0].id, before[1].id);
    assert_eq!(before[3].id, before[4].id);
    assert_ne!(before[3].id, before[5].id);

    let rebuilt = deployment.cli_json(&["rebuild", "profiles"]);
    assert_eq!(rebuilt["projection"], "profiles");
    assert_eq!(rebuilt["profiles"], 3, "{rebuilt}");
    for ((kind, value), was) in lookups.into_iter().zip(&before) {
        let now = reader.get(kind, value).await.unwrap_or_else(|status| panic!("{kind}:{value}: {status:?}"));
        assert_eq!(now.id, was.id, "{kind}:{value}");
        assert_eq!(identifiers(&now), identifiers(was), "{kind}:{value}");
        assert_eq!(now.traits, was.traits, "{kind}:{value}");
        assert_eq!(now.event_counts, was.event_counts, "{kind}:{value}");
        assert_eq!(now.merges, was.merges, "{kind}:{value}");
    }

    // The server goes on following the log into the rebuilt read model.
    deployment.send(vec![identify("s8-after", "u4", None, json!({ "name": "Dee" }))]).await;
    let after = reader.profile_where("user_id", "u4", "a message after the rebuild is projected", |_| true).await;
    assert_eq!(trait_text(&after, "name").as_deref(), Some("Dee"));

    let http = reqwest::Client::new();
    let metrics = eventually("the metrics show the projection caught up", async || {
        let health: Value =
            http.get(format!("{}/healthz", deployment.server.http)).send().await.unwrap().json().await.unwrap();
        let head = health["head"].as_u64().unwrap();
        let metrics =
            http.get(format!("{}/metrics", deployment.server.http)).send().await.unwrap().text().await.unwrap();
        let checkpoint = format!("onepd_projection_checkpoint{{projection=\"profiles\"}} {head}");
        let lag = "onepd_projection_lag_events{projection=\"profiles\"} 0";
        if metrics.lines().any(|line| line == checkpoint) && metrics.lines().any(|line| line == lag) {
            Ok(metrics)
        } else {
            Err(format!("head {head}; {metrics}"))
        }
    })
    .await;
    assert!(metrics.contains("# TYPE onepd_projection_lag_events gauge"), "{metrics}");
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_the_server_runs_gives_the_same_answers_on_sqlite() {
    a_rebuild_while_the_server_runs_gives_the_same_answers(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_the_server_runs_gives_the_same_answers_on_postgres() {
    a_rebuild_while_the_server_runs_gives_the_same_answers(Deployment::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitting_a_profile_undoes_its_merge_and_each_part_gets_its_old_id_back() {
    let deployment = Deployment::sqlite().await;
    let reader = &deployment.reader;
    deployment
        .send(vec![
            track("s9-signup", "u1", "Signed Up"),
            page("s9-page", "a1", "Home"),
            identify("s9-login", "u1", Some("a1"), json!({ "plan": "pro" })),
        ])
        .await;
    let user_profile = profile_created_by(&reader.workspace, "s9-signup");
    let anonymous_profile = profile_created_by(&reader.workspace, "s9-page");
    reader
        .profile_where("anonymous_id", "a1", "the login merges a1 into u1", |profile| profile.id == user_profile)
        .await;

    let split = deployment.cli_json(&["identity", "split", "--profile", &user_profile]);
    assert!(split["position"].as_u64().is_some(), "{split}");
    let anonymous = reader
        .profile_where("anonymous_id", "a1", "a1 is apart again", |profile| profile.id == anonymous_profile)
        .await;
    assert_eq!(identifiers(&anonymous), ["anonymous_id:a1"]);
    assert!(anonymous.merges.is_empty());
    assert_eq!(anonymous.event_counts, [("page".to_owned(), 1)].into());
    let user = reader.get("user_id", "u1").await.unwrap();
    assert_eq!(user.id, user_profile);
    assert_eq!(identifiers(&user), ["user_id:u1"]);
    assert!(user.merges.is_empty(), "{user:?}");
    assert_eq!(trait_text(&user, "plan").as_deref(), Some("pro"), "the unlinked login still counts for u1");
    let explained = reader.explain(("anonymous_id", "a1"), ("user_id", "u1")).await.unwrap();
    assert!(!explained.linked, "{explained:?}");
    deployment.stop();
}

/// A caught-up projection reports no lag, whatever kind of event ends the
/// log: here a rejected message, which the projection has nothing to fold
/// from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_lag_returns_to_zero_when_a_rejected_message_ends_the_log() {
    let deployment = Deployment::sqlite().await;
    deployment.send(vec![identify("s10-1", "u1", None, json!({}))]).await;
    deployment.reader.profile_where("user_id", "u1", "the identify is projected", |_| true).await;
    let rejected = reqwest::Client::new()
        .post(format!("{}/v1/track", deployment.server.http))
        .basic_auth(&deployment.write_key, Some(""))
        .json(&json!({ "userId": "u1", "event": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 400, "a track without an event name is rejected, and the rejection is logged");

    // The gauges are refreshed on every commit and every second; past that,
    // they describe the log with the rejection at its end.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let http = reqwest::Client::new();
    let health: Value =
        http.get(format!("{}/healthz", deployment.server.http)).send().await.unwrap().json().await.unwrap();
    let metrics = http.get(format!("{}/metrics", deployment.server.http)).send().await.unwrap().text().await.unwrap();
    let projection: Vec<&str> = metrics.lines().filter(|line| line.starts_with("onepd_projection_")).collect();
    // FIXME: today the lag stays at 1 until the next accepted message: the
    // checkpoint is the last event folded, not the last position read.
    assert!(
        projection.contains(&"onepd_projection_lag_events{projection=\"profiles\"} 0"),
        "head {}: {projection:?}",
        health["head"]
    );
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_answers_as_before_and_folds_new_messages_into_the_same_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &[]);
    let (workspace, token) = (first.workspace.clone().unwrap(), first.admin_token.clone().unwrap());
    let key = first.write_key.clone().unwrap();
    send_batch(
        &first,
        &key,
        vec![
            page("s11-page", "a1", "Home"),
            identify("s11-login", "u1", Some("a1"), json!({ "email": "ann@example.com", "plan": "free" })),
            identify("s11-bob", "u2", None, json!({ "name": "Bob" })),
        ],
    )
    .await;
    let reader = Reader::connect(&first, workspace.clone(), token.clone()).await;
    let before = reader.profile_where("user_id", "u2", "every message is projected", |_| true).await;
    let ann_before = reader.get("anonymous_id", "a1").await.unwrap();
    assert!(first.terminate().success());

    let second = Server::start(dir.path(), &[]);
    assert_eq!(second.admin_token, None, "the existing workspace is kept");
    let reader = Reader::connect(&second, workspace, token).await;
    assert_eq!(reader.get("user_id", "u2").await.unwrap(), before);
    assert_eq!(reader.get("anonymous_id", "a1").await.unwrap(), ann_before);
    send_batch(
        &second,
        &key,
        vec![page("s11-page-2", "a1", "Pricing"), identify("s11-upgrade", "u1", None, json!({ "plan": "pro" }))],
    )
    .await;
    let ann = reader
        .profile_where("email", "ann@example.com", "the upgrade is projected", |profile| {
            trait_text(profile, "plan").as_deref() == Some("pro")
        })
        .await;
    assert_eq!(ann.id, ann_before.id);
    assert_eq!(ann.event_count, 4);
    assert_eq!(ann.event_counts, [("identify".to_owned(), 2), ("page".to_owned(), 2)].into());
    assert_eq!(trait_text(&ann, "email").as_deref(), Some("ann@example.com"), "traits from before the restart stay");
    assert!(second.terminate().success());
}

/// A buyer's two orders, two months apart: `onepd audience evaluate` says
/// the buyer meets "two orders within 90 days" now, from which events, and
/// when the older order leaves the window; as of a time between the two
/// orders' arrival they did not; a condition that does not hold exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_condition_is_evaluated_for_one_person_now_and_as_of_a_past_time() {
    let deployment = Deployment::sqlite().await;
    let reader = &deployment.reader;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let day = 24 * 3_600 * 1_000_000_i64;
    let at = |micros: i64| onepd_domain::Timestamp(micros).to_rfc3339();
    let order = |message_id: &str, days_ago: i64, revenue: f64| {
        let mut message = track(message_id, "buyer-1", "Order Completed");
        message["timestamp"] = json!(at(now - days_ago * day));
        message["properties"] = json!({"revenue": revenue, "currency": "EUR"});
        message
    };
    deployment
        .send(vec![identify("aud-id", "buyer-1", None, json!({"email": "Buyer@Example.com", "plan": "pro"}))])
        .await;
    deployment.send(vec![order("aud-order-1", 60, 120.0)]).await;
    reader.profile_where("user_id", "buyer-1", "the first order is projected", |p| p.event_count >= 2).await;
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    deployment.send(vec![order("aud-order-2", 10, 80.0)]).await;
    reader.profile_where("user_id", "buyer-1", "the second order is projected", |p| p.event_count >= 3).await;

    let rule = r#"performed "Order Completed" at least 2 times within 90 days and trait plan = "pro""#;
    let verdict = deployment.cli_json(&["audience", "evaluate", rule, "--email", "buyer@example.com"]);
    assert_eq!(verdict["holds"], true, "{verdict}");
    let orders = &verdict["explanation"]["parts"][0];
    assert_eq!(orders["found"], "2 events", "{verdict}");
    assert_eq!(orders["positions"].as_array().map(Vec::len), Some(2), "{verdict}");
    let edge = onepd_domain::Timestamp::parse_rfc3339(verdict["changes_at"].as_str().unwrap()).unwrap();
    assert_eq!(edge.0 / 1_000, (now - 60 * day + 90 * day) / 1_000, "the older order leaves the window then");

    // As of a time before the second order arrived: one order only.
    let then = deployment.cli(&["audience", "evaluate", rule, "--user-id", "buyer-1", "--at", &at(between), "--json"]);
    assert_eq!(then.status.code(), Some(1), "{}", String::from_utf8_lossy(&then.stderr));
    let then: Value = serde_json::from_slice(&then.stdout).unwrap();
    assert_eq!(then["explanation"]["parts"][0]["found"], "1 event", "{then}");

    let filtered = r#"performed "Order Completed" with revenue > 100, currency = "EUR" exactly 1 time"#;
    let verdict = deployment.cli_json(&["audience", "evaluate", filtered, "--user-id", "buyer-1"]);
    assert_eq!(verdict["holds"], true, "{verdict}");

    // Saved audiences: one naming another is the other's definition, for the same person and time.
    let buyers = r#"performed "Order Completed" at least 2 times within 90 days"#;
    assert_eq!(deployment.cli_json(&["audience", "define", "buyers", buyers])["replaced"], false);
    deployment.cli_json(&["audience", "define", "vip", r#"in audience "buyers" and trait plan = "pro""#]);
    let listed = deployment.cli_json(&["audience", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["buyers", "vip"]);
    let vip = deployment.cli_json(&["audience", "evaluate", "vip", "--audience", "--user-id", "buyer-1"]);
    assert_eq!(vip["holds"], true, "{vip}");
    assert_eq!(vip["explanation"]["parts"][0]["condition"], r#"in audience "buyers""#);
    let then =
        deployment.cli(&["audience", "evaluate", "vip", "--audience", "--user-id", "buyer-1", "--at", &at(between)]);
    assert_eq!(then.status.code(), Some(1), "not yet a buyer then: {}", String::from_utf8_lossy(&then.stdout));
    let refused = deployment.cli(&["audience", "remove", "buyers"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(r#"audience "vip" names it"#));

    // Computed traits: from the person's events, at the time asked for.
    let ltv = r#"{"event": "Order Completed", "kind": "sum", "property": "revenue", "within": {"days": 365}}"#;
    deployment.cli_json(&["computed", "define", "ltv", ltv]);
    deployment.cli_json(&["computed", "define", "orders", r#"{"event": "Order Completed", "kind": "count"}"#]);
    let values = deployment.cli_json(&["computed", "get", "--user-id", "buyer-1"]);
    assert_eq!(values["computed_traits"], json!({"ltv": 200, "orders": 2}), "{values}");
    let values = deployment.cli_json(&["computed", "get", "--user-id", "buyer-1", "--at", &at(between)]);
    assert_eq!(values["computed_traits"], json!({"ltv": 120, "orders": 1}), "{values}");
    deployment.cli_json(&["audience", "define", "big spenders", "computed ltv > 150"]);
    let big = deployment.cli_json(&["audience", "evaluate", "big spenders", "--audience", "--user-id", "buyer-1"]);
    assert_eq!((&big["holds"], &big["explanation"]["found"]), (&json!(true), &json!("value 200")), "{big}");
    let then = deployment.cli(&[
        "audience",
        "evaluate",
        "big spenders",
        "--audience",
        "--user-id",
        "buyer-1",
        "--at",
        &at(between),
    ]);
    assert_eq!(then.status.code(), Some(1));
    let profile = deployment.cli_json(&["profile", "get", "--user-id", "buyer-1"]);
    assert_eq!(profile["computed_traits"], json!({"ltv": 200, "orders": 2}), "{profile}");
    assert_eq!(profile["audiences"], json!(["big spenders", "buyers", "vip"]), "{profile}");
    let then = deployment.cli_json(&["profile", "get", "--user-id", "buyer-1", "--as-of", &at(between)]);
    assert_eq!((&then["computed_traits"]["ltv"], &then["audiences"]), (&json!(120), &json!([])), "{then}");
    let (status, traits) = reader.http_get("user_id:buyer-1", "traits").await;
    assert_eq!((status, &traits["traits"]["ltv"], &traits["traits"]["plan"]), (200, &json!(200), &json!("pro")));
    let (_, verbose) = reader.http_get("user_id:buyer-1", "traits?include=orders&verbose=true").await;
    assert_eq!(verbose["traits"], json!({"orders": {"value": 2, "computed": true}}), "{verbose}");
    // Each audience the person meets is a trait `true`, as Segment shows them.
    assert_eq!((&traits["traits"]["vip"], &traits["traits"]["big spenders"]), (&json!(true), &json!(true)), "{traits}");
    let (_, verbose) = reader.http_get("user_id:buyer-1", "traits?include=vip&verbose=true").await;
    assert_eq!(verbose["traits"], json!({"vip": {"value": true, "audience": true}}), "{verbose}");
    let refused = deployment.cli(&["computed", "remove", "ltv"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains(r#"audience "big spenders" reads it"#));

    let bad = deployment.cli(&["audience", "evaluate", "performed Order", "--user-id", "buyer-1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("column 11: expected an event name in quotes"));
    deployment.stop();
}

/// Three people, one order apart: `onepd audience preview` counts who meets
/// "two orders" now and as of a time before the last order arrived, with a
/// sample of their profiles, scanning every profile of the workspace.
async fn an_audience_preview_counts_the_profiles_meeting_it_now_and_as_of_a_past_time(deployment: Deployment) {
    let reader = &deployment.reader;
    let order = |message_id: &str, user: &str| {
        let mut message = track(message_id, user, "Order Completed");
        message["properties"] = json!({"revenue": 10});
        message
    };
    deployment
        .send(vec![order("pv-1", "b1"), order("pv-2", "b1"), order("pv-3", "b2"), page("pv-4", "a3", "Home")])
        .await;
    reader.profile_where("user_id", "b2", "the first orders are projected", |p| p.event_count >= 1).await;
    reader.profile_where("anonymous_id", "a3", "the page is projected", |_| true).await;
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    deployment.send(vec![order("pv-5", "b2")]).await;
    reader.profile_where("user_id", "b2", "the second order is projected", |p| p.event_count >= 2).await;
    let b1 = reader.get("user_id", "b1").await.unwrap().id;
    let b2 = reader.get("user_id", "b2").await.unwrap().id;

    let rule = r#"performed "Order Completed" at least 2 times within 30 days"#;
    let now = deployment.cli_json(&["audience", "preview", rule]);
    assert_eq!((now["size"].as_u64(), now["profiles"].as_u64()), (Some(2), Some(3)), "{now}");
    let mut sample: Vec<&str> = now["sample"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
    sample.sort();
    let mut expected = vec![b1.as_str(), b2.as_str()];
    expected.sort();
    assert_eq!(sample, expected);

    let at = onepd_domain::Timestamp(between).to_rfc3339();
    let then = deployment.cli_json(&["audience", "preview", rule, "--at", &at]);
    assert_eq!((then["size"].as_u64(), then["sample"][0].as_str()), (Some(1), Some(b1.as_str())), "{then}");

    deployment.cli_json(&["audience", "define", "repeat buyers", rule]);
    let saved = deployment.cli_json(&["audience", "preview", "repeat buyers", "--audience", "--sample", "1"]);
    assert_eq!((saved["size"].as_u64(), saved["sample"].as_array().map(Vec::len)), (Some(2), Some(1)), "{saved}");

    // The same over gRPC, with the admin token of the workspace.
    let mut audiences = AudienceServiceClient::new(deployment.server.channel().await);
    let token = &reader.token;
    let saved_target = || Some(ab::Target { target: Some(ab::target::Target::Audience("repeat buyers".into())) });
    let preview = audiences
        .preview_audience(with_token(ab::PreviewAudienceRequest { target: saved_target(), at: None, sample: 0 }, token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.size, preview.profiles, preview.sample.len()), (2, 3, 2));
    let defined = ab::DefineAudienceRequest {
        name: "one-time buyers".into(),
        condition: r#"performed "Order Completed" exactly 1 time"#.into(),
        description: String::new(),
    };
    assert!(!audiences.define_audience(with_token(defined, token)).await.unwrap().into_inner().replaced);
    let listed = audiences.list_audiences(with_token(ab::ListAudiencesRequest {}, token)).await.unwrap().into_inner();
    let names: Vec<&str> = listed.audiences.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["one-time buyers", "repeat buyers"]);
    let evaluate = |kind: &str, value: &str, name: &str| ab::EvaluateAudienceRequest {
        target: Some(ab::Target { target: Some(ab::target::Target::Audience(name.into())) }),
        profile: Some(ab::evaluate_audience_request::Profile::Identifier(identifier(kind, value))),
        at: None,
    };
    let b1_once = audiences.evaluate_audience(with_token(evaluate("user_id", "b1", "one-time buyers"), token));
    let b1_once = b1_once.await.unwrap().into_inner();
    assert!(!b1_once.holds);
    assert_eq!(b1_once.explanation.unwrap().found, "2 events");
    let nobody = audiences.evaluate_audience(with_token(evaluate("user_id", "nobody", "one-time buyers"), token));
    assert_eq!(nobody.await.unwrap_err().code(), Code::NotFound);
    let bad = ab::PreviewAudienceRequest {
        target: Some(ab::Target { target: Some(ab::target::Target::Condition("performed Order".into())) }),
        at: None,
        sample: 0,
    };
    let bad = audiences.preview_audience(with_token(bad, token)).await.unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (Code::InvalidArgument, "condition: column 11: expected an event name in quotes, found `Order`")
    );
    let unknown = ab::RemoveAudienceRequest { name: "nope".into() };
    assert_eq!(audiences.remove_audience(with_token(unknown, token)).await.unwrap_err().code(), Code::InvalidArgument);
    let spend = ab::DefineComputedTraitRequest {
        name: "spend".into(),
        definition_json: r#"{"event": "Order Completed", "kind": "sum", "property": "revenue"}"#.into(),
    };
    audiences.define_computed_trait(with_token(spend, token)).await.unwrap();
    let get = |user: &str| ab::GetComputedTraitsRequest {
        profile: Some(ab::get_computed_traits_request::Profile::Identifier(identifier("user_id", user))),
        at: None,
    };
    let b2_values = audiences.get_computed_traits(with_token(get("b2"), token)).await.unwrap().into_inner();
    assert_eq!(b2_values.values_json.get("spend").map(String::as_str), Some("20"));
    let bad =
        ab::DefineComputedTraitRequest { name: "x".into(), definition_json: r#"{"event": "x", "kind": "sum"}"#.into() };
    let bad = audiences.define_computed_trait(with_token(bad, token)).await.unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (Code::InvalidArgument, r#"computed trait "x": property: sum needs a property, found none"#)
    );
    let anonymous = audiences.list_audiences(ab::ListAudiencesRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    deployment.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_preview_counts_the_profiles_meeting_it_now_and_as_of_a_past_time_on_sqlite() {
    an_audience_preview_counts_the_profiles_meeting_it_now_and_as_of_a_past_time(Deployment::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_preview_counts_the_profiles_meeting_it_now_and_as_of_a_past_time_on_postgres() {
    an_audience_preview_counts_the_profiles_meeting_it_now_and_as_of_a_past_time(Deployment::postgres().await).await;
}

/// An audience kept up to date as a projection, every entry and exit an
/// event with its cause: "two orders in 90 days" fills from a backfill when
/// defined, a second person enters live, a merge makes a third, the clock
/// (a tick recorded in the log) moves the first out when their older order
/// turns 91 days old, and an erasure removes the second; the members as of
/// a past time and the history come from the log alone.
async fn an_audience_fills_by_backfill_changes_live_and_as_time_passes_and_its_history_is_in_the_log(
    deployment: Deployment,
) {
    const DAY: i64 = 86_400_000_000;
    let reader = &deployment.reader;
    let start = onepd_domain::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64,
    );
    let order = |message_id: &str, who: (&str, &str), days_ago: i64| {
        let mut message = json!({
            "type": "track", "messageId": message_id, "event": "Order Completed",
            "timestamp": onepd_domain::Timestamp(start.0 - days_ago * DAY).to_rfc3339(),
        });
        message[who.0] = json!(who.1);
        message
    };
    let members = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["audience", "members", "repeat buyers", "--wait"];
        args.extend_from_slice(extra);
        let found = deployment.cli_json(&args);
        let mut ids: Vec<String> =
            found["members"].as_array().unwrap().iter().map(|m| m["profile"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    deployment
        .send(vec![
            order("bf-1", ("userId", "b1"), 80),
            order("bf-2", ("userId", "b1"), 1),
            order("bf-3", ("userId", "b2"), 5),
            order("bf-4", ("anonymousId", "a3"), 3),
            order("bf-5", ("userId", "b3"), 2),
        ])
        .await;
    reader.profile_where("user_id", "b1", "b1's orders are projected", |p| p.event_count >= 2).await;
    reader.profile_where("user_id", "b3", "b3's order is projected", |p| p.event_count >= 1).await;
    reader.profile_where("anonymous_id", "a3", "a3's order is projected", |p| p.event_count >= 1).await;
    let b1 = reader.get("user_id", "b1").await.unwrap().id;
    let b2 = reader.get("user_id", "b2").await.unwrap().id;

    // Defined: a backfill from history.
    let rule = r#"performed "Order Completed" at least 2 times within 90 days"#;
    let defined = deployment.cli_json(&["audience", "define", "repeat buyers", rule]);
    assert_eq!(members(&[]), vec![b1.clone()], "the backfill finds the one person with two orders");
    // The profile API shows the person's audiences and computed traits.
    deployment.cli_json(&["computed", "define", "orders", r#"{"event": "Order Completed", "kind": "count"}"#]);
    let profile = reader.get("user_id", "b1").await.unwrap();
    assert_eq!(profile.audiences, ["repeat buyers"]);
    let orders = profile.computed_traits.get("orders").and_then(|v| v.kind.clone());
    assert_eq!(orders, Some(prost_types::value::Kind::NumberValue(2.0)), "{:?}", profile.computed_traits);
    let b2_now = reader.get("user_id", "b2").await.unwrap();
    assert!(b2_now.audiences.is_empty(), "{:?}", b2_now.audiences);

    // Live: b2's second order.
    deployment.send(vec![order("bf-6", ("userId", "b2"), 0)]).await;
    reader.profile_where("user_id", "b2", "b2's second order is projected", |p| p.event_count >= 2).await;
    assert_eq!(members(&[]), sorted(vec![b1.clone(), b2.clone()]), "b2 enters with their second order");

    // A merge: a3 and b3, one order each, are one person with two.
    deployment.send(vec![identify("bf-7", "b3", Some("a3"), json!({}))]).await;
    reader.profile_where("user_id", "b3", "a3 and b3 are merged", |p| p.event_count >= 3).await;
    let b3 = reader.get("user_id", "b3").await.unwrap().id;
    assert_eq!(members(&[]), sorted(vec![b1.clone(), b2.clone(), b3.clone()]), "the merged person enters");
    let before_tick = crate_now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Time passes: eleven days on, b1's first order is 91 days old.
    let later = onepd_domain::Timestamp(start.0 + 11 * DAY).to_rfc3339();
    let tick = deployment.cli_json(&["audience", "tick", "--at", &later]);
    assert_eq!(members(&[]), sorted(vec![b2.clone(), b3.clone()]), "b1 leaves when the window passes");
    let then = members(&["--as-of", &before_tick.to_rfc3339()]);
    assert_eq!(then, sorted(vec![b1.clone(), b2.clone(), b3.clone()]), "the members as of before the tick");

    // Why b1 is out: the condition as it reads now, and the entry and exit.
    let out = deployment.cli(&["audience", "explain", "repeat buyers", "--user-id", "b1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "not in it: exit 1");
    let explained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(explained["holds"], false);
    let steps: Vec<&str> =
        explained["history"].as_array().unwrap().iter().map(|c| c["change"].as_str().unwrap()).collect();
    assert_eq!(steps, ["entered", "exited"], "{explained}");
    let explained = deployment.cli_json(&["audience", "explain", "repeat buyers", "--user-id", "b3"]);
    assert_eq!((explained["holds"].as_bool(), explained["history"].as_array().map(Vec::len)), (Some(true), Some(1)));

    // An erasure removes b2.
    deployment.cli_json(&["forget", "--user-id", "b2"]);
    assert_eq!(members(&[]), vec![b3.clone()], "an erased person leaves");

    let history = deployment.cli_json(&["audience", "history", "--audience", "repeat buyers", "--wait"]);
    let changes: Vec<(String, String, u64)> = (history.as_array().unwrap().iter())
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_owned(),
                c["profile"].as_str().unwrap().to_owned(),
                c["cause"].as_u64().unwrap(),
            )
        })
        .collect();
    let (entered, exited) = ("entered".to_owned(), "exited".to_owned());
    let tick_position = tick["position"].as_u64().unwrap();
    assert_eq!(changes[0], (entered.clone(), b1.clone(), defined["position"].as_u64().unwrap()), "{history}");
    assert_eq!(changes[1].0, entered);
    assert_eq!(changes[1].1, b2);
    assert_eq!((&changes[2].0, &changes[2].1), (&entered, &b3));
    assert_eq!(changes[3], (exited.clone(), b1.clone(), tick_position), "{history}");
    assert_eq!((&changes[4].0, &changes[4].1), (&exited, &b2));
    assert_eq!(changes.len(), 5, "{history}");
    let why = history[3]["why"].as_str().unwrap();
    assert!(why.contains("found 1 event"), "{why}");
    assert_eq!(history[4]["why"], "erased");

    // The same over gRPC: sizes, and the members before the tick.
    let mut audiences = AudienceServiceClient::new(deployment.server.channel().await);
    let token = &reader.token;
    let listed = audiences.list_audiences(with_token(ab::ListAudiencesRequest {}, token)).await.unwrap().into_inner();
    assert_eq!((listed.audiences[0].name.as_str(), listed.audiences[0].size), ("repeat buyers", 1));
    let (secs, nanos) = before_tick.to_seconds_nanos();
    let request = ab::ListMembersRequest {
        name: "repeat buyers".into(),
        as_of: Some(prost_types::Timestamp { seconds: secs, nanos }),
    };
    let then = audiences.list_members(with_token(request, token)).await.unwrap().into_inner();
    let mut ids: Vec<String> = then.members.iter().map(|m| m.profile_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, sorted(vec![b1.clone(), b2.clone(), b3.clone()]));
    let unknown = ab::ListMembersRequest { name: "nope".into(), as_of: None };
    assert_eq!(audiences.list_members(with_token(unknown, token)).await.unwrap_err().code(), Code::NotFound);

    // A rebuild decides the same: the same members, no new entry or exit.
    deployment.cli_json(&["rebuild", "audiences"]);
    assert_eq!(members(&[]), vec![b3.clone()], "the rebuilt membership");
    let again = deployment.cli_json(&["audience", "history", "--audience", "repeat buyers", "--wait"]);
    assert_eq!(again, history, "the rebuild appends no entry or exit");
    deployment.stop();
}

fn crate_now() -> onepd_domain::Timestamp {
    onepd_domain::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_fills_by_backfill_changes_live_and_as_time_passes_on_sqlite() {
    an_audience_fills_by_backfill_changes_live_and_as_time_passes_and_its_history_is_in_the_log(
        Deployment::sqlite().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_fills_by_backfill_changes_live_and_as_time_passes_on_postgres() {
    an_audience_fills_by_backfill_changes_live_and_as_time_passes_and_its_history_is_in_the_log(
        Deployment::postgres().await,
    )
    .await;
}
