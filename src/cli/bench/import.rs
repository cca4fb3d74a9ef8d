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

use super::Backend;
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
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = tempfile::tempdir_in(&args.dir).context("creating the benchmark directory")?;
    let csv = dir.path().join("orders.csv");
    write_csv(&csv, args.rows, args.json)?;

    let (url, database) =
        super::scratch_store(args.backend, &args.postgres_url, "onepd_bench_import", &dir.path().join("store.db"))
            .await?;
    let result = measure(&args, &url, &csv).await;
    if let Some(name) = database
        && let Err(err) = onepd_adapters::store::postgres::drop_database(&args.postgres_url, &name).await
    {
        eprintln!("warning: dropping database {name}: {err}");
    }
    let (rows, accepted, seconds) = result?;
    let rate = rows as f64 / seconds;
    let peak_rss_mb = peak_rss_bytes().map(|bytes| bytes as f64 / (1024.0 * 1024.0));
    if args.json {
        output::json(&json!({
            "backend": args.backend.name(),
            "rows": rows,
            "accepted": accepted,
            "seconds": seconds,
            "rows_per_second": rate,
            "peak_rss_mb": peak_rss_mb,
        }));
    } else {
        output::line(format!(
            "import on {}: {rate:.0} rows/s; {rows} rows in {seconds:.1} s ({accepted} accepted); peak RSS {}",
            args.backend.name(),
            peak_rss_mb.map_or_else(|| "unknown".to_owned(), |mb| format!("{mb:.0} MB"))
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(args: &ImportArgs, url: &str, csv: &std::path::Path) -> anyhow::Result<(u64, u64, f64)> {
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

    let started = Instant::now();
    let file = std::fs::File::open(csv)?;
    let rows =
        ImportReader::new(std::io::BufReader::with_capacity(1 << 20, file), &mapping, &file_id(&mapping, b"bench"))?;
    let options = ImportOptions { batch_rows: args.batch, ..ImportOptions::default() };
    let summary = import_rows(&ingest, grant, &caller, rows, options, |rows| bar.set_position(rows)).await?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    log.close().await;
    anyhow::ensure!(
        summary.rejected == 0 && summary.accepted == args.rows,
        "expected every row accepted, found {} accepted and {} rejected (first: {:?})",
        summary.accepted,
        summary.rejected,
        summary.rejections.first()
    );
    Ok((summary.rows, summary.accepted, seconds))
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
