//! `onepd computed define|list|remove|get`: a workspace's computed traits,
//! and one person's values of them, now or as of a past time.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_domain::audience::ComputedTrait;
use onepd_domain::events::audience::ComputedTraitDefined;
use onepd_projections::profile::Lookup;
use serde_json::json;

use super::audience::{now, parse_at, service};
use super::directory;
use super::profile::{Which, lookup};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ComputedCommand {
    /// Define a computed trait, or replace its definition.
    Define(DefineArgs),
    /// List the workspace's computed traits.
    List(ListArgs),
    /// Remove a computed trait (refused while an audience reads it).
    Remove(RemoveArgs),
    /// One person's computed traits, now or as of a past time.
    Get(Box<GetArgs>),
}

#[derive(Debug, Args)]
pub struct DefineArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Its name: letters, digits and underscores (`lifetime_revenue`).
    name: String,
    /// What it computes, as JSON: {"event": "Order Completed", "kind":
    /// "sum", "property": "revenue", "within": {"days": 365}, "filters":
    /// [...]}; kinds: count, sum, average, min, max, most_frequent, first,
    /// last, unique.
    definition: String,
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
    /// Its name.
    name: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    target: directory::Scope,
    #[command(flatten)]
    which: Which,
    /// As of this RFC 3339 time: the profile as it stood then and windows
    /// ending then (default: now).
    #[arg(long)]
    at: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ComputedCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        ComputedCommand::Define(args) => define(args).await,
        ComputedCommand::List(args) => list(args).await,
        ComputedCommand::Remove(args) => remove(args).await,
        ComputedCommand::Get(args) => get(*args).await,
    }
}

async fn define(args: DefineArgs) -> anyhow::Result<ExitCode> {
    let definition: ComputedTrait = serde_json::from_str(&args.definition)
        .with_context(|| format!("computed trait {:?}: not a valid definition", args.name))?;
    let (service, log, workspace) = service(&args.target).await?;
    let defined = ComputedTraitDefined { name: args.name.clone(), definition };
    let done = service.define_computed_trait(workspace, defined, "onepd computed define").await;
    log.close().await;
    let (position, replaced) = done?;
    if args.json {
        output::json(&json!({ "name": args.name, "replaced": replaced, "position": position.0 }));
    } else {
        let verb = if replaced { "redefined" } else { "defined" };
        output::line(format!("computed trait {:?} {verb} at position {}", args.name, position.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (service, log, workspace) = service(&args.target).await?;
    let listed = service.computed_traits(workspace).await;
    log.close().await;
    let listed = listed?;
    if args.json {
        let listed: Vec<_> = listed.values().map(|c| json!({ "name": c.name, "definition": c.definition })).collect();
        output::json(&json!(listed));
    } else if listed.is_empty() {
        output::line("no computed traits");
    } else {
        for computed in listed.values() {
            output::line(format!("{}: {}", computed.name, serde_json::to_string(&computed.definition)?));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let (service, log, workspace) = service(&args.target).await?;
    let removed = service.remove_computed_trait(workspace, &args.name, "onepd computed remove").await;
    log.close().await;
    let position = removed?;
    if args.json {
        output::json(&json!({ "name": args.name, "position": position.0 }));
    } else {
        output::line(format!("computed trait {:?} removed at position {}", args.name, position.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let lookup = lookup(&args.which)?;
    let at = parse_at(args.at.as_deref())?;
    let (service, log, workspace) = service(&args.target).await?;
    let now = at.unwrap_or_else(now);
    let values = service.computed_values(workspace, &lookup, at, now).await;
    log.close().await;
    let Some(values) = values? else {
        let what = match &lookup {
            Lookup::Identifier(identifier) => identifier.to_string(),
            Lookup::Profile(id) => format!("profile {id}"),
        };
        bail!("{what}: no profile holds it{}", if at.is_some() { " at that time" } else { "" });
    };
    if args.json {
        output::json(&json!({ "at": now.to_rfc3339(), "computed_traits": values }));
    } else {
        for (name, value) in &values {
            let shown = value.as_ref().map_or_else(|| "(nothing to compute from)".to_owned(), ToString::to_string);
            output::line(format!("{name} = {shown}"));
        }
        output::line(format!("as of {}", now.to_rfc3339()));
    }
    Ok(ExitCode::SUCCESS)
}
