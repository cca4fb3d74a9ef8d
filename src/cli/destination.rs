//! `onepd destination create|list|pause|resume`: where activation sends a
//! workspace's events.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::activation::admin::{self, DeliveryState};
use onepd_adapters::destinations::BUILT_IN;
use onepd_commands::workspace::EXTERNAL_ADAPTER;
use onepd_domain::Position;
use onepd_domain::events::destination::{DestinationCreated, DestinationFilters, RetryPolicy};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Add a destination: a built-in adapter (meta_capi, google_ads, tiktok,
    /// ga4, webhook, klaviyo, hubspot, mailchimp, braze) or an external one
    /// over gRPC (--adapter grpc --url …).
    Create(Box<CreateArgs>),
    /// List the workspace's destinations with where delivery stands.
    List(ListArgs),
    /// Stop sending to a destination; its checkpoint stays where it is.
    Pause(SwitchArgs),
    /// Send to a paused destination again, from its checkpoint.
    Resume(SwitchArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination's name, unique in the workspace.
    name: String,
    /// The adapter: meta_capi, google_ads, tiktok, ga4, webhook, klaviyo,
    /// hubspot, mailchimp, braze, or grpc.
    #[arg(long)]
    adapter: String,
    /// An external adapter's gRPC address (`http://127.0.0.1:50061`), for --adapter grpc.
    #[arg(long)]
    url: Option<String>,
    /// An adapter setting, `KEY=VALUE`, the value as a string. Repeat for several.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// An adapter setting whose value is JSON (a number, a list, an object):
    /// `KEY=JSON`. Repeat for several.
    #[arg(long = "setting-json", value_name = "KEY=JSON")]
    json_settings: Vec<String>,
    /// Only these message types (track, page, identify, …). Repeat for several.
    #[arg(long = "event-type")]
    event_types: Vec<String>,
    /// Only these track events (`Order Completed`). Repeat for several.
    #[arg(long = "event")]
    event_names: Vec<String>,
    /// Consent categories a message must grant to be sent. Repeat for several.
    #[arg(long = "consent")]
    consent: Vec<String>,
    /// Profile traits sent with each event (not to ad platforms). Repeat for several.
    #[arg(long = "trait")]
    traits: Vec<String>,
    /// `beginning` (deliver the whole history: a backfill) or `now`.
    #[arg(long, default_value = "now")]
    from: String,
    /// How long a failing event is retried before it is dead-lettered, in seconds.
    #[arg(long, default_value_t = RetryPolicy::default().window_secs)]
    retry_window_secs: u64,
    /// The first wait after a failure, in milliseconds (doubling, with jitter).
    #[arg(long, default_value_t = RetryPolicy::default().initial_backoff_ms)]
    initial_backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds.
    #[arg(long, default_value_t = RetryPolicy::default().max_backoff_ms)]
    max_backoff_ms: u64,
    /// How long one delivery may take, in milliseconds.
    #[arg(long, default_value_t = RetryPolicy::default().timeout_ms)]
    timeout_ms: u64,
    #[command(flatten)]
    policy: super::policy::PolicyArgs,
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

#[derive(Debug, Args)]
pub struct SwitchArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    destination: String,
}

pub async fn run(command: DestinationCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        DestinationCommand::Create(args) => create(*args).await,
        DestinationCommand::List(args) => list(args).await,
        DestinationCommand::Pause(args) => switch(args, true).await,
        DestinationCommand::Resume(args) => switch(args, false).await,
    }
}

/// `KEY=VALUE` pairs (values as strings) and `KEY=JSON` pairs as one JSON object.
fn settings(strings: &[String], json: &[String]) -> anyhow::Result<Value> {
    let mut settings = Map::new();
    let pairs = strings.iter().map(|pair| (pair, false)).chain(json.iter().map(|pair| (pair, true)));
    for (pair, is_json) in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("setting {pair:?}: expected KEY=VALUE");
        };
        let value = if is_json {
            serde_json::from_str(value).with_context(|| format!("--setting-json {key}: expected JSON"))?
        } else {
            Value::String(value.to_owned())
        };
        settings.insert(key.to_owned(), value);
    }
    Ok(Value::Object(settings))
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let settings = settings(&args.settings, &args.json_settings)?;
    if args.adapter != EXTERNAL_ADAPTER {
        if !BUILT_IN.contains(&args.adapter.as_str()) {
            bail!("adapter {:?}: expected one of {}, {EXTERNAL_ADAPTER}", args.adapter, BUILT_IN.join(", "));
        }
        onepd_adapters::destinations::built_in(&args.adapter, &settings)?;
    }
    let start = match args.from.as_str() {
        "beginning" => Position(1),
        "now" => Position(0),
        other => bail!("--from: expected beginning or now, found {other:?}"),
    };
    let policy = args.policy.policy()?;
    let (log, _, workspace) = directory::open(&args.target).await?;
    let created = DestinationCreated {
        destination_id: Uuid::now_v7(),
        name: args.name,
        adapter: args.adapter,
        url: args.url,
        settings,
        filters: DestinationFilters {
            event_types: args.event_types,
            event_names: args.event_names,
            consent_categories: args.consent,
        },
        traits: args.traits,
        start,
        retry: RetryPolicy {
            window_secs: args.retry_window_secs,
            initial_backoff_ms: args.initial_backoff_ms,
            max_backoff_ms: args.max_backoff_ms,
            timeout_ms: args.timeout_ms,
        },
        policy,
    };
    let created = admin::create_destination(&log, workspace, created, "onepd destination create").await?;
    log.close().await;
    if args.json {
        output::json(&json!({
            "destination_id": created.destination_id,
            "name": created.name,
            "adapter": created.adapter,
            "start": created.start.0,
        }));
    } else {
        output::line(format!("created destination \"{}\" ({})", created.name, created.destination_id));
        output::line(format!("  adapter   {}", created.adapter));
        output::line(format!("  delivers  from position {}", created.start.0));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let statuses = admin::statuses(&log, &directory, workspace).await.context("reading the delivery ledgers")?;
    log.close().await;
    for status in statuses {
        let created = &status.entry.created;
        let ledger = &status.ledger;
        let state = ledger.state(status.entry.paused);
        if args.json {
            output::json(&json!({
                "destination_id": created.destination_id,
                "name": created.name,
                "adapter": created.adapter,
                "url": created.url,
                "state": state.name(),
                "state_detail": state.to_string(),
                "quarantined": ledger.quarantined.len(),
                "checkpoint": ledger.checkpoint.unwrap_or(created.start).0,
                "delivered": ledger.delivered,
                "attempts": ledger.attempts,
                "dead_letters": ledger.dead.len(),
                "open_jobs": ledger.open_jobs.keys().collect::<Vec<_>>(),
            }));
        } else {
            output::line(format!(
                "{:<20} {:<10} {:<8} checkpoint {:<8} delivered {:<8} dead {:<5} quarantined {:<4} {}",
                created.name,
                created.adapter,
                state.name(),
                ledger.checkpoint.unwrap_or(created.start).0,
                ledger.delivered,
                ledger.dead.len(),
                ledger.quarantined.len(),
                created.destination_id
            ));
            if !matches!(state, DeliveryState::Running | DeliveryState::Paused) {
                output::line(format!("  {state}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn switch(args: SwitchArgs, pause: bool) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?;
    let actor = if pause { "onepd destination pause" } else { "onepd destination resume" };
    admin::switch_destination(&log, workspace, entry.created.destination_id, pause, actor).await?;
    log.close().await;
    output::line(format!("{} destination \"{}\"", if pause { "paused" } else { "resumed" }, entry.created.name));
    Ok(ExitCode::SUCCESS)
}
