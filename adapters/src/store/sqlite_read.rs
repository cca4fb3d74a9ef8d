//! The SQLite backend's read path: reads of the log's rows through SQLite's
//! own row loop (rusqlite) on a blocking thread, with connections of their
//! own. The async driver hands every row across a channel from its worker
//! thread, which made the driver, not SQLite, the limit of a long read (a
//! rebuild, a backfill, an export).
//!
//! The connections are read-only: in WAL mode each statement reads a
//! snapshot of what was committed when it began, so a read never waits for
//! an append and never sees half of one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onepd_domain::StoreError;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, Row};
use uuid::Uuid;

use super::backend::{StoredRow, hash_from_bytes};

/// Idle connections kept for the next read; more readers than this at once
/// open connections of their own, closed after their read.
const IDLE_CONNECTIONS: usize = 4;

/// Read-only connections to one database file.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Readers of the database file at `path`.
    pub(crate) fn new(path: PathBuf) -> Arc<Readers> {
        Arc::new(Readers { path, idle: Mutex::new(Vec::new()) })
    }

    /// The event rows `sql` (selecting the events columns in table order)
    /// returns with `params` bound, on a blocking thread.
    pub(crate) async fn rows(self: &Arc<Self>, sql: String, params: Vec<Value>) -> Result<Vec<StoredRow>, StoreError> {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let connection = readers.take()?;
            let read = read_rows(&connection, &sql, &params);
            // A connection whose read failed is not reused.
            if read.is_ok() {
                readers.put(connection);
            }
            read
        })
        .await
        .map_err(|err| StoreError::Database(format!("reading events: {err}")))?
    }

    /// Closes the idle connections.
    pub(crate) fn close(&self) {
        self.idle.lock().expect("the idle readers' lock is never poisoned").clear();
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.idle.lock().expect("the idle readers' lock is never poisoned").pop() {
            return Ok(connection);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags).map_err(failed("opening a reader"))?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(failed("opening a reader"))?;
        // As the async pool's connections: reads stream through the OS page
        // cache, so a large private cache would only multiply memory.
        connection
            .pragma_update(None, "cache_size", -i64::from(super::sqlite::CACHE_KIB))
            .map_err(failed("opening a reader"))?;
        Ok(connection)
    }

    fn put(&self, connection: Connection) {
        let mut idle = self.idle.lock().expect("the idle readers' lock is never poisoned");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }
}

fn failed(doing: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |err| StoreError::Database(format!("{doing}: {err}"))
}

fn read_rows(connection: &Connection, sql: &str, params: &[Value]) -> Result<Vec<StoredRow>, StoreError> {
    let mut statement = connection.prepare_cached(sql).map_err(failed("reading events"))?;
    let mut rows = statement.query(rusqlite::params_from_iter(params)).map_err(failed("reading events"))?;
    let mut found = Vec::new();
    while let Some(row) = rows.next().map_err(failed("reading events"))? {
        found.push(stored_row(row)?);
    }
    Ok(found)
}

/// One row of `SELECT` of the events columns in table order (the async
/// driver's [`super::backend::row_from`], column for column).
fn stored_row(row: &Row<'_>) -> Result<StoredRow, StoreError> {
    let position = integer(row, 0, 0)? as u64;
    let hash = blob(row, 11, position)?;
    Ok(StoredRow {
        position,
        event_id: uuid(row, 1, position)?,
        workspace_id: uuid(row, 2, position)?,
        stream_id: text(row, 3, position)?,
        stream_version: integer(row, 4, position)? as u64,
        event_type: text(row, 5, position)?,
        schema_version: integer(row, 6, position)? as u32,
        recorded_at: integer(row, 7, position)?,
        key_id: match column(row, 8, position)? {
            ValueRef::Null => None,
            _ => Some(uuid(row, 8, position)?),
        },
        data: blob(row, 9, position)?.to_vec(),
        metadata: blob(row, 10, position)?.to_vec(),
        hash: hash_from_bytes(position, hash)?,
    })
}

fn corrupt(position: u64, index: usize, found: &str) -> StoreError {
    StoreError::Corrupt { position, reason: format!("column {index}: {found}") }
}

fn column<'a>(row: &'a Row<'_>, index: usize, position: u64) -> Result<ValueRef<'a>, StoreError> {
    row.get_ref(index).map_err(|err| corrupt(position, index, &err.to_string()))
}

fn integer(row: &Row<'_>, index: usize, position: u64) -> Result<i64, StoreError> {
    match column(row, index, position)? {
        ValueRef::Integer(value) => Ok(value),
        other => Err(corrupt(position, index, &format!("expected an integer, found {:?}", other.data_type()))),
    }
}

fn blob<'a>(row: &'a Row<'_>, index: usize, position: u64) -> Result<&'a [u8], StoreError> {
    match column(row, index, position)? {
        // The async driver reads text as bytes too.
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Ok(bytes),
        other => Err(corrupt(position, index, &format!("expected bytes, found {:?}", other.data_type()))),
    }
}

fn text(row: &Row<'_>, index: usize, position: u64) -> Result<String, StoreError> {
    let bytes = blob(row, index, position)?;
    String::from_utf8(bytes.to_vec()).map_err(|err| corrupt(position, index, &err.to_string()))
}

fn uuid(row: &Row<'_>, index: usize, position: u64) -> Result<Uuid, StoreError> {
    let bytes = blob(row, index, position)?;
    Uuid::from_slice(bytes).map_err(|err| corrupt(position, index, &err.to_string()))
}
