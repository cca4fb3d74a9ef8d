//! `onepd verify`: walk the hash chain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use onepd_adapters::store::{HeadCheck, SignedHead};
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
    /// After a verification that holds, write a head file signed with a key
    /// derived from the master key. Keep it away from the database (another
    /// machine, a ticket, a notary): a later `--expect-head` shows whether
    /// the log was rewritten or cut short since.
    #[arg(long, value_name = "FILE")]
    save_head: Option<PathBuf>,
    /// Check the log against a head file written by `--save-head`: its
    /// signature, and that the event at its position is still the one it
    /// names (the log may have grown since).
    #[arg(long, value_name = "FILE")]
    expect_head: Option<PathBuf>,
    /// Check an export (`onepd events export`, NDJSON or Parquet) instead of
    /// the database: its lines, every event's hash and link, its range and
    /// count, and with the master key its signature. Needs no database.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// With `--export`: accept an export without a signature although a
    /// master key is here (exports of a log that has no master key).
    #[arg(long, requires = "export")]
    allow_unsigned: bool,
}

/// What `--expect-head` found: `None` when it holds, else why not.
async fn expected_head(log: &onepd_adapters::EventLog, file: &Path) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the head file {}", file.display()))?;
    let saved: SignedHead = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a head file written by onepd verify --save-head", file.display()))?;
    Ok(match log.check_head(&saved).await? {
        HeadCheck::Holds => None,
        HeadCheck::OtherLog => {
            Some(format!("{}: the head is of another log (its first event differs from this one's)", file.display()))
        }
        HeadCheck::BadSignature => Some(format!(
            "{}: the signature does not match this master key: the file was altered, or made with another key",
            file.display()
        )),
        HeadCheck::Truncated { head } => Some(format!(
            "the log ends at position {head}, before the saved head at {}: events were removed",
            saved.position
        )),
        HeadCheck::Rewritten { found } => Some(format!(
            "the event at position {} is not the one the saved head names (saved {}, found {found}): the log was \
             rewritten at or before it",
            saved.position, saved.hash
        )),
    })
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    if let Some(file) = &args.export {
        return verify_export(&args, file);
    }
    let log = super::open_log(&args.store, false).await?;
    let bar = output::progress(0, args.json, "{spinner} verifying [{bar:40}] {pos}/{len} events ({per_sec}, {eta})");
    let progress = output::reporter(&bar);
    let report = log.verify(&progress).await;
    bar.finish_and_clear();
    let report = report?;
    let mut head_held = None;
    if report.first_break.is_none()
        && let Some(file) = &args.expect_head
    {
        if !log.has_master_key() {
            log.close().await;
            anyhow::bail!(
                "checking {} needs the master key that signed it (ONEPD_MASTER_KEY or <data dir>/master.key): \
                 without it a forged file would pass",
                file.display()
            );
        }
        let found = expected_head(&log, file).await;
        let found = match found {
            Ok(found) => found,
            Err(err) => {
                log.close().await;
                return Err(err);
            }
        };
        if let Some(problem) = found {
            log.close().await;
            if args.json {
                output::json(
                    &json!({ "ok": false, "events_checked": report.events_checked, "expected_head": problem }),
                );
            } else {
                output::line(format!("the hash chain holds, but {problem}"));
            }
            return Ok(ExitCode::from(1));
        }
        head_held = Some(file.clone());
    }
    if report.first_break.is_none()
        && let Some(file) = &args.save_head
    {
        let head = log.signed_head(report.events_checked).await;
        log.close().await;
        let head =
            head.context("signing the head (needs the master key: ONEPD_MASTER_KEY or <data dir>/master.key)")?;
        let text = serde_json::to_string_pretty(&head)? + "\n";
        std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    } else {
        log.close().await;
    }
    match report.first_break {
        None => {
            if args.json {
                let mut answer = json!({ "ok": true, "events_checked": report.events_checked });
                if head_held.is_some() {
                    answer["expected_head"] = json!("holds");
                }
                output::json(&answer);
            } else {
                output::line(format!("verified {} events: the hash chain holds", report.events_checked));
                if let Some(file) = &head_held {
                    output::line(format!("and the head saved in {} holds: nothing up to it changed", file.display()));
                }
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

/// `onepd verify --export FILE`: checks an export without the database.
fn verify_export(args: &VerifyArgs, file: &Path) -> anyhow::Result<ExitCode> {
    use onepd_adapters::export::verify::{CheckOptions, Signature, check_ndjson, check_parquet, check_saved_head};
    if args.save_head.is_some() {
        anyhow::bail!("--save-head signs the database's head; it does not go with --export");
    }
    let master = args.store.master_key(false)?;
    let saved: Option<SignedHead> = match &args.expect_head {
        None => None,
        Some(head) => {
            if master.is_none() {
                eprintln!(
                    "error: checking {} needs the master key that signed it (ONEPD_MASTER_KEY or <data \
                     dir>/master.key): without it a forged file would pass",
                    head.display()
                );
                return Ok(ExitCode::from(2));
            }
            let text =
                std::fs::read_to_string(head).with_context(|| format!("reading the head file {}", head.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!("{}: expected a head file written by onepd verify --save-head", head.display())
            })?)
        }
    };
    let heads: Vec<u64> = saved.iter().map(|head| head.position).collect();
    let options = CheckOptions { allow_unsigned: args.allow_unsigned };
    let mut opened = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    // The first bytes tell Parquet (`PAR1`) from NDJSON; they are read
    // again from memory, so a pipe works too (NDJSON only: Parquet needs a
    // file it can seek in).
    let mut magic = Vec::with_capacity(4);
    {
        use std::io::Read;
        (&mut opened).take(4).read_to_end(&mut magic).with_context(|| format!("reading {}", file.display()))?;
    }
    let checked = if magic == b"PAR1" {
        let opened = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        check_parquet(opened, master.as_ref(), &heads, options)
    } else {
        let reader = std::io::Read::chain(std::io::Cursor::new(magic), opened);
        check_ndjson(std::io::BufReader::with_capacity(1 << 20, reader), master.as_ref(), &heads, options)
    };
    let report = match checked {
        Ok(report) => report,
        Err(problem) => {
            if args.json {
                output::json(&json!({ "ok": false, "line": problem.line, "problem": problem.reason }));
            } else {
                output::line(format!(
                    "{}: the export does not hold at line {}: {}",
                    file.display(),
                    problem.line,
                    problem.reason
                ));
            }
            return Ok(ExitCode::from(1));
        }
    };
    let head_problem = match (&saved, &master) {
        (Some(saved), Some(master)) => check_saved_head(&report, saved, master),
        _ => None,
    };
    let signature = match report.signature {
        Signature::Holds => "holds under this master key",
        Signature::NotChecked => "present, not checked (no master key here)",
        Signature::Unsigned => "absent (exported without a master key)",
    };
    if args.json {
        output::json(&json!({
            "ok": head_problem.is_none(),
            "from_position": report.from_position,
            "to_position": report.to_position,
            "events": report.events,
            "gap_free": report.gap_free,
            "last_hash": report.last_hash,
            "signature": match report.signature {
                Signature::Holds => "holds",
                Signature::NotChecked => "not_checked",
                Signature::Unsigned => "unsigned",
            },
            "expected_head": match (&saved, &head_problem) {
                (None, _) => serde_json::Value::Null,
                (Some(_), None) => json!("holds"),
                (Some(_), Some(problem)) => json!(problem),
            },
        }));
    } else if let Some(problem) = &head_problem {
        output::line(format!("the export's lines and chain hold, but {problem}"));
    } else {
        output::line(format!(
            "verified {} events of positions {} to {}{}: every line and every hash holds",
            report.events,
            report.from_position,
            report.to_position,
            if report.gap_free { ", every event of the range" } else { " (filtered: the events the filter admits)" }
        ));
        output::line(format!("  last hash {}", report.last_hash));
        output::line(format!("  signature {signature}"));
        if let Some(saved) = &saved {
            output::line(format!("  and the saved head at position {} holds", saved.position));
        }
    }
    Ok(if head_problem.is_none() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
