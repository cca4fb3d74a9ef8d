//! `POST /v1/import-files`: a CSV or NDJSON file (optionally gzip) uploaded
//! as `multipart/form-data` and imported as `onepd import` would import it.
//!
//! The write key is the HTTP Basic user name, as for the tracking API. The
//! body has two parts, in this order: `mapping` (the mapping JSON, see
//! `onepd_commands::import`) and `file`. The format is the mapping's
//! `format`, else the file part's file name (`.csv`, `.ndjson`, `.jsonl`,
//! each optionally `.gz`). The file part is never held whole: its chunks go
//! through [`import_stream`] as they arrive, so the route has no body limit.
//!
//! The answer, once every row is committed:
//!
//! ```json
//! {"success": true, "rows": 3, "accepted": 2, "duplicates": 0, "rejected": 1,
//!  "rejections": [{"line": 4, "reasons": ["line 4: expected user_id or anonymous_id, found neither"]}],
//!  "rejections_truncated": false}
//! ```
//!
//! Errors are the tracking API's JSON, naming the part (`mapping`,
//! `mapping.<field>`, `file`) at fault.

use std::io;
use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use onepd_commands::import::{ImportError, ImportMapping};
use serde_json::json;
use uuid::Uuid;

use super::ApiError;
use crate::ingest::import::{FileImportError, ImportOptions, ImportSummary, import_stream};
use crate::ingest::{Caller, Ingest};

/// The largest mapping part accepted; a mapping is a few hundred bytes.
const MAX_MAPPING_BYTES: usize = 1024 * 1024;

/// Handles `POST /v1/import-files`.
pub(super) async fn import_file(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let request_id = Uuid::now_v7().to_string();
    let response = match upload(&ingest, &headers, multipart, &request_id).await {
        Ok(summary) => {
            summary.log(&request_id);
            (StatusCode::OK, Json(summary_json(&summary))).into_response()
        }
        Err(err) => err.into_response_with(&request_id),
    };
    super::with_request_id(response, &request_id)
}

async fn upload(
    ingest: &Ingest,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    request_id: &str,
) -> Result<ImportSummary, ApiError> {
    // The key is checked before the body is read, so a wrong key costs no upload.
    let grant = ingest.authenticate(&super::basic_user(headers).unwrap_or_default())?;
    let mut multipart = multipart.map_err(|rejection| {
        bad_request(
            "malformed_body",
            "body",
            format!(
                "body: expected multipart/form-data with a mapping part and a file part, found {}",
                rejection.body_text().to_lowercase()
            ),
        )
    })?;

    let mut mapping = match multipart.next_field().await.map_err(malformed)? {
        Some(field) if field.name() == Some("mapping") => read_mapping(field).await?,
        Some(field) if field.name() == Some("file") => {
            return Err(missing("mapping", "expected the mapping part before the file part, found the file first"));
        }
        Some(field) => return Err(unknown_part(&field)),
        None => return Err(missing("mapping", "expected a part named \"mapping\" (the mapping JSON), found none")),
    };
    let file = match multipart.next_field().await.map_err(malformed)? {
        Some(field) if field.name() == Some("file") => field,
        Some(field) if field.name() == Some("mapping") => {
            return Err(missing("mapping", "expected one mapping part, found a second"));
        }
        Some(field) => return Err(unknown_part(&field)),
        None => return Err(missing("file", "expected a part named \"file\" after the mapping, found none")),
    };
    mapping.detect_format(file.file_name().unwrap_or_default()).map_err(import_error)?;

    // Rows come from a file, not from the uploader's device: the uploader's
    // address is not theirs, so no peer address is recorded.
    let caller = Caller { request_id: request_id.to_owned(), ..Caller::default() };
    let bytes = file.map(|chunk| chunk.map_err(|err| io::Error::other(err.body_text())));
    import_stream(ingest, grant, &caller, &mapping, bytes, ImportOptions::default(), |_| {}).await.map_err(|err| {
        match err {
            FileImportError::File(err) => import_error(err),
            FileImportError::Ingest(err) => ApiError::Ingest(err),
            err @ FileImportError::ReaderStopped => ApiError::Internal(err.to_string()),
        }
    })
}

/// Reads the mapping part, refusing one larger than [`MAX_MAPPING_BYTES`].
async fn read_mapping(mut field: Field<'_>) -> Result<ImportMapping, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if text.len() + chunk.len() > MAX_MAPPING_BYTES {
            return Err(bad_request(
                "invalid_mapping",
                "mapping",
                format!("mapping: expected at most {MAX_MAPPING_BYTES} bytes, found more"),
            ));
        }
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).map_err(|_| {
        bad_request("invalid_mapping", "mapping", "mapping: expected UTF-8 JSON, found other bytes".into())
    })?;
    ImportMapping::from_json(&text).map_err(import_error)
}

/// The summary as the upload answers it.
fn summary_json(summary: &ImportSummary) -> serde_json::Value {
    let rejections: Vec<_> = summary
        .rejections
        .iter()
        .map(|rejection| json!({ "line": rejection.line, "reasons": rejection.reasons }))
        .collect();
    json!({
        "success": true,
        "rows": summary.rows,
        "accepted": summary.accepted,
        "duplicates": summary.duplicates,
        "rejected": summary.rejected,
        "rejections": rejections,
        "rejections_truncated": summary.rejections_truncated,
    })
}

/// A file that cannot be imported: the mapping's field, or the file.
fn import_error(err: ImportError) -> ApiError {
    match &err {
        ImportError::Mapping { field, .. } => {
            let field = if field == "mapping" { field.clone() } else { format!("mapping.{field}") };
            bad_request("invalid_mapping", &field, err.to_string())
        }
        ImportError::Header { .. } | ImportError::Gzip { .. } | ImportError::Read { .. } => {
            bad_request("unreadable_file", "file", format!("file: {err}"))
        }
    }
}

fn malformed(err: MultipartError) -> ApiError {
    bad_request(
        "malformed_body",
        "body",
        format!("body: expected multipart/form-data, found an error ({})", err.body_text().to_lowercase()),
    )
}

fn missing(part: &str, expected_found: &str) -> ApiError {
    bad_request("missing_part", part, format!("{part}: {expected_found}"))
}

fn unknown_part(field: &Field<'_>) -> ApiError {
    let name = field.name().filter(|name| !name.is_empty()).unwrap_or("(unnamed)");
    bad_request("unknown_part", name, format!("{name}: expected a part named \"mapping\" or \"file\", found {name:?}"))
}

fn bad_request(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::BadRequest { code, field: field.to_owned(), message }
}
