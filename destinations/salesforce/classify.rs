//! Salesforce answers → per-record verdicts and what they mean for the destination. Pure.

use std::time::SystemTime;

use serde::Deserialize;

use super::Salesforce;
use crate::destination::{Classification, Failure, OutRequest, Response, Verdict, classify_status};

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
    let failure = match &rest {
        Some(e) => Failure::http(response, format_args!("{}: {}", e.error_code, e.message)),
        None => Failure::http_status(response),
    };
    let all = |v: Verdict| Classification::all(request, v);
    match status {
        200..=299 => per_record(request, response),
        // `INVALID_SESSION_ID`: the session expired; get a new token and resend (SF-ERR,
        // SF-SESS). Unhealthy only shows if the resend with a fresh token is refused too.
        401 => Classification {
            refresh_auth: true,
            unhealthy: Some(failure.reason.clone()),
            ..all(Verdict::retry(failure))
        },
        // The allocation is used up, possibly for hours (SF-LIM): rest the whole destination.
        403 if code == "REQUEST_LIMIT_EXCEEDED" => {
            let after = Some(sf.request_limit_pause);
            Classification {
                pause: after,
                ..all(Verdict::Retry { after, failure })
            }
        }
        // A malformed request, an unknown object or field, or no access (SF-ERR, SF-UPS):
        // every record would fail the same way until a person fixes the config.
        400 | 403 | 404 => Classification {
            unhealthy: Some(failure.reason.clone()),
            ..all(Verdict::permanent(failure))
        },
        _ => classify_status(request, response, now),
    }
}

/// One verdict per item from the record it was merged into.
fn per_record(request: &OutRequest, response: &Response) -> Classification {
    let results: Vec<RecordResult> = match serde_json::from_slice(&response.body) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("unreadable collections answer: {e}");
            return Classification::all(request, Verdict::retry(Failure::refused(response, why)));
        }
    };
    let part = |k: usize| request.parts.get(k).copied().unwrap_or(k);
    let verdicts = (0..request.items.len())
        .map(|k| match results.get(part(k)) {
            Some(r) => record_verdict(r, response),
            None => Verdict::retry(Failure::refused(
                response,
                format!(
                    "Salesforce answered {} results for more records",
                    results.len()
                ),
            )),
        })
        .collect();
    Classification {
        verdicts,
        ..Classification::all(request, Verdict::Delivered)
    }
}

/// A record's verdict; its failure keeps the answer's status and body, which carry every
/// record's errors.
fn record_verdict(r: &RecordResult, response: &Response) -> Verdict {
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
    let transient = r
        .errors
        .iter()
        .any(|e| e.status_code == "UNABLE_TO_LOCK_ROW");
    let reason = match reason.is_empty() {
        true => "Salesforce refused the record without saying why".to_string(),
        false => reason,
    };
    let failure = Failure::refused(response, reason);
    if transient {
        Verdict::retry(failure)
    } else {
        Verdict::permanent(failure)
    }
}
