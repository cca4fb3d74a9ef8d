//! The condition tree and its JSON form.
//!
//! ```json
//! {"and": [
//!   {"performed": {"event": "Order Completed", "count": {"at_least": 2}, "within": {"days": 90}}},
//!   {"not": {"performed": {"event": "Order Completed", "within": {"days": 7}, "of": "Product Viewed"}}},
//!   {"trait": {"name": "plan", "op": "=", "value": "pro"}},
//!   {"in_audience": "vip"}
//! ]}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The deepest a condition nests (each level is one or two levels of its
/// JSON form, which the log's nesting limits must take whole).
pub const MAX_DEPTH: usize = 16;

/// What a person must meet to be in an audience.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Every one of these.
    And(Vec<Condition>),
    /// At least one of these.
    Or(Vec<Condition>),
    /// Not this.
    Not(Box<Condition>),
    /// A profile trait, as the profile holds it now.
    Trait(ValueCondition),
    /// A computed trait of the workspace.
    Computed(ValueCondition),
    /// Events the person performed.
    Performed(EventCondition),
    /// A member of this group (`groupId` of a `group` call).
    InGroup(String),
    /// A member of this other audience of the workspace.
    InAudience(String),
}

/// A trait or computed trait compared with a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueCondition {
    /// The trait's name.
    pub name: String,
    /// How it is compared.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// How a value is compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The operator.
    pub op: Operator,
    /// The value compared with; none for [`Operator::Exists`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// Equal (numbers by value, `1` = `1.0`).
    #[serde(rename = "=")]
    Eq,
    /// Not equal, or absent.
    #[serde(rename = "!=")]
    Ne,
    /// Greater than (numbers only).
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal (numbers only).
    #[serde(rename = ">=")]
    Ge,
    /// Less than (numbers only).
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal (numbers only).
    #[serde(rename = "<=")]
    Le,
    /// A string containing the value, or an array holding it.
    #[serde(rename = "contains")]
    Contains,
    /// Present and not `null`.
    #[serde(rename = "exists")]
    Exists,
}

impl Operator {
    /// Every operator, as the readable form writes it.
    pub const ALL: [(Operator, &'static str); 8] = [
        (Operator::Eq, "="),
        (Operator::Ne, "!="),
        (Operator::Gt, ">"),
        (Operator::Ge, ">="),
        (Operator::Lt, "<"),
        (Operator::Le, "<="),
        (Operator::Contains, "contains"),
        (Operator::Exists, "exists"),
    ];

    /// The readable form's word for it.
    pub fn as_str(self) -> &'static str {
        Operator::ALL.iter().find(|(op, _)| *op == self).map_or("=", |(_, text)| text)
    }
}

/// Events a person performed: how many, of which name, with which
/// properties, over which window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCondition {
    /// A track's `event`, or `page` / `screen` / `identify` / `group` for
    /// those calls (the names the profile's event counts use).
    pub event: String,
    /// Properties every counted event must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<PropertyFilter>,
    /// How many; at least one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Count>,
    /// Over which time: the last `within` before the evaluation time, or,
    /// with `of`, the `within` after the person's latest `of` event. All
    /// time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Window>,
    /// The event whose latest occurrence starts the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

/// A property of an event compared with a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyFilter {
    /// The property (`properties.<name>`; dots reach into objects).
    pub property: String,
    /// How it is compared.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// How many events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Count {
    /// This many or more.
    AtLeast(u32),
    /// This many or fewer (zero included).
    AtMost(u32),
    /// Exactly this many.
    Exactly(u32),
}

impl Count {
    /// Whether `n` events meet it.
    pub fn holds(self, n: usize) -> bool {
        match self {
            Count::AtLeast(k) => n >= k as usize,
            Count::AtMost(k) => n <= k as usize,
            Count::Exactly(k) => n == k as usize,
        }
    }
}

/// A length of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// Days of 24 hours.
    Days(u32),
    /// Hours.
    Hours(u32),
    /// Minutes.
    Minutes(u32),
}

/// The longest window: ten years.
pub const MAX_WINDOW_DAYS: u32 = 3_650;

impl Window {
    /// Its length in microseconds.
    pub fn micros(self) -> i64 {
        let minutes = match self {
            Window::Days(n) => i64::from(n) * 24 * 60,
            Window::Hours(n) => i64::from(n) * 60,
            Window::Minutes(n) => i64::from(n),
        };
        minutes * 60 * 1_000_000
    }

    fn amount(self) -> u32 {
        match self {
            Window::Days(n) | Window::Hours(n) | Window::Minutes(n) => n,
        }
    }
}

impl Condition {
    /// Checks what evaluation relies on, naming the place of the first
    /// problem in the tree (`and[1].performed.within`): names not empty,
    /// windows from one minute to ten years, counts that can fail, numbers
    /// compared with numbers, a value for every operator but `exists`, and
    /// no deeper nesting than [`MAX_DEPTH`].
    pub fn validate(&self) -> Result<(), String> {
        self.check("", 0)
    }

    /// The other audiences it names, so that a definition naming itself,
    /// directly or through others, can be refused.
    pub fn audiences(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.visit(&mut |condition| {
            if let Condition::InAudience(name) = condition {
                names.push(name.as_str());
            }
        });
        names
    }

    /// The computed traits it names.
    pub fn computed_traits(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.visit(&mut |condition| {
            if let Condition::Computed(value) = condition {
                names.push(value.name.as_str());
            }
        });
        names
    }

    /// The event names it reads (`performed` and `of`).
    pub fn events(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.visit(&mut |condition| {
            if let Condition::Performed(performed) = condition {
                names.push(performed.event.as_str());
                names.extend(performed.of.as_deref());
            }
        });
        names
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition)) {
        f(self);
        match self {
            Condition::And(all) | Condition::Or(all) => all.iter().for_each(|c| c.visit(f)),
            Condition::Not(inner) => inner.visit(f),
            _ => {}
        }
    }

    fn check(&self, at: &str, depth: usize) -> Result<(), String> {
        let here = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
        if depth >= MAX_DEPTH {
            return Err(format!("{at}: nested deeper than {MAX_DEPTH} levels"));
        }
        match self {
            Condition::And(all) | Condition::Or(all) => {
                let word = if matches!(self, Condition::And(_)) { "and" } else { "or" };
                if all.is_empty() {
                    return Err(format!("{}: expected at least one condition, found none", here(word)));
                }
                for (n, condition) in all.iter().enumerate() {
                    condition.check(&format!("{}[{n}]", here(word)), depth + 1)?;
                }
                Ok(())
            }
            Condition::Not(inner) => inner.check(&here("not"), depth + 1),
            Condition::Trait(value) => check_value(&here("trait"), value),
            Condition::Computed(value) => check_value(&here("computed"), value),
            Condition::Performed(performed) => check_performed(&here("performed"), performed),
            Condition::InGroup(name) => check_name(&here("in_group"), name),
            Condition::InAudience(name) => check_name(&here("in_audience"), name),
        }
    }
}

fn check_name(at: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!("{at}: expected a name, found an empty one"));
    }
    if name.len() > 255 {
        return Err(format!("{at}: names are at most 255 bytes, found {}", name.len()));
    }
    Ok(())
}

fn check_value(at: &str, value: &ValueCondition) -> Result<(), String> {
    check_name(&format!("{at}.name"), &value.name)?;
    check_comparison(at, &value.comparison)
}

fn check_comparison(at: &str, comparison: &Comparison) -> Result<(), String> {
    let op = comparison.op;
    match (&comparison.value, op) {
        (Some(value), Operator::Exists) => Err(format!("{at}.value: exists takes no value, found {value}")),
        (None, Operator::Exists) => Ok(()),
        (None, _) => Err(format!("{at}.value: {} needs a value, found none", op.as_str())),
        (Some(value), Operator::Gt | Operator::Ge | Operator::Lt | Operator::Le) if !value.is_number() => {
            Err(format!("{at}.value: {} compares numbers, found {value}", op.as_str()))
        }
        (Some(value), Operator::Contains) if !value.is_string() && !value.is_number() && !value.is_boolean() => {
            Err(format!("{at}.value: contains looks for a string, number or boolean, found {value}"))
        }
        (Some(value), _) if value.is_object() || value.is_array() => {
            Err(format!("{at}.value: expected a string, number, boolean or null, found {value}"))
        }
        _ => Ok(()),
    }
}

fn check_performed(at: &str, performed: &EventCondition) -> Result<(), String> {
    check_name(&format!("{at}.event"), &performed.event)?;
    for (n, filter) in performed.filters.iter().enumerate() {
        let here = format!("{at}.filters[{n}]");
        check_name(&format!("{here}.property"), &filter.property)?;
        check_comparison(&here, &filter.comparison)?;
    }
    if let Some(Count::AtMost(k) | Count::Exactly(k) | Count::AtLeast(k)) = performed.count
        && k > 1_000_000
    {
        return Err(format!("{at}.count: at most 1000000 events are counted, found {k}"));
    }
    if performed.count == Some(Count::AtLeast(0)) {
        return Err(format!("{at}.count: at least 0 always holds; leave the condition out"));
    }
    if let Some(window) = performed.within {
        // In days without computing microseconds, which a huge amount would overflow.
        let days = match window {
            Window::Days(n) => f64::from(n),
            Window::Hours(n) => f64::from(n) / 24.0,
            Window::Minutes(n) => f64::from(n) / 1_440.0,
        };
        if window.amount() == 0 {
            return Err(format!("{at}.within: expected a window of at least one minute, found 0"));
        }
        if days > f64::from(MAX_WINDOW_DAYS) {
            return Err(format!("{at}.within: windows are at most {MAX_WINDOW_DAYS} days, found {days:.0} days"));
        }
    }
    match (&performed.of, performed.within) {
        (Some(_), None) => Err(format!("{at}.of: a window after another event needs `within`, found none")),
        (Some(of), Some(_)) => check_name(&format!("{at}.of"), of),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn from_json(value: serde_json::Value) -> Condition {
        serde_json::from_value(value).expect("a condition")
    }

    #[test]
    fn the_json_form_round_trips() {
        let condition = from_json(json!({"and": [
            {"performed": {"event": "Order Completed", "count": {"at_least": 2}, "within": {"days": 90},
                           "filters": [{"property": "revenue", "op": ">", "value": 100}]}},
            {"not": {"performed": {"event": "Order Completed", "within": {"days": 7}, "of": "Product Viewed"}}},
            {"trait": {"name": "plan", "op": "=", "value": "pro"}},
            {"computed": {"name": "lifetime_revenue", "op": "exists"}},
            {"in_group": "acme"},
            {"in_audience": "vip"}
        ]}));
        condition.validate().unwrap();
        let again: Condition = serde_json::from_value(serde_json::to_value(&condition).unwrap()).unwrap();
        assert_eq!(again, condition);
        assert_eq!(condition.audiences(), ["vip"]);
        assert_eq!(condition.computed_traits(), ["lifetime_revenue"]);
        assert_eq!(condition.events(), ["Order Completed", "Order Completed", "Product Viewed"]);
    }

    #[test]
    fn an_unknown_member_is_refused() {
        let err = serde_json::from_value::<Condition>(json!({"performed": {"event": "x", "times": 2}})).unwrap_err();
        assert!(err.to_string().contains("times"), "{err}");
    }

    #[test]
    fn checks_name_the_place_of_the_problem() {
        let cases = [
            (json!({"and": []}), "and: expected at least one condition"),
            (json!({"or": [{"in_group": " "}]}), "or[0].in_group: expected a name"),
            (json!({"trait": {"name": "age", "op": ">", "value": "old"}}), "trait.value: > compares numbers"),
            (json!({"trait": {"name": "age", "op": "="}}), "trait.value: = needs a value"),
            (json!({"computed": {"name": "n", "op": "exists", "value": 1}}), "computed.value: exists takes no value"),
            (json!({"not": {"performed": {"event": "x", "within": {"days": 0}}}}), "not.performed.within: expected"),
            (json!({"performed": {"event": "x", "within": {"days": 4000}}}), "performed.within: windows are at most"),
            (
                json!({"performed": {"event": "x", "within": {"days": u32::MAX}}}),
                "performed.within: windows are at most",
            ),
            (
                json!({"performed": {"event": "x", "within": {"minutes": u32::MAX}}}),
                "performed.within: windows are at most",
            ),
            (json!({"performed": {"event": "x", "of": "y"}}), "performed.of: a window after another event"),
            (json!({"performed": {"event": "x", "count": {"at_least": 0}}}), "performed.count: at least 0"),
            (
                json!({"and": [{"in_group": "g"}, {"performed": {"event": "x", "filters": [{"property": "", "op": "exists"}]}}]}),
                "and[1].performed.filters[0].property",
            ),
        ];
        for (json, expected) in cases {
            let err = from_json(json.clone()).validate().unwrap_err();
            assert!(err.starts_with(expected), "{json}: {err}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut condition = Condition::InGroup("g".into());
        for _ in 0..MAX_DEPTH {
            condition = Condition::Not(Box::new(condition));
        }
        assert!(condition.validate().unwrap_err().contains("nested deeper"));
    }
}
