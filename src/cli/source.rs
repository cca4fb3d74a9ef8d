//! `onepd source create|list`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use onepd_domain::events::workspace::SourceKind;
use serde_json::json;
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Add a source to a workspace, with a write key (shown once).
    Create(CreateArgs),
    /// List a workspace's sources.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The source's name, unique in the workspace.
    name: String,
    /// server, javascript, http, webhook or file.
    #[arg(long)]
    kind: SourceKind,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

pub async fn run(command: SourceCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        SourceCommand::Create(args) => create(args).await,
        SourceCommand::List(args) => list(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let base = directory::config(&log, workspace).await?;
    let mut config = base.clone();
    let source_id = Uuid::now_v7();
    let actor = "onepd source create";
    let created = config.create_source(workspace, source_id, &args.name, args.kind, actor)?;
    config.record(&created);
    let key_id = Uuid::now_v7();
    let key = config.issue_write_key(workspace, key_id, source_id, rand::random(), actor)?;
    directory::append(&log, workspace, &base, vec![created, key.event]).await?;
    log.close().await;
    if args.json {
        output::json(&json!({
            "workspace_id": workspace.0,
            "source_id": source_id,
            "name": args.name.trim(),
            "kind": args.kind,
            "write_key_id": key_id,
            "write_key": key.token,
        }));
    } else {
        output::line(format!("created source {:?} ({source_id}), kind {}", args.name.trim(), args.kind.as_str()));
        output::line(format!("  write key    {}  (id {key_id})", key.token));
        output::line("  (shown once: only its hash is stored)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let log = super::open_log(&args.target.store, false).await?;
    let directory = directory::load(&log).await?;
    log.close().await;
    let workspace = directory::workspace(&directory, &args.target.workspace)?.id;
    if !args.json {
        output::line(format!("{:<38}{:<24}{:<12}{}", "ID", "NAME", "KIND", "VALID KEYS"));
    }
    for source in directory.sources(workspace) {
        if args.json {
            output::json(&json!({
                "workspace_id": workspace.0,
                "source_id": source.id,
                "name": source.name,
                "kind": source.kind,
                "valid_keys": source.valid_keys,
            }));
        } else {
            output::line(format!(
                "{:<38}{:<24}{:<12}{}",
                source.id.to_string(),
                source.name,
                source.kind.as_str(),
                source.valid_keys
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
