//! onepd's read side: projections, pure folds over the event log that can be
//! dropped and rebuilt.
//!
//! # Layout
//!
//! * [`access`] — the valid admin tokens.
//! * [`audience`] — one profile as an audience condition reads it.
//! * [`activation`] — which events a destination receives and in what form,
//!   and its delivery ledger folded.
//! * [`directory`] — workspaces, sources, write keys, tracking plans.
//! * [`identity`] — the identity graph: profiles as connected components of
//!   linked identifiers, with every merge explained.
//! * [`profile`] — 360-degree profiles over the identity graph: traits with
//!   provenance, activity, revenue, consent, timeline and merge history.
//! * [`quarantine`] — the events readers could not read and went on
//!   without, until released.
//!
//! **Invariant:** a rebuild from position 0 equals the live projection.
//! **Does not:** import `onepd-commands`, or know how events are stored.

#![warn(missing_docs)]

pub mod access;
pub mod activation;
pub mod audience;
pub mod directory;
pub mod identity;
pub mod profile;
pub mod quarantine;
pub mod runner;

use onepd_domain::RecordedEvent;

/// A projection kept in memory: a fold over the events of a few types.
pub trait Fold: Default + Send + Sync + 'static {
    /// The event types it reads; others are never handed to it.
    const EVENT_TYPES: &'static [&'static str];

    /// The parts of their payloads it reads, by event type
    /// ([`onepd_domain::EventFilter::parts`]); whole by default.
    const PARTS: &'static [(&'static str, onepd_domain::fields::Fields)] = &[];

    /// Folds one event in.
    fn apply(&mut self, event: &RecordedEvent);
}
