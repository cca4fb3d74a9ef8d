//! `onepd verify`: walk the hash chain.

use std::process::ExitCode;

use clap::Args;
use onepd_domain::EventStore;
use serde_json::json;

use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    let log = super::open_log(&args.store, false).await?;
    let bar = output::progress(0, args.json, "{spinner} verifying [{bar:40}] {pos}/{len} events ({per_sec}, {eta})");
    let progress = output::reporter(&bar);
    let report = log.verify(&progress).await;
    bar.finish_and_clear();
    log.close().await;
    let report = report?;
    match report.first_break {
        None => {
            if args.json {
                output::json(&json!({ "ok": true, "events_checked": report.events_checked }));
            } else {
                output::line(format!("verified {} events: the hash chain holds", report.events_checked));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(broken) => {
            if args.json {
                output::json(&json!({
                    "ok": false,
                    "events_checked": report.events_checked,
                    "first_broken_position": broken.position,
                    "stored_hash": hex::encode(broken.stored),
                    "recomputed_hash": hex::encode(broken.recomputed),
                }));
            } else {
                output::line(format!(
                    "hash chain broken at position {}: stored {}, recomputed {}",
                    broken.position,
                    hex::encode(broken.stored),
                    hex::encode(broken.recomputed)
                ));
            }
            Ok(ExitCode::from(1))
        }
    }
}
