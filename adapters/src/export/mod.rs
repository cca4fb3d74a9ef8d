//! Exports of the event log an auditor can take away and check without the
//! database (`onepd events export|tail`, `AuditService.Export`).
//!
//! An export is NDJSON: a header line, one line per event, an end line. An
//! event line holds the event's envelope and the stored bytes the hash chain
//! covers — a payload that is JSON as itself (`data`), anything else (a
//! sealed payload's ciphertext) as base64 (`stored_data`) beside the opened
//! plaintext — with the chain hash before it and its own. So each event's
//! hash can be recomputed from the file alone. Every line ends with a
//! `check`, the SHA-256 of the line's other bytes chained from the line
//! before: a changed, removed, added or moved line is found at the line it
//! happened. The end line names the range, the count and the last hash, and
//! with a master key is signed, with a signed head of the chain at its end
//! (the format of `onepd verify --save-head`).
//!
//! A Parquet export ([`parquet`]) holds the same rows, with the header and
//! end lines in its key-value metadata; [`verify`] checks either.

pub mod parquet;
pub mod show;
pub mod verify;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use onepd_domain::events::message::MessageRejected;
use onepd_domain::{EventStore, Position, StoreError, Timestamp, WorkspaceId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::EventLog;
use crate::store::backend::StoredRow;
use crate::store::{Opened, SignedHead};

/// What an export's header and end lines call their format.
pub const EXPORT_FORMAT: &str = "onepd-export/1";
/// The purpose the end line's signature key is derived for.
const SIGNATURE_PURPOSE: &str = "export";
/// Rows per read page.
const PAGE: usize = 5_000;
/// How often a followed export looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Which events an export holds, besides its range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilter {
    /// Only this workspace's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Uuid>,
    /// Only this stream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Only these event types; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Only events whose metadata names this source id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl ExportFilter {
    /// Whether the filter admits every event: the export is then gap-free.
    pub fn is_everything(&self) -> bool {
        self == &ExportFilter::default()
    }

    /// Whether the filter admits `row`.
    pub fn admits(&self, row: &StoredRow) -> bool {
        if self.workspace.is_some_and(|workspace| workspace != row.workspace_id)
            || self.stream.as_ref().is_some_and(|stream| stream != &row.stream_id)
            || (!self.event_types.is_empty() && !self.event_types.contains(&row.event_type))
        {
            return false;
        }
        match &self.source {
            None => true,
            Some(source) => serde_json::from_slice::<serde_json::Value>(&row.metadata)
                .ok()
                .and_then(|metadata| metadata.get("source_id").and_then(|id| id.as_str()).map(|id| id == source))
                .unwrap_or(false),
        }
    }
}

/// Where an export starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this position (inclusive).
    Position(u64),
    /// At the first event recorded at or after this time.
    Time(Timestamp),
    /// After the current head (`tail` from now).
    Now,
}

/// Where an export ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At the head when the export starts.
    Head,
    /// At this position (inclusive), or the head when it is before.
    Position(u64),
    /// At the last event recorded at or before this time.
    Time(Timestamp),
    /// Never: after the head it waits for new events (`tail`).
    Follow,
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// Where it starts.
    pub start: Start,
    /// Where it ends.
    pub end: End,
    /// Which events.
    pub filter: ExportFilter,
    /// Whether event lines carry their row ([`ExportLine::row`]), for a
    /// Parquet writer in the same process.
    pub with_rows: bool,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored hash does not hold: the export stops there, so it never
    /// vouches for a broken chain.
    #[error(
        "the hash chain is broken at position {position}: run `onepd verify`; the export stops before a broken link"
    )]
    ChainBroken {
        /// The first position whose hash does not hold.
        position: u64,
    },
    /// The range asked for is not one.
    #[error("{0}")]
    Invalid(String),
    /// The reader of the lines went away.
    #[error("the reader of the export went away")]
    Closed,
}

/// Which line of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// The first line: format, range asked for, filter.
    Header,
    /// An event.
    Event,
    /// The last line: what the export holds, signed.
    End,
}

/// One line of an export, without its newline.
#[derive(Debug, Clone)]
pub struct ExportLine {
    /// Which line.
    pub kind: LineKind,
    /// The event's position (for an event line), else 0.
    pub position: u64,
    /// The line.
    pub text: String,
    /// The event line's row (with its check), for a writer in the same
    /// process that would otherwise parse the line back (Parquet).
    pub row: Option<Box<ExportRow>>,
}

/// An export's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub export: String,
    /// When the export was made (RFC 3339).
    pub exported_at: String,
    /// The first position asked for.
    pub from_position: u64,
    /// The last position it covers; `None` for a followed export.
    pub to_position: Option<u64>,
    /// Which events; every event when empty (the export is then gap-free).
    pub filter: ExportFilter,
    /// See [`Checker`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
}

/// An export's last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEnd {
    /// [`EXPORT_FORMAT`].
    pub export_end: String,
    /// The range the export covers: every event of it the filter admits.
    pub from_position: u64,
    /// Its last position.
    pub to_position: u64,
    /// How many event lines it holds.
    pub events: u64,
    /// The chain hash just before `from_position` (hex).
    pub previous_hash: String,
    /// The chain hash at `to_position` (hex).
    pub last_hash: String,
    /// The check of the line before this one: what the signature covers.
    pub lines: String,
    /// A signed head at `to_position`, as `onepd verify --save-head`
    /// writes it, when the exporter had the master key.
    pub head: Option<SignedHead>,
    /// HMAC-SHA256 (hex) of this line with `signature` null and no
    /// `check`, under a key derived from the master key; `None` without one.
    pub signature: Option<String>,
    /// See [`Checker`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
}

/// One event of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRow {
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
    /// Stored schema version (the payload is as stored, not upcast).
    pub schema_version: u32,
    /// Microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// `recorded_at` as RFC 3339.
    pub time: String,
    /// The subject key the payload is sealed with.
    pub key_id: Option<Uuid>,
    /// The metadata, when it is stored as JSON.
    pub metadata: Option<Box<RawValue>>,
    /// The payload: as stored, or opened when sealed; null when erased or
    /// unreadable.
    pub data: Option<Box<RawValue>>,
    /// The stored payload bytes (base64) when they are not `data`: a
    /// sealed payload's nonce and ciphertext, or bytes that are not JSON.
    pub stored_data: Option<String>,
    /// The stored metadata bytes (base64) when they are not JSON.
    pub stored_metadata: Option<String>,
    /// Set when the payload was sealed for a subject whose key was
    /// destroyed: why it is not shown.
    pub erased: Option<String>,
    /// Set when the payload cannot be opened or read: why.
    pub unreadable: Option<String>,
    /// A message that was rejected (`MessageRejected`).
    pub rejected: bool,
    /// Open quarantine records of the event (reader: reason), when the
    /// export was made.
    pub quarantined: Option<String>,
    /// The chain hash of the event before this one (hex).
    pub previous_hash: String,
    /// This event's chain hash (hex).
    pub hash: String,
    /// See [`Checker`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
}

impl ExportRow {
    /// The bytes the chain covers for this row's payload and metadata.
    pub fn stored_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let engine = base64::engine::general_purpose::STANDARD;
        let data = match (&self.stored_data, &self.data) {
            (Some(stored), _) => engine.decode(stored).map_err(|err| format!("stored_data: not base64 ({err})"))?,
            (None, Some(data)) => data.get().as_bytes().to_vec(),
            (None, None) => return Err("neither data nor stored_data holds the stored payload".into()),
        };
        let metadata = match (&self.stored_metadata, &self.metadata) {
            (Some(stored), _) => engine.decode(stored).map_err(|err| format!("stored_metadata: not base64 ({err})"))?,
            (None, Some(metadata)) => metadata.get().as_bytes().to_vec(),
            (None, None) => return Err("neither metadata nor stored_metadata holds the stored metadata".into()),
        };
        Ok((data, metadata))
    }

    /// The chain hash this row's envelope and stored bytes give after
    /// `previous`.
    pub fn chain_hash(&self, previous: &[u8; 32]) -> Result<[u8; 32], String> {
        let (data, metadata) = self.stored_bytes()?;
        let stored = onepd_domain::chain::StoredEvent {
            position: self.position,
            event_id: self.event_id,
            workspace_id: self.workspace_id,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            key_id: self.key_id,
            data: &data,
            metadata: &metadata,
        };
        Ok(stored.chain_hash(previous))
    }
}

/// The `check` of every line: SHA-256 of the check before it (zeros before
/// the header) and the SHA-256 of the line's bytes without its check, hex.
/// A line is its fields without `check`, then `,"check":"…"}`. (The line's
/// own digest can be computed on any core; only the short link is
/// sequential.)
#[derive(Debug, Clone, Default)]
pub struct Checker {
    last: [u8; 32],
}

/// The SHA-256 of a line's bytes without its check.
pub fn body_digest(body: &str) -> [u8; 32] {
    Sha256::digest(body.as_bytes()).into()
}

impl Checker {
    /// The check of the last line (zeros before any).
    pub fn last(&self) -> String {
        hex::encode(self.last)
    }

    /// The line `body` (a JSON object without `check`) becomes.
    pub fn line(&mut self, body: &str) -> String {
        self.line_with(body, &body_digest(body))
    }

    /// The line `body`, whose [`body_digest`] is `digest`, becomes.
    pub fn line_with(&mut self, body: &str, digest: &[u8; 32]) -> String {
        self.finish_line(body.to_owned(), digest)
    }

    /// `body` made its line in place.
    pub fn finish_line(&mut self, mut body: String, digest: &[u8; 32]) -> String {
        let check = self.next_with(digest);
        if body.ends_with('}') {
            body.pop();
        }
        body.reserve(check.len() + 12);
        body.push_str(",\"check\":\"");
        body.push_str(&check);
        body.push_str("\"}");
        body
    }

    /// The check `body` gets after the lines so far; it becomes the last.
    pub fn next(&mut self, body: &str) -> String {
        self.next_with(&body_digest(body))
    }

    fn next_with(&mut self, digest: &[u8; 32]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.last);
        hasher.update(digest);
        self.last = hasher.finalize().into();
        hex_of(&self.last)
    }
}

/// The stored bytes as embeddable JSON text, when they are exactly that:
/// valid JSON, written back byte for byte, on one line.
fn embeddable(bytes: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.contains(['\n', '\r']) {
        return None;
    }
    let raw = RawValue::from_string(text.to_owned()).ok()?;
    // Only surrounding white space can differ, and it would shorten it.
    (raw.get().len() == text.len()).then_some(raw)
}

/// The export row of a stored row and its opened payload.
fn row_of(row: &StoredRow, opened: Opened, previous: &[u8; 32], quarantined: Option<&String>) -> ExportRow {
    let engine = base64::engine::general_purpose::STANDARD;
    let (mut data, mut stored_data, mut erased, mut unreadable) = (None, None, None, None);
    match opened {
        Opened::Clear => match embeddable(&row.data) {
            Some(raw) => data = Some(raw),
            None => {
                stored_data = Some(engine.encode(&row.data));
                unreadable = Some("the stored payload is not JSON".to_owned());
            }
        },
        Opened::Plaintext(plaintext) => {
            stored_data = Some(engine.encode(&row.data));
            match embeddable(&plaintext) {
                Some(raw) => data = Some(raw),
                None => unreadable = Some("the opened payload is not JSON".to_owned()),
            }
        }
        Opened::Shredded => {
            stored_data = Some(engine.encode(&row.data));
            erased = Some(format!(
                "the payload was sealed for a subject whose key ({}) was destroyed by an erasure request",
                row.key_id.map(|key| key.to_string()).unwrap_or_default()
            ));
        }
        Opened::Unopenable(reason) => {
            stored_data = Some(engine.encode(&row.data));
            unreadable = Some(reason);
        }
        Opened::NotOpened => stored_data = Some(engine.encode(&row.data)),
    }
    let (metadata, stored_metadata) = match embeddable(&row.metadata) {
        Some(raw) => (Some(raw), None),
        None => {
            unreadable.get_or_insert_with(|| "the stored metadata is not JSON".to_owned());
            (None, Some(engine.encode(&row.metadata)))
        }
    };
    ExportRow {
        position: row.position,
        event_id: row.event_id,
        workspace_id: row.workspace_id,
        stream_id: row.stream_id.clone(),
        stream_version: row.stream_version,
        event_type: row.event_type.clone(),
        schema_version: row.schema_version,
        recorded_at: row.recorded_at,
        time: Timestamp(row.recorded_at).to_rfc3339(),
        key_id: row.key_id,
        metadata,
        data,
        stored_data,
        stored_metadata,
        erased,
        unreadable,
        rejected: row.event_type == MessageRejected::TYPE,
        quarantined: quarantined.cloned(),
        previous_hash: hex_of(previous),
        hash: hex_of(&row.hash),
        check: String::new(),
    }
}

/// A line's JSON without its check. Serializing these types cannot fail.
pub(crate) fn body<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("export lines serialize")
}

/// Lowercase hex of `bytes`, by table rather than a character at a time.
pub(crate) fn hex_of(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut text).expect("the buffer is twice the input");
    String::from_utf8(text).expect("hex is ASCII")
}

/// An event line's body without its check: byte for byte what [`body`]
/// gives (the verifier compares with it), written field by field so the
/// long fields that need no escaping (base64, hex, ids, times) and the
/// embedded JSON are copied rather than scanned.
fn row_body(row: &ExportRow) -> String {
    fn text(out: &mut Vec<u8>, value: &str) {
        serde_json::to_writer(&mut *out, value).expect("writing to memory cannot fail");
    }
    fn plain(out: &mut Vec<u8>, value: &str) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
    fn uuid(out: &mut Vec<u8>, value: &Uuid) {
        plain(out, value.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
    fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    fn optional(out: &mut Vec<u8>, value: Option<&str>, write: fn(&mut Vec<u8>, &str)) {
        match value {
            Some(value) => write(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn raw(out: &mut Vec<u8>, value: &str) {
        out.extend_from_slice(value.as_bytes());
    }
    let size = row.data.as_ref().map_or(0, |data| data.get().len())
        + row.metadata.as_ref().map_or(0, |metadata| metadata.get().len())
        + row.stored_data.as_ref().map_or(0, String::len)
        + row.stored_metadata.as_ref().map_or(0, String::len)
        + row.stream_id.len()
        + 700;
    let mut out: Vec<u8> = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"position\":");
    number(&mut out, row.position);
    out.extend_from_slice(b",\"event_id\":");
    uuid(&mut out, &row.event_id);
    out.extend_from_slice(b",\"workspace_id\":");
    uuid(&mut out, &row.workspace_id);
    out.extend_from_slice(b",\"stream_id\":");
    text(&mut out, &row.stream_id);
    out.extend_from_slice(b",\"stream_version\":");
    number(&mut out, row.stream_version);
    out.extend_from_slice(b",\"event_type\":");
    text(&mut out, &row.event_type);
    out.extend_from_slice(b",\"schema_version\":");
    number(&mut out, row.schema_version);
    out.extend_from_slice(b",\"recorded_at\":");
    number(&mut out, row.recorded_at);
    out.extend_from_slice(b",\"time\":");
    text(&mut out, &row.time);
    out.extend_from_slice(b",\"key_id\":");
    match &row.key_id {
        Some(key) => uuid(&mut out, key),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"metadata\":");
    optional(&mut out, row.metadata.as_deref().map(RawValue::get), raw);
    out.extend_from_slice(b",\"data\":");
    optional(&mut out, row.data.as_deref().map(RawValue::get), raw);
    out.extend_from_slice(b",\"stored_data\":");
    optional(&mut out, row.stored_data.as_deref(), plain);
    out.extend_from_slice(b",\"stored_metadata\":");
    optional(&mut out, row.stored_metadata.as_deref(), plain);
    out.extend_from_slice(b",\"erased\":");
    optional(&mut out, row.erased.as_deref(), text);
    out.extend_from_slice(b",\"unreadable\":");
    optional(&mut out, row.unreadable.as_deref(), text);
    out.extend_from_slice(if row.rejected { b",\"rejected\":true" } else { b",\"rejected\":false" });
    out.extend_from_slice(b",\"quarantined\":");
    optional(&mut out, row.quarantined.as_deref(), text);
    out.extend_from_slice(b",\"previous_hash\":");
    plain(&mut out, &row.previous_hash);
    out.extend_from_slice(b",\"hash\":");
    plain(&mut out, &row.hash);
    if !row.check.is_empty() {
        out.extend_from_slice(b",\"check\":");
        text(&mut out, &row.check);
    }
    out.push(b'}');
    String::from_utf8(out).expect("every part written is UTF-8")
}

/// The open quarantine records by position, as text, for `workspace` (all
/// when `None`).
async fn quarantine_marks(log: &EventLog, workspace: Option<Uuid>) -> Result<HashMap<u64, String>, StoreError> {
    let quarantine = crate::quarantine::open(log).await?;
    let mut marks: HashMap<u64, String> = HashMap::new();
    for entry in quarantine.all() {
        if workspace.is_some_and(|workspace| workspace != entry.workspace.0) {
            continue;
        }
        let record = &entry.record;
        let reader = match record.destination_id {
            Some(destination) => format!("{} {destination}", record.reader),
            None => record.reader.clone(),
        };
        let mark = marks.entry(record.position.0).or_default();
        if !mark.is_empty() {
            mark.push_str("; ");
        }
        mark.push_str(&format!("{reader}: {}", record.reason));
    }
    Ok(marks)
}

/// The first and last positions `spec` names, with the head now; the last
/// is `u64::MAX` for a followed export.
pub async fn range(log: &EventLog, spec: &ExportSpec) -> Result<(u64, u64), ExportError> {
    let head = log.head().await?.0;
    let from = match spec.start {
        Start::Position(position) => position.max(1),
        Start::Time(time) => log.position_at(time).await?.0,
        Start::Now => head + 1,
    };
    if spec.end == End::Follow {
        if from > head + 1 {
            return Err(ExportError::Invalid(format!(
                "the start, position {from}, is past the head ({head}): follow from position {} at most",
                head + 1
            )));
        }
        return Ok((from, u64::MAX));
    }
    // A start past the head is an empty export just after it.
    let from = from.min(head + 1);
    let to = match spec.end {
        End::Head | End::Follow => head,
        End::Position(position) => position.min(head),
        End::Time(time) => log.position_at(Timestamp(time.0.saturating_add(1))).await?.0 - 1,
    };
    if to + 1 < from {
        return Err(ExportError::Invalid(format!(
            "the range ends at position {to}, before it starts at position {from}"
        )));
    }
    Ok((from, to))
}

async fn send(
    lines: &mpsc::Sender<Vec<ExportLine>>,
    kind: LineKind,
    position: u64,
    text: String,
) -> Result<(), ExportError> {
    lines.send(vec![ExportLine { kind, position, text, row: None }]).await.map_err(|_| ExportError::Closed)
}

/// Waits for a commit past `head`, or `stopping`; returns false when stopping.
async fn wait_for_commit(log: &EventLog, stopping: &mut Option<watch::Receiver<bool>>) -> bool {
    let mut commits = log.commits();
    let tick = tokio::time::sleep(FOLLOW_POLL);
    match stopping {
        Some(stopping) => {
            if *stopping.borrow() {
                return false;
            }
            tokio::select! {
                _ = commits.changed() => true,
                _ = tick => true,
                _ = stopping.changed() => !*stopping.borrow(),
            }
        }
        None => {
            tokio::select! {
                _ = commits.changed() => true,
                _ = tick => true,
            }
        }
    }
}

/// Streams the export `spec` names into `lines`, in batches (a page's event
/// lines at a time): the header, every event line, and (unless it follows
/// the log) the end line. Memory stays flat:
/// one page of rows at a time, and `lines` is bounded. Each stored hash is
/// checked on the way; a broken link stops the export with
/// [`ExportError::ChainBroken`]. A followed export ends when `stopping`
/// turns true, or the reader goes away.
pub async fn export(
    log: &EventLog,
    spec: &ExportSpec,
    lines: mpsc::Sender<Vec<ExportLine>>,
    stopping: Option<watch::Receiver<bool>>,
) -> Result<u64, ExportError> {
    let (from, to) = range(log, spec).await?;
    let follow = spec.end == End::Follow;
    let marks = quarantine_marks(log, spec.filter.workspace).await?;
    let head = log.head().await?.0;
    let first_previous = log.hash_before(Position(from.min(head + 1))).await?;
    let mut checker = Checker::default();
    let header = ExportHeader {
        export: EXPORT_FORMAT.into(),
        exported_at: now().to_rfc3339(),
        from_position: from,
        to_position: (!follow).then_some(to.max(from - 1)),
        filter: spec.filter.clone(),
        check: String::new(),
    };
    send(&lines, LineKind::Header, 0, checker.line(&body(&header))).await?;
    let (mut previous, mut next, mut events) = (first_previous, from, 0u64);
    let marks = std::sync::Arc::new(marks);
    // Pages are read (and opened) one ahead of the page being rendered, so
    // the database and the rendering work at once.
    let (pages, mut read) = mpsc::channel(2);
    let reader = tokio::spawn(read_pages(log.clone(), from, to, spec.filter.clone(), follow, stopping, pages));
    let _reader = AbortOnDrop(reader);
    while let Some(page) = read.recv().await {
        let rows = page?;
        let Some(last) = rows.last() else { continue };
        let (last_position, last_hash) = (last.0.position, last.0.hash);
        let mut batch = Vec::with_capacity(rows.len());
        for (position, rendered) in render_page(rows, previous, next, &spec.filter, &marks, spec.with_rows).await? {
            if let Some((row, body, digest)) = rendered {
                let text = checker.finish_line(body, &digest);
                let row = row.map(|mut row| {
                    row.check = checker.last();
                    row
                });
                batch.push(ExportLine { kind: LineKind::Event, position, text, row });
            }
        }
        events += batch.len() as u64;
        if !batch.is_empty() {
            lines.send(batch).await.map_err(|_| ExportError::Closed)?;
        }
        previous = last_hash;
        next = last_position + 1;
    }
    if !follow && next <= to {
        // The log ended before the range did: rows are missing.
        return Err(ExportError::ChainBroken { position: next });
    }
    if follow {
        return Ok(events);
    }
    let to = to.max(from - 1);
    let mut end = ExportEnd {
        export_end: EXPORT_FORMAT.into(),
        from_position: from,
        to_position: to,
        events,
        previous_hash: hex::encode(first_previous),
        last_hash: hex::encode(previous),
        lines: checker.last(),
        head: None,
        signature: None,
        check: String::new(),
    };
    if log.has_master_key() && to >= 1 {
        end.head = Some(log.signed_head(to).await?);
    }
    end.signature = log.sign(SIGNATURE_PURPOSE, body(&end).as_bytes()).map(hex::encode);
    send(&lines, LineKind::End, 0, checker.line(&body(&end))).await?;
    Ok(events)
}

/// Aborts a task when dropped (the export stopped early).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads positions `from..=to` page by page into `pages`, opening the
/// payloads `filter` admits; following the head when `follow`, until
/// `stopping` or the receiver goes. Ends after the last page, or after an
/// error it sends.
async fn read_pages(
    log: EventLog,
    from: u64,
    to: u64,
    filter: ExportFilter,
    follow: bool,
    mut stopping: Option<watch::Receiver<bool>>,
    pages: mpsc::Sender<Result<Vec<(StoredRow, Opened)>, ExportError>>,
) {
    let mut next = from;
    while next <= to {
        let page_end = Position(to.min(next.saturating_add(PAGE as u64 * 4)));
        let rows = match log.opened_rows(Position(next), page_end, PAGE, |row| filter.admits(row)).await {
            Ok(rows) => rows,
            Err(err) => {
                let _ = pages.send(Err(err.into())).await;
                return;
            }
        };
        let Some(last) = rows.last() else {
            if !follow || !wait_for_commit(&log, &mut stopping).await {
                return;
            }
            continue;
        };
        next = last.0.position + 1;
        if pages.send(Ok(rows)).await.is_err() {
            return;
        }
    }
}

/// A page's rows checked against the chain (from `previous`, the hash before
/// position `next`) and rendered — the body of each admitted row and its
/// digest — on two threads for a big page. Rows the filter leaves out come
/// back without a body.
type Rendered = Vec<(u64, Option<(Option<Box<ExportRow>>, String, [u8; 32])>)>;

async fn render_page(
    mut rows: Vec<(StoredRow, Opened)>,
    previous: [u8; 32],
    next: u64,
    filter: &ExportFilter,
    marks: &std::sync::Arc<HashMap<u64, String>>,
    with_rows: bool,
) -> Result<Rendered, ExportError> {
    fn render(
        rows: Vec<(StoredRow, Opened)>,
        mut previous: [u8; 32],
        mut next: u64,
        filter: &ExportFilter,
        marks: &HashMap<u64, String>,
        with_rows: bool,
    ) -> Result<Rendered, ExportError> {
        let mut out = Vec::with_capacity(rows.len());
        for (row, opened) in rows {
            if row.position != next || row.as_stored().chain_hash(&previous) != row.hash {
                return Err(ExportError::ChainBroken { position: next });
            }
            let rendered = filter.admits(&row).then(|| {
                let exported = Box::new(row_of(&row, opened, &previous, marks.get(&row.position)));
                let body = row_body(&exported);
                let digest = body_digest(&body);
                (with_rows.then_some(exported), body, digest)
            });
            out.push((row.position, rendered));
            previous = row.hash;
            next = row.position + 1;
        }
        Ok(out)
    }
    if rows.len() < 256 {
        return render(rows, previous, next, filter, marks, with_rows);
    }
    let second = rows.split_off(rows.len() / 2);
    let (second_previous, second_next) = {
        let last = &rows.last().expect("a page of at least 256 rows").0;
        (last.hash, last.position + 1)
    };
    let (other_filter, other_marks) = (filter.clone(), marks.clone());
    let other = tokio::task::spawn_blocking(move || {
        render(second, second_previous, second_next, &other_filter, &other_marks, with_rows)
    });
    let mut out = render(rows, previous, next, filter, marks, with_rows)?;
    let rest = other.await.map_err(|err| StoreError::Database(format!("rendering an export: {err}")))??;
    out.extend(rest);
    Ok(out)
}

/// The source id `id_or_name` names in `workspace`: itself when it is an
/// id, else the id of the source of that name.
pub async fn source_id(log: &EventLog, workspace: Option<WorkspaceId>, id_or_name: &str) -> Result<String, String> {
    if let Ok(id) = Uuid::parse_str(id_or_name) {
        return Ok(id.to_string());
    }
    let mut directory = onepd_projections::directory::Directory::default();
    crate::live::fold_to_head(log, &mut directory).await.map_err(|err| err.to_string())?;
    let found: Vec<Uuid> = directory
        .workspaces()
        .iter()
        .filter(|entry| workspace.is_none_or(|workspace| workspace == entry.id))
        .flat_map(|entry| directory.sources(entry.id))
        .filter(|source| source.name == id_or_name)
        .map(|source| source.id)
        .collect();
    match found.as_slice() {
        [id] => Ok(id.to_string()),
        [] => Err(format!("source {id_or_name:?}: no source has this id or name")),
        _ => Err(format!("source {id_or_name:?}: several workspaces have a source of this name; give its id")),
    }
}

/// The time now.
fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(since.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(quarantined: Option<&str>, odd: &str) -> ExportRow {
        ExportRow {
            position: 42,
            event_id: Uuid::now_v7(),
            workspace_id: Uuid::now_v7(),
            stream_id: format!("source-{odd}"),
            stream_version: 7,
            event_type: odd.to_owned(),
            schema_version: 2,
            recorded_at: -5,
            time: Timestamp(1_796_355_868_783_362).to_rfc3339(),
            key_id: quarantined.is_none().then(Uuid::now_v7),
            metadata: Some(RawValue::from_string(r#"{"a":"\u0000é\n"}"#.to_owned()).unwrap()),
            data: quarantined.map(|_| RawValue::from_string("[1,2.5,null]".to_owned()).unwrap()),
            stored_data: Some("/aptz+rCB==".to_owned()),
            stored_metadata: quarantined.is_some().then(|| "AAEC".to_owned()),
            erased: Some(odd.to_owned()),
            unreadable: quarantined.map(|_| format!("{odd}\u{1}\u{7f}")),
            rejected: quarantined.is_some(),
            quarantined: quarantined.map(str::to_owned),
            previous_hash: hex_of(&[0; 32]),
            hash: hex_of(&[0xab; 32]),
            check: String::new(),
        }
    }

    #[test]
    fn an_event_line_written_field_by_field_is_what_serde_writes() {
        for odd in ["Plain", "quote \" back \\ tab \t nl \n cr \r ff \u{c} bs \u{8}", "</script> ü 🦀 \u{1f}"] {
            for quarantined in [None, Some("destination:crm: too deep"), Some("a \"quoted\" reason")] {
                let row = row(quarantined, odd);
                assert_eq!(row_body(&row), body(&row));
                let checked = ExportRow { check: hex_of(&[1; 32]), ..row };
                assert_eq!(row_body(&checked), body(&checked));
            }
        }
    }

    #[test]
    fn hex_of_is_lowercase_hex() {
        assert_eq!(hex_of(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex_of(&[7; 32]), hex::encode([7; 32]));
    }
}
