//! File import through [`Ingest`]: the one loop that `onepd import`, `onepd
//! bench import`, the HTTP upload (`POST /v1/import-files`) and the gRPC
//! `ImportService` share.
//!
//! ```text
//! bytes ──(bounded channel)──► ImportReader on a blocking thread
//!                                   │ batches of rows (bounded channel)
//!                                   ▼
//!                   admit ──► Ingest::ingest (3 batches in flight) ──► ImportSummary
//! ```
//!
//! [`ImportReader`] is synchronous and parsing is CPU work, so it runs on a
//! blocking thread and hands the async side batches of rows over a channel
//! that holds two at most; the async side admits each batch against the
//! in-flight limit (waiting for room, as the streaming gRPC call does) and
//! appends it while the thread parses the next. A file that arrives as an
//! async byte stream (an HTTP body, gRPC chunks) reaches the reader through
//! a second bounded channel. Nothing ever holds more than a few chunks and
//! batches, so memory stays flat whatever the file's size.
//!
//! The file id comes from [`file_id`] over the first [`FILE_ID_PREFIX_LEN`]
//! bytes as sent, exactly as `onepd import` computes it from the file on
//! disk, so a file imported one way and then sent another stores each row
//! once.
//!
//! **Does not:** parse mappings from a request, authenticate, show progress
//! bars, or know HTTP or gRPC; each entrance does that around this module and
//! maps [`FileImportError`] to its own errors. Progress is a callback.

use std::io::{self, Read};

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use onepd_commands::import::{FILE_ID_PREFIX_LEN, ImportError, ImportMapping, ImportReader, Row, file_id};
use onepd_projections::directory::WriteGrant;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Caller, Ingest, IngestError, MAX_BATCH_MESSAGES, Outcome};

/// Rows per append when an entrance does not choose.
pub const DEFAULT_BATCH_ROWS: usize = 1_000;

/// How many rejected rows a summary lists when an entrance does not choose;
/// beyond it they are only counted, so a file of bad rows cannot make the
/// answer grow without bound.
pub const DEFAULT_LISTED_REJECTIONS: usize = 1_000;

/// Parsed batches waiting for the async side: one being appended, one
/// ready, one being parsed.
const BATCHES_IN_FLIGHT: usize = 2;

/// Received chunks waiting for the parser. Chunks are bounded by their
/// transport (hyper's read buffer, gRPC's message limit), so this bounds the
/// bytes held.
const CHUNKS_IN_FLIGHT: usize = 16;

/// How an import runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Rows per append; clamped to 1 ..= [`MAX_BATCH_MESSAGES`].
    pub batch_rows: usize,
    /// How many rejected rows [`ImportSummary::rejections`] lists (those with
    /// the lowest lines); the rest are only counted.
    pub listed_rejections: usize,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions { batch_rows: DEFAULT_BATCH_ROWS, listed_rejections: DEFAULT_LISTED_REJECTIONS }
    }
}

/// What became of a file's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Rows read (blank NDJSON lines are not rows).
    pub rows: u64,
    /// Rows stored as new `MessageAccepted` events.
    pub accepted: u64,
    /// Rows stored before (by an earlier import of the same file).
    pub duplicates: u64,
    /// Rows refused, by the mapping or by the pipeline.
    pub rejected: u64,
    /// The rejected rows with the lowest lines, in line order, at most
    /// [`ImportOptions::listed_rejections`] of them.
    pub rejections: Vec<RowRejection>,
    /// Whether `rejections` leaves some rejected rows out.
    pub rejections_truncated: bool,
}

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRejection {
    /// The line the row starts on (1-based; in CSV the header is line 1).
    pub line: u64,
    /// Why it was refused.
    pub reasons: Vec<String>,
}

/// Why an import stopped before the end of the file.
///
/// Rows before the failure may already be stored; importing the file again
/// stores them once (their message ids are the same).
#[derive(Debug, thiserror::Error)]
pub enum FileImportError {
    /// The file cannot be read as the mapping describes: a column the header
    /// lacks, unreadable gzip, a stream that broke off.
    #[error(transparent)]
    File(#[from] ImportError),
    /// Ingest failed as a whole (the store, the workspace's configuration).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The parsing thread stopped without reaching the end of the file.
    #[error("the file's reader stopped before the end of the file")]
    ReaderStopped,
}

/// Ingests every row of `rows` (opened by the caller, so a bad header fails
/// before anything else happens), calling `progress` with the rows read so
/// far after each batch.
pub async fn import_rows(
    ingest: &Ingest,
    grant: WriteGrant,
    caller: &Caller,
    rows: ImportReader<'static>,
    options: ImportOptions,
    progress: impl FnMut(u64) + Send,
) -> Result<ImportSummary, FileImportError> {
    let (batches_tx, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    let batch_rows = options.batch_rows();
    let parser = tokio::task::spawn_blocking(move || parse(rows, batch_rows, &batches_tx));
    ingest_batches(ingest, grant, caller, batches, parser, options, progress).await
}

/// Ingests a file that arrives as a stream of byte chunks (an HTTP body,
/// gRPC messages), with `mapping` (whose `format` must be set). An `Err`
/// from the stream ends the import with [`ImportError::Read`] naming the
/// line it reached. See the module documentation for how memory stays flat.
pub async fn import_stream<S>(
    ingest: &Ingest,
    grant: WriteGrant,
    caller: &Caller,
    mapping: &ImportMapping,
    bytes: S,
    options: ImportOptions,
    progress: impl FnMut(u64) + Send,
) -> Result<ImportSummary, FileImportError>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let (batches, parser, feed) = parse_stream(mapping, bytes, options.batch_rows()).await?;
    let mut consume = std::pin::pin!(ingest_batches(ingest, grant, caller, batches, parser, options, progress));
    let mut feed = std::pin::pin!(feed);
    let mut fed = false;
    // The ingesting side decides when the import is over: when it fails, the
    // feed is dropped with it, which closes the parser's input.
    loop {
        tokio::select! {
            summary = &mut consume => return summary,
            () = &mut feed, if !fed => fed = true,
        }
    }
}

impl ImportOptions {
    fn batch_rows(&self) -> usize {
        self.batch_rows.clamp(1, MAX_BATCH_MESSAGES)
    }
}

/// A batch of parsed rows, or the error that ended the file.
type Batch = Result<Vec<Row>, ImportError>;

/// Starts parsing a byte stream: reads the first [`FILE_ID_PREFIX_LEN`]
/// bytes for the file id, then starts the parser on a blocking thread.
/// Returns the parser's batches, its handle, and the future that feeds it the
/// rest of the stream (to be polled alongside the batches).
async fn parse_stream<S>(
    mapping: &ImportMapping,
    bytes: S,
    batch_rows: usize,
) -> Result<(mpsc::Receiver<Batch>, JoinHandle<()>, impl Future<Output = ()> + Send), ImportError>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let mut bytes = Box::pin(bytes);
    let mut prefix = BytesMut::new();
    while prefix.len() < FILE_ID_PREFIX_LEN {
        match bytes.next().await {
            None => break,
            Some(Ok(chunk)) => prefix.extend_from_slice(&chunk),
            Some(Err(source)) => return Err(ImportError::Read { line: 1, source }),
        }
    }
    let prefix = prefix.freeze();
    let id = file_id(mapping, &prefix);

    let (chunks_tx, chunks) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let (batches_tx, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    let mapping = mapping.clone();
    let parser = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader { chunks, current: Bytes::new() };
        match ImportReader::new(reader, &mapping, &id) {
            Ok(rows) => parse(rows, batch_rows, &batches_tx),
            // The receiver is gone only when the import was abandoned.
            Err(err) => drop(batches_tx.blocking_send(Err(err))),
        }
    });
    let feed = async move {
        if chunks_tx.send(Ok(prefix)).await.is_err() {
            return;
        }
        while let Some(chunk) = bytes.next().await {
            let failed = chunk.is_err();
            // A closed channel means the parser stopped (a bad file): stop reading.
            if chunks_tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    };
    Ok((batches, parser, feed))
}

/// Reads `rows` into batches of `batch_rows` and sends them until the file
/// ends, fails, or the receiver is gone.
fn parse(mut rows: ImportReader<'_>, batch_rows: usize, batches: &mpsc::Sender<Batch>) {
    loop {
        let mut batch = Vec::with_capacity(batch_rows);
        for row in rows.by_ref().take(batch_rows) {
            match row {
                Ok(row) => batch.push(row),
                Err(err) => {
                    let _ = batches.blocking_send(Err(err));
                    return;
                }
            }
        }
        if batch.is_empty() || batches.blocking_send(Ok(batch)).is_err() {
            return;
        }
    }
}

/// Admits and ingests each batch as it arrives, and sums up the outcomes.
///
/// Up to [`APPENDS_IN_FLIGHT`] batches are in flight at once, in file order:
/// the pipeline runs over one batch while earlier ones wait for their
/// commit, and the appender commits waiting batches together.
async fn ingest_batches(
    ingest: &Ingest,
    grant: WriteGrant,
    caller: &Caller,
    mut batches: mpsc::Receiver<Batch>,
    parser: JoinHandle<()>,
    options: ImportOptions,
    mut progress: impl FnMut(u64) + Send,
) -> Result<ImportSummary, FileImportError> {
    let mut summary = ImportSummary::default();
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && in_flight.len() < APPENDS_IN_FLIGHT => match batch {
                Some(rows) => in_flight.push_back(ingest_batch(ingest, grant, caller, rows?)),
                None => open = false,
            },
            done = in_flight.next(), if !in_flight.is_empty() => {
                let done = done.expect("a non-empty set yields")?;
                summary.rows += done.rows;
                summary.accepted += done.accepted;
                summary.duplicates += done.duplicates;
                summary.record(done.rejections, options.listed_rejections);
                progress(summary.rows);
            }
            else => break,
        }
    }
    // The channel also closes when the parser panics: only a parser that
    // returned has read the whole file.
    parser.await.map_err(|_| FileImportError::ReaderStopped)?;
    Ok(summary)
}

/// Batches of rows being ingested at once by one import.
const APPENDS_IN_FLIGHT: usize = 3;

/// What became of one batch of rows.
struct BatchOutcome {
    rows: u64,
    accepted: u64,
    duplicates: u64,
    /// In line order.
    rejections: Vec<RowRejection>,
}

/// Admits and ingests one batch of rows.
async fn ingest_batch(
    ingest: &Ingest,
    grant: WriteGrant,
    caller: &Caller,
    rows: Vec<Row>,
) -> Result<BatchOutcome, FileImportError> {
    let mut outcome = BatchOutcome { rows: rows.len() as u64, accepted: 0, duplicates: 0, rejections: Vec::new() };
    let mut lines = Vec::with_capacity(rows.len());
    let mut messages: Vec<Value> = Vec::with_capacity(rows.len());
    for row in rows {
        match row.result {
            Ok(message) => {
                lines.push(row.line);
                messages.push(message);
            }
            Err(err) => outcome.rejections.push(RowRejection { line: row.line, reasons: vec![err.to_string()] }),
        }
    }
    if !messages.is_empty() {
        let _admission = ingest.admit(messages.len()).await?;
        let results = ingest.ingest(grant, caller, messages).await?;
        for (line, result) in lines.into_iter().zip(results) {
            match result.outcome {
                Outcome::Accepted { .. } => outcome.accepted += 1,
                Outcome::Duplicate { .. } => outcome.duplicates += 1,
                Outcome::Rejected { reasons, .. } => outcome
                    .rejections
                    .push(RowRejection { line, reasons: reasons.into_iter().map(|reason| reason.message).collect() }),
            }
        }
    }
    // Batches are summed in line order, so sorting each one keeps the whole
    // list in line order and the listed rejections the first ones.
    outcome.rejections.sort_by_key(|rejection| rejection.line);
    Ok(outcome)
}

impl ImportSummary {
    /// Logs the summary of an import that ran for request `request_id`.
    pub fn log(&self, request_id: &str) {
        tracing::info!(
            request_id,
            rows = self.rows,
            accepted = self.accepted,
            duplicates = self.duplicates,
            rejected = self.rejected,
            "file imported"
        );
    }

    fn record(&mut self, rejections: Vec<RowRejection>, listed: usize) {
        self.rejected += rejections.len() as u64;
        for rejection in rejections {
            if self.rejections.len() < listed {
                self.rejections.push(rejection);
            } else {
                self.rejections_truncated = true;
            }
        }
    }
}

/// A blocking [`Read`] over chunks sent from the async side; the end of the
/// channel is the end of the file.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        // An empty chunk is skipped: returning 0 for it would read as the end.
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn mapping(format: &str) -> ImportMapping {
        let columns = if format == "csv" { ["customer_id", "email"] } else { ["/customer_id", "/email"] };
        ImportMapping::from_json(
            &serde_json::json!({
                "format": format, "type": "identify", "user_id": columns[0], "traits": { "email": columns[1] },
            })
            .to_string(),
        )
        .unwrap()
    }

    /// A CSV well over the file id's prefix, so the prefix ends mid-row.
    fn big_csv() -> Vec<u8> {
        let mut csv = b"customer_id,email\n".to_vec();
        for n in 0..5_000 {
            writeln!(csv, "c{n},user{n}@example.com").unwrap();
            if n % 997 == 0 {
                writeln!(csv, ",nobody@example.com").unwrap();
            }
        }
        assert!(csv.len() > 2 * FILE_ID_PREFIX_LEN);
        csv
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// The rows the CLI would get: the file read whole, its id from its first bytes.
    fn rows_of_file(mapping: &ImportMapping, file: &[u8]) -> Vec<Row> {
        let id = file_id(mapping, file);
        ImportReader::new(io::Cursor::new(file.to_vec()), mapping, &id).unwrap().map(Result::unwrap).collect()
    }

    /// The rows the upload gets: the file in chunks of the given sizes, in turn.
    async fn rows_of_stream(mapping: &ImportMapping, file: &[u8], sizes: &[usize]) -> Result<Vec<Row>, ImportError> {
        let mut chunks = Vec::new();
        let (mut rest, mut turn) = (file, 0);
        while !rest.is_empty() {
            let size = sizes[turn % sizes.len()].min(rest.len());
            chunks.push(Ok(Bytes::copy_from_slice(&rest[..size])));
            rest = &rest[size..];
            turn += 1;
        }
        let (mut batches, parser, feed) = parse_stream(mapping, futures::stream::iter(chunks), 7).await?;
        let collect = async {
            let mut rows = Vec::new();
            while let Some(batch) = batches.recv().await {
                rows.extend(batch?);
            }
            Ok(rows)
        };
        let ((), rows) = tokio::join!(feed, collect);
        parser.await.unwrap();
        rows
    }

    #[tokio::test]
    async fn a_streamed_csv_gives_the_rows_and_message_ids_of_the_same_file_read_whole() {
        let mapping = mapping("csv");
        let file = big_csv();
        let expected = rows_of_file(&mapping, &file);
        assert_eq!(expected.len(), 5_000 + 6);
        for sizes in [&[1_000_000][..], &[1, 7, 4096, 65_535], &[65_537, 3]] {
            assert_eq!(rows_of_stream(&mapping, &file, sizes).await.unwrap(), expected, "chunks of {sizes:?}");
        }
    }

    #[tokio::test]
    async fn a_streamed_gzip_ndjson_gives_the_rows_and_message_ids_of_the_same_file_read_whole() {
        let mapping = mapping("ndjson");
        let mut ndjson = Vec::new();
        for n in 0..3_000 {
            writeln!(ndjson, r#"{{"customer_id": "c{n}", "email": "user{n}@example.com"}}"#).unwrap();
        }
        let file = gzip(&ndjson);
        let expected = rows_of_file(&mapping, &file);
        assert_eq!(expected.len(), 3_000);
        assert_eq!(rows_of_stream(&mapping, &file, &[0, 1, 999, 20_000]).await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_stream_that_breaks_off_ends_with_a_read_error_naming_the_line() {
        let mapping = mapping("csv");
        let file = big_csv();
        let chunks = vec![
            Ok(Bytes::copy_from_slice(&file[..100_000])),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "the client went away")),
        ];
        let (mut batches, parser, feed) = parse_stream(&mapping, futures::stream::iter(chunks), 100).await.unwrap();
        let collect = async {
            let mut last = None;
            while let Some(batch) = batches.recv().await {
                last = Some(batch);
            }
            last
        };
        let ((), last) = tokio::join!(feed, collect);
        parser.await.unwrap();
        let error = last.unwrap().unwrap_err();
        assert!(matches!(error, ImportError::Read { line, .. } if line > 1000), "{error}");
        assert!(error.to_string().contains("the client went away"), "{error}");
    }

    #[tokio::test]
    async fn an_unreadable_gzip_fails_before_any_row() {
        let mapping = mapping("csv");
        let mut file = gzip(b"customer_id,email\nc1,a@example.com\n");
        file.truncate(12);
        let error = rows_of_stream(&mapping, &file, &[5]).await.unwrap_err();
        assert!(matches!(error, ImportError::Gzip { .. }), "{error}");
    }

    #[test]
    fn a_summary_lists_only_the_first_rejections_and_says_so() {
        let mut summary = ImportSummary::default();
        let rejection = |line| RowRejection { line, reasons: vec!["bad".into()] };
        summary.record(vec![rejection(2), rejection(3)], 3);
        assert!(!summary.rejections_truncated);
        summary.record(vec![rejection(5), rejection(9)], 3);
        assert_eq!(summary.rejected, 4);
        assert_eq!(summary.rejections.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 5]);
        assert!(summary.rejections_truncated);
    }
}
