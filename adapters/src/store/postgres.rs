//! The PostgreSQL backend, for production and for several onepd processes
//! sharing one database.
//!
//! Every append transaction locks the one-row `log_head` (`SELECT … FOR
//! UPDATE`), which serializes appenders across processes, so positions are
//! assigned in commit order and a reader never sees a position appear below
//! one it has already seen. Each commit sends `NOTIFY onepd_events`, which
//! wakes subscribers in every process.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::{EventFilter, StoreError};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Postgres, QueryBuilder, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::backend::{
    AppendTx, Backend, FINGERPRINTS_MARK_QUERY, Head, INSERT_CHUNK, KeyRow, NewKeyRow, RowChunk, StoredRow, db_error,
    head_from, id_from, key_from, row_from, wrapped_from,
};

const ROW_COLUMNS: &str = "position, event_id, workspace_id, stream_id, stream_version, event_type, \
                           schema_version, recorded_at, key_id, data, metadata, hash";

/// The channel commits are announced on.
const CHANNEL: &str = "onepd_events";

/// The PostgreSQL backend.
pub(crate) struct PostgresBackend {
    pool: PgPool,
    listener: tokio::task::JoinHandle<()>,
}

/// How long a query waits for a connection before the database counts as
/// unavailable (callers get 503 / `UNAVAILABLE` with a `Retry-After`).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects a pool to `url`.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(db_error("parsing the PostgreSQL database url"))?;
    // The log is read by position ranges, in order, a page at a time. Right
    // after a bulk load, before statistics catch up, the planner chose a
    // bitmap scan of the whole remaining range plus a sort for every page
    // (measured: a rebuild four times slower than reading the log). An
    // ordered index scan is always the right plan for these queries.
    let options = options.disable_statement_logging().options([("enable_bitmapscan", "off")]);
    // One direct attempt first: a pool retries until its acquire timeout,
    // which turns "nothing listens there" into a long silent wait.
    let probe = options.connect().await.map_err(db_error("connecting to PostgreSQL"))?;
    let _ = probe.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A caller learns of an outage in seconds, not after the whole of it.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db_error("connecting to PostgreSQL"))
}

impl PostgresBackend {
    /// Connects, brings the schema up to date and starts listening for
    /// commits of other processes, reporting their positions to `wake`.
    pub(crate) async fn open(url: &str, wake: watch::Sender<u64>) -> Result<PostgresBackend, StoreError> {
        let pool = connect_pool(url, 8).await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrating the PostgreSQL database: {err}")))?;
        let listener = tokio::spawn(listen(pool.clone(), wake));
        Ok(PostgresBackend { pool, listener })
    }
}

/// Forwards commit notifications to `wake` until the pool closes. A lost
/// connection is retried; subscribers poll in the meantime.
async fn listen(pool: PgPool, wake: watch::Sender<u64>) {
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(cause = %err, "commit listener cannot connect; subscribers fall back to polling");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(cause = %err, "commit listener cannot listen; subscribers fall back to polling");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(notification) => {
                    if let Ok(position) = notification.payload().parse::<u64>() {
                        wake.send_if_modified(|seen| {
                            let newer = position > *seen;
                            *seen = (*seen).max(position);
                            newer
                        });
                    }
                }
                Err(err) => {
                    if !pool.is_closed() {
                        tracing::warn!(cause = %err, "commit listener lost its connection; reconnecting");
                    }
                    break;
                }
            }
        }
    }
}

/// The statement that copies rows into `table`.
/// Fingerprint rows per `INSERT … SELECT FROM UNNEST`.
const FINGERPRINT_CHUNK: usize = 100_000;

fn copy_statement(table: &str) -> String {
    format!("COPY {table} ({ROW_COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// The binary COPY file header: signature, flags (none), header extension length (none).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY file trailer.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// Copies `rows` into `table` with one `COPY … FROM STDIN (FORMAT binary)`,
/// the fastest way PostgreSQL takes rows.
pub async fn copy_rows(conn: &mut sqlx::PgConnection, table: &str, rows: &[StoredRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // One buffer, one send: separate small writes would meet TCP's delayed
    // acknowledgement and stall ~40 ms.
    let mut buffer = Vec::with_capacity(copy_size(rows) + COPY_HEADER.len() + COPY_TRAILER.len());
    buffer.extend_from_slice(COPY_HEADER);
    binary_copy(rows, &mut buffer);
    buffer.extend_from_slice(COPY_TRAILER);
    let mut copy = conn.copy_in_raw(&copy_statement(table)).await?;
    copy.send(buffer).await?;
    copy.finish().await?;
    Ok(())
}

/// Inserts rows into `table` with one plain `INSERT … SELECT FROM UNNEST(…)`
/// per chunk (a dozen array parameters instead of a dozen per row): the raw
/// limit the benchmark compares the event log with.
pub async fn insert_rows(conn: &mut sqlx::PgConnection, table: &str, rows: &[StoredRow]) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {table} ({ROW_COLUMNS}) SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], \
         $4::text[], $5::bigint[], $6::text[], $7::int[], $8::bigint[], $9::uuid[], $10::bytea[], $11::bytea[], $12::bytea[])"
    );
    for chunk in rows.chunks(INSERT_CHUNK) {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(chunk.iter().map(|r| r.position as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.event_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.workspace_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.stream_id.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.stream_version as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.event_type.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.schema_version as i32).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.key_id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.data.as_slice()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.metadata.as_slice()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.hash.as_slice()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn copy_size(rows: &[StoredRow]) -> usize {
    rows.iter().map(|r| r.data.len() + r.metadata.len() + r.stream_id.len() + r.event_type.len() + 170).sum()
}

/// Rows in PostgreSQL's binary COPY format (the tuples only; the caller sends
/// the file header before and the trailer after).
fn binary_copy(rows: &[StoredRow], out: &mut Vec<u8>) {
    for row in rows {
        out.extend_from_slice(&12i16.to_be_bytes());
        field(out, &(row.position as i64).to_be_bytes());
        field(out, row.event_id.as_bytes());
        field(out, row.workspace_id.as_bytes());
        field(out, row.stream_id.as_bytes());
        field(out, &(row.stream_version as i64).to_be_bytes());
        field(out, row.event_type.as_bytes());
        field(out, &(row.schema_version as i32).to_be_bytes());
        field(out, &row.recorded_at.to_be_bytes());
        match row.key_id {
            Some(key) => field(out, key.as_bytes()),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        field(out, &row.data);
        field(out, &row.metadata);
        field(out, &row.hash);
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct PostgresAppend {
    tx: Transaction<'static, Postgres>,
}

#[async_trait]
impl AppendTx for PostgresAppend {
    async fn lock_head(&mut self) -> Result<Head, StoreError> {
        let row = sqlx::query("SELECT position, hash, recorded_at, key_epoch FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_error("locking the log head"))?;
        head_from(&row)
    }

    async fn event_ids_after(&mut self, after: u64) -> Result<Vec<(u64, Uuid)>, StoreError> {
        let rows = sqlx::query("SELECT position, event_id FROM events WHERE position > $1 ORDER BY position")
            .bind(after as i64)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error("reading new event ids"))?;
        rows.iter().map(id_from).collect()
    }

    async fn fingerprinted(&mut self, fingerprints: &[i64]) -> Result<Vec<(i64, i64)>, StoreError> {
        sqlx::query_as("SELECT fingerprint, position FROM event_fingerprints WHERE fingerprint = ANY($1)")
            .bind(fingerprints)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error("looking up older event ids"))
    }

    async fn event_ids_at(&mut self, positions: &[u64]) -> Result<HashMap<u64, Uuid>, StoreError> {
        let positions: Vec<i64> = positions.iter().map(|p| *p as i64).collect();
        let rows = sqlx::query("SELECT position, event_id FROM events WHERE position = ANY($1)")
            .bind(positions)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error("reading stored event ids"))?;
        rows.iter().map(id_from).collect()
    }

    async fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(stream_version) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_error("reading a stream version"))?;
        Ok(version.unwrap_or(0) as u64)
    }

    async fn subject_keys(&mut self, hashes: &[[u8; 32]]) -> Result<Vec<KeyRow>, StoreError> {
        let hashes: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
        let rows =
            sqlx::query("SELECT key_id, subject_hash, wrapped_key FROM subject_keys WHERE subject_hash = ANY($1)")
                .bind(hashes)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db_error("reading subject keys"))?;
        rows.iter().map(key_from).collect()
    }

    async fn insert_subject_keys(&mut self, keys: &[NewKeyRow]) -> Result<(), StoreError> {
        for chunk in keys.chunks(INSERT_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|k| k.key_id).collect();
            let hashes: Vec<&[u8]> = chunk.iter().map(|k| k.subject_hash.as_slice()).collect();
            let wrapped: Vec<&[u8]> = chunk.iter().map(|k| k.wrapped.as_slice()).collect();
            let created: Vec<i64> = chunk.iter().map(|k| k.created_at).collect();
            sqlx::query(
                "INSERT INTO subject_keys (key_id, subject_hash, wrapped_key, created_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::bytea[], $4::bigint[])",
            )
            .bind(ids)
            .bind(hashes)
            .bind(wrapped)
            .bind(created)
            .execute(&mut *self.tx)
            .await
            .map_err(db_error("storing subject keys"))?;
        }
        Ok(())
    }

    async fn insert_stream(&mut self, mut chunks: tokio::sync::mpsc::Receiver<RowChunk>) -> Result<(), StoreError> {
        // One COPY for the whole group; each chunk is sent as soon as it is
        // built, so the server parses it while the next one is sealed and hashed.
        let Some(first) = chunks.recv().await else { return Ok(()) };
        let mut copy =
            self.tx.copy_in_raw(&copy_statement("events")).await.map_err(db_error("starting to copy events"))?;
        let mut next = Some(first);
        let mut header = true;
        while let Some(chunk) = next.take() {
            let mut buffer = Vec::with_capacity(copy_size(&chunk.rows) + COPY_HEADER.len() + COPY_TRAILER.len());
            if header {
                buffer.extend_from_slice(COPY_HEADER);
                header = false;
            }
            binary_copy(&chunk.rows, &mut buffer);
            if chunk.last {
                buffer.extend_from_slice(COPY_TRAILER);
            }
            copy.send(buffer).await.map_err(db_error("copying events"))?;
            if !chunk.last {
                next = chunks.recv().await;
                if next.is_none() {
                    // The builder stopped before the last chunk: never commit part of a group.
                    let _ = copy.abort("onepd stopped building the group").await;
                    return Err(StoreError::Database("copying events: the group ended before its last chunk".into()));
                }
            }
        }
        copy.finish().await.map_err(db_error("copying events"))?;
        Ok(())
    }

    async fn set_head(&mut self, head: &Head) -> Result<(), StoreError> {
        sqlx::query("UPDATE log_head SET position = $1, hash = $2, recorded_at = $3 WHERE id = 1")
            .bind(head.position as i64)
            .bind(head.hash.as_slice())
            .bind(head.recorded_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_error("moving the log head"))?;
        // Delivered to listeners only when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(head.position.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(db_error("announcing the commit"))?;
        Ok(())
    }

    async fn lease_held(&mut self, fence: &crate::cluster::Fence) -> Result<bool, StoreError> {
        crate::cluster::sql::postgres::held(&mut self.tx, fence).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db_error("committing events"))
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn begin(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        let tx = self.pool.begin().await.map_err(db_error("starting an append"))?;
        Ok(Box::new(PostgresAppend { tx }))
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let row = sqlx::query("SELECT position, hash, recorded_at, key_epoch FROM log_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("reading the log head"))?;
        head_from(&row)
    }

    async fn read_rows(
        &self,
        from: u64,
        to: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {ROW_COLUMNS} FROM events WHERE position >= "));
        query.push_bind(from as i64).push(" AND position <= ").push_bind(to as i64);
        if let Some(workspace) = filter.workspace {
            query.push(" AND workspace_id = ").push_bind(workspace.0);
        }
        if let Some(stream) = &filter.stream {
            query.push(" AND stream_id = ").push_bind(stream.as_str().to_owned());
        }
        if !filter.event_types.is_empty() {
            query.push(" AND event_type = ANY(").push_bind(filter.event_types.clone()).push(")");
        }
        if super::backend::configuration_only(filter) {
            query.push(super::backend::CONFIGURATION_CONDITION);
        }
        query.push(" ORDER BY position LIMIT ").push_bind(limit as i64);
        let rows = query.build().fetch_all(&self.pool).await.map_err(db_error("reading events"))?;
        rows.iter().map(row_from).collect()
    }

    async fn read_rows_at(&self, workspace: Uuid, positions: &[u64]) -> Result<Vec<StoredRow>, StoreError> {
        let positions: Vec<i64> = positions.iter().map(|&position| position as i64).collect();
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM events WHERE workspace_id = $1 AND position = ANY($2) ORDER BY position"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(workspace)
            .bind(positions)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading events by position"))?;
        rows.iter().map(row_from).collect()
    }

    async fn read_stream_rows(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream)
            .bind(from_version as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading a stream"))?;
        rows.iter().map(row_from).collect()
    }

    async fn recorded_at(&self, position: u64) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE position = $1")
            .bind(position as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a recorded time"))
    }

    async fn position_of(&self, event_id: Uuid) -> Result<Option<u64>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("finding an event by id"))?;
        Ok(position.map(|position| position as u64))
    }

    async fn event_ids_page(&self, after: u64, limit: usize) -> Result<Vec<(u64, Uuid)>, StoreError> {
        let rows = sqlx::query("SELECT position, event_id FROM events WHERE position > $1 ORDER BY position LIMIT $2")
            .bind(after as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("loading event ids"))?;
        rows.iter().map(id_from).collect()
    }

    async fn fingerprints_up_to(&self) -> Result<u64, StoreError> {
        let up_to: i64 = sqlx::query_scalar(FINGERPRINTS_MARK_QUERY)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("reading the fingerprints' mark"))?;
        Ok(up_to as u64)
    }

    async fn store_fingerprints(&self, rows: &[(i64, i64)], up_to: u64) -> Result<(), StoreError> {
        let storing = db_error("storing older event ids");
        let mut tx = self.pool.begin().await.map_err(&storing)?;
        for chunk in rows.chunks(FINGERPRINT_CHUNK) {
            let (fingerprints, positions): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO event_fingerprints (fingerprint, position) \
                 SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[]) ON CONFLICT DO NOTHING",
            )
            .bind(fingerprints)
            .bind(positions)
            .execute(&mut *tx)
            .await
            .map_err(&storing)?;
        }
        sqlx::query("UPDATE event_fingerprints_mark SET up_to = GREATEST(up_to, $1) WHERE id = 1")
            .bind(up_to as i64)
            .execute(&mut *tx)
            .await
            .map_err(&storing)?;
        tx.commit().await.map_err(&storing)
    }

    async fn wrapped_keys(&self, key_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
        let rows = sqlx::query("SELECT key_id, wrapped_key FROM subject_keys WHERE key_id = ANY($1)")
            .bind(key_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reading subject keys"))?;
        rows.iter().map(wrapped_from).collect()
    }

    async fn delete_subject_key(&self, subject_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a shred"))?;
        // The head first: on PostgreSQL its row lock waits for an append that
        // may be creating this subject's key, so the DELETE below sees it.
        sqlx::query("UPDATE log_head SET key_epoch = key_epoch + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(db_error("bumping the key epoch"))?;
        let deleted = sqlx::query("DELETE FROM subject_keys WHERE subject_hash = $1")
            .bind(subject_hash.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(db_error("deleting a subject key"))?
            .rows_affected();
        tx.commit().await.map_err(db_error("committing a shred"))?;
        Ok(deleted > 0)
    }

    async fn master_key_fingerprint(&self, fingerprint: &[u8]) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT INTO master_key_check (id, fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(fingerprint)
            .execute(&self.pool)
            .await
            .map_err(db_error("recording the master key fingerprint"))?;
        sqlx::query_scalar("SELECT fingerprint FROM master_key_check WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("reading the master key fingerprint"))
    }

    fn cluster_db(&self) -> crate::cluster::ClusterDb {
        crate::cluster::ClusterDb::Postgres(self.pool.clone())
    }

    async fn close(&self) {
        self.pool.close().await;
        self.listener.abort();
    }
}

/// Creates a database named `name` on the server `admin_url` points at (for
/// tests and benchmarks that need a fresh one) and returns its url: the admin
/// url with its database replaced, query parameters kept.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let url = database_url(admin_url, name)?;
    let pool = connect_pool(admin_url, 1).await?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
    pool.execute(sqlx::AssertSqlSafe(sql)).await.map_err(db_error("creating a database"))?;
    pool.close().await;
    Ok(url)
}

/// `url` naming database `name` instead of its own.
fn database_url(url: &str, name: &str) -> Result<String, StoreError> {
    let path_start = url
        .find("://")
        .and_then(|scheme| url[scheme + 3..].find('/').map(|slash| scheme + 3 + slash))
        .ok_or_else(|| StoreError::Database(format!("database url: expected postgres://host/db, found {url:?}")))?;
    let query = url[path_start..].find('?').map_or("", |q| &url[path_start + q..]);
    Ok(format!("{}/{name}{query}", &url[..path_start]))
}

/// Drops the database `name`, disconnecting anyone still using it.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    let pool = connect_pool(admin_url, 1).await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', ""));
    pool.execute(sqlx::AssertSqlSafe(sql)).await.map_err(db_error("dropping a database"))?;
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn a_database_url_keeps_server_credentials_and_parameters() {
        assert_eq!(
            database_url("postgres://app:pw@db:5432/postgres?sslmode=disable", "x").unwrap(),
            "postgres://app:pw@db:5432/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert!(database_url("postgres://host-without-db", "x").is_err());
    }
}
