//! The profile read API over HTTP, in the shape of Segment's Profile API:
//!
//! ```text
//! GET /v1/spaces/{workspace}/collections/users/profiles/{id_type}:{value}/traits
//! GET /v1/spaces/{workspace}/collections/users/profiles/{id_type}:{value}/events
//! GET /v1/spaces/{workspace}/collections/users/profiles/{id_type}:{value}/external_ids
//! GET /v1/spaces/{workspace}/collections/users/profiles/{id_type}:{value}/links
//! ```
//!
//! `{id_type}` is an identifier kind (`user_id`, `anonymous_id`, `email`,
//! `phone`, a custom kind) or `profile_id`, whose value is a profile's UUID.
//! The admin token goes as the HTTP Basic user name with an empty password,
//! as Segment's access token does (`curl -u "$TOKEN:" …`); `Bearer <token>`
//! is accepted too. It needs the `read` scope, and `{workspace}` must be the
//! id of the token's workspace: any other answers 404, so nothing about
//! another workspace is revealed, not even whether it exists.
//!
//! * `/traits` — `{"traits": {name: value}, "cursor": …}`; `?include=a,b`
//!   keeps only those traits, `?verbose=true` gives each as `{"value",
//!   "position", "event_id", "source_id", "timestamp"}`, `?as_of=<position>`
//!   or `?as_of=<RFC 3339>` reads the profile as it stood then.
//! * `/events` — `{"data": [{"type", "event" | "name", "timestamp",
//!   "position", "event_id", "profile_id"}], "cursor": …}`, newest first;
//!   `?limit=` (default 10, at most 100) and `?next=<cursor>` page through.
//! * `/external_ids` — `{"data": [{"id", "type", "source_id", "collection",
//!   "position", "encoding"}], "cursor": …}`; `?include=email,user_id` keeps
//!   those types. The time an identifier was first seen is not stored, so
//!   `created_at` is left out; `position` is the event that brought it in.
//! * `/links` — the accounts (groups) the profile joined: `{"data":
//!   [{"to_space_id", "to_collection": "accounts", "external_ids": [{"id",
//!   "type": "group_id", …}]}], "cursor": …}`; `?as_of=` as for traits.
//!
//! Every cursor is `{"url", "has_more", "next"}`; `next` is the position to
//! read below, as text, and only `/events` pages. Errors are JSON,
//! `{"error": {"code", "message"}}`, with 400 (`invalid_request`), 401
//! (`unauthorized`), 403 (`forbidden`), 404 (`not_found`), 503
//! (`unavailable`, while the read model is first built) and 500
//! (`internal`, with a request id; the cause is logged).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use onepd_domain::events::workspace::TokenScope;
use onepd_domain::{Position, StoreError, Timestamp, WorkspaceId};
use onepd_projections::identity::{Attached, Link};
use onepd_projections::profile::{Group, Lookup, TimelineEntry, Trait};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::activation::admin::AdminError;
use crate::audiences::Audiences;
use crate::grpc::auth::{AuthError, TokenRegistry};
use crate::grpc::profiles::{InvalidField, not_found_message, page_of, parse_identifier};
use crate::profiles::{AsOf, ProfileReader, parse_profile_id};

/// Events per page of `/events` when `?limit=` is not given, as Segment.
pub const DEFAULT_EVENTS_LIMIT: usize = 10;
/// The largest `?limit=` of `/events`, as Segment.
pub const MAX_EVENTS_LIMIT: usize = 100;

/// The profile API's routes, to merge into the server's router.
pub fn profiles_router(reader: ProfileReader, tokens: Arc<TokenRegistry>) -> axum::Router {
    axum::Router::new()
        .route("/v1/spaces/{workspace}/collections/{collection}/profiles/{id}/{resource}", get(profile_api))
        .with_state(Arc::new(ProfilesHttp { reader, tokens }))
}

/// What every request needs.
struct ProfilesHttp {
    reader: ProfileReader,
    tokens: Arc<TokenRegistry>,
}

impl ProfilesHttp {
    /// What a read of `lookup` found, or why there is none: the read model
    /// not built yet, or no such profile.
    async fn found<T>(
        &self,
        read: Result<Option<T>, StoreError>,
        lookup: &Lookup,
        as_of: Option<AsOf>,
    ) -> Result<T, ApiError> {
        if let Some(found) = read? {
            return Ok(found);
        }
        match self.reader.checkpoint().await? {
            None => Err(ApiError::Unbuilt),
            Some(_) => Err(ApiError::NotFound(not_found_message("profile", lookup, as_of))),
        }
    }
}

/// The path's parts, in route order.
type ProfilePath = (String, String, String, String);

#[tracing::instrument(skip_all, name = "profile_api")]
async fn profile_api(
    State(api): State<Arc<ProfilesHttp>>,
    path: Result<Path<ProfilePath>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let request_id = Uuid::now_v7().to_string();
    let url = uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string);
    let answered = match (path, query) {
        (Ok(Path(path)), Ok(Query(query))) => answer(&api, path, &query, &headers, &url).await,
        (Err(rejection), _) => {
            Err(ApiError::Invalid(format!("path: expected UTF-8 path segments, found {}", rejection.body_text())))
        }
        (_, Err(rejection)) => {
            Err(ApiError::Invalid(format!("query: expected name=value pairs, found {}", rejection.body_text())))
        }
    };
    let mut response = match answered {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(err) => err.into_response_with(&request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn answer(
    api: &ProfilesHttp,
    (space, collection, id, resource): ProfilePath,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    url: &str,
) -> Result<Value, ApiError> {
    let token = admin_token(headers).ok_or(ApiError::NoCredentials)?;
    let grant = api.tokens.authorize_token(&token, TokenScope::Read)?;
    if Uuid::parse_str(&space).ok() != Some(grant.workspace.0) {
        return Err(ApiError::NotFound(format!(
            "workspace: expected the id of this admin token's workspace, found {space:?}"
        )));
    }
    if collection != "users" {
        return Err(ApiError::NotFound(format!("collection: expected users, found {collection:?}")));
    }
    let resource = Resource::of(&resource)?;
    let lookup = parse_profile_path(&id)?;
    let query = QueryParams(query);
    if !matches!(resource, Resource::Traits | Resource::Links)
        && let Some(as_of) = query.get("as_of")
    {
        return Err(ApiError::Invalid(format!(
            "as_of: expected no as_of on /{} (only /traits and /links read a past state), found {as_of:?}",
            resource.name()
        )));
    }
    let (reader, workspace) = (&api.reader, grant.workspace);
    match resource {
        Resource::Traits => {
            let as_of = query.as_of()?;
            let verbose = query.flag("verbose")?;
            let include = query.list("include");
            let profile = api.found(reader.get(workspace, &lookup, as_of).await, &lookup, as_of).await?;
            let mut traits = traits_json(&profile.traits, include.as_deref(), verbose);
            // Computed traits beside the others, as Segment's Profile API
            // shows them: evaluated now, or at an `as_of` time.
            let at = match as_of {
                None => Some(None),
                Some(AsOf::Time(time)) => Some(Some(time)),
                Some(AsOf::Position(_)) => None,
            };
            if let Some(at) = at {
                let audiences = Audiences::new(reader.log().clone(), reader.clone());
                let summary = audiences.summary(workspace, &lookup, at, crate::ingest::now()).await;
                let summary = summary
                    .map_err(|err| match err {
                        AdminError::Store(err) => ApiError::Store(err),
                        other => ApiError::Store(StoreError::Database(other.to_string())),
                    })?
                    .unwrap_or_default();
                let wanted = |name: &String| include.as_deref().is_none_or(|names| names.contains(name));
                for (name, value) in summary.computed_traits.into_iter().filter(|(name, _)| wanted(name)) {
                    let value = value.unwrap_or(Value::Null);
                    traits[name] = if verbose { json!({ "value": value, "computed": true }) } else { value };
                }
                // An audience the person meets is a trait `true`, as Segment
                // Engage shows audience membership.
                for name in summary.audiences.into_iter().filter(|name| wanted(name)) {
                    traits[name] = if verbose { json!({ "value": true, "audience": true }) } else { json!(true) };
                }
            }
            Ok(json!({ "traits": traits, "cursor": cursor(url, None) }))
        }
        Resource::Events => {
            let limit = query.limit()?;
            let before = query.next()?;
            // One entry more than asked for tells whether another page follows.
            let entries =
                api.found(reader.timeline(workspace, &lookup, before, limit + 1).await, &lookup, None).await?;
            let (entries, next) = page_of(entries, limit);
            let data: Vec<Value> = entries.iter().map(event_json).collect();
            Ok(json!({ "data": data, "cursor": cursor(url, next) }))
        }
        Resource::ExternalIds => {
            let include = query.list("include");
            let doc = api.found(reader.doc(workspace, &lookup).await, &lookup, None).await?;
            let wanted = |attached: &&Attached| {
                include.as_ref().is_none_or(|kinds| kinds.iter().any(|kind| kind == attached.identifier.kind.name()))
            };
            let data: Vec<Value> =
                doc.identifiers.iter().filter(wanted).map(|attached| external_id_json(attached, &doc.links)).collect();
            Ok(json!({ "data": data, "cursor": cursor(url, None) }))
        }
        Resource::Links => {
            let as_of = query.as_of()?;
            let profile = api.found(reader.get(workspace, &lookup, as_of).await, &lookup, as_of).await?;
            Ok(json!({ "data": links_json(workspace, &profile.groups), "cursor": cursor(url, None) }))
        }
    }
}

/// The lookup `{id_type}:{value}` names, with `profile_id:<uuid>` naming a
/// profile by its id. Errors name `id`, `id.kind`, `id.value` or
/// `id.profile_id`.
pub fn parse_profile_path(id: &str) -> Result<Lookup, InvalidField> {
    let Some((kind, value)) = id.split_once(':') else {
        return Err(InvalidField::new(
            "id",
            format!("expected {{id_type}}:{{value}} (email:ann@example.com), found {id:?}"),
        ));
    };
    if kind == "profile_id" {
        return parse_profile_id(value)
            .map(Lookup::Profile)
            .ok_or_else(|| InvalidField::new("id.profile_id", format!("expected a UUID, found {value:?}")));
    }
    parse_identifier(kind, value).map(Lookup::Identifier).map_err(|err| err.within("id"))
}

/// The `/events` cursor for reading below `position`.
pub fn encode_cursor(position: Position) -> String {
    position.0.to_string()
}

/// The position an `/events` cursor reads below; `None` when `text` is not
/// one this API gave out.
pub fn decode_cursor(text: &str) -> Option<Position> {
    text.parse::<u64>().ok().filter(|&position| position > 0).map(Position)
}

/// A point in time as `?as_of=` gives it: a log position, or an RFC 3339
/// time. A `+` of an offset arrives as a space when the caller did not
/// escape it, so a space is read as `+`.
pub fn parse_as_of(text: &str) -> Result<AsOf, InvalidField> {
    if let Ok(position) = text.parse::<u64>() {
        return Ok(AsOf::Position(Position(position)));
    }
    Timestamp::parse_rfc3339(text)
        .or_else(|| Timestamp::parse_rfc3339(&text.replace(' ', "+")))
        .map(AsOf::Time)
        .ok_or_else(|| {
            InvalidField::new("as_of", format!("expected a log position or an RFC 3339 time, found {text:?}"))
        })
}

/// The sub-resources of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Traits,
    Events,
    ExternalIds,
    Links,
}

impl Resource {
    fn of(name: &str) -> Result<Resource, ApiError> {
        match name {
            "traits" => Ok(Resource::Traits),
            "events" => Ok(Resource::Events),
            "external_ids" => Ok(Resource::ExternalIds),
            "links" => Ok(Resource::Links),
            other => Err(ApiError::NotFound(format!(
                "path: expected traits, events, external_ids or links after the profile, found {other:?}"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resource::Traits => "traits",
            Resource::Events => "events",
            Resource::ExternalIds => "external_ids",
            Resource::Links => "links",
        }
    }
}

/// The query string's parameters, each read where it applies.
struct QueryParams<'a>(&'a HashMap<String, String>);

impl QueryParams<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A comma-separated list; `None` when absent.
    fn list(&self, name: &str) -> Option<Vec<String>> {
        let text = self.get(name)?;
        Some(text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect())
    }

    fn flag(&self, name: &str) -> Result<bool, InvalidField> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(InvalidField::new(name, format!("expected true or false, found {other:?}"))),
        }
    }

    fn as_of(&self) -> Result<Option<AsOf>, InvalidField> {
        self.get("as_of").map(parse_as_of).transpose()
    }

    fn limit(&self) -> Result<usize, InvalidField> {
        let Some(text) = self.get("limit") else { return Ok(DEFAULT_EVENTS_LIMIT) };
        text.parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_EVENTS_LIMIT).contains(limit))
            .ok_or_else(|| InvalidField::new("limit", format!("expected 1 to {MAX_EVENTS_LIMIT}, found {text:?}")))
    }

    fn next(&self) -> Result<Option<Position>, InvalidField> {
        let Some(text) = self.get("next").filter(|text| !text.is_empty()) else { return Ok(None) };
        decode_cursor(text)
            .map(Some)
            .ok_or_else(|| InvalidField::new("next", format!("expected a cursor from a previous page, found {text:?}")))
    }
}

/// The admin token: the user name of HTTP Basic credentials, or a bearer
/// token.
pub(crate) fn admin_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        crate::ingest::basic_user(credentials)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.trim().to_owned()).filter(|token| !token.is_empty())
    } else {
        None
    }
}

fn cursor(url: &str, next: Option<Position>) -> Value {
    json!({ "url": url, "has_more": next.is_some(), "next": next.map(encode_cursor).unwrap_or_default() })
}

/// Traits by name, each its value or, when `verbose`, its value with where
/// it came from; only the names in `include` when given.
fn traits_json(traits: &BTreeMap<String, Trait>, include: Option<&[String]>, verbose: bool) -> Value {
    let wanted = |name: &String| include.is_none_or(|names| names.contains(name));
    let traits: Map<String, Value> = traits
        .iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, value)| (name.clone(), if verbose { trait_json(value) } else { value.value.clone() }))
        .collect();
    Value::Object(traits)
}

fn trait_json(value: &Trait) -> Value {
    json!({
        "value": value.value,
        "position": value.position.0,
        "event_id": value.event_id.to_string(),
        "source_id": value.source_id,
        "timestamp": value.timestamp.to_rfc3339(),
    })
}

fn event_json(entry: &TimelineEntry) -> Value {
    let mut event = json!({
        "type": entry.message_type,
        "timestamp": entry.timestamp.to_rfc3339(),
        "position": entry.position.0,
        "event_id": entry.event_id.to_string(),
        "profile_id": entry.profile.to_string(),
    });
    if let Some(name) = &entry.name {
        // Segment names a track's name `event`, a page's or screen's `name`.
        let field = if entry.message_type == "track" { "event" } else { "name" };
        event[field] = json!(name);
    }
    event
}

/// An identifier of the profile; its source is that of the event that
/// brought it in, found among the links that event made (an identifier
/// that came alone made none, and its source is `null`).
fn external_id_json(attached: &Attached, links: &[Link]) -> Value {
    let touches = |link: &&Link| {
        link.position == attached.position && (link.to == attached.identifier || link.from == attached.identifier)
    };
    let source_id = links.iter().find(touches).and_then(|link| link.source_id.clone());
    json!({
        "id": attached.identifier.value,
        "type": attached.identifier.kind.name(),
        "source_id": source_id,
        "collection": "users",
        "position": attached.position.0,
        "encoding": "none",
    })
}

fn links_json(workspace: WorkspaceId, groups: &BTreeMap<String, Group>) -> Vec<Value> {
    groups
        .keys()
        .map(|group_id| {
            json!({
                "to_space_id": workspace.to_string(),
                "to_collection": "accounts",
                "external_ids": [{ "id": group_id, "type": "group_id", "collection": "accounts", "encoding": "none" }],
            })
        })
        .collect()
}

/// Why a request failed.
#[derive(Debug)]
enum ApiError {
    NoCredentials,
    Auth(AuthError),
    Invalid(String),
    NotFound(String),
    Unbuilt,
    Store(StoreError),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        ApiError::Auth(err)
    }
}

impl From<InvalidField> for ApiError {
    fn from(err: InvalidField) -> ApiError {
        ApiError::Invalid(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::Store(err)
    }
}

impl ApiError {
    fn into_response_with(self, request_id: &str) -> Response {
        let error = |status: StatusCode, code: &str, message: String| {
            (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
        };
        let unauthorized = |message: String| {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"onepd\""));
            response
        };
        match self {
            ApiError::NoCredentials => unauthorized(
                "authorization: expected HTTP Basic credentials with the admin token as user name, found none".into(),
            ),
            ApiError::Auth(err @ AuthError::Unrecognized) => unauthorized(err.to_string()),
            ApiError::Auth(err @ AuthError::MissingScope(_)) => {
                error(StatusCode::FORBIDDEN, "forbidden", err.to_string())
            }
            ApiError::Invalid(message) => error(StatusCode::BAD_REQUEST, "invalid_request", message),
            ApiError::NotFound(message) => error(StatusCode::NOT_FOUND, "not_found", message),
            ApiError::Unbuilt => {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "profiles: the read model is still being built; retry in a moment".into(),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            ApiError::Store(StoreError::ShuttingDown) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "onepd is shutting down; retry against another node or later".into(),
            ),
            ApiError::Store(err @ StoreError::Unavailable(_)) => {
                tracing::warn!(request_id, cause = %err, "profile read unavailable");
                let wait = crate::ingest::UNAVAILABLE_RETRY_AFTER.as_secs();
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("onepd cannot reach its database; retry in {wait} s (request id {request_id})"),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
                response
            }
            ApiError::Store(err) => {
                tracing::error!(request_id, cause = %err, "profile read failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("profiles could not be read (request id {request_id})"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use onepd_commands::workspace::{BootstrapIds, NewWorkspace, bootstrap_workspace};
    use onepd_domain::events::workspace::{Industry, SourceKind};
    use onepd_domain::identity::{Identifier, IdentifierKind, ProfileId};
    use onepd_domain::{EventId, EventStore, ProjectionStore};
    use tower::ServiceExt as _;

    use super::*;
    use crate::ingest::{Caller, Ingest, IngestConfig};
    use crate::profiles::runner::ProfilesProjection;
    use crate::readstore::ReadStore;
    use crate::{EventLog, MasterKey, StoreConfig};

    #[test]
    fn a_path_id_is_a_kind_and_a_value_split_at_the_first_colon() {
        assert_eq!(
            parse_profile_path("email:Ann@Example.com"),
            Ok(Lookup::Identifier(Identifier::new(IdentifierKind::Email, "ann@example.com")))
        );
        assert_eq!(
            parse_profile_path("user_id:acme:u1"),
            Ok(Lookup::Identifier(Identifier::new(IdentifierKind::UserId, "acme:u1")))
        );
        assert_eq!(
            parse_profile_path("profile_id:00000000-0000-0000-0000-000000000007"),
            Ok(Lookup::Profile(ProfileId(Uuid::from_u128(7))))
        );
    }

    #[test]
    fn a_malformed_path_id_names_what_is_wrong() {
        let message = |id: &str| parse_profile_path(id).unwrap_err().to_string();
        assert_eq!(message("u1"), "id: expected {id_type}:{value} (email:ann@example.com), found \"u1\"");
        assert_eq!(message(":u1"), "id.kind: expected a kind name, found \"\"");
        assert_eq!(message("user_id:"), "id.value: expected a value, found \"\"");
        assert_eq!(message("profile_id:p1"), "id.profile_id: expected a UUID, found \"p1\"");
    }

    #[test]
    fn an_events_cursor_round_trips_and_rejects_what_it_never_gave() {
        assert_eq!(decode_cursor(&encode_cursor(Position(42))), Some(Position(42)));
        for bad in ["", "0", "-3", "abc", "4.5"] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn as_of_is_a_position_or_an_rfc3339_time() {
        assert_eq!(parse_as_of("17"), Ok(AsOf::Position(Position(17))));
        assert_eq!(parse_as_of("1970-01-01T00:00:01Z"), Ok(AsOf::Time(Timestamp(1_000_000))));
        // An unescaped `+` of the query string arrives as a space.
        assert_eq!(parse_as_of("1970-01-01T01:00:01 01:00"), Ok(AsOf::Time(Timestamp(1_000_000))));
        assert_eq!(
            parse_as_of("yesterday").unwrap_err().to_string(),
            "as_of: expected a log position or an RFC 3339 time, found \"yesterday\""
        );
    }

    #[test]
    fn verbose_traits_carry_their_provenance_and_include_filters_them() {
        let traits = BTreeMap::from([
            (
                "email".to_owned(),
                Trait {
                    value: json!("ann@example.com"),
                    position: Position(3),
                    event_id: EventId(Uuid::from_u128(3)),
                    source_id: Some("src".into()),
                    timestamp: Timestamp(0),
                },
            ),
            (
                "plan".to_owned(),
                Trait {
                    value: json!("pro"),
                    position: Position(4),
                    event_id: EventId(Uuid::from_u128(4)),
                    source_id: None,
                    timestamp: Timestamp(0),
                },
            ),
        ]);
        assert_eq!(traits_json(&traits, None, false), json!({ "email": "ann@example.com", "plan": "pro" }));
        assert_eq!(
            traits_json(&traits, Some(&["plan".to_owned(), "absent".to_owned()]), true),
            json!({ "plan": {
                "value": "pro",
                "position": 4,
                "event_id": "00000000-0000-0000-0000-000000000004",
                "source_id": null,
                "timestamp": "1970-01-01T00:00:00.000Z",
            } })
        );
    }

    #[test]
    fn a_track_is_named_by_event_and_a_page_by_name() {
        let entry = |message_type: &str, name: Option<&str>| TimelineEntry {
            position: Position(9),
            event_id: EventId(Uuid::from_u128(9)),
            message_type: message_type.into(),
            name: name.map(str::to_owned),
            timestamp: Timestamp(0),
            profile: ProfileId(Uuid::from_u128(1)),
        };
        let track = event_json(&entry("track", Some("Signed Up")));
        assert_eq!((track["type"].clone(), track["event"].clone()), (json!("track"), json!("Signed Up")));
        assert_eq!(event_json(&entry("page", Some("Home")))["name"], json!("Home"));
        let identify = event_json(&entry("identify", None));
        assert!(identify.get("event").is_none() && identify.get("name").is_none(), "{identify}");
        assert_eq!(identify["position"], json!(9));
    }

    #[test]
    fn a_token_without_the_read_scope_is_forbidden_and_an_unknown_one_unauthorized() {
        let forbidden = ApiError::Auth(AuthError::MissingScope(TokenScope::Read)).into_response_with("r1");
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        let unknown = ApiError::Auth(AuthError::Unrecognized).into_response_with("r1");
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        assert!(unknown.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    /// A workspace on a fresh SQLite store, with its admin token and an
    /// ingest path to send messages through.
    struct Fixture {
        _dir: tempfile::TempDir,
        log: EventLog,
        read_store: Arc<dyn ProjectionStore>,
        ingest: Arc<Ingest>,
        write_key: String,
        workspace: WorkspaceId,
        token: String,
        router: axum::Router,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("onepd.db").display());
            let log = EventLog::open(StoreConfig::new(url.clone(), Some(MasterKey::generate()))).await.unwrap();
            let workspace = WorkspaceId(Uuid::now_v7());
            let spec = NewWorkspace { name: "default".into(), industry: Industry::General, default_region: None };
            let ids = BootstrapIds {
                token_id: Uuid::now_v7(),
                token_secret: [7; 32],
                source_id: Uuid::now_v7(),
                key_id: Uuid::now_v7(),
                key_secret: [9; 16],
            };
            let boot = bootstrap_workspace(workspace, &spec, SourceKind::Server, ids, "test").unwrap();
            log.append(boot.request.clone()).await.unwrap();
            let tokens = TokenRegistry::follow(&log).await.unwrap();
            let read_store: Arc<dyn ProjectionStore> = Arc::new(ReadStore::open(&url).await.unwrap());
            let ingest = Ingest::start(log.clone(), IngestConfig::default()).await.unwrap();
            let router = profiles_router(ProfileReader::new(read_store.clone(), log.clone()), tokens);
            Fixture {
                _dir: dir,
                log,
                read_store,
                ingest,
                write_key: boot.write_key,
                workspace,
                token: boot.admin_token,
                router,
            }
        }

        /// Sends `messages` and waits until the read model reflects them.
        async fn send(&self, messages: Vec<Value>) -> ProfilesProjection {
            // The directory follows the log, so the new key may take a moment.
            let grant = loop {
                match self.ingest.authenticate(&self.write_key) {
                    Ok(grant) => break grant,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            };
            let caller = Caller { request_id: "test".into(), ..Caller::default() };
            self.ingest.ingest(grant, &caller, messages).await.unwrap();
            let projection = ProfilesProjection::spawn(
                self.log.clone(),
                self.read_store.clone(),
                onepd_projections::runner::DEFAULT_CACHE_BYTES,
            );
            let head = self.log.head().await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(10), projection.caught_up(head))
                .await
                .expect("the read model caught up");
            projection
        }

        async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
            let mut request = Request::get(path);
            if let Some(token) = token {
                use base64::Engine as _;
                let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
                request = request.header(header::AUTHORIZATION, format!("Basic {credentials}"));
            }
            let response = self.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }

        fn profile_path(&self, id: &str, resource: &str) -> String {
            format!("/v1/spaces/{}/collections/users/profiles/{id}/{resource}", self.workspace)
        }
    }

    #[tokio::test]
    async fn requests_without_a_valid_token_or_for_another_workspace_are_refused_as_json() {
        let fixture = Fixture::new().await;
        let path = fixture.profile_path("user_id:u1", "traits");
        let (status, body) = fixture.get(&path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = fixture.get(&path, Some("not-a-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let other = format!("/v1/spaces/{}/collections/users/profiles/user_id:u1/traits", Uuid::now_v7());
        let (status, body) = fixture.get(&other, Some(&fixture.token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"]["message"].as_str().unwrap().starts_with("workspace: expected the id"), "{body}");
        let (status, body) = fixture.get(&fixture.profile_path("u1", "traits"), Some(&fixture.token)).await;
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_request")));
        let (status, _) = fixture.get(&fixture.profile_path("user_id:u1", "friends"), Some(&fixture.token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn before_the_read_model_is_first_built_reads_answer_unavailable() {
        let fixture = Fixture::new().await;
        let (status, body) = fixture.get(&fixture.profile_path("user_id:u1", "traits"), Some(&fixture.token)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable");
    }

    #[tokio::test]
    async fn a_profile_reads_as_segment_shaped_traits_events_external_ids_and_links() {
        let fixture = Fixture::new().await;
        let _projection = fixture
            .send(vec![
                json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "ann@example.com", "plan": "pro"}}),
                json!({"type": "track", "userId": "u1", "event": "Signed Up"}),
                json!({"type": "page", "userId": "u1", "name": "Home"}),
                json!({"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}}),
            ])
            .await;
        let token = Some(fixture.token.as_str());

        let (status, body) = fixture.get(&fixture.profile_path("email:Ann@Example.com", "traits"), token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["traits"], json!({ "email": "ann@example.com", "plan": "pro" }));
        assert_eq!(body["cursor"]["has_more"], false);
        let (_, body) =
            fixture.get(&fixture.profile_path("user_id:u1", "traits?include=plan&verbose=true"), token).await;
        assert_eq!(body["traits"]["plan"]["value"], "pro");
        assert!(body["traits"]["plan"]["position"].as_u64().is_some(), "{body}");
        assert!(body["traits"].get("email").is_none(), "include keeps only plan: {body}");

        let (_, first) = fixture.get(&fixture.profile_path("anonymous_id:a1", "events?limit=3"), token).await;
        let types: Vec<&str> = first["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["group", "page", "track"], "newest first: {first}");
        assert_eq!(first["cursor"]["has_more"], true);
        let next = first["cursor"]["next"].as_str().unwrap();
        let (_, rest) =
            fixture.get(&fixture.profile_path("user_id:u1", &format!("events?limit=3&next={next}")), token).await;
        assert_eq!(rest["data"][0]["type"], "identify");
        assert_eq!((rest["cursor"]["has_more"].clone(), rest["cursor"]["next"].clone()), (json!(false), json!("")));

        let (_, body) = fixture.get(&fixture.profile_path("user_id:u1", "external_ids"), token).await;
        let ids: Vec<(&str, &str)> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| (id["type"].as_str().unwrap(), id["id"].as_str().unwrap()))
            .collect();
        assert_eq!(ids, [("user_id", "u1"), ("anonymous_id", "a1"), ("email", "ann@example.com")]);

        let (_, body) = fixture.get(&fixture.profile_path("user_id:u1", "links"), token).await;
        assert_eq!(body["data"][0]["to_collection"], "accounts");
        assert_eq!(body["data"][0]["external_ids"][0]["id"], "g1");

        let (status, body) = fixture.get(&fixture.profile_path("email:x@y.com", "traits"), token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["message"], "profile: no profile holds email:x@y.com");
    }
}
