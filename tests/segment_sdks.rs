//! Segment's official server-side SDKs, as published on npm and PyPI, sending
//! to a real `onepd serve` with nothing changed but their host setting.
//!
//! `tests/sdk/install.sh` installs `@segment/analytics-node` (from
//! `tests/sdk/node/package-lock.json`) and `segment-analytics-python` (from
//! `tests/sdk/python/requirements.txt`, into `target/sdk-venv`); `.ci/run`
//! runs it before the suite and each test runs it again (a no-op when
//! installed). A test whose SDK cannot be installed fails: it never skips.
//! The driver scripts (`tests/sdk/node/send.mjs`, `tests/sdk/python/send.py`)
//! send identify, 20 tracks, page, group, alias and screen, print the
//! `messageId` of each message, and exit non-zero on any SDK error.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use onepd_proto::audit::v1::ReadEventsRequest;
use serde_json::Value;
use support::{Server, read_all};
use uuid::Uuid;

/// How long one SDK script may take before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/sdk/install.sh` once per test process; panics with its output
/// when it fails, so a missing SDK fails the test instead of skipping it.
fn install_sdks() {
    static INSTALLED: OnceLock<Result<String, String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let script = repo().join("tests/sdk/install.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .current_dir(repo())
            .output()
            .map_err(|err| format!("could not run {}: {err}", script.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("{} failed ({}):\n{text}", script.display(), output.status))
        }
    });
    if let Err(err) = result {
        panic!("the Segment SDKs could not be installed, so this test cannot run:\n{err}");
    }
}

/// One SDK under test: how to run its driver script and what it reports.
struct Sdk {
    /// `context.library.name` the SDK puts on every message.
    library: &'static str,
    program: PathBuf,
    script: PathBuf,
    /// The user ids the script sends as, for run tag `run`.
    users: fn(&str) -> Vec<String>,
}

/// What a finished script printed.
struct Sent {
    message_ids: Vec<String>,
    output: String,
}

/// Runs `sdk`'s script against `server` and waits for it to exit successfully.
async fn run_script(sdk: &Sdk, server: &Server, run: &str) -> Sent {
    let write_key = server.write_key.clone().unwrap_or_else(|| {
        panic!("onepd serve printed no `write key` for the default http source; banner: {:#?}", server.banner)
    });
    let mut command = tokio::process::Command::new(&sdk.program);
    command
        .arg(&sdk.script)
        .current_dir(repo())
        .env("ONEPD_HOST", &server.http)
        .env("ONEPD_WRITE_KEY", &write_key)
        .env("ONEPD_RUN", run)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {SCRIPT_TIMEOUT:?}", sdk.script.display()))
        .unwrap_or_else(|err| panic!("could not start {}: {err}", sdk.program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = format!("--- stdout\n{stdout}--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{} ({}) failed with {} after {:?}:\n{text}",
        sdk.script.display(),
        sdk.library,
        output.status,
        started.elapsed()
    );
    let message_ids = stdout.lines().filter_map(|line| line.strip_prefix("messageId ")).map(str::to_owned).collect();
    Sent { message_ids, output: text }
}

/// The stored data of a `MessageAccepted` / `MessageRejected` event.
fn data(event: &onepd_proto::audit::v1::Event) -> Value {
    serde_json::from_str(&event.data_json)
        .unwrap_or_else(|err| panic!("event {} data is not JSON ({err}): {:?}", event.position, event.data_json))
}

/// Reads the log until `expected` messages were accepted (or 30 s pass), then
/// once more a moment later, so late duplicates are seen too.
async fn read_messages(server: &Server, token: &str, expected: usize) -> Vec<onepd_proto::audit::v1::Event> {
    let mut audit = server.audit().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = read_all(&mut audit, ReadEventsRequest::default(), token).await;
        let settled = events.iter().filter(|e| e.event_type.starts_with("Message")).count() >= expected;
        if settled || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return read_all(&mut audit, ReadEventsRequest::default(), token).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, key| &value[key])
}

/// Starts onepd on SQLite, runs `sdk`'s script against it, and checks that
/// every message the SDK sent was accepted exactly once and normalized.
async fn the_sdk_works_against_onepd_with_only_its_host_changed(sdk: Sdk) {
    install_sdks();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = server.admin_token.clone().expect("a fresh store prints an admin token");
    let run = Uuid::new_v4().simple().to_string()[..12].to_owned();

    let sent = run_script(&sdk, &server, &run).await;
    let users = (sdk.users)(&run);
    let per_user = 25; // identify, 20 tracks, page, group, alias, screen
    let sent_ids: BTreeSet<&str> = sent.message_ids.iter().map(String::as_str).collect();
    assert_eq!(
        sent.message_ids.len(),
        per_user * users.len(),
        "the script names every message it sent:\n{}",
        sent.output
    );
    assert_eq!(sent_ids.len(), sent.message_ids.len(), "the SDK gave each message its own messageId");

    let events = read_messages(&server, &token, sent_ids.len()).await;
    let context = || format!("{} sent {} messages; script output:\n{}", sdk.library, sent_ids.len(), sent.output);

    let rejected: Vec<Value> = events.iter().filter(|e| e.event_type == "MessageRejected").map(data).collect();
    assert!(rejected.is_empty(), "no message is rejected, but {} were: {rejected:#?}\n{}", rejected.len(), context());

    let accepted: Vec<(u64, Value)> =
        events.iter().filter(|e| e.event_type == "MessageAccepted").map(|e| (e.position, data(e))).collect();
    assert_eq!(
        accepted.len(),
        sent_ids.len(),
        "one MessageAccepted per message sent; the log holds {:?}\n{}",
        events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        context()
    );
    let mut by_id: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (position, data) in &accepted {
        let id = data["message"]["messageId"]
            .as_str()
            .unwrap_or_else(|| panic!("event {position} has no message.messageId: {data:#}"));
        by_id.entry(id.to_owned()).or_default().push(*position);
    }
    let duplicated: Vec<_> = by_id.iter().filter(|(_, positions)| positions.len() > 1).collect();
    assert!(duplicated.is_empty(), "each messageId is stored once, but these repeat (at positions): {duplicated:?}");
    let stored_ids: BTreeSet<&str> = by_id.keys().map(String::as_str).collect();
    assert_eq!(stored_ids, sent_ids, "the stored messageIds are exactly the ones the SDK sent, unchanged");

    for (position, data) in &accepted {
        let message = &data["message"];
        assert_eq!(
            field(message, "context.library.name"),
            sdk.library,
            "event {position} keeps the SDK's context.library: {data:#}"
        );
        assert!(
            message["receivedAt"].as_str().is_some_and(|at| !at.is_empty()),
            "event {position} has message.receivedAt: {data:#}"
        );
        let user = message["userId"].as_str().unwrap_or_default();
        assert!(users.iter().any(|u| u == user), "event {position} is about one of {users:?}: {data:#}");
    }

    for user in &users {
        let of_user = |kind: &str| {
            accepted
                .iter()
                .filter(|(_, d)| d["message"]["type"] == kind && d["message"]["userId"] == user.as_str())
                .map(|(_, d)| d)
                .collect::<Vec<_>>()
        };
        for (kind, count) in [("identify", 1), ("track", 20), ("page", 1), ("group", 1), ("alias", 1), ("screen", 1)] {
            assert_eq!(of_user(kind).len(), count, "{count} {kind} message(s) stored for {user}");
        }
        let identify = of_user("identify")[0];
        assert_eq!(
            field(identify, "message.traits.email"),
            "ann.example@example.com",
            "the email is normalized: {identify:#}"
        );
        assert_eq!(
            identify["originals"]["traits.email"], "  Ann.Example@Example.COM ",
            "the email as sent is kept: {identify:#}"
        );
        assert_eq!(field(identify, "message.traits.phone"), "+14155552671", "the phone is E.164: {identify:#}");
        assert_eq!(field(identify, "message.traits.firstName"), "Ann", "{identify:#}");

        let mut order_ids: Vec<i64> =
            of_user("track").iter().map(|d| field(d, "message.properties.orderId").as_i64().unwrap()).collect();
        order_ids.sort_unstable();
        assert_eq!(order_ids, (0..20).collect::<Vec<_>>(), "every Order Completed for {user} is stored");
        let alias = of_user("alias")[0];
        assert_eq!(field(alias, "message.previousId"), format!("{user}-anon").as_str(), "{alias:#}");
    }

    assert!(server.terminate().success(), "onepd stops cleanly after the SDK run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_works_against_onepd_with_only_its_host_changed() {
    the_sdk_works_against_onepd_with_only_its_host_changed(Sdk {
        library: "@segment/analytics-node",
        program: PathBuf::from("node"),
        script: repo().join("tests/sdk/node/send.mjs"),
        users: |run| vec![format!("sdk-{run}-user")],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python_works_against_onepd_with_only_its_host_changed_with_and_without_gzip() {
    the_sdk_works_against_onepd_with_only_its_host_changed(Sdk {
        library: "analytics-python",
        program: repo().join("target/sdk-venv/bin/python"),
        script: repo().join("tests/sdk/python/send.py"),
        users: |run| vec![format!("sdk-{run}-user"), format!("sdk-{run}-gzip-user")],
    })
    .await;
}
