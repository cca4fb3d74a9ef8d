//! The event types: past-tense facts, one module per area. The stored
//! `event_type` is the type's name and never changes; a new shape gets a new
//! `schema_version` and an upcaster.

pub mod audience;
pub mod destination;
pub mod erasure;
pub mod identity;
pub mod message;
pub mod quarantine;
pub mod workspace;

use crate::upcast::Upcasters;

/// Every upcaster onepd's event types need, for the store to apply on read.
pub fn upcasters() -> Upcasters {
    Upcasters::new().register(workspace::WorkspaceCreated::TYPE, 1, workspace::WorkspaceCreated::upcast_v1)
}
