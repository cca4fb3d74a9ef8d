//! What the event log needs from a database, as two small traits, so the
//! log's logic (group commit, idempotency, sealing, hashing) is written once
//! and SQLite and PostgreSQL differ only in SQL.

use std::collections::HashMap;

use async_trait::async_trait;
use onepd_domain::chain::StoredEvent;
use onepd_domain::{EventFilter, StoreError};
use uuid::Uuid;

/// One event row exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Global position.
    pub position: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Stream id.
    pub stream_id: String,
    /// Version within the stream.
    pub stream_version: u64,
    /// Event type.
    pub event_type: String,
    /// Stored schema version.
    pub schema_version: u32,
    /// Microseconds since the epoch.
    pub recorded_at: i64,
    /// The subject key sealing `data`, if sealed.
    pub key_id: Option<Uuid>,
    /// Payload bytes: JSON text, or nonce and ciphertext when sealed.
    pub data: Vec<u8>,
    /// Metadata bytes (JSON text).
    pub metadata: Vec<u8>,
    /// Chain hash.
    pub hash: [u8; 32],
}

impl StoredRow {
    /// The row as input of the chain hash.
    pub fn as_stored(&self) -> StoredEvent<'_> {
        StoredEvent {
            position: self.position,
            event_id: self.event_id,
            workspace_id: self.workspace_id,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            key_id: self.key_id,
            data: &self.data,
            metadata: &self.metadata,
        }
    }
}

/// Rows for [`AppendTx::insert_stream`], and whether they are the last.
pub(crate) struct RowChunk {
    pub rows: Vec<StoredRow>,
    pub last: bool,
}

/// The one-row log head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Head {
    /// Last committed position.
    pub position: u64,
    /// Its chain hash.
    pub hash: [u8; 32],
    /// Its `recorded_at`; the next event is recorded no earlier.
    pub recorded_at: i64,
    /// Bumped by every shred.
    pub key_epoch: i64,
}

/// A subject key to store.
#[derive(Debug, Clone)]
pub(crate) struct NewKeyRow {
    pub key_id: Uuid,
    pub subject_hash: [u8; 32],
    pub wrapped: Vec<u8>,
    pub created_at: i64,
}

/// A stored subject key found by its subject hash.
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub key_id: Uuid,
    pub subject_hash: [u8; 32],
    pub wrapped: Vec<u8>,
}

/// An append transaction. Created by [`Backend::begin`]; everything it does
/// is undone unless [`AppendTx::commit`] succeeds.
#[async_trait]
pub(crate) trait AppendTx: Send {
    /// Locks the log head for the rest of the transaction (serializing every
    /// appender, in this process or another) and reads it.
    async fn lock_head(&mut self) -> Result<Head, StoreError>;
    /// `(position, event_id)` of every event after `after`, in order.
    async fn event_ids_after(&mut self, after: u64) -> Result<Vec<(u64, Uuid)>, StoreError>;
    /// `(fingerprint, position)` of every row of `event_fingerprints` with
    /// one of these fingerprints (sorted as signed integers).
    async fn fingerprinted(&mut self, fingerprints: &[i64]) -> Result<Vec<(i64, i64)>, StoreError>;
    /// The event ids stored at these positions.
    async fn event_ids_at(&mut self, positions: &[u64]) -> Result<HashMap<u64, Uuid>, StoreError>;
    /// The current version of a stream (0 when it has no events).
    async fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError>;
    /// The stored keys of these subject hashes.
    async fn subject_keys(&mut self, hashes: &[[u8; 32]]) -> Result<Vec<KeyRow>, StoreError>;
    /// Stores new subject keys.
    async fn insert_subject_keys(&mut self, keys: &[NewKeyRow]) -> Result<(), StoreError>;
    /// Inserts the event rows of every chunk received, in order, until a
    /// chunk marked last (or the sender is dropped). Chunks are built while
    /// earlier ones are being written.
    async fn insert_stream(&mut self, chunks: tokio::sync::mpsc::Receiver<RowChunk>) -> Result<(), StoreError>;
    /// Moves the head (and wakes other processes' subscribers after commit).
    async fn set_head(&mut self, head: &Head) -> Result<(), StoreError>;
    /// Whether `fence`'s node still holds its lease with its token; on
    /// PostgreSQL the lease cannot change hands until this transaction ends.
    async fn lease_held(&mut self, fence: &crate::cluster::Fence) -> Result<bool, StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A database holding an event log.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Starts an append transaction.
    async fn begin(&self) -> Result<Box<dyn AppendTx>, StoreError>;
    /// Reads the head without locking it.
    async fn head(&self) -> Result<Head, StoreError>;
    /// Rows with `from <= position <= to` admitted by `filter`, up to `limit`, in order.
    async fn read_rows(
        &self,
        from: u64,
        to: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError>;
    /// Rows of `workspace` at these positions, in order; positions of other
    /// workspaces or past the head are left out.
    async fn read_rows_at(&self, workspace: Uuid, positions: &[u64]) -> Result<Vec<StoredRow>, StoreError>;
    /// Rows of one stream from `from_version`, up to `limit`, in order.
    async fn read_stream_rows(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError>;
    /// `recorded_at` of the event at `position`.
    async fn recorded_at(&self, position: u64) -> Result<Option<i64>, StoreError>;
    /// The position of the event with this id, if the log holds it.
    async fn position_of(&self, event_id: Uuid) -> Result<Option<u64>, StoreError>;
    /// `(position, event_id)` after `after`, up to `limit`, in order.
    async fn event_ids_page(&self, after: u64, limit: usize) -> Result<Vec<(u64, Uuid)>, StoreError>;
    /// The position up to which every id's fingerprint is in `event_fingerprints`.
    async fn fingerprints_up_to(&self) -> Result<u64, StoreError>;
    /// Stores `(fingerprint, position)` rows (sorted; rows already there are
    /// kept) and moves the mark to `up_to` unless it is further already, in
    /// one transaction of its own: it does not lock the log head.
    async fn store_fingerprints(&self, rows: &[(i64, i64)], up_to: u64) -> Result<(), StoreError>;
    /// The wrapped keys with these ids (absent ids are shredded).
    async fn wrapped_keys(&self, key_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<u8>>, StoreError>;
    /// Deletes the key of a subject hash and bumps the key epoch; whether it existed.
    async fn delete_subject_key(&self, subject_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Records `fingerprint` as the master key's unless one is recorded;
    /// returns the one recorded.
    async fn master_key_fingerprint(&self, fingerprint: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// The database's pool, for the nodes and leases beside the log.
    fn cluster_db(&self) -> crate::cluster::ClusterDb;
    /// Closes the connection pool.
    async fn close(&self);
}

/// The condition of the partial index of configuration events, as readers
/// must repeat it.
pub(crate) const CONFIGURATION_CONDITION: &str = " AND event_type NOT IN ('MessageAccepted', 'MessageRejected')";

/// Whether `filter` asks only for configuration events (named types, none of
/// them a message), which the partial index covers.
pub(crate) fn configuration_only(filter: &EventFilter) -> bool {
    !filter.event_types.is_empty()
        && filter
            .event_types
            .iter()
            .all(|event_type| event_type != "MessageAccepted" && event_type != "MessageRejected")
}

/// Turns a database error into the store's error, naming what was being done.
pub(crate) fn db_error(doing: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |err| {
        if unreachable(&err) {
            StoreError::Unavailable(format!("{doing}: {err}"))
        } else {
            StoreError::Database(format!("{doing}: {err}"))
        }
    }
}

/// Whether `err` says the database could not be reached, rather than that
/// it refused the statement: a broken or refused connection, a pool that
/// found no connection in time, or PostgreSQL shutting down or starting up
/// (SQLSTATE class 08, `57P01`–`57P03`).
pub(crate) fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Reads the position up to which every id's fingerprint is stored.
pub(crate) const FINGERPRINTS_MARK_QUERY: &str = "SELECT up_to FROM event_fingerprints_mark WHERE id = 1";

/// How many rows go into one INSERT statement.
pub(crate) const INSERT_CHUNK: usize = 2_000;

pub(crate) fn hash_from_bytes(position: u64, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        position,
        reason: format!("stored hash: expected 32 bytes, found {}", bytes.len()),
    })
}

/// An event row read with `SELECT` of the events columns in table order.
pub(crate) fn row_from<'r, R>(row: &'r R) -> Result<StoredRow, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let position = column::<_, i64>(row, 0, 0)? as u64;
    Ok(StoredRow {
        position,
        event_id: column(row, 1, position)?,
        workspace_id: column(row, 2, position)?,
        stream_id: column(row, 3, position)?,
        stream_version: column::<_, i64>(row, 4, position)? as u64,
        event_type: column(row, 5, position)?,
        schema_version: column::<_, i32>(row, 6, position)? as u32,
        recorded_at: column(row, 7, position)?,
        key_id: column(row, 8, position)?,
        data: column(row, 9, position)?,
        metadata: column(row, 10, position)?,
        hash: hash_from_bytes(position, column(row, 11, position)?)?,
    })
}

/// The log head read with `SELECT position, hash, recorded_at, key_epoch`.
pub(crate) fn head_from<'r, R>(row: &'r R) -> Result<Head, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let position = column::<_, i64>(row, 0, 0)? as u64;
    Ok(Head {
        position,
        hash: hash_from_bytes(position, column(row, 1, position)?)?,
        recorded_at: column(row, 2, position)?,
        key_epoch: column(row, 3, position)?,
    })
}

/// `(position, event_id)` read with `SELECT position, event_id`.
pub(crate) fn id_from<'r, R>(row: &'r R) -> Result<(u64, Uuid), StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let position = column::<_, i64>(row, 0, 0)? as u64;
    Ok((position, column(row, 1, position)?))
}

/// A subject key read with `SELECT key_id, subject_hash, wrapped_key`.
pub(crate) fn key_from<'r, R>(row: &'r R) -> Result<KeyRow, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(KeyRow {
        key_id: column(row, 0, 0)?,
        subject_hash: hash_from_bytes(0, column(row, 1, 0)?)?,
        wrapped: column(row, 2, 0)?,
    })
}

/// `(key_id, wrapped_key)` read with `SELECT key_id, wrapped_key`.
pub(crate) fn wrapped_from<'r, R>(row: &'r R) -> Result<(Uuid, Vec<u8>), StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((column(row, 0, 0)?, column(row, 1, 0)?))
}

/// Column `index` of a stored row, or [`StoreError::Corrupt`] when it does
/// not decode as `T` (a file edited by hand, say) — never a panic.
pub(crate) fn column<'r, R, T>(row: &'r R, index: usize, position: u64) -> Result<T, StoreError>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    row.try_get(index).map_err(|err| StoreError::Corrupt { position, reason: format!("column {index}: {err}") })
}
