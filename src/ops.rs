//! What operators read: `/health` (alive) and `/ready` (config loaded, spool open: the
//! daemon serves only once both are true) are open to anyone; each destination's queue and
//! state ([`destinations`]) and the Prometheus text ([`metrics`]) are served by the admin
//! side, behind its token. Reads the spool's counts and each worker's [`Status`]; never
//! writes.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

use crate::deliver::{SERIES_STEP, Status};
use crate::spool::Spool;
use crate::telemetry;

/// What the operator endpoints read.
pub struct OpsState {
    /// Destinations in config order; replaced by a reload.
    destinations: RwLock<Arc<Vec<DestinationView>>>,
    pub spool: Arc<dyn Spool>,
}

/// One destination as operators see it.
pub struct DestinationView {
    pub name: String,
    /// The adapter's config `type`.
    pub kind: String,
    pub dry_run: bool,
    pub status: Arc<Status>,
}

impl OpsState {
    pub fn new(destinations: Vec<DestinationView>, spool: Arc<dyn Spool>) -> Self {
        Self {
            destinations: RwLock::new(Arc::new(destinations)),
            spool,
        }
    }

    pub fn destinations(&self) -> Arc<Vec<DestinationView>> {
        self.destinations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_destinations(&self, destinations: Vec<DestinationView>) {
        *self.destinations.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(destinations);
    }
}

/// `/health` and `/ready`: open to anyone (load balancers, service managers).
pub fn open_router() -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/ready",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        )
        .method_not_allowed_fallback(crate::ingest::method_not_allowed)
}

/// Prometheus text; per-destination gauges are read from the spool at scrape time.
pub fn metrics(state: &OpsState) -> String {
    for d in state.destinations().iter() {
        telemetry::destination_gauges(
            &d.name,
            &state.spool.depth(&d.name),
            d.status.paused_until().is_some() || state.spool.shared_pause(&d.name).is_some(),
        );
    }
    if let Some(cluster) = state.spool.cluster() {
        telemetry::cluster_gauges(&cluster);
    }
    telemetry::render()
}

/// Each destination's queue and state, in config order (`GET /v1/destinations`).
pub fn destinations(state: &OpsState) -> Vec<Value> {
    let rfc3339 = |t: SystemTime| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339();
    let now = SystemTime::now();
    (state.destinations().iter())
        .map(|d| {
            let depth = state.spool.depth(&d.name);
            // A pause another daemon sharing the spool set counts as this one's.
            let paused_until = d
                .status
                .paused_until()
                .max(state.spool.shared_pause(&d.name));
            let state = if d.dry_run {
                "dry_run"
            } else if paused_until.is_some() {
                "paused"
            } else if d.status.failing() {
                "failing"
            } else {
                "delivering"
            };
            let (delivered, failed) = d.status.totals();
            let oldest = depth
                .oldest_pending
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64());
            json!({
                "name": d.name,
                "type": d.kind,
                "state": state,
                "pending": depth.pending,
                "in_flight": depth.in_flight,
                "retrying": depth.retrying,
                "dead_letters": depth.dead_letters,
                "oldest_pending_age_seconds": oldest,
                "coalesced": d.status.coalesced(),
                "delivered_total": delivered,
                "failed_total": failed,
                "paused_until": paused_until.map(rfc3339),
                "last_error": d.status.last_error(),
                "last_response": d.status.last_response(),
                "unhealthy": d.status.unhealthy(),
                "series": series(&d.status),
            })
        })
        .collect()
}

/// Delivered and failed per second, oldest first, a value per `step_seconds`.
fn series(status: &Status) -> Value {
    let rates = status.rates();
    json!({
        "step_seconds": SERIES_STEP,
        "delivered_per_second": rates.delivered,
        "failed_per_second": rates.failed,
    })
}
