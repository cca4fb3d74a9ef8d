//! One row in, one Segment-spec message out.
//!
//! [`Plan`] is a mapping resolved against one file: each column the mapping
//! names has become a CSV field index or an NDJSON JSON pointer, so turning a
//! row into a message does no lookups by name and allocates only the message.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

use super::RowError;
use super::mapping::{ColumnType, ImportMapping, MessageType, TextSource, TimestampFormat};

/// Where a column's value is in a row.
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    /// The field at this index of a CSV record.
    Index(usize),
    /// A JSON pointer into an NDJSON line's object.
    Pointer(String),
}

/// A column the mapping reads: its name as the user wrote it (for errors),
/// where it is, and the type its values are turned into.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) column: String,
    pub(crate) locator: Locator,
    pub(crate) column_type: Option<ColumnType>,
}

/// A text field of the message: the same for every row, or read from a column.
#[derive(Debug, Clone)]
pub(crate) enum Text {
    Literal(String),
    Column(Field),
}

/// A mapping resolved against one file's columns.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) message_type: MessageType,
    pub(crate) event: Option<Text>,
    pub(crate) name: Option<Text>,
    pub(crate) user_id: Option<Field>,
    pub(crate) anonymous_id: Option<Field>,
    pub(crate) group_id: Option<Field>,
    pub(crate) traits: Vec<(String, Field)>,
    pub(crate) properties: Vec<(String, Field)>,
    pub(crate) timestamp: Option<(Field, TimestampFormat)>,
    pub(crate) skip_empty: bool,
}

/// One row as read: a CSV record or a parsed NDJSON object.
#[derive(Clone, Copy)]
pub(crate) enum Record<'r> {
    Csv(&'r csv::ByteRecord),
    Json(&'r Value),
}

/// A cell's content before it is typed.
enum Cell<'r> {
    /// The NDJSON pointer matched nothing (a CSV field is never missing).
    Missing,
    Text(&'r str),
    Json(&'r Value),
}

impl Cell<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Cell::Missing => true,
            Cell::Text(text) => text.is_empty(),
            Cell::Json(Value::Null) => true,
            Cell::Json(Value::String(text)) => text.is_empty(),
            Cell::Json(_) => false,
        }
    }

    /// The cell as shown in an error: quoted text or compact JSON, cut short
    /// so a huge cell cannot flood a report.
    fn shown(&self) -> String {
        let shown = match self {
            Cell::Missing => return "nothing".to_owned(),
            Cell::Text(text) => Value::String((*text).to_owned()).to_string(),
            Cell::Json(value) => value.to_string(),
        };
        shorten(shown)
    }
}

pub(crate) fn shorten(text: String) -> String {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

impl Plan {
    /// Resolves `mapping` with `locate`, which turns a mapping field name
    /// (`traits.email`) and its column into a [`Locator`] or refuses it.
    pub(crate) fn new<E>(
        mapping: &ImportMapping,
        mut locate: impl FnMut(&str, &str) -> Result<Locator, E>,
    ) -> Result<Plan, E> {
        let mut field = |name: &str, column: &str| -> Result<Field, E> {
            Ok(Field {
                column: column.to_owned(),
                locator: locate(name, column)?,
                column_type: mapping.types.get(column).copied(),
            })
        };
        let mut text = |name: &str, source: &Option<TextSource>| -> Result<Option<Text>, E> {
            Ok(match source {
                None => None,
                Some(TextSource::Literal(text)) => Some(Text::Literal(text.clone())),
                Some(TextSource::Column { column }) => Some(Text::Column(field(name, column)?)),
            })
        };
        let event = text("event.column", &mapping.event)?;
        let name = text("name.column", &mapping.name)?;
        let mut optional = |name: &str, column: &Option<String>| column.as_deref().map(|c| field(name, c)).transpose();
        let user_id = optional("user_id", &mapping.user_id)?;
        let anonymous_id = optional("anonymous_id", &mapping.anonymous_id)?;
        let group_id = optional("group_id", &mapping.group_id)?;
        let timestamp = match &mapping.timestamp {
            Some(source) => Some((field("timestamp", source.column())?, source.format())),
            None => None,
        };
        let mut section = |section: &str, columns: &std::collections::BTreeMap<String, String>| {
            columns
                .iter()
                .map(|(key, column)| Ok((key.clone(), field(&format!("{section}.{key}"), column)?)))
                .collect::<Result<Vec<_>, E>>()
        };
        let traits = section("traits", &mapping.traits)?;
        let properties = section("properties", &mapping.properties)?;
        Ok(Plan {
            message_type: mapping.message_type,
            event,
            name,
            user_id,
            anonymous_id,
            group_id,
            traits,
            properties,
            timestamp,
            skip_empty: mapping.skip_empty,
        })
    }

    /// Builds the message for one row, or says why the row cannot be one.
    pub(crate) fn message(&self, record: Record<'_>, line: u64, message_id: String) -> Result<Value, RowError> {
        let mut message = Map::new();
        message.insert("type".to_owned(), Value::String(self.message_type.as_str().to_owned()));
        message.insert("messageId".to_owned(), Value::String(message_id));

        let user_id = self.user_id.as_ref().map(|field| id_text(field, record, line)).transpose()?.flatten();
        let anonymous_id = self.anonymous_id.as_ref().map(|field| id_text(field, record, line)).transpose()?.flatten();
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(RowError::MissingIdentity { line });
        }
        if let Some(user_id) = user_id {
            message.insert("userId".to_owned(), Value::String(user_id));
        }
        if let Some(anonymous_id) = anonymous_id {
            message.insert("anonymousId".to_owned(), Value::String(anonymous_id));
        }
        if let Some(field) = &self.group_id {
            let group_id =
                id_text(field, record, line)?.ok_or_else(|| empty_error(field, record, line, "a group id"))?;
            message.insert("groupId".to_owned(), Value::String(group_id));
        }
        match &self.event {
            Some(Text::Literal(event)) => {
                message.insert("event".to_owned(), Value::String(event.clone()));
            }
            Some(Text::Column(field)) => {
                let event =
                    id_text(field, record, line)?.ok_or_else(|| empty_error(field, record, line, "an event name"))?;
                message.insert("event".to_owned(), Value::String(event));
            }
            None => {}
        }
        match &self.name {
            Some(Text::Literal(name)) => {
                message.insert("name".to_owned(), Value::String(name.clone()));
            }
            Some(Text::Column(field)) => {
                if let Some(name) = id_text(field, record, line)? {
                    message.insert("name".to_owned(), Value::String(name));
                }
            }
            None => {}
        }
        if let Some((field, format)) = &self.timestamp
            && let Some(timestamp) = timestamp(field, *format, record, line)?
        {
            message.insert("timestamp".to_owned(), Value::String(timestamp));
        }

        let traits = self.section(&self.traits, record, line)?;
        let properties = self.section(&self.properties, record, line)?;
        if !properties.is_empty() {
            message.insert("properties".to_owned(), Value::Object(properties));
        }
        if !traits.is_empty() {
            match self.message_type {
                MessageType::Identify | MessageType::Group => {
                    message.insert("traits".to_owned(), Value::Object(traits));
                }
                // The Segment spec carries a user's traits on other messages in `context.traits`.
                MessageType::Track | MessageType::Page | MessageType::Screen => {
                    let mut context = Map::new();
                    context.insert("traits".to_owned(), Value::Object(traits));
                    message.insert("context".to_owned(), Value::Object(context));
                }
            }
        }
        Ok(Value::Object(message))
    }

    fn section(
        &self,
        fields: &[(String, Field)],
        record: Record<'_>,
        line: u64,
    ) -> Result<Map<String, Value>, RowError> {
        let mut values = Map::new();
        for (key, field) in fields {
            if let Some(value) = self.value(field, record, line)? {
                values.insert(key.clone(), value);
            }
        }
        Ok(values)
    }

    /// A trait's or property's value, typed; `None` leaves it out.
    fn value(&self, field: &Field, record: Record<'_>, line: u64) -> Result<Option<Value>, RowError> {
        let cell = cell(field, record, line)?;
        if cell.is_empty() {
            if self.skip_empty || matches!(cell, Cell::Missing) {
                return Ok(None);
            }
            let stays_text = matches!(field.column_type, None | Some(ColumnType::String))
                && !matches!(cell, Cell::Json(Value::Null));
            return Ok(Some(if stays_text { Value::String(String::new()) } else { Value::Null }));
        }
        let typed = match (&cell, field.column_type) {
            (Cell::Missing, _) => return Ok(None),
            (Cell::Text(text), None) => Some(Value::String((*text).to_owned())),
            (Cell::Json(value), None) => Some((*value).clone()),
            (Cell::Text(text), Some(column_type)) => typed_text(text, column_type),
            (Cell::Json(Value::String(text)), Some(column_type)) => typed_text(text, column_type),
            (Cell::Json(value), Some(column_type)) => typed_json(value, column_type),
        };
        match typed {
            Some(value) => Ok(Some(value)),
            None => Err(cell_error(field, line, expected_for(field.column_type), &cell)),
        }
    }
}

/// Reads a field's cell from the row.
fn cell<'r>(field: &Field, record: Record<'r>, line: u64) -> Result<Cell<'r>, RowError> {
    match (&field.locator, record) {
        (Locator::Index(index), Record::Csv(record)) => {
            let bytes = record.get(*index).unwrap_or_default();
            match std::str::from_utf8(bytes) {
                Ok(text) => Ok(Cell::Text(text)),
                Err(_) => Err(RowError::Cell {
                    line,
                    column: field.column.clone(),
                    expected: "UTF-8 text".to_owned(),
                    found: shorten(format!("bytes {}", String::from_utf8_lossy(bytes))),
                }),
            }
        }
        (Locator::Pointer(pointer), Record::Json(object)) => {
            Ok(object.pointer(pointer).map_or(Cell::Missing, Cell::Json))
        }
        // A plan is built for one format, so its locators always match the records it is given.
        _ => unreachable!("a plan's locators match its file's format"),
    }
}

/// An id, event or name: text, or a JSON number written as text. `None`
/// when the cell is empty.
fn id_text(field: &Field, record: Record<'_>, line: u64) -> Result<Option<String>, RowError> {
    let cell = cell(field, record, line)?;
    if cell.is_empty() {
        return Ok(None);
    }
    match cell {
        Cell::Text(text) => Ok(Some(text.to_owned())),
        Cell::Json(Value::String(text)) => Ok(Some(text.clone())),
        Cell::Json(Value::Number(number)) => Ok(Some(number.to_string())),
        _ => Err(cell_error(field, line, "a string or number", &cell)),
    }
}

fn empty_error(field: &Field, record: Record<'_>, line: u64, expected: &str) -> RowError {
    let found = match cell(field, record, line) {
        Ok(Cell::Missing) => "nothing".to_owned(),
        Ok(Cell::Json(Value::Null)) => "null".to_owned(),
        _ => "an empty cell".to_owned(),
    };
    RowError::Cell { line, column: field.column.clone(), expected: expected.to_owned(), found }
}

fn cell_error(field: &Field, line: u64, expected: &str, cell: &Cell<'_>) -> RowError {
    RowError::Cell { line, column: field.column.clone(), expected: expected.to_owned(), found: cell.shown() }
}

fn expected_for(column_type: Option<ColumnType>) -> &'static str {
    match column_type {
        None | Some(ColumnType::String) => "a string, number or boolean",
        Some(ColumnType::Number) => "a number",
        Some(ColumnType::Integer) => "an integer",
        Some(ColumnType::Boolean) => "a boolean",
    }
}

fn typed_text(text: &str, column_type: ColumnType) -> Option<Value> {
    let trimmed = text.trim();
    match column_type {
        ColumnType::String => Some(Value::String(text.to_owned())),
        ColumnType::Integer => integer(trimmed),
        ColumnType::Number => integer(trimmed).or_else(|| {
            // `f64::from_str` also reads "inf" and "NaN", which JSON cannot hold.
            let number: f64 = trimmed.parse().ok()?;
            Number::from_f64(number).map(Value::Number)
        }),
        ColumnType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(Value::Bool(true)),
            "false" | "no" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
    }
}

fn integer(text: &str) -> Option<Value> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(Value::Number(integer.into()));
    }
    text.parse::<u64>().ok().map(|integer| Value::Number(integer.into()))
}

fn typed_json(value: &Value, column_type: ColumnType) -> Option<Value> {
    match (column_type, value) {
        (ColumnType::String, Value::Number(number)) => Some(Value::String(number.to_string())),
        (ColumnType::String, Value::Bool(boolean)) => Some(Value::String(boolean.to_string())),
        (ColumnType::Number, Value::Number(_)) | (ColumnType::Boolean, Value::Bool(_)) => Some(value.clone()),
        (ColumnType::Integer, Value::Number(number)) if number.is_i64() || number.is_u64() => Some(value.clone()),
        _ => None,
    }
}

/// The row's timestamp as RFC 3339 in UTC; `None` when the cell is empty.
fn timestamp(
    field: &Field,
    format: TimestampFormat,
    record: Record<'_>,
    line: u64,
) -> Result<Option<String>, RowError> {
    let cell = cell(field, record, line)?;
    if cell.is_empty() {
        return Ok(None);
    }
    let text = match &cell {
        Cell::Text(text) => Some(text.trim().to_owned()),
        Cell::Json(Value::String(text)) => Some(text.trim().to_owned()),
        Cell::Json(Value::Number(number)) if format != TimestampFormat::Rfc3339 => Some(number.to_string()),
        _ => None,
    };
    let parsed: Option<DateTime<Utc>> = text.as_deref().and_then(|text| match format {
        TimestampFormat::Rfc3339 => DateTime::parse_from_rfc3339(text).ok().map(|datetime| datetime.to_utc()),
        TimestampFormat::UnixSeconds => match text.parse::<i64>() {
            Ok(seconds) => DateTime::from_timestamp(seconds, 0),
            Err(_) => {
                let seconds: f64 = text.parse().ok()?;
                let millis = (seconds * 1000.0).round();
                // The cast saturates; out-of-range values are refused by `from_timestamp_millis`.
                if millis.is_finite() { DateTime::from_timestamp_millis(millis as i64) } else { None }
            }
        },
        TimestampFormat::UnixMillis => text.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis),
        TimestampFormat::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|at| at.and_utc()),
    });
    match parsed {
        Some(datetime) => Ok(Some(datetime.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
        None => {
            let expected = match format {
                TimestampFormat::Rfc3339 => "an RFC 3339 timestamp",
                TimestampFormat::UnixSeconds => "unix seconds",
                TimestampFormat::UnixMillis => "unix milliseconds",
                TimestampFormat::Date => "a date (YYYY-MM-DD)",
            };
            Err(cell_error(field, line, expected, &cell))
        }
    }
}
