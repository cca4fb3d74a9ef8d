//! Leases and fencing on both databases: a lease changes hands only when
//! it is free or expired, its token grows at every change, and a node that
//! lost a lease can write nothing under it — neither to the log nor to the
//! read store. Nodes share the wanted leases fairly and take a leaving
//! node's over.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use onepd_adapters::cluster::{Fence, Node, NodeOptions};
use onepd_adapters::readstore::ReadStore;
use onepd_domain::{
    AppendError, DocWrite, EventStore, ExpectedVersion, Position, ProjectionError, ProjectionStore, StoreError,
};
use support::{Backend, TestDb, event, request, workspace};

const SHORT: Duration = Duration::from_millis(600);

fn options(ttl: Duration) -> NodeOptions {
    NodeOptions { ttl, http_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() }
}

/// Waits up to `patience` for `check` to hold.
async fn eventually(patience: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

async fn a_lease_changes_hands_only_once_free_and_its_token_grows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let cluster = log.cluster_db();
    let first = cluster.acquire("destination:a", "node-1", SHORT).await.unwrap();
    assert_eq!(first, Some(1), "a new lease starts at token 1");
    assert_eq!(cluster.acquire("destination:a", "node-2", SHORT).await.unwrap(), None, "held: not taken");
    assert_eq!(cluster.acquire("destination:a", "node-1", SHORT).await.unwrap(), Some(1), "its holder keeps its token");
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    let fence_1 = Fence { lease: "destination:a".into(), node: "node-1".into(), token: 1 };
    assert!(!cluster.renew(&fence_1, SHORT).await.unwrap(), "an expired lease is not renewed");
    assert_eq!(cluster.acquire("destination:a", "node-2", SHORT).await.unwrap(), Some(2), "expired: taken, token + 1");
    let fence_2 = Fence { lease: "destination:a".into(), node: "node-2".into(), token: 2 };
    assert!(cluster.renew(&fence_2, SHORT).await.unwrap());
    cluster.release(&fence_2).await.unwrap();
    assert_eq!(cluster.acquire("destination:a", "node-1", SHORT).await.unwrap(), Some(3), "released: taken at once");
    log.close().await;
}

async fn a_node_that_lost_its_lease_appends_nothing_under_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let cluster = log.cluster_db();
    let ws = workspace(1);
    let token = cluster.acquire("destination:a", "node-1", SHORT).await.unwrap().unwrap();
    let old = log.fenced(Fence { lease: "destination:a".into(), node: "node-1".into(), token });
    old.append(request("ledger-a", ExpectedVersion::Any, vec![event(ws, "while held")])).await.expect("held: written");
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    // Expired, not yet taken: already refused.
    let refused = old.append(request("ledger-a", ExpectedVersion::Any, vec![event(ws, "expired")])).await;
    assert!(matches!(refused, Err(AppendError::Store(StoreError::LeaseLost(ref lease))) if lease == "destination:a"));
    let token = cluster.acquire("destination:a", "node-2", SHORT).await.unwrap().unwrap();
    let new = log.fenced(Fence { lease: "destination:a".into(), node: "node-2".into(), token });
    let head = log.head().await.unwrap();
    let refused = old.append(request("ledger-a", ExpectedVersion::Any, vec![event(ws, "taken over")])).await;
    assert!(matches!(refused, Err(AppendError::Store(StoreError::LeaseLost(_)))), "{refused:?}");
    assert_eq!(log.head().await.unwrap(), head, "nothing of the old holder's was written");
    // In one group with an unfenced append and the new holder's: only the
    // old holder's is refused.
    let (stale, plain, current) = tokio::join!(
        old.append(request("ledger-a", ExpectedVersion::Any, vec![event(ws, "stale")])),
        log.append(request("other", ExpectedVersion::Any, vec![event(ws, "plain")])),
        new.append(request("ledger-a", ExpectedVersion::Any, vec![event(ws, "new holder")])),
    );
    assert!(matches!(stale, Err(AppendError::Store(StoreError::LeaseLost(_)))));
    plain.expect("an append under no lease is not affected");
    current.expect("the new holder writes");
    assert_eq!(log.head().await.unwrap(), Position(head.0 + 2));
    log.close().await;
}

async fn a_node_that_lost_its_lease_commits_nothing_to_the_read_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let cluster = log.cluster_db();
    let store = ReadStore::open(&db.url).await.unwrap();
    let generation = store.create_generation("profiles", 1).await.unwrap();
    let token = cluster.acquire("projection:profiles", "node-1", SHORT).await.unwrap().unwrap();
    let fence = Fence { lease: "projection:profiles".into(), node: "node-1".into(), token };
    let old = store.fenced(fence, &log);
    let put = |key: &str| DocWrite::Put {
        workspace: workspace(1),
        collection: "profile",
        key: key.into(),
        doc: b"{}".to_vec(),
    };
    old.commit(generation.id, Position::START, Position(5), vec![put("a")]).await.expect("held: committed");
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    cluster.acquire("projection:profiles", "node-2", SHORT).await.unwrap().expect("taken over");
    let refused = old.commit(generation.id, Position(5), Position(9), vec![put("b")]).await;
    assert!(matches!(refused, Err(ProjectionError::Store(StoreError::LeaseLost(_)))), "{refused:?}");
    let written = store.generations("profiles").await.unwrap();
    let checkpoint = written.iter().find(|g| g.id == generation.id).map(|g| g.checkpoint);
    assert_eq!(checkpoint, Some(Position(5)), "the refused commit moved nothing");
    let doc = store.get(generation.id, workspace(1), "profile", &["b".to_owned()]).await.unwrap();
    assert_eq!(doc, vec![None], "the refused commit wrote nothing");
    log.close().await;
}

async fn nodes_share_the_wanted_leases_and_take_a_leaving_nodes_over(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let wanted: BTreeSet<String> = (1..=4).map(|n| format!("destination:{n}")).collect();
    let one = Node::join(&log, options(SHORT)).await.unwrap();
    one.want("destinations", wanted.clone());
    assert!(eventually(Duration::from_secs(5), || one.watch().borrow().len() == 4).await, "one node takes all");
    let two = Node::join(&log, options(SHORT)).await.unwrap();
    two.want("destinations", wanted.clone());
    let shared = eventually(Duration::from_secs(10), || {
        let (a, b) = (one.watch().borrow().clone(), two.watch().borrow().clone());
        a.len() == 2 && b.len() == 2 && a.keys().all(|lease| !b.contains_key(lease))
    })
    .await;
    assert!(shared, "two nodes hold two each: {:?} / {:?}", one.watch().borrow(), two.watch().borrow());
    let before: Vec<i64> = two.watch().borrow().values().map(|fence| fence.token).collect();
    one.leave().await;
    assert!(
        eventually(Duration::from_secs(5), || two.watch().borrow().len() == 4).await,
        "the other takes a leaving node's leases over at once"
    );
    let status = onepd_adapters::cluster::status(&log).await.unwrap();
    assert_eq!(status.nodes.len(), 1, "a node that left is not listed: {status:?}");
    assert!(status.leases.iter().all(|lease| lease.held(status.now) && lease.holder == two.id()));
    assert_eq!(before.len(), 2);
    two.leave().await;
    log.close().await;
}

async fn a_finished_replay_jobs_lease_is_deleted_not_kept(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let node = Node::join(&log, options(SHORT)).await.unwrap();
    node.want("replays", BTreeSet::from(["replay:job-1".to_owned()]));
    node.want("destinations", BTreeSet::from(["destination:1".to_owned()]));
    assert!(eventually(Duration::from_secs(5), || node.watch().borrow().len() == 2).await, "both taken");
    // The job is done, the destination paused: neither is wanted any more.
    node.want("replays", BTreeSet::new());
    node.want("destinations", BTreeSet::new());
    let mut names = Vec::new();
    for _ in 0..50 {
        let status = onepd_adapters::cluster::status(&log).await.unwrap();
        names = status.leases.iter().map(|lease| lease.name.clone()).collect();
        if names == ["destination:1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names, ["destination:1"], "the job's lease row is gone; the paused destination's stays, given up");
    node.leave().await;
    log.close().await;
}

conformance!(
    a_finished_replay_jobs_lease_is_deleted_not_kept,
    a_lease_changes_hands_only_once_free_and_its_token_grows,
    a_node_that_lost_its_lease_appends_nothing_under_it,
    a_node_that_lost_its_lease_commits_nothing_to_the_read_store,
    nodes_share_the_wanted_leases_and_take_a_leaving_nodes_over,
);
