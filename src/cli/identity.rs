//! `onepd identity block|unblock|split|rules|dry-run`: operator facts about
//! identity resolution. Each is appended to the workspace's stream; a running
//! `onepd serve` then rebuilds the profiles under it (all history, not only
//! new data).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::profiles::{ProfileReader, parse_profile_id};
use onepd_adapters::readstore::ReadStore;
use onepd_domain::events::identity::IdentityFacts;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::identity::IdentityRules;
use onepd_domain::{EventFilter, EventId, EventStore, Position, ProjectionStore, WorkspaceId};
use onepd_projections::identity::IdentityGraph;
use onepd_projections::identity::compare::{ProfileChange, compare};
use onepd_projections::profile::Lookup;
use serde_json::json;
use uuid::Uuid;

use super::directory;
use super::profile::parse_identifier;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Block an identifier (KIND:VALUE) from linking anything, past events included.
    Block(BlockArgs),
    /// Lift a block.
    Unblock(BlockArgs),
    /// Split a profile by undoing the links of its merge events (all, or those named).
    Split(SplitArgs),
    /// Replace or show the workspace's identity rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Replay the workspace under proposed rules without writing anything, and
    /// list the profiles that would merge or split compared with today.
    DryRun(DryRunArgs),
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The identifier, as KIND:VALUE (`email:family@example.com`).
    identifier: String,
    /// Why (kept in the event).
    #[arg(long)]
    reason: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The profile to split.
    #[arg(long)]
    profile: String,
    /// Undo only the links of this merge event (repeatable); default: every merge of the profile.
    #[arg(long = "event")]
    events: Vec<Uuid>,
    /// Why (kept in the event).
    #[arg(long)]
    reason: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Replace the rules with those in a JSON file.
    Set(RulesSetArgs),
    /// Print the rules in force.
    Show(RulesShowArgs),
}

#[derive(Debug, Args)]
pub struct RulesSetArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The rules: {"link_kinds": [...], "priority": [...], "limits": {"user_id": 1}, "default_limit": 5,
    /// "blocked_values": [...], "blocked_patterns": [...], "custom": [{"name": "crm_id", "from": "external_id"}]}.
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RulesShowArgs {
    #[command(flatten)]
    target: directory::Scope,
}

#[derive(Debug, Args)]
pub struct DryRunArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The proposed rules (same format as `identity rules set`).
    #[arg(long)]
    rules: PathBuf,
    /// Print the changes as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: IdentityCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        IdentityCommand::Block(args) => block(args, true).await,
        IdentityCommand::Unblock(args) => block(args, false).await,
        IdentityCommand::Split(args) => split(args).await,
        IdentityCommand::Rules(RulesCommand::Set(args)) => rules_set(args).await,
        IdentityCommand::Rules(RulesCommand::Show(args)) => rules_show(args).await,
        IdentityCommand::DryRun(args) => dry_run(args).await,
    }
}

const REBUILD_NOTE: &str = "a running onepd serve rebuilds the profiles under it";

fn appended(json: bool, what: String, workspace: WorkspaceId, position: Position) {
    if json {
        output::json(&json!({ "workspace_id": workspace.0, "position": position.0, "fact": what }));
    } else {
        output::line(format!("{what} at position {}; {REBUILD_NOTE}", position.0));
    }
}

async fn block(args: BlockArgs, blocking: bool) -> anyhow::Result<ExitCode> {
    let identifier = parse_identifier(&args.identifier)?;
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let event = if blocking {
        config.block_identifier(workspace, identifier.clone(), args.reason.clone(), "onepd identity block")?
    } else {
        config.unblock_identifier(workspace, identifier.clone(), "onepd identity unblock")?
    };
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    let verb = if blocking { "blocked" } else { "unblocked" };
    appended(args.json, format!("{verb} {identifier}"), workspace, position);
    Ok(ExitCode::SUCCESS)
}

async fn split(args: SplitArgs) -> anyhow::Result<ExitCode> {
    let profile = parse_profile_id(&args.profile)
        .with_context(|| format!("--profile: expected a profile id (UUID), found {:?}", args.profile))?;
    let (log, _, workspace) = directory::open(&args.target).await?;
    let mut events: Vec<EventId> = args.events.iter().map(|id| EventId(*id)).collect();
    if events.is_empty() {
        let store = ReadStore::open(&args.target.store.database_url()).await.context("opening the read store")?;
        let store: Arc<dyn ProjectionStore> = Arc::new(store);
        let reader = ProfileReader::new(store, log.clone());
        let Some(merges) = reader.merges(workspace, &Lookup::Profile(profile)).await? else {
            bail!("profile {profile}: not found in the profiles read model");
        };
        events = merges.iter().map(|merge| merge.event_id).collect();
        if events.is_empty() {
            bail!("profile {profile}: formed by no merge, so there is nothing to split");
        }
    }
    let config = directory::config(&log, workspace).await?;
    let count = events.len();
    let event = config.split_profile(workspace, profile, events, args.reason.clone(), "onepd identity split")?;
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    appended(args.json, format!("split profile {profile} (undoing {count} merge events)"), workspace, position);
    Ok(ExitCode::SUCCESS)
}

fn read_rules(file: &PathBuf) -> anyhow::Result<IdentityRules> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: expected identity rules as JSON", file.display()))
}

async fn rules_set(args: RulesSetArgs) -> anyhow::Result<ExitCode> {
    let rules = read_rules(&args.file)?;
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let event = config.change_identity_rules(workspace, rules, "onepd identity rules set")?;
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    appended(args.json, "identity rules changed".into(), workspace, position);
    Ok(ExitCode::SUCCESS)
}

async fn rules_show(args: RulesShowArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    log.close().await;
    let facts = config.identity_facts();
    output::json(&json!({
        "rules": facts.effective_rules(&IdentityRules::default()),
        "unlinked_events": facts.unlinked,
    }));
    Ok(ExitCode::SUCCESS)
}

/// The workspace's graph under `facts`, folded from every accepted message.
async fn graph_under(
    log: &onepd_adapters::EventLog,
    workspace: WorkspaceId,
    facts: &IdentityFacts,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<IdentityGraph> {
    let mut graph = IdentityGraph::new(IdentityRules::default()).with_facts(workspace, facts);
    let filter = EventFilter {
        workspace: Some(workspace),
        event_types: vec![MessageAccepted::TYPE.into()],
        stream: None,
        parts: onepd_projections::profile::FOLDED_PARTS,
    };
    let head = log.head().await?;
    bar.set_length(head.0);
    let mut next = Position(1);
    while next <= head {
        let page = log.read(next, Some(head), &filter, 5_000).await.context("reading the log")?;
        for event in &page.events {
            graph.resolve_event(event);
        }
        next = page.next;
        bar.set_position(next.0.saturating_sub(1));
    }
    Ok(graph)
}

async fn dry_run(args: DryRunArgs) -> anyhow::Result<ExitCode> {
    let proposed_rules = read_rules(&args.rules)?;
    onepd_commands::workspace::check_rules(&proposed_rules)?;
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let today = config.identity_facts().clone();
    let proposed = IdentityFacts { rules: Some(proposed_rules), ..today.clone() };
    let bar = output::progress(0, args.json, "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec})");
    let current = graph_under(&log, workspace, &today, &bar).await?;
    bar.reset();
    let changed = graph_under(&log, workspace, &proposed, &bar).await?;
    bar.finish_and_clear();
    log.close().await;
    let changes = match (current.workspace(workspace), changed.workspace(workspace)) {
        (Some(current), Some(changed)) => compare(current, changed),
        _ => Vec::new(),
    };
    if args.json {
        for change in &changes {
            output::json(&serde_json::to_value(change)?);
        }
    } else {
        print_changes(&changes);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_changes(changes: &[ProfileChange]) {
    let counts: HashMap<&str, usize> = changes.iter().fold(HashMap::new(), |mut counts, change| {
        *counts.entry(change.change).or_default() += 1;
        counts
    });
    output::line(format!(
        "{} profile merges, {} profile splits compared with today",
        counts.get("merge").unwrap_or(&0),
        counts.get("split").unwrap_or(&0)
    ));
    if changes.is_empty() {
        return;
    }
    output::line(format!("{:<6}  {:<38}  {:<38}  identifiers", "change", "today", "proposed"));
    for change in changes {
        let ids = |ids: &[onepd_domain::identity::ProfileId]| {
            ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        };
        let mut identifiers: Vec<String> = change.identifiers.iter().map(ToString::to_string).collect();
        identifiers.extend(change.dropped.iter().map(|identifier| format!("{identifier} (dropped)")));
        output::line(format!(
            "{:<6}  {:<38}  {:<38}  {}",
            change.change,
            ids(&change.current),
            ids(&change.proposed),
            identifiers.join(" ")
        ));
    }
}
