//! `onepd.ingest.v1.IngestService`: the gRPC entrance for services.
//!
//! Each typed proto message is turned into its Segment-spec JSON and takes the
//! same [`Ingest`] path as the HTTP API. The write key comes in the
//! `authorization` metadata (`Bearer <write key>`, or `Basic` as over HTTP).

use std::sync::Arc;

use onepd_proto::ingest::v1 as pb;
use onepd_proto::ingest::v1::ingest_service_server::IngestService;
use prost::Message as _;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status, Streaming};

use crate::ingest::{Caller, Ingest, IngestError, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES, MessageResult, Outcome};
use onepd_projections::directory::WriteGrant;

/// The ingest service.
#[derive(Debug, Clone)]
pub struct IngestApi {
    ingest: Arc<Ingest>,
}

impl IngestApi {
    /// Serves `ingest`.
    pub fn new(ingest: Arc<Ingest>) -> IngestApi {
        IngestApi { ingest }
    }

    fn caller<T>(&self, request: &Request<T>) -> (Result<WriteGrant, Status>, Caller) {
        let grant = authenticate(&self.ingest, request.metadata());
        let peer_ip = request.remote_addr().map(|addr| addr.ip());
        let forwarded = request.metadata().get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok());
        let caller = Caller {
            peer_ip,
            forwarded_ip: self.ingest.trusted_proxies().client_ip(peer_ip, forwarded),
            request_id: uuid::Uuid::now_v7().to_string(),
            received_at: None,
        };
        (grant, caller)
    }

    async fn one(&self, request: Request<pb::Message>) -> Result<Response<pb::IngestResponse>, Status> {
        let (grant, caller) = self.caller(&request);
        let grant = grant?;
        let message = request.into_inner();
        check_size(&message, "message")?;
        let _admission = self.ingest.try_admit(1).map_err(status)?;
        let results = self.ingest.ingest(grant, &caller, vec![to_json(message, None)]).await.map_err(status)?;
        let result = results.into_iter().next().map(|result| to_result(0, result));
        Ok(Response::new(pb::IngestResponse { result }))
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn track(&self, request: Request<pb::Track>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Track(message)) })).await
    }

    async fn identify(&self, request: Request<pb::Identify>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Identify(message)) })).await
    }

    async fn page(&self, request: Request<pb::Page>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Page(message)) })).await
    }

    async fn screen(&self, request: Request<pb::Screen>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Screen(message)) })).await
    }

    async fn group(&self, request: Request<pb::Group>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Group(message)) })).await
    }

    async fn alias(&self, request: Request<pb::Alias>) -> Result<Response<pb::IngestResponse>, Status> {
        self.one(request.map(|message| pb::Message { kind: Some(pb::message::Kind::Alias(message)) })).await
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let (grant, caller) = self.caller(&request);
        let grant = grant?;
        let batch = request.into_inner();
        let messages = batch_messages(batch)?;
        let _admission = self.ingest.try_admit(messages.len()).map_err(status)?;
        let results = self.ingest.ingest(grant, &caller, messages).await.map_err(status)?;
        let mut response = pb::BatchResponse::default();
        for (index, result) in results.into_iter().enumerate() {
            match result.outcome {
                Outcome::Accepted { .. } => response.accepted += 1,
                Outcome::Duplicate { .. } => response.duplicates += 1,
                Outcome::Rejected { .. } => response.rejected += 1,
            }
            response.results.push(to_result(index, result));
        }
        Ok(Response::new(response))
    }

    async fn stream(
        &self,
        request: Request<Streaming<pb::BatchRequest>>,
    ) -> Result<Response<pb::StreamSummary>, Status> {
        let (grant, caller) = self.caller(&request);
        let grant = grant?;
        let mut stream = request.into_inner();
        let mut summary = pb::StreamSummary::default();
        while let Some(batch) = stream.message().await? {
            let messages = batch_messages(batch)?;
            // Waiting here, rather than refusing, stops reading the stream:
            // HTTP/2 flow control then slows the producer down.
            let _admission = self.ingest.admit(messages.len()).await.map_err(status)?;
            let offset = summary.messages;
            let results = self.ingest.ingest(grant, &caller, messages).await.map_err(status)?;
            for (index, result) in results.into_iter().enumerate() {
                summary.messages += 1;
                let position = match &result.outcome {
                    Outcome::Accepted { position } => {
                        summary.accepted += 1;
                        *position
                    }
                    Outcome::Duplicate { position } => {
                        summary.duplicates += 1;
                        *position
                    }
                    Outcome::Rejected { position, .. } => {
                        summary.rejected += 1;
                        let position = *position;
                        summary.rejections.push(to_result(offset as usize + index, result));
                        position
                    }
                };
                summary.last_position = summary.last_position.max(position.0);
            }
        }
        Ok(Response::new(summary))
    }
}

fn batch_messages(batch: pb::BatchRequest) -> Result<Vec<Value>, Status> {
    if batch.messages.len() > MAX_BATCH_MESSAGES {
        return Err(Status::invalid_argument(format!(
            "messages: expected at most {MAX_BATCH_MESSAGES} messages, found {}",
            batch.messages.len()
        )));
    }
    let sent_at = batch.sent_at.map(timestamp);
    let mut messages = Vec::with_capacity(batch.messages.len());
    for (index, message) in batch.messages.into_iter().enumerate() {
        check_size(&message, &format!("messages[{index}]"))?;
        messages.push(to_json(message, sent_at.clone()));
    }
    Ok(messages)
}

fn check_size(message: &pb::Message, field: &str) -> Result<(), Status> {
    let size = message.encoded_len();
    if size > MAX_MESSAGE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}: expected a message of at most 32 KB ({MAX_MESSAGE_BYTES} bytes), found {size} bytes"
        )));
    }
    Ok(())
}

/// What the write key in `metadata` writes to: the one check of every gRPC
/// entrance that takes a write key.
pub(crate) fn authenticate(ingest: &Ingest, metadata: &tonic::metadata::MetadataMap) -> Result<WriteGrant, Status> {
    write_key(metadata).and_then(|key| ingest.authenticate(&key).map_err(status))
}

/// The write key from `authorization: Bearer <key>` (or `Basic`, as over HTTP).
fn write_key(metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
    let missing = || Status::unauthenticated("authorization: expected \"Bearer <write key>\", found none");
    let value = metadata.get("authorization").ok_or_else(missing)?.to_str().map_err(|_| missing())?;
    let (scheme, credential) = value.trim().split_once(' ').ok_or_else(missing)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(credential.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        return crate::ingest::basic_user(credential).ok_or_else(missing);
    }
    Err(missing())
}

/// The gRPC status of an ingest failure.
pub(crate) fn status(err: IngestError) -> Status {
    match err {
        IngestError::Unauthenticated(message) => Status::unauthenticated(message),
        IngestError::Overloaded { .. } => {
            let mut status = Status::resource_exhausted(err.to_string());
            status.metadata_mut().insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
            status
        }
        IngestError::Invalid(message) => Status::invalid_argument(message),
        IngestError::Configuration(_) => Status::failed_precondition(err.to_string()),
        IngestError::Store(_) | IngestError::Append(_) => {
            let unavailable = err.is_unavailable();
            if unavailable {
                tracing::warn!(cause = %err, "ingest unavailable");
            } else {
                tracing::error!(cause = %err, "ingest failed");
            }
            let mut status = Status::unavailable(if unavailable {
                "onepd cannot reach its database; nothing was acknowledged, retry it (stored messages come back as duplicates)"
            } else {
                "onepd could not store the batch; nothing was acknowledged, retry it (stored messages come back as duplicates)"
            });
            let wait = crate::ingest::UNAVAILABLE_RETRY_AFTER.as_secs().to_string();
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(wait.as_str()) {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
    }
}

fn to_result(index: usize, result: MessageResult) -> pb::MessageResult {
    let outcome = match result.outcome {
        Outcome::Accepted { position } => pb::message_result::Outcome::Accepted(pb::Accepted { position: position.0 }),
        Outcome::Duplicate { position } => {
            pb::message_result::Outcome::Duplicate(pb::Duplicate { original_position: position.0 })
        }
        Outcome::Rejected { reasons, position } => pb::message_result::Outcome::Rejected(pb::Rejected {
            reasons: reasons
                .into_iter()
                .map(|reason| pb::Reason { field: reason.field, rule: reason.rule, message: reason.message })
                .collect(),
            position: position.0,
        }),
    };
    pb::MessageResult {
        index: index as u32,
        message_id: result.message_id.unwrap_or_default(),
        event_id: result.event_id.to_string(),
        outcome: Some(outcome),
    }
}

/// The Segment-spec JSON of a typed message.
pub fn to_json(message: pb::Message, batch_sent_at: Option<Value>) -> Value {
    let mut out = Map::new();
    let put_str = |out: &mut Map<String, Value>, key: &str, value: String| {
        if !value.is_empty() {
            out.insert(key.into(), Value::String(value));
        }
    };
    let put_struct = |out: &mut Map<String, Value>, key: &str, value: Option<prost_types::Struct>| {
        if let Some(value) = value {
            out.insert(key.into(), struct_to_json(value));
        }
    };
    let common = match message.kind {
        None => return Value::Object(out),
        Some(pb::message::Kind::Track(m)) => {
            out.insert("type".into(), "track".into());
            put_str(&mut out, "event", m.event);
            put_struct(&mut out, "properties", m.properties);
            m.common
        }
        Some(pb::message::Kind::Identify(m)) => {
            out.insert("type".into(), "identify".into());
            put_struct(&mut out, "traits", m.traits);
            m.common
        }
        Some(pb::message::Kind::Page(m)) => {
            out.insert("type".into(), "page".into());
            put_str(&mut out, "name", m.name);
            put_str(&mut out, "category", m.category);
            put_struct(&mut out, "properties", m.properties);
            m.common
        }
        Some(pb::message::Kind::Screen(m)) => {
            out.insert("type".into(), "screen".into());
            put_str(&mut out, "name", m.name);
            put_str(&mut out, "category", m.category);
            put_struct(&mut out, "properties", m.properties);
            m.common
        }
        Some(pb::message::Kind::Group(m)) => {
            out.insert("type".into(), "group".into());
            put_str(&mut out, "groupId", m.group_id);
            put_struct(&mut out, "traits", m.traits);
            m.common
        }
        Some(pb::message::Kind::Alias(m)) => {
            out.insert("type".into(), "alias".into());
            put_str(&mut out, "previousId", m.previous_id);
            m.common
        }
    };
    if let Some(common) = common {
        put_str(&mut out, "messageId", common.message_id);
        put_str(&mut out, "userId", common.user_id);
        put_str(&mut out, "anonymousId", common.anonymous_id);
        put_struct(&mut out, "context", common.context);
        put_struct(&mut out, "integrations", common.integrations);
        if let Some(at) = common.timestamp {
            out.insert("timestamp".into(), timestamp(at));
        }
        if let Some(at) = common.sent_at {
            out.insert("sentAt".into(), timestamp(at));
        }
    }
    if let Some(sent_at) = batch_sent_at {
        out.entry("sentAt").or_insert(sent_at);
    }
    Value::Object(out)
}

/// A protobuf timestamp as RFC 3339 text; an out-of-range one is passed on as
/// given, for the pipeline to reject by name.
fn timestamp(at: prost_types::Timestamp) -> Value {
    Value::String(at.to_string())
}

fn struct_to_json(value: prost_types::Struct) -> Value {
    Value::Object(value.fields.into_iter().map(|(key, value)| (key, value_to_json(value))).collect())
}

fn value_to_json(value: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(number)) => {
            // Whole numbers stay integers, as a JSON client would have sent them.
            if number.fract() == 0.0 && number.abs() < 9.0e15 {
                Value::from(number as i64)
            } else {
                serde_json::Number::from_f64(number).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::BoolValue(flag)) => Value::Bool(flag),
        Some(Kind::StructValue(object)) => struct_to_json(object),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_typed_track_becomes_its_segment_json() {
        let mut properties = prost_types::Struct::default();
        properties
            .fields
            .insert("revenue".into(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(12.5)) });
        properties
            .fields
            .insert("items".into(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(3.0)) });
        let message = pb::Message {
            kind: Some(pb::message::Kind::Track(pb::Track {
                common: Some(pb::Common {
                    message_id: "m1".into(),
                    user_id: "u1".into(),
                    timestamp: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
                    ..Default::default()
                }),
                event: "Order Completed".into(),
                properties: Some(properties),
            })),
        };
        assert_eq!(
            to_json(message, None),
            json!({
                "type": "track", "event": "Order Completed", "messageId": "m1", "userId": "u1",
                "properties": { "revenue": 12.5, "items": 3 },
                "timestamp": "2023-11-14T22:13:20Z",
            })
        );
    }
}
