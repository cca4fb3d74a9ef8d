//! `onepd bench rebuild` and `onepd bench profile-read`: the profiles
//! projection on a synthetic, realistic workload.
//!
//! The workload (appended before the clock starts, as the ingest pipeline
//! would store it, sealed per subject): visitors browse anonymously (pages,
//! product views); about a third identify with a user id, an email and
//! often a phone, some on a second device; a few share a family email or a
//! phone (which the default limits keep apart); buyers complete orders with
//! revenue in one of three currencies.
//!
//! * `rebuild` times a full blue/green rebuild (read, fold, write, promote)
//!   beside the raw limit beneath it, reading and decoding the same events
//!   from the log without folding, in the same run; and reports the peak
//!   resident memory of the rebuild (the workload is written by a child
//!   process, and the raw read runs after the peak is taken).
//! * `profile-read` rebuilds untimed, then times `GetProfile`'s read path
//!   (identifier → profile document) and a point-in-time read (the document
//!   plus the profile's events up to a past position, folded again) for
//!   random identifiers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use onepd_adapters::profiles::{AsOf, ProfileReader};
use onepd_adapters::readstore::ReadStore;
use onepd_adapters::{EventLog, MasterKey, StoreConfig};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::source_stream;
use onepd_domain::identity::{Identifier, IdentifierKind};
use onepd_domain::{
    AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Position, ProjectionStore, WorkspaceId,
};
use onepd_projections::profile::Lookup;
use onepd_projections::runner::{PROFILE_DOCS, Runner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Backend, ScratchStore};
use crate::output;

/// The workload's master key: a process the benchmark starts on its
/// database (`onepd serve`) is given it too.
pub(super) const MASTER_KEY: [u8; 32] = [7; 32];

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Events in the synthetic workload.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) events: u64,
    /// Which database.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub(super) backend: Backend,
    /// The PostgreSQL server to create the benchmark's database on.
    #[arg(long, env = "ONEPD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where the SQLite files go (removed afterwards).
    #[arg(long, default_value = "./data")]
    dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// Keep the SQLite database afterwards and print where it is (for profiling).
    #[arg(long, hide = true)]
    keep: bool,
    /// Only write the workload into this store (run as a child process, so
    /// the measuring process's memory holds nothing of the writing).
    #[arg(long, hide = true)]
    fill_url: Option<String>,
    /// The workspace the child writes the workload into.
    #[arg(long, hide = true)]
    fill_workspace: Option<Uuid>,
}

#[derive(Debug, Args)]
pub struct ProfileReadArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Reads of each kind to time.
    #[arg(long, default_value_t = 5_000)]
    reads: usize,
}

/// A store holding the workload, removed when dropped (PostgreSQL: call
/// [`Workload::remove`]).
pub(super) struct Workload {
    pub(super) url: String,
    /// Where the workload was created; `None` in the child process that
    /// only fills a store it was given.
    store: Option<ScratchStore>,
    pub(super) workspace: WorkspaceId,
    /// A sample of identifiers the workload used, for reads.
    pub(super) sample: Vec<Identifier>,
}

impl WorkloadArgs {
    /// The backend's name.
    pub(super) fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

impl Workload {
    pub(super) async fn create(args: &WorkloadArgs) -> anyhow::Result<Workload> {
        anyhow::ensure!(args.events > 0, "--events: expected at least 1, found 0");
        let store = ScratchStore::create(args.backend, &args.postgres_url, &args.dir, "onepd_bench_profiles").await?;
        let mut workload = Workload {
            url: store.url.clone(),
            store: Some(store),
            workspace: WorkspaceId(Uuid::now_v7()),
            sample: Vec::new(),
        };
        // The workload is written by a child process: the appender's memory
        // would otherwise count in the peak measured afterwards.
        let output = std::process::Command::new(std::env::current_exe()?)
            .args(["bench", "rebuild", "--events", &args.events.to_string(), "--dir"])
            .arg(&args.dir)
            .args(["--fill-url", &workload.url, "--fill-workspace", &workload.workspace.0.to_string()])
            .args(if args.json { &["--json"][..] } else { &[][..] })
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("starting the process that writes the workload")?;
        anyhow::ensure!(output.status.success(), "writing the workload failed ({})", output.status);
        workload.sample = serde_json::from_slice(&output.stdout).context("reading the workload's sample")?;
        Ok(workload)
    }

    /// Writes the workload into the store at `url` and prints its sample of
    /// identifiers as JSON (the child process's whole job).
    async fn fill_only(args: &WorkloadArgs, url: &str, workspace: Uuid) -> anyhow::Result<ExitCode> {
        let mut workload =
            Workload { url: url.to_owned(), store: None, workspace: WorkspaceId(workspace), sample: Vec::new() };
        workload.fill(args).await?;
        output::json(&serde_json::to_value(&workload.sample)?);
        Ok(ExitCode::SUCCESS)
    }

    pub(super) async fn remove(self) {
        if let Some(store) = self.store {
            store.remove().await;
        }
    }

    pub(super) fn config(&self) -> StoreConfig {
        // The key is kept in the directory so a second open reads the same
        // sealed payloads.
        StoreConfig::new(self.url.clone(), Some(self.master()))
    }

    fn master(&self) -> MasterKey {
        MasterKey::from_bytes(MASTER_KEY)
    }

    async fn fill(&mut self, args: &WorkloadArgs) -> anyhow::Result<()> {
        let log = EventLog::open(self.config()).await.context("opening the benchmark log")?;
        let bar = output::progress(args.events, args.json, "{spinner} writing the workload [{bar:40}] {pos}/{len}");
        let source = Uuid::now_v7();
        let stream = source_stream(source);
        let mut generator = Generator::new(self.workspace, source);
        let mut written = 0;
        while written < args.events {
            let count = (args.events - written).min(1_000) as usize;
            let events: Vec<NewEvent> = (0..count).map(|_| generator.next()).collect();
            let request = AppendRequest { stream_id: stream.clone(), expected: ExpectedVersion::Any, events };
            log.append(request).await.context("appending the workload")?;
            written += count as u64;
            bar.set_position(written);
        }
        bar.finish_and_clear();
        log.close().await;
        self.sample = generator.sample;
        Ok(())
    }
}

/// Synthetic visitors, deterministic for a given run.
pub(super) struct Generator {
    workspace: WorkspaceId,
    source: Uuid,
    rng: StdRng,
    n: u64,
    visitor: u64,
    left: u32,
    pub(super) sample: Vec<Identifier>,
}

impl Generator {
    pub(super) fn new(workspace: WorkspaceId, source: Uuid) -> Generator {
        Generator { workspace, source, rng: StdRng::seed_from_u64(42), n: 0, visitor: 0, left: 0, sample: Vec::new() }
    }

    pub(super) fn next(&mut self) -> NewEvent {
        if self.left == 0 {
            self.visitor += 1;
            self.left = self.rng.gen_range(3..18);
        }
        self.left -= 1;
        self.n += 1;
        let visitor = self.visitor;
        let identifies = visitor.is_multiple_of(3);
        // Every fourth identified person comes back on a second device.
        let device = if identifies && visitor.is_multiple_of(4) && self.left < 4 { 2 } else { 1 };
        let anonymous = format!("anon-{visitor}-{device}");
        let user = format!("user-{}", visitor / 3);
        // Families share an email now and then; the user_id limit keeps
        // them apart.
        let email = if visitor.is_multiple_of(50) {
            format!("family{}@example.com", visitor / 100)
        } else {
            format!("person{visitor}@example.com")
        };
        let phone = format!("+1415555{:04}", visitor % 10_000);
        let timestamp = format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            1 + visitor % 12,
            1 + visitor % 28,
            self.n % 24,
            self.n % 60,
            self.left % 60
        );
        let context = json!({
            "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "page": {"path": "/products/42", "url": "https://shop.example.com/products/42", "title": "Blue Shoes"},
            "locale": "en-US"
        });
        let currency = ["USD", "EUR", "GBP"][(self.n % 3) as usize];
        let mut message = match (self.left, identifies) {
            (1, true) => json!({
                "type": "identify", "userId": user, "anonymousId": anonymous,
                "traits": if visitor.is_multiple_of(2) { json!({"email": email, "phone": phone, "name": format!("Person {visitor}"), "plan": "pro"}) }
                          else { json!({"email": email, "name": format!("Person {visitor}")}) },
            }),
            (0, true) if visitor.is_multiple_of(2) => json!({
                "type": "track", "userId": user, "anonymousId": anonymous, "event": "Order Completed",
                "properties": {"order_id": format!("o-{}", self.n), "revenue": 10.0 + (self.n % 490) as f64 / 10.0,
                               "currency": currency},
            }),
            (left, _) if left % 3 == 0 => json!({
                "type": "track", "anonymousId": anonymous, "event": "Product Viewed",
                "properties": {"product_id": format!("p-{}", self.n % 997), "price": 19.99},
            }),
            _ => json!({"type": "page", "anonymousId": anonymous, "name": "Product"}),
        };
        let object = message.as_object_mut().expect("an object");
        object.insert("messageId".into(), Value::String(format!("bench-{}", self.n)));
        object.insert("timestamp".into(), Value::String(timestamp.clone()));
        object.insert("receivedAt".into(), Value::String(timestamp));
        object.insert("context".into(), context);
        if self.n.is_multiple_of(997) {
            let kind = if identifies { IdentifierKind::UserId } else { IdentifierKind::AnonymousId };
            let value = if identifies { user.clone() } else { anonymous.clone() };
            self.sample.push(Identifier::new(kind, value));
        }
        let subject = if self.left == 0 && identifies { user } else { anonymous };
        let accepted = MessageAccepted {
            message,
            enrichment: json!({"ip": "203.0.113.7", "ipSource": "context", "userAgent": {"browser": {"family": "Chrome", "version": "124.0"}, "os": {"family": "Linux"}, "device": {"family": "Other"}}}),
            originals: serde_json::Map::new(),
            violations: Vec::new(),
        };
        NewEvent {
            event_id: EventId::for_message(self.workspace, &format!("bench-{}", self.n)),
            workspace_id: self.workspace,
            event_type: MessageAccepted::TYPE.into(),
            schema_version: 1,
            data: serde_json::to_value(accepted).expect("serializable"),
            metadata: json!({"source_id": self.source.to_string(), "received_at": "2026-11-29T00:00:00.000Z",
                             "request_id": "bench", "message_type": "track"}),
            subject: Some(subject),
        }
    }
}

/// The process's current and peak resident set in MB, where the OS reports it.
fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(super) async fn open(workload: &Workload) -> anyhow::Result<(EventLog, Arc<ReadStore>)> {
    let log = EventLog::open(workload.config()).await.context("opening the benchmark log")?;
    let store = ReadStore::open(&workload.url).await.context("opening the read store")?;
    Ok((log, Arc::new(store)))
}

/// How a bench reads the log's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// As stored, neither opened nor decoded: the database's own limit.
    Raw,
    /// Opened and decoded whole, read ahead, as a destination's backfill
    /// reads them.
    Whole,
    /// Opened, and decoded in the parts the profiles fold reads, read
    /// ahead, as the rebuild reads them, without folding or writing: the
    /// limit the rebuild stands on.
    Folded,
}

/// Reads every message of the log page by page, `how`: how many, and the
/// seconds it took.
pub(super) async fn read_all(log: &EventLog, how: Read) -> anyhow::Result<(u64, f64)> {
    let mut filter = EventFilter { event_types: vec![MessageAccepted::TYPE.into()], ..EventFilter::default() };
    let head = log.head().await?;
    let started = Instant::now();
    let mut count = 0u64;
    if how == Read::Raw {
        let mut next = Position(1);
        while next <= head {
            let page = log.stored_rows_where(next, head, &filter, PAGE).await?;
            let Some(last) = page.last() else { break };
            count += page.len() as u64;
            next = Position(last.position + 1);
        }
    } else {
        if how == Read::Folded {
            filter.parts = onepd_projections::profile::FOLDED_PARTS;
        }
        let mut pages = Arc::new(log.clone()).read_ahead(Position(1), head, filter, PAGE);
        while let Some(page) = pages.next_page().await? {
            count += page.events.len() as u64;
        }
    }
    Ok((count, started.elapsed().as_secs_f64()))
}

/// Positions per page of a bench's read, as the rebuild reads.
const PAGE: usize = 5_000;

pub(super) async fn rebuild(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    if let (Some(url), Some(workspace)) = (&args.fill_url, args.fill_workspace) {
        return Workload::fill_only(&args, url, workspace).await;
    }
    let workload = Workload::create(&args).await?;
    let result = measure_rebuild(&workload, &args).await;
    if args.keep {
        eprintln!("kept {}", workload.url);
        std::mem::forget(workload);
        return Ok(ExitCode::SUCCESS);
    }
    workload.remove().await;
    let (events, raw_seconds, seconds, profiles, peak) = result?;
    let raw_rate = events as f64 / raw_seconds;
    let rate = events as f64 / seconds;
    if args.json {
        output::json(&json!({
            "backend": args.backend.name(), "events": events, "profiles": profiles,
            "rebuild_seconds": seconds, "rebuild_events_per_second": rate,
            "read_events_per_second": raw_rate, "ratio_to_read": rate / raw_rate,
            "peak_rss_mb": peak,
        }));
    } else {
        output::line(format!(
            "rebuild on {}: {rate:.0} events/s ({events} events, {profiles} profiles, {seconds:.2} s); \
             log read alone {raw_rate:.0} events/s (ratio {:.2}); peak RSS of the rebuild {}",
            args.backend.name(),
            rate / raw_rate,
            peak.map_or_else(|| "unknown".to_owned(), |mb| format!("{mb:.0} MB"))
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure_rebuild(
    workload: &Workload,
    args: &WorkloadArgs,
) -> anyhow::Result<(u64, f64, f64, usize, Option<f64>)> {
    let (log, store) = open(workload).await?;
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>);
    let bar = output::progress(0, args.json, "{spinner} rebuilding [{bar:40}] {pos}/{len} ({per_sec})");
    let progress = output::reporter(&bar);
    let started = Instant::now();
    let built = runner.rebuild(&progress).await.context("rebuilding")?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let peak = rss_mb("VmHWM:");
    let profiles = store.count(built.generation.id, PROFILE_DOCS).await? as usize;
    drop(built);
    // The raw limit: the same events read and decoded, nothing folded.
    let (events, raw_seconds) = read_all(&log, Read::Folded).await?;
    log.close().await;
    Ok((events, raw_seconds, seconds, profiles, peak))
}

pub(super) async fn profile_read(args: ProfileReadArgs) -> anyhow::Result<ExitCode> {
    let workload = Workload::create(&args.workload).await?;
    let result = measure_reads(&workload, &args).await;
    workload.remove().await;
    let (now, past) = result?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if args.workload.json {
        output::json(&json!({
            "backend": args.workload.backend.name(), "events": args.workload.events, "reads": args.reads,
            "get_profile_ms": {"p50": ms(percentile(&now, 0.50)), "p99": ms(percentile(&now, 0.99))},
            "point_in_time_ms": {"p50": ms(percentile(&past, 0.50)), "p99": ms(percentile(&past, 0.99))},
        }));
    } else {
        output::line(format!(
            "profile reads on {} at {} events: GetProfile p50 {:.2} ms, p99 {:.2} ms; point-in-time p50 {:.2} ms, p99 {:.2} ms ({} reads each)",
            args.workload.backend.name(),
            args.workload.events,
            ms(percentile(&now, 0.50)),
            ms(percentile(&now, 0.99)),
            ms(percentile(&past, 0.50)),
            ms(percentile(&past, 0.99)),
            args.reads
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure_reads(workload: &Workload, args: &ProfileReadArgs) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (log, store) = open(workload).await?;
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store.clone() as Arc<dyn ProjectionStore>);
    let quiet = |_: u64, _: u64| {};
    let built = runner.rebuild(&quiet).await.context("building the profiles")?;
    let head = built.checkpoint;
    drop(built);
    anyhow::ensure!(!workload.sample.is_empty(), "the workload is too small to sample identifiers from");
    let reader = ProfileReader::new(store, log.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let (mut now, mut past) = (Vec::with_capacity(args.reads), Vec::with_capacity(args.reads));
    for round in 0..args.reads * 2 {
        let identifier = workload.sample[rng.gen_range(0..workload.sample.len())].clone();
        let lookup = Lookup::Identifier(identifier);
        let started = Instant::now();
        if round % 2 == 0 {
            let found = reader.get(workload.workspace, &lookup, None).await?;
            now.push(started.elapsed());
            anyhow::ensure!(found.is_some(), "a sampled identifier has no profile");
        } else {
            let position = Position(rng.gen_range(1..=head.0));
            reader.get(workload.workspace, &lookup, Some(AsOf::Position(position))).await?;
            past.push(started.elapsed());
        }
    }
    log.close().await;
    Ok((now, past))
}

pub(super) fn percentile(samples: &[Duration], quantile: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * quantile).round() as usize]
}
