//! Classifications declared by a tracking plan: the `"classification"`
//! keyword a property's JSON Schema may carry.
//!
//! ```json
//! { "events": { "Appointment Booked": { "type": "object", "properties": {
//!       "diagnosis": { "type": "string", "classification": "phi" },
//!       "patient": { "type": "object", "properties": {
//!           "dob": { "type": "string", "classification": "identifier" } } },
//!       "products": { "type": "array", "items": { "type": "object", "properties": {
//!           "name": { "type": "string", "classification": "free_text" } } } } } } },
//!   "identify": { "type": "object", "properties": {
//!       "plan": { "type": "string", "classification": "financial" } } } }
//! ```
//!
//! gives `diagnosis`, `patient.dob` and `products[].name` for the event and
//! `plan` for traits. JSON Schema validators ignore keywords they do not
//! know, so the same document still validates messages.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Classification;

/// Classifications from a tracking plan, by where a field sits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Annotations {
    /// By track event name, then by property path relative to `properties`
    /// (`diagnosis`, `patient.dob`, `products[].name`).
    pub events: BTreeMap<String, BTreeMap<String, Classification>>,
    /// By trait path relative to `traits` (identify and group calls) or
    /// `context.traits` (any call). Where the identify and group schemas
    /// disagree, identify's classification is kept.
    pub traits: BTreeMap<String, Classification>,
    /// Every property path the plan's event schemas name, classified or
    /// not, by track event name: names the plan knows, which the delivery
    /// ledger may write out.
    #[serde(skip)]
    pub declared_events: BTreeMap<String, BTreeSet<String>>,
    /// Every trait path the identify and group schemas name.
    #[serde(skip)]
    pub declared_traits: BTreeSet<String>,
}

impl Annotations {
    /// Reads the `"classification"` keywords of a tracking-plan document
    /// (`{"events": {name: schema}, "identify": schema, "group": schema}`;
    /// other keys are left alone), recursing into the `properties` of object
    /// schemas, the `items` and `prefixItems` of array schemas (`[]` in the
    /// path) and the branches of `allOf`, `anyOf` and `oneOf`.
    ///
    /// An unknown classification, or one on a whole event's or traits'
    /// schema rather than on a property, is an error naming where it is:
    /// `events."Appointment Booked".properties.diagnosis.classification:
    /// expected one of identifier, phi, …, found "phii"`.
    pub fn from_plan(plan: &Value) -> Result<Annotations, String> {
        let Value::Object(plan) = plan else {
            return Err(format!("tracking plan: expected an object, found {plan}"));
        };
        let mut annotations = Annotations::default();
        match plan.get("events") {
            None => {}
            Some(Value::Object(events)) => {
                for (event, schema) in events {
                    let mut paths = BTreeMap::new();
                    let mut declared = BTreeSet::new();
                    let location = format!("events.{}", Value::from(event.as_str()));
                    collect(schema, &location, "", &mut paths, &mut declared)?;
                    if !paths.is_empty() {
                        annotations.events.insert(event.clone(), paths);
                    }
                    annotations.declared_events.insert(event.clone(), declared);
                }
            }
            Some(other) => {
                return Err(format!("events: expected an object of JSON Schemas by event name, found {other}"));
            }
        }
        for section in ["identify", "group"] {
            if let Some(schema) = plan.get(section) {
                let mut paths = BTreeMap::new();
                collect(schema, section, "", &mut paths, &mut annotations.declared_traits)?;
                for (path, class) in paths {
                    annotations.traits.entry(path).or_insert(class);
                }
            }
        }
        Ok(annotations)
    }

    /// The plan's classification of the field at `path`, a full dotted
    /// message path (`properties.diagnosis`, `properties.products[].name`,
    /// `traits.plan`, `context.traits.plan`), in a message whose track event
    /// name is `event_name`.
    pub fn of(&self, event_name: Option<&str>, path: &str) -> Option<Classification> {
        if let Some(property) = path.strip_prefix("properties.") {
            return self.events.get(event_name?)?.get(property).copied();
        }
        let traits = path.strip_prefix("traits.").or_else(|| path.strip_prefix("context.traits."))?;
        self.traits.get(traits).copied()
    }

    /// Whether the plan names the field at `path` (a full dotted message
    /// path, as for [`Annotations::of`]), classified or not.
    pub fn declares(&self, event_name: Option<&str>, path: &str) -> bool {
        if let Some(property) = path.strip_prefix("properties.") {
            return event_name
                .and_then(|name| self.declared_events.get(name))
                .is_some_and(|declared| declared.contains(property));
        }
        path.strip_prefix("traits.")
            .or_else(|| path.strip_prefix("context.traits."))
            .is_some_and(|traits| self.declared_traits.contains(traits))
    }
}

/// Adds the classifications found in `schema` (at `location` in the plan,
/// describing the field at `path` relative to its root) to `paths`.
fn collect(
    schema: &Value,
    location: &str,
    path: &str,
    paths: &mut BTreeMap<String, Classification>,
    declared: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !path.is_empty() {
        declared.insert(path.to_owned());
    }
    // `true`, `false` and other non-object schemas carry no keywords.
    let Value::Object(schema) = schema else {
        return Ok(());
    };
    if let Some(name) = schema.get("classification") {
        let location = format!("{location}.classification");
        let class = name
            .as_str()
            .and_then(|name| name.parse::<Classification>().ok())
            .ok_or_else(|| format!("{location}: expected one of {}, found {name}", Classification::names()))?;
        if path.is_empty() {
            return Err(format!("{location}: expected on a property's schema, found on the whole schema"));
        }
        paths.insert(path.to_owned(), class);
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (key, property) in properties {
            let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            collect(property, &format!("{location}.properties.{key}"), &child, paths, declared)?;
        }
    }
    let items = format!("{path}[]");
    match schema.get("items") {
        Some(Value::Array(tuple)) => {
            for (i, item) in tuple.iter().enumerate() {
                collect(item, &format!("{location}.items[{i}]"), &items, paths, declared)?;
            }
        }
        Some(item) => collect(item, &format!("{location}.items"), &items, paths, declared)?,
        None => {}
    }
    if let Some(Value::Array(tuple)) = schema.get("prefixItems") {
        for (i, item) in tuple.iter().enumerate() {
            collect(item, &format!("{location}.prefixItems[{i}]"), &items, paths, declared)?;
        }
    }
    for keyword in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(keyword) {
            for (i, branch) in branches.iter().enumerate() {
                collect(branch, &format!("{location}.{keyword}[{i}]"), path, paths, declared)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan() -> Value {
        json!({
            "events": {
                "Appointment Booked": {"type": "object", "properties": {
                    "diagnosis": {"type": "string", "classification": "phi"},
                    "value": {"type": "number"},
                    "patient": {"type": "object", "properties": {
                        "dob": {"type": "string", "classification": "identifier"},
                    }},
                    "products": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string", "classification": "free_text"},
                    }}},
                }},
                "Signed Up": {"type": "object"},
            },
            "identify": {"type": "object", "properties": {"plan": {"classification": "financial"}}},
            "group": {"type": "object", "properties": {
                "plan": {"classification": "other_sensitive"},
                "industry": {"anyOf": [{"type": "string", "classification": "other_sensitive"}]},
            }},
            "allowUnplannedEvents": false,
        })
    }

    #[test]
    fn classifications_are_read_from_nested_objects_and_arrays() {
        let annotations = Annotations::from_plan(&plan()).unwrap();
        let event = &annotations.events["Appointment Booked"];
        assert_eq!(event.get("diagnosis"), Some(&Classification::Phi));
        assert_eq!(event.get("patient.dob"), Some(&Classification::Identifier));
        assert_eq!(event.get("products[].name"), Some(&Classification::FreeText));
        assert_eq!(event.len(), 3);
        assert!(!annotations.events.contains_key("Signed Up"));
    }

    #[test]
    fn identify_wins_over_group_and_both_feed_traits() {
        let annotations = Annotations::from_plan(&plan()).unwrap();
        assert_eq!(annotations.traits.get("plan"), Some(&Classification::Financial));
        assert_eq!(annotations.traits.get("industry"), Some(&Classification::OtherSensitive));
    }

    #[test]
    fn a_field_is_looked_up_by_its_full_message_path() {
        let annotations = Annotations::from_plan(&plan()).unwrap();
        let booked = Some("Appointment Booked");
        assert_eq!(annotations.of(booked, "properties.diagnosis"), Some(Classification::Phi));
        assert_eq!(annotations.of(booked, "properties.patient.dob"), Some(Classification::Identifier));
        assert_eq!(annotations.of(booked, "properties.products[].name"), Some(Classification::FreeText));
        assert_eq!(annotations.of(booked, "properties.value"), None);
        assert_eq!(annotations.of(Some("Signed Up"), "properties.diagnosis"), None);
        assert_eq!(annotations.of(None, "properties.diagnosis"), None);
        assert_eq!(annotations.of(None, "traits.plan"), Some(Classification::Financial));
        assert_eq!(annotations.of(booked, "context.traits.plan"), Some(Classification::Financial));
        assert_eq!(annotations.of(booked, "diagnosis"), None);
    }

    #[test]
    fn an_unknown_classification_is_named_with_where_it_is() {
        let plan = json!({"events": {"Appointment Booked": {"properties": {"diagnosis": {"classification": "phii"}}}}});
        assert_eq!(
            Annotations::from_plan(&plan).unwrap_err(),
            "events.\"Appointment Booked\".properties.diagnosis.classification: expected one of identifier, phi, \
             financial, free_text, url, device, location, other_sensitive, found \"phii\""
        );
        let plan = json!({"identify": {"properties": {"tags": {"items": {"classification": 3}}}}});
        assert!(
            Annotations::from_plan(&plan).unwrap_err().starts_with("identify.properties.tags.items.classification: ")
        );
    }

    #[test]
    fn a_classification_of_a_whole_schema_is_refused() {
        let plan = json!({"identify": {"classification": "phi"}});
        assert_eq!(
            Annotations::from_plan(&plan).unwrap_err(),
            "identify.classification: expected on a property's schema, found on the whole schema"
        );
    }

    #[test]
    fn a_plan_without_classifications_has_no_annotations() {
        assert_eq!(Annotations::from_plan(&json!({})).unwrap(), Annotations::default());
        let declared_only = Annotations::from_plan(&json!({"events": {"A": true}})).unwrap();
        assert!(declared_only.events.is_empty() && declared_only.traits.is_empty());
        assert!(Annotations::from_plan(&json!([])).is_err());
    }
}
