//! The two ways calls come in — one call at `/v1/{type}`, many at `/v1/batch` — each
//! normalized, routed once, and answered only after the spool holds it. Inside a batch a
//! refused message does not fail the others: it is kept as a rejected record and listed in
//! the answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::auth::authenticate;
use super::envelope::Batch;
use super::error::ApiError;
use super::{AppState, Routing, body};
use crate::message::{Accepted, MessageType, Parsed};
use crate::normalize::{self, BatchDefaults, Entries, Entry};
use crate::route;
use crate::spool::{Appended, Rejected};
use crate::telemetry;

pub(super) async fn single(
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
    let within = state.limits.body_read_timeout;
    let bytes = body::read(body, max, within, "the message", "max_message_bytes").await?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        // serde_json says where the text stops being UTF-8.
        Err(e) => {
            return Err(match serde_json::from_slice::<Value>(&bytes) {
                Err(json) => ApiError::json(&json),
                Ok(_) => ApiError::bad("invalid_json", format!("the body is not UTF-8: {e}")),
            });
        }
    };
    let entries = Entries::parse(text)
        .map_err(|e| ApiError::json(&e))?
        .ok_or_else(ApiError::not_an_object)?;
    let body_key = write_key(&entries);
    let routing = state.routing();
    let source = authenticate(&routing, &headers, body_key.as_deref())?;
    let defaults = BatchDefaults::default();
    let normalized =
        normalize::normalize_entries(entries, Some(ty), &defaults, chrono::Utc::now(), new_id)
            .map_err(|e| {
                telemetry::messages_in(&source, "rejected", 1);
                ApiError::bad("invalid_message", e.0)
            })?;
    let accepted = accept(&routing, &source, normalized);
    let remembered = accepted.body.clone();
    state.pace.wait(&*state.spool).await;
    let appended = state.spool.append(vec![accepted]).await?;
    state.remember(&remembered);
    count_appended(&source, &appended);
    Ok(axum::Json(json!({"success": true})).into_response())
}

/// A `/v1/batch` body: the messages still raw, the envelope's keys read.
struct Envelope<'b> {
    source: String,
    messages: Vec<&'b RawValue>,
    defaults: BatchDefaults,
}

pub(super) async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    let max = limits.max_request_bytes;
    let within = limits.body_read_timeout;
    let bytes = body::read(body, max, within, "the request body", "max_request_bytes").await?;
    let routing = state.routing();
    let envelope = envelope(&state, &routing, &headers, &bytes)?;
    let source = envelope.source.clone();
    let (accepted, rejected) = sort_messages(&state, &routing, envelope);
    let last = accepted.last().map(|a| a.body.clone());
    let appended = if accepted.is_empty() {
        Vec::new()
    } else {
        state.pace.wait(&*state.spool).await;
        state.spool.append(accepted).await?
    };
    if let Some(body) = last {
        state.remember(&body);
    }
    count_appended(&source, &appended);
    telemetry::messages_in(&source, "rejected", rejected.len());
    if rejected.is_empty() {
        return Ok(axum::Json(json!({"success": true})).into_response());
    }
    let listed: Vec<Value> = rejected
        .iter()
        .map(|r| json!({"index": r.index, "error": r.error}))
        .collect();
    let (refused, example) = (
        rejected.len(),
        (rejected[0].index, rejected[0].error.clone()),
    );
    let not_kept = state.spool.reject(rejected).await?;
    telemetry::refused_not_kept(&source, not_kept);
    let example = (example.0, example.1.as_str());
    state.refused.add(&source, refused, example, not_kept);
    Ok(axum::Json(json!({"success": true, "rejected": listed})).into_response())
}

/// Read the envelope: who sent it, its messages (unparsed), and its batch-level defaults.
fn envelope<'b>(
    state: &AppState,
    routing: &Routing,
    headers: &HeaderMap,
    bytes: &'b [u8],
) -> Result<Envelope<'b>, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Report malformed JSON as such, with its position; anything else is not an object.
        return Err(match serde_json::from_slice::<&RawValue>(bytes) {
            Err(e) => ApiError::json(&e),
            Ok(_) => ApiError::not_an_object(),
        });
    }
    let keys = super::envelope::read(bytes).map_err(|e| ApiError::json(&e))?;
    let body_key = field(&keys.others, "writeKey")?;
    let body_key = body_key.as_ref().and_then(Value::as_str);
    let source = authenticate(routing, headers, body_key)?;
    let messages = match keys.batch {
        Batch::Missing => {
            return Err(ApiError::bad(
                "invalid_batch",
                "batch is required: {\"batch\": [ … ]}",
            ));
        }
        Batch::NotAnArray => {
            return Err(ApiError::bad(
                "invalid_batch",
                "batch must be an array of messages",
            ));
        }
        Batch::Messages(messages) => messages,
    };
    let most = state.limits.max_batch_messages;
    if messages.len() > most {
        return Err(ApiError::bad(
            "too_many_messages",
            format!(
                "the batch has {} messages; max_batch_messages is {most}",
                messages.len()
            ),
        ));
    }
    let defaults = BatchDefaults {
        context: object(&keys.others, "context")?,
        integrations: object(&keys.others, "integrations")?,
        sent_at: field(&keys.others, "sentAt")?,
    };
    Ok(Envelope {
        source,
        messages,
        defaults,
    })
}

/// An envelope key, parsed.
fn field(keys: &BTreeMap<String, &RawValue>, name: &str) -> Result<Option<Value>, ApiError> {
    keys.get(name)
        .map(|raw| serde_json::from_str::<Value>(raw.get()).map_err(|e| ApiError::json(&e)))
        .transpose()
}

/// An envelope key that must be an object when present (`null` counts as absent).
fn object(
    keys: &BTreeMap<String, &RawValue>,
    name: &str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    match field(keys, name)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::bad(
            "invalid_batch",
            format!("{name} must be an object"),
        )),
    }
}

/// Normalize each message of a batch: accepted ones ready for the spool, refused ones kept
/// with the reason.
fn sort_messages(
    state: &AppState,
    routing: &Routing,
    envelope: Envelope<'_>,
) -> (Vec<Accepted>, Vec<Rejected>) {
    let Envelope {
        source,
        messages,
        defaults,
    } = envelope;
    let now = chrono::Utc::now();
    let max = state.limits.max_message_bytes;
    let mut accepted = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (index, raw) in messages.into_iter().enumerate() {
        let outcome = if raw.get().len() > max {
            Err(format!(
                "message is larger than max_message_bytes ({max} bytes)"
            ))
        } else {
            normalize::normalize(raw.get(), None, &defaults, now, new_id)
                .map(|n| accept(routing, &source, n))
                .map_err(|e| e.0)
        };
        match outcome {
            Ok(a) => accepted.push(a),
            Err(error) => {
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
    (accepted, rejected)
}

fn count_appended(source: &str, appended: &[Appended]) {
    let duplicates = appended
        .iter()
        .filter(|a| **a == Appended::Duplicate)
        .count();
    telemetry::messages_in(source, "accepted", appended.len() - duplicates);
    telemetry::messages_in(source, "duplicate", duplicates);
    if duplicates > 0 {
        tracing::debug!(source = %source, duplicates, "duplicate messages not enqueued again");
    }
}

fn new_id() -> String {
    format!("switchyard-{}", uuid::Uuid::new_v4())
}

/// The write key a single call carries in its body, if it is a string.
fn write_key(entries: &Entries<'_>) -> Option<String> {
    match entries.get("writeKey")? {
        entry @ (Entry::Text(_) | Entry::Written(_)) => serde_json::from_str(entry.text()?).ok(),
        Entry::Value(v) => v.as_str().map(str::to_string),
    }
}

/// Route a normalized message and shape it for the spool.
fn accept(routing: &Routing, source: &str, n: normalize::Normalized) -> Accepted {
    let integrations = n.head.get("integrations").and_then(Value::as_object);
    let destinations = route::route(n.ty, integrations, &routing.routes)
        .into_iter()
        .map(|i| routing.routes[i].shared_name().clone())
        .collect();
    if n.unparsed_created_at {
        tracing::debug!(message_id = %n.message_id, "createdAt kept as given: not a date we can read");
    }
    Accepted {
        source: source.to_string(),
        message_id: n.message_id,
        group_id: n.group_id,
        body: n.body,
        parsed: Some(Parsed::head(n.head, n.traits_at)),
        destinations,
    }
}
