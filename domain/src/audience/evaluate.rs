//! Whether one person meets a condition as of one time, why, and until when.
//!
//! # Semantics, where the language leaves room
//!
//! * **Time.** Only events at or before the evaluation time count: an
//!   evaluation as of a past time sees the person as they were then.
//! * **`within N days`** counts the events in the N days up to the
//!   evaluation time, the start excluded: an event leaves the window
//!   exactly N days after it happened. That instant is a window's *edge*;
//!   the next edge of any part of the condition is
//!   [`Verdict::changes_at`], when the answer can change with no new event.
//! * **`within N days of "F"`** counts the events from the person's latest
//!   `F` (at or before the evaluation time) to N days after it. A person
//!   with no `F` does not meet it, whatever the count, so `not performed
//!   "Order Completed" within 7 days of "Product Viewed"` holds for a
//!   person who never viewed a product; pair it with `performed "Product
//!   Viewed"` for "viewed and did not buy". Such a window starts at an event
//!   and ends later, so it has no edge of its own: only a new event changes
//!   it.
//! * **Comparisons.** `=` compares numbers by value and anything else as
//!   JSON; an absent trait is `null` for `=` and `!=`; `>`, `>=`, `<`, `<=`
//!   hold only for JSON numbers; `contains` looks into a string (as text)
//!   or an array (for an equal element); `exists` is present and not null.

use serde::Serialize;
use serde_json::{Map, Value};

use super::condition::{Comparison, Condition, Count, EventCondition, Operator};
use crate::{Position, Timestamp};

/// What a condition is evaluated against: one person, as the profiles
/// projection knows them.
pub trait Person {
    /// A profile trait's current value.
    fn trait_value(&self, name: &str) -> Option<&Value>;
    /// A computed trait's value.
    fn computed_trait(&self, name: &str) -> Option<Value>;
    /// The person's events of this name (a track's `event`, else the call
    /// type), oldest first.
    fn events(&self, name: &str) -> Vec<EventFact<'_>>;
    /// Whether a `group` call put them in this group.
    fn in_group(&self, group: &str) -> bool;
    /// Whether they are in this other audience.
    fn in_audience(&self, audience: &str) -> bool;
}

/// One event of a person, as a condition reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventFact<'a> {
    /// Its position in the log.
    pub position: Position,
    /// Its time.
    pub timestamp: Timestamp,
    /// Its `properties`, when the condition's filters need them.
    pub properties: Option<&'a Map<String, Value>>,
}

/// The answer for one person at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the person meets the condition.
    pub holds: bool,
    /// The next time the answer can change with no new event (a window's
    /// edge), if any.
    pub changes_at: Option<Timestamp>,
    /// Why, part by part.
    pub explanation: Explanation,
}

/// Why one part of a condition held or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The part, in the readable form.
    pub condition: String,
    /// Whether it held.
    pub holds: bool,
    /// What was found: the events counted, or the value compared.
    pub found: String,
    /// The positions of the events that decided it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<Position>,
    /// Its parts', for `and`, `or` and `not`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Explanation>,
}

/// Evaluates `condition` for `person` as of `now`.
pub fn evaluate(condition: &Condition, person: &dyn Person, now: Timestamp) -> Verdict {
    let mut edges = None;
    let explanation = explain(condition, person, now, &mut edges, true);
    Verdict { holds: explanation.holds, changes_at: edges, explanation }
}

/// Whether `person` meets `condition` at `now`, and its next edge: what
/// [`evaluate`] decides, without putting the explanation into words (what
/// a runner evaluating every person at every event needs; the words only
/// when the answer changes).
pub fn holds(condition: &Condition, person: &dyn Person, now: Timestamp) -> (bool, Option<Timestamp>) {
    let mut edges = None;
    let explanation = explain(condition, person, now, &mut edges, false);
    (explanation.holds, edges)
}

/// A person whose membership of other audiences is their definitions,
/// evaluated for the same person at the same time: what `in audience "x"`
/// means before memberships are kept. The definitions must not name
/// themselves, directly or through others (defining an audience checks
/// this), or evaluation would not end.
pub struct WithAudiences<'a> {
    /// The person.
    pub person: &'a dyn Person,
    /// The workspace's audiences by name.
    pub definitions: &'a std::collections::BTreeMap<String, Condition>,
    /// The workspace's computed traits by name, computed from the person's
    /// events at the evaluation time.
    pub computed: &'a std::collections::BTreeMap<String, super::ComputedTrait>,
    /// The evaluation time.
    pub now: Timestamp,
}

impl Person for WithAudiences<'_> {
    fn trait_value(&self, name: &str) -> Option<&Value> {
        self.person.trait_value(name)
    }

    fn computed_trait(&self, name: &str) -> Option<Value> {
        match self.computed.get(name) {
            Some(computed) => computed.compute(self.person, self.now),
            None => self.person.computed_trait(name),
        }
    }

    fn events(&self, name: &str) -> Vec<EventFact<'_>> {
        self.person.events(name)
    }

    fn in_group(&self, group: &str) -> bool {
        self.person.in_group(group)
    }

    fn in_audience(&self, audience: &str) -> bool {
        self.definitions.get(audience).is_some_and(|condition| holds(condition, self, self.now).0)
    }
}

/// The explanation of `condition` for `person`; in words only when
/// `words` (else its texts are empty and its positions not listed).
fn explain(
    condition: &Condition,
    person: &dyn Person,
    now: Timestamp,
    edge: &mut Option<Timestamp>,
    words: bool,
) -> Explanation {
    let text = |make: &dyn Fn() -> String| if words { make() } else { String::new() };
    let leaf = |holds: bool, found: String, positions: Vec<Position>| Explanation {
        condition: text(&|| condition.to_string()),
        holds,
        found,
        positions,
        parts: Vec::new(),
    };
    match condition {
        Condition::And(all) | Condition::Or(all) => {
            let parts: Vec<Explanation> = all.iter().map(|c| explain(c, person, now, edge, words)).collect();
            let held = parts.iter().filter(|part| part.holds).count();
            let holds = if matches!(condition, Condition::And(_)) { held == parts.len() } else { held > 0 };
            Explanation {
                condition: text(&|| condition.to_string()),
                holds,
                found: text(&|| format!("{held} of {} parts hold", parts.len())),
                positions: Vec::new(),
                parts: if words { parts } else { Vec::new() },
            }
        }
        Condition::Not(inner) => {
            let part = explain(inner, person, now, edge, words);
            Explanation {
                condition: text(&|| condition.to_string()),
                holds: !part.holds,
                found: text(&|| format!("the part {}", if part.holds { "holds" } else { "does not hold" })),
                positions: Vec::new(),
                parts: if words { vec![part] } else { Vec::new() },
            }
        }
        Condition::Trait(value) | Condition::Computed(value) => {
            let found = if matches!(condition, Condition::Trait(_)) {
                person.trait_value(&value.name).cloned()
            } else {
                person.computed_trait(&value.name)
            };
            let shown = text(&|| found.as_ref().map_or_else(|| "no value".to_owned(), |v| format!("value {v}")));
            leaf(compare(found.as_ref(), &value.comparison), shown, Vec::new())
        }
        Condition::InGroup(group) => {
            let holds = person.in_group(group);
            leaf(holds, text(&|| if holds { "a member" } else { "not a member" }.to_owned()), Vec::new())
        }
        Condition::InAudience(audience) => {
            let holds = person.in_audience(audience);
            leaf(holds, text(&|| if holds { "a member" } else { "not a member" }.to_owned()), Vec::new())
        }
        Condition::Performed(performed) => {
            let (holds, found, positions) = performed_holds(performed, person, now, edge, words);
            leaf(holds, found, positions)
        }
    }
}

fn performed_holds(
    performed: &EventCondition,
    person: &dyn Person,
    now: Timestamp,
    edge: &mut Option<Timestamp>,
    words: bool,
) -> (bool, String, Vec<Position>) {
    let count = performed.count.unwrap_or(Count::AtLeast(1));
    let events = person.events(&performed.event);
    let counted: Vec<&EventFact<'_>> = match (performed.within, &performed.of) {
        (Some(window), Some(of)) => {
            let Some(start) = person.events(of).iter().rev().find(|fact| fact.timestamp <= now).map(|f| f.timestamp)
            else {
                let found = if words { format!("no {} event", Value::String(of.clone())) } else { String::new() };
                return (false, found, Vec::new());
            };
            // From the `of` event itself, inclusive, to the window's end.
            let end = Timestamp((start.0 + window.micros()).min(now.0));
            let within = |fact: &&EventFact<'_>| fact.timestamp >= start && fact.timestamp <= end;
            events.iter().filter(within).filter(|fact| filters_hold(performed, fact)).collect()
        }
        _ => matching_events(performed, &events, now),
    };
    if let (Some(window), None) = (performed.within, &performed.of)
        && let Some(oldest) = counted.first()
    {
        let leaves = Timestamp(oldest.timestamp.0 + window.micros());
        *edge = Some(edge.map_or(leaves, |at| at.min(leaves)));
    }
    let n = counted.len();
    if !words {
        return (count.holds(n), String::new(), Vec::new());
    }
    let positions: Vec<Position> = counted.iter().map(|fact| fact.position).collect();
    (count.holds(n), format!("{n} {}", if n == 1 { "event" } else { "events" }), positions)
}

fn filters_hold(performed: &EventCondition, fact: &EventFact<'_>) -> bool {
    performed.filters.iter().all(|filter| {
        let value = fact.properties.and_then(|properties| path(properties, &filter.property));
        compare(value, &filter.comparison)
    })
}

/// The events of `events` that `performed` counts at `now`, with no `of`:
/// at or before `now`, within its window, with every filter.
pub(crate) fn matching_events<'f, 'a>(
    performed: &EventCondition,
    events: &'f [EventFact<'a>],
    now: Timestamp,
) -> Vec<&'f EventFact<'a>> {
    let from = performed.within.map(|window| Timestamp(now.0 - window.micros()));
    events
        .iter()
        .filter(|fact| {
            fact.timestamp <= now && from.is_none_or(|from| fact.timestamp > from) && filters_hold(performed, fact)
        })
        .collect()
}

/// The value at a dotted path (`address.city`) of an object.
pub(crate) fn path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = object.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = object.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn compare(found: Option<&Value>, comparison: &Comparison) -> bool {
    let wanted = comparison.value.as_ref().unwrap_or(&Value::Null);
    let found_or_null = found.unwrap_or(&Value::Null);
    let numbers = || Some((found?.as_f64()?, wanted.as_f64()?));
    match comparison.op {
        Operator::Eq => equal(found_or_null, wanted),
        Operator::Ne => !equal(found_or_null, wanted),
        Operator::Gt => numbers().is_some_and(|(a, b)| a > b),
        Operator::Ge => numbers().is_some_and(|(a, b)| a >= b),
        Operator::Lt => numbers().is_some_and(|(a, b)| a < b),
        Operator::Le => numbers().is_some_and(|(a, b)| a <= b),
        Operator::Exists => found.is_some_and(|value| !value.is_null()),
        Operator::Contains => match found {
            Some(Value::String(text)) => match wanted {
                Value::String(part) => text.contains(part.as_str()),
                other => text.contains(&other.to_string()),
            },
            Some(Value::Array(items)) => items.iter().any(|item| equal(item, wanted)),
            _ => false,
        },
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::audience::parse;

    const DAY: i64 = 24 * 3_600 * 1_000_000;

    /// A person given as traits and events (name, day, properties).
    #[derive(Default)]
    struct Someone {
        traits: BTreeMap<String, Value>,
        computed: BTreeMap<String, Value>,
        events: Vec<(String, i64, Map<String, Value>)>,
        groups: Vec<String>,
        audiences: Vec<String>,
    }

    impl Someone {
        fn did(mut self, name: &str, day: i64, properties: Value) -> Someone {
            let properties = properties.as_object().cloned().unwrap_or_default();
            self.events.push((name.to_owned(), day, properties));
            self
        }
    }

    impl Person for Someone {
        fn trait_value(&self, name: &str) -> Option<&Value> {
            self.traits.get(name)
        }
        fn computed_trait(&self, name: &str) -> Option<Value> {
            self.computed.get(name).cloned()
        }
        fn events(&self, name: &str) -> Vec<EventFact<'_>> {
            let mut facts: Vec<EventFact<'_>> = (self.events.iter().enumerate())
                .filter(|(_, (n, _, _))| n == name)
                .map(|(i, (_, day, properties))| EventFact {
                    position: Position(i as u64 + 1),
                    timestamp: Timestamp(day * DAY),
                    properties: Some(properties),
                })
                .collect();
            facts.sort_by_key(|fact| fact.timestamp);
            facts
        }
        fn in_group(&self, group: &str) -> bool {
            self.groups.iter().any(|g| g == group)
        }
        fn in_audience(&self, audience: &str) -> bool {
            self.audiences.iter().any(|a| a == audience)
        }
    }

    fn on_day(text: &str, person: &Someone, day: i64) -> Verdict {
        evaluate(&parse(text).unwrap(), person, Timestamp(day * DAY))
    }

    #[test]
    fn two_orders_within_ninety_days_hold_until_the_older_one_turns_ninety_days_old() {
        let buyer = Someone::default().did("Order Completed", 10, json!({})).did("Order Completed", 50, json!({}));
        let rule = r#"performed "Order Completed" at least 2 times within 90 days"#;

        let verdict = on_day(rule, &buyer, 60);
        assert!(verdict.holds);
        assert_eq!(verdict.changes_at, Some(Timestamp(100 * DAY)), "the order of day 10 leaves on day 100");
        assert_eq!(verdict.explanation.positions, [Position(1), Position(2)]);

        assert!(on_day(rule, &buyer, 99).holds);
        assert!(!on_day(rule, &buyer, 100).holds, "exactly ninety days later the first order is out");
        assert!(!on_day(rule, &buyer, 30).holds, "as of day 30 the second order had not happened");
    }

    #[test]
    fn viewed_but_did_not_buy_within_seven_days() {
        let rule = r#"performed "Product Viewed" within 30 days
                      and not performed "Order Completed" within 7 days of "Product Viewed""#;
        let browser = Someone::default().did("Product Viewed", 10, json!({}));
        let buyer = Someone::default().did("Product Viewed", 10, json!({})).did("Order Completed", 12, json!({}));
        let late = Someone::default().did("Product Viewed", 10, json!({})).did("Order Completed", 20, json!({}));
        let never = Someone::default();

        assert!(on_day(rule, &browser, 11).holds);
        assert!(!on_day(rule, &buyer, 13).holds);
        assert!(on_day(rule, &buyer, 11).holds, "before the order they had not bought");
        assert!(on_day(rule, &late, 21).holds, "an order after the seven days does not count");
        assert!(!on_day(rule, &never, 11).holds);
        let bought_after_viewing = r#"performed "Order Completed" at most 0 times within 7 days of "Product Viewed""#;
        assert!(!on_day(bought_after_viewing, &never, 11).holds, "with no view there is no window to count in");
        assert!(on_day(bought_after_viewing, &browser, 11).holds);
        assert_eq!(on_day(rule, &browser, 11).changes_at, Some(Timestamp(40 * DAY)));
    }

    #[test]
    fn filters_read_properties_and_counts_can_be_at_most_or_exact() {
        let buyer = Someone::default()
            .did("Order Completed", 1, json!({"revenue": 120, "currency": "EUR"}))
            .did("Order Completed", 2, json!({"revenue": 80, "currency": "EUR"}))
            .did("Order Completed", 3, json!({"revenue": 300.5, "currency": "USD", "shipping": {"country": "DE"}}));
        assert!(on_day(r#"performed "Order Completed" with revenue > 100 exactly 2 times"#, &buyer, 5).holds);
        assert!(on_day(r#"performed "Order Completed" with revenue > 100, currency = "EUR""#, &buyer, 5).holds);
        assert!(on_day(r#"performed "Order Completed" with shipping.country = "DE""#, &buyer, 5).holds);
        assert!(!on_day(r#"performed "Order Completed" at most 2 times"#, &buyer, 5).holds);
        assert!(on_day(r#"performed "Refund" at most 0 times"#, &buyer, 5).holds);
    }

    #[test]
    fn traits_groups_and_audiences_compare_as_documented() {
        let mut person = Someone::default();
        person.traits.insert("plan".into(), json!("pro"));
        person.traits.insert("age".into(), json!(41));
        person.traits.insert("tags".into(), json!(["vip", "beta"]));
        person.computed.insert("lifetime_revenue".into(), json!(500.0));
        person.groups.push("acme".into());
        person.audiences.push("loyal".into());
        let holds = [
            r#"trait plan = "pro""#,
            r#"trait age >= 41 and trait age < 42"#,
            r#"computed lifetime_revenue = 500"#,
            r#"trait tags contains "vip""#,
            r#"trait plan contains "pr""#,
            r#"trait missing = null and trait missing != "x" and not trait missing exists"#,
            r#"in group "acme" and in audience "loyal""#,
        ];
        let fails = [r#"trait plan > 1"#, r#"trait age = "41""#, r#"in group "other""#, r#"computed nothing exists"#];
        for text in holds {
            assert!(on_day(text, &person, 1).holds, "{text}");
        }
        for text in fails {
            assert!(!on_day(text, &person, 1).holds, "{text}");
        }
    }

    #[test]
    fn the_explanation_names_each_part_and_what_was_found() {
        let buyer = Someone::default().did("Order Completed", 10, json!({}));
        let verdict = on_day(r#"performed "Order Completed" and not trait plan = "pro""#, &buyer, 11);
        let explained = serde_json::to_value(&verdict.explanation).unwrap();
        assert_eq!(
            explained,
            json!({
                "condition": r#"performed "Order Completed" and not trait plan = "pro""#,
                "holds": true, "found": "2 of 2 parts hold",
                "parts": [
                    {"condition": r#"performed "Order Completed""#, "holds": true, "found": "1 event", "positions": [1]},
                    {"condition": r#"not trait plan = "pro""#, "holds": true, "found": "the part does not hold",
                     "parts": [{"condition": r#"trait plan = "pro""#, "holds": false, "found": "no value"}]}
                ]
            })
        );
    }
}
