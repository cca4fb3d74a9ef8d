//! `onepd.destination.v1.DestinationAdapter`, both ways round.
//!
//! * [`RemoteDestination`] is the domain's [`Destination`] port implemented
//!   by calling an adapter that runs in another process (a third-party
//!   adapter, or `onepd adapter serve`). The engine cannot tell it from a
//!   built-in adapter.
//! * [`AdapterService`] is the server side: it serves any [`Destination`]
//!   (built from the settings each request carries) over the protocol.
//!
//! Between them sit the conversions proto ↔ domain and the one mapping
//! between [`DeliverError`] and gRPC status codes that the `.proto` file
//! documents for adapter authors:
//!
//! | [`DeliverError`] | status | back to [`DeliverError`] |
//! |---|---|---|
//! | `Retryable` | `UNAVAILABLE` (+ `retry-after-ms`) | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL`, any unlisted code, a transport error → `Retryable` |
//! | `BatchRejected` | `INVALID_ARGUMENT` | `INVALID_ARGUMENT`, `OUT_OF_RANGE` → `BatchRejected` |
//! | `Adapter` | `FAILED_PRECONDITION` | `FAILED_PRECONDITION`, `UNIMPLEMENTED`, `NOT_FOUND`, `UNAUTHENTICATED`, `PERMISSION_DENIED` → `Adapter` |
//!
//! An answer that breaks the protocol (an unknown category, source,
//! normalization, hashing or outcome, an event id that is not a UUID) is a
//! [`DeliverError::Adapter`] naming the field: nothing can be delivered
//! until the adapter is fixed.
//!
//! Neither side logs identifiers, payloads or settings (settings hold
//! credentials); they log the destination id and counts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::destination::{
    Category, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Hashing,
    IdentifierSource, IdentifierSpec, Normalization, Outcome, PreparedEvent,
};
use onepd_domain::{EventId, Position};
use onepd_proto::destination::v1 as pb;
use onepd_proto::destination::v1::destination_adapter_client::DestinationAdapterClient;
use onepd_proto::destination::v1::destination_adapter_server::{DestinationAdapter, DestinationAdapterServer};
use serde_json::Value;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

/// The metadata key (a trailer, or a header of a trailers-only answer) in
/// which a failed call asks for a minimum wait, in decimal milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The largest message either side accepts. A batch of a few thousand
/// messages with their identifiers stays well below it; tonic's default of
/// 4 MB does not.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How long [`RemoteDestination`] waits for a TCP connection to the adapter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`RemoteDestination`] waits for one call. An adapter calls its
/// platform with its own timeouts (tens of seconds) inside it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A destination whose adapter is another process, spoken to over
/// `onepd.destination.v1.DestinationAdapter`.
///
/// Every call carries the destination's id and settings, so one adapter
/// process can serve several destinations. The connection is opened on the
/// first call and reopened after a failure, so an adapter that is down (or
/// not started yet) gives [`DeliverError::Retryable`] at delivery time
/// rather than an error here.
#[derive(Debug, Clone)]
pub struct RemoteDestination {
    /// The generated client over a lazily connecting channel; cloning it is
    /// cheap and shares the connection.
    client: DestinationAdapterClient<Channel>,
    /// The adapter's URL, to name it in errors.
    url: String,
    /// Sent with every call, for the adapter's logs.
    destination_id: String,
    /// Serialized once; sent with every call.
    settings_json: String,
}

/// Why a [`RemoteDestination`] could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteDestinationError {
    /// The URL is not one an adapter can be reached at.
    #[error("adapter url \"{url}\": {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RemoteDestination {
    /// A destination delivered through the adapter at `url`
    /// (`http://meta-adapter:50061`), for destination `destination_id`
    /// configured with `settings`. Nothing is connected yet.
    pub fn new(url: &str, destination_id: Uuid, settings: &Value) -> Result<RemoteDestination, RemoteDestinationError> {
        let invalid = |reason: String| RemoteDestinationError::Url { url: url.to_owned(), reason };
        if !url.starts_with("http://") {
            return Err(invalid(if url.starts_with("https://") {
                "expected an http:// URL, found https:// (this build has no TLS; put the adapter beside onepd or \
                 behind a sidecar)"
                    .to_owned()
            } else {
                "expected an http:// URL such as http://meta-adapter:50061".to_owned()
            }));
        }
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|err| invalid(err.to_string()))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .connect_lazy();
        let client = DestinationAdapterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(RemoteDestination {
            client,
            url: url.to_owned(),
            destination_id: destination_id.to_string(),
            settings_json: settings.to_string(),
        })
    }

    /// The adapter's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Destination for RemoteDestination {
    async fn describe(&self) -> Result<Description, DeliverError> {
        let request = pb::DescribeRequest {
            settings_json: self.settings_json.clone(),
            destination_id: self.destination_id.clone(),
        };
        let answer = self
            .client
            .clone()
            .describe(request)
            .await
            .map_err(|status| error_from_status(&format!("describe at {}", self.url), &status))?
            .into_inner();
        description_from_proto(answer)
            .map_err(|field| DeliverError::Adapter(format!("describe at {}: answer {field}", self.url)))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let request = pb::DeliverRequest {
            settings_json: self.settings_json.clone(),
            destination_id: self.destination_id.clone(),
            events: events.iter().map(event_to_proto).collect(),
        };
        let answer = self
            .client
            .clone()
            .deliver(request)
            .await
            .map_err(|status| error_from_status(&format!("deliver to {}", self.url), &status))?
            .into_inner();
        answer
            .results
            .into_iter()
            .enumerate()
            .map(|(index, result)| result_from_proto(index, result))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|field| DeliverError::Adapter(format!("deliver to {}: answer {field}", self.url)))
    }

    async fn delete(&self, deletion: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let request = pb::DeleteSubjectsRequest {
            settings_json: self.settings_json.clone(),
            destination_id: self.destination_id.clone(),
            request_id: deletion.request_id.to_string(),
            profile_ids: deletion.profile_ids.clone(),
            identifiers: deletion
                .identifiers
                .iter()
                .map(|(name, values)| (name.clone(), pb::IdentifierValues { values: values.clone() }))
                .collect(),
        };
        match self.client.clone().delete_subjects(request).await {
            Ok(_) => Ok(DeletionAnswer::Requested),
            Err(status) if status.code() == Code::Unimplemented => Ok(DeletionAnswer::Unsupported),
            Err(status) => Err(error_from_status(&format!("delete subjects at {}", self.url), &status)),
        }
    }
}

/// Builds the [`Destination`] for one settings object (the JSON a request's
/// `settings_json` holds), or says why it cannot, naming the setting.
pub type AdapterFactory = Arc<dyn Fn(&Value) -> Result<Arc<dyn Destination>, String> + Send + Sync>;

/// The server side of the protocol: serves the adapters a factory builds.
///
/// Each request's `settings_json` picks the adapter: it is built by the
/// factory on first use and kept for every later request with the same
/// settings string, so a platform client (and its connection pool) lives as
/// long as the process. Settings that cannot be built are not kept and
/// answer `FAILED_PRECONDITION`.
pub struct AdapterService {
    /// Builds an adapter from settings.
    factory: AdapterFactory,
    /// The adapters built so far, by settings string. A process serves a
    /// handful of destinations, so the map stays small; it is never pruned.
    built: Mutex<HashMap<String, Arc<dyn Destination>>>,
}

impl AdapterService {
    /// A service building its adapters with `factory`.
    pub fn new(factory: AdapterFactory) -> AdapterService {
        AdapterService { factory, built: Mutex::new(HashMap::new()) }
    }

    /// The tonic service, accepting messages up to [`MAX_MESSAGE_SIZE`].
    pub fn into_server(self) -> DestinationAdapterServer<AdapterService> {
        DestinationAdapterServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The adapter for `settings_json`, built on first use.
    fn adapter(&self, settings_json: &str) -> Result<Arc<dyn Destination>, Status> {
        if let Some(adapter) = self.built.lock().unwrap_or_else(|poison| poison.into_inner()).get(settings_json) {
            return Ok(adapter.clone());
        }
        let settings: Value = if settings_json.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(settings_json)
                .map_err(|err| Status::failed_precondition(format!("settings_json: expected a JSON object: {err}")))?
        };
        if !settings.is_object() {
            return Err(Status::failed_precondition(format!(
                "settings_json: expected a JSON object, found {}",
                json_kind(&settings)
            )));
        }
        // Built outside the lock, so a slow factory does not hold up other
        // destinations; two concurrent first calls may both build, and the
        // first one stored wins.
        let adapter = (self.factory)(&settings).map_err(Status::failed_precondition)?;
        let mut built = self.built.lock().unwrap_or_else(|poison| poison.into_inner());
        let adapter = built.entry(settings_json.to_owned()).or_insert(adapter).clone();
        tracing::info!(adapters = built.len(), "adapter built");
        Ok(adapter)
    }
}

impl fmt::Debug for AdapterService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built = self.built.lock().map(|built| built.len()).unwrap_or_default();
        f.debug_struct("AdapterService").field("built", &built).finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl DestinationAdapter for AdapterService {
    async fn describe(&self, request: Request<pb::DescribeRequest>) -> Result<Response<pb::DescribeResponse>, Status> {
        let request = request.into_inner();
        let adapter = self.adapter(&request.settings_json)?;
        let description = adapter.describe().await.map_err(|err| {
            tracing::warn!(destination = %request.destination_id, cause = %err, "describe failed");
            status_from_error(err)
        })?;
        Ok(Response::new(description_to_proto(&description)))
    }

    async fn deliver(&self, request: Request<pb::DeliverRequest>) -> Result<Response<pb::DeliverResponse>, Status> {
        let request = request.into_inner();
        let adapter = self.adapter(&request.settings_json)?;
        let events = request
            .events
            .into_iter()
            .enumerate()
            .map(|(index, event)| event_from_proto(index, event))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let results = adapter.deliver(&events).await.map_err(|err| {
            tracing::warn!(destination = %request.destination_id, events = events.len(), cause = %err, "batch failed");
            status_from_error(err)
        })?;
        tracing::debug!(destination = %request.destination_id, events = events.len(), "batch delivered");
        Ok(Response::new(pb::DeliverResponse { results: results.iter().map(result_to_proto).collect() }))
    }

    async fn delete_subjects(
        &self,
        request: Request<pb::DeleteSubjectsRequest>,
    ) -> Result<Response<pb::DeleteSubjectsResponse>, Status> {
        let request = request.into_inner();
        let adapter = self.adapter(&request.settings_json)?;
        let request_id =
            request.request_id.parse().map_err(|_| Status::invalid_argument("request_id: expected a UUID"))?;
        let deletion = DeletionRequest {
            request_id,
            profile_ids: request.profile_ids,
            identifiers: request.identifiers.into_iter().map(|(name, values)| (name, values.values)).collect(),
        };
        match adapter.delete(&deletion).await.map_err(status_from_error)? {
            DeletionAnswer::Requested => Ok(Response::new(pb::DeleteSubjectsResponse {})),
            DeletionAnswer::Unsupported => Err(Status::unimplemented("this adapter's platform has no deletion API")),
        }
    }
}

/// The whole-call error a status stands for; `call` names the call and the
/// adapter (`deliver to http://…`).
fn error_from_status(call: &str, status: &Status) -> DeliverError {
    let reason = format!("{call}: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => DeliverError::BatchRejected { reason },
        // A server that does not know the service or refuses onepd is the
        // wrong server, or misconfigured: retrying will not help.
        Code::FailedPrecondition
        | Code::Unimplemented
        | Code::NotFound
        | Code::Unauthenticated
        | Code::PermissionDenied => DeliverError::Adapter(reason),
        // Transport failures (refused connections, resets, timeouts) arrive
        // as UNAVAILABLE, CANCELLED or UNKNOWN, so every other code retries.
        _ => DeliverError::Retryable { reason, retry_after: retry_after(status.metadata()) },
    }
}

/// The status a whole-call error goes back as.
fn status_from_error(err: DeliverError) -> Status {
    match err {
        DeliverError::Retryable { reason, retry_after } => {
            let mut status = Status::unavailable(reason);
            if let Some(wait) = retry_after {
                status.metadata_mut().insert(RETRY_AFTER_MS, MetadataValue::from(wait.as_millis() as u64));
            }
            status
        }
        DeliverError::BatchRejected { reason } => Status::invalid_argument(reason),
        DeliverError::Adapter(reason) => Status::failed_precondition(reason),
    }
}

/// The wait a failed call asked for, when its `retry-after-ms` holds a
/// number of milliseconds.
fn retry_after(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get(RETRY_AFTER_MS)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

fn description_to_proto(description: &Description) -> pb::DescribeResponse {
    let category = match description.category {
        Category::AdPlatform => pb::Category::AdPlatform,
        Category::Analytics => pb::Category::Analytics,
        Category::MarketingAutomation => pb::Category::MarketingAutomation,
        Category::Warehouse => pb::Category::Warehouse,
    };
    pb::DescribeResponse {
        name: description.name.clone(),
        category: category as i32,
        identifiers: description
            .identifiers
            .iter()
            .map(|spec| pb::IdentifierSpec {
                name: spec.name.clone(),
                source: spec.source.as_str().to_owned(),
                normalization: serde_name(&spec.normalization),
                hashing: serde_name(&spec.hashing),
            })
            .collect(),
        max_batch_size: description.max_batch_size,
        rate_limit_per_second: description.rate_limit_per_second,
    }
}

/// A description from an adapter's answer; the error names the field.
fn description_from_proto(answer: pb::DescribeResponse) -> Result<Description, String> {
    let category = match pb::Category::try_from(answer.category) {
        Ok(pb::Category::AdPlatform) => Category::AdPlatform,
        Ok(pb::Category::Analytics) => Category::Analytics,
        Ok(pb::Category::MarketingAutomation) => Category::MarketingAutomation,
        Ok(pb::Category::Warehouse) => Category::Warehouse,
        Ok(pb::Category::Unspecified) => {
            return Err("category: expected AD_PLATFORM, ANALYTICS, MARKETING_AUTOMATION or WAREHOUSE, found \
                        CATEGORY_UNSPECIFIED"
                .to_owned());
        }
        Err(_) => {
            return Err(format!(
                "category: expected AD_PLATFORM, ANALYTICS, MARKETING_AUTOMATION or WAREHOUSE, found unknown value {}",
                answer.category
            ));
        }
    };
    let identifiers = answer
        .identifiers
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            let source =
                IdentifierSource::ALL.into_iter().find(|source| source.as_str() == spec.source).ok_or_else(|| {
                    let names: Vec<_> = IdentifierSource::ALL.iter().map(|source| source.as_str()).collect();
                    expected(&format!("identifiers[{index}].source"), &names, &spec.source)
                })?;
            let normalization = from_serde_name::<Normalization>(&spec.normalization).ok_or_else(|| {
                let names: Vec<_> = Normalization::ALL.iter().map(serde_name).collect();
                let names: Vec<_> = names.iter().map(String::as_str).collect();
                expected(&format!("identifiers[{index}].normalization"), &names, &spec.normalization)
            })?;
            let hashing = from_serde_name::<Hashing>(&spec.hashing).ok_or_else(|| {
                expected(&format!("identifiers[{index}].hashing"), &["none", "sha256"], &spec.hashing)
            })?;
            Ok(IdentifierSpec { name: spec.name, source, normalization, hashing })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Description {
        name: answer.name,
        category,
        identifiers,
        max_batch_size: answer.max_batch_size,
        rate_limit_per_second: answer.rate_limit_per_second,
    })
}

/// The name serde gives a unit variant (`phone_e164`): the protocol uses the
/// names events use, so they cannot drift apart.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        other => unreachable!("a unit variant serializes as a string, found {other:?}"),
    }
}

/// The unit variant serde names `name`, if any.
fn from_serde_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

fn expected(field: &str, names: &[&str], found: &str) -> String {
    format!("{field}: expected one of {}, found \"{found}\"", names.join(", "))
}

fn event_to_proto(event: &PreparedEvent) -> pb::PreparedEvent {
    pb::PreparedEvent {
        event_id: event.event_id.0.to_string(),
        position: event.position.0,
        message_type: event.message_type.clone(),
        name: event.name.clone(),
        timestamp: event.timestamp.clone(),
        message_json: event.message.to_string(),
        identifiers: event
            .identifiers
            .iter()
            .map(|(name, values)| (name.clone(), pb::IdentifierValues { values: values.clone() }))
            .collect(),
        traits_json: Value::Object(event.traits.clone()).to_string(),
        profile_id: event.profile_id.clone(),
    }
}

/// An event from a request; the error names the field and never echoes a
/// payload.
fn event_from_proto(index: usize, event: pb::PreparedEvent) -> Result<PreparedEvent, String> {
    let event_id = Uuid::parse_str(&event.event_id)
        .map_err(|_| format!("events[{index}].event_id: expected a UUID, found \"{}\"", event.event_id))?;
    let message: Value = serde_json::from_str(&event.message_json)
        .map_err(|err| format!("events[{index}].message_json: expected a JSON object: {err}"))?;
    let traits = if event.traits_json.trim().is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str(&event.traits_json) {
            Ok(Value::Object(traits)) => traits,
            Ok(other) => {
                return Err(format!(
                    "events[{index}].traits_json: expected a JSON object, found {}",
                    json_kind(&other)
                ));
            }
            Err(err) => return Err(format!("events[{index}].traits_json: expected a JSON object: {err}")),
        }
    };
    Ok(PreparedEvent {
        event_id: EventId(event_id),
        position: Position(event.position),
        message_type: event.message_type,
        name: event.name,
        timestamp: event.timestamp,
        message,
        identifiers: event.identifiers.into_iter().map(|(name, values)| (name, values.values)).collect(),
        traits,
        profile_id: event.profile_id,
    })
}

fn result_to_proto(result: &EventResult) -> pb::EventResult {
    let (outcome, reason, retry_after_ms) = match &result.outcome {
        Outcome::Delivered => (pb::Outcome::Delivered, String::new(), None),
        Outcome::Retryable { reason, retry_after_ms } => (pb::Outcome::Retryable, reason.clone(), *retry_after_ms),
        Outcome::Permanent { reason } => (pb::Outcome::Permanent, reason.clone(), None),
    };
    pb::EventResult { event_id: result.event_id.0.to_string(), outcome: outcome as i32, reason, retry_after_ms }
}

/// A result from an adapter's answer; the error names the field.
fn result_from_proto(index: usize, result: pb::EventResult) -> Result<EventResult, String> {
    let event_id = Uuid::parse_str(&result.event_id)
        .map_err(|_| format!("results[{index}].event_id: expected a UUID, found \"{}\"", result.event_id))?;
    let outcome = match pb::Outcome::try_from(result.outcome) {
        Ok(pb::Outcome::Delivered) => Outcome::Delivered,
        Ok(pb::Outcome::Retryable) => {
            Outcome::Retryable { reason: result.reason, retry_after_ms: result.retry_after_ms }
        }
        Ok(pb::Outcome::Permanent) => Outcome::Permanent { reason: result.reason },
        Ok(pb::Outcome::Unspecified) => {
            return Err(format!(
                "results[{index}].outcome: expected DELIVERED, RETRYABLE or PERMANENT, found OUTCOME_UNSPECIFIED"
            ));
        }
        Err(_) => {
            return Err(format!(
                "results[{index}].outcome: expected DELIVERED, RETRYABLE or PERMANENT, found unknown value {}",
                result.outcome
            ));
        }
    };
    Ok(EventResult { event_id: EventId(event_id), outcome })
}

/// What kind of JSON value `value` is, for errors that must not echo it.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(category: i32, source: &str, normalization: &str, hashing: &str) -> pb::DescribeResponse {
        pb::DescribeResponse {
            name: "acme".into(),
            category,
            identifiers: vec![pb::IdentifierSpec {
                name: "em".into(),
                source: source.into(),
                normalization: normalization.into(),
                hashing: hashing.into(),
            }],
            max_batch_size: 10,
            rate_limit_per_second: None,
        }
    }

    #[test]
    fn every_normalization_and_hashing_crosses_the_protocol_by_its_serde_name() {
        for normalization in Normalization::ALL {
            let name = serde_name(&normalization);
            assert_eq!(from_serde_name::<Normalization>(&name), Some(normalization), "{name}");
        }
        assert_eq!(serde_name(&Normalization::PhoneE164), "phone_e164");
        assert_eq!(serde_name(&Normalization::DateYyyymmdd), "date_yyyymmdd");
        assert_eq!(serde_name(&Hashing::Sha256), "sha256");
    }

    #[test]
    fn an_unknown_category_source_normalization_or_hashing_is_named_with_its_field() {
        let ad = pb::Category::AdPlatform as i32;
        let err = description_from_proto(answer(0, "email", "email", "sha256")).unwrap_err();
        assert!(err.starts_with("category: expected") && err.contains("CATEGORY_UNSPECIFIED"), "{err}");
        let err = description_from_proto(answer(42, "email", "email", "sha256")).unwrap_err();
        assert!(err.contains("unknown value 42"), "{err}");
        let err = description_from_proto(answer(ad, "mail", "email", "sha256")).unwrap_err();
        assert!(err.starts_with("identifiers[0].source: expected one of email, phone"), "{err}");
        assert!(err.ends_with("found \"mail\""), "{err}");
        let err = description_from_proto(answer(ad, "email", "Email", "sha256")).unwrap_err();
        assert!(err.starts_with("identifiers[0].normalization: expected one of none, trim"), "{err}");
        let err = description_from_proto(answer(ad, "email", "email", "md5")).unwrap_err();
        assert_eq!(err, "identifiers[0].hashing: expected one of none, sha256, found \"md5\"");
    }

    #[test]
    fn an_event_id_that_is_not_a_uuid_is_named_with_its_index() {
        let event = pb::PreparedEvent { event_id: "e-1".into(), message_json: "{}".into(), ..Default::default() };
        let err = event_from_proto(3, event).unwrap_err();
        assert_eq!(err, "events[3].event_id: expected a UUID, found \"e-1\"");
        let result = pb::EventResult { event_id: Uuid::nil().to_string(), outcome: 0, ..Default::default() };
        let err = result_from_proto(1, result).unwrap_err();
        assert!(err.starts_with("results[1].outcome:"), "{err}");
    }

    #[test]
    fn status_codes_map_to_the_documented_errors() {
        let mut status = Status::resource_exhausted("slow down");
        status.metadata_mut().insert(RETRY_AFTER_MS, MetadataValue::from(1500u64));
        assert_eq!(
            error_from_status("deliver to x", &status),
            DeliverError::Retryable {
                reason: "deliver to x: ResourceExhausted: slow down".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }
        );
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted, Code::Internal, Code::Unknown] {
            let err = error_from_status("x", &Status::new(code, "m"));
            assert!(matches!(err, DeliverError::Retryable { retry_after: None, .. }), "{code:?}: {err:?}");
        }
        assert!(matches!(error_from_status("x", &Status::invalid_argument("m")), DeliverError::BatchRejected { .. }));
        for code in [Code::FailedPrecondition, Code::Unimplemented] {
            assert!(matches!(error_from_status("x", &Status::new(code, "m")), DeliverError::Adapter(_)), "{code:?}");
        }
    }
}
