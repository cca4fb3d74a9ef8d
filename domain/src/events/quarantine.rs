//! Quarantine: an event a reader could not read, recorded so the reader can
//! go on without it.
//!
//! A reader (the profiles projection, or one destination's delivery) that
//! meets an event whose stored payload cannot be decoded records
//! [`EventQuarantined`] and skips the event, for that reader only; every
//! later event and every other workspace keeps flowing. The record is the
//! operator's to-do list: `onepd quarantine list` shows it, and once an
//! upgrade reads the event, `onepd quarantine retry` applies it
//! ([`QuarantineReleased`]).
//!
//! Records of the profiles projection go to the workspace's
//! `quarantine-<workspace>` stream; a destination's go to its ledger
//! (`destination-<id>`), so its status counts them. The event id is derived
//! from the reader and the position, so a reader meeting the same event
//! again (a restart, a rebuild) records it once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EventId, Position, RecordedEvent, StreamId, WorkspaceId};

/// The reader named `profiles` in quarantine records.
pub const PROFILES_READER: &str = "profiles";
/// The reader named `destination` in quarantine records (with its id).
pub const DESTINATION_READER: &str = "destination";

/// A reader could not read the event at `position` and went on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuarantined {
    /// The event's position.
    pub position: Position,
    /// Its id.
    pub event_id: EventId,
    /// Its stored type.
    pub event_type: String,
    /// Which reader: [`PROFILES_READER`] or [`DESTINATION_READER`].
    pub reader: String,
    /// The destination, for [`DESTINATION_READER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_id: Option<Uuid>,
    /// Why it could not be read. Never quotes the payload.
    pub reason: String,
}

impl EventQuarantined {
    /// The stored event type.
    pub const TYPE: &'static str = "EventQuarantined";

    /// The record of `reader` (a destination's: with its id) for `event`,
    /// when its payload cannot be read.
    pub fn of(event: &RecordedEvent, reader: &str, destination_id: Option<Uuid>) -> Option<EventQuarantined> {
        let reason = event.data.unreadable()?;
        Some(EventQuarantined {
            position: event.position,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            reader: reader.to_owned(),
            destination_id,
            reason: reason.to_owned(),
        })
    }

    /// The record's event id: one per reader and position.
    pub fn record_id(&self) -> EventId {
        record_id("quarantined", &self.reader, self.destination_id, self.position)
    }
}

/// A quarantined event was read after all (after an upgrade) and applied:
/// for the profiles projection by a rebuild, for a destination by a replay
/// of that position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineReleased {
    /// The event's position.
    pub position: Position,
    /// Which reader.
    pub reader: String,
    /// The destination, for [`DESTINATION_READER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_id: Option<Uuid>,
    /// How it was applied: `rebuild`, or the replay job's id.
    pub applied_by: String,
}

impl QuarantineReleased {
    /// The stored event type.
    pub const TYPE: &'static str = "QuarantineReleased";
}

/// Both quarantine event types.
pub const QUARANTINE_TYPES: [&str; 2] = [EventQuarantined::TYPE, QuarantineReleased::TYPE];

/// The stream of the profiles projection's quarantine records of a workspace.
pub fn quarantine_stream(workspace: WorkspaceId) -> StreamId {
    StreamId::new(format!("quarantine-{workspace}")).expect("a quarantine stream id is valid")
}

fn record_id(kind: &str, reader: &str, destination: Option<Uuid>, position: Position) -> EventId {
    let name = match destination {
        Some(destination) => format!("{kind}:{reader}:{destination}:{position}"),
        None => format!("{kind}:{reader}:{position}"),
    };
    EventId(Uuid::new_v5(&QUARANTINE_NAMESPACE, name.as_bytes()))
}

/// The namespace of quarantine record ids (a fixed, random UUID).
const QUARANTINE_NAMESPACE: Uuid = Uuid::from_u128(0x5d8e_2a41_9c1b_4f7e_8a36_0b5e_c2d1_7f93);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_meeting_an_event_twice_records_it_under_one_id() {
        let record = |reader: &str, destination: Option<Uuid>, position: u64| EventQuarantined {
            position: Position(position),
            event_id: EventId(Uuid::nil()),
            event_type: "MessageAccepted".into(),
            reader: reader.into(),
            destination_id: destination,
            reason: "payload: recursion limit exceeded".into(),
        };
        let destination = Some(Uuid::from_u128(7));
        assert_eq!(record(PROFILES_READER, None, 9).record_id(), record(PROFILES_READER, None, 9).record_id());
        assert_ne!(record(PROFILES_READER, None, 9).record_id(), record(PROFILES_READER, None, 10).record_id());
        assert_ne!(
            record(PROFILES_READER, None, 9).record_id(),
            record(DESTINATION_READER, destination, 9).record_id()
        );
    }
}
