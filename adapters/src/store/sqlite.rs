//! The embedded SQLite backend: one database file in WAL mode.
//!
//! Appends run in `BEGIN IMMEDIATE` transactions, which take SQLite's single
//! write lock up front, so appenders in this and any other process are
//! serialized and positions are assigned in commit order.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::{EventFilter, StoreError};
use rusqlite::types::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::backend::{
    AppendTx, Backend, FINGERPRINTS_MARK_QUERY, Head, INSERT_CHUNK, KeyRow, NewKeyRow, RowChunk, StoredRow, column,
    db_error, head_from, id_from, key_from, row_from, wrapped_from,
};
use super::sqlite_read::Readers;

/// Pages the WAL may grow to before SQLite copies it into the database
/// (40 MiB at 4 KiB pages). Fewer, larger checkpoints cost fewer syncs than
/// SQLite's default of 1,000 pages.
pub const WAL_AUTOCHECKPOINT_PAGES: &str = "10000";

const ROW_COLUMNS: &str = "position, event_id, workspace_id, stream_id, stream_version, event_type, \
                           schema_version, recorded_at, key_id, data, metadata, hash";

/// The SQLite backend.
pub(crate) struct SqliteBackend {
    pool: SqlitePool,
    /// The read path of long reads ([`super::sqlite_read`]).
    readers: Arc<Readers>,
}

/// SQLite's own page cache per connection (KiB), for the log's and the read
/// store's connections alike. Every page a connection reads is also in the
/// OS page cache, so this only keeps the B-tree's upper pages at hand; with
/// twenty connections in a process, 16 MiB each grew to 320 MiB on a big log.
pub const CACHE_KIB: u32 = 4_096;

/// Opens (creating if missing) the database at `url` (`sqlite://path` or
/// `sqlite::memory:` is refused: a log must outlive the process).
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(db_error("parsing the SQLite database url"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL syncs the WAL at every commit: an acknowledged append survives
        // power loss, not just a crash of the process.
        .synchronous(SqliteSynchronous::Full)
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .busy_timeout(Duration::from_secs(30))
        // Per connection, and a pool has several: reads stream through the
        // OS page cache, so a large private cache would only multiply memory.
        .pragma("cache_size", format!("-{CACHE_KIB}"))
        .pragma("temp_store", "memory")
        // Reading a page of thousands of events is normal here, not slow.
        .disable_statement_logging();
    private_file(Path::new(options.get_filename()))?;
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        // A local file needs no liveness ping before every use.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(db_error("opening the SQLite database"))
}

/// Creates `dir` (and its missing parents) `0700` when it does not exist;
/// an existing directory is left as it is.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes `path` a file only its owner can read or write, before SQLite
/// opens it: a missing parent directory is created `0700`, a missing file
/// `0600` (SQLite gives its `-wal` and `-shm` files the database file's
/// mode), and an existing file and its `-wal` and `-shm` are narrowed to
/// `0600`. The log and the read store hold personal data.
pub fn private_file(path: &Path) -> Result<(), StoreError> {
    let failed = |what: &str, path: &Path| {
        let path = path.display().to_string();
        let what = what.to_owned();
        move |err: std::io::Error| StoreError::Database(format!("{what} {path}: {err}"))
    };
    if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        private_dir(parent).map_err(failed("creating", parent))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(failed("creating", path))?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(metadata) = std::fs::metadata(&file)
                && metadata.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed("narrowing the permissions of", &file))?;
            }
        }
    }
    Ok(())
}

impl SqliteBackend {
    /// Opens the database at `url` and brings its schema up to date.
    pub(crate) async fn open(url: &str) -> Result<SqliteBackend, StoreError> {
        let pool = connect_pool(url, 8).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrating the SQLite database: {err}")))?;
        let path = SqliteConnectOptions::from_str(url)
            .map_err(db_error("parsing the SQLite database url"))?
            .get_filename()
            .to_path_buf();
        Ok(SqliteBackend { pool, readers: Readers::new(path) })
    }
}

/// Fingerprint rows per `INSERT` (two parameters each).
const FINGERPRINT_CHUNK: usize = 10_000;

const HEAD_QUERY: &str = "SELECT position, hash, recorded_at, key_epoch FROM log_head WHERE id = 1";

/// Inserts rows into `table` with multi-row INSERTs. The benchmark uses it too,
/// so the raw limit it measures is this very statement.
pub async fn insert_rows(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    rows: &[StoredRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(format!("INSERT INTO {table} ({ROW_COLUMNS}) "));
        query.push_values(chunk, |mut values, row| {
            values
                .push_bind(row.position as i64)
                .push_bind(row.event_id)
                .push_bind(row.workspace_id)
                .push_bind(row.stream_id.as_str())
                .push_bind(row.stream_version as i64)
                .push_bind(row.event_type.as_str())
                .push_bind(i64::from(row.schema_version))
                .push_bind(row.recorded_at)
                .push_bind(row.key_id)
                .push_bind(row.data.as_slice())
                .push_bind(row.metadata.as_slice())
                .push_bind(row.hash.as_slice());
        });
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

struct SqliteAppend {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl AppendTx for SqliteAppend {
    async fn lock_head(&mut self) -> Result<Head, StoreError> {
        // BEGIN IMMEDIATE already holds the write lock; this only reads.
        let row = sqlx::query(HEAD_QUERY).fetch_one(&mut *self.tx).await.map_err(db_error("reading the log head"))?;
        head_from(&row)
    }

    async fn event_ids_after(&mut self, after: u64) -> Result<Vec<(u64, Uuid)>, StoreError> {
        let rows = sqlx::query("SELECT position, event_id FROM events WHERE position > ? ORDER BY position")
            .bind(after as i64)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error("reading new event ids"))?;
        rows.iter().map(id_from).collect()
    }

    async fn fingerprinted(&mut self, fingerprints: &[i64]) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut found = Vec::new();
        for chunk in fingerprints.chunks(INSERT_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT fingerprint, position FROM event_fingerprints WHERE fingerprint IN (",
            );
            let mut list = query.separated(", ");
            for fingerprint in chunk {
                list.push_bind(*fingerprint);
            }
            query.push(")");
            let rows = query.build().fetch_all(&mut *self.tx).await.map_err(db_error("looking up older event ids"))?;
            for row in &rows {
                found.push((column(row, 0, 0)?, column(row, 1, 0)?));
            }
        }
        Ok(found)
    }

    async fn event_ids_at(&mut self, positions: &[u64]) -> Result<HashMap<u64, Uuid>, StoreError> {
        let mut found = HashMap::new();
        for chunk in positions.chunks(INSERT_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT position, event_id FROM events WHERE position IN (");
            let mut list = query.separated(", ");
            for position in chunk {
                list.push_bind(*position as i64);
            }
            query.push(")");
            let rows = query.build().fetch_all(&mut *self.tx).await.map_err(db_error("reading stored event ids"))?;
            for row in &rows {
                let (position, id) = id_from(row)?;
                found.insert(position, id);
            }
        }
        Ok(found)
    }

    async fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(stream_version) FROM events WHERE stream_id = ?")
            .bind(stream)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_error("reading a stream version"))?;
        Ok(version.unwrap_or(0) as u64)
    }

    async fn subject_keys(&mut self, hashes: &[[u8; 32]]) -> Result<Vec<KeyRow>, StoreError> {
        let mut found = Vec::new();
        for chunk in hashes.chunks(INSERT_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT key_id, subject_hash, wrapped_key FROM subject_keys WHERE subject_hash IN (",
            );
            let mut list = query.separated(", ");
            for hash in chunk {
                list.push_bind(hash.as_slice());
            }
            query.push(")");
            let rows = query.build().fetch_all(&mut *self.tx).await.map_err(db_error("reading subject keys"))?;
            for row in &rows {
                found.push(key_from(row)?);
            }
        }
        Ok(found)
    }

    async fn insert_subject_keys(&mut self, keys: &[NewKeyRow]) -> Result<(), StoreError> {
        for chunk in keys.chunks(INSERT_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO subject_keys (key_id, subject_hash, wrapped_key, created_at) ",
            );
            query.push_values(chunk, |mut values, key| {
                values
                    .push_bind(key.key_id)
                    .push_bind(key.subject_hash.as_slice())
                    .push_bind(key.wrapped.as_slice())
                    .push_bind(key.created_at);
            });
            query.build().execute(&mut *self.tx).await.map_err(db_error("storing subject keys"))?;
        }
        Ok(())
    }

    async fn insert_stream(&mut self, mut chunks: tokio::sync::mpsc::Receiver<RowChunk>) -> Result<(), StoreError> {
        while let Some(chunk) = chunks.recv().await {
            insert_rows(&mut self.tx, "events", &chunk.rows).await.map_err(db_error("inserting events"))?;
            if chunk.last {
                return Ok(());
            }
        }
        // The builder stopped before the last chunk: never commit part of a group.
        Err(StoreError::Database("inserting events: the group ended before its last chunk".into()))
    }

    async fn set_head(&mut self, head: &Head) -> Result<(), StoreError> {
        sqlx::query("UPDATE log_head SET position = ?, hash = ?, recorded_at = ? WHERE id = 1")
            .bind(head.position as i64)
            .bind(head.hash.as_slice())
            .bind(head.recorded_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_error("moving the log head"))?;
        Ok(())
    }

    async fn lease_held(&mut self, fence: &crate::cluster::Fence) -> Result<bool, StoreError> {
        crate::cluster::sql::sqlite::held(&mut self.tx, fence).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db_error("committing events"))
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error("starting an append"))?;
        Ok(Box::new(SqliteAppend { tx }))
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let row = sqlx::query(HEAD_QUERY).fetch_one(&self.pool).await.map_err(db_error("reading the log head"))?;
        head_from(&row)
    }

    async fn read_rows(
        &self,
        from: u64,
        to: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        // Configuration reads go through the partial index of
        // configuration events, not a scan of every message.
        let index = if super::backend::configuration_only(filter) {
            " INDEXED BY events_configuration_by_position"
        } else {
            ""
        };
        let mut sql = format!("SELECT {ROW_COLUMNS} FROM events{index} WHERE position >= ? AND position <= ?");
        let mut params = vec![Value::Integer(from as i64), Value::Integer(to as i64)];
        if let Some(workspace) = filter.workspace {
            sql.push_str(" AND workspace_id = ?");
            params.push(Value::Blob(workspace.0.as_bytes().to_vec()));
        }
        if let Some(stream) = &filter.stream {
            sql.push_str(" AND stream_id = ?");
            params.push(Value::Text(stream.as_str().to_owned()));
        }
        if !filter.event_types.is_empty() {
            let marks = vec!["?"; filter.event_types.len()].join(", ");
            sql.push_str(&format!(" AND event_type IN ({marks})"));
            params.extend(filter.event_types.iter().map(|event_type| Value::Text(event_type.clone())));
        }
        if super::backend::configuration_only(filter) {
            sql.push_str(super::backend::CONFIGURATION_CONDITION);
        }
        sql.push_str(" ORDER BY position LIMIT ?");
        params.push(Value::Integer(limit as i64));
        self.readers.rows(sql, params).await
    }

    async fn read_rows_at(&self, workspace: Uuid, positions: &[u64]) -> Result<Vec<StoredRow>, StoreError> {
        let mut found = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(INSERT_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {ROW_COLUMNS} FROM events WHERE workspace_id = ? AND position IN ({marks}) ORDER BY position"
            );
            let mut params = vec![Value::Blob(workspace.as_bytes().to_vec())];
            params.extend(chunk.iter().map(|&position| Value::Integer(position as i64)));
            found.extend(self.readers.rows(sql, params).await?);
        }
        found.sort_by_key(|row| row.position);
        Ok(found)
    }

    async fn read_stream_rows(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?"
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
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE position = ?")
            .bind(position as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("reading a recorded time"))
    }

    async fn position_of(&self, event_id: Uuid) -> Result<Option<u64>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM events WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("finding an event by id"))?;
        Ok(position.map(|position| position as u64))
    }

    async fn event_ids_page(&self, after: u64, limit: usize) -> Result<Vec<(u64, Uuid)>, StoreError> {
        let rows = sqlx::query("SELECT position, event_id FROM events WHERE position > ? ORDER BY position LIMIT ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(&storing)?;
        for chunk in rows.chunks(FINGERPRINT_CHUNK) {
            let mut query =
                QueryBuilder::<Sqlite>::new("INSERT OR IGNORE INTO event_fingerprints (fingerprint, position) ");
            query.push_values(chunk, |mut values, (fingerprint, position)| {
                values.push_bind(*fingerprint).push_bind(*position);
            });
            query.build().execute(&mut *tx).await.map_err(&storing)?;
        }
        sqlx::query("UPDATE event_fingerprints_mark SET up_to = MAX(up_to, ?) WHERE id = 1")
            .bind(up_to as i64)
            .execute(&mut *tx)
            .await
            .map_err(&storing)?;
        tx.commit().await.map_err(&storing)
    }

    async fn wrapped_keys(&self, key_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
        let mut found = HashMap::new();
        for chunk in key_ids.chunks(INSERT_CHUNK) {
            let mut query =
                QueryBuilder::<Sqlite>::new("SELECT key_id, wrapped_key FROM subject_keys WHERE key_id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            let rows = query.build().fetch_all(&self.pool).await.map_err(db_error("reading subject keys"))?;
            for row in &rows {
                let (key_id, wrapped) = wrapped_from(row)?;
                found.insert(key_id, wrapped);
            }
        }
        Ok(found)
    }

    async fn delete_subject_key(&self, subject_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error("starting a shred"))?;
        // The head first: on PostgreSQL its row lock waits for an append that
        // may be creating this subject's key, so the DELETE below sees it.
        sqlx::query("UPDATE log_head SET key_epoch = key_epoch + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(db_error("bumping the key epoch"))?;
        let deleted = sqlx::query("DELETE FROM subject_keys WHERE subject_hash = ?")
            .bind(subject_hash.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(db_error("deleting a subject key"))?
            .rows_affected();
        tx.commit().await.map_err(db_error("committing a shred"))?;
        Ok(deleted > 0)
    }

    async fn master_key_fingerprint(&self, fingerprint: &[u8]) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT INTO master_key_check (id, fingerprint) VALUES (1, ?) ON CONFLICT (id) DO NOTHING")
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
        crate::cluster::ClusterDb::Sqlite(self.pool.clone())
    }

    async fn close(&self) {
        self.readers.close();
        self.pool.close().await;
    }
}
