//! Webhook sources: platforms that push their own payloads (shops, payment
//! providers, CRMs) instead of Segment-spec messages.
//!
//! Two steps, one module each:
//! signature verification ([`mod@verify`]) → declarative mapping of the payload
//! to Segment-spec messages ([`mapping`]). [`mod@shipped`] holds the mappings
//! onepd ships for common platforms and topics; [`mod@source`] is a source's
//! whole configuration (platform, verification, mappings by topic).
//!
//! The HTTP handler (`POST /v1/webhooks/{source_id}`) calls
//! [`WebhookSource::handle`] and sends each resulting message through the
//! ordinary ingest pipeline. A failure at any step becomes a
//! `MessageRejected` with the error's text as the reason.
//!
//! **Invariant:** pure: no HTTP, no storage, no clock. The current time comes
//! in as an argument, and every message id is derived from the platform's
//! delivery id, so a platform's retry maps to the same message ids and is
//! deduplicated downstream.
//!
//! **Does not:** know how a source's secret or mapping is stored, or decide
//! which topic a request carries (the caller picks the mapping).

pub mod mapping;
pub mod shipped;
pub mod source;
pub mod verify;

pub use mapping::{Mapping, MappingError};
pub use shipped::{SHIPPED, ShippedMapping, shipped};
pub use source::{Mapped, WebhookError, WebhookSource};
pub use verify::{Algorithm, Encoding, GenericHmac, VerifyConfig, VerifyError, verify};

/// A platform whose signature scheme onepd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the raw body.
    Shopify,
    /// Stripe: `Stripe-Signature` with a timestamp and hex HMAC-SHA256s.
    Stripe,
    /// HubSpot: `X-HubSpot-Signature-v3` over method, URI, body and timestamp.
    HubSpot,
    /// Any other platform: an HMAC-SHA256 in a configurable header.
    Generic,
}

impl Platform {
    /// The lowercase name used in configuration and in message ids.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Shopify => "shopify",
            Platform::Stripe => "stripe",
            Platform::HubSpot => "hubspot",
            Platform::Generic => "generic",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// Reads a platform from its lowercase name.
    fn from_str(name: &str) -> Result<Platform, String> {
        [Platform::Shopify, Platform::Stripe, Platform::HubSpot, Platform::Generic]
            .into_iter()
            .find(|platform| platform.name() == name)
            .ok_or_else(|| format!("platform: expected one of shopify, stripe, hubspot, generic, found {name:?}"))
    }
}

/// One webhook request as it arrived, before any parsing.
///
/// Signatures are computed over the raw body bytes, so the body must be
/// exactly what the platform sent (not re-serialized JSON).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method, such as `POST` (HubSpot signs it).
    pub method: &'a str,
    /// The full request URI as the platform called it, scheme and host
    /// included (`https://cdp.example.com/v1/webhooks/…?x=1`); HubSpot signs it.
    pub uri: &'a str,
    /// The request headers as (name, value) pairs; names match case-insensitively.
    pub headers: &'a [(String, String)],
    /// The raw body bytes.
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The value of the first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header, _)| header.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}
