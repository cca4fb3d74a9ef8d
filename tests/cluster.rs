//! Several `onepd serve` nodes on one PostgreSQL: either node ingests, each
//! destination is delivered by one node only (each event once), and when
//! that node is killed the other takes the destination over within the
//! lease's time to live, delivering every event at least once with its id
//! unchanged.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use onepd_domain::{EventId, WorkspaceId};
use onepd_proto::admin::v1::ClusterStatusRequest;
use onepd_proto::admin::v1::admin_service_client::AdminServiceClient;
use serde_json::{Value, json};
use stub::{Mode, Stub};
use support::{PgDatabase, Server, cluster_status, onepd_json, with_token};
use uuid::Uuid;

/// The lease time to live the nodes run with (seconds).
const TTL: &str = "2";

async fn send(server: &Server, write_key: &str, from: usize, to: usize) {
    let messages: Vec<Value> = (from..to)
        .map(|n| json!({"type": "track", "messageId": format!("m-{n}"), "userId": format!("user-{}", n % 9), "event": "Item Viewed"}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.http))
        .timeout(Duration::from_secs(30))
        .basic_auth(write_key, Some(""))
        .json(&json!({ "batch": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn ids(workspace: &str, from: usize, to: usize) -> BTreeSet<String> {
    let workspace = WorkspaceId(workspace.parse::<Uuid>().unwrap());
    (from..to).map(|n| EventId::for_message(workspace, &format!("m-{n}")).to_string()).collect()
}

/// The node holding `lease`, as `onepd cluster status` says.
fn holder(status: &Value, lease: &str) -> Option<String> {
    let leases = status["leases"].as_array()?;
    let found = leases.iter().find(|l| l["lease"] == lease)?;
    found["holder"].as_str().map(str::to_owned)
}

/// `ClusterStatus` over gRPC with `token`: the leases it shows, by name,
/// with their holders, and the number of nodes alive.
async fn grpc_status(server: &Server, token: &str) -> (Vec<(String, String, String)>, usize) {
    let mut client = AdminServiceClient::new(server.channel().await);
    let status = client.cluster_status(with_token(ClusterStatusRequest {}, token)).await.unwrap().into_inner();
    let leases = status.leases.into_iter().map(|lease| (lease.lease, lease.holder, lease.destination)).collect();
    (leases, status.nodes.iter().filter(|node| node.alive).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_event_once_and_a_killed_owners_destination_moves_to_the_other() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", db.url.as_str(), "--lease-ttl-seconds", TTL];
    let one = Server::start(dir.path(), &args);
    let two = Server::start(dir.path(), &args);
    let write_key = one.write_key.clone().unwrap();
    let workspace = one.workspace.clone().unwrap();

    // Both nodes say they are alive, and the projections run (on the first:
    // running projections are not moved while their node lives).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster_status(dir.path(), &db.url);
        let alive = status["nodes"].as_array().unwrap().iter().filter(|n| n["alive"] == true).count();
        let profiles = holder(&status, "projection:profiles");
        let audiences = holder(&status, "projection:audiences");
        if alive == 2 && profiles.is_some() && audiences.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the two nodes did not take the projections' leases: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stub = Stub::start(Mode::Accept).await;
    let url = format!("url={}/hook", stub.url());
    let created = onepd_json(
        dir.path(),
        &[
            "destination",
            "create",
            "hook",
            "--adapter",
            "webhook",
            "--setting",
            &url,
            "--setting-json",
            "batch_size=10",
            "--database-url",
            &db.url,
        ],
    );
    let destination = created["destination_id"].as_str().unwrap().to_owned();

    // Either node ingests; one node delivers; each event arrives once.
    send(&one, &write_key, 0, 50).await;
    send(&two, &write_key, 50, 100).await;
    let first = ids(&workspace, 0, 100);
    stub.wait_for(Duration::from_secs(30), "every event from both nodes", |stub| {
        stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == first
    })
    .await;
    let twice: Vec<(String, usize)> = stub.webhook_ids().into_iter().filter(|(_, count)| *count > 1).collect();
    assert!(twice.is_empty(), "without a takeover nothing arrives twice: {twice:?}");

    // The node delivering the destination is killed; the other takes over.
    let lease = format!("destination:{destination}");
    let owner = holder(&cluster_status(dir.path(), &db.url), &lease).expect("the destination's lease is held");

    // Over gRPC, a workspace's token sees the nodes, the projections and its
    // own destinations' leases; another workspace's sees none of them.
    let token = one.admin_token.clone().unwrap();
    let (leases, alive) = grpc_status(&two, &token).await;
    assert_eq!(alive, 2);
    assert!(leases.contains(&(lease.clone(), owner.clone(), "hook".to_owned())), "{leases:?}");
    assert!(leases.iter().any(|(name, _, _)| name == "projection:profiles"), "{leases:?}");
    let other = onepd_json(dir.path(), &["workspace", "create", "other", "--database-url", &db.url]);
    let other_token = other["admin_token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let theirs = loop {
        let mut client = AdminServiceClient::new(one.channel().await);
        match client.cluster_status(with_token(ClusterStatusRequest {}, &other_token)).await {
            Ok(status) => break status.into_inner(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(err) => panic!("the other workspace's token: {err:?}"),
        }
    };
    assert!(theirs.leases.iter().all(|l| !l.lease.starts_with("destination:")), "{:?}", theirs.leases);
    let (victim, survivor) = if owner == one.node.clone() { (one, two) } else { (two, one) };
    assert_eq!(owner, victim.node.clone());
    // Mid-delivery: the destination answers slowly, and the node is killed
    // once some of the new events are through and more are on their way.
    stub.set(Mode::Slow);
    send(&survivor, &write_key, 100, 200).await;
    stub.wait_for(Duration::from_secs(30), "some of the new events", |stub| stub.webhook_ids().len() > 100).await;
    drop(victim); // SIGKILL
    let killed = Instant::now();
    let at_kill = stub.webhook_ids().len();
    assert!(at_kill < 200, "everything was delivered before the kill; the test proves nothing");
    // Delivering again elsewhere: new events arriving after the victim's
    // last request could have landed.
    let grace = Duration::from_millis(300);
    tokio::time::sleep(grace).await;
    let after_grace = stub.webhook_ids().len();
    stub.wait_for(Duration::from_secs(30), "the destination delivering again", |stub| {
        stub.webhook_ids().len() > after_grace
    })
    .await;
    let takeover = killed.elapsed();
    let ttl = Duration::from_secs(TTL.parse().unwrap());
    assert!(takeover < ttl + Duration::from_secs(5), "delivering again took {takeover:?}");
    println!("takeover: {:.2} s after the kill (lease time to live {} s)", takeover.as_secs_f64(), TTL);
    let all = ids(&workspace, 0, 200);
    stub.set(Mode::Accept);
    stub.wait_for(Duration::from_secs(30), "every event after the takeover", |stub| {
        stub.webhook_ids().keys().cloned().collect::<BTreeSet<_>>() == all
    })
    .await;
    let delivered = stub.webhook_ids();
    assert!(delivered.keys().all(|id| all.contains(id)), "only the events sent, with their ids");
    let twice = delivered.values().filter(|count| **count > 1).count();
    assert!(twice <= 10, "duplicates only from the in-flight batch: {twice}");
    let status = cluster_status(dir.path(), &db.url);
    assert_eq!(holder(&status, &lease), Some(survivor.node.clone()), "{status}");
    drop(survivor);
}

/// `GET …/profiles/user_id:{user}/traits` with `token`: its status.
async fn traits_status(server: &Server, workspace: &str, token: &str, user: &str) -> u16 {
    let url = format!("{}/v1/spaces/{workspace}/collections/users/profiles/user_id:{user}/traits", server.http);
    let response = reqwest::Client::new().get(url).basic_auth(token, Some("")).send().await.unwrap();
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_reads_go_to_the_read_replica_and_see_only_what_it_holds() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", db.url.as_str(), "--lease-ttl-seconds", TTL];
    let first = Server::start(dir.path(), &args);
    let (write_key, token) = (first.write_key.clone().unwrap(), first.admin_token.clone().unwrap());
    let workspace = first.workspace.clone().unwrap();
    let identify = |user: &str| json!({"batch": [{"type": "identify", "messageId": format!("id-{user}"), "userId": user, "traits": {"plan": "pro"}}]});
    let http = reqwest::Client::new();
    let sent = http.post(format!("{}/v1/batch", first.http)).basic_auth(&write_key, Some("")).json(&identify("ann"));
    assert_eq!(sent.send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while traits_status(&first, &workspace, &token, "ann").await != 200 {
        assert!(Instant::now() < deadline, "ann's profile never became readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.terminate().success());

    // The replica: a copy of the database as it is now, which will fall
    // behind (a replica whose replication stopped here).
    let replica_name = format!("{}_replica", db.url.rsplit('/').next().unwrap());
    let admin = sqlx::PgPool::connect(&support::postgres_admin_url()).await.unwrap();
    let primary_name = db.url.rsplit('/').next().unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{replica_name}\" TEMPLATE \"{primary_name}\"")))
        .execute(&admin)
        .await
        .unwrap();
    let replica = format!("{}/{replica_name}", db.url.rsplit_once('/').unwrap().0);
    let node = Server::start(dir.path(), &[&args[..], &["--read-database-url", &replica]].concat());
    let sent = http.post(format!("{}/v1/batch", node.http)).basic_auth(&write_key, Some("")).json(&identify("bob"));
    assert_eq!(sent.send().await.unwrap().status(), 200);
    // The primary has bob (the audit of the log reads the primary)…
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = support::onepd(dir.path(), &["profile", "get", "--user-id", "bob", "--database-url", &db.url]);
        if got.status.success() && String::from_utf8_lossy(&got.stdout).contains("pro") {
            break;
        }
        assert!(Instant::now() < deadline, "bob never reached the primary's profiles");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // …the profile API reads the replica: ann, who it holds, and not bob.
    assert_eq!(traits_status(&node, &workspace, &token, "ann").await, 200);
    assert_eq!(traits_status(&node, &workspace, &token, "bob").await, 404, "bob is not on the replica");
    drop(node);
    admin.close().await;
    let admin = sqlx::PgPool::connect(&support::postgres_admin_url()).await.unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{replica_name}\" WITH (FORCE)")))
        .execute(&admin)
        .await;
}
