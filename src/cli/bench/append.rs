//! `onepd bench append`: the event log's append rate, beside the raw limit of
//! the same database measured in the same run.
//!
//! The store phase appends synthetic ingest-sized events (~600 bytes of JSON,
//! sealed for one of `--subjects` people, with random deterministic-style ids)
//! through the real [`EventLog`] from `--writers` concurrent tasks in batches of
//! `--batch`. The raw phase then inserts the very rows the store wrote, with
//! the same INSERT statement, into a bare table with the same indexes: no
//! group commit, no idempotency check, no sealing, no hashing, no head. Both
//! phases run in rounds; generating events and reading rows back happen
//! between rounds and are not timed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use onepd_adapters::store::backend::StoredRow;
use onepd_adapters::{EventLog, MasterKey, StoreConfig};
use onepd_domain::{AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, Position, StreamId, WorkspaceId};
use serde_json::json;
use sqlx::Executor;
use uuid::Uuid;

use super::Backend;
use crate::cli::redact;
use crate::output;

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// Which database to measure.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// How many events to append. Short runs on a small table flatter the
    /// raw insert; a million gives steadier numbers.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per append call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent appending tasks.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Distinct people the events are about (each has its own sealing key).
    #[arg(long, default_value_t = 10_000)]
    subjects: u64,
    /// The PostgreSQL server to create the benchmark's databases on.
    #[arg(long, env = "ONEPD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where the SQLite benchmark files go (removed afterwards).
    #[arg(long, default_value = "./data")]
    dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Events generated and appended per round.
const ROUND: u64 = 500_000;

/// Where the two phases write, and how to clean up after them.
struct Target {
    store_url: String,
    raw_url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Removed when dropped.
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Databases {
        admin: String,
        names: [String; 2],
    },
}

impl Target {
    async fn create(args: &AppendArgs) -> anyhow::Result<Target> {
        match args.backend {
            Backend::Sqlite => {
                std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
                let dir = tempfile::Builder::new().prefix("bench-").tempdir_in(&args.dir)?;
                Ok(Target {
                    store_url: format!("sqlite://{}", dir.path().join("store.db").display()),
                    raw_url: format!("sqlite://{}", dir.path().join("raw.db").display()),
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Backend::Postgres => {
                let suffix = Uuid::new_v4().simple().to_string();
                let names = [format!("onepd_bench_{suffix}"), format!("onepd_bench_raw_{suffix}")];
                let mut urls = Vec::new();
                for name in &names {
                    urls.push(
                        onepd_adapters::store::postgres::create_database(&args.postgres_url, name)
                            .await
                            .with_context(|| format!("creating database {name} on {}", redact(&args.postgres_url)))?,
                    );
                }
                let [store_url, raw_url] = <[String; 2]>::try_from(urls).expect("two databases");
                Ok(Target {
                    store_url,
                    raw_url,
                    cleanup: Cleanup::Databases { admin: args.postgres_url.clone(), names },
                })
            }
        }
    }

    async fn remove(self) {
        if let Cleanup::Databases { admin, names } = self.cleanup {
            for name in names {
                let _ = onepd_adapters::store::postgres::drop_database(&admin, &name).await;
            }
        }
    }
}

pub(super) async fn run(args: AppendArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.events > 0, "--events: expected at least 1, found 0");
    anyhow::ensure!(args.batch > 0, "--batch: expected at least 1, found 0");
    anyhow::ensure!(args.writers > 0, "--writers: expected at least 1, found 0");
    anyhow::ensure!(args.subjects > 0, "--subjects: expected at least 1, found 0");
    let report = measure_in_fresh_databases(&args).await?;
    if args.json {
        output::json(&report);
    } else {
        output::line(format!(
            "{} append: {} events, batch {}, {} writers",
            report["backend"].as_str().unwrap_or_default(),
            args.events,
            args.batch,
            args.writers
        ));
        output::line(format!(
            "  onepd event log  {:>10.0} events/s  ({:.2} s)",
            report["store_events_per_sec"].as_f64().unwrap_or_default(),
            report["store_seconds"].as_f64().unwrap_or_default()
        ));
        output::line(format!(
            "  raw insert       {:>10.0} events/s  ({:.2} s, {} writer(s))",
            report["raw_events_per_sec"].as_f64().unwrap_or_default(),
            report["raw_seconds"].as_f64().unwrap_or_default(),
            report["raw_writers"]
        ));
        output::line(format!("  ratio            {:>10.2}", report["ratio"].as_f64().unwrap_or_default()));
        if let Some(copy) = report["raw_copy_events_per_sec"].as_f64() {
            output::line(format!("  raw binary COPY  {copy:>10.0} events/s  (for reference)"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The append reference `bench ingest` reports beside its own rate: the same
/// backend, event count and batch size, with the default writers and subjects.
pub(super) async fn reference(
    backend: Backend,
    events: u64,
    batch: usize,
    postgres_url: &str,
    dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let args = AppendArgs {
        backend,
        events,
        batch,
        writers: 8,
        subjects: 10_000,
        postgres_url: postgres_url.to_owned(),
        dir: dir.to_owned(),
        json,
    };
    measure_in_fresh_databases(&args).await
}

/// Creates the two databases, measures, and removes them whatever the outcome.
async fn measure_in_fresh_databases(args: &AppendArgs) -> anyhow::Result<serde_json::Value> {
    let target = Target::create(args).await?;
    let result = measure(args, &target).await;
    target.remove().await;
    result
}

async fn measure(args: &AppendArgs, target: &Target) -> anyhow::Result<serde_json::Value> {
    let mut config = StoreConfig::new(target.store_url.clone(), Some(MasterKey::generate()));
    config.poll_interval = Duration::from_secs(1);
    let log = EventLog::open(config).await.context("opening the benchmark event log")?;
    let workspace = WorkspaceId(Uuid::now_v7());
    let bar = output::progress(args.events * 2, args.json, "{spinner} {msg} [{bar:40}] {pos}/{len}");

    // Store phase.
    bar.set_message("event log");
    let mut store_time = Duration::ZERO;
    let mut generated = 0;
    while generated < args.events {
        let count = ROUND.min(args.events - generated);
        let plans = generate(workspace, generated, count, args);
        generated += count;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for plan in plans {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for request in plan {
                    log.append(request).await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        store_time += started.elapsed();
        bar.inc(count);
    }
    let head = log.head().await?;
    anyhow::ensure!(head.0 == args.events, "the store holds {} events, expected {}", head.0, args.events);

    // Raw phase: the same rows, the same statement, a bare table.
    bar.set_message("raw insert");
    let raw = RawTable::create(args.backend, &target.raw_url).await?;
    let raw_writers = if args.backend == Backend::Sqlite { 1 } else { args.writers };
    let mut raw_time = Duration::ZERO;
    let mut copy_time = Duration::ZERO;
    let mut bytes = 0u64;
    let mut from = 1;
    while from <= args.events {
        let to = (from + ROUND - 1).min(args.events);
        let rows = log.stored_rows(Position(from), Position(to), (to - from + 1) as usize).await?;
        bytes += rows.iter().map(|r| (r.data.len() + r.metadata.len()) as u64).sum::<u64>();
        let rows = Arc::new(rows);
        let started = Instant::now();
        raw.insert_all(rows.clone(), args.batch, raw_writers, Statement::Insert).await?;
        raw_time += started.elapsed();
        if args.backend == Backend::Postgres {
            let started = Instant::now();
            raw.insert_all(rows.clone(), args.batch, raw_writers, Statement::Copy).await?;
            copy_time += started.elapsed();
        }
        bar.inc(rows.len() as u64);
        from = to + 1;
    }
    bar.finish_and_clear();
    raw.close().await;
    log.close().await;

    let store_rate = args.events as f64 / store_time.as_secs_f64();
    let raw_rate = args.events as f64 / raw_time.as_secs_f64();
    Ok(json!({
        "backend": args.backend.name(),
        "events": args.events,
        "batch": args.batch,
        "writers": args.writers,
        "raw_writers": raw_writers,
        "subjects": args.subjects,
        "stored_bytes_per_event": bytes / args.events,
        "store_seconds": store_time.as_secs_f64(),
        "raw_seconds": raw_time.as_secs_f64(),
        "store_events_per_sec": store_rate.round(),
        "raw_events_per_sec": raw_rate.round(),
        "ratio": (store_rate / raw_rate * 1000.0).round() / 1000.0,
        // PostgreSQL only: the same rows by binary COPY, the fastest way in.
        "raw_copy_events_per_sec": (args.backend == Backend::Postgres)
            .then(|| (args.events as f64 / copy_time.as_secs_f64()).round()),
    }))
}

/// One round's append calls, split among the writers.
fn generate(workspace: WorkspaceId, first: u64, count: u64, args: &AppendArgs) -> Vec<Vec<AppendRequest>> {
    let mut plans: Vec<Vec<AppendRequest>> = (0..args.writers).map(|_| Vec::new()).collect();
    let mut n = first;
    let end = first + count;
    let mut writer = 0;
    while n < end {
        let size = (args.batch as u64).min(end - n);
        let events = (n..n + size).map(|i| synthetic_event(workspace, i, args.subjects)).collect();
        let stream = StreamId::new(format!("bench-{writer}")).expect("valid stream id");
        plans[writer].push(AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events });
        writer = (writer + 1) % args.writers;
        n += size;
    }
    plans
}

/// A Segment-style `track` call of about 600 bytes, as ingest will store it.
fn synthetic_event(workspace: WorkspaceId, n: u64, subjects: u64) -> NewEvent {
    let message_id = format!("bench-{n}-{}", Uuid::new_v4());
    let user = format!("user-{}", n % subjects);
    let data = json!({
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "userId": user,
        "anonymousId": Uuid::from_u128(u128::from(n % subjects) << 64 | 0xa11ce).to_string(),
        "properties": {
            "order_id": format!("ord-{n:010}"),
            "revenue": (n % 997) as f64 + 0.99,
            "currency": "USD",
            "products": [{ "sku": "SKU-1042", "name": "Trail running shoes", "price": 89.5, "quantity": 1 }]
        },
        "context": {
            "ip": "203.0.113.42",
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
            "library": { "name": "analytics-node", "version": "2.1.2" },
            "page": { "url": "https://shop.example.com/checkout/complete?step=3", "title": "Thank you" }
        },
        "timestamp": "2026-11-29T02:00:00.000Z"
    });
    NewEvent {
        event_id: EventId::for_message(workspace, &message_id),
        workspace_id: workspace,
        event_type: "MessageAccepted".into(),
        schema_version: 1,
        data,
        metadata: json!({ "source": "bench", "request_id": n }),
        subject: Some(user),
    }
}

/// How the raw phase writes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statement {
    /// Plain batched INSERTs into `raw_events`: the raw limit.
    Insert,
    /// Binary COPY into `raw_copy_events` (PostgreSQL only).
    Copy,
}

/// The bare tables of the raw phase.
#[derive(Clone)]
enum RawTable {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl RawTable {
    /// Gives the raw database onepd's own schema, then copies the events
    /// table's columns and indexes — without its triggers — into bare
    /// tables, so "the same indexes" holds however the schema evolves.
    async fn create(backend: Backend, url: &str) -> anyhow::Result<RawTable> {
        EventLog::open(StoreConfig::new(url, None)).await.context("creating the raw database's schema")?.close().await;
        Ok(match backend {
            Backend::Sqlite => {
                let pool = onepd_adapters::store::sqlite::connect_pool(url, 1).await?;
                let definitions: Vec<String> = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND type IN ('table', 'index') \
                     AND sql IS NOT NULL ORDER BY type = 'index'",
                )
                .fetch_all(&pool)
                .await?;
                for definition in definitions {
                    pool.execute(sqlx::AssertSqlSafe(definition.replace("events", "raw_events"))).await?;
                }
                RawTable::Sqlite(pool)
            }
            Backend::Postgres => {
                let pool = onepd_adapters::store::postgres::connect_pool(url, 16).await?;
                pool.execute(
                    "CREATE TABLE raw_events (LIKE events INCLUDING ALL); \
                     CREATE TABLE raw_copy_events (LIKE events INCLUDING ALL);",
                )
                .await?;
                RawTable::Postgres(pool)
            }
        })
    }

    /// Inserts `rows` in transactions of `batch` rows from `writers` tasks.
    async fn insert_all(
        &self,
        rows: Arc<Vec<StoredRow>>,
        batch: usize,
        writers: usize,
        statement: Statement,
    ) -> anyhow::Result<()> {
        let batches: Vec<(usize, usize)> =
            (0..rows.len()).step_by(batch).map(|start| (start, (start + batch).min(rows.len()))).collect();
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let mine: Vec<(usize, usize)> = batches.iter().copied().skip(writer).step_by(writers).collect();
            let rows = rows.clone();
            let table = self.clone();
            tasks.push(tokio::spawn(async move {
                for (start, end) in mine {
                    table.insert_batch(&rows[start..end], statement).await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    async fn insert_batch(&self, rows: &[StoredRow], statement: Statement) -> anyhow::Result<()> {
        match self {
            RawTable::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                onepd_adapters::store::sqlite::insert_rows(&mut tx, "raw_events", rows).await?;
                tx.commit().await?;
            }
            RawTable::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                match statement {
                    Statement::Insert => {
                        onepd_adapters::store::postgres::insert_rows(&mut tx, "raw_events", rows).await?
                    }
                    Statement::Copy => {
                        onepd_adapters::store::postgres::copy_rows(&mut tx, "raw_copy_events", rows).await?
                    }
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn close(&self) {
        match self {
            RawTable::Sqlite(pool) => pool.close().await,
            RawTable::Postgres(pool) => pool.close().await,
        }
    }
}
