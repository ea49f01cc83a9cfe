//! Reading a request body within its limits (size, and time: a body trickled in a byte at a
//! time must not hold a connection for ever), and naming the limit when it is passed.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;

use super::error::ApiError;

/// The body, at most `limit` bytes after gzip decoding, all of it within `within`; `what`
/// and `key` name the size limit in the answer (`key` is the config key a user would raise).
pub(super) async fn read(
    body: Body,
    limit: usize,
    within: Duration,
    what: &str,
    key: &str,
) -> Result<bytes::Bytes, ApiError> {
    let read = tokio::time::timeout(within, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within server.body_read_timeout ({})",
                humantime::format_duration(within)
            ),
        ));
    };
    read.map_err(|e| {
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
