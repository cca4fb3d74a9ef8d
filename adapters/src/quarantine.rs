//! Quarantined events: listing them, and retrying them once the code that
//! reads them is fixed (after an upgrade). The CLI (`onepd quarantine
//! list|retry`) calls these; the records themselves are ordinary events,
//! so the audit API reads them too (`ReadEvents` with type
//! `EventQuarantined`).
//!
//! A retry reads the event again with the running code. If it still cannot
//! be read, the record stays. If it can, the record is released
//! (`QuarantineReleased`) and the event applied: for a destination by a
//! replay job of exactly that position, for the profiles projection by a
//! rebuild, which the caller runs (it applies every released event at once).

use onepd_domain::events::destination::destination_stream;
use onepd_domain::events::quarantine::{DESTINATION_READER, QuarantineReleased, quarantine_stream};
use onepd_domain::{AppendRequest, EventId, ExpectedVersion, NewEvent, Position, StoreError, WorkspaceId};
use onepd_projections::directory::Directory;
pub use onepd_projections::quarantine::{Quarantine, Quarantined};
use uuid::Uuid;

use crate::EventLog;
use crate::activation::admin::{self, AdminError};

/// Every open quarantine record, folded from the whole log.
pub async fn open(log: &EventLog) -> Result<Quarantine, StoreError> {
    let mut quarantine = Quarantine::default();
    crate::live::fold_to_head(log, &mut quarantine).await?;
    Ok(quarantine)
}

/// What retrying one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// The event still cannot be read: the record stays.
    StillUnreadable(String),
    /// The event reads now; a replay job of it was asked for.
    Replayed {
        /// The job.
        job_id: Uuid,
    },
    /// The event reads now; the profiles must be rebuilt to apply it.
    NeedsRebuild,
    /// The event is gone from the workspace (it cannot be, in an
    /// append-only log, unless the record names another workspace's).
    Missing,
}

/// Retries the open records of `workspace` (only the one at `position`,
/// when given); returns each record with what happened to it.
pub async fn retry(
    log: &EventLog,
    directory: &Directory,
    workspace: WorkspaceId,
    position: Option<Position>,
    actor: &str,
) -> Result<Vec<(Quarantined, Retried)>, AdminError> {
    let quarantine = open(log).await?;
    let mut results = Vec::new();
    for entry in quarantine.of(workspace) {
        if position.is_some_and(|position| position != entry.record.position) {
            continue;
        }
        let events = log.read_at(workspace, &[entry.record.position]).await?;
        let Some(event) = events.first() else {
            results.push((entry.clone(), Retried::Missing));
            continue;
        };
        if let Some(reason) = event.data.unreadable() {
            results.push((entry.clone(), Retried::StillUnreadable(reason.to_owned())));
            continue;
        }
        let record = &entry.record;
        let (retried, applied_by, stream) = match (record.reader.as_str(), record.destination_id) {
            (DESTINATION_READER, Some(destination)) => {
                let destination_entry = admin::find(directory, workspace, &destination.to_string())?;
                let position = record.position;
                let job =
                    admin::request_replay(log, destination_entry, position, Some(position), vec![position], actor)
                        .await?;
                (Retried::Replayed { job_id: job.job_id }, job.job_id.to_string(), destination_stream(destination))
            }
            _ => (Retried::NeedsRebuild, "rebuild".to_owned(), quarantine_stream(workspace)),
        };
        let released = QuarantineReleased {
            position: record.position,
            reader: record.reader.clone(),
            destination_id: record.destination_id,
            applied_by,
        };
        let event = NewEvent {
            event_id: EventId(Uuid::new_v4()),
            workspace_id: workspace,
            event_type: QuarantineReleased::TYPE.into(),
            schema_version: 1,
            data: serde_json::to_value(&released).expect("serializable"),
            metadata: serde_json::json!({ "actor": actor }),
            subject: None,
        };
        let request = AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events: vec![event] };
        admin::append(log, request).await?;
        results.push((entry.clone(), retried));
    }
    Ok(results)
}
