//! Consent: which categories of use a person granted, as a message states
//! them, and whether a destination that needs some categories may receive
//! an event.
//!
//! Two shapes are read, so both SDK families work unchanged:
//!
//! * Segment's `context.consent.categoryPreferences`: `{"marketing": true,
//!   "analytics": false}` (what onepd.js and Segment's consent wrappers send);
//! * RudderStack's `context.consentManagement`: `{"allowedConsentIds":
//!   ["marketing"], "deniedConsentIds": ["ads"]}`.
//!
//! A message that states no consent inherits the person's latest stated
//! consent (the profile's, as of the event): a consent call — onepd.js
//! `consent()`, `POST /v1/consent`, or any message carrying consent — holds
//! for the messages after it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The categories `message` states, granted (`true`) or refused (`false`),
/// or `None` when it states none.
pub fn stated(message: &Value) -> Option<BTreeMap<String, bool>> {
    message.pointer("/context/consent").and_then(categories).or_else(|| categories_rudderstack(message))
}

/// The consent object a profile keeps for `message`: its `context.consent`
/// as sent, or RudderStack's `consentManagement` as
/// `{"categoryPreferences": {...}}`; `None` when it states none.
pub fn profile_consent(message: &Value) -> Option<Value> {
    if let Some(consent) = message.pointer("/context/consent").filter(|consent| consent.is_object()) {
        return Some(consent.clone());
    }
    let categories = categories_rudderstack(message)?;
    let preferences: Map<String, Value> =
        categories.into_iter().map(|(name, granted)| (name, Value::Bool(granted))).collect();
    Some(serde_json::json!({ "categoryPreferences": preferences }))
}

/// The categories of a consent object (`{"categoryPreferences": {...}}`).
pub fn categories(consent: &Value) -> Option<BTreeMap<String, bool>> {
    let preferences = consent.get("categoryPreferences")?.as_object()?;
    Some(preferences.iter().filter_map(|(name, granted)| Some((name.clone(), granted.as_bool()?))).collect())
}

fn categories_rudderstack(message: &Value) -> Option<BTreeMap<String, bool>> {
    let management = message.pointer("/context/consentManagement")?.as_object()?;
    let mut found = BTreeMap::new();
    for (field, granted) in [("allowedConsentIds", true), ("deniedConsentIds", false)] {
        for id in management.get(field).and_then(Value::as_array).into_iter().flatten() {
            let name = match id {
                Value::String(name) => name.clone(),
                Value::Number(number) => number.to_string(),
                _ => continue,
            };
            // A category both allowed and denied is denied.
            found.entry(name).and_modify(|current| *current &= granted).or_insert(granted);
        }
    }
    (!found.is_empty()).then_some(found)
}

/// Whether `required` categories are all granted in `granted`; otherwise
/// why not (naming the category, never anything of the person).
pub fn check(required: &[String], granted: Option<&BTreeMap<String, bool>>) -> Result<(), String> {
    if required.is_empty() {
        return Ok(());
    }
    let Some(granted) = granted else {
        return Err(format!("no consent stated; the destination needs {}", quoted(required)));
    };
    for category in required {
        match granted.get(category) {
            Some(true) => {}
            Some(false) => return Err(format!("consent {category:?} refused")),
            None => return Err(format!("consent {category:?} not stated")),
        }
    }
    Ok(())
}

fn quoted(categories: &[String]) -> String {
    categories.iter().map(|category| format!("{category:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn segment_and_rudderstack_shapes_state_the_same_categories() {
        let segment = json!({"context": {"consent": {"categoryPreferences": {"marketing": true, "ads": false}}}});
        let rudder = json!({"context": {"consentManagement": {
            "allowedConsentIds": ["marketing"], "deniedConsentIds": ["ads"]}}});
        assert_eq!(stated(&segment), stated(&rudder));
        assert!(stated(&segment).unwrap()["marketing"]);
        assert_eq!(profile_consent(&rudder), Some(json!({"categoryPreferences": {"marketing": true, "ads": false}})));
        assert_eq!(stated(&json!({"context": {}})), None);
    }

    #[test]
    fn a_destination_gets_an_event_only_when_every_category_it_needs_is_granted() {
        let needs = vec!["marketing".to_owned(), "ads".to_owned()];
        let granted: BTreeMap<String, bool> = [("marketing".into(), true), ("ads".into(), true)].into();
        assert_eq!(check(&needs, Some(&granted)), Ok(()));
        let refused: BTreeMap<String, bool> = [("marketing".into(), true), ("ads".into(), false)].into();
        assert_eq!(check(&needs, Some(&refused)), Err("consent \"ads\" refused".into()));
        let partial: BTreeMap<String, bool> = [("marketing".into(), true)].into();
        assert_eq!(check(&needs, Some(&partial)), Err("consent \"ads\" not stated".into()));
        assert!(check(&needs, None).unwrap_err().starts_with("no consent stated"));
        assert_eq!(check(&[], None), Ok(()));
    }
}
