//! `onepd key issue|revoke|list`: write keys for sources and admin tokens.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use onepd_domain::events::workspace::TokenScope;
use serde_json::json;
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue a write key for a source, or with --admin an admin token (shown once).
    Issue(IssueArgs),
    /// Revoke a write key or admin token by its id.
    Revoke(RevokeArgs),
    /// List a workspace's write keys and admin tokens (ids only, never secrets).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The source (name or id) a write key writes to.
    #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
    source: Option<String>,
    /// Issue an admin token instead of a write key.
    #[arg(long)]
    admin: bool,
    /// An admin token's scopes: read, audit, admin (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "admin", requires = "admin")]
    scope: Vec<Scope>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scope {
    Read,
    Audit,
    Admin,
}

impl From<Scope> for TokenScope {
    fn from(scope: Scope) -> TokenScope {
        match scope {
            Scope::Read => TokenScope::Read,
            Scope::Audit => TokenScope::Audit,
            Scope::Admin => TokenScope::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The id of the key or token, as printed when it was issued or by `onepd key list`.
    key_id: Uuid,
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

pub async fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        KeyCommand::Issue(args) => issue(args).await,
        KeyCommand::Revoke(args) => revoke(args).await,
        KeyCommand::List(args) => list(args).await,
    }
}

async fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let key_id = Uuid::now_v7();
    let actor = "onepd key issue";
    let (issued, source_id) = match &args.source {
        Some(source) => {
            let source_id = directory
                .find_source(workspace, source)
                .ok_or_else(|| {
                    anyhow::anyhow!("source {source:?}: not found in workspace {:?}", args.target.workspace)
                })?
                .id;
            (config.issue_write_key(workspace, key_id, source_id, rand::random(), actor)?, Some(source_id))
        }
        None => {
            let scopes = args.scope.iter().map(|scope| TokenScope::from(*scope)).collect();
            (config.issue_admin_token(workspace, key_id, rand::random(), scopes, actor)?, None)
        }
    };
    directory::append(&log, workspace, &config, vec![issued.event]).await?;
    log.close().await;
    let kind = if source_id.is_some() { "write key" } else { "admin token" };
    if args.json {
        output::json(&json!({
            "workspace_id": workspace.0,
            "key_id": key_id,
            "kind": kind.replace(' ', "_"),
            "source_id": source_id,
            "key": issued.token,
        }));
    } else {
        output::line(format!("issued {kind} {key_id}"));
        output::line(format!("  {kind:<12} {}", issued.token));
        output::line("  (shown once: only its hash is stored)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let revoked = config.revoke(workspace, args.key_id, "onepd key revoke")?;
    let position = directory::append(&log, workspace, &config, vec![revoked]).await?;
    log.close().await;
    if args.json {
        output::json(&json!({ "workspace_id": workspace.0, "key_id": args.key_id, "revoked_at_position": position.0 }));
    } else {
        output::line(format!(
            "revoked {} (position {}); it authenticates nothing from now on",
            args.key_id, position.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    log.close().await;
    if !args.json {
        output::line(format!("{:<38}{:<13}{:<26}{}", "ID", "KIND", "SOURCE / SCOPES", "STATE"));
    }
    for key in config.keys() {
        if args.json {
            output::json(&serde_json::to_value(&key)?);
        } else {
            let target = match key.source_id {
                Some(source) => directory.source(source).map_or_else(|| source.to_string(), |s| s.name.clone()),
                None => key.scopes.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>().join(","),
            };
            let state = if key.revoked { "revoked" } else { "valid" };
            output::line(format!("{:<38}{:<13}{:<26}{state}", key.key_id.to_string(), key.kind, target));
        }
    }
    Ok(ExitCode::SUCCESS)
}
