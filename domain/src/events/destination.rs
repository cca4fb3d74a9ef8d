//! Facts about destinations and what was delivered to them.
//!
//! A destination's configuration (`DestinationCreated`, `DestinationPaused`,
//! `DestinationResumed`) is part of its workspace's configuration stream
//! (`workspace-<id>`). What activation did — every delivery attempt, replay
//! jobs and their end — goes to the destination's own stream
//! (`destination-<id>`), the **delivery ledger**: append-only, so an auditor
//! can say what was sent to a destination about a person, when, and in what
//! form. The ledger names events and field names, never values: the form of
//! what was sent is re-derived from the event itself.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{EventId, Position, StreamId};
use crate::policy::DestinationPolicy;

/// The stream holding a destination's delivery ledger.
pub fn destination_stream(destination: Uuid) -> StreamId {
    StreamId::new(format!("destination-{destination}")).expect("a destination stream id is valid")
}

/// Which messages a destination receives. An empty list admits everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationFilters {
    /// Message types (`track`, `page`, `identify`, …).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Track event names (`Order Completed`); other types pass this filter.
    #[serde(default)]
    pub event_names: Vec<String>,
    /// Consent categories the message's `context.consent.categoryPreferences`
    /// must grant (`marketing`); a message without them is not sent.
    #[serde(default)]
    pub consent_categories: Vec<String>,
}

/// How a destination's failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How long an event is retried after its first failure before it goes
    /// to dead-letter, in seconds (4 hours by default).
    pub window_secs: u64,
    /// The first wait after a failure, in milliseconds; each further wait
    /// doubles, with jitter.
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// How long one delivery may take before it counts as a retryable
    /// timeout, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { window_secs: 4 * 3600, initial_backoff_ms: 1_000, max_backoff_ms: 300_000, timeout_ms: 30_000 }
    }
}

/// A destination was added to a workspace.
///
/// The event names the subject [`DestinationCreated::subject`], so its data —
/// the adapter's settings, with their access tokens and secrets — is stored
/// sealed, never in clear.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationCreated {
    /// The destination's id.
    pub destination_id: Uuid,
    /// Its human name, unique in the workspace.
    pub name: String,
    /// The built-in adapter (`meta_capi`, `google_ads`, `tiktok`, `ga4`,
    /// `webhook`), or `grpc` for an adapter in another process at `url`.
    pub adapter: String,
    /// The external adapter's gRPC address, for `grpc`.
    #[serde(default)]
    pub url: Option<String>,
    /// The adapter's settings (endpoint, account ids, tokens, secrets).
    pub settings: serde_json::Value,
    /// Which messages it receives.
    #[serde(default)]
    pub filters: DestinationFilters,
    /// The profile traits sent with each event (never to an ad platform).
    #[serde(default)]
    pub traits: Vec<String>,
    /// The first position it delivers: 1 for a backfill of the whole log,
    /// the position after the head for "from now".
    pub start: Position,
    /// How failures are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Its part of the sensitive-data policy (allowed fields, event name
    /// mapping, classes removed); replaced by `DestinationPolicySet`.
    #[serde(default)]
    pub policy: DestinationPolicy,
}

// The settings hold tokens and secrets: left out so logging cannot leak them.
impl std::fmt::Debug for DestinationCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationCreated")
            .field("destination_id", &self.destination_id)
            .field("name", &self.name)
            .field("adapter", &self.adapter)
            .field("url", &self.url)
            .field("settings", &"<redacted>")
            .field("filters", &self.filters)
            .field("traits", &self.traits)
            .field("start", &self.start)
            .field("retry", &self.retry)
            .field("policy", &self.policy)
            .finish()
    }
}

impl DestinationCreated {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationCreated";

    /// The subject whose key seals a destination's configuration.
    pub fn subject(destination_id: Uuid) -> String {
        format!("destination:{destination_id}")
    }
}

/// A destination's part of the sensitive-data policy was replaced; it
/// applies to every event sent from then on (replays included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationPolicySet {
    /// The destination.
    pub destination_id: Uuid,
    /// The policy from now on.
    pub policy: DestinationPolicy,
}

impl DestinationPolicySet {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationPolicySet";
}

/// A destination stopped receiving events; its subscription keeps its
/// checkpoint, so resuming delivers what arrived meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationPaused {
    /// The destination.
    pub destination_id: Uuid,
}

impl DestinationPaused {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationPaused";
}

/// A paused destination receives events again, from its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationResumed {
    /// The destination.
    pub destination_id: Uuid,
}

impl DestinationResumed {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationResumed";
}

/// Which subscriber of a destination made an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Run {
    /// The live subscription, which owns the checkpoint.
    Live,
    /// A replay job (`onepd replay`, `onepd deliveries retry-dead`).
    Job {
        /// The job.
        job_id: Uuid,
    },
}

/// An event of a batch that was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDelivery {
    /// The event.
    pub event_id: EventId,
    /// Its position.
    pub position: Position,
    /// `retryable` or `permanent` (dead-lettered).
    pub outcome: String,
    /// Why.
    pub reason: String,
}

/// One delivery attempt of one batch to a destination: the ledger's entry.
/// Every event of `events` was delivered unless it is listed in `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempted {
    /// The destination.
    pub destination_id: Uuid,
    /// Which subscriber sent it.
    pub run: Run,
    /// The attempt's number for this batch, from 1.
    pub attempt: u32,
    /// The events of the batch: id and position.
    pub events: Vec<(EventId, Position)>,
    /// The events not delivered, with their outcome and reason.
    #[serde(default)]
    pub failed: Vec<FailedDelivery>,
    /// A short summary of the destination's answer (`200`, `500: upstream
    /// timeout`, `timed out after 30 s`).
    pub response: String,
    /// The fields sent hashed (`user_data.em`), over the batch.
    #[serde(default)]
    pub hashed: Vec<String>,
    /// The fields removed before sending (`userId`, `context.traits`), over
    /// the batch; names only, never values, and never a key the client
    /// chose (`properties.<phi:5c1e0a92d4b7f316>`, see
    /// [`crate::policy::Scrub::field`]).
    #[serde(default)]
    pub scrubbed: Vec<String>,
    /// Whether `scrubbed` was recorded by that rule. Entries written before
    /// it may name a client's key; readers are shown them cut at the first
    /// name onepd does not know ([`crate::policy::legacy_field`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub names_keyed: bool,
    /// For the live run, once this batch is settled (delivered or
    /// dead-lettered): every position below this one is done.
    #[serde(default)]
    pub checkpoint: Option<Position>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
}

impl DeliveryAttempted {
    /// The stored event type.
    pub const TYPE: &'static str = "DeliveryAttempted";
}

/// A replay job was asked for: re-send a range of the log (or exactly some
/// events, for dead letters) beside the live subscription, without moving
/// its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequested {
    /// The job.
    pub job_id: Uuid,
    /// The destination.
    pub destination_id: Uuid,
    /// The first position re-sent.
    pub from: Position,
    /// The last position re-sent (inclusive); the head when it was asked
    /// for, if none was given.
    pub to: Position,
    /// Only these positions (dead letters being retried); every event the
    /// destination's filters admit when empty.
    #[serde(default)]
    pub only: Vec<Position>,
}

impl ReplayRequested {
    /// The stored event type.
    pub const TYPE: &'static str = "ReplayRequested";
}

/// A replay job finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCompleted {
    /// The job.
    pub job_id: Uuid,
    /// The destination.
    pub destination_id: Uuid,
    /// Events delivered.
    pub delivered: u64,
    /// Events dead-lettered.
    pub dead: u64,
}

impl ReplayCompleted {
    /// The stored event type.
    pub const TYPE: &'static str = "ReplayCompleted";
}

/// Events the destination's filters admitted but that were not sent: the
/// consent it needs was not given, the message's `integrations` turned it
/// off, or the sensitive-data policy withheld it. Recorded so the ledger
/// accounts for every event; reasons never hold a value from the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsWithheld {
    /// The destination.
    pub destination_id: Uuid,
    /// Which subscriber withheld them.
    pub run: Run,
    /// The events, each with why.
    pub events: Vec<WithheldEvent>,
    /// For the live run, when no delivery follows in the same batch: every
    /// position below this one is done.
    #[serde(default)]
    pub checkpoint: Option<Position>,
}

impl EventsWithheld {
    /// The stored event type.
    pub const TYPE: &'static str = "EventsWithheld";
}

/// One event not sent, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldEvent {
    /// The event.
    pub event_id: EventId,
    /// Where it is in the log.
    pub position: Position,
    /// The rule: `consent`, `integrations` or `policy`.
    pub rule: String,
    /// Why, without any value from the event (`consent "marketing" not
    /// granted`).
    pub reason: String,
}

/// A destination was asked to delete what it holds about an erased person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRequested {
    /// The destination.
    pub destination_id: Uuid,
    /// The erasure request (`SubjectErasureRequested`).
    pub request_id: Uuid,
    /// `requested`, `unsupported` or `failed`.
    pub outcome: String,
    /// A short summary of the destination's answer.
    pub response: String,
}

impl DeletionRequested {
    /// The stored event type.
    pub const TYPE: &'static str = "DeletionRequested";
}

/// A destination's run stopped short of delivering (its adapter cannot be
/// built or does not describe itself, the log cannot be read) and is
/// starting again with backoff. Recorded once per reason, not per attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStalled {
    /// The destination.
    pub destination_id: Uuid,
    /// Which subscriber stalled.
    pub run: Run,
    /// Why, without any value from an event.
    pub reason: String,
}

impl DestinationStalled {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationStalled";
}

/// A run that had stalled is delivering again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRecovered {
    /// The destination.
    pub destination_id: Uuid,
    /// Which subscriber recovered.
    pub run: Run,
}

impl DestinationRecovered {
    /// The stored event type.
    pub const TYPE: &'static str = "DestinationRecovered";
}

/// Every event type of the delivery ledger.
pub const LEDGER_TYPES: [&str; 7] = [
    DeliveryAttempted::TYPE,
    ReplayRequested::TYPE,
    ReplayCompleted::TYPE,
    EventsWithheld::TYPE,
    DeletionRequested::TYPE,
    DestinationStalled::TYPE,
    DestinationRecovered::TYPE,
];
