//! Facts about ingested messages: each message a source sends becomes one
//! `MessageAccepted` or one `MessageRejected`, so nothing is silently lost.
//!
//! Both are appended to the source's stream (`source-<id>`) with the person
//! the message is about (its `userId`, else its `anonymousId`) as the subject,
//! so their payloads are sealed with that person's key.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One broken rule: which field, which rule, and a readable message that shows
/// the mismatch (`properties.revenue: expected number, found "12 USD"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Violation {
    /// The field, as a dotted path into the message (`traits.email`,
    /// `batch[3].event`); empty for the message as a whole.
    pub field: String,
    /// The rule's stable name (`required`, `type`, `email`, `phone`,
    /// `message_size`, `tracking_plan`, …).
    pub rule: String,
    /// What was expected and what was found.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` at `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), rule: rule.into(), message: message.into() }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A message passed the pipeline and was stored.
///
/// `message` is the Segment-spec message after enrichment and normalization:
/// camelCase fields (`type`, `messageId`, `userId`, `anonymousId`, `event`,
/// `name`, `properties`, `traits`, `context`, `integrations`, `timestamp`,
/// `originalTimestamp`, `sentAt`, `receivedAt`, …). `timestamp` is corrected
/// for the client's clock skew and `context.ip` holds the resolved client IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAccepted {
    /// The normalized message.
    pub message: Value,
    /// What onepd derived: `ip` and `ipSource` (`context`, `forwarded` or
    /// `peer`), `userAgent` (`browser`, `os`, `device`), `clockSkewMs`.
    #[serde(default)]
    pub enrichment: Value,
    /// The value each normalized field had before normalization, by dotted
    /// path (`{"traits.email": " Ann@Example.COM "}`).
    #[serde(default)]
    pub originals: serde_json::Map<String, Value>,
    /// Rules the message broke that did not reject it (a tracking plan in
    /// `allow` mode, an email or phone that could not be normalized).
    #[serde(default)]
    pub violations: Vec<Violation>,
}

impl MessageAccepted {
    /// The stored event type.
    pub const TYPE: &'static str = "MessageAccepted";
}

/// A message was refused; kept with its reasons and raw payload so it can be
/// inspected and replayed (`onepd rejected replay`) once the cause is fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRejected {
    /// Every rule the message broke.
    pub reasons: Vec<Violation>,
    /// The message as received (after the batch's shared fields were merged
    /// in), cut to [`MessageRejected::RAW_LIMIT`] bytes.
    pub raw: String,
    /// Whether `raw` was cut.
    pub truncated: bool,
    /// The message type, when one could be read (`track`).
    pub message_type: Option<String>,
    /// The client's `messageId`, when one could be read.
    pub message_id: Option<String>,
}

impl MessageRejected {
    /// The stored event type.
    pub const TYPE: &'static str = "MessageRejected";
    /// The most bytes of a raw payload kept: Segment's per-message limit.
    pub const RAW_LIMIT: usize = 32 * 1024;
}

/// A rejected message was run through the pipeline again (`onepd rejected
/// replay`, after its cause was fixed) and is now stored as a
/// `MessageAccepted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionReplayed {
    /// The `MessageRejected` event replayed.
    pub rejected_event_id: crate::EventId,
    /// The `MessageAccepted` event it became.
    pub accepted_event_id: crate::EventId,
    /// Where that event is.
    pub accepted_position: u64,
}

impl RejectionReplayed {
    /// The stored event type.
    pub const TYPE: &'static str = "RejectionReplayed";
}
