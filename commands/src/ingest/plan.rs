//! Tracking plans: what a workspace says its messages look like, checked
//! against every normalized message.
//!
//! A plan document is a JSON object; every key is optional:
//!
//! ```json
//! {
//!   "events": { "Order Completed": { "type": "object",
//!                 "properties": { "revenue": { "type": "number" } },
//!                 "required": ["revenue"] } },
//!   "identify": { "type": "object", "properties": { "email": { "type": "string" } } },
//!   "group": { "type": "object" },
//!   "allowUnplannedEvents": true
//! }
//! ```
//!
//! * `events`: a JSON Schema for a `track` message's `properties`, by event
//!   name.
//! * `identify`, `group`: a JSON Schema for the `traits` of those messages.
//! * `allowUnplannedEvents` (default `true`): when `false`, a `track` whose
//!   event is not named in `events` breaks the plan (rule `unplanned_event`).
//!
//! Absent `properties` / `traits` are checked as `{}`. Other message types
//! (`page`, `screen`, `alias`) are not checked.
//!
//! **Invariants:** schemas are compiled once, by [`TrackingPlan::compile`];
//! compiling never reaches the network (the `jsonschema` crate is built
//! without its remote resolvers, so a remote `$ref` is a [`PlanError`]).
//! Violations carry rule `tracking_plan` and name the field as a dotted path
//! (`properties.revenue`).
//!
//! A property's schema may carry `"classification": "phi"` (any
//! [`onepd_domain::policy::Classification`] name) for the sensitive-data
//! policy; validation ignores the keyword, and compiling refuses an unknown
//! name ([`PlanError::Classification`]).

use std::collections::HashMap;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use onepd_domain::events::message::Violation;
use onepd_domain::events::workspace::PlanMode;
use onepd_domain::policy::Annotations;
use serde_json::{Map, Value};

use super::shape::describe;

/// A compiled tracking plan.
pub struct TrackingPlan {
    /// What happens to a message that breaks the plan.
    mode: PlanMode,
    /// Schemas for `track` properties, by event name.
    events: HashMap<String, Validator>,
    /// Schema for `identify` traits.
    identify: Option<Validator>,
    /// Schema for `group` traits.
    group: Option<Validator>,
    /// Whether a `track` event not named in `events` is fine.
    allow_unplanned_events: bool,
}

/// A plan document that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The document, or one of its keys, has the wrong JSON type.
    #[error("{field}: expected {expected}, found {found}")]
    Shape {
        /// The key (`tracking plan` for the document itself).
        field: String,
        /// What it should be.
        expected: String,
        /// What it is.
        found: String,
    },
    /// A key the plan does not know (a typo would otherwise silently check
    /// nothing).
    #[error("tracking plan: expected keys events, identify, group, allowUnplannedEvents, found \"{0}\"")]
    UnknownKey(String),
    /// A schema is not a valid JSON Schema.
    #[error("tracking plan, {section}: invalid JSON Schema: {reason}")]
    Schema {
        /// Where the schema is: `event "Order Completed"`, `identify` or `group`.
        section: String,
        /// What the validator said.
        reason: String,
    },
    /// A `"classification"` keyword names no classification, or sits on a
    /// whole schema rather than a property (see
    /// [`onepd_domain::policy::Annotations::from_plan`]).
    #[error("tracking plan, {0}")]
    Classification(String),
}

impl TrackingPlan {
    /// Compiles a plan document (see the module doc for its shape).
    pub fn compile(mode: PlanMode, plan: &Value) -> Result<TrackingPlan, PlanError> {
        let Value::Object(document) = plan else {
            return Err(shape_error("tracking plan", "an object", plan));
        };
        let mut compiled =
            TrackingPlan { mode, events: HashMap::new(), identify: None, group: None, allow_unplanned_events: true };
        for (key, value) in document {
            match key.as_str() {
                "events" => {
                    let Value::Object(events) = value else {
                        return Err(shape_error("events", "an object of JSON Schemas by event name", value));
                    };
                    for (event, schema) in events {
                        let validator = validator(schema, || format!("event {}", Value::from(event.as_str())))?;
                        compiled.events.insert(event.clone(), validator);
                    }
                }
                "identify" => compiled.identify = Some(validator(value, || "identify".to_owned())?),
                "group" => compiled.group = Some(validator(value, || "group".to_owned())?),
                "allowUnplannedEvents" => {
                    compiled.allow_unplanned_events =
                        value.as_bool().ok_or_else(|| shape_error("allowUnplannedEvents", "true or false", value))?;
                }
                other => return Err(PlanError::UnknownKey(other.to_owned())),
            }
        }
        // The sensitive-data policy reads the same document; a classification
        // it cannot read would silently protect nothing.
        Annotations::from_plan(plan).map_err(PlanError::Classification)?;
        Ok(compiled)
    }

    /// What happens to a message that breaks the plan.
    pub fn mode(&self) -> PlanMode {
        self.mode
    }

    /// Every way `message` (normalized, in its stored shape) breaks the plan.
    pub fn check(&self, message: &Value) -> Vec<Violation> {
        let empty = Value::Object(Map::new());
        match message.get("type").and_then(Value::as_str) {
            Some("track") => {
                let Some(event) = message.get("event").and_then(Value::as_str) else {
                    return Vec::new();
                };
                let context = format!("tracking plan, event {}", Value::from(event));
                match self.events.get(event) {
                    Some(validator) => {
                        violations(validator, message.get("properties").unwrap_or(&empty), "properties", &context)
                    }
                    None if self.allow_unplanned_events => Vec::new(),
                    None => vec![Violation::new(
                        "event",
                        "unplanned_event",
                        format!(
                            "event: expected an event named in the tracking plan, found {}",
                            describe(&event.into())
                        ),
                    )],
                }
            }
            Some(kind @ ("identify" | "group")) => {
                let validator = if kind == "identify" { &self.identify } else { &self.group };
                match validator {
                    Some(validator) => violations(
                        validator,
                        message.get("traits").unwrap_or(&empty),
                        "traits",
                        &format!("tracking plan, {kind}"),
                    ),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for TrackingPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut events: Vec<&String> = self.events.keys().collect();
        events.sort();
        f.debug_struct("TrackingPlan")
            .field("mode", &self.mode)
            .field("events", &events)
            .field("identify", &self.identify.is_some())
            .field("group", &self.group.is_some())
            .field("allow_unplanned_events", &self.allow_unplanned_events)
            .finish()
    }
}

fn shape_error(field: &str, expected: &str, found: &Value) -> PlanError {
    PlanError::Shape { field: field.to_owned(), expected: expected.to_owned(), found: describe(found) }
}

fn validator(schema: &Value, section: impl Fn() -> String) -> Result<Validator, PlanError> {
    jsonschema::validator_for(schema)
        .map_err(|error| PlanError::Schema { section: section(), reason: error.to_string() })
}

/// The validator's errors for `instance` (found at `root` in the message) as
/// violations.
fn violations(validator: &Validator, instance: &Value, root: &str, context: &str) -> Vec<Violation> {
    validator
        .iter_errors(instance)
        .map(|error| {
            let mut field = root.to_owned();
            for segment in error.instance_path().iter() {
                match segment {
                    LocationSegment::Property(name) => {
                        field.push('.');
                        field.push_str(&name);
                    }
                    LocationSegment::Index(index) => field.push_str(&format!("[{index}]")),
                }
            }
            let what = describe_error(&error, &mut field);
            let message = format!("{field}: {what} ({context})");
            Violation::new(field, "tracking_plan", message)
        })
        .collect()
}

/// The error in the house style (`expected number, found "12 USD"`) where
/// the kind allows it, else as the validator words it. A missing required
/// property moves `field` to the property itself.
fn describe_error(error: &ValidationError<'_>, field: &mut String) -> String {
    match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(single) => single.to_string(),
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            format!("expected {expected}, found {}", describe(error.instance()))
        }
        ValidationErrorKind::Required { property } => {
            if let Some(name) = property.as_str() {
                field.push('.');
                field.push_str(name);
            }
            "expected a value, found nothing".to_owned()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(mode: PlanMode) -> TrackingPlan {
        TrackingPlan::compile(
            mode,
            &json!({
                "events": {"Order Completed": {
                    "type": "object",
                    "properties": {"revenue": {"type": "number"}, "items": {"type": "array", "items": {"type": "string"}}},
                    "required": ["revenue"],
                }},
                "identify": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
                "allowUnplannedEvents": false,
            }),
        )
        .unwrap()
    }

    #[test]
    fn a_wrongly_typed_property_is_named_with_its_path_and_event() {
        let violations = plan(PlanMode::Allow)
            .check(&json!({"type": "track", "event": "Order Completed", "properties": {"revenue": "12 USD"}}));
        assert_eq!(
            violations,
            vec![Violation::new(
                "properties.revenue",
                "tracking_plan",
                r#"properties.revenue: expected number, found "12 USD" (tracking plan, event "Order Completed")"#
            )]
        );
    }

    #[test]
    fn a_missing_required_property_is_named() {
        let violations = plan(PlanMode::Allow)
            .check(&json!({"type": "track", "event": "Order Completed", "properties": {"items": ["a", 3]}}));
        let mut fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["properties.items[1]", "properties.revenue"]);
        assert_eq!(violations.len(), 2);
        assert!(violations.iter().any(|v| v.message
            == r#"properties.revenue: expected a value, found nothing (tracking plan, event "Order Completed")"#));
    }

    #[test]
    fn an_unplanned_event_breaks_a_plan_that_forbids_them() {
        let violations = plan(PlanMode::Block).check(&json!({"type": "track", "event": "Signed Up"}));
        assert_eq!(violations[0].rule, "unplanned_event");
        assert_eq!(violations[0].message, r#"event: expected an event named in the tracking plan, found "Signed Up""#);
    }

    #[test]
    fn identify_traits_are_checked() {
        let violations = plan(PlanMode::Allow).check(&json!({"type": "identify", "traits": {"age": -1}}));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "traits.age");
        assert!(violations[0].message.ends_with("(tracking plan, identify)"), "{}", violations[0].message);
    }

    #[test]
    fn an_empty_plan_checks_nothing() {
        let plan = TrackingPlan::compile(PlanMode::Block, &json!({})).unwrap();
        assert!(plan.check(&json!({"type": "track", "event": "Anything"})).is_empty());
        assert_eq!(plan.mode(), PlanMode::Block);
    }

    #[test]
    fn an_invalid_schema_names_the_event() {
        let error =
            TrackingPlan::compile(PlanMode::Allow, &json!({"events": {"Signed Up": {"type": 12}}})).unwrap_err();
        assert!(matches!(&error, PlanError::Schema { section, .. } if section == r#"event "Signed Up""#), "{error}");
        assert!(error.to_string().starts_with(r#"tracking plan, event "Signed Up": invalid JSON Schema: "#));
    }

    #[test]
    fn a_remote_reference_is_refused_without_reaching_the_network() {
        let plan = json!({"identify": {"$ref": "https://example.com/schema.json"}});
        assert!(matches!(TrackingPlan::compile(PlanMode::Allow, &plan), Err(PlanError::Schema { .. })));
    }

    #[test]
    fn a_plan_with_an_unknown_classification_is_refused() {
        let plan = json!({"events": {"Appointment Booked": {
            "type": "object",
            "properties": {"diagnosis": {"type": "string", "classification": "phii"}},
        }}});
        let error = TrackingPlan::compile(PlanMode::Allow, &plan).unwrap_err();
        assert!(matches!(error, PlanError::Classification(_)), "{error}");
        assert!(
            error.to_string().starts_with(
                r#"tracking plan, events."Appointment Booked".properties.diagnosis.classification: expected one of identifier, phi, "#
            ),
            "{error}"
        );
        assert!(error.to_string().ends_with(r#", found "phii""#), "{error}");
    }

    #[test]
    fn a_classified_property_still_validates_as_its_schema_says() {
        let plan = json!({"events": {"Appointment Booked": {
            "type": "object",
            "properties": {"diagnosis": {"type": "string", "classification": "phi"}},
        }}});
        let plan = TrackingPlan::compile(PlanMode::Allow, &plan).unwrap();
        let message = json!({"type": "track", "event": "Appointment Booked", "properties": {"diagnosis": 3}});
        assert_eq!(plan.check(&message).len(), 1);
        let message = json!({"type": "track", "event": "Appointment Booked", "properties": {"diagnosis": "flu"}});
        assert!(plan.check(&message).is_empty());
    }

    #[test]
    fn a_misspelt_key_is_refused() {
        let error = TrackingPlan::compile(PlanMode::Allow, &json!({"event": {}})).unwrap_err();
        assert_eq!(error, PlanError::UnknownKey("event".into()));
        let error = TrackingPlan::compile(PlanMode::Allow, &json!([])).unwrap_err();
        assert_eq!(error.to_string(), "tracking plan: expected an object, found an array");
    }
}
