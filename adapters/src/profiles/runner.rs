//! Runs the profiles projection in the background of `onepd serve`, and
//! exposes its checkpoint and lag.
//!
//! Metrics: `onepd_projection_checkpoint{projection}` (the last position
//! the read model reflects) and `onepd_projection_lag_events{projection}`
//! (positions between it and the log's head, or 0 when none of them is an
//! event the projection reads), refreshed every second; when the lag cannot
//! be measured it is the whole distance to the head, never 0.
//! `onepd_quarantined_events_total{reader="profiles"}` counts events the
//! projection could not read and went on without (each logged once).

use std::sync::Arc;
use std::time::Duration;

use onepd_domain::{EventStore, Position, ProjectionStore};
use onepd_projections::runner::{PROFILES, Runner, followed_filter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::EventLog;

/// The running projection.
#[derive(Debug)]
pub struct ProfilesProjection {
    checkpoint: watch::Receiver<Position>,
    stalled: Arc<std::sync::Mutex<Option<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProfilesProjection {
    /// Starts the projection over `log` and `store`, keeping about
    /// `cache_bytes` of profiles in memory; it runs until
    /// [`ProfilesProjection::stop`] or until the log is closed.
    pub fn spawn(log: EventLog, store: Arc<dyn ProjectionStore>, cache_bytes: usize) -> ProfilesProjection {
        let (sender, checkpoint) = watch::channel(Position::START);
        let sender = Arc::new(sender);
        let stalled: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let mut runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, store).with_cache_bytes(cache_bytes);
        if let Some(hasher) = log.suppression_hasher() {
            runner = runner.with_suppression(hasher);
        }
        let runner = runner.with_quarantine_observer(Arc::new(|workspace, record| {
            tracing::warn!(
                projection = PROFILES,
                %workspace,
                position = record.position.0,
                event_type = %record.event_type,
                reason = %record.reason,
                "event quarantined; the projection goes on without it"
            );
            metrics::counter!("onepd_quarantined_events_total", "reader" => PROFILES).increment(1);
        }));
        let on_checkpoint = {
            let sender = sender.clone();
            let stalled = stalled.clone();
            move |position: Position| {
                *stalled.lock().expect("not poisoned") = None;
                sender.send_replace(position);
                metrics::gauge!("onepd_projection_checkpoint", "projection" => PROFILES).set(position.0 as f64);
            }
        };
        let run = {
            let log = log.clone();
            let stalled = stalled.clone();
            tokio::spawn(async move {
                loop {
                    match runner.run(&on_checkpoint).await {
                        Ok(()) => return,
                        // The log was closed: the process is stopping.
                        Err(_) if log.is_closed() => return,
                        Err(err) => {
                            {
                                // The first failure's time is kept while it goes on.
                                let since = crate::ingest::now().to_rfc3339();
                                let mut slot = stalled.lock().expect("not poisoned");
                                if slot.is_none() {
                                    *slot = Some(format!("stalled since {since}: {err}"));
                                }
                            }
                            tracing::error!(projection = PROFILES, cause = %err, "projection stopped; restarting");
                            metrics::counter!("onepd_projection_errors_total", "projection" => PROFILES).increment(1);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        let lag = {
            let checkpoint = checkpoint.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if log.is_closed() {
                        return;
                    }
                    let at = *checkpoint.borrow();
                    if let Err(err) = record_lag(&log, at).await {
                        tracing::warn!(projection = PROFILES, cause = %err, "cannot measure the projection's lag");
                        // Unknown is not "caught up": count the whole distance.
                        if let Ok(head) = log.head().await {
                            metrics::gauge!("onepd_projection_lag_events", "projection" => PROFILES)
                                .set(head.0.saturating_sub(at.0) as f64);
                        }
                    }
                }
            })
        };
        ProfilesProjection { checkpoint, stalled, tasks: vec![run, lag] }
    }

    /// Why the projection is not following the log (`stalled since T:
    /// cause`), while it is failing and starting again.
    pub fn stalled(&self) -> Option<String> {
        self.stalled.lock().expect("not poisoned").clone()
    }

    /// Waits until the read model reflects every event up to `position`.
    pub async fn caught_up(&self, position: Position) {
        let mut checkpoint = self.checkpoint.clone();
        let _ = checkpoint.wait_for(|checkpoint| *checkpoint >= position).await;
    }

    /// The last position the read model reflects.
    pub fn checkpoint(&self) -> Position {
        *self.checkpoint.borrow()
    }

    /// Stops the projection; a commit in flight either lands whole or not
    /// at all, and the next start resumes from the checkpoint.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl crate::cluster::Stop for ProfilesProjection {
    fn stop(&self) {
        ProfilesProjection::stop(self);
    }
}

impl Drop for ProfilesProjection {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn record_lag(log: &EventLog, checkpoint: Position) -> Result<(), onepd_domain::StoreError> {
    let lag = log.backlog(checkpoint.next(), &followed_filter()).await?;
    metrics::gauge!("onepd_projection_checkpoint", "projection" => PROFILES).set(checkpoint.0 as f64);
    metrics::gauge!("onepd_projection_lag_events", "projection" => PROFILES).set(lag as f64);
    Ok(())
}
