//! The decision: chains the steps and builds the one event to append.
//!
//! * Accepted: a `MessageAccepted` with `event_id = UUIDv5(workspace,
//!   messageId)`, so a retried message is the same event.
//! * Rejected (any shape or timestamp violation, or a tracking plan violation
//!   in `block` mode): a `MessageRejected` holding the message as received
//!   (compact JSON, `writeKey` removed, cut to `MessageRejected::RAW_LIMIT`
//!   bytes) with `event_id = UUIDv5(workspace, "rejected:" + hex sha256 of the
//!   full compact JSON)`, so a retried bad message records one rejection.
//!
//! **Invariants:** the event's `metadata` is stored in clear, so it holds only
//! routing facts (`source_id`, `received_at`, `request_id`, `message_type`),
//! never personal data; `message_type` is one of the known types or `null`,
//! never text a client chose. The subject is the `userId`, else the
//! `anonymousId` (for `alias`, the `userId`).

use onepd_domain::events::erasure::rejected_identifiers;
use onepd_domain::events::message::{MessageAccepted, MessageRejected, Violation};
use onepd_domain::events::workspace::PlanMode;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::shape::{self, MessageType};
use super::{Decision, EventId, NewEvent, Pipeline, Received, WorkspaceSettings, enrich, normalize};

/// Runs every step on one message; see [`Pipeline::process`].
pub fn run(
    pipeline: &Pipeline,
    settings: &WorkspaceSettings,
    received: &Received,
    message: Value,
    new_message_id: impl FnOnce() -> String,
) -> Decision {
    let mut input = match message {
        Value::Object(input) => input,
        other => {
            let kind = shape::kind(&other);
            let reasons = vec![Violation::new("", "type", format!("expected a JSON object, found {kind}"))];
            return reject(settings, received, &other, reasons);
        }
    };
    input.remove(shape::WRITE_KEY);

    let mut reasons = shape::check(&input);
    let times = match enrich::check_timestamps(&input) {
        Ok(times) => times,
        Err(violations) => {
            reasons.extend(violations);
            Default::default()
        }
    };
    if !reasons.is_empty() {
        return reject(settings, received, &Value::Object(input), reasons);
    }

    let plan = settings.plan.as_deref();
    // In block mode the message may yet be rejected after it was reshaped, and
    // a rejection keeps the message as received: keep that text now.
    let raw_if_blocked = plan.filter(|plan| plan.mode() == PlanMode::Block).map(|_| Raw::of(&input));

    let Some(shaped) = shape::store(input, new_message_id) else {
        // Unreachable: `check` found a known type. Kept total all the same.
        let reasons = vec![Violation::new("type", "type", "type: expected a known message type, found none")];
        return reject(settings, received, &Value::Null, reasons);
    };
    let shape::Shaped { mut message, message_type, message_id, dropped } = shaped;

    let mut enrichment = Map::new();
    let mut originals = Map::new();
    let mut violations = Vec::new();
    if !dropped.is_empty() {
        enrichment.insert("droppedFields".to_owned(), Value::from(dropped));
    }
    enrich::apply(&mut message, &mut enrichment, &mut originals, &mut violations, received, times);
    if let Some(user_agent) = message.get("context").and_then(|c| c.get("userAgent")).and_then(Value::as_str)
        && !user_agent.trim().is_empty()
    {
        enrichment.insert("userAgent".to_owned(), (*pipeline.user_agents.parse(user_agent)).clone());
    }
    normalize::apply(&mut message, settings.default_region.as_deref(), &mut originals, &mut violations);

    let message = Value::Object(message);
    if let Some(plan) = plan {
        let broken = plan.check(&message);
        if !broken.is_empty() {
            if let Some(raw) = raw_if_blocked {
                violations.extend(broken);
                return reject_raw(settings, received, raw, violations, Some(message_type), Some(message_id), &message);
            }
            violations.extend(broken);
        }
    }

    let subject = subject(&message, message_type);
    let metadata = metadata(received, Some(message_type));
    // Built by moving, not with `json!`, which would copy the whole message.
    let mut data = Map::with_capacity(4);
    data.insert("message".to_owned(), message);
    data.insert("enrichment".to_owned(), Value::Object(enrichment));
    data.insert("originals".to_owned(), Value::Object(originals));
    data.insert("violations".to_owned(), violations_value(&violations));
    let data = Value::Object(data);
    Decision::Accepted {
        event: NewEvent {
            event_id: EventId::for_message(settings.workspace, &message_id),
            workspace_id: settings.workspace,
            event_type: MessageAccepted::TYPE.to_owned(),
            schema_version: 1,
            data,
            metadata,
            subject,
        },
        message_id,
    }
}

/// A message as received, as compact JSON.
struct Raw {
    /// The full text.
    json: String,
}

impl Raw {
    fn of(input: &Map<String, Value>) -> Raw {
        // Serializing a map of JSON values cannot fail.
        Raw { json: serde_json::to_string(input).unwrap_or_default() }
    }
}

/// Rejects `input` (the message as received, `writeKey` removed).
fn reject(settings: &WorkspaceSettings, received: &Received, input: &Value, reasons: Vec<Violation>) -> Decision {
    let raw = Raw { json: serde_json::to_string(input).unwrap_or_default() };
    let message_type = input.get("type").and_then(Value::as_str).and_then(MessageType::parse);
    let message_id = input.get("messageId").and_then(|id| shape::id(Some(id)));
    reject_raw(settings, received, raw, reasons, message_type, message_id, input)
}

/// Rejects a raw payload that is not a message; see [`Pipeline::reject_payload`].
pub(super) fn reject_payload(
    settings: &WorkspaceSettings,
    received: &Received,
    raw: String,
    reasons: Vec<Violation>,
) -> Decision {
    reject_raw(settings, received, Raw { json: raw }, reasons, None, None, &Value::Null)
}

/// Builds the `MessageRejected` decision. `readable` is where the subject is
/// read from (the input, or the reshaped message in block mode).
fn reject_raw(
    settings: &WorkspaceSettings,
    received: &Received,
    raw: Raw,
    reasons: Vec<Violation>,
    message_type: Option<MessageType>,
    message_id: Option<String>,
    readable: &Value,
) -> Decision {
    let digest = hex::encode(Sha256::digest(raw.json.as_bytes()));
    let event_id = EventId(Uuid::new_v5(&settings.workspace.0, format!("rejected:{digest}").as_bytes()));
    let subject = ["userId", "anonymousId"].iter().find_map(|field| {
        let text = readable.get(*field)?.as_str()?.trim();
        (!text.is_empty()).then(|| text.to_owned())
    });
    // Read from the whole payload: what the cut leaves may not parse.
    let identifiers = rejected_identifiers(&raw.json, settings.default_region.as_deref());
    let (raw, truncated) = cut(raw.json, MessageRejected::RAW_LIMIT);
    let data = json!({
        "reasons": violations_value(&reasons),
        "raw": raw,
        "truncated": truncated,
        "message_type": message_type.map(MessageType::as_str),
        "message_id": message_id,
    });
    Decision::Rejected {
        event: NewEvent {
            event_id,
            workspace_id: settings.workspace,
            event_type: MessageRejected::TYPE.to_owned(),
            schema_version: 1,
            data,
            metadata: metadata(received, message_type),
            subject,
        },
        reasons,
        identifiers,
    }
}

/// The person an accepted message is about.
fn subject(message: &Value, message_type: MessageType) -> Option<String> {
    let user_id = message.get("userId").and_then(Value::as_str).map(str::to_owned);
    if message_type == MessageType::Alias {
        return user_id;
    }
    user_id.or_else(|| message.get("anonymousId").and_then(Value::as_str).map(str::to_owned))
}

/// The event's metadata: routing facts only (it is stored in clear).
fn metadata(received: &Received, message_type: Option<MessageType>) -> Value {
    json!({
        "source_id": received.source_id.to_string(),
        "received_at": received.at.to_rfc3339(),
        "request_id": received.request_id,
        "message_type": message_type.map(MessageType::as_str),
    })
}

fn violations_value(violations: &[Violation]) -> Value {
    // Serializing three strings per violation cannot fail.
    serde_json::to_value(violations).unwrap_or_else(|_| Value::Array(Vec::new()))
}

/// `text` cut to at most `limit` bytes on a char boundary, and whether it was.
fn cut(mut text: String, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use onepd_domain::WorkspaceId;
    use onepd_domain::events::workspace::Industry;
    use proptest::prelude::*;

    use super::*;
    use crate::ingest::TrackingPlan;

    fn pipeline() -> &'static Pipeline {
        static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
        PIPELINE.get_or_init(Pipeline::new)
    }

    fn settings() -> WorkspaceSettings {
        WorkspaceSettings {
            workspace: WorkspaceId(Uuid::from_u128(7)),
            industry: Industry::General,
            default_region: Some("US".into()),
            plan: None,
        }
    }

    fn received() -> Received {
        Received {
            at: enrich::parse_timestamp("2026-11-29T04:00:00.000Z").unwrap(),
            source_id: Uuid::from_u128(9),
            peer_ip: Some("192.0.2.1".parse().unwrap()),
            forwarded_ip: None,
            request_id: "req-1".into(),
        }
    }

    fn process(settings: &WorkspaceSettings, message: Value) -> Decision {
        pipeline().process(settings, &received(), message, || "generated-id".into())
    }

    fn accepted(decision: Decision) -> (NewEvent, MessageAccepted) {
        match decision {
            Decision::Accepted { event, .. } => {
                let data = serde_json::from_value(event.data.clone()).expect("a MessageAccepted");
                (event, data)
            }
            Decision::Rejected { reasons, .. } => panic!("rejected: {reasons:?}"),
        }
    }

    fn rejected(decision: Decision) -> (NewEvent, MessageRejected, Vec<Violation>) {
        match decision {
            Decision::Rejected { event, reasons, .. } => {
                let data = serde_json::from_value(event.data.clone()).expect("a MessageRejected");
                (event, data, reasons)
            }
            Decision::Accepted { event, .. } => panic!("accepted: {:?}", event.data),
        }
    }

    fn order_plan(mode: PlanMode) -> WorkspaceSettings {
        let plan = json!({"events": {"Order Completed": {
            "type": "object", "properties": {"revenue": {"type": "number"}},
        }}});
        WorkspaceSettings { plan: Some(Arc::new(TrackingPlan::compile(mode, &plan).unwrap())), ..settings() }
    }

    #[test]
    fn the_pipeline_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pipeline>();
        assert_send_sync::<WorkspaceSettings>();
    }

    #[test]
    fn a_track_is_accepted_with_its_enrichment() {
        let (event, data) = accepted(process(
            &settings(),
            json!({
                "type": "track", "event": "Signed Up", "userId": 42, "messageId": "m-1", "writeKey": "secret",
                "extra": true,
                "context": {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"},
            }),
        ));
        assert_eq!(event.event_type, "MessageAccepted");
        assert_eq!(event.event_id, EventId::for_message(settings().workspace, "m-1"));
        assert_eq!(event.subject.as_deref(), Some("42"));
        assert_eq!(
            event.metadata,
            json!({
                "source_id": Uuid::from_u128(9).to_string(), "received_at": "2026-11-29T04:00:00.000Z",
                "request_id": "req-1", "message_type": "track",
            })
        );
        assert_eq!(data.message["userId"], "42");
        assert_eq!(data.message["receivedAt"], "2026-11-29T04:00:00.000Z");
        assert_eq!(data.message["context"]["ip"], "192.0.2.1");
        assert!(data.message.get("writeKey").is_none() && data.message.get("extra").is_none());
        assert_eq!(data.enrichment["droppedFields"], json!(["extra"]));
        assert_eq!(data.enrichment["ipSource"], "peer");
        assert_eq!(data.enrichment["userAgent"]["os"]["family"], "iOS");
        assert!(!event.data.to_string().contains("secret"));
    }

    #[test]
    fn a_track_without_an_event_is_rejected_naming_the_event() {
        let (event, data, reasons) =
            rejected(process(&settings(), json!({"type": "track", "userId": "u1", "writeKey": "secret"})));
        assert_eq!(
            reasons,
            vec![Violation::new("event", "required", "event: expected a non-empty string, found nothing")]
        );
        assert_eq!(data.reasons, reasons);
        assert_eq!(event.event_type, "MessageRejected");
        assert_eq!(event.subject.as_deref(), Some("u1"));
        assert_eq!(data.message_type.as_deref(), Some("track"));
        assert!(!data.raw.contains("secret"), "{}", data.raw);
        assert_eq!(event.metadata["message_type"], "track");
    }

    #[test]
    fn a_retried_message_is_the_same_event() {
        let message = json!({"type": "identify", "userId": "u1", "messageId": "m-7", "traits": {"email": "a@b.co"}});
        let first = process(&settings(), message.clone());
        let second = pipeline().process(&settings(), &received(), message, || unreachable!("it has an id"));
        assert_eq!(first.event_id(), second.event_id());
        assert_eq!(first, second);
    }

    #[test]
    fn a_retried_bad_message_records_one_rejection() {
        let message = json!({"type": "track", "userId": "u1", "timestamp": "yesterday"});
        let first = process(&settings(), message.clone());
        let second = process(&settings(), message);
        assert_eq!(first.event_id(), second.event_id());
        let (_, _, reasons) = rejected(first);
        assert_eq!(reasons[1].message, r#"timestamp: expected RFC 3339, found "yesterday""#);
    }

    #[test]
    fn a_client_clock_ten_seconds_ahead_is_corrected() {
        let (_, data) = accepted(process(
            &settings(),
            json!({"type": "page", "anonymousId": "a1",
                   "timestamp": "2026-11-29T03:59:00.000Z", "sentAt": "2026-11-29T04:00:10.000Z"}),
        ));
        assert_eq!(data.message["timestamp"], "2026-11-29T03:58:50.000Z");
        assert_eq!(data.message["originalTimestamp"], "2026-11-29T03:59:00.000Z");
        assert_eq!(data.enrichment["clockSkewMs"], 10_000);
    }

    #[test]
    fn emails_and_phones_are_normalized_with_originals_kept() {
        let (_, data) = accepted(process(
            &settings(),
            json!({"type": "identify", "userId": "u1",
                   "traits": {"email": " Ann@Example.COM ", "phone": "(415) 555-2671", "first_name": "Ann"}}),
        ));
        assert_eq!(
            data.message["traits"],
            json!({"email": "ann@example.com", "phone": "+14155552671", "firstName": "Ann"})
        );
        assert_eq!(
            Value::Object(data.originals),
            json!({"traits.email": " Ann@Example.COM ", "traits.phone": "(415) 555-2671", "traits.first_name": "Ann"})
        );
        assert!(data.violations.is_empty());
    }

    #[test]
    fn a_bad_email_is_accepted_with_a_violation() {
        let (_, data) = accepted(process(
            &settings(),
            json!({"type": "identify", "userId": "u1", "traits": {"email": "not-an-email"}}),
        ));
        assert_eq!(
            data.violations,
            vec![Violation::new(
                "traits.email",
                "email",
                r#"traits.email: expected an email address, found "not-an-email""#
            )]
        );
    }

    #[test]
    fn a_plan_in_allow_mode_records_violations_on_the_accepted_event() {
        let (_, data) = accepted(process(
            &order_plan(PlanMode::Allow),
            json!({"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": "12 USD"}}),
        ));
        assert_eq!(data.violations.len(), 1);
        assert_eq!(
            data.violations[0].message,
            r#"properties.revenue: expected number, found "12 USD" (tracking plan, event "Order Completed")"#
        );
    }

    #[test]
    fn a_plan_in_block_mode_rejects_with_the_message_as_received() {
        let (event, data, reasons) = rejected(process(
            &order_plan(PlanMode::Block),
            json!({"type": "track", "userId": 5, "event": "Order Completed", "properties": {"revenue": "12 USD"},
                   "messageId": "m-9", "writeKey": "secret"}),
        ));
        assert_eq!(reasons[0].rule, "tracking_plan");
        assert_eq!(data.message_id.as_deref(), Some("m-9"));
        assert_eq!(event.subject.as_deref(), Some("5"));
        let raw: Value = serde_json::from_str(&data.raw).unwrap();
        assert_eq!(raw["userId"], 5);
        assert!(raw.get("writeKey").is_none());
    }

    #[test]
    fn a_plan_in_block_mode_accepts_a_message_that_keeps_it() {
        accepted(process(
            &order_plan(PlanMode::Block),
            json!({"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 12}}),
        ));
    }

    #[test]
    fn a_non_object_is_rejected_as_a_whole() {
        for input in [json!([1, 2]), json!(3), json!("track"), Value::Null] {
            let (event, data, reasons) = rejected(process(&settings(), input.clone()));
            assert_eq!((reasons[0].field.as_str(), reasons[0].rule.as_str()), ("", "type"));
            assert_eq!(data.raw, input.to_string());
            assert_eq!(event.subject, None);
            assert_eq!(event.metadata["message_type"], Value::Null);
        }
    }

    #[test]
    fn a_huge_rejected_message_is_cut_on_a_char_boundary() {
        let (_, data, _) =
            rejected(process(&settings(), json!({"type": "track", "userId": "u1", "name": "é".repeat(40_000)})));
        assert!(data.truncated);
        assert!(data.raw.len() <= MessageRejected::RAW_LIMIT && data.raw.len() > MessageRejected::RAW_LIMIT - 4);
    }

    #[test]
    fn a_generated_message_id_is_used_when_none_was_sent() {
        match process(&settings(), json!({"type": "screen", "anonymousId": "a1"})) {
            Decision::Accepted { event, message_id } => {
                assert_eq!(message_id, "generated-id");
                assert_eq!(event.event_id, EventId::for_message(settings().workspace, "generated-id"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_alias_is_about_its_user_id() {
        let (event, _) = accepted(process(
            &settings(),
            json!({"type": "alias", "userId": "u2", "previousId": "u1", "anonymousId": "a"}),
        ));
        assert_eq!(event.subject.as_deref(), Some("u2"));
    }

    /// Any JSON value, nested.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Segment-shaped messages with every field possibly wrong.
    fn segment_shaped() -> impl Strategy<Value = Value> {
        let field_value = || {
            prop_oneof![
                any_json(),
                "\\PC{0,8}".prop_map(Value::from),
                Just(Value::from("2026-11-29T04:00:00Z")),
                Just(Value::from("not-an-email")),
                Just(Value::from(" A@B.CO ")),
                Just(json!({"email": "x", "phone": 12, "first_name": " n ", "address": {"country": "germany"}})),
                Just(
                    json!({"ip": "nope", "userAgent": "Mozilla/5.0", "traits": {"phone": "+1 415 555 2671"}, "location": {"country": 3}})
                ),
            ]
        };
        let fields = prop::sample::select(vec![
            "type",
            "messageId",
            "userId",
            "anonymousId",
            "event",
            "name",
            "properties",
            "traits",
            "context",
            "integrations",
            "groupId",
            "previousId",
            "timestamp",
            "originalTimestamp",
            "sentAt",
            "writeKey",
            "other",
        ]);
        (
            prop::sample::select(vec!["track", "identify", "page", "screen", "group", "alias", "nope"]),
            prop::collection::vec((fields, field_value()), 0..8),
        )
            .prop_map(|(kind, fields)| {
                let mut message = Map::new();
                message.insert("type".into(), Value::from(kind));
                for (field, value) in fields {
                    message.insert(field.to_owned(), value);
                }
                Value::Object(message)
            })
    }

    fn check_total(message: Value, mode: Option<PlanMode>) -> Result<(), TestCaseError> {
        let settings = match mode {
            Some(mode) => order_plan(mode),
            None => settings(),
        };
        match process(&settings, message) {
            Decision::Rejected { reasons, event, .. } => {
                prop_assert!(!reasons.is_empty());
                prop_assert!(reasons.iter().all(|r| !r.rule.is_empty() && !r.message.is_empty()));
                prop_assert!(reasons.iter().any(|r| !r.field.is_empty() || r.rule == "type"));
                let data: MessageRejected = serde_json::from_value(event.data).unwrap();
                prop_assert!(data.raw.len() <= MessageRejected::RAW_LIMIT);
                prop_assert!(!data.raw.contains("writeKey"));
            }
            Decision::Accepted { event, message_id } => {
                prop_assert!(!message_id.trim().is_empty());
                let data: MessageAccepted = serde_json::from_value(event.data).unwrap();
                prop_assert!(data.message.get("writeKey").is_none());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_json_never_panics_and_every_rejection_has_a_reason(message in any_json()) {
            check_total(message, None)?;
        }

        #[test]
        fn wrongly_shaped_segment_messages_never_panic(message in segment_shaped(), mode in prop::option::of(prop_oneof![Just(PlanMode::Allow), Just(PlanMode::Block)])) {
            check_total(message, mode)?;
        }
    }
}
