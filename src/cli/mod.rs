//! The subcommands, one per file.

mod adapter;
mod audience;
mod bench;
mod cluster;
mod computed;
mod deliveries;
mod destination;
mod directory;
pub(crate) mod events;
mod forget;
mod healthcheck;
mod identity;
pub(crate) mod import;
mod key;
mod plan;
mod policy;
mod profile;
mod quarantine;
mod rebuild;
mod rejected;
mod serve;
mod source;
mod verify;
mod webhook;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::StoreArgs;

/// onepd: collect first-party customer data into an append-only event log,
/// unify it into profiles and activate it.
#[derive(Debug, Parser)]
#[command(name = "onepd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run onepd: gRPC and HTTP servers over the event log.
    Serve(serve::ServeArgs),
    /// Walk the event log's hash chain and name the first position that does not hold.
    Verify(verify::VerifyArgs),
    /// Export, follow and show the log's events, for auditors.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Create and list workspaces.
    #[command(subcommand)]
    Workspace(workspace::WorkspaceCommand),
    /// Create and list a workspace's sources.
    #[command(subcommand)]
    Source(source::SourceCommand),
    /// Issue, revoke and list write keys and admin tokens.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Configure webhook sources: platform, signing secret, mappings.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Import a CSV or NDJSON file (gzip too) through the ingest pipeline.
    Import(import::ImportArgs),
    /// Set or show a workspace's tracking plan.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// List rejected messages, or replay them once their cause is fixed.
    #[command(subcommand)]
    Rejected(rejected::RejectedCommand),
    /// The sensitive-data policy: industry, per-destination rules, explain an event.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Read unified profiles: get one (now or as of a past point), explain a merge.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Audiences: define, list, remove, preview; check a condition or evaluate it for one person.
    #[command(subcommand)]
    Audience(audience::AudienceCommand),
    /// Computed traits: define, list, remove; one person's values.
    #[command(subcommand)]
    Computed(computed::ComputedCommand),
    /// Block or unblock identifiers, split profiles, change or try identity rules.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Rebuild a projection beside the live one and switch readers over.
    Rebuild(rebuild::RebuildArgs),
    /// List events readers could not read, or retry them after an upgrade.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Add, list, pause and resume destinations.
    #[command(subcommand)]
    Destination(destination::DestinationCommand),
    /// Read the delivery ledger; send dead letters again.
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// Re-send a range of the log to a destination, beside its live delivery.
    Replay(deliveries::ReplayArgs),
    /// Erase a person: destroy their keys, suppress them, ask destinations to delete them.
    Forget(forget::ForgetArgs),
    /// Run a built-in destination adapter as its own gRPC server.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// Measure onepd against the raw limit of its database.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Ask a running onepd or adapter whether it is healthy (exit 0 or 1),
    /// for container health checks.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// The nodes sharing this database and the leases they hold.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Events(command) => events::run(command).await,
        Command::Workspace(command) => workspace::run(command).await,
        Command::Source(command) => source::run(command).await,
        Command::Key(command) => key::run(command).await,
        Command::Webhook(command) => webhook::run(command).await,
        Command::Import(args) => import::run(args).await,
        Command::Plan(command) => plan::run(command).await,
        Command::Rejected(command) => rejected::run(command).await,
        Command::Policy(command) => policy::run(command).await,
        Command::Profile(command) => profile::run(command).await,
        Command::Audience(command) => audience::run(command).await,
        Command::Computed(command) => computed::run(command).await,
        Command::Identity(command) => identity::run(command).await,
        Command::Rebuild(args) => rebuild::run(args).await,
        Command::Quarantine(command) => quarantine::run(command).await,
        Command::Destination(command) => destination::run(command).await,
        Command::Deliveries(command) => deliveries::run(command).await,
        Command::Replay(args) => deliveries::replay(args).await,
        Command::Forget(args) => forget::run(args).await,
        Command::Adapter(command) => adapter::run(command).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Cluster(command) => cluster::run(command).await,
    }
}

/// Logs go to stderr as text; `ONEPD_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_tracing(default: &str) {
    let filter =
        std::env::var("ONEPD_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Opens the event log the store flags name. Only `create` (`serve`,
/// `workspace create`) makes a missing SQLite database and master key; any
/// other command says there is no database there, rather than reading an
/// empty one it just made (a wrong directory, a mistyped path).
pub async fn open_log(store: &StoreArgs, create: bool) -> anyhow::Result<onepd_adapters::EventLog> {
    use anyhow::Context;
    let url = store.database_url();
    if !create
        && let Some(path) = sqlite_path(&url)
        && !path.exists()
    {
        anyhow::bail!(
            "no onepd database at {}: start `onepd serve` there first, or point --data-dir or --database-url at an \
             existing one",
            path.display()
        );
    }
    let config = onepd_adapters::StoreConfig::new(url.clone(), store.master_key(create)?);
    onepd_adapters::EventLog::open(config).await.with_context(|| format!("opening the event log at {}", redact(&url)))
}

/// The file a `sqlite:` url names; `None` for another database or memory.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// A database url without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(redact("postgres://app:secret@db:5432/onepd"), "postgres://app:***@db:5432/onepd");
        assert_eq!(redact("postgres://postgres@127.0.0.1/onepd"), "postgres://postgres@127.0.0.1/onepd");
        assert_eq!(redact("sqlite://./data/onepd.db"), "sqlite://./data/onepd.db");
    }
}
