//! What became of an item, as data: a [`Verdict`] per item, the [`Failure`] behind every
//! verdict that is not a delivery (reason, HTTP status, response excerpt, kind), and the
//! classification most HTTP APIs deserve. Pure.
//!
//! A failure's facts travel from where they are learnt (`classify`, the transport, a
//! translation) to the spool's retry and dead-letter records as fields, never as text that
//! is parsed back.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::request::{OutRequest, Response, excerpt};

/// Which kind of thing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The destination answered with an HTTP status that says so.
    Http,
    /// The destination answered with a success status whose body refuses the item (a
    /// Salesforce record error, a Mixpanel `status: 0`).
    Refused,
    /// No answer: connection failed, timed out, or the body could not be read.
    Transport,
    /// The message could not be turned into a request.
    Translation,
    /// The engine itself decided (an unreadable stored message, a missing verdict).
    Engine,
    /// The stored message was altered on disk (its checksum differs): never sent.
    Corrupted,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// What happened, in words: logs, status and dead letters show it.
    pub reason: String,
    /// The HTTP status of the answer, when there was one.
    pub status: Option<u16>,
    /// The start of the answer's body, when there was one.
    pub response: Option<String>,
}

impl Failure {
    /// An answer whose status is the failure; the reason is `HTTP {status}: {detail}`.
    pub fn http(response: &Response, detail: impl fmt::Display) -> Self {
        Self::answered(
            FailureKind::Http,
            response,
            format!("HTTP {}: {detail}", response.status),
        )
    }

    /// An answer whose status is the failure, described by its own body.
    pub fn http_status(response: &Response) -> Self {
        Self::http(response, excerpt(&response.body))
    }

    /// A success status whose body refuses the item.
    pub fn refused(response: &Response, reason: impl Into<String>) -> Self {
        Self::answered(FailureKind::Refused, response, reason.into())
    }

    fn answered(kind: FailureKind, response: &Response, reason: String) -> Self {
        let body = excerpt(&response.body);
        Self {
            kind,
            reason,
            status: Some(response.status),
            response: (!body.is_empty()).then_some(body),
        }
    }

    /// No answer came back.
    pub fn transport(reason: impl Into<String>) -> Self {
        Self::unanswered(FailureKind::Transport, reason)
    }

    /// The message cannot become a request.
    pub fn translation(reason: impl Into<String>) -> Self {
        Self::unanswered(FailureKind::Translation, reason)
    }

    /// The engine decided without an answer.
    pub fn engine(reason: impl Into<String>) -> Self {
        Self::unanswered(FailureKind::Engine, reason)
    }

    /// The stored message cannot be trusted: it is dead-lettered as `corrupted`.
    pub fn corrupted(reason: impl Into<String>) -> Self {
        Self::unanswered(FailureKind::Corrupted, reason)
    }

    fn unanswered(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            status: None,
            response: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What became of one item in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later; `after` is a floor from the destination (Retry-After).
    Retry {
        after: Option<Duration>,
        failure: Failure,
    },
    /// Resending cannot help: dead-letter it.
    Permanent {
        failure: Failure,
    },
    /// Not attempted (the destination is paused, a credential could not be fetched): send
    /// later without counting an attempt, so it never dead-letters for this.
    Defer {
        after: Option<Duration>,
        reason: String,
    },
}

impl Verdict {
    pub fn retry(failure: Failure) -> Self {
        Verdict::Retry {
            after: None,
            failure,
        }
    }

    pub fn permanent(failure: Failure) -> Self {
        Verdict::Permanent { failure }
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
    /// Batch indexes of calls merged into an earlier call's update of the same group
    /// (coalescing): each is an update the destination was spared. Their verdict is the
    /// update's, through the request that carries them.
    pub coalesced: Vec<usize>,
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
    let verdict = match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500 | 502..=599 => Verdict::Retry {
            after,
            failure: Failure::http_status(response),
        },
        _ => Verdict::permanent(Failure::http_status(response)),
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderValue, Method};

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
    fn an_http_failure_carries_its_status_and_excerpt() {
        let r = Response {
            status: 422,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{\"error\":\"bad\"}"),
        };
        let f = Failure::http_status(&r);
        assert_eq!(f.reason, "HTTP 422: {\"error\":\"bad\"}");
        assert_eq!(f.status, Some(422));
        assert_eq!(f.response.as_deref(), Some("{\"error\":\"bad\"}"));
        assert_eq!(f.kind, FailureKind::Http);
        let t = Failure::transport("timed out");
        assert_eq!(
            (t.status, t.response, t.kind),
            (None, None, FailureKind::Transport)
        );
    }

    #[test]
    fn worst_wins() {
        let r = Verdict::retry(Failure::engine("r"));
        let p = Verdict::permanent(Failure::engine("p"));
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
