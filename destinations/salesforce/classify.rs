//! Salesforce answers → per-record verdicts and what they mean for the destination. Pure.

use std::time::SystemTime;

use serde::Deserialize;

use super::Salesforce;
use crate::destination::{Classification, OutRequest, Response, Verdict, classify_status, excerpt};

/// One entry of a collections answer, in the order the records were sent (SF-COLL, SF-UR).
#[derive(Deserialize)]
struct RecordResult {
    success: bool,
    #[serde(default)]
    errors: Vec<RecordError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordError {
    status_code: String,
    #[serde(default)]
    message: String,
}

/// A top-level REST error; note `errorCode` here against `statusCode` per record (SF-ERR).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestError {
    error_code: String,
    #[serde(default)]
    message: String,
}

pub(super) fn classify(
    sf: &Salesforce,
    request: &OutRequest,
    response: &Response,
    now: SystemTime,
) -> Classification {
    let status = response.status;
    let rest: Option<RestError> = serde_json::from_slice::<Vec<RestError>>(&response.body)
        .ok()
        .and_then(|v| v.into_iter().next());
    let code = rest
        .as_ref()
        .map(|e| e.error_code.as_str())
        .unwrap_or_default();
    let reason = match &rest {
        Some(e) => format!("HTTP {status}: {}: {}", e.error_code, e.message),
        None => format!("HTTP {status}: {}", excerpt(&response.body)),
    };
    let all = |v: Verdict| Classification::all(request, v);
    match status {
        200..=299 => per_record(request, &response.body),
        // `INVALID_SESSION_ID`: the session expired; get a new token and resend (SF-ERR,
        // SF-SESS). Unhealthy only shows if the resend with a fresh token is refused too.
        401 => Classification {
            refresh_auth: true,
            unhealthy: Some(reason.clone()),
            ..all(Verdict::retry(reason))
        },
        // The allocation is used up, possibly for hours (SF-LIM): rest the whole destination.
        403 if code == "REQUEST_LIMIT_EXCEEDED" => {
            let after = Some(sf.request_limit_pause);
            Classification {
                pause: after,
                ..all(Verdict::Retry { after, reason })
            }
        }
        // A malformed request, an unknown object or field, or no access (SF-ERR, SF-UPS):
        // every record would fail the same way until a person fixes the config.
        400 | 403 | 404 => Classification {
            unhealthy: Some(reason.clone()),
            ..all(Verdict::permanent(reason))
        },
        _ => classify_status(request, response, now),
    }
}

/// One verdict per item from the record it was merged into.
fn per_record(request: &OutRequest, body: &[u8]) -> Classification {
    let results: Vec<RecordResult> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Classification::all(
                request,
                Verdict::retry(format!("unreadable collections answer: {e}")),
            );
        }
    };
    let part = |k: usize| request.parts.get(k).copied().unwrap_or(k);
    let verdicts = (0..request.items.len())
        .map(|k| match results.get(part(k)) {
            Some(r) => record_verdict(r),
            None => Verdict::retry(format!(
                "Salesforce answered {} results for more records",
                results.len()
            )),
        })
        .collect();
    Classification {
        verdicts,
        ..Classification::all(request, Verdict::Delivered)
    }
}

fn record_verdict(r: &RecordResult) -> Verdict {
    if r.success {
        return Verdict::Delivered;
    }
    let reason = r
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.status_code, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    // A row lock not obtained in time is transient (SF-LOCK); any other code is a data
    // problem resending cannot fix (SF-ERR, SF-UR).
    if r.errors
        .iter()
        .any(|e| e.status_code == "UNABLE_TO_LOCK_ROW")
    {
        Verdict::retry(reason)
    } else if reason.is_empty() {
        Verdict::permanent("Salesforce refused the record without saying why")
    } else {
        Verdict::permanent(reason)
    }
}
