//! Operating destinations: creating, pausing and resuming them, reading
//! their ledgers, asking for replays and dead-letter retries. The CLI and
//! the gRPC `onepd.admin.v1.AdminService` both call these, so they behave
//! the same.

use onepd_commands::workspace::{ConfigError, WorkspaceConfig};
use onepd_domain::events::destination::{
    DeliveryAttempted, DestinationCreated, EventsWithheld, ReplayRequested, Run, WithheldEvent, destination_stream,
};
use onepd_domain::events::workspace::workspace_stream;
use onepd_domain::{
    AppendError, AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError,
    Timestamp, WorkspaceId,
};
pub use onepd_projections::activation::DeliveryState;
use onepd_projections::activation::Ledger;
use onepd_projections::directory::{DestinationEntry, Directory};
use uuid::Uuid;

use super::ledger_entries;
use crate::EventLog;

/// Why an operation on destinations failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The change cannot be made.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// The workspace changed meanwhile; run it again.
    #[error("the workspace changed while this ran; run it again")]
    Conflict,
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One workspace's configuration aggregate, from its stream.
pub async fn workspace_config(log: &EventLog, workspace: WorkspaceId) -> Result<WorkspaceConfig, StoreError> {
    let events = log.read_stream(&workspace_stream(workspace), 1, 1_000_000).await?;
    Ok(WorkspaceConfig::from_events(&events))
}

/// Appends `request`, answering a refusal as an [`AdminError`].
pub(crate) async fn append(log: &EventLog, request: AppendRequest) -> Result<Position, AdminError> {
    match log.append(request).await {
        Ok(outcome) => Ok(*outcome.positions.last().expect("at least one event")),
        Err(AppendError::WrongExpectedVersion { .. }) => Err(AdminError::Conflict),
        Err(AppendError::Store(err)) => Err(AdminError::Store(err)),
        Err(err) => Err(AdminError::Invalid(err.to_string())),
    }
}

/// Adds a destination. `created.start` of 0 means "from now": the position
/// after the head. The adapter's settings must have been checked by the
/// caller, which can build it.
pub async fn create_destination(
    log: &EventLog,
    workspace: WorkspaceId,
    mut created: DestinationCreated,
    actor: &str,
) -> Result<DestinationCreated, AdminError> {
    if created.start == Position(0) {
        created.start = log.head().await?.next();
    }
    let config = workspace_config(log, workspace).await?;
    let event = config.create_destination(workspace, created.clone(), actor)?;
    append(log, config.request(workspace, vec![event])).await?;
    Ok(created)
}

/// Pauses (`pause`) or resumes a destination.
pub async fn switch_destination(
    log: &EventLog,
    workspace: WorkspaceId,
    destination: Uuid,
    pause: bool,
    actor: &str,
) -> Result<(), AdminError> {
    let config = workspace_config(log, workspace).await?;
    let event = if pause {
        config.pause_destination(workspace, destination, actor)?
    } else {
        config.resume_destination(workspace, destination, actor)?
    };
    append(log, config.request(workspace, vec![event])).await?;
    Ok(())
}

/// The destination of `workspace` named `id_or_name`.
pub fn find<'a>(
    directory: &'a Directory,
    workspace: WorkspaceId,
    id_or_name: &str,
) -> Result<&'a DestinationEntry, AdminError> {
    directory.find_destination(workspace, id_or_name).ok_or_else(|| {
        let names: Vec<_> = directory.destinations(workspace).iter().map(|d| d.created.name.clone()).collect();
        AdminError::NotFound(format!(
            "destination {id_or_name:?}: not found; the destinations are: {}",
            if names.is_empty() { "(none)".to_owned() } else { names.join(", ") }
        ))
    })
}

/// A destination's ledger, folded.
pub async fn ledger(log: &EventLog, destination: Uuid) -> Result<Ledger, StoreError> {
    let mut ledger = Ledger::default();
    for event in ledger_entries(log, destination).await? {
        ledger.apply(&event);
    }
    Ok(ledger)
}

/// Asks for a replay of `from..=to` (the head when `to` is `None`), or of
/// exactly the positions `only`, to a destination; the running server picks
/// it up. Returns the job.
pub async fn request_replay(
    log: &EventLog,
    entry: &DestinationEntry,
    from: Position,
    to: Option<Position>,
    only: Vec<Position>,
    actor: &str,
) -> Result<ReplayRequested, AdminError> {
    let to = match to {
        Some(to) => to,
        None => log.head().await?,
    };
    if from == Position(0) || from > to {
        return Err(AdminError::Invalid(format!(
            "replay range: expected 1 ≤ from ≤ to, found from {} to {}",
            from.0, to.0
        )));
    }
    let job = ReplayRequested { job_id: Uuid::new_v4(), destination_id: entry.created.destination_id, from, to, only };
    let event = NewEvent {
        event_id: EventId(job.job_id),
        workspace_id: entry.workspace,
        event_type: ReplayRequested::TYPE.into(),
        schema_version: 1,
        data: serde_json::to_value(&job).expect("serializable"),
        metadata: serde_json::json!({ "actor": actor }),
        subject: None,
    };
    let request = AppendRequest {
        stream_id: destination_stream(entry.created.destination_id),
        expected: ExpectedVersion::Any,
        events: vec![event],
    };
    append(log, request).await?;
    Ok(job)
}

/// Asks for every dead letter of a destination to be sent again; `None`
/// when there are none.
pub async fn retry_dead(
    log: &EventLog,
    entry: &DestinationEntry,
    actor: &str,
) -> Result<Option<ReplayRequested>, AdminError> {
    let ledger = ledger(log, entry.created.destination_id).await?;
    let only: Vec<Position> = ledger.dead.keys().copied().collect();
    let (Some(&from), Some(&to)) = (only.first(), only.last()) else { return Ok(None) };
    request_replay(log, entry, from, Some(to), only, actor).await.map(Some)
}

/// One ledger entry with when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Its position in the log.
    pub position: Position,
    /// When it was recorded.
    pub at: Timestamp,
    /// The attempt.
    pub attempt: DeliveryAttempted,
}

/// Every delivery attempt of a destination, oldest first.
async fn all_attempts(log: &EventLog, destination: Uuid) -> Result<Vec<Attempt>, StoreError> {
    Ok(attempts_in(&ledger_entries(log, destination).await?))
}

/// The delivery attempts among a ledger's entries, in order.
fn attempts_in(entries: &[RecordedEvent]) -> Vec<Attempt> {
    entries
        .iter()
        .filter(|event| event.event_type == DeliveryAttempted::TYPE)
        .filter_map(|event| {
            let mut attempt: DeliveryAttempted = serde_json::from_value(event.data.value()?.clone()).ok()?;
            if !attempt.names_keyed {
                // Written before client keys were recorded by digest: never
                // show the key's text.
                attempt.scrubbed =
                    attempt.scrubbed.iter().map(|name| onepd_domain::policy::legacy_field(name)).collect();
                attempt.scrubbed.sort();
                attempt.scrubbed.dedup();
            }
            Some(Attempt { position: event.position, at: event.recorded_at, attempt })
        })
        .collect()
}

/// The newest `limit` delivery attempts of a destination, newest first.
pub async fn attempts(log: &EventLog, destination: Uuid, limit: usize) -> Result<Vec<Attempt>, StoreError> {
    let mut all = all_attempts(log, destination).await?;
    all.reverse();
    all.truncate(limit);
    Ok(all)
}

/// Every attempt, to any destination of the workspace, that carried
/// `event_id`, oldest first, with the destination's name.
pub async fn event_attempts(
    log: &EventLog,
    directory: &Directory,
    workspace: WorkspaceId,
    event_id: EventId,
) -> Result<Vec<(String, Attempt)>, StoreError> {
    Ok(event_history(log, directory, workspace, event_id).await?.0)
}

/// A ledger's record that one event was not sent (consent, `integrations`,
/// the sensitive-data policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withholding {
    /// The destination's name.
    pub destination: String,
    /// When it was recorded.
    pub at: Timestamp,
    /// Which run withheld it.
    pub run: Run,
    /// The event and why.
    pub withheld: WithheldEvent,
}

/// What every destination of the workspace did with `event_id`, each
/// ledger read once: the attempts that carried it and the records that it
/// was withheld, each oldest first.
pub async fn event_history(
    log: &EventLog,
    directory: &Directory,
    workspace: WorkspaceId,
    event_id: EventId,
) -> Result<(Vec<(String, Attempt)>, Vec<Withholding>), StoreError> {
    let mut attempts = Vec::new();
    let mut withheld = Vec::new();
    for entry in directory.destinations(workspace) {
        let name = &entry.created.name;
        let entries = ledger_entries(log, entry.created.destination_id).await?;
        for attempt in attempts_in(&entries) {
            if attempt.attempt.events.iter().any(|(id, _)| *id == event_id) {
                attempts.push((name.clone(), attempt));
            }
        }
        for event in entries.iter().filter(|event| event.event_type == EventsWithheld::TYPE) {
            let Some(data) = event.data.value() else { continue };
            let Ok(record) = serde_json::from_value::<EventsWithheld>(data.clone()) else { continue };
            for one in record.events.into_iter().filter(|one| one.event_id == event_id) {
                let withholding =
                    Withholding { destination: name.clone(), at: event.recorded_at, run: record.run, withheld: one };
                withheld.push((event.position, withholding));
            }
        }
    }
    attempts.sort_by_key(|(_, attempt)| attempt.position);
    withheld.sort_by_key(|(position, _)| *position);
    Ok((attempts, withheld.into_iter().map(|(_, withholding)| withholding).collect()))
}

/// A destination with where its delivery stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationStatus {
    /// Its configuration.
    pub entry: DestinationEntry,
    /// Its ledger, folded.
    pub ledger: Ledger,
}

/// Every destination of `workspace` with its ledger, by name.
pub async fn statuses(
    log: &EventLog,
    directory: &Directory,
    workspace: WorkspaceId,
) -> Result<Vec<DestinationStatus>, StoreError> {
    let mut all = Vec::new();
    for entry in directory.destinations(workspace) {
        let ledger = ledger(log, entry.created.destination_id).await?;
        all.push(DestinationStatus { entry: entry.clone(), ledger });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use onepd_domain::{EventId, Payload, StreamId, WorkspaceId};
    use serde_json::json;

    use super::*;

    fn entry(data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(3),
            event_id: EventId(Uuid::from_u128(3)),
            workspace_id: WorkspaceId(Uuid::from_u128(1)),
            stream_id: StreamId::new("destination-x").unwrap(),
            stream_version: 1,
            event_type: DeliveryAttempted::TYPE.into(),
            schema_version: 1,
            data: Payload::Data(data),
            metadata: json!({}),
            sealed: false,
            recorded_at: Timestamp(0),
            hash: [0; 32],
        }
    }

    #[test]
    fn a_ledger_entry_written_before_keyed_names_never_shows_a_clients_key() {
        let legacy = json!({
            "destination_id": Uuid::from_u128(9), "run": {"kind": "live"}, "attempt": 1, "events": [],
            "response": "200", "duration_ms": 1,
            "scrubbed": ["properties.Have you ever been diagnosed with HIV?", "properties.Margaret Okafor DOB",
                         "context.page.title", "identifiers.client_ip_address"],
        });
        let shown = attempts_in(&[entry(legacy.clone())]);
        assert_eq!(
            shown[0].attempt.scrubbed,
            ["context.page.title", "identifiers.client_ip_address", "properties.<unknown>"]
        );
        // An entry recorded under the rule is shown as written.
        let mut keyed = legacy;
        keyed["scrubbed"] = json!(["properties.diagnosis", "properties.<phi:5c1e0a92d4b7f316>"]);
        keyed["names_keyed"] = json!(true);
        let shown = attempts_in(&[entry(keyed)]);
        assert_eq!(shown[0].attempt.scrubbed, ["properties.diagnosis", "properties.<phi:5c1e0a92d4b7f316>"]);
    }
}
