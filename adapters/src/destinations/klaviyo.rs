//! `klaviyo`: Klaviyo (marketing automation). Not yet written.

use async_trait::async_trait;
use onepd_domain::destination::{Category, DeliverError, Description, Destination, EventResult, PreparedEvent};
use serde_json::Value;

use super::AdapterError;

/// The adapter's name.
pub const NAME: &str = "klaviyo";

/// The Klaviyo adapter.
#[derive(Debug, Clone)]
pub struct Klaviyo {}

impl Klaviyo {
    /// The adapter configured with `settings`.
    pub fn new(settings: &Value) -> Result<Klaviyo, AdapterError> {
        let _ = settings;
        Ok(Klaviyo {})
    }
}

#[async_trait]
impl Destination for Klaviyo {
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
        Err(DeliverError::Adapter("klaviyo: not yet written".to_owned()))
    }
}
