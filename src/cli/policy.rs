//! `onepd policy set|destination|show|explain`: the sensitive-data policy.
//! A workspace's industry decides whether ad platforms get deny-by-default
//! scrubbing; each destination may allow more fields, map custom event names
//! to generic ones, or remove classes of fields; `explain` shows what one
//! event becomes for one destination, and why.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::activation::explain::explain;
use onepd_adapters::activation::{Privacy, admin, connect};
use onepd_domain::EventId;
use onepd_domain::events::workspace::{Industry, WorkspacePolicySet};
use onepd_domain::policy::{self, Classification, DestinationPolicy};
use onepd_projections::activation::Prepared;
use serde_json::{Value, json};
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set the workspace's industry (general, healthcare, pharmaceutical,
    /// financial_services, insurance, cryptocurrency) and whether its ad
    /// platforms may receive IP addresses and user agents (healthcare).
    Set(SetArgs),
    /// Replace one destination's policy: allowed fields, event name mapping,
    /// classes removed.
    Destination(DestinationArgs),
    /// Print the workspace's policy, each destination's, and the tracking
    /// plan's classifications.
    Show(ShowArgs),
    /// Show what one event would become for one destination: what is sent,
    /// what is scrubbed, and why.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The business's industry; every one but general is restricted.
    #[arg(long)]
    industry: Industry,
    /// Let ad platforms receive the visitor's IP address and user agent in
    /// healthcare (withheld by default).
    #[arg(long)]
    allow_ip_user_agent: bool,
    /// The business's site origin (`https://www.example.com`): the page URL
    /// a restricted industry's ad platforms receive, whatever the page.
    /// Without it they receive no page URL.
    #[arg(long, value_name = "URL")]
    site_origin: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A destination's part of the policy, as flags (`destination create` takes
/// them too).
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// A field a restricted industry's ad platform may receive beyond the
    /// standard allowlist: `PATH` takes numbers (`properties.visits`),
    /// `PATH=A|B|C` only the values listed
    /// (`properties.appointment_type=new|follow_up`). Repeat for several.
    #[arg(long = "allow-field", value_name = "PATH[=A|B]")]
    allow_fields: Vec<String>,
    /// Map a custom track name to a generic one, `CUSTOM=GENERIC`
    /// (`"Appointment Booked=Schedule"`). Repeat for several.
    #[arg(long = "map-event", value_name = "CUSTOM=GENERIC")]
    map_events: Vec<String>,
    /// Remove fields of this class before sending, whatever the destination's
    /// category (identifier, phi, financial, free_text, url, device, location,
    /// other_sensitive). Repeat for several.
    #[arg(long = "remove", value_name = "CLASS")]
    remove: Vec<String>,
    /// Whether this destination may receive IP addresses and user agents,
    /// overriding the workspace.
    #[arg(long, value_name = "true|false")]
    ip_user_agent: Option<bool>,
    /// A business associate agreement covers this destination: in
    /// healthcare, an analytics or marketing tool without one is scrubbed
    /// like an ad platform.
    #[arg(long)]
    baa: bool,
    /// Turn on a personal detail for a restricted industry's ad platform
    /// (first_name, last_name, gender, date_of_birth, city, state,
    /// postal_code, country, street, anonymous_id); off by default. Repeat
    /// for several.
    #[arg(long = "identifier", value_name = "SOURCE")]
    identifiers: Vec<String>,
    /// Let a restricted industry's ad platform receive events without
    /// marketing consent (needed by default unless --consent names others).
    #[arg(long)]
    consent_not_required: bool,
}

impl PolicyArgs {
    /// The policy the flags describe.
    pub fn policy(&self) -> anyhow::Result<DestinationPolicy> {
        let mut event_names = BTreeMap::new();
        for pair in &self.map_events {
            let Some((custom, generic)) = pair.split_once('=') else {
                bail!("--map-event {pair:?}: expected CUSTOM=GENERIC");
            };
            event_names.insert(custom.trim().to_owned(), generic.trim().to_owned());
        }
        let remove = self
            .remove
            .iter()
            .map(|class| class.parse::<Classification>().map_err(|err| anyhow::anyhow!("--remove: {err}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let identifiers = self
            .identifiers
            .iter()
            .map(|source| source.parse().map_err(|err| anyhow::anyhow!("--identifier: {err}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let policy = DestinationPolicy {
            allow_fields: self.allow_fields.clone(),
            event_names,
            remove,
            allow_ip_user_agent: self.ip_user_agent,
            baa: self.baa,
            identifiers,
            consent_not_required: self.consent_not_required,
        };
        policy.validate().map_err(|reason| anyhow::anyhow!("policy.{reason}"))?;
        Ok(policy)
    }
}

#[derive(Debug, Args)]
pub struct DestinationArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    destination: String,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The destination (name or id).
    #[arg(long)]
    destination: String,
    /// The event (an accepted message's event id).
    #[arg(long)]
    event_id: Uuid,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        PolicyCommand::Set(args) => set(args).await,
        PolicyCommand::Destination(args) => destination(args).await,
        PolicyCommand::Show(args) => show(args).await,
        PolicyCommand::Explain(args) => run_explain(args).await,
    }
}

async fn set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let config = directory::config(&log, workspace).await?;
    let site_origin =
        args.site_origin.as_deref().map(policy::site_origin).transpose().map_err(|err| anyhow::anyhow!("--{err}"))?;
    let policy = WorkspacePolicySet {
        industry: args.industry,
        allow_ip_user_agent: args.allow_ip_user_agent,
        site_origin: site_origin.clone(),
    };
    let event = config.set_workspace_policy(workspace, policy.clone(), "onepd policy set")?;
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    if args.json {
        output::json(&json!({ "workspace_id": workspace.0, "policy": policy, "position": position.0 }));
    } else {
        output::line(format!(
            "industry {}{}{} (position {})",
            args.industry.as_str(),
            if args.allow_ip_user_agent { ", IP addresses and user agents allowed" } else { "" },
            site_origin.map(|origin| format!(", site origin {origin}")).unwrap_or_default(),
            position.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn destination(args: DestinationArgs) -> anyhow::Result<ExitCode> {
    let policy = args.policy.policy()?;
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?;
    let config = directory::config(&log, workspace).await?;
    let event =
        config.set_destination_policy(workspace, entry.created.destination_id, policy, "onepd policy destination")?;
    let position = directory::append(&log, workspace, &config, vec![event]).await?;
    log.close().await;
    output::line(format!("policy of {} set (position {})", entry.created.name, position.0));
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    log.close().await;
    let privacy = Privacy::of(&directory, workspace);
    let destinations: Vec<Value> = directory
        .destinations(workspace)
        .iter()
        .map(|entry| json!({ "name": entry.created.name, "adapter": entry.created.adapter, "policy": entry.created.policy }))
        .collect();
    let annotations = json!({ "events": privacy.annotations.events, "traits": privacy.annotations.traits });
    if args.json {
        output::json(&json!({
            "industry": privacy.workspace.industry,
            "allow_ip_user_agent": privacy.workspace.allow_ip_user_agent,
            "site_origin": privacy.workspace.site_origin,
            "destinations": destinations,
            "classifications": annotations,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    output::line(format!(
        "industry: {}{}",
        privacy.workspace.industry.as_str(),
        if privacy.workspace.industry.is_restricted() {
            " (restricted: ad platforms get deny-by-default scrubbing)"
        } else {
            ""
        }
    ));
    output::line(format!(
        "IP addresses and user agents for healthcare ad platforms: {}",
        if privacy.workspace.allow_ip_user_agent { "allowed" } else { "withheld" }
    ));
    output::line(format!(
        "site origin (the page URL restricted ad platforms receive): {}",
        privacy.workspace.site_origin.as_deref().unwrap_or("none registered, so no page URL is sent")
    ));
    for destination in &destinations {
        output::line(format!("destination {}: {}", destination["name"].as_str().unwrap_or(""), destination["policy"]));
    }
    output::line(format!("classifications from the tracking plan: {annotations}"));
    Ok(ExitCode::SUCCESS)
}

async fn run_explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let entry = admin::find(&directory, workspace, &args.destination)?.clone();
    let privacy = Privacy::of(&directory, workspace);
    let read_store = onepd_adapters::readstore::ReadStore::open(&args.target.store.database_url())
        .await
        .context("opening the projections' read store")?;
    let read_store = std::sync::Arc::new(read_store);
    let explained = explain(&log, read_store.clone(), &entry, &privacy, &connect(), EventId(args.event_id))
        .await
        .context("explaining the event")?;
    read_store.close().await;
    log.close().await;
    let category = explained.description.category;
    let treated = policy::treated_as(category, &privacy.workspace, &entry.created.policy);
    let industry = privacy.workspace.industry.as_str();
    let requests: Vec<Value> = explained
        .requests
        .iter()
        .flatten()
        .map(|request| {
            let (url, headers) = request.redacted();
            json!({
                "method": request.method,
                "url": url,
                "headers": headers,
                "body": String::from_utf8_lossy(&request.body),
            })
        })
        .collect();
    let (mut verdict, body) = match &explained.prepared {
        Prepared::Send(prepared, notes) => (
            "sent",
            json!({
                "message": prepared.message,
                "identifiers": prepared.identifiers.keys().map(|name| json!({
                    "name": name,
                    "hashed": notes.hashed.contains(name),
                    "keyed": notes.keyed.contains(name),
                })).collect::<Vec<_>>(),
                "traits": prepared.traits.keys().collect::<Vec<_>>(),
                "scrubbed": notes.scrubbed.iter().map(|(field, reason)| json!({"field": field, "reason": reason})).collect::<Vec<_>>(),
                "warnings": notes.warnings,
                "requests": if explained.requests.is_some() { Value::from(requests.clone()) } else { Value::Null },
            }),
        ),
        Prepared::Withheld { rule, reason } => ("withheld", json!({ "rule": rule, "reason": reason })),
        Prepared::Skipped => {
            ("not subscribed", json!({ "reason": "the destination's event types or names do not include this event" }))
        }
    };
    if explained.before_start && verdict == "sent" {
        // Its live run never sent it; what is shown is what a replay sends.
        verdict = "before start";
    }
    if args.json {
        output::json(&json!({
            "destination": entry.created.name,
            "category": category.as_str(),
            "treated_as": treated.as_str(),
            "industry": industry,
            "event_id": args.event_id,
            "position": explained.position.0,
            "verdict": verdict,
            "details": body,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let treated_note = if treated == category {
        String::new()
    } else {
        format!(", treated as {treated}: no business associate agreement")
    };
    output::line(format!(
        "event {} (position {}) for {} ({category}{treated_note}, industry {industry}): {verdict}",
        args.event_id, explained.position.0, entry.created.name
    ));
    if explained.before_start {
        output::line(format!(
            "  the destination delivers from position {}: this event was not sent live; a replay would send this",
            entry.created.start.0
        ));
    }
    match &explained.prepared {
        Prepared::Send(prepared, notes) => {
            for warning in &notes.warnings {
                output::line(format!("warning: {warning}"));
            }
            output::line("identifiers:");
            for name in prepared.identifiers.keys() {
                let how = if notes.keyed.contains(name) {
                    "hmac-sha256 keyed per workspace"
                } else if notes.hashed.contains(name) {
                    "sha256"
                } else {
                    "as normalized"
                };
                output::line(format!("  {name} ({how})"));
            }
            output::line("scrubbed:");
            if notes.scrubbed.is_empty() {
                output::line("  (nothing)");
            }
            for (field, reason) in &notes.scrubbed {
                output::line(format!("  {field}: {reason}"));
            }
            match &explained.requests {
                Some(requests) => {
                    if requests.is_empty() {
                        output::line("request: none (the adapter takes nothing from this event)");
                    }
                    for request in requests {
                        let (url, headers) = request.redacted();
                        output::line(format!("request: {} {url}", request.method));
                        for (name, value) in headers {
                            output::line(format!("  {name}: {value}"));
                        }
                        output::line(String::from_utf8_lossy(&request.body));
                    }
                }
                None => {
                    output::line("prepared event sent to the adapter:");
                    output::line(serde_json::to_string_pretty(&prepared.message).unwrap_or_default());
                }
            }
        }
        _ => output::line(format!("  {}", body["reason"].as_str().unwrap_or_default())),
    }
    Ok(ExitCode::SUCCESS)
}
