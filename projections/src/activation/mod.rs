//! The pure half of activation: which events a destination receives and in
//! what form ([`prepare`]), and the state of its delivery ledger
//! ([`ledger`]). The engine that reads the log, calls adapters, retries and
//! appends the ledger lives in `onepd-adapters`.

pub mod ledger;
pub mod prepare;

pub use ledger::{DeadLetter, DeliveryState, Ledger, Ledgers};
pub use prepare::{Notes, Prepared, Target, prepare, prepare_audience_change, prepare_computed_change};
