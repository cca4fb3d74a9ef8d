//! The read store on PostgreSQL: the event log's database, schema
//! [`POSTGRES_SCHEMA`], which every pooled connection has as its
//! `search_path`.
//!
//! A commit locks its generation's row (`SELECT … FOR UPDATE`) before
//! checking the checkpoint, so of two writers expecting the same checkpoint
//! one commits and the other is fenced, whichever process they run in.
//! Into a generation with no documents yet (a rebuild's first commit) they
//! go with one binary `COPY`, the fastest way PostgreSQL takes rows; nothing
//! can conflict there. Otherwise they travel as arrays, one per column,
//! unpacked with `UNNEST`: one statement per chunk whatever its row count, so
//! every chunk reuses one prepared statement. A commit of many documents is
//! followed by an `ANALYZE`, since the planner's idea of the table is what
//! the joins of later commits are planned from.

use std::collections::HashMap;
use std::time::Duration;

use onepd_domain::{Generation, Position, ProjectionError, StoreError, WorkspaceId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{Clear, Collapsed, Document, POSTGRES_SCHEMA, fenced, generation_from, no_generation, now_micros};
use crate::store::backend::db_error;

/// Documents per statement: bounds the size of one message to the server.
const CHUNK: usize = 50_000;
/// Commits writing at least this many documents refresh the planner's
/// statistics afterwards, in the background.
const ANALYZE_AFTER: usize = 10_000;

const GENERATION_COLUMNS: &str = "SELECT id, projection, version, checkpoint, live FROM projection_generations";

const PUT_SQL: &str = "INSERT INTO projection_docs (generation, workspace, collection, key, doc) \
                       SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bytea[]) \
                       ON CONFLICT (generation, workspace, collection, key) DO UPDATE SET doc = EXCLUDED.doc";

const DELETE_SQL: &str = "DELETE FROM projection_docs AS doc \
                          USING UNNEST($2::uuid[], $3::text[], $4::text[]) AS gone (workspace, collection, key) \
                          WHERE doc.generation = $1 AND doc.workspace = gone.workspace \
                          AND doc.collection = gone.collection AND doc.key = gone.key";

// One index descent per key, whatever the statistics say: with `key =
// ANY($4)`, a planner that has not yet analyzed a freshly copied generation
// reads all of a workspace's collection and filters it (a second for 1,000
// keys against half a million documents, instead of milliseconds). `LIMIT 1`
// keeps the lateral subquery from being turned into a hash join.
const GET_SQL: &str = "SELECT wanted.key, found.doc FROM UNNEST($4::text[]) AS wanted (key) \
                       CROSS JOIN LATERAL (SELECT doc FROM projection_docs WHERE generation = $1 \
                       AND workspace = $2 AND collection = $3 AND key = wanted.key LIMIT 1) AS found";

/// The read store in a PostgreSQL schema.
#[derive(Clone)]
pub(crate) struct PostgresReadStore {
    pool: PgPool,
}

impl PostgresReadStore {
    /// Connects to the database at `url`, creates the schema if missing and
    /// brings its tables up to date.
    pub(crate) async fn open(url: &str) -> Result<PostgresReadStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(db_error("parsing the PostgreSQL database url"))?;
        let options = options.disable_statement_logging();
        // One direct connection first: it fails fast when nothing listens,
        // where a pool would retry until its acquire timeout.
        let mut conn = options.connect().await.map_err(db_error("connecting to PostgreSQL"))?;
        let created = create_schema(&mut conn).await;
        let _ = conn.close().await;
        created?;
        let options = options.options([
            ("search_path", POSTGRES_SCHEMA),
            // A commit lost to a crash is replayed from the log; waiting for
            // every WAL flush would buy nothing.
            ("synchronous_commit", "off"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(db_error("connecting to PostgreSQL"))?;
        sqlx::migrate!("./migrations/readstore/postgres")
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrating the PostgreSQL read store: {err}")))?;
        Ok(PostgresReadStore { pool })
    }

    /// Connects to a read replica of the database at `url`: reads only,
    /// nothing created or migrated (the primary does that, and the replica
    /// follows it).
    pub(crate) async fn open_replica(url: &str) -> Result<PostgresReadStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(db_error("parsing the PostgreSQL read replica url"))?;
        let options = options
            .disable_statement_logging()
            .options([("search_path", POSTGRES_SCHEMA), ("default_transaction_read_only", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(db_error("connecting to the PostgreSQL read replica"))?;
        Ok(PostgresReadStore { pool })
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn live(&self, projection: &str) -> Result<Option<Generation>, StoreError> {
        let sql = format!("{GENERATION_COLUMNS} WHERE projection = $1 AND live");
        let row: Option<(i64, String, i32, i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(projection)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading the live generation"))?;
        Ok(row.map(|(id, projection, version, checkpoint, live)| {
            generation_from(id, projection, version.into(), checkpoint, live)
        }))
    }

    pub(crate) async fn generations(&self, projection: &str) -> Result<Vec<Generation>, StoreError> {
        let sql = format!("{GENERATION_COLUMNS} WHERE projection = $1 ORDER BY id");
        let rows: Vec<(i64, String, i32, i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(projection)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading generations"))?;
        Ok(rows
            .into_iter()
            .map(|(id, projection, version, checkpoint, live)| {
                generation_from(id, projection, version.into(), checkpoint, live)
            })
            .collect())
    }

    pub(crate) async fn create_generation(&self, projection: &str, version: u32) -> Result<Generation, StoreError> {
        let stored = i32::try_from(version).map_err(|_| {
            StoreError::Database(format!(
                "creating a generation: expected a version up to {}, found {version}",
                i32::MAX
            ))
        })?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projection_generations (projection, version, checkpoint, live, created_at) \
             VALUES ($1, $2, 0, false, $3) RETURNING id",
        )
        .bind(projection)
        .bind(stored)
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
        let mut tx = self.pool.begin().await.map_err(db_error("starting a projection commit"))?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT checkpoint FROM projection_generations WHERE id = $1 FOR UPDATE")
                .bind(generation as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error("locking a generation"))?;
        if found != Some(expected.0 as i64) {
            return Err(fenced(generation, expected, found));
        }
        if let Some(clear) = clear {
            sqlx::query("DELETE FROM projection_docs WHERE generation = $1 AND workspace = $2")
                .bind(generation as i64)
                .bind(clear.workspace)
                .execute(&mut *tx)
                .await
                .map_err(db_error("removing a workspace's documents"))?;
            if let Some(from) = clear.adopt {
                let dropped = sqlx::query("DELETE FROM projection_generations WHERE id = $1")
                    .bind(from as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("dropping an adopted generation"))?
                    .rows_affected();
                if dropped == 0 {
                    return Err(fenced(from, expected, None));
                }
                sqlx::query("UPDATE projection_docs SET generation = $1 WHERE generation = $2 AND workspace = $3")
                    .bind(generation as i64)
                    .bind(from as i64)
                    .bind(clear.workspace)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("adopting a workspace's documents"))?;
                sqlx::query("INSERT INTO projection_dropped (generation) VALUES ($1)")
                    .bind(from as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("marking an adopted generation dropped"))?;
            }
        }
        let deletes: Vec<_> = writes.deletes().collect();
        for chunk in deletes.chunks(CHUNK) {
            delete_docs(&mut tx, generation, chunk).await.map_err(db_error("deleting documents"))?;
        }
        if writes.put_count() > 0 && is_empty(&mut tx, generation).await? {
            copy_docs(&mut tx, generation, writes.puts()).await.map_err(db_error("copying documents"))?;
        } else {
            let puts: Vec<_> = writes.puts().collect();
            for chunk in puts.chunks(CHUNK) {
                upsert_docs(&mut tx, generation, chunk).await.map_err(db_error("storing documents"))?;
            }
        }
        sqlx::query("UPDATE projection_generations SET checkpoint = $1 WHERE id = $2")
            .bind(checkpoint.0 as i64)
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("moving a generation's checkpoint"))?;
        tx.commit().await.map_err(db_error("committing documents"))?;
        if deletes.len() + writes.put_count() >= ANALYZE_AFTER {
            tokio::spawn(analyze(self.pool.clone()));
        }
        Ok(())
    }

    pub(crate) async fn promote(&self, generation: u64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a promotion"))?;
        let projection: Option<String> =
            sqlx::query_scalar("SELECT projection FROM projection_generations WHERE id = $1")
                .bind(generation as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error("reading the generation to promote"))?;
        let projection = projection.ok_or_else(|| no_generation("promoting a generation", generation))?;
        // Every generation of the projection, locked in id order: two
        // promotions at once then wait for each other instead of deadlocking,
        // and a commit in flight finishes before its generation is dropped.
        let locked: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM projection_generations WHERE projection = $1 ORDER BY id FOR UPDATE")
                .bind(&projection)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error("locking a projection's generations"))?;
        if !locked.contains(&(generation as i64)) {
            return Err(no_generation("promoting a generation", generation));
        }
        // The old live generation goes first, so the one-live index never
        // sees two.
        sqlx::query(
            "WITH replaced AS (DELETE FROM projection_generations WHERE projection = $1 AND id <> $2 RETURNING id) \
             INSERT INTO projection_dropped (generation) SELECT id FROM replaced",
        )
        .bind(&projection)
        .bind(generation as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error("dropping replaced generations"))?;
        sqlx::query("UPDATE projection_generations SET live = true WHERE id = $1")
            .bind(generation as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("marking the generation live"))?;
        tx.commit().await.map_err(db_error("committing a promotion"))
    }

    pub(crate) async fn drop_generation(&self, generation: u64) -> Result<(), StoreError> {
        sqlx::query(
            "WITH dropped AS (DELETE FROM projection_generations WHERE id = $1 RETURNING id) \
             INSERT INTO projection_dropped (generation) SELECT id FROM dropped",
        )
        .bind(generation as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error("dropping a generation"))?;
        Ok(())
    }

    /// Deletes the documents of every dropped generation, one generation per
    /// transaction.
    pub(crate) async fn sweep(&self) -> Result<(), StoreError> {
        let dropped: Vec<i64> = sqlx::query_scalar("SELECT generation FROM projection_dropped ORDER BY generation")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading dropped generations"))?;
        for generation in dropped {
            let mut tx: Transaction<'_, Postgres> = self.pool.begin().await.map_err(db_error("starting a sweep"))?;
            let docs = sqlx::query("DELETE FROM projection_docs WHERE generation = $1")
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db_error("deleting a dropped generation's documents"))?
                .rows_affected();
            sqlx::query("DELETE FROM projection_dropped WHERE generation = $1")
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db_error("forgetting a dropped generation"))?;
            tx.commit().await.map_err(db_error("committing a sweep"))?;
            tracing::debug!(generation, docs, "dropped generation's documents deleted");
        }
        Ok(())
    }

    pub(crate) async fn count(&self, generation: u64, collection: &str) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM projection_docs WHERE generation = $1 AND collection = $2")
                .bind(generation as i64)
                .bind(collection)
                .fetch_one(&self.pool)
                .await
                .map_err(db_error("counting documents"))?;
        Ok(count as u64)
    }

    pub(crate) async fn documents(&self, generation: u64) -> Result<Vec<Document>, StoreError> {
        let rows: Vec<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT workspace, collection, key, doc FROM projection_docs WHERE generation = $1 \
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
            "SELECT key, doc FROM projection_docs WHERE generation = $1 AND workspace = $2 AND collection = $3 \
             AND key > $4 ORDER BY key LIMIT $5",
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
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(GET_SQL)
            .bind(generation as i64)
            .bind(workspace.0)
            .bind(collection)
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading documents"))?;
        let found: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }
}

/// Refreshes the planner's statistics of the documents table, which a
/// rebuild's bulk commit leaves far from the truth until autovacuum gets to
/// it; the delete and upsert joins are planned from them.
async fn analyze(pool: PgPool) {
    if let Err(err) = sqlx::query("ANALYZE projection_docs").execute(&pool).await
        && !pool.is_closed()
    {
        tracing::warn!(cause = %err, "analyzing the read store's documents failed; autovacuum will");
    }
}

/// Whether `generation` holds no documents.
async fn is_empty(tx: &mut Transaction<'static, Postgres>, generation: u64) -> Result<bool, StoreError> {
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projection_docs WHERE generation = $1)")
        .bind(generation as i64)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_error("looking for a generation's documents"))?;
    Ok(!any)
}

/// Stores `rows`, replacing documents already there.
async fn upsert_docs(
    tx: &mut Transaction<'static, Postgres>,
    generation: u64,
    rows: &[(&Uuid, &'static str, &str, &[u8])],
) -> Result<(), sqlx::Error> {
    sqlx::query(PUT_SQL)
        .bind(generation as i64)
        .bind(rows.iter().map(|row| *row.0).collect::<Vec<Uuid>>())
        .bind(rows.iter().map(|row| row.1).collect::<Vec<&str>>())
        .bind(rows.iter().map(|row| row.2).collect::<Vec<&str>>())
        .bind(rows.iter().map(|row| row.3).collect::<Vec<&[u8]>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes the documents of `rows`.
async fn delete_docs(
    tx: &mut Transaction<'static, Postgres>,
    generation: u64,
    rows: &[(&Uuid, &'static str, &str)],
) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_SQL)
        .bind(generation as i64)
        .bind(rows.iter().map(|row| *row.0).collect::<Vec<Uuid>>())
        .bind(rows.iter().map(|row| row.1).collect::<Vec<&str>>())
        .bind(rows.iter().map(|row| row.2).collect::<Vec<&str>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The binary COPY file header: signature, flags (none), header extension
/// length (none).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY file trailer.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];
/// Bytes per message of a COPY: large enough to keep the connection busy,
/// small enough that a rebuild's documents are not copied into one buffer.
const COPY_BUFFER: usize = 4 << 20;

/// Stores `rows` in a generation that holds no documents yet, with one
/// `COPY … FROM STDIN (FORMAT binary)`: a rebuild's first commit, and the
/// fastest way PostgreSQL takes rows. No row can conflict: the generation is
/// empty and the rows are distinct.
async fn copy_docs(
    tx: &mut Transaction<'static, Postgres>,
    generation: u64,
    rows: impl Iterator<Item = (&Uuid, &'static str, &str, &[u8])>,
) -> Result<(), sqlx::Error> {
    let mut copy = tx
        .copy_in_raw("COPY projection_docs (generation, workspace, collection, key, doc) FROM STDIN (FORMAT binary)")
        .await?;
    let mut buffer = Vec::with_capacity(COPY_BUFFER + 64 * 1024);
    buffer.extend_from_slice(COPY_HEADER);
    for (workspace, collection, key, doc) in rows {
        buffer.extend_from_slice(&5i16.to_be_bytes());
        field(&mut buffer, &(generation as i64).to_be_bytes());
        field(&mut buffer, workspace.as_bytes());
        field(&mut buffer, collection.as_bytes());
        field(&mut buffer, key.as_bytes());
        field(&mut buffer, doc);
        if buffer.len() >= COPY_BUFFER {
            copy.send(std::mem::replace(&mut buffer, Vec::with_capacity(COPY_BUFFER + 64 * 1024))).await?;
        }
    }
    buffer.extend_from_slice(COPY_TRAILER);
    copy.send(buffer).await?;
    copy.finish().await?;
    Ok(())
}

/// One field of a binary COPY tuple: its length, then its bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Creates the read store's schema unless it exists. Two processes opening
/// at once may both try; the loser's error is fine once the schema exists.
async fn create_schema(conn: &mut PgConnection) -> Result<(), StoreError> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}");
    let Err(err) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await else {
        return Ok(());
    };
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(POSTGRES_SCHEMA)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error("looking for the read store schema"))?;
    if exists { Ok(()) } else { Err(db_error("creating the read store schema")(err)) }
}
