//! Exports as Parquet: one row per event line, with the same columns as the
//! NDJSON event line (JSON fields as JSON text), and the header and end
//! lines in the file's key-value metadata (`onepd.export.header`,
//! `onepd.export.end`). Rows are written in row groups of
//! [`ROW_GROUP_ROWS`], so memory stays flat in the export's size.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::value::RawValue;

use super::{ExportLine, ExportRow, LineKind};

/// Rows per row group (and per batch written).
pub const ROW_GROUP_ROWS: usize = 8_192;
/// The metadata key of the header line.
pub const HEADER_KEY: &str = "onepd.export.header";
/// The metadata key of the end line.
pub const END_KEY: &str = "onepd.export.end";

/// Why a Parquet export could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// Parquet or Arrow failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A line or a row is not what an export holds.
    #[error("{0}")]
    Invalid(String),
}

/// The columns, in the order of the NDJSON line's fields.
pub fn schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("position", DataType::UInt64, false),
        text("event_id", false),
        text("workspace_id", false),
        text("stream_id", false),
        Field::new("stream_version", DataType::UInt64, false),
        text("event_type", false),
        Field::new("schema_version", DataType::UInt32, false),
        Field::new("recorded_at", DataType::Int64, false),
        text("time", false),
        text("key_id", true),
        text("metadata", true),
        text("data", true),
        text("stored_data", true),
        text("stored_metadata", true),
        text("erased", true),
        text("unreadable", true),
        Field::new("rejected", DataType::Boolean, false),
        text("quarantined", true),
        text("previous_hash", false),
        text("hash", false),
        text("check", false),
    ]))
}

/// Column builders for one batch.
#[derive(Default)]
struct Builders {
    position: UInt64Builder,
    event_id: StringBuilder,
    workspace_id: StringBuilder,
    stream_id: StringBuilder,
    stream_version: UInt64Builder,
    event_type: StringBuilder,
    schema_version: UInt32Builder,
    recorded_at: Int64Builder,
    time: StringBuilder,
    key_id: StringBuilder,
    metadata: StringBuilder,
    data: StringBuilder,
    stored_data: StringBuilder,
    stored_metadata: StringBuilder,
    erased: StringBuilder,
    unreadable: StringBuilder,
    rejected: BooleanBuilder,
    quarantined: StringBuilder,
    previous_hash: StringBuilder,
    hash: StringBuilder,
    check: StringBuilder,
    rows: usize,
}

impl Builders {
    fn push(&mut self, row: &ExportRow) {
        self.position.append_value(row.position);
        self.event_id.append_value(row.event_id.to_string());
        self.workspace_id.append_value(row.workspace_id.to_string());
        self.stream_id.append_value(&row.stream_id);
        self.stream_version.append_value(row.stream_version);
        self.event_type.append_value(&row.event_type);
        self.schema_version.append_value(row.schema_version);
        self.recorded_at.append_value(row.recorded_at);
        self.time.append_value(&row.time);
        self.key_id.append_option(row.key_id.map(|key| key.to_string()));
        self.metadata.append_option(row.metadata.as_ref().map(|raw| raw.get()));
        self.data.append_option(row.data.as_ref().map(|raw| raw.get()));
        self.stored_data.append_option(row.stored_data.as_deref());
        self.stored_metadata.append_option(row.stored_metadata.as_deref());
        self.erased.append_option(row.erased.as_deref());
        self.unreadable.append_option(row.unreadable.as_deref());
        self.rejected.append_value(row.rejected);
        self.quarantined.append_option(row.quarantined.as_deref());
        self.previous_hash.append_value(&row.previous_hash);
        self.hash.append_value(&row.hash);
        self.check.append_value(&row.check);
        self.rows += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch, ParquetError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.position.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.workspace_id.finish()),
            Arc::new(self.stream_id.finish()),
            Arc::new(self.stream_version.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.schema_version.finish()),
            Arc::new(self.recorded_at.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.key_id.finish()),
            Arc::new(self.metadata.finish()),
            Arc::new(self.data.finish()),
            Arc::new(self.stored_data.finish()),
            Arc::new(self.stored_metadata.finish()),
            Arc::new(self.erased.finish()),
            Arc::new(self.unreadable.finish()),
            Arc::new(self.rejected.finish()),
            Arc::new(self.quarantined.finish()),
            Arc::new(self.previous_hash.finish()),
            Arc::new(self.hash.finish()),
            Arc::new(self.check.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

/// Writes an export's lines as a Parquet file.
pub struct ParquetSink<W: Write + Send> {
    writer: ArrowWriter<W>,
    builders: Builders,
}

impl<W: Write + Send> ParquetSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Result<ParquetSink<W>, ParquetError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        Ok(ParquetSink {
            writer: ArrowWriter::try_new(out, schema(), Some(properties))?,
            builders: Builders::default(),
        })
    }

    /// Takes the next line of the export.
    pub fn line(&mut self, line: &ExportLine) -> Result<(), ParquetError> {
        match line.kind {
            LineKind::Header => {
                self.writer.append_key_value_metadata(KeyValue::new(HEADER_KEY.into(), line.text.clone()))
            }
            LineKind::End => self.writer.append_key_value_metadata(KeyValue::new(END_KEY.into(), line.text.clone())),
            LineKind::Event => {
                match &line.row {
                    Some(row) => self.builders.push(row),
                    None => {
                        let row: ExportRow = serde_json::from_str(&line.text).map_err(|err| {
                            ParquetError::Invalid(format!("an event line is not an export row: {err}"))
                        })?;
                        self.builders.push(&row);
                    }
                }
                if self.builders.rows >= ROW_GROUP_ROWS {
                    let batch = self.builders.finish()?;
                    self.writer.write(&batch)?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is left and the file's footer.
    pub fn finish(mut self) -> Result<(), ParquetError> {
        if self.builders.rows > 0 {
            let batch = self.builders.finish()?;
            self.writer.write(&batch)?;
        }
        self.writer.close()?;
        Ok(())
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ParquetError> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<T>())
        .ok_or_else(|| ParquetError::Invalid(format!("column {name:?} is missing or of another type")))
}

fn text(array: &StringArray, index: usize) -> Option<String> {
    (!array.is_null(index)).then(|| array.value(index).to_owned())
}

fn raw(array: &StringArray, index: usize, name: &str) -> Result<Option<Box<RawValue>>, ParquetError> {
    text(array, index)
        .map(|text| {
            RawValue::from_string(text).map_err(|err| ParquetError::Invalid(format!("{name}: not JSON ({err})")))
        })
        .transpose()
}

fn uuid(text: &str, name: &str) -> Result<uuid::Uuid, ParquetError> {
    uuid::Uuid::parse_str(text).map_err(|err| ParquetError::Invalid(format!("{name}: not a UUID ({err})")))
}

/// The rows of one batch.
fn rows_of(batch: &RecordBatch) -> Result<Vec<ExportRow>, ParquetError> {
    let position = column::<UInt64Array>(batch, "position")?;
    let event_id = column::<StringArray>(batch, "event_id")?;
    let workspace_id = column::<StringArray>(batch, "workspace_id")?;
    let stream_id = column::<StringArray>(batch, "stream_id")?;
    let stream_version = column::<UInt64Array>(batch, "stream_version")?;
    let event_type = column::<StringArray>(batch, "event_type")?;
    let schema_version = column::<UInt32Array>(batch, "schema_version")?;
    let recorded_at = column::<Int64Array>(batch, "recorded_at")?;
    let time = column::<StringArray>(batch, "time")?;
    let key_id = column::<StringArray>(batch, "key_id")?;
    let metadata = column::<StringArray>(batch, "metadata")?;
    let data = column::<StringArray>(batch, "data")?;
    let stored_data = column::<StringArray>(batch, "stored_data")?;
    let stored_metadata = column::<StringArray>(batch, "stored_metadata")?;
    let erased = column::<StringArray>(batch, "erased")?;
    let unreadable = column::<StringArray>(batch, "unreadable")?;
    let rejected = column::<BooleanArray>(batch, "rejected")?;
    let quarantined = column::<StringArray>(batch, "quarantined")?;
    let previous_hash = column::<StringArray>(batch, "previous_hash")?;
    let hash = column::<StringArray>(batch, "hash")?;
    let check = column::<StringArray>(batch, "check")?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(ExportRow {
                position: position.value(i),
                event_id: uuid(event_id.value(i), "event_id")?,
                workspace_id: uuid(workspace_id.value(i), "workspace_id")?,
                stream_id: stream_id.value(i).to_owned(),
                stream_version: stream_version.value(i),
                event_type: event_type.value(i).to_owned(),
                schema_version: schema_version.value(i),
                recorded_at: recorded_at.value(i),
                time: time.value(i).to_owned(),
                key_id: text(key_id, i).map(|key| uuid(&key, "key_id")).transpose()?,
                metadata: raw(metadata, i, "metadata")?,
                data: raw(data, i, "data")?,
                stored_data: text(stored_data, i),
                stored_metadata: text(stored_metadata, i),
                erased: text(erased, i),
                unreadable: text(unreadable, i),
                rejected: rejected.value(i),
                quarantined: text(quarantined, i),
                previous_hash: previous_hash.value(i).to_owned(),
                hash: hash.value(i).to_owned(),
                check: check.value(i).to_owned(),
            })
        })
        .collect()
}

/// The lines of a Parquet export, as the NDJSON export would hold them: the
/// header, each row's line, the end line. Row groups are read one at a time.
pub fn lines(file: File) -> Result<impl Iterator<Item = Result<String, String>>, ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    // Exactly onepd's columns: a column more (a second `data`, say) is
    // something a reader would see and the check would not.
    let expected = schema();
    let found = builder.schema();
    let same = found.fields().len() == expected.fields().len()
        && found.fields().iter().zip(expected.fields().iter()).all(|(found, expected)| {
            found.name() == expected.name()
                && found.data_type() == expected.data_type()
                && found.is_nullable() == expected.is_nullable()
        });
    if !same {
        return Err(ParquetError::Invalid(
            "its columns are not exactly those onepd writes: columns were added, removed or changed".into(),
        ));
    }
    let metadata = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    let find = |key: &str| -> Result<Option<String>, ParquetError> {
        let mut found = metadata.iter().filter(|kv| kv.key == key);
        let value = found.next().and_then(|kv| kv.value.clone());
        if found.next().is_some() {
            return Err(ParquetError::Invalid(format!("{key} is in its metadata more than once")));
        }
        Ok(value)
    };
    let header = find(HEADER_KEY)?.ok_or_else(|| ParquetError::Invalid(format!("no {HEADER_KEY} in its metadata")))?;
    let end = find(END_KEY)?;
    let reader = builder.with_batch_size(ROW_GROUP_ROWS).build()?;
    let rows = reader.flat_map(|batch| -> Vec<Result<String, String>> {
        match batch.map_err(ParquetError::from).and_then(|batch| rows_of(&batch)) {
            Ok(rows) => rows.iter().map(|row| Ok(super::body(row))).collect(),
            Err(err) => vec![Err(err.to_string())],
        }
    });
    let end = end.map(Ok).into_iter();
    Ok(std::iter::once(Ok(header)).chain(rows).chain(end))
}
