//! `onepd webhook configure|show|mappings`: how a webhook source verifies and
//! maps what its platform sends to `POST /v1/webhooks/{source_id}`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use onepd_commands::webhook::{Encoding, GenericHmac, Platform, SHIPPED, VerifyConfig, WebhookSource};
use onepd_domain::events::workspace::{WebhookConfigured, WebhookMapping};
use serde_json::{Value, json};

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Set a webhook source's platform, secret and mappings (replacing any
    /// earlier configuration). Without --mapping, the platform's shipped
    /// mappings are used.
    Configure(ConfigureArgs),
    /// Show a webhook source's configuration (never its secret).
    Show(ShowArgs),
    /// List the mappings onepd ships, or print one to copy and edit.
    Mappings(MappingsArgs),
}

#[derive(Debug, Args)]
pub struct ConfigureArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The source (name or id), of kind webhook.
    source: String,
    /// shopify, stripe, hubspot or generic.
    #[arg(long)]
    platform: Platform,
    /// The platform's signing secret (Shopify's app secret, Stripe's
    /// `whsec_…`, HubSpot's client secret, or a generic HMAC key). A generic
    /// source without one is authenticated by its write key instead.
    #[arg(long, env = "ONEPD_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// How far a signed timestamp may be from now (Stripe, HubSpot).
    #[arg(long, default_value_t = onepd_commands::webhook::verify::DEFAULT_TOLERANCE_SECONDS)]
    tolerance_seconds: u64,
    /// Generic HMAC: the header carrying the signature.
    #[arg(long)]
    signature_header: Option<String>,
    /// Generic HMAC: hex or base64.
    #[arg(long, default_value = "hex", value_parser = parse_encoding)]
    signature_encoding: Encoding,
    /// Generic HMAC: a prefix before the signature, such as `sha256=`.
    #[arg(long)]
    signature_prefix: Option<String>,
    /// A mapping file, optionally for some topics only: `FILE` or
    /// `TOPIC[,TOPIC…]=FILE`. Repeat for several.
    #[arg(long = "mapping")]
    mappings: Vec<String>,
    /// The address the platform calls, for platforms that sign it (HubSpot):
    /// `https://cdp.example.com`.
    #[arg(long)]
    public_url: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// The source (name or id).
    source: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct MappingsArgs {
    /// Print the shipped mapping for this platform...
    #[arg(long, requires = "topic")]
    platform: Option<Platform>,
    /// ...and this topic.
    #[arg(long, requires = "platform")]
    topic: Option<String>,
}

fn parse_encoding(text: &str) -> Result<Encoding, String> {
    serde_json::from_value(Value::String(text.to_owned()))
        .map_err(|_| format!("expected hex or base64, found {text:?}"))
}

pub async fn run(command: WebhookCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        WebhookCommand::Configure(args) => configure(args).await,
        WebhookCommand::Show(args) => show(args).await,
        WebhookCommand::Mappings(args) => mappings(args),
    }
}

async fn configure(args: ConfigureArgs) -> anyhow::Result<ExitCode> {
    let mappings = if args.mappings.is_empty() {
        WebhookSource::shipped_mappings(args.platform)
    } else {
        args.mappings.iter().map(|spec| read_mapping(spec)).collect::<anyhow::Result<_>>()?
    };
    let verification = match &args.secret {
        Some(secret) => {
            let generic = args.signature_header.clone().map(|header| GenericHmac {
                header,
                algorithm: Default::default(),
                encoding: args.signature_encoding,
                prefix: args.signature_prefix.clone(),
            });
            let config = VerifyConfig { secret: secret.clone(), tolerance_seconds: args.tolerance_seconds, generic };
            Some(serde_json::to_value(config).expect("serializable"))
        }
        None => None,
    };
    let (log, directory, workspace) = directory::open(&args.target).await?;
    let source = directory.find_source(workspace, &args.source).ok_or_else(|| {
        anyhow::anyhow!("source {:?}: not found in workspace {:?}", args.source, args.target.workspace)
    })?;
    let (source_id, name) = (source.id, source.name.clone());
    let configured = WebhookConfigured {
        source_id,
        platform: args.platform.name().to_owned(),
        verification,
        mappings,
        public_url: args.public_url.clone(),
    };
    let base = directory::config(&log, workspace).await?;
    let event = base.configure_webhook(workspace, configured.clone(), "onepd webhook configure")?;
    directory::append(&log, workspace, &base, vec![event]).await?;
    log.close().await;
    let path = format!("/v1/webhooks/{source_id}");
    if args.json {
        output::json(
            &json!({ "source_id": source_id, "name": name, "path": path, "configuration": summary(&configured) }),
        );
    } else {
        output::line(format!("configured webhook source {name:?} ({source_id}), platform {}", args.platform.name()));
        output::line(format!("  the platform posts to  POST <onepd http address>{path}"));
        print_mappings(&configured);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `FILE` or `TOPIC[,TOPIC…]=FILE`.
fn read_mapping(spec: &str) -> anyhow::Result<WebhookMapping> {
    let (topics, file) = match spec.split_once('=') {
        Some((topics, file)) => {
            (topics.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(), file)
        }
        None => (Vec::new(), spec),
    };
    let path = PathBuf::from(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mapping: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: expected a JSON mapping", path.display()))?;
    Ok(WebhookMapping { topics, mapping })
}

/// The configuration as shown: everything but the secret.
fn summary(configured: &WebhookConfigured) -> Value {
    let mappings: Vec<Value> = configured
        .mappings
        .iter()
        .map(|mapping| {
            json!({
                "topics": mapping.topics,
                "platform": mapping.mapping.get("platform"),
                "description": mapping.mapping.get("description"),
            })
        })
        .collect();
    let verification = configured.verification.as_ref().map(|value| {
        json!({
            "tolerance_seconds": value.get("tolerance_seconds"),
            "generic": value.get("generic"),
        })
    });
    json!({
        "platform": configured.platform,
        "signed": verification.is_some(),
        "verification": verification,
        "mappings": mappings,
        "public_url": configured.public_url,
    })
}

fn print_mappings(configured: &WebhookConfigured) {
    for (index, mapping) in configured.mappings.iter().enumerate() {
        let topics = if mapping.topics.is_empty() { "every topic".to_owned() } else { mapping.topics.join(", ") };
        let description = mapping.mapping.get("description").and_then(Value::as_str).unwrap_or("");
        output::line(format!("  mapping {index}: {topics}  {description}"));
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (log, directory, workspace) = directory::open(&args.target).await?;
    log.close().await;
    let source = directory.find_source(workspace, &args.source).ok_or_else(|| {
        anyhow::anyhow!("source {:?}: not found in workspace {:?}", args.source, args.target.workspace)
    })?;
    let configured = directory.webhook(source.id).ok_or_else(|| {
        anyhow::anyhow!("source {:?}: no webhook configuration; see `onepd webhook configure`", source.name)
    })?;
    if args.json {
        output::json(&json!({ "source_id": source.id, "name": source.name, "configuration": summary(configured) }));
    } else {
        let signed = if configured.verification.is_some() { "signed" } else { "authenticated by write key" };
        output::line(format!(
            "webhook source {:?} ({}), platform {}, {signed}",
            source.name, source.id, configured.platform
        ));
        output::line(format!("  path  /v1/webhooks/{}", source.id));
        print_mappings(configured);
    }
    Ok(ExitCode::SUCCESS)
}

fn mappings(args: MappingsArgs) -> anyhow::Result<ExitCode> {
    if let (Some(platform), Some(topic)) = (args.platform, &args.topic) {
        let entry = SHIPPED
            .iter()
            .find(|entry| entry.platform == platform && entry.topics.contains(&topic.as_str()))
            .ok_or_else(|| anyhow::anyhow!("no shipped mapping for {} topic {topic:?}", platform.name()))?;
        output::line(entry.json.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    output::line(format!("{:<10}{}", "PLATFORM", "TOPICS"));
    for entry in SHIPPED {
        output::line(format!("{:<10}{}", entry.platform.name(), entry.topics.join(", ")));
    }
    Ok(ExitCode::SUCCESS)
}
