//! The Segment-compatible HTTP API: `/v1/{identify,group,track,page,screen,alias}`,
//! `/v1/batch` and `/v1/import`. Operator endpoints live in `ops`.
//!
//! - `calls.rs`: the handlers — a single call and a batch, normalized, routed, stored.
//! - `auth.rs`: which source a request speaks for.
//! - `body.rs`: reading a body within its limit.
//! - `envelope.rs`: a batch body's keys and messages, in one pass.
//! - `error.rs`: the JSON error answers.
//! - `refused.rs`: the log line about messages refused inside batches, at most one per interval.
//!
//! A call is routed here, once: the names of the destinations it goes to are stored with it.

mod auth;
mod body;
mod calls;
mod envelope;
mod error;
mod refused;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use tower_http::decompression::RequestDecompressionLayer;

use crate::config::ServerConfig;
use crate::deliver::pace::Pace;
use crate::route::RouteKey;
use crate::secret::Secret;
use crate::spool::Spool;
use crate::telemetry;

pub use error::ApiError;

/// Everything a request handler needs; built at start, its routing replaced by a reload.
pub struct AppState {
    pub limits: ServerConfig,
    routing: RwLock<Arc<Routing>>,
    pub spool: Arc<dyn Spool>,
    /// When to give delivery a moment before storing (see `deliver::pace`).
    pub pace: Arc<Pace>,
    /// Refused messages, told in the log at most once per interval.
    pub refused: refused::RefusedLog,
    /// The last message accepted by each of the last requests, newest last: what the
    /// console offers to "try" (one copy per request, not per message).
    recent: Mutex<VecDeque<String>>,
}

/// Messages kept for the console's "try a message".
const RECENT: usize = 20;

/// Who may send and where messages go: what a reload changes for ingest.
pub struct Routing {
    /// (source name, write key).
    pub sources: Vec<(String, Secret)>,
    /// Each destination's routing keys, in config order.
    pub routes: Vec<RouteKey>,
    /// `server.allow_unauthenticated`: calls without a write key are taken.
    pub allow_unauthenticated: bool,
}

impl AppState {
    pub fn new(
        limits: ServerConfig,
        routing: Routing,
        spool: Arc<dyn Spool>,
        pace: Arc<Pace>,
    ) -> Self {
        Self {
            limits,
            routing: RwLock::new(Arc::new(routing)),
            spool,
            pace,
            refused: Default::default(),
            recent: Default::default(),
        }
    }

    /// Keep `body` (a normalized message just accepted) among the recent ones.
    fn remember(&self, body: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(body.to_string());
    }

    /// The recent messages, newest first.
    pub fn recent(&self) -> Vec<String> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// The routing in force; a request keeps the one it started with.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Route with `routing` from now on (a reload); returns the routing it replaces, which
    /// requests under way still hold (see [`AppState::drained`]).
    pub fn set_routing(&self, routing: Routing) -> Arc<Routing> {
        let mut current = self.routing.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, Arc::new(routing))
    }

    /// Wait until no request under way still routes with `old` (each holds it until its
    /// messages are stored), at most `max`; whether none does.
    pub async fn drained(&self, old: &Arc<Routing>, max: std::time::Duration) -> bool {
        let deadline = Instant::now() + max;
        while Arc::strong_count(old) > 1 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

/// The ingest paths of a daemon that only delivers (`--role deliver`): each answers 404
/// saying so, in JSON like every other error.
pub fn refusing() -> Router {
    let off = || async {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ingest_off",
            "this daemon runs with --role deliver: send calls to one that ingests",
        )
    };
    Router::new()
        .route("/v1/batch", post(off))
        .route("/v1/import", post(off))
        .route("/v1/{kind}", post(off))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
}

/// The router, apart from any socket, so tests and `server::run` share it.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/batch", post(calls::batch))
        .route("/v1/import", post(calls::batch))
        .route("/v1/{kind}", post(calls::single))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn(measure))
        .layer(
            RequestDecompressionLayer::new()
                .gzip(true)
                .pass_through_unaccepted(false),
        )
        .layer(middleware::map_response(explain_unsupported_encoding))
        .with_state(state)
}

/// A known path asked with the wrong method, answered like every other error.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (calls are POSTed)",
    )
}

/// The decompression layer refuses a `Content-Encoding` it cannot read with a bare 415;
/// say so in JSON like every other error.
async fn explain_unsupported_encoding(response: Response) -> Response {
    if response.status() != StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return response;
    }
    let error = ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_encoding",
        "Content-Encoding must be gzip or identity",
    );
    axum::response::IntoResponse::into_response(error)
}

/// Record how long each ingest call took (storage included), by route.
async fn measure(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route {
        telemetry::ingest_latency(&route, started.elapsed());
    }
    response
}
