//! Catch-up-then-live subscriptions.
//!
//! A subscription reads pages from its position until it reaches the head,
//! then waits for a wake-up (a commit in this process, or a NOTIFY from
//! another process on PostgreSQL) or for the poll interval, whichever comes
//! first. Positions are gap-free and assigned in commit order, so "everything
//! after the last position returned" is all it needs to remember.

use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::{EventFilter, EventStore, Position, ReadError, RecordedEvent, Subscription};
use tokio::sync::watch;

use super::EventLog;

/// Events per page a subscription reads.
const PAGE: usize = 1_000;

/// A subscription to an [`EventLog`].
pub struct LogSubscription {
    log: EventLog,
    next: Position,
    filter: EventFilter,
    wake: watch::Receiver<u64>,
    poll_interval: Duration,
}

impl LogSubscription {
    pub(crate) fn new(log: EventLog, from: Position, filter: EventFilter, poll_interval: Duration) -> LogSubscription {
        let wake = log.commits();
        LogSubscription { log, next: from, filter, wake, poll_interval }
    }
}

#[async_trait]
impl Subscription for LogSubscription {
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, ReadError> {
        loop {
            // Mark the wake-up seen before reading, so a commit that lands
            // after the read still wakes the wait below.
            self.wake.borrow_and_update();
            let page = self.log.read(self.next, None, &self.filter, PAGE).await?;
            self.next = self.next.max(page.next);
            if !page.events.is_empty() {
                return Ok(page.events);
            }
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    fn next_position(&self) -> Position {
        self.next
    }
}
