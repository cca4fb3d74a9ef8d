//! `onepd workspace create|list`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use onepd_commands::workspace::{NewWorkspace, WorkspaceConfig};
use onepd_domain::WorkspaceId;
use onepd_domain::events::workspace::{Industry, TokenScope};
use serde_json::json;
use uuid::Uuid;

use super::directory;
use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace with an admin token (shown once).
    Create(CreateArgs),
    /// List the workspaces.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The workspace's name, unique per installation.
    name: String,
    /// general, healthcare, pharmaceutical, financial_services, insurance or cryptocurrency.
    #[arg(long, default_value = "general")]
    industry: Industry,
    /// ISO 3166-1 alpha-2 region for phone numbers written without a country code.
    #[arg(long)]
    default_region: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

pub async fn run(command: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        WorkspaceCommand::Create(args) => create(args).await,
        WorkspaceCommand::List(args) => list(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    // An explicit set-up command: it may create the store.
    let log = super::open_log(&args.store, true).await?;
    let directory = directory::load(&log).await?;
    if directory.find_workspace(&args.name).is_some() {
        anyhow::bail!("workspace {:?} exists already", args.name);
    }
    let workspace = WorkspaceId(Uuid::now_v7());
    let spec = NewWorkspace { name: args.name.clone(), industry: args.industry, default_region: args.default_region };
    let mut config = WorkspaceConfig::default();
    let created = config.create(workspace, &spec, "onepd workspace create")?;
    let expected = WorkspaceConfig::default();
    config.record(&created);
    let token_id = Uuid::now_v7();
    let token = config.issue_admin_token(
        workspace,
        token_id,
        rand::random(),
        vec![TokenScope::Admin],
        "onepd workspace create",
    )?;
    directory::append(&log, workspace, &expected, vec![created.clone(), token.event]).await?;
    log.close().await;
    if args.json {
        output::json(&json!({
            "workspace_id": workspace.0,
            "name": created.data["name"],
            "industry": created.data["industry"],
            "default_region": created.data["default_region"],
            "admin_token_id": token_id,
            "admin_token": token.token,
        }));
    } else {
        output::line(format!("created workspace {:?} ({})", args.name, workspace.0));
        output::line(format!("  admin token  {}  (id {token_id})", token.token));
        output::line("  (shown once: only its hash is stored)");
        output::line(format!("next: onepd source create --workspace {} <name> --kind http", args.name));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let log = super::open_log(&args.store, false).await?;
    let directory = directory::load(&log).await?;
    log.close().await;
    if !args.json {
        output::line(format!("{:<38}{:<24}{:<20}{:<8}{}", "ID", "NAME", "INDUSTRY", "REGION", "SOURCES"));
    }
    for entry in directory.workspaces() {
        let sources = directory.sources(entry.id).len();
        if args.json {
            output::json(&json!({
                "workspace_id": entry.id.0,
                "name": entry.name,
                "industry": entry.industry,
                "default_region": entry.default_region,
                "sources": sources,
                "tracking_plan": entry.plan.as_ref().map(|(mode, _)| mode),
            }));
        } else {
            output::line(format!(
                "{:<38}{:<24}{:<20}{:<8}{}",
                entry.id.0.to_string(),
                entry.name,
                entry.industry.as_str(),
                entry.default_region.as_deref().unwrap_or("-"),
                sources
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
