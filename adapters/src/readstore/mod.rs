//! The read store: projections' documents on SQLite or PostgreSQL.
//! [`ReadStore`] implements the domain's [`ProjectionStore`] port over either.
//!
//! It opens with the event log's own url and sits beside the log, never in
//! its tables:
//!
//! * `sqlite://PATH/onepd.db` keeps its documents in the file
//!   `PATH/onepd.projections.db`. SQLite has one writer per file, and the
//!   log's appends must never queue behind a rebuild writing half a million
//!   documents, so the read store gets a file, and a write lock, of its own.
//!   The file is synced less often than the log (`synchronous = NORMAL`): a
//!   power cut may lose its last commits but never tears one, and the log
//!   still holds every event they came from, so the projection catches up
//!   from its checkpoint. It is derived data: deleting the file and
//!   rebuilding loses nothing.
//! * `postgres://…/DB` uses the same database, in its own schema
//!   [`POSTGRES_SCHEMA`] (created if missing), so its tables and its
//!   `_sqlx_migrations` never mix with the log's. Its commits do not wait for
//!   the WAL flush (`synchronous_commit = off`), for the same reason: a
//!   server crash may lose the last ones, never part of one.
//!
//! Both keep generations in `projection_generations` and documents in
//! `projection_docs`, keyed by (generation, workspace, collection, key).
//!
//! **Invariants:** a commit's documents and its checkpoint are one
//! transaction, so each event takes effect exactly once; at most one
//! generation of a projection is live; a generation id is never reused.
//! Dropped generations disappear for readers and writers in one transaction
//! and their documents are deleted in a second one (a "sweep"), which the
//! next open finishes if a crash interrupts it.

mod postgres;
mod sqlite;

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use onepd_domain::{
    DocWrite, Generation, Landing, Position, ProjectionError, ProjectionStore, StoreError, WorkspaceId,
};
use uuid::Uuid;

use crate::store::BackendKind;

/// The PostgreSQL schema holding the read store's tables.
pub const POSTGRES_SCHEMA: &str = "onepd_read";

/// Commits with more writes than this reduce them on a blocking thread: for
/// a rebuild's hundreds of thousands of documents the sort takes long enough
/// to stall other tasks on the runtime.
const BLOCKING_COLLAPSE: usize = 10_000;

/// The read models of every projection. Cheap to clone; clones share one
/// connection pool.
#[derive(Clone)]
pub struct ReadStore {
    backend: Backend,
    /// The lease every commit of this handle is made under
    /// ([`ReadStore::fenced`]), with the database that holds it.
    fence: Option<Arc<(crate::cluster::Fence, crate::cluster::ClusterDb)>>,
}

/// One stored document of a generation, as [`ReadStore::documents`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// Its collection.
    pub collection: String,
    /// Its key within the collection.
    pub key: String,
    /// Its bytes.
    pub doc: Vec<u8>,
}

impl From<(Uuid, String, String, Vec<u8>)> for Document {
    /// A row as both backends select it: workspace, collection, key, doc.
    fn from((workspace, collection, key, doc): (Uuid, String, String, Vec<u8>)) -> Document {
        Document { workspace: WorkspaceId(workspace), collection, key, doc }
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteReadStore),
    Postgres(postgres::PostgresReadStore),
}

impl ReadStore {
    /// Opens the read store that goes with the event log at `url` (the very
    /// url the log was opened with), creating it if missing, bringing its
    /// schema up to date and deleting the documents of generations whose
    /// drop was interrupted.
    pub async fn open(url: &str) -> Result<ReadStore, StoreError> {
        let kind = BackendKind::of_url(url).ok_or_else(|| {
            StoreError::Database(format!("database url: expected sqlite://PATH or postgres://…, found {url:?}"))
        })?;
        let backend = match kind {
            BackendKind::Sqlite => Backend::Sqlite(sqlite::SqliteReadStore::open(&sqlite_url(url)?).await?),
            BackendKind::Postgres => Backend::Postgres(postgres::PostgresReadStore::open(url).await?),
        };
        let store = ReadStore { backend, fence: None };
        if let Err(err) = store.sweep().await {
            store.close().await;
            return Err(err);
        }
        Ok(store)
    }

    /// The read store on a PostgreSQL read replica at `url`, for reads
    /// only: the projections write to the primary's, and the replica shows
    /// what the primary committed as far as replication has brought it.
    pub async fn open_replica(url: &str) -> Result<ReadStore, StoreError> {
        match BackendKind::of_url(url) {
            Some(BackendKind::Postgres) => Ok(ReadStore {
                backend: Backend::Postgres(postgres::PostgresReadStore::open_replica(url).await?),
                fence: None,
            }),
            _ => Err(StoreError::Database(format!(
                "read replica url: expected postgres://… (a replica of the PostgreSQL database), found {url:?}"
            ))),
        }
    }

    /// This store, with every commit made under `fence` (a lease in `log`'s
    /// database): a commit is refused with [`StoreError::LeaseLost`] once the
    /// node no longer holds the lease. The check comes just before the
    /// commit; the commit's own checkpoint check is what makes a write that
    /// slips in between harmless (the next holder's commit is then refused
    /// and it reads on from the checkpoint written).
    pub fn fenced(&self, fence: crate::cluster::Fence, log: &crate::EventLog) -> ReadStore {
        ReadStore { backend: self.backend.clone(), fence: Some(Arc::new((fence, log.cluster_db()))) }
    }

    /// Closes the connections. Calls made afterwards fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(store) => store.close().await,
            Backend::Postgres(store) => store.close().await,
        }
    }

    /// Every document of `generation`, ordered by workspace, collection and
    /// key (as bytes), for tests and tools that compare two generations. It
    /// reads the whole generation into memory.
    pub async fn documents(&self, generation: u64) -> Result<Vec<Document>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.documents(generation).await,
            Backend::Postgres(store) => store.documents(generation).await,
        }
    }

    /// How many documents `collection` holds in `generation` (e.g. the
    /// profiles of a build).
    pub async fn count(&self, generation: u64, collection: &str) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.count(generation, collection).await,
            Backend::Postgres(store) => store.count(generation, collection).await,
        }
    }

    /// Deletes the documents of every dropped generation.
    async fn sweep(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.sweep().await,
            Backend::Postgres(store) => store.sweep().await,
        }
    }

    /// Runs a sweep after a drop has committed. The drop already took effect,
    /// so a failure is only logged; the next drop, promotion or open retries.
    async fn sweep_after_drop(&self) {
        if let Err(err) = self.sweep().await {
            tracing::warn!(cause = %err, "deleting dropped generations' documents failed; the next sweep retries");
        }
    }
}

#[async_trait]
impl ProjectionStore for ReadStore {
    async fn live(&self, projection: &str) -> Result<Option<Generation>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.live(projection).await,
            Backend::Postgres(store) => store.live(projection).await,
        }
    }

    async fn generations(&self, projection: &str) -> Result<Vec<Generation>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.generations(projection).await,
            Backend::Postgres(store) => store.generations(projection).await,
        }
    }

    async fn create_generation(&self, projection: &str, version: u32) -> Result<Generation, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.create_generation(projection, version).await,
            Backend::Postgres(store) => store.create_generation(projection, version).await,
        }
    }

    async fn commit(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        writes: Vec<DocWrite>,
    ) -> Result<(), ProjectionError> {
        self.commit_clearing(generation, expected, checkpoint, None, writes).await
    }

    fn start_commit(
        self: Arc<Self>,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        writes: Vec<DocWrite>,
    ) -> Landing {
        // A task of its own: the statements go on while the caller folds.
        let task = tokio::spawn(async move { self.commit(generation, expected, checkpoint, writes).await });
        Box::pin(async move {
            task.await.map_err(|err| StoreError::Database(format!("committing a projection's page: {err}")))?
        })
    }

    async fn replace_workspace(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        workspace: WorkspaceId,
        writes: Vec<DocWrite>,
    ) -> Result<(), ProjectionError> {
        let clear = Clear { workspace: workspace.0, adopt: None };
        self.commit_clearing(generation, expected, checkpoint, Some(clear), writes).await
    }

    async fn adopt_workspace(
        &self,
        generation: u64,
        expected: Position,
        workspace: WorkspaceId,
        from: u64,
    ) -> Result<(), ProjectionError> {
        let clear = Clear { workspace: workspace.0, adopt: Some(from) };
        self.commit_clearing(generation, expected, expected, Some(clear), Vec::new()).await?;
        self.sweep_after_drop().await;
        Ok(())
    }

    async fn promote(&self, generation: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.promote(generation).await?,
            Backend::Postgres(store) => store.promote(generation).await?,
        }
        self.sweep_after_drop().await;
        Ok(())
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.drop_generation(generation).await?,
            Backend::Postgres(store) => store.drop_generation(generation).await?,
        }
        self.sweep_after_drop().await;
        Ok(())
    }

    async fn scan(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.scan(generation, workspace, collection, after, limit).await,
            Backend::Postgres(store) => store.scan(generation, workspace, collection, after, limit).await,
        }
    }

    async fn get(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.get(generation, workspace, collection, keys).await,
            Backend::Postgres(store) => store.get(generation, workspace, collection, keys).await,
        }
    }
}

impl ReadStore {
    /// One commit, first removing every document of `clear` when given.
    async fn commit_clearing(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        clear: Option<Clear>,
        writes: Vec<DocWrite>,
    ) -> Result<(), ProjectionError> {
        if let Some(fenced) = &self.fence {
            let (fence, db) = fenced.as_ref();
            if !db.held(fence).await? {
                return Err(StoreError::LeaseLost(fence.lease.clone()).into());
            }
        }
        let writes = if writes.len() > BLOCKING_COLLAPSE {
            tokio::task::spawn_blocking(move || Collapsed::from(writes))
                .await
                .map_err(|err| StoreError::Database(format!("sorting a commit's writes: {err}")))?
        } else {
            Collapsed::from(writes)
        };
        match &self.backend {
            Backend::Sqlite(store) => store.commit(generation, expected, checkpoint, clear, writes).await,
            Backend::Postgres(store) => store.commit(generation, expected, checkpoint, clear, writes).await,
        }
    }
}

/// The url of the SQLite read store that goes with the log at `log_url`: the
/// log's file name with `.projections` before its extension
/// (`data/onepd.db` → `data/onepd.projections.db`), query parameters kept.
fn sqlite_url(log_url: &str) -> Result<String, StoreError> {
    let (path, query) = match log_url.find('?') {
        Some(at) => log_url.split_at(at),
        None => (log_url, ""),
    };
    let file_start = path.rfind('/').map_or_else(|| path.find(':').map_or(0, |colon| colon + 1), |slash| slash + 1);
    let file = &path[file_start..];
    if file.is_empty() || file.starts_with(":memory") {
        return Err(StoreError::Database(format!(
            "database url: expected a SQLite file beside which the read store can live, found {log_url:?}"
        )));
    }
    let derived = match file.rfind('.') {
        Some(dot) if dot > 0 => format!("{}.projections{}", &file[..dot], &file[dot..]),
        _ => format!("{file}.projections"),
    };
    Ok(format!("{}{derived}{query}", &path[..file_start]))
}

/// A commit's writes reduced to the last one per document, in the order of
/// the documents' primary key: (workspace, collection, key) as bytes. Once
/// reduced, no two writes touch one document, so deletes and puts can run as
/// two bulk statements in either order; in key order, the rows of a new
/// generation go into the b-tree at its end.
///
/// The writes stay where the caller put them and only their positions are
/// sorted: the backends borrow documents, or move them out, while they send
/// the statements, rather than having them copied into a sorted list first.
pub(crate) struct Collapsed {
    writes: Vec<DocWrite>,
    /// Where the puts that count are in `writes`, in key order.
    puts: Vec<usize>,
    /// Where the deletes that count are in `writes`, in key order.
    deletes: Vec<usize>,
}

/// A document to store, moved out of its write.
pub(crate) struct PutRow {
    pub(crate) workspace: Uuid,
    pub(crate) collection: &'static str,
    pub(crate) key: String,
    pub(crate) doc: Vec<u8>,
}

impl Collapsed {
    /// How many documents to store.
    pub(crate) fn put_count(&self) -> usize {
        self.puts.len()
    }

    /// The documents to store: workspace, collection, key, bytes.
    pub(crate) fn puts(&self) -> impl Iterator<Item = (&Uuid, &'static str, &str, &[u8])> {
        self.puts.iter().filter_map(|&at| match &self.writes[at] {
            DocWrite::Put { workspace, collection, key, doc } => {
                Some((&workspace.0, *collection, key.as_str(), doc.as_slice()))
            }
            DocWrite::Delete { .. } => None,
        })
    }

    /// The documents to remove: workspace, collection, key.
    pub(crate) fn deletes(&self) -> impl Iterator<Item = (&Uuid, &'static str, &str)> {
        self.deletes.iter().map(|&at| target(&self.writes[at]))
    }

    /// The documents to store, each moved out of its write when it is reached.
    pub(crate) fn into_puts(self) -> impl Iterator<Item = PutRow> {
        let Collapsed { mut writes, puts, .. } = self;
        puts.into_iter().filter_map(move |at| match &mut writes[at] {
            DocWrite::Put { workspace, collection, key, doc } => {
                Some(PutRow { workspace: workspace.0, collection, key: std::mem::take(key), doc: std::mem::take(doc) })
            }
            DocWrite::Delete { .. } => None,
        })
    }
}

impl From<Vec<DocWrite>> for Collapsed {
    fn from(writes: Vec<DocWrite>) -> Collapsed {
        // Sorting small entries rather than the writes keeps the sort in
        // cache: two keys that differ in their first 16 bytes, the usual
        // case, are ordered without reading the keys themselves.
        let mut entries: Vec<SortEntry> = writes.iter().enumerate().map(SortEntry::new).collect();
        entries.sort_unstable_by(|a, b| a.document_cmp(b, &writes).then(a.index.cmp(&b.index)));
        let mut puts = Vec::with_capacity(entries.len());
        let mut deletes = Vec::new();
        for (at, entry) in entries.iter().enumerate() {
            // Writes to one document sit together in the order given; the
            // last of them is the one that counts.
            if entries.get(at + 1).is_some_and(|next| entry.document_cmp(next, &writes).is_eq()) {
                continue;
            }
            match writes[entry.index] {
                DocWrite::Put { .. } => puts.push(entry.index),
                DocWrite::Delete { .. } => deletes.push(entry.index),
            }
        }
        Collapsed { writes, puts, deletes }
    }
}

/// One write's place in the sort of [`Collapsed::from`].
struct SortEntry {
    /// The workspace as a number; its order is the UUID's byte order.
    workspace: u128,
    collection: &'static str,
    /// The key's first 16 bytes, zero-padded: when two differ, so do the
    /// keys, in the same order.
    prefix: u128,
    /// The write's place in the commit.
    index: usize,
}

impl SortEntry {
    fn new((index, write): (usize, &DocWrite)) -> SortEntry {
        let (workspace, collection, key) = target(write);
        let mut prefix = [0; 16];
        let len = key.len().min(16);
        prefix[..len].copy_from_slice(&key.as_bytes()[..len]);
        SortEntry { workspace: workspace.as_u128(), collection, prefix: u128::from_be_bytes(prefix), index }
    }

    /// The order of the two entries' documents, by (workspace, collection,
    /// key) as bytes.
    fn document_cmp(&self, other: &SortEntry, writes: &[DocWrite]) -> Ordering {
        self.workspace
            .cmp(&other.workspace)
            .then_with(|| {
                if std::ptr::eq(self.collection, other.collection) {
                    Ordering::Equal
                } else {
                    self.collection.cmp(other.collection)
                }
            })
            .then_with(|| self.prefix.cmp(&other.prefix))
            .then_with(|| target(&writes[self.index]).2.cmp(target(&writes[other.index]).2))
    }
}

/// The document a write touches.
fn target(write: &DocWrite) -> (&Uuid, &'static str, &str) {
    match write {
        DocWrite::Put { workspace, collection, key, .. } | DocWrite::Delete { workspace, collection, key } => {
            (&workspace.0, collection, key)
        }
    }
}

/// A generation from its stored columns.
fn generation_from(id: i64, projection: String, version: i64, checkpoint: i64, live: bool) -> Generation {
    Generation { id: id as u64, projection, version: version as u32, checkpoint: Position(checkpoint as u64), live }
}

/// The refusal of a commit that found `found` (`None`: no such generation).
fn fenced(generation: u64, expected: Position, found: Option<i64>) -> ProjectionError {
    ProjectionError::Fenced { generation, expected, found: Position(found.unwrap_or(0) as u64) }
}

/// A commit that first removes a workspace's documents, and takes the ones
/// it has in another generation (`adopt`, dropped with it) in their place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clear {
    workspace: Uuid,
    adopt: Option<u64>,
}

/// The error for an operation on a generation that does not exist.
fn no_generation(doing: &str, generation: u64) -> StoreError {
    StoreError::Database(format!("{doing}: expected generation {generation} to exist, found none"))
}

/// Microseconds since the Unix epoch, as stored in `created_at`.
fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use onepd_domain::{DocWrite, WorkspaceId};
    use uuid::Uuid;

    use super::{Collapsed, sqlite_url};

    #[test]
    fn the_sqlite_read_store_is_a_file_beside_the_log() {
        assert_eq!(sqlite_url("sqlite://data/onepd.db").unwrap(), "sqlite://data/onepd.projections.db");
        assert_eq!(
            sqlite_url("sqlite:///var/lib/onepd.db?mode=rwc").unwrap(),
            "sqlite:///var/lib/onepd.projections.db?mode=rwc"
        );
        assert_eq!(sqlite_url("sqlite:onepd.db").unwrap(), "sqlite:onepd.projections.db");
        assert_eq!(sqlite_url("sqlite://data/onepd").unwrap(), "sqlite://data/onepd.projections");
        assert!(sqlite_url("sqlite::memory:").is_err());
        assert!(sqlite_url("sqlite://data/").is_err());
    }

    #[test]
    fn only_the_last_write_to_a_document_survives_collapsing() {
        let ws = WorkspaceId(Uuid::from_u128(1));
        let put =
            |key: &str, doc: &[u8]| DocWrite::Put { workspace: ws, collection: "c", key: key.into(), doc: doc.into() };
        let delete = |key: &str| DocWrite::Delete { workspace: ws, collection: "c", key: key.into() };
        let collapsed = Collapsed::from(vec![put("b", b"1"), delete("a"), put("a", b"2"), put("b", b"3"), delete("b")]);
        let puts: Vec<_> = collapsed.puts().map(|(_, _, key, doc)| (key, doc)).collect();
        let deletes: Vec<_> = collapsed.deletes().map(|(_, _, key)| key).collect();
        assert_eq!(puts, vec![("a", b"2".as_slice())]);
        assert_eq!(deletes, vec!["b"]);
    }

    #[test]
    fn collapsed_writes_are_in_byte_order_of_workspace_collection_and_key() {
        let put = |ws: u128, collection: &'static str, key: &str| DocWrite::Put {
            workspace: WorkspaceId(Uuid::from_u128(ws)),
            collection,
            key: key.into(),
            doc: key.as_bytes().to_vec(),
        };
        // Keys that share their first 16 bytes are told apart by the rest.
        let long = "0123456789abcdef";
        let writes = vec![
            put(2, "a", "k"),
            put(1, "b", "k"),
            put(1, "a", &format!("{long}2")),
            put(1, "a", &format!("{long}1")),
            put(1, "a", long),
            put(1, "a", "k\0"),
            put(1, "a", "k"),
            put(1, "a", &format!("{long}1")),
        ];
        let collapsed = Collapsed::from(writes);
        let order: Vec<_> =
            collapsed.into_puts().map(|row| (row.workspace.as_u128(), row.collection, row.key)).collect();
        let expected = [
            (1, "a", long.to_owned()),
            (1, "a", format!("{long}1")),
            (1, "a", format!("{long}2")),
            (1, "a", "k".to_owned()),
            (1, "a", "k\0".to_owned()),
            (1, "b", "k".to_owned()),
            (2, "a", "k".to_owned()),
        ];
        assert_eq!(order, expected);
    }
}
