//! Configuring a webhook source: its platform, secret and mappings.

use onepd_domain::events::workspace::{SourceKind, WebhookConfigured};
use onepd_domain::{EventId, NewEvent, WorkspaceId};
use uuid::Uuid;

use super::{ConfigError, WorkspaceConfig, event};
use crate::webhook::WebhookSource;

impl WorkspaceConfig {
    /// Decides the event that sets (or replaces) a webhook source's
    /// configuration. The source must be of kind `webhook`, and the
    /// configuration must check ([`WebhookSource::from_configured`]). The
    /// event is sealed under the source's own subject, so the secret is never
    /// stored in clear.
    pub fn configure_webhook(
        &self,
        workspace: WorkspaceId,
        configured: WebhookConfigured,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let source = self.sources.get(&configured.source_id).ok_or(ConfigError::NoSuchSource(configured.source_id))?;
        if source.kind != SourceKind::Webhook {
            return Err(ConfigError::InvalidWebhook(format!(
                "source {:?}: expected a source of kind webhook, found kind {}",
                source.name,
                source.kind.as_str()
            )));
        }
        WebhookSource::from_configured(&configured).map_err(ConfigError::InvalidWebhook)?;
        let id = format!("{}/{}", WebhookConfigured::TYPE, self.version + 1);
        let mut event = event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            WebhookConfigured::TYPE,
            1,
            serde_json::to_value(&configured).expect("serializable"),
            actor,
        );
        event.subject = Some(WebhookConfigured::subject(configured.source_id));
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::events::workspace::Industry;
    use serde_json::json;

    use super::*;
    use crate::webhook::Platform;
    use crate::workspace::NewWorkspace;

    fn workspace_with(kind: SourceKind) -> (WorkspaceConfig, WorkspaceId, Uuid) {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let source = Uuid::from_u128(2);
        let mut config = WorkspaceConfig::default();
        let spec = NewWorkspace { name: "w".into(), industry: Industry::General, default_region: None };
        let created = config.create(workspace, &spec, "test").unwrap();
        config.record(&created);
        let added = config.create_source(workspace, source, "shop", kind, "test").unwrap();
        config.record(&added);
        (config, workspace, source)
    }

    fn shopify(source_id: Uuid) -> WebhookConfigured {
        WebhookConfigured {
            source_id,
            platform: "shopify".into(),
            verification: Some(json!({"secret": "shpss_1"})),
            mappings: WebhookSource::shipped_mappings(Platform::Shopify),
            public_url: None,
        }
    }

    #[test]
    fn a_webhook_configuration_is_sealed_under_its_source_and_refused_for_other_kinds() {
        let (config, workspace, source) = workspace_with(SourceKind::Webhook);
        let event = config.configure_webhook(workspace, shopify(source), "test").unwrap();
        assert_eq!(event.event_type, "WebhookConfigured");
        assert_eq!(event.subject, Some(format!("webhook-source:{source}")));
        assert_eq!(event.data["verification"]["secret"], "shpss_1");

        let (config, workspace, source) = workspace_with(SourceKind::Http);
        let err = config.configure_webhook(workspace, shopify(source), "test").unwrap_err();
        assert_eq!(err.to_string(), "webhook: source \"shop\": expected a source of kind webhook, found kind http");

        let (config, workspace, source) = workspace_with(SourceKind::Webhook);
        let mut bad = shopify(source);
        bad.mappings[0].mapping = json!({"platform": "shopify"});
        let err = config.configure_webhook(workspace, bad, "test").unwrap_err();
        assert!(err.to_string().starts_with("webhook: mapping 0: mapping.delivery_id: expected"), "{err}");
    }
}
