//! The delivery ledger of each destination, folded: where its live
//! subscription got to, what is dead-lettered, and which replay jobs are
//! still to run.
//!
//! * **Checkpoint:** the last `checkpoint` a live attempt recorded; every
//!   position below it is settled (delivered or dead-lettered).
//! * **Dead letters:** events whose last outcome in any run is `permanent`;
//!   an event delivered later (by `retry-dead` or a replay) leaves the list.
//! * **Jobs:** every `ReplayRequested`, open until its `ReplayCompleted`.
//! * **Withheld:** events not sent because of consent, `integrations` or
//!   the sensitive-data policy (`EventsWithheld`, which carries the
//!   checkpoint when a batch held nothing to deliver).
//! * **State:** `stalled` from `DestinationStalled` until the run recovers
//!   (`DestinationRecovered`, or any later live attempt); `retrying` from
//!   the first live attempt left with retryable failures until an attempt
//!   settles its batch. See [`Ledger::state`].
//! * **Quarantined:** events the destination could not read
//!   (`EventQuarantined` in its ledger), until released.

use std::collections::{BTreeMap, HashMap};

use onepd_domain::events::destination::{
    DeliveryAttempted, DestinationRecovered, DestinationStalled, EventsWithheld, LEDGER_TYPES, ReplayCompleted,
    ReplayRequested, Run,
};
use onepd_domain::events::quarantine::{EventQuarantined, QuarantineReleased};
use onepd_domain::{EventId, Position, RecordedEvent, Timestamp};
use uuid::Uuid;

use crate::Fold;

/// An event the destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event.
    pub event_id: EventId,
    /// Its position.
    pub position: Position,
    /// Why it was refused.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: Timestamp,
}

/// One destination's ledger, folded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// Every position below it is settled for the live subscription.
    pub checkpoint: Option<Position>,
    /// Dead letters by position.
    pub dead: BTreeMap<Position, DeadLetter>,
    /// Attempts recorded.
    pub attempts: u64,
    /// Events delivered, over every attempt and run.
    pub delivered: u64,
    /// Replay jobs not completed yet, by id.
    pub open_jobs: BTreeMap<Uuid, ReplayRequested>,
    /// Completed jobs: (delivered, dead).
    pub completed_jobs: HashMap<Uuid, (u64, u64)>,
    /// Since when and why the live run has stalled, if it has.
    pub stalled: Option<(Timestamp, String)>,
    /// Since when and why the live run has been retrying a batch, if it is.
    pub retrying: Option<(Timestamp, String)>,
    /// Events the destination could not read, by position, with why.
    pub quarantined: BTreeMap<Position, String>,
}

/// Where a destination's live delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Delivering, or caught up.
    Running,
    /// A batch keeps failing with retryable errors.
    Retrying {
        /// The first failed attempt.
        since: Timestamp,
        /// The last failure.
        reason: String,
    },
    /// The run cannot deliver at all and is starting again with backoff.
    Stalled {
        /// When it stalled.
        since: Timestamp,
        /// Why.
        reason: String,
    },
    /// Paused by an operator.
    Paused,
}

impl DeliveryState {
    /// The state's name: `running`, `retrying`, `stalled` or `paused`.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryState::Running => "running",
            DeliveryState::Retrying { .. } => "retrying",
            DeliveryState::Stalled { .. } => "stalled",
            DeliveryState::Paused => "paused",
        }
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryState::Retrying { since, reason } => {
                write!(f, "retrying since {}: {reason}", since.to_rfc3339())
            }
            DeliveryState::Stalled { since, reason } => write!(f, "stalled since {}: {reason}", since.to_rfc3339()),
            other => f.write_str(other.name()),
        }
    }
}

impl Ledger {
    /// The live delivery's state; `paused` comes from the directory.
    pub fn state(&self, paused: bool) -> DeliveryState {
        if paused {
            return DeliveryState::Paused;
        }
        if let Some((since, reason)) = &self.stalled {
            return DeliveryState::Stalled { since: *since, reason: reason.clone() };
        }
        if let Some((since, reason)) = &self.retrying {
            return DeliveryState::Retrying { since: *since, reason: reason.clone() };
        }
        DeliveryState::Running
    }

    /// Folds one ledger event of this destination.
    pub fn apply(&mut self, event: &RecordedEvent) {
        let Some(data) = event.data.value() else { return };
        match event.event_type.as_str() {
            DeliveryAttempted::TYPE => {
                let Ok(attempt) = serde_json::from_value::<DeliveryAttempted>(data.clone()) else { return };
                self.attempts += 1;
                if attempt.run == Run::Live {
                    self.stalled = None;
                    let retrying = attempt.failed.iter().any(|failed| failed.outcome == "retryable");
                    if retrying && attempt.checkpoint.is_none() {
                        let since = self.retrying.as_ref().map_or(event.recorded_at, |(since, _)| *since);
                        self.retrying = Some((since, attempt.response.clone()));
                    } else {
                        self.retrying = None;
                    }
                }
                for (event_id, position) in &attempt.events {
                    match attempt.failed.iter().find(|failed| failed.event_id == *event_id) {
                        None => {
                            self.delivered += 1;
                            self.dead.remove(position);
                        }
                        Some(failed) if failed.outcome == "permanent" => {
                            self.dead.insert(
                                *position,
                                DeadLetter {
                                    event_id: *event_id,
                                    position: *position,
                                    reason: failed.reason.clone(),
                                    at: event.recorded_at,
                                },
                            );
                        }
                        Some(_) => {}
                    }
                }
                if attempt.run == Run::Live
                    && let Some(checkpoint) = attempt.checkpoint
                {
                    self.checkpoint = Some(self.checkpoint.map_or(checkpoint, |at| at.max(checkpoint)));
                }
            }
            EventsWithheld::TYPE => {
                let Ok(withheld) = serde_json::from_value::<EventsWithheld>(data.clone()) else { return };
                if withheld.run == Run::Live {
                    self.stalled = None;
                }
                if withheld.run == Run::Live
                    && let Some(checkpoint) = withheld.checkpoint
                {
                    self.checkpoint = Some(self.checkpoint.map_or(checkpoint, |at| at.max(checkpoint)));
                }
            }
            ReplayRequested::TYPE => {
                if let Ok(requested) = serde_json::from_value::<ReplayRequested>(data.clone())
                    && !self.completed_jobs.contains_key(&requested.job_id)
                {
                    self.open_jobs.insert(requested.job_id, requested);
                }
            }
            ReplayCompleted::TYPE => {
                if let Ok(completed) = serde_json::from_value::<ReplayCompleted>(data.clone()) {
                    self.open_jobs.remove(&completed.job_id);
                    self.completed_jobs.insert(completed.job_id, (completed.delivered, completed.dead));
                }
            }
            DestinationStalled::TYPE => {
                if let Ok(stalled) = serde_json::from_value::<DestinationStalled>(data.clone())
                    && stalled.run == Run::Live
                {
                    self.stalled = Some((event.recorded_at, stalled.reason));
                }
            }
            DestinationRecovered::TYPE => {
                if let Ok(recovered) = serde_json::from_value::<DestinationRecovered>(data.clone())
                    && recovered.run == Run::Live
                {
                    self.stalled = None;
                }
            }
            EventQuarantined::TYPE => {
                if let Ok(record) = serde_json::from_value::<EventQuarantined>(data.clone()) {
                    self.quarantined.insert(record.position, record.reason);
                }
            }
            QuarantineReleased::TYPE => {
                if let Ok(released) = serde_json::from_value::<QuarantineReleased>(data.clone()) {
                    self.quarantined.remove(&released.position);
                }
            }
            _ => {}
        }
    }
}

/// Every destination's ledger, by destination id: a [`Fold`] over the
/// ledger events of the whole log.
#[derive(Debug, Clone, Default)]
pub struct Ledgers {
    by_destination: HashMap<Uuid, Ledger>,
}

impl Fold for Ledgers {
    const EVENT_TYPES: &'static [&'static str] = &LEDGER_TYPES;

    fn apply(&mut self, event: &RecordedEvent) {
        let Some(id) = event
            .data
            .value()
            .and_then(|data| data.get("destination_id"))
            .and_then(|id| serde_json::from_value::<Uuid>(id.clone()).ok())
        else {
            return;
        };
        self.by_destination.entry(id).or_default().apply(event);
    }
}

impl Ledgers {
    /// The ledger of `destination`, if anything was recorded for it.
    pub fn get(&self, destination: Uuid) -> Option<&Ledger> {
        self.by_destination.get(&destination)
    }

    /// Every open replay job of every destination.
    pub fn open_jobs(&self) -> Vec<ReplayRequested> {
        self.by_destination.values().flat_map(|ledger| ledger.open_jobs.values().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::events::destination::FailedDelivery;
    use onepd_domain::{Payload, StreamId, WorkspaceId};
    use serde_json::json;

    use super::*;

    fn recorded(position: u64, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            event_id: EventId(Uuid::now_v7()),
            workspace_id: WorkspaceId(Uuid::from_u128(1)),
            stream_id: StreamId::new("destination-x").unwrap(),
            stream_version: position,
            event_type: event_type.into(),
            schema_version: 1,
            data: Payload::Data(data),
            metadata: json!({}),
            sealed: false,
            recorded_at: Timestamp(position as i64),
            hash: [0; 32],
        }
    }

    fn attempt(
        run: Run,
        events: &[(u128, u64)],
        failed: &[(u128, u64, &str)],
        checkpoint: Option<u64>,
    ) -> serde_json::Value {
        serde_json::to_value(DeliveryAttempted {
            destination_id: Uuid::from_u128(9),
            run,
            attempt: 1,
            events: events.iter().map(|&(id, p)| (EventId(Uuid::from_u128(id)), Position(p))).collect(),
            failed: failed
                .iter()
                .map(|&(id, p, outcome)| FailedDelivery {
                    event_id: EventId(Uuid::from_u128(id)),
                    position: Position(p),
                    outcome: outcome.into(),
                    reason: "400".into(),
                })
                .collect(),
            response: "200".into(),
            hashed: vec![],
            scrubbed: vec![],
            names_keyed: true,
            checkpoint: checkpoint.map(Position),
            duration_ms: 1,
        })
        .unwrap()
    }

    #[test]
    fn a_dead_letter_stays_until_a_later_run_delivers_it_and_only_the_live_run_moves_the_checkpoint() {
        let mut ledgers = Ledgers::default();
        ledgers.apply(&recorded(
            1,
            DeliveryAttempted::TYPE,
            attempt(Run::Live, &[(1, 10), (2, 11)], &[(2, 11, "retryable")], None),
        ));
        assert_eq!(ledgers.get(Uuid::from_u128(9)).unwrap().checkpoint, None);
        ledgers.apply(&recorded(
            2,
            DeliveryAttempted::TYPE,
            attempt(Run::Live, &[(2, 11)], &[(2, 11, "permanent")], Some(12)),
        ));
        let ledger = ledgers.get(Uuid::from_u128(9)).unwrap();
        assert_eq!(ledger.checkpoint, Some(Position(12)));
        assert_eq!(ledger.dead.keys().copied().collect::<Vec<_>>(), vec![Position(11)]);
        assert_eq!(ledger.delivered, 1);
        let job = Run::Job { job_id: Uuid::from_u128(5) };
        ledgers.apply(&recorded(3, DeliveryAttempted::TYPE, attempt(job, &[(2, 11)], &[], Some(99))));
        let ledger = ledgers.get(Uuid::from_u128(9)).unwrap();
        assert!(ledger.dead.is_empty());
        assert_eq!(ledger.checkpoint, Some(Position(12)), "a job never moves the live checkpoint");
    }

    #[test]
    fn a_replay_job_is_open_until_completed() {
        let mut ledgers = Ledgers::default();
        let job = Uuid::from_u128(5);
        let destination = Uuid::from_u128(9);
        ledgers.apply(&recorded(
            1,
            ReplayRequested::TYPE,
            json!({"job_id": job, "destination_id": destination, "from": 1, "to": 10}),
        ));
        assert_eq!(ledgers.open_jobs().len(), 1);
        ledgers.apply(&recorded(
            2,
            ReplayCompleted::TYPE,
            json!({"job_id": job, "destination_id": destination, "delivered": 3, "dead": 0}),
        ));
        assert!(ledgers.open_jobs().is_empty());
        assert_eq!(ledgers.get(destination).unwrap().completed_jobs[&job], (3, 0));
    }
}
