//! `onepd rejected list|replay`: messages the pipeline refused, kept as
//! `MessageRejected` events, and running them through it again once the cause
//! (usually the tracking plan) is fixed. A replayed message that is accepted
//! is recorded with `RejectionReplayed`, so it is listed as open no more.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use onepd_adapters::EventLog;
use onepd_adapters::ingest::{Caller, Ingest, IngestConfig, Outcome};
use onepd_domain::events::message::{MessageRejected, RejectionReplayed, Violation};
use onepd_domain::{
    AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, Timestamp,
    WorkspaceId,
};
use onepd_projections::directory::WriteGrant;
use serde_json::json;
use uuid::Uuid;

use super::directory;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum RejectedCommand {
    /// List the rejected messages not yet replayed.
    List(ListArgs),
    /// Run every open rejected message through the pipeline again.
    Replay(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: directory::Scope,
    /// Print the result as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

pub async fn run(command: RejectedCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        RejectedCommand::List(args) => list(args).await,
        RejectedCommand::Replay(args) => replay(args).await,
    }
}

/// A rejection still open.
struct Open {
    event: RecordedEvent,
    rejected: Option<MessageRejected>,
}

async fn open_rejections(log: &EventLog, workspace: WorkspaceId) -> anyhow::Result<Vec<Open>> {
    let filter = EventFilter {
        workspace: Some(workspace),
        event_types: vec![MessageRejected::TYPE.into(), RejectionReplayed::TYPE.into()],
        ..EventFilter::default()
    };
    let mut rejections = Vec::new();
    let mut replayed = HashSet::new();
    let mut next = Position(1);
    let head = log.head().await?;
    while next <= head {
        let page = log.read(next, Some(head), &filter, 1_000).await?;
        for event in page.events {
            if event.event_type == RejectionReplayed::TYPE {
                if let Some(done) =
                    event.data.value().and_then(|d| serde_json::from_value::<RejectionReplayed>(d.clone()).ok())
                {
                    replayed.insert(done.rejected_event_id);
                }
            } else {
                rejections.push(event);
            }
        }
        next = page.next;
    }
    Ok(rejections
        .into_iter()
        .filter(|event| !replayed.contains(&event.event_id))
        .map(|event| {
            let rejected = event.data.value().and_then(|d| serde_json::from_value::<MessageRejected>(d.clone()).ok());
            Open { event, rejected }
        })
        .collect())
}

fn describe(open: &Open) -> serde_json::Value {
    json!({
        "position": open.event.position.0,
        "event_id": open.event.event_id,
        "source_id": open.event.metadata.get("source_id"),
        "received_at": open.event.metadata.get("received_at"),
        "message_type": open.rejected.as_ref().and_then(|r| r.message_type.clone()),
        "message_id": open.rejected.as_ref().and_then(|r| r.message_id.clone()),
        "reasons": open.rejected.as_ref().map(|r| r.reasons.clone()),
        "erased": open.rejected.is_none(),
    })
}

fn reasons_text(reasons: &[Violation]) -> String {
    reasons.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; ")
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let open = open_rejections(&log, workspace).await?;
    log.close().await;
    if !args.json {
        output::line(format!("{:<10}{:<10}{:<40}{}", "POSITION", "TYPE", "MESSAGE ID", "REASONS"));
    }
    for rejection in &open {
        if args.json {
            output::json(&describe(rejection));
        } else {
            let (kind, id, reasons) = match &rejection.rejected {
                Some(r) => (
                    r.message_type.clone().unwrap_or_else(|| "-".into()),
                    r.message_id.clone().unwrap_or_else(|| "-".into()),
                    reasons_text(&r.reasons),
                ),
                None => ("-".into(), "-".into(), "(payload erased)".into()),
            };
            output::line(format!("{:<10}{kind:<10}{id:<40}{reasons}", rejection.event.position.0));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (log, _, workspace) = directory::open(&args.target).await?;
    let open = open_rejections(&log, workspace).await?;
    let ingest = Ingest::start(log.clone(), IngestConfig::default()).await?;
    let (mut accepted, mut still) = (0u64, 0u64);
    for rejection in &open {
        let result = replay_one(&log, &ingest, workspace, rejection).await;
        let (status, detail) = match result {
            Ok(Replayed::Accepted(position)) => {
                accepted += 1;
                ("accepted", format!("stored at position {}", position.0))
            }
            Ok(Replayed::StillRejected(reasons)) => {
                still += 1;
                ("rejected", reasons_text(&reasons))
            }
            Err(reason) => {
                still += 1;
                ("skipped", reason)
            }
        };
        if args.json {
            let mut line = describe(rejection);
            line["replay"] = json!({ "status": status, "detail": detail });
            output::json(&line);
        } else {
            output::line(format!("{:<10}{status:<10}{detail}", rejection.event.position.0));
        }
    }
    log.close().await;
    if !args.json {
        output::line(format!("{accepted} accepted, {still} still rejected"));
    }
    Ok(ExitCode::SUCCESS)
}

enum Replayed {
    Accepted(Position),
    StillRejected(Vec<Violation>),
}

async fn replay_one(log: &EventLog, ingest: &Ingest, workspace: WorkspaceId, open: &Open) -> Result<Replayed, String> {
    let rejected = open.rejected.as_ref().ok_or("the payload was erased")?;
    if rejected.truncated {
        return Err("the raw payload was cut at 32 KB when it was rejected; it cannot be replayed".into());
    }
    // A platform's webhook payload is not a message: the platform's own retry
    // (or a re-send from its dashboard) runs it through the fixed mapping.
    if rejected.reasons.iter().any(|reason| reason.rule.starts_with("webhook_")) {
        return Err("a webhook payload, not a message: re-send it from the platform once the cause is fixed".into());
    }
    // Nothing of a suppressed message was kept, and its person asked to be forgotten.
    if rejected.reasons.iter().any(|reason| reason.rule == "suppressed") {
        return Err("about a person who was erased: nothing of it was kept, and it is never replayed".into());
    }
    let message: serde_json::Value =
        serde_json::from_str(&rejected.raw).map_err(|err| format!("the raw payload is not JSON ({err})"))?;
    let source_id = open
        .event
        .metadata
        .get("source_id")
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or("the rejection names no source")?;
    let received_at =
        open.event.metadata.get("received_at").and_then(|at| at.as_str()).and_then(Timestamp::parse_rfc3339);
    let grant = WriteGrant { workspace, source_id, key_id: Uuid::nil() };
    let caller = Caller { request_id: format!("replay-{}", open.event.event_id), received_at, ..Caller::default() };
    let results = ingest.ingest(grant, &caller, vec![message]).await.map_err(|err| err.to_string())?;
    let result = results.into_iter().next().ok_or("no result")?;
    let position = match result.outcome {
        Outcome::Accepted { position } | Outcome::Duplicate { position } => position,
        Outcome::Rejected { reasons, .. } => return Ok(Replayed::StillRejected(reasons)),
    };
    let done = RejectionReplayed {
        rejected_event_id: open.event.event_id,
        accepted_event_id: result.event_id,
        accepted_position: position.0,
    };
    let event = NewEvent {
        event_id: EventId(Uuid::new_v5(&open.event.event_id.0, b"RejectionReplayed")),
        workspace_id: workspace,
        event_type: RejectionReplayed::TYPE.into(),
        schema_version: 1,
        data: serde_json::to_value(done).expect("serializable"),
        metadata: json!({ "actor": "onepd rejected replay", "source_id": source_id }),
        subject: None,
    };
    let request =
        AppendRequest { stream_id: open.event.stream_id.clone(), expected: ExpectedVersion::Any, events: vec![event] };
    log.append(request).await.map_err(|err| err.to_string())?;
    Ok(Replayed::Accepted(position))
}
