//! The read store on SQLite: one file of its own beside the event log's, in
//! WAL mode, so readers keep reading while a commit writes.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions, which take the file's write
//! lock before reading the checkpoint, so the check and the write cannot be
//! split by another process's commit. Within this process, writers also queue
//! on a mutex first: waiting there is a wake-up, while SQLite's busy handler
//! waits by sleeping and polling.

use std::collections::HashMap;
use std::iter::Peekable;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use onepd_domain::{Generation, Position, ProjectionError, StoreError, WorkspaceId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use super::{Clear, Collapsed, Document, PutRow, fenced, generation_from, no_generation, now_micros};
use crate::store::backend::db_error;

/// Documents per INSERT: five parameters each, far under SQLite's limit of
/// 32,766 parameters per statement. Measured: larger statements are not
/// faster, and 100 rows are a third slower.
const PUT_CHUNK: usize = 1_000;
/// Documents per DELETE: three parameters each, plus the generation.
const DELETE_CHUNK: usize = 10_000;
/// Keys per SELECT of [`SqliteReadStore::get`].
const GET_CHUNK: usize = 30_000;
/// Statements with at most this many rows, or a full chunk, stay prepared on
/// their connection for reuse; others are one-offs (a commit's last, partial
/// chunk) whose compiled programs would only crowd the statement cache.
const CACHED_ROWS: usize = 64;

const GENERATION_COLUMNS: &str = "SELECT id, projection, version, checkpoint, live FROM projection_generations";

/// The read store in one SQLite file.
#[derive(Clone)]
pub(crate) struct SqliteReadStore {
    pool: SqlitePool,
    /// Held by every write in this process, for as long as the transaction.
    writer: Arc<Mutex<()>>,
    /// Copies committed pages from the WAL into the database file, off the
    /// committing caller's path.
    checkpointer: Arc<Checkpointer>,
}

/// A task that checkpoints the WAL soon after commits. SQLite's own
/// automatic checkpoint would run inside the commit that crosses its
/// threshold, so a rebuild's commit would also pay for copying every page it
/// wrote a second time.
struct Checkpointer {
    /// Signalled after every commit; a signal sent during a checkpoint is
    /// kept, so the commit it announces is checkpointed too.
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    fn start(pool: SqlitePool) -> Checkpointer {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(checkpoint_after_commits(pool, wake.clone()));
        Checkpointer { wake, task }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a statement waits for a lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the checkpointer lets commits accumulate after a wake-up.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(200);

async fn checkpoint_after_commits(pool: SqlitePool, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        tokio::time::sleep(CHECKPOINT_DELAY).await;
        if pool.is_closed() {
            return;
        }
        // PASSIVE copies what it can without waiting for readers or the
        // writer; what it leaves is copied by a later checkpoint.
        let frames = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await
        {
            Ok((_, frames, _)) => frames,
            Err(err) => {
                tracing::warn!(cause = %err, "checkpointing the read store's WAL failed; the next commit retries");
                continue;
            }
        };
        // The WAL starts over only when a write begins with every frame
        // copied and no reader left in it. Under a rebuild, a commit or a
        // read is always under way, so it would only grow: to gigabytes,
        // copied (and truncated) at the first quiet moment, which was the
        // first commit after a restart. Past the bound, RESTART holds the
        // writers back until the readers are out and the WAL starts over.
        if frames >= WAL_RESTART_FRAMES
            && let Err(err) = restart_wal(&pool).await
        {
            tracing::warn!(cause = %err, "restarting the read store's WAL failed; the next commit retries");
        }
    }
}

/// Checkpoints the whole WAL so the next write starts it over, waiting at
/// most a second for the writer and the readers (holding writers back
/// meanwhile); a WAL still busy then is tried again after a later commit.
async fn restart_wal(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    sqlx::query("PRAGMA busy_timeout = 1000").execute(&mut *connection).await?;
    let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(&mut *connection).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis())))
        .execute(&mut *connection)
        .await?;
    restarted.map(|_| ())
}

/// The WAL frames (4 KiB pages) past which the checkpointer starts the WAL
/// over: 256 MiB.
const WAL_RESTART_FRAMES: i64 = 65_536;

impl SqliteReadStore {
    /// Opens (creating if missing) the file at `url` and brings its schema up
    /// to date.
    pub(crate) async fn open(url: &str) -> Result<SqliteReadStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db_error("parsing the SQLite read store url"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL syncs at checkpoints only: a power cut may lose the last
            // commits, never tear one, and the log can always rebuild them.
            .synchronous(SqliteSynchronous::Normal)
            // The checkpointer task checkpoints instead (see [`Checkpointer`]).
            .pragma("wal_autocheckpoint", "0")
            // A rebuild's commit grows the WAL to the size of its documents;
            // this shrinks the file back once it has been checkpointed.
            .pragma("journal_size_limit", "67108864")
            .busy_timeout(BUSY_TIMEOUT)
            // Per connection: reads go by key and stream through the OS page
            // cache; a large private cache per pooled connection only
            // multiplied memory.
            .pragma("cache_size", format!("-{}", crate::store::sqlite::CACHE_KIB))
            .pragma("temp_store", "memory")
            // Applies when the file is created. A commit rewrites the
            // documents of the profiles a page of events touched, spread over
            // the whole b-tree, and each changed b-tree page goes to the WAL
            // whole: on a 1M-event rebuild committed page by page, 4 KiB pages
            // peaked about 100 MB lower than 16 KiB ones, with less time in
            // the kernel copying pages, and no slower.
            .pragma("page_size", "4096")
            .disable_statement_logging();
        crate::store::sqlite::private_file(Path::new(options.get_filename()))?;
        let pool = SqlitePoolOptions::new()
            // One writer at a time, and readers beside it.
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(db_error("opening the SQLite read store"))?;
        sqlx::migrate!("./migrations/readstore/sqlite")
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrating the SQLite read store: {err}")))?;
        let checkpointer = Arc::new(Checkpointer::start(pool.clone()));
        Ok(SqliteReadStore { pool, writer: Arc::new(Mutex::new(())), checkpointer })
    }

    pub(crate) async fn close(&self) {
        self.checkpointer.task.abort();
        // Closing the last connection checkpoints what is left.
        self.pool.close().await;
    }

    /// Starts a write transaction holding both write locks; the returned
    /// guard must outlive the transaction.
    async fn begin_write(
        &self,
        doing: &'static str,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Transaction<'static, Sqlite>), StoreError> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error(doing))?;
        Ok((guard, tx))
    }

    pub(crate) async fn live(&self, projection: &str) -> Result<Option<Generation>, StoreError> {
        let sql = format!("{GENERATION_COLUMNS} WHERE projection = ? AND live = 1");
        let row: Option<(i64, String, i64, i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(projection)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading the live generation"))?;
        Ok(row.map(|(id, projection, version, checkpoint, live)| {
            generation_from(id, projection, version, checkpoint, live)
        }))
    }

    pub(crate) async fn generations(&self, projection: &str) -> Result<Vec<Generation>, StoreError> {
        let sql = format!("{GENERATION_COLUMNS} WHERE projection = ? ORDER BY id");
        let rows: Vec<(i64, String, i64, i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(projection)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading generations"))?;
        Ok(rows
            .into_iter()
            .map(|(id, projection, version, checkpoint, live)| {
                generation_from(id, projection, version, checkpoint, live)
            })
            .collect())
    }

    pub(crate) async fn create_generation(&self, projection: &str, version: u32) -> Result<Generation, StoreError> {
        let _writer = self.writer.lock().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projection_generations (projection, version, checkpoint, live, created_at) \
             VALUES (?, ?, 0, 0, ?) RETURNING id",
        )
        .bind(projection)
        .bind(i64::from(version))
        .bind(now_micros())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("creating a generation"))?;
        Ok(Generation {
            id: id as u64,
            projection: projection.to_owned(),
            version,
            checkpoint: Position::START,
            live: false,
        })
    }

    pub(crate) async fn commit(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        clear: Option<Clear>,
        writes: Collapsed,
    ) -> Result<(), ProjectionError> {
        let (_writer, mut tx) = self.begin_write("starting a projection commit").await?;
        let found: Option<i64> = sqlx::query_scalar("SELECT checkpoint FROM projection_generations WHERE id = ?")
            .bind(generation as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("reading a generation's checkpoint"))?;
        if found != Some(expected.0 as i64) {
            return Err(fenced(generation, expected, found));
        }
        if let Some(clear) = clear {
            sqlx::query("DELETE FROM projection_docs WHERE generation = ? AND workspace = ?")
                .bind(generation as i64)
                .bind(clear.workspace)
                .execute(&mut *tx)
                .await
                .map_err(db_error("removing a workspace's documents"))?;
            if let Some(from) = clear.adopt {
                let dropped = sqlx::query("DELETE FROM projection_generations WHERE id = ?")
                    .bind(from as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("dropping an adopted generation"))?
                    .rows_affected();
                if dropped == 0 {
                    return Err(fenced(from, expected, None));
                }
                sqlx::query("UPDATE projection_docs SET generation = ? WHERE generation = ? AND workspace = ?")
                    .bind(generation as i64)
                    .bind(from as i64)
                    .bind(clear.workspace)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("adopting a workspace's documents"))?;
                sqlx::query("INSERT INTO projection_dropped (generation) VALUES (?)")
                    .bind(from as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("marking an adopted generation dropped"))?;
            }
        }
        let deletes: Vec<_> = writes.deletes().collect();
        for chunk in deletes.chunks(DELETE_CHUNK) {
            delete_docs(&mut tx, generation, chunk).await.map_err(db_error("deleting documents"))?;
        }
        drop(deletes);
        put_docs(&mut tx, generation, writes.into_puts()).await.map_err(db_error("storing documents"))?;
        sqlx::query("UPDATE projection_generations SET checkpoint = ? WHERE id = ?")
            .bind(checkpoint.0 as i64)
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("moving a generation's checkpoint"))?;
        tx.commit().await.map_err(db_error("committing documents"))?;
        self.checkpointer.wake.notify_one();
        Ok(())
    }

    pub(crate) async fn promote(&self, generation: u64) -> Result<(), StoreError> {
        let (_writer, mut tx) = self.begin_write("starting a promotion").await?;
        let projection: Option<String> =
            sqlx::query_scalar("SELECT projection FROM projection_generations WHERE id = ?")
                .bind(generation as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error("reading the generation to promote"))?;
        let projection = projection.ok_or_else(|| no_generation("promoting a generation", generation))?;
        sqlx::query(
            "INSERT INTO projection_dropped (generation) \
             SELECT id FROM projection_generations WHERE projection = ? AND id <> ?",
        )
        .bind(&projection)
        .bind(generation as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error("marking replaced generations"))?;
        // The old live generation goes first, so the one-live index never
        // sees two.
        sqlx::query("DELETE FROM projection_generations WHERE projection = ? AND id <> ?")
            .bind(&projection)
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("dropping replaced generations"))?;
        sqlx::query("UPDATE projection_generations SET live = 1 WHERE id = ?")
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("marking the generation live"))?;
        tx.commit().await.map_err(db_error("committing a promotion"))
    }

    pub(crate) async fn drop_generation(&self, generation: u64) -> Result<(), StoreError> {
        let (_writer, mut tx) = self.begin_write("starting a generation drop").await?;
        let dropped = sqlx::query("DELETE FROM projection_generations WHERE id = ?")
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("dropping a generation"))?
            .rows_affected();
        if dropped > 0 {
            sqlx::query("INSERT INTO projection_dropped (generation) VALUES (?)")
                .bind(generation as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_error("marking a dropped generation"))?;
        }
        tx.commit().await.map_err(db_error("committing a generation drop"))
    }

    /// Deletes the documents of every dropped generation, one generation per
    /// transaction.
    pub(crate) async fn sweep(&self) -> Result<(), StoreError> {
        let dropped: Vec<i64> = sqlx::query_scalar("SELECT generation FROM projection_dropped ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading dropped generations"))?;
        for generation in dropped {
            let (_writer, mut tx) = self.begin_write("starting a sweep").await?;
            let docs = sqlx::query("DELETE FROM projection_docs WHERE generation = ?")
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db_error("deleting a dropped generation's documents"))?
                .rows_affected();
            sqlx::query("DELETE FROM projection_dropped WHERE generation = ?")
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db_error("forgetting a dropped generation"))?;
            tx.commit().await.map_err(db_error("committing a sweep"))?;
            self.checkpointer.wake.notify_one();
            tracing::debug!(generation, docs, "dropped generation's documents deleted");
        }
        Ok(())
    }

    pub(crate) async fn count(&self, generation: u64, collection: &str) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM projection_docs WHERE generation = ? AND collection = ?")
                .bind(generation as i64)
                .bind(collection)
                .fetch_one(&self.pool)
                .await
                .map_err(db_error("counting documents"))?;
        Ok(count as u64)
    }

    pub(crate) async fn documents(&self, generation: u64) -> Result<Vec<Document>, StoreError> {
        let rows: Vec<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT workspace, collection, key, doc FROM projection_docs WHERE generation = ? \
             ORDER BY workspace, collection, key",
        )
        .bind(generation as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("reading a generation's documents"))?;
        Ok(rows.into_iter().map(Document::from).collect())
    }

    pub(crate) async fn scan(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        sqlx::query_as(
            "SELECT key, doc FROM projection_docs WHERE generation = ? AND workspace = ? AND collection = ? \
             AND key > ? ORDER BY key LIMIT ?",
        )
        .bind(generation as i64)
        .bind(workspace.0)
        .bind(collection)
        .bind(after.unwrap_or(""))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("scanning documents"))
    }

    pub(crate) async fn get(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(GET_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT key, doc FROM projection_docs WHERE generation = ");
            query
                .push_bind(generation as i64)
                .push(" AND workspace = ")
                .push_bind(workspace.0)
                .push(" AND collection = ")
                .push_bind(collection.to_owned())
                .push(" AND key IN (");
            let mut list = query.separated(", ");
            for key in chunk {
                list.push_bind(key.clone());
            }
            query.push(")");
            let rows: Vec<(String, Vec<u8>)> = query
                .build_query_as()
                .persistent(is_cached(chunk.len(), GET_CHUNK))
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("reading documents"))?;
            found.extend(rows);
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }
}

/// Stores `rows` with multi-row upserts of [`PUT_CHUNK`] rows each.
async fn put_docs(
    tx: &mut Transaction<'static, Sqlite>,
    generation: u64,
    rows: impl Iterator<Item = PutRow>,
) -> Result<(), sqlx::Error> {
    let mut rows = rows.peekable();
    let mut next = upsert(generation, &mut rows);
    while let Some((mut query, count)) = next.take() {
        let statement = query.build().persistent(is_cached(count, PUT_CHUNK));
        // The next chunk's arguments are built while SQLite, on the
        // connection's own thread, executes this one.
        let (executed, built) = tokio::join!(statement.execute(&mut **tx), async { upsert(generation, &mut rows) });
        executed?;
        next = built;
    }
    Ok(())
}

/// The upsert of the next [`PUT_CHUNK`] rows, or `None` when none are left.
fn upsert(generation: u64, rows: &mut Peekable<impl Iterator<Item = PutRow>>) -> Option<(QueryBuilder<Sqlite>, usize)> {
    rows.peek()?;
    let mut count = 0;
    let mut query = QueryBuilder::new("INSERT INTO projection_docs (generation, workspace, collection, key, doc) ");
    // Owned values move into the arguments; borrowed ones would be copied.
    query.push_values(rows.take(PUT_CHUNK), |mut values, row| {
        count += 1;
        values
            .push_bind(generation as i64)
            .push_bind(row.workspace)
            .push_bind(row.collection)
            .push_bind(row.key)
            .push_bind(row.doc);
    });
    query.push(" ON CONFLICT (generation, workspace, collection, key) DO UPDATE SET doc = excluded.doc");
    Some((query, count))
}

/// Whether a statement of `rows` rows, in chunks of `full`, stays prepared.
fn is_cached(rows: usize, full: usize) -> bool {
    rows == full || rows <= CACHED_ROWS
}

/// Removes the documents of `chunk` in one statement.
async fn delete_docs(
    tx: &mut Transaction<'static, Sqlite>,
    generation: u64,
    chunk: &[(&Uuid, &'static str, &str)],
) -> Result<(), sqlx::Error> {
    let mut query = QueryBuilder::<Sqlite>::new(DELETE_HEAD);
    query.push_bind(generation as i64).push(DELETE_MIDDLE);
    query.push_values(chunk, |mut values, (workspace, collection, key)| {
        values.push_bind(**workspace).push_bind(*collection).push_bind(key.to_string());
    });
    query.push(DELETE_TAIL);
    query.build().persistent(is_cached(chunk.len(), DELETE_CHUNK)).execute(&mut **tx).await?;
    Ok(())
}

// `(…) IN (VALUES …)` would make SQLite search by generation only, reading
// the whole generation once per statement; selecting from the VALUES lets it
// look each document up by its full key (a test below checks the plan).
const DELETE_HEAD: &str = "DELETE FROM projection_docs WHERE generation = ";
const DELETE_MIDDLE: &str = " AND (workspace, collection, key) IN (SELECT column1, column2, column3 FROM (";
const DELETE_TAIL: &str = "))";

#[cfg(test)]
mod tests {
    use super::{DELETE_HEAD, DELETE_MIDDLE, DELETE_TAIL};

    #[tokio::test]
    async fn deleting_documents_looks_each_up_by_its_full_key() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::migrate!("./migrations/readstore/sqlite").run(&pool).await.unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN {DELETE_HEAD}1{DELETE_MIDDLE}VALUES (x'00', 'c', 'k'), (x'01', 'c', 'k'){DELETE_TAIL}"
        );
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap();
        let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
        assert!(
            steps
                .iter()
                .any(|step| step.contains("PRIMARY KEY (generation=? AND workspace=? AND collection=? AND key=?)")),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|step| step.starts_with("SCAN projection_docs")), "{steps:?}");
    }
}
