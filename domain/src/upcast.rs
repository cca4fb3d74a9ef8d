//! Upcasting: old `schema_version`s of an event type are turned into the
//! current shape when read. Stored events are never rewritten.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Turns the data of one (event type, schema version) into the next version.
pub type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The registry of upcasters, keyed by (event type, schema version). Each
/// upcaster lifts data by exactly one version; reading applies them in turn
/// until no upcaster is registered for the version reached.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

/// An upcaster refused the stored data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upcasting {event_type} from schema version {schema_version}: {reason}")]
pub struct UpcastError {
    /// The event type.
    pub event_type: String,
    /// The version the failing upcaster starts from.
    pub schema_version: u32,
    /// What the upcaster said.
    pub reason: String,
}

impl Upcasters {
    /// An empty registry: events are read as stored.
    pub fn new() -> Upcasters {
        Upcasters::default()
    }

    /// Registers the step that lifts `event_type` data from `from_version` to
    /// `from_version + 1`. Registering the same key twice replaces the step.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Upcasters {
        self.steps.insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// Whether an event of `event_type` stored at `schema_version` is lifted
    /// on read.
    pub fn lifts(&self, event_type: &str, schema_version: u32) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event_type.to_owned(), schema_version))
    }

    /// Lifts `data` from `schema_version` to the newest version registered and
    /// returns that version with the data.
    pub fn upcast(&self, event_type: &str, schema_version: u32, data: Value) -> Result<(u32, Value), UpcastError> {
        let mut version = schema_version;
        let mut data = data;
        // Owned keys per lookup would allocate on every read; most event types
        // have no upcaster, so check cheaply first.
        if self.steps.is_empty() {
            return Ok((version, data));
        }
        let mut key = (event_type.to_owned(), version);
        while let Some(step) = self.steps.get(&key) {
            data = step(data).map_err(|reason| UpcastError {
                event_type: event_type.to_owned(),
                schema_version: version,
                reason,
            })?;
            version += 1;
            key.1 = version;
        }
        Ok((version, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_versions_are_lifted_step_by_step() {
        let upcasters = Upcasters::new()
            .register("OrderPlaced", 1, |mut v| {
                v["currency"] = json!("USD");
                Ok(v)
            })
            .register("OrderPlaced", 2, |v| Ok(json!({ "order": v })));
        let (version, data) = upcasters.upcast("OrderPlaced", 1, json!({"total": 5})).unwrap();
        assert_eq!(version, 3);
        assert_eq!(data, json!({"order": {"total": 5, "currency": "USD"}}));
    }

    #[test]
    fn current_versions_and_other_types_pass_unchanged() {
        let upcasters = Upcasters::new().register("OrderPlaced", 1, |_| Ok(json!(null)));
        assert_eq!(upcasters.upcast("OrderPlaced", 2, json!(1)).unwrap(), (2, json!(1)));
        assert_eq!(upcasters.upcast("Other", 1, json!(1)).unwrap(), (1, json!(1)));
    }

    #[test]
    fn a_refusing_upcaster_names_the_type_and_version() {
        let upcasters = Upcasters::new().register("OrderPlaced", 1, |_| Err("total missing".into()));
        let err = upcasters.upcast("OrderPlaced", 1, json!({})).unwrap_err();
        assert_eq!(err.to_string(), "upcasting OrderPlaced from schema version 1: total missing");
    }
}
