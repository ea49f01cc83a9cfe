//! Reading a request body within its limit, and naming the limit when it is passed.

use axum::body::Body;
use axum::http::StatusCode;

use super::error::ApiError;

/// The body, at most `limit` bytes after gzip decoding; `what` and `key` name the limit in
/// the answer (`key` is the config key a user would raise).
pub(super) async fn read(
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
