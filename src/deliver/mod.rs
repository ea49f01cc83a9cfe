//! Delivery: one [`Worker`] per destination leases due items from the spool, batches them,
//! takes one rate-limit permit per HTTP request, lets the adapter translate, authorize and
//! classify, then settles each item (ack, retry later, or dead letter).
//!
//! # Layout
//!
//! - `worker.rs`: the loop — lease, fill a batch, rest while paused or idle.
//! - `order.rs`: tickets, so that concurrent batches settle in lease order.
//! - `attempt.rs`: one batch through translate → authorize → send → classify, a verdict per item.
//! - `plan.rs`: the pure decisions (screening, merging verdicts, splits, group order, outcomes).
//! - `settle.rs`: outcomes into the spool, with the log lines and counters.
//! - `transport.rs`: the HTTP exchange, with typed errors.
//! - `status.rs`: what operators see of a destination.
//! - `pace.rs`: when ingest waits for delivery to catch up.
//!
//! The adapter never touches the spool, the limiter or the clock of retries; the spool never
//! sees a verdict, only what `settle` tells it.

mod attempt;
mod order;
pub mod pace;
mod plan;
mod settle;
mod status;
mod transport;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Delivery;
use crate::destination::{Destination, Transport};
use crate::retry::RetryPolicy;
use crate::route::RouteKey;
use crate::spool::Spool;

pub use status::{Rates, SERIES_LEN, SERIES_STEP, Status};
pub use transport::TransportError;

/// How long items wait after their destination's credential could not be fetched (or the
/// retry cap, when lower).
const AUTH_RETRY: Duration = Duration::from_secs(30);

/// A destination's quota divided between the daemons delivering to it: with `n` of them,
/// each sends at `rate / n` with a burst of `burst / n` (at least one), so together they keep
/// the configured rate. Rebuilt when `n` changes.
struct SharedLimiter {
    quota: Quota,
    current: std::sync::Mutex<(u32, Arc<DefaultDirectRateLimiter>)>,
}

impl SharedLimiter {
    fn new(quota: Quota) -> Self {
        Self {
            quota,
            current: std::sync::Mutex::new((1, Arc::new(RateLimiter::direct(quota)))),
        }
    }

    fn share(&self, daemons: u32) -> Arc<DefaultDirectRateLimiter> {
        let n = daemons.max(1);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != n {
            let burst =
                NonZeroU32::new(self.quota.burst_size().get() / n).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(self.quota.replenish_interval() * n)
                .unwrap_or(self.quota)
                .allow_burst(burst);
            *current = (n, Arc::new(RateLimiter::direct(quota)));
        }
        current.1.clone()
    }
}

/// Everything one destination's delivery needs; run it `concurrency` times over one `Arc`
/// for that many batches in flight (leases, the limiter and the pause are shared).
pub struct Worker {
    pub name: String,
    adapter: Arc<dyn Destination>,
    /// To find this destination's options in each message's `integrations` map.
    route: RouteKey,
    spool: Arc<dyn Spool>,
    transport: Transport,
    /// One permit per HTTP request, shared by every batch in flight; with several daemons
    /// delivering from one spool, each takes its share of the quota.
    limiter: Option<SharedLimiter>,
    policy: RetryPolicy,
    /// Items per lease: the configured size, or the adapter's default, never above its limit.
    batch_max: usize,
    /// Batches in flight at once (`concurrency`).
    slots: usize,
    max_wait: Duration,
    dry_run: bool,
    pub status: Arc<Status>,
    order: order::Order,
    /// Spool errors are logged at most once a minute while they last (a full disk).
    spool_trouble: crate::telemetry::Throttle,
}

impl Worker {
    /// A worker for a destination whose settings were checked when the config was loaded.
    pub fn new(
        name: &str,
        delivery: &Delivery,
        adapter: Arc<dyn Destination>,
        route: RouteKey,
        spool: Arc<dyn Spool>,
        client: reqwest::Client,
    ) -> Self {
        let batch_max = delivery
            .max_events
            .unwrap_or_else(|| adapter.default_batch())
            .clamp(1, adapter.max_batch().max(1));
        Self {
            name: name.to_string(),
            adapter,
            route,
            spool,
            transport: Transport {
                client,
                timeout: delivery.timeout,
            },
            limiter: delivery.quota.map(SharedLimiter::new),
            policy: delivery.retry.clone(),
            batch_max,
            slots: delivery.concurrency,
            max_wait: delivery.max_wait,
            dry_run: delivery.dry_run,
            status: Arc::new(Status::default()),
            spool_trouble: crate::telemetry::Throttle::new(Duration::from_secs(60), 0),
            order: order::Order::default(),
        }
    }

    /// The limiter for this daemon's share of the quota, if there is a quota.
    fn limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        let shared = self.limiter.as_ref()?;
        Some(shared.share(self.spool.delivering_daemons()))
    }

    /// Report into `status` (kept from an earlier run of this destination).
    pub fn with_status(mut self, status: Arc<Status>) -> Self {
        self.status = status;
        self
    }
}
