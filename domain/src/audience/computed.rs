//! Computed traits: a value derived from a person's events, such as "orders
//! in the last 90 days" or "lifetime revenue", defined per workspace and
//! read like a trait (`computed lifetime_revenue > 500`).
//!
//! ```json
//! {"event": "Order Completed", "kind": "sum", "property": "revenue", "within": {"days": 365}}
//! ```
//!
//! Kinds: `count` (a number, 0 with no event), `sum`, `average`, `min`,
//! `max` (of a numeric property; none without a numeric value),
//! `most_frequent` (the value seen most often; a tie goes to the one seen
//! last), `first` and `last` (the property of the earliest and latest
//! event), `unique` (the distinct values, in the order first seen). Events
//! are counted as conditions count them: by name, at or before the time,
//! within the window, with every filter.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use super::condition::{Condition, EventCondition, PropertyFilter, Window};
use super::evaluate::{EventFact, Person, matching_events, path};
use crate::Timestamp;

/// How a computed trait's definition is stored and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedTrait {
    /// The events it reads, by name.
    pub event: String,
    /// What it computes.
    pub kind: Kind,
    /// The property it reads (dots reach into objects); every kind but
    /// `count` needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// Properties every event read must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<PropertyFilter>,
    /// Over the last `within` before the time it is read at; all time when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Window>,
}

/// What a computed trait computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// How many events.
    Count,
    /// The sum of a numeric property.
    Sum,
    /// Its average.
    Average,
    /// Its least value.
    Min,
    /// Its greatest value.
    Max,
    /// The value of a property seen most often.
    MostFrequent,
    /// The property of the earliest event.
    First,
    /// The property of the latest event.
    Last,
    /// The distinct values of a property.
    Unique,
}

impl ComputedTrait {
    /// Checks it as a `performed` condition is checked, and that every kind
    /// but `count` names a property (and `count` none).
    pub fn validate(&self) -> Result<(), String> {
        let condition = Condition::Performed(EventCondition {
            event: self.event.clone(),
            filters: self.filters.clone(),
            count: None,
            within: self.within,
            of: None,
        });
        condition.validate().map_err(|reason| reason.replacen("performed.", "", 1))?;
        match (&self.kind, self.property.as_deref().map(str::trim)) {
            (Kind::Count, Some(property)) => Err(format!("property: count counts events, found {property:?}")),
            (Kind::Count, None) => Ok(()),
            (_, None | Some("")) => Err(format!("property: {} needs a property, found none", self.kind_name())),
            _ => Ok(()),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Count => "count",
            Kind::Sum => "sum",
            Kind::Average => "average",
            Kind::Min => "min",
            Kind::Max => "max",
            Kind::MostFrequent => "most_frequent",
            Kind::First => "first",
            Kind::Last => "last",
            Kind::Unique => "unique",
        }
    }

    /// Its value for `person` at `now`; `None` where there is nothing to
    /// compute from (no event with the property, no numeric value).
    pub fn compute(&self, person: &dyn Person, now: Timestamp) -> Option<Value> {
        self.compute_with_edge(person, now).0
    }

    /// Its value for `person` at `now`, and the next time it can change with
    /// no new event: when the oldest event it counts leaves its window
    /// (`None` for an all-time trait, or with nothing in the window).
    pub fn compute_with_edge(&self, person: &dyn Person, now: Timestamp) -> (Option<Value>, Option<Timestamp>) {
        let performed = EventCondition {
            event: self.event.clone(),
            filters: self.filters.clone(),
            count: None,
            within: self.within,
            of: None,
        };
        let events = person.events(&self.event);
        let counted: Vec<&EventFact<'_>> = matching_events(&performed, &events, now);
        let edge =
            self.within.zip(counted.first()).map(|(window, oldest)| Timestamp(oldest.timestamp.0 + window.micros()));
        (self.value_of(&counted), edge)
    }

    /// Its value over the events it counts.
    fn value_of(&self, counted: &[&EventFact<'_>]) -> Option<Value> {
        if self.kind == Kind::Count {
            return Some(Value::from(counted.len()));
        }
        let property = self.property.as_deref().unwrap_or_default();
        let values: Vec<&Value> = counted
            .iter()
            .filter_map(|fact| fact.properties.and_then(|properties| path(properties, property)))
            .filter(|value| !value.is_null())
            .collect();
        let numbers = || values.iter().filter_map(|value| value.as_f64()).filter(|n| n.is_finite());
        match self.kind {
            Kind::Count => None,
            Kind::Sum => numbers().reduce(|a, b| a + b).map(number),
            Kind::Average => {
                let all: Vec<f64> = numbers().collect();
                (!all.is_empty()).then(|| number(all.iter().sum::<f64>() / all.len() as f64))
            }
            Kind::Min => numbers().reduce(f64::min).map(number),
            Kind::Max => numbers().reduce(f64::max).map(number),
            Kind::First => values.first().map(|value| (*value).clone()),
            Kind::Last => values.last().map(|value| (*value).clone()),
            Kind::Unique => {
                let mut unique: Vec<Value> = Vec::new();
                for value in values {
                    if !unique.contains(value) {
                        unique.push(value.clone());
                    }
                }
                Some(Value::Array(unique))
            }
            Kind::MostFrequent => {
                // (value, how often, where last seen): the most often, then the latest.
                let mut seen: Vec<(&Value, usize, usize)> = Vec::new();
                for (at, value) in values.iter().enumerate() {
                    match seen.iter_mut().find(|(known, _, _)| known == value) {
                        Some(entry) => {
                            entry.1 += 1;
                            entry.2 = at;
                        }
                        None => seen.push((value, 1, at)),
                    }
                }
                seen.into_iter().max_by_key(|(_, count, last)| (*count, *last)).map(|(value, _, _)| value.clone())
            }
        }
    }
}

/// A whole number as an integer, anything else as a float.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Position;
    use std::collections::BTreeMap;

    const DAY: i64 = 24 * 3_600 * 1_000_000;

    struct Orders(Vec<(i64, serde_json::Map<String, Value>)>);

    impl Person for Orders {
        fn trait_value(&self, _: &str) -> Option<&Value> {
            None
        }
        fn computed_trait(&self, _: &str) -> Option<Value> {
            None
        }
        fn events(&self, name: &str) -> Vec<EventFact<'_>> {
            if name != "Order Completed" {
                return Vec::new();
            }
            (self.0.iter().enumerate())
                .map(|(i, (day, properties))| EventFact {
                    position: Position(i as u64 + 1),
                    timestamp: Timestamp(day * DAY),
                    properties: Some(properties),
                })
                .collect()
        }
        fn in_group(&self, _: &str) -> bool {
            false
        }
        fn in_audience(&self, _: &str) -> bool {
            false
        }
    }

    fn orders() -> Orders {
        let order = |day: i64, properties: Value| (day, properties.as_object().cloned().unwrap());
        Orders(vec![
            order(1, json!({"revenue": 10, "currency": "EUR", "sku": "a"})),
            order(50, json!({"revenue": 20.5, "currency": "USD", "sku": "b"})),
            order(95, json!({"revenue": 30, "currency": "EUR", "sku": "a"})),
            order(99, json!({"currency": "GBP", "sku": "b"})),
        ])
    }

    fn computed(definition: Value) -> ComputedTrait {
        let computed: ComputedTrait = serde_json::from_value(definition).unwrap();
        computed.validate().unwrap();
        computed
    }

    #[test]
    fn every_kind_computes_from_the_events_in_its_window() {
        let person = orders();
        let now = Timestamp(100 * DAY);
        let cases: BTreeMap<&str, (Value, Value)> = BTreeMap::from([
            ("count", (json!({"event": "Order Completed", "kind": "count"}), json!(4))),
            (
                "count in 90 days",
                (json!({"event": "Order Completed", "kind": "count", "within": {"days": 90}}), json!(3)),
            ),
            ("sum", (json!({"event": "Order Completed", "kind": "sum", "property": "revenue"}), json!(60.5))),
            (
                "average",
                (
                    json!({"event": "Order Completed", "kind": "average", "property": "revenue"}),
                    json!(20.166666666666668),
                ),
            ),
            ("min", (json!({"event": "Order Completed", "kind": "min", "property": "revenue"}), json!(10))),
            ("max", (json!({"event": "Order Completed", "kind": "max", "property": "revenue"}), json!(30))),
            ("first", (json!({"event": "Order Completed", "kind": "first", "property": "currency"}), json!("EUR"))),
            ("last", (json!({"event": "Order Completed", "kind": "last", "property": "currency"}), json!("GBP"))),
            ("unique", (json!({"event": "Order Completed", "kind": "unique", "property": "sku"}), json!(["a", "b"]))),
            (
                "most frequent, tie to the latest",
                (json!({"event": "Order Completed", "kind": "most_frequent", "property": "sku"}), json!("b")),
            ),
            (
                "most frequent",
                (json!({"event": "Order Completed", "kind": "most_frequent", "property": "currency"}), json!("EUR")),
            ),
            (
                "filtered sum",
                (
                    json!({"event": "Order Completed", "kind": "sum", "property": "revenue",
                        "filters": [{"property": "currency", "op": "=", "value": "EUR"}]}),
                    json!(40),
                ),
            ),
        ]);
        for (name, (definition, expected)) in cases {
            assert_eq!(computed(definition).compute(&person, now), Some(expected), "{name}");
        }
        let none = computed(json!({"event": "Refund", "kind": "sum", "property": "amount"}));
        assert_eq!(none.compute(&person, now), None);
        let as_of_day_10 = computed(json!({"event": "Order Completed", "kind": "count"}));
        assert_eq!(as_of_day_10.compute(&person, Timestamp(10 * DAY)), Some(json!(1)));
    }

    #[test]
    fn definitions_are_checked_naming_the_field() {
        let cases = [
            (json!({"event": "x", "kind": "sum"}), "property: sum needs a property"),
            (json!({"event": "x", "kind": "count", "property": "p"}), "property: count counts events"),
            (json!({"event": " ", "kind": "count"}), "event: expected a name"),
            (json!({"event": "x", "kind": "count", "within": {"days": 0}}), "within: expected a window"),
        ];
        for (definition, expected) in cases {
            let computed: ComputedTrait = serde_json::from_value(definition.clone()).unwrap();
            let err = computed.validate().unwrap_err();
            assert!(err.starts_with(expected), "{definition}: {err}");
        }
        assert!(serde_json::from_value::<ComputedTrait>(json!({"event": "x", "kind": "median"})).is_err());
    }
}
