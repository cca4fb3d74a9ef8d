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

mod append;
mod import;
mod ingest;
mod profiles;

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

/// The store a benchmark runs on: on PostgreSQL a fresh database named
/// `<prefix>_<random>` on `admin_url` (its name and url; drop it afterwards),
/// on SQLite `file` in the benchmark's directory.
async fn scratch_store(
    backend: Backend,
    admin_url: &str,
    prefix: &str,
    file: &std::path::Path,
) -> anyhow::Result<(String, Option<String>)> {
    use anyhow::Context;
    match backend {
        Backend::Sqlite => Ok((format!("sqlite://{}", file.display()), None)),
        Backend::Postgres => {
            let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
            let url = onepd_adapters::store::postgres::create_database(admin_url, &name)
                .await
                .with_context(|| format!("creating database {name}"))?;
            Ok((url, Some(name)))
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
    }
}
