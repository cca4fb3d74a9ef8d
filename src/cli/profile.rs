//! `onepd profile get|explain`: read the unified profiles from the read model
//! the server keeps (`onepd serve` must have run since the events arrived, or
//! `onepd rebuild profiles` been run).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use onepd_adapters::audiences::Audiences;
use onepd_adapters::profiles::{AsOf, Explanation, ProfileReader, parse_profile_id};
use onepd_adapters::readstore::ReadStore;
use onepd_domain::identity::{Identifier, IdentifierKind};
use onepd_domain::{Position, ProjectionStore, Timestamp};
use onepd_projections::identity::HeldBack;
use onepd_projections::profile::{Lookup, Profile};
use serde_json::json;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Print the profile holding an identifier, now or as of a past position or time.
    Get(GetArgs),
    /// Show the chain of links (each with its event) joining two identifiers.
    Explain(ExplainArgs),
}

/// Which profile: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// By email (normalized as at ingest).
    #[arg(long)]
    email: Option<String>,
    /// By user id.
    #[arg(long)]
    user_id: Option<String>,
    /// By anonymous id.
    #[arg(long)]
    anonymous_id: Option<String>,
    /// By phone (normalized to E.164 as at ingest).
    #[arg(long)]
    phone: Option<String>,
    /// By any identifier, as KIND:VALUE (`crm_id:42`).
    #[arg(long)]
    id: Option<String>,
    /// By profile id.
    #[arg(long)]
    profile: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    target: directory::Scope,
    #[command(flatten)]
    which: Which,
    /// The profile as it stood just after this position, or just before
    /// this RFC 3339 time.
    #[arg(long)]
    as_of: Option<String>,
    /// Print the profile as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// One identifier, as KIND:VALUE (`email:ann@example.com`).
    #[arg(long)]
    a: String,
    /// The other identifier, as KIND:VALUE.
    #[arg(long)]
    b: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ProfileCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        ProfileCommand::Get(args) => get(args).await,
        ProfileCommand::Explain(args) => explain(args).await,
    }
}

/// `KIND:VALUE` as an identifier, with emails and phones normalized as the
/// ingest pipeline does.
pub fn parse_identifier(text: &str) -> anyhow::Result<Identifier> {
    let Some((kind, value)) = text.split_once(':') else {
        bail!("identifier: expected KIND:VALUE such as email:ann@example.com, found {text:?}");
    };
    identifier(IdentifierKind::from_name(kind.trim()), value)
}

fn identifier(kind: IdentifierKind, value: &str) -> anyhow::Result<Identifier> {
    let identifier = Identifier::normalized(kind, value).map_err(anyhow::Error::msg)?;
    if identifier.value.trim().is_empty() || identifier.kind.name().is_empty() {
        bail!(
            "identifier: expected KIND:VALUE with both parts, found {}:{:?}",
            identifier.kind.name(),
            identifier.value
        );
    }
    Ok(identifier)
}

pub(super) fn lookup(which: &Which) -> anyhow::Result<Lookup> {
    let pairs = [
        (IdentifierKind::Email, &which.email),
        (IdentifierKind::UserId, &which.user_id),
        (IdentifierKind::AnonymousId, &which.anonymous_id),
        (IdentifierKind::Phone, &which.phone),
    ];
    for (kind, value) in pairs {
        if let Some(value) = value {
            return Ok(Lookup::Identifier(identifier(kind, value)?));
        }
    }
    if let Some(text) = &which.id {
        return Ok(Lookup::Identifier(parse_identifier(text)?));
    }
    let text = which.profile.as_deref().unwrap_or_default();
    let id =
        parse_profile_id(text).with_context(|| format!("--profile: expected a profile id (UUID), found {text:?}"))?;
    Ok(Lookup::Profile(id))
}

/// A position (`1234`) or an RFC 3339 time.
pub fn parse_as_of(text: &str) -> anyhow::Result<AsOf> {
    if let Ok(position) = text.trim().parse::<u64>() {
        return Ok(AsOf::Position(Position(position)));
    }
    Timestamp::parse_rfc3339(text.trim())
        .map(AsOf::Time)
        .with_context(|| format!("--as-of: expected a position or an RFC 3339 time, found {text:?}"))
}

/// The profiles read model beside the event log of `scope`.
pub(super) async fn reader(
    scope: &directory::Scope,
) -> anyhow::Result<(ProfileReader, onepd_adapters::EventLog, onepd_domain::WorkspaceId)> {
    let (log, _, workspace) = directory::open(scope).await?;
    let store = ReadStore::open(&scope.store.database_url()).await.context("opening the projections' read store")?;
    let store: Arc<dyn ProjectionStore> = Arc::new(store);
    Ok((ProfileReader::new(store, log.clone()), log, workspace))
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let lookup = lookup(&args.which)?;
    let as_of = args.as_of.as_deref().map(parse_as_of).transpose()?;
    let (reader, log, workspace) = reader(&args.target).await?;
    let checkpoint = reader.checkpoint().await?;
    let profile = reader.get(workspace, &lookup, as_of).await;
    // Computed traits and audiences are evaluated at a time: now, or the
    // time asked for; not for a position.
    let at = match as_of {
        None => Some(None),
        Some(AsOf::Time(time)) => Some(Some(time)),
        Some(AsOf::Position(_)) => None,
    };
    let summary = match (&profile, at) {
        (Ok(Some(_)), Some(at)) => {
            let audiences = Audiences::new(log.clone(), reader.clone());
            audiences.summary(workspace, &lookup, at, super::audience::now()).await.context("reading its audiences")?
        }
        _ => None,
    };
    log.close().await;
    let Some(profile) = profile.context("reading the profile")? else {
        let what = match &lookup {
            Lookup::Identifier(identifier) => identifier.to_string(),
            Lookup::Profile(id) => format!("profile {id}"),
        };
        if checkpoint.is_none() {
            bail!(
                "{what}: no profile; the profiles read model is not built yet (run onepd serve, or onepd rebuild profiles)"
            );
        }
        bail!("{what}: no profile holds it{}", if as_of.is_some() { " at that point" } else { "" });
    };
    let summary = summary.unwrap_or_default();
    if args.json {
        let mut json = profile_json(&profile)?;
        json["computed_traits"] = json!(summary.computed_traits);
        json["audiences"] = json!(summary.audiences);
        output::json(&json);
    } else {
        print_profile(&profile);
        if !summary.computed_traits.is_empty() {
            output::line("  computed traits");
            for (name, value) in &summary.computed_traits {
                let shown = value.as_ref().map_or_else(|| "(nothing to compute from)".to_owned(), ToString::to_string);
                output::line(format!("    {name} = {shown}"));
            }
        }
        if !summary.audiences.is_empty() {
            output::line(format!("  audiences    {}", summary.audiences.join(", ")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The profile as JSON, with times as RFC 3339 text rather than the stored
/// microseconds.
fn profile_json(profile: &Profile) -> anyhow::Result<serde_json::Value> {
    fn time(value: &mut serde_json::Value) {
        if let Some(micros) = value.as_i64() {
            *value = serde_json::Value::String(Timestamp(micros).to_rfc3339());
        }
    }
    fn stamped(traits: Option<&mut serde_json::Value>) {
        for (_, value) in traits.and_then(serde_json::Value::as_object_mut).into_iter().flatten() {
            if let Some(at) = value.get_mut("timestamp") {
                time(at);
            }
        }
    }
    let mut json = serde_json::to_value(profile).context("encoding the profile")?;
    for field in ["first_seen", "last_seen"] {
        if let Some(value) = json.get_mut(field) {
            time(value);
        }
    }
    stamped(json.get_mut("traits"));
    if let Some(at) = json.pointer_mut("/consent/timestamp") {
        time(at);
    }
    for (_, group) in json.get_mut("groups").and_then(serde_json::Value::as_object_mut).into_iter().flatten() {
        stamped(group.get_mut("traits"));
    }
    Ok(json)
}

fn print_profile(profile: &Profile) {
    output::line(format!("profile {}", profile.id));
    output::line("  identifiers");
    for identifier in &profile.identifiers {
        output::line(format!("    {identifier}"));
    }
    if !profile.traits.is_empty() {
        output::line("  traits");
        for (name, value) in &profile.traits {
            output::line(format!(
                "    {name} = {}   (position {}, source {}, {})",
                value.value,
                value.position.0,
                value.source_id.as_deref().unwrap_or("-"),
                value.timestamp.to_rfc3339()
            ));
        }
    }
    let seen = |time: Option<Timestamp>| time.map_or("-".to_owned(), Timestamp::to_rfc3339);
    output::line(format!("  first seen   {}", seen(profile.first_seen)));
    output::line(format!("  last seen    {}", seen(profile.last_seen)));
    output::line(format!("  events       {}", profile.events));
    for (name, count) in &profile.event_counts {
        output::line(format!("    {name}: {count}"));
    }
    for (currency, total) in &profile.revenue {
        output::line(format!("  revenue      {total:.2} {currency}"));
    }
    if !profile.sources.is_empty() {
        output::line(format!("  sources      {}", profile.sources.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    if !profile.groups.is_empty() {
        output::line(format!("  groups       {}", profile.groups.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    if let Some(consent) = &profile.consent {
        output::line(format!("  consent      {}", consent.value));
    }
    for merge in &profile.merges {
        output::line(format!(
            "  merged       {} into {} at position {} (event {}, {} via {})",
            merge.absorbed, merge.survivor, merge.position.0, merge.event_id, merge.rule, merge.shared
        ));
    }
    for held in &profile.held_back {
        output::line(format!("  held back    {}", held_back_line(held)));
    }
}

/// One held-back identifier, in words.
fn held_back_line(held: &HeldBack) -> String {
    let holder = match held.held_by {
        Some(holder) => format!("held by profile {holder}"),
        None => "not stored".to_owned(),
    };
    format!(
        "{} from position {} (event {}), {holder}: {}",
        held.identifier, held.position.0, held.event_id, held.reason
    )
}

async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = (parse_identifier(&args.a)?, parse_identifier(&args.b)?);
    let (reader, log, workspace) = reader(&args.target).await?;
    let explanation = reader.explain(workspace, &a, &b).await;
    log.close().await;
    match explanation.context("reading the profiles")? {
        Explanation::Linked { profile, links } => {
            if args.json {
                output::json(&json!({ "linked": true, "profile_id": profile, "links": links }));
            } else {
                output::line(format!("{a} and {b} are in profile {profile}:"));
                for link in &links {
                    output::line(format!(
                        "  {} -- {}   {} at position {} (event {}, source {})",
                        link.from,
                        link.to,
                        link.rule,
                        link.position.0,
                        link.event_id,
                        link.source_id.as_deref().unwrap_or("-")
                    ));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Explanation::Apart { a: pa, b: pb, held_back } => {
            if args.json {
                output::json(&json!({
                    "linked": false, "a_profile_id": pa, "b_profile_id": pb, "held_back": held_back,
                }));
            } else {
                output::line(format!("{a} (profile {pa}) and {b} (profile {pb}) are not linked"));
                if let Some(held) = &held_back {
                    output::line(format!("  {}", held_back_line(held)));
                }
            }
            Ok(ExitCode::from(1))
        }
        Explanation::HeldBack { profile, held } => {
            if args.json {
                output::json(&json!({
                    "linked": false, "a_profile_id": profile, "b_profile_id": null, "held_back": held,
                }));
            } else {
                output::line(format!("{a} (profile {profile}) and {b} are not linked; no profile holds {b}"));
                output::line(format!("  {}", held_back_line(&held)));
            }
            Ok(ExitCode::from(1))
        }
        Explanation::Unknown(identifier) => bail!("{identifier}: no profile holds it"),
    }
}
