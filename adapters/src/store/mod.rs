//! The event log on SQLite or PostgreSQL: [`EventLog`] implements the domain's
//! [`EventStore`] port over either backend.
//!
//! * [`backend`] — the two small traits a database implements, and the row type;
//! * [`sqlite`], [`postgres`] — the two databases;
//! * [`appender`] — group commit, idempotency, sealing and hash chaining;
//! * [`dedup`] — the in-memory event id index;
//! * [`sealing`], [`keys`] — subject keys and their caches;
//! * [`subscription`] — catch-up-then-live reading.

pub(crate) mod appender;
pub mod backend;
pub(crate) mod dedup;
pub(crate) mod keys;
pub mod postgres;
pub mod sealing;
pub mod sqlite;
mod sqlite_read;
pub mod subscription;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::chain::{ChainBreak, ChainWalker};
use onepd_domain::fields::Fields;
use onepd_domain::{
    AppendError, AppendOutcome, AppendRequest, EventFilter, EventId, EventStore, Pages, Payload, Position, ReadError,
    ReadPage, RecordedEvent, StoreError, StreamId, Subscription, Timestamp, Upcasters, VerifyReport, WorkspaceId,
};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use appender::{Appender, Command, PendingAppend, PreparedEvent};
use backend::{Backend, StoredRow};
use keys::{OpenKeys, ReadKeys};
use sealing::MasterKey;

/// Which database holds the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl BackendKind {
    /// The backend a database url names: `postgres://` and `postgresql://`
    /// are PostgreSQL, `sqlite:` is SQLite.
    pub fn of_url(url: &str) -> Option<BackendKind> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(BackendKind::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(BackendKind::Sqlite)
        } else {
            None
        }
    }
}

/// How to open an [`EventLog`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub database_url: String,
    /// Wraps every subject key. Without one, the log can be read and
    /// verified, but sealed payloads can be neither written nor opened.
    pub master_key: Option<MasterKey>,
    /// Lifts old schema versions on read.
    pub upcasters: Upcasters,
    /// How often an idle subscription looks for new events when no wake-up
    /// arrives (wake-ups come in-process, and from PostgreSQL's NOTIFY).
    pub poll_interval: Duration,
    /// The most event ids the appender keeps in memory for idempotency; the
    /// older half moves to the database whenever there are more.
    pub recent_ids: usize,
}

impl StoreConfig {
    /// A configuration with onepd's upcasters and a one-second poll.
    ///
    /// On PostgreSQL every id stays in memory by default (`recent_ids` is
    /// unbounded): with the older ids in the database, the lookups under the
    /// head lock made small appends from two processes at once about five
    /// times slower (measured; the cause is not found yet).
    pub fn new(database_url: impl Into<String>, master_key: Option<MasterKey>) -> StoreConfig {
        let database_url = database_url.into();
        let recent_ids =
            if BackendKind::of_url(&database_url) == Some(BackendKind::Postgres) { usize::MAX } else { RECENT_IDS };
        StoreConfig {
            database_url,
            master_key,
            upcasters: onepd_domain::events::upcasters(),
            poll_interval: Duration::from_secs(1),
            recent_ids,
        }
    }
}

/// The largest `data` or `metadata` one event may carry, as JSON text. Ingest
/// limits messages far below this; the store's own limit keeps one oversized
/// event from failing the group it is committed with.
const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// The most event ids an appender keeps in memory, by default on SQLite:
/// about 18 MB however long the log.
pub const RECENT_IDS: usize = 1 << 19;

/// How many append calls may wait for the appender before callers wait too.
const QUEUE_DEPTH: usize = 1_024;
/// Rows per page when walking the whole log.
const WALK_PAGE: usize = 5_000;

/// How long a group commit may take before its callers are told the
/// database is unavailable (nothing of it acknowledged; a retry with the same
/// ids is a duplicate if it committed after all). It bounds a caller's wait
/// when the database hangs rather than refusing connections.
pub(crate) const COMMIT_TIMEOUT: Duration = Duration::from_secs(8);
/// How often a caller waiting for its commit looks at whether the database
/// is known to be down.
const WAIT_STEP: Duration = Duration::from_millis(500);
/// While the database is unreachable, one append at a time, this long after
/// the last one ended, goes through to find out whether it is back; the
/// rest fail at once.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the last group commit found the database unreachable, shared by
/// the appender (which knows) and callers (which fail fast meanwhile).
#[derive(Default)]
pub(crate) struct Availability {
    /// Milliseconds since the Unix epoch at which the outage was noticed; 0
    /// while the database answers.
    down_since_ms: std::sync::atomic::AtomicU64,
    /// When the last probe append was let through, or when the last
    /// group commit ended, whichever is later.
    last_probe_ms: std::sync::atomic::AtomicU64,
    /// When the probe now in flight was let through; 0 when none is.
    probing_since_ms: std::sync::atomic::AtomicU64,
    /// The last failure's reason.
    reason: Mutex<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Availability {
    pub(crate) fn mark_down(&self, reason: &str) {
        let now = now_ms().max(1);
        let _ = self.down_since_ms.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        *self.reason.lock().expect("availability lock") = reason.to_owned();
        self.last_probe_ms.store(now, Ordering::SeqCst);
        self.probing_since_ms.store(0, Ordering::SeqCst);
    }

    pub(crate) fn mark_up(&self) {
        self.probing_since_ms.store(0, Ordering::SeqCst);
        if self.down_since_ms.swap(0, Ordering::SeqCst) != 0 {
            tracing::info!("the database answers again");
        }
    }

    /// `Some(reason)` while the database is known to be unreachable.
    fn down(&self) -> Option<String> {
        (self.down_since_ms.load(Ordering::SeqCst) != 0).then(|| self.reason.lock().expect("availability lock").clone())
    }

    /// Whether an append should fail at once: the database is down and a
    /// probe went through less than [`PROBE_INTERVAL`] ago.
    fn fail_fast(&self) -> Option<String> {
        let reason = self.down()?;
        let now = now_ms();
        // One probe at a time; one whose answer never came (its caller went
        // away before it reached the appender) expires.
        let probing = self.probing_since_ms.load(Ordering::SeqCst);
        let expired = (COMMIT_TIMEOUT + PROBE_INTERVAL).as_millis() as u64;
        if probing != 0 && now.saturating_sub(probing) < expired {
            return Some(reason);
        }
        let last = self.last_probe_ms.load(Ordering::SeqCst);
        if now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self.probing_since_ms.compare_exchange(probing, now, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            self.last_probe_ms.store(now, Ordering::SeqCst);
            return None; // this caller is the probe
        }
        Some(reason)
    }
}

/// The event log. Cheap to clone; every clone shares one appender task.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
    /// The lease every append of this handle is made under
    /// ([`EventLog::fenced`]).
    fence: Option<Arc<crate::cluster::Fence>>,
}

/// Pages at least this large are decoded on two threads.
const PARALLEL_DECODE_ROWS: usize = 1_000;

/// Reads a [`EventStore::read_ahead`] keeps under way at once.
const READS_AHEAD: usize = 2;

/// The pages of a read ahead: each a task decoding it, in log order.
struct ReadAhead {
    pages: mpsc::Receiver<tokio::task::JoinHandle<Result<ReadPage, ReadError>>>,
}

#[async_trait]
impl Pages for ReadAhead {
    async fn next_page(&mut self) -> Result<Option<ReadPage>, ReadError> {
        let Some(decoding) = self.pages.recv().await else { return Ok(None) };
        let page = decoding.await.map_err(|err| StoreError::Database(format!("decoding a page read ahead: {err}")))?;
        page.map(Some)
    }
}

struct Inner {
    backend: Arc<dyn Backend>,
    commands: mpsc::Sender<Command>,
    closed: AtomicBool,
    appender: Mutex<Option<tokio::task::JoinHandle<()>>>,
    master: Option<MasterKey>,
    open_keys: OpenKeys,
    upcasters: Upcasters,
    wake: watch::Sender<u64>,
    poll_interval: Duration,
    availability: Arc<Availability>,
}

impl EventLog {
    /// Appends `request` with one answer per event: its position and whether
    /// it was stored before. Unlike [`EventStore::append`], a batch of which
    /// only some events are stored is not refused: each event is then
    /// appended alone, so stored ones report their original positions and
    /// the rest are stored. (Ingest uses this: a client may resend part of an
    /// earlier batch.) Events are serialized once; only their bytes are kept
    /// for the rare split.
    pub async fn append_each(&self, request: AppendRequest) -> Result<Vec<(Position, bool)>, AppendError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AppendError::Store(StoreError::ShuttingDown));
        }
        let (stream, expected, events) = prepare(request, self.inner.master.as_ref())?;
        let kept = events.clone();
        match self.send(stream.clone(), expected, events).await {
            Ok(outcome) => Ok(outcome.positions.into_iter().map(|position| (position, outcome.duplicate)).collect()),
            Err(AppendError::PartiallyStored { .. }) => {
                let alone = kept.into_iter().map(|event| self.send(stream.clone(), expected, vec![event]));
                futures::future::join_all(alone)
                    .await
                    .into_iter()
                    .map(|outcome| outcome.map(|outcome| (outcome.positions[0], outcome.duplicate)))
                    .collect()
            }
            Err(err) => Err(err),
        }
    }

    /// Hands prepared events to the appender and waits for its answer.
    async fn send(
        &self,
        stream: StreamId,
        expected: onepd_domain::ExpectedVersion,
        events: Vec<PreparedEvent>,
    ) -> Result<AppendOutcome, AppendError> {
        if let Some(reason) = self.inner.availability.fail_fast() {
            return Err(AppendError::Store(StoreError::Unavailable(reason)));
        }
        let (reply, answer) = oneshot::channel();
        let pending = PendingAppend { stream, expected, events, fence: self.fence.clone(), reply: Some(reply) };
        self.inner
            .commands
            .send(Command::Append(pending))
            .await
            .map_err(|_| AppendError::Store(StoreError::ShuttingDown))?;
        // A dropped reply means the appender stopped before answering: the
        // batch was not acknowledged, and a retry with the same ids is safe.
        // While the database is known to be down, a caller (a probe queued
        // behind a commit that hangs) waits no longer than a commit may
        // take; under load alone it waits its turn.
        let mut answer = answer;
        let mut waited = std::time::Duration::ZERO;
        loop {
            match tokio::time::timeout(WAIT_STEP, &mut answer).await {
                Ok(answered) => return answered.map_err(|_| AppendError::Store(StoreError::ShuttingDown))?,
                Err(_) => {
                    waited += WAIT_STEP;
                    if waited >= COMMIT_TIMEOUT
                        && let Some(reason) = self.inner.availability.down()
                    {
                        return Err(AppendError::Store(StoreError::Unavailable(reason)));
                    }
                }
            }
        }
    }
}

impl EventLog {
    /// Opens the log named by `config.database_url`, bringing its schema up to
    /// date and loading the event id index, and starts its appender task.
    pub async fn open(config: StoreConfig) -> Result<EventLog, StoreError> {
        let kind = BackendKind::of_url(&config.database_url).ok_or_else(|| {
            StoreError::Database(format!(
                "database url: expected sqlite://PATH or postgres://…, found {:?}",
                config.database_url
            ))
        })?;
        let (wake, _) = watch::channel(0);
        let backend: Arc<dyn Backend> = match kind {
            BackendKind::Sqlite => Arc::new(sqlite::SqliteBackend::open(&config.database_url).await?),
            BackendKind::Postgres => {
                Arc::new(postgres::PostgresBackend::open(&config.database_url, wake.clone()).await?)
            }
        };
        if let Some(master) = &config.master_key {
            let recorded = backend.master_key_fingerprint(&master.fingerprint()).await?;
            if recorded != master.fingerprint() {
                backend.close().await;
                return Err(StoreError::Database(format!(
                    "master key: this database's subject keys are wrapped with the key whose fingerprint is {}, \
                     but the configured key's is {}; configure the master key this database was created with",
                    hex::encode(&recorded),
                    hex::encode(master.fingerprint())
                )));
            }
        }
        let head = backend.head().await?;
        wake.send_replace(head.position);
        tracing::info!(head = head.position, "event log opened");
        let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
        let availability = Arc::new(Availability::default());
        let appender = Appender::new(
            backend.clone(),
            config.master_key.clone(),
            wake.clone(),
            availability.clone(),
            config.recent_ids,
        );
        let task = tokio::spawn(appender.run(receiver));
        Ok(EventLog {
            inner: Arc::new(Inner {
                backend,
                commands,
                closed: AtomicBool::new(false),
                appender: Mutex::new(Some(task)),
                master: config.master_key,
                open_keys: OpenKeys::default(),
                upcasters: config.upcasters,
                wake,
                poll_interval: config.poll_interval,
                availability,
            }),
            fence: None,
        })
    }

    /// `Some(reason)` while the last append found the database unreachable
    /// (appends fail at once meanwhile, but for a probe each second).
    pub fn unavailable(&self) -> Option<String> {
        self.inner.availability.down()
    }

    /// The suppression hash (hex) of `identifier` in `workspace`: a hash
    /// keyed with the master key, so the suppression list in the log names
    /// no one to a reader without the key. Fails without a master key.
    pub fn suppression_hash(
        &self,
        workspace: WorkspaceId,
        identifier: &onepd_domain::identity::Identifier,
    ) -> Result<String, StoreError> {
        let master =
            self.inner.master.as_ref().ok_or_else(|| {
                StoreError::Database("no master key configured to hash suppressed identifiers".into())
            })?;
        let subject = onepd_domain::events::erasure::suppression_subject(identifier);
        Ok(hex::encode(master.suppression_hash(workspace.0, &subject)))
    }

    /// The suppression hash of any identifier, for readers that must leave
    /// erased people's identifiers out (`None` without a master key).
    pub fn suppression_hasher(&self) -> Option<onepd_projections::identity::SuppressionHasher> {
        self.inner.master.as_ref()?;
        let log = self.clone();
        Some(Arc::new(move |workspace, identifier| log.suppression_hash(workspace, identifier).ok()))
    }

    /// The keys `workspace`'s sensitive-data policy hashes with (the keyed
    /// `external_id`, the digests of unknown field names), derived from the
    /// master key; `None` without one.
    pub fn workspace_secrets(&self, workspace: WorkspaceId) -> Option<onepd_domain::policy::WorkspaceSecrets> {
        let master = self.inner.master.as_ref()?;
        Some(onepd_domain::policy::WorkspaceSecrets {
            external_id: master.derived("external_id", workspace.0),
            field_names: master.derived("field_names", workspace.0),
        })
    }

    /// Whether the log has a master key (needed to seal, open and shred).
    pub fn has_master_key(&self) -> bool {
        self.inner.master.is_some()
    }

    /// This log, with every append made under `fence`: each is checked in
    /// its commit's transaction and refused with [`StoreError::LeaseLost`]
    /// once the node no longer holds the lease.
    pub fn fenced(&self, fence: crate::cluster::Fence) -> EventLog {
        EventLog { inner: self.inner.clone(), fence: Some(Arc::new(fence)) }
    }

    /// The nodes and leases beside the log.
    pub fn cluster_db(&self) -> crate::cluster::ClusterDb {
        self.inner.backend.cluster_db()
    }

    /// Whether [`EventLog::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Stops taking appends, commits every append already queued, answers its
    /// caller, and closes the database connections. Appends after this fail
    /// with [`StoreError::ShuttingDown`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let (done, finished) = oneshot::channel();
        if self.inner.commands.send(Command::Close(done)).await.is_ok() {
            let _ = finished.await;
        }
        let task = self.inner.appender.lock().expect("appender handle lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.backend.close().await;
    }

    /// The rows exactly as stored, for tools that need the stored bytes
    /// (benchmarks, exports). Positions `from..=to`, up to `limit`.
    pub async fn stored_rows(&self, from: Position, to: Position, limit: usize) -> Result<Vec<StoredRow>, ReadError> {
        self.stored_rows_where(from, to, &EventFilter::default(), limit).await
    }

    /// The rows `filter` admits exactly as stored, neither opened nor
    /// decoded: positions `from..=to`, up to `limit` (what a benchmark
    /// measures as the database's own limit under a read of the same rows).
    pub async fn stored_rows_where(
        &self,
        from: Position,
        to: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredRow>, ReadError> {
        self.inner.backend.read_rows(from.0.max(1), to.0, filter, limit).await
    }

    /// The rows of positions `from..=to` (up to `limit`), each with its
    /// payload opened where `wanted` says so (exports): plaintext where the
    /// subject key exists, [`Opened::Shredded`] where it was destroyed.
    pub async fn opened_rows(
        &self,
        from: Position,
        to: Position,
        limit: usize,
        wanted: impl Fn(&StoredRow) -> bool,
    ) -> Result<Vec<(StoredRow, Opened)>, ReadError> {
        let head = self.inner.backend.head().await?;
        self.inner.open_keys.observe_epoch(head.key_epoch);
        let rows = self.inner.backend.read_rows(from.0.max(1), to.0, &EventFilter::default(), limit).await?;
        let sealed: HashSet<Uuid> = rows.iter().filter(|row| wanted(row)).filter_map(|row| row.key_id).collect();
        let keys = Arc::new(self.load_key_ids(sealed, head.key_epoch).await?);
        let open = move |(row, wanted): (StoredRow, bool)| {
            let opened = match row.key_id {
                None => Opened::Clear,
                Some(_) if !wanted => Opened::NotOpened,
                Some(key_id) => match keys.get(&key_id) {
                    Some(Some(key)) => match key.open(row.event_id, &row.data) {
                        Ok(plaintext) => Opened::Plaintext(plaintext),
                        Err(_) => Opened::Unopenable("sealed payload does not open with its subject key".into()),
                    },
                    Some(None) => Opened::Shredded,
                    None => Opened::Unopenable(format!("subject key {key_id} was not loaded")),
                },
            };
            (row, opened)
        };
        let mut rows: Vec<(StoredRow, bool)> = rows.into_iter().map(|row| (row, false)).collect();
        for (row, wanted_row) in &mut rows {
            *wanted_row = wanted(row);
        }
        // Opening is most of the cost: a big page is opened on two threads.
        if rows.len() < PARALLEL_DECODE_ROWS {
            return Ok(rows.into_iter().map(open).collect());
        }
        let second = rows.split_off(rows.len() / 2);
        let other_open = open.clone();
        let other = tokio::task::spawn_blocking(move || second.into_iter().map(other_open).collect::<Vec<_>>());
        let mut opened: Vec<(StoredRow, Opened)> = rows.into_iter().map(open).collect();
        opened.extend(other.await.map_err(|err| StoreError::Database(format!("opening events: {err}")))?);
        Ok(opened)
    }

    /// The position of the event with this id, if the log holds it (a scan
    /// of the position index: for one-off lookups such as `events show`).
    pub async fn position_of(&self, event_id: Uuid) -> Result<Option<Position>, ReadError> {
        Ok(self.inner.backend.position_of(event_id).await?.map(Position))
    }

    /// The chain hash of the event before `position` ([`GENESIS`] before
    /// the first).
    pub async fn hash_before(&self, position: Position) -> Result<[u8; 32], ReadError> {
        if position.0 <= 1 {
            return Ok(onepd_domain::chain::GENESIS);
        }
        let row = self.row_at(position.0 - 1).await?.ok_or_else(|| StoreError::Corrupt {
            position: position.0 - 1,
            reason: "the log has no event at this position".into(),
        })?;
        Ok(row.hash)
    }

    /// An HMAC-SHA256 of `bytes` under a key derived from the master key
    /// for `purpose`; `None` without a master key.
    pub fn sign(&self, purpose: &str, bytes: &[u8]) -> Option<[u8; 32]> {
        Some(self.inner.master.as_ref()?.mac(purpose, bytes))
    }

    /// How far a reader whose next position is `next` is behind the head:
    /// the positions from `next` to the head, or 0 when none of them is an
    /// event `filter` admits (rejections and configuration are no backlog
    /// for a reader of messages). The head is the database's, so commits of
    /// other processes count.
    pub async fn backlog(&self, next: Position, filter: &EventFilter) -> Result<u64, ReadError> {
        let head = EventStore::head(self).await?;
        if head < next || self.read(next, Some(head), filter, 1).await?.events.is_empty() {
            return Ok(0);
        }
        Ok(head.0 + 1 - next.0)
    }

    /// The events of `workspace` at `positions`, in log order; positions of
    /// other workspaces or past the head are left out.
    pub async fn read_at(
        &self,
        workspace: WorkspaceId,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.read_parts_at(workspace, positions, &[]).await
    }

    /// [`EventLog::read_at`], each payload decoded only in the `parts` its
    /// type names there ([`EventFilter::parts`]; empty: whole).
    pub async fn read_parts_at(
        &self,
        workspace: WorkspaceId,
        positions: &[Position],
        parts: &'static [(&'static str, Fields)],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let head = self.inner.backend.head().await?;
        self.inner.open_keys.observe_epoch(head.key_epoch);
        let positions: Vec<u64> = positions.iter().map(|position| position.0).collect();
        let rows = self.inner.backend.read_rows_at(workspace.0, &positions).await?;
        self.decode(rows, head.key_epoch, parts).await
    }

    /// A receiver that changes whenever a commit is known (this process's,
    /// or another's on PostgreSQL); its value is the highest position seen.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// The rows [`EventStore::read`] decodes: up to `limit` rows matching
    /// `filter` from `from` up to `until` (or the head), with the key epoch
    /// they were read under and the position after them; `None` when the
    /// range is empty.
    async fn fetch(
        &self,
        from: Position,
        until: Option<Position>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Option<(Vec<StoredRow>, i64, u64)>, ReadError> {
        let head = self.inner.backend.head().await?;
        self.inner.open_keys.observe_epoch(head.key_epoch);
        let from = from.0.max(1);
        let to = until.map_or(head.position, |until| until.0.min(head.position));
        if from > to || limit == 0 {
            return Ok(None);
        }
        let rows = self.inner.backend.read_rows(from, to, filter, limit).await?;
        let next = match rows.last() {
            Some(last) if rows.len() == limit => last.position + 1,
            _ => to + 1,
        };
        Ok(Some((rows, head.key_epoch, next)))
    }

    /// Decodes rows read under key epoch `epoch`.
    async fn decode(
        &self,
        mut rows: Vec<StoredRow>,
        epoch: i64,
        parts: &'static [(&'static str, Fields)],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let keys = self.load_keys(&rows, epoch).await?;
        // Parsing and opening payloads is most of a big read's cost (a
        // rebuild, an export): a large page is decoded on two threads.
        if rows.len() < PARALLEL_DECODE_ROWS {
            return rows.into_iter().map(|row| self.decode_row(row, &keys, parts)).collect();
        }
        let keys = Arc::new(keys);
        let second = rows.split_off(rows.len() / 2);
        let (log, shared) = (self.clone(), keys.clone());
        let other = tokio::task::spawn_blocking(move || {
            second.into_iter().map(|row| log.decode_row(row, &shared, parts)).collect::<Result<Vec<_>, _>>()
        });
        let mut events =
            rows.into_iter().map(|row| self.decode_row(row, &keys, parts)).collect::<Result<Vec<_>, _>>()?;
        let rest = other.await.map_err(|err| StoreError::Database(format!("decoding events: {err}")))??;
        events.extend(rest);
        Ok(events)
    }

    /// Decodes one stored row. A payload or metadata that cannot be decoded
    /// makes the event [`Payload::Unreadable`], never a failed read: one bad
    /// event must not stop every reader at its position.
    fn decode_row(
        &self,
        row: StoredRow,
        keys: &ReadKeys,
        parts: &[(&'static str, Fields)],
    ) -> Result<RecordedEvent, ReadError> {
        let fields = Fields::of(parts, &row.event_type);
        let corrupt = |reason: String| StoreError::Corrupt { position: row.position, reason };
        let plaintext = match row.key_id {
            None => Ok(Some(row.data)),
            // Only a key the database no longer holds means erased.
            Some(key_id) => match keys.get(&key_id) {
                Some(Some(key)) => key
                    .open(row.event_id, &row.data)
                    .map(Some)
                    .map_err(|_| "sealed payload does not open with its subject key".to_owned()),
                Some(None) => Ok(None),
                None => return Err(corrupt(format!("subject key {key_id} was not loaded"))),
            },
        };
        let upcasters = &self.inner.upcasters;
        // An upcaster lifts the whole payload; only the parts asked for
        // are kept of what it gives.
        let whole = fields == Fields::All || upcasters.lifts(&row.event_type, row.schema_version);
        let (schema_version, mut data) = match plaintext {
            Ok(Some(bytes)) if !whole => match fields.decode(&bytes) {
                Ok(value) => (row.schema_version, Payload::Data(value)),
                Err(err) => (row.schema_version, Payload::Unreadable(format!("payload: {err}"))),
            },
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(value) => match upcasters.upcast(&row.event_type, row.schema_version, value) {
                    Ok((version, value)) => (version, Payload::Data(fields.prune(value))),
                    Err(err) => (row.schema_version, Payload::Unreadable(err.to_string())),
                },
                Err(err) => (row.schema_version, Payload::Unreadable(format!("payload: {err}"))),
            },
            Ok(None) => (row.schema_version, Payload::Erased),
            Err(reason) => (row.schema_version, Payload::Unreadable(reason)),
        };
        let metadata = match serde_json::from_slice(&row.metadata) {
            Ok(metadata) => metadata,
            Err(err) => {
                data = Payload::Unreadable(format!("metadata: {err}"));
                serde_json::Value::Null
            }
        };
        let stream_id = StreamId::new(row.stream_id).map_err(|err| corrupt(err.to_string()))?;
        Ok(RecordedEvent {
            position: Position(row.position),
            event_id: EventId(row.event_id),
            workspace_id: WorkspaceId(row.workspace_id),
            stream_id,
            stream_version: row.stream_version,
            event_type: row.event_type,
            schema_version,
            data,
            metadata,
            sealed: row.key_id.is_some(),
            recorded_at: Timestamp(row.recorded_at),
            hash: row.hash,
        })
    }

    /// Every key the rows need, from the cache or the database; keys fetched
    /// are cached for `epoch`.
    async fn load_keys(&self, rows: &[StoredRow], epoch: i64) -> Result<ReadKeys, ReadError> {
        self.load_key_ids(rows.iter().filter_map(|row| row.key_id).collect(), epoch).await
    }

    /// The keys of `wanted`, from the cache or the database.
    async fn load_key_ids(&self, wanted: HashSet<Uuid>, epoch: i64) -> Result<ReadKeys, ReadError> {
        let mut keys = ReadKeys::new();
        if wanted.is_empty() {
            return Ok(keys);
        }
        let wanted = self.inner.open_keys.take_cached(wanted, &mut keys);
        if wanted.is_empty() {
            return Ok(keys);
        }
        let mut wrapped = self.inner.backend.wrapped_keys(&wanted).await?;
        for key_id in wanted {
            let key = match wrapped.remove(&key_id) {
                Some(bytes) => {
                    let master = self.inner.master.as_ref().ok_or_else(|| {
                        StoreError::Database("no master key configured to open sealed payloads".into())
                    })?;
                    Some(master.unwrap_subject_key(key_id, &bytes).map_err(|_| StoreError::Corrupt {
                        position: 0,
                        reason: format!("subject key {key_id} does not unwrap with the configured master key"),
                    })?)
                }
                None => None,
            };
            self.inner.open_keys.put(epoch, key_id, key.clone());
            keys.insert(key_id, key);
        }
        Ok(keys)
    }
}

fn prepare(
    request: AppendRequest,
    master: Option<&MasterKey>,
) -> Result<(StreamId, onepd_domain::ExpectedVersion, Vec<PreparedEvent>), AppendError> {
    if request.events.is_empty() {
        return Err(AppendError::InvalidBatch(format!(
            "stream {}: expected at least one event, found none",
            request.stream_id
        )));
    }
    let mut seen = HashSet::with_capacity(request.events.len());
    let mut events = Vec::with_capacity(request.events.len());
    for (index, event) in request.events.into_iter().enumerate() {
        if !seen.insert(event.event_id) {
            return Err(AppendError::InvalidBatch(format!(
                "events[{index}].event_id: {} appears twice in the batch",
                event.event_id
            )));
        }
        if event.event_type.is_empty() || event.event_type.len() > 200 || event.event_type.chars().any(char::is_control)
        {
            return Err(AppendError::InvalidBatch(format!(
                "events[{index}].event_type: expected 1 to 200 bytes without control characters, found {:?}",
                event.event_type
            )));
        }
        if matches!(&event.subject, Some(subject) if subject.is_empty()) {
            return Err(AppendError::InvalidBatch(format!("events[{index}].subject: expected a subject, found \"\"")));
        }
        let data =
            to_json(&event.data).map_err(|err| AppendError::InvalidBatch(format!("events[{index}].data: {err}")))?;
        let metadata = to_json(&event.metadata)
            .map_err(|err| AppendError::InvalidBatch(format!("events[{index}].metadata: {err}")))?;
        if data.len() > MAX_PAYLOAD_BYTES || metadata.len() > MAX_PAYLOAD_BYTES {
            return Err(AppendError::InvalidBatch(format!(
                "events[{index}]: expected data and metadata of at most {MAX_PAYLOAD_BYTES} bytes of JSON each, found {} and {}",
                data.len(),
                metadata.len()
            )));
        }
        events.push(PreparedEvent {
            event_id: event.event_id.0,
            workspace_id: event.workspace_id.0,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data,
            metadata,
            subject_hash: match (&event.subject, master) {
                (None, _) => None,
                (Some(subject), Some(master)) => Some(master.subject_hash(event.workspace_id.0, subject)),
                (Some(_), None) => {
                    return Err(AppendError::InvalidBatch(format!(
                        "events[{index}].subject: payloads name a subject, but no master key is configured to seal them"
                    )));
                }
            },
        });
    }
    Ok((request.stream_id, request.expected, events))
}

/// JSON text of a value, into a buffer sized for a typical event, so it is
/// not regrown several times on the way.
fn to_json(value: &serde_json::Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut buffer = Vec::with_capacity(1_024);
    serde_json::to_writer(&mut buffer, value)?;
    Ok(buffer)
}

#[async_trait]
impl EventStore for EventLog {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AppendError::Store(StoreError::ShuttingDown));
        }
        let (stream, expected, events) = prepare(request, self.inner.master.as_ref())?;
        self.send(stream, expected, events).await
    }

    async fn read(
        &self,
        from: Position,
        until: Option<Position>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<ReadPage, ReadError> {
        match self.fetch(from, until, filter, limit).await? {
            Some((rows, epoch, next)) => {
                Ok(ReadPage { events: self.decode(rows, epoch, filter.parts).await?, next: Position(next) })
            }
            None => Ok(ReadPage { events: Vec::new(), next: Position(from.0.max(1)) }),
        }
    }

    fn read_ahead(
        self: Arc<Self>,
        from: Position,
        until: Position,
        filter: EventFilter,
        page: usize,
    ) -> Box<dyn Pages> {
        let (sender, pages) = mpsc::channel(READS_AHEAD);
        // A task of its own fetches the rows page after page, as `read`
        // would, and hands each page to a task that decodes it: the next
        // page's rows are fetched while this one is decoded, and both
        // while the caller works on the one before.
        tokio::spawn(async move {
            let mut next = from.0.max(1);
            loop {
                let fetched = self.fetch(Position(next), Some(until), &filter, page.max(1)).await;
                let (decoding, following) = match fetched {
                    Ok(Some((rows, epoch, following))) => {
                        let (log, parts) = (self.clone(), filter.parts);
                        let decoding = tokio::spawn(async move {
                            let events = log.decode(rows, epoch, parts).await?;
                            Ok(ReadPage { events, next: Position(following) })
                        });
                        (decoding, Some(following))
                    }
                    Ok(None) => break,
                    Err(err) => (tokio::spawn(async move { Err(err) }), None),
                };
                if sender.send(decoding).await.is_err() {
                    break;
                }
                match following {
                    Some(following) => next = following,
                    None => break,
                }
            }
        });
        Box::new(ReadAhead { pages })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let head = self.inner.backend.head().await?;
        self.inner.open_keys.observe_epoch(head.key_epoch);
        let rows = self.inner.backend.read_stream_rows(stream.as_str(), from_version, limit).await?;
        self.decode(rows, head.key_epoch, &[]).await
    }

    async fn head(&self) -> Result<Position, ReadError> {
        Ok(Position(self.inner.backend.head().await?.position))
    }

    async fn position_at(&self, time: Timestamp) -> Result<Position, ReadError> {
        // recorded_at never decreases along the log, so binary search works.
        let head = self.inner.backend.head().await?.position;
        let (mut low, mut high) = (1, head + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let recorded = self.inner.backend.recorded_at(mid).await?.unwrap_or(i64::MAX);
            if recorded >= time.0 {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(Position(low))
    }

    async fn subscribe(&self, from: Position, filter: EventFilter) -> Result<Box<dyn Subscription>, ReadError> {
        Ok(Box::new(subscription::LogSubscription::new(
            self.clone(),
            Position(from.0.max(1)),
            filter,
            self.inner.poll_interval,
        )))
    }

    async fn verify(&self, progress: &(dyn Fn(u64, u64) + Send + Sync)) -> Result<VerifyReport, ReadError> {
        let head = self.inner.backend.head().await?;
        let mut walker = ChainWalker::default();
        let mut checked = 0;
        let all = EventFilter::default();
        progress(0, head.position);
        while checked < head.position {
            let rows = self.inner.backend.read_rows(checked + 1, head.position, &all, WALK_PAGE).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                if let Err(broken) = walker.check(&row.as_stored(), &row.hash) {
                    return Ok(VerifyReport { events_checked: checked, first_break: Some(broken) });
                }
                checked += 1;
            }
            progress(checked, head.position);
        }
        // Events missing at the end, or a head that does not match the last event.
        if checked != head.position || walker.last_hash() != head.hash {
            return Ok(VerifyReport {
                events_checked: checked,
                first_break: Some(ChainBreak {
                    position: checked + 1,
                    stored: head.hash,
                    recomputed: walker.last_hash(),
                }),
            });
        }
        Ok(VerifyReport { events_checked: checked, first_break: None })
    }

    async fn shred(&self, workspace: WorkspaceId, subject: &str) -> Result<bool, StoreError> {
        let master = self
            .inner
            .master
            .as_ref()
            .ok_or_else(|| StoreError::Database("no master key configured to find subject keys".into()))?;
        let hash = master.subject_hash(workspace.0, subject);
        let existed = self.inner.backend.delete_subject_key(&hash).await?;
        self.inner.open_keys.invalidate();
        Ok(existed)
    }
}

/// A stored payload as an export reads it ([`EventLog::opened_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Not sealed: the stored bytes are the payload.
    Clear,
    /// Sealed, and opened with its subject key: the plaintext.
    Plaintext(Vec<u8>),
    /// Sealed for a subject whose key was destroyed (erasure).
    Shredded,
    /// Sealed, and it does not open: why.
    Unopenable(String),
    /// Sealed, and not asked to be opened.
    NotOpened,
}

/// A statement of the log's head an operator keeps outside the database
/// (`onepd verify --save-head FILE`), signed with a key derived from the
/// master key. Checking the log against it (`--expect-head FILE`) shows a
/// log rewritten at or before its position — every later hash recomputed,
/// so the chain alone still holds — or cut short and its head moved back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedHead {
    /// What this file is: `onepd-chain-head/1`.
    pub format: String,
    /// The position of the last event covered.
    pub position: u64,
    /// That event's chain hash (hex).
    pub hash: String,
    /// The first event's chain hash (hex): which log this head is of.
    pub first_hash: String,
    /// When that event was recorded, microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// HMAC-SHA256 of the fields above under a key derived from the master
    /// key (hex).
    pub signature: String,
}

impl SignedHead {
    /// The head's HMAC under `master` (what `signature` must be, in hex).
    pub fn mac(&self, master: &MasterKey) -> [u8; 32] {
        let SignedHead { format, position, hash, first_hash, recorded_at, .. } = self;
        master.mac("chain_head", format!("{format}\n{position}\n{hash}\n{first_hash}\n{recorded_at}").as_bytes())
    }

    /// Whether `signature` is this head's under `master` (compared in
    /// constant time) and the format is known.
    pub fn signed_by(&self, master: &MasterKey) -> bool {
        self.format == SIGNED_HEAD_FORMAT && same_mac(&self.signature, &self.mac(master))
    }
}

/// Whether `given` (hex) is `expected`, compared in constant time.
pub fn same_mac(given: &str, expected: &[u8; 32]) -> bool {
    let given = hex::decode(given).unwrap_or_default();
    given.len() == expected.len() && given.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The `format` of a [`SignedHead`].
pub const SIGNED_HEAD_FORMAT: &str = "onepd-chain-head/1";

/// How the log stands against a [`SignedHead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// The event at the saved position is the one saved: nothing up to it
    /// changed (the log may have grown since).
    Holds,
    /// The log ends before the saved position: events were removed.
    Truncated {
        /// Where the log ends now.
        head: u64,
    },
    /// The event at the saved position is not the one saved: the log was
    /// rewritten at or before it.
    Rewritten {
        /// The hash stored there now (hex).
        found: String,
    },
    /// The signature does not match this master key: the file was altered,
    /// or it was made with another key.
    BadSignature,
    /// The head is of another log (its first event differs), signed with
    /// the same master key.
    OtherLog,
}

impl EventLog {
    fn head_mac(&self, head: &SignedHead) -> Result<[u8; 32], StoreError> {
        let master = self
            .inner
            .master
            .as_ref()
            .ok_or_else(|| StoreError::Database("signing a head needs the master key".into()))?;
        Ok(head.mac(master))
    }

    /// The stored row at `position`, if the log reaches it.
    async fn row_at(&self, position: u64) -> Result<Option<StoredRow>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        let mut rows = self.inner.backend.read_rows(position, position, &EventFilter::default(), 1).await?;
        Ok(rows.pop().filter(|row| row.position == position))
    }

    /// A signed statement of the event at `position` (a position `verify`
    /// has just checked). Needs the master key.
    pub async fn signed_head(&self, position: u64) -> Result<SignedHead, StoreError> {
        let row = self.row_at(position).await?.ok_or_else(|| {
            StoreError::Database(format!("signing the head: the log does not reach position {position}"))
        })?;
        let first = self.row_at(1).await?.map(|first| hex::encode(first.hash)).unwrap_or_default();
        let mut head = SignedHead {
            format: SIGNED_HEAD_FORMAT.into(),
            position,
            hash: hex::encode(row.hash),
            first_hash: first,
            recorded_at: row.recorded_at,
            signature: String::new(),
        };
        head.signature = hex::encode(self.head_mac(&head)?);
        Ok(head)
    }

    /// How the log stands against `saved`. The signature is checked only
    /// when the log has a master key ([`EventLog::has_master_key`]); the
    /// caller says so when it is not.
    pub async fn check_head(&self, saved: &SignedHead) -> Result<HeadCheck, StoreError> {
        if self.has_master_key() {
            let expected = self.head_mac(saved)?;
            if !same_mac(&saved.signature, &expected) || saved.format != SIGNED_HEAD_FORMAT {
                return Ok(HeadCheck::BadSignature);
            }
        }
        let first = self.row_at(1).await?.map(|first| hex::encode(first.hash)).unwrap_or_default();
        if first != saved.first_hash {
            return Ok(HeadCheck::OtherLog);
        }
        let head = self.inner.backend.head().await?;
        if head.position < saved.position {
            return Ok(HeadCheck::Truncated { head: head.position });
        }
        match self.row_at(saved.position).await? {
            None => Ok(HeadCheck::Truncated { head: head.position }),
            Some(row) if hex::encode(row.hash) == saved.hash && row.recorded_at == saved.recorded_at => {
                Ok(HeadCheck::Holds)
            }
            Some(row) => Ok(HeadCheck::Rewritten { found: hex::encode(row.hash) }),
        }
    }
}
