//! `onepd forget`: erase a person (the right to be forgotten) without
//! rewriting the log. Their subject keys are destroyed, their identifiers
//! suppressed, every destination asked to delete them, and the profiles
//! rebuilt without them (`onepd_adapters::erasure`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use onepd_adapters::erasure;
use onepd_projections::runner::PROFILES;
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
    let report = erasure::forget(&log, workspace, &[lookup], &destinations, &connect, "cli")
        .await
        .context("erasing the person")?;

    // Rebuild the profiles now, so a read right after this shows the person
    // gone; a running server rebuilds on its own when it meets the erasure.
    let (runner, store) = super::rebuild::profiles_runner(&args.target.store, &log).await?;
    let bar = output::progress(0, args.json, "{spinner} rebuilding profiles [{bar:40}] {pos}/{len} positions");
    let progress = output::reporter(&bar);
    let mut tries = 0;
    loop {
        tries += 1;
        let failed = match runner.rebuild(&progress).await {
            Ok(_) => break,
            Err(err) => err,
        };
        // A running server rebuilds too when it meets the erasure, and its
        // promotion drops this one's generation: that rebuild will do.
        let live = store.live(PROFILES).await.context("reading the profiles' read model")?;
        if live.is_some_and(|generation| generation.checkpoint >= report.erased_at) {
            break;
        }
        if tries == 3 {
            return Err(failed).context("rebuilding the profiles without the person");
        }
    }
    bar.finish_and_clear();
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
        output::line("  profiles rebuilt without them");
    }
    Ok(ExitCode::SUCCESS)
}
