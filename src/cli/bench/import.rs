//! `onepd bench import`: rows/s of a CSV import through the whole ingest
//! pipeline into a fresh store, and the process's peak memory, which must not
//! grow with the file.
//!
//! The CSV (`--rows` realistic order rows, ~140 bytes each) is written to disk
//! before the clock starts; the timed part reads it back the way `onepd
//! import` does: streaming, parsing, mapping, the pipeline, sealed appends.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use onepd_adapters::ingest::import::{ImportOptions, import_rows};
use onepd_adapters::ingest::{Caller, Ingest, IngestConfig};
use onepd_adapters::{EventLog, MasterKey, StoreConfig};
use onepd_commands::import::{ImportMapping, ImportReader, file_id};
use onepd_commands::workspace::{BootstrapIds, NewWorkspace, bootstrap_workspace};
use onepd_domain::events::workspace::{Industry, SourceKind};
use onepd_domain::{EventStore, WorkspaceId};
use onepd_projections::directory::WriteGrant;
use serde_json::json;
use uuid::Uuid;

use super::{Backend, ScratchStore};
use crate::output;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Rows in the generated CSV.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Which database to import into.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Rows per append.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// The PostgreSQL server to create the benchmark's database on.
    #[arg(long, env = "ONEPD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where the CSV and the SQLite store go (removed afterwards).
    #[arg(long, default_value = "./data")]
    dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Do not measure `bench append` (the log's append rate and the raw
    /// insert limit) for reference.
    #[arg(long)]
    skip_append: bool,
}

const MAPPING: &str = r#"{
  "format": "csv", "type": "track", "event": "Order Completed",
  "user_id": "customer_id",
  "traits": { "email": "email" },
  "properties": { "order_id": "order_id", "revenue": "total", "currency": "currency", "sku": "sku" },
  "timestamp": { "column": "ordered_at", "format": "rfc3339" },
  "types": { "total": "number" }
}"#;

pub(super) async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rows > 0, "--rows: expected at least 1, found 0");
    let store = ScratchStore::create(args.backend, &args.postgres_url, &args.dir, "onepd_bench_import").await?;
    let csv = store.path().join("orders.csv");
    let result = match write_csv(&csv, args.rows, args.json) {
        Ok(()) => measure(&args, &store.url, &csv).await,
        Err(err) => Err(err),
    };
    store.remove().await;
    let measured = result?;
    // Read before the reference runs, which has memory of its own.
    let peak_rss_mb = peak_rss_bytes().map(|bytes| bytes as f64 / (1024.0 * 1024.0));
    let reference = match args.skip_append {
        true => None,
        false => Some(
            super::append::reference(args.backend, args.rows, args.batch, &args.postgres_url, &args.dir, args.json)
                .await
                .context("measuring bench append for reference")?,
        ),
    };
    print(&args, &measured, peak_rss_mb, reference.as_ref());
    Ok(ExitCode::SUCCESS)
}

/// What the two imports of the file measured.
struct Measured {
    rows: u64,
    accepted: u64,
    seconds: f64,
    /// The second import of the same file: rows accepted (must be 0),
    /// duplicates, seconds.
    again: (u64, u64, f64),
}

fn print(args: &ImportArgs, measured: &Measured, peak_rss_mb: Option<f64>, reference: Option<&serde_json::Value>) {
    let rate = measured.rows as f64 / measured.seconds;
    let field = |name: &str| reference.and_then(|report| report[name].as_f64());
    let (append_rate, raw_rate) = (field("store_events_per_sec"), field("raw_events_per_sec"));
    let ratio = |limit: Option<f64>| limit.map(|limit| (rate / limit * 1000.0).round() / 1000.0);
    let (again_accepted, again_duplicates, again_seconds) = measured.again;
    if args.json {
        output::json(&json!({
            "backend": args.backend.name(),
            "rows": measured.rows,
            "accepted": measured.accepted,
            "seconds": measured.seconds,
            "rows_per_second": rate.round(),
            "peak_rss_mb": peak_rss_mb.map(f64::round),
            "second_import": { "accepted": again_accepted, "duplicates": again_duplicates, "seconds": again_seconds },
            "append_events_per_second": append_rate,
            "raw_insert_events_per_second": raw_rate,
            "ratio_to_append": ratio(append_rate),
            "ratio_to_raw_insert": ratio(raw_rate),
        }));
        return;
    }
    output::line(format!(
        "import on {}: {rate:.0} rows/s; {} rows in {:.1} s ({} accepted); peak RSS {}",
        args.backend.name(),
        measured.rows,
        measured.seconds,
        measured.accepted,
        peak_rss_mb.map_or_else(|| "unknown".to_owned(), |mb| format!("{mb:.0} MB"))
    ));
    output::line(format!(
        "  second import of the same file: {again_accepted} accepted, {again_duplicates} duplicates in {again_seconds:.1} s"
    ));
    if let (Some(append_rate), Some(raw_rate)) = (append_rate, raw_rate) {
        output::line(format!(
            "  event log append {append_rate:.0} events/s, raw insert {raw_rate:.0} events/s; import ÷ append {:.2}, import ÷ raw {:.2}",
            rate / append_rate,
            rate / raw_rate
        ));
    }
}

async fn measure(args: &ImportArgs, url: &str, csv: &std::path::Path) -> anyhow::Result<Measured> {
    let log = EventLog::open(StoreConfig::new(url, Some(MasterKey::generate()))).await?;
    let workspace = WorkspaceId(Uuid::now_v7());
    let spec = NewWorkspace { name: "bench".into(), industry: Industry::General, default_region: Some("US".into()) };
    let ids = BootstrapIds {
        token_id: Uuid::now_v7(),
        token_secret: rand::random(),
        source_id: Uuid::now_v7(),
        key_id: Uuid::now_v7(),
        key_secret: rand::random(),
    };
    let boot = bootstrap_workspace(workspace, &spec, SourceKind::File, ids, "onepd bench import")?;
    log.append(boot.request).await.context("creating the benchmark workspace")?;
    let ingest = Ingest::start(log.clone(), IngestConfig::default()).await?;
    let grant = WriteGrant { workspace, source_id: boot.source_id, key_id: Uuid::nil() };
    let caller = Caller { request_id: "bench-import".into(), ..Caller::default() };
    let mapping = ImportMapping::from_json(MAPPING)?;
    let bar = output::progress(args.rows, args.json, "{spinner} importing [{bar:40}] {pos}/{len} rows ({per_sec})");

    let options = ImportOptions { batch_rows: args.batch, ..ImportOptions::default() };
    let import = || async {
        let started = Instant::now();
        let file = std::fs::File::open(csv)?;
        let rows = ImportReader::new(
            std::io::BufReader::with_capacity(1 << 20, file),
            &mapping,
            &file_id(&mapping, b"bench"),
        )?;
        bar.reset();
        let summary = import_rows(&ingest, grant, &caller, rows, options, |rows| bar.set_position(rows)).await?;
        anyhow::Ok((summary, started.elapsed().as_secs_f64()))
    };
    let (first, seconds) = import().await?;
    let (second, again_seconds) = import().await?;
    bar.finish_and_clear();
    log.close().await;
    anyhow::ensure!(
        first.rejected == 0 && first.accepted == args.rows,
        "expected every row accepted, found {} accepted and {} rejected (first: {:?})",
        first.accepted,
        first.rejected,
        first.rejections.first()
    );
    anyhow::ensure!(
        second.accepted == 0 && second.duplicates == args.rows,
        "expected the second import to add nothing, found {} accepted and {} duplicates",
        second.accepted,
        second.duplicates
    );
    Ok(Measured {
        rows: first.rows,
        accepted: first.accepted,
        seconds,
        again: (second.accepted, second.duplicates, again_seconds),
    })
}

/// Writes `rows` order rows: a few thousand customers, several orders each.
fn write_csv(path: &std::path::Path, rows: u64, json: bool) -> anyhow::Result<()> {
    let bar = output::progress(rows, json, "{spinner} writing the CSV [{bar:40}] {pos}/{len}");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(out, "order_id,customer_id,email,total,currency,sku,ordered_at")?;
    for n in 0..rows {
        let customer = n % 50_000;
        writeln!(
            out,
            "ord-{n},cust-{customer},Customer.{customer}@Example.com,{}.{:02},USD,SKU-{},2026-{:02}-{:02}T{:02}:{:02}:00Z",
            10 + n % 490,
            n % 100,
            n % 997,
            1 + n % 12,
            1 + n % 28,
            n % 24,
            n % 60
        )?;
        if n % 65_536 == 0 {
            bar.set_position(n);
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

/// The process's peak resident set (VmHWM), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
