//! onepd's write side: commands decide which events to append.
//!
//! Each command is a pure decision: given what it needs to know (and any
//! randomness as an argument), it returns the events to append and the
//! expected stream version. Appending is the caller's job, through the
//! domain's `EventStore` port.
//!
//! **Does not:** import `onepd-projections`, or know how events are stored.

#![warn(missing_docs)]

pub mod import;
pub mod ingest;
pub mod webhook;
pub mod workspace;
