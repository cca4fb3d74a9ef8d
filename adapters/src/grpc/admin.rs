//! `onepd.admin.v1.AdminService`: destinations and their delivery ledgers,
//! and erasure, over gRPC. Every call goes through [`crate::activation::admin`], the code
//! behind `onepd destination`, `onepd deliveries` and `onepd replay`, so the
//! service and the CLI accept, refuse and answer alike.
//!
//! Reading (ListDestinations, ListDeliveries, ShowDelivery) needs an admin
//! token with the `read` scope (`admin` allows it too); every change needs
//! `admin`. A call acts only in its token's workspace: a destination of
//! another workspace is NOT_FOUND, worded as one that does not exist.
//!
//! Errors, one conversion ([`admin_status`]): a configuration or request the
//! workspace cannot take is INVALID_ARGUMENT naming the field, an unknown
//! destination or event NOT_FOUND, a concurrent change of the workspace
//! ABORTED (run it again), a store failure UNAVAILABLE (logged in full, the
//! caller sees a plain message). A caller's mistake is not logged.
//!
//! Destinations are found in the live [`Directory`], which follows the log:
//! after a change, the call waits (briefly) until the directory shows it, so
//! the caller's next call sees its own change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use onepd_commands::workspace::{ConfigError, EXTERNAL_ADAPTER};
use onepd_domain::events::destination::{DestinationCreated, DestinationFilters, ReplayRequested, RetryPolicy, Run};
use onepd_domain::events::workspace::TokenScope;
use onepd_domain::{EventId, EventStore, Position, Timestamp};
use onepd_projections::access::Grant;
use onepd_projections::directory::{DestinationEntry, Directory};
use onepd_proto::admin::v1 as proto;
use onepd_proto::admin::v1::admin_service_server::AdminService;
use onepd_proto::admin::v1::{DestinationState, StartFrom, replay_request};
use tonic::{Request, Response, Status};
use tracing::field;
use uuid::Uuid;

use super::audit::store_status;
use super::auth::TokenRegistry;
use super::profiles::{ProfileRef, parse_identifier, parse_profile_ref};
use crate::EventLog;
use crate::activation::admin::{self, AdminError, Attempt, DeliveryState};
use crate::activation::connect;
use crate::destinations::{BUILT_IN, built_in};
use crate::erasure::{self, ErasureError, Lookup};
use crate::live::Live;
use crate::profiles::ProfileReader;

/// Attempts listed when the request does not say, as the CLI lists.
pub const DEFAULT_DELIVERIES_LIMIT: usize = 20;

/// How long a change waits for the directory to show it before answering.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// The admin service.
pub struct AdminApi {
    log: EventLog,
    directory: Arc<Live<Directory>>,
    tokens: Arc<TokenRegistry>,
    profiles: ProfileReader,
}

impl AdminApi {
    /// The service over `log`, finding destinations in `directory` (the one
    /// ingest and activation follow), people to erase through `profiles`,
    /// and admitting the admin tokens in `tokens`.
    pub fn new(
        log: EventLog,
        directory: Arc<Live<Directory>>,
        tokens: Arc<TokenRegistry>,
        profiles: ProfileReader,
    ) -> AdminApi {
        AdminApi { log, directory, tokens, profiles }
    }

    /// The request's grant, if its token allows `needed`; its workspace is
    /// recorded on the current span.
    fn grant<T>(&self, request: &Request<T>, needed: TokenScope) -> Result<Grant, Status> {
        let grant = self.tokens.authorize(request.metadata(), needed)?;
        tracing::Span::current().record("workspace", field::display(grant.workspace));
        Ok(grant)
    }

    /// The destination of the grant's workspace named `id_or_name`.
    fn find(&self, grant: &Grant, id_or_name: &str) -> Result<DestinationEntry, Status> {
        if id_or_name.is_empty() {
            return Err(Status::invalid_argument("destination: expected a destination's id or name, found none"));
        }
        self.directory
            .read(|directory| admin::find(directory, grant.workspace, id_or_name).cloned())
            .map_err(admin_status)
    }

    /// A copy of the directory, for the ledger reads that take one: the
    /// live one's lock cannot be held across their awaits.
    fn directory(&self) -> Directory {
        self.directory.read(Directory::clone)
    }

    /// Waits until the directory shows `done`, or [`SETTLE_WITHIN`] passed;
    /// the change is recorded either way, and shows in a moment.
    async fn settled(&self, done: impl Fn(&Directory) -> bool) {
        let _ = tokio::time::timeout(SETTLE_WITHIN, async {
            while !self.directory.read(&done) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Pauses (`pause`) or resumes the destination named `id_or_name`.
    async fn switch(&self, grant: &Grant, id_or_name: &str, pause: bool) -> Result<DestinationEntry, Status> {
        let entry = self.find(grant, id_or_name)?;
        let id = entry.created.destination_id;
        admin::switch_destination(&self.log, grant.workspace, id, pause, &actor(grant)).await.map_err(admin_status)?;
        let workspace = grant.workspace;
        self.settled(|directory| {
            directory.find_destination(workspace, &id.to_string()).is_some_and(|entry| entry.paused == pause)
        })
        .await;
        Ok(entry)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all, name = "create_destination", fields(workspace = field::Empty))]
    async fn create_destination(
        &self,
        request: Request<proto::CreateDestinationRequest>,
    ) -> Result<Response<proto::Destination>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let request = request.into_inner();
        let settings = settings(&request.settings_json)?;
        // As the CLI: a built-in adapter must be buildable from its settings
        // before anything is recorded; an external one checks its own.
        if request.adapter != EXTERNAL_ADAPTER {
            if !BUILT_IN.contains(&request.adapter.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "adapter: expected one of {}, {EXTERNAL_ADAPTER}, found {:?}",
                    BUILT_IN.join(", "),
                    request.adapter
                )));
            }
            built_in(&request.adapter, &settings).map_err(|err| Status::invalid_argument(err.to_string()))?;
        }
        let start = match StartFrom::try_from(request.from) {
            Ok(StartFrom::Unspecified | StartFrom::Now) => Position(0),
            Ok(StartFrom::Beginning) => Position(1),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "from: expected START_FROM_NOW or START_FROM_BEGINNING, found {}",
                    request.from
                )));
            }
        };
        let defaults = RetryPolicy::default();
        let policy = match request.policy_json.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
            None => Default::default(),
            Some(text) => serde_json::from_str(text).map_err(|err| {
                Status::invalid_argument(format!(
                    "policy_json: expected {{\"allow_fields\", \"event_names\", \"remove\", \"allow_ip_user_agent\"}}: {err}"
                ))
            })?,
        };
        let created = DestinationCreated {
            destination_id: Uuid::now_v7(),
            name: request.name,
            adapter: request.adapter,
            url: request.url,
            settings,
            filters: DestinationFilters {
                event_types: request.event_types,
                event_names: request.event_names,
                consent_categories: request.consent_categories,
            },
            traits: request.traits,
            start,
            retry: RetryPolicy {
                window_secs: request.retry_window_secs.unwrap_or(defaults.window_secs),
                initial_backoff_ms: request.initial_backoff_ms.unwrap_or(defaults.initial_backoff_ms),
                max_backoff_ms: request.max_backoff_ms.unwrap_or(defaults.max_backoff_ms),
                timeout_ms: request.timeout_ms.unwrap_or(defaults.timeout_ms),
            },
            policy,
        };
        let created = admin::create_destination(&self.log, grant.workspace, created, &actor(&grant))
            .await
            .map_err(admin_status)?;
        let (workspace, id) = (grant.workspace, created.destination_id.to_string());
        self.settled(|directory| directory.find_destination(workspace, &id).is_some()).await;
        Ok(Response::new(proto::Destination {
            destination_id: created.destination_id.to_string(),
            name: created.name,
            adapter: created.adapter,
            start: created.start.0,
        }))
    }

    #[tracing::instrument(skip_all, name = "list_destinations", fields(workspace = field::Empty))]
    async fn list_destinations(
        &self,
        request: Request<proto::ListDestinationsRequest>,
    ) -> Result<Response<proto::ListDestinationsResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let statuses = admin::statuses(&self.log, &self.directory(), grant.workspace).await.map_err(store_status)?;
        let destinations = statuses
            .into_iter()
            .map(|status| {
                let created = status.entry.created;
                let ledger = status.ledger;
                let detail = ledger.state(status.entry.paused);
                let state = match detail {
                    DeliveryState::Running => DestinationState::Running,
                    DeliveryState::Paused => DestinationState::Paused,
                    DeliveryState::Retrying { .. } => DestinationState::Retrying,
                    DeliveryState::Stalled { .. } => DestinationState::Stalled,
                };
                proto::DestinationStatus {
                    destination_id: created.destination_id.to_string(),
                    name: created.name,
                    adapter: created.adapter,
                    url: created.url,
                    state: state.into(),
                    checkpoint: ledger.checkpoint.unwrap_or(created.start).0,
                    delivered: ledger.delivered,
                    attempts: ledger.attempts,
                    dead_letters: ledger.dead.len() as u64,
                    open_job_ids: ledger.open_jobs.keys().map(Uuid::to_string).collect(),
                    state_detail: detail.to_string(),
                    quarantined: ledger.quarantined.len() as u64,
                }
            })
            .collect();
        Ok(Response::new(proto::ListDestinationsResponse { destinations }))
    }

    #[tracing::instrument(skip_all, name = "pause_destination", fields(workspace = field::Empty))]
    async fn pause_destination(
        &self,
        request: Request<proto::PauseDestinationRequest>,
    ) -> Result<Response<proto::PauseDestinationResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let entry = self.switch(&grant, &request.into_inner().destination, true).await?;
        Ok(Response::new(proto::PauseDestinationResponse {
            destination_id: entry.created.destination_id.to_string(),
            name: entry.created.name,
        }))
    }

    #[tracing::instrument(skip_all, name = "resume_destination", fields(workspace = field::Empty))]
    async fn resume_destination(
        &self,
        request: Request<proto::ResumeDestinationRequest>,
    ) -> Result<Response<proto::ResumeDestinationResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let entry = self.switch(&grant, &request.into_inner().destination, false).await?;
        Ok(Response::new(proto::ResumeDestinationResponse {
            destination_id: entry.created.destination_id.to_string(),
            name: entry.created.name,
        }))
    }

    #[tracing::instrument(skip_all, name = "list_deliveries", fields(workspace = field::Empty))]
    async fn list_deliveries(
        &self,
        request: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<proto::ListDeliveriesResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let request = request.into_inner();
        let id = self.find(&grant, &request.destination)?.created.destination_id;
        if request.dead {
            let ledger = admin::ledger(&self.log, id).await.map_err(store_status)?;
            let dead_letters = ledger
                .dead
                .into_values()
                .map(|dead| proto::DeadLetter {
                    event_id: dead.event_id.to_string(),
                    position: dead.position.0,
                    reason: dead.reason,
                    at: dead.at.to_rfc3339(),
                })
                .collect();
            return Ok(Response::new(proto::ListDeliveriesResponse { attempts: Vec::new(), dead_letters }));
        }
        let limit = match request.limit {
            0 => DEFAULT_DELIVERIES_LIMIT,
            limit => limit as usize,
        };
        let attempts = admin::attempts(&self.log, id, limit).await.map_err(store_status)?;
        Ok(Response::new(proto::ListDeliveriesResponse {
            attempts: attempts.into_iter().map(attempt_message).collect(),
            dead_letters: Vec::new(),
        }))
    }

    #[tracing::instrument(skip_all, name = "show_delivery", fields(workspace = field::Empty))]
    async fn show_delivery(
        &self,
        request: Request<proto::ShowDeliveryRequest>,
    ) -> Result<Response<proto::ShowDeliveryResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let text = request.into_inner().event_id;
        let event_id = text
            .parse::<Uuid>()
            .map(EventId)
            .map_err(|_| Status::invalid_argument(format!("event_id: expected a UUID, found {text:?}")))?;
        let found = admin::event_attempts(&self.log, &self.directory(), grant.workspace, event_id)
            .await
            .map_err(store_status)?;
        if found.is_empty() {
            return Err(Status::not_found(format!("event {event_id}: no delivery attempt carried it")));
        }
        let deliveries = found
            .into_iter()
            .map(|(destination, attempt)| {
                let failed = attempt.attempt.failed.iter().find(|failed| failed.event_id == event_id);
                let outcome = failed.map_or("delivered".to_owned(), |failed| failed.outcome.clone());
                let reason = failed.map(|failed| failed.reason.clone());
                proto::EventDelivery { destination, attempt: Some(attempt_message(attempt)), outcome, reason }
            })
            .collect();
        Ok(Response::new(proto::ShowDeliveryResponse { deliveries }))
    }

    #[tracing::instrument(skip_all, name = "retry_dead", fields(workspace = field::Empty))]
    async fn retry_dead(
        &self,
        request: Request<proto::RetryDeadRequest>,
    ) -> Result<Response<proto::RetryDeadResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let entry = self.find(&grant, &request.into_inner().destination)?;
        let job = admin::retry_dead(&self.log, &entry, &actor(&grant)).await.map_err(admin_status)?;
        Ok(Response::new(proto::RetryDeadResponse { job: job.map(job_message) }))
    }

    #[tracing::instrument(skip_all, name = "replay", fields(workspace = field::Empty))]
    async fn replay(&self, request: Request<proto::ReplayRequest>) -> Result<Response<proto::ReplayJob>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let request = request.into_inner();
        let entry = self.find(&grant, &request.destination)?;
        // As `onepd replay`: a time names the first event recorded at or
        // after it (`from`), or the last one recorded before it (`to`).
        let from = match request.start {
            Some(replay_request::Start::FromPosition(position)) => Position(position),
            Some(replay_request::Start::FromTime(time)) => {
                self.log.position_at(timestamp("from_time", time)?).await.map_err(store_status)?
            }
            None => return Err(Status::invalid_argument("from_position, from_time: expected one, found neither")),
        };
        let to = match request.end {
            None => None,
            Some(replay_request::End::ToPosition(position)) => Some(Position(position)),
            Some(replay_request::End::ToTime(time)) => {
                let at = self.log.position_at(timestamp("to_time", time)?).await.map_err(store_status)?;
                Some(Position(at.0.saturating_sub(1)))
            }
        };
        // Times name a window, and a window can hold no event: nothing to
        // send (an empty `job_id`), not a range error about positions the
        // caller never gave. Positions given backwards stay an error.
        let by_time = matches!(request.start, Some(replay_request::Start::FromTime(_)))
            || matches!(request.end, Some(replay_request::End::ToTime(_)));
        let last = match to {
            Some(to) => to,
            None => self.log.head().await.map_err(store_status)?,
        };
        if by_time && from > last {
            return Ok(Response::new(proto::ReplayJob {
                job_id: String::new(),
                destination_id: entry.created.destination_id.to_string(),
                from: from.0,
                to: last.0,
                count: 0,
            }));
        }
        let job = admin::request_replay(&self.log, &entry, from, to, Vec::new(), &actor(&grant))
            .await
            .map_err(admin_status)?;
        Ok(Response::new(job_message(job)))
    }

    async fn cluster_status(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let status = crate::cluster::status(&self.log).await.map_err(store_status)?;
        let head = self.log.head().await.map_err(store_status)?;
        // The work this workspace sees: the projections, and its own
        // destinations' runs and jobs (each read from its own ledger);
        // another workspace's are not shown.
        let directory = self.directory();
        let mine: Vec<&DestinationEntry> =
            directory.all_destinations().filter(|entry| entry.workspace == grant.workspace).collect();
        let mut names: HashMap<String, (String, Option<onepd_domain::Position>)> = HashMap::new();
        for entry in mine {
            let id = entry.created.destination_id;
            let ledger = admin::ledger(&self.log, id).await.map_err(store_status)?;
            let name = entry.created.name.clone();
            names.insert(crate::cluster::destination_lease(id), (name.clone(), ledger.checkpoint));
            for job in ledger.open_jobs.keys() {
                names.insert(crate::cluster::replay_lease(*job), (name.clone(), None));
            }
        }
        let store = self.profiles.store();
        let mut leases = Vec::new();
        for lease in &status.leases {
            let projection =
                [crate::cluster::PROFILES_LEASE, crate::cluster::AUDIENCES_LEASE].contains(&lease.name.as_str());
            let Some(name) = names.get(&lease.name).map(|(name, _)| name.clone()).or(projection.then(String::new))
            else {
                continue;
            };
            let mine = names.get(&lease.name).and_then(|(_, checkpoint)| *checkpoint);
            let checkpoint =
                crate::cluster::checkpoint_of(store.as_ref(), &lease.name, |_| mine).await.map_err(store_status)?;
            leases.push(proto::ClusterLease {
                lease: lease.name.clone(),
                holder: if lease.held(status.now) { lease.holder.clone() } else { String::new() },
                token: lease.token,
                destination: name,
                lag: checkpoint.map(|checkpoint| head.0.saturating_sub(checkpoint.0)),
            });
        }
        let nodes = (status.nodes.iter())
            .map(|node| proto::ClusterNode {
                node_id: node.node_id.clone(),
                alive: node.alive(status.now),
                version: node.version.clone(),
                heartbeat_seconds_ago: (status.now - node.heartbeat_at) as f64 / 1e6,
                leases_held: leases.iter().filter(|lease| lease.holder == node.node_id).count() as u32,
            })
            .collect();
        Ok(Response::new(proto::ClusterStatusResponse { head: head.0, nodes, leases }))
    }

    #[tracing::instrument(skip_all, name = "forget", fields(workspace = field::Empty))]
    async fn forget(&self, request: Request<proto::ForgetRequest>) -> Result<Response<proto::ForgetResponse>, Status> {
        use proto::forget_request::Subject;
        let grant = self.grant(&request, TokenScope::Admin)?;
        let lookup = match request.into_inner().subject {
            Some(Subject::Email(value)) => identifier("email", &value)?,
            Some(Subject::UserId(value)) => identifier("user_id", &value)?,
            Some(Subject::AnonymousId(value)) => identifier("anonymous_id", &value)?,
            Some(Subject::Phone(value)) => identifier("phone", &value)?,
            Some(Subject::ProfileId(text)) => parse_profile_ref(ProfileRef::ProfileId(text))?,
            None => {
                return Err(Status::invalid_argument(
                    "subject: expected one of email, user_id, anonymous_id, phone, profile_id, found none",
                ));
            }
        };
        let destinations: Vec<DestinationEntry> =
            self.directory.read(|directory| directory.destinations(grant.workspace).into_iter().cloned().collect());
        let report =
            erasure::forget(&self.log, &self.profiles, grant.workspace, &[lookup], &destinations, &connect(), "grpc")
                .await
                .map_err(erasure_status)?;
        Ok(Response::new(proto::ForgetResponse {
            request_id: report.request_id.to_string(),
            profile_ids: report.profiles.iter().map(|id| id.0.to_string()).collect(),
            subjects: report.subjects,
            keys_shredded: report.keys_shredded,
            deletions: report
                .deletions
                .into_iter()
                .map(|deletion| proto::DeletionOutcome {
                    destination: deletion.destination,
                    outcome: deletion.outcome,
                    response: deletion.response,
                })
                .collect(),
        }))
    }
}

/// The lookup of an identifier of `kind`; an error names the field.
fn identifier(kind: &str, value: &str) -> Result<Lookup, Status> {
    parse_identifier(kind, value)
        .map(Lookup::Identifier)
        .map_err(|_| Status::invalid_argument(format!("{kind}: expected a value, found {value:?}")))
}

/// The status an [`ErasureError`] becomes.
pub fn erasure_status(err: ErasureError) -> Status {
    match err {
        ErasureError::Invalid(reason) => Status::invalid_argument(reason),
        ErasureError::NotFound(reason) => Status::not_found(reason),
        ErasureError::Store(err) => store_status(err),
    }
}

/// The status an [`AdminError`] becomes.
pub fn admin_status(err: AdminError) -> Status {
    match err {
        AdminError::Config(ConfigError::NoSuchDestination(id)) => {
            Status::not_found(ConfigError::NoSuchDestination(id).to_string())
        }
        AdminError::Config(err) => Status::invalid_argument(err.to_string()),
        AdminError::Invalid(message) => Status::invalid_argument(message),
        AdminError::NotFound(message) => Status::not_found(message),
        AdminError::Conflict => Status::aborted(AdminError::Conflict.to_string()),
        AdminError::Store(err) => store_status(err),
    }
}

/// Who a change is recorded as made by: the token's public id, never the
/// token.
fn actor(grant: &Grant) -> String {
    format!("onepd.admin.v1 token {}", grant.token_id)
}

/// The adapter settings: a JSON object, `{}` when empty.
fn settings(text: &str) -> Result<serde_json::Value, Status> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(Status::invalid_argument("settings_json: expected a JSON object, found another JSON value")),
        Err(err) => Err(Status::invalid_argument(format!("settings_json: expected a JSON object, found {err}"))),
    }
}

fn timestamp(field: &str, value: prost_types::Timestamp) -> Result<Timestamp, Status> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Status::invalid_argument(format!("{field}.nanos: expected 0 to 999999999, found {}", value.nanos)));
    }
    Ok(Timestamp::from_seconds_nanos(value.seconds, value.nanos))
}

/// A run as the CLI shows it: `live` or `job <id>`.
fn run_name(run: Run) -> String {
    match run {
        Run::Live => "live".to_owned(),
        Run::Job { job_id } => format!("job {job_id}"),
    }
}

fn attempt_message(attempt: Attempt) -> proto::DeliveryAttempt {
    let a = attempt.attempt;
    proto::DeliveryAttempt {
        at: attempt.at.to_rfc3339(),
        position: attempt.position.0,
        run: run_name(a.run),
        attempt: a.attempt,
        events: a.events.len() as u64,
        failed: a
            .failed
            .into_iter()
            .map(|failed| proto::FailedDelivery {
                event_id: failed.event_id.to_string(),
                position: failed.position.0,
                outcome: failed.outcome,
                reason: failed.reason,
            })
            .collect(),
        response: a.response,
        hashed: a.hashed,
        scrubbed: a.scrubbed,
        checkpoint: a.checkpoint.map(|position| position.0),
        duration_ms: a.duration_ms,
    }
}

fn job_message(job: ReplayRequested) -> proto::ReplayJob {
    proto::ReplayJob {
        job_id: job.job_id.to_string(),
        destination_id: job.destination_id.to_string(),
        from: job.from.0,
        to: job.to.0,
        count: job.only.len() as u64,
    }
}
