//! `onepd deliveries list|show|retry-dead` and `onepd replay`: the delivery
//! ledger, and re-sending what a destination missed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::EventLog;
use onepd_adapters::activation::admin::{self, Attempt};
use onepd_domain::events::destination::{ReplayRequested, Run};
use onepd_domain::{EventId, EventStore, Position};
use serde_json::{Value, json};
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// A destination's newest delivery attempts, or with --dead its dead letters.
    List(ListArgs),
    /// Every attempt that carried one event, to any destination: when, in what
    /// form (which fields were hashed or removed) and with what outcome.
    Show(ShowArgs),
    /// Send a destination's dead letters again (after fixing the cause).
    RetryDead(RetryDeadArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    #[arg(long)]
    destination: String,
    /// List the dead letters instead of the attempts.
    #[arg(long)]
    dead: bool,
    /// How many attempts, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The event's id.
    #[arg(long)]
    event_id: Uuid,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RetryDeadArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    #[arg(long)]
    destination: String,
    /// Wait until the running server has finished the job, and print its result.
    #[arg(long)]
    wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `onepd replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    #[arg(long)]
    destination: String,
    /// The first position, or an RFC 3339 time (the first event recorded at or after it).
    #[arg(long)]
    from: String,
    /// The last position, or an RFC 3339 time (the last event recorded before it); the head by default.
    #[arg(long)]
    to: Option<String>,
    /// Wait until the running server has finished the job, and print its result.
    #[arg(long)]
    wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        DeliveriesCommand::List(args) => list(args).await,
        DeliveriesCommand::Show(args) => show(args).await,
        DeliveriesCommand::RetryDead(args) => retry_dead(args).await,
    }
}

fn run_name(run: Run) -> String {
    match run {
        Run::Live => "live".to_owned(),
        Run::Job { job_id } => format!("job {job_id}"),
    }
}

fn attempt_json(destination: Option<&str>, attempt: &Attempt) -> Value {
    let a = &attempt.attempt;
    json!({
        "destination": destination,
        "at": attempt.at.to_rfc3339(),
        "position": attempt.position.0,
        "run": run_name(a.run),
        "attempt": a.attempt,
        "events": a.events.len(),
        "failed": a.failed,
        "response": a.response,
        "hashed": a.hashed,
        "scrubbed": a.scrubbed,
        "checkpoint": a.checkpoint.map(|p| p.0),
        "duration_ms": a.duration_ms,
    })
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?;
    let id = entry.created.destination_id;
    let name = entry.created.name.clone();
    if args.dead {
        let ledger = admin::ledger(&log, id).await.context("reading the delivery ledger")?;
        log.close().await;
        for dead in ledger.dead.values() {
            if args.json {
                output::json(&json!({
                    "event_id": dead.event_id.0,
                    "position": dead.position.0,
                    "reason": dead.reason,
                    "at": dead.at.to_rfc3339(),
                }));
            } else {
                output::line(format!(
                    "{:<8} {} {}  {}",
                    dead.position.0,
                    dead.event_id.0,
                    dead.at.to_rfc3339(),
                    dead.reason
                ));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let attempts = admin::attempts(&log, id, args.limit).await.context("reading the delivery ledger")?;
    log.close().await;
    for attempt in &attempts {
        if args.json {
            output::json(&attempt_json(Some(&name), attempt));
        } else {
            let a = &attempt.attempt;
            output::line(format!(
                "{} {:<6} attempt {:<3} {:>5} events {:>4} failed  {}",
                attempt.at.to_rfc3339(),
                run_name(a.run),
                a.attempt,
                a.events.len(),
                a.failed.len(),
                a.response
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let event_id = EventId(args.event_id);
    let (found, withheld) =
        admin::event_history(&log, &directory, workspace, event_id).await.context("reading the delivery ledgers")?;
    log.close().await;
    if found.is_empty() && withheld.is_empty() {
        bail!("event {}: no delivery attempt carried it, and no destination withheld it", args.event_id);
    }
    for withholding in &withheld {
        let one = &withholding.withheld;
        if args.json {
            output::json(&json!({
                "destination": withholding.destination,
                "at": withholding.at.to_rfc3339(),
                "run": run_name(withholding.run),
                "outcome": "withheld",
                "rule": one.rule,
                "reason": one.reason,
            }));
        } else {
            output::line(format!(
                "{} {} ({}): withheld by {}: {}",
                withholding.at.to_rfc3339(),
                withholding.destination,
                run_name(withholding.run),
                one.rule,
                one.reason
            ));
        }
    }
    for (destination, attempt) in &found {
        let a = &attempt.attempt;
        let failed = a.failed.iter().find(|f| f.event_id == event_id);
        if args.json {
            let mut value = attempt_json(Some(destination), attempt);
            value["outcome"] = json!(failed.map_or("delivered", |f| f.outcome.as_str()));
            value["reason"] = json!(failed.map(|f| f.reason.clone()));
            output::json(&value);
        } else {
            let outcome = failed.map_or("delivered".to_owned(), |f| format!("{}: {}", f.outcome, f.reason));
            output::line(format!(
                "{} {destination} ({}, attempt {}): {outcome}",
                attempt.at.to_rfc3339(),
                run_name(a.run),
                a.attempt
            ));
            output::line(format!("  hashed    {}", a.hashed.join(", ")));
            output::line(format!("  scrubbed  {}", a.scrubbed.join(", ")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry_dead(args: RetryDeadArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?;
    let Some(job) = admin::retry_dead(&log, entry, "onepd deliveries retry-dead").await? else {
        log.close().await;
        output::line(format!("destination \"{}\" has no dead letters", entry.created.name));
        return Ok(ExitCode::SUCCESS);
    };
    report_job(&log, &job, args.wait, args.json).await
}

/// `onepd replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?;
    let from = position(&log, &args.from, false).await?;
    let to = match &args.to {
        Some(to) => Some(position(&log, to, true).await?),
        None => None,
    };
    // Times name a window of the log, and a window can hold no event (a quiet
    // day, or one before the log began): that is nothing to send, not a range
    // error about positions the caller never gave. Positions given backwards
    // stay an error.
    let by_time = [Some(&args.from), args.to.as_ref()].into_iter().flatten().any(|bound| is_time(bound));
    let last = match to {
        Some(to) => to,
        None => log.head().await.context("reading the head of the log")?,
    };
    if by_time && from > last {
        log.close().await;
        let window = match &args.to {
            Some(to) => format!("from {} to {to}", args.from),
            None => format!("at or after {}", args.from),
        };
        if args.json {
            output::json(&json!({
                "job_id": null,
                "destination_id": entry.created.destination_id,
                "from": args.from,
                "to": args.to,
                "events": 0,
            }));
        } else {
            output::line(format!("nothing to replay to \"{}\": no event was recorded {window}", entry.created.name));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let job = admin::request_replay(&log, entry, from, to, Vec::new(), "onepd replay").await?;
    report_job(&log, &job, args.wait, args.json).await
}

/// Whether a `--from`/`--to` of `onepd replay` is a time rather than a position.
fn is_time(bound: &str) -> bool {
    bound.parse::<u64>().is_err()
}

/// A position given as a number or a time: the first event recorded at or
/// after it (`from`), or the last one before it (`to`).
async fn position(log: &EventLog, text: &str, last_before: bool) -> anyhow::Result<Position> {
    if let Ok(position) = text.parse::<u64>() {
        return Ok(Position(position));
    }
    let time = onepd_domain::Timestamp::parse_rfc3339(text)
        .with_context(|| format!("{text:?}: expected a position or an RFC 3339 time"))?;
    let at = log.position_at(time).await?;
    Ok(if last_before { Position(at.0.saturating_sub(1)) } else { at })
}

async fn report_job(log: &EventLog, job: &ReplayRequested, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut result = None;
    if wait {
        loop {
            let ledger = admin::ledger(log, job.destination_id).await?;
            if let Some(&done) = ledger.completed_jobs.get(&job.job_id) {
                result = Some(done);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    log.close().await;
    if json {
        output::json(&json!({
            "job_id": job.job_id,
            "destination_id": job.destination_id,
            "from": job.from.0,
            "to": job.to.0,
            "events": if job.only.is_empty() { Value::Null } else { json!(job.only.len()) },
            "delivered": result.map(|r| r.0),
            "dead": result.map(|r| r.1),
        }));
    } else {
        let what = if job.only.is_empty() {
            format!("positions {} to {}", job.from.0, job.to.0)
        } else {
            format!("{} dead letters", job.only.len())
        };
        output::line(format!("replay job {} queued: {what}", job.job_id));
        if let Some((delivered, dead)) = result {
            output::line(format!("  done: {delivered} delivered, {dead} dead-lettered"));
        } else {
            output::line("  the running server sends it; follow with `onepd deliveries list`");
        }
    }
    Ok(ExitCode::SUCCESS)
}
