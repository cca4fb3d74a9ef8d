//! The projection runner for the identity graph and the 360-degree
//! profiles: it keeps a read model of every live profile in a
//! [`ProjectionStore`], updated in place batch by batch — each batch's
//! documents and the checkpoint in one transaction, so every event takes
//! effect in the read model exactly once. The store is the fold's state:
//! the process keeps only a bounded cache of it.
//!
//! # Lifecycle
//!
//! 1. **Start.** If the store has a live generation built by this version,
//!    the runner resumes at its checkpoint with an empty cache: nothing is
//!    re-derived from the log. Otherwise a new generation is built (step 4)
//!    and promoted.
//! 2. **Follow.** A subscription from the checkpoint hands over batches of
//!    accepted messages. Before a batch is folded, the documents of every
//!    profile its events may name (by any identifier, [`Profiles::candidates`])
//!    are read into the cache; the batch is folded and the documents of the
//!    profiles it touched are committed with the batch's last position.
//!    Then the least recently used profiles leave the cache until it is
//!    within its budget ([`Runner::with_cache_bytes`]).
//! 3. **Operator facts** (`IdentityRulesChanged`, `IdentifierBlocked`,
//!    `IdentifierUnblocked`, `ProfileSplit`, `SubjectErased`) apply to all
//!    of their workspace's history. When one arrives, that workspace alone
//!    is re-derived from the log under its facts up to the fact, in the
//!    background of the follow loop: meanwhile its events are left to the
//!    re-derivation, its documents (still the old ones) carry a marker
//!    committed with the checkpoint that passes the fact, and every other
//!    workspace follows on. The re-derivation folds the workspace page by
//!    page into a generation of its own (`profiles-refold`), in the cache's
//!    bounded memory; when it is done and caught up to the checkpoint, the
//!    live generation adopts its documents in one transaction (marker
//!    removed). A start that finds a marker re-derives that workspace before
//!    it follows on. A fact is applied once.
//! 4. **Rebuild (blue/green).** A new generation is built from position 0
//!    to the head beside the live one, page by page as in step 2 (so in the
//!    same bounded memory), then promoted atomically; readers use the live
//!    generation until then. This happens on `onepd rebuild` and when the
//!    code's version changed.
//! 5. **Quarantine.** An event whose payload cannot be read is left out and
//!    recorded (`EventQuarantined`, once per position) before the commit
//!    that passes it; a rebuild meets and leaves it out the same way.
//! 6. **Fenced.** When another process promoted a newer generation (a
//!    rebuild run from the CLI), the next commit is refused and the runner
//!    starts over from step 1.
//!
//! **Invariant:** the documents of a generation at checkpoint *c* are
//! exactly what a rebuild up to *c* writes, whatever the batch sizes.
//! **Does not:** spawn tasks, sleep or know a database: the caller drives
//! [`Runner::run`] and supplies the ports.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use onepd_domain::events::identity::{FACT_TYPES, IdentityFacts};

use crate::identity::SuppressionHasher;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::quarantine::{EventQuarantined, PROFILES_READER, quarantine_stream};
use onepd_domain::identity::{IdentityRules, ProfileId};
use onepd_domain::{
    AppendError, AppendRequest, DocWrite, EventFilter, EventStore, ExpectedVersion, Generation, Landing, NewEvent,
    Position, ProjectionError, ProjectionStore, RecordedEvent, StoreError, WorkspaceId,
};

use crate::identity::IdentityGraph;
use crate::profile::{Changes, FOLDED_PARTS, ProfileDoc, Profiles};

/// The projection's name in the store.
pub const PROFILES: &str = "profiles";
/// The name of the generations a workspace is re-derived into before the
/// live generation adopts its documents.
pub const PROFILES_REFOLD: &str = "profiles-refold";
/// The version of the code that builds it; a generation built by another
/// version is rebuilt at start. 2: consent is also read from RudderStack's
/// `context.consentManagement`. 3: identifier values with control
/// characters or over 1,024 bytes are no identifiers; unreadable events
/// are quarantined. 4: documents carry exact revenue, and the fold goes on
/// from them rather than from the log.
pub const PROFILES_VERSION: u32 = 4;

/// The memory the profiles a runner keeps in its cache may take, unless
/// told otherwise (`--read-cache-mb`).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// Collection of profile documents, keyed by live profile id.
pub const PROFILE_DOCS: &str = "profile";
/// Collection mapping `kind:value` to the live profile id holding it.
pub const IDENTIFIER_DOCS: &str = "identifier";
/// Collection mapping every member profile id (absorbed or not) to the live
/// profile id it is part of.
pub const MEMBER_DOCS: &str = "member";

/// The size a build assumes of a profile before it has measured any.
const UNMEASURED_PROFILE_BYTES: usize = 4_096;

/// A followed batch at least this large makes the follow loop look at how
/// far behind the head it is (a smaller one means it has nearly caught up).
const BEHIND_BATCH: usize = 100;

/// Events read per page while rebuilding.
const REBUILD_PAGE: usize = 5_000;

/// The key of an identifier in [`IDENTIFIER_DOCS`].
pub fn identifier_key(identifier: &onepd_domain::identity::Identifier) -> String {
    format!("{}:{}", identifier.kind, identifier.value)
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The log or the read store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Called with (events folded, events to fold) while a fold runs.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The fold of accepted messages under the operators' facts, and what it
/// has not written yet.
#[derive(Debug)]
pub struct ProfilesFold {
    profiles: Profiles,
    /// Events [`ProfilesFold::apply`] could not read, not yet recorded.
    quarantined: Vec<(WorkspaceId, EventQuarantined)>,
}

impl ProfilesFold {
    /// An empty fold under `facts` per workspace. Erased people's
    /// identifiers are not suppressed: see [`ProfilesFold::suppressing`].
    pub fn new(facts: &HashMap<WorkspaceId, IdentityFacts>) -> ProfilesFold {
        ProfilesFold::suppressing(facts, None)
    }

    /// An empty fold under `facts` per workspace that, given `hasher`, links
    /// none of the identifiers the facts' erasures suppressed (what every
    /// reader of profiles uses; erasure itself must still find them).
    pub fn suppressing(facts: &HashMap<WorkspaceId, IdentityFacts>, hasher: Option<SuppressionHasher>) -> ProfilesFold {
        let mut graph = IdentityGraph::new(IdentityRules::default());
        if let Some(hasher) = hasher {
            graph = graph.with_suppression(hasher);
        }
        for (workspace, facts) in facts {
            graph = graph.with_facts(*workspace, facts);
        }
        ProfilesFold { profiles: Profiles::over(graph), quarantined: Vec::new() }
    }

    /// The profiles folded so far.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Whether `event` is a message naming an identifier an erasure
    /// suppressed ([`IdentityGraph::names_erased`]): readers treat it as
    /// ingest treats such a message today, and send nothing of it.
    pub fn names_erased(&self, event: &RecordedEvent) -> bool {
        event
            .data
            .value()
            .and_then(|data| data.get("message"))
            .is_some_and(|message| self.profiles.graph().names_erased(event.workspace_id, message))
    }

    /// Folds `events` (accepted messages; others are skipped). An event
    /// whose payload cannot be read is left out and kept for
    /// [`ProfilesFold::take_quarantined`].
    pub fn apply(&mut self, events: &[RecordedEvent]) {
        for event in events {
            if let Some(record) = quarantine(event) {
                self.quarantined.push((event.workspace_id, record));
                continue;
            }
            self.profiles.attribute(event);
        }
    }

    /// The events left out since the last call, to record.
    pub fn take_quarantined(&mut self) -> Vec<(WorkspaceId, EventQuarantined)> {
        std::mem::take(&mut self.quarantined)
    }

    /// Folds one event and returns the profile it was attributed to, for a
    /// reader that needs the profile as of each event (activation). Call
    /// [`ProfilesFold::forget_changes`] now and then when nothing is written.
    pub fn attribute(&mut self, event: &RecordedEvent) -> Option<ProfileId> {
        self.profiles.attribute(event)
    }

    /// Drops the record of what changed (and what was left out), for a
    /// fold that writes nothing.
    pub fn forget_changes(&mut self) {
        self.profiles.take_changes();
        self.quarantined.clear();
    }

    /// What changed since the last call, as the work of bringing a read
    /// model up to this fold: write it chunk by chunk with
    /// [`ProfilesFold::writes`], so only one chunk's documents are in memory.
    pub fn take_pending(&mut self) -> Pending {
        let Changes { touched, absorbed } = self.profiles.take_changes();
        // Sorted, so the same changes always give the same writes.
        let mut touched: Vec<(WorkspaceId, ProfileId)> = touched.into_iter().collect();
        touched.sort();
        let mut absorbed: Vec<(WorkspaceId, ProfileId)> = absorbed.into_iter().collect();
        absorbed.sort();
        Pending { touched, absorbed }
    }

    /// Every live profile of `workspace` with events attributed, sorted:
    /// the profiles a writer of the whole workspace writes.
    pub fn live_profiles(&self, workspace: WorkspaceId) -> Vec<(WorkspaceId, ProfileId)> {
        let mut profiles: Vec<(WorkspaceId, ProfileId)> =
            self.profiles.live_profiles(workspace).map(|profile| (workspace, profile)).collect();
        profiles.sort();
        profiles
    }

    /// The writes for the work pending since the commit at `since`:
    /// deletes for the absorbed profiles, and each touched profile's
    /// document, with the index entries (identifier → profile, member →
    /// profile) that changed after `since`: those of identifiers and
    /// members that joined it since, or all of them when it absorbed a
    /// profile since (every identifier of the absorbed one now names it).
    pub fn writes(
        &self,
        absorbed: &[(WorkspaceId, ProfileId)],
        touched: &[(WorkspaceId, ProfileId)],
        since: Position,
    ) -> Vec<DocWrite> {
        let mut writes = Vec::new();
        for &(workspace, profile) in absorbed {
            writes.push(DocWrite::Delete { workspace, collection: PROFILE_DOCS, key: profile.to_string() });
        }
        for &(workspace, profile) in touched {
            let Some(doc) = self.profiles.doc(workspace, profile) else { continue };
            let id = profile.to_string();
            let merged = doc.merges.iter().any(|merge| merge.position > since);
            for attached in doc.identifiers.iter().filter(|attached| merged || attached.position > since) {
                writes.push(DocWrite::Put {
                    workspace,
                    collection: IDENTIFIER_DOCS,
                    key: identifier_key(&attached.identifier),
                    doc: id.clone().into_bytes(),
                });
            }
            for member in doc.members.iter().filter(|member| merged || member.created_at > since) {
                writes.push(DocWrite::Put {
                    workspace,
                    collection: MEMBER_DOCS,
                    key: member.id.to_string(),
                    doc: id.clone().into_bytes(),
                });
            }
            let bytes = serde_json::to_vec(&doc).expect("a profile document serializes");
            writes.push(DocWrite::Put { workspace, collection: PROFILE_DOCS, key: id, doc: bytes });
        }
        writes
    }
}

/// Profiles whose documents a read model lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Live profiles whose documents must be written, sorted.
    pub touched: Vec<(WorkspaceId, ProfileId)>,
    /// Profiles merged into others, whose documents must go, sorted.
    pub absorbed: Vec<(WorkspaceId, ProfileId)>,
}

/// The events the profiles projection reads while it follows the log:
/// accepted messages and operator facts.
pub fn followed_filter() -> EventFilter {
    let mut types: Vec<String> = FACT_TYPES.map(String::from).to_vec();
    types.push(MessageAccepted::TYPE.into());
    EventFilter { event_types: types, parts: FOLDED_PARTS, ..EventFilter::default() }
}

/// The profiles projection's quarantine record of `event`, when its payload
/// cannot be read.
pub fn quarantine(event: &RecordedEvent) -> Option<EventQuarantined> {
    EventQuarantined::of(event, PROFILES_READER, None)
}

/// Appends quarantine records to their workspaces' `quarantine-<workspace>`
/// streams, one append each (they are rare); a record already stored is a
/// duplicate, so meeting an event again records nothing new. Returns the
/// records that are new.
pub async fn record_quarantined(
    log: &dyn EventStore,
    records: Vec<(WorkspaceId, EventQuarantined)>,
) -> Result<Vec<(WorkspaceId, EventQuarantined)>, StoreError> {
    let mut new = Vec::new();
    for (workspace, record) in records {
        let event = NewEvent {
            event_id: record.record_id(),
            workspace_id: workspace,
            event_type: EventQuarantined::TYPE.into(),
            schema_version: 1,
            data: serde_json::to_value(&record).expect("a quarantine record serializes"),
            metadata: serde_json::json!({ "actor": record.reader }),
            subject: None,
        };
        let request = AppendRequest {
            stream_id: quarantine_stream(workspace),
            expected: ExpectedVersion::Any,
            events: vec![event],
        };
        match log.append(request).await {
            Ok(outcome) if outcome.duplicate => {}
            Ok(_) => new.push((workspace, record)),
            Err(AppendError::Store(err)) => return Err(err),
            Err(err) => return Err(StoreError::Database(err.to_string())),
        }
    }
    Ok(new)
}

/// Told of every event the projection newly quarantined (to log and count it).
pub type OnQuarantine = Arc<dyn Fn(WorkspaceId, &EventQuarantined) + Send + Sync>;

/// Reads every operator fact up to `until`, per workspace.
pub async fn read_facts(
    log: &dyn EventStore,
    until: Position,
) -> Result<HashMap<WorkspaceId, IdentityFacts>, StoreError> {
    read_facts_of(log, None, until).await
}

/// Reads the operator facts of `workspace` (of every workspace when `None`)
/// up to `until`.
async fn read_facts_of(
    log: &dyn EventStore,
    workspace: Option<WorkspaceId>,
    until: Position,
) -> Result<HashMap<WorkspaceId, IdentityFacts>, StoreError> {
    let filter =
        EventFilter { workspace, event_types: FACT_TYPES.map(String::from).to_vec(), ..EventFilter::default() };
    let mut facts: HashMap<WorkspaceId, IdentityFacts> = HashMap::new();
    let mut next = Position(1);
    while next <= until {
        let page = log.read(next, Some(until), &filter, 1_000).await?;
        for event in &page.events {
            facts.entry(event.workspace_id).or_default().apply(event);
        }
        next = page.next;
    }
    Ok(facts)
}

/// Folds every accepted message up to `until` into `fold`, reporting
/// progress after each page.
pub async fn fold_to(
    log: &dyn EventStore,
    fold: &mut ProfilesFold,
    until: Position,
    page_size: usize,
    progress: Progress<'_>,
) -> Result<(), StoreError> {
    fold_workspace_to(log, fold, None, Position(1), until, page_size, progress).await
}

/// Folds the accepted messages of `workspace` (of every workspace when
/// `None`) up to `until` into `fold`, reporting progress after each page.
async fn fold_workspace_to(
    log: &dyn EventStore,
    fold: &mut ProfilesFold,
    workspace: Option<WorkspaceId>,
    from: Position,
    until: Position,
    page_size: usize,
    progress: Progress<'_>,
) -> Result<(), StoreError> {
    let filter = EventFilter {
        workspace,
        event_types: vec![MessageAccepted::TYPE.into()],
        parts: FOLDED_PARTS,
        ..EventFilter::default()
    };
    let from = from.max(Position(1));
    if until < from {
        return Ok(());
    }
    let mut page = log.read(from, Some(until), &filter, page_size).await?;
    loop {
        let next = page.next;
        progress(next.0.saturating_sub(1).min(until.0), until.0);
        if next > until {
            fold.apply(&page.events);
            return Ok(());
        }
        // The next page is read while this one is folded: the read's query
        // runs in the database (or its driver's thread) meanwhile.
        let (following, ()) =
            futures::future::join(log.read(next, Some(until), &filter, page_size), async { fold.apply(&page.events) })
                .await;
        page = following?;
    }
}

/// What a build produced: the generation, the fold it holds and the
/// position it reached.
#[derive(Debug)]
pub struct Built {
    /// The generation written.
    pub generation: Generation,
    /// The fold, ready to follow on.
    pub fold: ProfilesFold,
    /// Every event up to here is in it, but for the workspaces being
    /// re-derived in `refolds`.
    pub checkpoint: Position,
    /// Workspaces being re-derived under a new operator fact.
    refolds: Refolds,
    /// Which profiles the fold keeps in memory, and how much they take.
    cache: Cache,
}

impl Built {
    /// How many live profiles the fold holds in memory now.
    pub fn cached_profiles(&self) -> usize {
        self.fold.profiles.loaded()
    }
}

/// The profiles a fold keeps in memory: each one's rough size and when it
/// was last used, to drop the least recently used ones when over budget.
#[derive(Debug, Default)]
struct Cache {
    budget: usize,
    /// Counts commits: a profile's last use is the commit it was touched or
    /// loaded in.
    tick: u64,
    used: HashMap<(WorkspaceId, ProfileId), (usize, u64)>,
    total: usize,
}

impl Cache {
    fn new(budget: usize) -> Cache {
        Cache { budget, ..Cache::default() }
    }

    fn touch(&mut self, fold: &ProfilesFold, workspace: WorkspaceId, profile: ProfileId) {
        let bytes = fold.profiles.approximate_bytes(workspace, profile);
        let before = self.used.insert((workspace, profile), (bytes, self.tick)).map_or(0, |(bytes, _)| bytes);
        self.total = self.total + bytes - before;
    }

    /// Whether `changed` profiles, not yet written, take an eighth of the
    /// budget (each as large as the average profile held): a build writes
    /// them then.
    fn holds_enough(&self, changed: usize) -> bool {
        let average = self.total.checked_div(self.used.len()).unwrap_or(UNMEASURED_PROFILE_BYTES).max(1);
        changed.saturating_mul(average) >= self.budget / 8
    }

    fn forget(&mut self, workspace: WorkspaceId, profile: ProfileId) {
        if let Some((bytes, _)) = self.used.remove(&(workspace, profile)) {
            self.total -= bytes;
        }
    }

    /// Counts every profile of `workspace` in memory afresh (after it was
    /// replaced whole).
    fn recount(&mut self, fold: &ProfilesFold, workspace: WorkspaceId) {
        let gone: Vec<_> = self.used.keys().filter(|(ws, _)| *ws == workspace).copied().collect();
        for (ws, profile) in gone {
            self.forget(ws, profile);
        }
        for (ws, profile) in fold.live_profiles(workspace) {
            self.touch(fold, ws, profile);
        }
    }

    /// Drops the least recently used profiles from `fold` until the cache
    /// is within three quarters of its budget, when it is over it; with
    /// [`Spare::Newest`], none touched since the last shrink.
    fn shrink(&mut self, fold: &mut ProfilesFold, spare: Spare) {
        let newest = self.tick;
        self.tick += 1;
        if self.total <= self.budget {
            return;
        }
        let mut by_age: Vec<(u64, WorkspaceId, ProfileId)> = self
            .used
            .iter()
            .filter(|&(_, &(_, tick))| spare == Spare::Nothing || tick < newest)
            .map(|(&(ws, profile), &(_, tick))| (tick, ws, profile))
            .collect();
        by_age.sort_unstable();
        let target = self.budget / 4 * 3;
        for (_, workspace, profile) in by_age {
            if self.total <= target {
                break;
            }
            fold.profiles.evict(workspace, profile);
            self.forget(workspace, profile);
        }
    }
}

/// Which profiles a shrink of the cache must keep whatever their age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spare {
    /// None: every commit has landed.
    Nothing,
    /// Those touched since the last shrink: their commit is still under way,
    /// and a read of the store would find them as they were before it.
    Newest,
}

/// The collection of the marker a workspace's documents carry while it is
/// being re-derived: they are stale, and a restart must replace them.
pub const REFOLD_DOCS: &str = "refold";
/// The key of that marker.
pub const REFOLD_MARKER: &str = "pending";

/// A workspace's history re-derived under its facts up to a position, into
/// a generation of its own ([`PROFILES_REFOLD`]).
type Refolding = futures::future::BoxFuture<'static, Result<Built, StoreError>>;

/// Workspaces being re-derived under a new operator fact, one at a time, in
/// the background of the follow loop: their events are left to the
/// re-derivation while every other workspace follows on.
#[derive(Default)]
struct Refolds {
    /// The one being re-derived: workspace, the fact's position, the work.
    active: Option<(WorkspaceId, Position, Refolding)>,
    /// Those waiting, each with its latest fact's position.
    queued: Vec<(WorkspaceId, Position)>,
}

impl std::fmt::Debug for Refolds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refolds")
            .field("active", &self.active.as_ref().map(|(workspace, at, _)| (workspace, at)))
            .field("queued", &self.queued)
            .finish()
    }
}

impl Refolds {
    /// Whether `workspace`'s events are left to a re-derivation.
    fn covers(&self, workspace: WorkspaceId) -> bool {
        self.active.as_ref().is_some_and(|(active, _, _)| *active == workspace)
            || self.queued.iter().any(|(queued, _)| *queued == workspace)
    }

    /// Asks for `workspace` to be re-derived under its facts up to `at`: a
    /// re-derivation under older facts is dropped and queued again.
    fn request(&mut self, workspace: WorkspaceId, at: Position) {
        if self.active.as_ref().is_some_and(|(active, _, _)| *active == workspace) {
            self.active = None;
        }
        match self.queued.iter_mut().find(|(queued, _)| *queued == workspace) {
            Some(queued) => queued.1 = at,
            None => self.queued.push((workspace, at)),
        }
    }
}

/// Drives the profiles projection over two ports.
#[derive(Clone)]
pub struct Runner {
    log: Arc<dyn EventStore>,
    store: Arc<dyn ProjectionStore>,
    page: usize,
    on_quarantine: Option<OnQuarantine>,
    suppression: Option<SuppressionHasher>,
    cache_bytes: usize,
    /// The most profiles a fold of this runner held in memory at once.
    most_held: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner reading `log` and writing `store`.
    pub fn new(log: Arc<dyn EventStore>, store: Arc<dyn ProjectionStore>) -> Runner {
        Runner {
            log,
            store,
            page: REBUILD_PAGE,
            on_quarantine: None,
            suppression: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            most_held: Arc::default(),
        }
    }

    /// The most profiles any fold of this runner (the live one, a build's,
    /// a re-derivation's) held in memory at once, before its cache shrank:
    /// what the cache budget bounds.
    pub fn most_profiles_held(&self) -> usize {
        self.most_held.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_held(&self, fold: &ProfilesFold) {
        self.most_held.fetch_max(fold.profiles.loaded(), std::sync::atomic::Ordering::Relaxed);
    }

    /// This runner keeping at most about `bytes` of profiles in memory
    /// (0 keeps none between batches; the result does not depend on it).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Runner {
        self.cache_bytes = bytes;
        self
    }

    /// Reads into `built`'s fold the stored documents of every profile the
    /// events of `batch` it will fold may name and it does not hold: then
    /// folding the batch gives what folding it over every profile would.
    async fn prefetch(&self, built: &mut Built, batch: &[RecordedEvent]) -> Result<(), StoreError> {
        let mut wanted: HashMap<WorkspaceId, BTreeSet<String>> = HashMap::new();
        for event in batch {
            if event.event_type != MessageAccepted::TYPE || built.refolds.covers(event.workspace_id) {
                continue;
            }
            for identifier in built.fold.profiles.candidates(event) {
                if !built.fold.profiles.holds(event.workspace_id, &identifier) {
                    wanted.entry(event.workspace_id).or_default().insert(identifier_key(&identifier));
                }
            }
        }
        let generation = built.generation.id;
        for (workspace, keys) in wanted {
            let keys: Vec<String> = keys.into_iter().collect();
            let holders: BTreeSet<ProfileId> = self
                .store
                .get(generation, workspace, IDENTIFIER_DOCS, &keys)
                .await?
                .into_iter()
                .flatten()
                .filter_map(|id| std::str::from_utf8(&id).ok().and_then(|id| uuid::Uuid::parse_str(id).ok()))
                .map(ProfileId)
                .filter(|profile| !built.fold.profiles.is_loaded(workspace, *profile))
                .collect();
            if holders.is_empty() {
                continue;
            }
            let ids: Vec<String> = holders.iter().map(ToString::to_string).collect();
            for doc in self.store.get(generation, workspace, PROFILE_DOCS, &ids).await?.into_iter().flatten() {
                let doc: ProfileDoc = serde_json::from_slice(&doc)
                    .map_err(|err| StoreError::Database(format!("a stored profile document does not decode: {err}")))?;
                let profile = doc.id;
                built.fold.profiles.load(workspace, doc);
                built.cache.touch(&built.fold, workspace, profile);
            }
        }
        Ok(())
    }

    /// This runner leaving erased people's identifiers out of every profile
    /// ([`ProfilesFold::suppressing`]).
    pub fn with_suppression(mut self, hasher: SuppressionHasher) -> Runner {
        self.suppression = Some(hasher);
        self
    }

    /// This runner telling `on_quarantine` of every event it newly
    /// quarantines.
    pub fn with_quarantine_observer(mut self, on_quarantine: OnQuarantine) -> Runner {
        self.on_quarantine = Some(on_quarantine);
        self
    }

    /// Records what `fold` left out, before a commit moves past it: a crash
    /// in between records it again, as a duplicate.
    async fn record_quarantined(&self, fold: &mut ProfilesFold) -> Result<(), StoreError> {
        let records = fold.take_quarantined();
        if records.is_empty() {
            return Ok(());
        }
        for (workspace, record) in record_quarantined(self.log.as_ref(), records).await? {
            if let Some(observer) = &self.on_quarantine {
                observer(workspace, &record);
            }
        }
        Ok(())
    }

    /// This runner reading `page` events at a time when it builds or
    /// catches up (the result does not depend on it).
    pub fn with_page_size(mut self, page: usize) -> Runner {
        self.page = page.max(1);
        self
    }

    /// Builds a new generation from position 0 up to the log's head, beside
    /// the live one, without promoting it, in the cache's bounded memory:
    /// page by page, with a commit whenever the profiles changed since the
    /// last one take an eighth of the cache's budget, and at the end.
    pub async fn build(&self, progress: Progress<'_>) -> Result<Built, StoreError> {
        let head = self.log.head().await?;
        let facts = read_facts(self.log.as_ref(), head).await?;
        let fold = ProfilesFold::suppressing(&facts, self.suppression.clone());
        let generation = self.store.create_generation(PROFILES, PROFILES_VERSION).await?;
        let mut built = Built {
            generation,
            fold,
            checkpoint: Position::START,
            refolds: Refolds::default(),
            cache: Cache::new(self.cache_bytes),
        };
        // Every fact up to the head is in the fold's facts already: only
        // the messages are read.
        let filter = EventFilter {
            event_types: vec![MessageAccepted::TYPE.into()],
            parts: FOLDED_PARTS,
            ..EventFilter::default()
        };
        progress(0, head.0);
        let mut pages = self.log.clone().read_ahead(Position(1), head, filter, self.page);
        let mut next = pages.next_page().await?;
        // The commit of the pages before, still being written.
        let mut landing: Option<Landing> = None;
        let mut folded = Position::START;
        while let Some(page) = next.take() {
            let end = Position(page.next.0 - 1).min(head);
            // The next page is read while this one is folded, and this one
            // is folded while the ones before are written.
            let following = pages.next_page();
            let this = async {
                self.prefetch(&mut built, &page.events).await?;
                built.fold.apply(&page.events);
                folded = end;
                // Written back: the profiles the pages changed stay in the
                // cache, unwritten, until they take an eighth of its budget. A
                // profile changed again and again is written once, not once
                // a page.
                if built.cache.holds_enough(built.fold.profiles.changed()) {
                    if let Some(before) = landing.take() {
                        before.await.map_err(fenced_as_store)?;
                    }
                    landing = Some(self.start_commit(&mut built, end).await.map_err(fenced_as_store)?);
                }
                Ok::<(), StoreError>(())
            };
            let (following, this) = futures::future::join(following, this).await;
            this?;
            progress(end.0, head.0);
            next = following?;
        }
        if let Some(last) = landing {
            last.await.map_err(fenced_as_store)?;
        }
        if built.checkpoint < folded {
            self.commit_with(&mut built, folded, Vec::new()).await.map_err(fenced_as_store)?;
        }
        Ok(built)
    }

    /// Builds a new generation (see [`Runner::build`]), catches it up to the
    /// head once more, and promotes it.
    pub async fn rebuild(&self, progress: Progress<'_>) -> Result<Built, StoreError> {
        let mut built = self.build(progress).await?;
        // Events committed while it was built.
        self.catch_up(&mut built, self.page).await?;
        self.store.promote(built.generation.id).await?;
        built.generation.live = true;
        // A runner following the old generation may have committed events
        // to it after the last look at the head above; the promotion cut it
        // off (its next commit is fenced), so fold those here. If it has
        // already moved on to this generation, it is the one keeping it.
        match self.try_catch_up(&mut built, self.page).await {
            Ok(()) | Err(ProjectionError::Fenced { .. }) => Ok(built),
            Err(ProjectionError::Store(err)) => Err(err),
        }
    }

    /// Folds and commits everything after `built.checkpoint` up to the
    /// log's head, `page` events read at a time and written back (see
    /// [`Runner::fold_to_head`]), operator facts included (see
    /// [`Runner::fold_batch`]), then finishes every re-derivation they
    /// asked for.
    pub async fn catch_up(&self, built: &mut Built, page: usize) -> Result<(), StoreError> {
        self.try_catch_up(built, page).await.map_err(fenced_as_store)
    }

    async fn try_catch_up(&self, built: &mut Built, page: usize) -> Result<(), ProjectionError> {
        loop {
            self.fold_to_head(built, page, &|_| {}).await?;
            self.start_refold(built);
            let Some((_, _, work)) = built.refolds.active.as_mut() else { return Ok(()) };
            let fresh = work.await?;
            self.finish_refold(built, fresh).await?;
        }
    }

    /// Folds everything after `built.checkpoint` up to the log's head, read
    /// ahead `page` events at a time (the next pages are read while one is
    /// folded), and written back as a build writes: the profiles changed
    /// stay unwritten until they take an eighth of the cache's budget, or
    /// until an operator fact's marker must be committed with the
    /// checkpoint that passes the fact, and at the head. The
    /// re-derivations the facts ask for are queued, not run.
    /// `on_checkpoint` is told of every commit.
    async fn fold_to_head(
        &self,
        built: &mut Built,
        page: usize,
        on_checkpoint: &(dyn Fn(Position) + Send + Sync),
    ) -> Result<(), ProjectionError> {
        let head = self.log.head().await?;
        let mut pages = self.log.clone().read_ahead(built.checkpoint.next(), head, followed_filter(), page);
        let mut folded = built.checkpoint;
        while let Some(read) = pages.next_page().await? {
            let end = Position(read.next.0 - 1).min(head);
            let markers = self.fold_batch(built, &read.events).await?;
            folded = end;
            if !markers.is_empty() || built.cache.holds_enough(built.fold.profiles.changed()) {
                self.commit_with(built, end, markers).await?;
                on_checkpoint(end);
            }
        }
        if built.checkpoint < folded {
            self.commit_with(built, folded, Vec::new()).await?;
            on_checkpoint(folded);
        }
        Ok(())
    }

    /// Folds and commits one batch of followed events that reaches `end`
    /// (see [`Runner::fold_batch`]).
    async fn apply_batch(
        &self,
        built: &mut Built,
        batch: &[RecordedEvent],
        end: Position,
    ) -> Result<(), ProjectionError> {
        let markers = self.fold_batch(built, batch).await?;
        self.commit_with(built, end, markers).await
    }

    /// Folds one batch of followed events, and gives the markers to commit
    /// with the checkpoint that passes it. An operator fact asks for its
    /// workspace to be re-derived under it (in the background: see
    /// [`Refolds`]); until that is done, the workspace's events are left to
    /// the re-derivation and its documents carry a marker, committed with
    /// the checkpoint that passes the fact, so a restart replaces them.
    /// Other workspaces follow on meanwhile: one workspace's fact never
    /// holds up another's profiles.
    async fn fold_batch(&self, built: &mut Built, batch: &[RecordedEvent]) -> Result<Vec<DocWrite>, StoreError> {
        self.prefetch(built, batch).await?;
        let mut marked = Vec::new();
        for event in batch {
            // An operator fact that cannot be read changes nothing: the fold
            // quarantines it like any unreadable event.
            if event.event_type != MessageAccepted::TYPE && event.data.unreadable().is_none() {
                built.refolds.request(event.workspace_id, event.position);
                marked.push(event.workspace_id);
            } else if !built.refolds.covers(event.workspace_id) {
                built.fold.apply(std::slice::from_ref(event));
            }
        }
        let markers = marked.into_iter().map(|workspace| DocWrite::Put {
            workspace,
            collection: REFOLD_DOCS,
            key: REFOLD_MARKER.into(),
            doc: Vec::new(),
        });
        Ok(markers.collect())
    }

    /// Starts the next queued re-derivation when none is running.
    fn start_refold(&self, built: &mut Built) {
        if built.refolds.active.is_some() || built.refolds.queued.is_empty() {
            return;
        }
        let (workspace, at) = built.refolds.queued.remove(0);
        let runner = self.clone();
        let work = async move { runner.refold(workspace, at).await };
        built.refolds.active = Some((workspace, at, Box::pin(work)));
    }

    /// Re-derives `workspace` under its facts up to `at` into a generation
    /// of its own, page by page, each page one commit, in the cache's
    /// bounded memory (a second cache beside the live one): the way a
    /// rebuild builds, for one workspace. A re-derivation left behind (one
    /// dropped for a newer fact, or cut off by a crash) is dropped first;
    /// one runner follows the log at a time.
    async fn refold(&self, workspace: WorkspaceId, at: Position) -> Result<Built, StoreError> {
        for left in self.store.generations(PROFILES_REFOLD).await? {
            self.store.drop_generation(left.id).await?;
        }
        let facts = read_facts_of(self.log.as_ref(), Some(workspace), at).await?;
        let fold = ProfilesFold::suppressing(&facts, self.suppression.clone());
        let generation = self.store.create_generation(PROFILES_REFOLD, PROFILES_VERSION).await?;
        let mut scratch = Built {
            generation,
            fold,
            checkpoint: Position::START,
            refolds: Refolds::default(),
            cache: Cache::new(self.cache_bytes),
        };
        self.fold_workspace_into(&mut scratch, workspace, Position(1), at).await?;
        Ok(scratch)
    }

    /// Folds `workspace`'s messages from `from` through `to` into
    /// `scratch` and commits them to its generation, page by page.
    async fn fold_workspace_into(
        &self,
        scratch: &mut Built,
        workspace: WorkspaceId,
        from: Position,
        to: Position,
    ) -> Result<(), StoreError> {
        let filter = EventFilter {
            workspace: Some(workspace),
            event_types: vec![MessageAccepted::TYPE.into()],
            parts: FOLDED_PARTS,
            ..EventFilter::default()
        };
        let mut next = from.max(Position(1));
        while next <= to {
            let page = self.log.read(next, Some(to), &filter, self.page).await?;
            let end = Position(page.next.0 - 1).min(to);
            self.prefetch(scratch, &page.events).await?;
            scratch.fold.apply(&page.events);
            self.commit_with(scratch, end, Vec::new()).await.map_err(fenced_as_store)?;
            next = end.next();
        }
        Ok(())
    }

    /// Brings a finished re-derivation up to the checkpoint (the
    /// workspace's events after its fact, which the follow loop left to
    /// it), then the live generation adopts its documents in place of the
    /// workspace's (marker included) in one transaction, and the fold takes
    /// its cached profiles and facts.
    async fn finish_refold(&self, built: &mut Built, mut scratch: Built) -> Result<(), ProjectionError> {
        let (workspace, at, _) = built.refolds.active.take().expect("a re-derivation was running");
        self.fold_workspace_into(&mut scratch, workspace, at.next(), built.checkpoint).await?;
        self.store.adopt_workspace(built.generation.id, built.checkpoint, workspace, scratch.generation.id).await?;
        built.fold.profiles.replace_workspace(workspace, &mut scratch.fold.profiles);
        self.note_held(&built.fold);
        built.cache.recount(&built.fold, workspace);
        built.cache.shrink(&mut built.fold, Spare::Nothing);
        self.start_refold(built);
        Ok(())
    }

    /// At start, re-derives every workspace a re-derivation was under way
    /// for (its marker is there) under its facts up to the checkpoint, and
    /// replaces its documents, before following on.
    async fn finish_interrupted_refolds(
        &self,
        built: &mut Built,
        workspaces: impl Iterator<Item = WorkspaceId>,
    ) -> Result<(), ProjectionError> {
        for workspace in workspaces {
            let marker = self.store.get(built.generation.id, workspace, REFOLD_DOCS, &[REFOLD_MARKER.into()]).await?;
            if marker.first().is_some_and(Option::is_some) {
                built.refolds.request(workspace, built.checkpoint);
            }
        }
        loop {
            self.start_refold(built);
            let Some((_, _, work)) = built.refolds.active.as_mut() else { return Ok(()) };
            let fresh = work.await?;
            self.finish_refold(built, fresh).await?;
        }
    }

    /// Commits the fold's pending writes, and `extra`, with `checkpoint`.
    async fn commit_with(
        &self,
        built: &mut Built,
        checkpoint: Position,
        extra: Vec<DocWrite>,
    ) -> Result<(), ProjectionError> {
        let (pending, mut writes) = self.take_writes(built).await?;
        writes.extend(extra);
        self.store.commit(built.generation.id, built.checkpoint, checkpoint, writes).await?;
        self.advance(built, checkpoint, &pending, Spare::Nothing);
        Ok(())
    }

    /// Starts the commit of the fold's pending writes with `checkpoint`
    /// ([`ProjectionStore::start_commit`]), to be awaited before the next
    /// one starts. Until it has landed, the profiles it writes stay in
    /// memory: a fold of the next page reads none of them from the store.
    async fn start_commit(&self, built: &mut Built, checkpoint: Position) -> Result<Landing, ProjectionError> {
        let (pending, writes) = self.take_writes(built).await?;
        let landing = self.store.clone().start_commit(built.generation.id, built.checkpoint, checkpoint, writes);
        self.advance(built, checkpoint, &pending, Spare::Newest);
        Ok(landing)
    }

    /// Records what the fold left out, then takes its pending profiles and
    /// their writes.
    async fn take_writes(&self, built: &mut Built) -> Result<(Pending, Vec<DocWrite>), ProjectionError> {
        self.record_quarantined(&mut built.fold).await?;
        let pending = built.fold.take_pending();
        let writes = built.fold.writes(&pending.absorbed, &pending.touched, built.checkpoint);
        Ok((pending, writes))
    }

    /// Moves `built` to `checkpoint` once `pending`'s writes are committed
    /// (or under way), and keeps the cache within its budget.
    fn advance(&self, built: &mut Built, checkpoint: Position, pending: &Pending, spare: Spare) {
        built.checkpoint = checkpoint;
        built.generation.checkpoint = checkpoint;
        for &(workspace, profile) in &pending.absorbed {
            built.cache.forget(workspace, profile);
        }
        for &(workspace, profile) in &pending.touched {
            built.cache.touch(&built.fold, workspace, profile);
        }
        self.note_held(&built.fold);
        built.cache.shrink(&mut built.fold, spare);
    }

    /// Resumes the live generation at its checkpoint with an empty cache
    /// (finishing a workspace's interrupted re-derivation first), or builds
    /// and promotes one when there is none of this version.
    pub async fn start(&self, progress: Progress<'_>) -> Result<Built, StoreError> {
        match self.store.live(PROFILES).await? {
            Some(generation) if generation.version == PROFILES_VERSION => {
                let facts = read_facts(self.log.as_ref(), generation.checkpoint).await?;
                let fold = ProfilesFold::suppressing(&facts, self.suppression.clone());
                let mut built = Built {
                    checkpoint: generation.checkpoint,
                    generation,
                    fold,
                    refolds: Refolds::default(),
                    cache: Cache::new(self.cache_bytes),
                };
                self.finish_interrupted_refolds(&mut built, facts.keys().copied()).await.map_err(fenced_as_store)?;
                progress(built.checkpoint.0, built.checkpoint.0);
                Ok(built)
            }
            _ => self.rebuild(progress).await,
        }
    }

    /// Runs the projection until the log fails: start, then follow the log
    /// (re-deriving a workspace when one of its operator facts arrives),
    /// starting over when fenced. `on_checkpoint` is called after every
    /// commit.
    pub async fn run(&self, on_checkpoint: &(dyn Fn(Position) + Send + Sync)) -> Result<(), RunnerError> {
        let quiet = |_: u64, _: u64| {};
        let mut built = self.start(&quiet).await?;
        on_checkpoint(built.checkpoint);
        loop {
            // Up to the head as a build goes, however far behind (after a
            // stop, an import): read ahead, written back. Then batch by
            // batch, each one committed.
            match self.fold_to_head(&mut built, self.page, on_checkpoint).await {
                Ok(()) => {}
                Err(ProjectionError::Fenced { .. }) => {
                    self.start_over(&mut built, on_checkpoint).await?;
                    continue;
                }
                Err(ProjectionError::Store(err)) => return Err(err.into()),
            }
            let mut subscription = self.log.subscribe(built.checkpoint.next(), followed_filter()).await?;
            let fenced = loop {
                self.start_refold(&mut built);
                let step = match built.refolds.active.as_mut() {
                    None => Step::Batch(subscription.next_batch().await?),
                    // Waiting for a batch is cancel-safe: a subscription moves
                    // on only when it returns events.
                    Some((_, _, work)) => {
                        match futures::future::select(Box::pin(subscription.next_batch()), work.as_mut()).await {
                            futures::future::Either::Left((batch, _)) => Step::Batch(batch?),
                            futures::future::Either::Right((fresh, _)) => Step::Refolded(Box::new(fresh?)),
                        }
                    }
                };
                let (applied, events) = match step {
                    Step::Batch(batch) => (self.apply_beside_refold(&mut built, &batch).await, batch.len()),
                    Step::Refolded(fresh) => (self.finish_refold(&mut built, *fresh).await, 0),
                };
                match applied {
                    Ok(()) => on_checkpoint(built.checkpoint),
                    // Another process promoted a generation: load it.
                    Err(ProjectionError::Fenced { .. }) => break true,
                    Err(ProjectionError::Store(err)) => return Err(err.into()),
                }
                // Fallen far behind (an import, a burst from many clients),
                // with no re-derivation under way that the loop must poll:
                // up to the head as at a start, then batch by batch again.
                if events >= BEHIND_BATCH && built.refolds.active.is_none() {
                    let head = self.log.head().await?;
                    if head.0.saturating_sub(built.checkpoint.0) > self.page as u64 {
                        break false;
                    }
                }
            };
            if fenced {
                self.start_over(&mut built, on_checkpoint).await?;
            }
        }
    }

    /// Starts over after being fenced (another process promoted a
    /// generation): loads the live one. A re-derivation under way may hold
    /// a write to the store: it goes before the start writes.
    async fn start_over(
        &self,
        built: &mut Built,
        on_checkpoint: &(dyn Fn(Position) + Send + Sync),
    ) -> Result<(), StoreError> {
        built.refolds = Refolds::default();
        *built = self.start(&|_, _| {}).await?;
        on_checkpoint(built.checkpoint);
        Ok(())
    }

    /// Applies a followed batch while the re-derivation under way (if any)
    /// goes on: the two write to the same store, and a re-derivation left
    /// unpolled in the middle of a commit would hold the batch's commit up
    /// (on SQLite, until the store's busy timeout). The re-derivation is put
    /// back (finished or not) unless the batch asked for it again.
    async fn apply_beside_refold(&self, built: &mut Built, batch: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let end = batch.last().expect("a batch is never empty").position;
        let Some((workspace, at, slot)) = built.refolds.active.as_mut() else {
            return self.apply_batch(built, batch, end).await;
        };
        let running = (*workspace, *at);
        let mut work = std::mem::replace(slot, Box::pin(futures::future::pending()));
        let applied = {
            let apply = Box::pin(self.apply_batch(built, batch, end));
            match futures::future::select(apply, work.as_mut()).await {
                futures::future::Either::Left((applied, _)) => applied,
                futures::future::Either::Right((fresh, apply)) => {
                    work = Box::pin(futures::future::ready(fresh));
                    apply.await
                }
            }
        };
        if let Some((workspace, at, slot)) = built.refolds.active.as_mut()
            && (*workspace, *at) == running
        {
            *slot = work;
        }
        applied
    }
}

/// What the follow loop met next.
enum Step {
    /// Events to fold.
    Batch(Vec<RecordedEvent>),
    /// A workspace re-derived under a new fact.
    Refolded(Box<Built>),
}

fn fenced_as_store(err: ProjectionError) -> StoreError {
    match err {
        ProjectionError::Store(err) => err,
        fenced => StoreError::Database(fenced.to_string()),
    }
}
