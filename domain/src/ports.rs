//! The ports: async traits the adapters implement, with the errors they return.
//!
//! `EventStore` is the only way anything reads or writes the log. Its contract,
//! which the conformance suite checks for every backend:
//!
//! * positions are gap-free and increase in commit order: a reader that has
//!   seen position *p* never later sees a new event below *p*;
//! * an append returns only after the transaction holding its events has
//!   committed;
//! * appending a batch whose event ids are all stored is a no-op reporting the
//!   original positions; a batch whose ids are partly stored is an error;
//! * a stream's expected version is checked atomically with the append.

use async_trait::async_trait;

use crate::envelope::{EventId, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Timestamp, WorkspaceId};

/// Events to append to one stream, atomically: all are stored or none.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The stream every event of the batch joins.
    pub stream_id: StreamId,
    /// What the stream must hold before the batch.
    pub expected: ExpectedVersion,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
}

/// What a successful append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The position of each event of the batch, in order.
    pub positions: Vec<Position>,
    /// The stream's version after its last event of the batch; for a
    /// duplicate, the current version of the stream the request named.
    pub stream_version: u64,
    /// True when every event was already stored and nothing was written; the
    /// positions are then the original ones.
    pub duplicate: bool,
}

/// Why an append was refused. Nothing of a refused batch is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The stream's version is not the one the append expected.
    #[error("stream {stream}: expected {expected}, found version {found}")]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The version the stream is at (0 = no stream).
        found: u64,
    },
    /// Some, but not all, of the batch's event ids are stored already.
    #[error("batch of {total} events: {} already stored (first {}), {} new; resend the batch exactly as first sent", stored.len(), stored[0], total - stored.len())]
    PartiallyStored {
        /// How many events the batch holds.
        total: usize,
        /// The ids already stored.
        stored: Vec<EventId>,
    },
    /// The batch itself is malformed (empty, an id twice, data that cannot be
    /// stored).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The store failed; whether the batch was stored is unknown only if the
    /// failure hit the commit itself, so retry with the same event ids.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of the storage underneath a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error.
    #[error("database: {0}")]
    Database(String),
    /// The database could not be reached in time (down, restarting, cut
    /// off): nothing was stored; the caller should retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down and takes no more appends.
    #[error("event store is shutting down")]
    ShuttingDown,
    /// The write was made for a lease this node no longer holds (another
    /// node took it over, or it expired): nothing was written.
    #[error("lease {0} is no longer held by this node; nothing was written")]
    LeaseLost(String),
    /// A stored event could not be decoded.
    #[error("event at position {position}: {reason}")]
    Corrupt {
        /// The event's position.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a read failed.
pub type ReadError = StoreError;

/// Which events a read returns besides its position range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this workspace's events; `None` reads every workspace (operators only).
    pub workspace: Option<WorkspaceId>,
    /// Only these event types; empty means all.
    pub event_types: Vec<String>,
    /// Only this stream.
    pub stream: Option<StreamId>,
    /// The parts of the payload to decode, by event type; the rest is left
    /// out of [`crate::Payload::Data`]. Types not named (by default, all)
    /// are decoded whole.
    pub parts: &'static [(&'static str, crate::fields::Fields)],
}

impl EventFilter {
    /// A filter that admits everything of one workspace.
    pub fn workspace(workspace: WorkspaceId) -> EventFilter {
        EventFilter { workspace: Some(workspace), ..EventFilter::default() }
    }

    /// Whether the filter admits `event`.
    pub fn admits(&self, event: &RecordedEvent) -> bool {
        self.workspace.is_none_or(|w| w == event.workspace_id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.stream.as_ref().is_none_or(|s| *s == event.stream_id)
    }
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPage {
    /// The matching events, in log order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts. Everything below it has been looked at,
    /// including events the filter left out.
    pub next: Position,
}

/// The result of walking the whole hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many events were checked.
    pub events_checked: u64,
    /// The first position whose hash does not hold, if any.
    pub first_break: Option<crate::chain::ChainBreak>,
}

/// A catch-up-then-live stream of events from a position onwards.
///
/// Pull-based, so a slow consumer is never buffered for: the store reads the
/// next page only when asked.
#[async_trait]
pub trait Subscription: Send {
    /// Waits until at least one event after the last one returned is
    /// committed, then returns up to a page of them in log order. Never
    /// returns an empty batch.
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The position the next batch starts at.
    fn next_position(&self) -> Position;
}

/// The pages of an [`EventStore::read_ahead`], in log order.
#[async_trait]
pub trait Pages: Send {
    /// The next page, or `None` once the range is read.
    async fn next_page(&mut self) -> Result<Option<ReadPage>, ReadError>;
}

/// The append-only event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends a batch to one stream; returns after it has committed. Concurrent
    /// appends may share a transaction (group commit), but a refused batch
    /// never affects another.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError>;

    /// Reads up to `limit` events matching `filter` with positions from `from`
    /// up to `until` (both inclusive; `None` = the last committed event).
    async fn read(
        &self,
        from: Position,
        until: Option<Position>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<ReadPage, ReadError>;

    /// Reads every event matching `filter` from `from` up to `until` (both
    /// inclusive, `until` cut at the head) as the consecutive pages of at
    /// most `page` events that [`EventStore::read`] would give, ahead of
    /// the caller: while the caller works on one page, the next ones are
    /// fetched and decoded (a rebuild folds while the log is read). The
    /// pages come in log order; after an error, none follow.
    fn read_ahead(
        self: std::sync::Arc<Self>,
        from: Position,
        until: Position,
        filter: EventFilter,
        page: usize,
    ) -> Box<dyn Pages>;

    /// Reads up to `limit` events of one stream from stream version `from_version` (inclusive).
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The position of the last committed event (`Position::START` when empty).
    async fn head(&self) -> Result<Position, ReadError>;

    /// The first position recorded at or after `time`, or the position after
    /// the head when there is none.
    async fn position_at(&self, time: Timestamp) -> Result<Position, ReadError>;

    /// A catch-up-then-live subscription starting at `from` (inclusive).
    async fn subscribe(&self, from: Position, filter: EventFilter) -> Result<Box<dyn Subscription>, ReadError>;

    /// Walks the whole hash chain. `progress` is called now and then with
    /// (events checked, events in the log).
    async fn verify(&self, progress: &(dyn Fn(u64, u64) + Send + Sync)) -> Result<VerifyReport, ReadError>;

    /// Deletes a subject's key: every payload sealed for it becomes
    /// unreadable. Returns whether a key existed.
    async fn shred(&self, workspace: WorkspaceId, subject: &str) -> Result<bool, StoreError>;
}

/// One generation of a projection's read model: the projection built once,
/// from position 0, by one version of its code. A rebuild makes a new
/// generation beside the live one and promotes it when it has caught up
/// (blue/green), so readers never see a half-built model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Unique across projections; never reused.
    pub id: u64,
    /// The projection's name (`profiles`).
    pub projection: String,
    /// The version of the projection's code that built it.
    pub version: u32,
    /// Every event up to here is reflected in its documents.
    pub checkpoint: Position,
    /// Whether readers are served from it.
    pub live: bool,
}

/// One change to a generation's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocWrite {
    /// Stores `doc` under (`workspace`, `collection`, `key`), replacing what
    /// was there.
    Put {
        /// The workspace the document belongs to.
        workspace: WorkspaceId,
        /// The kind of document (`profile`, `identifier`, …).
        collection: &'static str,
        /// Its key within the collection.
        key: String,
        /// Its bytes.
        doc: Vec<u8>,
    },
    /// Removes the document, if any.
    Delete {
        /// The workspace the document belongs to.
        workspace: WorkspaceId,
        /// The kind of document.
        collection: &'static str,
        /// Its key within the collection.
        key: String,
    },
}

/// Why a projection store refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The generation's checkpoint moved since the writer last saw it, or the
    /// generation was dropped: another writer owns it now. Nothing was
    /// written.
    #[error("generation {generation}: expected checkpoint {expected}, found {found}")]
    Fenced {
        /// The generation written to.
        generation: u64,
        /// The checkpoint the writer expected.
        expected: Position,
        /// The checkpoint found (0 when the generation no longer exists).
        found: Position,
    },
    /// The storage underneath failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A commit under way ([`ProjectionStore::start_commit`]): its result, once
/// it has landed.
pub type Landing = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ProjectionError>> + Send + 'static>>;

/// The read models of projections: documents per generation, written
/// together with the generation's checkpoint so each event takes effect
/// exactly once.
#[async_trait]
pub trait ProjectionStore: Send + Sync {
    /// The generation readers are served from, if one was promoted.
    async fn live(&self, projection: &str) -> Result<Option<Generation>, StoreError>;

    /// Every generation of `projection` that exists, oldest first.
    async fn generations(&self, projection: &str) -> Result<Vec<Generation>, StoreError>;

    /// Starts a new, empty generation at checkpoint 0, not live.
    async fn create_generation(&self, projection: &str, version: u32) -> Result<Generation, StoreError>;

    /// Applies `writes` in order and moves the generation's checkpoint from
    /// `expected` to `checkpoint`, in one transaction. Refused with
    /// [`ProjectionError::Fenced`] when the checkpoint is not `expected` or
    /// the generation is gone.
    async fn commit(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        writes: Vec<DocWrite>,
    ) -> Result<(), ProjectionError>;

    /// Starts [`ProjectionStore::commit`] so that it runs while the caller
    /// goes on (a builder folds its next page while the last one is
    /// written); the returned future, awaited, gives its result. The caller
    /// starts no other commit of the generation until this one has landed,
    /// and reads nothing it writes before then.
    fn start_commit(
        self: std::sync::Arc<Self>,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        writes: Vec<DocWrite>,
    ) -> Landing;

    /// Like [`ProjectionStore::commit`], but first removes every document
    /// `workspace` has in the generation, in the same transaction: `writes`
    /// then hold the workspace's whole new state (a workspace re-derived
    /// under a new operator fact). Other workspaces' documents are untouched.
    async fn replace_workspace(
        &self,
        generation: u64,
        expected: Position,
        checkpoint: Position,
        workspace: WorkspaceId,
        writes: Vec<DocWrite>,
    ) -> Result<(), ProjectionError>;

    /// Replaces every document `workspace` has in `generation` with the
    /// ones it has in `from` (a generation of its own the workspace was
    /// re-derived into, page by page) and drops `from`, in one transaction.
    /// The checkpoint stays `expected`. Refused with
    /// [`ProjectionError::Fenced`] when the checkpoint is not `expected` or
    /// either generation is gone.
    async fn adopt_workspace(
        &self,
        generation: u64,
        expected: Position,
        workspace: WorkspaceId,
        from: u64,
    ) -> Result<(), ProjectionError>;

    /// Makes `generation` the live one of its projection and drops every
    /// other generation of it, atomically for readers.
    async fn promote(&self, generation: u64) -> Result<(), StoreError>;

    /// Drops a generation and its documents (an abandoned rebuild).
    async fn drop_generation(&self, generation: u64) -> Result<(), StoreError>;

    /// Up to `limit` documents of one collection of a generation, in the
    /// order of their keys (as bytes), from the first key after `after`:
    /// a scan, page by page.
    async fn scan(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The documents under `keys` in one collection of a generation, in the
    /// order of `keys`; `None` where there is none.
    async fn get(
        &self,
        generation: u64,
        workspace: WorkspaceId,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
}
