//! The event envelope: identifiers, positions, streams and the two shapes of an
//! event — the one an appender hands in and the one a reader gets back.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A place in the global log. Positions start at 1 and have no gaps;
/// `Position(0)` means "before the first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Position(pub u64);

impl Position {
    /// The position before the first event.
    pub const START: Position = Position(0);

    /// The position right after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's identity and idempotency key. Appending an id that is already
/// stored does not store it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub Uuid);

impl EventId {
    /// The deterministic id of an ingested message: UUIDv5 of the workspace id
    /// (as namespace) and the client's `messageId`, so a retried message is
    /// recognized as the same event.
    pub fn for_message(workspace: WorkspaceId, message_id: &str) -> EventId {
        EventId(Uuid::new_v5(&workspace.0, message_id.as_bytes()))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The tenant every event belongs to; every read and write is scoped to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkspaceId(pub Uuid);

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The aggregate an event belongs to (a workspace's configuration, a
/// destination, a message stream). Each stream numbers its events 1, 2, 3, …
/// and appends may demand a version for optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(String);

impl StreamId {
    /// The longest stream id, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Checks that `id` is a usable stream id: 1 to 200 bytes, no control
    /// characters.
    pub fn new(id: impl Into<String>) -> Result<StreamId, InvalidStreamId> {
        let id = id.into();
        if id.is_empty() || id.len() > Self::MAX_LEN || id.chars().any(char::is_control) {
            return Err(InvalidStreamId(id));
        }
        Ok(StreamId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stream id that is empty, longer than [`StreamId::MAX_LEN`] bytes or holds
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream id: expected 1 to 200 bytes without control characters, found {0:?}")]
pub struct InvalidStreamId(pub String);

/// What an append expects of its stream before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must hold exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `version` (0 = no stream) satisfies this.
    pub fn admits(self, version: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => version == 0,
            ExpectedVersion::Exact(n) => version == n,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// A point in time: microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Whole seconds since the epoch and the nanoseconds past them.
    pub fn to_seconds_nanos(self) -> (i64, i32) {
        let secs = self.0.div_euclid(1_000_000);
        let nanos = (self.0.rem_euclid(1_000_000) * 1_000) as i32;
        (secs, nanos)
    }

    /// The timestamp for whole seconds and nanoseconds since the epoch
    /// (nanoseconds below a microsecond are dropped).
    pub fn from_seconds_nanos(secs: i64, nanos: i32) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000).saturating_add(i64::from(nanos) / 1_000))
    }

    /// Reads an RFC 3339 time with `Z` or an offset (`2026-11-29T04:22:59.123Z`);
    /// digits past the microsecond are dropped.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|at| Timestamp(at.timestamp_micros()))
    }

    /// The form every stored time takes: RFC 3339 UTC with milliseconds
    /// (`2026-11-29T04:22:59.123Z`). A time outside the calendar's range
    /// (±262,000 years, reachable only through absurd arithmetic) shows as the
    /// epoch, an honest "unknown".
    pub fn to_rfc3339(self) -> String {
        let at = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(self.0).unwrap_or_default();
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::Timestamp;

    #[test]
    fn rfc3339_timestamps_parse_to_microseconds_since_the_epoch() {
        let parse_rfc3339 = Timestamp::parse_rfc3339;
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(Timestamp(0)));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.5Z"), Some(Timestamp(11_017 * 86_400 * 1_000_000 + 500_000)));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00.123Z"), parse_rfc3339("2024-02-29T14:00:00.123+02:00"));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999999999Z"), Some(Timestamp(-1)));
        for bad in ["yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn stored_times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(Timestamp(1_764_390_179_123_456).to_rfc3339(), "2025-11-29T04:22:59.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339(&Timestamp(1_764_390_179_123_000).to_rfc3339()),
            Some(Timestamp(1_764_390_179_123_000))
        );
    }
}

/// An event to append. The store assigns its position, stream version,
/// `recorded_at` and hash.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The idempotency key.
    pub event_id: EventId,
    /// The tenant the event belongs to.
    pub workspace_id: WorkspaceId,
    /// The fact's name, past tense (`MessageAccepted`); never changes once stored.
    pub event_type: String,
    /// The shape of `data`; old versions are upcast on read.
    pub schema_version: u32,
    /// The event's payload.
    pub data: Value,
    /// Routing metadata (source, received_at, request id, actor). Stored in
    /// clear: it must not hold personal data.
    pub metadata: Value,
    /// The person the payload is about. When set, `data` is stored sealed with
    /// that subject's own key, so erasing the subject makes it unreadable.
    pub subject: Option<String>,
}

/// An event's payload as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The payload, readable (and upcast to the newest schema version).
    Data(Value),
    /// The payload was sealed for a subject whose key has been shredded.
    Erased,
    /// The stored payload cannot be decoded (not JSON, nested deeper than
    /// readers decode, an upcast that fails, a sealed payload that does not
    /// open): the reason. Readers quarantine such an event and go on; the
    /// store never fails a read because of one.
    Unreadable(String),
}

impl Payload {
    /// The payload, or `None` when erased or unreadable.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Payload::Data(value) => Some(value),
            Payload::Erased | Payload::Unreadable(_) => None,
        }
    }

    /// Why the payload cannot be read, when it cannot.
    pub fn unreadable(&self) -> Option<&str> {
        match self {
            Payload::Unreadable(reason) => Some(reason),
            Payload::Data(_) | Payload::Erased => None,
        }
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where the event sits in the global log.
    pub position: Position,
    /// The idempotency key.
    pub event_id: EventId,
    /// The tenant.
    pub workspace_id: WorkspaceId,
    /// The aggregate.
    pub stream_id: StreamId,
    /// The event's number within its stream, from 1.
    pub stream_version: u64,
    /// The fact's name.
    pub event_type: String,
    /// The shape of `data` after upcasting.
    pub schema_version: u32,
    /// The payload, or the mark that it was erased.
    pub data: Payload,
    /// Routing metadata.
    pub metadata: Value,
    /// Whether the payload is stored sealed with a subject's key.
    pub sealed: bool,
    /// When the store committed the event; never decreases along the log.
    pub recorded_at: Timestamp,
    /// The chain hash: `sha256(hash of previous event ‖ canonical bytes)`.
    pub hash: [u8; 32],
}
