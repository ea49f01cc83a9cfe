//! The operator side: `/health` (alive), `/ready` (config loaded, spool open: the daemon
//! serves only once both are true), `/metrics` (Prometheus) and `/v1/destinations` (each
//! destination's queue and state, as JSON). Reads the spool's counts and each worker's
//! [`Status`]; never writes.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::deliver::Status;
use crate::spool::Spool;
use crate::telemetry;

/// What the operator endpoints read.
pub struct OpsState {
    /// Destinations in config order.
    pub destinations: Vec<DestinationView>,
    pub spool: Arc<dyn Spool>,
}

/// One destination as operators see it.
pub struct DestinationView {
    pub name: String,
    /// The adapter's config `type`.
    pub kind: String,
    pub status: Arc<Status>,
}

pub fn router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/v1/destinations", get(destinations))
        .route("/metrics", get(metrics))
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/ready",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        )
        .method_not_allowed_fallback(crate::ingest::method_not_allowed)
        .with_state(state)
}

/// Prometheus text; per-destination gauges are read from the spool at scrape time.
async fn metrics(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    for d in &state.destinations {
        telemetry::destination_gauges(
            &d.name,
            &state.spool.depth(&d.name),
            d.status.paused_until().is_some(),
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::render(),
    )
}

async fn destinations(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    let rfc3339 = |t: SystemTime| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339();
    let list: Vec<Value> = state
        .destinations
        .iter()
        .map(|d| {
            let depth = state.spool.depth(&d.name);
            json!({
                "name": d.name,
                "type": d.kind,
                "pending": depth.pending,
                "in_flight": depth.in_flight,
                "retrying": depth.retrying,
                "dead_letters": depth.dead_letters,
                "coalesced": d.status.coalesced(),
                "paused_until": d.status.paused_until().map(rfc3339),
                "last_error": d.status.last_error(),
                "unhealthy": d.status.unhealthy(),
            })
        })
        .collect();
    axum::Json(json!({"destinations": list}))
}
