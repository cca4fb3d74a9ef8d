//! What the profile projection reads from one normalized Segment message:
//! the identifiers it could be attributed through, and its timestamp.
//!
//! **Does not:** decide which identifiers link; the identity graph does, and
//! an identifier only counts here once the graph has stored it.

use onepd_domain::Timestamp;
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules};

use crate::identity::extract;
use serde_json::Value;

/// Every identifier `message` names, highest priority first (ties by kind,
/// then value), whether or not the identity graph stored it.
///
/// A superset of what the graph links: blocked values are kept (they are
/// never stored, so they never resolve) and `group` calls are read too, so a
/// group call is attributed through the ids an earlier call stored. An
/// alias's `previousId` is tried as both a `user_id` and an `anonymous_id`.
pub(super) fn identifiers(message: &Value, rules: &IdentityRules) -> Vec<Identifier> {
    let both = |_: &str| vec![IdentifierKind::UserId, IdentifierKind::AnonymousId];
    let mut found = extract::named(message, rules, both, |_| false);
    extract::by_priority(&mut found, rules);
    found
}

/// The message's `timestamp`, else its `receivedAt`, parsed as RFC 3339.
pub(super) fn timestamp(message: &Value) -> Option<Timestamp> {
    ["timestamp", "receivedAt"].iter().find_map(|field| Timestamp::parse_rfc3339(message.get(*field)?.as_str()?))
}
