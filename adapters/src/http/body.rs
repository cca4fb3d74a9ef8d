//! Decoding a Segment-compatible request body: decompression, size limits,
//! JSON, the write key sent in the body, and a batch's shared fields.
//!
//! Liberal in what it accepts from real SDKs: any content type (browsers'
//! `sendBeacon` sends `text/plain`), `gzip` and `deflate` bodies, a
//! `writeKey` in the body; strict in what it passes on: each message is a JSON
//! value of at most 32 KB and a request at most 500 KB once decompressed.
//!
//! **Invariant:** total: every input gives messages or a [`BodyError`]; it
//! never panics (a property test drives it with arbitrary bytes).

use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::ingest::{MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/track`, `/v1/identify`, … : one message of that type.
    Single(&'static str),
    /// `/v1/batch` and `/v1/import`: `{"batch": [...]}`.
    Batch,
    /// `/v1/consent`: a person's consent choice, `{"userId" | "anonymousId",
    /// "categoryPreferences": {"marketing": true, …}, …}`, recorded as
    /// Segment's `Segment Consent Preference Updated` track with the
    /// preferences in `context.consent`, so it holds for the person's later
    /// messages.
    Consent,
}

/// The track event a consent call becomes (the name Segment's consent
/// tooling sends).
pub const CONSENT_EVENT: &str = "Segment Consent Preference Updated";

impl Endpoint {
    /// The endpoint of a path segment after `/v1/`.
    pub fn of(name: &str) -> Option<Endpoint> {
        Some(match name {
            "track" | "t" => Endpoint::Single("track"),
            "identify" | "i" => Endpoint::Single("identify"),
            "page" | "p" => Endpoint::Single("page"),
            "screen" | "s" => Endpoint::Single("screen"),
            "group" | "g" => Endpoint::Single("group"),
            "alias" | "a" => Endpoint::Single("alias"),
            "batch" | "import" | "b" | "m" => Endpoint::Batch,
            "consent" => Endpoint::Consent,
            _ => return None,
        })
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The write key sent as `writeKey` in the body, if any.
    pub write_key: Option<String>,
    /// The messages, each a JSON value (objects unless the client sent
    /// something else, which the pipeline then rejects).
    pub messages: Vec<Value>,
}

/// Why a body cannot be decoded; each becomes a 4xx with a JSON reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A Content-Encoding other than gzip, deflate or identity.
    #[error("content-encoding: expected gzip, deflate or identity, found {0:?}")]
    UnsupportedEncoding(String),
    /// The compressed body does not decompress.
    #[error("body: expected {encoding} data, found bytes that do not decompress ({reason})")]
    Decompression {
        /// The encoding claimed.
        encoding: &'static str,
        /// What the decompressor said.
        reason: String,
    },
    /// The request is over Segment's 500 KB batch limit.
    #[error("body: expected at most 500 KB ({MAX_BATCH_BYTES} bytes), found more")]
    BatchTooLarge,
    /// One message is over Segment's 32 KB limit.
    #[error("{field}: expected a message of at most 32 KB ({MAX_MESSAGE_BYTES} bytes), found {size} bytes")]
    MessageTooLarge {
        /// `body` or `batch[i]`.
        field: String,
        /// Its size.
        size: usize,
    },
    /// The body is not JSON, or not the expected shape.
    #[error("{field}: {message}")]
    Malformed {
        /// Where the problem is.
        field: String,
        /// What was expected and found.
        message: String,
    },
    /// More messages than one batch may hold.
    #[error("batch: expected at most {MAX_BATCH_MESSAGES} messages, found {0}")]
    TooManyMessages(usize),
}

impl BodyError {
    /// A stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::Decompression { .. } => "malformed_body",
            BodyError::BatchTooLarge => "batch_too_large",
            BodyError::MessageTooLarge { .. } => "message_too_large",
            BodyError::Malformed { .. } => "malformed_json",
            BodyError::TooManyMessages(_) => "too_many_messages",
        }
    }

    /// The field the error names.
    pub fn field(&self) -> String {
        match self {
            BodyError::UnsupportedEncoding(_) => "content-encoding".into(),
            BodyError::Decompression { .. } | BodyError::BatchTooLarge => "body".into(),
            BodyError::MessageTooLarge { field, .. } | BodyError::Malformed { field, .. } => field.clone(),
            BodyError::TooManyMessages(_) => "batch".into(),
        }
    }
}

/// Decodes a request body sent to `endpoint` with `content_encoding`.
pub fn decode(endpoint: Endpoint, content_encoding: Option<&str>, body: &[u8]) -> Result<Decoded, BodyError> {
    let body = decompress(content_encoding, body)?;
    match endpoint {
        Endpoint::Single(message_type) => decode_single(message_type, &body),
        Endpoint::Batch => decode_batch(&body),
        Endpoint::Consent => decode_consent(&body),
    }
}

/// A consent call as the track message it stands for.
fn decode_consent(body: &[u8]) -> Result<Decoded, BodyError> {
    let mut decoded = decode_single("track", body)?;
    let message = decoded.messages[0].as_object_mut().expect("decode_single gives an object");
    let preferences = match message.remove("categoryPreferences") {
        Some(Value::Object(preferences)) if preferences.values().all(Value::is_boolean) => preferences,
        other => {
            return Err(BodyError::Malformed {
                field: "categoryPreferences".into(),
                message: format!(
                    "expected an object of category names to true or false, found {}",
                    other.as_ref().map_or("nothing", onepd_commands::ingest::shape::kind)
                ),
            });
        }
    };
    message.insert("event".into(), Value::String(CONSENT_EVENT.into()));
    let context = message.entry("context").or_insert_with(|| Value::Object(Default::default()));
    match context {
        Value::Object(context) => {
            context.insert("consent".into(), serde_json::json!({ "categoryPreferences": preferences }));
        }
        _ => {
            return Err(BodyError::Malformed {
                field: "context".into(),
                message: format!("expected an object, found {}", onepd_commands::ingest::shape::kind(context)),
            });
        }
    }
    Ok(decoded)
}

fn decompress<'a>(content_encoding: Option<&str>, body: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, BodyError> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let (name, reader): (&'static str, Box<dyn Read + 'a>) = match encoding.as_str() {
        "" | "identity" => {
            if body.len() > MAX_BATCH_BYTES {
                return Err(BodyError::BatchTooLarge);
            }
            return Ok(std::borrow::Cow::Borrowed(body));
        }
        "gzip" | "x-gzip" => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(body))),
        "deflate" => ("deflate", Box::new(flate2::read::ZlibDecoder::new(body))),
        other => return Err(BodyError::UnsupportedEncoding(other.to_owned())),
    };
    // Read one byte past the limit to tell "at the limit" from "over it",
    // without ever inflating a small bomb into a large buffer.
    let mut out = Vec::new();
    reader
        .take(MAX_BATCH_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| BodyError::Decompression { encoding: name, reason: err.to_string() })?;
    if out.len() > MAX_BATCH_BYTES {
        return Err(BodyError::BatchTooLarge);
    }
    Ok(std::borrow::Cow::Owned(out))
}

fn malformed(field: impl Into<String>, err: &serde_json::Error) -> BodyError {
    BodyError::Malformed { field: field.into(), message: format!("expected JSON, found invalid JSON ({err})") }
}

fn decode_single(message_type: &'static str, body: &[u8]) -> Result<Decoded, BodyError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(BodyError::MessageTooLarge { field: "body".into(), size: body.len() });
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| malformed("body", &err))?;
    let Value::Object(mut message) = value else {
        return Err(BodyError::Malformed {
            field: "body".into(),
            message: format!("expected a JSON object, found {}", onepd_commands::ingest::shape::kind(&value)),
        });
    };
    let write_key = take_write_key(&mut message);
    // The endpoint names the type, as Segment's does.
    message.insert("type".into(), Value::String(message_type.into()));
    Ok(Decoded { write_key, messages: vec![Value::Object(message)] })
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey")]
    write_key: Option<Value>,
    context: Option<Value>,
    integrations: Option<Value>,
    #[serde(rename = "sentAt")]
    sent_at: Option<Value>,
}

fn decode_batch(body: &[u8]) -> Result<Decoded, BodyError> {
    let parsed: BatchBody<'_> = serde_json::from_slice(body).map_err(|err| {
        if err.is_data() {
            BodyError::Malformed {
                field: "body".into(),
                message: format!("expected {{\"batch\": [messages]}}, found another shape ({err})"),
            }
        } else {
            malformed("body", &err)
        }
    })?;
    let raws = parsed.batch.ok_or_else(|| BodyError::Malformed {
        field: "batch".into(),
        message: "expected an array of messages, found none".into(),
    })?;
    if raws.len() > MAX_BATCH_MESSAGES {
        return Err(BodyError::TooManyMessages(raws.len()));
    }
    let shared_context = parsed.context.and_then(object);
    let shared_integrations = parsed.integrations.and_then(object);
    let mut messages = Vec::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        let size = raw.get().len();
        if size > MAX_MESSAGE_BYTES {
            return Err(BodyError::MessageTooLarge { field: format!("batch[{index}]"), size });
        }
        let mut value: Value =
            serde_json::from_str(raw.get()).map_err(|err| malformed(format!("batch[{index}]"), &err))?;
        if let Value::Object(message) = &mut value {
            message.remove("writeKey");
            merge_shared(message, "context", shared_context.as_ref());
            merge_shared(message, "integrations", shared_integrations.as_ref());
            if let Some(sent_at) = &parsed.sent_at
                && !message.contains_key("sentAt")
            {
                message.insert("sentAt".into(), sent_at.clone());
            }
        }
        messages.push(value);
    }
    Ok(Decoded { write_key: parsed.write_key.and_then(|key| key.as_str().map(str::to_owned)), messages })
}

/// Fills a message's `field` object with a batch's shared keys; the
/// message's own keys win.
fn merge_shared(message: &mut Map<String, Value>, field: &str, shared: Option<&Map<String, Value>>) {
    let Some(shared) = shared else { return };
    match message.get_mut(field) {
        Some(Value::Object(own)) => {
            for (key, value) in shared {
                own.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        None | Some(Value::Null) => {
            message.insert(field.into(), Value::Object(shared.clone()));
        }
        // Not an object: leave it for the pipeline to reject, naming the field.
        Some(_) => {}
    }
}

fn take_write_key(message: &mut Map<String, Value>) -> Option<String> {
    match message.remove("writeKey") {
        Some(Value::String(key)) => Some(key),
        _ => None,
    }
}

fn object(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_batch_shares_its_context_and_sent_at_with_messages_that_lack_them() {
        let body = json!({
            "batch": [{ "type": "track", "event": "A", "context": { "ip": "1.2.3.4" } }, { "type": "page" }],
            "context": { "ip": "9.9.9.9", "library": { "name": "x" } },
            "sentAt": "2026-11-29T00:00:00Z",
            "writeKey": "k"
        });
        let decoded = decode(Endpoint::Batch, None, body.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.write_key.as_deref(), Some("k"));
        assert_eq!(decoded.messages[0]["context"], json!({ "ip": "1.2.3.4", "library": { "name": "x" } }));
        assert_eq!(decoded.messages[1]["context"]["ip"], "9.9.9.9");
        assert_eq!(decoded.messages[1]["sentAt"], "2026-11-29T00:00:00Z");
    }

    #[test]
    fn a_gzipped_body_is_decoded() {
        let body = gzip(br#"{"event":"A","userId":"u"}"#);
        let decoded = decode(Endpoint::Single("track"), Some("gzip"), &body).unwrap();
        assert_eq!(decoded.messages[0]["type"], "track");
    }

    #[test]
    fn a_message_over_32_kb_is_refused_naming_its_index() {
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        let body = json!({ "batch": [{ "type": "track", "event": "A" }, { "type": "track", "event": big }] });
        let err = decode(Endpoint::Batch, None, body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code(), "message_too_large");
        assert_eq!(err.field(), "batch[1]");
    }

    #[test]
    fn a_compressed_bomb_stops_at_the_batch_limit() {
        let body = gzip(&vec![b' '; MAX_BATCH_BYTES * 4]);
        assert_eq!(decode(Endpoint::Batch, Some("gzip"), &body), Err(BodyError::BatchTooLarge));
    }

    #[test]
    fn malformed_json_is_refused_with_where_it_broke() {
        let err = decode(Endpoint::Single("track"), None, b"{\"event\": ").unwrap_err();
        assert_eq!(err.code(), "malformed_json");
        assert!(err.to_string().starts_with("body: expected JSON, found invalid JSON (EOF while parsing"), "{err}");
    }

    #[test]
    fn a_batch_without_a_batch_array_names_the_field() {
        let err = decode(Endpoint::Batch, None, b"{}").unwrap_err();
        assert_eq!(err.to_string(), "batch: expected an array of messages, found none");
    }

    #[test]
    fn an_unknown_encoding_is_named() {
        let err = decode(Endpoint::Batch, Some("br"), b"{}").unwrap_err();
        assert_eq!(err.to_string(), "content-encoding: expected gzip, deflate or identity, found \"br\"");
    }

    fn pipeline() -> &'static onepd_commands::ingest::Pipeline {
        static PIPELINE: std::sync::OnceLock<onepd_commands::ingest::Pipeline> = std::sync::OnceLock::new();
        PIPELINE.get_or_init(onepd_commands::ingest::Pipeline::new)
    }

    /// Drives decoding and then the whole pipeline: every input is decoded
    /// or refused with a reason, and every decoded message gets a decision;
    /// a rejection always names its rule.
    fn decode_and_process(endpoint: Endpoint, encoding: Option<&str>, bytes: &[u8]) {
        use onepd_commands::ingest::{Decision, Received, WorkspaceSettings};
        let decoded = match decode(endpoint, encoding, bytes) {
            Ok(decoded) => decoded,
            Err(err) => {
                assert!(!err.to_string().is_empty() && !err.code().is_empty());
                return;
            }
        };
        let settings = WorkspaceSettings {
            workspace: onepd_domain::WorkspaceId(uuid::Uuid::from_u128(1)),
            industry: Default::default(),
            default_region: Some("US".into()),
            plan: None,
        };
        let received = Received {
            at: onepd_domain::Timestamp(1_800_000_000_000_000),
            source_id: uuid::Uuid::from_u128(2),
            peer_ip: Some("127.0.0.1".parse().unwrap()),
            forwarded_ip: None,
            request_id: "fuzz".into(),
        };
        for message in decoded.messages {
            match pipeline().process(&settings, &received, message, || "generated".into()) {
                Decision::Accepted { event, .. } => assert_eq!(event.event_type, "MessageAccepted"),
                Decision::Rejected { reasons, .. } => {
                    assert!(!reasons.is_empty() && reasons.iter().all(|r| !r.rule.is_empty()))
                }
            }
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "track",
                "identify",
                "page",
                "screen",
                "group",
                "alias",
                "2026-11-29T00:00:00Z",
                "a@b.co",
                "+14155552671"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop::sample::select(vec![
                "type",
                "userId",
                "anonymousId",
                "event",
                "messageId",
                "traits",
                "properties",
                "context",
                "timestamp",
                "sentAt",
                "originalTimestamp",
                "email",
                "phone",
                "ip",
                "userAgent",
                "groupId",
                "previousId",
                "batch",
                "writeKey",
                "address",
                "country",
                "firstName",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_through_decoding_and_the_pipeline_gets_a_decision_or_a_reason(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            decode_and_process(Endpoint::Batch, None, &bytes);
            decode_and_process(Endpoint::Single("track"), None, &bytes);
            let batch = serde_json::to_vec(&json!({ "batch": [value.clone(), value] })).unwrap();
            decode_and_process(Endpoint::Batch, None, &batch);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), gz in proptest::bool::ANY) {
            decode_and_process(Endpoint::Batch, gz.then_some("gzip"), &bytes);
            decode_and_process(Endpoint::Single("identify"), None, &bytes);
        }
    }
}
