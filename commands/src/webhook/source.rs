//! A webhook source as configured: its platform, how its requests are
//! verified, and which mappings turn its payloads into messages.
//!
//! [`WebhookSource::from_configured`] checks a stored `WebhookConfigured`
//! (the same check decides whether the configuration may be set);
//! [`WebhookSource::handle`] runs one request through verification, JSON
//! parsing, topic selection and the mappings.
//!
//! **Topics.** A mapping serves the topics it names (none named: every
//! topic). The request's topic is Shopify's `X-Shopify-Topic` header or
//! Stripe's event `type`; HubSpot batches events of several topics in one
//! request and the generic platform has no topic, so for them every mapping
//! applies, each choosing its items with `when` conditions.
//!
//! **Invariant:** pure; `now` comes in as Unix seconds.

use onepd_domain::events::message::Violation;
use onepd_domain::events::workspace::{WebhookConfigured, WebhookMapping};
use serde_json::Value;

use super::{Mapping, MappingError, Platform, Request, VerifyConfig, VerifyError, shipped, verify};

/// The header carrying Shopify's topic.
pub const SHOPIFY_TOPIC_HEADER: &str = "X-Shopify-Topic";

/// A checked webhook configuration, ready to handle requests.
#[derive(Debug, Clone)]
pub struct WebhookSource {
    platform: Platform,
    verification: Option<VerifyConfig>,
    mappings: Vec<(Vec<String>, Mapping)>,
    public_url: Option<String>,
}

/// Why a webhook request produced no messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The signature did not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The body is not JSON.
    #[error("body: expected JSON, found {0}")]
    Body(String),
    /// A mapping could not map the payload.
    #[error("mapping {index}: {error}")]
    Mapping {
        /// Which configured mapping (0-based).
        index: usize,
        /// What went wrong.
        error: MappingError,
    },
    /// No mapping serves the request's topic, or none produced a message.
    #[error("{0}")]
    Unmapped(String),
}

impl WebhookError {
    /// The error as a rejection's violation: the field it is about, a rule
    /// name and the message.
    pub fn violation(&self) -> Violation {
        let (field, rule) = match self {
            WebhookError::Verify(_) => ("signature", "webhook_signature"),
            WebhookError::Body(_) => ("body", "webhook_body"),
            WebhookError::Mapping { error: MappingError::Missing { pointer }, .. }
            | WebhookError::Mapping { error: MappingError::Mismatch { pointer, .. }, .. } => {
                return Violation::new(pointer.clone(), "webhook_mapping", self.to_string());
            }
            WebhookError::Mapping { .. } => ("mapping", "webhook_mapping"),
            WebhookError::Unmapped(_) => ("topic", "webhook_topic"),
        };
        Violation::new(field, rule, self.to_string())
    }
}

/// What a request became.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The request's topic, when the platform names one.
    pub topic: Option<String>,
    /// The Segment-spec messages, each with its deterministic `messageId`.
    pub messages: Vec<Value>,
}

impl WebhookSource {
    /// Checks a stored configuration.
    pub fn from_configured(configured: &WebhookConfigured) -> Result<WebhookSource, String> {
        let platform: Platform = configured.platform.parse()?;
        let verification = match &configured.verification {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                serde_json::from_value::<VerifyConfig>(value.clone())
                    .map_err(|err| format!("verification: expected a secret and its settings, found {err}"))?,
            ),
        };
        match (&verification, platform) {
            (None, Platform::Generic) => {}
            (None, _) => return Err(format!("secret: {} signs its webhooks; expected its secret", platform.name())),
            (Some(config), _) if config.secret.is_empty() => {
                return Err("secret: expected the platform's signing secret, found an empty one".into());
            }
            (Some(config), Platform::Generic) if config.generic.is_none() => {
                return Err("signature header: a generic source verified by HMAC needs the header it is in".into());
            }
            _ => {}
        }
        if configured.mappings.is_empty() {
            return Err("mappings: expected at least one, found none".into());
        }
        let mut mappings = Vec::with_capacity(configured.mappings.len());
        for (index, WebhookMapping { topics, mapping }) in configured.mappings.iter().enumerate() {
            let parsed = Mapping::parse(mapping).map_err(|err| format!("mapping {index}: {err}"))?;
            mappings.push((topics.clone(), parsed));
        }
        if let Some(url) = &configured.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!("public url: expected an http:// or https:// address, found {url:?}"));
        }
        Ok(WebhookSource { platform, verification, mappings, public_url: configured.public_url.clone() })
    }

    /// The mappings onepd ships for `platform`, with their topics; what a
    /// source of that platform gets when none is given.
    pub fn shipped_mappings(platform: Platform) -> Vec<WebhookMapping> {
        shipped::SHIPPED
            .iter()
            .filter(|entry| entry.platform == platform && platform != Platform::Generic)
            .map(|entry| WebhookMapping {
                topics: entry.topics.iter().map(|topic| (*topic).to_owned()).collect(),
                mapping: serde_json::from_str(entry.json).expect("shipped mappings are valid JSON (tested)"),
            })
            .collect()
    }

    /// The source's platform.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// Whether requests are verified by a signature; if not, the caller
    /// must authenticate them with the source's write key.
    pub fn signed(&self) -> bool {
        self.verification.is_some()
    }

    /// The configured public address, if any.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// What every mapping of this source can still read from a body it
    /// refused (see [`Mapping::salvage`]); empty when the body is not JSON.
    /// Call only for a request that passed verification.
    pub fn salvage(&self, body: &[u8]) -> Vec<Value> {
        let Ok(payload) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
        self.mappings.iter().flat_map(|(_, mapping)| mapping.salvage(&payload)).collect()
    }

    /// Verifies `request` (when the source is signed), parses its body and
    /// maps it to messages.
    pub fn handle(&self, request: &Request<'_>, now: i64) -> Result<Mapped, WebhookError> {
        if let Some(config) = &self.verification {
            verify(self.platform, config, request, now)?;
        }
        let payload: Value = serde_json::from_slice(request.body).map_err(|err| WebhookError::Body(err.to_string()))?;
        let topic = match self.platform {
            Platform::Shopify => request.header(SHOPIFY_TOPIC_HEADER).map(|topic| topic.trim().to_owned()),
            Platform::Stripe => payload.get("type").and_then(Value::as_str).map(str::to_owned),
            Platform::HubSpot | Platform::Generic => None,
        };
        let mut messages = Vec::new();
        let mut served = false;
        for (index, (topics, mapping)) in self.mappings.iter().enumerate() {
            let serves = match &topic {
                Some(topic) => topics.is_empty() || topics.iter().any(|t| t == topic),
                None => true,
            };
            if !serves {
                continue;
            }
            served = true;
            messages.extend(mapping.apply(request, &payload).map_err(|error| WebhookError::Mapping { index, error })?);
        }
        if messages.is_empty() {
            let topic_text = topic.as_deref().map_or_else(|| "the payload".to_owned(), |t| format!("topic {t:?}"));
            let why = if served { "the mappings produced no message for" } else { "no mapping serves" };
            return Err(WebhookError::Unmapped(format!("{why} {topic_text}")));
        }
        Ok(Mapped { topic, messages })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn configured(platform: &str, verification: Option<Value>, mappings: Vec<WebhookMapping>) -> WebhookConfigured {
        WebhookConfigured {
            source_id: uuid::Uuid::nil(),
            platform: platform.into(),
            verification,
            mappings,
            public_url: None,
        }
    }

    #[test]
    fn a_signing_platform_needs_its_secret_and_a_generic_hmac_needs_its_header() {
        let shopify = WebhookSource::shipped_mappings(Platform::Shopify);
        assert_eq!(shopify.len(), 2);
        let err = WebhookSource::from_configured(&configured("shopify", None, shopify.clone())).unwrap_err();
        assert_eq!(err, "secret: shopify signs its webhooks; expected its secret");
        assert!(WebhookSource::from_configured(&configured("shopify", Some(json!({"secret": "s"})), shopify)).is_ok());

        let generic = vec![WebhookMapping {
            topics: vec![],
            mapping: serde_json::from_str(shipped::SHIPPED.last().unwrap().json).unwrap(),
        }];
        let err = WebhookSource::from_configured(&configured("generic", Some(json!({"secret": "s"})), generic.clone()))
            .unwrap_err();
        assert!(err.starts_with("signature header:"), "{err}");
        let unsigned = WebhookSource::from_configured(&configured("generic", None, generic)).unwrap();
        assert!(!unsigned.signed());
        let err = WebhookSource::from_configured(&configured("acme", None, vec![])).unwrap_err();
        assert!(err.starts_with("platform: expected one of"), "{err}");
    }

    #[test]
    fn a_shopify_topic_without_a_mapping_is_named_and_a_mapped_one_gives_messages() {
        let source = WebhookSource::from_configured(&configured(
            "generic",
            None,
            vec![WebhookMapping {
                topics: vec![],
                mapping: json!({
                    "platform": "acme", "delivery_id": {"header": "X-Id"},
                    "messages": [{"when": {"pointer": "/event", "equals": "signup"}, "type": "identify", "userId": "/id"}]
                }),
            }],
        ))
        .unwrap();
        let headers = vec![("x-id".to_owned(), "d1".to_owned())];
        let body = br#"{"event": "signup", "id": "u1"}"#;
        let request = Request { method: "POST", uri: "http://h/v1/webhooks/x", headers: &headers, body };
        let mapped = source.handle(&request, 0).unwrap();
        assert_eq!(mapped.messages, vec![json!({"type": "identify", "userId": "u1", "messageId": "acme:d1:0"})]);

        let other = br#"{"event": "deleted", "id": "u1"}"#;
        let request = Request { body: other, ..request };
        let err = source.handle(&request, 0).unwrap_err();
        assert_eq!(err.to_string(), "the mappings produced no message for the payload");
        assert_eq!(err.violation().field, "topic");

        let request = Request { body: b"not json", ..request };
        assert_eq!(source.handle(&request, 0).unwrap_err().violation().field, "body");
    }
}
