//! The built-in destination adapters, each implementing the domain's
//! [`Destination`] port in-process and producing its platform's real request
//! format, with a configurable endpoint.
//!
//! Layout:
//!
//! - [`meta`]: Meta Conversions API (`meta_capi`);
//! - [`google_ads`]: Google Ads enhanced conversions for leads (`google_ads`);
//! - [`tiktok`]: TikTok Events API 2.0 (`tiktok`);
//! - [`ga4`]: Google Analytics 4 Measurement Protocol (`ga4`);
//! - [`webhook`]: a signed JSON webhook (`webhook`);
//! - [`klaviyo`]: Klaviyo events, profiles and list subscriptions (`klaviyo`);
//! - [`hubspot`]: HubSpot contacts, custom events and lists (`hubspot`);
//! - [`mailchimp`]: Mailchimp audience members, tags and events (`mailchimp`);
//! - [`braze`]: Braze `/users/track` attributes, events and purchases (`braze`),
//!   the four marketing automation tools living in `automation/`;
//! - `http`: the one HTTP client and how an answer becomes a delivery
//!   result; `mapping`: settings, times and Segment e-commerce properties.
//!
//! **Invariant:** an adapter never normalizes or hashes an identifier: the
//! engine hands it identifiers prepared as its [`Description`] asks
//! ([`onepd_domain::hashing`]), and for an ad platform a message without raw
//! identifiers.
//!
//! **Does not:** retry, back off, split batches or keep time: the activation
//! engine does, from the [`DeliverError`] and per-event outcomes an adapter
//! returns.
//!
//! [`Description`]: onepd_domain::destination::Description
//! [`DeliverError`]: onepd_domain::destination::DeliverError

use std::sync::Arc;

use onepd_domain::destination::Destination;

mod automation;
pub mod ga4;
pub mod google_ads;
mod http;
mod mapping;
pub mod meta;
pub mod tiktok;
pub mod webhook;

pub use automation::{braze, hubspot, klaviyo, mailchimp};

/// The names of the built-in adapters, as `onepd destination create --adapter` takes them.
pub const BUILT_IN: [&str; 9] =
    ["meta_capi", "google_ads", "tiktok", "ga4", "webhook", "klaviyo", "hubspot", "mailchimp", "braze"];

/// Why an adapter could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// No built-in adapter has this name.
    #[error("unknown adapter \"{0}\": expected one of {list}, grpc", list = BUILT_IN.join(", "))]
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
    Ok(match adapter {
        meta::NAME => Arc::new(meta::MetaCapi::new(settings)?),
        google_ads::NAME => Arc::new(google_ads::GoogleAds::new(settings)?),
        tiktok::NAME => Arc::new(tiktok::TikTok::new(settings)?),
        ga4::NAME => Arc::new(ga4::Ga4::new(settings)?),
        webhook::NAME => Arc::new(webhook::Webhook::new(settings)?),
        klaviyo::NAME => Arc::new(klaviyo::Klaviyo::new(settings)?),
        hubspot::NAME => Arc::new(hubspot::HubSpot::new(settings)?),
        mailchimp::NAME => Arc::new(mailchimp::Mailchimp::new(settings)?),
        braze::NAME => Arc::new(braze::Braze::new(settings)?),
        _ => return Err(AdapterError::Unknown(adapter.to_owned())),
    })
}
