//! Audience membership: who is in each audience, kept up to date as the
//! log grows and as time passes, with every entry and exit an event in the
//! log (`AudienceEntered` / `AudienceExited`, naming the position that
//! caused it).
//!
//! The membership runner reads the log in order (after the profiles read
//! model has each event) and decides, for every event it reads:
//!
//! - a message: the person it was attributed to is evaluated as of that
//!   event, at the workspace's audience clock; a profile the message merged
//!   into them leaves every audience it was in;
//! - an audience or computed trait defined, edited or removed, or an
//!   operator fact (rules, block, split): every profile of the workspace is
//!   evaluated again as of that event (a backfill), and only the
//!   differences become entries and exits;
//! - a clock tick (`AudienceClockTicked`, recorded by `onepd serve`'s
//!   scheduler or `onepd audience tick`): the people whose window edge the
//!   new time passed are evaluated again, found through an index of edges,
//!   not by reading every profile;
//! - an erasure: the erased profiles leave every audience.
//!
//! The clock of a workspace is the latest of the times its events were
//! recorded at and its ticks: it never goes back, and every evaluation is
//! as of a position in the log at a time recorded in the log, so reading
//! the log again decides the same entries and exits.
//!
//! The state (members by audience, each person's audiences and next window
//! edge, the edge index and the clock) lives in the read store, in the
//! generation of the `audiences` projection, written with the checkpoint in
//! one commit after the page's entries and exits are appended. Those have
//! ids derived from what caused them, so a page decided again after a crash
//! appends nothing twice.
//!
//! **Does not:** send anything to destinations; delivery reads the entries
//! and exits from the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onepd_domain::audience::{ComputedTrait, Condition, WithAudiences, evaluate, holds};
use onepd_domain::events::audience::{
    AudienceClockTicked, AudienceDefined, AudienceEntered, AudienceExited, AudienceRemoved, ComputedTraitChanged,
    ComputedTraitDefined, ComputedTraitRemoved, clock_event_id, clock_stream, computed_change_event_id,
    membership_event_id, membership_stream,
};
use onepd_domain::events::erasure::SubjectErased;
use onepd_domain::events::identity::{FACT_TYPES, IdentityFacts};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::identity::ProfileId;
use onepd_domain::{
    AppendRequest, DocWrite, EventFilter, EventStore, ExpectedVersion, Generation, NewEvent, Position, ProjectionStore,
    RecordedEvent, StoreError, Timestamp, WorkspaceId,
};
use onepd_projections::audience::PersonFacts;
use onepd_projections::profile::{Lookup, ProfileAsOf};
use onepd_projections::runner::{ProfilesFold, read_facts};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::EventLog;
use crate::profiles::as_of::AsOfReader;
use crate::profiles::{AsOf, ProfileReader};

/// The projection's name in the read store.
pub const AUDIENCES: &str = "audiences";
/// The version of the code that builds it.
const VERSION: u32 = 1;
/// `{audience}\u{1f}{profile}` → [`Member`].
const MEMBER: &str = "audience_member";
/// `{profile}` → [`PersonState`].
const PERSON: &str = "audience_person";
/// `{edge, 20 digits}\u{1f}{profile}` → nothing: the people a tick at or
/// after the edge evaluates again.
const EDGE: &str = "audience_edge";
/// `now` → the workspace's clock ([`Timestamp`]).
const CLOCK: &str = "audience_clock";
/// Between the parts of a key.
const SEPARATOR: char = '\u{1f}';
/// Events read at a time.
const PAGE: usize = 500;

/// The event types the runner reads.
fn read_types() -> Vec<String> {
    let mut types: Vec<String> = [
        MessageAccepted::TYPE,
        AudienceDefined::TYPE,
        AudienceRemoved::TYPE,
        ComputedTraitDefined::TYPE,
        ComputedTraitRemoved::TYPE,
        AudienceClockTicked::TYPE,
        SubjectErased::TYPE,
    ]
    .map(String::from)
    .to_vec();
    types.extend(FACT_TYPES.map(String::from));
    types
}

/// The definition event types.
const DEFINITION_TYPES: [&str; 4] =
    [AudienceDefined::TYPE, AudienceRemoved::TYPE, ComputedTraitDefined::TYPE, ComputedTraitRemoved::TYPE];

/// One member of an audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The profile.
    pub profile: ProfileId,
    /// The event that made them enter.
    pub since: Position,
    /// The time they entered at (the clock then).
    pub at: Timestamp,
}

/// What the runner keeps of one person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PersonState {
    /// The audiences they are in.
    audiences: BTreeSet<String>,
    /// Their next window edge (of an audience or a computed trait), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edge: Option<Timestamp>,
    /// Their computed traits' values (those with one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    computed: BTreeMap<String, serde_json::Value>,
    /// What the definitions read of them (traits, groups, the events they
    /// name), as of their last event: kept up to date event by event, so
    /// that evaluating them reads no history. Absent in a document written
    /// before it was kept: their history is read once instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    facts: Option<PersonFacts>,
}

/// A workspace's audiences and computed traits, as the log defines them at
/// the runner's position.
#[derive(Debug, Clone, Default)]
struct Definitions {
    audiences: BTreeMap<String, Condition>,
    computed: BTreeMap<String, ComputedTrait>,
    /// The event names the definitions read: the events a person's
    /// [`PersonFacts`] keep.
    names: BTreeSet<String>,
}

impl Definitions {
    fn apply(&mut self, event: &RecordedEvent) {
        let Some(data) = event.data.value() else { return };
        match event.event_type.as_str() {
            AudienceDefined::TYPE => {
                if let Ok(defined) = serde_json::from_value::<AudienceDefined>(data.clone()) {
                    self.audiences.insert(defined.name, defined.condition);
                }
            }
            AudienceRemoved::TYPE => {
                if let Ok(removed) = serde_json::from_value::<AudienceRemoved>(data.clone()) {
                    self.audiences.remove(&removed.name);
                }
            }
            ComputedTraitDefined::TYPE => {
                if let Ok(defined) = serde_json::from_value::<ComputedTraitDefined>(data.clone()) {
                    self.computed.insert(defined.name, defined.definition);
                }
            }
            ComputedTraitRemoved::TYPE => {
                if let Ok(removed) = serde_json::from_value::<ComputedTraitRemoved>(data.clone()) {
                    self.computed.remove(&removed.name);
                }
            }
            _ => {}
        }
        let audiences = self.audiences.values().flat_map(Condition::events).map(str::to_owned);
        self.names = audiences.chain(self.computed.values().map(|c| c.event.clone())).collect();
    }
}

/// Each audience's verdict for one person: whether they meet it, its next
/// window edge, and why.
type Verdicts = BTreeMap<String, (bool, Option<Timestamp>)>;

/// One person evaluated: each audience's verdict, and each computed trait's
/// value and next edge.
#[derive(Debug, Default)]
struct Evaluation {
    audiences: Verdicts,
    computed: BTreeMap<String, (Option<serde_json::Value>, Option<Timestamp>)>,
}

/// The key of an edge in [`EDGE`]: ordered by time as text.
fn edge_key(edge: Timestamp, profile: ProfileId) -> String {
    format!("{}{SEPARATOR}{}", edge_bound(edge), profile.0)
}

/// The bound of the edge keys at or before `now`, as [`edge_key`] writes them.
fn edge_bound(now: Timestamp) -> String {
    format!("{:020}", now.0.max(0))
}

/// The documents of one collection of `generation` in key order, from the
/// first key after a given one, a page at a time.
struct Pages<'a> {
    store: &'a dyn ProjectionStore,
    generation: u64,
    workspace: WorkspaceId,
    collection: &'a str,
    after: Option<String>,
}

impl Pages<'_> {
    /// The next page, or `None` once the collection ends.
    async fn next(&mut self) -> Result<Option<Vec<(String, Vec<u8>)>>, StoreError> {
        let page =
            self.store.scan(self.generation, self.workspace, self.collection, self.after.as_deref(), 1_000).await?;
        let Some((last, _)) = page.last() else { return Ok(None) };
        self.after = Some(last.clone());
        Ok(Some(page))
    }
}

/// Visits the documents of one collection of `generation` in key order,
/// from the first key after `after`, a page at a time, until `visit`
/// answers `false` or the collection ends.
async fn scan_each(
    store: &dyn ProjectionStore,
    generation: u64,
    workspace: WorkspaceId,
    collection: &str,
    after: Option<String>,
    mut visit: impl FnMut(&str, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut pages = Pages { store, generation, workspace, collection, after };
    while let Some(page) = pages.next().await? {
        for (key, doc) in &page {
            if !visit(key, doc)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// An append refused, as the runner reports it.
fn append_error(err: onepd_domain::AppendError) -> StoreError {
    match err {
        onepd_domain::AppendError::Store(err) => err,
        other => StoreError::Database(other.to_string()),
    }
}

/// The key of a member in [`MEMBER`].
fn member_key(audience: &str, profile: ProfileId) -> String {
    format!("{audience}{SEPARATOR}{}", profile.0)
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("audiences read model: {what}: {err}"))
}

/// One page's decisions: the documents to write and the entries and exits
/// to append, read back by the page's later events before they are
/// committed.
#[derive(Default)]
struct Pending {
    writes: BTreeMap<(WorkspaceId, &'static str, String), Option<Vec<u8>>>,
    appends: BTreeMap<WorkspaceId, Vec<NewEvent>>,
    /// Each person's state as the page has decided it, written (encoded)
    /// with the page.
    people: HashMap<(WorkspaceId, ProfileId), PersonState>,
    /// Documents read ahead for the page, in one call for many keys.
    fetched: HashMap<(WorkspaceId, &'static str, String), Option<Vec<u8>>>,
}

impl Pending {
    /// The page's writes, with each person's state encoded.
    fn into_writes(self) -> Vec<DocWrite> {
        let people = self.people.into_iter().map(|((workspace, profile), state)| {
            let doc = (state != PersonState::default()).then(|| serde_json::to_vec(&state).expect("serializable"));
            ((workspace, PERSON, profile.0.to_string()), doc)
        });
        let mut writes = self.writes;
        writes.extend(people);
        (writes.into_iter())
            .map(|((workspace, collection, key), doc)| match doc {
                Some(doc) => DocWrite::Put { workspace, collection, key, doc },
                None => DocWrite::Delete { workspace, collection, key },
            })
            .collect()
    }
}

/// The running membership runner and its clock's scheduler.
#[derive(Debug)]
pub struct MembershipRunner {
    tasks: Vec<JoinHandle<()>>,
}

impl MembershipRunner {
    /// Starts the runner over `log` and `store` (the profiles' read store),
    /// and a scheduler that, every `tick`, records a clock tick for each
    /// workspace with a window edge due.
    pub fn spawn(log: EventLog, store: Arc<dyn ProjectionStore>, tick: Duration) -> MembershipRunner {
        let workspaces: Arc<Mutex<BTreeSet<WorkspaceId>>> = Arc::default();
        let run = {
            let (log, store, workspaces) = (log.clone(), store.clone(), workspaces.clone());
            tokio::spawn(async move {
                loop {
                    let mut runner = Runner::new(log.clone(), store.clone(), workspaces.clone());
                    match runner.run().await {
                        Ok(()) => return,
                        Err(_) if log.is_closed() => return,
                        Err(err) => {
                            tracing::error!(projection = AUDIENCES, cause = %err, "audience membership stopped; restarting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        let scheduler = tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                if log.is_closed() {
                    return;
                }
                let due: Vec<WorkspaceId> = workspaces.lock().expect("not poisoned").iter().copied().collect();
                let now = crate::ingest::now();
                for workspace in due {
                    match Membership::new(log.clone(), store.clone()).edge_due(workspace, now).await {
                        Ok(true) => {
                            if let Err(err) = tick_clock(&log, workspace, now).await {
                                tracing::warn!(%workspace, cause = %err, "audience clock tick not recorded");
                            }
                        }
                        Ok(false) => {}
                        Err(err) => tracing::warn!(%workspace, cause = %err, "audience edges not read"),
                    }
                }
            }
        });
        MembershipRunner { tasks: vec![run, scheduler] }
    }

    /// Stops both tasks.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl crate::cluster::Stop for MembershipRunner {
    fn stop(&self) {
        MembershipRunner::stop(self);
    }
}

impl Drop for MembershipRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Brings the live membership up to the log's head, `page` events at a
/// time, as the runner inside `onepd serve` does, and stops there: the
/// checkpoint reached.
pub async fn catch_up(log: &EventLog, store: Arc<dyn ProjectionStore>, page: usize) -> Result<Position, StoreError> {
    let mut runner = Runner::new(log.clone(), store, Arc::default());
    runner.page_size = page.max(1);
    let generation = runner.live_generation().await?;
    runner.open(generation).await?;
    runner.read_to_head().await
}

/// Derives the membership again from the whole log into a new generation,
/// `page` events at a time, and makes it live: the generation. Every entry
/// and exit it decides has the id of the one decided before, so the log
/// gains only what differs (none, when nothing changed how audiences are
/// evaluated).
pub async fn rebuild(log: &EventLog, store: Arc<dyn ProjectionStore>, page: usize) -> Result<Generation, StoreError> {
    let mut runner = Runner::new(log.clone(), store.clone(), Arc::default());
    runner.page_size = page.max(1);
    let generation = store.create_generation(AUDIENCES, VERSION).await?;
    runner.open(generation.clone()).await?;
    let checkpoint = runner.read_to_head().await?;
    store.promote(generation.id).await?;
    Ok(Generation { checkpoint, live: true, ..generation })
}

/// Records that `workspace`'s audience clock reached `at`: the position of
/// the tick (an earlier tick at the same time is not recorded twice).
pub async fn tick_clock(log: &EventLog, workspace: WorkspaceId, at: Timestamp) -> Result<Position, StoreError> {
    let event = NewEvent {
        event_id: clock_event_id(workspace, at),
        workspace_id: workspace,
        event_type: AudienceClockTicked::TYPE.to_owned(),
        schema_version: 1,
        data: serde_json::to_value(AudienceClockTicked { at }).expect("serializable"),
        metadata: json!({"actor": "audience clock"}),
        subject: None,
    };
    let request =
        AppendRequest { stream_id: clock_stream(workspace), expected: ExpectedVersion::Any, events: vec![event] };
    let outcome = log.append(request).await.map_err(append_error)?;
    Ok(*outcome.positions.last().expect("one event"))
}

/// The runner's state between pages.
struct Runner {
    log: EventLog,
    store: Arc<dyn ProjectionStore>,
    reader: ProfileReader,
    as_of: AsOfReader,
    workspaces: Arc<Mutex<BTreeSet<WorkspaceId>>>,
    definitions: HashMap<WorkspaceId, Definitions>,
    facts: HashMap<WorkspaceId, IdentityFacts>,
    fold: ProfilesFold,
    generation: u64,
    checkpoint: Position,
    page_size: usize,
}

impl Runner {
    fn new(log: EventLog, store: Arc<dyn ProjectionStore>, workspaces: Arc<Mutex<BTreeSet<WorkspaceId>>>) -> Runner {
        Runner {
            reader: ProfileReader::new(store.clone(), log.clone()),
            as_of: AsOfReader::new(store.clone(), log.clone()),
            log,
            store,
            workspaces,
            definitions: HashMap::new(),
            facts: HashMap::new(),
            fold: ProfilesFold::suppressing(&HashMap::new(), None),
            generation: 0,
            checkpoint: Position::START,
            page_size: PAGE,
        }
    }

    /// Resumes at the checkpoint and follows the log until it is closed.
    async fn run(&mut self) -> Result<(), StoreError> {
        let generation = self.live_generation().await?;
        self.open(generation).await?;
        let filter = EventFilter { event_types: read_types(), ..EventFilter::default() };
        let mut subscription = self.log.subscribe(self.checkpoint.next(), filter).await?;
        loop {
            let events = match subscription.next_batch().await {
                Ok(events) => events,
                Err(_) if self.log.is_closed() => return Ok(()),
                Err(err) => return Err(err),
            };
            for page in events.chunks(self.page_size) {
                self.page(page).await?;
            }
        }
    }

    /// The live generation, created (and made live) when there is none.
    async fn live_generation(&self) -> Result<Generation, StoreError> {
        match self.store.live(AUDIENCES).await? {
            Some(generation) => Ok(generation),
            None => {
                let generation = self.store.create_generation(AUDIENCES, VERSION).await?;
                self.store.promote(generation.id).await?;
                Ok(generation)
            }
        }
    }

    /// Takes up `generation` at its checkpoint: what the log defined up to
    /// there (audiences, computed traits, operator facts).
    async fn open(&mut self, generation: Generation) -> Result<(), StoreError> {
        self.generation = generation.id;
        self.checkpoint = generation.checkpoint;
        let filter = EventFilter { event_types: DEFINITION_TYPES.map(String::from).to_vec(), ..EventFilter::default() };
        let mut next = Position(1);
        while next <= self.checkpoint {
            let page = self.log.read(next, Some(self.checkpoint), &filter, 1_000).await?;
            for event in &page.events {
                self.definitions.entry(event.workspace_id).or_default().apply(event);
            }
            next = page.next;
        }
        self.facts = read_facts(&self.log, self.checkpoint).await?;
        self.fold = ProfilesFold::suppressing(&self.facts, self.log.suppression_hasher());
        self.publish_workspaces();
        Ok(())
    }

    /// Reads the log from the checkpoint to the head, a page at a time.
    async fn read_to_head(&mut self) -> Result<Position, StoreError> {
        let head = self.log.head().await?;
        let filter = EventFilter { event_types: read_types(), ..EventFilter::default() };
        let mut next = self.checkpoint.next();
        while next <= head {
            let page = self.log.read(next, Some(head), &filter, self.page_size).await?;
            self.page(&page.events).await?;
            next = page.next;
        }
        Ok(self.checkpoint)
    }

    fn publish_workspaces(&self) {
        let with: BTreeSet<WorkspaceId> =
            self.definitions.iter().filter(|(_, d)| !d.audiences.is_empty()).map(|(ws, _)| *ws).collect();
        *self.workspaces.lock().expect("not poisoned") = with;
    }

    /// Decides one page, appends its entries and exits, then commits its
    /// documents with the checkpoint.
    async fn page(&mut self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else { return Ok(()) };
        let mut pending = Pending::default();
        let mut by_workspace: BTreeMap<WorkspaceId, Vec<RecordedEvent>> = BTreeMap::new();
        for event in events {
            by_workspace.entry(event.workspace_id).or_default().push(event.clone());
        }
        for (workspace, events) in by_workspace {
            self.workspace_page(workspace, &events, &mut pending).await?;
        }
        for (workspace, events) in std::mem::take(&mut pending.appends) {
            for chunk in events.chunks(1_000) {
                let request = AppendRequest {
                    stream_id: membership_stream(workspace),
                    expected: ExpectedVersion::Any,
                    events: chunk.to_vec(),
                };
                self.log.append(request).await.map_err(append_error)?;
            }
        }
        let writes = pending.into_writes();
        self.store.commit(self.generation, self.checkpoint, last.position, writes).await.map_err(|err| match err {
            onepd_domain::ProjectionError::Store(err) => err,
            fenced => StoreError::Database(fenced.to_string()),
        })?;
        self.checkpoint = last.position;
        metrics::gauge!("onepd_projection_checkpoint", "projection" => AUDIENCES).set(last.position.0 as f64);
        Ok(())
    }

    /// The events of one workspace in one page, in order.
    async fn workspace_page(
        &mut self,
        workspace: WorkspaceId,
        events: &[RecordedEvent],
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        // Whether anyone in the workspace needs evaluating.
        let has_audiences = |runner: &Runner| {
            runner.definitions.get(&workspace).is_some_and(|d| !d.audiences.is_empty() || !d.computed.is_empty())
        };
        // The profile of each message, as of it (waiting for the profiles
        // read model to have it).
        let defines = events
            .iter()
            .any(|event| matches!(event.event_type.as_str(), AudienceDefined::TYPE | ComputedTraitDefined::TYPE));
        let attributed = if has_audiences(self) || defines {
            let fold = &self.fold;
            self.as_of.profiles(workspace, events, |event| fold.profiles().candidates(event)).await?
        } else {
            vec![None; events.len()]
        };
        // The states of the page's people, read in one go.
        let people =
            attributed.iter().flatten().flat_map(|profile| std::iter::once(profile.id).chain(profile.merged.clone()));
        let people: Vec<ProfileId> = people.collect();
        self.fetch(workspace, &people, pending).await?;
        for (event, profile) in events.iter().zip(attributed) {
            if event.data.unreadable().is_some() {
                continue;
            }
            let event_type = event.event_type.as_str();
            if DEFINITION_TYPES.contains(&event_type) {
                // What every person's kept facts hold: enough for the new
                // definitions when messages were followed (there were
                // definitions) and they name no event not kept already.
                let kept = self
                    .definitions
                    .get(&workspace)
                    .filter(|d| !d.audiences.is_empty() || !d.computed.is_empty())
                    .map(|d| d.names.clone());
                self.definitions.entry(workspace).or_default().apply(event);
                self.publish_workspaces();
                let now = self.advance(workspace, event.recorded_at, pending).await?;
                let names = self.definitions.get(&workspace).map(|d| d.names.clone()).unwrap_or_default();
                if kept.is_some_and(|kept| names.is_subset(&kept)) {
                    self.reevaluate_kept(workspace, event.position, now, pending).await?;
                } else {
                    self.reconcile(workspace, event.position, now, pending).await?;
                }
            } else if FACT_TYPES.contains(&event_type) {
                self.facts.entry(workspace).or_default().apply(event);
                self.fold = ProfilesFold::suppressing(&self.facts, self.log.suppression_hasher());
                if has_audiences(self) {
                    let now = self.advance(workspace, event.recorded_at, pending).await?;
                    // The erased leave first, saying so; then everyone is
                    // evaluated again under the new fact.
                    if event_type == SubjectErased::TYPE
                        && let Some(Ok(erased)) =
                            event.data.value().map(|data| serde_json::from_value::<SubjectErased>(data.clone()))
                    {
                        for profile in erased.profiles {
                            self.leave_all(workspace, profile, event.position, now, "erased", pending).await?;
                        }
                    }
                    self.reconcile(workspace, event.position, now, pending).await?;
                }
            } else if !has_audiences(self) {
                continue;
            } else if event_type == MessageAccepted::TYPE {
                let Some(profile) = profile else { continue };
                let now = self.advance(workspace, event.recorded_at, pending).await?;
                self.message(workspace, event, &profile, now, pending).await?;
            } else if event_type == AudienceClockTicked::TYPE {
                let Ok(tick) =
                    serde_json::from_value::<AudienceClockTicked>(event.data.value().cloned().unwrap_or_default())
                else {
                    continue;
                };
                let before = self.clock(workspace, pending).await?;
                let now = self.advance(workspace, tick.at, pending).await?;
                if now > before {
                    self.as_of.wait_for(workspace, event.position).await?;
                    let due = self.due(workspace, now, pending).await?;
                    for some in due.chunks(1_000) {
                        self.fetch(workspace, some, pending).await?;
                        for profile in some {
                            self.evaluate_person(workspace, *profile, event.position, now, pending).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A document, as the page has it so far.
    async fn get(
        &self,
        workspace: WorkspaceId,
        collection: &'static str,
        key: &str,
        pending: &Pending,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key_of = (workspace, collection, key.to_owned());
        if let Some(doc) = pending.writes.get(&key_of).or_else(|| pending.fetched.get(&key_of)) {
            return Ok(doc.clone());
        }
        Ok(self.store.get(self.generation, workspace, collection, &[key.to_owned()]).await?.pop().flatten())
    }

    async fn clock(&self, workspace: WorkspaceId, pending: &Pending) -> Result<Timestamp, StoreError> {
        match self.get(workspace, CLOCK, "now", pending).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|err| corrupt("clock", err)),
            None => Ok(Timestamp(i64::MIN)),
        }
    }

    /// Moves the workspace's clock to `at` unless it is already later: the
    /// time to evaluate at.
    async fn advance(
        &self,
        workspace: WorkspaceId,
        at: Timestamp,
        pending: &mut Pending,
    ) -> Result<Timestamp, StoreError> {
        let clock = self.clock(workspace, pending).await?;
        if at > clock {
            let doc = serde_json::to_vec(&at).expect("serializable");
            pending.writes.insert((workspace, CLOCK, "now".to_owned()), Some(doc));
            return Ok(at);
        }
        Ok(clock)
    }

    /// Reads ahead the states of `people` the page has not read yet.
    async fn fetch(
        &self,
        workspace: WorkspaceId,
        people: &[ProfileId],
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let keys: BTreeSet<String> = (people.iter())
            .filter(|profile| !pending.people.contains_key(&(workspace, **profile)))
            .map(|profile| profile.0.to_string())
            .filter(|key| !pending.fetched.contains_key(&(workspace, PERSON, key.clone())))
            .collect();
        let keys: Vec<String> = keys.into_iter().collect();
        for some in keys.chunks(500) {
            let docs = self.store.get(self.generation, workspace, PERSON, some).await?;
            for (key, doc) in some.iter().zip(docs) {
                pending.fetched.insert((workspace, PERSON, key.clone()), doc);
            }
        }
        Ok(())
    }

    async fn person_state(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        pending: &Pending,
    ) -> Result<PersonState, StoreError> {
        if let Some(state) = pending.people.get(&(workspace, profile)) {
            return Ok(state.clone());
        }
        match self.get(workspace, PERSON, &profile.0.to_string(), pending).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|err| corrupt("person", err)),
            None => Ok(PersonState::default()),
        }
    }

    /// Stores what is known of `profile` now: its audiences and its edge,
    /// moving its entry in the edge index.
    fn set_person_state(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        old: &PersonState,
        new: PersonState,
        pending: &mut Pending,
    ) {
        if old.edge != new.edge {
            if let Some(edge) = old.edge {
                pending.writes.insert((workspace, EDGE, edge_key(edge, profile)), None);
            }
            if let Some(edge) = new.edge {
                pending.writes.insert((workspace, EDGE, edge_key(edge, profile)), Some(Vec::new()));
            }
        }
        pending.people.insert((workspace, profile), new);
    }

    /// Records an entry or an exit.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        workspace: WorkspaceId,
        audience: &str,
        profile: ProfileId,
        cause: Position,
        at: Timestamp,
        entered: bool,
        why: String,
        pending: &mut Pending,
    ) {
        let key = (workspace, MEMBER, member_key(audience, profile));
        let (event_type, data) = if entered {
            let member = Member { profile, since: cause, at };
            pending.writes.insert(key, Some(serde_json::to_vec(&member).expect("serializable")));
            let entered = AudienceEntered { audience: audience.to_owned(), profile, cause, at, why };
            (AudienceEntered::TYPE, serde_json::to_value(entered))
        } else {
            pending.writes.insert(key, None);
            let exited = AudienceExited { audience: audience.to_owned(), profile, cause, at, why };
            (AudienceExited::TYPE, serde_json::to_value(exited))
        };
        tracing::debug!(%workspace, audience, profile = %profile.0, cause = cause.0, entered, "audience membership changed");
        pending.appends.entry(workspace).or_default().push(NewEvent {
            event_id: membership_event_id(workspace, audience, profile, cause, entered),
            workspace_id: workspace,
            event_type: event_type.to_owned(),
            schema_version: 1,
            data: data.expect("serializable"),
            metadata: json!({"actor": "audiences"}),
            subject: None,
        });
    }

    /// Records the changes of a person's computed traits' values.
    fn record_computed(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        cause: Position,
        at: Timestamp,
        values: BTreeMap<String, serde_json::Value>,
        pending: &mut Pending,
    ) {
        let changed = ComputedTraitChanged { profile, values, cause, at };
        pending.appends.entry(workspace).or_default().push(NewEvent {
            event_id: computed_change_event_id(workspace, profile, cause),
            workspace_id: workspace,
            event_type: ComputedTraitChanged::TYPE.to_owned(),
            schema_version: 1,
            data: serde_json::to_value(changed).expect("serializable"),
            metadata: json!({"actor": "audiences"}),
            subject: None,
        });
    }

    /// `profile` leaves every audience it is in.
    async fn leave_all(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        cause: Position,
        now: Timestamp,
        why: &str,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let state = self.person_state(workspace, profile, pending).await?;
        for audience in &state.audiences {
            self.record(workspace, audience, profile, cause, now, false, why.to_owned(), pending);
        }
        self.set_person_state(workspace, profile, &state, PersonState::default(), pending);
        Ok(())
    }

    /// Evaluates `profile` as of `position` at `now` and records the
    /// differences.
    async fn evaluate_person(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        position: Position,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let kept = self.person_state(workspace, profile, pending).await?.facts;
        let facts = match kept {
            Some(facts) => Some(facts),
            None => self.read_facts(workspace, profile, position).await?,
        };
        match facts {
            Some(facts) => self.decide_with(workspace, profile, facts, position, now, pending).await,
            // Merged into another profile, or gone.
            None => self.leave_all(workspace, profile, position, now, "no longer a profile of its own", pending).await,
        }
    }

    /// The facts of `profile` as of `position`, read from its history; none
    /// when it is no longer a profile of its own.
    async fn read_facts(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        position: Position,
    ) -> Result<Option<PersonFacts>, StoreError> {
        let found =
            self.reader.identified_person(workspace, &Lookup::Profile(profile), Some(AsOf::Position(position))).await?;
        Ok(match found {
            Some((id, mut facts)) if id == profile => {
                facts.keep_only(&self.definitions.get(&workspace).map(|d| d.names.clone()).unwrap_or_default());
                Some(facts)
            }
            _ => None,
        })
    }

    /// A message of `profile` (as of it): the profiles it merged into
    /// theirs leave, taking their events along, and the person is
    /// evaluated with the message added to what is kept of them.
    async fn message(
        &self,
        workspace: WorkspaceId,
        event: &RecordedEvent,
        profile: &ProfileAsOf,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let mut facts = self.person_state(workspace, profile.id, pending).await?.facts;
        for absorbed in &profile.merged {
            let theirs = self.person_state(workspace, *absorbed, pending).await?.facts;
            facts = match (facts, theirs) {
                (Some(mut ours), Some(theirs)) => {
                    ours.absorb(theirs);
                    Some(ours)
                }
                // Either history was not kept: read the merged profile's.
                _ => None,
            };
            let why = format!("merged into profile {}", profile.id.0);
            self.leave_all(workspace, *absorbed, event.position, now, &why, pending).await?;
        }
        let facts = match facts {
            Some(mut facts) => {
                let names = self.definitions.get(&workspace).map(|d| &d.names);
                let traits = profile.traits.iter().map(|(name, value)| (name, &value.value));
                facts.record(event, profile.id, names.unwrap_or(&BTreeSet::new()), traits);
                Some(facts)
            }
            None => self.read_facts(workspace, profile.id, event.position).await?,
        };
        match facts {
            Some(facts) => self.decide_with(workspace, profile.id, facts, event.position, now, pending).await,
            None => Ok(()),
        }
    }

    /// [`Runner::decide`] for a person with `facts`, which are kept.
    async fn decide_with(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        facts: PersonFacts,
        position: Position,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let mut facts = facts;
        let verdicts = match self.definitions.get(&workspace) {
            Some(definitions) => {
                facts.keep_only(&definitions.names);
                evaluation(definitions, &facts, now)
            }
            None => Evaluation::default(),
        };
        self.decide(workspace, profile, verdicts, Some(facts), position, now, pending).await
    }

    /// Compares a person's verdicts (none: they meet nothing) with what the
    /// runner knows of them, and records the differences.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        evaluation: Evaluation,
        facts: Option<PersonFacts>,
        cause: Position,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let old = self.person_state(workspace, profile, pending).await?;
        let mut new = PersonState::default();
        // Why, in words, only for a change.
        let why = |audience: &str| -> String {
            let definitions = self.definitions.get(&workspace);
            let condition = definitions.and_then(|d| d.audiences.get(audience));
            match (definitions, condition, facts.as_ref()) {
                (Some(definitions), Some(condition), Some(person)) => {
                    let with = WithAudiences {
                        person,
                        definitions: &definitions.audiences,
                        computed: &definitions.computed,
                        now,
                    };
                    let verdict = evaluate(condition, &with, now);
                    format!("{}: found {}", verdict.explanation.condition, verdict.explanation.found)
                }
                _ => String::new(),
            }
        };
        let earliest = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut changed = BTreeMap::new();
        for (name, (value, edge)) in evaluation.computed {
            new.edge = earliest(new.edge, edge);
            if old.computed.get(&name) != value.as_ref() {
                changed.insert(name.clone(), value.clone().unwrap_or_default());
            }
            if let Some(value) = value {
                new.computed.insert(name, value);
            }
        }
        if !changed.is_empty() {
            self.record_computed(workspace, profile, cause, now, changed, pending);
        }
        for (audience, (holds, edge)) in evaluation.audiences {
            new.edge = earliest(new.edge, edge);
            if holds != old.audiences.contains(&audience) {
                self.record(workspace, &audience, profile, cause, now, holds, why(&audience), pending);
            }
            if holds {
                new.audiences.insert(audience);
            }
        }
        // Audiences no longer defined.
        for audience in old.audiences.iter().filter(|a| !self.has_audience(workspace, a)) {
            self.record(
                workspace,
                audience,
                profile,
                cause,
                now,
                false,
                "the audience was removed".to_owned(),
                pending,
            );
        }
        new.facts = facts;
        self.set_person_state(workspace, profile, &old, new, pending);
        Ok(())
    }

    fn has_audience(&self, workspace: WorkspaceId, audience: &str) -> bool {
        self.definitions.get(&workspace).is_some_and(|d| d.audiences.contains_key(audience))
    }

    /// Every person the runner keeps evaluated again from their kept facts
    /// (a definition that reads nothing the facts lack): the backfill
    /// [`Runner::reconcile`] gives, with no history read.
    async fn reevaluate_kept(
        &self,
        workspace: WorkspaceId,
        position: Position,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        let mut seen: BTreeSet<ProfileId> = BTreeSet::new();
        let mut pages = Pages {
            store: self.store.as_ref(),
            generation: self.generation,
            workspace,
            collection: PERSON,
            after: None,
        };
        while let Some(page) = pages.next().await? {
            let mut people = Vec::with_capacity(page.len());
            for (key, doc) in page {
                let Ok(id) = key.parse::<uuid::Uuid>() else { continue };
                pending.fetched.entry((workspace, PERSON, key)).or_insert(Some(doc));
                people.push(ProfileId(id));
            }
            for profile in people {
                seen.insert(profile);
                self.evaluate_person(workspace, profile, position, now, pending).await?;
                pending.fetched.remove(&(workspace, PERSON, profile.0.to_string()));
            }
        }
        // People this page met who are not stored yet.
        let fresh: Vec<ProfileId> = (pending.people.iter())
            .filter(|((ws, profile), state)| {
                *ws == workspace && !seen.contains(profile) && **state != PersonState::default()
            })
            .map(|((_, profile), _)| *profile)
            .collect();
        for profile in fresh {
            self.evaluate_person(workspace, profile, position, now, pending).await?;
        }
        Ok(())
    }

    /// Every profile of the workspace evaluated again as of `position`;
    /// members whose profile no longer exists leave.
    async fn reconcile(
        &self,
        workspace: WorkspaceId,
        position: Position,
        now: Timestamp,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        self.as_of.wait_for(workspace, position).await?;
        let definitions = self.definitions.get(&workspace).cloned().unwrap_or_default();
        // Each profile's verdicts, computed as the profiles are read: the
        // verdicts of every profile are held until they are compared (a
        // backfill's memory grows with the workspace's profiles).
        let mut people: Vec<(ProfileId, Evaluation, PersonFacts)> = Vec::new();
        let mut seen: BTreeSet<ProfileId> = BTreeSet::new();
        self.reader
            .each_person(workspace, Some(AsOf::Position(position)), |id, person| {
                if seen.insert(id) {
                    let mut facts = person.clone();
                    facts.keep_only(&definitions.names);
                    people.push((id, evaluation(&definitions, person, now), facts));
                }
            })
            .await?;
        for some in people.chunks(1_000) {
            let ids: Vec<ProfileId> = some.iter().map(|(id, _, _)| *id).collect();
            self.fetch(workspace, &ids, pending).await?;
        }
        for (id, verdicts, facts) in people {
            self.decide(workspace, id, verdicts, Some(facts), position, now, pending).await?;
        }
        // Anyone the runner holds who is no longer a profile leaves.
        let mut gone = Vec::new();
        scan_each(self.store.as_ref(), self.generation, workspace, PERSON, None, |key, _| {
            if let Ok(id) = key.parse::<uuid::Uuid>()
                && !seen.contains(&ProfileId(id))
            {
                gone.push(ProfileId(id));
            }
            Ok(true)
        })
        .await?;
        for profile in gone {
            self.leave_all(workspace, profile, position, now, "no longer a profile of its own", pending).await?;
        }
        Ok(())
    }

    /// The people whose edge is at or before `now`.
    async fn due(
        &self,
        workspace: WorkspaceId,
        now: Timestamp,
        pending: &Pending,
    ) -> Result<Vec<ProfileId>, StoreError> {
        let bound = edge_bound(now);
        let mut due = BTreeSet::new();
        scan_each(self.store.as_ref(), self.generation, workspace, EDGE, None, |key, _| {
            let Some((edge, profile)) = key.split_once(SEPARATOR) else { return Ok(true) };
            if edge > bound.as_str() {
                return Ok(false);
            }
            let unset = pending.writes.get(&(workspace, EDGE, key.to_owned())).is_some_and(Option::is_none);
            if !unset && let Ok(id) = profile.parse::<uuid::Uuid>() {
                due.insert(ProfileId(id));
            }
            Ok(true)
        })
        .await?;
        // Edges the page itself set.
        for ((ws, collection, key), doc) in &pending.writes {
            if *ws == workspace
                && *collection == EDGE
                && doc.is_some()
                && let Some((edge, profile)) = key.split_once(SEPARATOR)
                && edge <= bound.as_str()
                && let Ok(id) = profile.parse::<uuid::Uuid>()
            {
                due.insert(ProfileId(id));
            }
        }
        Ok(due.into_iter().collect())
    }
}

/// Each audience's verdict for `person` at `now`: whether they meet it, its
/// next edge (why, in words, is worked out only for a change).
fn evaluation(definitions: &Definitions, person: &PersonFacts, now: Timestamp) -> Evaluation {
    let with = WithAudiences { person, definitions: &definitions.audiences, computed: &definitions.computed, now };
    let audiences =
        (definitions.audiences.iter()).map(|(name, condition)| (name.clone(), holds(condition, &with, now))).collect();
    let computed = (definitions.computed.iter())
        .map(|(name, definition)| (name.clone(), definition.compute_with_edge(person, now)))
        .collect();
    Evaluation { audiences, computed }
}

/// Reads the membership the runner keeps, and its history from the log.
#[derive(Clone)]
pub struct Membership {
    log: EventLog,
    store: Arc<dyn ProjectionStore>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

/// One entry or exit, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Its position in the log.
    pub position: Position,
    /// `entered` or `exited`.
    pub change: &'static str,
    /// The audience.
    pub audience: String,
    /// The profile.
    pub profile: ProfileId,
    /// What caused it.
    pub cause: Position,
    /// The time it was evaluated at.
    pub at: Timestamp,
    /// Why.
    pub why: String,
}

impl Membership {
    /// The membership over `log` and the read store `store`.
    pub fn new(log: EventLog, store: Arc<dyn ProjectionStore>) -> Membership {
        Membership { log, store }
    }

    /// The position the membership reflects (0 before the runner first
    /// ran).
    pub async fn checkpoint(&self) -> Result<Position, StoreError> {
        Ok(self.store.live(AUDIENCES).await?.map_or(Position::START, |g| g.checkpoint))
    }

    /// The members of `audience` now, in the order of their profile ids.
    pub async fn members(&self, workspace: WorkspaceId, audience: &str) -> Result<Vec<Member>, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(Vec::new()) };
        let prefix = format!("{audience}{SEPARATOR}");
        let mut members = Vec::new();
        scan_each(self.store.as_ref(), generation.id, workspace, MEMBER, Some(prefix.clone()), |key, doc| {
            if !key.starts_with(&prefix) {
                return Ok(false);
            }
            members.push(serde_json::from_slice(doc).map_err(|err| corrupt("member", err))?);
            Ok(true)
        })
        .await?;
        Ok(members)
    }

    /// The audiences `profile` is in now.
    pub async fn audiences_of(&self, workspace: WorkspaceId, profile: ProfileId) -> Result<Vec<String>, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(Vec::new()) };
        let doc = self.store.get(generation.id, workspace, PERSON, &[profile.0.to_string()]).await?.pop().flatten();
        let Some(doc) = doc else { return Ok(Vec::new()) };
        let state: PersonState = serde_json::from_slice(&doc).map_err(|err| corrupt("person", err))?;
        Ok(state.audiences.into_iter().collect())
    }

    /// The computed traits of `profile` as the runner last computed them (at
    /// the audience clock), those with a value.
    pub async fn computed_of(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
    ) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(BTreeMap::new()) };
        let doc = self.store.get(generation.id, workspace, PERSON, &[profile.0.to_string()]).await?.pop().flatten();
        let Some(doc) = doc else { return Ok(BTreeMap::new()) };
        let state: PersonState = serde_json::from_slice(&doc).map_err(|err| corrupt("person", err))?;
        Ok(state.computed)
    }

    /// Every entry and exit of the workspace up to `through` (all when
    /// `None`), oldest first, from the log alone.
    pub async fn history(&self, workspace: WorkspaceId, through: Option<Position>) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        self.each_change(workspace, through, |change| changes.push(change)).await?;
        Ok(changes)
    }

    /// Hands every entry and exit of the workspace up to `through` (all
    /// when `None`) to `visit`, oldest first, a page of the log at a time.
    pub async fn each_change(
        &self,
        workspace: WorkspaceId,
        through: Option<Position>,
        mut visit: impl FnMut(Change),
    ) -> Result<(), StoreError> {
        let stream = membership_stream(workspace);
        let mut version = 1;
        loop {
            let events = self.log.read_stream(&stream, version, 1_000).await?;
            let Some(last) = events.last() else { return Ok(()) };
            version = last.stream_version + 1;
            for event in &events {
                if through.is_some_and(|through| event.position > through) {
                    return Ok(());
                }
                let Some(data) = event.data.value() else { continue };
                let change = match event.event_type.as_str() {
                    AudienceEntered::TYPE => serde_json::from_value::<AudienceEntered>(data.clone())
                        .ok()
                        .map(|e| ("entered", e.audience, e.profile, e.cause, e.at, e.why)),
                    AudienceExited::TYPE => serde_json::from_value::<AudienceExited>(data.clone())
                        .ok()
                        .map(|e| ("exited", e.audience, e.profile, e.cause, e.at, e.why)),
                    _ => None,
                };
                if let Some((change, audience, profile, cause, at, why)) = change {
                    visit(Change { position: event.position, change, audience, profile, cause, at, why });
                }
            }
        }
    }

    /// The members of `audience` just after `through`, from the log alone:
    /// its entries and exits folded.
    pub async fn members_as_of(
        &self,
        workspace: WorkspaceId,
        audience: &str,
        through: Position,
    ) -> Result<Vec<Member>, StoreError> {
        let mut members: BTreeMap<ProfileId, Member> = BTreeMap::new();
        self.each_change(workspace, Some(through), |change| {
            if change.audience != audience {
                return;
            }
            if change.change == "entered" {
                members.insert(change.profile, Member { profile: change.profile, since: change.cause, at: change.at });
            } else {
                members.remove(&change.profile);
            }
        })
        .await?;
        Ok(members.into_values().collect())
    }

    /// The positions of the entries of the people in `audience` now (the
    /// `AudienceEntered` events of the current members), from the log: what
    /// a destination connected to it is sent first.
    pub async fn entries_of_members(
        &self,
        workspace: WorkspaceId,
        audience: &str,
    ) -> Result<Vec<Position>, StoreError> {
        let mut entries: BTreeMap<ProfileId, Position> = BTreeMap::new();
        self.each_change(workspace, None, |change| {
            if change.audience != audience {
                return;
            }
            if change.change == "entered" {
                entries.insert(change.profile, change.position);
            } else {
                entries.remove(&change.profile);
            }
        })
        .await?;
        let mut positions: Vec<Position> = entries.into_values().collect();
        positions.sort();
        Ok(positions)
    }

    /// The workspace's audience clock: the time its audiences were last
    /// evaluated at (`None` before the first evaluation).
    pub async fn clock(&self, workspace: WorkspaceId) -> Result<Option<Timestamp>, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(None) };
        let doc = self.store.get(generation.id, workspace, CLOCK, &["now".to_owned()]).await?.pop().flatten();
        doc.map(|doc| serde_json::from_slice(&doc).map_err(|err| corrupt("clock", err))).transpose()
    }

    /// How many people have a window edge at or before `now`: those a tick
    /// at `now` evaluates again.
    pub async fn due_count(&self, workspace: WorkspaceId, now: Timestamp) -> Result<u64, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(0) };
        let bound = edge_bound(now);
        let mut count = 0;
        scan_each(self.store.as_ref(), generation.id, workspace, EDGE, None, |key, _| {
            let due = key.split_once(SEPARATOR).is_some_and(|(edge, _)| edge <= bound.as_str());
            count += u64::from(due);
            Ok(due)
        })
        .await?;
        Ok(count)
    }

    /// Whether some window edge of `workspace` is at or before `now`.
    pub async fn edge_due(&self, workspace: WorkspaceId, now: Timestamp) -> Result<bool, StoreError> {
        let Some(generation) = self.store.live(AUDIENCES).await? else { return Ok(false) };
        let first = self.store.scan(generation.id, workspace, EDGE, None, 1).await?;
        let bound = edge_bound(now);
        Ok(first.first().and_then(|(key, _)| key.split_once(SEPARATOR)).is_some_and(|(edge, _)| edge <= bound.as_str()))
    }

    /// Waits until the membership reflects the log up to `through`, or
    /// `patience` passes.
    pub async fn wait_for(&self, through: Position, patience: Duration) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let types = read_types();
        loop {
            let checkpoint = self.checkpoint().await?;
            if checkpoint >= through {
                return Ok(true);
            }
            // Nothing it reads lies between: it is there.
            let filter = EventFilter { event_types: types.clone(), ..EventFilter::default() };
            let unread = self.log.read(checkpoint.next(), Some(through), &filter, 1).await?;
            if unread.events.is_empty() && self.store.live(AUDIENCES).await?.is_some() {
                return Ok(true);
            }
            if started.elapsed() >= patience {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
