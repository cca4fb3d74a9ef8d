//! The Segment-compatible HTTP tracking API (axum), and beside it, in
//! [`profiles`], the Segment-shaped profile read API and, in [`js`], the
//! browser JavaScript library that posts to it.
//!
//! `POST /v1/track|identify|page|screen|group|alias|batch|import`, with the
//! write key as the HTTP Basic user name (or `writeKey` in the body), answered
//! `{"success": true}` once every message is committed. Errors are JSON:
//! `{"success": false, "code", "message", "field"}` (the shape the Segment
//! SDKs read an error's text from) with 400 for a
//! body that cannot be read, 401 for a missing, unknown or revoked key, 429
//! with `Retry-After` when ingest is at capacity, 500 (with a request id, the
//! cause logged) when the store fails.
//!
//! Messages the pipeline rejects are recorded as `MessageRejected` events, so
//! a batch still answers 200, listing them under `rejected`; a single-message
//! call answers 400 with the reasons.
//!
//! `POST /v1/import-files` ([`import`]) takes a whole CSV or NDJSON file as
//! `multipart/form-data`, with the same key, CORS and error shape.

pub mod body;
pub mod import;
pub mod js;
pub mod profiles;
pub mod regulations;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tower_http::cors::{Any, CorsLayer};
use uuid::Uuid;

use crate::ingest::{Caller, Ingest, IngestError, MAX_BATCH_BYTES, Outcome};
use body::{BodyError, Endpoint};

/// `listener` for `axum::serve`, with `TCP_NODELAY` on every connection it
/// accepts: an answer written in pieces would otherwise wait for the
/// client's delayed acknowledgement.
pub fn listener(listener: tokio::net::TcpListener) -> NoDelay {
    use axum::serve::ListenerExt;
    listener.tap_io(no_delay)
}

/// A listener whose connections have `TCP_NODELAY` on ([`listener`]).
pub type NoDelay = axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>;

fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "could not set TCP_NODELAY");
    }
}

/// The tracking API's routes, to merge into the server's router. The router
/// must be served with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(ingest: Arc<Ingest>) -> axum::Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        // Browser SDKs add their own headers (analytics.js sends
        // `X-Retry-Count` on every retry): allow what the preflight asks
        // for, as Segment's API does, or the browser drops the retry.
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        // onepd.js honours Retry-After; cross-origin it must be exposed to be read.
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(86_400));
    axum::Router::new()
        .route("/v1/{endpoint}", post(track_api))
        // Compressed bodies are checked against the limit after inflating;
        // this bounds what is read off the socket.
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES + 64 * 1024))
        // Added after that limit, which therefore does not apply: an upload
        // streams in constant memory whatever its size. A static segment
        // wins over `{endpoint}`, so this is never taken for a message type.
        .route("/v1/import-files", post(import::import_file).layer(DefaultBodyLimit::disable()))
        .layer(cors)
        .with_state(ingest)
}

/// The JSON error every HTTP answer of onepd's own uses:
/// `{"success": false, "code", "message", "field"}`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>, field: &str) -> Response {
    (status, Json(json!({ "success": false, "code": code, "message": message.into(), "field": field }))).into_response()
}

/// A path no route serves, answered in the API's JSON error shape.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {}", uri.path()), "")
}

/// The most bytes a request's header fields may take in all (names, values
/// and separators). Past it onepd answers `431` with a JSON body; past the
/// HTTP server's own buffer (about 400 KB, or more than 100 header lines)
/// the connection is answered `431` without one and closed.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Middleware giving the bodiless errors the router makes itself (a route
/// asked with a method it does not take) the API's JSON shape, and
/// refusing header fields over [`MAX_HEADER_BYTES`] with a JSON `431`;
/// answers with a body of their own, and CORS preflights, pass unchanged.
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("headers: expected at most {MAX_HEADER_BYTES} bytes in all, found {header_bytes}"),
            "headers",
        );
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let bodiless = !response.headers().contains_key(header::CONTENT_TYPE);
    // `/v1/{endpoint}` matches any one segment for POST; asked with another
    // method, a name that is no endpoint is not found rather than not allowed.
    let unknown_endpoint = path.strip_prefix("/v1/").is_some_and(|rest| {
        !rest.contains('/') && Endpoint::of(rest).is_none() && !["import-files", "regulations"].contains(&rest)
    });
    if response.status() == StatusCode::METHOD_NOT_ALLOWED && bodiless && unknown_endpoint {
        return error_response(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"), "");
    }
    if response.status() == StatusCode::METHOD_NOT_ALLOWED && bodiless {
        let mut answer = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} does not take {method}"),
            "",
        );
        if let Some(allow) = response.headers().get(header::ALLOW) {
            answer.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return answer;
    }
    response
}

async fn track_api(
    State(ingest): State<Arc<Ingest>>,
    endpoint: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Ok(Path(endpoint)) = endpoint else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_path", "the path is not valid UTF-8", "path");
    };
    let request_id = Uuid::now_v7().to_string();
    let handled = match body {
        Ok(body) => handle(&ingest, &endpoint, peer, &headers, &body, &request_id).await,
        // Bodies over the read limit answer like every other oversize body.
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::Body(BodyError::BatchTooLarge))
        }
        Err(rejection) => Err(ApiError::Body(BodyError::Malformed {
            field: "body".into(),
            message: format!("expected a readable body, found an error ({})", rejection.body_text()),
        })),
    };
    let response = match handled {
        Ok(response) => response,
        Err(err) => err.into_response_with(&request_id),
    };
    with_request_id(response, &request_id)
}

/// Whether a `/v1/m` body is analytics.js's usage telemetry (an uncompressed
/// JSON object with `series` and no `batch`) rather than a batch.
fn is_sdk_telemetry(headers: &HeaderMap, body: &[u8]) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) || body.len() > 64 * 1024 {
        return false;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields.contains_key("series") && !fields.contains_key("batch"),
        _ => false,
    }
}

/// Names the request in its response, so a caller can quote it.
fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn handle(
    ingest: &Ingest,
    endpoint: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> Result<Response, ApiError> {
    if endpoint == "m" && is_sdk_telemetry(headers, body) {
        // analytics.js reports its own usage counters (`{"series": […]}`)
        // to `/m`: not customer data, so answered and not stored.
        metrics::counter!("onepd_sdk_telemetry_discarded_total").increment(1);
        return Ok((StatusCode::OK, Json(json!({ "success": true }))).into_response());
    }
    let endpoint = Endpoint::of(endpoint).ok_or_else(|| ApiError::NotFound(endpoint.to_owned()))?;
    let basic_key = basic_user(headers);
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|value| value.to_str().ok());
    let decoded = body::decode(endpoint, encoding, body)?;
    let write_key = basic_key.or(decoded.write_key).unwrap_or_default();
    let grant = ingest.authenticate(&write_key)?;
    let _admission = ingest.try_admit(decoded.messages.len())?;
    let peer_ip = peer.ip();
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok());
    let caller = Caller {
        peer_ip: Some(peer_ip),
        forwarded_ip: ingest.trusted_proxies().client_ip(Some(peer_ip), forwarded),
        request_id: request_id.to_owned(),
        received_at: None,
    };
    let results = ingest.ingest(grant, &caller, decoded.messages).await?;
    let mut rejected = results.iter().enumerate().filter_map(|(index, result)| match &result.outcome {
        Outcome::Rejected { reasons, .. } => Some((index, result, reasons)),
        _ => None,
    });
    // A single message that is rejected answers 400 with its reasons.
    if let Endpoint::Single(_) | Endpoint::Consent = endpoint
        && let Some((_, _, reasons)) = rejected.next()
    {
        let first = reasons.first();
        let body = json!({
            "success": false,
            "code": "invalid_message",
            "message": first.map_or("message rejected", |reason| reason.message.as_str()),
            "field": first.map_or("", |reason| reason.field.as_str()),
            "reasons": reasons,
        });
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    let rejected: Vec<Value> = rejected
        .map(|(index, result, reasons)| json!({ "index": index, "messageId": result.message_id, "reasons": reasons }))
        .collect();
    if rejected.is_empty() {
        return Ok((StatusCode::OK, Json(json!({ "success": true }))).into_response());
    }
    Ok((StatusCode::OK, Json(json!({ "success": true, "rejected": rejected }))).into_response())
}

/// The user name of an HTTP Basic `Authorization` header: Segment's way of
/// sending the write key.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    crate::ingest::basic_user(encoded)
}

/// Why a request failed as a whole.
#[derive(Debug)]
enum ApiError {
    NotFound(String),
    /// Refused with a status of its own and a body naming the field.
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: String,
    },
    Body(BodyError),
    Ingest(IngestError),
    /// A request the caller must fix (answered 400), naming its field.
    BadRequest {
        code: &'static str,
        field: String,
        message: String,
    },
    /// A fault of onepd's, logged in full; the caller sees only the request id.
    Internal(String),
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> ApiError {
        ApiError::Body(err)
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> ApiError {
        ApiError::Ingest(err)
    }
}

impl ApiError {
    fn into_response_with(self, request_id: &str) -> Response {
        let error = |status: StatusCode, code: &str, message: String, field: String| {
            (status, Json(json!({ "success": false, "code": code, "message": message, "field": field })))
                .into_response()
        };
        match self {
            ApiError::Refused { status, code, message, field } => error(status, code, message, field),
            ApiError::NotFound(endpoint) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "path: expected /v1/track, identify, page, screen, group, alias, batch or import, found /v1/{endpoint}"
                ),
                "path".into(),
            ),
            ApiError::Body(err) => {
                let status = match err {
                    BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => StatusCode::BAD_REQUEST,
                };
                error(status, err.code(), err.to_string(), err.field())
            }
            ApiError::Ingest(IngestError::Unauthenticated(message)) => {
                let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message, "writeKey".into());
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"onepd\""));
                response
            }
            ApiError::Ingest(err @ IngestError::Overloaded { retry_after, .. }) => {
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "overloaded", err.to_string(), String::new());
                if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            ApiError::Ingest(IngestError::Invalid(message)) => {
                error(StatusCode::BAD_REQUEST, "invalid_request", message, String::new())
            }
            ApiError::BadRequest { code, field, message } => error(StatusCode::BAD_REQUEST, code, message, field),
            ApiError::Internal(cause) => {
                tracing::error!(request_id, cause = %cause, "request failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("onepd could not finish the request; retry it (request id {request_id})"),
                    String::new(),
                )
            }
            ApiError::Ingest(err) if err.is_unavailable() => {
                tracing::warn!(request_id, cause = %err, "ingest unavailable");
                let wait = crate::ingest::UNAVAILABLE_RETRY_AFTER.as_secs();
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "onepd cannot reach its database; nothing was acknowledged, retry in {wait} s (request id {request_id})"
                    ),
                    String::new(),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
                response
            }
            ApiError::Ingest(err) => {
                tracing::error!(request_id, cause = %err, "ingest failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!(
                        "onepd could not store the request; nothing was acknowledged, retry it (request id {request_id})"
                    ),
                    String::new(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acknowledgements() {
        let bound = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = bound.local_addr().unwrap();
        let mut listener = super::listener(bound);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is off on an accepted HTTP connection");
    }
}
