//! `onepd.import.v1.ImportService`: a whole CSV or NDJSON file (optionally
//! gzip) over gRPC, imported as `onepd import` would import it.
//!
//! The first request of the stream carries the header (file name and
//! mapping), every later one a chunk of the file. Chunks go through
//! [`import_stream`] as they arrive, so a file of any size is imported in
//! constant memory, and HTTP/2 flow control slows the client down while the
//! rows are appended. The write key is checked as by `IngestService`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use onepd_commands::import::{ImportError, ImportMapping};
use onepd_proto::import::v1 as pb;
use onepd_proto::import::v1::import_file_request::Part;
use onepd_proto::import::v1::import_service_server::ImportService;
use tonic::{Request, Response, Status, Streaming};

use super::ingest::{authenticate, status};
use crate::ingest::import::{FileImportError, ImportOptions, ImportSummary, import_stream};
use crate::ingest::{Caller, Ingest};

/// The import service.
#[derive(Debug, Clone)]
pub struct ImportApi {
    ingest: Arc<Ingest>,
}

impl ImportApi {
    /// Imports through `ingest`.
    pub fn new(ingest: Arc<Ingest>) -> ImportApi {
        ImportApi { ingest }
    }
}

#[tonic::async_trait]
impl ImportService for ImportApi {
    async fn import_file(
        &self,
        request: Request<Streaming<pb::ImportFileRequest>>,
    ) -> Result<Response<pb::ImportFileResponse>, Status> {
        let grant = authenticate(&self.ingest, request.metadata())?;
        let mut requests = request.into_inner();
        let header = match requests.message().await? {
            Some(pb::ImportFileRequest { part: Some(Part::Header(header)) }) => header,
            Some(pb::ImportFileRequest { part: Some(Part::Chunk(_)) }) => {
                return Err(Status::invalid_argument(
                    "header: expected the header in the first request, found a chunk",
                ));
            }
            Some(pb::ImportFileRequest { part: None }) => {
                return Err(Status::invalid_argument(
                    "header: expected the header in the first request, found an empty request",
                ));
            }
            None => {
                return Err(Status::invalid_argument("header: expected a first request with the header, found none"));
            }
        };
        let mut mapping = ImportMapping::from_json(&header.mapping_json)
            .map_err(|err| Status::invalid_argument(format!("header.mapping_json: {err}")))?;
        mapping
            .detect_format(&header.file_name)
            .map_err(|err| Status::invalid_argument(format!("header.file_name: {err}")))?;

        let request_id = uuid::Uuid::now_v7().to_string();
        // Rows come from a file, not from the caller's device, so no peer
        // address is recorded for them.
        let caller = Caller { request_id: request_id.clone(), ..Caller::default() };
        let chunks = requests.map(|request| match request {
            Ok(pb::ImportFileRequest { part: Some(Part::Chunk(chunk)) }) => Ok(Bytes::from(chunk)),
            Ok(pb::ImportFileRequest { part: None }) => Ok(Bytes::new()),
            Ok(pb::ImportFileRequest { part: Some(Part::Header(_)) }) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, "chunk: expected a chunk, found a second header"))
            }
            Err(status) => Err(io::Error::other(status.message().to_owned())),
        });
        let summary = import_stream(&self.ingest, grant, &caller, &mapping, chunks, ImportOptions::default(), |_| {})
            .await
            .map_err(|err| match err {
                FileImportError::File(err @ ImportError::Mapping { .. }) => {
                    Status::invalid_argument(format!("header.mapping_json: {err}"))
                }
                FileImportError::File(err) => Status::invalid_argument(format!("file: {err}")),
                FileImportError::Ingest(err) => status(err),
                err @ FileImportError::ReaderStopped => {
                    tracing::error!(request_id, cause = %err, "import failed");
                    Status::internal(format!("onepd could not finish the import; retry it (request id {request_id})"))
                }
            })?;
        summary.log(&request_id);
        Ok(Response::new(to_response(summary)))
    }
}

fn to_response(summary: ImportSummary) -> pb::ImportFileResponse {
    pb::ImportFileResponse {
        rows: summary.rows,
        accepted: summary.accepted,
        duplicates: summary.duplicates,
        rejected: summary.rejected,
        rejections: summary
            .rejections
            .into_iter()
            .map(|rejection| pb::RowRejection { line: rejection.line, reasons: rejection.reasons })
            .collect(),
        rejections_truncated: summary.rejections_truncated,
    }
}
