//! Webhook sources: `POST /v1/webhooks/{source_id}` takes a platform's own
//! payload (Shopify, Stripe, HubSpot, or a generic platform), verifies it
//! and maps it to Segment-spec messages with the source's configuration
//! (`onepd webhook configure`), then ingests them like any other message.
//!
//! Answers:
//! - 200 `{"success": true, "topic", "messages", "accepted", "duplicates",
//!   "rejected": [...]}` once every message is committed; a platform's retry
//!   maps to the same message ids and comes back as duplicates.
//! - 401 when the signature does not verify (recorded as a `MessageRejected`
//!   with the reason and only the body's size and SHA-256: anyone can post),
//!   or, for an unsigned generic source, when the write key (Basic user name
//!   or `?key=`) is not the source's. Past [`UNVERIFIED_PER_MINUTE`] such
//!   requests a minute for one source, 429 with `Retry-After`, not recorded,
//!   counted in `onepd_webhook_unverified_dropped_total`.
//! - 400 when the body is not JSON or a mapping cannot map it (recorded; the
//!   platform retries, so a mapping fixed in time picks the delivery up).
//! - 200 with `"ignored"` for a topic no mapping serves (recorded too), so a
//!   platform does not disable a subscription onepd merely does not map.
//! - 404 for an unknown source or one without a configuration.
//!
//! Messages carry no client IP: the caller is the platform's server, not the
//! person the payload is about.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use onepd_commands::webhook::{Request, WebhookError, WebhookSource};
use onepd_projections::directory::WriteGrant;
use serde_json::json;
use uuid::Uuid;

use super::{ApiError, basic_user};
use crate::ingest::{Caller, Ingest, IngestError, Outcome};

/// The largest webhook body read: platforms' order payloads with many line
/// items run to a few hundred kilobytes.
pub const MAX_WEBHOOK_BYTES: usize = 2 * 1024 * 1024;

/// How long a request for an unknown source waits for the directory to
/// catch up with the log before it is answered 404: a little over the log
/// subscription's poll interval.
const CONFIGURATION_WAIT: std::time::Duration = std::time::Duration::from_millis(1_500);

/// The webhook route, to merge into the server's router.
pub fn webhooks_router(ingest: Arc<Ingest>) -> axum::Router {
    axum::Router::new()
        .route("/v1/webhooks/{source_id}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(ingest)
}

#[derive(Debug, serde::Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

async fn receive(
    State(ingest): State<Arc<Ingest>>,
    Path(source_id): Path<String>,
    Query(query): Query<KeyQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let request_id = Uuid::now_v7().to_string();
    let handled = match body {
        Ok(body) => {
            let call = Call { method: &method, uri: &uri, headers: &headers, body: &body, request_id: &request_id };
            handle(&ingest, &source_id, query.key, call).await
        }
        Err(rejection) => Err(ApiError::Refused {
            status: rejection.status(),
            code: "invalid_body",
            message: format!("body: expected at most {MAX_WEBHOOK_BYTES} bytes, found {}", rejection.body_text()),
            field: "body".into(),
        }),
    };
    let mut response = handled.unwrap_or_else(|err| err.into_response_with(&request_id));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// One request as the handler sees it.
struct Call<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a [u8],
    request_id: &'a str,
}

async fn handle(ingest: &Ingest, source_id: &str, key: Option<String>, call: Call<'_>) -> Result<Response, ApiError> {
    let not_found = |message: String| ApiError::Refused {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message,
        field: "source_id".into(),
    };
    let id = Uuid::parse_str(source_id)
        .map_err(|_| not_found(format!("source_id: expected a source id (a UUID), found {source_id:?}")))?;
    let lookup =
        || ingest.directory().read(|directory| Some((directory.source(id)?.workspace, directory.webhook(id)?.clone())));
    // A source configured a moment ago by another process (the CLI) reaches
    // this process's directory within its poll interval: wait that long.
    let deadline = std::time::Instant::now() + CONFIGURATION_WAIT;
    let mut found = lookup();
    while found.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        found = lookup();
    }
    let (workspace, configured) = found
        .ok_or_else(|| not_found(format!("source {id}: expected a webhook source with a configuration, found none")))?;
    let source = WebhookSource::from_configured(&configured).map_err(|err| {
        ApiError::Ingest(IngestError::Configuration(format!("source {id}: stored webhook configuration: {err}")))
    })?;
    let grant = if source.signed() {
        WriteGrant { workspace, source_id: id, key_id: Uuid::nil() }
    } else {
        // An unsigned generic source is authenticated by its write key.
        let grant = ingest.authenticate(&basic_user(call.headers).or(key).unwrap_or_default())?;
        if grant.source_id != id {
            return Err(ApiError::Ingest(IngestError::Unauthenticated(format!(
                "writeKey: expected a write key of source {id}, found one of another source"
            ))));
        }
        grant
    };

    let headers: Vec<(String, String)> = call
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let full_uri = full_uri(source.public_url(), call.headers, call.uri);
    let request = Request { method: call.method.as_str(), uri: &full_uri, headers: &headers, body: call.body };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64);
    // The caller is the platform's server: its address is nobody's.
    let caller = Caller { request_id: call.request_id.to_owned(), ..Caller::default() };

    let mapped = match source.handle(&request, now) {
        Ok(mapped) => mapped,
        Err(err) => {
            // Whom a verified payload names, as far as the mappings can still
            // read it, so erasure finds its rejection by the mapped ids too.
            let named = if matches!(err, WebhookError::Verify(_)) { Vec::new() } else { source.salvage(call.body) };
            return refuse(ingest, grant, &caller, call.body, err, named).await;
        }
    };
    let _admission = ingest.try_admit(mapped.messages.len())?;
    let count = mapped.messages.len();
    let results = ingest.ingest(grant, &caller, mapped.messages).await?;
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, Vec::new());
    for (index, result) in results.iter().enumerate() {
        match &result.outcome {
            Outcome::Accepted { .. } => accepted += 1,
            Outcome::Duplicate { .. } => duplicates += 1,
            Outcome::Rejected { reasons, .. } => {
                rejected.push(json!({ "index": index, "messageId": result.message_id, "reasons": reasons }));
            }
        }
    }
    let body = json!({
        "success": true,
        "topic": mapped.topic,
        "messages": count,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// How many requests a minute that fail verification are recorded per
/// source; past it they are answered 429 and counted only.
pub const UNVERIFIED_PER_MINUTE: u32 = 60;

/// Per-source counts of unverified requests in the current minute.
static UNVERIFIED: UnverifiedCounts = UnverifiedCounts(std::sync::Mutex::new(None));

struct UnverifiedCounts(std::sync::Mutex<Option<std::collections::HashMap<Uuid, (std::time::Instant, u32)>>>);

impl UnverifiedCounts {
    /// Whether one more unverified request of `source` may be recorded.
    fn admit(&self, source: Uuid) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = counts.get_or_insert_with(std::collections::HashMap::new);
        let now = std::time::Instant::now();
        // Bounded: windows that ended are dropped whenever the map grows.
        if counts.len() > 10_000 {
            counts.retain(|_, (started, _)| now.duration_since(*started) < std::time::Duration::from_secs(60));
        }
        let (started, count) = counts.entry(source).or_insert((now, 0));
        if now.duration_since(*started) >= std::time::Duration::from_secs(60) {
            *started = now;
            *count = 0;
        }
        *count += 1;
        *count <= UNVERIFIED_PER_MINUTE
    }
}

/// Records a payload that produced no messages and answers for it.
async fn refuse(
    ingest: &Ingest,
    grant: WriteGrant,
    caller: &Caller,
    body: &[u8],
    err: WebhookError,
    named: Vec<serde_json::Value>,
) -> Result<Response, ApiError> {
    let violation = err.violation();
    let unverified = matches!(err, WebhookError::Verify(_));
    let source = grant.source_id.to_string();
    if unverified {
        metrics::counter!("onepd_webhook_unverified_total", "source" => source.clone()).increment(1);
        if !UNVERIFIED.admit(grant.source_id) {
            // Anyone can post: past the cap nothing more is kept.
            metrics::counter!("onepd_webhook_unverified_dropped_total", "source" => source).increment(1);
            let body = json!({
                "success": false,
                "code": "too_many_unverified",
                "message": format!(
                    "more than {UNVERIFIED_PER_MINUTE} requests a minute failed verification for this source; \
                     not recorded"
                ),
                "field": "signature",
            });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return Ok(response);
        }
    }
    let _admission = ingest.try_admit(1)?;
    // A request that failed verification may come from anyone: only its
    // size and digest are kept, never its body.
    let raw = if unverified {
        use sha2::Digest;
        json!({ "unverified": true, "bytes": body.len(), "sha256": hex::encode(sha2::Sha256::digest(body)) })
            .to_string()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let recorded = ingest.reject(grant, caller, raw, vec![violation.clone()], &named).await?;
    let event_id = recorded.event_id.0.to_string();
    if let WebhookError::Unmapped(_) = err {
        let body = json!({ "success": true, "ignored": violation.message, "rejection": event_id });
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let (status, code) = match err {
        WebhookError::Verify(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
        _ => (StatusCode::BAD_REQUEST, "invalid_payload"),
    };
    let body = json!({
        "success": false,
        "code": code,
        "message": violation.message,
        "field": violation.field,
        "rejection": event_id,
    });
    Ok((status, Json(body)).into_response())
}

/// The URI the platform called, scheme and host included: the configured
/// public address, else `X-Forwarded-Proto` (or `http`) and `Host`.
fn full_uri(public_url: Option<&str>, headers: &HeaderMap, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    if let Some(base) = public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let scheme = text("x-forwarded-proto").map_or("http", |proto| proto.split(',').next().unwrap_or("http").trim());
    let host = text(header::HOST.as_str()).unwrap_or("localhost");
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_uri_comes_from_the_public_url_else_from_the_forwarded_scheme_and_host() {
        let uri: Uri = "/v1/webhooks/abc?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("cdp.example.com"));
        assert_eq!(full_uri(None, &headers, &uri), "http://cdp.example.com/v1/webhooks/abc?x=1");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(full_uri(None, &headers, &uri), "https://cdp.example.com/v1/webhooks/abc?x=1");
        assert_eq!(
            full_uri(Some("https://hooks.example.com/"), &headers, &uri),
            "https://hooks.example.com/v1/webhooks/abc?x=1"
        );
    }
}
