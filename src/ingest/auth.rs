//! Which source a request speaks for: the write key as the HTTP Basic user name (with or
//! without the trailing colon), else `writeKey` in the body.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;

use super::Routing;
use super::error::ApiError;

pub(super) fn authenticate(
    routing: &Routing,
    headers: &HeaderMap,
    body_key: Option<&str>,
) -> Result<String, ApiError> {
    let header_key = basic_user(headers)?;
    let key = header_key.as_deref().or(body_key).filter(|k| !k.is_empty());
    match key {
        Some(key) => source_of(routing, key).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_write_key",
                "unknown write key",
            )
        }),
        None if routing.allow_unauthenticated => Ok("unauthenticated".into()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "no write key: send it as the HTTP Basic user name or as writeKey in the body",
        )),
    }
}

/// The source whose write key is `key`. Every key is compared, each in constant time, so
/// the answer's timing does not tell how much of a guess was right, nor which source's.
fn source_of(routing: &Routing, key: &str) -> Option<String> {
    let mut found = None;
    for (name, secret) in &routing.sources {
        if secret.matches(key) {
            found = Some(name.clone());
        }
    }
    found
}

/// The Basic-auth user name, if the request has a Basic `Authorization` header.
fn basic_user(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(b64) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    else {
        return Ok(None);
    };
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
    Ok(Some(match decoded.split_once(':') {
        Some((user, _)) => user.to_string(),
        None => decoded,
    }))
}
