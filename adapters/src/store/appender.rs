//! Group commit: the one task per process that writes the log.
//!
//! Append calls send their prepared batches here over a bounded channel (a
//! full channel makes callers wait: back-pressure). The task takes every batch
//! waiting, up to a limit, and commits them in one transaction:
//!
//! 1. lock the log head — this serializes appenders in every process, so
//!    positions are assigned in commit order and never leave gaps;
//! 2. catch the in-memory id index up with events other processes committed;
//! 3. decide each batch: duplicate, partly stored (refused), wrong stream
//!    version (refused), or new;
//! 4. seal the new events' payloads, chain their hashes, insert them, move the
//!    head, commit;
//! 5. only then answer every caller of the group.
//!
//! A refused batch does not affect the others in its group. If the
//! transaction fails, every batch of the group gets the error and nothing of
//! it is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use onepd_domain::{AppendError, AppendOutcome, EventId, ExpectedVersion, Position, StoreError, StreamId};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use super::backend::{AppendTx, Backend, Head, NewKeyRow, RowChunk, StoredRow};
use super::dedup::{IdIndex, UniformMap, as_stored, fingerprint};
use super::keys::KEY_CACHE_LIMIT;
use super::sealing::{MasterKey, SubjectKey};

/// The most events one group commit takes.
const MAX_GROUP_EVENTS: usize = 20_000;

/// An event ready to store, but for its position, hash and sealing.
#[derive(Clone)]
pub(crate) struct PreparedEvent {
    pub event_id: Uuid,
    pub workspace_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    /// The keyed hash of the event's subject, when its payload is to be sealed.
    pub subject_hash: Option<[u8; 32]>,
}

/// Where one new event of a group goes.
struct Slot {
    batch: usize,
    event: usize,
    position: u64,
    stream_version: u64,
}

/// Rows built and inserted at a time within a group commit.
const PIPELINE_CHUNK: usize = 1_000;

/// The channel an append call waits on.
pub(crate) type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

/// One append call waiting for its group.
pub(crate) struct PendingAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
    /// The lease the write is made under, checked in the group's
    /// transaction: refused when its node no longer holds it.
    pub fence: Option<Arc<crate::cluster::Fence>>,
    /// Where the answer goes; taken when the group is committed.
    pub reply: Option<Reply>,
}

/// What the appender task is asked to do.
pub(crate) enum Command {
    Append(PendingAppend),
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// What the group commit decided, before writing.
struct Plan {
    decisions: Vec<Decision>,
    /// Stream versions as of the end of the group.
    versions: HashMap<String, u64>,
    /// The position after the group's last new event.
    next_position: u64,
}

/// What was decided for one batch of a group before anything is written.
enum Decision {
    Refused(AppendError),
    Duplicate { positions: Vec<Position>, stream: String },
    New { first: u64, first_version: u64 },
}

/// The appender task's state.
pub(crate) struct Appender {
    pub backend: Arc<dyn Backend>,
    pub master: Option<MasterKey>,
    /// Loaded at the first append, so read-only tools never pay for it.
    pub index: Option<IdIndex>,
    /// The most ids the index holds before the older half moves to the database.
    recent_ids: usize,
    pub wake: watch::Sender<u64>,
    /// Sealing keys by subject hash, valid for `key_epoch`.
    seal_keys: UniformMap<[u8; 32], (Uuid, SubjectKey)>,
    key_epoch: i64,
    /// Stream versions as of the last commit, valid while no other process
    /// appends (a catch-up empties it).
    stream_versions: HashMap<String, u64>,
    /// Told whether the database answered the last group commit.
    availability: Arc<super::Availability>,
}

/// Streams whose versions are remembered between group commits.
const STREAM_CACHE_LIMIT: usize = 100_000;

impl Appender {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        master: Option<MasterKey>,
        wake: watch::Sender<u64>,
        availability: Arc<super::Availability>,
        recent_ids: usize,
    ) -> Appender {
        Appender {
            backend,
            master,
            index: None,
            recent_ids: recent_ids.max(2),
            wake,
            seal_keys: UniformMap::default(),
            key_epoch: -1,
            stream_versions: HashMap::new(),
            availability,
        }
    }

    fn master(&self) -> Result<&MasterKey, StoreError> {
        self.master.as_ref().ok_or_else(|| StoreError::Database("no master key configured to seal payloads".into()))
    }

    /// Runs until a `Close` command arrives or every sender is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.recv().await {
            let mut group = Vec::new();
            let mut events = 0;
            let mut close = None;
            match command {
                Command::Append(pending) => {
                    events += pending.events.len();
                    group.push(pending);
                }
                Command::Close(done) => close = Some(done),
            }
            while close.is_none() && events < MAX_GROUP_EVENTS {
                match commands.try_recv() {
                    Ok(Command::Append(pending)) => {
                        events += pending.events.len();
                        group.push(pending);
                    }
                    Ok(Command::Close(done)) => close = Some(done),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(group).await;
            }
            if let Some(done) = close {
                commands.close();
                while let Ok(command) = commands.try_recv() {
                    if let Command::Append(pending) = command
                        && let Some(reply) = pending.reply
                    {
                        let _ = reply.send(Err(AppendError::Store(StoreError::ShuttingDown)));
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }

    async fn commit_group(&mut self, mut group: Vec<PendingAppend>) {
        let started = Instant::now();
        // A database that hangs (cut off rather than refusing) must not hold
        // callers for the whole outage. A watchdog answers them "unavailable"
        // (nothing acknowledged) once the commit has taken too long, while the
        // commit itself runs on: dropping it mid-query would hand the pool a
        // connection in the middle of a transaction. Should it commit after
        // all, a retry of the same ids is a duplicate.
        let replies: Vec<Option<Reply>> = group.iter_mut().map(|pending| pending.reply.take()).collect();
        let replies = Arc::new(std::sync::Mutex::new(Some(replies)));
        // The id index loads once, at the first append, for as long as the
        // log's size takes: the watchdog starts only after it.
        let loaded = self.load_index().await;
        let watchdog = tokio::spawn({
            let (replies, availability) = (replies.clone(), self.availability.clone());
            async move {
                tokio::time::sleep(super::COMMIT_TIMEOUT).await;
                let waiting = replies.lock().expect("reply lock").take();
                if let Some(waiting) = waiting {
                    let reason = format!("the database did not commit within {} s", super::COMMIT_TIMEOUT.as_secs());
                    warn!(cause = %reason, "group commit is taking too long; its callers are told to retry");
                    availability.mark_down(&reason);
                    for reply in waiting.into_iter().flatten() {
                        let _ = reply.send(Err(AppendError::Store(StoreError::Unavailable(reason.clone()))));
                    }
                }
            }
        });
        let attempt = match loaded {
            Err(err) => Err(err),
            Ok(()) => self.try_commit(&group).await,
        };
        watchdog.abort();
        match &attempt {
            Err(StoreError::Unavailable(reason)) => self.availability.mark_down(reason),
            _ => self.availability.mark_up(),
        }
        let Some(replies) = replies.lock().expect("reply lock").take() else {
            // The watchdog answered already; caches may be behind what was
            // committed, which the next group's catch-up sees.
            self.stream_versions.clear();
            return;
        };
        match attempt {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                metrics::histogram!("onepd_append_group_seconds").record(started.elapsed().as_secs_f64());
                self.spill().await;
            }
            Err(err) => {
                warn!(cause = %err, batches = group.len(), "group commit failed");
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(AppendError::Store(err.clone())));
                }
            }
        }
    }

    async fn try_commit(
        &mut self,
        group: &[PendingAppend],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let mut tx = self.backend.begin().await?;
        let head = tx.lock_head().await?;
        self.catch_up(tx.as_mut(), &head).await?;
        let plan = self.decide(tx.as_mut(), group, &head).await?;
        if plan.next_position > head.position + 1 {
            self.write(tx, group, &plan, &head).await?;
        }
        // With nothing new the transaction is dropped, which rolls it back.
        Ok(outcomes(plan, group))
    }

    /// Loads the event id index, unless it is loaded already.
    async fn load_index(&mut self) -> Result<(), StoreError> {
        if self.index.is_none() {
            let started = Instant::now();
            let index = load_index(self.backend.as_ref(), self.recent_ids).await?;
            tracing::info!(events = index.len(), seconds = started.elapsed().as_secs_f64(), "event id index loaded");
            self.index = Some(index);
        }
        Ok(())
    }

    /// Brings the caches up to what the locked head says: drops sealing keys
    /// after a shred, indexes ids other processes appended.
    async fn catch_up(&mut self, tx: &mut dyn AppendTx, head: &Head) -> Result<(), StoreError> {
        let index = self.index.as_mut().expect("loaded before the transaction");
        if head.key_epoch != self.key_epoch {
            self.seal_keys.clear();
            self.key_epoch = head.key_epoch;
        }
        if head.position > index.indexed_up_to() {
            // Another process appended: its streams' versions are unknown here.
            self.stream_versions.clear();
            for (position, id) in tx.event_ids_after(index.indexed_up_to()).await? {
                index.insert(id, position);
            }
        }
        Ok(())
    }

    /// Decides every batch of the group before anything is written.
    async fn decide(
        &mut self,
        tx: &mut dyn AppendTx,
        group: &[PendingAppend],
        head: &Head,
    ) -> Result<Plan, StoreError> {
        let stored = self.stored_positions(tx, group).await?;
        // Each lease the group's writes are made under, checked once.
        let mut leases: HashMap<&crate::cluster::Fence, bool> = HashMap::new();
        for fence in group.iter().filter_map(|pending| pending.fence.as_deref()) {
            if !leases.contains_key(fence) {
                leases.insert(fence, tx.lease_held(fence).await?);
            }
        }

        let mut staged: UniformMap<Uuid, u64> = UniformMap::default();
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut next_position = head.position + 1;
        let mut decisions = Vec::with_capacity(group.len());
        for pending in group {
            if let Some(fence) = pending.fence.as_deref()
                && leases.get(fence) == Some(&false)
            {
                decisions.push(Decision::Refused(AppendError::Store(StoreError::LeaseLost(fence.lease.clone()))));
                continue;
            }
            let found: Vec<Option<u64>> = pending
                .events
                .iter()
                .map(|event| staged.get(&event.event_id).or_else(|| stored.get(&event.event_id)).copied())
                .collect();
            let stored = found.iter().filter(|p| p.is_some()).count();
            if stored == found.len() {
                // A duplicate reports the stream's version as of the end of the group.
                current_version(tx, &mut versions, &self.stream_versions, pending.stream.as_str()).await?;
                decisions.push(Decision::Duplicate {
                    positions: found.into_iter().map(|p| Position(p.unwrap_or_default())).collect(),
                    stream: pending.stream.as_str().to_owned(),
                });
                continue;
            }
            if stored > 0 {
                let ids = pending
                    .events
                    .iter()
                    .zip(&found)
                    .filter(|(_, p)| p.is_some())
                    .map(|(event, _)| EventId(event.event_id))
                    .collect();
                decisions.push(Decision::Refused(AppendError::PartiallyStored { total: found.len(), stored: ids }));
                continue;
            }
            let stream = pending.stream.as_str();
            let version = current_version(tx, &mut versions, &self.stream_versions, stream).await?;
            if !pending.expected.admits(version) {
                decisions.push(Decision::Refused(AppendError::WrongExpectedVersion {
                    stream: pending.stream.clone(),
                    expected: pending.expected,
                    found: version,
                }));
                continue;
            }
            let count = pending.events.len() as u64;
            versions.insert(stream.to_owned(), version + count);
            for (offset, event) in pending.events.iter().enumerate() {
                staged.insert(event.event_id, next_position + offset as u64);
            }
            decisions.push(Decision::New { first: next_position, first_version: version + 1 });
            next_position += count;
        }

        Ok(Plan { decisions, versions, next_position })
    }

    /// The position of every id of the group that is stored already: ids the
    /// index holds, then — when older ids are in the database — the others
    /// looked up in `event_fingerprints`. Every candidate is confirmed
    /// against the id stored at its position.
    async fn stored_positions(
        &self,
        tx: &mut dyn AppendTx,
        group: &[PendingAppend],
    ) -> Result<UniformMap<Uuid, u64>, StoreError> {
        let index = self.index.as_ref().expect("loaded before the transaction");
        let ids: Vec<Uuid> =
            group.iter().flat_map(|pending| pending.events.iter().map(|event| event.event_id)).collect();
        let held: Vec<(Uuid, u64)> =
            ids.iter().flat_map(|id| index.candidates(*id).map(move |position| (*id, position))).collect();
        let mut stored = confirmed(tx, &held).await?;
        if index.floor() == 0 {
            return Ok(stored);
        }
        let mut unknown: Vec<Uuid> = ids.into_iter().filter(|id| !stored.contains_key(id)).collect();
        unknown.sort_unstable();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(stored);
        }
        let mut fingerprints: Vec<i64> = unknown.iter().map(|id| as_stored(fingerprint(*id))).collect();
        fingerprints.sort_unstable();
        fingerprints.dedup();
        let mut older: UniformMap<i64, Vec<u64>> = UniformMap::default();
        for (fingerprint, position) in tx.fingerprinted(&fingerprints).await? {
            older.entry(fingerprint).or_default().push(position as u64);
        }
        let candidates: Vec<(Uuid, u64)> = unknown
            .iter()
            .flat_map(|id| {
                older.get(&as_stored(fingerprint(*id))).into_iter().flatten().map(move |position| (*id, *position))
            })
            .collect();
        stored.extend(confirmed(tx, &candidates).await?);
        Ok(stored)
    }

    /// Moves the oldest ids the index holds to the database once it holds
    /// more than `recent_ids`, keeping the newest half; in a transaction of
    /// its own, after the group's callers have their answers. Should it fail,
    /// the index keeps them and the next group tries again.
    async fn spill(&mut self) {
        let index = self.index.as_ref().expect("loaded before any commit");
        if index.len() <= self.recent_ids {
            return;
        }
        let up_to = index.indexed_up_to().saturating_sub((self.recent_ids / 2) as u64);
        let rows = index.up_to(up_to);
        let started = Instant::now();
        match self.backend.store_fingerprints(&rows, up_to).await {
            Ok(()) => {
                self.index.as_mut().expect("loaded").forget_up_to(up_to);
                debug!(ids = rows.len(), up_to, seconds = started.elapsed().as_secs_f64(), "older event ids stored");
            }
            Err(err) => warn!(cause = %err, ids = rows.len(), "storing older event ids failed; kept in memory"),
        }
    }

    /// Seals, hashes and inserts the group's new events, moves the head and
    /// commits; then updates the caches and wakes subscribers.
    async fn write(
        &mut self,
        mut tx: Box<dyn AppendTx>,
        group: &[PendingAppend],
        plan: &Plan,
        head: &Head,
    ) -> Result<(), StoreError> {
        let Plan { decisions, versions, next_position } = plan;
        let next_position = *next_position;
        let new_keys = self.resolve_keys(tx.as_mut(), group, decisions).await?;
        let recorded_at = now_micros().max(head.recorded_at);
        let slots: Vec<Slot> = group
            .iter()
            .zip(decisions)
            .enumerate()
            .filter_map(|(batch, (pending, decision))| match decision {
                Decision::New { first, first_version } => Some((batch, pending.events.len(), *first, *first_version)),
                _ => None,
            })
            .flat_map(|(batch, count, first, first_version)| {
                (0..count).map(move |offset| Slot {
                    batch,
                    event: offset,
                    position: first + offset as u64,
                    stream_version: first_version + offset as u64,
                })
            })
            .collect();

        if !slots.is_empty() {
            let key_rows: Vec<NewKeyRow> = new_keys.values().map(|(_, row)| row.clone()).collect();
            if !key_rows.is_empty() {
                tx.insert_subject_keys(&key_rows).await?;
            }
            // Sealing and hashing the next chunk overlaps with the database
            // writing the previous one.
            let mut previous = head.hash;
            let (chunk_sender, chunk_receiver) = mpsc::channel(2);
            let chunk_count = slots.len().div_ceil(PIPELINE_CHUNK);
            let (inserted, ()) = tokio::join!(tx.insert_stream(chunk_receiver), async {
                for (n, chunk) in slots.chunks(PIPELINE_CHUNK).enumerate() {
                    let rows = self.build_rows(group, chunk, &new_keys, recorded_at, &mut previous);
                    if chunk_sender.send(RowChunk { rows, last: n + 1 == chunk_count }).await.is_err() {
                        break; // The insert failed; its error is reported below.
                    }
                }
            });
            inserted?;
            let stored: Vec<(Uuid, u64)> =
                slots.iter().map(|slot| (group[slot.batch].events[slot.event].event_id, slot.position)).collect();
            let new_head = Head { position: next_position - 1, hash: previous, recorded_at, key_epoch: head.key_epoch };
            tx.set_head(&new_head).await?;
            tx.commit().await?;
            let index = self.index.as_mut().expect("loaded above");
            for (event_id, position) in &stored {
                index.insert(*event_id, *position);
            }
            if self.seal_keys.len() + new_keys.len() > KEY_CACHE_LIMIT {
                self.seal_keys.clear();
            }
            self.seal_keys.extend(new_keys.into_iter().map(|(hash, (key, _))| (hash, key)));
            if self.stream_versions.len() + versions.len() > STREAM_CACHE_LIMIT {
                self.stream_versions.clear();
            }
            self.stream_versions.extend(versions.iter().map(|(stream, version)| (stream.clone(), *version)));
            self.wake.send_if_modified(|seen| {
                let newer = new_head.position > *seen;
                *seen = (*seen).max(new_head.position);
                newer
            });
            metrics::counter!("onepd_events_appended_total").increment(stored.len() as u64);
            debug!(from = stored[0].1, to = new_head.position, batches = group.len(), "group committed");
        }
        Ok(())
    }

    /// The stored rows of `slots`: payloads sealed, hashes chained on from `previous`.
    fn build_rows(
        &self,
        group: &[PendingAppend],
        slots: &[Slot],
        new_keys: &HashMap<[u8; 32], ((Uuid, SubjectKey), NewKeyRow)>,
        recorded_at: i64,
        previous: &mut [u8; 32],
    ) -> Vec<StoredRow> {
        let mut rows = Vec::with_capacity(slots.len());
        for slot in slots {
            let pending = &group[slot.batch];
            let event = &pending.events[slot.event];
            let (key_id, data) = match &event.subject_hash {
                Some(hash) => {
                    let (key_id, key) = self
                        .seal_keys
                        .get(hash)
                        .or_else(|| new_keys.get(hash).map(|(key, _)| key))
                        .expect("every subject of the group has a key");
                    (Some(*key_id), key.seal(event.event_id, &event.data))
                }
                None => (None, event.data.clone()),
            };
            let mut row = StoredRow {
                position: slot.position,
                event_id: event.event_id,
                workspace_id: event.workspace_id,
                stream_id: pending.stream.as_str().to_owned(),
                stream_version: slot.stream_version,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                recorded_at,
                key_id,
                data,
                metadata: event.metadata.clone(),
                hash: [0; 32],
            };
            row.hash = row.as_stored().chain_hash(previous);
            *previous = row.hash;
            rows.push(row);
        }
        rows
    }

    /// Makes sure every subject of the group's new events has a sealing key:
    /// from the cache, from the database, or newly made. Returns the new ones,
    /// which are stored with the group and cached only once it commits.
    async fn resolve_keys(
        &mut self,
        tx: &mut dyn AppendTx,
        group: &[PendingAppend],
        decisions: &[Decision],
    ) -> Result<HashMap<[u8; 32], ((Uuid, SubjectKey), NewKeyRow)>, StoreError> {
        let mut missing: Vec<[u8; 32]> = Vec::new();
        for (pending, decision) in group.iter().zip(decisions) {
            if !matches!(decision, Decision::New { .. }) {
                continue;
            }
            for event in &pending.events {
                if let Some(hash) = event.subject_hash
                    && !self.seal_keys.contains_key(&hash)
                {
                    missing.push(hash);
                }
            }
        }
        let mut new_keys = HashMap::new();
        if missing.is_empty() {
            return Ok(new_keys);
        }
        missing.sort_unstable();
        missing.dedup();
        let master = self.master()?.clone();
        for row in tx.subject_keys(&missing).await? {
            let key = master.unwrap_subject_key(row.key_id, &row.wrapped).map_err(|_| StoreError::Corrupt {
                position: 0,
                reason: "a subject key does not unwrap with the configured master key".into(),
            })?;
            self.seal_keys.insert(row.subject_hash, (row.key_id, key));
        }
        let created_at = now_micros();
        for hash in missing {
            if self.seal_keys.contains_key(&hash) {
                continue;
            }
            let key_id = Uuid::now_v7();
            let (key, wrapped) = master.new_subject_key(key_id);
            new_keys.insert(hash, ((key_id, key), NewKeyRow { key_id, subject_hash: hash, wrapped, created_at }));
        }
        Ok(new_keys)
    }
}

/// The version of `stream` as the group sees it so far: from `versions` (the
/// group's own appends), else the cache of committed versions, else the
/// database; remembered in `versions`.
async fn current_version(
    tx: &mut dyn AppendTx,
    versions: &mut HashMap<String, u64>,
    committed: &HashMap<String, u64>,
    stream: &str,
) -> Result<u64, StoreError> {
    if let Some(version) = versions.get(stream) {
        return Ok(*version);
    }
    let version = match committed.get(stream) {
        Some(version) => *version,
        None => tx.stream_version(stream).await?,
    };
    versions.insert(stream.to_owned(), version);
    Ok(version)
}

/// What each caller of the group is told.
fn outcomes(plan: Plan, group: &[PendingAppend]) -> Vec<Result<AppendOutcome, AppendError>> {
    let Plan { decisions, versions, .. } = plan;
    decisions
        .into_iter()
        .zip(group)
        .map(|(decision, pending)| match decision {
            Decision::Refused(err) => Err(err),
            Decision::Duplicate { positions, stream } => Ok(AppendOutcome {
                positions,
                stream_version: versions.get(&stream).copied().unwrap_or_default(),
                duplicate: true,
            }),
            Decision::New { first, first_version } => {
                let count = pending.events.len() as u64;
                Ok(AppendOutcome {
                    positions: (first..first + count).map(Position).collect(),
                    stream_version: first_version + count - 1,
                    duplicate: false,
                })
            }
        })
        .collect()
}

/// `(id, position)` pairs whose position holds that id.
async fn confirmed(tx: &mut dyn AppendTx, candidates: &[(Uuid, u64)]) -> Result<UniformMap<Uuid, u64>, StoreError> {
    if candidates.is_empty() {
        return Ok(UniformMap::default());
    }
    let mut positions: Vec<u64> = candidates.iter().map(|(_, position)| *position).collect();
    positions.sort_unstable();
    positions.dedup();
    let stored_ids = tx.event_ids_at(&positions).await?;
    Ok(candidates.iter().filter(|(id, position)| stored_ids.get(position) == Some(id)).copied().collect())
}

/// Ids moved to the database at a time while loading a log whose older ids
/// are not there yet (a log written before the table existed).
const LOAD_SPILL: usize = 1_000_000;

/// Loads the ids after the database's fingerprint mark: the newest
/// `recent_ids / 2` into the index, any older ones into the database.
async fn load_index(backend: &dyn Backend, recent_ids: usize) -> Result<IdIndex, StoreError> {
    let mark = backend.fingerprints_up_to().await?;
    let head = backend.head().await?.position;
    let keep = (recent_ids / 2) as u64;
    let cut = head.saturating_sub(keep).max(mark);
    let held = usize::try_from(head - cut).unwrap_or(usize::MAX);
    let mut index = IdIndex::with_capacity(held.min(recent_ids.saturating_add(2 * MAX_GROUP_EVENTS)), cut);
    let mut older: Vec<(i64, i64)> = Vec::new();
    let mut after = mark;
    loop {
        let page = backend.event_ids_page(after, 100_000).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (position, id) in page {
            if position <= cut {
                older.push((as_stored(fingerprint(id)), position as i64));
            } else {
                index.insert(id, position);
            }
        }
        if older.len() >= LOAD_SPILL || (after >= cut && !older.is_empty()) {
            older.sort_unstable();
            let up_to = after.min(cut);
            backend.store_fingerprints(&older, up_to).await?;
            older.clear();
        }
    }
    Ok(index)
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default()
}
