//! onepd's adapters: everything that touches the outside world.
//!
//! * [`store`] — the event log on SQLite and PostgreSQL;
//! * [`readstore`] — projections' documents, beside the log;
//! * [`activation`] — the activation engine: a subscriber per destination;
//! * [`audiences`] — audiences defined, evaluated and previewed;
//! * [`cluster`] — several nodes on one database: leases and fencing;
//! * [`destinations`] — the built-in destination adapters;
//! * [`grpc`] — the tonic services;
//! * [`http`] — the Segment-compatible HTTP API (axum);
//! * [`ingest`] — the path every entrance takes into the log;
//! * [`live`] — in-memory projections that follow the log;
//! * [`quarantine`] — events readers could not read: listing and retrying.
//!
//! **Invariant:** the only crate (with the binary) that knows sqlx, tonic or
//! a clock; the domain sees these only through its ports.

#![warn(missing_docs)]

pub mod activation;
pub mod audiences;
pub mod cluster;
pub mod destinations;
pub mod erasure;
pub mod export;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod live;
pub mod membership;
pub mod profiles;
pub mod quarantine;
pub mod readstore;
pub mod store;

pub use store::sealing::MasterKey;
pub use store::{BackendKind, EventLog, StoreConfig};
