//! onepd's read side: projections, pure folds over the event log that can be
//! dropped and rebuilt.
//!
//! **Invariant:** a rebuild from position 0 equals the live projection.
//! **Does not:** import `onepd-commands`, or know how events are stored.

#![warn(missing_docs)]

pub mod access;
