//! In-memory projections that follow the log: [`Live`] reads every event of a
//! [`Fold`]'s types up to the head, then keeps folding new ones from a
//! subscription in the background, so configuration changed by another
//! process (`onepd key revoke`) takes effect within moments.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use onepd_domain::{EventFilter, EventStore, Position, RecordedEvent, StoreError};
use onepd_projections::Fold;
use tokio::sync::watch;

use crate::EventLog;

/// The filter for `T`'s event types.
fn filter<T: Fold>() -> EventFilter {
    EventFilter {
        event_types: T::EVENT_TYPES.iter().map(|t| t.to_string()).collect(),
        parts: T::PARTS,
        ..EventFilter::default()
    }
}

/// Folds every event of `T`'s types up to the log's head into `state` and
/// returns that head.
pub async fn fold_to_head<T: Fold>(log: &EventLog, state: &mut T) -> Result<Position, StoreError> {
    let filter = filter::<T>();
    let head = log.head().await?;
    let mut next = Position(1);
    while next <= head {
        let page = log.read(next, Some(head), &filter, 1_000).await?;
        for event in &page.events {
            state.apply(event);
        }
        next = page.next;
    }
    Ok(head)
}

/// A fold kept current by a task that follows the log.
#[derive(Debug)]
pub struct Live<T> {
    state: RwLock<T>,
    applied: watch::Sender<Position>,
}

impl<T: Fold> Live<T> {
    /// Folds every event up to the head, then follows the log until the
    /// returned `Arc` is dropped.
    pub async fn follow(log: &EventLog, name: &'static str) -> Result<Arc<Live<T>>, StoreError> {
        let mut state = T::default();
        let head = fold_to_head(log, &mut state).await?;
        let live = Arc::new(Live { state: RwLock::new(state), applied: watch::channel(head).0 });
        let mut subscription = log.subscribe(head.next(), filter::<T>()).await?;
        let follower = Arc::downgrade(&live);
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                let batch = match subscription.next_batch().await {
                    Ok(batch) => batch,
                    // The log was closed (the process is stopping): nothing
                    // more will come.
                    Err(_) if log.is_closed() => return,
                    Err(err) => {
                        // Changes from here on are not seen until this
                        // clears: make it loud and countable.
                        tracing::error!(projection = name, cause = %err, "follower cannot read the log; retrying");
                        metrics::counter!("onepd_follower_errors_total", "projection" => name).increment(1);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let Some(live) = follower.upgrade() else { return };
                if let Some(last) = batch.last() {
                    live.apply(&batch, last.position);
                }
            }
        });
        Ok(live)
    }

    fn apply(&self, events: &[RecordedEvent], through: Position) {
        let mut state = self.state.write().expect("projection lock");
        for event in events {
            state.apply(event);
        }
        drop(state);
        self.applied.send_if_modified(|applied| {
            let advanced = through > *applied;
            if advanced {
                *applied = through;
            }
            advanced
        });
    }

    /// Reads the current state.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.state.read().expect("projection lock"))
    }

    /// Waits until the fold has seen every event of its types up to `position`.
    pub async fn caught_up(&self, position: Position) {
        let mut applied = self.applied.subscribe();
        let _ = applied.wait_for(|applied| *applied >= position).await;
    }
}
