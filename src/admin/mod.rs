//! The admin side: the JSON admin API (`/admin/v1/…`, plus `/v1/destinations` and
//! `/metrics`), and the operator console at `/console`, all behind an admin token.
//!
//! - `auth.rs`: bearer tokens, console sessions and the cross-site checks.
//! - `api.rs`: the API's handlers: destinations, dead letters, the config, reload, recent
//!   messages.
//! - `preview.rs`: "try a message": normalize, route and translate one call, send nothing.
//! - `console.rs`: the console's pages and assets (embedded), login and logout.
//! - `error.rs`: the JSON error answers.
//!
//! With no `[admin] token` the admin side is off: its paths answer 404 `admin_off`, and
//! `/metrics` answers only if `public_metrics` is set.

mod api;
mod auth;
mod console;
mod error;
mod preview;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::server::Control;

pub use error::AdminError;

/// What the admin side's handlers share.
pub struct Admin {
    pub control: Arc<Control>,
    sessions: auth::Sessions,
}

impl Admin {
    pub fn new(control: Arc<Control>) -> Self {
        Self {
            control,
            sessions: Default::default(),
        }
    }

    fn off() -> AdminError {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "admin_off",
            "the admin side is off: set [admin] token in the config",
        )
    }
}

/// Every admin path; the API behind [`guard`], the console and `/metrics` checking for
/// themselves (a login page must open without a token; metrics may be public).
pub fn router(admin: Arc<Admin>) -> Router {
    let api = Router::new()
        .route("/v1/destinations", get(api::destinations))
        .route("/admin/v1/destinations", get(api::destinations))
        .route("/admin/v1/dead-letters", get(api::dead_letters))
        .route("/admin/v1/dead-letters/{id}", get(api::dead_letter))
        .route("/admin/v1/dead-letters/replay", post(api::replay))
        .route("/admin/v1/dead-letters/purge", post(api::purge))
        .route("/admin/v1/config", get(api::config))
        .route("/admin/v1/reload", post(api::reload))
        .route("/admin/v1/recent", get(api::recent))
        .route("/admin/v1/try", post(preview::try_message))
        .route_layer(middleware::from_fn_with_state(admin.clone(), guard));
    Router::new()
        .merge(api)
        .route("/metrics", get(api::metrics))
        .merge(console::router())
        .method_not_allowed_fallback(crate::ingest::method_not_allowed)
        .with_state(admin)
}

/// Admit the request (bearer token, or console session with its CSRF checks) or refuse it.
async fn guard(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let tokens = admin.control.current().admin_tokens.clone();
    if tokens.is_empty() {
        return Admin::off().into_response();
    }
    match auth::admit(
        &tokens,
        &admin.sessions,
        request.method(),
        request.headers(),
    ) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
