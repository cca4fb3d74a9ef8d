//! The event types: past-tense facts, one module per area. The stored
//! `event_type` is the type's name and never changes; a new shape gets a new
//! `schema_version` and an upcaster.

pub mod workspace;
