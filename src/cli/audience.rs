//! `onepd audience define|list|remove|check|evaluate|preview|members|history|tick`:
//! a workspace's audiences, the condition language they are written in
//! (tried on its own or against one person's profile, now or as of a past
//! time), who is in them now or was then, every entry and exit with its
//! cause, and the audience clock.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::EventLog;
use onepd_adapters::activation::admin;
use onepd_adapters::audiences::{Audiences, Target, parse_condition};
use onepd_adapters::membership::{Change, Membership, tick_clock};
use onepd_domain::audience::{Condition, Explanation};
use onepd_domain::events::audience::AudienceDefined;
use onepd_domain::{EventStore, Timestamp, WorkspaceId};
use onepd_projections::profile::Lookup;
use serde_json::json;

use super::directory;
use super::profile::{Which, lookup, reader};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum AudienceCommand {
    /// Define an audience, or replace its definition.
    Define(DefineArgs),
    /// List the workspace's audiences with their conditions.
    List(ListArgs),
    /// Remove an audience (refused while another names it).
    Remove(RemoveArgs),
    /// How many of the workspace's profiles meet a condition or audience,
    /// now or as of a past time, with a sample; creates nothing.
    Preview(PreviewArgs),
    /// Check a condition and print it back in its readable and JSON forms.
    Check(CheckArgs),
    /// Evaluate a condition for one person: whether they meet it, why, and
    /// when it changes by itself (exit 0 when they meet it, 1 when not).
    Evaluate(Box<EvaluateArgs>),
    /// Who is in an audience now, or was just before a past time (from the
    /// entries and exits in the log).
    Members(MembersArgs),
    /// Every entry and exit, with the event that caused it and why, from
    /// the log alone.
    History(HistoryArgs),
    /// Move the workspace's audience clock to a time (default now): people
    /// whose window edges it passes are evaluated again. `onepd serve` ticks
    /// by itself; this records a tick by hand (a test clock, a catch-up).
    Tick(TickArgs),
    /// Why one person is or is not in an audience: the condition evaluated
    /// for them (which part holds, from which events) and their entries and
    /// exits, each with its cause.
    Explain(Box<ExplainArgs>),
    /// Connect an audience to a destination: its current members are sent
    /// as entries, then every entry and exit as it happens.
    Connect(ConnectArgs),
    /// Disconnect an audience from a destination: nothing more is sent
    /// (the platform keeps what it was sent).
    Disconnect(DisconnectArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name.
    name: String,
    #[command(flatten)]
    which: Which,
    /// Evaluate as of this RFC 3339 time (default: now).
    #[arg(long)]
    at: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name.
    name: String,
    /// The destination, by name or id.
    #[arg(long)]
    destination: String,
    /// The platform's id of the list or custom audience to keep in step
    /// (Meta's custom audience id, a Klaviyo or HubSpot list id, …).
    #[arg(long)]
    external_id: Option<String>,
    /// Do not send the current members: only entries and exits from now on.
    #[arg(long)]
    no_backfill: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name.
    name: String,
    /// The destination, by name or id.
    #[arg(long)]
    destination: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name.
    name: String,
    /// Just before this RFC 3339 time (default: now).
    #[arg(long)]
    as_of: Option<String>,
    /// Wait until the membership has read the whole log (up to 30 s) first.
    #[arg(long)]
    wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Only this audience's entries and exits.
    #[arg(long)]
    audience: Option<String>,
    /// Only this profile's (by id).
    #[arg(long)]
    profile: Option<String>,
    /// Wait until the membership has read the whole log (up to 30 s) first.
    #[arg(long)]
    wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TickArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The RFC 3339 time the clock moves to (default: now). A time before
    /// the clock's changes nothing: it never goes back.
    #[arg(long)]
    at: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DefineArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name, unique in the workspace.
    name: String,
    /// Who is in it: a condition, readable or as JSON.
    condition: String,
    /// What it is for.
    #[arg(long)]
    description: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The audience's name.
    name: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The condition, readable or as JSON, or an audience's name with `--audience`.
    condition: String,
    /// Read CONDITION as the name of one of the workspace's audiences.
    #[arg(long)]
    audience: bool,
    /// As of this RFC 3339 time: the profiles as they stood then and
    /// windows ending then (default: now).
    #[arg(long)]
    at: Option<String>,
    /// How many of the profiles meeting it to list.
    #[arg(long, default_value_t = 10)]
    sample: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
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
    /// The condition, readable or as JSON, or the name of a defined
    /// audience with `--audience`.
    condition: String,
    /// Read CONDITION as the name of one of the workspace's audiences.
    #[arg(long)]
    audience: bool,
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
        AudienceCommand::Define(args) => define(args).await,
        AudienceCommand::List(args) => list(args).await,
        AudienceCommand::Remove(args) => remove(args).await,
        AudienceCommand::Preview(args) => preview(args).await,
        AudienceCommand::Check(args) => check(args),
        AudienceCommand::Evaluate(args) => evaluate_one(*args).await,
        AudienceCommand::Members(args) => members(args).await,
        AudienceCommand::History(args) => history(args).await,
        AudienceCommand::Tick(args) => tick(args).await,
        AudienceCommand::Explain(args) => explain(*args).await,
        AudienceCommand::Connect(args) => connect(args).await,
        AudienceCommand::Disconnect(args) => disconnect(args).await,
    }
}

fn condition(text: &str) -> anyhow::Result<Condition> {
    parse_condition(text).map_err(anyhow::Error::msg)
}

/// What CONDITION names: a saved audience when `saved`, else a condition.
fn target(text: &str, saved: bool) -> anyhow::Result<Target> {
    Ok(if saved { Target::Saved(text.to_owned()) } else { Target::Condition(condition(text)?) })
}

pub(super) fn parse_at(at: Option<&str>) -> anyhow::Result<Option<Timestamp>> {
    at.map(|text| {
        Timestamp::parse_rfc3339(text.trim())
            .with_context(|| format!("--at: expected an RFC 3339 time, found {text:?}"))
    })
    .transpose()
}

/// The audiences service over the store of `scope`, and its workspace.
pub(super) async fn service(scope: &directory::Scope) -> anyhow::Result<(Audiences, EventLog, WorkspaceId)> {
    let (reader, log, workspace) = reader(scope).await?;
    Ok((Audiences::new(log.clone(), reader), log, workspace))
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

async fn define(args: DefineArgs) -> anyhow::Result<ExitCode> {
    let condition = condition(&args.condition)?;
    let (audiences, log, workspace) = service(&args.target).await?;
    let defined = AudienceDefined { name: args.name.clone(), condition, description: args.description };
    let done = audiences.define(workspace, defined, "onepd audience define").await;
    log.close().await;
    let (position, replaced) = done?;
    if args.json {
        output::json(&json!({ "name": args.name, "replaced": replaced, "position": position.0 }));
    } else {
        let verb = if replaced { "redefined" } else { "defined" };
        output::line(format!("audience {:?} {verb} at position {}", args.name, position.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (audiences, log, workspace) = service(&args.target).await?;
    let listed = async { anyhow::Ok((audiences.list(workspace).await?, audiences.sizes(workspace).await?)) }.await;
    log.close().await;
    let (listed, sizes) = listed?;
    let size = |name: &str| sizes.get(name).copied().unwrap_or_default();
    if args.json {
        let listed: Vec<_> = (listed.values())
            .map(|a| {
                json!({
                    "name": a.name, "condition": a.condition.to_string(), "json": a.condition,
                    "description": a.description, "size": size(&a.name),
                })
            })
            .collect();
        output::json(&json!(listed));
    } else if listed.is_empty() {
        output::line("no audiences");
    } else {
        for audience in listed.values() {
            output::line(format!("{} ({} people): {}", audience.name, size(&audience.name), audience.condition));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let (audiences, log, workspace) = service(&args.target).await?;
    let removed = audiences.remove(workspace, &args.name, "onepd audience remove").await;
    log.close().await;
    let position = removed?;
    if args.json {
        output::json(&json!({ "name": args.name, "position": position.0 }));
    } else {
        output::line(format!("audience {:?} removed at position {}", args.name, position.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn preview(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args.condition, args.audience)?;
    let at = parse_at(args.at.as_deref())?;
    let (audiences, log, workspace) = service(&args.target).await?;
    let now = at.unwrap_or_else(now);
    let previewed = audiences.preview(workspace, &target, at, now, args.sample).await;
    log.close().await;
    let preview = previewed.context("previewing the audience")?;
    if args.json {
        let sample: Vec<String> = preview.sample.iter().map(ToString::to_string).collect();
        output::json(&json!({
            "condition": preview.condition, "at": now.to_rfc3339(),
            "size": preview.size, "profiles": preview.profiles, "sample": sample,
        }));
    } else {
        output::line(format!(
            "{} of {} profiles as of {}: {}",
            preview.size,
            preview.profiles,
            now.to_rfc3339(),
            preview.condition
        ));
        for id in preview.sample {
            output::line(format!("  profile {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn evaluate_one(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args.condition, args.audience)?;
    let lookup = lookup(&args.which)?;
    let at = parse_at(args.at.as_deref())?;
    let (audiences, log, workspace) = service(&args.target).await?;
    let now = at.unwrap_or_else(now);
    let evaluated = audiences.evaluate(workspace, &target, &lookup, at, now).await;
    log.close().await;
    let Some(verdict) = evaluated? else {
        let what = match &lookup {
            Lookup::Identifier(identifier) => identifier.to_string(),
            Lookup::Profile(id) => format!("profile {id}"),
        };
        bail!("{what}: no profile holds it{}", if at.is_some() { " at that time" } else { "" });
    };
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

pub(super) fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(since.as_micros() as i64)
}

/// The membership over the store of `scope`, waiting for it to read the
/// whole log when asked.
async fn membership(scope: &directory::Scope, wait: bool) -> anyhow::Result<(Membership, EventLog, WorkspaceId)> {
    let (reader, log, workspace) = reader(scope).await?;
    let membership = Membership::new(log.clone(), reader.store());
    if wait {
        wait_for_membership(&membership, &log).await?;
    }
    Ok((membership, log, workspace))
}

/// Waits (up to 30 s) until the membership has read the log to its head.
async fn wait_for_membership(membership: &Membership, log: &EventLog) -> anyhow::Result<()> {
    let head = log.head().await?;
    if !membership.wait_for(head, std::time::Duration::from_secs(30)).await? {
        bail!("the audience membership has not read the log up to position {}; is onepd serve running?", head.0);
    }
    Ok(())
}

async fn members(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let as_of = parse_at(args.as_of.as_deref())?;
    let (reader, log, workspace) = reader(&args.target).await?;
    let audiences = Audiences::new(log.clone(), reader);
    let found = async {
        if args.wait {
            wait_for_membership(&audiences.membership(), &log).await?;
        }
        anyhow::Ok(audiences.members(workspace, &args.name, as_of).await?)
    }
    .await;
    log.close().await;
    let found = found.context("reading the audience's members")?;
    if args.json {
        let members: Vec<_> = (found.iter())
            .map(|m| json!({ "profile": m.profile.0.to_string(), "since": m.since.0, "at": m.at.to_rfc3339() }))
            .collect();
        output::json(&json!({ "audience": args.name, "size": found.len(), "members": members }));
    } else {
        let when = as_of.map_or_else(|| "now".to_owned(), |t| format!("just before {}", t.to_rfc3339()));
        output::line(format!("{} members of {:?} {when}", found.len(), args.name));
        for member in found {
            output::line(format!("  profile {} since position {}", member.profile.0, member.since.0));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let (membership, log, workspace) = membership(&args.target, args.wait).await?;
    let mut changes: Vec<Change> = Vec::new();
    let found = membership
        .each_change(workspace, None, |c| {
            if args.audience.as_ref().is_none_or(|name| &c.audience == name)
                && args.profile.as_ref().is_none_or(|id| c.profile.0.to_string() == *id)
            {
                changes.push(c);
            }
        })
        .await;
    log.close().await;
    found.context("reading the audience history")?;
    if args.json {
        let changes: Vec<_> = (changes.iter())
            .map(|c| {
                json!({
                    "position": c.position.0, "change": c.change, "audience": c.audience,
                    "profile": c.profile.0.to_string(), "cause": c.cause.0, "at": c.at.to_rfc3339(), "why": c.why,
                })
            })
            .collect();
        output::json(&json!(changes));
    } else if changes.is_empty() {
        output::line("no entries or exits");
    } else {
        for c in changes {
            output::line(format!(
                "position {}: profile {} {} {:?} (caused by position {}, at {}): {}",
                c.position.0,
                c.profile.0,
                c.change,
                c.audience,
                c.cause.0,
                c.at.to_rfc3339(),
                c.why
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tick(args: TickArgs) -> anyhow::Result<ExitCode> {
    let at = parse_at(args.at.as_deref())?.unwrap_or_else(now);
    let (_, log, workspace) = super::profile::reader(&args.target).await?;
    let ticked = tick_clock(&log, workspace, at).await;
    log.close().await;
    let position = ticked.context("recording the clock tick")?;
    if args.json {
        output::json(&json!({ "at": at.to_rfc3339(), "position": position.0 }));
    } else {
        output::line(format!("audience clock ticked to {} at position {}", at.to_rfc3339(), position.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let (reader, log, workspace) = reader(&args.target).await?;
    let directory = directory::load(&log).await?;
    let audiences = Audiences::new(log.clone(), reader.clone());
    let done = async {
        let entry = admin::find(&directory, workspace, &args.destination)?.clone();
        let id = entry.created.destination_id;
        let position =
            audiences.connect(workspace, &args.name, id, args.external_id.clone(), "onepd audience connect").await?;
        // The current members, sent by a replay of their entries: those the
        // membership holds once it has read up to the connection (entries
        // after it are sent live).
        let members = if args.no_backfill {
            Vec::new()
        } else {
            let membership = audiences.membership();
            if !membership.wait_for(position, std::time::Duration::from_secs(10)).await? {
                eprintln!("note: the audience membership has not reached the connection yet (is onepd serve running?); sending the members it holds");
            }
            membership.entries_of_members(workspace, &args.name).await?
        };
        let job = match (members.first(), members.last()) {
            (Some(first), Some(last)) => Some(
                admin::request_replay(&log, &entry, *first, Some(*last), members.clone(), "onepd audience connect")
                    .await?,
            ),
            _ => None,
        };
        anyhow::Ok((entry.created.name, position, members.len(), job.map(|job| job.job_id)))
    }
    .await;
    log.close().await;
    let (destination, position, members, job) = done?;
    if args.json {
        output::json(&json!({
            "audience": args.name, "destination": destination, "position": position.0,
            "members_sent": members, "job": job.map(|job| job.to_string()),
        }));
    } else {
        output::line(format!(
            "audience {:?} connected to destination {destination:?} at position {}",
            args.name, position.0
        ));
        if let Some(job) = job {
            output::line(format!("sending its {members} current members (replay job {job})"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn disconnect(args: DisconnectArgs) -> anyhow::Result<ExitCode> {
    let (reader, log, workspace) = reader(&args.target).await?;
    let directory = directory::load(&log).await?;
    let audiences = Audiences::new(log.clone(), reader);
    let done = async {
        let entry = admin::find(&directory, workspace, &args.destination)?;
        let position = audiences
            .disconnect(workspace, &args.name, entry.created.destination_id, "onepd audience disconnect")
            .await?;
        anyhow::Ok((entry.created.name.clone(), position))
    }
    .await;
    log.close().await;
    let (destination, position) = done?;
    if args.json {
        output::json(&json!({ "audience": args.name, "destination": destination, "position": position.0 }));
    } else {
        output::line(format!(
            "audience {:?} disconnected from destination {destination:?} at position {}",
            args.name, position.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let lookup = lookup(&args.which)?;
    let at = parse_at(args.at.as_deref())?;
    let (reader, log, workspace) = reader(&args.target).await?;
    let audiences = Audiences::new(log.clone(), reader.clone());
    // Unless asked for another time: as the membership evaluates, at the
    // audience clock when a recorded tick put it ahead of this machine's.
    let clock = audiences.membership().clock(workspace).await?;
    let at = at.or(clock.filter(|clock| *clock > now()));
    let now = at.unwrap_or_else(now);
    let found = async {
        let verdict = audiences.evaluate(workspace, &Target::Saved(args.name.clone()), &lookup, at, now).await?;
        // The person's profile and every profile merged into it.
        let profiles: Vec<String> = match reader.doc(workspace, &lookup).await? {
            Some(doc) => doc.members.iter().map(|member| member.id.0.to_string()).collect(),
            None => Vec::new(),
        };
        let mut changes: Vec<Change> = Vec::new();
        (audiences.membership())
            .each_change(workspace, None, |c| {
                if c.audience == args.name && profiles.contains(&c.profile.0.to_string()) {
                    changes.push(c);
                }
            })
            .await?;
        anyhow::Ok((verdict, changes))
    }
    .await;
    log.close().await;
    let (verdict, changes) = found?;
    let Some(verdict) = verdict else {
        bail!("no profile holds that identifier{}", if at.is_some() { " at that time" } else { "" });
    };
    if args.json {
        let changes: Vec<_> = (changes.iter())
            .map(|c| {
                json!({
                    "position": c.position.0, "change": c.change, "profile": c.profile.0.to_string(),
                    "cause": c.cause.0, "at": c.at.to_rfc3339(), "why": c.why,
                })
            })
            .collect();
        output::json(&json!({
            "audience": args.name, "holds": verdict.holds, "at": now.to_rfc3339(),
            "changes_at": verdict.changes_at.map(Timestamp::to_rfc3339),
            "explanation": verdict.explanation, "history": changes,
        }));
    } else {
        let verb = if verdict.holds { "meets" } else { "does not meet" };
        output::line(format!("{verb} audience {:?} as of {}:", args.name, now.to_rfc3339()));
        print(&verdict.explanation, 1);
        if changes.is_empty() {
            output::line("never entered it");
        }
        for c in changes {
            output::line(format!(
                "{} at position {} (caused by position {}, at {}): {}",
                c.change,
                c.position.0,
                c.cause.0,
                c.at.to_rfc3339(),
                c.why
            ));
        }
    }
    Ok(if verdict.holds { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
