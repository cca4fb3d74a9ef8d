//! `onepd import FILE --source S --mapping M`: a CSV or NDJSON file (gzip
//! too) becomes messages through the ordinary ingest pipeline, streamed in
//! batches, so memory stays flat however large the file is. Each row's
//! `messageId` comes from the file and the row, so importing the same file
//! again stores nothing twice. The import loop itself is
//! `onepd_adapters::ingest::import`, shared with the HTTP and gRPC uploads;
//! this file opens the file, finds the source and prints the summary.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use onepd_adapters::ingest::import::{ImportOptions, ImportSummary, import_rows};
use onepd_adapters::ingest::{Caller, Ingest, IngestConfig, MAX_BATCH_MESSAGES};
use onepd_commands::import::{FILE_ID_PREFIX_LEN, ImportMapping, ImportReader, file_id};
use onepd_projections::directory::WriteGrant;
use serde_json::{Value, json};
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The file: CSV or NDJSON (by the mapping's `format`, else the file
    /// name), optionally gzip-compressed.
    file: PathBuf,
    /// The source (name or id) the rows are ingested as.
    #[arg(long)]
    source: String,
    /// The mapping: a JSON file naming the message type and which columns
    /// are ids, traits, properties and the timestamp.
    #[arg(long)]
    mapping: PathBuf,
    /// Rows per append.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    anyhow::ensure!(
        (1..=MAX_BATCH_MESSAGES).contains(&args.batch),
        "--batch: expected 1 to {MAX_BATCH_MESSAGES}, found {}",
        args.batch
    );
    let text = std::fs::read_to_string(&args.mapping).with_context(|| format!("reading {}", args.mapping.display()))?;
    let mut mapping = ImportMapping::from_json(&text).with_context(|| format!("{}", args.mapping.display()))?;
    let name = args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    mapping.detect_format(&name)?;
    let open = || std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()));
    let mut prefix = Vec::with_capacity(FILE_ID_PREFIX_LEN);
    open()?.take(FILE_ID_PREFIX_LEN as u64).read_to_end(&mut prefix)?;
    let id = file_id(&mapping, &prefix);
    let rows = ImportReader::new(std::io::BufReader::with_capacity(1 << 20, open()?), &mapping, &id)
        .with_context(|| format!("{}", args.file.display()))?;

    let (log, directory, workspace) = directory::open(&args.target).await?;
    let source = directory.find_source(workspace, &args.source).ok_or_else(|| {
        anyhow::anyhow!("source {:?}: not found in workspace {:?}", args.source, args.target.workspace)
    })?;
    let grant = WriteGrant { workspace, source_id: source.id, key_id: Uuid::nil() };
    let ingest = Ingest::start(log.clone(), IngestConfig::default()).await?;
    let caller = Caller { request_id: format!("import-{id}"), ..Caller::default() };

    let bar = output::progress(0, args.json, "{spinner} importing {pos} rows ({per_sec})");
    let started = Instant::now();
    // The CLI lists every rejected row (`--json` is the complete report).
    let options = ImportOptions { batch_rows: args.batch, listed_rejections: usize::MAX };
    let summary = import_rows(&ingest, grant, &caller, rows, options, |rows| bar.set_position(rows))
        .await
        .with_context(|| format!("importing {}", args.file.display()))?;
    bar.finish_and_clear();
    log.close().await;
    let seconds = started.elapsed().as_secs_f64();
    print(&args, &summary, seconds);
    Ok(ExitCode::SUCCESS)
}

fn print(args: &ImportArgs, summary: &ImportSummary, seconds: f64) {
    let rate = summary.rows as f64 / seconds.max(1e-9);
    if args.json {
        let rejections: Vec<Value> = summary
            .rejections
            .iter()
            .map(|rejection| json!({ "line": rejection.line, "reasons": rejection.reasons }))
            .collect();
        output::json(&json!({
            "file": args.file.display().to_string(),
            "rows": summary.rows,
            "accepted": summary.accepted,
            "duplicates": summary.duplicates,
            "rejected": summary.rejected,
            "seconds": seconds,
            "rows_per_second": rate,
            "rejections": rejections,
        }));
        return;
    }
    output::line(format!(
        "imported {}: {} rows in {seconds:.1} s ({rate:.0} rows/s): {} accepted, {} duplicate, {} rejected",
        args.file.display(),
        summary.rows,
        summary.accepted,
        summary.duplicates,
        summary.rejected
    ));
    const SHOWN: usize = 100;
    for rejection in summary.rejections.iter().take(SHOWN) {
        output::line(format!("  line {}: {}", rejection.line, rejection.reasons.join("; ")));
    }
    if summary.rejected > SHOWN as u64 {
        output::line(format!("  … and {} more (--json lists them all)", summary.rejected - SHOWN as u64));
    }
}
