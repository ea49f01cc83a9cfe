//! The adapter contract: what a destination must do, and the registry that builds one from
//! its `[[destination]]` table.
//!
//! An adapter only translates and classifies (pure: messages and a clock in, requests out;
//! a response in, one verdict per item out) and, when it needs a credential fetched, authorizes.
//! The engine (`deliver`) owns batching, rate limits, retries, timeouts and the spool.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use crate::config::{ConfigError, DestinationConfig};
use crate::message::MessageType;

/// One message handed to an adapter.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The normalized message.
    pub message: &'a Map<String, Value>,
    /// This destination's options from the message's `integrations` map (empty when none).
    pub options: &'a Map<String, Value>,
}

impl<'a> Item<'a> {
    /// The `groupId` of a group call; `None` for any other call (or one without a group).
    pub fn group_call(&self) -> Option<&'a str> {
        let message: &'a Map<String, Value> = self.message;
        match message.get("type").and_then(Value::as_str) {
            Some("group") => message.get("groupId").and_then(Value::as_str),
            _ => None,
        }
    }

    pub fn message_id(&self) -> &str {
        self.message
            .get("messageId")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// An HTTP request an adapter wants sent, and which items of the batch it carries.
#[derive(Clone)]
pub struct OutRequest {
    pub method: Method,
    pub url: String,
    /// Mark credential values `set_sensitive(true)`: logs then show `***`.
    pub headers: HeaderMap,
    /// The exact bytes sent (signatures are computed over them).
    pub body: Bytes,
    /// Indexes into the batch given to `translate`; `classify` answers one verdict for each.
    pub items: Vec<usize>,
    /// For each entry of `items`, the part of the body that carries it (e.g. the record an
    /// item was merged into), so `classify` can map per-part answers back to items without
    /// state. Empty when each item is its own part or the answer is all-or-nothing.
    pub parts: Vec<usize>,
}

impl OutRequest {
    pub fn json(method: Method, url: impl Into<String>, body: Vec<u8>, items: Vec<usize>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION"))),
        );
        Self {
            method,
            url: url.into(),
            headers,
            body: Bytes::from(body),
            items,
            parts: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

impl fmt::Debug for OutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &redacted_headers(&self.headers))
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("items", &self.items)
            .field("parts", &self.parts)
            .finish()
    }
}

/// Headers as `name: value` lines, sensitive values shown as `***`.
pub fn redacted_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(k, v)| {
            let shown = if v.is_sensitive() {
                "***"
            } else {
                v.to_str().unwrap_or("<binary>")
            };
            format!("{k}: {shown}")
        })
        .collect()
}

/// A response as `classify` sees it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What became of one item in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later; `after` is a floor from the destination (Retry-After).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Resending cannot help: dead-letter with the reason.
    Permanent {
        reason: String,
    },
    /// Not attempted (the destination is paused, a credential could not be fetched): send
    /// later without counting an attempt, so it never dead-letters for this.
    Defer {
        after: Option<Duration>,
        reason: String,
    },
}

impl Verdict {
    pub fn retry(reason: impl Into<String>) -> Self {
        Verdict::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Verdict::Permanent {
            reason: reason.into(),
        }
    }

    /// Of two verdicts for the same item, the one that decides: permanent over retry over
    /// defer over delivered.
    pub fn worst(self, other: Verdict) -> Verdict {
        fn rank(v: &Verdict) -> u8 {
            match v {
                Verdict::Delivered => 0,
                Verdict::Defer { .. } => 1,
                Verdict::Retry { .. } => 2,
                Verdict::Permanent { .. } => 3,
            }
        }
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// A classified response: per-item verdicts plus what it means for the whole destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// One per `OutRequest::items`, in the same order.
    pub verdicts: Vec<Verdict>,
    /// Stop sending to this destination for this long (429, Retry-After, an exhausted quota).
    pub pause: Option<Duration>,
    /// The credential was refused: authorize again with `refresh = true` and resend once.
    pub refresh_auth: bool,
    /// The request was too large: send each half of its items separately.
    pub split: bool,
    /// Something a person must fix (bad credentials, unknown object): shown in status.
    pub unhealthy: Option<String>,
}

impl Classification {
    /// The same verdict for every item of the request.
    pub fn all(request: &OutRequest, verdict: Verdict) -> Self {
        Self {
            verdicts: vec![verdict; request.items.len()],
            pause: None,
            refresh_auth: false,
            split: false,
            unhealthy: None,
        }
    }
}

/// What translating a batch produced.
#[derive(Debug, Default)]
pub struct Translation {
    pub requests: Vec<OutRequest>,
    /// Items settled without a request: delivered (nothing to send) or permanent (cannot be
    /// translated), by batch index.
    pub settled: Vec<(usize, Verdict)>,
}

/// What an adapter may use for I/O while authorizing (e.g. fetching an OAuth token).
#[derive(Clone)]
pub struct Transport {
    pub client: reqwest::Client,
    pub timeout: Duration,
}

/// Why authorizing failed; messages are retried, never dead-lettered, for this.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// The most items this adapter can put in one request (the engine never leases more).
    fn max_batch(&self) -> usize;

    /// Batch size when the config does not set `batch.max_events`.
    fn default_batch(&self) -> usize {
        1
    }

    /// Message types taken when the config does not set `types`.
    fn default_types(&self) -> &'static [MessageType] {
        MessageType::ALL
    }

    /// Turn a batch into requests. Pure: the time comes in, nothing is fetched.
    fn translate(&self, batch: &[Item<'_>], now: SystemTime) -> Translation;

    /// Read a response into one verdict per item of `request`. Pure.
    fn classify(
        &self,
        request: &OutRequest,
        response: &Response,
        now: SystemTime,
    ) -> Classification;

    /// Add credentials to a request; `refresh` asks for a new one after a refusal.
    async fn authorize(
        &self,
        _request: &mut OutRequest,
        _transport: &Transport,
        _refresh: bool,
    ) -> Result<(), AuthError> {
        Ok(())
    }
}

/// The verdict most HTTP APIs deserve: 2xx delivered; 408, 429 and 5xx (but 501) retried,
/// honouring `Retry-After`; any other status permanent.
pub fn classify_status(
    request: &OutRequest,
    response: &Response,
    now: SystemTime,
) -> Classification {
    let status = response.status;
    let after = retry_after(&response.headers, now);
    let reason = || format!("HTTP {status}: {}", excerpt(&response.body));
    let verdict = match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500 | 502..=599 => Verdict::Retry {
            after,
            reason: reason(),
        },
        _ => Verdict::Permanent { reason: reason() },
    };
    let mut c = Classification::all(request, verdict);
    if status == 429 || (after.is_some() && !(200..300).contains(&status)) {
        c.pause = Some(after.unwrap_or(Duration::from_secs(1)));
    }
    c
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`, honoured up to
/// [`MAX_RETRY_AFTER`](crate::retry::MAX_RETRY_AFTER): a destination cannot park itself (or
/// overflow a clock) with a huge value.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let cap = crate::retry::MAX_RETRY_AFTER;
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(cap).min(cap));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(cap))
}

/// The first 500 bytes of a body, for reasons and dead letters.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 500;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}…")
    } else {
        text
    }
}

/// Builds an adapter from its config; errors name the key and line.
pub type Constructor = fn(&DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError>;

/// Every adapter compiled in, by config `type`.
pub fn registry() -> &'static [(&'static str, Constructor)] {
    crate::destinations::REGISTRY
}

/// Build the adapter a destination's `type` names.
pub fn build(config: &DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError> {
    let known: Vec<&str> = registry().iter().map(|(name, _)| *name).collect();
    match registry().iter().find(|(name, _)| *name == config.kind) {
        Some((_, construct)) => construct(config),
        None => Err(config.settings.error(
            "type",
            format!(
                "destination `{}`: unknown type `{}` (known: {})",
                config.name,
                config.kind,
                known.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(&later).unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h, now), None);
        // Huge values are clamped to an hour rather than panicking or parking the destination.
        let cap = crate::retry::MAX_RETRY_AFTER;
        for huge in ["86400", "99999999999999999999", "1e400", "inf"] {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static(huge));
            assert_eq!(retry_after(&h, now), Some(cap), "{huge}");
        }
        let far = httpdate::fmt_http_date(now + Duration::from_secs(10 * 86400));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(&far).unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(cap));
    }

    #[test]
    fn status_classes() {
        let req = OutRequest::json(Method::POST, "http://x", vec![], vec![0]);
        let now = SystemTime::now();
        let v = |status: u16| {
            let r = Response {
                status,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            };
            classify_status(&req, &r, now).verdicts[0].clone()
        };
        assert_eq!(v(200), Verdict::Delivered);
        assert_eq!(v(204), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(v(s), Verdict::Retry { .. }), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 501, 301] {
            assert!(matches!(v(s), Verdict::Permanent { .. }), "{s}");
        }
    }

    #[test]
    fn worst_wins() {
        let r = Verdict::retry("r");
        let p = Verdict::permanent("p");
        let d = Verdict::Defer {
            after: None,
            reason: "d".into(),
        };
        assert_eq!(Verdict::Delivered.worst(d.clone()), d);
        assert_eq!(d.clone().worst(r.clone()), r);
        assert_eq!(Verdict::Delivered.worst(r.clone()), r);
        assert_eq!(r.clone().worst(p.clone()), p);
        assert_eq!(p.clone().worst(Verdict::Delivered), p);
    }
}
