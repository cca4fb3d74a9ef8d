//! Ingest: the one path every entrance (gRPC, the Segment-compatible HTTP API)
//! takes into the log.
//!
//! authenticate the write key → run each message through the pipeline in
//! `onepd-commands` → append the batch's events (accepted and rejected alike)
//! in one request to the source's stream → one result per message.
//!
//! **Back-pressure:** a semaphore bounds the messages in flight. An entrance
//! that cannot wait (a unary call, an HTTP request) is refused with
//! [`IngestError::Overloaded`] when it is full, which becomes
//! `RESOURCE_EXHAUSTED` / HTTP 429 with Retry-After, instead of memory growing
//! without bound; the streaming call waits instead, which pushes back on the
//! producer through HTTP/2 flow control.
//!
//! **Acknowledged means committed:** results are returned only after the
//! append has committed.
//!
//! [`import`] streams a file's rows through the same path, for the CLI, the
//! HTTP upload and the gRPC `ImportService` alike.

pub mod import;
pub mod proxies;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onepd_commands::ingest::{Decision, Pipeline, Received, TrackingPlan, WorkspaceSettings};
use onepd_commands::workspace::token_sha256;
use onepd_domain::events::erasure::{message_identifiers, rejected_identifiers, rejection_subject};
use onepd_domain::events::message::Violation;
use onepd_domain::events::workspace::source_stream;
use onepd_domain::{
    AppendError, AppendRequest, EventId, ExpectedVersion, Position, StoreError, Timestamp, WorkspaceId,
};
use onepd_projections::directory::{Directory, WriteGrant};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::EventLog;
use crate::live::Live;

pub use proxies::TrustedProxies;

/// The most messages one batch may hold.
pub const MAX_BATCH_MESSAGES: usize = 10_000;

/// Segment's limit on one message, as JSON.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// Segment's limit on one batch request, as JSON.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// How an ingest call failed as a whole. Per-message problems are not errors:
/// they are [`Outcome::Rejected`] results.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No write key, or one that is unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many messages are in flight; retry after the given time.
    #[error("ingest is at capacity ({in_flight} messages in flight); retry in {} s", retry_after.as_secs())]
    Overloaded {
        /// The limit that was reached.
        in_flight: usize,
        /// When to retry.
        retry_after: Duration,
    },
    /// The request is malformed as a whole (too many messages, …).
    #[error("{0}")]
    Invalid(String),
    /// The workspace's configuration cannot be used (a tracking plan that no
    /// longer compiles).
    #[error("workspace configuration: {0}")]
    Configuration(String),
    /// The store failed; nothing is acknowledged. Retrying is safe: messages
    /// already stored come back as duplicates.
    #[error("the event log failed: {0}")]
    Store(#[from] StoreError),
    /// The store refused the append for a reason ingest cannot resolve.
    #[error("the event log refused the batch: {0}")]
    Append(AppendError),
}

impl IngestError {
    /// Whether the database is out of reach (down, restarting, cut off) or
    /// onepd is stopping: nothing was stored, and the caller should retry
    /// after a pause (503 with `Retry-After`, gRPC `UNAVAILABLE`).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            IngestError::Store(StoreError::Unavailable(_) | StoreError::ShuttingDown)
                | IngestError::Append(AppendError::Store(StoreError::Unavailable(_) | StoreError::ShuttingDown))
        )
    }
}

/// The most identifiers a sealed rejection names in its metadata; a payload
/// naming more keeps only its reasons.
pub const MAX_REJECTION_IDENTIFIERS: usize = 64;

/// How long a caller is told to wait when the database is out of reach.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Who sent a request and from where.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The connection's peer.
    pub peer_ip: Option<IpAddr>,
    /// The client address reported by a trusted proxy.
    pub forwarded_ip: Option<IpAddr>,
    /// The request's id.
    pub request_id: String,
    /// When the messages were first received, for a replay; `None` means now.
    pub received_at: Option<Timestamp>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new `MessageAccepted` at `position`.
    Accepted {
        /// Its position.
        position: Position,
    },
    /// A retry: the same message was stored before, at `position`.
    Duplicate {
        /// The original position.
        position: Position,
    },
    /// Refused; the `MessageRejected` recording it is at `position`.
    Rejected {
        /// Every rule broken.
        reasons: Vec<Violation>,
        /// Where the rejection is recorded.
        position: Position,
    },
}

/// One message's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResult {
    /// The message's id (generated when the client sent none); `None` for a
    /// rejected message whose id could not be read.
    pub message_id: Option<String>,
    /// The event's id.
    pub event_id: EventId,
    /// What became of it.
    pub outcome: Outcome,
}

impl MessageResult {
    /// The metrics label of the outcome.
    pub fn label(&self) -> &'static str {
        match self.outcome {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

/// How ingest is tuned.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The most messages in flight (received, not yet committed) at once.
    pub max_in_flight: usize,
    /// Which peers may report the client's address in X-Forwarded-For.
    pub trusted_proxies: TrustedProxies,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig { max_in_flight: 200_000, trusted_proxies: TrustedProxies::default() }
    }
}

/// The ingest service shared by every entrance.
pub struct Ingest {
    log: EventLog,
    directory: Arc<Live<Directory>>,
    pipeline: Pipeline,
    settings: Mutex<HashMap<WorkspaceId, (u64, Arc<WorkspaceSettings>)>>,
    in_flight: Arc<Semaphore>,
    config: IngestConfig,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("available", &self.in_flight.available_permits())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Permission to have some messages in flight; released when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Ingest {
    /// Starts ingest over `log`, following the workspace directory.
    pub async fn start(log: EventLog, config: IngestConfig) -> Result<Arc<Ingest>, StoreError> {
        let directory = Live::follow(&log, "directory").await?;
        Ok(Arc::new(Ingest {
            log,
            directory,
            pipeline: Pipeline::new(),
            settings: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
        }))
    }

    /// The directory of workspaces and sources ingest follows.
    pub fn directory(&self) -> &Arc<Live<Directory>> {
        &self.directory
    }

    /// Which proxies are trusted to report client addresses.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.config.trusted_proxies
    }

    /// What `write_key` writes to.
    pub fn authenticate(&self, write_key: &str) -> Result<WriteGrant, IngestError> {
        let write_key = write_key.trim();
        if write_key.is_empty() {
            return Err(IngestError::Unauthenticated("write key: expected a write key, found none".into()));
        }
        self.directory
            .read(|directory| directory.write_grant(&token_sha256(write_key)))
            .ok_or_else(|| IngestError::Unauthenticated("write key: not recognized (revoked or never issued)".into()))
    }

    /// Admits `messages` messages now, or refuses with
    /// [`IngestError::Overloaded`].
    pub fn try_admit(&self, messages: usize) -> Result<Admission, IngestError> {
        if messages == 0 {
            return Ok(Admission { _permit: None });
        }
        let count = self.permits(messages)?;
        let permit = self.in_flight.clone().try_acquire_many_owned(count).map_err(|_| {
            metrics::counter!("onepd_ingest_overloaded_total").increment(1);
            IngestError::Overloaded { in_flight: self.config.max_in_flight, retry_after: Duration::from_secs(1) }
        })?;
        Ok(Admission { _permit: Some(permit) })
    }

    /// A request larger than the whole allowance could never be admitted.
    fn permits(&self, messages: usize) -> Result<u32, IngestError> {
        match u32::try_from(messages) {
            Ok(count) if messages <= self.config.max_in_flight => Ok(count),
            _ => Err(IngestError::Invalid(format!(
                "batch: expected at most {} messages (the server's in-flight limit), found {messages}",
                self.config.max_in_flight
            ))),
        }
    }

    /// Admits `messages` messages, waiting for room.
    pub async fn admit(&self, messages: usize) -> Result<Admission, IngestError> {
        if messages == 0 {
            return Ok(Admission { _permit: None });
        }
        let count = self.permits(messages)?;
        let permit = self.in_flight.clone().acquire_many_owned(count).await.expect("the semaphore is never closed");
        Ok(Admission { _permit: Some(permit) })
    }

    /// Runs `messages` (Segment-spec JSON, `type` set) through the pipeline
    /// and appends them; one result per message, in order. Call with an
    /// [`Admission`] held.
    pub async fn ingest(
        &self,
        grant: WriteGrant,
        caller: &Caller,
        messages: Vec<Value>,
    ) -> Result<Vec<MessageResult>, IngestError> {
        if messages.len() > MAX_BATCH_MESSAGES {
            return Err(IngestError::Invalid(format!(
                "batch: expected at most {MAX_BATCH_MESSAGES} messages, found {}",
                messages.len()
            )));
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        metrics::histogram!("onepd_ingest_batch_size").record(messages.len() as f64);
        let settings = self.settings(grant.workspace)?;
        let received = received(grant, caller);
        let decisions: Vec<Decision> = messages
            .into_iter()
            .map(|message| self.pipeline.process(&settings, &received, message, || Uuid::now_v7().to_string()))
            .collect();
        let decisions = self.suppress(grant.workspace, decisions)?;
        let decisions = self.seal_rejections(&settings, decisions)?;
        self.append(grant, decisions).await
    }

    /// Makes every rejection that names a person erasable: sealed under a
    /// subject of its own, with the keyed hashes of the identifiers found in
    /// it (`rejected_identifiers`, normalized as ingest would) in its
    /// metadata, where `forget` finds them. A rejection naming someone
    /// already erased keeps nothing of the payload; one naming more than
    /// [`MAX_REJECTION_IDENTIFIERS`] keeps only its reasons too. Without a
    /// master key nothing can be sealed and rejections stay as they are.
    fn seal_rejections(
        &self,
        settings: &WorkspaceSettings,
        decisions: Vec<Decision>,
    ) -> Result<Vec<Decision>, IngestError> {
        if !self.log.has_master_key() {
            return Ok(decisions);
        }
        let workspace = settings.workspace;
        let mut sealed = Vec::with_capacity(decisions.len());
        for decision in decisions {
            let Decision::Rejected { mut event, reasons, identifiers } = decision else {
                sealed.push(decision);
                continue;
            };
            if identifiers.is_empty() {
                // Nothing ties it to a person: kept as received, unsealed.
                event.subject = None;
                sealed.push(Decision::Rejected { event, reasons, identifiers });
                continue;
            }
            let mut hashes = Vec::with_capacity(identifiers.len().min(MAX_REJECTION_IDENTIFIERS));
            for identifier in identifiers.iter().take(MAX_REJECTION_IDENTIFIERS) {
                hashes.push(self.log.suppression_hash(workspace, identifier).map_err(IngestError::Store)?);
            }
            let erased = self.directory.read(|directory| {
                directory.has_suppressions(workspace)
                    && hashes.iter().any(|hash| directory.is_suppressed(workspace, hash))
            });
            if erased || identifiers.len() > MAX_REJECTION_IDENTIFIERS {
                // Kept in clear, so nothing of the payload: not even a
                // reason's message, which may quote a value.
                event.data["raw"] = Value::String(String::new());
                event.data["truncated"] = Value::Bool(true);
                event.data["message_id"] = Value::Null;
                let bare: Vec<Value> = reasons
                    .iter()
                    .map(|reason| {
                        serde_json::json!({
                            "field": reason.field,
                            "rule": reason.rule,
                            "message": format!("{}: broke the rule {} (the message is not kept)", reason.field, reason.rule),
                        })
                    })
                    .collect();
                event.data["reasons"] = Value::Array(bare);
                event.subject = None;
            } else {
                event.subject = Some(rejection_subject(event.event_id));
                event.metadata["identifiers"] = Value::from(hashes);
            }
            sealed.push(Decision::Rejected { event, reasons, identifiers });
        }
        Ok(sealed)
    }

    /// Turns each accepted message about an erased person (one of its
    /// identifiers on the workspace's suppression list) into a rejection
    /// that keeps nothing of it. Free when the workspace has erased no one.
    fn suppress(&self, workspace: WorkspaceId, decisions: Vec<Decision>) -> Result<Vec<Decision>, IngestError> {
        if !self.directory.read(|directory| directory.has_suppressions(workspace)) {
            return Ok(decisions);
        }
        let mut checked = Vec::with_capacity(decisions.len());
        for decision in decisions {
            let identifiers = match &decision {
                Decision::Accepted { event, .. } => {
                    event.data.get("message").map(message_identifiers).unwrap_or_default()
                }
                Decision::Rejected { .. } => Vec::new(),
            };
            let mut hashes = Vec::with_capacity(identifiers.len());
            for identifier in &identifiers {
                hashes.push(self.log.suppression_hash(workspace, identifier).map_err(IngestError::Store)?);
            }
            let suppressed = !hashes.is_empty()
                && self.directory.read(|directory| hashes.iter().any(|hash| directory.is_suppressed(workspace, hash)));
            checked.push(if suppressed { decision.suppress() } else { decision });
        }
        Ok(checked)
    }

    /// Records a payload that never became a message (a webhook that failed
    /// verification or mapping) as a `MessageRejected` with `reasons`; a
    /// payload rejected before is recorded once. `named` are messages
    /// salvaged from it whose identifiers it is sealed for too. Call with an
    /// [`Admission`] held.
    pub async fn reject(
        &self,
        grant: WriteGrant,
        caller: &Caller,
        raw: String,
        reasons: Vec<Violation>,
        named: &[Value],
    ) -> Result<MessageResult, IngestError> {
        let settings = self.settings(grant.workspace)?;
        let mut decision = self.pipeline.reject_payload(&settings, &received(grant, caller), raw, reasons);
        // What the payload names once mapped (a platform's customer id with
        // the mapping's prefix), beside what it names as received.
        if let Decision::Rejected { identifiers, .. } = &mut decision {
            for message in named {
                for identifier in rejected_identifiers(&message.to_string(), settings.default_region.as_deref()) {
                    if !identifiers.contains(&identifier) {
                        identifiers.push(identifier);
                    }
                }
            }
        }
        let decisions = self.seal_rejections(&settings, vec![decision])?;
        let mut results = self.append(grant, decisions).await?;
        Ok(results.pop().expect("one result per decision"))
    }

    /// Appends the events of `decisions` to the source's stream in one
    /// request; one result per decision, in order.
    async fn append(&self, grant: WriteGrant, decisions: Vec<Decision>) -> Result<Vec<MessageResult>, IngestError> {
        let source = grant.source_id.to_string();
        metrics::counter!("onepd_ingest_messages_received_total", "source" => source.clone())
            .increment(decisions.len() as u64);
        // A message sent twice in one batch is stored once; the second copy
        // is reported as a duplicate of the first. Events are moved into the
        // append request; each message keeps only what its result needs.
        let mut first_index: HashMap<EventId, usize> = HashMap::with_capacity(decisions.len());
        let mut copy_of = vec![None; decisions.len()];
        let mut events = Vec::with_capacity(decisions.len());
        let mut appended = Vec::with_capacity(decisions.len());
        let mut pending = Vec::with_capacity(decisions.len());
        for (index, decision) in decisions.into_iter().enumerate() {
            let event_id = decision.event_id();
            let (event, verdict) = match decision {
                Decision::Accepted { event, message_id } => (event, Verdict::Accepted { message_id }),
                Decision::Rejected { event, reasons, .. } => {
                    let message_id = event.data.get("message_id").and_then(Value::as_str).map(str::to_owned);
                    (event, Verdict::Rejected { message_id, reasons })
                }
            };
            pending.push((event_id, verdict));
            match first_index.get(&event_id) {
                Some(&first) => copy_of[index] = Some(first),
                None => {
                    first_index.insert(event_id, index);
                    appended.push(index);
                    events.push(event);
                }
            }
        }
        let started = Instant::now();
        let request =
            AppendRequest { stream_id: source_stream(grant.source_id), expected: ExpectedVersion::Any, events };
        let stored = self.log.append_each(request).await.map_err(|err| match err {
            AppendError::Store(err) => IngestError::Store(err),
            err => IngestError::Append(err),
        })?;
        metrics::histogram!("onepd_append_latency_seconds").record(started.elapsed().as_secs_f64());

        let mut placed: Vec<Option<(Position, bool)>> = vec![None; pending.len()];
        for (slot, (position, duplicate)) in appended.into_iter().zip(stored) {
            placed[slot] = Some((position, duplicate));
        }
        let results: Vec<MessageResult> = pending
            .into_iter()
            .enumerate()
            .map(|(index, (event_id, verdict))| {
                let (position, duplicate) = match copy_of[index] {
                    Some(first) => (placed[first].expect("every first copy was appended").0, true),
                    None => placed[index].expect("every first copy was appended"),
                };
                match verdict {
                    Verdict::Accepted { message_id } => MessageResult {
                        message_id: Some(message_id),
                        event_id,
                        outcome: if duplicate {
                            Outcome::Duplicate { position }
                        } else {
                            Outcome::Accepted { position }
                        },
                    },
                    Verdict::Rejected { message_id, reasons } => {
                        MessageResult { message_id, event_id, outcome: Outcome::Rejected { reasons, position } }
                    }
                }
            })
            .collect();
        // Counted per outcome and reason, not per message: a label lookup
        // per message would cost more than the rest of the bookkeeping.
        let mut counts: HashMap<(&'static str, &str), u64> = HashMap::new();
        for result in &results {
            let reason = match &result.outcome {
                Outcome::Rejected { reasons, .. } => reasons.first().map_or("", |reason| reason.rule.as_str()),
                _ => "",
            };
            *counts.entry((result.label(), reason)).or_default() += 1;
        }
        for ((outcome, reason), count) in counts {
            metrics::counter!(
                "onepd_ingest_messages_total",
                "source" => source.clone(),
                "outcome" => outcome,
                "reason" => reason.to_owned()
            )
            .increment(count);
        }
        Ok(results)
    }

    /// The pipeline settings of `workspace`, compiled once per configuration
    /// change.
    fn settings(&self, workspace: WorkspaceId) -> Result<Arc<WorkspaceSettings>, IngestError> {
        let not_found = || IngestError::Configuration(format!("workspace {workspace}: not found"));
        let current = self
            .directory
            .read(|directory| directory.workspace(workspace).map(|entry| entry.settings_version))
            .ok_or_else(not_found)?;
        if let Some((version, settings)) = self.settings.lock().expect("settings lock").get(&workspace)
            && *version == current
        {
            return Ok(settings.clone());
        }
        // Changed since last compiled (or never compiled): copy it out once.
        let entry = self.directory.read(|directory| directory.workspace(workspace).cloned()).ok_or_else(not_found)?;
        let plan = match &entry.plan {
            Some((mode, plan)) => Some(Arc::new(
                TrackingPlan::compile(*mode, plan).map_err(|err| IngestError::Configuration(err.to_string()))?,
            )),
            None => None,
        };
        let settings = Arc::new(WorkspaceSettings {
            workspace,
            industry: entry.industry,
            default_region: entry.default_region.clone(),
            plan,
        });
        self.settings.lock().expect("settings lock").insert(workspace, (entry.settings_version, settings.clone()));
        Ok(settings)
    }
}

/// The user name of HTTP Basic credentials (the base64 after `Basic `):
/// Segment's way of sending a write key, over HTTP and gRPC alike.
pub fn basic_user(credentials: &str) -> Option<String> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    (!user.is_empty()).then(|| user.to_owned())
}

/// Where and when `caller`'s messages for `grant`'s source arrived.
fn received(grant: WriteGrant, caller: &Caller) -> Received {
    Received {
        at: caller.received_at.unwrap_or_else(now),
        source_id: grant.source_id,
        peer_ip: caller.peer_ip,
        forwarded_ip: caller.forwarded_ip,
        request_id: caller.request_id.clone(),
    }
}

/// What a message's result needs once its event is handed to the store.
enum Verdict {
    Accepted { message_id: String },
    Rejected { message_id: Option<String>, reasons: Vec<Violation> },
}

/// The wall clock, in the log's microseconds.
pub fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(since.as_micros() as i64)
}
