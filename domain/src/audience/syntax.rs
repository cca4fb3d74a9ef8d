//! The readable form of a condition.
//!
//! ```text
//! condition := or
//! or        := and ("or" and)*
//! and       := unary ("and" unary)*
//! unary     := "not" unary | "(" condition ")" | atom
//! atom      := "trait" NAME comparison
//!            | "computed" NAME comparison
//!            | "performed" STRING ["with" filter ("," filter)*] [count] ["within" window ["of" STRING]]
//!            | "in" "group" STRING
//!            | "in" "audience" STRING
//! comparison:= ("=" | "!=" | ">" | ">=" | "<" | "<=" | "contains") VALUE | "exists"
//! filter    := NAME comparison
//! count     := ("at" "least" | "at" "most" | "exactly") INTEGER ("time" | "times")
//! window    := INTEGER ("day" | "days" | "hour" | "hours" | "minute" | "minutes")
//! NAME      := letters, digits, `_`, `.`, `$`, `-` | STRING
//! VALUE     := STRING | NUMBER | "true" | "false" | "null"
//! ```
//!
//! Strings are JSON strings (double quotes, JSON escapes). Keywords are
//! lowercase. `and` binds tighter than `or`. An error names the column
//! where the text stops making sense and what was expected there.

use std::fmt;

use serde_json::Value;

use super::condition::{
    Comparison, Condition, Count, EventCondition, MAX_DEPTH, Operator, PropertyFilter, ValueCondition, Window,
};

/// Why a condition's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct ParseError {
    /// Where, counted in characters from 1.
    pub column: usize,
    /// What was expected and what was found.
    pub reason: String,
}

/// Reads a condition in its readable form, and checks it
/// ([`Condition::validate`]).
pub fn parse(text: &str) -> Result<Condition, ParseError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, next: 0, end: text.chars().count() + 1 };
    let condition = parser.or(0)?;
    if let Some(token) = parser.peek() {
        return Err(parser.error_at(token.column, format!("expected `and`, `or` or the end, found {}", token.kind)));
    }
    condition.validate().map_err(|reason| ParseError { column: 1, reason })?;
    Ok(condition)
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word(String),
    Text(String),
    Number(serde_json::Number),
    Symbol(&'static str),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Word(word) => write!(f, "`{word}`"),
            Kind::Text(text) => write!(f, "{}", Value::String(text.clone())),
            Kind::Number(number) => write!(f, "{number}"),
            Kind::Symbol(symbol) => write!(f, "`{symbol}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

const SYMBOLS: [&str; 9] = [">=", "<=", "!=", "=", ">", "<", "(", ")", ","];

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '$' | '-')
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            // A JSON string: find its closing quote, then let JSON read it.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            if j >= chars.len() {
                return Err(ParseError { column, reason: "a string is not closed: expected `\"`".into() });
            }
            let literal: String = chars[i..=j].iter().collect();
            let value: String = serde_json::from_str(&literal)
                .map_err(|err| ParseError { column, reason: format!("not a JSON string: {err}") })?;
            tokens.push(Token { kind: Kind::Text(value), column });
            i = j + 1;
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_digit() || matches!(chars[j], '.' | 'e' | 'E' | '+' | '-')) {
                j += 1;
            }
            let literal: String = chars[i..j].iter().collect();
            let number = serde_json::from_str::<serde_json::Number>(&literal)
                .map_err(|_| ParseError { column, reason: format!("expected a number, found `{literal}`") })?;
            tokens.push(Token { kind: Kind::Number(number), column });
            i = j;
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| chars[i..].starts_with(&s.chars().collect::<Vec<_>>())) {
            tokens.push(Token { kind: Kind::Symbol(symbol), column });
            i += symbol.len();
        } else if is_name_char(c) {
            let mut j = i;
            while j < chars.len() && is_name_char(chars[j]) {
                j += 1;
            }
            tokens.push(Token { kind: Kind::Word(chars[i..j].iter().collect()), column });
            i = j;
        } else {
            return Err(ParseError { column, reason: format!("unexpected character `{c}`") });
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    /// The column just past the text, for "found the end".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn error_at(&self, column: usize, reason: String) -> ParseError {
        ParseError { column, reason }
    }

    /// An error at the next token: `expected …, found …`.
    fn expected(&self, what: &str) -> ParseError {
        match self.peek() {
            Some(token) => self.error_at(token.column, format!("expected {what}, found {}", token.kind)),
            None => self.error_at(self.end, format!("expected {what}, found the end")),
        }
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Word(w), .. }) if w == word)
    }

    fn at_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Symbol(s), .. }) if *s == symbol)
    }

    fn or(&mut self, depth: usize) -> Result<Condition, ParseError> {
        let mut all = vec![self.and(depth)?];
        while self.at_word("or") {
            self.next += 1;
            all.push(self.and(depth)?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Condition::Or(all) })
    }

    fn and(&mut self, depth: usize) -> Result<Condition, ParseError> {
        let mut all = vec![self.unary(depth)?];
        while self.at_word("and") {
            self.next += 1;
            all.push(self.unary(depth)?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Condition::And(all) })
    }

    fn unary(&mut self, depth: usize) -> Result<Condition, ParseError> {
        if depth >= MAX_DEPTH {
            return Err(self.expected(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        if self.at_word("not") {
            self.next += 1;
            return Ok(Condition::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.at_symbol("(") {
            self.next += 1;
            let inner = self.or(depth + 1)?;
            if !self.at_symbol(")") {
                return Err(self.expected("`)`"));
            }
            self.next += 1;
            return Ok(inner);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Condition, ParseError> {
        const ATOMS: &str = "`trait`, `computed`, `performed`, `in`, `not` or `(`";
        let Some(Token { kind: Kind::Word(word), .. }) = self.peek().cloned() else {
            return Err(self.expected(ATOMS));
        };
        match word.as_str() {
            "trait" | "computed" => {
                self.next += 1;
                let name = self.name("a trait's name")?;
                let value = ValueCondition { name, comparison: self.comparison()? };
                Ok(if word == "trait" { Condition::Trait(value) } else { Condition::Computed(value) })
            }
            "performed" => {
                self.next += 1;
                self.performed().map(Condition::Performed)
            }
            "in" => {
                self.next += 1;
                if self.at_word("group") {
                    self.next += 1;
                    Ok(Condition::InGroup(self.text("a group id in quotes")?))
                } else if self.at_word("audience") {
                    self.next += 1;
                    Ok(Condition::InAudience(self.text("an audience's name in quotes")?))
                } else {
                    Err(self.expected("`group` or `audience`"))
                }
            }
            _ => Err(self.expected(ATOMS)),
        }
    }

    fn performed(&mut self) -> Result<EventCondition, ParseError> {
        let event = self.text("an event name in quotes")?;
        let mut filters = Vec::new();
        if self.at_word("with") {
            self.next += 1;
            loop {
                let property = self.name("a property's name")?;
                filters.push(PropertyFilter { property, comparison: self.comparison()? });
                if !self.at_symbol(",") {
                    break;
                }
                self.next += 1;
            }
        }
        let count = if self.at_word("at") {
            self.next += 1;
            let least = if self.at_word("least") {
                true
            } else if self.at_word("most") {
                false
            } else {
                return Err(self.expected("`least` or `most`"));
            };
            self.next += 1;
            let n = self.count()?;
            Some(if least { Count::AtLeast(n) } else { Count::AtMost(n) })
        } else if self.at_word("exactly") {
            self.next += 1;
            Some(Count::Exactly(self.count()?))
        } else {
            None
        };
        let (mut within, mut of) = (None, None);
        if self.at_word("within") {
            self.next += 1;
            within = Some(self.window()?);
            if self.at_word("of") {
                self.next += 1;
                of = Some(self.text("an event name in quotes")?);
            }
        }
        Ok(EventCondition { event, filters, count, within, of })
    }

    /// `INTEGER ("time" | "times")`.
    fn count(&mut self) -> Result<u32, ParseError> {
        let n = self.integer("a number of times")?;
        if self.at_word("time") || self.at_word("times") {
            self.next += 1;
            Ok(n)
        } else {
            Err(self.expected("`times`"))
        }
    }

    fn window(&mut self) -> Result<Window, ParseError> {
        let n = self.integer("a number of days, hours or minutes")?;
        let unit = match self.peek() {
            Some(Token { kind: Kind::Word(word), .. }) => match word.as_str() {
                "day" | "days" => Window::Days(n),
                "hour" | "hours" => Window::Hours(n),
                "minute" | "minutes" => Window::Minutes(n),
                _ => return Err(self.expected("`days`, `hours` or `minutes`")),
            },
            _ => return Err(self.expected("`days`, `hours` or `minutes`")),
        };
        self.next += 1;
        Ok(unit)
    }

    fn integer(&mut self, what: &str) -> Result<u32, ParseError> {
        match self.peek() {
            Some(Token { kind: Kind::Number(number), column }) => {
                let column = *column;
                let n = number.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    self.error_at(column, format!("expected {what} (a whole number), found {number}"))
                })?;
                self.next += 1;
                Ok(n)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn text(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token { kind: Kind::Text(text), .. }) => {
                let text = text.clone();
                self.next += 1;
                Ok(text)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// A bare name (`plan`, `properties.total`) or a string.
    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token { kind: Kind::Word(word) | Kind::Text(word), .. }) => {
                let word = word.clone();
                self.next += 1;
                Ok(word)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn comparison(&mut self) -> Result<Comparison, ParseError> {
        const OPERATORS: &str = "`=`, `!=`, `>`, `>=`, `<`, `<=`, `contains` or `exists`";
        let op = match self.peek().map(|token| &token.kind) {
            Some(Kind::Symbol(symbol)) => Operator::ALL.iter().find(|(_, text)| text == symbol).map(|(op, _)| *op),
            Some(Kind::Word(word)) if word == "contains" => Some(Operator::Contains),
            Some(Kind::Word(word)) if word == "exists" => Some(Operator::Exists),
            _ => None,
        }
        .ok_or_else(|| self.expected(OPERATORS))?;
        self.next += 1;
        if op == Operator::Exists {
            return Ok(Comparison { op, value: None });
        }
        let value = match self.peek().map(|token| &token.kind) {
            Some(Kind::Text(text)) => Value::String(text.clone()),
            Some(Kind::Number(number)) => Value::Number(number.clone()),
            Some(Kind::Word(word)) if word == "true" => Value::Bool(true),
            Some(Kind::Word(word)) if word == "false" => Value::Bool(false),
            Some(Kind::Word(word)) if word == "null" => Value::Null,
            _ => return Err(self.expected("a value (a string in quotes, a number, true, false or null)")),
        };
        self.next += 1;
        Ok(Comparison { op, value: Some(value) })
    }
}

/// The readable form, which [`parse`] reads back to the same condition.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::And(all) | Condition::Or(all) => {
                let word = if matches!(self, Condition::And(_)) { " and " } else { " or " };
                for (n, condition) in all.iter().enumerate() {
                    if n > 0 {
                        f.write_str(word)?;
                    }
                    // Only a nested and/or needs parentheses to read back the same.
                    if matches!(condition, Condition::And(_) | Condition::Or(_)) {
                        write!(f, "({condition})")?;
                    } else {
                        write!(f, "{condition}")?;
                    }
                }
                Ok(())
            }
            Condition::Not(inner) => match inner.as_ref() {
                Condition::And(_) | Condition::Or(_) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Condition::Trait(value) => write!(f, "trait {} {}", name(&value.name), value.comparison),
            Condition::Computed(value) => write!(f, "computed {} {}", name(&value.name), value.comparison),
            Condition::InGroup(group) => write!(f, "in group {}", Value::String(group.clone())),
            Condition::InAudience(audience) => write!(f, "in audience {}", Value::String(audience.clone())),
            Condition::Performed(performed) => {
                write!(f, "performed {}", Value::String(performed.event.clone()))?;
                for (n, filter) in performed.filters.iter().enumerate() {
                    let lead = if n == 0 { " with " } else { ", " };
                    write!(f, "{lead}{} {}", name(&filter.property), filter.comparison)?;
                }
                match performed.count {
                    Some(Count::AtLeast(n)) => write!(f, " at least {n} times")?,
                    Some(Count::AtMost(n)) => write!(f, " at most {n} times")?,
                    Some(Count::Exactly(n)) => write!(f, " exactly {n} times")?,
                    None => {}
                }
                if let Some(window) = performed.within {
                    match window {
                        Window::Days(n) => write!(f, " within {n} days")?,
                        Window::Hours(n) => write!(f, " within {n} hours")?,
                        Window::Minutes(n) => write!(f, " within {n} minutes")?,
                    }
                }
                if let Some(of) = &performed.of {
                    write!(f, " of {}", Value::String(of.clone()))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} {value}", self.op.as_str()),
            None => f.write_str(self.op.as_str()),
        }
    }
}

/// A name bare when it reads back as one, else quoted.
fn name(text: &str) -> String {
    const KEYWORDS: [&str; 8] = ["and", "or", "not", "true", "false", "null", "contains", "exists"];
    let bare = !text.is_empty()
        && text.chars().all(is_name_char)
        && !text.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && !KEYWORDS.contains(&text);
    if bare { text.to_owned() } else { Value::String(text.to_owned()).to_string() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_issues_examples_read_as_meant() {
        let condition = parse(
            r#"performed "Order Completed" at least 2 times within 90 days
               and not performed "Order Completed" within 7 days of "Product Viewed""#,
        )
        .unwrap();
        let expected: Condition = serde_json::from_value(json!({"and": [
            {"performed": {"event": "Order Completed", "count": {"at_least": 2}, "within": {"days": 90}}},
            {"not": {"performed": {"event": "Order Completed", "within": {"days": 7}, "of": "Product Viewed"}}}
        ]}))
        .unwrap();
        assert_eq!(condition, expected);
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        let loose = parse(r#"trait a = 1 or trait b = 2 and trait c = 3"#).unwrap();
        assert!(matches!(&loose, Condition::Or(all) if matches!(all[1], Condition::And(_))));
        let grouped = parse(r#"(trait a = 1 or trait b = 2) and trait c = 3"#).unwrap();
        assert!(matches!(&grouped, Condition::And(all) if matches!(all[0], Condition::Or(_))));
    }

    #[test]
    fn every_form_prints_back_to_the_same_condition() {
        let texts = [
            r#"trait plan = "pro""#,
            r#"computed lifetime_revenue > 500"#,
            r#"computed "ltv (eur)" >= 10.5"#,
            r#"trait email exists"#,
            r#"trait tags contains "vip" and trait age <= -1"#,
            r#"trait opted_in != true or trait nickname = null"#,
            r#"performed "Order Completed" with revenue > 100, currency = "EUR" exactly 3 times within 12 hours"#,
            r#"performed "page" at most 0 times within 30 minutes"#,
            r#"not (in group "acme" or in audience "vip \"gold\"")"#,
            r#"not not in group "g""#,
            r#"(trait a = 1 or trait b = 2) and (trait c = 3 or trait d = 4)"#,
        ];
        for text in texts {
            let condition = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            let printed = condition.to_string();
            assert_eq!(parse(&printed).unwrap(), condition, "{text} printed as {printed}");
        }
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let cases = [
            ("", 1, "expected `trait`, `computed`, `performed`, `in`, `not` or `(`, found the end"),
            ("trait plan", 11, "expected `=`, `!=`, `>`, `>=`, `<`, `<=`, `contains` or `exists`, found the end"),
            ("trait plan = pro", 14, "expected a value"),
            ("performed Order", 11, "expected an event name in quotes, found `Order`"),
            (r#"performed "x" at least two times"#, 24, "expected a number of times, found `two`"),
            (r#"performed "x" at least 2"#, 25, "expected `times`, found the end"),
            (r#"performed "x" within 3 weeks"#, 24, "expected `days`, `hours` or `minutes`, found `weeks`"),
            (r#"performed "x" within 1.5 days"#, 22, "a whole number"),
            (r#"in audience vip"#, 13, "expected an audience's name in quotes"),
            (r#"(in group "g""#, 14, "expected `)`, found the end"),
            (r#"in group "g" in group "h""#, 14, "expected `and`, `or` or the end, found `in`"),
            (r#"trait a = "open"#, 11, "a string is not closed"),
            (r#"trait a = 1 & trait b = 2"#, 13, "unexpected character `&`"),
            (r#"trait a > "x""#, 1, "trait.value: > compares numbers"),
        ];
        for (text, column, reason) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.column, column, "{text}: {err}");
            assert!(err.reason.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = format!("{}in group \"g\"", "not ".repeat(10_000));
        assert!(parse(&text).unwrap_err().reason.contains("levels of nesting"));
        let text = format!("{}in group \"g\"{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&text).unwrap_err().reason.contains("levels of nesting"));
    }
}
