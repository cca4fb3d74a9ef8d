//! One event with everything the log and the read model say about it
//! (`onepd events show`, `AuditService.ShowEvent`): its export line (the
//! envelope, the payload and the chain link), whether its link holds, the
//! profile it was attributed to and the merges it caused, and every ledger
//! entry that carried it to a destination or withheld it.

use std::sync::Arc;

use onepd_domain::events::destination::{DeliveryAttempted, EventsWithheld, Run};
use onepd_domain::identity::IdentityRules;
use onepd_domain::{EventFilter, EventStore, Position, ProjectionStore, RecordedEvent, StoreError, WorkspaceId};
use onepd_projections::directory::Directory;
use onepd_projections::profile::{Lookup, message_identifiers};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{body, quarantine_marks, row_of};
use crate::EventLog;
use crate::profiles::ProfileReader;

/// Which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRef {
    /// By position.
    Position(u64),
    /// By event id.
    Id(Uuid),
}

impl EventRef {
    /// A position (digits) or an event id.
    pub fn parse(text: &str) -> Option<EventRef> {
        if let Ok(position) = text.parse::<u64>() {
            return Some(EventRef::Position(position));
        }
        Uuid::parse_str(text).ok().map(EventRef::Id)
    }
}

/// Ledger events read per page.
const PAGE: usize = 1_000;

/// The event `which` names, as JSON; `None` when the log has no such event
/// in `workspace` (any workspace when `None`). `profiles` is the read
/// store of the profiles projection, when there is one.
pub async fn show(
    log: &EventLog,
    profiles: Option<Arc<dyn ProjectionStore>>,
    workspace: Option<WorkspaceId>,
    which: EventRef,
) -> Result<Option<Value>, StoreError> {
    let position = match which {
        EventRef::Position(position) => position,
        EventRef::Id(id) => match log.position_of(id).await? {
            Some(position) => position.0,
            None => return Ok(None),
        },
    };
    if position == 0 {
        return Ok(None);
    }
    let Some((row, opened)) = log.opened_rows(Position(position), Position(position), 1, |_| true).await?.pop() else {
        return Ok(None);
    };
    if row.position != position || workspace.is_some_and(|workspace| workspace.0 != row.workspace_id) {
        return Ok(None);
    }
    let previous = log.hash_before(Position(position)).await?;
    let marks = quarantine_marks(log, Some(row.workspace_id)).await?;
    let mut export = row_of(&row, opened, &previous, marks.get(&position));
    let holds = row.as_stored().chain_hash(&previous) == row.hash;
    // A payload nested deeper than a JSON value holds is shown as text.
    let deep = |raw: &Option<Box<serde_json::value::RawValue>>| {
        raw.as_ref().is_some_and(|raw| serde_json::from_str::<Value>(raw.get()).is_err())
    };
    if deep(&export.data) || deep(&export.metadata) {
        export.unreadable.get_or_insert_with(|| "nested too deep to show as JSON: see stored_data".into());
        let engine = base64::engine::general_purpose::STANDARD;
        if let Some(data) = export.data.take() {
            export.stored_data.get_or_insert_with(|| base64::Engine::encode(&engine, data.get()));
        }
        if let Some(metadata) = export.metadata.take() {
            export.stored_metadata = Some(base64::Engine::encode(&engine, metadata.get()));
        }
    }
    let line: Value = serde_json::from_str(&body(&export)).unwrap_or(Value::Null);
    let event_workspace = WorkspaceId(row.workspace_id);
    let decoded = log.read_at(event_workspace, &[Position(position)]).await?;
    let mut directory = Directory::default();
    crate::live::fold_to_head(log, &mut directory).await?;
    let projections = match (decoded.first(), profiles) {
        (Some(event), Some(store)) => profile_effects(log, store, event).await?,
        (_, None) => json!({ "note": "no profiles read model: run `onepd serve` or `onepd rebuild profiles`" }),
        (None, _) => Value::Null,
    };
    let deliveries = deliveries(log, &directory, event_workspace, row.event_id, position).await?;
    Ok(Some(json!({
        "event": line,
        "chain": {
            "previous_hash": hex::encode(previous),
            "hash": hex::encode(row.hash),
            "holds": holds,
        },
        "projections": projections,
        "deliveries": deliveries,
    })))
}

/// The profile `event` was attributed to and the merges it caused, from
/// the live read model.
async fn profile_effects(
    log: &EventLog,
    store: Arc<dyn ProjectionStore>,
    event: &RecordedEvent,
) -> Result<Value, StoreError> {
    let reader = ProfileReader::new(store, log.clone());
    let checkpoint = reader.checkpoint().await?;
    if checkpoint.is_none_or(|checkpoint| checkpoint < event.position) {
        return Ok(json!({
            "note": format!(
                "the profiles read model has not reached position {} yet (it is at {})",
                event.position,
                checkpoint.map_or(0, |checkpoint| checkpoint.0)
            )
        }));
    }
    if matches!(event.data, onepd_domain::Payload::Erased) {
        return Ok(json!({ "note": "its payload was erased: the profile it touched is not known any more" }));
    }
    let Some(message) = event.data.value().and_then(|data| data.get("message")) else {
        return Ok(json!({ "note": "not a message: it touches no profile" }));
    };
    for identifier in message_identifiers(message, &IdentityRules::default()) {
        let Some(doc) = reader.doc(event.workspace_id, &Lookup::Identifier(identifier)).await? else { continue };
        let Some(member) = doc.attributed_at(event.position) else { continue };
        let merges: Vec<Value> = doc
            .merges
            .iter()
            .filter(|merge| merge.position == event.position)
            .map(|merge| {
                json!({
                    "survivor": merge.survivor.to_string(),
                    "absorbed": merge.absorbed.to_string(),
                    "shared": merge.shared.to_string(),
                    "rule": merge.rule,
                })
            })
            .collect();
        return Ok(json!({
            "profile_id": doc.id.to_string(),
            "attributed_to": member.to_string(),
            "merges": merges,
        }));
    }
    Ok(json!({ "note": "attributed to no profile (no identifier, or every one blocked or erased)" }))
}

fn run_name(run: &Run) -> String {
    match run {
        Run::Live => "live".into(),
        Run::Job { job_id } => format!("job {job_id}"),
    }
}

/// Every ledger entry after `position` that carried or withheld the event.
async fn deliveries(
    log: &EventLog,
    directory: &Directory,
    workspace: WorkspaceId,
    event_id: Uuid,
    position: u64,
) -> Result<Vec<Value>, StoreError> {
    let filter = EventFilter {
        workspace: Some(workspace),
        event_types: vec![DeliveryAttempted::TYPE.into(), EventsWithheld::TYPE.into()],
        stream: None,
        ..EventFilter::default()
    };
    let name = |id: Uuid| directory.destination(id).map(|entry| entry.created.name.clone()).unwrap_or_default();
    let mut found = Vec::new();
    let mut next = Position(position + 1);
    let head = log.head().await?;
    while next <= head {
        let page = log.read(next, Some(head), &filter, PAGE).await?;
        for entry in &page.events {
            let Some(data) = entry.data.value() else { continue };
            if entry.event_type == DeliveryAttempted::TYPE {
                let Ok(attempt) = serde_json::from_value::<DeliveryAttempted>(data.clone()) else { continue };
                if !attempt.events.iter().any(|(id, _)| id.0 == event_id) {
                    continue;
                }
                let outcome = match attempt.failed.iter().find(|failed| failed.event_id.0 == event_id) {
                    Some(failed) => format!("{}: {}", failed.outcome, failed.reason),
                    None => "delivered".into(),
                };
                found.push(json!({
                    "destination_id": attempt.destination_id.to_string(),
                    "destination": name(attempt.destination_id),
                    "run": run_name(&attempt.run),
                    "attempt": attempt.attempt,
                    "outcome": outcome,
                    "response": attempt.response,
                    "hashed": attempt.hashed,
                    "scrubbed": attempt.scrubbed,
                    "at": entry.recorded_at.to_rfc3339(),
                    "ledger_position": entry.position.0,
                }));
            } else {
                let Ok(withheld) = serde_json::from_value::<EventsWithheld>(data.clone()) else { continue };
                let Some(event) = withheld.events.iter().find(|event| event.event_id.0 == event_id) else { continue };
                found.push(json!({
                    "destination_id": withheld.destination_id.to_string(),
                    "destination": name(withheld.destination_id),
                    "run": run_name(&withheld.run),
                    "outcome": format!("withheld ({}): {}", event.rule, event.reason),
                    "at": entry.recorded_at.to_rfc3339(),
                    "ledger_position": entry.position.0,
                }));
            }
        }
        next = page.next;
    }
    Ok(found)
}
