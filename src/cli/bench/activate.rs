//! `onepd bench activate`: how fast activation delivers the log to an
//! adapter running in its own process, and how long an event takes from its
//! append to its delivery.
//!
//! 1. A child process writes the synthetic workload of `bench rebuild`
//!    (visitors with emails and phones; payloads sealed).
//! 2. The raw limit: the log read and decoded once, as activation reads it.
//! 3. `onepd adapter serve meta_capi` runs as a child process, its endpoint a
//!    local HTTP sink standing in for Meta; a destination (`--adapter grpc`)
//!    points at it from the beginning of the log. Every event is enriched
//!    with its profile, its identifiers normalized and hashed to Meta's
//!    rules, sent over gRPC, mapped by the adapter and posted to the sink.
//!    Events/s is the backfill of the whole workload.
//! 4. Lag: more events are appended at a steady rate while activation
//!    follows the log; each one's lag is from its commit to its delivery.

use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use onepd_adapters::EventLog;
use onepd_adapters::activation::{Activation, ActivationOptions, admin};
use onepd_adapters::live::Live;
use onepd_adapters::profiles::runner::ProfilesProjection;
use onepd_adapters::readstore::ReadStore;
use onepd_commands::workspace::{NewWorkspace, WorkspaceConfig};
use onepd_domain::events::destination::{DestinationCreated, DestinationFilters, RetryPolicy};
use onepd_domain::events::workspace::{Industry, source_stream};
use onepd_domain::policy::DestinationPolicy;
use onepd_domain::{AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, ProjectionStore, Timestamp};
use onepd_projections::directory::Directory;
use onepd_projections::runner::{DEFAULT_CACHE_BYTES, Runner};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

use super::profiles::{Generator, Read, Workload, WorkloadArgs, percentile, read_all};
use crate::output;

#[derive(Debug, Args)]
pub struct ActivateArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Events appended while activation follows the log, to measure the lag.
    #[arg(long, default_value_t = 20_000)]
    live_events: u64,
    /// The rate those events are appended at, per second.
    #[arg(long, default_value_t = 5_000)]
    live_rate: u64,
    /// The workspace's industry: `healthcare` (or any restricted one, with
    /// the destination needing no consent, as the events state none)
    /// measures deny-by-default scrubbing for the ad platform.
    #[arg(long, default_value = "general")]
    industry: Industry,
}

pub(super) async fn run(args: ActivateArgs) -> anyhow::Result<ExitCode> {
    let workload = Workload::create(&args.workload).await?;
    let result = measure(&workload, &args).await;
    workload.remove().await;
    let m = result?;
    let rate = m.events as f64 / m.seconds;
    let raw = m.events as f64 / m.read_seconds;
    let (p50, p99) = (percentile(&m.lags, 0.5), percentile(&m.lags, 0.99));
    if args.workload.json {
        output::json(&json!({
            "backend": args.workload.backend.name(), "events": m.events, "seconds": m.seconds,
            "activate_events_per_second": rate, "read_events_per_second": raw, "ratio_to_read": rate / raw,
            "posted_to_sink": m.posted, "live_events": m.lags.len(), "live_rate": args.live_rate,
            "lag_p50_ms": p50.as_secs_f64() * 1e3, "lag_p99_ms": p99.as_secs_f64() * 1e3,
        }));
    } else {
        output::line(format!(
            "activate on {}: {rate:.0} events/s to an adapter process with hashing ({} events, {:.2} s); \
             log read alone {raw:.0} events/s (ratio {:.2})",
            args.workload.backend.name(),
            m.events,
            m.seconds,
            rate / raw
        ));
        output::line(format!(
            "  lag from append to delivery at {} events/s: p50 {:.1} ms, p99 {:.1} ms ({} events)",
            args.live_rate,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            m.lags.len()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

struct Measured {
    events: u64,
    seconds: f64,
    read_seconds: f64,
    posted: u64,
    lags: Vec<Duration>,
}

/// A local HTTP server standing in for Meta: counts the events posted to it.
pub(super) async fn sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let posted = Arc::new(AtomicU64::new(0));
    let counter = posted.clone();
    let app = axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
        let counter = counter.clone();
        async move {
            // It stands in for the platform: counting the events is all it
            // does, so its own cost weighs little on the figures.
            #[derive(serde::Deserialize)]
            struct Posted {
                data: Vec<serde::de::IgnoredAny>,
            }
            let n = serde_json::from_slice::<Posted>(&body).map_or(0, |posted| posted.data.len()) as u64;
            counter.fetch_add(n, Ordering::Relaxed);
            axum::Json(json!({ "events_received": n }))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(onepd_adapters::http::listener(listener), app).await });
    Ok((url, posted))
}

/// Starts `onepd adapter serve meta_capi` and returns it with its address.
pub(super) async fn adapter_process() -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["adapter", "serve", "meta_capi", "--listen", "127.0.0.1:0"])
        .env("ONEPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the adapter process")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some((_, addr)) = line.split_once(" listening on ") {
            return Ok((child, format!("http://{}", addr.trim())));
        }
    }
    anyhow::bail!("the adapter process stopped before listening")
}

async fn measure(workload: &Workload, args: &ActivateArgs) -> anyhow::Result<Measured> {
    let log = EventLog::open(workload.config()).await.context("opening the benchmark log")?;
    let (events, read_seconds) = read_all(&log, Read::Whole).await?;
    let workspace = workload.workspace;
    let config = WorkspaceConfig::default();
    let spec = NewWorkspace { name: "bench".into(), industry: args.industry, default_region: None };
    let created = config.create(workspace, &spec, "onepd bench activate")?;
    log.append(config.request(workspace, vec![created])).await.context("creating the workspace")?;
    let (sink_url, posted) = sink().await?;
    let (mut adapter, adapter_url) = adapter_process().await?;
    admin::create_destination(
        &log,
        workspace,
        DestinationCreated {
            destination_id: Uuid::now_v7(),
            name: "meta".into(),
            adapter: "grpc".into(),
            url: Some(adapter_url),
            settings: json!({ "pixel_id": "1", "access_token": "bench", "endpoint": sink_url }),
            filters: DestinationFilters::default(),
            traits: Vec::new(),
            start: Position(1),
            retry: RetryPolicy::default(),
            // The synthetic events state no consent: the benchmark measures
            // scrubbing, not a restricted industry's default consent rule.
            policy: DestinationPolicy { consent_not_required: true, ..DestinationPolicy::default() },
        },
        "onepd bench activate",
    )
    .await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let live = Arc::new(AtomicBool::new(false));
    let lags: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let on_delivered = {
        let (delivered, live, lags) = (delivered.clone(), live.clone(), lags.clone());
        Arc::new(move |recorded: &[Timestamp], now: Timestamp| {
            delivered.fetch_add(recorded.len() as u64, Ordering::Relaxed);
            if live.load(Ordering::Relaxed) {
                let mut lags = lags.lock().expect("lags");
                lags.extend(recorded.iter().map(|at| Duration::from_micros((now.0 - at.0).max(0) as u64)));
            }
        })
    };
    let directory = Live::<Directory>::follow(&log, "directory").await?;
    // Runs take each event's profile from the profiles read model: build it
    // first (not timed), and keep it following for the lag measurement.
    let read_store: Arc<dyn ProjectionStore> =
        Arc::new(ReadStore::open(&workload.url).await.context("opening the read store")?);
    Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, read_store.clone())
        .rebuild(&|_, _| {})
        .await
        .context("building the profiles")?;
    let projection = ProfilesProjection::spawn(log.clone(), read_store.clone(), DEFAULT_CACHE_BYTES);
    let bar = output::progress(events, args.workload.json, "{spinner} delivering [{bar:40}] {pos}/{len} {per_sec}");
    let started = Instant::now();
    let activation = Activation::spawn(
        log.clone(),
        directory,
        onepd_adapters::activation::connect(),
        read_store.clone(),
        ActivationOptions { on_delivered: Some(on_delivered), ..ActivationOptions::default() },
    )
    .await?;
    while delivered.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bar.set_position(delivered.load(Ordering::Relaxed));
        anyhow::ensure!(adapter.try_wait()?.is_none(), "the adapter process stopped");
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Lag: events appended at a steady rate while activation follows.
    live.store(true, Ordering::Relaxed);
    let mut generator = Generator::new(workspace, Uuid::now_v7());
    let stream = source_stream(Uuid::now_v7());
    let per_tick = (args.live_rate / 50).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut appended = 0;
    while appended < args.live_events {
        tick.tick().await;
        let count = per_tick.min(args.live_events - appended);
        let batch: Vec<NewEvent> = (0..count).map(|_| live_event(&mut generator)).collect();
        let request = AppendRequest { stream_id: stream.clone(), expected: ExpectedVersion::Any, events: batch };
        log.append(request).await.context("appending live events")?;
        appended += count;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < events + args.live_events {
        anyhow::ensure!(Instant::now() < deadline, "the live events were not all delivered within 2 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    activation.stop();
    projection.stop();
    let _ = adapter.kill().await;
    log.close().await;
    let lags = std::mem::take(&mut *lags.lock().expect("lags"));
    anyhow::ensure!(!lags.is_empty(), "no live event was delivered");
    Ok(Measured { events, seconds, read_seconds, posted: posted.load(Ordering::Relaxed), lags })
}

/// A workload event with its own message id (the generator's ids were used
/// by the backfill).
fn live_event(generator: &mut Generator) -> NewEvent {
    let mut event = generator.next();
    event.event_id = onepd_domain::EventId(Uuid::new_v4());
    event
}
