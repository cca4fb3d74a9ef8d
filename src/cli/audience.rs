//! `onepd audience check|evaluate`: the audience condition language, tried
//! on its own or against one person's profile, now or as of a past time.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::profiles::AsOf;
use onepd_domain::Timestamp;
use onepd_domain::audience::{Condition, Explanation, evaluate, parse};
use onepd_projections::profile::Lookup;
use serde_json::json;

use super::directory;
use super::profile::{Which, lookup, reader};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum AudienceCommand {
    /// Check a condition and print it back in its readable and JSON forms.
    Check(CheckArgs),
    /// Evaluate a condition for one person: whether they meet it, why, and
    /// when it changes by itself (exit 0 when they meet it, 1 when not).
    Evaluate(Box<EvaluateArgs>),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The condition, readable (`performed "Order Completed" at least 2
    /// times within 90 days`) or as JSON (`{"performed": {…}}`).
    condition: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The condition, readable or as JSON.
    condition: String,
    #[command(flatten)]
    which: Which,
    /// Evaluate as of this RFC 3339 time: the profile as it stood then and
    /// windows ending then (default: now).
    #[arg(long)]
    at: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: AudienceCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        AudienceCommand::Check(args) => check(args),
        AudienceCommand::Evaluate(args) => evaluate_one(*args).await,
    }
}

/// A condition in either form: JSON when it starts with `{`.
fn condition(text: &str) -> anyhow::Result<Condition> {
    if text.trim_start().starts_with('{') {
        let condition: Condition = serde_json::from_str(text).context("condition: not a valid JSON condition")?;
        condition.validate().map_err(|reason| anyhow::anyhow!("condition: {reason}"))?;
        return Ok(condition);
    }
    parse(text).map_err(|err| anyhow::anyhow!("condition: {err}"))
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let condition = condition(&args.condition)?;
    if args.json {
        output::json(&json!({ "condition": condition.to_string(), "json": condition }));
    } else {
        output::line(condition.to_string());
        output::line(serde_json::to_string(&condition).context("encoding the condition")?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn evaluate_one(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let condition = condition(&args.condition)?;
    let lookup = lookup(&args.which)?;
    let at = match args.at.as_deref() {
        Some(text) => Some(
            Timestamp::parse_rfc3339(text.trim())
                .with_context(|| format!("--at: expected an RFC 3339 time, found {text:?}"))?,
        ),
        None => None,
    };
    let (reader, log, workspace) = reader(&args.target).await?;
    let person = reader.person(workspace, &lookup, at.map(AsOf::Time)).await;
    log.close().await;
    let Some(person) = person.context("reading the profile")? else {
        let what = match &lookup {
            Lookup::Identifier(identifier) => identifier.to_string(),
            Lookup::Profile(id) => format!("profile {id}"),
        };
        bail!("{what}: no profile holds it{}", if at.is_some() { " at that time" } else { "" });
    };
    let now = at.unwrap_or_else(now);
    let verdict = evaluate(&condition, &person, now);
    if args.json {
        output::json(&json!({
            "holds": verdict.holds,
            "at": now.to_rfc3339(),
            "changes_at": verdict.changes_at.map(Timestamp::to_rfc3339),
            "explanation": verdict.explanation,
        }));
    } else {
        print(&verdict.explanation, 0);
        match verdict.changes_at {
            Some(edge) => output::line(format!(
                "as of {}; with no new event the answer may change at {} (a window's edge)",
                now.to_rfc3339(),
                edge.to_rfc3339()
            )),
            None => output::line(format!("as of {}; only a new event can change the answer", now.to_rfc3339())),
        }
    }
    Ok(if verdict.holds { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print(explanation: &Explanation, depth: usize) {
    let mark = if explanation.holds { "yes" } else { "no " };
    let positions = if explanation.positions.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = explanation.positions.iter().map(|p| p.0.to_string()).collect();
        let word = if list.len() == 1 { "position" } else { "positions" };
        format!(" at {word} {}", list.join(", "))
    };
    output::line(format!("{}{mark} {}  ({}{positions})", "  ".repeat(depth), explanation.condition, explanation.found));
    for part in &explanation.parts {
        print(part, depth + 1);
    }
}

fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(since.as_micros() as i64)
}
