//! What the configuration subcommands share: reading the workspace directory
//! and one workspace's configuration from the log, and appending a decided
//! change with optimistic concurrency.

use anyhow::{Context, bail};
use clap::Args;
use onepd_adapters::EventLog;
use onepd_commands::workspace::WorkspaceConfig;
use onepd_domain::{AppendError, EventStore, NewEvent, Position, WorkspaceId};
use onepd_projections::directory::{Directory, WorkspaceEntry};

/// The store and the workspace a configuration subcommand works on.
#[derive(Debug, Args)]
pub struct Scope {
    #[command(flatten)]
    pub store: crate::config::StoreArgs,
    /// The workspace (name or id).
    #[arg(long, default_value = "default")]
    pub workspace: String,
}

/// The log, the directory and the workspace a [`Scope`] names, opened.
pub async fn open(scope: &Scope) -> anyhow::Result<(EventLog, Directory, WorkspaceId)> {
    let log = super::open_log(&scope.store, false).await?;
    let directory = load(&log).await?;
    let workspace = workspace(&directory, &scope.workspace)?.id;
    Ok((log, directory, workspace))
}

/// The directory of every workspace, folded from the whole log.
pub async fn load(log: &EventLog) -> anyhow::Result<Directory> {
    let mut directory = Directory::default();
    onepd_adapters::live::fold_to_head(log, &mut directory).await.context("reading the workspace directory")?;
    Ok(directory)
}

/// The workspace named by `id_or_name`, or an error listing those that exist.
pub fn workspace<'a>(directory: &'a Directory, id_or_name: &str) -> anyhow::Result<&'a WorkspaceEntry> {
    if let Some(entry) = directory.find_workspace(id_or_name) {
        return Ok(entry);
    }
    let names: Vec<_> = directory.workspaces().iter().map(|entry| entry.name.clone()).collect();
    bail!("workspace {id_or_name:?}: not found; the workspaces are: {}", names.join(", "))
}

/// One workspace's configuration aggregate, from its stream.
pub async fn config(log: &EventLog, workspace: WorkspaceId) -> anyhow::Result<WorkspaceConfig> {
    onepd_adapters::activation::admin::workspace_config(log, workspace)
        .await
        .context("reading the workspace's configuration")
}

/// Appends events decided on `config`; refuses if the workspace changed
/// meanwhile, so a decision is never taken on stale state.
pub async fn append(
    log: &EventLog,
    workspace: WorkspaceId,
    config: &WorkspaceConfig,
    events: Vec<NewEvent>,
) -> anyhow::Result<Position> {
    match log.append(config.request(workspace, events)).await {
        Ok(outcome) => Ok(*outcome.positions.last().expect("at least one event")),
        Err(err @ AppendError::WrongExpectedVersion { .. }) => {
            Err(err).context("the workspace changed while this command ran; run it again")
        }
        Err(err) => Err(err).context("appending the configuration change"),
    }
}
