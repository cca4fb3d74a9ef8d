//! `onepd quarantine list|retry`: events a reader (the profiles projection
//! or a destination) could not read and went on without, and retrying them
//! once an upgrade reads them. A retried profiles record rebuilds the
//! profiles; a retried destination record asks for a replay of that one
//! position, which the running server delivers.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use onepd_adapters::quarantine::{self, Retried};
use onepd_domain::Position;
use serde_json::json;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List the events readers could not read, with why.
    List(ListArgs),
    /// Read quarantined events again and apply those that now read.
    Retry(RetryArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Only the event at this position (every open record when omitted).
    #[arg(long)]
    position: Option<u64>,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

pub async fn run(command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        QuarantineCommand::List(args) => list(args).await,
        QuarantineCommand::Retry(args) => retry(args).await,
    }
}

/// The reader's name as the CLI shows it: `profiles` or `destination:<name>`.
fn reader_name(directory: &onepd_projections::directory::Directory, entry: &quarantine::Quarantined) -> String {
    match entry.record.destination_id {
        Some(id) => {
            let name = directory
                .all_destinations()
                .find(|destination| destination.created.destination_id == id)
                .map_or_else(|| id.to_string(), |destination| destination.created.name.clone());
            format!("destination:{name}")
        }
        None => entry.record.reader.clone(),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let quarantine = quarantine::open(&log).await.context("reading the quarantine records")?;
    log.close().await;
    let open = quarantine.of(workspace);
    for entry in &open {
        let record = &entry.record;
        if args.json {
            output::json(&json!({
                "position": record.position.0,
                "event_id": record.event_id.to_string(),
                "event_type": record.event_type,
                "reader": reader_name(&directory, entry),
                "reason": record.reason,
                "at": entry.at.to_rfc3339(),
            }));
        } else {
            output::line(format!(
                "{:<10} {:<24} {:<18} {}  {}",
                record.position.0,
                reader_name(&directory, entry),
                record.event_type,
                entry.at.to_rfc3339(),
                record.reason
            ));
        }
    }
    if open.is_empty() && !args.json {
        output::line("no quarantined events");
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let results = quarantine::retry(&log, &directory, workspace, args.position.map(Position), "onepd quarantine retry")
        .await
        .context("retrying quarantined events")?;
    let mut rebuild = false;
    let mut still = 0;
    for (entry, retried) in &results {
        let (outcome, detail) = match retried {
            Retried::StillUnreadable(reason) => {
                still += 1;
                ("still unreadable", reason.clone())
            }
            Retried::Replayed { job_id } => ("replay requested", format!("job {job_id}")),
            Retried::NeedsRebuild => {
                rebuild = true;
                ("released", "profiles rebuilt".to_owned())
            }
            Retried::Missing => ("missing", "no such event in the workspace".to_owned()),
        };
        if args.json {
            output::json(&json!({
                "position": entry.record.position.0,
                "reader": reader_name(&directory, entry),
                "outcome": outcome,
                "detail": detail,
            }));
        } else {
            output::line(format!(
                "{:<10} {:<24} {outcome}: {detail}",
                entry.record.position.0,
                reader_name(&directory, entry)
            ));
        }
    }
    if rebuild {
        let (runner, _) = super::rebuild::profiles_runner(&args.target.store, &log).await?;
        runner.rebuild(&|_, _| {}).await.context("rebuilding the profiles")?;
    }
    log.close().await;
    if results.is_empty() && !args.json {
        output::line("no quarantined events to retry");
    }
    // Exit 1 when something is still unreadable: the check ran, and the
    // answer is no.
    Ok(if still > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
