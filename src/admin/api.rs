//! The admin API's handlers. Dead letters go through the same functions as the `switchyard
//! dlq` command (`spool::sqlite::dlq`), on a connection of their own, off the async threads.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::AdminError;
use super::{Admin, auth};
use crate::config::redact;
use crate::ops;
use crate::spool::sqlite::dlq::Selector;

/// `GET /admin/v1/destinations` (and `/v1/destinations`): each destination's state, queue,
/// counters and chart, and the last reload's outcome.
pub(super) async fn destinations(State(admin): State<Arc<Admin>>) -> Json<Value> {
    admin.control.ops.spool.refresh_depth().await;
    let list = ops::destinations(&admin.control.ops);
    let cluster = admin.control.ops.spool.cluster();
    Json(json!({"destinations": list, "reload": admin.control.last_reload(), "cluster": cluster}))
}

/// `GET /metrics`: with the admin token, or to anyone with `public_metrics`.
pub(super) async fn metrics(
    State(admin): State<Arc<Admin>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let current = admin.control.current();
    if !current.public_metrics {
        if current.admin_tokens.is_empty() {
            return Admin::off().into_response();
        }
        if let Err(e) = auth::admit(&current.admin_tokens, &admin.sessions, &method, &headers) {
            return e.into_response();
        }
    }
    admin.control.ops.spool.refresh_depth().await;
    let text = ops::metrics(&admin.control.ops);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    destination: Option<String>,
    reason: Option<String>,
    /// Most returned, newest first; default 100, at most 1,000.
    limit: Option<usize>,
}

const REASONS: &[&str] = &["invalid", "permanent", "exhausted", "corrupted"];

/// `GET /admin/v1/dead-letters`: newest first, filtered.
pub(super) async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(filter) = filter.map_err(|e| AdminError::bad("invalid_filter", e.body_text()))?;
    if let Some(r) = &filter.reason
        && !REASONS.contains(&r.as_str())
    {
        return Err(AdminError::bad(
            "invalid_filter",
            format!("reason `{r}` is not one of {}", REASONS.join(", ")),
        ));
    }
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let newest = letters(&admin)
        .list(filter.destination, filter.reason, Some(limit))
        .await
        .map_err(spool_error)?;
    Ok(Json(json!({"dead_letters": newest})))
}

/// `GET /admin/v1/dead-letters/{id}`: one, with its message.
pub(super) async fn dead_letter(
    State(admin): State<Arc<Admin>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, AdminError> {
    let Path(id) = id.map_err(|_| AdminError::not_found("a dead letter's id is a number"))?;
    let letter = letters(&admin).show(id).await.map_err(spool_error)?;
    let letter = letter.ok_or_else(|| AdminError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(json!(letter)))
}

/// Which dead letters a replay or purge acts on: exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Which {
    ids: Option<Vec<i64>>,
    destination: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Which {
    fn selector(self) -> Result<Selector, AdminError> {
        match (self.ids, self.destination, self.all) {
            (Some(ids), None, false) if !ids.is_empty() => Ok(Selector::Ids(ids)),
            (None, Some(d), false) => Ok(Selector::Destination(d)),
            (None, None, true) => Ok(Selector::All),
            _ => Err(AdminError::bad(
                "invalid_selection",
                "send exactly one of {\"ids\": [1, 2]}, {\"destination\": \"NAME\"} or {\"all\": true}",
            )),
        }
    }
}

/// `POST /admin/v1/dead-letters/replay`: back in their destination's queue, translated again
/// with the config in force.
pub(super) async fn replay(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Which>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let which = body.map_err(rejected)?.0.selector()?;
    let configured: Vec<String> = (admin.control.current().previews.iter())
        .map(|p| p.name.clone())
        .collect();
    let done = letters(&admin)
        .replay(which, configured)
        .await
        .map_err(|s| spool_error(s.error))?;
    tracing::info!(
        replayed = done.replayed.len(),
        skipped = done.skipped.len(),
        "dead letters replayed from the admin API"
    );
    let why: Vec<Value> = (done.skipped.iter())
        .map(|(id, why)| json!({"id": id, "why": why}))
        .collect();
    Ok(Json(json!({
        "replayed": done.replayed.len(),
        "skipped": why.len(),
        "skipped_why": why,
    })))
}

/// `POST /admin/v1/dead-letters/purge`: deleted for good.
pub(super) async fn purge(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Which>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let which = body.map_err(rejected)?.0.selector()?;
    let purged = letters(&admin)
        .purge(which)
        .await
        .map_err(|s| spool_error(s.error))?;
    tracing::info!(purged, "dead letters purged from the admin API");
    Ok(Json(json!({"purged": purged})))
}

/// `GET /admin/v1/config`: the file in force as JSON, every secret replaced by `***`.
pub(super) async fn config(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, AdminError> {
    let current = admin.control.current();
    let Some((path, text)) = &current.file else {
        return Err(AdminError::not_found(
            "this daemon was not started from a config file",
        ));
    };
    let config = redact::redacted(text, &current.admin_tokens)
        .map_err(|e| AdminError::internal(format!("the config in force cannot be shown: {e}")))?;
    Ok(Json(json!({"path": path, "config": config})))
}

/// `POST /admin/v1/reload`: read the file again and apply it (as SIGHUP does).
pub(super) async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    let report = admin.control.reload().await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(json!(report))).into_response()
}

/// `GET /admin/v1/recent`: the last message of each of the last requests accepted, newest
/// first (for "try a message"; kept in memory since start).
pub(super) async fn recent(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let messages: Vec<Value> = (admin.control.ingest.recent().iter())
        .filter_map(|body| serde_json::from_str(body).ok())
        .collect();
    Json(json!({"messages": messages}))
}

fn letters(admin: &Admin) -> crate::spool::DeadLetters {
    admin.control.ops.spool.dead_letters()
}

fn spool_error(e: crate::spool::SpoolError) -> AdminError {
    AdminError::internal(format!("spool: {e}"))
}

pub(super) fn rejected(e: axum::extract::rejection::JsonRejection) -> AdminError {
    AdminError::bad("invalid_json", e.body_text())
}
