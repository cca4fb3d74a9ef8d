//! `onepd.audit.v1.AuditService`: lets an auditor read the log from a position
//! or a time, follow it live, and verify its hash chain.
//!
//! Reads are scoped to the workspace of the caller's admin token. Streams are
//! fed through small bounded channels, so a slow client slows its own reads
//! and nothing else.

use std::pin::Pin;
use std::sync::Arc;

use onepd_domain::events::workspace::TokenScope;
use onepd_domain::{
    EventFilter, EventStore, Payload, Position, ProjectionStore, RecordedEvent, StoreError, StreamId, Timestamp,
};
use onepd_proto::audit::v1::audit_service_server::AuditService;
use onepd_proto::audit::v1::{
    Event, ExportLine, ExportRequest, ReadEventsRequest, ShowEventRequest, ShowEventResponse, SubscribeRequest,
    VerifyRequest, VerifyResponse, export_line, export_request, read_events_request, show_event_request,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::TokenRegistry;
use crate::EventLog;
use crate::export::{self, show};

/// Events per read page, and per channel of a streaming call.
const PAGE: usize = 500;
const CHANNEL_DEPTH: usize = 64;

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
type LineStream = Pin<Box<dyn Stream<Item = Result<ExportLine, Status>> + Send>>;

/// The audit service.
pub struct AuditApi {
    log: EventLog,
    tokens: Arc<TokenRegistry>,
    stopping: watch::Receiver<bool>,
    profiles: Option<Arc<dyn ProjectionStore>>,
}

impl AuditApi {
    /// The service over `log`; open subscriptions end when `stopping` turns true.
    pub fn new(log: EventLog, tokens: Arc<TokenRegistry>, stopping: watch::Receiver<bool>) -> AuditApi {
        AuditApi { log, tokens, stopping, profiles: None }
    }

    /// The same, with the profiles read model `ShowEvent` reads.
    pub fn with_profiles(mut self, profiles: Arc<dyn ProjectionStore>) -> AuditApi {
        self.profiles = Some(profiles);
        self
    }
}

/// The status a store failure becomes. Internal details go to the log, not
/// to the caller.
pub(crate) fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::ShuttingDown => Status::unavailable("onepd is shutting down; retry against another node or later"),
        StoreError::Database(detail) | StoreError::Unavailable(detail) | StoreError::LeaseLost(detail) => {
            tracing::error!(cause = %detail, "event store unavailable");
            Status::unavailable("event store unavailable")
        }
        StoreError::Corrupt { position, reason } => {
            tracing::error!(position, cause = %reason, "stored event cannot be decoded");
            Status::data_loss(format!("event at position {position} cannot be decoded"))
        }
    }
}

fn filter_for(
    workspace: onepd_domain::WorkspaceId,
    filter: Option<onepd_proto::audit::v1::EventFilter>,
) -> Result<EventFilter, Status> {
    let filter = filter.unwrap_or_default();
    let stream = if filter.stream_id.is_empty() {
        None
    } else {
        Some(StreamId::new(filter.stream_id).map_err(|err| Status::invalid_argument(format!("filter.{err}")))?)
    };
    Ok(EventFilter { workspace: Some(workspace), event_types: filter.event_types, stream, ..EventFilter::default() })
}

fn timestamp(field: &str, value: prost_types::Timestamp) -> Result<Timestamp, Status> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Status::invalid_argument(format!("{field}.nanos: expected 0 to 999999999, found {}", value.nanos)));
    }
    Ok(Timestamp::from_seconds_nanos(value.seconds, value.nanos))
}

/// Completes once `stopping` turns true; never, if its sender is gone first.
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if stopping.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The wire form of a stored event.
pub fn event_message(event: RecordedEvent) -> Event {
    let (seconds, nanos) = event.recorded_at.to_seconds_nanos();
    let (data_json, erased, unreadable) = match &event.data {
        Payload::Data(value) => (value.to_string(), false, String::new()),
        Payload::Erased => (String::new(), true, String::new()),
        Payload::Unreadable(reason) => (String::new(), false, reason.clone()),
    };
    Event {
        position: event.position.0,
        event_id: event.event_id.to_string(),
        workspace_id: event.workspace_id.to_string(),
        stream_id: event.stream_id.to_string(),
        stream_version: event.stream_version,
        event_type: event.event_type,
        schema_version: event.schema_version,
        data_json,
        metadata_json: event.metadata.to_string(),
        recorded_at: Some(prost_types::Timestamp { seconds, nanos }),
        hash: hex::encode(event.hash),
        erased,
        sealed: event.sealed,
        unreadable,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ReadEventsStream = EventStream;
    type SubscribeStream = EventStream;
    type ExportStream = LineStream;

    #[tracing::instrument(skip_all, name = "read_events")]
    async fn read_events(&self, request: Request<ReadEventsRequest>) -> Result<Response<EventStream>, Status> {
        let grant = self.tokens.authorize(request.metadata(), TokenScope::Audit)?;
        let request = request.into_inner();
        let filter = filter_for(grant.workspace, request.filter)?;
        let from = match request.start {
            None => Position(1),
            Some(read_events_request::Start::FromPosition(position)) => Position(position.max(1)),
            Some(read_events_request::Start::FromTime(time)) => {
                self.log.position_at(timestamp("from_time", time)?).await.map_err(store_status)?
            }
        };
        let head = self.log.head().await.map_err(store_status)?;
        let until = match request.end {
            None => head,
            Some(read_events_request::End::UntilPosition(position)) => Position(position.min(head.0)),
            Some(read_events_request::End::UntilTime(time)) => {
                let after = Timestamp(timestamp("until_time", time)?.0.saturating_add(1));
                Position(self.log.position_at(after).await.map_err(store_status)?.0 - 1)
            }
        };
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut next = from;
            while next <= until {
                let page = match log.read(next, Some(until), &filter, PAGE).await {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = sender.send(Err(store_status(err))).await;
                        return;
                    }
                };
                for event in page.events {
                    if sender.send(Ok(event_message(event))).await.is_err() {
                        return; // The client went away.
                    }
                }
                next = page.next;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    #[tracing::instrument(skip_all, name = "subscribe")]
    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let grant = self.tokens.authorize(request.metadata(), TokenScope::Audit)?;
        let request = request.into_inner();
        let filter = filter_for(grant.workspace, request.filter)?;
        let mut subscription =
            self.log.subscribe(Position(request.from_position.max(1)), filter).await.map_err(store_status)?;
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    batch = subscription.next_batch() => batch,
                    _ = sender.closed() => return,
                    _ = until_stopping(&mut stopping) => {
                        let _ = sender.send(Err(Status::unavailable("onepd is shutting down; resubscribe from the next position"))).await;
                        return;
                    }
                };
                match batch {
                    Ok(events) => {
                        for event in events {
                            if sender.send(Ok(event_message(event))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = sender.send(Err(store_status(err))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    #[tracing::instrument(skip_all, name = "verify")]
    async fn verify(&self, request: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        self.tokens.authorize(request.metadata(), TokenScope::Audit)?;
        let report = self.log.verify(&|_, _| {}).await.map_err(store_status)?;
        let response = match report.first_break {
            None => VerifyResponse { ok: true, events_checked: report.events_checked, ..VerifyResponse::default() },
            Some(broken) => VerifyResponse {
                ok: false,
                events_checked: report.events_checked,
                first_broken_position: broken.position,
                stored_hash: hex::encode(broken.stored),
                recomputed_hash: hex::encode(broken.recomputed),
            },
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, name = "export")]
    async fn export(&self, request: Request<ExportRequest>) -> Result<Response<LineStream>, Status> {
        let grant = self.tokens.authorize(request.metadata(), TokenScope::Audit)?;
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        let source = if request.source.is_empty() {
            None
        } else {
            Some(
                export::source_id(&self.log, Some(grant.workspace), &request.source)
                    .await
                    .map_err(|err| Status::invalid_argument(format!("source: {err}")))?,
            )
        };
        let start = match request.start {
            None => export::Start::Position(1),
            Some(export_request::Start::FromPosition(position)) => export::Start::Position(position),
            Some(export_request::Start::FromTime(time)) => export::Start::Time(timestamp("from_time", time)?),
            Some(export_request::Start::FromNow(_)) => export::Start::Now,
        };
        let end = match request.end {
            None => export::End::Head,
            Some(export_request::End::UntilPosition(position)) => export::End::Position(position),
            Some(export_request::End::UntilTime(time)) => export::End::Time(timestamp("until_time", time)?),
            Some(export_request::End::Follow(_)) => export::End::Follow,
        };
        let spec = export::ExportSpec {
            start,
            end,
            filter: export::ExportFilter {
                workspace: Some(grant.workspace.0),
                stream: (!filter.stream_id.is_empty()).then_some(filter.stream_id),
                event_types: filter.event_types,
                source,
            },
            with_rows: false,
        };
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let (lines, mut produced) = mpsc::channel::<Vec<export::ExportLine>>(4);
        let log = self.log.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let forward = sender.clone();
            let relay = tokio::spawn(async move {
                while let Some(batch) = produced.recv().await {
                    for line in batch {
                        let kind = match line.kind {
                            export::LineKind::Header => export_line::Kind::Header,
                            export::LineKind::Event => export_line::Kind::Event,
                            export::LineKind::End => export_line::Kind::End,
                        };
                        let message = ExportLine { kind: kind as i32, position: line.position, line: line.text };
                        if forward.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let result = export::export(&log, &spec, lines, Some(stopping)).await;
            let _ = relay.await;
            let status = match result {
                Ok(_) | Err(export::ExportError::Closed) => return,
                Err(export::ExportError::Store(err)) => store_status(err),
                Err(err @ export::ExportError::ChainBroken { .. }) => Status::data_loss(err.to_string()),
                Err(export::ExportError::Invalid(reason)) => Status::invalid_argument(reason),
            };
            let _ = sender.send(Err(status)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    #[tracing::instrument(skip_all, name = "show_event")]
    async fn show_event(&self, request: Request<ShowEventRequest>) -> Result<Response<ShowEventResponse>, Status> {
        let grant = self.tokens.authorize(request.metadata(), TokenScope::Audit)?;
        let which = match request.into_inner().event {
            Some(show_event_request::Event::Position(position)) => show::EventRef::Position(position),
            Some(show_event_request::Event::EventId(id)) => show::EventRef::Id(
                uuid::Uuid::parse_str(&id)
                    .map_err(|err| Status::invalid_argument(format!("event_id: expected a UUID ({err})")))?,
            ),
            None => return Err(Status::invalid_argument("event: expected a position or an event_id")),
        };
        let shown = show::show(&self.log, self.profiles.clone(), Some(grant.workspace), which)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such event in this token's workspace"))?;
        Ok(Response::new(ShowEventResponse { json: shown.to_string() }))
    }
}
