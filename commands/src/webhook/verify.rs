//! Webhook signature verification: did this request come from the platform?
//!
//! One function, [`verify`], dispatches on the [`Platform`]'s scheme:
//!
//! - Shopify: `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(secret, body)).
//! - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each `v1` a
//!   hex HMAC-SHA256 of `"{t}.{body}"`; any matching `v1` is accepted, and `t`
//!   must be within the tolerance of now.
//! - HubSpot (v3): `X-HubSpot-Signature-v3` = base64(HMAC-SHA256(secret,
//!   method + uri + body + timestamp)), with `X-HubSpot-Request-Timestamp` in
//!   milliseconds within the tolerance of now (in either direction). The URI
//!   must be the one HubSpot called, scheme and host included; HubSpot's
//!   documented decoding of some percent-escapes in it is not done here.
//! - Generic: an HMAC-SHA256 of the body in a configured header, hex or
//!   base64, with an optional prefix such as GitHub's `sha256=`.
//!
//! **Invariant:** signatures are compared in constant time (through
//! [`hmac::Mac::verify_slice`]); the secret never appears in an error or in
//! `Debug` output.
//!
//! **Does not:** read a clock; `now` is Unix seconds from the caller.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Platform, Request};

/// How a source verifies its webhooks; stored with the source's configuration.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyConfig {
    /// The shared secret (Shopify's app secret, Stripe's endpoint secret
    /// `whsec_…` used as-is, HubSpot's app client secret).
    pub secret: String,
    /// How far, in seconds, a signed timestamp may be from now (Stripe, HubSpot).
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: u64,
    /// The header and encoding for [`Platform::Generic`]; ignored otherwise.
    #[serde(default)]
    pub generic: Option<GenericHmac>,
}

/// The tolerance Stripe's and HubSpot's own libraries use: five minutes.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

fn default_tolerance() -> u64 {
    DEFAULT_TOLERANCE_SECONDS
}

impl VerifyConfig {
    /// A configuration with `secret`, the default tolerance and no generic settings.
    pub fn new(secret: impl Into<String>) -> Self {
        VerifyConfig { secret: secret.into(), tolerance_seconds: DEFAULT_TOLERANCE_SECONDS, generic: None }
    }
}

// The secret is left out so that logging a configuration cannot leak it.
impl std::fmt::Debug for VerifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyConfig")
            .field("secret", &"<redacted>")
            .field("tolerance_seconds", &self.tolerance_seconds)
            .field("generic", &self.generic)
            .finish()
    }
}

/// Where and how a generic platform sends its HMAC-SHA256 signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenericHmac {
    /// The header carrying the signature, such as `X-Hub-Signature-256`.
    pub header: String,
    /// The hash; only `sha256` today, named so configurations stay explicit.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// How the signature bytes are written in the header.
    #[serde(default)]
    pub encoding: Encoding,
    /// A prefix before the encoded signature, such as `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// The HMAC hash function of a generic signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
}

/// How signature bytes are written in a header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Lowercase or uppercase hexadecimal.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Why a webhook request failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature (or timestamp) header is absent.
    #[error("{header}: expected a header, found none")]
    MissingHeader {
        /// The header's name.
        header: String,
    },
    /// The header is present but cannot be read.
    #[error("{header}: expected {expected}, found {found}")]
    MalformedHeader {
        /// The header's name.
        header: String,
        /// What a valid value looks like.
        expected: String,
        /// What was there, quoted and shortened.
        found: String,
    },
    /// The signature is well-formed but was not made with the secret.
    #[error("{header}: expected a valid signature, found one that does not match")]
    SignatureMismatch {
        /// The header's name.
        header: String,
    },
    /// The signed timestamp is too far from now; a replay, or a skewed clock.
    #[error(
        "{header}: timestamp {timestamp} is {distance_seconds} s away from now; the tolerance is {tolerance_seconds} s"
    )]
    StaleTimestamp {
        /// The header carrying the timestamp.
        header: String,
        /// The timestamp as sent (seconds for Stripe, milliseconds for HubSpot).
        timestamp: i64,
        /// How far it is from now, in seconds.
        distance_seconds: u64,
        /// The configured tolerance, in seconds.
        tolerance_seconds: u64,
    },
    /// The source's configuration cannot verify anything.
    #[error("webhook verification: expected {expected}, found {found}")]
    Config {
        /// What the configuration needs.
        expected: String,
        /// What it has.
        found: String,
    },
}

/// The Shopify signature header.
pub const SHOPIFY_HEADER: &str = "X-Shopify-Hmac-Sha256";
/// The Stripe signature header.
pub const STRIPE_HEADER: &str = "Stripe-Signature";
/// The HubSpot v3 signature header.
pub const HUBSPOT_SIGNATURE_HEADER: &str = "X-HubSpot-Signature-v3";
/// The HubSpot timestamp header, in Unix milliseconds.
pub const HUBSPOT_TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";

/// Checks that `request` was signed by `platform` with `config`'s secret;
/// `now` is the current time in Unix seconds.
pub fn verify(platform: Platform, config: &VerifyConfig, request: &Request<'_>, now: i64) -> Result<(), VerifyError> {
    match platform {
        Platform::Shopify => verify_shopify(config, request),
        Platform::Stripe => verify_stripe(config, request, now),
        Platform::HubSpot => verify_hubspot(config, request, now),
        Platform::Generic => verify_generic(config, request),
    }
}

fn verify_shopify(config: &VerifyConfig, request: &Request<'_>) -> Result<(), VerifyError> {
    let value = required_header(request, SHOPIFY_HEADER)?;
    let signature = decode(SHOPIFY_HEADER, value, Encoding::Base64)?;
    let mut mac = new_mac(&config.secret);
    mac.update(request.body);
    check(SHOPIFY_HEADER, mac, &signature)
}

fn verify_stripe(config: &VerifyConfig, request: &Request<'_>, now: i64) -> Result<(), VerifyError> {
    let value = required_header(request, STRIPE_HEADER)?;
    let malformed = |expected: &str| malformed(STRIPE_HEADER, expected, value);
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        let Some((key, item)) = part.trim().split_once('=') else {
            return Err(malformed("comma-separated key=value pairs"));
        };
        match key {
            // The raw text is what Stripe signed, so it is kept alongside the number.
            "t" => timestamp = Some((item, item.parse::<i64>().map_err(|_| malformed("t=<unix seconds>"))?)),
            // Only v1 is an HMAC-SHA256; v0 and unknown schemes are ignored as Stripe's libraries do.
            "v1" => signatures.push(hex::decode(item).map_err(|_| malformed("v1=<hex signature>"))?),
            _ => {}
        }
    }
    let (timestamp_text, timestamp) = timestamp.ok_or_else(|| malformed("a t=<unix seconds> element"))?;
    if signatures.is_empty() {
        return Err(malformed("at least one v1=<hex signature> element"));
    }
    let mut mac = new_mac(&config.secret);
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(request.body);
    if !signatures.iter().any(|signature| mac.clone().verify_slice(signature).is_ok()) {
        return Err(VerifyError::SignatureMismatch { header: STRIPE_HEADER.to_owned() });
    }
    within_tolerance(STRIPE_HEADER, timestamp, now.abs_diff(timestamp), config.tolerance_seconds)
}

fn verify_hubspot(config: &VerifyConfig, request: &Request<'_>, now: i64) -> Result<(), VerifyError> {
    let value = required_header(request, HUBSPOT_SIGNATURE_HEADER)?;
    let signature = decode(HUBSPOT_SIGNATURE_HEADER, value, Encoding::Base64)?;
    let timestamp_text = required_header(request, HUBSPOT_TIMESTAMP_HEADER)?;
    let timestamp_ms = timestamp_text
        .trim()
        .parse::<i64>()
        .map_err(|_| malformed(HUBSPOT_TIMESTAMP_HEADER, "Unix milliseconds", timestamp_text))?;
    let mut mac = new_mac(&config.secret);
    mac.update(request.method.as_bytes());
    mac.update(request.uri.as_bytes());
    mac.update(request.body);
    mac.update(timestamp_text.as_bytes());
    check(HUBSPOT_SIGNATURE_HEADER, mac, &signature)?;
    let distance = now.saturating_mul(1000).abs_diff(timestamp_ms) / 1000;
    within_tolerance(HUBSPOT_TIMESTAMP_HEADER, timestamp_ms, distance, config.tolerance_seconds)
}

fn verify_generic(config: &VerifyConfig, request: &Request<'_>) -> Result<(), VerifyError> {
    let Some(generic) = &config.generic else {
        return Err(VerifyError::Config {
            expected: "a generic section with the signature header".to_owned(),
            found: "none".to_owned(),
        });
    };
    let header = generic.header.as_str();
    let value = required_header(request, header)?;
    let encoded = match &generic.prefix {
        Some(prefix) => value
            .strip_prefix(prefix.as_str())
            .ok_or_else(|| malformed(header, &format!("a signature starting with {prefix:?}"), value))?,
        None => value,
    };
    let signature = decode(header, encoded, generic.encoding)?;
    let mut mac = new_mac(&config.secret);
    mac.update(request.body);
    check(header, mac, &signature)
}

fn new_mac(secret: &str) -> Hmac<Sha256> {
    // HMAC is defined for keys of any length, so this cannot fail.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

fn check(header: &str, mac: Hmac<Sha256>, signature: &[u8]) -> Result<(), VerifyError> {
    mac.verify_slice(signature).map_err(|_| VerifyError::SignatureMismatch { header: header.to_owned() })
}

fn required_header<'r>(request: &Request<'r>, header: &str) -> Result<&'r str, VerifyError> {
    let found = request.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(header));
    found.map(|(_, value)| value.as_str()).ok_or_else(|| VerifyError::MissingHeader { header: header.to_owned() })
}

fn decode(header: &str, value: &str, encoding: Encoding) -> Result<Vec<u8>, VerifyError> {
    let value = value.trim();
    match encoding {
        Encoding::Hex => hex::decode(value).map_err(|_| malformed(header, "a hex signature", value)),
        Encoding::Base64 => BASE64.decode(value).map_err(|_| malformed(header, "a base64 signature", value)),
    }
}

fn within_tolerance(header: &str, timestamp: i64, distance: u64, tolerance: u64) -> Result<(), VerifyError> {
    if distance > tolerance {
        return Err(VerifyError::StaleTimestamp {
            header: header.to_owned(),
            timestamp,
            distance_seconds: distance,
            tolerance_seconds: tolerance,
        });
    }
    Ok(())
}

fn malformed(header: &str, expected: &str, found: &str) -> VerifyError {
    // Headers are attacker-controlled; a short quoted excerpt is enough to debug.
    let excerpt: String = found.chars().take(64).collect();
    let found = if excerpt.len() < found.len() { format!("{excerpt:?}…") } else { format!("{excerpt:?}") };
    VerifyError::MalformedHeader { header: header.to_owned(), expected: expected.to_owned(), found }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;

    fn hmac_sha256(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> Request<'a> {
        Request { method: "POST", uri: "https://cdp.example.com/v1/webhooks/src_1", headers, body }
    }

    fn headers(pairs: &[(&str, String)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), value.clone())).collect()
    }

    #[test]
    fn shopify_accepts_the_base64_hmac_of_the_raw_body() {
        let signature = BASE64.encode(hmac_sha256("shpss_secret", &[BODY]));
        let headers = headers(&[("x-shopify-hmac-sha256", signature)]);
        let config = VerifyConfig::new("shpss_secret");
        assert_eq!(verify(Platform::Shopify, &config, &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn shopify_rejects_a_signature_made_with_another_secret() {
        let signature = BASE64.encode(hmac_sha256("another", &[BODY]));
        let headers = headers(&[(SHOPIFY_HEADER, signature)]);
        let error = verify(Platform::Shopify, &VerifyConfig::new("shpss_secret"), &request(&headers, BODY), NOW);
        assert_eq!(
            error.unwrap_err().to_string(),
            "X-Shopify-Hmac-Sha256: expected a valid signature, found one that does not match"
        );
    }

    #[test]
    fn shopify_rejects_a_tampered_body() {
        let signature = BASE64.encode(hmac_sha256("shpss_secret", &[BODY]));
        let headers = headers(&[(SHOPIFY_HEADER, signature)]);
        let tampered = br#"{"id":820982911946154508,"email":"eve@example.com"}"#;
        let result = verify(Platform::Shopify, &VerifyConfig::new("shpss_secret"), &request(&headers, tampered), NOW);
        assert!(matches!(result, Err(VerifyError::SignatureMismatch { .. })));
    }

    #[test]
    fn a_missing_signature_header_is_named() {
        let result = verify(Platform::Shopify, &VerifyConfig::new("s"), &request(&[], BODY), NOW);
        assert_eq!(result.unwrap_err().to_string(), "X-Shopify-Hmac-Sha256: expected a header, found none");
    }

    #[test]
    fn a_signature_that_is_not_base64_is_malformed() {
        let headers = headers(&[(SHOPIFY_HEADER, "not base64!".to_owned())]);
        let result = verify(Platform::Shopify, &VerifyConfig::new("s"), &request(&headers, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "X-Shopify-Hmac-Sha256: expected a base64 signature, found \"not base64!\""
        );
    }

    fn stripe_header(secret: &str, timestamp: i64, extra_v1: Option<&str>) -> String {
        let signature = hex::encode(hmac_sha256(secret, &[timestamp.to_string().as_bytes(), b".", BODY]));
        match extra_v1 {
            Some(extra) => format!("t={timestamp},v1={extra},v1={signature},v0=deadbeef"),
            None => format!("t={timestamp},v1={signature}"),
        }
    }

    #[test]
    fn stripe_accepts_a_matching_v1_within_the_tolerance() {
        let headers = headers(&[(STRIPE_HEADER, stripe_header("whsec_test", NOW - 20, None))]);
        assert_eq!(verify(Platform::Stripe, &VerifyConfig::new("whsec_test"), &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn stripe_accepts_any_matching_v1_during_secret_rotation() {
        let old = hex::encode(hmac_sha256("whsec_old", &[b"1", BODY]));
        let headers = headers(&[(STRIPE_HEADER, stripe_header("whsec_test", NOW, Some(&old)))]);
        assert_eq!(verify(Platform::Stripe, &VerifyConfig::new("whsec_test"), &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn stripe_rejects_a_signature_made_with_another_secret() {
        let headers = headers(&[(STRIPE_HEADER, stripe_header("whsec_other", NOW, None))]);
        let result = verify(Platform::Stripe, &VerifyConfig::new("whsec_test"), &request(&headers, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "Stripe-Signature: expected a valid signature, found one that does not match"
        );
    }

    #[test]
    fn stripe_rejects_a_correctly_signed_but_stale_timestamp() {
        let headers = headers(&[(STRIPE_HEADER, stripe_header("whsec_test", NOW - 3600, None))]);
        let result = verify(Platform::Stripe, &VerifyConfig::new("whsec_test"), &request(&headers, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "Stripe-Signature: timestamp 1699996400 is 3600 s away from now; the tolerance is 300 s"
        );
    }

    #[test]
    fn stripe_honours_a_configured_tolerance() {
        let headers = headers(&[(STRIPE_HEADER, stripe_header("whsec_test", NOW - 3600, None))]);
        let config = VerifyConfig { tolerance_seconds: 7200, ..VerifyConfig::new("whsec_test") };
        assert_eq!(verify(Platform::Stripe, &config, &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn stripe_without_a_timestamp_is_malformed() {
        let headers = headers(&[(STRIPE_HEADER, "v1=abcd".to_owned())]);
        let result = verify(Platform::Stripe, &VerifyConfig::new("whsec_test"), &request(&headers, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "Stripe-Signature: expected a t=<unix seconds> element, found \"v1=abcd\""
        );
    }

    fn hubspot_headers(secret: &str, timestamp_ms: i64) -> Vec<(String, String)> {
        let uri = "https://cdp.example.com/v1/webhooks/src_1";
        let timestamp = timestamp_ms.to_string();
        let signature = hmac_sha256(secret, &[b"POST", uri.as_bytes(), BODY, timestamp.as_bytes()]);
        headers(&[(HUBSPOT_SIGNATURE_HEADER, BASE64.encode(signature)), (HUBSPOT_TIMESTAMP_HEADER, timestamp)])
    }

    #[test]
    fn hubspot_accepts_a_v3_signature_over_method_uri_body_and_timestamp() {
        let headers = hubspot_headers("hs_secret", NOW * 1000 - 60_000);
        assert_eq!(verify(Platform::HubSpot, &VerifyConfig::new("hs_secret"), &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn hubspot_rejects_a_signature_for_another_uri() {
        let headers = hubspot_headers("hs_secret", NOW * 1000);
        let moved = Request { uri: "https://cdp.example.com/v1/webhooks/src_2", ..request(&headers, BODY) };
        let result = verify(Platform::HubSpot, &VerifyConfig::new("hs_secret"), &moved, NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "X-HubSpot-Signature-v3: expected a valid signature, found one that does not match"
        );
    }

    #[test]
    fn hubspot_rejects_a_timestamp_older_than_five_minutes() {
        let headers = hubspot_headers("hs_secret", (NOW - 301) * 1000);
        let result = verify(Platform::HubSpot, &VerifyConfig::new("hs_secret"), &request(&headers, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "X-HubSpot-Request-Timestamp: timestamp 1699999699000 is 301 s away from now; the tolerance is 300 s"
        );
    }

    fn github_config() -> VerifyConfig {
        VerifyConfig {
            generic: Some(GenericHmac {
                header: "X-Hub-Signature-256".to_owned(),
                algorithm: Algorithm::Sha256,
                encoding: Encoding::Hex,
                prefix: Some("sha256=".to_owned()),
            }),
            ..VerifyConfig::new("gh_secret")
        }
    }

    #[test]
    fn generic_accepts_a_prefixed_hex_signature_like_github() {
        let signature = format!("sha256={}", hex::encode(hmac_sha256("gh_secret", &[BODY])));
        let headers = headers(&[("X-Hub-Signature-256", signature)]);
        assert_eq!(verify(Platform::Generic, &github_config(), &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn generic_accepts_a_base64_signature_when_configured() {
        let config: VerifyConfig = serde_json::from_value(serde_json::json!({
            "secret": "s3",
            "generic": {"header": "X-Signature", "encoding": "base64"}
        }))
        .unwrap();
        let headers = headers(&[("X-Signature", BASE64.encode(hmac_sha256("s3", &[BODY])))]);
        assert_eq!(verify(Platform::Generic, &config, &request(&headers, BODY), NOW), Ok(()));
    }

    #[test]
    fn generic_rejects_a_bad_signature_and_a_missing_prefix() {
        let bad = format!("sha256={}", hex::encode(hmac_sha256("other", &[BODY])));
        let headers_bad = headers(&[("X-Hub-Signature-256", bad)]);
        let result = verify(Platform::Generic, &github_config(), &request(&headers_bad, BODY), NOW);
        assert!(matches!(result, Err(VerifyError::SignatureMismatch { .. })));

        let unprefixed = headers(&[("X-Hub-Signature-256", "abcd".to_owned())]);
        let result = verify(Platform::Generic, &github_config(), &request(&unprefixed, BODY), NOW);
        assert_eq!(
            result.unwrap_err().to_string(),
            "X-Hub-Signature-256: expected a signature starting with \"sha256=\", found \"abcd\""
        );
    }

    #[test]
    fn generic_without_settings_is_a_configuration_error() {
        let result = verify(Platform::Generic, &VerifyConfig::new("s"), &request(&[], BODY), NOW);
        assert!(matches!(result, Err(VerifyError::Config { .. })));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        assert!(!format!("{:?}", VerifyConfig::new("whsec_topsecret")).contains("topsecret"));
    }
}
