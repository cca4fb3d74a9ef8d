//! One read of the log for every live destination run (fan-out).
//!
//! The [`Tap`] follows the log once, for every workspace, and hands each
//! page it reads (the messages and the identity facts a live run needs) to
//! every live run at once, shared, never copied per run until a run takes
//! its own workspace's events out of it.
//!
//! A run is never held back by the others, nor they by it: a run that is
//! behind (just started, restarted at its checkpoint, or slower than the
//! log grows) reads on its own until it reaches the head, then joins the
//! tap again. The tap keeps a few pages ([`PAGES_KEPT`]); a run that falls
//! further behind than that is told so and reads on its own again. Its
//! checkpoint, retries and isolation are its own as before.
//!
//! Backfills and replay jobs read their ranges on their own.

use std::sync::Arc;
use std::time::Duration;

use onepd_domain::events::audience::{AudienceEntered, AudienceExited, ComputedTraitChanged};
use onepd_domain::events::identity::FACT_TYPES;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::{EventFilter, EventStore, Position, RecordedEvent, StoreError};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::EventLog;

/// Pages the tap keeps for runs that are a little behind.
pub(crate) const PAGES_KEPT: usize = 16;

/// One page of the log as the tap read it: every event from `from` up to
/// (not including) `next` that a live run may need.
#[derive(Debug)]
pub(crate) struct Page {
    from: Position,
    next: Position,
    events: Vec<RecordedEvent>,
}

/// The event types a live run reads: messages, and the identity facts that
/// make it fold its profiles again.
pub(crate) fn live_types() -> Vec<String> {
    let mut types: Vec<String> = vec![
        MessageAccepted::TYPE.into(),
        AudienceEntered::TYPE.into(),
        AudienceExited::TYPE.into(),
        ComputedTraitChanged::TYPE.into(),
    ];
    types.extend(FACT_TYPES.map(String::from));
    types
}

/// The shared reader; dropping it stops it.
pub(crate) struct Tap {
    pages: broadcast::Sender<Arc<Page>>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Starts following `log` from its head. A read that fails is tried
    /// again from where it stopped; runs waiting on the tap wait meanwhile.
    pub(crate) async fn start(log: EventLog) -> Result<Tap, StoreError> {
        let head = log.head().await?;
        let (pages, _) = broadcast::channel(PAGES_KEPT);
        let sender = pages.clone();
        let task = tokio::spawn(async move {
            let filter = EventFilter { event_types: live_types(), ..EventFilter::default() };
            let mut from = head.next();
            loop {
                let mut subscription = match log.subscribe(from, filter.clone()).await {
                    Ok(subscription) => subscription,
                    Err(err) => {
                        tracing::warn!(cause = %err, "the shared log reader cannot subscribe; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    match subscription.next_batch().await {
                        Ok(events) => {
                            let next = subscription.next_position();
                            metrics::counter!("onepd_activation_log_reads_total", "reader" => "shared").increment(1);
                            // Nobody listening is fine: runs that join later read on their own.
                            let _ = sender.send(Arc::new(Page { from, next, events }));
                            from = next;
                        }
                        Err(_) if log.is_closed() => return,
                        Err(err) => {
                            tracing::warn!(cause = %err, "the shared log reader stopped; reading again");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    }
                }
            }
        });
        Ok(Tap { pages, task })
    }

    /// A place in the tap for a run reading with `filter` from `next`.
    pub(crate) fn join(&self, next: Position, filter: EventFilter, reader: String) -> Tapped {
        Tapped { pages: self.pages.subscribe(), next, filter, caught_up: false, reader }
    }
}

/// A live run's source: its own reads until it reaches the head, then the
/// tap's pages, trimmed to what it has not seen and filtered to its
/// workspace.
pub(crate) struct Tapped {
    pages: broadcast::Receiver<Arc<Page>>,
    next: Position,
    filter: EventFilter,
    caught_up: bool,
    reader: String,
}

impl Tapped {
    /// The next events for the run and the position after them; waits for
    /// new events once the run is at the head. Never returns an empty batch.
    pub(crate) async fn next(
        &mut self,
        log: &EventLog,
        page: usize,
    ) -> Result<(Vec<RecordedEvent>, Position), StoreError> {
        loop {
            if !self.caught_up {
                // The tap's pages from the moment the receiver was made on
                // are kept for it; a read that reaches the head is past
                // where the tap stood then, so nothing falls between.
                let read = log.read(self.next, None, &self.filter, page).await?;
                metrics::counter!("onepd_activation_log_reads_total", "reader" => self.reader.clone()).increment(1);
                self.caught_up = read.events.len() < page;
                self.next = self.next.max(read.next);
                if !read.events.is_empty() {
                    return Ok((read.events, self.next));
                }
                continue;
            }
            match self.pages.recv().await {
                Ok(shared) => {
                    if shared.next <= self.next {
                        continue;
                    }
                    if shared.from > self.next {
                        // Cannot happen while the tap reads without gaps;
                        // reading on its own is always right.
                        self.caught_up = false;
                        continue;
                    }
                    let events: Vec<RecordedEvent> = shared
                        .events
                        .iter()
                        .filter(|event| event.position >= self.next && self.filter.admits(event))
                        .cloned()
                        .collect();
                    self.next = shared.next;
                    if !events.is_empty() {
                        return Ok((events, self.next));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Further behind than the tap keeps: read on its own
                    // from where it is, then join again.
                    self.pages = self.pages.resubscribe();
                    self.caught_up = false;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::ShuttingDown),
            }
        }
    }
}
