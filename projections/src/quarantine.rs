//! The quarantine list: every event a reader could not read and went on
//! without, folded from `EventQuarantined` and `QuarantineReleased` records.
//!
//! **Does not:** decide what is quarantined (each reader does, as it
//! reads) or apply a released event (a rebuild or a replay does).

use std::collections::BTreeMap;

use onepd_domain::events::quarantine::{EventQuarantined, QUARANTINE_TYPES, QuarantineReleased};
use onepd_domain::{Position, RecordedEvent, Timestamp, WorkspaceId};
use uuid::Uuid;

use crate::Fold;

/// One open quarantine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The workspace of the event.
    pub workspace: WorkspaceId,
    /// The record.
    pub record: EventQuarantined,
    /// When the reader first met it.
    pub at: Timestamp,
}

/// Every open quarantine record, by reader and position.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    open: BTreeMap<(Position, String, Option<Uuid>), Quarantined>,
}

impl Fold for Quarantine {
    const EVENT_TYPES: &'static [&'static str] = &QUARANTINE_TYPES;

    fn apply(&mut self, event: &RecordedEvent) {
        let Some(data) = event.data.value() else { return };
        match event.event_type.as_str() {
            EventQuarantined::TYPE => {
                let Ok(record) = serde_json::from_value::<EventQuarantined>(data.clone()) else { return };
                let key = (record.position, record.reader.clone(), record.destination_id);
                self.open.entry(key).or_insert(Quarantined {
                    workspace: event.workspace_id,
                    record,
                    at: event.recorded_at,
                });
            }
            QuarantineReleased::TYPE => {
                let Ok(released) = serde_json::from_value::<QuarantineReleased>(data.clone()) else { return };
                self.open.remove(&(released.position, released.reader, released.destination_id));
            }
            _ => {}
        }
    }
}

impl Quarantine {
    /// The open records of `workspace`, by position.
    pub fn of(&self, workspace: WorkspaceId) -> Vec<&Quarantined> {
        self.open.values().filter(|entry| entry.workspace == workspace).collect()
    }

    /// Every open record, over every workspace, by position.
    pub fn all(&self) -> impl Iterator<Item = &Quarantined> {
        self.open.values()
    }

    /// How many records are open, over every workspace.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no record is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::events::quarantine::{DESTINATION_READER, PROFILES_READER};
    use onepd_domain::{EventId, Payload, StreamId};

    use super::*;

    fn recorded(position: u64, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            event_id: EventId(Uuid::new_v4()),
            workspace_id: WorkspaceId(Uuid::nil()),
            stream_id: StreamId::new("quarantine-x").unwrap(),
            stream_version: position,
            event_type: event_type.into(),
            schema_version: 1,
            data: Payload::Data(data),
            metadata: serde_json::Value::Null,
            sealed: false,
            recorded_at: Timestamp(position as i64),
            hash: [0; 32],
        }
    }

    #[test]
    fn a_record_stays_open_until_released_for_its_reader() {
        let destination = Some(Uuid::from_u128(3));
        let record = |reader: &str, destination: Option<Uuid>| EventQuarantined {
            position: Position(7),
            event_id: EventId(Uuid::nil()),
            event_type: "MessageAccepted".into(),
            reader: reader.into(),
            destination_id: destination,
            reason: "payload: recursion limit exceeded".into(),
        };
        let mut quarantine = Quarantine::default();
        quarantine.apply(&recorded(
            10,
            EventQuarantined::TYPE,
            serde_json::to_value(record(PROFILES_READER, None)).unwrap(),
        ));
        quarantine.apply(&recorded(
            11,
            EventQuarantined::TYPE,
            serde_json::to_value(record(DESTINATION_READER, destination)).unwrap(),
        ));
        assert_eq!(quarantine.len(), 2);
        let released = QuarantineReleased {
            position: Position(7),
            reader: PROFILES_READER.into(),
            destination_id: None,
            applied_by: "rebuild".into(),
        };
        quarantine.apply(&recorded(12, QuarantineReleased::TYPE, serde_json::to_value(released).unwrap()));
        let open = quarantine.of(WorkspaceId(Uuid::nil()));
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].record.reader, DESTINATION_READER);
    }
}
