//! Identity resolution's value types and per-workspace rules: what an
//! identifier is, which kinds may link profiles, their priority, how many of
//! each kind a profile may hold, and which values are never identifiers.
//!
//! The graph itself (linking, merging, explaining) is a projection in
//! `onepd-projections`; this module only holds the pure rules it applies.
//!
//! **Invariant:** pure and deterministic; the same rules judge the same
//! identifier the same way on every replay.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A profile's id: `Uuid::new_v5(workspace, "profile:" + event id)` of the
/// event that first created it, so a rebuild gives the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileId(pub Uuid);

impl ProfileId {
    /// The id of the profile created by `event` in `workspace`.
    pub fn created_by(workspace: crate::WorkspaceId, event: crate::EventId) -> ProfileId {
        ProfileId(Uuid::new_v5(&workspace.0, format!("profile:{}", event.0).as_bytes()))
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an identifier names: one of the built-in kinds or a kind the
/// workspace declares (`crm_id`, `shopify_customer_id`, …).
///
/// Serialized as its name (`user_id`, `email`, `crm_id`), so it can key a
/// JSON object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentifierKind {
    /// The message's `userId`.
    UserId,
    /// The message's `anonymousId` (and an `alias`'s `previousId`).
    AnonymousId,
    /// `traits.email` or `context.traits.email`.
    Email,
    /// `traits.phone` or `context.traits.phone`.
    Phone,
    /// A kind the workspace declares; never one of the built-in names.
    Custom(String),
}

impl IdentifierKind {
    /// The four built-in kinds, highest default priority first.
    pub const BUILT_IN: [IdentifierKind; 4] =
        [IdentifierKind::UserId, IdentifierKind::Email, IdentifierKind::Phone, IdentifierKind::AnonymousId];

    /// The kind's name: `user_id`, `anonymous_id`, `email`, `phone`, or the
    /// custom name.
    pub fn name(&self) -> &str {
        match self {
            IdentifierKind::UserId => "user_id",
            IdentifierKind::AnonymousId => "anonymous_id",
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::Custom(name) => name,
        }
    }

    /// The kind with this name; any name that is not built in is custom.
    pub fn from_name(name: &str) -> IdentifierKind {
        match name {
            "user_id" => IdentifierKind::UserId,
            "anonymous_id" => IdentifierKind::AnonymousId,
            "email" => IdentifierKind::Email,
            "phone" => IdentifierKind::Phone,
            other => IdentifierKind::Custom(other.to_owned()),
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for IdentifierKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for IdentifierKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(IdentifierKind::from_name(&name))
    }
}

/// One identifier: a kind and a value (`email:ann@example.com`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    /// What the value names.
    pub kind: IdentifierKind,
    /// The value, as normalized at ingest.
    pub value: String,
}

impl Identifier {
    /// An identifier of `kind` with `value`.
    pub fn new(kind: IdentifierKind, value: impl Into<String>) -> Identifier {
        Identifier { kind, value: value.into() }
    }

    /// An identifier a caller typed, with an email or phone number
    /// normalized as ingest normalizes it (so `Ann@Example.COM` names
    /// `ann@example.com`); the error says why it does not normalize.
    pub fn normalized(kind: IdentifierKind, value: &str) -> Result<Identifier, String> {
        let value = match kind {
            IdentifierKind::Email => crate::normalize::normalize_email(value).map_err(|err| format!("email: {err}"))?,
            IdentifierKind::Phone => {
                crate::normalize::normalize_phone(value, None).map_err(|err| format!("phone: {err}"))?
            }
            _ => value.to_owned(),
        };
        Ok(Identifier { kind, value })
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Where a declared custom kind is read from in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomSource {
    /// The `id` of each `context.externalIds` entry whose `type` equals the
    /// kind's name.
    ExternalId,
    /// The named trait, in `traits` or `context.traits`.
    Trait(String),
}

/// A custom identifier kind a workspace declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomKind {
    /// Its name (`crm_id`); must not be a built-in kind's name.
    pub name: String,
    /// Where its values are read from.
    pub from: CustomSource,
}

/// A workspace's identity rules.
///
/// Kinds not in `link_kinds` are ignored by the graph: they neither link nor
/// are stored on a profile. [`IdentityRules::with_custom`] declares a custom
/// kind and lets it link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentityRules {
    /// The kinds that may link profiles.
    pub link_kinds: Vec<IdentifierKind>,
    /// Kinds, highest priority first. Kinds missing here rank after every
    /// listed kind, declared custom kinds first (in declaration order).
    pub priority: Vec<IdentifierKind>,
    /// The most identifiers of a kind one profile may hold; kinds missing here
    /// get `default_limit`.
    pub limits: BTreeMap<IdentifierKind, usize>,
    /// The limit of every kind missing from `limits`.
    pub default_limit: usize,
    /// Values that are never identifiers, compared case-insensitively after
    /// trimming.
    pub blocked_values: Vec<String>,
    /// Whether a value made only of zeros (and separators `-`, `.`, `:`, `+`,
    /// spaces) is blocked, like `0000` or the nil UUID.
    pub block_all_zeros: bool,
    /// Glob patterns (`*` matches any run of characters) of values that are
    /// never identifiers, matched case-insensitively after trimming.
    pub blocked_patterns: Vec<String>,
    /// The custom kinds the workspace declares.
    pub custom: Vec<CustomKind>,
    /// Exact identifiers that are never identifiers, whatever their value
    /// looks like (an operator's `IdentifierBlocked`).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub blocked_identifiers: BTreeSet<Identifier>,
}

impl Default for IdentityRules {
    /// Segment's defaults: the four built-in kinds link, `user_id` ranks
    /// highest and a profile holds one of it and five of every other kind;
    /// the usual placeholder values are blocked.
    fn default() -> IdentityRules {
        IdentityRules {
            link_kinds: IdentifierKind::BUILT_IN.to_vec(),
            priority: IdentifierKind::BUILT_IN.to_vec(),
            limits: BTreeMap::from([(IdentifierKind::UserId, 1)]),
            default_limit: 5,
            blocked_values: ["", "null", "undefined", "anonymous", "-1", "0", "test@test.com", "none", "nan"]
                .map(String::from)
                .to_vec(),
            block_all_zeros: true,
            blocked_patterns: Vec::new(),
            custom: Vec::new(),
            blocked_identifiers: BTreeSet::new(),
        }
    }
}

impl IdentityRules {
    /// These rules with `kind` declared and allowed to link.
    pub fn with_custom(mut self, kind: CustomKind) -> IdentityRules {
        let linking = IdentifierKind::from_name(&kind.name);
        if !self.link_kinds.contains(&linking) {
            self.link_kinds.push(linking);
        }
        self.custom.push(kind);
        self
    }

    /// These rules with `limit` for `kind`.
    pub fn with_limit(mut self, kind: IdentifierKind, limit: usize) -> IdentityRules {
        self.limits.insert(kind, limit);
        self
    }

    /// Whether identifiers of `kind` may link profiles.
    pub fn links(&self, kind: &IdentifierKind) -> bool {
        self.link_kinds.contains(kind)
    }

    /// The most identifiers of `kind` one profile may hold.
    pub fn limit(&self, kind: &IdentifierKind) -> usize {
        self.limits.get(kind).copied().unwrap_or(self.default_limit)
    }

    /// The rank of `kind`: 0 is the highest priority. Listed kinds rank by
    /// their place in `priority`, then declared custom kinds by declaration,
    /// then everything else; equal ranks are broken by the kind itself.
    pub fn rank(&self, kind: &IdentifierKind) -> usize {
        if let Some(index) = self.priority.iter().position(|listed| listed == kind) {
            return index;
        }
        let declared = self.custom.iter().position(|custom| custom.name == kind.name());
        match declared {
            Some(index) => self.priority.len() + index,
            None => self.priority.len() + self.custom.len(),
        }
    }

    /// Whether `identifier` is blocked: a blocked identifier, a blocked
    /// value, all zeros, or matching a blocked pattern.
    pub fn is_blocked(&self, identifier: &Identifier) -> bool {
        if self.blocked_identifiers.contains(identifier) {
            return true;
        }
        let value = identifier.value.trim().to_lowercase();
        if self.blocked_values.iter().any(|blocked| blocked.trim().to_lowercase() == value) {
            return true;
        }
        if self.block_all_zeros && is_all_zeros(&value) {
            return true;
        }
        self.blocked_patterns.iter().any(|pattern| glob_matches(&pattern.trim().to_lowercase(), &value))
    }
}

/// Whether `value` holds at least one zero and nothing but zeros and
/// separators.
fn is_all_zeros(value: &str) -> bool {
    value.contains('0') && value.chars().all(|c| matches!(c, '0' | '-' | '.' | ':' | '+' | ' '))
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters
/// (also none) and every other character matches itself.
///
/// Greedy matching with backtracking to the last `*`: linear in practice,
/// quadratic at worst, with no regex engine.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The pattern index just after the last `*` seen, and the text index it
    // was matched at, to retry with one more character swallowed.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((after_star, matched_at)) = star {
            p = after_star;
            t = matched_at + 1;
            star = Some((after_star, matched_at + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(value: &str) -> Identifier {
        Identifier::new(IdentifierKind::Email, value)
    }

    #[test]
    fn an_identifier_displays_as_kind_and_value() {
        assert_eq!(email("ann@example.com").to_string(), "email:ann@example.com");
        assert_eq!(Identifier::new(IdentifierKind::Custom("crm_id".into()), "42").to_string(), "crm_id:42");
        assert_eq!(Identifier::new(IdentifierKind::AnonymousId, "a1").to_string(), "anonymous_id:a1");
    }

    #[test]
    fn kind_names_round_trip() {
        for name in ["user_id", "anonymous_id", "email", "phone", "crm_id"] {
            assert_eq!(IdentifierKind::from_name(name).name(), name);
        }
        assert_eq!(IdentifierKind::from_name("crm_id"), IdentifierKind::Custom("crm_id".into()));
    }

    #[test]
    fn default_rules_block_placeholder_values_case_insensitively_after_trimming() {
        let rules = IdentityRules::default();
        for value in
            ["", "  ", "null", "NULL", " Undefined ", "anonymous", "-1", "0", "000000", "Test@Test.com", "None"]
        {
            assert!(rules.is_blocked(&email(value)), "{value:?} should be blocked");
        }
        assert!(rules.is_blocked(&Identifier::new(IdentifierKind::UserId, "00000000-0000-0000-0000-000000000000")));
        assert!(rules.is_blocked(&Identifier::new(IdentifierKind::UserId, "NaN")));
        for value in ["ann@example.com", "10", "u-0001", "nullable"] {
            assert!(!rules.is_blocked(&email(value)), "{value:?} should not be blocked");
        }
    }

    #[test]
    fn blocked_patterns_match_globs() {
        let rules =
            IdentityRules { blocked_patterns: vec!["*@example.com".into(), "qa-*-bot".into()], ..Default::default() };
        assert!(rules.is_blocked(&email("ann@example.com")));
        assert!(rules.is_blocked(&email(" ANN@Example.COM ")));
        assert!(rules.is_blocked(&Identifier::new(IdentifierKind::UserId, "qa-7-bot")));
        assert!(rules.is_blocked(&Identifier::new(IdentifierKind::UserId, "qa--bot")));
        assert!(!rules.is_blocked(&email("ann@example.org")));
        assert!(!rules.is_blocked(&Identifier::new(IdentifierKind::UserId, "qa-7-bots")));
    }

    #[test]
    fn glob_matching_handles_stars_anywhere() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(glob_matches("*aab", "aaaab"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(!glob_matches("abc", "abcd"));
        assert!(glob_matches("**x", "yyx"));
    }

    #[test]
    fn default_limits_are_one_user_id_and_five_of_every_other_kind() {
        let rules = IdentityRules::default();
        assert_eq!(rules.limit(&IdentifierKind::UserId), 1);
        assert_eq!(rules.limit(&IdentifierKind::Email), 5);
        assert_eq!(rules.limit(&IdentifierKind::AnonymousId), 5);
        assert_eq!(rules.limit(&IdentifierKind::Custom("crm_id".into())), 5);
    }

    #[test]
    fn custom_kinds_rank_after_listed_kinds_in_declaration_order() {
        let rules = IdentityRules::default()
            .with_custom(CustomKind { name: "crm_id".into(), from: CustomSource::ExternalId })
            .with_custom(CustomKind { name: "shop_id".into(), from: CustomSource::Trait("shopId".into()) });
        let ranks: Vec<usize> = ["user_id", "email", "phone", "anonymous_id", "crm_id", "shop_id", "other"]
            .map(|name| rules.rank(&IdentifierKind::from_name(name)))
            .to_vec();
        assert_eq!(ranks, [0, 1, 2, 3, 4, 5, 6]);
        assert!(rules.links(&IdentifierKind::Custom("crm_id".into())));
        assert!(!rules.links(&IdentifierKind::Custom("other".into())));
    }

    #[test]
    fn rules_round_trip_through_json_with_kinds_as_names() {
        let rules = IdentityRules::default()
            .with_custom(CustomKind { name: "crm_id".into(), from: CustomSource::ExternalId })
            .with_limit(IdentifierKind::Email, 2);
        let json = serde_json::to_value(&rules).unwrap();
        assert_eq!(json["limits"], serde_json::json!({"user_id": 1, "email": 2}));
        assert_eq!(json["link_kinds"][4], "crm_id");
        let back: IdentityRules = serde_json::from_value(json).unwrap();
        assert_eq!(back, rules);
        let partial: IdentityRules = serde_json::from_value(serde_json::json!({"default_limit": 3})).unwrap();
        assert_eq!(partial.limit(&IdentifierKind::UserId), 1);
        assert_eq!(partial.limit(&IdentifierKind::Phone), 3);
    }

    #[test]
    fn profile_ids_are_deterministic_per_workspace_and_event() {
        let workspace = crate::WorkspaceId(Uuid::from_u128(1));
        let event = crate::EventId(Uuid::from_u128(2));
        assert_eq!(ProfileId::created_by(workspace, event), ProfileId::created_by(workspace, event));
        assert_ne!(
            ProfileId::created_by(workspace, event),
            ProfileId::created_by(crate::WorkspaceId(Uuid::from_u128(3)), event)
        );
    }
}
