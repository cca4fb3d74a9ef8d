//! `onepd policy explain`: what one destination would receive for one event,
//! what the sensitive-data policy scrubbed, and why — computed exactly as a
//! delivery computes it (the profile folded up to the event, the adapter's
//! own description, the workspace's keys, the same [`prepare`]), down to the
//! request a built-in adapter would send ([`Destination::render`], the code
//! its delivery sends with).
//!
//! [`Destination::render`]: onepd_domain::destination::Destination::render

use std::sync::Arc;
use std::time::Duration;

use onepd_domain::destination::{Description, RenderedRequest};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::{EventFilter, EventId, EventStore, Position, ProjectionStore};
use onepd_projections::activation::{Prepared, prepare};
use onepd_projections::directory::DestinationEntry;
use onepd_projections::profile::ProfileAsOf;
use onepd_projections::runner::{ProfilesFold, read_facts};

use super::admin::AdminError;
use super::{Connect, Privacy};
use crate::EventLog;
use crate::profiles::as_of::AsOfReader;

/// How long the adapter has to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One event as one destination would receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// What the adapter described (category, identifiers).
    pub description: Description,
    /// Where the event is.
    pub position: Position,
    /// What the destination would get.
    pub prepared: Prepared,
    /// Whether the event is before the position the destination delivers
    /// from: its live run never sent it; a replay would send what is shown.
    pub before_start: bool,
    /// The requests a built-in adapter would send for the event alone;
    /// `None` for an adapter in another process, which receives the
    /// prepared event itself.
    pub requests: Option<Vec<RenderedRequest>>,
}

/// How long an explanation waits for the profiles read model to reach the
/// event.
const READ_MODEL_PATIENCE: Duration = Duration::from_secs(10);

/// Explains `event_id` for the destination `entry` under `privacy`. The
/// profile as of the event comes from the profiles read model in
/// `profiles`, as a delivery's does.
pub async fn explain(
    log: &EventLog,
    profiles: Arc<dyn ProjectionStore>,
    entry: &DestinationEntry,
    privacy: &Privacy,
    connect: &Connect,
    event_id: EventId,
) -> Result<Explanation, AdminError> {
    let adapter = connect(entry).map_err(AdminError::Invalid)?;
    let description = tokio::time::timeout(DESCRIBE_TIMEOUT, adapter.describe())
        .await
        .map_err(|_| AdminError::Invalid(format!("adapter {}: describe timed out", entry.created.adapter)))?
        .map_err(|err| AdminError::Invalid(err.to_string()))?;
    description.validate().map_err(AdminError::Invalid)?;
    let head = log.head().await?;
    let facts = read_facts(log, head).await?;
    let fold = ProfilesFold::suppressing(&facts, log.suppression_hasher());
    let mut as_of = AsOfReader::new(profiles, log.clone()).with_patience(READ_MODEL_PATIENCE);
    let filter = EventFilter { event_types: vec![MessageAccepted::TYPE.into()], ..EventFilter::default() };
    let mut next = Position(1);
    while next <= head {
        let page = log.read(next, Some(head), &filter, 1_000).await?;
        for event in &page.events {
            if event.event_id != event_id {
                continue;
            }
            if event.workspace_id != entry.workspace {
                break;
            }
            if let Some(reason) = event.data.unreadable() {
                return Err(AdminError::NotFound(format!(
                    "event {event_id}: its payload cannot be read ({reason}); it is quarantined, see onepd quarantine list"
                )));
            }
            if event.data.value().is_none() {
                return Err(AdminError::NotFound(format!(
                    "event {event_id}: its payload was erased; nothing of it can be sent"
                )));
            }
            let found = as_of
                .profiles(event.workspace_id, std::slice::from_ref(event), |event| fold.profiles().candidates(event))
                .await?;
            let view = found.first().and_then(Option::as_ref).map(ProfileAsOf::view);
            let privacy = privacy.clone().with_secrets(log.workspace_secrets(entry.workspace));
            let target = privacy.target(&entry.created, &description);
            let prepared =
                if fold.names_erased(event) { super::erased() } else { prepare(event, view.as_ref(), target) };
            let requests = match &prepared {
                Prepared::Send(event, _) => adapter.render(std::slice::from_ref(event)),
                _ => Some(Vec::new()),
            };
            let before_start = event.position < entry.created.start;
            return Ok(Explanation { description, position: event.position, prepared, before_start, requests });
        }
        if page.events.is_empty() {
            break;
        }
        next = page.next;
    }
    Err(AdminError::NotFound(format!("event {event_id}: no accepted message of this workspace has this id")))
}
