//! The import mapping: which message a file's rows become, and which column
//! feeds which field.
//!
//! The format, with an example, is documented on the parent module
//! ([`super`]). This module only holds the serde types and the checks that
//! need no file (a track needs an event, a group needs a group id); checks
//! against the file's header are done by [`super::ImportReader::new`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ImportError;

/// How a file's rows become Segment-spec messages.
///
/// Parse it with [`ImportMapping::from_json`]; the fields are public so a
/// caller can also build one in code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportMapping {
    /// The file's format. When absent, [`ImportMapping::detect_format`] fills
    /// it in from the file name (`.csv`, `.ndjson`, `.jsonl`, each optionally
    /// followed by `.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The type of every message the file produces.
    #[serde(rename = "type")]
    pub message_type: MessageType,
    /// A track's event name: a literal, or `{"column": "…"}`. Required for
    /// `track`, refused for the other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<TextSource>,
    /// A page's or screen's name: a literal, or `{"column": "…"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<TextSource>,
    /// The column holding `userId`. At least one of `user_id` and
    /// `anonymous_id` is required, and each row must fill at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The column holding `anonymousId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// The column holding `groupId`; required for `group`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Trait name → column. Identifiers beyond the ids (`email`, `phone`) are
    /// traits, as in the Segment spec. They go to `traits` for identify and
    /// group, and to `context.traits` for the other types.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, String>,
    /// Property name → column, for track, page and screen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The column holding the message's `timestamp`, and how to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampSource>,
    /// Column → type, to turn a CSV cell (always text) into a JSON number or
    /// boolean. Columns not listed stay strings in CSV and keep their JSON
    /// type in NDJSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, ColumnType>,
    /// Whether empty cells (an empty CSV field, a JSON `null` or `""`) are
    /// left out of the message. When false they become `""` for string
    /// columns and `null` for typed ones. Ids, the event and the timestamp
    /// are always left out when empty.
    #[serde(default = "default_skip_empty")]
    pub skip_empty: bool,
    /// The CSV field delimiter, one ASCII character; `,` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
}

fn default_skip_empty() -> bool {
    true
}

/// The format of an import file, before any gzip compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row; columns are named by it.
    Csv,
    /// One JSON object per line; columns are JSON pointers into it.
    Ndjson,
}

impl Format {
    /// The format a file name implies, looking through a `.gz` suffix:
    /// `sales.csv.gz` is CSV, `events.jsonl` is NDJSON.
    pub fn from_file_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.strip_suffix(".gz").unwrap_or(&lower);
        if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            Some(Format::Ndjson)
        } else {
            None
        }
    }
}

/// The Segment message types a file can produce. `alias` is absent: it has
/// no natural one-row-per-record shape in an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// Who a user is: ids and traits.
    Identify,
    /// What a user did: an event with properties.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// A user's membership of a group (an account, a company).
    Group,
}

impl MessageType {
    /// The `type` field of the message.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
        }
    }
}

/// A text field that is the same for every row, or read from a column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextSource {
    /// The same text on every message: `"event": "Order Completed"`.
    Literal(String),
    /// The text of a column: `"event": {"column": "event_name"}`.
    Column {
        /// The column's name (CSV) or JSON pointer (NDJSON).
        column: String,
    },
}

/// Where a message's timestamp comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimestampSource {
    /// A column of RFC 3339 timestamps: `"timestamp": "created_at"`.
    Column(String),
    /// A column and its format: `{"column": "ts", "format": "unix_millis"}`.
    Formatted {
        /// The column's name (CSV) or JSON pointer (NDJSON).
        column: String,
        /// How the column's values are written.
        #[serde(default)]
        format: TimestampFormat,
    },
}

impl TimestampSource {
    /// The column the timestamp is read from.
    pub fn column(&self) -> &str {
        match self {
            TimestampSource::Column(column) | TimestampSource::Formatted { column, .. } => column,
        }
    }

    /// How the column's values are written.
    pub fn format(&self) -> TimestampFormat {
        match self {
            TimestampSource::Column(_) => TimestampFormat::Rfc3339,
            TimestampSource::Formatted { format, .. } => *format,
        }
    }
}

/// How a timestamp column is written. Every format becomes an RFC 3339
/// timestamp in UTC on the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// `2024-03-12T16:09:28-04:00`.
    #[default]
    Rfc3339,
    /// Seconds since 1970-01-01 UTC, possibly fractional: `1710274168`.
    UnixSeconds,
    /// Milliseconds since 1970-01-01 UTC: `1710274168123`.
    UnixMillis,
    /// A calendar date, `2024-03-12`, taken as midnight UTC.
    Date,
}

/// The JSON type a column's values are turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// A JSON string; a JSON number or boolean in NDJSON is written as text.
    String,
    /// Any finite JSON number: `12`, `-3.5`, `1e3`.
    Number,
    /// A whole JSON number: `12`, `-3`.
    Integer,
    /// `true`/`false`, also written `yes`/`no` or `1`/`0`, in any case.
    Boolean,
}

impl ImportMapping {
    /// Parses a mapping from its JSON text and checks what can be checked
    /// without the file.
    pub fn from_json(text: &str) -> Result<ImportMapping, ImportError> {
        let mapping: ImportMapping = serde_json::from_str(text).map_err(|error| ImportError::Mapping {
            field: "mapping".to_owned(),
            expected: "a valid import mapping".to_owned(),
            found: error.to_string(),
        })?;
        mapping.check()?;
        Ok(mapping)
    }

    /// Fills in `format` from the file name when the mapping leaves it out.
    /// A format given in the mapping wins over the file name.
    pub fn detect_format(&mut self, file_name: &str) -> Result<Format, ImportError> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        let format = Format::from_file_name(file_name).ok_or_else(|| ImportError::Mapping {
            field: "format".to_owned(),
            expected: "csv or ndjson, or a file name ending in .csv, .ndjson or .jsonl (optionally .gz)".to_owned(),
            found: format!("{file_name:?}"),
        })?;
        self.format = Some(format);
        Ok(format)
    }

    /// Checks the rules that need no file: which fields each type needs or
    /// refuses, and that `types` only names mapped columns.
    pub fn check(&self) -> Result<(), ImportError> {
        let kind = self.message_type;
        let refuse = |field: &str, present: bool| {
            if present {
                Err(mapping_error(field, format!("no {field} for a {}", kind.as_str()), "one"))
            } else {
                Ok(())
            }
        };
        if self.user_id.is_none() && self.anonymous_id.is_none() {
            return Err(mapping_error("user_id", "user_id or anonymous_id", "neither"));
        }
        match kind {
            MessageType::Track => {
                if self.event.is_none() {
                    return Err(mapping_error("event", "an event for a track", "none"));
                }
            }
            _ => refuse("event", self.event.is_some())?,
        }
        if kind == MessageType::Group && self.group_id.is_none() {
            return Err(mapping_error("group_id", "a group_id column for a group", "none"));
        }
        if kind != MessageType::Group {
            refuse("group_id", self.group_id.is_some())?;
        }
        if !matches!(kind, MessageType::Page | MessageType::Screen) {
            refuse("name", self.name.is_some())?;
        }
        if matches!(kind, MessageType::Identify | MessageType::Group) {
            refuse("properties", !self.properties.is_empty())?;
        }
        if let Some(delimiter) = self.delimiter
            && (!delimiter.is_ascii() || delimiter == '"' || delimiter == '\n' || delimiter == '\r')
        {
            return Err(mapping_error(
                "delimiter",
                "one ASCII character other than a quote or newline",
                &format!("{delimiter:?}"),
            ));
        }
        let mapped: Vec<&str> = self.columns().map(|(_, column)| column).collect();
        for column in self.types.keys() {
            if !mapped.contains(&column.as_str()) {
                return Err(mapping_error(
                    &format!("types.{column}"),
                    "a column used by the mapping",
                    "none by that name",
                ));
            }
        }
        Ok(())
    }

    /// Every column the mapping reads, with the mapping field that names it
    /// (`traits.email`), in a fixed order.
    pub(crate) fn columns(&self) -> impl Iterator<Item = (String, &str)> {
        fn text_column(source: &Option<TextSource>) -> Option<&str> {
            match source {
                Some(TextSource::Column { column }) => Some(column),
                _ => None,
            }
        }
        let singles = [
            ("user_id".to_owned(), self.user_id.as_deref()),
            ("anonymous_id".to_owned(), self.anonymous_id.as_deref()),
            ("group_id".to_owned(), self.group_id.as_deref()),
            ("event.column".to_owned(), text_column(&self.event)),
            ("name.column".to_owned(), text_column(&self.name)),
            ("timestamp".to_owned(), self.timestamp.as_ref().map(TimestampSource::column)),
        ];
        let singles = singles.into_iter().filter_map(|(field, column)| Some((field, column?)));
        let traits = self.traits.iter().map(|(name, column)| (format!("traits.{name}"), column.as_str()));
        let properties = self.properties.iter().map(|(name, column)| (format!("properties.{name}"), column.as_str()));
        singles.chain(traits).chain(properties)
    }
}

fn mapping_error(field: &str, expected: impl Into<String>, found: &str) -> ImportError {
    ImportError::Mapping { field: field.to_owned(), expected: expected.into(), found: found.to_owned() }
}
