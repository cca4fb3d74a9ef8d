//! Facts about a workspace's configuration, kept in its own stream
//! (`workspace-<id>`) so changes to it are checked with optimistic concurrency.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{StreamId, WorkspaceId};

/// The stream holding a workspace's configuration.
pub fn workspace_stream(workspace: WorkspaceId) -> StreamId {
    StreamId::new(format!("workspace-{}", workspace.0)).expect("a workspace stream id is valid")
}

/// A workspace came into being.
///
/// Schema version 2 added `industry` and `default_region`; version 1 events
/// are upcast with `general` and no region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceCreated {
    /// Its human name, unique per installation (`default`).
    pub name: String,
    /// The business it belongs to.
    pub industry: Industry,
    /// ISO 3166-1 alpha-2 region for phone numbers written without a country
    /// code (`US`), if any.
    pub default_region: Option<String>,
}

impl WorkspaceCreated {
    /// The stored event type.
    pub const TYPE: &'static str = "WorkspaceCreated";
    /// The current schema version.
    pub const SCHEMA_VERSION: u32 = 2;

    /// Lifts version 1 data (`{"name"}`) to version 2.
    pub fn upcast_v1(mut data: serde_json::Value) -> Result<serde_json::Value, String> {
        let object = data.as_object_mut().ok_or("expected an object")?;
        object.entry("industry").or_insert_with(|| "general".into());
        object.entry("default_region").or_insert(serde_json::Value::Null);
        Ok(data)
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Read profiles and other projections.
    Read,
    /// Read, follow and verify the event log.
    Audit,
    /// Everything, including configuration.
    Admin,
}

impl TokenScope {
    /// Whether a token with this scope may do what `needed` allows.
    pub fn allows(self, needed: TokenScope) -> bool {
        self == TokenScope::Admin || self == needed
    }
}

/// An admin token was issued. Only its SHA-256 is stored; the token itself
/// is shown once to whoever issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenIssued {
    /// Names the token for revocation and audit, without revealing it.
    pub token_id: Uuid,
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    /// What the token may do.
    pub scopes: Vec<TokenScope>,
}

impl AdminTokenIssued {
    /// The stored event type.
    pub const TYPE: &'static str = "AdminTokenIssued";
}

/// An admin token was revoked; it authenticates nothing from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenRevoked {
    /// The token revoked.
    pub token_id: Uuid,
}

impl AdminTokenRevoked {
    /// The stored event type.
    pub const TYPE: &'static str = "AdminTokenRevoked";
}

/// The business a workspace belongs to. Restricted industries have what they
/// send to ad platforms scrubbed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Industry {
    /// No restrictions beyond the defaults.
    #[default]
    General,
    /// Handles Protected Health Information.
    Healthcare,
    /// Pharmaceuticals.
    Pharmaceutical,
    /// Banking and lending.
    FinancialServices,
    /// Insurance.
    Insurance,
    /// Cryptocurrency.
    Cryptocurrency,
}

impl Industry {
    /// Every industry, in declaration order.
    pub const ALL: [Industry; 6] = [
        Industry::General,
        Industry::Healthcare,
        Industry::Pharmaceutical,
        Industry::FinancialServices,
        Industry::Insurance,
        Industry::Cryptocurrency,
    ];

    /// The name used in events, on the CLI and in APIs (`financial_services`).
    pub fn as_str(self) -> &'static str {
        match self {
            Industry::General => "general",
            Industry::Healthcare => "healthcare",
            Industry::Pharmaceutical => "pharmaceutical",
            Industry::FinancialServices => "financial_services",
            Industry::Insurance => "insurance",
            Industry::Cryptocurrency => "cryptocurrency",
        }
    }
}

impl std::str::FromStr for Industry {
    type Err = String;

    fn from_str(s: &str) -> Result<Industry, String> {
        Industry::ALL.into_iter().find(|industry| industry.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Industry::ALL.iter().map(|i| i.as_str()).collect();
            format!("industry: expected one of {}, found \"{s}\"", names.join(", "))
        })
    }
}

/// Where a source's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A backend service calling the gRPC or HTTP API.
    Server,
    /// onepd's browser JavaScript API.
    Javascript,
    /// Any client of the Segment-compatible HTTP API (Segment SDKs included).
    Http,
    /// A platform pushing its own payloads.
    Webhook,
    /// Offline file import.
    File,
}

impl SourceKind {
    /// Every kind, in declaration order.
    pub const ALL: [SourceKind; 5] =
        [SourceKind::Server, SourceKind::Javascript, SourceKind::Http, SourceKind::Webhook, SourceKind::File];

    /// The name used in events, on the CLI and in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Server => "server",
            SourceKind::Javascript => "javascript",
            SourceKind::Http => "http",
            SourceKind::Webhook => "webhook",
            SourceKind::File => "file",
        }
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceKind, String> {
        SourceKind::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = SourceKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("kind: expected one of {}, found \"{s}\"", names.join(", "))
        })
    }
}

/// A source was added to a workspace. Messages it sends are appended to the
/// stream [`source_stream`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCreated {
    /// The source's id.
    pub source_id: Uuid,
    /// Its human name, unique in the workspace.
    pub name: String,
    /// Where its data comes from.
    pub kind: SourceKind,
}

impl SourceCreated {
    /// The stored event type.
    pub const TYPE: &'static str = "SourceCreated";
}

/// The stream holding the messages a source sent.
pub fn source_stream(source: Uuid) -> StreamId {
    StreamId::new(format!("source-{source}")).expect("a source stream id is valid")
}

/// A write key was issued for a source. Only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteKeyIssued {
    /// Names the key for revocation and audit, without revealing it.
    pub key_id: Uuid,
    /// The source whose messages the key writes.
    pub source_id: Uuid,
    /// Lowercase hex SHA-256 of the key.
    pub key_sha256: String,
}

impl WriteKeyIssued {
    /// The stored event type.
    pub const TYPE: &'static str = "WriteKeyIssued";
}

/// A write key was revoked; it authenticates nothing from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteKeyRevoked {
    /// The key revoked.
    pub key_id: Uuid,
}

impl WriteKeyRevoked {
    /// The stored event type.
    pub const TYPE: &'static str = "WriteKeyRevoked";
}

/// What a tracking plan does with a message that breaks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanMode {
    /// Accept it and record the violations on the event.
    #[default]
    Allow,
    /// Reject it: it becomes a `MessageRejected` event.
    Block,
}

/// A workspace's tracking plan was set (replacing any earlier one).
///
/// `plan` is the plan document as given (see `onepd_commands::ingest::plan`
/// for its shape): JSON Schemas for track properties by event name, for
/// identify traits and for group traits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackingPlanSet {
    /// What happens to a message that breaks the plan.
    pub mode: PlanMode,
    /// The plan document.
    pub plan: serde_json::Value,
}

impl TrackingPlanSet {
    /// The stored event type.
    pub const TYPE: &'static str = "TrackingPlanSet";
}

/// A workspace's sensitive-data settings were set (replacing earlier ones):
/// its industry, which decides whether ad platforms get deny-by-default
/// scrubbing, and whether IP addresses and user agents may reach ad
/// platforms in healthcare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePolicySet {
    /// The business's industry from now on.
    pub industry: Industry,
    /// Whether a healthcare workspace lets ad platforms receive the client's
    /// IP address and user agent (withheld by default).
    #[serde(default)]
    pub allow_ip_user_agent: bool,
    /// The business's registered site origin (`https://www.example.com`),
    /// the page URL a restricted industry's ad platforms receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_origin: Option<String>,
}

impl WorkspacePolicySet {
    /// The stored event type.
    pub const TYPE: &'static str = "WorkspacePolicySet";
}

/// A webhook source's configuration was set (replacing any earlier one):
/// how its requests are verified and how its payloads become messages.
///
/// The event names the subject [`WebhookConfigured::subject`], so its data —
/// the signing secret included — is stored sealed with that subject's key,
/// never in clear. `platform`, `verification` and the mappings are checked
/// when the configuration is decided (`onepd_commands::webhook`); they are
/// kept here as JSON so the domain need not know every platform.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfigured {
    /// The source (of kind `webhook`) the configuration belongs to.
    pub source_id: Uuid,
    /// Whose signature scheme verifies requests: `shopify`, `stripe`,
    /// `hubspot` or `generic`.
    pub platform: String,
    /// How requests are verified: a signature secret and its settings, or
    /// `null` for a generic source authenticated by its write key instead.
    pub verification: Option<serde_json::Value>,
    /// The mappings, tried in order; each applies to the topics it names.
    pub mappings: Vec<WebhookMapping>,
    /// The address the platform calls, scheme and host included
    /// (`https://cdp.example.com`), for platforms that sign the URL (HubSpot);
    /// when absent, the request's `X-Forwarded-Proto` (else `http`) and
    /// `Host` are used.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// One mapping of a webhook source and the topics it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookMapping {
    /// The platform's topic names this mapping serves (Shopify's
    /// `X-Shopify-Topic`, Stripe's event `type`); empty means every topic.
    pub topics: Vec<String>,
    /// The mapping document (see `onepd_commands::webhook::mapping`).
    pub mapping: serde_json::Value,
}

// The verification holds the secret: left out so logging cannot leak it.
impl std::fmt::Debug for WebhookConfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfigured")
            .field("source_id", &self.source_id)
            .field("platform", &self.platform)
            .field("verification", &self.verification.as_ref().map(|_| "<redacted>"))
            .field("mappings", &self.mappings.len())
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl WebhookConfigured {
    /// The stored event type.
    pub const TYPE: &'static str = "WebhookConfigured";

    /// The subject whose key seals a source's webhook configuration.
    pub fn subject(source_id: Uuid) -> String {
        format!("webhook-source:{source_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_workspace_reads_as_general_with_no_region() {
        let upcast = crate::events::upcasters()
            .upcast(WorkspaceCreated::TYPE, 1, serde_json::json!({ "name": "default" }))
            .unwrap();
        assert_eq!(upcast.0, WorkspaceCreated::SCHEMA_VERSION);
        let created: WorkspaceCreated = serde_json::from_value(upcast.1).unwrap();
        assert_eq!(
            created,
            WorkspaceCreated { name: "default".into(), industry: Industry::General, default_region: None }
        );
    }

    #[test]
    fn kinds_and_industries_read_back_from_their_names_and_name_the_choices_otherwise() {
        for kind in SourceKind::ALL {
            assert_eq!(kind.as_str().parse::<SourceKind>(), Ok(kind));
        }
        for industry in Industry::ALL {
            assert_eq!(industry.as_str().parse::<Industry>(), Ok(industry));
        }
        assert_eq!(
            "mobile".parse::<SourceKind>(),
            Err("kind: expected one of server, javascript, http, webhook, file, found \"mobile\"".into())
        );
    }
}
