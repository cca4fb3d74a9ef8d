//! Behaviour of the import reader, one sentence per test.

use std::io::{Read, Write};

use serde_json::{Value, json};

use super::*;

fn mapping(json: Value) -> ImportMapping {
    ImportMapping::from_json(&json.to_string()).expect("a valid mapping")
}

fn rows(input: &[u8], mapping: &ImportMapping) -> Vec<Row> {
    ImportReader::new(input, mapping, "f1").expect("a readable file").map(|row| row.expect("a readable row")).collect()
}

fn messages(input: &[u8], mapping: &ImportMapping) -> Vec<Value> {
    rows(input, mapping).into_iter().map(|row| row.result.expect("a good row")).collect()
}

fn without_id(mut message: Value) -> Value {
    let id = message.as_object_mut().unwrap().remove("messageId").expect("a messageId");
    let id = id.as_str().unwrap();
    let hash = id.strip_prefix("import:f1:").expect("the file id in the messageId");
    assert!(hash.len() == 32 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    message
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn identify_mapping() -> ImportMapping {
    mapping(json!({
        "format": "csv",
        "type": "identify",
        "user_id": "id",
        "traits": {"email": "email", "phone": "phone", "vip": "vip"},
        "timestamp": "updated_at",
        "types": {"vip": "boolean"}
    }))
}

fn track_mapping() -> ImportMapping {
    mapping(json!({
        "format": "csv",
        "type": "track",
        "event": "Order Completed",
        "user_id": "customer",
        "anonymous_id": "device",
        "traits": {"email": "email"},
        "properties": {"order_id": "order", "revenue": "total"},
        "timestamp": {"column": "day", "format": "date"},
        "types": {"total": "number"}
    }))
}

#[test]
fn a_csv_of_identifies_maps_traits_and_ids() {
    let csv = b"\xEF\xBB\xBFid, email ,phone,vip,updated_at\n\
        u1,ann@example.com,+33612345678,yes,2024-03-12T16:09:28-04:00\n\
        u2,bob@example.com,,no,\n";

    let messages: Vec<Value> = messages(csv, &identify_mapping()).into_iter().map(without_id).collect();

    assert_eq!(
        messages,
        [
            json!({
                "type": "identify",
                "userId": "u1",
                "traits": {"email": "ann@example.com", "phone": "+33612345678", "vip": true},
                "timestamp": "2024-03-12T20:09:28Z"
            }),
            json!({"type": "identify", "userId": "u2", "traits": {"email": "bob@example.com", "vip": false}}),
        ]
    );
}

#[test]
fn a_csv_of_tracks_types_revenue_as_a_number() {
    let csv = b"order,customer,device,email,total,day\n\
        o1,u1,,ann@example.com,12.50,2024-03-12\n\
        o2,,d9,,7,2024-03-13\n";

    let messages: Vec<Value> = messages(csv, &track_mapping()).into_iter().map(without_id).collect();

    assert_eq!(
        messages,
        [
            json!({
                "type": "track",
                "userId": "u1",
                "event": "Order Completed",
                "timestamp": "2024-03-12T00:00:00Z",
                "properties": {"order_id": "o1", "revenue": 12.5},
                "context": {"traits": {"email": "ann@example.com"}}
            }),
            json!({
                "type": "track",
                "anonymousId": "d9",
                "event": "Order Completed",
                "timestamp": "2024-03-13T00:00:00Z",
                "properties": {"order_id": "o2", "revenue": 7}
            }),
        ]
    );
}

#[test]
fn ndjson_columns_are_json_pointers_into_each_line() {
    let mapping = mapping(json!({
        "format": "ndjson",
        "type": "track",
        "event": {"column": "/kind"},
        "user_id": "/customer/id",
        "traits": {"email": "/customer/email"},
        "properties": {"total": "/total", "items": "/items", "coupon": "/coupon"},
        "timestamp": {"column": "/at", "format": "unix_millis"},
        "types": {"/total": "number"}
    }));
    let ndjson = b"{\"kind\":\"Order Completed\",\"customer\":{\"id\":42,\"email\":\"ann@example.com\"},\"total\":\"9.5\",\"items\":[1,2],\"coupon\":null,\"at\":1710274168123}\r\n\
        \n\
        {\"kind\":\"Refunded\",\"customer\":{\"id\":\"u7\"},\"total\":3}\n";

    let rows = rows(ndjson, &mapping);

    assert_eq!(rows.iter().map(|row| row.line).collect::<Vec<_>>(), [1, 3], "the blank line is skipped but counted");
    let messages: Vec<Value> = rows.into_iter().map(|row| without_id(row.result.unwrap())).collect();
    assert_eq!(
        messages,
        [
            json!({
                "type": "track",
                "userId": "42",
                "event": "Order Completed",
                "timestamp": "2024-03-12T20:09:28.123Z",
                "properties": {"total": 9.5, "items": [1, 2]},
                "context": {"traits": {"email": "ann@example.com"}}
            }),
            json!({"type": "track", "userId": "u7", "event": "Refunded", "properties": {"total": 3}}),
        ]
    );
}

#[test]
fn gzip_is_detected_by_its_magic_bytes() {
    let csv = b"order,customer,device,email,total,day\no1,u1,,,1,2024-03-12\no2,u2,,,2,2024-03-12\n";

    let plain = messages(csv, &track_mapping());
    let compressed = messages(&gzip(csv), &track_mapping());

    assert_eq!(plain.len(), 2);
    assert_eq!(plain, compressed);
}

#[test]
fn corrupt_gzip_fails_the_whole_file() {
    let mut bytes = gzip(b"id,email\nu1,a@b.c\n");
    bytes.truncate(3);
    bytes.extend_from_slice(b"garbage that is not deflate");

    let error = ImportReader::new(bytes.as_slice(), &identify_mapping(), "f1").err().expect("an import error");

    assert!(matches!(error, ImportError::Gzip { line: 1, .. }), "{error}");
}

#[test]
fn a_truncated_gzip_stream_ends_the_iteration_with_an_error() {
    let mut csv = b"id,email,phone,vip,updated_at\n".to_vec();
    for i in 0..20_000 {
        csv.extend_from_slice(format!("u{i},u{i}@example.com,,yes,\n").as_bytes());
    }
    let mut bytes = gzip(&csv);
    bytes.truncate(bytes.len() / 2);

    let mut reader = ImportReader::new(bytes.as_slice(), &identify_mapping(), "f1").unwrap();
    let good = reader.by_ref().take_while(Result::is_ok).count();

    assert!(good > 0 && good < 20_000, "{good} rows before the error");
    assert!(reader.next().is_none(), "the iteration ends after the error");
}

#[test]
fn reading_the_same_file_again_gives_the_same_message_ids() {
    let csv = b"order,customer,device,email,total,day\no1,u1,,,1,2024-03-12\no2,u2,,,2,2024-03-12\n";

    let first = messages(csv, &track_mapping());
    let second = messages(csv, &track_mapping());

    assert_eq!(first, second);
    assert_ne!(first[0]["messageId"], first[1]["messageId"]);
}

#[test]
fn two_identical_rows_on_different_lines_get_different_message_ids() {
    let csv = b"order,customer,device,email,total,day\no1,u1,,,1,2024-03-12\no1,u1,,,1,2024-03-12\n";

    let messages = messages(csv, &track_mapping());

    assert_eq!(without_id(messages[0].clone()), without_id(messages[1].clone()));
    assert_ne!(messages[0]["messageId"], messages[1]["messageId"]);
}

#[test]
fn the_file_id_separates_message_types_but_not_trait_fixes() {
    let file = b"id,email\nu1,a@b.c\n";
    let identify = identify_mapping();
    let mut fixed = identify.clone();
    fixed.traits.insert("email".to_owned(), "e-mail".to_owned());

    assert_eq!(file_id(&identify, file), file_id(&identify, file));
    assert_eq!(file_id(&identify, file), file_id(&fixed, file));
    assert_ne!(file_id(&identify, file), file_id(&track_mapping(), file));
    assert_ne!(file_id(&identify, file), file_id(&identify, b"id,email\nu2,a@b.c\n"));
}

#[test]
fn bad_csv_rows_carry_their_line_and_reason_while_good_rows_still_come_through() {
    let csv = b"order,customer,device,email,total,day\n\
        o1,u1,,,1,2024-03-12\n\
        o2,u2,,,2\n\
        o3,,,,3,2024-03-12\n\
        o4,u4,,,4,2024-03-12\n\
        o5,u5,,,\"12 USD\",2024-03-12\n\
        o6,u6,,,6,yesterday\n\
        o7,u7,,,7,2024-03-12\n";

    let outcomes: Vec<(u64, Result<(), String>)> = rows(csv, &track_mapping())
        .into_iter()
        .map(|row| (row.line, row.result.map(|_| ()).map_err(|error| error.to_string())))
        .collect();

    assert_eq!(
        outcomes,
        [
            (2, Ok(())),
            (3, Err("line 3: expected 6 columns, found 5".to_owned())),
            (4, Err("line 4: expected user_id or anonymous_id, found neither".to_owned())),
            (5, Ok(())),
            (6, Err("line 6, column total: expected a number, found \"12 USD\"".to_owned())),
            (7, Err("line 7, column day: expected a date (YYYY-MM-DD), found \"yesterday\"".to_owned())),
            (8, Ok(())),
        ]
    );
}

#[test]
fn bad_ndjson_lines_carry_their_line_and_reason_while_good_lines_still_come_through() {
    let mapping = mapping(json!({
        "format": "ndjson",
        "type": "identify",
        "user_id": "/id",
        "traits": {"age": "/age"},
        "types": {"/age": "integer"}
    }));
    let ndjson = b"{\"id\":\"u1\",\"age\":30}\n[1,2]\n{\"id\":\"u3\",\n{\"id\":\"u4\",\"age\":\"31.5\"}\n{\"age\":5}\n{\"id\":\"u6\"}";

    let outcomes: Vec<(u64, Result<(), String>)> = rows(ndjson, &mapping)
        .into_iter()
        .map(|row| (row.line, row.result.map(|_| ()).map_err(|error| error.to_string())))
        .collect();

    assert_eq!(
        outcomes,
        [
            (1, Ok(())),
            (2, Err("line 2: expected a JSON object, found an array".to_owned())),
            (3, Err("line 3: expected a JSON object, found invalid JSON (EOF while parsing a value at line 1 column 11)".to_owned())),
            (4, Err("line 4, column /age: expected an integer, found \"31.5\"".to_owned())),
            (5, Err("line 5: expected user_id or anonymous_id, found neither".to_owned())),
            (6, Ok(())),
        ]
    );
}

#[test]
fn a_mapped_column_missing_from_the_header_fails_the_whole_file() {
    let csv = b"id,mail,phone,vip,updated_at\nu1,a@b.c,,,\n";

    let error = ImportReader::new(&csv[..], &identify_mapping(), "f1").err().expect("an import error");

    assert_eq!(
        error.to_string(),
        "mapping.traits.email: expected a column of the header (\"id\", \"mail\", \"phone\", \"vip\", \"updated_at\"), found none named \"email\""
    );
}

#[test]
fn a_header_naming_a_column_twice_fails_the_whole_file() {
    let csv = b"id,email,phone,vip,updated_at,email\n";

    let error = ImportReader::new(&csv[..], &identify_mapping(), "f1").err().expect("an import error");

    assert_eq!(error.to_string(), "line 1: expected unique column names, found \"email\" twice");
}

#[test]
fn an_empty_csv_file_has_no_header() {
    let error = ImportReader::new(&b""[..], &identify_mapping(), "f1").err().expect("an import error");

    assert_eq!(error.to_string(), "line 1: expected a header row, found an empty file");
}

#[test]
fn a_track_mapping_without_an_event_is_refused() {
    let error = ImportMapping::from_json(r#"{"type": "track", "user_id": "id"}"#).unwrap_err();

    assert_eq!(error.to_string(), "mapping.event: expected an event for a track, found none");
}

#[test]
fn a_type_for_a_column_the_mapping_does_not_use_is_refused() {
    let error = ImportMapping::from_json(r#"{"type": "identify", "user_id": "id", "types": {"revenu": "number"}}"#)
        .unwrap_err();

    assert_eq!(
        error.to_string(),
        "mapping.types.revenu: expected a column used by the mapping, found none by that name"
    );
}

#[test]
fn ndjson_columns_must_be_json_pointers() {
    let mut mapping = identify_mapping();
    mapping.format = Some(Format::Ndjson);

    let error = ImportReader::new(&b"{}\n"[..], &mapping, "f1").err().expect("an import error");

    assert_eq!(error.to_string(), "mapping.user_id: expected a JSON pointer such as \"/customer/email\", found \"id\"");
}

#[test]
fn the_format_is_detected_from_the_file_name() {
    let mut mapping = mapping(json!({"type": "identify", "user_id": "/id"}));

    assert!(mapping.clone().detect_format("export.xlsx").is_err());
    assert_eq!(mapping.detect_format("Events.JSONL.gz").unwrap(), Format::Ndjson);
    assert_eq!(mapping.format, Some(Format::Ndjson));
    assert_eq!(Format::from_file_name("sales.csv"), Some(Format::Csv));
    assert_eq!(Format::from_file_name("sales.ndjson"), Some(Format::Ndjson));
}

#[test]
fn timestamps_in_each_format_become_rfc3339_in_utc() {
    let cases = [
        ("rfc3339", "2024-03-12T16:09:28.5+02:00", "2024-03-12T14:09:28.500Z"),
        ("unix_seconds", "1710274168", "2024-03-12T20:09:28Z"),
        ("unix_seconds", "1710274168.25", "2024-03-12T20:09:28.250Z"),
        ("unix_millis", "1710274168123", "2024-03-12T20:09:28.123Z"),
        ("date", "2024-03-12", "2024-03-12T00:00:00Z"),
    ];
    for (format, cell, expected) in cases {
        let mapping = mapping(json!({
            "format": "csv", "type": "identify", "user_id": "id",
            "timestamp": {"column": "at", "format": format}
        }));
        let csv = format!("id,at\nu1,{cell}\n");

        let messages = messages(csv.as_bytes(), &mapping);

        assert_eq!(messages[0]["timestamp"], expected, "{format} {cell}");
    }
}

#[test]
fn empty_cells_are_kept_when_skip_empty_is_off() {
    let mapping = mapping(json!({
        "format": "csv", "type": "identify", "user_id": "id",
        "traits": {"email": "email", "age": "age"},
        "types": {"age": "integer"},
        "skip_empty": false
    }));

    let messages = messages(b"id,email,age\nu1,,\n", &mapping);

    assert_eq!(messages[0]["traits"], json!({"email": "", "age": null}));
}

/// A CSV file of `rows` track rows, produced on the fly as it is read, so a
/// test of streaming never holds the file.
struct GeneratedCsv {
    rows: u64,
    next_row: u64,
    pending: Vec<u8>,
    offset: usize,
}

impl GeneratedCsv {
    fn new(rows: u64) -> GeneratedCsv {
        GeneratedCsv { rows, next_row: 0, pending: b"order,customer,device,email,total,day\n".to_vec(), offset: 0 }
    }
}

impl Read for GeneratedCsv {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.pending.len() {
            if self.next_row == self.rows {
                return Ok(0);
            }
            let i = self.next_row;
            self.next_row += 1;
            self.pending.clear();
            self.offset = 0;
            writeln!(
                self.pending,
                "o{i},u{},,user{}@example.com,{}.{:02},2024-03-{:02}",
                i % 5000,
                i % 5000,
                i % 300,
                i % 100,
                i % 28 + 1
            )?;
        }
        let n = out.len().min(self.pending.len() - self.offset);
        out[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Iterates a generated file without collecting it, counting good rows and
/// folding the message ids, and returns (rows, good rows, last line).
fn stream(rows: u64) -> (u64, u64, u64) {
    let reader = ImportReader::new(GeneratedCsv::new(rows), &track_mapping(), "f1").unwrap();
    let (mut count, mut good, mut last_line) = (0, 0, 0);
    for row in reader {
        let row = row.unwrap();
        count += 1;
        last_line = row.line;
        if row.result.is_ok() {
            good += 1;
        }
    }
    (count, good, last_line)
}

#[test]
fn a_200k_row_csv_streams_from_a_generator_without_being_collected() {
    let (count, good, last_line) = stream(200_000);

    assert_eq!((count, good, last_line), (200_000, 200_000, 200_001));
}

#[test]
fn throughput_of_a_generated_csv_import() {
    // A debug build is an order of magnitude slower; the release run is the number worth reading.
    let rows = if cfg!(debug_assertions) { 20_000 } else { 1_000_000 };
    let started = std::time::Instant::now();

    let (count, good, _) = stream(rows);

    let elapsed = started.elapsed();
    assert_eq!((count, good), (rows, rows));
    println!("import throughput: {rows} rows in {elapsed:.2?}, {:.0} rows/s", rows as f64 / elapsed.as_secs_f64());
}
