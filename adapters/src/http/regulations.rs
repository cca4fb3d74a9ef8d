//! `POST /v1/regulations`: erasure requests in the shape of Segment's Public
//! API, so a privacy tool that files deletion requests with Segment can file
//! them with onepd.
//!
//! ```text
//! POST /v1/regulations
//! Authorization: Basic base64(<admin token>:)      (or Bearer <admin token>)
//! {"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["u1"]}
//!
//! 200 {"data": {"regulateId": "<request id>", "profileIds": [...], "keysShredded": 3,
//!               "deletions": [{"destination", "outcome", "response"}]}}
//! ```
//!
//! `subjectType` is `USER_ID` (as in Segment), or `ANONYMOUS_ID`, `EMAIL`,
//! `PHONE` or `PROFILE_ID`; every id of one request is erased under one
//! `regulateId`. Only `SUPPRESS_WITH_DELETE` is offered: onepd always
//! suppresses what it erases, since an erased person's later messages would
//! otherwise bring them back. The token needs the `admin` scope. Errors are
//! `{"error": {"code", "message", "field"}}` naming the field.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, body::Bytes};
use onepd_domain::events::workspace::TokenScope;
use onepd_projections::directory::{DestinationEntry, Directory};
use serde_json::{Value, json};

use crate::EventLog;
use crate::activation::connect;
use crate::erasure::{self, ErasureError, Lookup};
use crate::grpc::auth::TokenRegistry;
use crate::grpc::profiles::{ProfileRef, parse_identifier, parse_profile_ref};
use crate::live::Live;
use crate::profiles::ProfileReader;

/// The largest number of subject ids one request may name.
pub const MAX_SUBJECT_IDS: usize = 100;

/// The regulation routes, to merge into the server's router.
pub fn regulations_router(
    log: EventLog,
    directory: Arc<Live<Directory>>,
    tokens: Arc<TokenRegistry>,
    profiles: ProfileReader,
) -> axum::Router {
    axum::Router::new().route("/v1/regulations", post(regulate)).with_state(Arc::new(Regulations {
        log,
        directory,
        tokens,
        profiles,
    }))
}

struct Regulations {
    log: EventLog,
    directory: Arc<Live<Directory>>,
    tokens: Arc<TokenRegistry>,
    profiles: ProfileReader,
}

/// A request refused: status, code, message and the field at fault.
struct Refusal(StatusCode, &'static str, String, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, code, message, field) = self;
        let mut response =
            (status, Json(json!({ "error": { "code": code, "message": message, "field": field } }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Basic realm=\"onepd\"".parse().expect("valid"));
        }
        response
    }
}

fn invalid(field: &'static str, message: String) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "invalid_request", message, field)
}

#[tracing::instrument(skip_all, name = "regulate")]
async fn regulate(State(api): State<Arc<Regulations>>, headers: HeaderMap, body: Bytes) -> Response {
    match run(&api, &headers, &body).await {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn run(api: &Regulations, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
    let token = super::profiles::admin_token(headers).ok_or_else(|| {
        Refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "authorization: expected HTTP Basic credentials with the admin token as user name, found none".into(),
            "authorization",
        )
    })?;
    let grant = api.tokens.authorize_token(&token, TokenScope::Admin).map_err(|err| {
        let status = match err {
            crate::grpc::auth::AuthError::MissingScope(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Refusal(status, "unauthorized", err.to_string(), "authorization")
    })?;
    let request: Value =
        serde_json::from_slice(body).map_err(|err| invalid("body", format!("body: expected a JSON object: {err}")))?;
    let text = |field: &'static str| -> Result<&str, Refusal> {
        request
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(field, format!("{field}: expected a string, found {}", shown(request.get(field)))))
    };
    let regulation = text("regulationType")?;
    if regulation != "SUPPRESS_WITH_DELETE" {
        return Err(invalid(
            "regulationType",
            format!("regulationType: expected SUPPRESS_WITH_DELETE, found {regulation:?}"),
        ));
    }
    let subject_type = text("subjectType")?;
    let ids: Vec<&str> = request
        .get("subjectIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().map(|id| id.as_str().unwrap_or("")).collect())
        .filter(|ids: &Vec<&str>| {
            !ids.is_empty() && ids.len() <= MAX_SUBJECT_IDS && ids.iter().all(|id| !id.is_empty())
        })
        .ok_or_else(|| {
            invalid("subjectIds", format!("subjectIds: expected 1 to {MAX_SUBJECT_IDS} non-empty strings"))
        })?;
    let kind = match subject_type {
        "USER_ID" => Some("user_id"),
        "ANONYMOUS_ID" => Some("anonymous_id"),
        "EMAIL" => Some("email"),
        "PHONE" => Some("phone"),
        "PROFILE_ID" => None,
        other => {
            return Err(invalid(
                "subjectType",
                format!("subjectType: expected USER_ID, ANONYMOUS_ID, EMAIL, PHONE or PROFILE_ID, found {other:?}"),
            ));
        }
    };
    let mut lookups = Vec::with_capacity(ids.len());
    for id in ids {
        let lookup = match kind {
            Some(kind) => parse_identifier(kind, id).map(Lookup::Identifier),
            None => parse_profile_ref(ProfileRef::ProfileId(id.to_owned())),
        };
        lookups.push(lookup.map_err(|err| invalid("subjectIds", format!("subjectIds: {err}")))?);
    }
    let destinations: Vec<DestinationEntry> =
        api.directory.read(|directory| directory.destinations(grant.workspace).into_iter().cloned().collect());
    let report = erasure::forget(&api.log, &api.profiles, grant.workspace, &lookups, &destinations, &connect(), "http")
        .await
        .map_err(|err| match err {
            ErasureError::Invalid(message) => invalid("subjectIds", message),
            ErasureError::NotFound(message) => Refusal(StatusCode::NOT_FOUND, "not_found", message, "subjectIds"),
            ErasureError::Store(err) => {
                tracing::error!(cause = %err, "erasure failed");
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the erasure could not be recorded; send it again".into(),
                    "",
                )
            }
        })?;
    Ok(json!({
        "data": {
            "regulateId": report.request_id.to_string(),
            "profileIds": report.profiles.iter().map(|id| id.0.to_string()).collect::<Vec<_>>(),
            "subjects": report.subjects,
            "keysShredded": report.keys_shredded,
            "deletions": report.deletions.iter().map(|deletion| json!({
                "destination": deletion.destination,
                "outcome": deletion.outcome,
                "response": deletion.response,
            })).collect::<Vec<_>>(),
        }
    }))
}

/// A JSON value as an error message shows it.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "nothing".into(),
        Some(value) => value.to_string(),
    }
}
