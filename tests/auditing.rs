//! The auditor's toolkit through the real server and CLI, on SQLite and
//! PostgreSQL: `onepd events export` of a range holding erased, rejected
//! and quarantined events, locally and through a server with an audit
//! token; `onepd verify --export` passing on the file, without the
//! database, and failing on a copy with one changed byte, a removed line or
//! two lines swapped, naming the line; the Parquet export read back by
//! pyarrow giving the NDJSON rows; `onepd events show` naming the profile
//! and the deliveries; `onepd events tail` following the log across a
//! restart of the server without gaps or repeats.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onepd_adapters::{EventLog, StoreConfig};
use onepd_domain::{AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, StreamId, WorkspaceId};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use stub::{Mode, Stub};
use support::{BINARY, PgDatabase, Server, free_port, onepd, sqlite_url};
use uuid::Uuid;

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

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store_refs(&self) -> Vec<&str> {
        self.store.iter().map(String::as_str).collect()
    }

    fn database_url(&self) -> String {
        self.store.get(1).cloned().unwrap_or_else(|| sqlite_url(self.path()))
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

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(self.cli(&all).trim()).unwrap()
    }
}

async fn post(server: &Server, key: &str, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http))
        .basic_auth(key, Some(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `{"a": {"a": … 1 …}}`, `levels` objects deep: past what a reader decodes.
fn objects(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// Appends a `MessageAccepted` event holding `message` straight to the log
/// (the server is stopped), at the position it returns.
async fn plant(url: &str, workspace: WorkspaceId, message: Value) -> u64 {
    let log = EventLog::open(StoreConfig::new(url, None)).await.expect("open the log");
    let event = NewEvent {
        event_id: EventId(Uuid::new_v4()),
        workspace_id: workspace,
        event_type: "MessageAccepted".into(),
        schema_version: 1,
        data: json!({ "message": message, "enrichment": {}, "originals": {}, "violations": [] }),
        metadata: json!({ "message_type": "track" }),
        subject: None,
    };
    let stream = StreamId::new("source-planted").unwrap();
    let request = AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events: vec![event] };
    let outcome = log.append(request).await.expect("append the event");
    log.close().await;
    outcome.positions[0].0
}

/// Appends, as an older onepd could have, a message no reader can decode.
async fn plant_undecodable(url: &str, workspace: WorkspaceId) -> u64 {
    let message = json!({"type": "track", "messageId": "legacy-deep", "userId": "legacy", "event": "Deep",
        "properties": objects(130)});
    plant(url, workspace, message).await
}

/// Appends a track message straight to the log (the server is stopped).
async fn plant_track(url: &str, workspace: WorkspaceId, name: &str) {
    plant(url, workspace, json!({"type": "track", "messageId": name, "userId": "u", "event": name})).await;
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

/// Each line as JSON; a field nested deeper than serde_json's limit (the
/// undecodable event's payload) as its text.
fn parsed(path: &Path) -> Vec<Value> {
    let field = |raw: &RawValue| serde_json::from_str(raw.get()).unwrap_or_else(|_| Value::String(raw.get().into()));
    lines(path)
        .iter()
        .map(|line| {
            let raw: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_str(line).unwrap();
            let fields: serde_json::Map<String, Value> =
                raw.into_iter().map(|(name, raw)| (name, field(&raw))).collect();
            Value::Object(fields)
        })
        .collect()
}

/// `onepd verify --export FILE --json` in `dir`: exit code and answer.
fn verify_export(dir: &Path, file: &Path) -> (i32, Value) {
    let output = onepd(dir, &["verify", "--export", file.to_str().unwrap(), "--json"]);
    let answer = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), answer)
}

/// A copy of `lines` written to `name`, changed by `change`.
fn tampered(deployment: &Deployment, name: &str, lines: &[String], change: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let mut copy = lines.to_vec();
    change(&mut copy);
    let path = deployment.file(name);
    std::fs::write(&path, copy.join("\n") + "\n").unwrap();
    path
}

/// The venv `tests/sdk/install.sh` makes, with pyarrow in it.
fn python_with_pyarrow() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output =
        Command::new("bash").arg(repo.join("tests/sdk/install.sh")).arg("python").current_dir(repo).output().unwrap();
    assert!(
        output.status.success(),
        "tests/sdk/install.sh python failed: the Parquet check needs pyarrow:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    repo.join("target/sdk-venv/bin/python")
}

/// Recomputes every line's check (and the end line's `lines`) as a forger
/// without the master key would.
fn rechecked(lines: &mut [String]) {
    use sha2::{Digest, Sha256};
    const TAIL: usize = ",\"check\":\"\"}".len() + 64;
    let mut last = [0u8; 32];
    let count = lines.len();
    for (index, line) in lines.iter_mut().enumerate() {
        let mut body = format!("{}}}", &line[..line.len() - TAIL]);
        if index == count - 1 {
            let at = body.find("\"lines\":\"").unwrap() + "\"lines\":\"".len();
            body.replace_range(at..at + 64, &hex::encode(last));
        }
        last = Sha256::new().chain_update(last).chain_update(Sha256::digest(body.as_bytes())).finalize().into();
        *line = format!("{},\"check\":\"{}\"}}", &body[..body.len() - 1], hex::encode(last));
    }
}

const ADD_COLUMN: &str = r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
meta = pq.ParquetFile(sys.argv[1]).metadata.metadata
table = table.append_column("data", pa.array(['{"fake":true}'] * table.num_rows))
table = table.replace_schema_metadata({k: v for k, v in meta.items() if k.startswith(b"onepd.")})
pq.write_table(table, sys.argv[2])
"#;

const PYARROW_CHECK: &str = r#"
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
meta = pq.ParquetFile(sys.argv[1]).metadata.metadata or {}
assert b"onepd.export.header" in meta and b"onepd.export.end" in meta, meta.keys()
rows = table.to_pylist()
events = [json.loads(l) for l in open(sys.argv[2]) if l.startswith('{"position"')]
assert len(rows) == len(events), (len(rows), len(events))
for row, event in zip(rows, events):
    for key in ("metadata", "data"):
        row[key] = None if row[key] is None else json.loads(row[key])
    # Each export's checks chain from its own header (its export time).
    row.pop("check"); event.pop("check")
    assert row == event, (row, event)
print(len(rows))
"#;

async fn export_verify_and_show(url: Option<&str>) {
    let deployment = Deployment::new(url);
    let server = Server::start(deployment.path(), &deployment.store_refs());
    let key = server.write_key.clone().unwrap();
    let workspace = WorkspaceId(server.workspace.clone().unwrap().parse().unwrap());
    // Another tenant's events sit in the same log.
    deployment.cli(&["workspace", "create", "other"]);
    let hook = Stub::start(Mode::Accept).await;
    deployment.cli(&[
        "destination",
        "create",
        "hook",
        "--adapter",
        "webhook",
        "--setting",
        &format!("url={}/hook", hook.url()),
    ]);

    post(&server, &key, "/v1/identify", json!({"userId": "ann", "traits": {"email": "ann@example.com"}})).await;
    post(
        &server,
        &key,
        "/v1/track",
        json!({"userId": "ann", "event": "Order Completed", "properties": {"revenue": 5}}),
    )
    .await;
    post(
        &server,
        &key,
        "/v1/identify",
        json!({"userId": "bob", "messageId": "bob-1", "traits": {"email": "bob@example.com"}}),
    )
    .await;
    let answer =
        post(&server, &key, "/v1/batch", json!({"batch": [{"type": "track", "event": "", "userId": "bob"}]})).await;
    assert_eq!(answer["rejected"][0]["reasons"][0]["field"], "event", "{answer}");
    let bob_id = EventId::for_message(workspace, "bob-1").to_string();
    hook.wait_for(Duration::from_secs(30), "bob's identify is delivered", |stub| {
        stub.webhook_ids().contains_key(&bob_id)
    })
    .await;

    // An undecodable event, planted while the server is stopped, then an erasure.
    assert!(server.terminate().success());
    let deep = plant_undecodable(&deployment.database_url(), workspace).await;
    let server = Server::start(deployment.path(), &deployment.store_refs());
    eventually(Duration::from_secs(30), "the undecodable event is quarantined", || {
        let listed = deployment.cli(&["quarantine", "list", "--json"]);
        listed.lines().any(|line| serde_json::from_str::<Value>(line).unwrap()["position"] == deep)
    })
    .await;
    deployment.cli(&["forget", "--email", "ann@example.com", "--json"]);

    // The whole log, exported on this machine.
    let all = deployment.file("all.ndjson");
    deployment.cli(&["events", "export", "--output", all.to_str().unwrap()]);
    let rows = parsed(&all);
    let (header, end) = (&rows[0], rows.last().unwrap());
    assert_eq!(header["export"], "onepd-export/1", "{header}");
    assert_eq!(end["export_end"], "onepd-export/1", "{end}");
    let events = &rows[1..rows.len() - 1];
    assert_eq!(end["events"], events.len());
    let positions: Vec<u64> = events.iter().map(|event| event["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>(), "every position, in order");
    let erased: Vec<&Value> = events.iter().filter(|event| !event["erased"].is_null()).collect();
    assert!(erased.len() >= 2, "ann's identify and order are erased: {erased:?}");
    assert!(erased.iter().all(|event| event["data"].is_null() && event["stored_data"].is_string()));
    assert!(!all_text(&all).contains("ann@example.com"), "no erased content in the export");
    let bob = events.iter().find(|event| event["event_id"] == bob_id.as_str()).expect("bob's identify is exported");
    assert!(bob["key_id"].is_string(), "bob's payload is sealed: {bob}");
    assert_eq!(bob["data"]["message"]["traits"]["email"], "bob@example.com", "and opened: {bob}");
    assert!(events.iter().any(|event| event["rejected"] == true && event["event_type"] == "MessageRejected"));
    let quarantined = events.iter().find(|event| event["position"] == deep).unwrap();
    assert!(quarantined["quarantined"].as_str().unwrap().contains("profiles:"), "{quarantined}");
    assert!(quarantined["unreadable"].is_null(), "its bytes are exported as stored: {quarantined}");

    // verify --export passes, with the master key (signature) and on a machine without the database.
    let (code, answer) = verify_export(deployment.path(), &all);
    assert_eq!((code, &answer["ok"], &answer["signature"]), (0, &json!(true), &json!("holds")), "{answer}");
    assert_eq!(answer["gap_free"], true);
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("all.ndjson");
    std::fs::copy(&all, &copy).unwrap();
    let (code, answer) = verify_export(elsewhere.path(), &copy);
    assert_eq!((code, &answer["signature"]), (0, &json!("not_checked")), "{answer}");

    // …and fails on a copy with one changed byte, a removed line or two lines swapped, naming the line.
    let text = lines(&all);
    let bob_line = text.iter().position(|line| line.contains(&bob_id)).unwrap();
    let changed = tampered(&deployment, "changed.ndjson", &text, |copy| {
        copy[bob_line] = copy[bob_line].replacen("bob@example.com", "bob@example.con", 1);
    });
    let (code, answer) = verify_export(deployment.path(), &changed);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(bob_line as u64 + 1)), "{answer}");
    let first_event_byte = tampered(&deployment, "byte.ndjson", &text, |copy| {
        copy[3] = copy[3].replacen("\"stream_version\":", "\"stream_version\": ", 1);
    });
    let (code, answer) = verify_export(deployment.path(), &first_event_byte);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(4)), "{answer}");
    let removed = tampered(&deployment, "removed.ndjson", &text, |copy| {
        copy.remove(5);
    });
    let (code, answer) = verify_export(deployment.path(), &removed);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(6)), "{answer}");
    assert!(answer["problem"].as_str().unwrap().contains("removed or moved"), "{answer}");
    let swapped = tampered(&deployment, "swapped.ndjson", &text, |copy| copy.swap(6, 7));
    let (code, answer) = verify_export(deployment.path(), &swapped);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(7)), "{answer}");
    // A forger who edits a covered field and recomputes every check: the
    // event's hash no longer holds.
    let created = text.iter().position(|line| line.contains("\"event_type\":\"WorkspaceCreated\"")).unwrap();
    let forged = tampered(&deployment, "forged.ndjson", &text, |copy| {
        copy[created] = copy[created].replacen("\"name\":\"default\"", "\"name\":\"deflaut\"", 1);
        rechecked(copy);
    });
    let (code, answer) = verify_export(deployment.path(), &forged);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(created as u64 + 1)), "{answer}");
    assert!(answer["problem"].as_str().unwrap().contains("does not hold"), "{answer}");
    // One who edits an opened payload (the chain covers its ciphertext) and
    // recomputes every check: only the signature finds it, with the master key.
    let forged = tampered(&deployment, "forged-plaintext.ndjson", &text, |copy| {
        copy[bob_line] = copy[bob_line].replacen("bob@example.com", "bob@example.con", 1);
        rechecked(copy);
    });
    let (code, answer) = verify_export(deployment.path(), &forged);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(text.len() as u64)), "{answer}");
    assert!(answer["problem"].as_str().unwrap().contains("signature"), "{answer}");
    std::fs::copy(&forged, &copy).unwrap();
    assert_eq!(verify_export(elsewhere.path(), &copy).0, 0, "without the key, a forger's file passes: it says so");
    // One who removes the signature (and recomputes every check), to hide
    // a removed event behind a filter: refused while a master key is here.
    let unsigned = tampered(&deployment, "unsigned.ndjson", &text, |copy| {
        copy[0] = copy[0].replacen("\"filter\":{}", "\"filter\":{\"stream\":\"x\"}", 1);
        copy.remove(5);
        let end = copy.len() - 1;
        let events = copy.len() - 2;
        let value: Value = serde_json::from_str(&copy[end]).unwrap();
        copy[end] = copy[end]
            .replacen(&format!("\"events\":{}", value["events"]), &format!("\"events\":{events}"), 1)
            .replacen(&format!("\"head\":{}", value["head"]), "\"head\":null", 1)
            .replacen(&format!("\"signature\":{}", value["signature"]), "\"signature\":null", 1);
        rechecked(copy);
    });
    let (code, answer) = verify_export(deployment.path(), &unsigned);
    assert_eq!((code, answer["line"].as_u64()), (1, Some(text.len() as u64 - 1)), "{answer}");
    assert!(answer["problem"].as_str().unwrap().contains("not signed"), "{answer}");
    let cut = tampered(&deployment, "cut.ndjson", &text, |copy| {
        copy.pop();
    });
    assert_eq!(verify_export(deployment.path(), &cut).0, 1, "an export without its end line fails");

    // Parquet: the same rows, read back by pyarrow; and it verifies too.
    let parquet = deployment.file("all.parquet");
    deployment.cli(&["events", "export", "--format", "parquet", "--output", parquet.to_str().unwrap()]);
    let (code, answer) = verify_export(deployment.path(), &parquet);
    assert_eq!((code, &answer["events"]), (0, &end["events"]), "{answer}");
    let read_back = Command::new(python_with_pyarrow())
        .args(["-c", PYARROW_CHECK, parquet.to_str().unwrap(), all.to_str().unwrap()])
        .output()
        .expect("run the venv's python");
    assert!(
        read_back.status.success(),
        "pyarrow read the Parquet export differently: {}",
        String::from_utf8_lossy(&read_back.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&read_back.stdout).trim(), events.len().to_string());
    // A column added beside onepd's (a second `data` a reader would see) fails.
    let added = deployment.file("added.parquet");
    let added_column = Command::new(python_with_pyarrow())
        .args(["-c", ADD_COLUMN, parquet.to_str().unwrap(), added.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(added_column.status.success(), "{}", String::from_utf8_lossy(&added_column.stderr));
    let (code, answer) = verify_export(deployment.path(), &added);
    assert_eq!(code, 1, "{answer}");
    assert!(answer["problem"].as_str().unwrap().contains("columns"), "{answer}");

    // Ranges: past the head is an empty export that verifies; an end before the start is refused.
    let past = deployment.file("past.ndjson");
    let far = (end["to_position"].as_u64().unwrap() + 50).to_string();
    deployment.cli(&["events", "export", "--from", &far, "--output", past.to_str().unwrap()]);
    assert_eq!(verify_export(deployment.path(), &past).0, 0);
    let backwards = deployment.cli_output(&["events", "export", "--from", "5", "--to", "2"]);
    assert!(!backwards.status.success());
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("before it starts"), "{backwards:?}");

    // Through the server with an audit token: the token's workspace only, verifiable.
    let issued = deployment.cli_json(&["key", "issue", "--admin", "--scope", "audit"]);
    let audit_token = issued["key"].as_str().unwrap().to_owned();
    let remote = deployment.file("remote.ndjson");
    let to = end["to_position"].to_string();
    let remote_args = ["events", "export", "--server", &server.grpc, "--token", &audit_token];
    let remote_args = [&remote_args[..], &["--to", &to, "--output", remote.to_str().unwrap()]].concat();
    // The server learns of the new token when it next reads the log.
    eventually(Duration::from_secs(10), "the audit token works", || {
        onepd(deployment.path(), &remote_args).status.success()
    })
    .await;
    let remote_rows = parsed(&remote);
    let workspace_events = events.iter().filter(|event| event["workspace_id"] == workspace.to_string()).count();
    assert_eq!(remote_rows.len(), workspace_events + 2, "the workspace's events, a header and an end line");
    assert!(remote_rows[1..remote_rows.len() - 1].iter().all(|row| row["workspace_id"] == workspace.to_string()));
    let (code, answer) = verify_export(deployment.path(), &remote);
    assert_eq!((code, &answer["gap_free"]), (0, &json!(false)), "{answer}");
    let foreign =
        events.iter().find(|event| event["workspace_id"] != workspace.to_string()).expect("the other workspace's");
    let foreign = foreign["position"].to_string();
    let output =
        onepd(deployment.path(), &["events", "show", &foreign, "--server", &server.grpc, "--token", &audit_token]);
    assert_eq!(output.status.code(), Some(1), "another workspace's event is not shown: {output:?}");
    let refused = onepd(deployment.path(), &["events", "export", "--server", &server.grpc, "--token", "onepd_admin_0"]);
    assert!(!refused.status.success(), "a wrong token is refused");
    // A read-scoped token is refused too.
    let read_token =
        deployment.cli_json(&["key", "issue", "--admin", "--scope", "read"])["key"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = onepd(deployment.path(), &["events", "show", "1", "--server", &server.grpc, "--token", &read_token]);
    assert!(!refused.status.success(), "a read token cannot use the audit service");

    // events show: the profile, and the delivery that carried it.
    let shown = deployment.cli_json(&["events", "show", &bob_id]);
    assert_eq!(shown["event"]["event_id"], bob_id.as_str());
    assert_eq!(shown["chain"]["holds"], true);
    assert!(shown["projections"]["profile_id"].is_string(), "{shown}");
    let deliveries = shown["deliveries"].as_array().unwrap();
    assert!(
        deliveries.iter().any(|delivery| delivery["destination"] == "hook" && delivery["outcome"] == "delivered"),
        "{shown}"
    );
    let position = bob["position"].as_u64().unwrap().to_string();
    let output = onepd(
        deployment.path(),
        &["events", "show", &position, "--server", &server.grpc, "--token", &audit_token, "--json"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let remote_shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(remote_shown["deliveries"], shown["deliveries"], "the same answer through the server");
    drop(server);
}

fn all_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_without_the_database_and_names_the_tampered_line_on_sqlite() {
    export_verify_and_show(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_without_the_database_and_names_the_tampered_line_on_postgres() {
    let db = PgDatabase::create().await;
    export_verify_and_show(Some(&db.url)).await;
}

/// `onepd events tail` through the server, from now: what it prints.
struct Tail {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Tail {
    fn start(dir: &Path, grpc: &str, token: &str) -> Tail {
        let mut child = Command::new(BINARY)
            .current_dir(dir)
            .args(["events", "tail", "--server", grpc, "--token", token])
            .env("ONEPD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start onepd events tail");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines, seen: Vec::new() }
    }

    async fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.seen) {
            assert!(Instant::now() < deadline, "tail: {what}: not within 30 s; printed {:?}", self.seen);
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(serde_json::from_str(&line).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(seen: &[Value]) -> Vec<String> {
    seen.iter().filter_map(|event| event["data"]["message"]["event"].as_str().map(str::to_owned)).collect()
}

async fn tail_resumes_after_a_restart(url: Option<&str>) {
    let deployment = Deployment::new(url);
    // The same gRPC address after the restart, as a deployment's would be.
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut args = deployment.store_refs();
    args.extend(["--grpc-addr", grpc.as_str()]);
    let server = Server::start(deployment.path(), &args);
    let key = server.write_key.clone().unwrap();
    let token = server.admin_token.clone().unwrap();
    let workspace = WorkspaceId(server.workspace.clone().unwrap().parse().unwrap());
    post(&server, &key, "/v1/track", json!({"userId": "u", "event": "Before"})).await;
    let mut tail = Tail::start(deployment.path(), &server.grpc, &token);
    // From now: what was appended before it started is not printed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    post(&server, &key, "/v1/track", json!({"userId": "u", "event": "First"})).await;
    tail.wait_for("the event appended after it started", |seen| names(seen) == ["First"]).await;

    // While the server is down, the log grows (another node, an import):
    // the tail must print that too once it is back.
    assert!(server.terminate().success());
    plant_track(&deployment.database_url(), workspace, "Second").await;
    let server = Server::start(deployment.path(), &args);
    post(&server, &key, "/v1/track", json!({"userId": "u", "event": "Third"})).await;
    tail.wait_for("the events appended after the restart", |seen| names(seen).len() >= 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tail.wait_for("", |_| true).await;
    assert_eq!(names(&tail.seen), ["First", "Second", "Third"], "no gap, no repeat");

    // Every event of the workspace from the first printed on, each once, in order.
    let from = tail.seen[0]["position"].as_u64().unwrap().to_string();
    let export = deployment.file("since.ndjson");
    deployment.cli(&["events", "export", "--from", &from, "--output", export.to_str().unwrap()]);
    let exported: Vec<Value> = parsed(&export).into_iter().filter(|row| row.get("position").is_some()).collect();
    let positions = |rows: &[Value]| rows.iter().map(|row| row["position"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(positions(&tail.seen), positions(&exported), "tail printed exactly the log's events");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_the_log_and_resumes_after_a_server_restart_on_sqlite() {
    tail_resumes_after_a_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_the_log_and_resumes_after_a_server_restart_on_postgres() {
    let db = PgDatabase::create().await;
    tail_resumes_after_a_restart(Some(&db.url)).await;
}
