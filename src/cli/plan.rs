//! `onepd plan set|show`: a workspace's tracking plan.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use onepd_domain::events::workspace::PlanMode;
use serde_json::json;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Set the tracking plan from a JSON file (replacing the current one).
    Set(SetArgs),
    /// Print the current tracking plan.
    Show(ShowArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Accept messages that break the plan, recording the violations on them.
    Allow,
    /// Reject them (recorded as MessageRejected; replay after fixing the plan).
    Block,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// What to do with a message that breaks the plan.
    #[arg(long, value_enum, default_value = "allow")]
    mode: Mode,
    /// The plan: {"events": {"<name>": <JSON Schema of properties>}, "identify": <schema of traits>,
    /// "group": <schema of traits>, "allowUnplannedEvents": true}.
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    target: directory::Scope,
}

pub async fn run(command: PlanCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        PlanCommand::Set(args) => set(args).await,
        PlanCommand::Show(args) => show(args).await,
    }
}

async fn set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let plan: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: expected a JSON document", args.file.display()))?;
    let mode = match args.mode {
        Mode::Allow => PlanMode::Allow,
        Mode::Block => PlanMode::Block,
    };
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let event = config.set_tracking_plan(workspace, mode, plan, "onepd plan set")?;
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    if args.json {
        output::json(&json!({ "workspace_id": workspace.0, "mode": mode, "position": position.0 }));
    } else {
        output::line(format!("tracking plan set ({mode:?} mode) at position {}", position.0).to_lowercase());
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let log = super::open_log(&args.target.store, false).await?;
    let directory = directory::load(&log).await?;
    log.close().await;
    let entry = directory::workspace(&directory, &args.target.workspace)?;
    match &entry.plan {
        Some((mode, plan)) => output::json(&json!({ "mode": mode, "plan": plan })),
        None => output::json(&json!(null)),
    }
    Ok(ExitCode::SUCCESS)
}
