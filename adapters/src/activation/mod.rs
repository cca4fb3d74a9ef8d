//! The activation engine: one subscriber per destination, each with its own
//! checkpoint, replaying the log to the destination's adapter.
//!
//! A **run** reads the log from a position, takes each event's profile as of
//! that event from the profiles read model ([`AsOfReader`]), prepares the
//! events the destination receives ([`onepd_projections::activation::prepare`]),
//! and delivers them in batches of the adapter's size:
//!
//! * **delivered** → the ledger records it; for the live run, the
//!   checkpoint moves past the batch;
//! * **retryable** (timeout, 408, 429, 5xx, connection refused) → exponential
//!   backoff with jitter, never less than the destination's `Retry-After`,
//!   until the retry window (4 h by default) is over; then dead-letter;
//! * **permanent** (another 4xx) → dead-letter;
//! * a batch **rejected as a whole** is split in halves, recursively, to
//!   find the bad events.
//!
//! Every attempt is one `DeliveryAttempted` in the destination's ledger
//! stream. Runs never share a task, so a slow or failing destination delays
//! only itself. The live run of each destination that is not paused is
//! kept running by a supervisor; replay jobs (`ReplayRequested`) run beside it
//! and never move its checkpoint. The live runs share one read of the log
//! (the tap, [`tap`]) once they are at its head; a run that is behind, and
//! every replay job, reads on its own.
//!
//! Delivery is at least once: a crash between a delivery and its ledger entry
//! sends the batch again, with the same event ids.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onepd_domain::destination::{DeliverError, Description, Destination, EventResult, Outcome, PreparedEvent};
use onepd_domain::events::audience::{AudienceEntered, AudienceExited, ComputedTraitChanged};
use onepd_domain::events::destination::{
    DeliveryAttempted, DestinationCreated, DestinationRecovered, DestinationStalled, EventsWithheld, FailedDelivery,
    ReplayCompleted, ReplayRequested, Run, WithheldEvent, destination_stream,
};
use onepd_domain::events::identity::FACT_TYPES;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::quarantine::{DESTINATION_READER, EventQuarantined};
use onepd_domain::policy::formats::redact_text;
use onepd_domain::policy::{Annotations, WorkspacePolicy, WorkspaceSecrets};
use onepd_domain::{
    AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Pages, Position, ProjectionStore,
    RecordedEvent, StoreError, Timestamp, WorkspaceId,
};
use onepd_projections::activation::{
    DeliveryState, Ledger, Ledgers, Notes, Prepared, Target, prepare, prepare_audience_change, prepare_computed_change,
};
use onepd_projections::directory::{DestinationEntry, Directory};
use onepd_projections::profile::{Lookup, ProfileAsOf, ProfileView};
use onepd_projections::runner::{ProfilesFold, read_facts};
use rand::Rng;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::EventLog;
use crate::cluster::Fence;
use crate::live::Live;
use crate::profiles::as_of::{AsOfReader, SnapshotBudget};
use crate::profiles::{AsOf, ProfileReader};

pub mod admin;
pub mod explain;
mod tap;

use tap::{Tap, Tapped, live_types};

/// Builds the adapter of a destination (a built-in, or a remote one over gRPC).
pub type Connect = Arc<dyn Fn(&DestinationEntry) -> Result<Arc<dyn Destination>, String> + Send + Sync>;

/// The adapter of each destination: its built-in adapter, or for `grpc` the
/// external adapter at its URL.
pub fn connect() -> Connect {
    Arc::new(|entry: &DestinationEntry| {
        let created = &entry.created;
        match (created.adapter.as_str(), &created.url) {
            (onepd_commands::workspace::EXTERNAL_ADAPTER, Some(url)) => remote(url, created),
            (adapter, _) => crate::destinations::built_in(adapter, &created.settings).map_err(|err| err.to_string()),
        }
    })
}

/// The external adapter at `url`, over gRPC.
fn remote(
    url: &str,
    created: &onepd_domain::events::destination::DestinationCreated,
) -> Result<Arc<dyn Destination>, String> {
    crate::grpc::destination::RemoteDestination::new(url, created.destination_id, &created.settings)
        .map(|remote| Arc::new(remote) as Arc<dyn Destination>)
        .map_err(|err| err.to_string())
}

/// Called with every delivered event: (recorded at, delivered at), for lag.
pub type OnDelivered = Arc<dyn Fn(&[Timestamp], Timestamp) + Send + Sync>;

/// How the engine reads the log.
#[derive(Clone)]
pub struct ActivationOptions {
    /// Events read per page.
    pub page: usize,
    /// How often the supervisor looks for destinations and jobs to start.
    pub tick: Duration,
    /// Told about every delivered event (the benchmark's lag).
    pub on_delivered: Option<OnDelivered>,
    /// The memory every run's profile snapshots share.
    pub snapshots: SnapshotBudget,
    /// This process as a node of a cluster: each destination's live run
    /// and each replay job runs only while the node holds its lease, and
    /// writes its ledger under it. `None` runs every one here.
    pub node: Option<Arc<crate::cluster::Node>>,
}

impl Default for ActivationOptions {
    fn default() -> ActivationOptions {
        ActivationOptions {
            page: 1_000,
            tick: Duration::from_millis(200),
            on_delivered: None,
            snapshots: SnapshotBudget::default(),
            node: None,
        }
    }
}

/// The running engine; dropping it (or [`Activation::stop`]) stops every run.
pub struct Activation {
    supervisor: JoinHandle<()>,
    health: Arc<std::sync::Mutex<Vec<DestinationHealth>>>,
}

/// Where one destination's live delivery stands, refreshed every second by
/// the supervisor (also exported as `onepd_activation_lag_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationHealth {
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Its name.
    pub name: String,
    /// Its state, from its ledger and the directory.
    pub state: DeliveryState,
    /// Every position below it is settled.
    pub checkpoint: Position,
    /// Positions from the checkpoint to the head, or 0 when none of them is
    /// an event it reads.
    pub lag: u64,
}

impl Activation {
    /// Starts the supervisor over `log`, following the directory for
    /// destinations (and their pauses) and the ledgers for replay jobs.
    /// Runs take each event's profile from the profiles read model in
    /// `profiles`, which the profiles projection keeps.
    pub async fn spawn(
        log: EventLog,
        directory: Arc<Live<Directory>>,
        connect: Connect,
        profiles: Arc<dyn ProjectionStore>,
        options: ActivationOptions,
    ) -> Result<Activation, StoreError> {
        let ledgers = Live::<Ledgers>::follow(&log, "ledgers").await?;
        let health: Arc<std::sync::Mutex<Vec<DestinationHealth>>> = Arc::default();
        let supervisor = tokio::spawn(supervise(log, directory, ledgers, connect, profiles, options, health.clone()));
        Ok(Activation { supervisor, health })
    }

    /// Every destination's state, checkpoint and lag, as last measured.
    pub fn health(&self) -> Vec<DestinationHealth> {
        self.health.lock().expect("not poisoned").clone()
    }

    /// Stops every run; an interrupted delivery is sent again next time.
    pub fn stop(&self) {
        self.supervisor.abort();
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Aborts its task when dropped, so the supervisor's maps own their runs.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn supervise(
    log: EventLog,
    directory: Arc<Live<Directory>>,
    ledgers: Arc<Live<Ledgers>>,
    connect: Connect,
    profiles: Arc<dyn ProjectionStore>,
    options: ActivationOptions,
    health: Arc<std::sync::Mutex<Vec<DestinationHealth>>>,
) {
    let mut last_measured = Instant::now() - Duration::from_secs(60);
    // Each live run with the configuration it started under: a run whose
    // destination policy, workspace policy or tracking plan changed is
    // started again (from its durable checkpoint) under the new one.
    let mut live: HashMap<Uuid, (Running, Stamp, Option<Fence>)> = HashMap::new();
    let mut jobs: HashMap<Uuid, (Running, Option<Fence>)> = HashMap::new();
    let node = options.node.clone();
    // The one read of the log the live runs share, started with the first.
    let mut tap: Option<Arc<Tap>> = None;
    let mut tick = tokio::time::interval(options.tick);
    loop {
        tick.tick().await;
        if log.is_closed() {
            return;
        }
        let entries: Vec<(DestinationEntry, Stamp)> = directory.read(|d| {
            d.all_destinations()
                .map(|entry| {
                    let settings = d.workspace(entry.workspace).map_or(0, |workspace| workspace.settings_version);
                    (entry.clone(), (entry.changed_at, settings))
                })
                .collect()
        });
        let by_id: HashMap<Uuid, &DestinationEntry> =
            entries.iter().map(|(entry, _)| (entry.created.destination_id, entry)).collect();
        let stamps: HashMap<Uuid, Stamp> =
            entries.iter().map(|(entry, stamp)| (entry.created.destination_id, *stamp)).collect();
        if let Some(node) = &node {
            let wanted = (entries.iter())
                .filter(|(entry, _)| !entry.paused)
                .map(|(entry, _)| crate::cluster::destination_lease(entry.created.destination_id));
            node.want("destinations", wanted.collect());
        }
        live.retain(|id, (run, stamp, under)| {
            by_id.get(id).is_some_and(|entry| !entry.paused && stamps.get(id) == Some(stamp))
                && !run.0.is_finished()
                && placement(&node, crate::cluster::destination_lease(*id)).as_ref() == Some(under)
        });
        // The policy (tracking plan annotations included) is read only when
        // a run starts: it is fixed for the run's life.
        let privacy = |workspace: WorkspaceId| {
            Arc::new(directory.read(|d| Privacy::of(d, workspace)).with_secrets(log.workspace_secrets(workspace)))
        };
        for (entry, stamp) in &entries {
            let id = entry.created.destination_id;
            let Some(under) = placement(&node, crate::cluster::destination_lease(id)) else { continue };
            if !entry.paused && !live.contains_key(&id) {
                if tap.is_none() {
                    match Tap::start(log.clone()).await {
                        Ok(started) => tap = Some(Arc::new(started)),
                        Err(err) => {
                            tracing::warn!(cause = %err, "cannot start the shared log reader; trying again");
                            break;
                        }
                    }
                }
                let engine = Engine::new(
                    fenced(&log, &under),
                    profiles.clone(),
                    entry.clone(),
                    privacy(entry.workspace),
                    connect.clone(),
                    options.clone(),
                )
                .with_tap(tap.clone());
                let run = guarded(node.clone(), under.clone(), engine.run_forever(None));
                live.insert(id, (Running(tokio::spawn(run)), *stamp, under));
            }
        }
        if last_measured.elapsed() >= Duration::from_secs(1) {
            last_measured = Instant::now();
            match measure(&log, &ledgers, &entries).await {
                Ok(measured) => *health.lock().expect("not poisoned") = measured,
                Err(err) => tracing::warn!(cause = %err, "cannot measure the destinations' lag"),
            }
        }
        let open = ledgers.read(Ledgers::open_jobs);
        let open_ids: BTreeSet<Uuid> = open.iter().map(|job| job.job_id).collect();
        if let Some(node) = &node {
            node.want("replays", open_ids.iter().map(|job| crate::cluster::replay_lease(*job)).collect());
        }
        // A finished job stays in the map until the ledger shows it
        // completed, so it is never started twice; a job whose lease this
        // node lost stops (another node goes on with it).
        jobs.retain(|id, (_, under)| {
            open_ids.contains(id) && placement(&node, crate::cluster::replay_lease(*id)).as_ref() == Some(under)
        });
        for job in open {
            if jobs.contains_key(&job.job_id) {
                continue;
            }
            let Some(under) = placement(&node, crate::cluster::replay_lease(job.job_id)) else { continue };
            let Some(entry) = by_id.get(&job.destination_id) else { continue };
            let engine = Engine::new(
                fenced(&log, &under),
                profiles.clone(),
                (*entry).clone(),
                privacy(entry.workspace),
                connect.clone(),
                options.clone(),
            );
            let job_id = job.job_id;
            let run = guarded(node.clone(), under.clone(), engine.run_forever(Some(job)));
            jobs.insert(job_id, (Running(tokio::spawn(run)), under));
        }
    }
}

/// Whether a run goes on here, and under which lease: `None` when this
/// node does not hold its lease; `Some(None)` outside a cluster (every run
/// here, unfenced).
fn placement(node: &Option<Arc<crate::cluster::Node>>, lease: String) -> Option<Option<Fence>> {
    match node {
        None => Some(None),
        Some(node) => node.fence(&lease).map(Some),
    }
}

/// `run`, dropped (an in-flight delivery with it) the moment this node no
/// longer holds `under`: it stops at once, not at the supervisor's next look.
async fn guarded(
    node: Option<Arc<crate::cluster::Node>>,
    under: Option<Fence>,
    run: impl std::future::Future<Output = ()>,
) {
    let (Some(node), Some(fence)) = (node, under) else { return run.await };
    let mut held = node.watch();
    let lost = async move {
        loop {
            if held.borrow_and_update().get(&fence.lease) != Some(&fence) {
                return;
            }
            if held.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = run => {}
        () = lost => {}
    }
}

/// The log a run writes its ledger to: under its lease, when it has one.
fn fenced(log: &EventLog, under: &Option<Fence>) -> EventLog {
    match under {
        Some(fence) => log.fenced(fence.clone()),
        None => log.clone(),
    }
}

/// Each destination's state, checkpoint and lag now; exports the lag.
async fn measure(
    log: &EventLog,
    ledgers: &Live<Ledgers>,
    entries: &[(DestinationEntry, Stamp)],
) -> Result<Vec<DestinationHealth>, StoreError> {
    let mut measured = Vec::with_capacity(entries.len());
    for (entry, _) in entries {
        let created = &entry.created;
        let (checkpoint, state) = ledgers.read(|ledgers| match ledgers.get(created.destination_id) {
            Some(ledger) => (ledger.checkpoint, ledger.state(entry.paused)),
            None => (None, Ledger::default().state(entry.paused)),
        });
        let checkpoint = checkpoint.unwrap_or(created.start).max(created.start);
        let filter = EventFilter {
            workspace: Some(entry.workspace),
            event_types: vec![MessageAccepted::TYPE.into()],
            ..EventFilter::default()
        };
        let lag = log.backlog(checkpoint, &filter).await?;
        metrics::gauge!("onepd_activation_lag_events", "destination" => created.name.clone()).set(lag as f64);
        measured.push(DestinationHealth {
            workspace: entry.workspace,
            name: created.name.clone(),
            state,
            checkpoint,
            lag,
        });
    }
    Ok(measured)
}

/// When a destination's configuration (its own, and its workspace's
/// settings) last changed.
type Stamp = (u64, u64);

/// A workspace's part of the sensitive-data policy, as a run applies it:
/// its industry and settings, and the classifications of its tracking plan.
#[derive(Debug, Clone, Default)]
pub struct Privacy {
    /// Industry and settings.
    pub workspace: WorkspacePolicy,
    /// Classifications from the tracking plan.
    pub annotations: Annotations,
    /// The keys of its keyed hashes ([`EventLog::workspace_secrets`]).
    pub secrets: Option<WorkspaceSecrets>,
}

/// What becomes of a message naming an erased person's identifier: it is
/// not sent (the ledger records why), as ingest would refuse it today.
/// Whether `event` is an entry into or an exit from an audience, or a
/// change of a computed trait: a change of a person the membership runner
/// decided, delivered with the person as the read model has them.
fn is_person_change(event: &RecordedEvent) -> bool {
    matches!(event.event_type.as_str(), AudienceEntered::TYPE | AudienceExited::TYPE | ComputedTraitChanged::TYPE)
}

pub(crate) fn erased() -> Prepared {
    Prepared::Withheld { rule: "erased", reason: "it names an identifier of a person who was erased".into() }
}

impl Privacy {
    /// `workspace`'s policy as the directory has it now.
    pub fn of(directory: &Directory, workspace: WorkspaceId) -> Privacy {
        let Some(entry) = directory.workspace(workspace) else { return Privacy::default() };
        Privacy {
            workspace: WorkspacePolicy {
                industry: entry.industry,
                allow_ip_user_agent: entry.allow_ip_user_agent,
                site_origin: entry.site_origin.clone(),
            },
            // A plan is checked when it is set, so one that does not read
            // here can only be older than classifications: it has none.
            annotations: entry
                .plan
                .as_ref()
                .and_then(|(_, plan)| Annotations::from_plan(plan).ok())
                .unwrap_or_default(),
            secrets: None,
        }
    }

    /// The same policy with the workspace's keys.
    pub fn with_secrets(mut self, secrets: Option<WorkspaceSecrets>) -> Privacy {
        self.secrets = secrets;
        self
    }

    /// The target a run prepares events for.
    pub fn target<'a>(&'a self, created: &'a DestinationCreated, description: &'a Description) -> Target<'a> {
        Target {
            destination: created,
            description,
            workspace: &self.workspace,
            annotations: &self.annotations,
            secrets: self.secrets.as_ref(),
        }
    }
}

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error("the identity facts changed; folding again under them")]
    FactsChanged,
}

/// One run of one destination: the live subscription or a replay job.
struct Engine {
    log: EventLog,
    /// The profiles read model, where a run finds each event's profile.
    profiles: Arc<dyn ProjectionStore>,
    entry: DestinationEntry,
    privacy: Arc<Privacy>,
    connect: Connect,
    options: ActivationOptions,
    /// The reason last recorded in a `DestinationStalled`, until the run
    /// recovers.
    stall: tokio::sync::Mutex<Option<String>>,
    /// The shared read of the log, for the live run.
    tap: Option<Arc<Tap>>,
}

/// Events ready to send, with what preparing each did and when it was
/// recorded. The events are kept together so every attempt hands the
/// adapter the same slice, with nothing copied.
#[derive(Default)]
struct Batch {
    events: Vec<PreparedEvent>,
    notes: Vec<Notes>,
    recorded_at: Vec<Timestamp>,
}

/// Events withheld while a batch was prepared, recorded before it is sent.
type Withheld = Vec<WithheldEvent>;

/// The most withheld events one ledger entry lists.
const WITHHELD_PER_ENTRY: usize = 1_000;

impl Batch {
    fn push(&mut self, event: PreparedEvent, notes: Notes, recorded_at: Timestamp) {
        self.events.push(event);
        self.notes.push(notes);
        self.recorded_at.push(recorded_at);
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Splits off the events from `at` on.
    fn split_off(&mut self, at: usize) -> Batch {
        Batch {
            events: self.events.split_off(at),
            notes: self.notes.split_off(at),
            recorded_at: self.recorded_at.split_off(at),
        }
    }
}

/// Totals of a run or a batch.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    delivered: u64,
    dead: u64,
}

impl Engine {
    fn new(
        log: EventLog,
        profiles: Arc<dyn ProjectionStore>,
        entry: DestinationEntry,
        privacy: Arc<Privacy>,
        connect: Connect,
        options: ActivationOptions,
    ) -> Engine {
        Engine { log, profiles, entry, privacy, connect, options, stall: tokio::sync::Mutex::new(None), tap: None }
    }

    /// Makes the live run read through `tap`.
    fn with_tap(mut self, tap: Option<Arc<Tap>>) -> Engine {
        self.tap = tap;
        self
    }

    fn id(&self) -> Uuid {
        self.entry.created.destination_id
    }

    /// Runs until done (a job) or stopped (the live run), starting again
    /// after a failure.
    async fn run_forever(self, job: Option<ReplayRequested>) {
        let name = self.entry.created.name.clone();
        let run = job.as_ref().map_or(Run::Live, |job| Run::Job { job_id: job.job_id });
        let mut wait = Duration::from_millis(500);
        loop {
            match self.run(job.as_ref()).await {
                Ok(()) => return,
                Err(_) if self.log.is_closed() => return,
                // Another node has the destination now (or will): this run
                // must not send anything more, not even a retry.
                Err(RunError::Store(StoreError::LeaseLost(lease))) => {
                    tracing::warn!(destination = %name, %lease, "lease lost; this node stops delivering");
                    return;
                }
                Err(RunError::FactsChanged) => {
                    tracing::info!(destination = %name, "identity facts changed; folding profiles again");
                    continue;
                }
                Err(err) => {
                    tracing::error!(destination = %name, cause = %redact_text(&err.to_string()), "activation run stopped; starting again");
                    metrics::counter!("onepd_activation_errors_total", "destination" => name.clone()).increment(1);
                    self.stalled(run, &err).await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Records that the run stalled, once per reason (not once per retry), so
    /// `destination list` and `/healthz` can say why.
    async fn stalled(&self, run: Run, err: &RunError) {
        let reason = redact_text(&err.to_string());
        let mut last = self.stall.lock().await;
        if last.as_deref() == Some(reason.as_str()) {
            return;
        }
        let stalled = DestinationStalled { destination_id: self.id(), run, reason: reason.clone() };
        let data = serde_json::to_value(&stalled).expect("serializable");
        if self.record(DestinationStalled::TYPE, data).await.is_ok() {
            *last = Some(reason);
        }
    }

    /// Records that a run which had stalled (by this engine, or as its
    /// ledger says: `stalled_before`) is delivering again.
    async fn recovered(&self, run: Run, stalled_before: bool) -> Result<(), StoreError> {
        let mut last = self.stall.lock().await;
        if last.is_none() && !stalled_before {
            return Ok(());
        }
        let recovered = DestinationRecovered { destination_id: self.id(), run };
        self.record(DestinationRecovered::TYPE, serde_json::to_value(&recovered).expect("serializable")).await?;
        *last = None;
        Ok(())
    }

    /// Records that the run could not read an event and goes on without it.
    async fn quarantine(&self, record: EventQuarantined) -> Result<(), StoreError> {
        let data = serde_json::to_value(&record).expect("serializable");
        if self.record_as(record.record_id(), EventQuarantined::TYPE, data).await? {
            tracing::warn!(
                destination = %self.entry.created.name,
                position = record.position.0,
                reason = %record.reason,
                "event quarantined; the destination goes on without it"
            );
            metrics::counter!("onepd_quarantined_events_total", "reader" => format!("destination:{}", self.entry.created.name))
                .increment(1);
        }
        Ok(())
    }

    async fn run(&self, job: Option<&ReplayRequested>) -> Result<(), RunError> {
        let adapter = (self.connect)(&self.entry).map_err(RunError::Adapter)?;
        let description = self.describe(adapter.as_ref()).await?;
        let ledger = admin::ledger(&self.log, self.id()).await?;
        let created = &self.entry.created;
        let (start, end) = match job {
            Some(job) => (job.from.max(Position(1)), Some(job.to)),
            None => (ledger.checkpoint.unwrap_or(created.start).max(created.start), None),
        };
        let only: BTreeSet<Position> = job.map(|job| job.only.iter().copied().collect()).unwrap_or_default();
        // Every fact up to here is known before the run reads anything:
        // meeting one of them again while reading is no news. The facts
        // give the identifiers an event may name and whom an erasure
        // suppressed; each event's profile comes from the read model.
        let head = self.log.head().await?;
        let facts = read_facts(&self.log, head).await?;
        let fold = ProfilesFold::suppressing(&facts, self.log.suppression_hasher());
        let mut as_of = AsOfReader::sharing(self.profiles.clone(), self.log.clone(), self.options.snapshots.clone());
        let workspace = self.entry.workspace;
        // A replay of a range re-sends its messages; a job naming its events
        // (the entries of an audience's members, sent when it is connected)
        // reads every kind the live run reads, or it would find none.
        let types = match job {
            Some(job) if job.only.is_empty() => vec![MessageAccepted::TYPE.into()],
            _ => live_types(),
        };
        let filter = EventFilter { workspace: Some(workspace), event_types: types, ..EventFilter::default() };
        let target = self.privacy.target(created, &description);
        let run = job.map_or(Run::Live, |job| Run::Job { job_id: job.job_id });
        let batch_size = description.max_batch_size as usize;
        let reader = format!("destination:{}", created.name);
        let mut source = match (end, &self.tap) {
            // A job reads its range page by page: a subscription would wait
            // for a matching event after the range's last one.
            (Some(end), _) => Source::Range { next: start, end, filter, reader, pages: None },
            (None, Some(tap)) => Source::Tapped(tap.join(start, filter, reader)),
            (None, None) => Source::Live(self.log.subscribe(start, filter).await?),
        };
        self.recovered(run, job.is_none() && ledger.stalled.is_some()).await?;
        // Batches are prepared while the one before is being delivered: the
        // reader hands them over in order (at most two waiting), and the
        // deliverer settles them one at a time, so order and checkpoints hold.
        let (batches, mut to_deliver) = tokio::sync::mpsc::channel::<(Batch, Withheld, Position)>(2);
        let deliverer = async {
            let mut tally = Tally::default();
            let mut limiter = RateLimiter::new(description.rate_limit_per_second);
            while let Some((batch, withheld, through)) = to_deliver.recv().await {
                if !withheld.is_empty() {
                    // With nothing to deliver, the withheld entry settles the range.
                    let checkpoint = (batch.is_empty() && run == Run::Live).then_some(through);
                    self.record_withheld(run, withheld, checkpoint).await?;
                }
                if !batch.is_empty() {
                    self.settle(adapter.as_ref(), run, batch, Some(through), &mut limiter, &mut tally).await?;
                }
            }
            Ok::<Tally, RunError>(tally)
        };
        let reader = async move {
            let mut pending = Batch::default();
            let mut withheld: Withheld = Vec::new();
            // A send fails only when the deliverer stopped; its error is the one reported.
            while let Some((events, next)) = source.next(&self.log, self.options.page).await? {
                let profiles = as_of.profiles(workspace, &events, |event| fold.profiles().candidates(event)).await?;
                // An entry or exit reads its person from the read model: once
                // it reflects the page's last one, it reflects them all.
                if let Some(last) = events.iter().rev().find(|event| is_person_change(event)) {
                    as_of.wait_for(workspace, last.position).await?;
                }
                for (event, profile) in events.iter().zip(profiles) {
                    if FACT_TYPES.contains(&event.event_type.as_str()) {
                        // A fact folded in at the start, or one that cannot
                        // be read (it changes nothing), is passed over; a new
                        // one means folding again under it.
                        if event.position <= head || event.data.unreadable().is_some() {
                            continue;
                        }
                        if !pending.is_empty() || !withheld.is_empty() {
                            let batch = (std::mem::take(&mut pending), std::mem::take(&mut withheld), event.position);
                            let _ = batches.send(batch).await;
                        }
                        return Err(RunError::FactsChanged);
                    }
                    if !only.is_empty() && !only.contains(&event.position) {
                        continue;
                    }
                    if let Some(record) = EventQuarantined::of(event, DESTINATION_READER, Some(self.id())) {
                        self.quarantine(record).await?;
                        continue;
                    }
                    let prepared = if is_person_change(event) {
                        self.person_change(event, target, job.is_none()).await?
                    } else {
                        let view = profile.as_ref().map(ProfileAsOf::view);
                        if fold.names_erased(event) { erased() } else { prepare(event, view.as_ref(), target) }
                    };
                    match prepared {
                        Prepared::Send(prepared, notes) => pending.push(prepared, notes, event.recorded_at),
                        Prepared::Withheld { rule, reason } => withheld.push(WithheldEvent {
                            event_id: event.event_id,
                            position: event.position,
                            rule: rule.to_owned(),
                            reason,
                        }),
                        Prepared::Skipped => {}
                    }
                    if (pending.len() >= batch_size || withheld.len() >= WITHHELD_PER_ENTRY)
                        && batches
                            .send((std::mem::take(&mut pending), std::mem::take(&mut withheld), event.position.next()))
                            .await
                            .is_err()
                    {
                        return Ok(());
                    }
                }
                if (!pending.is_empty() || !withheld.is_empty())
                    && batches.send((std::mem::take(&mut pending), std::mem::take(&mut withheld), next)).await.is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        };
        let (read, delivered) = tokio::join!(reader, deliverer);
        let tally = delivered?;
        read?;
        self.complete(job, tally).await
    }

    /// An entry or exit of an audience: prepared when the audience is
    /// connected to this destination (with the person's identifiers as of
    /// the entry, or as of just before the exit: a profile that merged away
    /// or was erased is removed under the identifiers it had), else skipped.
    /// A computed trait's change: prepared when the destination chose the
    /// trait, with the person as of the change.
    async fn person_change(
        &self,
        event: &RecordedEvent,
        target: Target<'_>,
        live: bool,
    ) -> Result<Prepared, StoreError> {
        let Some(data) = event.data.value() else { return Ok(Prepared::Skipped) };
        let computed = event.event_type == ComputedTraitChanged::TYPE;
        let mut external_id = None;
        if computed {
            let changed = data.get("values").and_then(serde_json::Value::as_object);
            if !changed.is_some_and(|values| target.destination.traits.iter().any(|t| values.contains_key(t))) {
                return Ok(Prepared::Skipped);
            }
        } else {
            let Some(audience) = data.get("audience").and_then(serde_json::Value::as_str) else {
                return Ok(Prepared::Skipped);
            };
            let Some(connected) = self.entry.audiences.get(audience) else { return Ok(Prepared::Skipped) };
            // A live run sends what happened after the connection; the
            // members before it are sent by the connection's job.
            let since = self.entry.audiences_connected_at.get(audience).copied().unwrap_or_default();
            if live && event.position.0 < since {
                return Ok(Prepared::Skipped);
            }
            external_id = Some(connected);
        }
        let (Some(profile), Some(cause)) = (
            data.get("profile")
                .and_then(|id| serde_json::from_value::<onepd_domain::identity::ProfileId>(id.clone()).ok()),
            data.get("cause").and_then(serde_json::Value::as_u64),
        ) else {
            return Ok(Prepared::Skipped);
        };
        let at = if event.event_type == AudienceExited::TYPE { cause.saturating_sub(1) } else { cause };
        let reader = ProfileReader::new(self.profiles.clone(), self.log.clone());
        let found =
            reader.get(event.workspace_id, &Lookup::Profile(profile), Some(AsOf::Position(Position(at)))).await?;
        let Some(found) = found else {
            return Ok(Prepared::Withheld {
                rule: "erased",
                reason: "the person's profile no longer exists (erased); the destination was asked to delete them"
                    .into(),
            });
        };
        let view = ProfileView {
            id: found.id,
            identifiers: found.identifiers.clone(),
            traits: Some(&found.traits),
            consent: found.consent.as_ref(),
            held_back: &found.held_back,
        };
        Ok(match external_id {
            Some(external_id) => prepare_audience_change(event, external_id.as_deref(), Some(&view), target),
            None if computed => prepare_computed_change(event, Some(&view), target),
            None => Prepared::Skipped,
        })
    }

    /// Asks the adapter what it accepts, until it answers with a valid
    /// description.
    async fn describe(&self, adapter: &dyn Destination) -> Result<Description, RunError> {
        let timeout = Duration::from_millis(self.entry.created.retry.timeout_ms);
        let answer = tokio::time::timeout(timeout, adapter.describe())
            .await
            .map_err(|_| RunError::Adapter(format!("describe timed out after {} ms", timeout.as_millis())))?
            .map_err(|err| RunError::Adapter(err.to_string()))?;
        answer.validate().map_err(RunError::Adapter)?;
        Ok(answer)
    }

    async fn complete(&self, job: Option<&ReplayRequested>, tally: Tally) -> Result<(), RunError> {
        let Some(job) = job else { return Ok(()) };
        let completed = ReplayCompleted {
            job_id: job.job_id,
            destination_id: self.id(),
            delivered: tally.delivered,
            dead: tally.dead,
        };
        self.record(ReplayCompleted::TYPE, serde_json::to_value(&completed).expect("serializable")).await?;
        tracing::info!(destination = %self.entry.created.name, job = %job.job_id, delivered = tally.delivered, dead = tally.dead, "replay job done");
        Ok(())
    }

    /// Delivers `batch` until every event is delivered or dead-lettered,
    /// splitting it when the destination refuses it as a whole. The last
    /// ledger entry carries `checkpoint` (for the live run).
    async fn settle(
        &self,
        adapter: &dyn Destination,
        run: Run,
        batch: Batch,
        checkpoint: Option<Position>,
        limiter: &mut RateLimiter,
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        let mut stack = vec![batch];
        while let Some(piece) = stack.pop() {
            let last = stack.is_empty();
            let checkpoint = if last && run == Run::Live { checkpoint } else { None };
            if let Some((first, second)) = self.attempt(adapter, run, piece, checkpoint, limiter, tally).await? {
                stack.push(second);
                stack.push(first);
            }
        }
        Ok(())
    }

    /// Attempts one batch until it is settled; returns its halves when the
    /// destination refused it as a whole and it has more than one event.
    async fn attempt(
        &self,
        adapter: &dyn Destination,
        run: Run,
        mut batch: Batch,
        checkpoint: Option<Position>,
        limiter: &mut RateLimiter,
        tally: &mut Tally,
    ) -> Result<Option<(Batch, Batch)>, RunError> {
        let policy = self.entry.created.retry;
        let window = Duration::from_secs(policy.window_secs);
        let mut first_failure: Option<Instant> = None;
        let mut number = 1;
        loop {
            limiter.wait(batch.len()).await;
            let started = Instant::now();
            let answer =
                tokio::time::timeout(Duration::from_millis(policy.timeout_ms), adapter.deliver(&batch.events)).await;
            let elapsed = started.elapsed();
            let (mut outcomes, response, rejected_whole) = classify(&batch.events, answer, policy.timeout_ms);
            // A destination may echo what it was sent (`invalid user data:
            // email …`): the ledger, logs and dead letters keep why, not whom.
            let response = redact_text(&response);
            for outcome in outcomes.values_mut() {
                match outcome {
                    Outcome::Retryable { reason, .. } | Outcome::Permanent { reason } => *reason = redact_text(reason),
                    Outcome::Delivered => {}
                }
            }
            if rejected_whole && batch.len() > 1 {
                let reason = format!("{response}; split to find the bad events");
                for outcome in outcomes.values_mut() {
                    *outcome = Outcome::retryable(reason.clone(), None);
                }
                self.record_attempt(run, number, &batch, &outcomes, &reason, None, elapsed).await?;
                let second = batch.split_off(batch.len() / 2);
                return Ok(Some((batch, second)));
            }
            let retrying = outcomes.values().any(|outcome| matches!(outcome, Outcome::Retryable { .. }));
            if retrying && first_failure.is_none() {
                first_failure = Some(Instant::now());
            }
            let exhausted = first_failure.is_some_and(|at| at.elapsed() >= window);
            if exhausted {
                for outcome in outcomes.values_mut() {
                    if let Outcome::Retryable { reason, .. } = outcome {
                        *outcome = Outcome::permanent(format!(
                            "retry window of {} s exhausted; last: {reason}",
                            policy.window_secs
                        ));
                    }
                }
            }
            let settled = !outcomes.values().any(|outcome| matches!(outcome, Outcome::Retryable { .. }));
            let entry_checkpoint = if settled { checkpoint } else { None };
            self.record_attempt(run, number, &batch, &outcomes, &response, entry_checkpoint, elapsed).await?;
            let now = crate::ingest::now();
            let mut delivered_at = Vec::new();
            let mut retry_after = Duration::ZERO;
            let mut next = Batch::default();
            let Batch { events, notes, recorded_at } = batch;
            for ((event, notes), recorded_at) in events.into_iter().zip(notes).zip(recorded_at) {
                match outcomes.remove(&event.event_id) {
                    Some(Outcome::Delivered) => {
                        tally.delivered += 1;
                        delivered_at.push(recorded_at);
                    }
                    Some(Outcome::Permanent { reason }) => {
                        tally.dead += 1;
                        // Once per dead letter, with why, never with values.
                        tracing::warn!(
                            destination = %self.entry.created.name,
                            position = event.position.0,
                            reason = %reason,
                            "event dead-lettered"
                        );
                        metrics::counter!(
                            "onepd_activation_dead_letters_total",
                            "destination" => self.entry.created.name.clone()
                        )
                        .increment(1);
                    }
                    Some(Outcome::Retryable { retry_after_ms, .. }) => {
                        retry_after = retry_after.max(Duration::from_millis(retry_after_ms.unwrap_or(0)));
                        next.push(event, notes, recorded_at);
                    }
                    None => next.push(event, notes, recorded_at),
                }
            }
            let name = self.entry.created.name.clone();
            metrics::counter!("onepd_activation_delivered_total", "destination" => name)
                .increment(delivered_at.len() as u64);
            if let Some(on_delivered) = &self.options.on_delivered
                && !delivered_at.is_empty()
            {
                on_delivered(&delivered_at, now);
            }
            if next.is_empty() {
                return Ok(None);
            }
            let wait = backoff(number, policy.initial_backoff_ms, policy.max_backoff_ms).max(retry_after);
            tracing::warn!(
                destination = %self.entry.created.name,
                events = next.len(),
                attempt = number,
                wait_ms = wait.as_millis() as u64,
                cause = %response,
                "delivery failed; retrying"
            );
            tokio::time::sleep(wait).await;
            batch = next;
            number += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_attempt(
        &self,
        run: Run,
        number: u32,
        batch: &Batch,
        outcomes: &HashMap<EventId, Outcome>,
        response: &str,
        checkpoint: Option<Position>,
        elapsed: Duration,
    ) -> Result<(), StoreError> {
        let mut hashed = BTreeSet::new();
        let mut scrubbed = BTreeSet::new();
        let mut failed = Vec::new();
        for (event, notes) in batch.events.iter().zip(&batch.notes) {
            hashed.extend(notes.hashed.iter().cloned());
            scrubbed.extend(notes.scrubbed.keys().cloned());
            let (outcome, reason) = match outcomes.get(&event.event_id) {
                Some(Outcome::Delivered) => continue,
                Some(Outcome::Permanent { reason }) => ("permanent", reason.clone()),
                Some(Outcome::Retryable { reason, .. }) => ("retryable", reason.clone()),
                None => ("retryable", "no result for the event".to_owned()),
            };
            failed.push(FailedDelivery {
                event_id: event.event_id,
                position: event.position,
                outcome: outcome.into(),
                reason,
            });
        }
        self.checkpoint_moved(run, checkpoint);
        let attempt = DeliveryAttempted {
            destination_id: self.id(),
            run,
            attempt: number,
            events: batch.events.iter().map(|event| (event.event_id, event.position)).collect(),
            failed,
            response: response.to_owned(),
            hashed: hashed.into_iter().collect(),
            scrubbed: scrubbed.into_iter().collect(),
            names_keyed: true,
            checkpoint,
            duration_ms: elapsed.as_millis() as u64,
        };
        self.record(DeliveryAttempted::TYPE, serde_json::to_value(&attempt).expect("serializable")).await
    }

    /// Records events the destination's filters admitted but that were not
    /// sent, with why.
    async fn record_withheld(
        &self,
        run: Run,
        events: Withheld,
        checkpoint: Option<Position>,
    ) -> Result<(), StoreError> {
        let mut by_rule: HashMap<&str, u64> = HashMap::new();
        for event in &events {
            *by_rule.entry(event.rule.as_str()).or_default() += 1;
        }
        for (rule, count) in by_rule {
            metrics::counter!(
                "onepd_activation_withheld_total",
                "destination" => self.entry.created.name.clone(),
                "rule" => rule.to_owned()
            )
            .increment(count);
        }
        self.checkpoint_moved(run, checkpoint);
        let withheld = EventsWithheld { destination_id: self.id(), run, events, checkpoint };
        self.record(EventsWithheld::TYPE, serde_json::to_value(&withheld).expect("serializable")).await
    }

    /// Exports the live run's checkpoint when an entry carries one.
    fn checkpoint_moved(&self, run: Run, checkpoint: Option<Position>) {
        if let (Run::Live, Some(checkpoint)) = (run, checkpoint) {
            metrics::gauge!("onepd_activation_checkpoint", "destination" => self.entry.created.name.clone())
                .set(checkpoint.0 as f64);
        }
    }

    /// Appends one event to the destination's ledger stream.
    async fn record(&self, event_type: &str, data: serde_json::Value) -> Result<(), StoreError> {
        self.record_as(EventId(Uuid::new_v4()), event_type, data).await.map(|_| ())
    }

    /// Appends one event with id `event_id` to the destination's ledger
    /// stream; returns whether it is new (not a duplicate).
    async fn record_as(
        &self,
        event_id: EventId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let event = NewEvent {
            event_id,
            workspace_id: self.entry.workspace,
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: serde_json::json!({ "actor": "activation" }),
            subject: None,
        };
        let request = AppendRequest {
            stream_id: destination_stream(self.id()),
            expected: ExpectedVersion::Any,
            events: vec![event],
        };
        match self.log.append(request).await {
            Ok(outcome) => Ok(!outcome.duplicate),
            Err(onepd_domain::AppendError::Store(err)) => Err(err),
            Err(err) => Err(StoreError::Database(err.to_string())),
        }
    }
}

/// Each event's outcome from the adapter's answer, a summary of the answer,
/// and whether the batch was refused as a whole.
fn classify(
    events: &[PreparedEvent],
    answer: Result<Result<Vec<EventResult>, DeliverError>, tokio::time::error::Elapsed>,
    timeout_ms: u64,
) -> (HashMap<EventId, Outcome>, String, bool) {
    let all = |outcome: Outcome| events.iter().map(|event| (event.event_id, outcome.clone())).collect();
    match answer {
        Err(_) => {
            let reason = format!("timed out after {timeout_ms} ms");
            (all(Outcome::retryable(reason.clone(), None)), reason, false)
        }
        Ok(Err(DeliverError::Retryable { reason, retry_after })) => {
            (all(Outcome::retryable(reason.clone(), retry_after)), reason, false)
        }
        Ok(Err(DeliverError::Adapter(reason))) => {
            let reason = format!("adapter: {reason}");
            (all(Outcome::retryable(reason.clone(), None)), reason, false)
        }
        Ok(Err(DeliverError::BatchRejected { reason })) => {
            let reason = format!("batch rejected: {reason}");
            (all(Outcome::permanent(reason.clone())), reason, true)
        }
        Ok(Ok(results)) => {
            let mut outcomes: HashMap<EventId, Outcome> = all(Outcome::retryable("no result for the event", None));
            for result in results {
                if let Some(slot) = outcomes.get_mut(&result.event_id) {
                    *slot = result.outcome;
                }
            }
            let count = |name: &str| outcomes.values().filter(|o| o.as_str() == name).count();
            let summary = format!(
                "delivered {}, retryable {}, permanent {}",
                count("delivered"),
                count("retryable"),
                count("permanent")
            );
            let reasons: BTreeSet<&str> = outcomes
                .values()
                .filter_map(|o| match o {
                    Outcome::Retryable { reason, .. } | Outcome::Permanent { reason } => Some(reason.as_str()),
                    Outcome::Delivered => None,
                })
                .take(3)
                .collect();
            let summary = if reasons.is_empty() {
                summary
            } else {
                format!("{summary}: {}", reasons.into_iter().collect::<Vec<_>>().join("; "))
            };
            (outcomes, summary, false)
        }
    }
}

/// The wait before attempt `attempt + 1`: `initial · 2^(attempt-1)`, capped,
/// with full jitter over its upper half.
fn backoff(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let exp = initial_ms.saturating_mul(1u64 << (attempt - 1).min(30)).min(max_ms);
    let jittered = exp / 2 + rand::thread_rng().gen_range(0..=exp / 2);
    Duration::from_millis(jittered.max(1))
}

/// Where a run reads: the log from a position on, live (through the shared
/// reader, or on its own), or a closed range.
enum Source {
    Tapped(Tapped),
    Live(Box<dyn onepd_domain::Subscription>),
    /// A range, read ahead of the deliveries once the first page is asked
    /// for ([`EventStore::read_ahead`]).
    Range {
        next: Position,
        end: Position,
        filter: EventFilter,
        reader: String,
        pages: Option<Box<dyn Pages>>,
    },
}

impl Source {
    /// The next events and the position after them; `None` once a range is
    /// read to its end.
    async fn next(
        &mut self,
        log: &EventLog,
        page: usize,
    ) -> Result<Option<(Vec<RecordedEvent>, Position)>, StoreError> {
        match self {
            Source::Tapped(tapped) => Ok(Some(tapped.next(log, page).await?)),
            Source::Live(subscription) => {
                let events = subscription.next_batch().await?;
                Ok(Some((events, subscription.next_position())))
            }
            Source::Range { next, end, filter, reader, pages } => {
                if *next > *end {
                    return Ok(None);
                }
                let pages =
                    pages.get_or_insert_with(|| Arc::new(log.clone()).read_ahead(*next, *end, filter.clone(), page));
                let Some(read) = pages.next_page().await? else { return Ok(None) };
                metrics::counter!("onepd_activation_log_reads_total", "reader" => reader.clone()).increment(1);
                *next = read.next;
                Ok(Some((read.events, read.next)))
            }
        }
    }
}

/// Keeps deliveries under a destination's events-per-second limit.
struct RateLimiter {
    per_second: Option<f64>,
    next_free: Instant,
}

impl RateLimiter {
    fn new(per_second: Option<f64>) -> RateLimiter {
        RateLimiter { per_second, next_free: Instant::now() }
    }

    async fn wait(&mut self, events: usize) {
        let Some(rate) = self.per_second else { return };
        let now = Instant::now();
        if self.next_free > now {
            tokio::time::sleep_until(self.next_free.into()).await;
        }
        self.next_free = self.next_free.max(now) + Duration::from_secs_f64(events as f64 / rate);
    }
}

/// Reads every ledger up to the head (for the CLI's listings).
pub async fn ledgers(log: &EventLog) -> Result<Ledgers, StoreError> {
    let mut ledgers = Ledgers::default();
    crate::live::fold_to_head(log, &mut ledgers).await?;
    Ok(ledgers)
}

/// Reads one destination's ledger entries (attempts and jobs) in order.
pub async fn ledger_entries(log: &EventLog, destination: Uuid) -> Result<Vec<RecordedEvent>, StoreError> {
    let stream = destination_stream(destination);
    let mut all = Vec::new();
    let mut from = 1;
    loop {
        let events = log.read_stream(&stream, from, 1_000).await?;
        let full = events.len() == 1_000;
        if let Some(last) = events.last() {
            from = last.stream_version + 1;
        }
        all.extend(events);
        if !full {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_stops_at_the_cap() {
        for attempt in 1..6 {
            let wait = backoff(attempt, 100, 1_000).as_millis() as u64;
            let exp = (100u64 << (attempt - 1)).min(1_000);
            assert!(wait >= exp / 2 && wait <= exp, "attempt {attempt}: {wait} ms");
        }
        assert!(backoff(40, 100, 1_000) <= Duration::from_millis(1_000));
    }
}
