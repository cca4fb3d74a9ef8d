//! Offline file import: a CSV or NDJSON file (optionally gzip) and a mapping
//! in, Segment-spec messages out, one row at a time.
//!
//! [`ImportReader`] reads the file as a stream: it holds one row (and the
//! reader's buffers) at a time, so memory stays flat however large the file
//! is. Each [`Row`] carries its 1-based line number and either a message
//! (with `type` and `messageId` set) or a [`RowError`] saying why the row
//! cannot be one. A bad row never stops the iteration; only a problem with
//! the whole file (a mapping that does not fit the header, a malformed
//! header, unreadable gzip) is an [`ImportError`].
//!
//! The caller sends each message through the ordinary ingest pipeline, which
//! validates it against the Segment spec and deduplicates by `messageId`.
//!
//! ## Mapping format
//!
//! ```json
//! {
//!   "format": "csv",
//!   "type": "track",
//!   "event": "Order Completed",
//!   "user_id": "customer_id",
//!   "anonymous_id": "device",
//!   "traits": { "email": "email", "phone": "phone" },
//!   "properties": { "order_id": "order", "revenue": "total", "currency": "currency" },
//!   "timestamp": { "column": "ordered_at", "format": "date" },
//!   "types": { "total": "number" },
//!   "skip_empty": true
//! }
//! ```
//!
//! - `format`: `csv` or `ndjson`. When absent, [`ImportMapping::detect_format`]
//!   takes it from the file name (`.csv`, `.ndjson`, `.jsonl`, each optionally
//!   followed by `.gz`). Gzip is never configured: it is detected from the
//!   content's magic bytes.
//! - `type` (required): `identify`, `track`, `page`, `screen` or `group`.
//! - `event` (required for `track`): a literal event name, or
//!   `{"column": "event_name"}`. `name` (page and screen, optional) works
//!   the same way.
//! - `user_id`, `anonymous_id`: columns holding the ids; the mapping needs at
//!   least one, and each row must fill at least one. `group_id`: the column
//!   holding the group's id (required for `group`).
//! - `traits`: trait name → column. Identifiers beyond the ids (`email`,
//!   `phone`) are traits, as in the Segment spec; the identity rules pick them
//!   up downstream. They go to `traits` for identify and group, and to
//!   `context.traits` for track, page and screen.
//! - `properties`: property name → column (track, page, screen).
//! - `timestamp`: a column of RFC 3339 timestamps (`"timestamp": "created_at"`),
//!   or `{"column": "…", "format": "rfc3339" | "unix_seconds" | "unix_millis" |
//!   "date"}`; `date` is `YYYY-MM-DD`, taken as midnight UTC. The message gets
//!   RFC 3339 in UTC. A row without one gets its timestamp at ingest.
//! - `types`: column → `string`, `number`, `integer` or `boolean`. A CSV cell is
//!   text unless typed here; an NDJSON value keeps its JSON type unless typed.
//!   A cell that does not fit its type fails its row.
//! - `skip_empty` (default `true`): empty cells (an empty CSV field, JSON
//!   `null` or `""`) are left out of the message. When `false`, they become
//!   `""` (string columns) or `null` (typed columns), so an import can clear
//!   a trait.
//! - `delimiter` (CSV, default `,`): one ASCII character, such as `";"` or `"\t"`.
//!
//! In CSV, a column is a header name (surrounding spaces and a UTF-8 byte-order
//! mark are ignored). In NDJSON, a column is a JSON pointer into the line's
//! object (`"/customer/email"`); a pointer that matches nothing is an empty
//! cell. Blank NDJSON lines are skipped but still counted.
//!
//! ## Message ids
//!
//! Re-importing a file must add nothing, so each row's `messageId` is derived
//! from the file and the row, never drawn at random:
//!
//! ```text
//! "import:" + file_id + ":" + hex(sha256(line ‖ row))[..32]
//! ```
//!
//! where `line` is the row's line number (8 bytes, big-endian) and `row` is
//! each field's length (8 bytes, big-endian) and bytes for CSV (the fields as
//! parsed, so quoting does not matter), or the line's raw bytes for NDJSON.
//! The line number makes two identical rows on different lines two different
//! messages (two identical purchases are two purchases).
//!
//! `file_id` is the caller's; the recommended rule is [`file_id`]: a hash of
//! the mapping's message type, event and name and the file's first 64 KiB as
//! stored. The same file with the same kind of message gets the same ids on
//! every import. One file imported with two mappings (identifies and order
//! tracks from one sales export) gets two sets of ids, while fixing a trait's
//! column in a mapping does not duplicate the rows already imported. A file
//! that only grew (an append-only export) keeps its first 64 KiB, so its old
//! rows keep their ids and only the new rows are added. The same data gzipped
//! or not are two different files.
//!
//! **Invariant:** pure: reads only the given reader; no clock, no randomness,
//! no storage. The same bytes, mapping and file id give the same messages.
//!
//! **Does not:** append, deduplicate, show progress or parse command lines;
//! the CLI, HTTP and gRPC entry points do that around this module.

pub mod mapping;
mod row;

#[cfg(test)]
mod tests;

use std::io::{self, BufRead, BufReader, Read};

use flate2::read::MultiGzDecoder;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use mapping::{ColumnType, Format, ImportMapping, MessageType, TextSource, TimestampFormat, TimestampSource};
use row::{Locator, Plan, Record};

/// How much of a file [`file_id`] reads: enough to tell exports apart,
/// little enough to read before the import starts.
pub const FILE_ID_PREFIX_LEN: usize = 64 * 1024;

/// The recommended file id: the first 16 bytes, in hex, of a SHA-256 over the
/// mapping's message type, event and name, and the file's first
/// [`FILE_ID_PREFIX_LEN`] bytes as stored (`first_bytes` may be longer; the
/// rest is ignored). See the module documentation for why these inputs.
pub fn file_id(mapping: &ImportMapping, first_bytes: &[u8]) -> String {
    let kind = serde_json::json!([mapping.message_type, mapping.event, mapping.name]);
    let mut hasher = Sha256::new();
    hasher.update(b"onepd import file v1\0");
    hasher.update(kind.to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(&first_bytes[..first_bytes.len().min(FILE_ID_PREFIX_LEN)]);
    hex::encode(&hasher.finalize()[..16])
}

/// One row of the file: its line and its message, or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The 1-based line the row starts on; in CSV the header is line 1.
    pub line: u64,
    /// The Segment-spec message (with `type` and `messageId`), or the reason
    /// the row was refused.
    pub result: Result<Value, RowError>,
}

/// Why one row became no message. The import goes on with the next row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A cell does not fit what its column needs.
    #[error("line {line}, column {column}: expected {expected}, found {found}")]
    Cell {
        /// The row's line.
        line: u64,
        /// The column's name (CSV) or JSON pointer (NDJSON).
        column: String,
        /// What the column needs: `a number`, `an RFC 3339 timestamp`.
        expected: String,
        /// The cell as found, quoted and cut short.
        found: String,
    },
    /// A CSV row has more or fewer fields than the header.
    #[error("line {line}: expected {expected} columns, found {found}")]
    ColumnCount {
        /// The row's line.
        line: u64,
        /// The header's number of columns.
        expected: usize,
        /// The row's number of fields.
        found: usize,
    },
    /// A row is longer than the tracking API takes for one message.
    #[error("line {line}: expected a row of at most 32 KB ({MAX_ROW_BYTES} bytes), found a longer one")]
    TooLarge {
        /// The row's line.
        line: u64,
    },
    /// An NDJSON line is not a JSON object.
    #[error("line {line}: expected a JSON object, found {found}")]
    NotAnObject {
        /// The row's line.
        line: u64,
        /// What the line is: `invalid JSON (…)`, `an array`.
        found: String,
    },
    /// The row fills neither id column.
    #[error("line {line}: expected user_id or anonymous_id, found neither")]
    MissingIdentity {
        /// The row's line.
        line: u64,
    },
}

/// Why a whole file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The mapping is invalid, or names something the file does not have.
    #[error("mapping.{field}: expected {expected}, found {found}")]
    Mapping {
        /// The mapping's field: `traits.email`, `format`.
        field: String,
        /// What the field needs.
        expected: String,
        /// What it holds, or what the file offers instead.
        found: String,
    },
    /// The CSV header row is missing or unusable.
    #[error("line 1: expected {expected}, found {found}")]
    Header {
        /// What a header needs: `unique column names`.
        expected: String,
        /// What the header holds.
        found: String,
    },
    /// The content starts like gzip but does not decompress.
    #[error("line {line}: expected a valid gzip stream, found {source}")]
    Gzip {
        /// The line being read when decompression failed.
        line: u64,
        /// The decompressor's error.
        source: io::Error,
    },
    /// The reader failed.
    #[error("line {line}: could not read the file ({source})")]
    Read {
        /// The line being read when the reader failed.
        line: u64,
        /// The reader's error.
        source: io::Error,
    },
}

/// Streams a file's rows as [`Row`]s; see the module documentation.
///
/// Yields `Err` at most once, for a read error in the middle of the file
/// (a truncated gzip stream, a failed disk), and then ends.
pub struct ImportReader<'a> {
    plan: Plan,
    file_id: String,
    source: Source<'a>,
    gzip: bool,
    finished: bool,
}

/// The longest row an import takes: the tracking API's limit for one
/// message. A longer row is a rejected line.
pub const MAX_ROW_BYTES: usize = 32 * 1024;

/// The most a CSV row may grow to while it is read before the import stops:
/// the CSV reader holds a whole row, so this bounds an upload's memory (a
/// row between [`MAX_ROW_BYTES`] and this is only rejected).
pub const MAX_ROW_READ_BYTES: usize = 1024 * 1024;

/// Counts what the CSV reader takes from the file since the last row, and
/// fails once a row runs past [`MAX_ROW_READ_BYTES`].
struct Counted<R> {
    inner: R,
    since_row: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.since_row.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        if total > MAX_ROW_READ_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a row longer than {MAX_ROW_READ_BYTES} bytes; the import stops here"),
            ));
        }
        Ok(n)
    }
}

enum Source<'a> {
    Csv {
        reader: csv::Reader<Counted<Box<dyn BufRead + Send + 'a>>>,
        /// What the reader took since the last row.
        since_row: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        /// Reused for every row, so reading allocates nothing per row.
        record: csv::ByteRecord,
        columns: usize,
    },
    Ndjson {
        reader: Box<dyn BufRead + Send + 'a>,
        /// Reused for every line; shrunk again after an unusually long line.
        buffer: Vec<u8>,
        line: u64,
    },
}

impl<'a> ImportReader<'a> {
    /// Opens `reader` with `mapping` (whose `format` must be set; see
    /// [`ImportMapping::detect_format`]). Gzip is detected by its magic bytes.
    /// Reads the CSV header, or the first block of an NDJSON file, so an
    /// unreadable file fails here rather than on the first row.
    ///
    /// The reader must be `Send`, so an entrance can parse on a blocking
    /// thread while its async side appends the previous batch.
    pub fn new(
        reader: impl Read + Send + 'a,
        mapping: &ImportMapping,
        file_id: &str,
    ) -> Result<ImportReader<'a>, ImportError> {
        mapping.check()?;
        let format = mapping.format.ok_or_else(|| ImportError::Mapping {
            field: "format".to_owned(),
            expected: "csv or ndjson".to_owned(),
            found: "none (set it, or detect it from the file name)".to_owned(),
        })?;
        let (mut reader, gzip) = open(reader)?;
        if let Err(source) = reader.fill_buf() {
            return Err(read_error(gzip, 1, source));
        }
        let (plan, source) = match format {
            Format::Csv => open_csv(reader, mapping, gzip)?,
            Format::Ndjson => open_ndjson(reader, mapping)?,
        };
        Ok(ImportReader { plan, file_id: file_id.to_owned(), source, gzip, finished: false })
    }
}

/// A row's message id; see "Message ids" in the module documentation.
fn message_id<'p>(file_id: &str, line: u64, parts: impl Iterator<Item = &'p [u8]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(line.to_be_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    format!("import:{file_id}:{}", hex::encode(&hasher.finalize()[..16]))
}

impl Iterator for ImportReader<'_> {
    type Item = Result<Row, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = match &mut self.source {
            Source::Csv { .. } => self.next_csv(),
            Source::Ndjson { .. } => self.next_ndjson(),
        };
        if !matches!(next, Some(Ok(_))) {
            self.finished = true;
        }
        next
    }
}

impl ImportReader<'_> {
    fn next_csv(&mut self) -> Option<Result<Row, ImportError>> {
        let Source::Csv { reader, since_row, record, columns } = &mut self.source else { unreachable!() };
        match reader.read_byte_record(record) {
            Ok(false) => None,
            Ok(true) => {
                since_row.store(0, std::sync::atomic::Ordering::Relaxed);
                let line = record.position().map_or(0, csv::Position::line);
                let columns = *columns;
                let record = &*record;
                let result = if record.as_slice().len() > MAX_ROW_BYTES {
                    Err(RowError::TooLarge { line })
                } else if record.len() != columns {
                    Err(RowError::ColumnCount { line, expected: columns, found: record.len() })
                } else {
                    let message_id = message_id(&self.file_id, line, record.iter());
                    self.plan.message(Record::Csv(record), line, message_id)
                };
                Some(Ok(Row { line, result }))
            }
            Err(error) => {
                let line = error.position().map_or_else(|| reader.position().line(), csv::Position::line);
                Some(Err(read_error(self.gzip, line, csv_io_error(error))))
            }
        }
    }

    fn next_ndjson(&mut self) -> Option<Result<Row, ImportError>> {
        loop {
            let Source::Ndjson { reader, buffer, line } = &mut self.source else { unreachable!() };
            // A line longer than this stays in memory once; afterwards the buffer is given back.
            const KEPT_CAPACITY: usize = 1 << 20;
            if buffer.capacity() > KEPT_CAPACITY {
                *buffer = Vec::with_capacity(64 * 1024);
            }
            buffer.clear();
            // At most one byte past the limit is kept; the rest of a longer
            // line is skipped without being held.
            match reader.by_ref().take(MAX_ROW_BYTES as u64 + 1).read_until(b'\n', buffer) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => return Some(Err(read_error(self.gzip, *line + 1, source))),
            }
            *line += 1;
            let line = *line;
            if buffer.len() > MAX_ROW_BYTES && !buffer.ends_with(b"\n") {
                if let Err(source) = skip_line(reader) {
                    return Some(Err(read_error(self.gzip, line, source)));
                }
                return Some(Ok(Row { line, result: Err(RowError::TooLarge { line }) }));
            }
            let mut bytes = buffer.as_slice();
            bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message_id = message_id(&self.file_id, line, std::iter::once(bytes));
            let result = match serde_json::from_slice::<Value>(bytes) {
                Ok(object @ Value::Object(_)) => self.plan.message(Record::Json(&object), line, message_id),
                Ok(other) => Err(RowError::NotAnObject { line, found: crate::ingest::shape::kind(&other).to_owned() }),
                Err(error) => Err(RowError::NotAnObject { line, found: format!("invalid JSON ({error})") }),
            };
            return Some(Ok(Row { line, result }));
        }
    }
}

/// Wraps `reader` in a gzip decoder when its first two bytes are gzip's magic.
fn open<'a>(mut reader: impl Read + Send + 'a) -> Result<(Box<dyn BufRead + Send + 'a>, bool), ImportError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    let mut magic = [0u8; 2];
    let mut filled = 0;
    // A reader may return fewer bytes than asked, so read until two or the end.
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ImportError::Read { line: 1, source }),
        }
    }
    let whole = io::Cursor::new(magic).take(filled as u64).chain(reader);
    if filled == 2 && magic == GZIP_MAGIC {
        // Multi-member, so `cat a.csv.gz b.csv.gz` reads as one file, as `zcat` does.
        Ok((Box::new(BufReader::with_capacity(64 * 1024, MultiGzDecoder::new(whole))), true))
    } else {
        Ok((Box::new(BufReader::with_capacity(64 * 1024, whole)), false))
    }
}

fn open_csv<'a>(
    reader: Box<dyn BufRead + Send + 'a>,
    mapping: &ImportMapping,
    gzip: bool,
) -> Result<(Plan, Source<'a>), ImportError> {
    let since_row = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mapping.delimiter.map_or(b',', |delimiter| delimiter as u8))
        .flexible(true)
        .has_headers(true)
        .from_reader(Counted { inner: reader, since_row: since_row.clone() });
    let header = reader.byte_headers().map_err(|error| read_error(gzip, 1, csv_io_error(error)))?.clone();
    since_row.store(0, std::sync::atomic::Ordering::Relaxed);
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(ImportError::Header { expected: "a header row".to_owned(), found: "an empty file".to_owned() });
    }
    let mut names = Vec::with_capacity(header.len());
    for (index, bytes) in header.iter().enumerate() {
        let bytes = if index == 0 { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes) } else { bytes };
        let name = std::str::from_utf8(bytes).map_err(|_| ImportError::Header {
            expected: "UTF-8 column names".to_owned(),
            found: format!("column {} is not UTF-8", index + 1),
        })?;
        let name = name.trim().to_owned();
        if names.contains(&name) {
            return Err(ImportError::Header {
                expected: "unique column names".to_owned(),
                found: format!("{name:?} twice"),
            });
        }
        names.push(name);
    }
    let plan = Plan::new(mapping, |field, column| match names.iter().position(|name| name == column) {
        Some(index) => Ok(Locator::Index(index)),
        None => {
            let mut offered = names.iter().take(12).map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ");
            if names.len() > 12 {
                offered.push_str(", …");
            }
            Err(ImportError::Mapping {
                field: field.to_owned(),
                expected: format!("a column of the header ({offered})"),
                found: format!("none named {column:?}"),
            })
        }
    })?;
    Ok((plan, Source::Csv { reader, since_row, record: csv::ByteRecord::new(), columns: names.len() }))
}

fn open_ndjson<'a>(
    reader: Box<dyn BufRead + Send + 'a>,
    mapping: &ImportMapping,
) -> Result<(Plan, Source<'a>), ImportError> {
    let plan = Plan::new(mapping, |field, column| {
        if column.is_empty() || column.starts_with('/') {
            Ok(Locator::Pointer(column.to_owned()))
        } else {
            Err(ImportError::Mapping {
                field: field.to_owned(),
                expected: "a JSON pointer such as \"/customer/email\"".to_owned(),
                found: format!("{column:?}"),
            })
        }
    })?;
    Ok((plan, Source::Ndjson { reader, buffer: Vec::with_capacity(64 * 1024), line: 0 }))
}

/// Reads past the rest of the current line without keeping it.
fn skip_line(reader: &mut (dyn BufRead + Send + '_)) -> io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|byte| *byte == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}

fn read_error(gzip: bool, line: u64, source: io::Error) -> ImportError {
    if gzip { ImportError::Gzip { line, source } } else { ImportError::Read { line, source } }
}

fn csv_io_error(error: csv::Error) -> io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(error) => error,
        // With flexible rows and byte records, the reader reports only I/O errors.
        other => io::Error::other(format!("{other:?}")),
    }
}
