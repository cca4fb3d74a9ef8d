//! The profile each event was attributed to, as that event found it, read
//! from the profiles read model: what a destination run enriches an event
//! with, without a fold of its own.
//!
//! A run reads the log in order. For a page of its events it waits until
//! the live read model has passed the page (and its workspace has no
//! re-derivation pending), reads the documents of the profiles the events
//! may name, and for each event takes the document whose timeline holds it:
//! the profile as of the event is that document's point-in-time answer
//! ([`ProfileDoc::as_of`]). Its traits and consent are the document's when
//! every one of them was set by the profile's events up to then
//! ([`PastProfile::read_off`]: a live event, or one after which nothing
//! set a trait); else they are folded from the profile's events up to
//! then. A snapshot per profile keeps that fold, so the next event of
//! the same profile folds only itself; a run that starts in the middle of
//! the log reads each profile's earlier events once. The answer is what a
//! fold of the log up to the event gives (within one build of the graph,
//! profiles only merge), so what a destination received can be recomputed
//! from the log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use onepd_domain::events::message::MessageAccepted;
use onepd_domain::identity::{Identifier, ProfileId};
use onepd_domain::{EventStore, Position, ProjectionStore, RecordedEvent, StoreError, WorkspaceId};
use onepd_projections::profile::{FOLDED_PARTS, Lookup, PastProfile, ProfileAsOf, ProfileDoc, Snapshot};
use onepd_projections::runner::{
    IDENTIFIER_DOCS, PROFILE_DOCS, PROFILES, REFOLD_DOCS, REFOLD_MARKER, followed_filter, identifier_key,
};

use crate::EventLog;

/// The memory the snapshots of every reader sharing a [`SnapshotBudget`]
/// may take, unless told otherwise.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 64 << 20;
/// Earlier events read at once for the profiles of the events whose
/// documents are read together ([`DOCUMENTS_AT_ONCE`]): a bound on what a
/// run holds beside its page, whatever the profiles' history (decoded
/// events take a few KB each, and every destination run holds its own).
pub const EARLIER_AT_ONCE: usize = 5_000;
/// Events whose profile documents are read and held at once, by default.
pub const DOCUMENTS_AT_ONCE: usize = 100;
/// The longest pause between two looks at the read model's checkpoint.
const MAX_WAIT_STEP: Duration = Duration::from_millis(200);

/// One memory budget for the snapshots of all the readers that share it
/// (every destination run of a process): each reader keeps at most an
/// equal share, so the process's memory does not grow with the number of
/// destinations.
#[derive(Debug, Clone)]
pub struct SnapshotBudget {
    inner: Arc<BudgetShares>,
}

#[derive(Debug)]
struct BudgetShares {
    bytes: usize,
    readers: AtomicUsize,
}

impl SnapshotBudget {
    /// A budget of `bytes` for all its readers together.
    pub fn new(bytes: usize) -> SnapshotBudget {
        SnapshotBudget { inner: Arc::new(BudgetShares { bytes, readers: AtomicUsize::new(0) }) }
    }

    /// What one reader may keep now: an equal share among the readers.
    fn share(&self) -> usize {
        self.inner.bytes / self.inner.readers.load(Ordering::Relaxed).max(1)
    }
}

impl Default for SnapshotBudget {
    fn default() -> SnapshotBudget {
        SnapshotBudget::new(DEFAULT_SNAPSHOT_BYTES)
    }
}

/// How the read side's cache budget (`--read-cache-mb`) is spent: three
/// quarters on the profiles projection's cache, one quarter on the
/// snapshots every destination run of the process shares.
pub fn split_read_cache(bytes: usize) -> (usize, SnapshotBudget) {
    (bytes / 4 * 3, SnapshotBudget::new(bytes / 4))
}

/// One generation of a reader's snapshots, with the bytes they take.
#[derive(Default)]
struct Generation {
    snapshots: HashMap<ProfileId, (Snapshot, usize)>,
    bytes: usize,
}

impl Generation {
    fn get(&self, id: ProfileId) -> Option<&Snapshot> {
        self.snapshots.get(&id).map(|(snapshot, _)| snapshot)
    }

    fn remove(&mut self, id: ProfileId) -> Option<Snapshot> {
        let (snapshot, bytes) = self.snapshots.remove(&id)?;
        self.bytes -= bytes;
        Some(snapshot)
    }

    fn insert(&mut self, snapshot: Snapshot) {
        let bytes = snapshot.approximate_bytes();
        self.bytes += bytes;
        self.snapshots.insert(snapshot.id(), (snapshot, bytes));
    }

    fn len(&self) -> usize {
        self.snapshots.len()
    }
}

/// Reads profiles as of events for one reader of the log.
pub struct AsOfReader {
    store: Arc<dyn ProjectionStore>,
    log: EventLog,
    /// How long to wait for the read model, when not for ever.
    patience: Option<Duration>,
    budget: SnapshotBudget,
    /// Snapshots in two generations: when the newer holds half the
    /// reader's share, the older is dropped and the newer takes its place,
    /// so the profiles used recently stay.
    recent: Generation,
    older: Generation,
    /// Events whose profile documents are read and held at once.
    documents_at_once: usize,
    /// Earlier events read and held at once.
    earlier_at_once: usize,
}

impl std::fmt::Debug for AsOfReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsOfReader").field("snapshots", &(self.recent.len() + self.older.len())).finish()
    }
}

impl Drop for AsOfReader {
    fn drop(&mut self) {
        self.budget.inner.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsOfReader {
    /// A reader over the profiles read model in `store` and the events of
    /// `log`, with a budget of its own for its snapshots.
    pub fn new(store: Arc<dyn ProjectionStore>, log: EventLog) -> AsOfReader {
        AsOfReader::sharing(store, log, SnapshotBudget::default())
    }

    /// A reader whose snapshots take a share of `budget`.
    pub fn sharing(store: Arc<dyn ProjectionStore>, log: EventLog, budget: SnapshotBudget) -> AsOfReader {
        budget.inner.readers.fetch_add(1, Ordering::Relaxed);
        AsOfReader {
            store,
            log,
            patience: None,
            budget,
            recent: Generation::default(),
            older: Generation::default(),
            documents_at_once: DOCUMENTS_AT_ONCE,
            earlier_at_once: EARLIER_AT_ONCE,
        }
    }

    /// This reader reading the profile documents of `at_once` events at a
    /// time (at least one) instead of [`DOCUMENTS_AT_ONCE`].
    pub fn reading_documents(mut self, at_once: usize) -> AsOfReader {
        self.documents_at_once = at_once.max(1);
        self
    }

    /// This reader reading at most `at_once` earlier events at a time (at
    /// least one) instead of [`EARLIER_AT_ONCE`].
    pub fn reading_earlier(mut self, at_once: usize) -> AsOfReader {
        self.earlier_at_once = at_once.max(1);
        self
    }

    /// This reader giving up after `patience` when the read model has not
    /// reached an event (a command run beside a server that is not running).
    pub fn with_patience(mut self, patience: Duration) -> AsOfReader {
        self.patience = Some(patience);
        self
    }

    /// Waits until the live profiles read model reflects every event of
    /// `workspace` up to `through`; returns its generation. The read model's
    /// checkpoint moves only with the events it follows (messages and
    /// operator facts), so it has reached `through` also when no such event
    /// lies between its checkpoint and `through` (the log may end in a
    /// destination's ledger record, a key issued, a plan set …).
    pub async fn wait_for(&self, workspace: WorkspaceId, through: Position) -> Result<u64, StoreError> {
        let mut step = Duration::from_millis(5);
        let started = std::time::Instant::now();
        let followed = followed_filter();
        // A followed event past the checkpoint, once seen: the log is not
        // read again until the checkpoint has passed it.
        let mut unapplied: Option<Position> = None;
        loop {
            let live = self.store.live(PROFILES).await?;
            let reached = match &live {
                Some(generation) if generation.checkpoint >= through => true,
                Some(generation) if unapplied.is_some_and(|position| generation.checkpoint < position) => false,
                Some(generation) => {
                    let unread = self.log.read(generation.checkpoint.next(), Some(through), &followed, 1).await?;
                    unapplied = unread.events.first().map(|event| event.position);
                    unapplied.is_none()
                }
                None => false,
            };
            if let Some(generation) = &live
                && reached
            {
                let marker = self.store.get(generation.id, workspace, REFOLD_DOCS, &[REFOLD_MARKER.to_owned()]).await?;
                if !marker.first().is_some_and(Option::is_some) {
                    return Ok(generation.id);
                }
            }
            if self.patience.is_some_and(|patience| started.elapsed() >= patience) {
                let at = live.map_or(0, |generation| generation.checkpoint.0);
                return Err(StoreError::Unavailable(format!(
                    "the profiles read model has not reached position {} (it is at {at}); is onepd serve running? \
                     `onepd rebuild profiles` brings it up to date",
                    through.0
                )));
            }
            tokio::time::sleep(step).await;
            step = (step * 2).min(MAX_WAIT_STEP);
        }
    }

    /// The profile each of `events` (of `workspace`, in log order) was
    /// attributed to, as of that event; `None` for an event attributed to
    /// nobody. `candidates` gives the identifiers an event may name
    /// (`Profiles::candidates` under the workspace's rules).
    pub async fn profiles(
        &mut self,
        workspace: WorkspaceId,
        events: &[RecordedEvent],
        candidates: impl Fn(&RecordedEvent) -> Vec<Identifier>,
    ) -> Result<Vec<Option<ProfileAsOf>>, StoreError> {
        let is_message =
            |event: &&RecordedEvent| event.event_type == MessageAccepted::TYPE && event.data.value().is_some();
        let Some(last) = events.iter().rev().find(is_message) else { return Ok(vec![None; events.len()]) };
        let generation = self.wait_for(workspace, last.position).await?;
        // A profile document holds the profile's whole timeline, so it grows
        // with the profile's history: a page's documents are read a few at
        // a time, not all at once, or every run would hold a page of them.
        let mut found = Vec::with_capacity(events.len());
        for some in events.chunks(self.documents_at_once) {
            let messages: Vec<&RecordedEvent> = some.iter().filter(is_message).collect();
            found.extend(self.profiles_of(workspace, generation, events, some, messages, &candidates).await?);
        }
        Ok(found)
    }

    /// [`AsOfReader::profiles`] for `events`, part of `page` (whose events
    /// need not be read again), of which `messages` are the messages.
    async fn profiles_of(
        &mut self,
        workspace: WorkspaceId,
        generation: u64,
        page: &[RecordedEvent],
        events: &[RecordedEvent],
        messages: Vec<&RecordedEvent>,
        candidates: &impl Fn(&RecordedEvent) -> Vec<Identifier>,
    ) -> Result<Vec<Option<ProfileAsOf>>, StoreError> {
        if messages.is_empty() {
            return Ok(vec![None; events.len()]);
        }
        let named: Vec<Vec<String>> =
            messages.iter().map(|event| candidates(event).iter().map(identifier_key).collect()).collect();
        let keys: Vec<String> = named.iter().flatten().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let holders: HashMap<String, String> = keys
            .iter()
            .cloned()
            .zip(self.store.get(generation, workspace, IDENTIFIER_DOCS, &keys).await?)
            .filter_map(|(key, id)| Some((key, String::from_utf8(id?).ok()?)))
            .collect();
        let ids: Vec<String> = holders.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let mut docs: HashMap<String, ProfileDoc> = HashMap::new();
        for (id, doc) in ids.iter().zip(self.store.get(generation, workspace, PROFILE_DOCS, &ids).await?) {
            let Some(doc) = doc else { continue };
            let doc = serde_json::from_slice(&doc)
                .map_err(|err| StoreError::Database(format!("profiles read model: profile document: {err}")))?;
            docs.insert(id.clone(), doc);
        }
        // Each event's profile as of it, and the earlier events its
        // snapshot lacks: those outside this page are read in one go (a
        // run starting in the middle of the log meets many profiles whose
        // history it has not read).
        // Most are read off their document as it stands; only the others
        // fold their events.
        let mut found: HashMap<Position, ProfileAsOf> = HashMap::new();
        let mut pasts: Vec<(&RecordedEvent, PastProfile)> = Vec::new();
        for (event, keys) in messages.iter().zip(&named) {
            let Some((doc, member)) = keys
                .iter()
                .filter_map(|key| docs.get(holders.get(key)?))
                .find_map(|doc| Some((doc, doc.attributed_at(event.position)?)))
            else {
                continue;
            };
            let Some(past) = doc.as_of(event.position, &Lookup::Profile(member)) else { continue };
            match past.read_off(doc) {
                Ok(as_of) => {
                    found.insert(event.position, as_of);
                }
                Err(past) => pasts.push((event, past)),
            }
        }
        drop(docs);
        // At most `earlier_at_once` of them: a profile past that budget reads
        // its own history when its turn comes, as one with a merge does.
        let mut known: HashMap<Position, &RecordedEvent> = page.iter().map(|event| (event.position, event)).collect();
        let mut elsewhere: BTreeSet<Position> = BTreeSet::new();
        for (_, past) in &pasts {
            let lacking = past.missing(self.snapshot(past.id)).iter().filter(|position| !known.contains_key(position));
            let lacking: Vec<Position> = lacking.copied().collect();
            if elsewhere.len() + lacking.len() > self.earlier_at_once {
                break;
            }
            elsewhere.extend(lacking);
        }
        let elsewhere: Vec<Position> = elsewhere.into_iter().collect();
        // Earlier events are only folded: decoded in the parts the fold reads.
        let earlier = if elsewhere.is_empty() {
            Vec::new()
        } else {
            self.log.read_parts_at(workspace, &elsewhere, FOLDED_PARTS).await?
        };
        known.extend(earlier.iter().map(|event| (event.position, event)));
        for (event, past) in pasts {
            let snapshot = self.take(past.id);
            let missing = past.missing(snapshot.as_ref());
            let (as_of, snapshot) =
                match missing.iter().map(|position| known.get(position).copied()).collect::<Option<Vec<_>>>() {
                    Some(read) => past.advance(snapshot, read),
                    // A merge within the page, or past the budget: the
                    // profile's older events, a budget's worth at a time.
                    None => self.fold_earlier(workspace, past, snapshot).await?,
                };
            self.keep(snapshot);
            found.insert(event.position, as_of);
        }
        Ok(events.iter().map(|event| found.remove(&event.position)).collect())
    }

    /// `past` folded from `snapshot` and its missing events, read
    /// `earlier_at_once` at a time: a profile's history may be long.
    async fn fold_earlier(
        &self,
        workspace: WorkspaceId,
        past: PastProfile,
        mut snapshot: Option<Snapshot>,
    ) -> Result<(ProfileAsOf, Snapshot), StoreError> {
        loop {
            let missing = past.missing(snapshot.as_ref());
            let at_once = self.earlier_at_once;
            if missing.len() <= at_once {
                let read = self.log.read_parts_at(workspace, missing, FOLDED_PARTS).await?;
                return Ok(past.advance(snapshot, &read));
            }
            let read = self.log.read_parts_at(workspace, &missing[..at_once], FOLDED_PARTS).await?;
            let through = past.positions.len() - missing.len() + at_once;
            let part = PastProfile { positions: past.positions[..through].to_vec(), ..past.clone() };
            snapshot = Some(part.advance(snapshot, &read).1);
        }
    }

    fn snapshot(&self, id: ProfileId) -> Option<&Snapshot> {
        self.recent.get(id).or_else(|| self.older.get(id))
    }

    /// The memory its snapshots take (roughly): at most its share of the
    /// budget, and a snapshot more in each of its two generations.
    pub fn snapshot_bytes(&self) -> usize {
        self.recent.bytes + self.older.bytes
    }

    /// Takes the snapshot of `id` out, to advance it.
    fn take(&mut self, id: ProfileId) -> Option<Snapshot> {
        self.recent.remove(id).or_else(|| self.older.remove(id))
    }

    fn keep(&mut self, snapshot: Snapshot) {
        if self.recent.bytes >= self.budget.share() / 2 {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(snapshot);
    }
}
