//! Activation through the real server: messages sent to `onepd serve` reach
//! local stub servers standing in for Meta and for a webhook receiver, in
//! the platforms' formats, with identifiers hashed, never lost when a
//! destination fails, hangs, or onepd is killed mid-delivery, and replayed
//! in full to a new destination.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use onepd_domain::{EventId, WorkspaceId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stub::{Mode, Stub};
use support::{PgDatabase, Server, onepd, onepd_json};
use uuid::Uuid;

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Sends `messages` to `/v1/batch` with the server's write key.
async fn send(server: &Server, messages: Vec<Value>) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.http))
        .timeout(Duration::from_secs(30))
        .basic_auth(server.write_key.as_ref().unwrap(), Some(""))
        .json(&json!({ "batch": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn track(n: usize, extra: Value) -> Value {
    let mut properties = json!({ "n": n });
    properties.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({
        "type": "track",
        "messageId": format!("m-{n}"),
        "userId": format!("user-{}", n % 7),
        "event": "Item Viewed",
        "properties": properties,
    })
}

/// The event id onepd gives a message of the default workspace.
fn event_id(server: &Server, message_id: &str) -> String {
    let workspace = WorkspaceId(server.workspace.as_ref().unwrap().parse::<Uuid>().unwrap());
    EventId::for_message(workspace, message_id).to_string()
}

fn store_args(url: Option<&str>) -> Vec<String> {
    url.map(|url| vec!["--database-url".to_owned(), url.to_owned()]).unwrap_or_default()
}

/// `onepd destination create NAME ARGS…` against the store.
fn create_destination(dir: &std::path::Path, store: &[String], name: &str, args: &[&str]) -> Value {
    let mut all: Vec<&str> = vec!["destination", "create", name];
    all.extend_from_slice(args);
    all.extend(store.iter().map(String::as_str));
    onepd_json(dir, &all)
}

fn webhook_destination(dir: &std::path::Path, store: &[String], name: &str, stub: &Stub, extra: &[&str]) -> Value {
    let url = format!("url={}/hook", stub.url());
    let mut args =
        vec!["--adapter", "webhook", "--setting", &url, "--initial-backoff-ms", "50", "--max-backoff-ms", "200"];
    args.extend_from_slice(extra);
    create_destination(dir, store, name, &args)
}

/// A `meta_capi` destination named `meta` sending to `stub`.
fn meta_destination(dir: &std::path::Path, store: &[String], stub: &Stub) -> Value {
    let endpoint = format!("endpoint={}", stub.url());
    let settings = ["pixel_id=123", "access_token=EAAtoken", endpoint.as_str()];
    let mut args = vec!["--adapter", "meta_capi"];
    for setting in &settings {
        args.extend(["--setting", setting]);
    }
    create_destination(dir, store, "meta", &args)
}

async fn meta_receives_an_order_with_hashed_identifiers_and_its_event_id(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let meta = Stub::start(Mode::Accept).await;
    meta_destination(dir.path(), &store, &meta);
    send(
        &server,
        vec![
            json!({"type": "identify", "messageId": "id-1", "userId": "u-42",
                   "traits": {"email": " Ann.Lee@Example.COM ", "phone": "+1 (650) 555-1212", "firstName": "Ann"}}),
            json!({"type": "track", "messageId": "order-1", "userId": "u-42", "event": "Order Completed",
                   "properties": {"order_id": "o-1", "revenue": 42.5, "currency": "USD", "email": "ann.lee@example.com"}}),
        ],
    )
    .await;
    meta.wait_for(Duration::from_secs(20), "the order reaches Meta", |stub| {
        stub.bodies().iter().any(|(_, body)| body.to_string().contains("Purchase"))
    })
    .await;
    let (path, body) = meta.bodies().into_iter().find(|(_, body)| body.to_string().contains("Purchase")).unwrap();
    assert!(path.starts_with("/v21.0/123/events"), "{path}");
    assert!(path.contains("access_token=EAAtoken"), "{path}");
    let event = body["data"].as_array().unwrap().iter().find(|e| e["event_name"] == "Purchase").unwrap();
    assert_eq!(event["event_id"], event_id(&server, "order-1"));
    let user = &event["user_data"];
    assert_eq!(user["em"], json!([sha256_hex("ann.lee@example.com")]));
    assert_eq!(user["ph"], json!([sha256_hex("16505551212")]));
    assert_eq!(user["external_id"], json!([sha256_hex("u-42")]));
    let text = body.to_string().to_lowercase();
    for raw in ["ann.lee@example.com", "555-1212", "16505551212\"", "\"ann\""] {
        assert!(!text.contains(raw), "raw identifier {raw:?} left for Meta: {body}");
    }
    // The ledger says what was sent and in what form (recorded just after
    // the delivery).
    let id = event_id(&server, "order-1");
    let args = [&["deliveries", "show", "--event-id", &id, "--json"][..], &store_refs[..]].concat();
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = onepd(dir.path(), &args);
        if shown.status.success() || Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown: Value = serde_json::from_slice(shown.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(shown["destination"], "meta");
    assert_eq!(shown["outcome"], "delivered");
    assert!(shown["hashed"].as_array().unwrap().contains(&json!("em")), "{shown}");
    assert!(shown["scrubbed"].as_array().unwrap().contains(&json!("properties.email")), "{shown}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_receives_an_order_with_hashed_identifiers_and_its_event_id_on_sqlite() {
    meta_receives_an_order_with_hashed_identifiers_and_its_event_id(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_receives_an_order_with_hashed_identifiers_and_its_event_id_on_postgres() {
    let db = PgDatabase::create().await;
    meta_receives_an_order_with_hashed_identifiers_and_its_event_id(Some(&db.url)).await;
}

async fn failures_lose_nothing_and_dead_letters_are_retried(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let flaky = Stub::start(Mode::Fail).await;
    webhook_destination(dir.path(), &store, "flaky", &flaky, &["--setting-json", "batch_size=4"]);
    send(&server, (0..20).map(|n| track(n, json!({}))).collect()).await;
    // Failing for a while: attempts are made and nothing is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *flaky.state.requests.lock().unwrap() < 3 {
        assert!(Instant::now() < deadline, "no retries were made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flaky.set(Mode::Accept);
    let expected: BTreeSet<String> = (0..20).map(|n| event_id(&server, &format!("m-{n}"))).collect();
    flaky
        .wait_for(Duration::from_secs(20), "every event once the destination recovers", |stub| {
            stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == expected
        })
        .await;

    // A 400 for one event of a batch: the batch is split, the others are
    // delivered and the bad one is dead-lettered until retried.
    flaky.set(Mode::RefuseBad);
    send(&server, (20..24).map(|n| track(n, json!({ "bad": n == 22 }))).collect()).await;
    let good: BTreeSet<String> = [20, 21, 23].iter().map(|n| event_id(&server, &format!("m-{n}"))).collect();
    flaky
        .wait_for(Duration::from_secs(20), "the good events of a refused batch", |stub| {
            good.iter().all(|id| stub.webhook_ids().contains_key(id))
        })
        .await;
    let bad = event_id(&server, "m-22");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dead = onepd(
            dir.path(),
            &[&["deliveries", "list", "--destination", "flaky", "--dead", "--json"][..], &store_refs[..]].concat(),
        );
        let text = String::from_utf8_lossy(&dead.stdout).to_string();
        if text.contains(&bad) {
            assert!(text.contains("400"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the bad event was not dead-lettered: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!flaky.webhook_ids().contains_key(&bad));
    flaky.set(Mode::Accept);
    let retried = onepd_json(
        dir.path(),
        &[&["deliveries", "retry-dead", "--destination", "flaky", "--wait"][..], &store_refs[..]].concat(),
    );
    assert_eq!(retried["delivered"], 1, "{retried}");
    assert_eq!(flaky.webhook_ids()[&bad], 1);
    let listed = onepd(
        dir.path(),
        &[&["deliveries", "list", "--destination", "flaky", "--dead", "--json"][..], &store_refs[..]].concat(),
    );
    assert!(listed.stdout.is_empty(), "dead letters left: {}", String::from_utf8_lossy(&listed.stdout));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_gets_every_event_once_it_recovers_and_a_refused_one_after_retry_dead_on_sqlite() {
    failures_lose_nothing_and_dead_letters_are_retried(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_gets_every_event_once_it_recovers_and_a_refused_one_after_retry_dead_on_postgres() {
    let db = PgDatabase::create().await;
    failures_lose_nothing_and_dead_letters_are_retried(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_destination_does_not_delay_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let hung = Stub::start(Mode::Hang).await;
    let healthy = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &[], "hung", &hung, &["--timeout-ms", "60000"]);
    webhook_destination(dir.path(), &[], "healthy", &healthy, &[]);
    send(&server, (0..10).map(|n| track(n, json!({}))).collect()).await;
    // The hung destination is stuck on its first batch …
    let deadline = Instant::now() + Duration::from_secs(10);
    while *hung.state.requests.lock().unwrap() < 1 {
        assert!(Instant::now() < deadline, "the hung destination was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // … while the healthy one takes everything, including what comes after.
    let started = Instant::now();
    send(&server, (10..20).map(|n| track(n, json!({}))).collect()).await;
    let expected: BTreeSet<String> = (0..20).map(|n| event_id(&server, &format!("m-{n}"))).collect();
    healthy
        .wait_for(Duration::from_secs(10), "the healthy destination's events", |stub| {
            stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == expected
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(hung.webhook_ids().is_empty());
    drop(server);
}

/// How many pages `reader` has read from the log, from `/metrics`.
async fn log_reads(server: &Server, reader: &str) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", server.http)).await.unwrap().text().await.unwrap();
    let series = format!("onepd_activation_log_reads_total{{reader=\"{reader}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(series.as_str())).map_or(0, |count| count.trim().parse().unwrap())
}

/// The pages each of `names`' runs read from the log on its own.
async fn own_reads(server: &Server, names: &[String]) -> Vec<u64> {
    let mut reads = Vec::new();
    for name in names {
        reads.push(log_reads(server, &format!("destination:{name}")).await);
    }
    reads
}

/// Live destinations at the head of the log share one read of it: new
/// events reach all of them through the shared reader, and none reads the
/// log on its own again. A slow one that falls further behind than the
/// shared reader keeps reads on its own, and still gets every event once,
/// while the others do not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_destinations_share_one_read_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let names: Vec<String> = (0..3).map(|n| format!("fan-{n}")).collect();
    let mut stubs = Vec::new();
    for name in &names {
        let stub = Stub::start(Mode::Accept).await;
        webhook_destination(dir.path(), &[], name, &stub, &[]);
        stubs.push(stub);
    }
    // A fifth of a second per batch of one event: it falls behind.
    let slow = Stub::start(Mode::Slow).await;
    webhook_destination(dir.path(), &[], "slow", &slow, &["--setting-json", "batch_size=1"]);
    let all_have = |upto: usize| {
        let expected: BTreeSet<String> = (0..upto).map(|n| event_id(&server, &format!("m-{n}"))).collect();
        move |stub: &Stub| stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == expected
    };
    send(&server, vec![track(0, json!({}))]).await;
    for stub in stubs.iter().chain([&slow]) {
        stub.wait_for(Duration::from_secs(10), "the first event", all_have(1)).await;
    }
    let own_before = own_reads(&server, &names).await;
    let slow_before = log_reads(&server, "destination:slow").await;
    let shared_before = log_reads(&server, "shared").await;
    // One event at a time, so each is a page of its own.
    const EVENTS: usize = 40;
    for n in 1..=EVENTS {
        send(&server, vec![track(n, json!({}))]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for stub in &stubs {
        stub.wait_for(Duration::from_secs(10), "every event", all_have(EVENTS + 1)).await;
    }
    let own_after = own_reads(&server, &names).await;
    let shared_after = log_reads(&server, "shared").await;
    assert!(own_before.iter().all(|&reads| reads > 0), "each run read on its own to reach the head: {own_before:?}");
    assert_eq!(own_after, own_before, "a run at the head read the log on its own");
    assert!(shared_after > shared_before, "the shared reader read nothing: {shared_before} → {shared_after}");
    assert!(
        slow.webhook_ids().len() < EVENTS / 2,
        "the fast destinations waited for the slow one ({} delivered there)",
        slow.webhook_ids().len()
    );
    slow.wait_for(Duration::from_secs(30), "every event at the slow one", all_have(EVENTS + 1)).await;
    assert!(slow.webhook_ids().values().all(|&times| times == 1), "{:?}", slow.webhook_ids());
    let slow_after = log_reads(&server, "destination:slow").await;
    assert!(slow_after > slow_before, "the slow run never fell behind the shared reader");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_onepd_mid_delivery_delivers_every_event_at_least_once_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let stub = Stub::start(Mode::Slow).await;
    webhook_destination(dir.path(), &[], "hook", &stub, &["--setting-json", "batch_size=5"]);
    send(&server, (0..60).map(|n| track(n, json!({}))).collect()).await;
    let expected: BTreeSet<String> = (0..60).map(|n| event_id(&server, &format!("m-{n}"))).collect();
    // Some batches are delivered, more are on their way, when onepd is killed.
    stub.wait_for(Duration::from_secs(10), "a first batch", |stub| !stub.webhook_ids().is_empty()).await;
    drop(server); // SIGKILL
    let seen_before = stub.webhook_ids().len();
    assert!(seen_before < 60, "everything was delivered before the kill; the test proves nothing");
    let server = Server::start(dir.path(), &[]);
    stub.wait_for(Duration::from_secs(20), "every event after the restart", |stub| {
        stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == expected
    })
    .await;
    // Duplicates carry the same event ids: nothing else arrived.
    assert!(stub.webhook_ids().keys().all(|id| expected.contains(id)));
    drop(server);
}

async fn a_new_destination_replays_the_whole_history(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    send(&server, (0..30).map(|n| track(n, json!({}))).collect()).await;
    let expected: BTreeSet<String> = (0..30).map(|n| event_id(&server, &format!("m-{n}"))).collect();

    let backfill = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &store, "backfill", &backfill, &["--from", "beginning"]);
    backfill
        .wait_for(Duration::from_secs(20), "the backfill", |stub| {
            stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == expected
        })
        .await;

    // A destination created "from now" gets nothing old until a replay.
    let later = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &store, "later", &later, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(later.webhook_ids().is_empty());
    let job = onepd_json(
        dir.path(),
        &[&["replay", "--destination", "later", "--from", "1", "--wait"][..], &store_refs[..]].concat(),
    );
    assert_eq!(job["delivered"], 30, "{job}");
    assert_eq!(later.webhook_ids().keys().cloned().collect::<BTreeSet<_>>(), expected);
    let listed = onepd(dir.path(), &[&["destination", "list", "--json"][..], &store_refs[..]].concat());
    let listed: Vec<Value> = listed
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0]["name"].as_str(), listed[0]["delivered"].as_u64()), (Some("backfill"), Some(30)));
    assert_eq!((listed[1]["name"].as_str(), listed[1]["delivered"].as_u64()), (Some("later"), Some(30)));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_destination_replays_the_whole_history_on_sqlite() {
    a_new_destination_replays_the_whole_history(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_destination_replays_the_whole_history_on_postgres() {
    let db = PgDatabase::create().await;
    a_new_destination_replays_the_whole_history(Some(&db.url)).await;
}

/// `onepd replay` by time: a window holding no event queues nothing and says
/// so (rather than failing on positions the caller never gave), a window
/// holding events replays them, and positions given backwards stay an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_a_time_window_that_holds_no_event_queues_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let stub = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &[], "warehouse", &stub, &[]);
    send(&server, vec![track(1, json!({}))]).await;

    let quiet_day = ["--from", "2000-01-01T00:00:00Z", "--to", "2000-01-02T00:00:00Z"];
    let output = onepd(dir.path(), &[&["replay", "--destination", "warehouse"][..], &quiet_day[..]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "nothing to replay to \"warehouse\": no event was recorded from 2000-01-01T00:00:00Z to 2000-01-02T00:00:00Z"
    );
    let future = onepd_json(dir.path(), &["replay", "--destination", "warehouse", "--from", "2999-01-01T00:00:00Z"]);
    assert_eq!((future["job_id"].clone(), future["events"].clone()), (Value::Null, json!(0)), "{future}");

    let everything =
        onepd_json(dir.path(), &["replay", "--destination", "warehouse", "--from", "2000-01-01T00:00:00Z", "--wait"]);
    assert_eq!(everything["from"], 1, "{everything}");
    assert!(everything["delivered"].as_u64() >= Some(1), "{everything}");
    assert!(stub.webhook_ids().contains_key(&event_id(&server, "m-1")), "{:?}", stub.webhook_ids());

    let backwards = onepd(dir.path(), &["replay", "--destination", "warehouse", "--from", "5", "--to", "3"]);
    assert_eq!(backwards.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&backwards.stderr).contains("replay range: expected 1 ≤ from ≤ to, found from 5 to 3"),
        "{}",
        String::from_utf8_lossy(&backwards.stderr)
    );
    drop(server);
}

/// The ids of a stub's deliveries, each with how many times it came.
fn delivered(stub: &Stub) -> std::collections::BTreeMap<String, usize> {
    stub.webhook_ids()
}

/// After each operator fact (`identity block|unblock|split|rules set`,
/// `forget`), a new event reaches every destination of the workspace exactly
/// once, the server does not loop (its log stays small), and a destination
/// created over that history delivers all of it.
async fn operator_facts_apply_once_and_deliveries_go_on(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let log = dir.path().join("serve.log");
    let server = Server::start_logging(dir.path(), &store_refs, &log);
    let first = Stub::start(Mode::Accept).await;
    let second = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &store, "first", &first, &[]);
    webhook_destination(dir.path(), &store, "second", &second, &[]);
    let cli = |args: &[&str]| onepd_json(dir.path(), &[args, &store_refs[..]].concat());

    // A visitor who later signs in: two profiles merged, for the split.
    send(
        &server,
        vec![
            json!({"type": "page", "messageId": "f-visit", "anonymousId": "a-facts", "name": "Home"}),
            json!({"type": "identify", "messageId": "f-signup", "userId": "u-facts",
                "traits": {"email": "facts@example.com"}}),
            json!({"type": "identify", "messageId": "f-login", "userId": "u-facts", "anonymousId": "a-facts"}),
            json!({"type": "identify", "messageId": "f-gone", "userId": "gone-user",
                "traits": {"email": "gone@example.com"}}),
        ],
    )
    .await;
    let mut expected: BTreeSet<String> =
        ["f-visit", "f-signup", "f-login"].iter().map(|id| event_id(&server, id)).collect();
    let both_have = |ids: &BTreeSet<String>| {
        let ids = ids.clone();
        move |stub: &Stub| ids.iter().all(|id| stub.webhook_ids().contains_key(id))
    };
    first.wait_for(Duration::from_secs(30), "the first events", both_have(&expected)).await;
    second.wait_for(Duration::from_secs(30), "the first events", both_have(&expected)).await;

    let workspace = WorkspaceId(server.workspace.as_ref().unwrap().parse::<Uuid>().unwrap());
    let profile = onepd_domain::identity::ProfileId::created_by(workspace, EventId::for_message(workspace, "f-signup"))
        .to_string();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, json!({"blocked_values": ["nobody@example.com"]}).to_string()).unwrap();
    let facts: Vec<(&str, Vec<&str>)> = vec![
        ("block", vec!["identity", "block", "email:facts@example.com"]),
        ("unblock", vec!["identity", "unblock", "email:facts@example.com"]),
        ("split", vec!["identity", "split", "--profile", &profile]),
        ("rules", vec!["identity", "rules", "set", rules.to_str().unwrap()]),
        ("forget", vec!["forget", "--user-id", "gone-user"]),
    ];
    for (name, args) in facts {
        cli(&args);
        let message_id = format!("after-{name}");
        send(
            &server,
            vec![json!({"type": "track", "messageId": message_id, "userId": "u-facts", "event": "Item Viewed"})],
        )
        .await;
        expected.insert(event_id(&server, &message_id));
        let what = format!("the event after {name}");
        first.wait_for(Duration::from_secs(30), &what, both_have(&expected)).await;
        second.wait_for(Duration::from_secs(30), &what, both_have(&expected)).await;
    }
    // Nothing is sent twice, and the server is not folding in a loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for stub in [&first, &second] {
        let twice: Vec<_> = delivered(stub).into_iter().filter(|(_, count)| *count > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let refolds = logged.matches("folding profiles again").count();
    assert!(refolds <= 20, "{refolds} refolds logged; the log is {} bytes", logged.len());
    assert!(logged.len() < 256 * 1024, "the server logged {} bytes", logged.len());

    // A destination created over that history delivers all of it, once.
    let from_beginning = Stub::start(Mode::Accept).await;
    webhook_destination(dir.path(), &store, "from-beginning", &from_beginning, &["--from", "beginning"]);
    from_beginning.wait_for(Duration::from_secs(30), "the whole history", both_have(&expected)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(delivered(&from_beginning).values().all(|&count| count == 1), "{:?}", delivered(&from_beginning));
    assert!(
        !delivered(&from_beginning).contains_key(&event_id(&server, "f-gone")),
        "the forgotten person's event is not replayed"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_facts_apply_once_and_deliveries_go_on_on_sqlite() {
    operator_facts_apply_once_and_deliveries_go_on(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_facts_apply_once_and_deliveries_go_on_on_postgres() {
    let db = PgDatabase::create().await;
    operator_facts_apply_once_and_deliveries_go_on(Some(&db.url)).await;
}

/// An audience connected to Meta: its current members are added to the
/// custom audience when it is connected, a person who enters later is
/// added, and people who leave as time passes are removed — each by the
/// SHA-256 of their normalized email in Meta's multi-key schema, never in
/// clear, and nobody added or removed twice.
async fn meta_custom_audience_follows_an_audiences_entries_and_exits(url: Option<&str>) {
    const DAY: i64 = 86_400_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let meta = Stub::start(Mode::Accept).await;
    let cli = |args: &[&str]| onepd_json(dir.path(), &[args, &store_refs[..]].concat());
    meta_destination(dir.path(), &store, &meta);
    let person = |id: &str, user: &str, email: &str| json!({"type": "identify", "messageId": id, "userId": user, "traits": {"email": email}});
    let order =
        |id: &str, user: &str| json!({"type": "track", "messageId": id, "userId": user, "event": "Order Completed"});
    send(
        &server,
        vec![
            person("ca-1", "u-1", " Ann@Example.com "),
            order("ca-2", "u-1"),
            order("ca-3", "u-1"),
            person("ca-4", "u-2", "bob@example.com"),
            order("ca-5", "u-2"),
        ],
    )
    .await;
    cli(&["audience", "define", "repeat buyers", r#"performed "Order Completed" at least 2 times within 30 days"#]);
    let members = cli(&["audience", "members", "repeat buyers", "--wait"]);
    assert_eq!(members["size"], 1, "{members}");

    let connected = cli(&["audience", "connect", "repeat buyers", "--destination", "meta", "--external-id", "2385"]);
    assert_eq!(connected["members_sent"], 1, "{connected}");
    let (ann, bob) = (sha256_hex("ann@example.com"), sha256_hex("bob@example.com"));
    let audience_calls = |stub: &Stub| -> Vec<(String, Value)> {
        stub.bodies().into_iter().filter(|(path, _)| path.contains("/2385/users")).collect()
    };
    let emails = |calls: &[(String, Value)], delete: bool| -> Vec<String> {
        let mut found: Vec<String> = (calls.iter())
            .filter(|(path, _)| path.starts_with("DELETE ") == delete)
            .flat_map(|(_, body)| body["payload"]["data"].as_array().unwrap().clone())
            .map(|row| row[0].as_str().unwrap().to_owned())
            .collect();
        found.sort();
        found
    };
    meta.wait_for(Duration::from_secs(20), "the current member is added", |stub| {
        emails(&audience_calls(stub), false).len() == 1
    })
    .await;
    let calls = audience_calls(&meta);
    assert!(calls[0].0.starts_with("/v21.0/2385/users?access_token=EAAtoken"), "{}", calls[0].0);
    assert_eq!(calls[0].1["payload"]["schema"][0], "EMAIL_SHA256");
    assert_eq!(emails(&calls, false), vec![ann.clone()]);

    // Bob's second order: he enters, and is added.
    send(&server, vec![order("ca-6", "u-2")]).await;
    meta.wait_for(Duration::from_secs(20), "the new member is added", |stub| {
        emails(&audience_calls(stub), false).len() == 2
    })
    .await;

    // Thirty-one days on, both orders of each have left the window.
    let later = onepd_domain::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 31 * DAY,
    );
    cli(&["audience", "tick", "--at", &later.to_rfc3339()]);
    meta.wait_for(Duration::from_secs(20), "both are removed", |stub| emails(&audience_calls(stub), true).len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = audience_calls(&meta);
    let mut both = vec![ann.clone(), bob.clone()];
    both.sort();
    assert_eq!(emails(&calls, false), both, "each added once");
    assert_eq!(emails(&calls, true), both, "each removed once");
    let text = serde_json::to_string(&calls).unwrap().to_lowercase();
    assert!(!text.contains("example.com"), "a raw email left for Meta: {text}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_custom_audience_follows_an_audiences_entries_and_exits_on_sqlite() {
    meta_custom_audience_follows_an_audiences_entries_and_exits(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_custom_audience_follows_an_audiences_entries_and_exits_on_postgres() {
    let db = PgDatabase::create().await;
    meta_custom_audience_follows_an_audiences_entries_and_exits(Some(&db.url)).await;
}

/// A computed trait a destination chose (`--trait orders`) reaches it as an
/// `identify` each time its value changes: live, and when its window passes.
async fn a_computed_trait_reaches_the_destination_that_chose_it_when_it_changes(url: Option<&str>) {
    const DAY: i64 = 86_400_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let hook = Stub::start(Mode::Accept).await;
    let plain = Stub::start(Mode::Accept).await;
    let cli = |args: &[&str]| onepd_json(dir.path(), &[args, &store_refs[..]].concat());
    webhook_destination(dir.path(), &store, "hook", &hook, &["--trait", "orders"]);
    webhook_destination(dir.path(), &store, "plain", &plain, &[]);
    cli(&["computed", "define", "orders", r#"{"event": "Order Completed", "kind": "count", "within": {"days": 30}}"#]);
    // Changed by the same orders, in the same change events, but not chosen.
    cli(&["computed", "define", "all_orders", r#"{"event": "Order Completed", "kind": "count"}"#]);
    let order =
        |id: &str, user: &str| json!({"type": "track", "messageId": id, "userId": user, "event": "Order Completed"});
    send(
        &server,
        vec![
            json!({"type": "identify", "messageId": "ct-1", "userId": "u-1", "traits": {"email": "ann@example.com"}}),
            order("ct-2", "u-1"),
            order("ct-3", "u-1"),
        ],
    )
    .await;
    // What the hook received of the computed trait, in order.
    let values = |stub: &Stub| -> Vec<Value> {
        (stub.bodies().into_iter())
            .flat_map(|(_, body)| body["batch"].as_array().cloned().unwrap_or_default())
            .filter(|event| event["type"] == "identify" && event["message"]["traits"].get("orders").is_some())
            .map(|event| event["message"]["traits"]["orders"].clone())
            .collect()
    };
    hook.wait_for(Duration::from_secs(20), "two orders counted", |stub| values(stub).last() == Some(&json!(2))).await;
    assert_eq!(values(&hook), [json!(0), json!(1), json!(2)], "each change once, in order");
    let changes: Vec<Value> = (hook.bodies().into_iter())
        .flat_map(|(_, body)| body["batch"].as_array().cloned().unwrap_or_default())
        .filter(|event| event["type"] == "identify" && event["message"]["traits"].get("orders").is_some())
        .collect();
    assert_eq!(changes[2]["identifiers"]["email"], json!(["ann@example.com"]), "{}", changes[2]);
    assert_eq!(changes[2]["traits"]["orders"], 2);
    assert!(changes.iter().all(|c| c["message"]["traits"].get("all_orders").is_none()), "{changes:?}");

    // Thirty-one days on, both orders have left the window.
    let later = onepd_domain::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 31 * DAY,
    );
    cli(&["audience", "tick", "--at", &later.to_rfc3339()]);
    hook.wait_for(Duration::from_secs(20), "the window passed", |stub| values(stub).len() == 4).await;
    assert_eq!(values(&hook)[3], json!(0));
    // A destination that did not choose the trait gets the messages only.
    let events = |stub: &Stub| -> usize {
        stub.bodies().iter().map(|(_, body)| body["batch"].as_array().map_or(0, Vec::len)).sum()
    };
    plain.wait_for(Duration::from_secs(20), "the three messages", |stub| events(stub) >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(values(&plain).is_empty(), "{:?}", plain.bodies());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computed_trait_reaches_the_destination_that_chose_it_on_sqlite() {
    a_computed_trait_reaches_the_destination_that_chose_it_when_it_changes(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computed_trait_reaches_the_destination_that_chose_it_on_postgres() {
    let db = PgDatabase::create().await;
    a_computed_trait_reaches_the_destination_that_chose_it_when_it_changes(Some(&db.url)).await;
}

/// The marketing automation tools follow an audience as Meta does: the
/// current member is added when it is connected, a live entry is added, and
/// both are removed when the window passes — Klaviyo by list subscription,
/// Mailchimp by tag, Braze by a custom attribute array, each once.
async fn marketing_tools_follow_an_audiences_entries_and_exits(url: Option<&str>) {
    const DAY: i64 = 86_400_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = store_args(url);
    let store_refs: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &store_refs);
    let cli = |args: &[&str]| onepd_json(dir.path(), &[args, &store_refs[..]].concat());
    let (klaviyo, mailchimp, braze) =
        (Stub::start(Mode::Accept).await, Stub::start(Mode::Accept).await, Stub::start(Mode::Accept).await);
    for (name, stub, settings) in [
        ("klaviyo", &klaviyo, vec!["api_key=pk_test"]),
        ("mailchimp", &mailchimp, vec!["api_key=key-us6", "list_id=L1"]),
        ("braze", &braze, vec!["api_key=braze-key"]),
    ] {
        let endpoint = format!("endpoint={}", stub.url());
        let mut args = vec!["--adapter", name, "--setting", endpoint.as_str()];
        for setting in &settings {
            args.extend(["--setting", setting]);
        }
        create_destination(dir.path(), &store, name, &args);
    }
    let person = |id: &str, user: &str, email: &str| json!({"type": "identify", "messageId": id, "userId": user, "traits": {"email": email}});
    let order =
        |id: &str, user: &str| json!({"type": "track", "messageId": id, "userId": user, "event": "Order Completed"});
    send(
        &server,
        vec![
            person("mt-1", "u-1", " Ann@Example.com "),
            order("mt-2", "u-1"),
            order("mt-3", "u-1"),
            person("mt-4", "u-2", "bob@example.com"),
            order("mt-5", "u-2"),
        ],
    )
    .await;
    cli(&["audience", "define", "repeat buyers", r#"performed "Order Completed" at least 2 times within 30 days"#]);
    assert_eq!(cli(&["audience", "members", "repeat buyers", "--wait"])["size"], 1);
    for (name, list) in [("klaviyo", "LIST9"), ("mailchimp", "VIP"), ("braze", "segments")] {
        cli(&["audience", "connect", "repeat buyers", "--destination", name, "--external-id", list]);
    }

    // Who each tool was told entered (`true`) or left (`false`), in order.
    let klaviyo_changes = |stub: &Stub| -> Vec<(String, bool)> {
        (stub.bodies().into_iter())
            .filter(|(path, _)| path.contains("profile-subscription-bulk"))
            .flat_map(|(path, body)| {
                let entered = path.contains("create");
                assert_eq!(body["data"]["relationships"]["list"]["data"]["id"], "LIST9");
                (body["data"]["attributes"]["profiles"]["data"].as_array().unwrap().iter())
                    .map(|p| (p["attributes"]["email"].as_str().unwrap().to_owned(), entered))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mailchimp_changes = |stub: &Stub| -> Vec<(String, bool)> {
        (stub.bodies().into_iter())
            .filter(|(path, _)| path.ends_with("/tags"))
            .map(|(path, body)| {
                assert_eq!(body["tags"][0]["name"], "VIP");
                let hash = path.trim_end_matches("/tags").rsplit('/').next().unwrap().to_owned();
                (hash, body["tags"][0]["status"] == "active")
            })
            .collect()
    };
    let braze_changes = |stub: &Stub| -> Vec<(String, bool)> {
        (stub.bodies().into_iter())
            .flat_map(|(_, body)| body["attributes"].as_array().cloned().unwrap_or_default())
            .filter_map(|object| {
                let change = object.get("segments")?;
                Some((object["external_id"].as_str().unwrap().to_owned(), change.get("add").is_some()))
            })
            .collect()
    };
    let ann_hash = onepd_adapters::destinations::mailchimp::subscriber_hash("ann@example.com");
    let bob_hash = onepd_adapters::destinations::mailchimp::subscriber_hash("bob@example.com");
    let wait_all = |n: usize, what: &'static str| {
        let (klaviyo, mailchimp, braze) = (&klaviyo, &mailchimp, &braze);
        async move {
            klaviyo.wait_for(Duration::from_secs(20), what, |stub| klaviyo_changes(stub).len() == n).await;
            mailchimp.wait_for(Duration::from_secs(20), what, |stub| mailchimp_changes(stub).len() == n).await;
            braze.wait_for(Duration::from_secs(20), what, |stub| braze_changes(stub).len() == n).await;
        }
    };
    wait_all(1, "the current member is added").await;
    send(&server, vec![order("mt-6", "u-2")]).await;
    wait_all(2, "the new member is added").await;
    let later = onepd_domain::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 31 * DAY,
    );
    cli(&["audience", "tick", "--at", &later.to_rfc3339()]);
    wait_all(4, "both are removed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sorted = |mut changes: Vec<(String, bool)>| {
        changes.sort();
        changes
    };
    let each = |ann: &str, bob: &str| {
        sorted(vec![(ann.to_owned(), true), (ann.to_owned(), false), (bob.to_owned(), true), (bob.to_owned(), false)])
    };
    assert_eq!(
        sorted(klaviyo_changes(&klaviyo)),
        each("ann@example.com", "bob@example.com"),
        "each added and removed once"
    );
    assert_eq!(sorted(mailchimp_changes(&mailchimp)), each(&ann_hash, &bob_hash));
    assert_eq!(sorted(braze_changes(&braze)), each("u-1", "u-2"));
    // Mailchimp was asked to create the members before tagging them.
    let members = mailchimp.bodies().into_iter().filter(|(path, _)| path.starts_with("PUT ")).count();
    assert_eq!(members, 2 + 2, "two identifies and two entries: {:?}", mailchimp.bodies());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_tools_follow_an_audiences_entries_and_exits_on_sqlite() {
    marketing_tools_follow_an_audiences_entries_and_exits(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_tools_follow_an_audiences_entries_and_exits_on_postgres() {
    let db = PgDatabase::create().await;
    marketing_tools_follow_an_audiences_entries_and_exits(Some(&db.url)).await;
}
