//! Ingest's error answers: `{"success":false,"code":…,"message":…}`, the shape Segment's
//! clients parse, with the HTTP status that says what the client should do, and
//! `Retry-After` whenever coming back later can help.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::spool::SpoolError;
use crate::telemetry;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// When a retry may succeed: sent as `Retry-After`, in seconds.
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn json(e: &serde_json::Error) -> Self {
        Self::bad(
            "invalid_json",
            format!(
                "malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    }

    pub(super) fn not_an_object() -> Self {
        Self::bad("not_an_object", "the request body must be a JSON object")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            axum::Json(json!({"success": false, "code": self.code, "message": self.message}));
        let mut response = (self.status, body).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A 503 with `Retry-After` for a spool that cannot take messages for now, logged at most
/// once a minute with how many were refused since.
fn refusing(
    e: &SpoolError,
    told: &telemetry::Throttle,
    log: &'static str,
    code: &'static str,
    message: &'static str,
) -> ApiError {
    if let Some(refused) = told.due(telemetry::once) {
        tracing::error!(error = %e, refused_since_last_line = refused, "{log}");
    }
    ApiError {
        retry_after: Some(e.retry_after()),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl From<SpoolError> for ApiError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Full { .. } => Self {
                retry_after: Some(e.retry_after()),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "spool_full", e.to_string())
            },
            SpoolError::Unavailable(_) => {
                static TOLD: telemetry::Throttle =
                    telemetry::Throttle::new(Duration::from_secs(60), 0);
                let (code, message) = (
                    "spool_unavailable",
                    "the spool's server is unavailable; retry later",
                );
                refusing(
                    &e,
                    &TOLD,
                    "cannot store accepted messages: ingest answers 503 until the spool's server answers",
                    code,
                    message,
                )
            }
            // A person must free space; the SDKs keep the messages and retry meanwhile.
            SpoolError::Storage(_) if e.is_disk_full() => {
                static TOLD: telemetry::Throttle =
                    telemetry::Throttle::new(Duration::from_secs(60), 0);
                let (code, message) = ("disk_full", "the spool's disk is full; retry later");
                refusing(
                    &e,
                    &TOLD,
                    "the spool's disk is full: ingest refuses calls until space is freed",
                    code,
                    message,
                )
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spool::sqlite::StorageError;

    fn answer(e: SpoolError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = ApiError::from(e).into_response();
        let status = response.status();
        let after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        (status, after, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn a_full_disk_is_503_with_retry_after_and_says_so() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        // As a group commit reports it: the shared transaction's error.
        let e = StorageError::Transaction(Arc::new(StorageError::Sqlite(full)));
        let (status, after, body) = answer(SpoolError::Storage(e));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(after.as_deref(), Some("5"));
        assert_eq!(body["code"], "disk_full");
        let (status, after, body) = answer(SpoolError::Storage(StorageError::WriterStopped));
        assert_eq!((status, after), (StatusCode::INTERNAL_SERVER_ERROR, None));
        assert_eq!(body["code"], "internal");
        let (status, after, _) = answer(SpoolError::Full { used: 2, max: 1 });
        assert_eq!(
            (status, after.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("5"))
        );
    }
}
