//! The profiles projection over the real stores: a projection kept live batch
//! by batch equals one rebuilt from position 0, whatever the batch sizes, on
//! SQLite and on PostgreSQL; operator facts re-derive history.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use onepd_adapters::EventLog;
use onepd_adapters::profiles::as_of::{AsOfReader, SnapshotBudget};
use onepd_adapters::readstore::ReadStore;
use onepd_domain::events::identity::{IdentifierBlocked, IdentityRulesChanged};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::workspace_stream;
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules, ProfileId};
use onepd_domain::{
    AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Position, ProjectionStore,
    RecordedEvent, WorkspaceId,
};
use onepd_projections::profile::Trait;
use onepd_projections::runner::{
    Built, PROFILES, PROFILES_REFOLD, ProfilesFold, REFOLD_DOCS, REFOLD_MARKER, Runner, read_facts,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{Backend, TestDb};
use uuid::Uuid;

const WORKSPACE: WorkspaceId = WorkspaceId(Uuid::from_u128(0x5eed));
/// A second workspace: every third step happens there, so a fact of one
/// workspace re-derives it while the other's profiles follow on.
const OTHER: WorkspaceId = WorkspaceId(Uuid::from_u128(0x0a7e));

/// The workspace step `n` happens in.
fn workspace_of(n: usize) -> WorkspaceId {
    if n % 3 == 2 { OTHER } else { WORKSPACE }
}

/// One thing that happens in the generated history.
#[derive(Debug, Clone)]
enum Step {
    Message(Value),
    Block(Identifier),
    Rules(IdentityRules),
}

fn identifier_value(kind: u8, n: u8) -> (IdentifierKind, String) {
    match kind % 4 {
        0 => (IdentifierKind::UserId, format!("u{n}")),
        1 => (IdentifierKind::AnonymousId, format!("a{n}")),
        // e3 is a value blocked by default.
        2 => (IdentifierKind::Email, if n == 3 { "test@test.com".into() } else { format!("e{n}@example.com") }),
        _ => (IdentifierKind::Phone, format!("+1415555000{n}")),
    }
}

fn message_strategy() -> impl Strategy<Value = Value> {
    let ids = prop::collection::vec((0u8..4, 0u8..4), 1..4);
    (0u8..6, ids, 0u32..600, 0u32..3).prop_map(|(kind, ids, second, plan)| {
        let mut message = serde_json::Map::new();
        let timestamp = format!("2024-01-01T00:{:02}:{:02}.000Z", second / 60, second % 60);
        message.insert("timestamp".into(), json!(timestamp));
        let mut traits = serde_json::Map::new();
        for (kind, n) in ids {
            match identifier_value(kind, n) {
                (IdentifierKind::UserId, value) => {
                    message.insert("userId".into(), json!(value));
                }
                (IdentifierKind::AnonymousId, value) => {
                    message.insert("anonymousId".into(), json!(value));
                }
                (IdentifierKind::Email, value) => {
                    traits.insert("email".into(), json!(value));
                }
                (_, value) => {
                    traits.insert("phone".into(), json!(value));
                }
            }
        }
        traits.insert("plan".into(), json!(["free", "pro", "team"][plan as usize]));
        let (message_type, extra) = match kind {
            0 | 1 => ("identify", json!({"traits": traits})),
            2 => (
                "track",
                json!({"event": "Order Completed", "properties": {"revenue": 10.5, "currency": "eur"},
                                  "context": {"traits": traits}}),
            ),
            3 => ("page", json!({"name": "Home"})),
            4 => ("alias", json!({"previousId": format!("a{}", plan)})),
            _ => ("group", json!({"groupId": format!("g{plan}"), "traits": {"plan": "enterprise"}})),
        };
        message.insert("type".into(), json!(message_type));
        for (key, value) in extra.as_object().unwrap() {
            message.insert(key.clone(), value.clone());
        }
        Value::Object(message)
    })
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => message_strategy().prop_map(Step::Message),
        1 => (0u8..4, 0u8..4).prop_map(|(kind, n)| {
            let (kind, value) = identifier_value(kind, n);
            Step::Block(Identifier::new(kind, value))
        }),
        1 => (1usize..3, 1usize..4).prop_map(|(users, others)| Step::Rules(
            IdentityRules::default().with_limit(IdentifierKind::UserId, users).with_limit(IdentifierKind::Email, others)
        )),
    ]
}

fn new_event(n: usize, step: &Step) -> (String, NewEvent) {
    let workspace = workspace_of(n);
    let (stream, event_type, data, subject) = match step {
        Step::Message(message) => (
            "source-7".to_owned(),
            MessageAccepted::TYPE,
            json!({"message": message, "violations": []}),
            message.get("userId").or(message.get("anonymousId")).and_then(Value::as_str).map(str::to_owned),
        ),
        Step::Block(identifier) => (
            workspace_stream(workspace).as_str().to_owned(),
            IdentifierBlocked::TYPE,
            json!({"identifier": identifier}),
            Some(identifier.value.clone()),
        ),
        Step::Rules(rules) => {
            (workspace_stream(workspace).as_str().to_owned(), IdentityRulesChanged::TYPE, json!({"rules": rules}), None)
        }
    };
    let event = NewEvent {
        event_id: EventId(Uuid::new_v5(&workspace.0, format!("step-{n}").as_bytes())),
        workspace_id: workspace,
        event_type: event_type.into(),
        schema_version: 1,
        data,
        metadata: json!({"source_id": "s7"}),
        subject,
    };
    (stream, event)
}

async fn append(log: &EventLog, steps: &[(usize, Step)]) {
    for (n, step) in steps {
        let (stream, event) = new_event(*n, step);
        let request = AppendRequest {
            stream_id: onepd_domain::StreamId::new(stream).unwrap(),
            expected: ExpectedVersion::Any,
            events: vec![event],
        };
        log.append(request).await.expect("append");
    }
}

/// `people` identifies of WORKSPACE (steps 0, 3, 6, …: `u0`, `u1`, …), in
/// one append: they share a stream.
async fn append_people(log: &EventLog, people: usize) {
    let events: Vec<NewEvent> = (0..people)
        .map(|n| {
            let step = Step::Message(json!({"type": "identify", "userId": format!("u{n}"), "traits": {"plan": "pro"}}));
            new_event(3 * n, &step).1
        })
        .collect();
    let stream = onepd_domain::StreamId::new("source-7").unwrap();
    log.append(AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events }).await.expect("append");
}

/// Runs `test` on a two-thread runtime, as the server runs.
fn block_on<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(test)
}

/// Follows the log as `onepd serve` does: batch by batch, re-deriving a
/// workspace when one of its operator facts arrives.
async fn follow(runner: &Runner, built: &mut Option<Built>, page: usize) {
    let quiet = |_: u64, _: u64| {};
    let current = match built.take() {
        Some(current) => current,
        None => runner.start(&quiet).await.expect("start"),
    };
    let mut current = current;
    runner.catch_up(&mut current, page).await.expect("catch up");
    *built = Some(current);
}

/// How a run is shaped: page sizes of the live runner and the rebuild, and
/// their cache budgets in bytes (0 keeps no profile in memory between
/// batches, so every batch reads its profiles back from the store).
#[derive(Debug, Clone, Copy)]
struct Shape {
    pages: (usize, usize),
    caches: (usize, usize),
}

async fn live_equals_rebuilt(backend: Backend, steps: Vec<Step>, chunks: Vec<(usize, bool)>, shape: Shape) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let live_runner =
        Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
            .with_page_size(shape.pages.0)
            .with_cache_bytes(shape.caches.0);
    let numbered: Vec<(usize, Step)> = steps.into_iter().enumerate().collect();
    let mut built = None;
    let mut rest = numbered.as_slice();
    for &(size, restart) in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, later) = rest.split_at(size.min(rest.len()));
        append(&log, chunk).await;
        // A restart in the middle of a live run: it resumes from the store.
        if restart {
            built = None;
        }
        follow(&live_runner, &mut built, shape.pages.0).await;
        rest = later;
    }
    let live = built.expect("followed at least once").generation;

    let rebuild_runner =
        Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
            .with_page_size(shape.pages.1)
            .with_cache_bytes(shape.caches.1);
    let quiet = |_: u64, _: u64| {};
    let rebuilt = rebuild_runner.build(&quiet).await.expect("build").generation;
    assert_eq!(rebuilt.checkpoint, log.head().await.unwrap());
    let live_docs = store.documents(live.id).await.expect("live documents");
    let rebuilt_docs = store.documents(rebuilt.id).await.expect("rebuilt documents");
    // Not vacuous: an identify, track or page naming a user id makes
    // documents when nothing was blocked (a page's email or phone is no
    // identifier: it carries no traits).
    let linked = |step: &Step| {
        matches!(step, Step::Message(message)
            if message.get("userId").is_some() && ["identify", "track", "page"].contains(&message["type"].as_str().unwrap_or("")))
    };
    let blocked = numbered.iter().any(|(_, step)| matches!(step, Step::Block(_)));
    assert!(!live_docs.is_empty() || blocked || !numbered.iter().any(|(_, step)| linked(step)));
    assert_eq!(live_docs, rebuilt_docs, "live generation {} differs from rebuilt {}", live.id, rebuilt.id);
    log.close().await;
    store.close().await;
}

fn run(backend: Backend, steps: Vec<Step>, chunks: Vec<(usize, bool)>, pages: (usize, usize), caches: (u8, u8)) {
    // No cache keeps nothing between batches; a small one keeps a few
    // profiles, and a build writes back what it changed every few pages; a
    // big one keeps everything, and a build writes it all at the end.
    let budget = |size: u8| match size {
        0 => 0,
        1 => 16 << 10,
        _ => 64 << 20,
    };
    let shape = Shape { pages, caches: (budget(caches.0), budget(caches.1)) };
    block_on(live_equals_rebuilt(backend, steps, chunks, shape));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_live_projection_equals_a_rebuild_on_sqlite_whatever_the_batch_sizes_caches_and_restarts(
        steps in prop::collection::vec(step_strategy(), 1..60),
        chunks in prop::collection::vec((1usize..15, any::<bool>()), 1..5),
        pages in (1usize..20, 1usize..50),
        caches in (0u8..3, 0u8..3),
    ) {
        run(Backend::Sqlite, steps, chunks, pages, caches);
    }

    #[test]
    fn a_live_projection_equals_a_rebuild_on_postgres_whatever_the_batch_sizes_caches_and_restarts(
        steps in prop::collection::vec(step_strategy(), 1..60),
        chunks in prop::collection::vec((1usize..15, any::<bool>()), 1..5),
        pages in (1usize..20, 1usize..50),
        caches in (0u8..3, 0u8..3),
    ) {
        run(Backend::Postgres, steps, chunks, pages, caches);
    }
}

/// A build writes back: the profiles it changed stay in memory, unwritten,
/// only until they take an eighth of the cache's budget, then are written
/// and may leave the cache. A build with a small budget never holds most of
/// the log's profiles at once, and gives what a build writing every page
/// gives.
async fn a_build_writes_back_within_its_budget(backend: Backend) {
    const PEOPLE: usize = 1_500;
    const PAGE: usize = 50;
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    append_people(&log, PEOPLE).await;
    let quiet = |_: u64, _: u64| {};
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .with_cache_bytes(64 << 10)
        .with_page_size(PAGE);
    let built = runner.build(&quiet).await.expect("build").generation;
    let held = runner.most_profiles_held();
    assert!(held < PEOPLE / 3, "a build with a 64 KiB cache held {held} of {PEOPLE} people's profiles at once");
    let every_page =
        Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
            .with_cache_bytes(0)
            .with_page_size(PAGE)
            .build(&quiet)
            .await
            .expect("build")
            .generation;
    let docs = store.documents(built.id).await.unwrap();
    assert!(docs.len() > PEOPLE, "{} documents", docs.len());
    assert_eq!(docs, store.documents(every_page.id).await.unwrap());
    log.close().await;
    store.close().await;
}

#[test]
fn a_build_writes_back_within_its_budget_on_sqlite() {
    block_on(a_build_writes_back_within_its_budget(Backend::Sqlite));
}

#[test]
fn a_build_writes_back_within_its_budget_on_postgres() {
    block_on(a_build_writes_back_within_its_budget(Backend::Postgres));
}

/// A workspace re-derived under a new operator fact is folded page by page
/// into a generation of its own, in the cache's bounded memory, not held
/// whole in memory: with no cache, no fold of the runner ever holds more
/// than about a page of profiles, and the result equals a rebuild.
async fn a_re_derivation_holds_about_a_page_of_profiles(backend: Backend) {
    const PEOPLE: usize = 1_500;
    const PAGE: usize = 50;
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .with_cache_bytes(0)
        .with_page_size(PAGE);
    let quiet = |_: u64, _: u64| {};
    append_people(&log, PEOPLE).await;
    let mut built = runner.rebuild(&quiet).await.expect("build");
    append(&log, &[(3 * PEOPLE, Step::Block(Identifier::new(IdentifierKind::UserId, "u7")))]).await;
    runner.catch_up(&mut built, PAGE).await.expect("catch up, re-deriving the workspace");

    let held = runner.most_profiles_held();
    assert!(held <= 2 * PAGE, "a fold held {held} profiles at once, for pages of {PAGE}");
    let rebuilt = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .build(&quiet)
        .await
        .expect("build")
        .generation;
    let live_docs = store.documents(built.generation.id).await.unwrap();
    assert_eq!(live_docs, store.documents(rebuilt.id).await.unwrap());
    assert!(live_docs.len() > PEOPLE, "{} documents", live_docs.len());
    log.close().await;
    store.close().await;
}

#[test]
fn a_re_derivation_holds_about_a_page_of_profiles_on_sqlite() {
    block_on(a_re_derivation_holds_about_a_page_of_profiles(Backend::Sqlite));
}

#[test]
fn a_re_derivation_holds_about_a_page_of_profiles_on_postgres() {
    block_on(a_re_derivation_holds_about_a_page_of_profiles(Backend::Postgres));
}

/// While a big workspace is re-derived page by page, another workspace's
/// events keep being committed: the follow loop applies them beside the
/// re-derivation's own commits, never waiting for it (on SQLite, a
/// re-derivation left unpolled in the middle of a commit held the next
/// batch's commit until the busy timeout). With `fact_first`, the fact is
/// appended before the runner starts: it is passed while the runner goes
/// up to the head at its start (written back, with a cache big enough to
/// hold every change until the head), and the commit that passes it must
/// still carry the workspace's marker.
async fn other_workspaces_follow_while_one_is_re_derived(backend: Backend, fact_first: bool) {
    const PEOPLE: usize = 3_000;
    const PAGE: usize = 50;
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .with_cache_bytes(if fact_first { 64 << 20 } else { 0 })
        .with_page_size(PAGE);
    append_people(&log, PEOPLE).await;
    runner.rebuild(&|_, _| {}).await.expect("build");
    let block = [(3 * PEOPLE, Step::Block(Identifier::new(IdentifierKind::UserId, "u7")))];
    if fact_first {
        append(&log, &block).await;
    }
    let following = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run(&|_| {}).await })
    };
    if !fact_first {
        append(&log, &block).await;
    }
    // The re-derivation has committed a page of its own.
    let refolding = async {
        loop {
            let generations = store.generations(PROFILES_REFOLD).await.unwrap();
            if generations.iter().any(|generation| generation.checkpoint > Position::START) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), refolding).await.expect("the re-derivation commits pages");
    for n in 0..5 {
        let step = 3 * (PEOPLE + 1 + n) + 2;
        append(&log, &[(step, Step::Message(json!({"type": "identify", "userId": format!("o{n}")})))]).await;
        let head = log.head().await.unwrap();
        let committed = async {
            while store.live(PROFILES).await.unwrap().is_none_or(|live| live.checkpoint < head) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        // Far below the store's busy timeout (30 s), far above a commit.
        tokio::time::timeout(Duration::from_secs(15), committed)
            .await
            .expect("the other workspace's event is committed while the re-derivation runs");
    }
    let live = store.live(PROFILES).await.unwrap().unwrap();
    let marker = store.get(live.id, WORKSPACE, REFOLD_DOCS, &[REFOLD_MARKER.to_owned()]).await.unwrap();
    assert!(
        marker.first().is_some_and(Option::is_some),
        "no marker on the workspace being re-derived: the other workspace's events waited for the \
         re-derivation to finish, or the commit that passed the fact left the marker out"
    );
    following.abort();
    log.close().await;
    store.close().await;
}

#[test]
fn other_workspaces_follow_while_one_is_re_derived_on_sqlite() {
    block_on(other_workspaces_follow_while_one_is_re_derived(Backend::Sqlite, false));
}

#[test]
fn other_workspaces_follow_while_one_is_re_derived_on_postgres() {
    block_on(other_workspaces_follow_while_one_is_re_derived(Backend::Postgres, false));
}

#[test]
fn a_fact_passed_at_start_marks_its_workspace_and_others_follow_on_sqlite() {
    block_on(other_workspaces_follow_while_one_is_re_derived(Backend::Sqlite, true));
}

#[test]
fn a_fact_passed_at_start_marks_its_workspace_and_others_follow_on_postgres() {
    block_on(other_workspaces_follow_while_one_is_re_derived(Backend::Postgres, true));
}

/// A following runner that falls far behind (a burst of a thousand and
/// more events, an operator fact among later ones) goes up to the head as
/// at a start, written back, then batch by batch again: the read model it
/// leaves equals a rebuild, and the fact's re-derivation is done.
async fn a_runner_fallen_behind_catches_up_and_equals_a_rebuild(backend: Backend) {
    const PEOPLE: usize = 1_500;
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .with_cache_bytes(64 << 20)
        .with_page_size(50);
    let following = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run(&|_| {}).await })
    };
    append_people(&log, PEOPLE).await;
    let mut later = vec![(3 * PEOPLE, Step::Block(Identifier::new(IdentifierKind::UserId, "u7")))];
    later.extend((0..20).map(|n| {
        (
            3 * (PEOPLE + 1 + n),
            Step::Message(json!({"type": "identify", "userId": format!("u{n}"), "traits": {"n": n}})),
        )
    }));
    append(&log, &later).await;
    let head = log.head().await.unwrap();
    let settled = async {
        loop {
            if let Some(live) = store.live(PROFILES).await.unwrap()
                && live.checkpoint >= head
            {
                let marker = store.get(live.id, WORKSPACE, REFOLD_DOCS, &[REFOLD_MARKER.to_owned()]).await.unwrap();
                if marker.first().is_none_or(Option::is_none) {
                    return live;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let live = tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("the runner reaches the head and finishes the re-derivation");
    following.abort();
    let rebuilt = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .build(&|_, _| {})
        .await
        .expect("build")
        .generation;
    let live_docs = store.documents(live.id).await.unwrap();
    assert!(live_docs.len() > PEOPLE, "{} documents", live_docs.len());
    assert_eq!(live_docs, store.documents(rebuilt.id).await.unwrap());
    log.close().await;
    store.close().await;
}

#[test]
fn a_runner_fallen_behind_catches_up_and_equals_a_rebuild_on_sqlite() {
    block_on(a_runner_fallen_behind_catches_up_and_equals_a_rebuild(Backend::Sqlite));
}

#[test]
fn a_runner_fallen_behind_catches_up_and_equals_a_rebuild_on_postgres() {
    block_on(a_runner_fallen_behind_catches_up_and_equals_a_rebuild(Backend::Postgres));
}

/// A stop between the commit that passed an operator fact (marking its
/// workspace's documents stale) and the end of the workspace's
/// re-derivation: the next start replaces them, so the read model equals a
/// rebuild.
async fn a_restart_finishes_an_interrupted_re_derivation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let runner =
        || Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>);
    let quiet = |_: u64, _: u64| {};
    let merged =
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "e1@example.com"}});
    let others = json!({"type": "identify", "userId": "u2", "traits": {"email": "e1@example.com"}});
    // Steps 0, 1 (WORKSPACE) and 2 (OTHER): the email merges u1 and u2.
    append(
        &log,
        &[
            (0, Step::Message(merged)),
            (1, Step::Message(others)),
            (2, Step::Message(json!({"type": "identify", "userId": "o1"}))),
        ],
    )
    .await;
    let built = runner().rebuild(&quiet).await.expect("build");
    // The block that splits them, and the commit that passed it with only
    // the marker: the stop came before the re-derivation finished.
    append(&log, &[(3, Step::Block(Identifier::new(IdentifierKind::Email, "e1@example.com")))]).await;
    let head = log.head().await.unwrap();
    let marker = onepd_domain::DocWrite::Put {
        workspace: WORKSPACE,
        collection: onepd_projections::runner::REFOLD_DOCS,
        key: "pending".into(),
        doc: Vec::new(),
    };
    store.commit(built.generation.id, built.checkpoint, head, vec![marker]).await.expect("the marker commit");

    let restarted = runner().start(&quiet).await.expect("start");
    let rebuilt = runner().build(&quiet).await.expect("build").generation;
    let live_docs = store.documents(restarted.generation.id).await.unwrap();
    assert_eq!(live_docs, store.documents(rebuilt.id).await.unwrap());
    assert!(!live_docs.is_empty());
    log.close().await;
    store.close().await;
}

#[test]
fn a_restart_finishes_an_interrupted_re_derivation_on_sqlite() {
    block_on(a_restart_finishes_an_interrupted_re_derivation(Backend::Sqlite));
}

#[test]
fn a_restart_finishes_an_interrupted_re_derivation_on_postgres() {
    block_on(a_restart_finishes_an_interrupted_re_derivation(Backend::Postgres));
}

/// The read model's checkpoint moves only with the events it follows, so a
/// log that ends in an event it does not follow (a destination's ledger
/// record) is reached at its head; an unapplied message is not.
async fn the_read_model_reaches_a_head_it_does_not_follow(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>);
    let quiet = |_: u64, _: u64| {};
    append_people(&log, 2).await;
    let mut built = runner.rebuild(&quiet).await.expect("build");
    let ledger = NewEvent {
        event_id: EventId(Uuid::now_v7()),
        workspace_id: WORKSPACE,
        event_type: "DeliverySucceeded".into(),
        schema_version: 1,
        data: json!({"destination": "warehouse"}),
        metadata: json!({"actor": "activation"}),
        subject: None,
    };
    let stream = onepd_domain::StreamId::new("destination-warehouse").unwrap();
    log.append(AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events: vec![ledger] })
        .await
        .expect("append the ledger record");
    let head = log.head().await.unwrap();
    assert!(built.checkpoint < head, "the ledger record is past the checkpoint");
    let reader = || AsOfReader::new(store.clone() as Arc<dyn ProjectionStore>, log.clone());
    reader()
        .with_patience(Duration::from_millis(300))
        .wait_for(WORKSPACE, head)
        .await
        .expect("nothing the read model follows lies past its checkpoint");

    append(&log, &[(300, Step::Message(json!({"type": "identify", "userId": "u300"})))]).await;
    let head = log.head().await.unwrap();
    let waited = reader().with_patience(Duration::from_millis(300)).wait_for(WORKSPACE, head).await;
    assert!(waited.is_err(), "a message not yet applied is reported as not reached: {waited:?}");
    runner.catch_up(&mut built, 100).await.expect("catch up");
    reader().with_patience(Duration::from_millis(300)).wait_for(WORKSPACE, head).await.expect("reached once applied");
    log.close().await;
    store.close().await;
}

#[test]
fn the_read_model_reaches_a_head_it_does_not_follow_on_sqlite() {
    block_on(the_read_model_reaches_a_head_it_does_not_follow(Backend::Sqlite));
}

#[test]
fn the_read_model_reaches_a_head_it_does_not_follow_on_postgres() {
    block_on(the_read_model_reaches_a_head_it_does_not_follow(Backend::Postgres));
}

/// What a destination run enriches each event with, read from the read
/// model ([`AsOfReader`]), is what a fold of the whole log up to that event
/// holds: identifiers, traits with provenance, consent and what limits held
/// back — whatever position the run starts at and however it pages.
/// Returns how many events had a profile to compare.
async fn profiles_as_of_events_equal_a_fold_of_the_log(
    backend: Backend,
    steps: Vec<Step>,
    start: usize,
    page: usize,
    documents_at_once: usize,
    earlier_at_once: usize,
) -> usize {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let numbered: Vec<(usize, Step)> = steps.into_iter().enumerate().collect();
    append(&log, &numbered).await;
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>)
        .with_cache_bytes(0);
    let quiet = |_: u64, _: u64| {};
    runner.rebuild(&quiet).await.expect("build");

    let head = log.head().await.unwrap();
    let facts = read_facts(&log, head).await.unwrap();
    let mut fold = ProfilesFold::new(&facts);
    let mut reader = AsOfReader::new(store.clone() as Arc<dyn ProjectionStore>, log.clone())
        .reading_documents(documents_at_once)
        .reading_earlier(earlier_at_once);
    let filter = EventFilter { event_types: vec![MessageAccepted::TYPE.into()], ..EventFilter::default() };
    let events = log.read(Position(1), Some(head), &filter, 10_000).await.unwrap().events;
    let start = Position(start as u64 % (head.0 + 1));
    let mut compared = 0;
    for workspace in [WORKSPACE, OTHER] {
        let mine: Vec<RecordedEvent> = events.iter().filter(|event| event.workspace_id == workspace).cloned().collect();
        let mut expected = Vec::new();
        for event in &mine {
            let profile = fold.attribute(event);
            let view = profile.and_then(|profile| fold.profiles().view(workspace, profile));
            expected.push(view.map(|view| {
                let held: Vec<_> = view
                    .held_back
                    .iter()
                    .filter(|held| !view.identifiers.contains(&held.identifier))
                    .cloned()
                    .collect();
                (
                    view.id,
                    view.identifiers.clone(),
                    view.traits.cloned().unwrap_or_default(),
                    view.consent.cloned(),
                    held,
                )
            }));
        }
        let from = mine.partition_point(|event| event.position < start);
        for (chunk, expected) in mine[from..].chunks(page).zip(expected[from..].chunks(page)) {
            let found = reader.profiles(workspace, chunk, |event| fold.profiles().candidates(event)).await.unwrap();
            for ((event, found), expected) in chunk.iter().zip(found).zip(expected) {
                let found = found.map(|found| {
                    let held: Vec<_> = found
                        .held_back
                        .iter()
                        .filter(|held| !found.identifiers.contains(&held.identifier))
                        .cloned()
                        .collect();
                    (found.id, found.identifiers, found.traits, found.consent, held)
                });
                assert_eq!(&found, expected, "the profile as of position {}", event.position.0);
                compared += usize::from(found.is_some());
            }
        }
    }
    log.close().await;
    store.close().await;
    compared
}

/// The property above is not vacuous: on a known journey (an anonymous
/// visitor who identifies, then orders) every event read from the start has
/// a profile to compare, in one page or many.
#[test]
fn profiles_as_of_events_are_compared_on_a_known_journey() {
    let journey = || {
        vec![
            Step::Message(json!({"type": "page", "anonymousId": "a1", "name": "Home",
                                 "timestamp": "2024-01-01T00:00:01.000Z"})),
            Step::Message(json!({"type": "identify", "anonymousId": "a1", "userId": "u1",
                                 "traits": {"email": "e1@example.com", "plan": "pro"},
                                 "timestamp": "2024-01-01T00:00:02.000Z"})),
            Step::Message(json!({"type": "identify", "userId": "u2", "traits": {"plan": "free"},
                                 "timestamp": "2024-01-01T00:00:03.000Z"})),
            Step::Message(json!({"type": "track", "userId": "u1", "event": "Order Completed",
                                 "properties": {"revenue": 10.5, "currency": "eur"},
                                 "timestamp": "2024-01-01T00:00:04.000Z"})),
        ]
    };
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for (page, at_once) in [(1, 100), (3, 100), (3, 2)] {
            let compared =
                block_on(profiles_as_of_events_equal_a_fold_of_the_log(backend, journey(), 0, page, at_once, 1));
            assert_eq!(compared, 4, "{backend:?}, pages of {page}, documents of {at_once} at once");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn profiles_as_of_events_equal_a_fold_of_the_log_on_sqlite(
        steps in prop::collection::vec(step_strategy(), 1..60),
        start in 0usize..40,
        page in 1usize..20,
        documents_at_once in 1usize..8,
        earlier_at_once in 1usize..6,
    ) {
        block_on(profiles_as_of_events_equal_a_fold_of_the_log(
            Backend::Sqlite, steps, start, page, documents_at_once, earlier_at_once,
        ));
    }

    #[test]
    fn profiles_as_of_events_equal_a_fold_of_the_log_on_postgres(
        steps in prop::collection::vec(step_strategy(), 1..60),
        start in 0usize..40,
        page in 1usize..20,
        documents_at_once in 1usize..8,
        earlier_at_once in 1usize..6,
    ) {
        block_on(profiles_as_of_events_equal_a_fold_of_the_log(
            Backend::Postgres, steps, start, page, documents_at_once, earlier_at_once,
        ));
    }
}

/// Every event's profile id and traits as `reader` finds them, page by
/// page, and the most memory its snapshots took meanwhile.
async fn read_with(
    reader: &mut AsOfReader,
    events: &[RecordedEvent],
    fold: &ProfilesFold,
) -> (Vec<Option<(ProfileId, BTreeMap<String, Trait>)>>, usize) {
    let mut found = Vec::new();
    let mut most = 0;
    for chunk in events.chunks(50) {
        let profiles = reader.profiles(WORKSPACE, chunk, |event| fold.profiles().candidates(event)).await.unwrap();
        found.extend(profiles.into_iter().map(|profile| profile.map(|profile| (profile.id, profile.traits))));
        most = most.max(reader.snapshot_bytes());
    }
    (found, most)
}

/// Destination runs share one budget for their snapshots: however many
/// readers there are, together they keep about the budget (each its equal
/// share), and a reader whose snapshots were dropped reads the profiles'
/// earlier events again and gives the same answers.
async fn readers_sharing_a_budget_keep_within_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
    let mut steps = Vec::new();
    for round in 0..3 {
        for person in 0..200 {
            let message =
                json!({"type": "identify", "userId": format!("u{person}"), "traits": {"round": round, "plan": "pro"}});
            // Numbers that are multiples of 3 are all in WORKSPACE.
            steps.push((3 * steps.len(), Step::Message(message)));
        }
    }
    append(&log, &steps).await;
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>);
    runner.rebuild(&|_: u64, _: u64| {}).await.expect("build");
    let head = log.head().await.unwrap();
    let facts = read_facts(&log, head).await.unwrap();
    let fold = ProfilesFold::new(&facts);
    let filter = EventFilter { event_types: vec![MessageAccepted::TYPE.into()], ..EventFilter::default() };
    let events = log.read(Position(1), Some(head), &filter, 10_000).await.unwrap().events;
    let profiles = || store.clone() as Arc<dyn ProjectionStore>;
    let mut unlimited = AsOfReader::new(profiles(), log.clone());
    let (expected, unbounded) = read_with(&mut unlimited, &events, &fold).await;
    assert!(expected.iter().all(Option::is_some), "every identify has a profile");

    let budget_bytes = unbounded / 4;
    let budget = SnapshotBudget::new(budget_bytes);
    let mut alone = AsOfReader::sharing(profiles(), log.clone(), budget.clone());
    let (found, most) = read_with(&mut alone, &events, &fold).await;
    assert_eq!(found, expected, "a reader that dropped snapshots gives the same answers");
    let slack = 4_096;
    assert!(most <= budget_bytes + slack, "one reader keeps its budget: {most} of {budget_bytes}");
    assert!(most > budget_bytes / 4, "the reader used its budget: {most} of {budget_bytes}");

    let mut readers: Vec<AsOfReader> =
        (0..4).map(|_| AsOfReader::sharing(profiles(), log.clone(), budget.clone())).collect();
    for reader in &mut readers {
        let (found, most) = read_with(reader, &events, &fold).await;
        assert_eq!(found, expected);
        assert!(most <= budget_bytes / 5 + slack, "five readers keep a fifth each: {most} of {budget_bytes}");
    }
    drop(alone);
    drop(readers);
    log.close().await;
    store.close().await;
}

#[test]
fn readers_sharing_a_budget_keep_within_it_on_sqlite() {
    block_on(readers_sharing_a_budget_keep_within_it(Backend::Sqlite));
}

#[test]
fn readers_sharing_a_budget_keep_within_it_on_postgres() {
    block_on(readers_sharing_a_budget_keep_within_it(Backend::Postgres));
}
