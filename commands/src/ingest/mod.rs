//! The ingest pipeline: one raw Segment-spec message in, one event out.
//!
//! Steps, one module each, in order:
//! shape checks ([`shape`]) → enrichment ([`enrich`], [`useragent`]) →
//! normalization ([`normalize`]) → tracking plan ([`plan`]) → the event to
//! append ([`decide`]).
//!
//! **Invariant:** pure and total: every input, however malformed, gives a
//! [`Decision`]; nothing panics. Time, the peer address and generated ids come
//! in as arguments.

pub mod decide;
pub mod enrich;
pub mod normalize;
pub mod plan;
pub mod shape;
pub mod useragent;

use std::net::IpAddr;

use onepd_domain::events::message::{MessageRejected, Violation};
use onepd_domain::events::workspace::Industry;
use onepd_domain::{EventId, NewEvent, Timestamp, WorkspaceId};
use serde_json::Value;
use uuid::Uuid;

pub use plan::{PlanError, TrackingPlan};

/// What the pipeline needs to know about the workspace a message is for.
#[derive(Debug, Clone)]
pub struct WorkspaceSettings {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Its industry.
    pub industry: Industry,
    /// ISO 3166-1 alpha-2 region for phone numbers without a country code.
    pub default_region: Option<String>,
    /// Its tracking plan, compiled, if one is set.
    pub plan: Option<std::sync::Arc<TrackingPlan>>,
}

/// How and when a message arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// When onepd received it.
    pub at: Timestamp,
    /// The source it came from.
    pub source_id: Uuid,
    /// The address of the connection's peer.
    pub peer_ip: Option<IpAddr>,
    /// The client address a trusted proxy reported (the right-most
    /// X-Forwarded-For entry not itself a trusted proxy), if the peer is one.
    pub forwarded_ip: Option<IpAddr>,
    /// The request id, for the event's metadata.
    pub request_id: String,
}

/// What the pipeline decided for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Accepted: append `event` (a `MessageAccepted`).
    Accepted {
        /// The event, with `event_id = UUIDv5(workspace, messageId)`.
        event: NewEvent,
        /// The message's `messageId` (generated when the client sent none).
        message_id: String,
    },
    /// Rejected: append `event` (a `MessageRejected`) and tell the caller.
    Rejected {
        /// The event recording the rejection.
        event: NewEvent,
        /// Every rule broken.
        reasons: Vec<Violation>,
        /// Every identifier the payload names, read from all of it before
        /// `raw` was cut ([`onepd_domain::events::erasure::rejected_identifiers`]):
        /// what the rejection is sealed for and found by on erasure.
        identifiers: Vec<onepd_domain::identity::Identifier>,
    },
}

impl Decision {
    /// The event to append, whatever the decision.
    pub fn event(&self) -> &NewEvent {
        match self {
            Decision::Accepted { event, .. } | Decision::Rejected { event, .. } => event,
        }
    }

    /// The event id.
    pub fn event_id(&self) -> EventId {
        self.event().event_id
    }

    /// The message is about a person who was erased: an accepted decision
    /// becomes a rejection (rule `suppressed`) that keeps nothing of the
    /// message — no raw payload, no `messageId`, no subject — under the same
    /// event id, so a retry is still a duplicate. A rejection stays as it is.
    pub fn suppress(self) -> Decision {
        let Decision::Accepted { mut event, .. } = self else { return self };
        let reasons = vec![Violation::new(
            "",
            "suppressed",
            "the person this message is about was erased; onepd no longer accepts data about them",
        )];
        let message_type = event.data.pointer("/message/type").cloned().unwrap_or(Value::Null);
        event.event_type = MessageRejected::TYPE.to_owned();
        event.data = serde_json::json!({
            "reasons": reasons,
            "raw": "",
            "truncated": false,
            "message_type": message_type,
            "message_id": null,
        });
        event.subject = None;
        Decision::Rejected { event, reasons, identifiers: Vec::new() }
    }
}

/// The pipeline, holding what is expensive to build (the user agent parser)
/// so it is built once per process.
#[derive(Debug)]
pub struct Pipeline {
    user_agents: useragent::UserAgents,
}

impl Pipeline {
    /// Builds the pipeline (parses the vendored uap-core rules).
    pub fn new() -> Pipeline {
        Pipeline { user_agents: useragent::UserAgents::new() }
    }

    /// Runs one message through every step. `message` is one Segment-spec
    /// message as JSON (its `type` set: the HTTP layer fills it from the
    /// endpoint); `new_message_id` is called only when it has no `messageId`.
    pub fn process(
        &self,
        settings: &WorkspaceSettings,
        received: &Received,
        message: Value,
        new_message_id: impl FnOnce() -> String,
    ) -> Decision {
        decide::run(self, settings, received, message, new_message_id)
    }

    /// Rejects a payload that never became a message (a webhook that failed
    /// verification or mapping): a `MessageRejected` keeping `raw` as
    /// received, with the same idempotent event id as any rejection.
    pub fn reject_payload(
        &self,
        settings: &WorkspaceSettings,
        received: &Received,
        raw: String,
        reasons: Vec<Violation>,
    ) -> Decision {
        decide::reject_payload(settings, received, raw, reasons)
    }
}

impl Default for Pipeline {
    fn default() -> Pipeline {
        Pipeline::new()
    }
}
