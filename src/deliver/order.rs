//! Lease order: with `concurrency` N, up to N batches of one destination are in flight at
//! once, yet they settle in the order they were leased.
//!
//! Why: the spool's cursor only passes settled items, so settling in lease order keeps the
//! cursor moving with every settlement, and a crash re-sends at most the batches in flight.
//! It also keeps per-group order: a batch leased later may hold a newer update of a group
//! whose older update is in an earlier batch.
//!
//! How: leasing happens under one lock, and each non-empty batch leased there gets the next
//! [`Ticket`]. A batch may be *sent* whenever it is ready, but it *settles* only once every
//! ticket before its own is settled. A ticket counts as settled when it is dropped, whatever
//! became of its batch (an error, a panic), so the batches behind it never wait forever.

use tokio::sync::{Mutex, watch};

#[derive(Debug)]
pub(super) struct Order {
    /// The next ticket to hand out; holding this lock is what makes leasing sequential.
    next: Mutex<u64>,
    /// How many tickets, counted from 0, are settled.
    settled: watch::Sender<u64>,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            next: Mutex::new(0),
            settled: watch::Sender::new(0),
        }
    }
}

/// A batch's place in the settling order.
#[derive(Debug)]
pub(super) struct Ticket<'a> {
    number: u64,
    settled: &'a watch::Sender<u64>,
}

impl Order {
    /// Run `lease` with no other lease under way, and give what it leased the next ticket
    /// (an empty lease takes none).
    pub(super) async fn lease<T, E>(
        &self,
        lease: impl Future<Output = Result<Vec<T>, E>>,
    ) -> Result<(Vec<T>, Option<Ticket<'_>>), E> {
        let mut next = self.next.lock().await;
        let batch = lease.await?;
        if batch.is_empty() {
            return Ok((batch, None));
        }
        let ticket = Ticket {
            number: *next,
            settled: &self.settled,
        };
        *next += 1;
        Ok((batch, Some(ticket)))
    }
}

impl Ticket<'_> {
    /// Return once every batch leased before this one has settled.
    pub(super) async fn turn(&self) {
        let mut settled = self.settled.subscribe();
        // The sender lives in `Order`, which outlives every ticket: this cannot fail.
        let _ = settled.wait_for(|n| *n >= self.number).await;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let done = self.number + 1;
        self.settled.send_if_modified(|n| {
            let before = *n;
            *n = before.max(done);
            *n != before
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    use super::*;

    async fn ticket(order: &Order) -> Ticket<'_> {
        let (_, t) = order.lease(async { Ok::<_, ()>(vec![()]) }).await.unwrap();
        t.unwrap()
    }

    #[tokio::test]
    async fn batches_settle_in_lease_order_whatever_order_they_finish_in() {
        let order = Arc::new(Order::default());
        let log = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Batch k finishes its attempt after (3 - k) ticks: the last leased is ready first.
        for k in 0..3u64 {
            let (order, log) = (order.clone(), log.clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let started = tokio::spawn(async move {
                let t = ticket(&order).await;
                tx.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(10 * (3 - k))).await;
                t.turn().await;
                log.lock().unwrap().push(t.number);
            });
            // Lease in k order before starting the next.
            rx.await.unwrap();
            tasks.push(started);
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_dropped_ticket_lets_the_next_batch_settle() {
        let order = Order::default();
        let first = ticket(&order).await;
        let second = ticket(&order).await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), second.turn()).await;
        assert!(waiting.is_err(), "the second settled before the first");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.turn())
            .await
            .expect("the second batch never got its turn");
    }

    #[tokio::test]
    async fn an_empty_lease_takes_no_ticket() {
        let order = Order::default();
        let (batch, t) = order
            .lease(async { Ok::<Vec<()>, ()>(vec![]) })
            .await
            .unwrap();
        assert!(batch.is_empty() && t.is_none());
        assert_eq!(ticket(&order).await.number, 0);
    }
}
