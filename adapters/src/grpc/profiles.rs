//! `onepd.profiles.v1.ProfileService`: profiles, their timelines and merges,
//! read from the profiles read model through [`ProfileReader`].
//!
//! Every call needs an admin token with the `read` scope, and reads only the
//! token's workspace: an identifier or profile id of another workspace is
//! simply not found.
//!
//! This file also holds what the HTTP profile API
//! ([`crate::http::profiles`]) shares with this service: naming a profile
//! ([`parse_identifier`], [`parse_profile_ref`]), the not-found message
//! ([`not_found_message`]) and timeline paging ([`page_of`]), so both edges
//! accept and refuse the same requests in the same words.
//!
//! Errors: a caller's mistake is INVALID_ARGUMENT naming the field, an
//! unknown profile NOT_FOUND naming what was asked for, the read model not
//! built yet UNAVAILABLE; a store failure is logged in full with a request id
//! and answered INTERNAL with only that id.

use std::sync::Arc;

use onepd_domain::events::workspace::TokenScope;
use onepd_domain::identity::{Identifier, IdentifierKind};
use onepd_domain::{Position, StoreError, Timestamp, WorkspaceId};
use onepd_projections::identity::{HeldBack, Link, Merge};
use onepd_projections::profile::{Lookup, Profile, TimelineEntry, Trait};
use onepd_proto::profiles::v1 as proto;
use onepd_proto::profiles::v1::profile_service_server::ProfileService;
use onepd_proto::profiles::v1::{get_profile_request, get_timeline_request, list_merges_request};
use tonic::{Request, Response, Status};
use tracing::field;
use uuid::Uuid;

use super::auth::TokenRegistry;
use crate::activation::admin::AdminError;
use crate::audiences::Audiences;
use crate::profiles::{AsOf, Explanation, ProfileReader, parse_profile_id};

/// Timeline entries per page when the request does not say.
pub const DEFAULT_TIMELINE_LIMIT: usize = 50;
/// The most timeline entries one page may hold; larger limits are lowered.
pub const MAX_TIMELINE_LIMIT: usize = 1000;

/// The profile service.
pub struct ProfilesApi {
    reader: ProfileReader,
    tokens: Arc<TokenRegistry>,
}

impl ProfilesApi {
    /// The service over `reader`, admitting the admin tokens in `tokens`.
    pub fn new(reader: ProfileReader, tokens: Arc<TokenRegistry>) -> ProfilesApi {
        ProfilesApi { reader, tokens }
    }

    /// The token's workspace, recorded on the current span.
    fn workspace_of<T>(&self, request: &Request<T>) -> Result<WorkspaceId, Status> {
        let grant = self.tokens.authorize(request.metadata(), TokenScope::Read)?;
        tracing::Span::current().record("workspace", field::display(grant.workspace));
        Ok(grant.workspace)
    }

    /// The status for a profile that was not found: UNAVAILABLE while the
    /// read model has never been built, NOT_FOUND naming it otherwise.
    async fn missing(&self, field: &str, lookup: &Lookup, as_of: Option<AsOf>) -> Status {
        match self.reader.checkpoint().await {
            Ok(None) => read_model_unbuilt(),
            Ok(Some(_)) => Status::not_found(not_found_message(field, lookup, as_of)),
            Err(err) => store_status(err),
        }
    }
}

#[tonic::async_trait]
impl ProfileService for ProfilesApi {
    #[tracing::instrument(skip_all, name = "get_profile", fields(workspace = field::Empty))]
    async fn get_profile(
        &self,
        request: Request<proto::GetProfileRequest>,
    ) -> Result<Response<proto::Profile>, Status> {
        let workspace = self.workspace_of(&request)?;
        let request = request.into_inner();
        let lookup = lookup_of(request.profile.map(ProfileRef::from))?;
        let as_of = match request.as_of {
            None => None,
            Some(get_profile_request::AsOf::AsOfPosition(position)) => Some(AsOf::Position(Position(position))),
            Some(get_profile_request::AsOf::AsOfTime(time)) => Some(AsOf::Time(timestamp("as_of_time", time)?)),
        };
        let Some(profile) = self.reader.get(workspace, &lookup, as_of).await.map_err(store_status)? else {
            return Err(self.missing("profile", &lookup, as_of).await);
        };
        let mut message = profile_message(profile);
        // Computed traits and audiences are evaluated at a time: now, or the
        // time asked for; not for a position.
        let at = match as_of {
            None => Some(None),
            Some(AsOf::Time(time)) => Some(Some(time)),
            Some(AsOf::Position(_)) => None,
        };
        if let Some(at) = at {
            let audiences = Audiences::new(self.reader.log().clone(), self.reader.clone());
            let summary =
                audiences.summary(workspace, &lookup, at, crate::ingest::now()).await.map_err(|err| match err {
                    AdminError::Store(err) => store_status(err),
                    other => Status::internal(other.to_string()),
                })?;
            let summary = summary.unwrap_or_default();
            message.computed_traits = (summary.computed_traits.into_iter())
                .filter_map(|(name, value)| Some((name, json_message(&value?))))
                .collect();
            message.audiences = summary.audiences;
        }
        Ok(Response::new(message))
    }

    #[tracing::instrument(skip_all, name = "get_timeline", fields(workspace = field::Empty))]
    async fn get_timeline(
        &self,
        request: Request<proto::GetTimelineRequest>,
    ) -> Result<Response<proto::GetTimelineResponse>, Status> {
        let workspace = self.workspace_of(&request)?;
        let request = request.into_inner();
        let lookup = lookup_of(request.profile.map(ProfileRef::from))?;
        let limit = match request.limit {
            0 => DEFAULT_TIMELINE_LIMIT,
            limit => (limit as usize).min(MAX_TIMELINE_LIMIT),
        };
        let before = (request.before > 0).then_some(Position(request.before));
        // One entry more than asked for tells whether another page follows.
        let Some(entries) = self.reader.timeline(workspace, &lookup, before, limit + 1).await.map_err(store_status)?
        else {
            return Err(self.missing("profile", &lookup, None).await);
        };
        let (entries, next_before) = page_of(entries, limit);
        Ok(Response::new(proto::GetTimelineResponse {
            entries: entries.into_iter().map(timeline_message).collect(),
            next_before: next_before.map_or(0, |position| position.0),
        }))
    }

    #[tracing::instrument(skip_all, name = "explain_merge", fields(workspace = field::Empty))]
    async fn explain_merge(
        &self,
        request: Request<proto::ExplainMergeRequest>,
    ) -> Result<Response<proto::ExplainMergeResponse>, Status> {
        let workspace = self.workspace_of(&request)?;
        let request = request.into_inner();
        let a = required_identifier("a", request.a)?;
        let b = required_identifier("b", request.b)?;
        let response = match self.reader.explain(workspace, &a, &b).await.map_err(store_status)? {
            Explanation::Linked { profile, links } => proto::ExplainMergeResponse {
                linked: true,
                profile_id: profile.to_string(),
                links: links.into_iter().map(link_message).collect(),
                a_profile_id: profile.to_string(),
                b_profile_id: profile.to_string(),
                held_back: None,
            },
            Explanation::Apart { a, b, held_back } => proto::ExplainMergeResponse {
                linked: false,
                a_profile_id: a.to_string(),
                b_profile_id: b.to_string(),
                held_back: held_back.as_ref().map(held_back_message),
                ..proto::ExplainMergeResponse::default()
            },
            Explanation::HeldBack { profile, held } => proto::ExplainMergeResponse {
                linked: false,
                a_profile_id: profile.to_string(),
                held_back: Some(held_back_message(&held)),
                ..proto::ExplainMergeResponse::default()
            },
            Explanation::Unknown(unknown) => {
                let field = if unknown == a { "a" } else { "b" };
                return Err(self.missing(field, &Lookup::Identifier(unknown), None).await);
            }
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, name = "list_merges", fields(workspace = field::Empty))]
    async fn list_merges(
        &self,
        request: Request<proto::ListMergesRequest>,
    ) -> Result<Response<proto::ListMergesResponse>, Status> {
        let workspace = self.workspace_of(&request)?;
        let request = request.into_inner();
        let lookup = lookup_of(request.profile.map(ProfileRef::from))?;
        let Some(doc) = self.reader.doc(workspace, &lookup).await.map_err(store_status)? else {
            return Err(self.missing("profile", &lookup, None).await);
        };
        Ok(Response::new(proto::ListMergesResponse {
            profile_id: doc.id.to_string(),
            merges: doc.merges.into_iter().map(merge_message).collect(),
        }))
    }
}

/// A request field that does not hold what it should; shown as
/// `field: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// The field, dotted from the request's root (`identifier.kind`).
    pub field: String,
    /// What it should hold and what it held.
    pub problem: String,
}

impl InvalidField {
    /// `problem` with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
        InvalidField { field: field.into(), problem: problem.into() }
    }

    /// The same problem, its field nested in `parent`.
    pub fn within(self, parent: &str) -> InvalidField {
        InvalidField { field: format!("{parent}.{}", self.field), ..self }
    }
}

impl From<InvalidField> for Status {
    fn from(err: InvalidField) -> Status {
        Status::invalid_argument(err.to_string())
    }
}

/// The identifier a caller names by `kind` and `value`; errors name the
/// field `kind` or `value`.
///
/// The kind is any name without whitespace or `:` (a custom kind is
/// whatever the workspace declared). An email or phone number is normalized
/// as at ingest, so `Ann@Example.COM` finds `ann@example.com`; one that does
/// not normalize is looked up as given.
pub fn parse_identifier(kind: &str, value: &str) -> Result<Identifier, InvalidField> {
    if kind.is_empty() || kind.contains(|c: char| c.is_whitespace() || c == ':') {
        return Err(InvalidField::new("kind", format!("expected a kind name, found {kind:?}")));
    }
    if value.trim().is_empty() {
        return Err(InvalidField::new("value", format!("expected a value, found {value:?}")));
    }
    let kind = IdentifierKind::from_name(kind);
    Ok(Identifier::normalized(kind.clone(), value).unwrap_or_else(|_| Identifier::new(kind, value)))
}

/// How a request names a profile, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileRef {
    /// By one of its identifiers.
    Identifier(proto::Identifier),
    /// By a profile id, as text.
    ProfileId(String),
}

/// The lookup `named` asks for; errors name `identifier.kind`,
/// `identifier.value` or `profile_id`.
pub fn parse_profile_ref(named: ProfileRef) -> Result<Lookup, InvalidField> {
    match named {
        ProfileRef::Identifier(identifier) => parse_identifier(&identifier.kind, &identifier.value)
            .map(Lookup::Identifier)
            .map_err(|err| err.within("identifier")),
        ProfileRef::ProfileId(text) => parse_profile_id(&text)
            .map(Lookup::Profile)
            .ok_or_else(|| InvalidField::new("profile_id", format!("expected a UUID, found {text:?}"))),
    }
}

/// Why no profile answered `lookup`, as `field: …`:
/// `profile: no profile holds email:x@y.com`, with ` as of position 7` for
/// a point-in-time read.
pub fn not_found_message(field: &str, lookup: &Lookup, as_of: Option<AsOf>) -> String {
    let what = match lookup {
        Lookup::Identifier(identifier) => format!("no profile holds {identifier}"),
        Lookup::Profile(id) => format!("no profile has the id {id}"),
    };
    let when = match as_of {
        None => String::new(),
        Some(AsOf::Position(position)) => format!(" as of position {position}"),
        Some(AsOf::Time(time)) => format!(" as of {}", time.to_rfc3339()),
    };
    format!("{field}: {what}{when}")
}

/// A page of at most `limit` entries out of `entries`, read with one more
/// than `limit`, and the position to read the next page below: the last
/// entry's, when more follow.
pub fn page_of(mut entries: Vec<TimelineEntry>, limit: usize) -> (Vec<TimelineEntry>, Option<Position>) {
    if entries.len() <= limit {
        return (entries, None);
    }
    entries.truncate(limit);
    let next = entries.last().map(|entry| entry.position);
    (entries, next)
}

macro_rules! profile_ref_from {
    ($($oneof:ident),+) => {$(
        impl From<$oneof::Profile> for ProfileRef {
            fn from(profile: $oneof::Profile) -> ProfileRef {
                match profile {
                    $oneof::Profile::Identifier(identifier) => ProfileRef::Identifier(identifier),
                    $oneof::Profile::ProfileId(id) => ProfileRef::ProfileId(id),
                }
            }
        }
    )+};
}

profile_ref_from!(get_profile_request, get_timeline_request, list_merges_request);

fn lookup_of(named: Option<ProfileRef>) -> Result<Lookup, Status> {
    let named = named
        .ok_or_else(|| Status::invalid_argument("profile: expected an identifier or a profile_id, found neither"))?;
    Ok(parse_profile_ref(named)?)
}

fn required_identifier(field: &str, identifier: Option<proto::Identifier>) -> Result<Identifier, Status> {
    let identifier =
        identifier.ok_or_else(|| Status::invalid_argument(format!("{field}: expected an identifier, found none")))?;
    Ok(parse_identifier(&identifier.kind, &identifier.value).map_err(|err| err.within(field))?)
}

pub(crate) fn timestamp(field: &str, value: prost_types::Timestamp) -> Result<Timestamp, Status> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Status::invalid_argument(format!("{field}.nanos: expected 0 to 999999999, found {}", value.nanos)));
    }
    Ok(Timestamp::from_seconds_nanos(value.seconds, value.nanos))
}

fn read_model_unbuilt() -> Status {
    Status::unavailable("profiles: the read model is still being built; retry in a moment")
}

/// The status a store failure becomes: the cause is logged with a request
/// id, and the caller gets only the id.
fn store_status(err: StoreError) -> Status {
    if let StoreError::ShuttingDown = err {
        return Status::unavailable("onepd is shutting down; retry against another node or later");
    }
    if let StoreError::Unavailable(cause) = &err {
        tracing::warn!(cause = %cause, "profile read unavailable");
        return Status::unavailable("onepd cannot reach its database; retry in a few seconds");
    }
    let request_id = Uuid::now_v7();
    tracing::error!(%request_id, cause = %err, "profile read failed");
    Status::internal(format!("profiles could not be read (request id {request_id})"))
}

/// The wire form of a profile.
pub fn profile_message(profile: Profile) -> proto::Profile {
    proto::Profile {
        id: profile.id.to_string(),
        identifiers: profile.identifiers.iter().map(identifier_message).collect(),
        traits: traits_message(&profile.traits),
        first_seen: profile.first_seen.map(timestamp_message),
        last_seen: profile.last_seen.map(timestamp_message),
        event_counts: profile.event_counts.into_iter().collect(),
        revenue: profile.revenue.into_iter().collect(),
        sources: profile.sources.into_iter().collect(),
        groups: profile
            .groups
            .iter()
            .map(|(id, group)| (id.clone(), proto::Group { traits: traits_message(&group.traits) }))
            .collect(),
        consent: profile.consent.as_ref().map(trait_message),
        event_count: profile.events as u64,
        merges: profile.merges.into_iter().map(merge_message).collect(),
        held_back: profile.held_back.iter().map(held_back_message).collect(),
        computed_traits: Default::default(),
        audiences: Vec::new(),
    }
}

fn held_back_message(held: &HeldBack) -> proto::HeldBack {
    proto::HeldBack {
        identifier: Some(identifier_message(&held.identifier)),
        position: held.position.0,
        event_id: held.event_id.to_string(),
        held_by: held.held_by.map(|id| id.to_string()).unwrap_or_default(),
        limit_kind: held.limit_kind.to_string(),
        limit: held.limit as u64,
        reason: held.reason.clone(),
    }
}

fn traits_message(
    traits: &std::collections::BTreeMap<String, Trait>,
) -> std::collections::HashMap<String, proto::TraitValue> {
    traits.iter().map(|(name, value)| (name.clone(), trait_message(value))).collect()
}

fn trait_message(value: &Trait) -> proto::TraitValue {
    proto::TraitValue {
        value: Some(json_message(&value.value)),
        position: value.position.0,
        event_id: value.event_id.to_string(),
        source_id: value.source_id.clone().unwrap_or_default(),
        timestamp: Some(timestamp_message(value.timestamp)),
    }
}

fn identifier_message(identifier: &Identifier) -> proto::Identifier {
    proto::Identifier { kind: identifier.kind.name().to_owned(), value: identifier.value.clone() }
}

fn timeline_message(entry: TimelineEntry) -> proto::TimelineEntry {
    proto::TimelineEntry {
        position: entry.position.0,
        event_id: entry.event_id.to_string(),
        r#type: entry.message_type,
        name: entry.name.unwrap_or_default(),
        timestamp: Some(timestamp_message(entry.timestamp)),
        profile_id: entry.profile.to_string(),
    }
}

fn merge_message(merge: Merge) -> proto::Merge {
    proto::Merge {
        survivor: merge.survivor.to_string(),
        absorbed: merge.absorbed.to_string(),
        position: merge.position.0,
        event_id: merge.event_id.to_string(),
        source_id: merge.source_id.unwrap_or_default(),
        shared: Some(identifier_message(&merge.shared)),
        rule: merge.rule,
    }
}

fn link_message(link: Link) -> proto::Link {
    proto::Link {
        from: Some(identifier_message(&link.from)),
        to: Some(identifier_message(&link.to)),
        position: link.position.0,
        event_id: link.event_id.to_string(),
        source_id: link.source_id.unwrap_or_default(),
        rule: link.rule,
    }
}

pub(crate) fn timestamp_message(time: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = time.to_seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

/// A JSON value as a `google.protobuf.Value`; numbers become doubles, as
/// the well-known type has no integers.
fn json_message(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        serde_json::Value::Bool(flag) => Kind::BoolValue(*flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_message).collect() })
        }
        serde_json::Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.iter().map(|(name, value)| (name.clone(), json_message(value))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use onepd_domain::EventId;
    use onepd_domain::identity::ProfileId;
    use onepd_projections::profile::Group;
    use prost_types::value::Kind;
    use serde_json::json;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn trait_at(value: serde_json::Value, position: u64) -> Trait {
        Trait {
            value,
            position: Position(position),
            event_id: EventId(id(position.into())),
            source_id: Some("src".into()),
            timestamp: Timestamp(1_764_390_179_123_456),
        }
    }

    fn entry(position: u64) -> TimelineEntry {
        TimelineEntry {
            position: Position(position),
            event_id: EventId(id(position.into())),
            message_type: "track".into(),
            name: Some("Signed Up".into()),
            timestamp: Timestamp(0),
            profile: ProfileId(id(1)),
        }
    }

    #[test]
    fn built_in_and_custom_kinds_parse_by_name() {
        assert_eq!(parse_identifier("user_id", "u1"), Ok(Identifier::new(IdentifierKind::UserId, "u1")));
        assert_eq!(parse_identifier("anonymous_id", "a1"), Ok(Identifier::new(IdentifierKind::AnonymousId, "a1")));
        assert_eq!(
            parse_identifier("crm_id", "C-7"),
            Ok(Identifier::new(IdentifierKind::Custom("crm_id".into()), "C-7"))
        );
    }

    #[test]
    fn emails_and_phones_are_looked_up_normalized_as_at_ingest() {
        assert_eq!(
            parse_identifier("email", " Ann@Example.COM "),
            Ok(Identifier::new(IdentifierKind::Email, "ann@example.com"))
        );
        assert_eq!(
            parse_identifier("phone", "+1 (415) 555-2671"),
            Ok(Identifier::new(IdentifierKind::Phone, "+14155552671"))
        );
        // Kept as sent at ingest when it does not normalize, so looked up as given.
        assert_eq!(
            parse_identifier("email", "not-an-email"),
            Ok(Identifier::new(IdentifierKind::Email, "not-an-email"))
        );
    }

    #[test]
    fn an_empty_kind_or_value_names_the_field() {
        let kind = parse_profile_ref(ProfileRef::Identifier(proto::Identifier { kind: "".into(), value: "x".into() }));
        assert_eq!(kind.unwrap_err().to_string(), "identifier.kind: expected a kind name, found \"\"");
        let kind = parse_identifier("user id", "u1").unwrap_err();
        assert_eq!(kind.to_string(), "kind: expected a kind name, found \"user id\"");
        let value = parse_identifier("email", " ").unwrap_err();
        assert_eq!(value.to_string(), "value: expected a value, found \" \"");
    }

    #[test]
    fn a_profile_id_must_be_a_uuid() {
        let uuid = "0190a4b2-0000-7000-8000-000000000001";
        assert_eq!(
            parse_profile_ref(ProfileRef::ProfileId(uuid.into())),
            Ok(Lookup::Profile(ProfileId(Uuid::parse_str(uuid).unwrap())))
        );
        let err = parse_profile_ref(ProfileRef::ProfileId("p1".into())).unwrap_err();
        assert_eq!(err.to_string(), "profile_id: expected a UUID, found \"p1\"");
    }

    #[test]
    fn a_missing_profile_is_named_with_the_identifier_asked_for() {
        let email = Lookup::Identifier(Identifier::new(IdentifierKind::Email, "x@y.com"));
        assert_eq!(not_found_message("profile", &email, None), "profile: no profile holds email:x@y.com");
        assert_eq!(
            not_found_message("profile", &email, Some(AsOf::Position(Position(7)))),
            "profile: no profile holds email:x@y.com as of position 7"
        );
        let by_id = Lookup::Profile(ProfileId(id(1)));
        assert_eq!(
            not_found_message("profile", &by_id, None),
            "profile: no profile has the id 00000000-0000-0000-0000-000000000001"
        );
    }

    #[test]
    fn a_full_page_read_with_one_extra_entry_points_below_its_last_entry() {
        let (entries, next) = page_of(vec![entry(9), entry(7), entry(4)], 2);
        assert_eq!(entries.iter().map(|entry| entry.position.0).collect::<Vec<_>>(), [9, 7]);
        assert_eq!(next, Some(Position(7)));
        let (entries, next) = page_of(vec![entry(9), entry(7)], 2);
        assert_eq!(entries.len(), 2);
        assert_eq!(next, None, "no extra entry came back, so this is the last page");
    }

    #[test]
    fn a_profile_maps_to_its_wire_form_with_provenance() {
        let survivor = ProfileId(id(1));
        let absorbed = ProfileId(id(2));
        let email = Identifier::new(IdentifierKind::Email, "ann@example.com");
        let profile = Profile {
            id: survivor,
            identifiers: vec![email.clone(), Identifier::new(IdentifierKind::UserId, "u1")],
            traits: BTreeMap::from([
                ("email".into(), trait_at(json!("ann@example.com"), 3)),
                ("plan".into(), trait_at(json!({"tier": "pro", "seats": [1, 2.5, null, true]}), 5)),
            ]),
            first_seen: Some(Timestamp(1_000_000)),
            last_seen: None,
            event_counts: BTreeMap::from([("identify".into(), 2)]),
            revenue: BTreeMap::from([("USD".into(), 12.5)]),
            sources: BTreeSet::from(["src".into()]),
            groups: BTreeMap::from([(
                "g1".into(),
                Group { traits: BTreeMap::from([("name".into(), trait_at(json!("Acme"), 6))]) },
            )]),
            consent: None,
            events: 4,
            merges: vec![Merge {
                survivor,
                absorbed,
                position: Position(5),
                event_id: EventId(id(5)),
                source_id: None,
                shared: email,
                rule: "shared email".into(),
            }],
            held_back: Vec::new(),
        };
        let message = profile_message(profile);
        assert_eq!(message.id, "00000000-0000-0000-0000-000000000001");
        assert_eq!(message.identifiers[1], proto::Identifier { kind: "user_id".into(), value: "u1".into() });
        let plan = &message.traits["plan"];
        assert_eq!((plan.position, plan.source_id.as_str()), (5, "src"));
        assert_eq!(plan.timestamp, Some(prost_types::Timestamp { seconds: 1_764_390_179, nanos: 123_456_000 }));
        let Some(Kind::StructValue(fields)) = plan.value.as_ref().and_then(|value| value.kind.clone()) else {
            panic!("plan is not a struct: {plan:?}");
        };
        assert_eq!(fields.fields["tier"].kind, Some(Kind::StringValue("pro".into())));
        let Some(Kind::ListValue(seats)) = fields.fields["seats"].kind.clone() else { panic!("seats is not a list") };
        let seats: Vec<_> = seats.values.into_iter().map(|value| value.kind.unwrap()).collect();
        assert_eq!(seats, [Kind::NumberValue(1.0), Kind::NumberValue(2.5), Kind::NullValue(0), Kind::BoolValue(true)]);
        assert_eq!(message.first_seen, Some(prost_types::Timestamp { seconds: 1, nanos: 0 }));
        assert_eq!(message.last_seen, None);
        assert_eq!(message.event_counts["identify"], 2);
        assert_eq!(message.revenue["USD"], 12.5);
        assert_eq!(message.sources, ["src"]);
        assert_eq!(message.groups["g1"].traits["name"].position, 6);
        assert_eq!(message.consent, None);
        assert_eq!(message.event_count, 4);
        let merge = &message.merges[0];
        assert_eq!(merge.absorbed, "00000000-0000-0000-0000-000000000002");
        assert_eq!((merge.source_id.as_str(), merge.rule.as_str()), ("", "shared email"));
        assert_eq!(merge.shared.as_ref().map(|shared| shared.kind.as_str()), Some("email"));
    }
}
