//! The worker loop: rest while the destination is paused, lease a batch under the lease
//! order, wait for more when batching, hand the batch to `attempt`, then settle it in turn.
//! Spool errors are logged and retried after a second; nothing here decides a verdict.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::Worker;
use super::order::Ticket;
use crate::spool::{Leased, SpoolError};
use crate::telemetry;

impl Worker {
    /// Deliver until `shutdown` turns true; a batch in progress is finished first.
    pub async fn run(self: std::sync::Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Some(until) = self.spool.shared_pause(&self.name) {
                // Another daemon sharing the spool read a 429 from this destination.
                self.status.pause(until);
            }
            if let Some(until) = self.status.paused_until() {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let (batch, ticket) = match self.order.lease(self.next_batch()).await {
                Ok(leased) => leased,
                Err(e) => {
                    self.status.spool_trouble();
                    if let Some(failed) = self.spool_trouble.due(telemetry::once) {
                        tracing::error!(destination = %self.name, error = %e, failed_since_last_line = failed,
                            "cannot lease from the spool; trying again every second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(ticket) = ticket else {
                tokio::select! {
                    _ = self.spool.wait(&self.name, Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            if let Err(e) = self.deliver(batch, ticket).await {
                self.status.spool_trouble();
                if let Some(failed) = self.spool_trouble.due(telemetry::once) {
                    tracing::error!(destination = %self.name, error = %e, failed_since_last_line = failed,
                        "cannot record delivery outcome in the spool");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Lease what is due; when batching, wait up to `max_wait` for a fuller batch.
    async fn next_batch(&self) -> Result<Vec<Leased>, SpoolError> {
        let mut batch = self.spool.lease(&self.name, self.batch_max).await?;
        if batch.is_empty() || self.batch_max == 1 {
            return Ok(batch);
        }
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.batch_max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.spool.wait(&self.name, left).await;
            let more = self.batch_max - batch.len();
            batch.extend(self.spool.lease_more(&self.name, more).await?);
        }
        // Oldest first across the leases that filled it (a group's items are in order
        // whatever the sort: their positions increase).
        batch.sort_by_key(|l| l.seq);
        Ok(batch)
    }

    /// Attempt the batch at once, settle it when the batches leased before it have settled.
    async fn deliver(&self, batch: Vec<Leased>, ticket: Ticket<'_>) -> Result<(), SpoolError> {
        let sending = self.status.attempting(self.slots);
        let attempted = self.attempt(&batch).await;
        drop(sending);
        ticket.turn().await;
        self.settle(&batch, attempted).await
        // The ticket drops here, after settling: the next batch's turn.
    }
}
