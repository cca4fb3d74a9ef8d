//! `onepd bench export`: the rate of `onepd events export` to NDJSON and to
//! Parquet on a synthetic log, beside the raw read rate of the same rows in
//! the same run (the database's own limit under the export), and the peak
//! memory of an export of the whole log and of a tenth of it (flat in the
//! range's size).

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use onepd_adapters::EventLog;
use onepd_adapters::export::{End, ExportFilter, ExportSpec, Start};
use onepd_domain::{EventStore, Position};
use serde_json::{Value, json};

use super::profiles::{Workload, WorkloadArgs};
use super::scale::{peak_mb, reset_peak};
use crate::cli::events::{Format, export_into, sink};
use crate::output;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
}

/// Rows per page of the raw read.
const RAW_PAGE: usize = 5_000;

pub(super) async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let workload = Workload::create(&args.workload).await?;
    let result = measure(&workload, &args).await;
    workload.remove().await;
    let figures = result?;
    if args.workload.json {
        output::json(&figures);
    } else {
        print(&figures);
    }
    Ok(ExitCode::SUCCESS)
}

/// Exports positions `1..=to` in `format` to a file in `dir`: events/s,
/// bytes, peak RSS (MB).
async fn export_rate(log: &EventLog, to: u64, format: Format, dir: &std::path::Path) -> anyhow::Result<Value> {
    let path = dir.join(match format {
        Format::Ndjson => "export.ndjson",
        Format::Parquet => "export.parquet",
    });
    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let out: Box<dyn Write + Send> = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let spec = ExportSpec {
        start: Start::Position(1),
        end: End::Position(to),
        filter: ExportFilter::default(),
        with_rows: format == Format::Parquet,
    };
    reset_peak();
    let started = Instant::now();
    let mut sink = sink(format, out)?;
    let events = export_into(log, spec, |line| sink.take(&line)).await?;
    sink.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    Ok(json!({
        "events": events,
        "seconds": seconds,
        "events_per_second": events as f64 / seconds,
        "bytes": bytes,
        "peak_rss_mb": peak_mb(),
    }))
}

async fn measure(workload: &Workload, args: &ExportArgs) -> anyhow::Result<Value> {
    let log = EventLog::open(workload.config()).await.context("opening the benchmark log")?;
    let head = log.head().await?.0;
    let dir = tempfile::tempdir_in(std::env::temp_dir()).context("a directory for the export files")?;

    // The raw limit: the same rows, as stored, page by page.
    let started = Instant::now();
    let (mut next, mut rows, mut raw_bytes) = (1, 0u64, 0u64);
    while next <= head {
        let page = log.stored_rows(Position(next), Position(head), RAW_PAGE).await?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        rows += page.len() as u64;
        raw_bytes += page.iter().map(|row| (row.data.len() + row.metadata.len()) as u64).sum::<u64>();
    }
    let raw_rate = rows as f64 / started.elapsed().as_secs_f64();

    let ndjson = export_rate(&log, head, Format::Ndjson, dir.path()).await?;
    let parquet = export_rate(&log, head, Format::Parquet, dir.path()).await?;
    let tenth = export_rate(&log, (head / 10).max(1), Format::Ndjson, dir.path()).await?;
    log.close().await;
    let ratio = |figures: &Value| figures["events_per_second"].as_f64().unwrap_or(0.0) / raw_rate;
    Ok(json!({
        "backend": args.workload.backend.name(),
        "events": head,
        "raw_read_events_per_second": raw_rate,
        "raw_read_mb": raw_bytes as f64 / 1e6,
        "ndjson": ndjson,
        "ndjson_ratio": ratio(&ndjson),
        "parquet": parquet,
        "parquet_ratio": ratio(&parquet),
        "tenth_ndjson": tenth,
    }))
}

fn print(f: &Value) {
    let line = |text: String| output::line(text);
    let rate = |figures: &Value| figures["events_per_second"].as_f64().unwrap_or(0.0);
    line(format!("onepd bench export: {} events on {}", f["events"], f["backend"].as_str().unwrap_or_default()));
    line(format!(
        "  raw read of the stored rows  {:>9.0} events/s ({:.0} MB of payloads and metadata)",
        f["raw_read_events_per_second"].as_f64().unwrap_or(0.0),
        f["raw_read_mb"].as_f64().unwrap_or(0.0)
    ));
    for (name, key, ratio) in [("NDJSON", "ndjson", "ndjson_ratio"), ("Parquet", "parquet", "parquet_ratio")] {
        line(format!(
            "  export to {name:<8}           {:>9.0} events/s ({:.2} of the raw read), {:.0} MB file, peak RSS {:.0} MB",
            rate(&f[key]),
            f[ratio].as_f64().unwrap_or(0.0),
            f[key]["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            f[key]["peak_rss_mb"].as_f64().unwrap_or(0.0)
        ));
    }
    line(format!(
        "  a tenth of the range, NDJSON  {:>9.0} events/s, peak RSS {:.0} MB (flat in the range's size)",
        rate(&f["tenth_ndjson"]),
        f["tenth_ndjson"]["peak_rss_mb"].as_f64().unwrap_or(0.0)
    ));
}
