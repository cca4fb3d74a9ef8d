//! `onepd bench scale`: the read side on a big, realistic log, measured in
//! one run — building the profiles, restarting with 1 and with several
//! destinations until a new event is readable and delivered everywhere,
//! peak memory of each step, activation backfill to a gRPC adapter with
//! hashing, live delivery while every destination follows the log, profile
//! reads — each beside the log's own read rate. Last, `onepd serve` itself
//! is started on the log as a process of its own, with 1 and with several
//! destinations: how soon an event appended while it was down is readable
//! and delivered everywhere, and its own peak memory.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use onepd_adapters::EventLog;
use onepd_adapters::activation::{Activation, ActivationOptions, admin};
use onepd_adapters::live::Live;
use onepd_adapters::profiles::ProfileReader;
use onepd_adapters::profiles::runner::ProfilesProjection;
use onepd_adapters::readstore::ReadStore;
use onepd_commands::workspace::{NewWorkspace, WorkspaceConfig};
use onepd_domain::events::destination::{DestinationCreated, DestinationFilters, RetryPolicy};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::{Industry, source_stream};
use onepd_domain::identity::IdentifierKind;
use onepd_domain::policy::DestinationPolicy;
use onepd_domain::{
    AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, Position, ProjectionStore, Timestamp,
};
use onepd_projections::directory::Directory;
use onepd_projections::profile::Lookup;
use onepd_projections::runner::Runner;
use serde_json::{Value, json};
use uuid::Uuid;

use super::activate::{adapter_process, sink};
use super::profiles::{Read, Workload, WorkloadArgs, percentile, read_all};
use crate::output;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Destinations of the second restart and of the second backfill.
    #[arg(long, default_value_t = 5)]
    destinations: usize,
    /// Events each destination's backfill delivers (the newest ones), and
    /// events appended while the projection is stopped, for its catch-up.
    #[arg(long, default_value_t = 100_000)]
    backfill: u64,
    /// The profiles cache budget in MB, as `onepd serve --read-cache-mb`.
    #[arg(long, default_value_t = 256)]
    read_cache_mb: usize,
    /// Profile reads of each kind to time.
    #[arg(long, default_value_t = 2_000)]
    reads: usize,
    /// Events appended while the live destinations follow the log, after
    /// each restart (in batches of 100).
    #[arg(long, default_value_t = 20_000)]
    live: usize,
}

pub(super) async fn run(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.destinations >= 1, "--destinations: expected at least 1, found 0");
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

fn print(f: &Value) {
    let line = |text: String| output::line(text);
    line(format!("read side at scale on {}, {} events:", f["backend"].as_str().unwrap_or(""), f["events"]));
    line(format!(
        "  raw read (the same rows, as stored) {:>8.0} events/s   the database's own limit",
        f["raw_read_events_per_second"].as_f64().unwrap_or(0.0)
    ));
    line(format!(
        "  log read (decode + unseal)         {:>9.0} events/s   ratio to raw {:.2}",
        f["read_events_per_second"].as_f64().unwrap_or(0.0),
        f["read_ratio_to_raw"].as_f64().unwrap_or(0.0)
    ));
    line(format!(
        "  profiles build (first projection)  {:>9.0} events/s   ratio to read {:.2}; peak RSS {:.0} MB",
        f["build_events_per_second"].as_f64().unwrap_or(0.0),
        f["build_ratio_to_read"].as_f64().unwrap_or(0.0),
        f["build_peak_rss_mb"].as_f64().unwrap_or(0.0)
    ));
    line(format!(
        "  projection catch-up after a stop   {:>9.0} events/s   {} events appended while it was down; peak RSS {:.0} MB",
        f["catch_up_events_per_second"].as_f64().unwrap_or(0.0),
        f["catch_up_events"],
        f["catch_up_peak_rss_mb"].as_f64().unwrap_or(0.0)
    ));
    for restart in f["restarts"].as_array().into_iter().flatten() {
        line(format!(
            "  restart, {} destination(s): new event readable after {:.2} s, delivered to all after {:.2} s; peak RSS {:.0} MB",
            restart["destinations"],
            restart["readable_seconds"].as_f64().unwrap_or(0.0),
            restart["delivered_seconds"].as_f64().unwrap_or(0.0),
            restart["peak_rss_mb"].as_f64().unwrap_or(0.0)
        ));
        line(format!(
            "  live, {} destination(s) following: {} new events appended in {:.2} s, delivered to all in {:.2} s ({:.0} events/s each); peak RSS {:.0} MB",
            restart["destinations"],
            restart["live_events"],
            restart["live_append_seconds"].as_f64().unwrap_or(0.0),
            restart["live_seconds"].as_f64().unwrap_or(0.0),
            restart["live_events_per_second_each"].as_f64().unwrap_or(0.0),
            restart["live_peak_rss_mb"].as_f64().unwrap_or(0.0)
        ));
    }
    for backfill in f["backfills"].as_array().into_iter().flatten() {
        line(format!(
            "  backfill to a gRPC adapter (hashing), {} destination(s) at once: {:.0} events/s each ({} events each); peak RSS {:.0} MB",
            backfill["destinations"],
            backfill["events_per_second_each"].as_f64().unwrap_or(0.0),
            backfill["events_each"],
            backfill["peak_rss_mb"].as_f64().unwrap_or(0.0)
        ));
    }
    for served in f["serve"].as_array().into_iter().flatten() {
        line(format!(
            "  onepd serve started, {} destination(s): event appended while down readable after {:.2} s, delivered to all after {:.2} s; after {} live events, peak RSS {:.0} MB",
            served["destinations"],
            served["readable_seconds"].as_f64().unwrap_or(0.0),
            served["delivered_seconds"].as_f64().unwrap_or(0.0),
            served["live_events"],
            served["peak_rss_mb"].as_f64().unwrap_or(0.0)
        ));
    }
    line(format!(
        "  GetProfile p99 {:.2} ms, point-in-time p99 {:.2} ms ({} reads each)",
        f["get_profile_p99_ms"].as_f64().unwrap_or(0.0),
        f["point_in_time_p99_ms"].as_f64().unwrap_or(0.0),
        f["reads"]
    ));
}

/// Forgets the process's peak resident set, so the next read of it covers
/// only what follows (Linux: `clear_refs` 5).
pub(super) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(super) fn peak_mb() -> f64 {
    peak_mb_of("self")
}

/// The peak resident set of process `pid` ("self" for this one), in MB.
fn peak_mb_of(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn measure(workload: &Workload, args: &ScaleArgs) -> anyhow::Result<Value> {
    let log = EventLog::open(workload.config()).await.context("opening the benchmark log")?;
    let store = Arc::new(ReadStore::open(&workload.url).await.context("opening the read store")?);
    let profiles: Arc<dyn ProjectionStore> = store.clone();
    let (cache, snapshots) = onepd_adapters::profiles::as_of::split_read_cache(args.read_cache_mb << 20);
    // The raw limit first, then the same rows decoded and opened: each
    // read finds the file in the OS cache as the other did.
    let (raw_rows, raw_seconds) = read_all(&log, Read::Raw).await?;
    let raw_rate = raw_rows as f64 / raw_seconds;
    let (events, read_seconds) = read_all(&log, Read::Whole).await?;
    let read_rate = events as f64 / read_seconds;

    // The first projection, as `serve` builds it on a log it has not seen.
    reset_peak();
    let started = Instant::now();
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, profiles.clone()).with_cache_bytes(cache);
    let built = runner.rebuild(&|_, _| {}).await.context("building the profiles")?;
    let build_seconds = started.elapsed().as_secs_f64();
    let build_peak = peak_mb();
    drop(built);

    let workspace = workload.workspace;
    let config = WorkspaceConfig::default();
    let spec = NewWorkspace { name: "bench".into(), industry: Industry::General, default_region: None };
    let created = config.create(workspace, &spec, "onepd bench scale")?;
    log.append(config.request(workspace, vec![created])).await.context("creating the workspace")?;
    let (sink_url, posted) = sink().await?;
    let (mut adapter, adapter_url) = adapter_process().await?;
    let destination = |name: String, start: Position| DestinationCreated {
        destination_id: Uuid::now_v7(),
        name,
        adapter: "grpc".into(),
        url: Some(adapter_url.clone()),
        settings: json!({ "pixel_id": "1", "access_token": "bench", "endpoint": sink_url }),
        filters: DestinationFilters::default(),
        traits: Vec::new(),
        start,
        retry: RetryPolicy::default(),
        policy: DestinationPolicy { consent_not_required: true, ..DestinationPolicy::default() },
    };
    let person = workload
        .sample
        .iter()
        .find(|identifier| identifier.kind == IdentifierKind::UserId)
        .or(workload.sample.first())
        .context("the workload is too small to sample a person from")?
        .clone();

    // Restarts: "from now" destinations, a new event for a known person.
    let mut restarts = Vec::new();
    let mut live_ids = Vec::new();
    let mut made = 0;
    for count in [1, args.destinations] {
        let head = log.head().await?;
        while made < count {
            made += 1;
            let entry = destination(format!("live-{made}"), head.next());
            live_ids.push(entry.destination_id);
            admin::create_destination(&log, workspace, entry, "onepd bench scale").await?;
        }
        reset_peak();
        let delivered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let projection = ProfilesProjection::spawn(log.clone(), profiles.clone(), cache);
        let activation = spawn_activation(&log, profiles.clone(), delivered.clone(), snapshots.clone()).await?;
        let event = new_event(workspace, &person);
        let position = log.append(event).await.context("appending the new event")?.positions[0];
        let reader = ProfileReader::new(profiles.clone(), log.clone());
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut running = || adapter_running(&mut adapter);
        let (readable, all_delivered) =
            readable_and_delivered(&reader, workspace, &person, position, started, deadline, &mut running, || {
                delivered.load(Ordering::Relaxed) >= count as u64
            })
            .await?;
        let restart_peak = peak_mb();
        // Live: new events while every destination follows the log, read
        // once for all of them by the shared reader.
        let before = delivered.load(Ordering::Relaxed);
        let started = Instant::now();
        append_live(&log, workload, args.live).await?;
        let append_seconds = started.elapsed().as_secs_f64();
        let expected = before + (args.live * count) as u64;
        wait_until(deadline, "the live events were not delivered within 10 minutes", &mut running, || {
            delivered.load(Ordering::Relaxed) >= expected
        })
        .await?;
        let live_seconds = started.elapsed().as_secs_f64();
        restarts.push(json!({
            "destinations": count, "readable_seconds": readable, "delivered_seconds": all_delivered,
            "peak_rss_mb": restart_peak,
            "live_events": args.live, "live_append_seconds": append_seconds, "live_seconds": live_seconds,
            "live_events_per_second_each": args.live as f64 / live_seconds,
            "live_peak_rss_mb": peak_mb(),
        }));
        activation.stop();
        projection.stop();
    }

    // Backfills of the newest events, to 1 and then to several destinations at once.
    let mut backfills = Vec::new();
    let mut done = live_ids;
    for count in [1, args.destinations] {
        // The destinations of the runs before are paused, so only these read.
        for id in done.drain(..) {
            admin::switch_destination(&log, workspace, id, true, "onepd bench scale").await?;
        }
        let head = log.head().await?;
        let from = Position(head.0.saturating_sub(args.backfill).max(1));
        let filter = onepd_domain::EventFilter {
            workspace: Some(workspace),
            event_types: vec![MessageAccepted::TYPE.into()],
            ..onepd_domain::EventFilter::default()
        };
        let each = count_events(&log, from, &filter).await?;
        for n in 0..count {
            let entry = destination(format!("backfill-{count}-{n}"), from);
            done.push(entry.destination_id);
            admin::create_destination(&log, workspace, entry, "onepd bench scale").await?;
        }
        reset_peak();
        let delivered = Arc::new(AtomicU64::new(0));
        let projection = ProfilesProjection::spawn(log.clone(), profiles.clone(), cache);
        let started = Instant::now();
        let activation = spawn_activation(&log, profiles.clone(), delivered.clone(), snapshots.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(3_600);
        while delivered.load(Ordering::Relaxed) < each * count as u64 {
            anyhow::ensure!(Instant::now() < deadline, "the backfill did not finish within an hour");
            anyhow::ensure!(adapter.try_wait()?.is_none(), "the adapter process stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        backfills.push(json!({
            "destinations": count, "events_each": each, "seconds": seconds,
            "events_per_second_each": each as f64 / seconds, "ratio_to_read": each as f64 / seconds / read_rate,
            "peak_rss_mb": peak_mb(),
        }));
        activation.stop();
        projection.stop();
    }

    // `onepd serve` itself, a process of its own, started on this log with
    // 1 and then several "from now" destinations (the others paused) and an
    // event appended while it was down: when it is readable and delivered
    // to all, and the process's own peak memory, then with live events.
    let mut served = Vec::new();
    for count in [1, args.destinations] {
        for id in done.drain(..) {
            admin::switch_destination(&log, workspace, id, true, "onepd bench scale").await?;
        }
        let head = log.head().await?;
        for n in 0..count {
            let entry = destination(format!("serve-{count}-{n}"), head.next());
            done.push(entry.destination_id);
            admin::create_destination(&log, workspace, entry, "onepd bench scale").await?;
        }
        let before = posted.load(Ordering::Relaxed);
        let position = log.append(new_event(workspace, &person)).await.context("appending the new event")?.positions[0];
        let started = Instant::now();
        let mut server = Served::start(&workload.url).await?;
        let reader = ProfileReader::new(profiles.clone(), log.clone());
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut running = || {
            server.ensure_running()?;
            adapter_running(&mut adapter)
        };
        let (readable, all_delivered) =
            readable_and_delivered(&reader, workspace, &person, position, started, deadline, &mut running, || {
                posted.load(Ordering::Relaxed) >= before + count as u64
            })
            .await?;
        let ready_peak = server.peak_mb();
        // Live events, appended by this process: the server sees them at
        // its next poll of the log, as it would another node's.
        let live_started = Instant::now();
        append_live(&log, workload, args.live).await?;
        let expected = before + (count * (1 + args.live)) as u64;
        wait_until(
            deadline,
            "serve: the live events were not delivered within 10 minutes",
            &mut || server.ensure_running(),
            || posted.load(Ordering::Relaxed) >= expected,
        )
        .await?;
        served.push(json!({
            "destinations": count, "readable_seconds": readable, "delivered_seconds": all_delivered,
            "ready_peak_rss_mb": ready_peak, "live_events": args.live,
            "live_seconds": live_started.elapsed().as_secs_f64(), "peak_rss_mb": server.peak_mb(),
        }));
        server.stop().await;
    }
    let _ = adapter.kill().await;

    // Profile reads: now and as of a past position.
    let reader = ProfileReader::new(profiles.clone(), log.clone());
    let head = log.head().await?;
    let (mut now, mut past) = (Vec::new(), Vec::new());
    for round in 0..args.reads * 2 {
        let identifier = workload.sample[round % workload.sample.len()].clone();
        let lookup = Lookup::Identifier(identifier);
        let started = Instant::now();
        if round % 2 == 0 {
            reader.get(workspace, &lookup, None).await?;
            now.push(started.elapsed());
        } else {
            let at = Position(1 + (round as u64 * 7_919) % head.0);
            reader.get(workspace, &lookup, Some(onepd_adapters::profiles::AsOf::Position(at))).await?;
            past.push(started.elapsed());
        }
    }
    // Catch-up, last (its events would change what the steps above read):
    // events appended while no projection ran (`--backfill` of them), then
    // the projection started on its checkpoint, as `serve` after a stop or
    // an import, until it reaches the head.
    append_live(&log, workload, args.backfill as usize).await?;
    let head = log.head().await?;
    reset_peak();
    let started = Instant::now();
    let projection = ProfilesProjection::spawn(log.clone(), profiles.clone(), cache);
    tokio::time::timeout(Duration::from_secs(3_600), projection.caught_up(head))
        .await
        .context("the projection did not catch up within an hour")?;
    let catch_up_seconds = started.elapsed().as_secs_f64();
    let catch_up_peak = peak_mb();
    projection.stop();
    log.close().await;
    store.close().await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let build_rate = events as f64 / build_seconds;
    Ok(json!({
        "backend": args.workload.backend.name(), "events": events, "read_cache_mb": args.read_cache_mb,
        "raw_read_events_per_second": raw_rate,
        "read_events_per_second": read_rate, "read_ratio_to_raw": read_rate / raw_rate,
        "build_seconds": build_seconds, "build_events_per_second": build_rate,
        "build_ratio_to_read": build_rate / read_rate, "build_peak_rss_mb": build_peak,
        "catch_up_events": args.backfill, "catch_up_seconds": catch_up_seconds,
        "catch_up_events_per_second": args.backfill as f64 / catch_up_seconds, "catch_up_peak_rss_mb": catch_up_peak,
        "restarts": restarts, "backfills": backfills, "serve": served,
        "reads": args.reads,
        "get_profile_p99_ms": ms(percentile(&now, 0.99)), "point_in_time_p99_ms": ms(percentile(&past, 0.99)),
    }))
}

/// The events from `from` to the head that `filter` admits.
async fn count_events(log: &EventLog, from: Position, filter: &onepd_domain::EventFilter) -> anyhow::Result<u64> {
    let head = log.head().await?;
    let (mut next, mut total) = (from, 0);
    while next <= head {
        let page = log.read(next, Some(head), filter, 10_000).await?;
        total += page.events.len() as u64;
        next = page.next;
    }
    Ok(total)
}

async fn spawn_activation(
    log: &EventLog,
    profiles: Arc<dyn ProjectionStore>,
    delivered: Arc<AtomicU64>,
    snapshots: onepd_adapters::profiles::as_of::SnapshotBudget,
) -> anyhow::Result<Activation> {
    let directory = Live::<Directory>::follow(log, "directory").await?;
    let on_delivered = Arc::new(move |recorded: &[Timestamp], _: Timestamp| {
        delivered.fetch_add(recorded.len() as u64, Ordering::Relaxed);
    });
    let options = ActivationOptions { on_delivered: Some(on_delivered), snapshots, ..ActivationOptions::default() };
    Ok(Activation::spawn(log.clone(), directory, onepd_adapters::activation::connect(), profiles, options).await?)
}

/// Fails when the adapter process has stopped.
fn adapter_running(adapter: &mut tokio::process::Child) -> anyhow::Result<()> {
    anyhow::ensure!(adapter.try_wait()?.is_none(), "the adapter process stopped");
    Ok(())
}

/// Waits (a look every 10 ms) until `done`, failing with `what` at
/// `deadline` or as soon as `running` fails.
async fn wait_until(
    deadline: Instant,
    what: &str,
    running: &mut impl FnMut() -> anyhow::Result<()>,
    done: impl Fn() -> bool,
) -> anyhow::Result<()> {
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}");
        running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The seconds after `started` at which the event at `position` was the
/// newest in the profile `person` names, and at which `delivered` held.
#[allow(clippy::too_many_arguments)]
async fn readable_and_delivered(
    reader: &ProfileReader,
    workspace: onepd_domain::WorkspaceId,
    person: &onepd_domain::identity::Identifier,
    position: Position,
    started: Instant,
    deadline: Instant,
    running: &mut impl FnMut() -> anyhow::Result<()>,
    delivered: impl Fn() -> bool,
) -> anyhow::Result<(f64, f64)> {
    let lookup = Lookup::Identifier(person.clone());
    let (mut readable, mut all_delivered) = (None, None);
    loop {
        if let (Some(readable), Some(all_delivered)) = (readable, all_delivered) {
            return Ok((readable, all_delivered));
        }
        anyhow::ensure!(Instant::now() < deadline, "the new event was not readable and delivered within 10 minutes");
        running()?;
        if readable.is_none()
            && reader
                .timeline(workspace, &lookup, None, 1)
                .await?
                .is_some_and(|page| page.first().is_some_and(|entry| entry.position == position))
        {
            readable = Some(started.elapsed().as_secs_f64());
        }
        if all_delivered.is_none() && delivered() {
            all_delivered = Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends `live` orders of the workload's sampled people, 100 an append.
async fn append_live(log: &EventLog, workload: &Workload, live: usize) -> anyhow::Result<()> {
    let mut appended = 0;
    while appended < live {
        let batch = (live - appended).min(100);
        let people = (0..batch).map(|n| &workload.sample[(appended + n) % workload.sample.len()]);
        log.append(new_events(workload.workspace, people)).await.context("appending live events")?;
        appended += batch;
    }
    Ok(())
}

/// `onepd serve` on the benchmark's database, as a process of its own.
struct Served {
    child: tokio::process::Child,
    /// Its data directory (nothing in it is used: the database is named).
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(url: &str) -> anyhow::Result<Served> {
        let dir = tempfile::tempdir().context("a data directory for onepd serve")?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--database-url", url])
            .arg("--data-dir")
            .arg(dir.path())
            .env("ONEPD_MASTER_KEY", hex::encode(super::profiles::MASTER_KEY))
            .env("ONEPD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting onepd serve")?;
        Ok(Served { child, _dir: dir })
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.try_wait()?.is_none(), "onepd serve stopped");
        Ok(())
    }

    fn peak_mb(&self) -> f64 {
        self.child.id().map_or(0.0, |pid| peak_mb_of(&pid.to_string()))
    }

    /// Stops it as an operator would (SIGTERM), killing it after 30 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// A new order of the person `identifier` names.
fn new_event(workspace: onepd_domain::WorkspaceId, identifier: &onepd_domain::identity::Identifier) -> AppendRequest {
    new_events(workspace, [identifier])
}

/// A new order of each person the identifiers name, in one append.
fn new_events<'a>(
    workspace: onepd_domain::WorkspaceId,
    people: impl IntoIterator<Item = &'a onepd_domain::identity::Identifier>,
) -> AppendRequest {
    let source = Uuid::now_v7();
    AppendRequest {
        stream_id: source_stream(source),
        expected: ExpectedVersion::Any,
        events: people.into_iter().map(|identifier| order(workspace, source, identifier)).collect(),
    }
}

fn order(
    workspace: onepd_domain::WorkspaceId,
    source: Uuid,
    identifier: &onepd_domain::identity::Identifier,
) -> NewEvent {
    let field = if identifier.kind == IdentifierKind::UserId { "userId" } else { "anonymousId" };
    let message_id = format!("scale-{}", Uuid::new_v4());
    let now = chrono_now();
    let message = json!({
        "type": "track", field: identifier.value, "event": "Order Completed", "messageId": message_id,
        "timestamp": now, "receivedAt": now,
        "properties": {"order_id": "scale-1", "revenue": 42.0, "currency": "USD"},
    });
    let accepted = onepd_domain::events::message::MessageAccepted {
        message,
        enrichment: json!({}),
        originals: serde_json::Map::new(),
        violations: Vec::new(),
    };
    NewEvent {
        event_id: EventId::for_message(workspace, &message_id),
        workspace_id: workspace,
        event_type: MessageAccepted::TYPE.into(),
        schema_version: 1,
        data: serde_json::to_value(accepted).expect("serializable"),
        metadata: json!({"source_id": source.to_string(), "received_at": now, "request_id": "bench"}),
        subject: Some(identifier.value.clone()),
    }
}

fn chrono_now() -> String {
    onepd_adapters::ingest::now().to_rfc3339()
}
