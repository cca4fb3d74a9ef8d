//! `onepd bench`: measurements of onepd against the limits below it, one
//! benchmark per file.
//!
//! * `append` ([`append`]): the event log's append rate beside the raw insert
//!   rate of the same database.
//! * `ingest` ([`ingest`]): the running server's ingest rate through its real
//!   gRPC or HTTP API, beside `append` measured in the same run.
//! * `import` ([`import`]): rows/s of a CSV import through the pipeline, and
//!   peak memory.
//! * `rebuild` and `profile-read` ([`profiles`]): the profiles projection's
//!   rebuild rate and memory, and its read latencies.
//! * `activate` ([`activate`]): events/s delivered to an adapter process,
//!   and the lag from append to delivery.
//! * `cluster` ([`cluster`]): several nodes on one PostgreSQL: aggregate
//!   ingest beside one node's and the `COPY` rate, and failover time.
//! * `export` ([`export`]): `onepd events export` to NDJSON and Parquet
//!   beside the raw read rate of the same rows, and its peak memory.

mod activate;
mod append;
mod audiences;
mod cluster;
mod export;
mod import;
mod ingest;
mod profiles;
mod scale;

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append rate of the event log against the raw insert rate of its database.
    Append(append::AppendArgs),
    /// Ingest rate of a running server through its gRPC or HTTP API, with
    /// durable acknowledgements, against the append rate of the same run.
    Ingest(ingest::IngestArgs),
    /// Rows/s of a CSV import through the whole ingest pipeline, and peak memory.
    Import(import::ImportArgs),
    /// Events/s of a full identity + profile rebuild on a synthetic workload, and peak memory.
    Rebuild(profiles::WorkloadArgs),
    /// p50/p99 of GetProfile and of a point-in-time read on a synthetic workload.
    ProfileRead(profiles::ProfileReadArgs),
    /// Events/s of activation to an adapter in its own process (Meta's, with
    /// hashing), beside the log's read rate, and end-to-end lag p99.
    Activate(activate::ActivateArgs),
    /// The read side on a big log: building the profiles, restart to a new
    /// event readable and delivered with 1 and several destinations, peak
    /// memory, backfill to a gRPC adapter, profile reads, beside the log's
    /// read rate.
    Scale(scale::ScaleArgs),
    /// Audience membership on the synthetic workload: the backfill of 20
    /// audiences and 10 computed traits, its cost per live event beside the
    /// profiles projection's, and a window edge's re-evaluation.
    Audiences(audiences::AudiencesArgs),
    /// Several nodes on one PostgreSQL: the aggregate HTTP ingest rate
    /// beside one node's and PostgreSQL's COPY rate, and the failover time
    /// when the node delivering a destination is killed.
    Cluster(cluster::ClusterArgs),
    /// Events/s of `onepd events export` to NDJSON and to Parquet beside
    /// the raw read rate of the same rows, and peak memory for the whole
    /// log and a tenth of it.
    Export(export::ExportArgs),
}

/// The database a benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The store a benchmark runs on: a fresh directory under `--dir` (removed
/// when dropped) for its SQLite file and anything else the run writes, and
/// on PostgreSQL a fresh database named `<prefix>_<random>`, dropped by
/// [`ScratchStore::remove`].
struct ScratchStore {
    /// The store's url: `onepd.db` in the directory, or the database.
    url: String,
    dir: tempfile::TempDir,
    /// The admin url and name of the PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl ScratchStore {
    async fn create(
        backend: Backend,
        admin_url: &str,
        parent: &std::path::Path,
        prefix: &str,
    ) -> anyhow::Result<ScratchStore> {
        use anyhow::Context;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(parent)
            .context("creating the benchmark directory")?;
        let (url, postgres) = match backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.path().join("onepd.db").display()), None),
            Backend::Postgres => {
                let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
                let url = onepd_adapters::store::postgres::create_database(admin_url, &name)
                    .await
                    .with_context(|| format!("creating database {name} on {}", super::redact(admin_url)))?;
                (url, Some((admin_url.to_owned(), name)))
            }
        };
        Ok(ScratchStore { url, dir, postgres })
    }

    /// The run's directory.
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether the store is a PostgreSQL database.
    fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Drops the PostgreSQL database, if any; the directory goes when dropped.
    async fn remove(self) {
        if let Some((admin_url, name)) = &self.postgres
            && let Err(err) = onepd_adapters::store::postgres::drop_database(admin_url, name).await
        {
            eprintln!("warning: dropping the benchmark database {name}: {err}");
        }
    }
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        BenchCommand::Append(args) => append::run(args).await,
        BenchCommand::Ingest(args) => ingest::run(args).await,
        BenchCommand::Import(args) => import::run(args).await,
        BenchCommand::Rebuild(args) => profiles::rebuild(args).await,
        BenchCommand::ProfileRead(args) => profiles::profile_read(args).await,
        BenchCommand::Activate(args) => activate::run(args).await,
        BenchCommand::Scale(args) => scale::run(args).await,
        BenchCommand::Export(args) => export::run(args).await,
        BenchCommand::Audiences(args) => audiences::run(args).await,
        BenchCommand::Cluster(args) => cluster::run(args).await,
    }
}
