//! "Try a message": one Segment call normalized as ingest would, routed with the rule that
//! decided for each destination, and translated by each destination it goes to into the
//! exact request it would send. Built as for a dry run: no credential is fetched or shown,
//! nothing is stored, nothing is sent.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use super::Admin;
use super::api::rejected;
use super::error::AdminError;
use crate::destination::{Item, OutRequest, Verdict, origin_only, redacted_url};
use crate::normalize::{self, BatchDefaults};
use crate::route;
use crate::server::Preview;

/// `POST /admin/v1/try`: the body is one call, as an SDK sends it.
pub(super) async fn try_message(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let call = body.map_err(rejected)?.0;
    let n = normalize::normalize(
        &call.to_string(),
        None,
        &BatchDefaults::default(),
        chrono::Utc::now(),
        || "switchyard-try".to_string(),
    )
    .map_err(|e| AdminError::bad("invalid_message", e.0))?;
    // The whole message, as an adapter reading all of it gets it.
    let message = n
        .message()
        .map_err(|e| AdminError::bad("invalid_message", e.to_string()))?;
    let current = admin.control.current();
    let integrations = message.get("integrations").and_then(Value::as_object);
    let keys: Vec<route::RouteKey> = current.previews.iter().map(|p| p.route.clone()).collect();
    let decisions = route::decisions(n.ty, integrations, &keys);
    let empty = Map::new();
    let mut routes = Vec::new();
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for (p, decision) in current.previews.iter().zip(decisions) {
        routes.push(json!({
            "destination": p.name,
            "routed": decision.routed(),
            "why": decision.explain(n.ty, &p.name),
        }));
        if !decision.routed() {
            continue;
        }
        let options = route::options(integrations, &p.route).unwrap_or(&empty);
        let item = Item {
            message: &message,
            options,
            raw: None,
            traits_text: None,
        };
        let t = p.adapter.translate(&[item], SystemTime::now());
        for (_, verdict) in t.settled {
            match verdict {
                Verdict::Permanent { failure } => {
                    errors.push(json!({"destination": p.name, "error": failure.reason}))
                }
                Verdict::Delivered => errors.push(json!({
                    "destination": p.name,
                    "error": "nothing to send for this call (it settles without a request)",
                })),
                other => errors.push(json!({"destination": p.name, "error": format!("{other:?}")})),
            }
        }
        requests.extend(t.requests.iter().map(|r| shown(p, r)));
    }
    Ok(Json(json!({
        "normalized": message,
        "routes": routes,
        "requests": requests,
        "errors": errors,
    })))
}

/// Headers whose values are shown; every other value is `***`: configured headers may carry
/// credentials under any name, and a signature over a body the caller chose would let the
/// caller forge deliveries.
const SHOWN_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
];

/// A request as the console shows it: header values masked but for [`SHOWN_HEADERS`], a
/// URL's credentials masked (a webhook's whole path and query: a webhook URL often is the
/// credential), the body as JSON when it is JSON.
fn shown(p: &Preview, r: &OutRequest) -> Value {
    let headers: Map<String, Value> = (r.headers.iter())
        .map(|(k, v)| {
            let value = match (SHOWN_HEADERS.contains(&k.as_str()), v.to_str()) {
                (true, Ok(v)) if !v.is_empty() => v,
                _ => "***",
            };
            (k.as_str().to_string(), Value::from(value))
        })
        .collect();
    let url = if p.kind == "webhook" {
        origin_only(&r.url)
    } else {
        redacted_url(&r.url)
    };
    let body = serde_json::from_slice::<Value>(&r.body)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&r.body).into_owned()));
    json!({
        "destination": p.name,
        "method": r.method.as_str(),
        "url": url,
        "headers": headers,
        "body": body,
    })
}
