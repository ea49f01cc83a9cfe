//! The destinations being delivered to: each one's workers, and how a reload changes them.
//!
//! A destination whose table is unchanged keeps running untouched. A changed one is stopped
//! (its batches in flight finish and settle) and started again with the new settings; one
//! removed is stopped and the spool keeps what it is owed; one added starts from now. Its
//! [`Status`] (pause, counters, chart) follows a destination by name across changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Delivery, DestinationConfig, Fingerprint};
use crate::deliver::{Status, Worker};
use crate::destination::Destination;
use crate::route::RouteKey;
use crate::spool::Spool;

/// One destination at work.
pub(super) struct Running {
    pub name: String,
    pub kind: String,
    pub dry_run: bool,
    fingerprint: Fingerprint,
    pub status: Arc<Status>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

/// Every destination at work, in config order.
pub(super) struct Fleet {
    spool: Arc<dyn Spool>,
    client: reqwest::Client,
    pub running: Vec<Running>,
    /// Shut down: nothing is started again.
    pub stopped: bool,
    /// Removed destinations the spool still serves: a worker of theirs outlived the grace
    /// with items leased. The next reload drops them from the spool.
    pub lingering: Vec<String>,
}

/// A destination of a config, built and ready to run.
#[derive(Clone)]
pub(super) struct Next {
    pub name: String,
    pub kind: String,
    pub dry_run: bool,
    pub fingerprint: Fingerprint,
    pub delivery: Delivery,
    pub adapter: Arc<dyn Destination>,
    pub route: RouteKey,
}

impl Next {
    pub fn new(d: &DestinationConfig, adapter: Arc<dyn Destination>, route: RouteKey) -> Self {
        Self {
            name: d.name.clone(),
            kind: d.kind.clone(),
            dry_run: d.dry_run,
            fingerprint: d.fingerprint.clone(),
            delivery: d.delivery.clone(),
            adapter,
            route,
        }
    }
}

impl Fleet {
    pub fn new(spool: Arc<dyn Spool>, client: reqwest::Client) -> Self {
        Self {
            spool,
            client,
            running: Vec::new(),
            stopped: false,
            lingering: Vec::new(),
        }
    }

    /// Start a destination's workers, keeping `status` if it ran before under this name.
    fn start(&self, next: Next, status: Option<Arc<Status>>) -> Running {
        let d = &next;
        let worker = Worker::new(
            &d.name,
            &d.delivery,
            d.adapter.clone(),
            d.route.clone(),
            self.spool.clone(),
            self.client.clone(),
        );
        let worker = Arc::new(match status {
            Some(status) => worker.with_status(status),
            None => worker,
        });
        let (stop, stopped) = watch::channel(false);
        let handles = (0..d.delivery.concurrency)
            .map(|_| tokio::spawn(worker.clone().run(stopped.clone())))
            .collect();
        Running {
            name: d.name.clone(),
            kind: d.kind.clone(),
            dry_run: d.dry_run,
            fingerprint: d.fingerprint.clone(),
            status: worker.status.clone(),
            stop,
            handles,
        }
    }

    /// Start every destination (at start-up).
    pub fn start_all(&mut self, next: Vec<Next>) {
        self.running = next.into_iter().map(|n| self.start(n, None)).collect();
    }

    /// Which destinations `next` adds, changes and removes, by name, and which stay as they are.
    pub fn diff(&self, next: &[Next]) -> Diff {
        let mut diff = Diff::default();
        for n in next {
            match self.running.iter().find(|r| r.name == n.name) {
                None => diff.added.push(n.name.clone()),
                Some(r) if r.fingerprint != n.fingerprint => diff.changed.push(n.name.clone()),
                Some(_) => diff.unchanged.push(n.name.clone()),
            }
        }
        diff.removed = (self.running.iter())
            .filter(|r| !next.iter().any(|n| n.name == r.name))
            .map(|r| r.name.clone())
            .collect();
        diff
    }

    /// Stop the workers of `names` and wait for their batches in flight to settle (at most
    /// `grace`); returns their statuses by name.
    pub async fn stop(&mut self, names: &[String], grace: Duration) -> Vec<(String, Arc<Status>)> {
        let (stopping, kept): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| names.contains(&r.name));
        self.running = kept;
        let deadline = tokio::time::Instant::now() + grace;
        // Every worker is told first, so none leases again while another finishes.
        for r in &stopping {
            let _ = r.stop.send(true);
        }
        let mut statuses = Vec::new();
        for r in stopping {
            for h in r.handles {
                if tokio::time::timeout_at(deadline, h).await.is_err() {
                    tracing::warn!(destination = %r.name, grace = ?grace,
                        "a delivery worker did not finish within the grace period");
                }
            }
            statuses.push((r.name, r.status));
        }
        statuses
    }

    /// Run exactly `next`, in its order: start what is not running (keeping the statuses of
    /// destinations stopped for a change), leave the rest.
    pub fn run(&mut self, next: Vec<Next>, mut statuses: Vec<(String, Arc<Status>)>) {
        let mut running = std::mem::take(&mut self.running);
        for n in next {
            let name = n.name.clone();
            if let Some(i) = running.iter().position(|r| r.name == name) {
                self.running.push(running.swap_remove(i));
                continue;
            }
            let status = (statuses.iter())
                .position(|(s, _)| *s == name)
                .map(|i| statuses.swap_remove(i).1);
            let started = self.start(n, status);
            self.running.push(started);
        }
    }

    /// Stop everything (shutdown), within `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        let names: Vec<String> = self.running.iter().map(|r| r.name.clone()).collect();
        self.stop(&names, grace).await;
    }
}

/// What a reload changes, by destination name.
#[derive(Debug, Default)]
pub(super) struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}
