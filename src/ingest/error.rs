//! Ingest's error answers: `{"success":false,"code":…,"message":…}`, the shape Segment's
//! clients parse, with the HTTP status that says what the client should do, and
//! `Retry-After` whenever coming back later can help.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::spool::SpoolError;

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

impl From<SpoolError> for ApiError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Full { .. } => Self {
                retry_after: Some(e.retry_after()),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "spool_full", e.to_string())
            },
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
