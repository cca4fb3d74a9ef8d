//! onepd's domain: the event envelope, the hash chain, upcasting and the ports.
//!
//! # Layout
//!
//! * [`audience`] — the condition language audiences are defined in, and
//!   its evaluation against one person as of one time.
//! * [`envelope`] — what an event is: ids, positions, streams, the event to
//!   append ([`NewEvent`]) and the event as read back ([`RecordedEvent`]).
//! * [`chain`] — the SHA-256 hash chain over the stored bytes of each event.
//! * [`upcast`] — turning old `schema_version`s into the current shape on read.
//! * [`events`] — the event types, past-tense facts, one module per area.
//! * [`ports`] — the async traits the adapters implement ([`EventStore`],
//!   [`Subscription`], [`ProjectionStore`]) and their errors.
//! * [`normalize`] — canonical forms of emails, phone numbers (E.164),
//!   countries (ISO 3166-1 alpha-2) and names (NFC).
//! * [`consent`] — the consent categories a message states (Segment's and
//!   RudderStack's shapes) and whether a destination may receive it.
//! * [`destination`] — the `Destination` port activation adapters implement:
//!   what an adapter accepts and how a batch's events fare.
//! * [`hashing`] — identifier normalization and SHA-256 hashing to each ad
//!   platform's published rules.
//! * [`identity`] — identifiers, identity-resolution rules (which kinds link,
//!   priority, limits, blocked values) and deterministic profile ids.
//! * [`limits`] — the nesting and identifier limits ingest enforces and
//!   every reader relies on.
//! * [`policy`] — the sensitive-data policy: classifying fields (tracking-plan
//!   annotations, key names, value shapes) and deciding what of a message may
//!   go to one destination.
//!
//! **Invariant:** pure. No runtime, no database, no clock: time and ids come in
//! as arguments.

#![warn(missing_docs)]

pub mod audience;
pub mod chain;
pub mod consent;
pub mod destination;
pub mod envelope;
pub mod events;
pub mod fields;
pub mod hashing;
pub mod identity;
pub mod limits;
pub mod normalize;
pub mod policy;
pub mod ports;
pub mod upcast;

pub use envelope::{
    EventId, ExpectedVersion, NewEvent, Payload, Position, RecordedEvent, StreamId, Timestamp, WorkspaceId,
};
pub use ports::{
    AppendError, AppendOutcome, AppendRequest, DocWrite, EventFilter, EventStore, Generation, Landing, Pages,
    ProjectionError, ProjectionStore, ReadError, ReadPage, StoreError, Subscription, VerifyReport,
};
pub use upcast::{UpcastError, Upcasters};
