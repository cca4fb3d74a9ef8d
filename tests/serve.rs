//! `onepd serve` end to end: the real binary, on SQLite with no configuration
//! and on PostgreSQL, spoken to with tonic clients and reqwest.

mod support;

use std::time::Duration;

use onepd_adapters::{EventLog, MasterKey, StoreConfig};
use onepd_commands::workspace::{BootstrapIds, NewWorkspace, bootstrap_workspace};
use onepd_domain::events::workspace::{Industry, SourceKind};
use onepd_domain::{AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, StreamId, WorkspaceId};
use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest, SubscribeRequest, VerifyRequest, read_events_request};
use serde_json::json;
use support::{PgDatabase, Server, master_key_file, read_all, sqlite_url, with_token};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use uuid::Uuid;

/// What every backend must show: health, reflection, authenticated audit
/// reads, verification.
async fn a_fresh_server_answers_health_reflection_and_audit_calls(server: &Server) {
    let token = server.admin_token.clone().expect("a fresh store prints an admin token");

    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "onepd.audit.v1.AuditService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["onepd.audit.v1.AuditService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == expected), "{expected} listed in {names:?}");
    }

    let mut audit = server.audit().await;
    let unauthenticated = audit.verify(VerifyRequest {}).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    assert!(unauthenticated.message().contains("authorization"), "{}", unauthenticated.message());
    let wrong = audit.verify(with_token(VerifyRequest {}, "onepd_admin_0000")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let events = read_all(&mut audit, ReadEventsRequest::default(), &token).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["WorkspaceCreated", "AdminTokenIssued", "SourceCreated", "WriteKeyIssued"]);
    assert_eq!(events[0].position, 1);
    assert_eq!(events[0].workspace_id, server.workspace.clone().unwrap());
    assert!(!events[1].data_json.contains(&token), "the token itself is not stored");
    assert_eq!(events[1].hash.len(), 64);

    let verified = audit.verify(with_token(VerifyRequest {}, &token)).await.unwrap().into_inner();
    assert!(verified.ok);
    assert_eq!(verified.events_checked, 4);

    let healthz: serde_json::Value =
        reqwest::get(format!("{}/healthz", server.http)).await.unwrap().json().await.unwrap();
    assert_eq!((&healthz["status"], &healthz["head"]), (&json!("ok"), &json!(4)), "{healthz}");
    assert_eq!(healthz["projection"]["state"], "running", "{healthz}");
    assert_eq!(healthz["stalled_destinations"], json!([]), "{healthz}");
    let metrics = reqwest::get(format!("{}/metrics", server.http)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("onepd_log_head_position 4"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_sqlite_with_no_configuration_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(dir.path().join("data/onepd.db").exists(), "the embedded database is created under ./data");
    assert!(master_key_file(dir.path()).exists(), "a master key is generated");
    a_fresh_server_answers_health_reflection_and_audit_calls(&server).await;
    let token = server.admin_token.clone().unwrap();
    assert!(server.terminate().success(), "SIGTERM stops onepd cleanly");

    // A restart keeps the workspace and the token, and prints no new token.
    let again = Server::start(dir.path(), &[]);
    assert_eq!(again.admin_token, None, "{:?}", again.banner);
    let verified = again.audit().await.verify(with_token(VerifyRequest {}, &token)).await.unwrap().into_inner();
    assert!(verified.ok && verified.events_checked == 4);
    assert!(again.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_postgres() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &db.url]);
    assert!(server.banner.iter().any(|l| l.contains("postgres://")), "{:?}", server.banner);
    a_fresh_server_answers_health_reflection_and_audit_calls(&server).await;
    assert!(server.terminate().success());
}

/// Appends a second workspace with its own token from another process,
/// the way a second onepd node would.
async fn second_workspace(url: &str, key: MasterKey) -> (EventLog, WorkspaceId, String) {
    let mut config = StoreConfig::new(url, Some(key));
    config.poll_interval = Duration::from_millis(100);
    let log = EventLog::open(config).await.unwrap();
    let workspace = WorkspaceId(Uuid::now_v7());
    let spec = NewWorkspace { name: "second".into(), industry: Industry::General, default_region: None };
    let ids = BootstrapIds {
        token_id: Uuid::now_v7(),
        token_secret: rand_secret(),
        source_id: Uuid::now_v7(),
        key_id: Uuid::now_v7(),
        key_secret: *Uuid::new_v4().as_bytes(),
    };
    let boot = bootstrap_workspace(workspace, &spec, SourceKind::Server, ids, "test").unwrap();
    log.append(boot.request).await.unwrap();
    (log, workspace, boot.admin_token)
}

fn rand_secret() -> [u8; 32] {
    *Uuid::new_v4().as_bytes().repeat(2).first_chunk::<32>().unwrap()
}

fn track(workspace: WorkspaceId, name: &str) -> AppendRequest {
    AppendRequest {
        stream_id: StreamId::new(format!("messages-{}", workspace.0)).unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: EventId(Uuid::now_v7()),
            workspace_id: workspace,
            event_type: "MessageAccepted".into(),
            schema_version: 1,
            data: json!({ "type": "track", "event": name, "userId": "u1" }),
            metadata: json!({ "source": "test" }),
            subject: Some("u1".into()),
        }],
    }
}

async fn wait_until_token_works(server: &Server, token: &str) {
    let mut audit = server.audit().await;
    for _ in 0..100 {
        if audit.verify(with_token(VerifyRequest {}, token)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a token issued by another process never took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_reads_only_its_own_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let default_token = server.admin_token.clone().unwrap();
    let key = MasterKey::from_hex(&std::fs::read_to_string(master_key_file(dir.path())).unwrap()).unwrap();
    let (log, second, second_token) = second_workspace(&sqlite_url(dir.path()), key).await;
    log.append(track(second, "Second Only")).await.unwrap();
    wait_until_token_works(&server, &second_token).await;

    let reader = server.audit().await;
    let mut audit = reader.clone();
    let read = |token: String| {
        let mut audit = reader.clone();
        async move { read_all(&mut audit, ReadEventsRequest::default(), &token).await }
    };
    let mine = read(second_token.clone()).await;
    assert!(mine.iter().all(|e| e.workspace_id == second.to_string()));
    assert_eq!(
        mine.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        vec!["WorkspaceCreated", "AdminTokenIssued", "SourceCreated", "WriteKeyIssued", "MessageAccepted"]
    );
    assert_eq!(mine[4].data_json, json!({ "type": "track", "event": "Second Only", "userId": "u1" }).to_string());
    assert!(mine[4].sealed);
    let theirs = read(default_token).await;
    assert_eq!(theirs.len(), 4, "the default workspace sees none of the second's events");

    // Filters and ranges.
    let range = ReadEventsRequest {
        start: Some(read_events_request::Start::FromPosition(8)),
        end: Some(read_events_request::End::UntilPosition(9)),
        filter: Some(EventFilter { event_types: vec!["MessageAccepted".into()], stream_id: String::new() }),
    };
    let filtered = read_all(&mut audit, range, &second_token).await;
    let at = mine[4].recorded_at.expect("recorded_at is set");
    let by_time = ReadEventsRequest {
        start: Some(read_events_request::Start::FromTime(at)),
        end: Some(read_events_request::End::UntilTime(at)),
        filter: None,
    };
    let same_moment = read_all(&mut audit, by_time, &second_token).await;
    assert!(same_moment.iter().any(|e| e.position == mine[4].position), "a time range includes its ends");
    assert!(same_moment.iter().all(|e| e.recorded_at == mine[4].recorded_at));
    assert_eq!(filtered.iter().map(|e| e.position).collect::<Vec<_>>(), vec![9]);
    let bad = audit
        .read_events(with_token(
            ReadEventsRequest {
                filter: Some(EventFilter { event_types: vec![], stream_id: "\u{7}".into() }),
                ..Default::default()
            },
            &second_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("filter.stream id"), "{}", bad.message());

    // Subscribe: catch up, then live events from another process, still scoped.
    let mut subscription = audit
        .subscribe(with_token(SubscribeRequest { from_position: 1, filter: None }, &second_token))
        .await
        .unwrap()
        .into_inner();
    let mut positions = Vec::new();
    for _ in 0..5 {
        positions.push(subscription.next().await.unwrap().unwrap().position);
    }
    assert_eq!(positions, vec![5, 6, 7, 8, 9]);
    log.append(track(WorkspaceId(Uuid::parse_str(server.workspace.as_deref().unwrap()).unwrap()), "Other Tenant"))
        .await
        .unwrap();
    log.append(track(second, "Live")).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(live.position, 11, "the other tenant's event at 10 is skipped");
    assert!(live.data_json.contains("Live"));

    // Shredding the subject erases its payloads for auditors too.
    log.shred(second, "u1").await.unwrap();
    let after = read(second_token).await;
    assert!(after[4].erased && after[4].data_json.is_empty());
    log.close().await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_zero_on_a_sound_log_and_one_naming_a_tampered_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(server.terminate().success());

    let sound = std::process::Command::new(support::BINARY)
        .current_dir(dir.path())
        .args(["verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(sound.status.code(), Some(0), "{}", String::from_utf8_lossy(&sound.stderr));
    let report: serde_json::Value = serde_json::from_slice(&sound.stdout).unwrap();
    assert_eq!(report, json!({ "ok": true, "events_checked": 4 }));

    let pool = sqlx::SqlitePool::connect(&sqlite_url(dir.path())).await.unwrap();
    sqlx::query("DROP TRIGGER events_reject_update").execute(&pool).await.unwrap();
    sqlx::query("UPDATE events SET event_type = 'WorkspaceRenamed' WHERE position = 1").execute(&pool).await.unwrap();
    pool.close().await;

    let broken = std::process::Command::new(support::BINARY).current_dir(dir.path()).args(["verify"]).output().unwrap();
    assert_eq!(broken.status.code(), Some(1));
    let text = String::from_utf8(broken.stdout).unwrap();
    assert!(text.starts_with("hash chain broken at position 1: stored "), "{text}");

    let missing = std::process::Command::new(support::BINARY)
        .args(["verify", "--database-url", "postgres://nobody@127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: opening the event log"));
}

/// `verify --save-head` writes a signed head; `--expect-head` passes while
/// the log only grows, and fails naming the cut when the tail is removed and
/// the head moved back (which the chain alone cannot see), or when the file
/// itself was edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_saved_head_catches_a_log_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let verify = |args: &[&str]| {
        std::process::Command::new(support::BINARY).current_dir(dir.path()).arg("verify").args(args).output().unwrap()
    };
    let server = Server::start(dir.path(), &[]);
    assert!(server.terminate().success());
    let saved = verify(&["--save-head", "head.json"]);
    assert_eq!(saved.status.code(), Some(0), "{}", String::from_utf8_lossy(&saved.stderr));
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("head.json")).unwrap()).unwrap();
    assert_eq!((&head["format"], &head["position"]), (&json!("onepd-chain-head/1"), &json!(4)), "{head}");

    // The log grows: still fine.
    let source = support::onepd(dir.path(), &["source", "create", "later", "--kind", "http"]);
    assert!(source.status.success(), "{}", String::from_utf8_lossy(&source.stderr));
    let grown = verify(&["--expect-head", "head.json", "--json"]);
    assert_eq!(grown.status.code(), Some(0), "{}", String::from_utf8_lossy(&grown.stdout));
    let grown: serde_json::Value = serde_json::from_slice(&grown.stdout).unwrap();
    assert_eq!(grown["expected_head"], "holds", "{grown}");
    // Without the master key a head file proves nothing, and verify says so.
    let unkeyed = std::process::Command::new(support::BINARY)
        .current_dir(dir.path())
        .args(["verify", "--expect-head", "head.json", "--master-key-file", "no-such.key"])
        .output()
        .unwrap();
    assert_eq!(unkeyed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unkeyed.stderr).contains("needs the master key"));

    // The tail removed and the head moved back to position 3.
    let pool = sqlx::SqlitePool::connect(&sqlite_url(dir.path())).await.unwrap();
    sqlx::query("DROP TRIGGER events_reject_delete").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM events WHERE position > 3").execute(&pool).await.unwrap();
    sqlx::query(
        "UPDATE log_head SET position = 3, hash = (SELECT hash FROM events WHERE position = 3), \
         recorded_at = (SELECT recorded_at FROM events WHERE position = 3) WHERE id = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(verify(&[]).status.code(), Some(0), "the chain alone cannot tell");
    let cut = verify(&["--expect-head", "head.json"]);
    assert_eq!(cut.status.code(), Some(1));
    let text = String::from_utf8(cut.stdout).unwrap();
    assert!(text.contains("the log ends at position 3, before the saved head at 4: events were removed"), "{text}");

    // An edited head file does not pass for a signed one.
    let mut forged = head.clone();
    forged["position"] = json!(3);
    std::fs::write(dir.path().join("forged.json"), forged.to_string()).unwrap();
    let refused = verify(&["--expect-head", "forged.json"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("the signature does not match"));
}

/// Under the common `umask 022`, the data directory is `0700` and every
/// file in it (the log, the read store with every profile's email and
/// phone, their `-wal` and `-shm`, the master key) is `0600`; files an
/// older version left readable are narrowed when the server starts.
#[cfg(unix)]
#[test]
fn the_data_directory_and_every_file_in_it_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let serve = |dir: &std::path::Path| {
        let command =
            format!("umask 022 && exec {} serve --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0", support::BINARY);
        std::process::Command::new("sh")
            .args(["-c", &command])
            .current_dir(dir)
            .env_remove("ONEPD_DATABASE_URL")
            .env_remove("ONEPD_MASTER_KEY")
            .env("ONEPD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let files = ["onepd.db", "onepd.db-wal", "onepd.db-shm", "onepd.projections.db", "master.key"];
    let wait_for_files = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !files.iter().all(|file| data.join(file).exists()) {
            assert!(std::time::Instant::now() < deadline, "the server did not create its files");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut server = serve(dir.path());
    wait_for_files();
    assert_eq!(mode(&data), 0o700, "the data directory");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    server.kill().unwrap();
    server.wait().unwrap();
    // Files an older version left world-readable are narrowed at start.
    for file in ["onepd.db", "onepd.projections.db"] {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut server = serve(dir.path());
    wait_for_files();
    for file in ["onepd.db", "onepd.projections.db"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file} after a restart");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A read-only command from the wrong directory, or with a mistyped SQLite
/// path, says no database is there; it does not create an empty one (or
/// its directories) and print an empty answer.
#[test]
fn a_read_only_command_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("elsewhere");
    for args in [
        vec!["workspace".to_owned(), "list".to_owned(), "--data-dir".to_owned(), missing.display().to_string()],
        vec!["verify".to_owned(), "--data-dir".to_owned(), missing.display().to_string()],
        vec![
            "workspace".to_owned(),
            "list".to_owned(),
            "--database-url".to_owned(),
            format!("sqlite://{}/typo/onepd.db", missing.display()),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = support::onepd(dir.path(), &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no onepd database at"), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // An explicit set-up command may create the store.
    let data = missing.display().to_string();
    let created = support::onepd(dir.path(), &["workspace", "create", "acme", "--data-dir", &data]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let listed = support::onepd(dir.path(), &["workspace", "list", "--data-dir", &data]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("acme"));
}

/// A first start on a busy port fails before creating anything, so the
/// next start creates the default workspace and prints its keys.
#[test]
fn a_first_start_on_a_busy_port_stores_no_keys_it_cannot_print() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let failed = support::onepd(dir.path(), &["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", &port]);
    assert_eq!(failed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("binding HTTP"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!dir.path().join("data").join("onepd.db").exists(), "a database was created before binding");
    drop(busy);
    let server = Server::start(dir.path(), &[]);
    assert!(server.write_key.is_some(), "the next start prints the default workspace's write key");
    drop(server);
}
