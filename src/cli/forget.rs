//! `onepd forget`: erase a person (the right to be forgotten) without
//! rewriting the log. Their subject keys are destroyed, their identifiers
//! suppressed, every destination asked to delete them, and the workspace's
//! profiles re-derived without them (`onepd_adapters::erasure`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use onepd_adapters::erasure;
use onepd_adapters::profiles::ProfileReader;
use serde_json::json;

use super::directory;
use crate::output;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The person, by any of their identifiers or their profile id.
    #[command(flatten)]
    which: super::profile::Which,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ForgetArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let lookup = super::profile::lookup(&args.which)?;
    let destinations: Vec<_> = directory.destinations(workspace).into_iter().cloned().collect();
    let connect = onepd_adapters::activation::connect();

    // The person is found in the profiles read model, so it must have
    // reached the head: a running server's projection keeps it there,
    // otherwise this command catches it up from its checkpoint.
    let head = onepd_domain::EventStore::head(&log).await.context("reading the log's head")?;
    let quiet = std::time::Duration::from_secs(2);
    let store = super::rebuild::catch_up_profiles(&args.target.store, &log, workspace, head, quiet).await?;
    let profiles = ProfileReader::new(store, log.clone());
    let report = erasure::forget(&log, &profiles, workspace, &[lookup], &destinations, &connect, "cli")
        .await
        .context("erasing the person")?;

    // Re-derive the workspace's profiles now, so a read right after this
    // shows the person gone; a running server does the same when it meets
    // the erasure.
    super::rebuild::catch_up_profiles(&args.target.store, &log, workspace, report.erased_at, quiet).await?;
    log.close().await;

    if args.json {
        output::json(&json!({
            "request_id": report.request_id.to_string(),
            "profiles": report.profiles.iter().map(|id| id.0.to_string()).collect::<Vec<_>>(),
            "subjects": report.subjects,
            "keys_shredded": report.keys_shredded,
            "deletions": report.deletions.iter().map(|deletion| json!({
                "destination": deletion.destination,
                "outcome": deletion.outcome,
                "response": deletion.response,
            })).collect::<Vec<_>>(),
        }));
    } else {
        output::line(format!("erasure {}", report.request_id));
        let profiles: Vec<String> = report.profiles.iter().map(|id| id.0.to_string()).collect();
        output::line(format!(
            "  profiles: {}",
            if profiles.is_empty() {
                "(none found; the identifier is suppressed all the same)".into()
            } else {
                profiles.join(", ")
            }
        ));
        output::line(format!(
            "  identifiers suppressed: {}, subject keys destroyed: {}",
            report.subjects, report.keys_shredded
        ));
        for deletion in &report.deletions {
            output::line(format!("  {}: {} ({})", deletion.destination, deletion.outcome, deletion.response));
        }
        output::line("  profiles re-derived without them");
    }
    Ok(ExitCode::SUCCESS)
}
