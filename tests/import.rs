//! File import end to end: one file through `onepd import`, `POST
//! /v1/import-files` and the gRPC `ImportService` against the real server,
//! the log read back through the audit API.

mod support;

use std::io::Write;

use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest};
use onepd_proto::import::v1 as pb;
use onepd_proto::import::v1::import_service_client::ImportServiceClient;
use serde_json::{Value, json};
use support::{PgDatabase, Server, onepd_json, read_all, with_write_key};
use tonic::Code;

/// Three rows; the third (line 4) has no id.
const CUSTOMERS_CSV: &str = "customer_id,email,plan,signed_up\n\
    c1, Ann@Example.COM ,pro,2024-01-02\n\
    c2,bob@example.com,free,2024-02-03\n\
    ,,free,2024-03-04\n";

fn customers_mapping() -> Value {
    json!({
        "type": "identify", "user_id": "customer_id",
        "traits": { "email": "email", "plan": "plan" },
        "timestamp": { "column": "signed_up", "format": "date" },
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn data(event: &onepd_proto::audit::v1::Event) -> Value {
    serde_json::from_str(&event.data_json).unwrap()
}

async fn accepted_messages(server: &Server) -> Vec<Value> {
    let token = server.admin_token.clone().unwrap();
    let mut audit = server.audit().await;
    let filter = EventFilter { event_types: vec!["MessageAccepted".into()], stream_id: String::new() };
    let events = read_all(&mut audit, ReadEventsRequest { filter: Some(filter), ..Default::default() }, &token).await;
    events.iter().map(|event| data(event)["message"].clone()).collect()
}

/// A multipart part: its name, its file name, its bytes.
type Part<'a> = (&'a str, Option<&'a str>, Vec<u8>);

/// Posts `parts` to `/v1/import-files` with `key`; the status and the JSON answer.
async fn upload(server: &Server, key: &str, parts: Vec<Part<'_>>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, file_name, bytes) in parts {
        let mut part = reqwest::multipart::Part::bytes(bytes);
        if let Some(file_name) = file_name {
            part = part.file_name(file_name.to_owned());
        }
        form = form.part(name.to_owned(), part);
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v1/import-files", server.http))
        .basic_auth(key, Some(""))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn mapping_part(mapping: &Value) -> Part<'static> {
    ("mapping", None, mapping.to_string().into_bytes())
}

/// The HTTP half of the acceptance: an upload names its bad rows by line,
/// the same upload again is all duplicates, and the log holds each good row once.
async fn uploading_a_csv_twice_stores_each_row_once_and_names_the_bad_rows_by_line(server: &Server) {
    let key = server.write_key.clone().unwrap();
    let parts = || vec![mapping_part(&customers_mapping()), ("file", Some("customers.csv"), CUSTOMERS_CSV.into())];

    let (status, first) = upload(server, &key, parts()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first,
        json!({
            "success": true, "rows": 3, "accepted": 2, "duplicates": 0, "rejected": 1,
            "rejections": [{ "line": 4, "reasons": ["line 4: expected user_id or anonymous_id, found neither"] }],
            "rejections_truncated": false,
        })
    );
    let (status, again) = upload(server, &key, parts()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!((&again["accepted"], &again["duplicates"], &again["rejected"]), (&json!(0), &json!(2), &json!(1)));

    let accepted = accepted_messages(server).await;
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0]["traits"]["email"], "ann@example.com");
    assert_eq!(accepted[0]["timestamp"], "2024-01-02T00:00:00.000Z");
    assert!(accepted[0].pointer("/context/ip").is_none(), "the uploader's address is not the customer's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_a_csv_twice_stores_each_row_once_and_names_the_bad_rows_by_line_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    uploading_a_csv_twice_stores_each_row_once_and_names_the_bad_rows_by_line(&server).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_a_csv_twice_stores_each_row_once_and_names_the_bad_rows_by_line_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let database = PgDatabase::create().await;
    let server = Server::start(dir.path(), &["--database-url", &database.url]);
    uploading_a_csv_twice_stores_each_row_once_and_names_the_bad_rows_by_line(&server).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_a_csv_twice_with_the_cli_stores_each_row_once_and_names_the_bad_rows_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, CUSTOMERS_CSV).unwrap();
    let mapping = dir.path().join("mapping.json");
    std::fs::write(&mapping, customers_mapping().to_string()).unwrap();
    let args = ["import", csv.to_str().unwrap(), "--source", "http", "--mapping", mapping.to_str().unwrap()];
    let first = onepd_json(dir.path(), &args);
    assert_eq!(
        (first["rows"].as_u64(), first["accepted"].as_u64(), first["rejected"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(first["rejections"][0]["line"], 4);
    assert!(first["rejections"][0]["reasons"][0].as_str().unwrap().contains("user_id or anonymous_id"), "{first}");
    let again = onepd_json(dir.path(), &args);
    assert_eq!((again["accepted"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(2)), "{again}");

    let accepted = accepted_messages(&server).await;
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0]["traits"]["email"], "ann@example.com");
    assert_eq!(accepted[0]["timestamp"], "2024-01-02T00:00:00.000Z");
    assert!(server.terminate().success());
}

/// Orders over the file id's 64 KiB prefix, with a row of every 500 lacking its customer.
fn orders_csv() -> Vec<u8> {
    let mut csv = b"order_id,customer_id,total,ordered_at\n".to_vec();
    for n in 0..3_000 {
        let customer = if n % 500 == 499 { String::new() } else { format!("cust-{}", n % 97) };
        writeln!(csv, "ord-{n},{customer},{}.{:02},2026-01-{:02}T10:00:00Z", 10 + n % 90, n % 100, 1 + n % 28).unwrap();
    }
    assert!(csv.len() > 64 * 1024);
    csv
}

fn orders_mapping() -> Value {
    json!({
        "type": "track", "event": "Order Completed", "user_id": "customer_id",
        "properties": { "order_id": "order_id", "revenue": "total" },
        "timestamp": "ordered_at", "types": { "total": "number" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_imported_with_the_cli_is_only_duplicates_when_uploaded_over_http_or_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let file = gzip(&orders_csv());
    let path = dir.path().join("orders.csv.gz");
    std::fs::write(&path, &file).unwrap();
    let mapping = dir.path().join("orders.json");
    std::fs::write(&mapping, orders_mapping().to_string()).unwrap();

    let cli = onepd_json(
        dir.path(),
        &["import", path.to_str().unwrap(), "--source", "http", "--mapping", mapping.to_str().unwrap()],
    );
    assert_eq!((&cli["accepted"], &cli["rejected"]), (&json!(2_994), &json!(6)), "{cli}");

    let (status, http) =
        upload(&server, &key, vec![mapping_part(&orders_mapping()), ("file", Some("orders.csv.gz"), file.clone())])
            .await;
    assert_eq!(status, 200, "{http}");
    assert_eq!((&http["accepted"], &http["duplicates"], &http["rejected"]), (&json!(0), &json!(2_994), &json!(6)));
    assert_eq!(http["rejections"], cli["rejections"]);

    let grpc = import_over_grpc(&server, &key, "orders.csv.gz", &orders_mapping(), &file, 10_000).await.unwrap();
    assert_eq!((grpc.accepted, grpc.duplicates, grpc.rejected), (0, 2_994, 6));
    assert_eq!(accepted_messages(&server).await.len(), 2_994);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_ndjson_upload_takes_its_format_from_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let ndjson = concat!(
        r#"{"customer": {"id": "c1", "email": "ann@example.com"}, "order": "o-1", "total": 12.5}"#,
        "\n\n",
        r#"{"customer": {"id": "c2"}, "order": "o-2", "total": "a lot"}"#,
        "\n",
        r#"{"customer": {"id": "c3"}, "order": "o-3", "total": 7}"#,
        "\n",
    );
    let mapping = json!({
        "type": "track", "event": "Order Completed", "user_id": "/customer/id",
        "traits": { "email": "/customer/email" },
        "properties": { "order_id": "/order", "revenue": "/total" },
        "types": { "/total": "number" },
    });
    let (status, summary) = upload(
        &server,
        &key,
        vec![mapping_part(&mapping), ("file", Some("orders.ndjson.gz"), gzip(ndjson.as_bytes()))],
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!((&summary["rows"], &summary["accepted"], &summary["rejected"]), (&json!(3), &json!(2), &json!(1)));
    assert_eq!(summary["rejections"][0]["line"], 3, "a blank line still counts: {summary}");

    let accepted = accepted_messages(&server).await;
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0]["properties"], json!({ "order_id": "o-1", "revenue": 12.5 }));
    assert_eq!(accepted[0]["context"]["traits"]["email"], "ann@example.com");
    assert_eq!(accepted[1]["userId"], "c3");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_wrong_key_gets_401_and_a_malformed_one_400_naming_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let file = || ("file", Some("customers.csv"), CUSTOMERS_CSV.as_bytes().to_vec());
    // Each answer below is the upload's, not the tracking API's 404 for an
    // unknown `/v1/{endpoint}`: the static route wins.
    let error = |(status, body): (u16, Value)| {
        assert_eq!(body["success"], false, "{body}");
        (status, body["field"].as_str().unwrap().to_owned(), body["message"].as_str().unwrap().to_owned())
    };

    let (status, field, message) =
        error(upload(&server, "onepd_wk_nope", vec![mapping_part(&customers_mapping()), file()]).await);
    assert_eq!((status, field.as_str()), (401, "writeKey"), "{message}");

    let (status, field, message) = error(upload(&server, &key, vec![file()]).await);
    assert_eq!((status, field.as_str()), (400, "mapping"));
    assert_eq!(message, "mapping: expected the mapping part before the file part, found the file first");

    let (status, field, message) = error(upload(&server, &key, vec![mapping_part(&customers_mapping())]).await);
    assert_eq!((status, field.as_str()), (400, "file"));
    assert_eq!(message, "file: expected a part named \"file\" after the mapping, found none");

    let no_event = json!({ "type": "track", "user_id": "customer_id" });
    let (status, field, message) = error(upload(&server, &key, vec![mapping_part(&no_event), file()]).await);
    assert_eq!((status, field.as_str()), (400, "mapping.event"), "{message}");

    let misnamed = json!({ "type": "identify", "user_id": "customer_id", "traits": { "email": "e_mail" } });
    let (status, field, message) = error(upload(&server, &key, vec![mapping_part(&misnamed), file()]).await);
    assert_eq!((status, field.as_str()), (400, "mapping.traits.email"));
    assert!(message.contains("\"email\"") && message.contains("none named \"e_mail\""), "{message}");

    let no_format = ("file", Some("customers.txt"), CUSTOMERS_CSV.as_bytes().to_vec());
    let (status, field, _) = error(upload(&server, &key, vec![mapping_part(&customers_mapping()), no_format]).await);
    assert_eq!((status, field.as_str()), (400, "mapping.format"));

    let mut broken = gzip(CUSTOMERS_CSV.as_bytes());
    broken.truncate(14);
    let broken = ("file", Some("customers.csv.gz"), broken);
    let (status, field, message) = error(upload(&server, &key, vec![mapping_part(&customers_mapping()), broken]).await);
    assert_eq!((status, field.as_str()), (400, "file"));
    assert!(message.starts_with("file: line 1: expected a valid gzip stream"), "{message}");

    let http = reqwest::Client::new();
    let not_multipart = http
        .post(format!("{}/v1/import-files", server.http))
        .basic_auth(&key, Some(""))
        .json(&customers_mapping())
        .send()
        .await
        .unwrap();
    let (status, field, _) = error((not_multipart.status().as_u16(), not_multipart.json().await.unwrap()));
    assert_eq!((status, field.as_str()), (400, "body"));

    // Browsers may upload directly, as they may track.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/import-files", server.http))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    assert!(accepted_messages(&server).await.is_empty(), "no refused upload stored anything");
    assert!(server.terminate().success());
}

/// Sends `file` to `ImportFile` in chunks of `chunk` bytes after the header.
async fn import_over_grpc(
    server: &Server,
    key: &str,
    file_name: &str,
    mapping: &Value,
    file: &[u8],
    chunk: usize,
) -> Result<pb::ImportFileResponse, tonic::Status> {
    let header = pb::ImportFileHeader { file_name: file_name.into(), mapping_json: mapping.to_string() };
    let mut requests = vec![pb::ImportFileRequest { part: Some(pb::import_file_request::Part::Header(header)) }];
    requests.extend(
        file.chunks(chunk)
            .map(|bytes| pb::ImportFileRequest { part: Some(pb::import_file_request::Part::Chunk(bytes.to_vec())) }),
    );
    let mut client = ImportServiceClient::new(server.channel().await);
    client.import_file(with_write_key(tokio_stream::iter(requests), key)).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_upload_in_chunks_split_mid_row_stores_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let csv = orders_csv();

    // 1,000-byte chunks end mid-row, and one ends inside the 64 KiB the file id reads.
    let first = import_over_grpc(&server, &key, "orders.csv", &orders_mapping(), &csv, 1_000).await.unwrap();
    assert_eq!((first.rows, first.accepted, first.duplicates, first.rejected), (3_000, 2_994, 0, 6));
    assert_eq!(first.rejections.iter().map(|r| r.line).collect::<Vec<_>>(), [501, 1_001, 1_501, 2_001, 2_501, 3_001]);
    assert_eq!(first.rejections[0].reasons, ["line 501: expected user_id or anonymous_id, found neither"]);
    assert!(!first.rejections_truncated);
    let again = import_over_grpc(&server, &key, "orders.csv", &orders_mapping(), &csv, 7).await.unwrap();
    assert_eq!((again.accepted, again.duplicates, again.rejected), (0, 2_994, 6));

    let accepted = accepted_messages(&server).await;
    assert_eq!(accepted.len(), 2_994);
    assert_eq!(accepted[0]["properties"], json!({ "order_id": "ord-0", "revenue": 10.0 }));
    assert_eq!(accepted[0]["timestamp"], "2026-01-01T10:00:00.000Z");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_upload_without_a_usable_header_or_key_is_refused_with_a_precise_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let csv = CUSTOMERS_CSV.as_bytes();

    let no_event = json!({ "type": "track", "user_id": "customer_id" });
    let status = import_over_grpc(&server, &key, "customers.csv", &no_event, csv, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("header.mapping_json: mapping.event: expected"), "{}", status.message());

    let misnamed = json!({ "type": "identify", "user_id": "customer_id", "traits": { "email": "e_mail" } });
    let status = import_over_grpc(&server, &key, "customers.csv", &misnamed, csv, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("header.mapping_json: mapping.traits.email:"), "{}", status.message());

    let status = import_over_grpc(&server, &key, "customers.txt", &customers_mapping(), csv, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("header.file_name: mapping.format:"), "{}", status.message());

    let mut client = ImportServiceClient::new(server.channel().await);
    let chunk_first = vec![pb::ImportFileRequest { part: Some(pb::import_file_request::Part::Chunk(csv.to_vec())) }];
    let status = client.import_file(with_write_key(tokio_stream::iter(chunk_first), &key)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "header: expected the header in the first request, found a chunk");

    let status =
        import_over_grpc(&server, "onepd_wk_nope", "customers.csv", &customers_mapping(), csv, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    assert!(accepted_messages(&server).await.is_empty(), "no refused upload stored anything");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_service_is_healthy_and_listed_by_reflection() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let request = tonic_health::pb::HealthCheckRequest { service: "onepd.import.v1.ImportService".into() };
    let status = health.check(request).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("onepd.import.v1.ImportService".into())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    assert!(server.terminate().success());
}

/// A row longer than one message may be (32 KB) is a rejected line naming
/// it, and the rows after it are imported; a row running past 1 MiB stops
/// the upload with a 400 naming its line, instead of being held in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_row_is_a_rejected_line_and_a_huge_one_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = server.write_key.clone().unwrap();
    let big = format!(
        "customer_id,email,plan,signed_up\nc-1,ann@example.com,pro,2024-01-02\nc-2,bob@example.com,{},2024-01-03\nc-3,cy@example.com,free,2024-01-04\n",
        "x".repeat(40 * 1024)
    );
    let parts = vec![mapping_part(&customers_mapping()), ("file", Some("customers.csv"), big.into_bytes())];
    let (status, answer) = upload(&server, &key, parts).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((&answer["accepted"], &answer["rejected"]), (&json!(2), &json!(1)), "{answer}");
    assert_eq!(answer["rejections"][0]["line"], 3, "{answer}");
    assert!(answer["rejections"][0]["reasons"][0].as_str().unwrap().contains("at most 32 KB"), "{answer}");

    let huge = format!("customer_id,email,plan,signed_up\nc-9,dee@example.com,{},2024-01-05\n", "y".repeat(16 << 20));
    let parts = vec![mapping_part(&customers_mapping()), ("file", Some("customers.csv.gz"), gzip(huge.as_bytes()))];
    let (status, answer) = upload(&server, &key, parts).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("line 2") || answer["line"] == 2, "{answer}");
    drop(server);
}
