//! `hubspot`: HubSpot (marketing automation). Not yet written.

use async_trait::async_trait;
use onepd_domain::destination::{Category, DeliverError, Description, Destination, EventResult, PreparedEvent};
use serde_json::Value;

use super::AdapterError;

/// The adapter's name.
pub const NAME: &str = "hubspot";

/// The HubSpot adapter.
#[derive(Debug, Clone)]
pub struct HubSpot {}

impl HubSpot {
    /// The adapter configured with `settings`.
    pub fn new(settings: &Value) -> Result<HubSpot, AdapterError> {
        let _ = settings;
        Ok(HubSpot {})
    }
}

#[async_trait]
impl Destination for HubSpot {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::MarketingAutomation,
            identifiers: Vec::new(),
            max_batch_size: 1,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let _ = events;
        Err(DeliverError::Adapter("hubspot: not yet written".to_owned()))
    }
}
