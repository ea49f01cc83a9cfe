//! The Segment-compatible HTTP API: `/v1/{identify,group,track,page,screen,alias}`,
//! `/v1/batch` and `/v1/import`, plus health, readiness and destination status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tower_http::decompression::RequestDecompressionLayer;

use crate::config::ServerConfig;
use crate::deliver::Status;
use crate::message::{Accepted, MessageType, Parsed};
use crate::normalize::{self, BatchDefaults};
use crate::route::{self, RouteKey};
use crate::secret::Secret;
use crate::spool::{Appended, Rejected, Spool, SpoolError};
use crate::telemetry;

/// Everything a request handler needs; built once at start.
pub struct AppState {
    pub limits: ServerConfig,
    /// (source name, write key).
    pub sources: Vec<(String, Secret)>,
    /// Destinations in config order: name, adapter type, routing keys, live status.
    pub destinations: Vec<DestinationView>,
    /// The destinations' routing keys, in the same order, for [`route::route`].
    pub routes: Vec<RouteKey>,
    pub spool: Arc<dyn Spool>,
}

pub struct DestinationView {
    pub name: String,
    pub kind: String,
    pub route: RouteKey,
    pub status: Arc<Status>,
}

/// The router, apart from any socket, so tests and `server::run` share it.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/import", post(batch))
        .route("/v1/{kind}", post(single))
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
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .route_layer(middleware::from_fn(measure))
        .layer(
            RequestDecompressionLayer::new()
                .gzip(true)
                .pass_through_unaccepted(false),
        )
        .with_state(state)
}

/// An error answer: `{"success":false,"code":…,"message":…}` (the shape Segment's clients parse).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            axum::Json(json!({"success": false, "code": self.code, "message": self.message}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<SpoolError> for ApiError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Full { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "spool_full", e.to_string())
            }
            SpoolError::Storage(_) => {
                tracing::error!(error = %e, "could not store accepted messages");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "could not store the messages",
                )
            }
        }
    }
}

/// Record how long each ingest call took (storage included), by route.
async fn measure(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route.filter(|r| r.starts_with("/v1/") && r != "/v1/destinations") {
        telemetry::ingest_latency(&route, started.elapsed());
    }
    response
}

async fn read_body(
    body: Body,
    limit: usize,
    what: &str,
    key: &str,
) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large =
            std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                if key == "max_message_bytes" {
                    "message_too_large"
                } else {
                    "request_too_large"
                },
                format!("{what} is larger than {key} ({limit} bytes)"),
            )
        } else {
            ApiError::bad(
                "unreadable_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

fn json_error(e: &serde_json::Error) -> ApiError {
    ApiError::bad(
        "invalid_json",
        format!(
            "malformed JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ),
    )
}

fn not_an_object() -> ApiError {
    ApiError::bad("not_an_object", "the request body must be a JSON object")
}

/// The source a request speaks for: the Basic-auth user name, else `writeKey` in the body.
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    body_key: Option<&str>,
) -> Result<String, ApiError> {
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(|b64| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_write_key",
                        "the Basic Authorization header is not valid base64",
                    )
                })?;
            // `key:` as the docs say, or a bare `key` as some clients send.
            Ok::<_, ApiError>(
                decoded
                    .split_once(':')
                    .map(|(u, _)| u.to_string())
                    .unwrap_or(decoded),
            )
        })
        .transpose()?;
    let key = header_key.as_deref().or(body_key).filter(|k| !k.is_empty());
    match key {
        Some(key) => state
            .sources
            .iter()
            .find(|(_, secret)| secret.expose() == key)
            .map(|(name, _)| name.clone())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_write_key",
                    "unknown write key",
                )
            }),
        None if state.limits.allow_unauthenticated => Ok("unauthenticated".into()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "no write key: send it as the HTTP Basic user name or as writeKey in the body",
        )),
    }
}

async fn single(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ty: MessageType = kind.parse().map_err(|()| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint /v1/{kind}"),
        )
    })?;
    let max = state.limits.max_message_bytes;
    let bytes = read_body(body, max, "the message", "max_message_bytes").await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| json_error(&e))?;
    let Value::Object(_) = &value else {
        return Err(not_an_object());
    };
    let source = authenticate(
        &state,
        &headers,
        value.get("writeKey").and_then(Value::as_str),
    )?;
    let normalized = normalize::normalize(
        value,
        Some(ty),
        &BatchDefaults::default(),
        chrono::Utc::now(),
        new_message_id,
    )
    .map_err(|e| {
        telemetry::messages_in(&source, "rejected", 1);
        ApiError::bad("invalid_message", e.0)
    })?;
    let accepted = accept(&state, &source, normalized);
    let appended = state.spool.append(vec![accepted]).await?;
    count_appended(&source, &appended);
    Ok(axum::Json(json!({"success": true})).into_response())
}

async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    let bytes = read_body(
        body,
        limits.max_request_bytes,
        "the request body",
        "max_request_bytes",
    )
    .await?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Report malformed JSON as such, with its position; anything else is not an object.
        return Err(match serde_json::from_slice::<&RawValue>(&bytes) {
            Err(e) => json_error(&e),
            Ok(_) => not_an_object(),
        });
    }
    let envelope: BTreeMap<String, &RawValue> =
        serde_json::from_slice(&bytes).map_err(|e| json_error(&e))?;
    let field = |name: &str| -> Result<Option<Value>, ApiError> {
        envelope
            .get(name)
            .map(|raw| serde_json::from_str::<Value>(raw.get()).map_err(|e| json_error(&e)))
            .transpose()
    };
    let object = |name: &str| -> Result<Option<Map<String, Value>>, ApiError> {
        match field(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(ApiError::bad(
                "invalid_batch",
                format!("{name} must be an object"),
            )),
        }
    };
    let body_key = field("writeKey")?;
    let source = authenticate(&state, &headers, body_key.as_ref().and_then(Value::as_str))?;
    let messages: Vec<&RawValue> = match envelope.get("batch") {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| ApiError::bad("invalid_batch", "batch must be an array of messages"))?,
        None => {
            return Err(ApiError::bad(
                "invalid_batch",
                "batch is required: {\"batch\": [ … ]}",
            ));
        }
    };
    if messages.len() > limits.max_batch_messages {
        return Err(ApiError::bad(
            "too_many_messages",
            format!(
                "the batch has {} messages; max_batch_messages is {}",
                messages.len(),
                limits.max_batch_messages
            ),
        ));
    }
    let defaults = BatchDefaults {
        context: object("context")?,
        integrations: object("integrations")?,
        sent_at: field("sentAt")?,
    };
    let now = chrono::Utc::now();
    let mut accepted = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (index, raw) in messages.into_iter().enumerate() {
        let outcome = if raw.get().len() > limits.max_message_bytes {
            Err(format!(
                "message is larger than max_message_bytes ({} bytes)",
                limits.max_message_bytes
            ))
        } else {
            serde_json::from_str::<Value>(raw.get())
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    normalize::normalize(v, None, &defaults, now, new_message_id).map_err(|e| e.0)
                })
        };
        match outcome {
            Ok(n) => accepted.push(accept(&state, &source, n)),
            Err(error) => {
                tracing::warn!(source = %source, index, error = %error, "message refused in a batch");
                rejected.push(Rejected {
                    source: source.clone(),
                    index,
                    error,
                    raw: raw.get().to_string(),
                    at: SystemTime::now(),
                });
            }
        }
    }
    let appended = if accepted.is_empty() {
        Vec::new()
    } else {
        state.spool.append(accepted).await?
    };
    count_appended(&source, &appended);
    telemetry::messages_in(&source, "rejected", rejected.len());
    let duplicates = appended
        .iter()
        .filter(|a| **a == Appended::Duplicate)
        .count();
    if duplicates > 0 {
        tracing::debug!(source = %source, duplicates, "duplicate messages not enqueued again");
    }
    if rejected.is_empty() {
        return Ok(axum::Json(json!({"success": true})).into_response());
    }
    let listed: Vec<Value> = rejected
        .iter()
        .map(|r| json!({"index": r.index, "error": r.error}))
        .collect();
    state.spool.reject(rejected).await?;
    Ok(axum::Json(json!({"success": true, "rejected": listed})).into_response())
}

fn count_appended(source: &str, appended: &[Appended]) {
    let duplicates = appended
        .iter()
        .filter(|a| **a == Appended::Duplicate)
        .count();
    telemetry::messages_in(source, "accepted", appended.len() - duplicates);
    telemetry::messages_in(source, "duplicate", duplicates);
}

fn new_message_id() -> String {
    format!("switchyard-{}", uuid::Uuid::new_v4())
}

/// Route a normalized message and shape it for the spool.
fn accept(state: &AppState, source: &str, n: normalize::Normalized) -> Accepted {
    let integrations = n.message.get("integrations").and_then(Value::as_object);
    let destinations = route::route(n.ty, integrations, &state.routes)
        .into_iter()
        .map(|i| state.destinations[i].name.clone())
        .collect();
    if n.unparsed_created_at {
        tracing::debug!(message_id = %n.message_id, "createdAt kept as given: not a date we can read");
    }
    let body = serde_json::to_string(&n.message).unwrap_or_default();
    Accepted {
        source: source.to_string(),
        message_id: n.message_id,
        group_id: n.group_id,
        body,
        parsed: Some(Parsed::new(n.message)),
        destinations,
    }
}

/// Prometheus text; per-destination gauges are read from the spool at scrape time.
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
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

async fn destinations(State(state): State<Arc<AppState>>) -> impl IntoResponse {
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
                "paused_until": d.status.paused_until().map(rfc3339),
                "last_error": d.status.last_error(),
                "unhealthy": d.status.unhealthy(),
            })
        })
        .collect();
    axum::Json(json!({"destinations": list}))
}
