//! The event store conformance suite. Every behaviour is one generic function
//! over a backend; the macro at the bottom stamps each out for SQLite and for
//! PostgreSQL, so both backends pass the very same checks.

#[macro_use]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use onepd_adapters::EventLog;
use onepd_domain::fields::Fields;
use onepd_domain::{
    AppendError, EventFilter, EventId, EventStore, ExpectedVersion, Payload, Position, Timestamp, Upcasters,
};
use serde_json::json;
use sqlx::Executor;
use support::{Backend, TestDb, event, request, stream, workspace};
use uuid::Uuid;

/// Opens a plain connection pool to the test database, bypassing the store.
async fn raw_execute(db: &TestDb, backend: Backend, sql: &'static str) -> Result<u64, sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await?;
            let result = pool.execute(sql).await.map(|r| r.rows_affected());
            pool.close().await;
            result
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await?;
            let result = pool.execute(sql).await.map(|r| r.rows_affected());
            pool.close().await;
            result
        }
    }
}

async fn appended_events_read_back_in_order_with_gap_free_positions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let first =
        log.append(request("orders-1", ExpectedVersion::NoStream, vec![event(ws, "a"), event(ws, "b")])).await.unwrap();
    let second = log.append(request("orders-2", ExpectedVersion::Any, vec![event(ws, "c")])).await.unwrap();
    let third = log.append(request("orders-1", ExpectedVersion::Exact(2), vec![event(ws, "d")])).await.unwrap();
    assert_eq!(first.positions, vec![Position(1), Position(2)]);
    assert_eq!(first.stream_version, 2);
    assert_eq!(second.positions, vec![Position(3)]);
    assert_eq!(third.positions, vec![Position(4)]);
    assert_eq!(third.stream_version, 3);
    assert_eq!(log.head().await.unwrap(), Position(4));

    let page = log.read(Position(1), None, &EventFilter::default(), 10).await.unwrap();
    let names: Vec<_> = page.events.iter().map(|e| e.data.value().unwrap()["event"].clone()).collect();
    assert_eq!(names, vec![json!("a"), json!("b"), json!("c"), json!("d")]);
    assert_eq!(page.next, Position(5));
    let versions: Vec<_> = page.events.iter().map(|e| (e.stream_id.to_string(), e.stream_version)).collect();
    assert_eq!(
        versions,
        vec![("orders-1".into(), 1), ("orders-1".into(), 2), ("orders-2".into(), 1), ("orders-1".into(), 3)]
    );
    assert!(page.events.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));

    let stream_events = log.read_stream(&stream("orders-1"), 2, 10).await.unwrap();
    assert_eq!(stream_events.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![2, 4]);

    let limited = log.read(Position(2), Some(Position(3)), &EventFilter::default(), 1).await.unwrap();
    assert_eq!(limited.events.len(), 1);
    assert_eq!(limited.next, Position(3));
    log.close().await;
}

async fn concurrent_writers_and_a_live_reader_see_every_event_once_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let writers = 8;
    let batches = 25;
    let mut expected_ids = HashSet::new();
    let mut plans = Vec::new();
    for writer in 0..writers {
        let mut plan = Vec::new();
        for batch in 0..batches {
            let events: Vec<_> = (0..=(batch % 4)).map(|_| event(ws, "x")).collect();
            expected_ids.extend(events.iter().map(|e| e.event_id));
            plan.push(request(&format!("writer-{writer}"), ExpectedVersion::Any, events));
        }
        plans.push(plan);
    }
    let total = expected_ids.len();

    let mut subscription = log.subscribe(Position::START, EventFilter::default()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < total {
            let batch = tokio::time::timeout(Duration::from_secs(30), subscription.next_batch())
                .await
                .expect("subscriber starved")
                .unwrap();
            seen.extend(batch.into_iter().map(|e| (e.position, e.event_id)));
        }
        seen
    });
    let mut handles = Vec::new();
    for plan in plans {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for request in plan {
                let ids: Vec<_> = request.events.iter().map(|e| e.event_id).collect();
                let outcome = log.append(request).await.unwrap();
                acknowledged.extend(ids.into_iter().zip(outcome.positions));
            }
            acknowledged
        }));
    }
    let mut acknowledged = HashMap::new();
    for handle in handles {
        acknowledged.extend(handle.await.unwrap());
    }
    let seen = reader.await.unwrap();

    let positions: Vec<u64> = seen.iter().map(|(p, _)| p.0).collect();
    assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>(), "positions gap-free and in order");
    let ids: HashSet<EventId> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, expected_ids, "every event seen exactly once");
    for (position, id) in &seen {
        assert_eq!(acknowledged[id], *position, "the reader saw the acknowledged position");
    }
    assert!(log.verify(&|_, _| {}).await.unwrap().first_break.is_none());
    log.close().await;
}

async fn two_connection_pools_appending_at_once_share_one_gap_free_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = db.open().await;
    let second = db.open().await;
    let ws = workspace(1);
    let mut handles = Vec::new();
    for (n, log) in [first.clone(), second.clone(), first.clone(), second.clone()].into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            for _ in 0..30 {
                log.append(request(&format!("pool-{n}"), ExpectedVersion::Any, vec![event(ws, "x"), event(ws, "y")]))
                    .await
                    .unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let page = second.read(Position(1), None, &EventFilter::default(), 1_000).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.position.0).collect::<Vec<_>>(), (1..=240).collect::<Vec<_>>());
    let report = first.verify(&|_, _| {}).await.unwrap();
    assert_eq!(report.first_break, None);
    assert_eq!(report.events_checked, 240);

    // An event stored through one pool is a duplicate through the other.
    let stored = page.events[17].clone();
    let mut retry = event(ws, "x");
    retry.event_id = stored.event_id;
    let outcome = first.append(request("anything", ExpectedVersion::Any, vec![retry])).await.unwrap();
    assert!(outcome.duplicate);
    assert_eq!(outcome.positions, vec![stored.position]);
    first.close().await;
    second.close().await;
}

async fn a_retried_batch_is_stored_once_and_reports_its_original_positions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let batch = vec![event(ws, "a"), event(ws, "b")];
    let first = log.append(request("s", ExpectedVersion::NoStream, batch.clone())).await.unwrap();
    log.append(request("s", ExpectedVersion::Any, vec![event(ws, "c")])).await.unwrap();
    // The retry carries the original expected version, which no longer holds:
    // idempotency wins, because the batch is already stored.
    let retry = log.append(request("s", ExpectedVersion::NoStream, batch.clone())).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(log.head().await.unwrap(), Position(3));

    // Concurrent retries of one batch store it once.
    let fresh = vec![event(ws, "d")];
    let mut handles = Vec::new();
    for _ in 0..6 {
        let log = log.clone();
        let fresh = fresh.clone();
        handles.push(tokio::spawn(async move { log.append(request("t", ExpectedVersion::Any, fresh)).await.unwrap() }));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    assert!(outcomes.iter().all(|o| o.positions == vec![Position(4)]));

    // Still a duplicate after a restart, when the id index is rebuilt from the database.
    log.close().await;
    let reopened = db.open().await;
    let again = reopened.append(request("s", ExpectedVersion::Any, batch.clone())).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, first.positions);
    assert_eq!(reopened.head().await.unwrap(), Position(4));
    reopened.close().await;
}

/// How many rows `event_fingerprints` holds, and its mark.
async fn fingerprints_stored(db: &TestDb, backend: Backend) -> (i64, i64) {
    const SQL: &str = "SELECT (SELECT COUNT(*) FROM event_fingerprints), (SELECT up_to FROM event_fingerprints_mark)";
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let counts = sqlx::query_as(SQL).fetch_one(&pool).await.unwrap();
            pool.close().await;
            counts
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let counts = sqlx::query_as(SQL).fetch_one(&pool).await.unwrap();
            pool.close().await;
            counts
        }
    }
}

async fn ids_older_than_the_ones_kept_in_memory_are_still_duplicates(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.recent_ids = 6;
    let ws = workspace(1);
    let mut batches = Vec::new();
    // The first half written by a process that kept every id in memory, as
    // a log written before the database's tier existed: the next process
    // moves its older ids there at its first append.
    let every_id = db.open().await;
    for n in 0..20 {
        if n == 10 {
            every_id.close().await;
        }
        let log = if n < 10 { every_id.clone() } else { EventLog::open(config.clone()).await.unwrap() };
        let batch = vec![event(ws, &format!("a{n}")), event(ws, &format!("b{n}"))];
        let outcome = log.append(request(&format!("s{n}"), ExpectedVersion::Any, batch.clone())).await.unwrap();
        batches.push((batch, outcome.positions));
        if n >= 10 {
            log.close().await;
        }
    }
    let first = EventLog::open(config.clone()).await.unwrap();
    let (rows, mark) = fingerprints_stored(&db, backend).await;
    assert!(mark >= 30 && rows == mark, "the older ids moved to the database: {rows} rows up to {mark}");

    // A second process loads only the ids after the mark.
    let second = EventLog::open(config.clone()).await.unwrap();
    for (log, name) in [(&first, "first"), (&second, "second")] {
        for (batch, positions) in &batches {
            let retry = log.append(request("elsewhere", ExpectedVersion::NoStream, batch.clone())).await.unwrap();
            assert!(retry.duplicate, "{name}: a retry of positions {positions:?} is a duplicate");
            assert_eq!(&retry.positions, positions);
        }
        let mixed = vec![batches[0].0[0].clone(), event(ws, "new")];
        let refused = log.append(request("s0", ExpectedVersion::Any, mixed)).await.unwrap_err();
        assert!(matches!(refused, AppendError::PartiallyStored { total: 2, .. }), "{name}: {refused:?}");
    }
    assert_eq!(first.head().await.unwrap(), Position(40));

    // What one process appends is a duplicate in the other.
    let mut theirs = Vec::new();
    for n in 0..10 {
        let batch = vec![event(ws, &format!("c{n}"))];
        let outcome = second.append(request("c", ExpectedVersion::Any, batch.clone())).await.unwrap();
        theirs.push((batch, outcome.positions));
    }
    for (batch, positions) in &theirs {
        let retry = first.append(request("c", ExpectedVersion::Any, batch.clone())).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(&retry.positions, positions);
    }
    first.close().await;
    second.close().await;

    // And after a restart.
    let reopened = EventLog::open(config).await.unwrap();
    for (batch, positions) in batches.iter().chain(&theirs) {
        let retry = reopened.append(request("again", ExpectedVersion::Any, batch.clone())).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(&retry.positions, positions);
    }
    assert_eq!(reopened.head().await.unwrap(), Position(50));
    assert!(reopened.verify(&|_, _| {}).await.unwrap().first_break.is_none());
    reopened.close().await;
}

async fn a_partly_stored_batch_is_refused_and_stores_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let stored = event(ws, "a");
    log.append(request("s", ExpectedVersion::Any, vec![stored.clone()])).await.unwrap();
    let err = log.append(request("s", ExpectedVersion::Any, vec![event(ws, "b"), stored.clone()])).await.unwrap_err();
    match &err {
        AppendError::PartiallyStored { total, stored: ids } => {
            assert_eq!(*total, 2);
            assert_eq!(ids, &vec![stored.event_id]);
        }
        other => panic!("expected PartiallyStored, found {other:?}"),
    }
    assert!(err.to_string().contains("1 already stored"), "{err}");
    assert_eq!(log.head().await.unwrap(), Position(1));

    let twice = log.append(request("s", ExpectedVersion::Any, vec![stored.clone(), stored.clone()])).await.unwrap_err();
    assert!(matches!(twice, AppendError::InvalidBatch(ref m) if m.contains("events[1].event_id")), "{twice}");
    let empty = log.append(request("s", ExpectedVersion::Any, vec![])).await.unwrap_err();
    assert!(matches!(empty, AppendError::InvalidBatch(_)));
    log.close().await;
}

async fn a_stale_expected_version_is_a_precise_conflict(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    log.append(request("destination/acme", ExpectedVersion::NoStream, vec![event(ws, "a"), event(ws, "b")]))
        .await
        .unwrap();
    let err =
        log.append(request("destination/acme", ExpectedVersion::Exact(7), vec![event(ws, "c")])).await.unwrap_err();
    assert_eq!(err.to_string(), "stream destination/acme: expected version 7, found version 2");
    let err =
        log.append(request("destination/acme", ExpectedVersion::NoStream, vec![event(ws, "c")])).await.unwrap_err();
    assert!(matches!(err, AppendError::WrongExpectedVersion { found: 2, .. }));

    // Of many concurrent appenders expecting the same version, exactly one wins.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            log.append(request("destination/acme", ExpectedVersion::Exact(2), vec![event(ws, "race")])).await
        }));
    }
    let mut wins = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.stream_version, 3);
            }
            Err(AppendError::WrongExpectedVersion { found: 3, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(log.head().await.unwrap(), Position(3));
    log.close().await;
}

async fn the_database_refuses_to_update_or_delete_events(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    log.append(request("s", ExpectedVersion::Any, vec![event(workspace(1), "a")])).await.unwrap();
    log.close().await;
    let update = raw_execute(&db, backend, "UPDATE events SET event_type = 'Forged'").await.unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = raw_execute(&db, backend, "DELETE FROM events").await.unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    if backend == Backend::Postgres {
        let truncate = raw_execute(&db, backend, "TRUNCATE events").await.unwrap_err();
        assert!(truncate.to_string().contains("append-only"), "{truncate}");
    }
    let log = db.open().await;
    assert_eq!(log.head().await.unwrap(), Position(1));
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None);
    log.close().await;
}

async fn verify_names_the_first_position_whose_bytes_changed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    for _ in 0..5 {
        log.append(request("s", ExpectedVersion::Any, vec![event(ws, "a"), event(ws, "b")])).await.unwrap();
    }
    let mut calls = Vec::new();
    let report = {
        let calls_ref = std::sync::Mutex::new(&mut calls);
        log.verify(&|done, total| calls_ref.lock().unwrap().push((done, total))).await.unwrap()
    };
    assert_eq!(report.first_break, None);
    assert_eq!(report.events_checked, 10);
    assert_eq!(calls.last(), Some(&(10, 10)));
    log.close().await;

    // Tampering needs the guard out of the way first.
    match backend {
        Backend::Sqlite => {
            raw_execute(&db, backend, "DROP TRIGGER events_reject_update").await.unwrap();
            raw_execute(
                &db,
                backend,
                "UPDATE events SET metadata = CAST('{\"source\":\"tEst\"}' AS BLOB) WHERE position = 7",
            )
            .await
            .unwrap();
        }
        Backend::Postgres => {
            raw_execute(&db, backend, "DROP TRIGGER events_reject_update_delete ON events").await.unwrap();
            raw_execute(
                &db,
                backend,
                "UPDATE events SET metadata = convert_to('{\"source\":\"tEst\"}', 'UTF8') WHERE position = 7",
            )
            .await
            .unwrap();
        }
    }
    let log = db.open().await;
    let report = log.verify(&|_, _| {}).await.unwrap();
    let broken = report.first_break.expect("tampering detected");
    assert_eq!(broken.position, 7);
    assert_eq!(report.events_checked, 6);
    assert_ne!(broken.stored, broken.recomputed);
    log.close().await;
}

async fn shredding_a_subject_erases_its_payloads_and_verify_still_passes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let mut alice = event(ws, "Order Completed");
    alice.data = json!({ "email": "alice@example.com", "total": 30 });
    alice.subject = Some("user-alice".into());
    let mut bob = event(ws, "Order Completed");
    bob.data = json!({ "email": "bob@example.com" });
    bob.subject = Some("user-bob".into());
    let mut alice_again = event(ws, "Signed Up");
    alice_again.subject = Some("user-alice".into());
    log.append(request("s", ExpectedVersion::Any, vec![alice.clone(), bob, alice_again])).await.unwrap();

    let before = log.read(Position(1), None, &EventFilter::default(), 10).await.unwrap().events;
    assert!(before.iter().all(|e| e.sealed));
    assert_eq!(before[0].data, Payload::Data(alice.data.clone()));

    // The stored bytes do not hold the email in clear.
    let rows = log.stored_rows(Position(1), Position(3), 10).await.unwrap();
    assert!(!rows[0].data.windows(9).any(|w| w == b"alice@exa"));

    assert!(log.shred(ws, "user-alice").await.unwrap());
    assert!(!log.shred(ws, "user-alice").await.unwrap(), "a second shred finds no key");
    let after = log.read(Position(1), None, &EventFilter::default(), 10).await.unwrap().events;
    assert_eq!(after[0].data, Payload::Erased);
    assert_eq!(after[2].data, Payload::Erased);
    assert_eq!(after[1].data.value().unwrap()["email"], json!("bob@example.com"));
    assert_eq!(after[0].metadata, before[0].metadata, "routing metadata stays readable");
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None);

    // Another process sees the erasure too, and a new event about the subject gets a new key.
    let other = db.open().await;
    assert_eq!(
        other.read(Position(1), Some(Position(1)), &EventFilter::default(), 1).await.unwrap().events[0].data,
        Payload::Erased
    );
    let mut later = event(ws, "Came Back");
    later.subject = Some("user-alice".into());
    log.append(request("s", ExpectedVersion::Any, vec![later.clone()])).await.unwrap();
    let read_later = other.read(Position(4), None, &EventFilter::default(), 1).await.unwrap().events;
    assert_eq!(read_later[0].data, Payload::Data(later.data));
    assert_eq!(
        other.read(Position(1), Some(Position(1)), &EventFilter::default(), 1).await.unwrap().events[0].data,
        Payload::Erased
    );
    log.close().await;
    other.close().await;
}

async fn a_subject_key_in_one_process_is_shredded_for_another(backend: Backend) {
    let db = TestDb::new(backend).await;
    let writer = db.open().await;
    let reader = db.open().await;
    let ws = workspace(1);
    let mut sealed = event(ws, "a");
    sealed.subject = Some("user-1".into());
    writer.append(request("s", ExpectedVersion::Any, vec![sealed])).await.unwrap();
    // The reader caches the key.
    assert!(matches!(
        reader.read(Position(1), None, &EventFilter::default(), 1).await.unwrap().events[0].data,
        Payload::Data(_)
    ));
    writer.shred(ws, "user-1").await.unwrap();
    assert_eq!(
        reader.read(Position(1), None, &EventFilter::default(), 1).await.unwrap().events[0].data,
        Payload::Erased
    );
    writer.close().await;
    reader.close().await;
}

async fn reads_filter_by_workspace_type_stream_and_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let (a, b) = (workspace(1), workspace(2));
    log.append(request("a-1", ExpectedVersion::Any, vec![event(a, "1")])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = Timestamp(onepd_now_micros());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut other_type = event(a, "2");
    other_type.event_type = "WorkspaceCreated".into();
    log.append(request("a-2", ExpectedVersion::Any, vec![other_type])).await.unwrap();
    log.append(request("b-1", ExpectedVersion::Any, vec![event(b, "3"), event(b, "4")])).await.unwrap();

    let only_b = log.read(Position(1), None, &EventFilter::workspace(b), 10).await.unwrap();
    assert_eq!(only_b.events.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![3, 4]);
    assert!(only_b.events.iter().all(|e| e.workspace_id == b), "a workspace never reads another's events");
    assert_eq!(only_b.next, Position(5));

    let typed = EventFilter { event_types: vec!["WorkspaceCreated".into()], ..EventFilter::default() };
    assert_eq!(log.read(Position(1), None, &typed, 10).await.unwrap().events.len(), 1);
    let streamed = EventFilter { stream: Some(stream("a-1")), ..EventFilter::default() };
    assert_eq!(log.read(Position(1), None, &streamed, 10).await.unwrap().events[0].position, Position(1));

    assert_eq!(log.position_at(middle).await.unwrap(), Position(2));
    assert_eq!(log.position_at(Timestamp(0)).await.unwrap(), Position(1));
    assert_eq!(log.position_at(Timestamp(i64::MAX)).await.unwrap(), Position(5));
    log.close().await;
}

async fn a_read_ahead_gives_the_pages_reads_give_and_decodes_only_the_parts_named(backend: Backend) {
    const PARTS: &[(&str, Fields)] = &[(
        "MessageAccepted",
        Fields::Only(&[("message", Fields::Only(&[("userId", Fields::All), ("traits", Fields::All)]))]),
    )];
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let (a, b) = (workspace(1), workspace(2));
    for n in 0..23 {
        let mut message = event(if n % 3 == 2 { b } else { a }, &n.to_string());
        message.data = json!({
            "message": {"userId": format!("u{n}"), "traits": {"plan": "pro", "n": n},
                        "context": {"page": {"url": "https://shop.example"}}},
            "enrichment": {"ip": "203.0.113.7"},
        });
        message.subject = (n % 2 == 0).then(|| format!("u{n}"));
        log.append(request(&format!("s-{}", n % 4), ExpectedVersion::Any, vec![message])).await.unwrap();
    }
    let log = Arc::new(log);
    let filter = EventFilter::workspace(a);
    // The pages `read` gives, one after another, from 2 to 20.
    let mut expected = Vec::new();
    let mut next = Position(2);
    while next <= Position(20) {
        let page = log.read(next, Some(Position(20)), &filter, 4).await.unwrap();
        next = page.next;
        expected.push(page);
    }
    let mut pages = log.clone().read_ahead(Position(2), Position(20), filter.clone(), 4);
    let mut read_ahead = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        read_ahead.push(page);
    }
    assert_eq!(read_ahead, expected);
    assert!(expected.len() >= 3, "several pages: {}", expected.len());
    // Past the head, a read ahead ends at the head.
    let mut pages = log.clone().read_ahead(Position(20), Position(1_000), filter.clone(), 100);
    let tail = pages.next_page().await.unwrap().unwrap();
    assert_eq!(tail.next, Position(24));
    assert_eq!(pages.next_page().await.unwrap(), None);

    // Only the parts named are decoded, sealed or not.
    let parted = EventFilter { parts: PARTS, ..filter };
    let read = log.read(Position(1), None, &parted, 100).await.unwrap().events;
    assert_eq!(read.len(), 16);
    for event in &read {
        let Payload::Data(data) = &event.data else { panic!("{event:?}") };
        let n = data["message"]["traits"]["n"].as_u64().unwrap();
        assert_eq!(data, &json!({"message": {"userId": format!("u{n}"), "traits": {"plan": "pro", "n": n}}}));
    }
    let whole = log.read(Position(1), None, &EventFilter::workspace(a), 100).await.unwrap().events;
    assert_eq!(whole[0].data.value().unwrap()["message"]["context"]["page"]["url"], json!("https://shop.example"));
    log.close().await;
}

fn onepd_now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

async fn old_schema_versions_are_upcast_on_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let mut old = event(workspace(1), "a");
    old.event_type = "OrderPlaced".into();
    old.data = json!({ "total": 5 });
    log.append(request("s", ExpectedVersion::Any, vec![old])).await.unwrap();
    log.close().await;

    let mut config = db.config();
    config.upcasters = Upcasters::new().register("OrderPlaced", 1, |mut data| {
        data["currency"] = json!("USD");
        Ok(data)
    });
    let log = EventLog::open(config).await.unwrap();
    let read = log.read(Position(1), None, &EventFilter::default(), 1).await.unwrap().events;
    assert_eq!(read[0].schema_version, 2);
    assert_eq!(read[0].data, Payload::Data(json!({ "total": 5, "currency": "USD" })));
    // A read of some parts lifts the whole payload, then keeps the parts.
    let parted =
        EventFilter { parts: &[("OrderPlaced", Fields::Only(&[("currency", Fields::All)]))], ..EventFilter::default() };
    let read = log.read(Position(1), None, &parted, 1).await.unwrap().events;
    assert_eq!((read[0].schema_version, &read[0].data), (2, &Payload::Data(json!({ "currency": "USD" }))));
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None, "stored bytes unchanged");
    log.close().await;
}

async fn a_subscription_catches_up_then_follows_live_appends(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    for _ in 0..3 {
        log.append(request("s", ExpectedVersion::Any, vec![event(ws, "old")])).await.unwrap();
    }
    let mut subscription = log.subscribe(Position(2), EventFilter::default()).await.unwrap();
    let caught_up = subscription.next_batch().await.unwrap();
    assert_eq!(caught_up.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![2, 3]);

    // A second process's append reaches this subscriber (NOTIFY on PostgreSQL, polling on SQLite).
    let other = db.open().await;
    let waiting = tokio::spawn(async move {
        let batch = subscription.next_batch().await.unwrap();
        (batch, subscription)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.append(request("s", ExpectedVersion::Any, vec![event(ws, "new")])).await.unwrap();
    let (live, mut subscription) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(live[0].position, Position(4));

    log.append(request("s", ExpectedVersion::Any, vec![event(ws, "newer")])).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.next_batch()).await.unwrap().unwrap();
    assert_eq!(next[0].position, Position(5));
    assert_eq!(subscription.next_position(), Position(6));
    log.close().await;
    other.close().await;
}

async fn appends_after_close_are_refused_and_queued_ones_committed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    let mut handles = Vec::new();
    for n in 0..20 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let event = event(ws, "x");
            let id = event.event_id;
            (id, log.append(request(&format!("s{n}"), ExpectedVersion::Any, vec![event])).await)
        }));
    }
    tokio::task::yield_now().await;
    log.close().await;
    let mut acknowledged = Vec::new();
    for handle in handles {
        let (id, result) = handle.await.unwrap();
        if let Ok(outcome) = result {
            acknowledged.push((id, outcome.positions[0]));
        }
    }
    let refused = log.append(request("late", ExpectedVersion::Any, vec![event(ws, "x")])).await.unwrap_err();
    assert!(refused.to_string().contains("shutting down"), "{refused}");
    let reopened = db.open().await;
    let stored = reopened.read(Position(1), None, &EventFilter::default(), 100).await.unwrap().events;
    for (id, position) in acknowledged {
        assert!(stored.iter().any(|e| e.event_id == id && e.position == position), "acknowledged {id} kept");
    }
    reopened.close().await;
}

/// A child process running `child_process_role_appends_until_killed`, and
/// the acknowledgements it has printed.
struct AppendingChild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(Uuid, u64)>,
}

impl AppendingChild {
    fn spawn(db: &TestDb) -> AppendingChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_process_role_appends_until_killed", "--exact", "--nocapture", "--test-threads=1"])
            .env("ONEPD_CHILD_DATABASE_URL", &db.url)
            .env("ONEPD_CHILD_MASTER_KEY", db.master.to_hex())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some((id, position)) = line.strip_prefix("acknowledged ").and_then(|rest| rest.split_once(' ')) {
                    let _ = sender.send((Uuid::parse_str(id).unwrap(), position.parse().unwrap()));
                }
            }
        });
        AppendingChild { child, lines }
    }

    /// Waits until the child has acknowledged at least `count` events.
    fn wait_for(&self, count: usize, acknowledged: &mut Vec<(Uuid, u64)>) {
        while acknowledged.len() < count {
            let ack = self.lines.recv_timeout(Duration::from_secs(60)).expect("child stopped acknowledging");
            acknowledged.push(ack);
        }
    }

    /// SIGKILL: no shutdown, no flushing. Returns every acknowledgement printed.
    fn kill(mut self, mut acknowledged: Vec<(Uuid, u64)>) -> Vec<(Uuid, u64)> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The reader thread ends at EOF; take everything it got.
        while let Ok(ack) = self.lines.recv_timeout(Duration::from_secs(5)) {
            acknowledged.push(ack);
        }
        acknowledged
    }
}

/// Checks that every acknowledged event is stored where it was acknowledged
/// and that the log is gap-free and verifies.
async fn assert_all_stored(log: &EventLog, acknowledged: &[(Uuid, u64)]) {
    let head = log.head().await.unwrap();
    let stored = log.stored_rows(Position(1), head, head.0 as usize + 1).await.unwrap();
    assert_eq!(stored.iter().map(|r| r.position).collect::<Vec<_>>(), (1..=head.0).collect::<Vec<_>>(), "gap-free");
    let by_id: HashMap<Uuid, u64> = stored.iter().map(|r| (r.event_id, r.position)).collect();
    assert_eq!(by_id.len(), stored.len(), "no event stored twice");
    for (id, position) in acknowledged {
        assert_eq!(by_id.get(id), Some(position), "acknowledged event {id} kept at its position");
    }
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None);
}

async fn a_killed_process_loses_nothing_it_acknowledged(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Create the schema first so the child only appends.
    db.open().await.close().await;
    let child = AppendingChild::spawn(&db);
    let mut acknowledged = Vec::new();
    child.wait_for(300, &mut acknowledged);
    let acknowledged = child.kill(acknowledged);

    let log = db.open().await;
    assert_all_stored(&log, &acknowledged).await;
    // The log goes on where the killed process stopped.
    let head = log.head().await.unwrap();
    let next = log.append(request("after", ExpectedVersion::Any, vec![event(workspace(1), "x")])).await.unwrap();
    assert_eq!(next.positions, vec![head.next()]);
    log.close().await;
}

async fn several_processes_appending_at_once_share_one_gap_free_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.open().await.close().await;
    let children = [AppendingChild::spawn(&db), AppendingChild::spawn(&db), AppendingChild::spawn(&db)];
    let mut acknowledged: Vec<Vec<(Uuid, u64)>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for (child, acks) in children.iter().zip(acknowledged.iter_mut()) {
        child.wait_for(200, acks);
    }
    // A reader in this process follows while the children keep appending.
    let log = db.open().await;
    let mut subscription = log.subscribe(Position::START, EventFilter::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 600 {
        seen.extend(subscription.next_batch().await.unwrap().into_iter().map(|e| e.position.0));
    }
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>(), "in order, nothing skipped or repeated");
    let mut all = Vec::new();
    for (child, acks) in children.into_iter().zip(acknowledged) {
        all.extend(child.kill(acks));
    }
    let positions: HashSet<u64> = all.iter().map(|(_, p)| *p).collect();
    assert_eq!(positions.len(), all.len(), "no two processes were given one position");
    assert_all_stored(&log, &all).await;
    log.close().await;
}

/// Not a test of its own: the child process of
/// `a_killed_process_loses_nothing_it_acknowledged`. It appends from several
/// tasks until killed and prints every acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_role_appends_until_killed() {
    let Ok(url) = std::env::var("ONEPD_CHILD_DATABASE_URL") else { return };
    let master = onepd_adapters::MasterKey::from_hex(&std::env::var("ONEPD_CHILD_MASTER_KEY").unwrap()).unwrap();
    let log = EventLog::open(onepd_adapters::StoreConfig::new(url, Some(master))).await.unwrap();
    let log = Arc::new(log);
    let mut handles = Vec::new();
    for writer in 0..4 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let mut sealed = event(workspace(1), "x");
                sealed.subject = Some(format!("user-{writer}"));
                let events = vec![event(workspace(1), "x"), sealed];
                let ids: Vec<_> = events.iter().map(|e| e.event_id.0).collect();
                let outcome =
                    log.append(request(&format!("child-{writer}"), ExpectedVersion::Any, events)).await.unwrap();
                let mut out = String::new();
                for (id, position) in ids.iter().zip(&outcome.positions) {
                    out.push_str(&format!("acknowledged {id} {position}\n"));
                }
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(out.as_bytes()).unwrap();
                stdout.flush().unwrap();
            }
        }));
    }
    // The writers never stop; the parent kills this process.
    drop(handles);
    std::future::pending::<()>().await;
}

async fn a_process_with_another_master_key_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.open().await.close().await;
    let mut config = db.config();
    config.master_key = Some(onepd_adapters::MasterKey::generate());
    let err = EventLog::open(config).await.err().expect("refused");
    assert!(err.to_string().contains("master key"), "{err}");
    // Without any master key the log still opens for reading and verifying.
    let mut config = db.config();
    config.master_key = None;
    let log = EventLog::open(config).await.unwrap();
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None);
    let mut sealed = event(workspace(1), "x");
    sealed.subject = Some("u".into());
    let refused = log.append(request("s", ExpectedVersion::Any, vec![sealed])).await.unwrap_err();
    assert!(matches!(refused, AppendError::InvalidBatch(_)), "{refused}");
    log.close().await;
}

/// SQLite stores whatever a hand edit puts in a column; reading such a row
/// is an error naming its position, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_row_of_the_wrong_type_is_reported_as_corrupt() {
    let db = TestDb::new(Backend::Sqlite).await;
    let log = db.open().await;
    log.append(request("s", ExpectedVersion::Any, vec![event(workspace(1), "a"), event(workspace(1), "b")]))
        .await
        .unwrap();
    log.close().await;
    raw_execute(&db, Backend::Sqlite, "DROP TRIGGER events_reject_update").await.unwrap();
    raw_execute(&db, Backend::Sqlite, "UPDATE events SET event_id = 'not a uuid' WHERE position = 2").await.unwrap();
    let log = db.open().await;
    let err = log.verify(&|_, _| {}).await.unwrap_err();
    assert!(err.to_string().starts_with("event at position 2: column 1"), "{err}");
    let err = log.read(Position(1), None, &EventFilter::default(), 10).await.unwrap_err();
    assert!(err.to_string().contains("position 2"), "{err}");
    // The appender survives too: it reports the error and keeps serving.
    let append = log.append(request("s", ExpectedVersion::Any, vec![event(workspace(1), "c")])).await;
    assert!(append.is_err(), "the id index cannot load past a corrupt row");
    log.close().await;
}

/// Runs `sql` with `binds` (byte strings and integers, in order) on a plain
/// pool: the tamperer's own tool.
async fn tamper(db: &TestDb, backend: Backend, sql: &str, binds: Vec<Bind>) {
    // The same statement on either pool type.
    macro_rules! run_on {
        ($pool:expr, $sql:expr) => {{
            let pool = $pool;
            let mut query = sqlx::query(sqlx::AssertSqlSafe($sql));
            for bind in binds {
                query = match bind {
                    Bind::Bytes(bytes) => query.bind(bytes),
                    Bind::Int(n) => query.bind(n),
                };
            }
            query.execute(&pool).await.unwrap();
            pool.close().await;
        }};
    }
    match backend {
        Backend::Sqlite => run_on!(sqlx::SqlitePool::connect(&db.url).await.unwrap(), sql.to_owned()),
        Backend::Postgres => {
            run_on!(sqlx::PgPool::connect(&db.url).await.unwrap(), sql.replace('?', "$").replace_numbered())
        }
    }
}

enum Bind {
    Bytes(Vec<u8>),
    Int(i64),
}

/// `$` placeholders numbered in order (`$1`, `$2`, …), for PostgreSQL.
trait Numbered {
    fn replace_numbered(&self) -> String;
}

impl Numbered for String {
    fn replace_numbered(&self) -> String {
        let mut out = String::new();
        let mut n = 0;
        for c in self.chars() {
            out.push(c);
            if c == '$' {
                n += 1;
                out.push_str(&n.to_string());
            }
        }
        out
    }
}

async fn drop_guards(db: &TestDb, backend: Backend) {
    match backend {
        Backend::Sqlite => {
            raw_execute(db, backend, "DROP TRIGGER events_reject_update").await.unwrap();
            raw_execute(db, backend, "DROP TRIGGER events_reject_delete").await.unwrap();
        }
        Backend::Postgres => {
            raw_execute(db, backend, "DROP TRIGGER events_reject_update_delete ON events").await.unwrap();
        }
    }
}

/// Rewriting an event and every later hash, or cutting the tail and moving
/// the head back, passes the chain check (it needs no secret); both fail
/// against a head signed before, and a signed head cannot be forged.
async fn a_signed_head_shows_a_log_rewritten_or_cut_short(backend: Backend) {
    use onepd_adapters::store::HeadCheck;
    use onepd_domain::chain::GENESIS;

    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let ws = workspace(1);
    for n in 0..5 {
        log.append(request("s", ExpectedVersion::Any, vec![event(ws, &format!("a{n}")), event(ws, "b")]))
            .await
            .unwrap();
    }
    let saved = log.signed_head(10).await.unwrap();
    assert_eq!(log.check_head(&saved).await.unwrap(), HeadCheck::Holds);
    log.append(request("s", ExpectedVersion::Any, vec![event(ws, "later")])).await.unwrap();
    assert_eq!(log.check_head(&saved).await.unwrap(), HeadCheck::Holds, "the log may grow");
    let mut forged = saved.clone();
    forged.position = 9;
    assert_eq!(log.check_head(&forged).await.unwrap(), HeadCheck::BadSignature);
    let rows = log.stored_rows(Position(1), Position(11), 100).await.unwrap();
    log.close().await;

    // The rewrite: event 3 says something else, every hash from it on is
    // recomputed, and the head follows.
    drop_guards(&db, backend).await;
    let mut previous = if rows[1].position == 2 { rows[1].hash } else { GENESIS };
    for row in &rows[2..] {
        let data = if row.position == 3 { br#"{"type":"track","event":"forged"}"#.to_vec() } else { row.data.clone() };
        let mut stored = row.as_stored();
        stored.data = &data;
        let hash = stored.chain_hash(&previous);
        tamper(
            &db,
            backend,
            "UPDATE events SET data = ?, hash = ? WHERE position = ?",
            vec![Bind::Bytes(data.clone()), Bind::Bytes(hash.to_vec()), Bind::Int(row.position as i64)],
        )
        .await;
        previous = hash;
    }
    tamper(&db, backend, "UPDATE log_head SET hash = ? WHERE id = 1", vec![Bind::Bytes(previous.to_vec())]).await;
    let log = db.open().await;
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None, "the chain alone cannot tell");
    assert!(matches!(log.check_head(&saved).await.unwrap(), HeadCheck::Rewritten { .. }));
    log.close().await;

    // The cut: events after 6 removed, the head moved back to 6.
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    for n in 0..5 {
        log.append(request("s", ExpectedVersion::Any, vec![event(ws, &format!("a{n}")), event(ws, "b")]))
            .await
            .unwrap();
    }
    let saved = log.signed_head(10).await.unwrap();
    let rows = log.stored_rows(Position(6), Position(6), 1).await.unwrap();
    log.close().await;
    drop_guards(&db, backend).await;
    raw_execute(&db, backend, "DELETE FROM events WHERE position > 6").await.unwrap();
    tamper(
        &db,
        backend,
        "UPDATE log_head SET position = ?, hash = ?, recorded_at = ? WHERE id = 1",
        vec![Bind::Int(6), Bind::Bytes(rows[0].hash.to_vec()), Bind::Int(rows[0].recorded_at)],
    )
    .await;
    let log = db.open().await;
    assert_eq!(log.verify(&|_, _| {}).await.unwrap().first_break, None, "the chain alone cannot tell");
    assert_eq!(log.check_head(&saved).await.unwrap(), HeadCheck::Truncated { head: 6 });
    log.close().await;

    // Another log under the same master key: its head does not pass for this one's.
    let mut other = TestDb::new(backend).await;
    other.master = db.master.clone();
    let log = other.open().await;
    for n in 0..6 {
        log.append(request("s", ExpectedVersion::Any, vec![event(ws, &format!("o{n}"))])).await.unwrap();
    }
    let theirs = log.signed_head(6).await.unwrap();
    log.close().await;
    let log = db.open().await;
    assert_eq!(log.check_head(&theirs).await.unwrap(), HeadCheck::OtherLog);
    log.close().await;
}

conformance!(
    a_signed_head_shows_a_log_rewritten_or_cut_short,
    appended_events_read_back_in_order_with_gap_free_positions,
    concurrent_writers_and_a_live_reader_see_every_event_once_in_order,
    two_connection_pools_appending_at_once_share_one_gap_free_log,
    a_retried_batch_is_stored_once_and_reports_its_original_positions,
    ids_older_than_the_ones_kept_in_memory_are_still_duplicates,
    a_partly_stored_batch_is_refused_and_stores_nothing,
    a_stale_expected_version_is_a_precise_conflict,
    the_database_refuses_to_update_or_delete_events,
    verify_names_the_first_position_whose_bytes_changed,
    shredding_a_subject_erases_its_payloads_and_verify_still_passes,
    a_subject_key_in_one_process_is_shredded_for_another,
    reads_filter_by_workspace_type_stream_and_time,
    a_read_ahead_gives_the_pages_reads_give_and_decodes_only_the_parts_named,
    old_schema_versions_are_upcast_on_read,
    a_subscription_catches_up_then_follows_live_appends,
    appends_after_close_are_refused_and_queued_ones_committed,
    a_killed_process_loses_nothing_it_acknowledged,
    several_processes_appending_at_once_share_one_gap_free_log,
    a_process_with_another_master_key_is_refused,
);
