//! The read store conformance suite. Every behaviour is one generic function
//! over a backend; the macro at the bottom stamps each out for SQLite and for
//! PostgreSQL, so both backends pass the very same checks.

#[macro_use]
mod support;

use onepd_adapters::readstore::ReadStore;
use onepd_domain::{DocWrite, EventStore, ExpectedVersion, Position, ProjectionError, ProjectionStore, WorkspaceId};
use support::{Backend, TestDb, event, request, workspace};

/// Opens the read store that goes with the test database's log.
async fn open(db: &TestDb) -> ReadStore {
    ReadStore::open(&db.url).await.expect("open read store")
}

fn put(workspace: WorkspaceId, collection: &'static str, key: &str, doc: &str) -> DocWrite {
    DocWrite::Put { workspace, collection, key: key.into(), doc: doc.as_bytes().to_vec() }
}

fn delete(workspace: WorkspaceId, collection: &'static str, key: &str) -> DocWrite {
    DocWrite::Delete { workspace, collection, key: key.into() }
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| key.to_string()).collect()
}

/// The documents under `wanted`, as text.
async fn docs(
    store: &ReadStore,
    generation: u64,
    workspace: WorkspaceId,
    collection: &str,
    wanted: &[&str],
) -> Vec<Option<String>> {
    store
        .get(generation, workspace, collection, &keys(wanted))
        .await
        .unwrap()
        .into_iter()
        .map(|doc| doc.map(|bytes| String::from_utf8(bytes).unwrap()))
        .collect()
}

fn some(doc: &str) -> Option<String> {
    Some(doc.to_owned())
}

async fn committed_documents_read_back_in_the_order_of_the_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 3).await.unwrap();
    assert_eq!(generation.projection, "profiles");
    assert_eq!(generation.version, 3);
    assert_eq!(generation.checkpoint, Position::START);
    assert!(!generation.live);

    let writes =
        vec![put(ws, "profile", "p1", "one"), put(ws, "profile", "p2", "two"), put(ws, "identifier", "p1", "id")];
    store.commit(generation.id, Position::START, Position(7), writes).await.unwrap();

    assert_eq!(
        docs(&store, generation.id, ws, "profile", &["p2", "missing", "p1", "p2"]).await,
        vec![some("two"), None, some("one"), some("two")]
    );
    assert_eq!(docs(&store, generation.id, ws, "identifier", &["p1", "p2"]).await, vec![some("id"), None]);
    let listed: Vec<_> =
        store.documents(generation.id).await.unwrap().into_iter().map(|d| (d.collection, d.key, d.doc)).collect();
    let expected = [("identifier", "p1", "id"), ("profile", "p1", "one"), ("profile", "p2", "two")]
        .map(|(collection, key, doc)| (collection.to_owned(), key.to_owned(), doc.as_bytes().to_vec()));
    assert_eq!(listed, expected);
    assert_eq!(store.get(generation.id, ws, "profile", &[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
    let stored = store.generations("profiles").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].checkpoint, Position(7));

    store.commit(generation.id, Position(7), Position(9), vec![put(ws, "profile", "p1", "uno")]).await.unwrap();
    assert_eq!(docs(&store, generation.id, ws, "profile", &["p1", "p2"]).await, vec![some("uno"), some("two")]);
    store.close().await;
}

async fn a_scan_pages_through_one_collection_of_one_workspace_in_key_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let (ws, other) = (workspace(1), workspace(2));
    let generation = store.create_generation("profiles", 1).await.unwrap();
    let mut writes: Vec<DocWrite> = ["b", "a", "é", "B", "c"].iter().map(|key| put(ws, "profile", key, key)).collect();
    writes.push(put(ws, "identifier", "a2", "x"));
    writes.push(put(other, "profile", "a1", "y"));
    store.commit(generation.id, Position::START, Position(1), writes).await.unwrap();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(generation.id, ws, "profile", after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(page.into_iter().map(|(key, doc)| (key, String::from_utf8(doc).unwrap())));
    }
    let keys: Vec<&str> = seen.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["B", "a", "b", "c", "é"], "bytes order, this workspace and collection only");
    assert!(seen.iter().all(|(key, doc)| key == doc));
    store.close().await;
}

async fn writes_to_one_document_in_one_commit_take_effect_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store.commit(generation.id, Position::START, Position(1), vec![put(ws, "profile", "kept", "old")]).await.unwrap();

    let writes = vec![
        put(ws, "profile", "gone", "a"),
        delete(ws, "profile", "gone"),
        delete(ws, "profile", "back"),
        put(ws, "profile", "back", "b"),
        put(ws, "profile", "kept", "new"),
        delete(ws, "profile", "kept"),
        put(ws, "profile", "kept", "newest"),
    ];
    store.commit(generation.id, Position(1), Position(2), writes).await.unwrap();

    assert_eq!(
        docs(&store, generation.id, ws, "profile", &["gone", "back", "kept"]).await,
        vec![None, some("b"), some("newest")]
    );
    store.close().await;
}

async fn a_commit_with_a_stale_checkpoint_is_fenced_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store.commit(generation.id, Position::START, Position(5), vec![put(ws, "profile", "p1", "one")]).await.unwrap();

    let refused = store
        .commit(
            generation.id,
            Position(3),
            Position(8),
            vec![put(ws, "profile", "p1", "stale"), put(ws, "profile", "p2", "stale")],
        )
        .await;

    assert_eq!(
        refused,
        Err(ProjectionError::Fenced { generation: generation.id, expected: Position(3), found: Position(5) })
    );
    assert_eq!(docs(&store, generation.id, ws, "profile", &["p1", "p2"]).await, vec![some("one"), None]);
    assert_eq!(store.generations("profiles").await.unwrap()[0].checkpoint, Position(5));
    store.close().await;
}

async fn a_commit_to_a_dropped_generation_is_fenced_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store.commit(generation.id, Position::START, Position(5), vec![put(ws, "profile", "p1", "one")]).await.unwrap();
    store.drop_generation(generation.id).await.unwrap();

    let refused = store.commit(generation.id, Position(5), Position(6), vec![put(ws, "profile", "p2", "two")]).await;

    assert_eq!(
        refused,
        Err(ProjectionError::Fenced { generation: generation.id, expected: Position(5), found: Position::START })
    );
    assert_eq!(docs(&store, generation.id, ws, "profile", &["p1", "p2"]).await, vec![None, None]);
    assert!(store.generations("profiles").await.unwrap().is_empty());
    // Ids are never reused, so the dropped generation's writer cannot reach a new one.
    let next = store.create_generation("profiles", 1).await.unwrap();
    assert!(next.id > generation.id);
    store.close().await;
}

async fn of_two_writers_expecting_one_checkpoint_exactly_one_commits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 1).await.unwrap();
    let writers = (0..4).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            let writes = (0..500).map(|n| put(ws, "profile", &format!("p{n}"), &format!("writer {writer}"))).collect();
            store.commit(generation.id, Position::START, Position(10 + writer), writes).await
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(writers).await.into_iter().map(Result::unwrap).collect();

    let winners: Vec<u64> = (0..4).filter(|writer| outcomes[*writer as usize].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let checkpoint = Position(10 + winners[0]);
    for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
        assert_eq!(
            outcome,
            &Err(ProjectionError::Fenced { generation: generation.id, expected: Position::START, found: checkpoint })
        );
    }
    let winner = format!("writer {}", winners[0]);
    let stored = docs(&store, generation.id, ws, "profile", &["p0", "p499"]).await;
    assert_eq!(stored, vec![Some(winner.clone()), Some(winner)]);
    store.close().await;
}

async fn an_empty_commit_still_moves_the_checkpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let generation = store.create_generation("profiles", 1).await.unwrap();

    store.commit(generation.id, Position::START, Position(42), Vec::new()).await.unwrap();

    assert_eq!(store.generations("profiles").await.unwrap()[0].checkpoint, Position(42));
    let refused = store.commit(generation.id, Position::START, Position(43), Vec::new()).await;
    assert!(matches!(refused, Err(ProjectionError::Fenced { found: Position(42), .. })), "{refused:?}");
    store.close().await;
}

async fn promoting_a_generation_makes_it_live_and_drops_the_old_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    assert_eq!(store.live("profiles").await.unwrap(), None);
    let old = store.create_generation("profiles", 1).await.unwrap();
    store.commit(old.id, Position::START, Position(10), vec![put(ws, "profile", "p1", "old")]).await.unwrap();
    store.promote(old.id).await.unwrap();
    let live = store.live("profiles").await.unwrap().unwrap();
    assert_eq!((live.id, live.live, live.checkpoint), (old.id, true, Position(10)));

    let new = store.create_generation("profiles", 2).await.unwrap();
    store.commit(new.id, Position::START, Position(10), vec![put(ws, "profile", "p1", "new")]).await.unwrap();
    assert_eq!(store.live("profiles").await.unwrap().unwrap().id, old.id);
    store.promote(new.id).await.unwrap();

    let live = store.live("profiles").await.unwrap().unwrap();
    assert_eq!((live.id, live.version, live.live), (new.id, 2, true));
    let generations = store.generations("profiles").await.unwrap();
    assert_eq!(generations.iter().map(|g| (g.id, g.live)).collect::<Vec<_>>(), vec![(new.id, true)]);
    assert_eq!(docs(&store, new.id, ws, "profile", &["p1"]).await, vec![some("new")]);
    assert_eq!(docs(&store, old.id, ws, "profile", &["p1"]).await, vec![None]);
    let refused = store.commit(old.id, Position(10), Position(11), Vec::new()).await;
    assert!(matches!(refused, Err(ProjectionError::Fenced { found: Position::START, .. })), "{refused:?}");
    // Promoting the live generation again changes nothing.
    store.promote(new.id).await.unwrap();
    assert_eq!(store.live("profiles").await.unwrap().unwrap().id, new.id);
    store.close().await;
}

async fn promoting_a_generation_that_does_not_exist_is_an_error(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store.promote(generation.id).await.unwrap();

    let refused = store.promote(generation.id + 100).await.unwrap_err();

    assert!(refused.to_string().contains(&format!("generation {}", generation.id + 100)), "{refused}");
    assert_eq!(store.live("profiles").await.unwrap().unwrap().id, generation.id);
    store.close().await;
}

async fn generations_of_two_projections_are_independent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let profiles = store.create_generation("profiles", 1).await.unwrap();
    let audiences = store.create_generation("audiences", 1).await.unwrap();
    assert_ne!(profiles.id, audiences.id);
    store.commit(profiles.id, Position::START, Position(3), vec![put(ws, "doc", "k", "profile")]).await.unwrap();
    store.commit(audiences.id, Position::START, Position(4), vec![put(ws, "doc", "k", "audience")]).await.unwrap();
    store.promote(profiles.id).await.unwrap();
    store.promote(audiences.id).await.unwrap();

    let newer = store.create_generation("profiles", 2).await.unwrap();
    store.promote(newer.id).await.unwrap();

    assert_eq!(store.live("profiles").await.unwrap().unwrap().id, newer.id);
    assert_eq!(store.live("audiences").await.unwrap().unwrap().id, audiences.id);
    assert_eq!(store.generations("audiences").await.unwrap().len(), 1);
    assert_eq!(docs(&store, audiences.id, ws, "doc", &["k"]).await, vec![some("audience")]);
    assert_eq!(docs(&store, profiles.id, ws, "doc", &["k"]).await, vec![None]);

    let abandoned = store.create_generation("audiences", 2).await.unwrap();
    store.commit(abandoned.id, Position::START, Position(1), vec![put(ws, "doc", "k", "abandoned")]).await.unwrap();
    store.drop_generation(abandoned.id).await.unwrap();
    assert_eq!(store.generations("audiences").await.unwrap().iter().map(|g| g.id).collect::<Vec<_>>(), [audiences.id]);
    assert_eq!(docs(&store, audiences.id, ws, "doc", &["k"]).await, vec![some("audience")]);
    assert_eq!(docs(&store, abandoned.id, ws, "doc", &["k"]).await, vec![None]);
    store.close().await;
}

async fn a_document_of_one_workspace_is_never_read_for_another(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let (a, b) = (workspace(1), workspace(2));
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store
        .commit(
            generation.id,
            Position::START,
            Position(2),
            vec![put(a, "profile", "shared", "of a"), put(a, "profile", "only-a", "of a")],
        )
        .await
        .unwrap();
    assert_eq!(docs(&store, generation.id, b, "profile", &["shared", "only-a"]).await, vec![None, None]);

    store
        .commit(
            generation.id,
            Position(2),
            Position(3),
            vec![put(b, "profile", "shared", "of b"), delete(b, "profile", "only-a")],
        )
        .await
        .unwrap();

    assert_eq!(
        docs(&store, generation.id, a, "profile", &["shared", "only-a"]).await,
        vec![some("of a"), some("of a")]
    );
    assert_eq!(docs(&store, generation.id, b, "profile", &["shared", "only-a"]).await, vec![some("of b"), None]);
    store.close().await;
}

async fn replacing_a_workspace_removes_its_old_documents_and_leaves_others_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let (a, b) = (workspace(1), workspace(2));
    let generation = store.create_generation("profiles", 1).await.unwrap();
    let before = vec![
        put(a, "profile", "p1", "a1"),
        put(a, "identifier", "user_id:u1", "p1"),
        put(b, "profile", "p1", "b1"),
        put(b, "identifier", "user_id:u1", "p1"),
    ];
    store.commit(generation.id, Position::START, Position(5), before).await.unwrap();
    let stale = store.replace_workspace(generation.id, Position(4), Position(6), a, vec![]).await;
    assert!(matches!(stale, Err(ProjectionError::Fenced { .. })), "{stale:?}");

    store
        .replace_workspace(generation.id, Position(5), Position(6), a, vec![put(a, "profile", "p2", "a2")])
        .await
        .unwrap();

    assert_eq!(docs(&store, generation.id, a, "profile", &["p1", "p2"]).await, vec![None, some("a2")]);
    assert_eq!(docs(&store, generation.id, a, "identifier", &["user_id:u1"]).await, vec![None]);
    assert_eq!(docs(&store, generation.id, b, "profile", &["p1"]).await, vec![some("b1")]);
    assert_eq!(docs(&store, generation.id, b, "identifier", &["user_id:u1"]).await, vec![some("p1")]);
    assert_eq!(store.generations("profiles").await.unwrap()[0].checkpoint, Position(6));
    store.close().await;
}

async fn adopting_a_workspace_takes_its_documents_from_the_generation_it_was_re_derived_into(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let (a, b) = (workspace(1), workspace(2));
    let live = store.create_generation("profiles", 1).await.unwrap();
    let before = vec![put(a, "profile", "p1", "a1"), put(a, "refold", "pending", ""), put(b, "profile", "p1", "b1")];
    store.commit(live.id, Position::START, Position(5), before).await.unwrap();
    let scratch = store.create_generation("profiles-refold", 1).await.unwrap();
    let fresh = vec![put(a, "profile", "p2", "a2"), put(a, "identifier", "user_id:u1", "p2")];
    store.commit(scratch.id, Position::START, Position(5), fresh).await.unwrap();
    let stale = store.adopt_workspace(live.id, Position(4), a, scratch.id).await;
    assert!(matches!(stale, Err(ProjectionError::Fenced { .. })), "{stale:?}");

    store.adopt_workspace(live.id, Position(5), a, scratch.id).await.unwrap();

    assert_eq!(docs(&store, live.id, a, "profile", &["p1", "p2"]).await, vec![None, some("a2")]);
    assert_eq!(docs(&store, live.id, a, "identifier", &["user_id:u1"]).await, vec![some("p2")]);
    assert_eq!(docs(&store, live.id, a, "refold", &["pending"]).await, vec![None]);
    assert_eq!(docs(&store, live.id, b, "profile", &["p1"]).await, vec![some("b1")]);
    assert_eq!(store.generations("profiles").await.unwrap()[0].checkpoint, Position(5));
    assert!(store.generations("profiles-refold").await.unwrap().is_empty(), "the adopted generation is dropped");
    assert_eq!(docs(&store, scratch.id, a, "profile", &["p2"]).await, vec![None]);
    // A generation that is gone cannot be adopted: nothing changes.
    let gone = store.adopt_workspace(live.id, Position(5), a, scratch.id).await;
    assert!(matches!(gone, Err(ProjectionError::Fenced { .. })), "{gone:?}");
    assert_eq!(docs(&store, live.id, a, "profile", &["p2"]).await, vec![some("a2")]);
    store.close().await;
}

async fn a_commit_of_twenty_thousand_documents_round_trips(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let ws = workspace(1);
    let generation = store.create_generation("profiles", 1).await.unwrap();
    // Unsorted, with a few keys written twice and some deleted again.
    let mut writes: Vec<DocWrite> = (0..20_000)
        .rev()
        .map(|n| put(ws, "profile", &format!("p{n}"), &format!("doc {n} {}", "x".repeat(200))))
        .collect();
    writes.extend((0..20_000).step_by(1_000).map(|n| put(ws, "profile", &format!("p{n}"), "rewritten")));
    writes.extend((1..20_000).step_by(1_000).map(|n| delete(ws, "profile", &format!("p{n}"))));

    store.commit(generation.id, Position::START, Position(20_000), writes).await.unwrap();

    let wanted: Vec<String> = (0..20_000).map(|n| format!("p{n}")).collect();
    let stored = store.get(generation.id, ws, "profile", &wanted).await.unwrap();
    assert_eq!(stored.len(), 20_000);
    for (n, doc) in stored.iter().enumerate() {
        let expected = match n % 1_000 {
            0 => Some("rewritten".to_owned()),
            1 => None,
            _ => Some(format!("doc {n} {}", "x".repeat(200))),
        };
        assert_eq!(doc.as_ref().map(|bytes| String::from_utf8(bytes.clone()).unwrap()), expected, "p{n}");
    }
    // Deleting them all again in one commit leaves nothing.
    let deletes = (0..20_000).map(|n| delete(ws, "profile", &format!("p{n}"))).collect();
    store.commit(generation.id, Position(20_000), Position(20_001), deletes).await.unwrap();
    let stored = store.get(generation.id, ws, "profile", &wanted).await.unwrap();
    assert!(stored.iter().all(Option::is_none));
    store.close().await;
}

async fn the_read_store_shares_the_logs_url_but_none_of_its_tables(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.open().await;
    let store = open(&db).await;
    let ws = workspace(1);
    log.append(request("orders-1", ExpectedVersion::NoStream, vec![event(ws, "a")])).await.unwrap();
    let generation = store.create_generation("profiles", 1).await.unwrap();
    store.commit(generation.id, Position::START, Position(1), vec![put(ws, "profile", "p1", "one")]).await.unwrap();
    store.close().await;
    log.close().await;

    // Each migrates again on reopening, and finds only its own migrations.
    let log = db.open().await;
    let store = open(&db).await;
    assert_eq!(log.head().await.unwrap(), Position(1));
    assert_eq!(docs(&store, generation.id, ws, "profile", &["p1"]).await, vec![some("one")]);
    if backend == Backend::Sqlite {
        let dir = std::path::Path::new(db.url.trim_start_matches("sqlite://")).parent().unwrap().to_owned();
        assert!(dir.join("onepd.projections.db").exists());
    }
    store.close().await;
    log.close().await;
}

conformance!(
    committed_documents_read_back_in_the_order_of_the_keys,
    a_scan_pages_through_one_collection_of_one_workspace_in_key_order,
    writes_to_one_document_in_one_commit_take_effect_in_order,
    a_commit_with_a_stale_checkpoint_is_fenced_and_writes_nothing,
    a_commit_to_a_dropped_generation_is_fenced_and_writes_nothing,
    of_two_writers_expecting_one_checkpoint_exactly_one_commits,
    an_empty_commit_still_moves_the_checkpoint,
    promoting_a_generation_makes_it_live_and_drops_the_old_one,
    promoting_a_generation_that_does_not_exist_is_an_error,
    generations_of_two_projections_are_independent,
    a_document_of_one_workspace_is_never_read_for_another,
    replacing_a_workspace_removes_its_old_documents_and_leaves_others_alone,
    adopting_a_workspace_takes_its_documents_from_the_generation_it_was_re_derived_into,
    a_commit_of_twenty_thousand_documents_round_trips,
    the_read_store_shares_the_logs_url_but_none_of_its_tables,
);
