//! Settling a batch: its verdicts sorted into outcomes (`plan::outcomes`), then written to
//! the spool — retries and dead letters issued together so the spool's writer can commit
//! them in one transaction, deliveries acked last — with one log line per kind of outcome
//! per batch, never one per healthy message.

use std::time::SystemTime;

use super::Worker;
use super::attempt::Attempted;
use super::plan::{self, Later};
use crate::destination::Verdict;
use crate::spool::{Attempt, Leased, Seq, SpoolError};
use crate::telemetry;

impl Worker {
    pub(super) async fn settle(
        &self,
        batch: &[Leased],
        attempted: Attempted,
    ) -> Result<(), SpoolError> {
        let Attempted {
            mut verdicts,
            merged,
        } = attempted;
        plan::keep_group_order(batch, &mut verdicts);
        // Calls that reached the destination inside another call's update.
        let coalesced = (verdicts.iter().zip(&merged))
            .filter(|(v, m)| **m && matches!(v, Some(Verdict::Delivered)))
            .count();
        let now = SystemTime::now();
        let out = plan::outcomes(batch, verdicts, &self.policy, now, rand::random::<f64>);
        self.schedule(now, &out.later).await?;
        let dead_letters = out.dead.iter().map(|(seq, a)| self.dead_letter(*seq, a));
        for result in futures_util::future::join_all(dead_letters).await {
            result?;
        }
        if !out.delivered.is_empty() {
            self.spool.ack(&self.name, &out.delivered).await?;
            telemetry::deliveries(&self.name, "delivered", out.delivered.len());
        }
        let failed = out.dead.len() + out.later.iter().filter(|l| !l.deferred).count();
        self.status.settled(out.delivered.len(), failed);
        if coalesced > 0 {
            self.status.add_coalesced(coalesced);
            telemetry::coalesced(&self.name, coalesced);
        }
        Ok(())
    }

    /// Put items back for later: one WARN line per batch for retries (and one for deferrals).
    async fn schedule(&self, now: SystemTime, later: &[Later]) -> Result<(), SpoolError> {
        for deferred in [false, true] {
            let mut these = later.iter().filter(|l| l.deferred == deferred);
            let Some(first) = these.next() else {
                continue;
            };
            let (messages, seq, a) = (1 + these.count(), first.seq, &first.attempt);
            if deferred {
                tracing::warn!(destination = %self.name, messages, seq, retry_in = ?first.wait,
                    reason = %a.reason, "delivery deferred; not attempted");
            } else {
                tracing::warn!(destination = %self.name, messages, seq, attempt = a.attempts,
                    retry_in = ?first.wait, status = ?a.status, reason = %a.reason,
                    "delivery failed; will retry");
                telemetry::deliveries(&self.name, "retry", messages);
            }
            self.status.set_last_error(&a.reason, a.response.as_deref());
        }
        let scheduled = later.iter().map(|l| {
            self.spool
                .retry_at(&self.name, l.seq, now + l.wait, &l.attempt)
        });
        for result in futures_util::future::join_all(scheduled).await {
            result?;
        }
        Ok(())
    }

    async fn dead_letter(&self, seq: Seq, a: &Attempt) -> Result<(), SpoolError> {
        tracing::error!(destination = %self.name, seq, attempts = a.attempts, status = ?a.status,
            reason = %a.reason, "delivery failed for good; dead-lettered");
        self.status.set_last_error(&a.reason, a.response.as_deref());
        self.spool.dead_letter(&self.name, seq, a).await?;
        telemetry::deliveries(&self.name, "dead_letter", 1);
        Ok(())
    }
}
