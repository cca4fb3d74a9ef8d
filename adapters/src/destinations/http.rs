//! What every HTTP destination shares: one client, sending a JSON body, and
//! reading the answer as the activation engine needs it.
//!
//! The classification is the port's contract ([`DeliverError`]):
//!
//! - 2xx: the platform took the request ([`Answer`] goes back to the
//!   adapter, which may still find per-event errors in its body);
//! - 408, 429 and 5xx, a refused connection and a timeout:
//!   [`DeliverError::Retryable`], with the `Retry-After` wait when the
//!   platform gave one (delta-seconds or an HTTP-date);
//! - any other 4xx: [`DeliverError::BatchRejected`] with the status and the
//!   start of the body, so the engine splits the batch to find the bad event.
//!
//! Reasons never carry the request URL: some platforms (Meta, GA4) take a
//! secret in the query string.
//!
//! **Does not:** retry, back off or enforce a deadline of its own beyond the
//! client's timeouts; the engine's retry policy does that.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use onepd_domain::EventId;
use onepd_domain::destination::{DeliverError, EventResult, Outcome, PreparedEvent, RenderedRequest};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How long a connection may take to open. Generous: the engine's own
/// timeout bounds a whole delivery.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request may take when the settings do not say.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an error body a reason keeps.
const REASON_BODY_CHARS: usize = 200;

/// The process-wide client: one connection pool for every destination.
pub(crate) fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("onepd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client without TLS settings always builds")
    })
}

/// A platform's 2xx answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Answer {
    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A non-2xx answer, before it is classified.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// The `Retry-After` wait, if the platform gave one.
    pub retry_after: Option<Duration>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Refusal {
    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `"HTTP 400 Bad Request: {start of body}"`.
    pub fn reason(&self) -> String {
        reason(self.status, &self.body)
    }

    /// The port's reading of the status: 408, 429 and 5xx may succeed later;
    /// any other status refuses the batch.
    pub fn classify(self) -> DeliverError {
        let reason = self.reason();
        if is_retryable_status(self.status) {
            DeliverError::Retryable { reason, retry_after: self.retry_after }
        } else {
            DeliverError::BatchRejected { reason }
        }
    }
}

/// Whether a status means "try again later".
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `"HTTP {status}: {first 200 characters of body}"`.
pub(crate) fn reason(status: StatusCode, body: &str) -> String {
    let body = body.trim();
    let mut short: String = body.chars().take(REASON_BODY_CHARS).collect();
    if short.len() < body.len() {
        short.push('…');
    }
    if short.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {short}") }
}

/// A JSON `POST` to `url` with `query` appended, as [`send_rendered`] sends
/// it: `Content-Type: application/json` first, then `headers`; `secrets`
/// are the credentials among the query and header values.
pub(crate) fn json_post(
    url: &str,
    query: &[(&str, &str)],
    headers: Vec<(String, String)>,
    body: &serde_json::Value,
    events: impl IntoIterator<Item = EventId>,
    secrets: Vec<String>,
) -> Result<RenderedRequest, DeliverError> {
    json_request("POST", url, query, headers, body, events, secrets)
}

/// Like [`json_post`], with another method (`PUT`, `PATCH`, `DELETE`).
pub(crate) fn json_request(
    method: &str,
    url: &str,
    query: &[(&str, &str)],
    headers: Vec<(String, String)>,
    body: &serde_json::Value,
    events: impl IntoIterator<Item = EventId>,
    secrets: Vec<String>,
) -> Result<RenderedRequest, DeliverError> {
    let url = if query.is_empty() {
        url.to_owned()
    } else {
        reqwest::Url::parse_with_params(url, query)
            .map_err(|err| DeliverError::Adapter(format!("request could not be built: {err}")))?
            .to_string()
    };
    let body = serde_json::to_vec(body).map_err(|err| DeliverError::Adapter(err.to_string()))?;
    let mut all = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    all.extend(headers);
    Ok(RenderedRequest {
        method: method.to_owned(),
        url,
        headers: all,
        body,
        events: events.into_iter().collect(),
        secrets,
    })
}

/// Sends a rendered request exactly as rendered and reads the answer:
/// `Ok(Ok(answer))` for a 2xx, `Ok(Err(refusal))` for any other status, and
/// `Err` when no answer came (timeout, connection refused) or the request
/// could not be built.
pub(crate) async fn send_rendered(
    rendered: &RenderedRequest,
    timeout: Duration,
) -> Result<Result<Answer, Refusal>, DeliverError> {
    let method = reqwest::Method::from_bytes(rendered.method.as_bytes())
        .map_err(|_| DeliverError::Adapter(format!("request could not be built: method {}", rendered.method)))?;
    let mut request = client().request(method, &rendered.url);
    for (name, value) in &rendered.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    answer(request.timeout(timeout).body(rendered.body.clone())).await
}

/// Like [`send_rendered`], with every non-2xx answer classified.
pub(crate) async fn post_rendered(rendered: &RenderedRequest, timeout: Duration) -> Result<Answer, DeliverError> {
    send_rendered(rendered, timeout).await?.map_err(Refusal::classify)
}

/// Sends a built request and reads its answer.
async fn answer(request: reqwest::RequestBuilder) -> Result<Result<Answer, Refusal>, DeliverError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let bytes = response.bytes().await.map_err(transport_error)?;
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() { Ok(Ok(Answer { body })) } else { Ok(Err(Refusal { status, retry_after, body })) }
}

/// A request that got no answer. A timeout or a failed connection may
/// succeed later; a request that cannot be built never will.
fn transport_error(err: reqwest::Error) -> DeliverError {
    // Without the URL: a query string may hold an access token.
    let err = err.without_url();
    if err.is_builder() {
        return DeliverError::Adapter(format!("request could not be built: {}", chain(&err)));
    }
    let causes = chain(&err);
    // A build without a TLS backend cannot reach an https endpoint, ever.
    if err.is_connect() && causes.contains("scheme is not http") {
        return DeliverError::Adapter(format!(
            "https endpoints need a TLS-enabled build (reqwest's rustls-tls feature): {causes}"
        ));
    }
    let reason = if err.is_timeout() {
        format!("timed out: {causes}")
    } else if err.is_connect() {
        format!("connection failed: {causes}")
    } else {
        format!("request failed: {causes}")
    };
    DeliverError::Retryable { reason, retry_after: None }
}

/// An error and its causes, `: `-separated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The wait a `Retry-After` header asks for: delta-seconds, or an HTTP-date
/// (a date in the past means no wait). Without one, an `X-RateLimit-Reset`
/// holding a unix time (Braze's rate-limit answer) is read as the wait until
/// then.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let Some(value) = headers.get(RETRY_AFTER) else {
        let reset: u64 = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim().parse().ok()?;
        // Seconds since the epoch, not a delta: after 2001.
        if reset < 1_000_000_000 {
            return None;
        }
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
        return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
    };
    let value = value.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The same outcome for every event.
pub(crate) fn every(events: &[PreparedEvent], outcome: &Outcome) -> Vec<EventResult> {
    events.iter().map(|event| EventResult { event_id: event.event_id, outcome: outcome.clone() }).collect()
}

/// The per-event reading of a whole-request failure, for an adapter that
/// sends one batch as several requests: a later attempt may succeed, and a
/// refused request is split by the engine once the whole call fails.
pub(crate) fn as_outcome(err: &DeliverError) -> Outcome {
    match err {
        DeliverError::Retryable { reason, retry_after } => Outcome::retryable(reason.clone(), *retry_after),
        DeliverError::BatchRejected { reason } => Outcome::retryable(format!("batch rejected: {reason}"), None),
        DeliverError::Adapter(reason) => Outcome::retryable(reason.clone(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_delta_seconds() {
        assert_eq!(retry_after(&headers("7"), SystemTime::now()), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_reads_an_http_date_relative_to_now() {
        // 1994-11-06T08:49:37Z is 784111777 seconds after the epoch.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        assert_eq!(retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT"), now), Some(Duration::from_secs(30)));
        let later = now + Duration::from_secs(60);
        assert_eq!(retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT"), later), Some(Duration::ZERO));
    }

    #[test]
    fn a_rate_limit_reset_time_is_the_wait_until_then() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("1800000012"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(12)));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("12"));
        assert_eq!(retry_after(&headers, now), None, "a delta is not a reset time");
    }

    #[test]
    fn retry_after_ignores_what_it_cannot_read() {
        assert_eq!(retry_after(&headers("soon"), SystemTime::now()), None);
        assert_eq!(retry_after(&HeaderMap::new(), SystemTime::now()), None);
    }

    #[test]
    fn a_reason_keeps_the_status_and_the_start_of_the_body() {
        let long = "x".repeat(500);
        let reason = reason(StatusCode::BAD_REQUEST, &long);
        assert!(reason.starts_with("HTTP 400 Bad Request: xxx"), "{reason}");
        assert_eq!(reason.chars().filter(|c| *c == 'x').count(), 200);
    }
}
