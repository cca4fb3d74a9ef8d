//! The read side at scale, by its shape: `onepd serve` on a log of 200,000
//! imported orders with five destinations is restarted, and a new event of
//! a known customer is readable in their profile and delivered to all five
//! within seconds, in bounded memory — the projection and the destinations
//! resume at their checkpoints instead of re-deriving every profile.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stub::{Mode, Stub};
use support::{Server, onepd_json_within};

const ORDERS: usize = 200_000;
const CUSTOMERS: usize = 40_000;
const DESTINATIONS: usize = 5;
/// From the start of the restarted server to the new event readable and
/// delivered everywhere.
const RESTART_DEADLINE: Duration = Duration::from_secs(10);
/// The restarted server's peak resident memory.
const RSS_BOUND_MB: f64 = 400.0;

async fn send(server: &Server, key: &str, message: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.http))
        .basic_auth(key, Some(""))
        .json(&json!({ "batch": [message] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// An order of `customer` carrying `marker` as a trait, so the profile
/// shows it was read.
fn order(message_id: &str, customer: &str, marker: &str) -> Value {
    json!({"type": "track", "messageId": message_id, "userId": customer, "event": "Order Completed",
           "properties": {"revenue": 12.5}, "context": {"traits": {"last_marker": marker}}})
}

/// The profile's `last_marker` trait, if the profile is readable.
async fn marker(server: &Server, workspace: &str, token: &str, customer: &str) -> Option<String> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/spaces/{workspace}/collections/users/profiles/user_id:{customer}/traits", server.http))
        .basic_auth(token, Some(""))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["traits"]["last_marker"].as_str().map(str::to_owned)
}

fn delivered(stubs: &[Stub], message_id: &str) -> usize {
    stubs.iter().filter(|stub| stub.bodies().iter().any(|(_, body)| body.to_string().contains(message_id))).count()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_big_log_with_five_destinations_delivers_a_new_event_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (key, token) = (server.write_key.clone().unwrap(), server.admin_token.clone().unwrap());
    let workspace = server.workspace.clone().unwrap();

    let started = Instant::now();
    let csv = dir.path().join("orders.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    writeln!(file, "order_id,customer_id,email,total,ordered_at").unwrap();
    for n in 0..ORDERS {
        let customer = n % CUSTOMERS;
        writeln!(
            file,
            "o-{n},c-{customer},c{customer}@example.com,{}.50,2026-01-{:02}T10:00:00Z",
            10 + n % 90,
            1 + n % 28
        )
        .unwrap();
    }
    drop(file);
    let mapping = dir.path().join("orders.json");
    let orders = json!({"type": "track", "event": "Order Completed", "user_id": "customer_id",
        "traits": {"email": "email"}, "properties": {"order_id": "order_id", "revenue": "total"},
        "timestamp": "ordered_at", "types": {"total": "number"}});
    std::fs::write(&mapping, orders.to_string()).unwrap();
    let imported = onepd_json_within(
        dir.path(),
        &["import", csv.to_str().unwrap(), "--source", "http", "--mapping", mapping.to_str().unwrap()],
        Duration::from_secs(280),
    );
    assert_eq!(imported["accepted"], ORDERS, "{imported}");
    eprintln!("{ORDERS} orders imported in {:.1} s", started.elapsed().as_secs_f64());

    // The first projection of the imported log: the last customer is readable.
    let started = Instant::now();
    let last = format!("c-{}", CUSTOMERS - 1);
    send(&server, &key, order("warm-up", &last, "projected")).await;
    while marker(&server, &workspace, &token, &last).await.as_deref() != Some("projected") {
        assert!(started.elapsed() < Duration::from_secs(600), "the first projection did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("first projection of {ORDERS} events in {:.1} s", started.elapsed().as_secs_f64());

    let mut stubs = Vec::new();
    for n in 0..DESTINATIONS {
        let stub = Stub::start(Mode::Accept).await;
        let url = format!("url={}/hook", stub.url());
        onepd_json_within(
            dir.path(),
            &[
                "destination",
                "create",
                &format!("hook-{n}"),
                "--adapter",
                "webhook",
                "--setting",
                &url,
                "--from",
                "now",
            ],
            support::COMMAND_PATIENCE,
        );
        stubs.push(stub);
    }
    send(&server, &key, order("before-restart", "c-1", "before")).await;
    let started = Instant::now();
    while delivered(&stubs, "before-restart") < DESTINATIONS {
        assert!(started.elapsed() < Duration::from_secs(60), "the five destinations did not all run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.terminate().success());

    // The restart: the clock runs from the start of the process.
    let started = Instant::now();
    let server = Server::start(dir.path(), &[]);
    let customer = "c-7";
    send(&server, &key, order("after-restart", customer, "after")).await;
    let (mut readable, mut everywhere) = (None, None);
    while readable.is_none() || everywhere.is_none() {
        let elapsed = started.elapsed();
        assert!(
            elapsed < RESTART_DEADLINE,
            "after a restart the new event was not readable ({readable:?}) and delivered to all five \
             ({} of {DESTINATIONS}) within {RESTART_DEADLINE:?}",
            delivered(&stubs, "after-restart")
        );
        if readable.is_none() && marker(&server, &workspace, &token, customer).await.as_deref() == Some("after") {
            readable = Some(elapsed);
        }
        if everywhere.is_none() && delivered(&stubs, "after-restart") == DESTINATIONS {
            everywhere = Some(elapsed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = peak_rss_mb(server.pid());
    eprintln!(
        "restart with {DESTINATIONS} destinations on {ORDERS} events: readable after {:.2} s, delivered to all after {:.2} s; peak RSS {peak:.0} MB",
        readable.unwrap().as_secs_f64(),
        everywhere.unwrap().as_secs_f64()
    );
    assert!(peak < RSS_BOUND_MB, "the restarted server peaked at {peak:.0} MB, over {RSS_BOUND_MB} MB");
    assert!(server.terminate().success());
}
