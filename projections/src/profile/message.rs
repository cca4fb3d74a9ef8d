//! What the profile projection reads from one normalized Segment message:
//! the identifiers it could be attributed through, and its timestamp.
//!
//! **Does not:** decide which identifiers link; the identity graph does, and
//! an identifier only counts here once the graph has stored it.

use onepd_domain::Timestamp;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::fields::Fields;
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules};

use crate::identity::extract;
use serde_json::Value;

/// The parts of a `MessageAccepted` payload the identity graph and the
/// profiles fold read; a read for them decodes nothing else
/// ([`onepd_domain::EventFilter::parts`]). Whatever either fold comes to
/// read must be named here: a test folds messages read with these parts
/// and read whole, and compares the profiles.
pub const FOLDED_PARTS: &[(&str, Fields)] = &[(MessageAccepted::TYPE, FOLDED)];

const FOLDED: Fields = Fields::Only(&[
    (
        "message",
        Fields::Only(&[
            ("type", Fields::All),
            ("userId", Fields::All),
            ("anonymousId", Fields::All),
            ("previousId", Fields::All),
            ("groupId", Fields::All),
            ("event", Fields::All),
            ("name", Fields::All),
            ("timestamp", Fields::All),
            ("receivedAt", Fields::All),
            ("traits", Fields::All),
            ("properties", Fields::Only(&[("revenue", Fields::All), ("currency", Fields::All)])),
            (
                "context",
                Fields::Only(&[
                    ("traits", Fields::All),
                    ("externalIds", Fields::All),
                    ("consent", Fields::All),
                    ("consentManagement", Fields::All),
                ]),
            ),
        ]),
    ),
    ("violations", Fields::All),
]);

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
