//! Audience membership over the real stores: the entries and exits decided
//! while following the log live — in pages of any size, restarted at any
//! point, with clock ticks at random times — are exactly those a rebuild
//! from position 0 decides, and the membership documents are equal, on
//! SQLite and on PostgreSQL.

mod support;

use std::sync::Arc;

use onepd_adapters::EventLog;
use onepd_adapters::membership::{self, AUDIENCES, Membership};
use onepd_adapters::profiles::ProfileReader;
use onepd_adapters::readstore::ReadStore;
use onepd_domain::audience::parse;
use onepd_domain::events::audience::{
    AudienceClockTicked, AudienceDefined, ComputedTraitChanged, ComputedTraitDefined, clock_stream,
};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::workspace_stream;
use onepd_domain::identity::ProfileId;
use onepd_domain::{
    AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Position, ProjectionStore, StreamId,
    Timestamp, WorkspaceId,
};
use onepd_projections::profile::Lookup;
use onepd_projections::runner::{Built, PROFILE_DOCS, PROFILES, Runner};
use proptest::prelude::*;
use serde_json::json;
use support::{Backend, TestDb};
use uuid::Uuid;

const WORKSPACE: WorkspaceId = WorkspaceId(Uuid::from_u128(0xa0d1));
const DAY: i64 = 86_400_000_000;

/// One thing that happens in the generated history.
#[derive(Debug, Clone)]
enum Step {
    /// User `u{user}` (or anonymous `a{user}` when `anonymous`) orders,
    /// `days_ago` days before the test started.
    Order { user: u8, anonymous: bool, days_ago: u8 },
    /// `u{user}` is identified on device `a{device}`: two profiles may merge.
    Identify { user: u8, device: u8 },
    /// The audience is (re)defined: at least `times` orders within `days`.
    Define { times: u8, days: u8 },
    /// The clock moves to `days` days after the test started.
    Tick { days: u8 },
    /// The computed trait `recent` is (re)defined: orders within `days`.
    Compute { days: u8 },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..4, any::<bool>(), 0u8..40).prop_map(|(user, anonymous, days_ago)| Step::Order { user, anonymous, days_ago }),
        2 => (0u8..4, 0u8..4).prop_map(|(user, device)| Step::Identify { user, device }),
        1 => (1u8..3, 1u8..30).prop_map(|(times, days)| Step::Define { times, days }),
        2 => (0u8..60).prop_map(|days| Step::Tick { days }),
        1 => (1u8..30).prop_map(|days| Step::Compute { days }),
    ]
}

fn new_event(n: usize, step: &Step, start: Timestamp) -> (StreamId, NewEvent) {
    let at = |micros: i64| Timestamp(micros).to_rfc3339();
    let (stream, event_type, data) = match step {
        Step::Order { user, anonymous, days_ago } => {
            let mut message = json!({"type": "track", "event": "Order Completed",
                                     "timestamp": at(start.0 - *days_ago as i64 * DAY)});
            let (field, prefix) = if *anonymous { ("anonymousId", "a") } else { ("userId", "u") };
            message[field] = json!(format!("{prefix}{user}"));
            ("source-7".to_owned(), MessageAccepted::TYPE, json!({"message": message, "violations": []}))
        }
        Step::Identify { user, device } => {
            let message = json!({"type": "identify", "userId": format!("u{user}"), "anonymousId": format!("a{device}"),
                                 "timestamp": at(start.0)});
            ("source-7".to_owned(), MessageAccepted::TYPE, json!({"message": message, "violations": []}))
        }
        Step::Define { times, days } => {
            let condition = parse(&format!(r#"performed "Order Completed" at least {times} times within {days} days"#))
                .expect("a valid condition");
            let defined = AudienceDefined { name: "buyers".into(), condition, description: None };
            (
                workspace_stream(WORKSPACE).as_str().to_owned(),
                AudienceDefined::TYPE,
                serde_json::to_value(defined).unwrap(),
            )
        }
        Step::Compute { days } => {
            let definition = json!({"event": "Order Completed", "kind": "count", "within": {"days": days}});
            let defined =
                ComputedTraitDefined { name: "recent".into(), definition: serde_json::from_value(definition).unwrap() };
            (
                workspace_stream(WORKSPACE).as_str().to_owned(),
                ComputedTraitDefined::TYPE,
                serde_json::to_value(defined).unwrap(),
            )
        }
        Step::Tick { days } => {
            let tick = AudienceClockTicked { at: Timestamp(start.0 + *days as i64 * DAY) };
            (
                clock_stream(WORKSPACE).as_str().to_owned(),
                AudienceClockTicked::TYPE,
                serde_json::to_value(tick).unwrap(),
            )
        }
    };
    let event = NewEvent {
        event_id: EventId(Uuid::new_v5(&WORKSPACE.0, format!("step-{n}").as_bytes())),
        workspace_id: WORKSPACE,
        event_type: event_type.into(),
        schema_version: 1,
        data,
        metadata: json!({"source_id": "s7"}),
        subject: None,
    };
    (StreamId::new(stream).unwrap(), event)
}

async fn append(log: &EventLog, steps: &[(usize, Step)], start: Timestamp) {
    for (n, step) in steps {
        let (stream_id, event) = new_event(*n, step, start);
        let request = AppendRequest { stream_id, expected: ExpectedVersion::Any, events: vec![event] };
        log.append(request).await.expect("append");
    }
}

/// A fresh database with its log, read store and profiles runner, and the
/// time the test started (the generated history's "now").
struct Setup {
    db: TestDb,
    log: EventLog,
    store: Arc<ReadStore>,
    read: Arc<dyn ProjectionStore>,
    profiles: Runner,
    start: Timestamp,
}

impl Setup {
    async fn new(backend: Backend) -> Setup {
        let db = TestDb::new(backend).await;
        let log = db.open().await;
        let store = Arc::new(ReadStore::open(&db.url).await.expect("open the read store"));
        let read: Arc<dyn ProjectionStore> = store.clone();
        let profiles = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, read.clone());
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        Setup { db, log, store, read, profiles, start: Timestamp(since_epoch.as_micros() as i64) }
    }
}

/// Runs `test` on a two-thread runtime, as the server runs.
fn block_on<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(test)
}

async fn live_decides_what_a_rebuild_decides(
    backend: Backend,
    steps: Vec<Step>,
    chunks: Vec<usize>,
    pages: (usize, usize),
) {
    let Setup { db: _db, log, store, read, profiles, start } = Setup::new(backend).await;
    let quiet = |_: u64, _: u64| {};
    let mut built: Option<Built> = None;
    let numbered: Vec<(usize, Step)> = steps.into_iter().enumerate().collect();
    let mut rest = numbered.as_slice();
    // Live: the log grows a chunk at a time; the profiles follow, then the
    // membership (a new runner each time: a restart).
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, later) = rest.split_at((*size).min(rest.len()));
        append(&log, chunk, start).await;
        let mut current = match built.take() {
            Some(current) => current,
            None => profiles.start(&quiet).await.expect("start"),
        };
        profiles.catch_up(&mut current, 50).await.expect("profiles catch up");
        built = Some(current);
        membership::catch_up(&log, read.clone(), pages.0).await.expect("membership catch up");
        rest = later;
    }
    let reader = Membership::new(log.clone(), read.clone());
    let live = read.live(AUDIENCES).await.unwrap().expect("a live membership");
    let live_docs = store.documents(live.id).await.expect("live documents");
    let live_history = reader.history(WORKSPACE, None).await.expect("history");
    let live_head = log.head().await.expect("head");
    // What is kept of each person, event by event, is what their whole
    // history gives.
    let people = ProfileReader::new(read.clone(), log.clone());
    // Once anything is defined, every profile is kept (a definition that
    // reads only kept facts evaluates the people kept).
    if numbered.iter().any(|(_, step)| matches!(step, Step::Define { .. } | Step::Compute { .. })) {
        let profiles = read.live(PROFILES).await.unwrap().expect("live profiles");
        let kept = live_docs.iter().filter(|doc| doc.collection == "audience_person").count() as u64;
        assert_eq!(kept, store.count(profiles.id, PROFILE_DOCS).await.unwrap(), "every profile is kept");
    }
    for doc in live_docs.iter().filter(|doc| doc.collection == "audience_person") {
        let kept: serde_json::Value = serde_json::from_slice(&doc.doc).expect("a person's state");
        let id = ProfileId(doc.key.parse().expect("a profile id"));
        let (found, mut facts) =
            people.identified_person(WORKSPACE, &Lookup::Profile(id), None).await.expect("read").expect("a profile");
        assert_eq!(found, id, "a merged profile kept its state");
        facts.keep_only(&["Order Completed".to_owned()].into());
        assert_eq!(kept["facts"], serde_json::to_value(&facts).unwrap(), "the facts kept of {}", id.0);
    }

    let rebuilt = membership::rebuild(&log, read.clone(), pages.1).await.expect("rebuild");
    let rebuilt_docs = store.documents(rebuilt.id).await.expect("rebuilt documents");
    let rebuilt_history = reader.history(WORKSPACE, None).await.expect("history");
    assert_eq!(
        rebuilt_history.len(),
        live_history.len(),
        "the rebuild decided entries or exits the live run did not: {:?}",
        &rebuilt_history[live_history.len().min(rebuilt_history.len())..]
    );
    assert_eq!(live_docs, rebuilt_docs, "live membership {} differs from rebuilt {}", live.id, rebuilt.id);
    assert_eq!(log.head().await.expect("head"), live_head, "the rebuild appended what the live run did not decide");
    log.close().await;
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn live_membership_equals_a_rebuild_on_sqlite_whatever_the_pages_restarts_and_ticks(
        steps in prop::collection::vec(step_strategy(), 1..40),
        chunks in prop::collection::vec(1usize..12, 1..5),
        pages in (1usize..10, 1usize..50),
    ) {
        block_on(live_decides_what_a_rebuild_decides(Backend::Sqlite, steps, chunks, pages));
    }

    #[test]
    fn live_membership_equals_a_rebuild_on_postgres_whatever_the_pages_restarts_and_ticks(
        steps in prop::collection::vec(step_strategy(), 1..40),
        chunks in prop::collection::vec(1usize..12, 1..5),
        pages in (1usize..10, 1usize..50),
    ) {
        block_on(live_decides_what_a_rebuild_decides(Backend::Postgres, steps, chunks, pages));
    }
}

/// Not vacuous: a fixed history where people enter and leave, live and by
/// rebuild.
#[test]
fn a_fixed_history_enters_and_leaves_and_rebuilds_the_same() {
    let steps = vec![
        Step::Compute { days: 4 },
        Step::Define { times: 2, days: 10 },
        Step::Order { user: 1, anonymous: false, days_ago: 5 },
        Step::Order { user: 1, anonymous: false, days_ago: 1 },
        Step::Order { user: 2, anonymous: true, days_ago: 2 },
        Step::Order { user: 2, anonymous: false, days_ago: 3 },
        Step::Identify { user: 2, device: 2 },
        Step::Tick { days: 6 },
    ];
    block_on(async {
        let Setup { db: _db, log, read, profiles, start, .. } = Setup::new(Backend::Sqlite).await;
        let numbered: Vec<(usize, Step)> = steps.into_iter().enumerate().collect();
        append(&log, &numbered, start).await;
        let quiet = |_: u64, _: u64| {};
        let mut built = profiles.start(&quiet).await.expect("start");
        profiles.catch_up(&mut built, 50).await.expect("catch up");
        membership::catch_up(&log, read.clone(), 2).await.expect("membership");
        let history = Membership::new(log.clone(), read.clone()).history(WORKSPACE, None).await.unwrap();
        let changes: Vec<&str> = history.iter().map(|c| c.change).collect();
        // u1 enters at its second order; u2 enters when its anonymous order
        // merges in; u1 leaves at day 6 (its order of 5 days ago is 11 days
        // old); u2 stays (2 and 3 days ago: 8 and 9 days old).
        assert_eq!(changes, ["entered", "entered", "exited"], "{history:?}");
        // Orders in 4 days: u1's first is older (0), then one; the
        // anonymous order and u2's (one each); their merge (two); the tick
        // takes both people to none: u2's orders of 2 and 3 days ago are 8
        // and 9 days old, u2 is due by the trait's edge alone.
        let filter = EventFilter { event_types: vec![ComputedTraitChanged::TYPE.into()], ..EventFilter::default() };
        let changed = log.read(Position(1), None, &filter, 100).await.unwrap();
        let values: Vec<serde_json::Value> =
            changed.events.iter().map(|event| event.data.value().unwrap()["values"]["recent"].clone()).collect();
        assert_eq!(values, [json!(0), json!(1), json!(1), json!(1), json!(2), json!(0), json!(0)]);
        let rebuilt = membership::rebuild(&log, read.clone(), 7).await.expect("rebuild");
        assert!(rebuilt.live);
        let again = Membership::new(log.clone(), read.clone()).history(WORKSPACE, None).await.unwrap();
        assert_eq!(again.len(), history.len());
        log.close().await;
    });
}
