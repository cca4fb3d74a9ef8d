//! Admin tokens: who may call the administrative gRPC services, for which
//! workspace. Tokens arrive as `authorization: Bearer <token>` metadata and are
//! looked up by their SHA-256 in the [`AdminTokens`] projection, which follows
//! the log so tokens issued or revoked elsewhere take effect within moments.

use std::sync::{Arc, RwLock};

use onepd_commands::workspace::token_sha256;
use onepd_domain::events::workspace::TokenScope;
use onepd_domain::{EventFilter, EventStore, Position, StoreError};
use onepd_projections::access::{AdminTokens, EVENT_TYPES, Grant};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::EventLog;

/// The valid admin tokens, kept current by a task that follows the log.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    tokens: RwLock<AdminTokens>,
}

impl TokenRegistry {
    /// Reads every token event up to the head, then follows the log in the
    /// background for new ones.
    pub async fn follow(log: &EventLog) -> Result<Arc<TokenRegistry>, StoreError> {
        let registry = Arc::new(TokenRegistry::default());
        let filter =
            EventFilter { event_types: EVENT_TYPES.iter().map(|t| t.to_string()).collect(), ..EventFilter::default() };
        let mut next = Position(1);
        let head = log.head().await?;
        while next <= head {
            let page = log.read(next, Some(head), &filter, 1_000).await?;
            registry.apply(&page.events);
            next = page.next;
        }
        let mut subscription = log.subscribe(next, filter).await?;
        let follower = Arc::downgrade(&registry);
        tokio::spawn(async move {
            loop {
                let batch = match subscription.next_batch().await {
                    Ok(batch) => batch,
                    Err(err) => {
                        // Tokens issued or revoked from here on are not seen
                        // until this clears: make it loud and countable.
                        tracing::error!(cause = %err, "admin token follower cannot read the log; retrying");
                        metrics::counter!("onepd_admin_token_follower_errors_total").increment(1);
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let Some(registry) = follower.upgrade() else { return };
                registry.apply(&batch);
            }
        });
        Ok(registry)
    }

    fn apply(&self, events: &[onepd_domain::RecordedEvent]) {
        let mut tokens = self.tokens.write().expect("token lock");
        for event in events {
            tokens.apply(event);
        }
    }

    /// Checks the request's token and that it allows `needed`.
    pub fn authorize(&self, metadata: &MetadataMap, needed: TokenScope) -> Result<Grant, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <admin token>\", found none"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <admin token>\""))?;
        let tokens = self.tokens.read().expect("token lock");
        let grant = tokens.grant(&token_sha256(token)).ok_or_else(|| {
            Status::unauthenticated("authorization: admin token not recognized (revoked or never issued)")
        })?;
        if !grant.allows(needed) {
            return Err(Status::permission_denied(
                format!("authorization: this admin token lacks the {needed:?} scope").to_lowercase(),
            ));
        }
        Ok(grant.clone())
    }
}
