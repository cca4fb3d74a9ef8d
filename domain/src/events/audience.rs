//! Audiences and computed traits a workspace defines: their definitions,
//! in the workspace's stream.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::audience::{ComputedTrait, Condition};
use crate::identity::ProfileId;
use crate::{EventId, Position, StreamId, Timestamp, WorkspaceId};

/// An audience was defined, or its definition replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceDefined {
    /// Its name, unique in the workspace.
    pub name: String,
    /// Who is in it.
    pub condition: Condition,
    /// What it is for, as the operator wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl AudienceDefined {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceDefined";
}

/// An audience was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceRemoved {
    /// Its name.
    pub name: String,
}

impl AudienceRemoved {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceRemoved";
}

/// A computed trait was defined, or its definition replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputedTraitDefined {
    /// Its name, unique in the workspace.
    pub name: String,
    /// What it computes.
    pub definition: ComputedTrait,
}

impl ComputedTraitDefined {
    /// The stored event type.
    pub const TYPE: &'static str = "ComputedTraitDefined";
}

/// A computed trait was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputedTraitRemoved {
    /// Its name.
    pub name: String,
}

impl ComputedTraitRemoved {
    /// The stored event type.
    pub const TYPE: &'static str = "ComputedTraitRemoved";
}

/// The stream of a workspace's audience entries and exits.
pub fn membership_stream(workspace: WorkspaceId) -> StreamId {
    StreamId::new(format!("audience-membership-{}", workspace.0)).expect("a membership stream id is valid")
}

/// The stream of a workspace's audience clock.
pub fn clock_stream(workspace: WorkspaceId) -> StreamId {
    StreamId::new(format!("audience-clock-{}", workspace.0)).expect("a clock stream id is valid")
}

/// A person came to meet an audience's condition: they are in it from
/// this event on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceEntered {
    /// The audience.
    pub audience: String,
    /// The person's profile at `cause`.
    pub profile: ProfileId,
    /// The event that made them meet it: a message of theirs, the
    /// audience's definition (a backfill), a clock tick, or an operator fact.
    pub cause: Position,
    /// The time the condition was evaluated at.
    pub at: Timestamp,
    /// What held, in words (the condition's explanation).
    pub why: String,
}

impl AudienceEntered {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceEntered";
}

/// A person left an audience: they no longer meet its condition, or their
/// profile merged into another, was erased, or the audience was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceExited {
    /// The audience.
    pub audience: String,
    /// The profile that was in it.
    pub profile: ProfileId,
    /// The event that made them leave (see [`AudienceEntered::cause`]).
    pub cause: Position,
    /// The time the condition was evaluated at.
    pub at: Timestamp,
    /// Why, in words.
    pub why: String,
}

impl AudienceExited {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceExited";
}

/// Some of a person's computed traits took new values (or no longer have
/// one): what the membership runner decided when it evaluated them as of
/// `cause`, in one event for all the traits that one evaluation changed.
/// Destinations that chose a trait (`--trait NAME`) receive it as an
/// `identify` carrying the new value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputedTraitChanged {
    /// The person's profile at `cause`.
    pub profile: ProfileId,
    /// Each changed trait's new value; `null` when there is nothing to
    /// compute from any more.
    pub values: std::collections::BTreeMap<String, serde_json::Value>,
    /// The event that changed it (see [`AudienceEntered::cause`]).
    pub cause: Position,
    /// The time it was computed at.
    pub at: Timestamp,
}

impl ComputedTraitChanged {
    /// The stored event type.
    pub const TYPE: &'static str = "ComputedTraitChanged";
}

/// The id of the change of `profile`'s computed traits that `cause` made:
/// the same however often it is decided.
pub fn computed_change_event_id(workspace: WorkspaceId, profile: ProfileId, cause: Position) -> EventId {
    let key = format!("computed-traits:{}:{}", profile.0, cause.0);
    EventId(Uuid::new_v5(&workspace.0, key.as_bytes()))
}

/// The audience clock of a workspace reached `at`: windows are evaluated as
/// of it for the people whose window edges it passed. Recorded in the log so
/// that a rebuild evaluates at the same times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceClockTicked {
    /// The time evaluated at.
    pub at: Timestamp,
}

impl AudienceClockTicked {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceClockTicked";
}

/// The id of the entry (`entered`) or exit of `profile` in `audience` that
/// `cause` made: the same however often it is decided, so a decision
/// repeated after a crash appends nothing twice.
pub fn membership_event_id(
    workspace: WorkspaceId,
    audience: &str,
    profile: ProfileId,
    cause: Position,
    entered: bool,
) -> EventId {
    let kind = if entered { "entered" } else { "exited" };
    let name = format!("audience-membership:{kind}:{}:{}:{audience}", profile.0, cause.0);
    EventId(Uuid::new_v5(&workspace.0, name.as_bytes()))
}

/// The id of the tick of a workspace's clock at `at`.
pub fn clock_event_id(workspace: WorkspaceId, at: Timestamp) -> EventId {
    EventId(Uuid::new_v5(&workspace.0, format!("audience-clock:{}", at.0).as_bytes()))
}

/// An audience was connected to a destination: its entries are added to the
/// destination's list or custom audience, its exits removed. Connecting again
/// replaces the external id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceConnected {
    /// The audience.
    pub audience: String,
    /// The destination.
    pub destination_id: Uuid,
    /// The platform's id of the list or custom audience (Meta's custom
    /// audience id, a Klaviyo list id, …), when the platform needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl AudienceConnected {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceConnected";
}

/// An audience was disconnected from a destination: nothing more is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceDisconnected {
    /// The audience.
    pub audience: String,
    /// The destination.
    pub destination_id: Uuid,
}

impl AudienceDisconnected {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceDisconnected";
}
