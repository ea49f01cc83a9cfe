//! The HTTP transport: send one request with the destination's timeout and read the whole
//! answer. Knows nothing of adapters, verdicts or the spool; its errors are typed and never
//! carry the URL (it may hold a token).

use std::fmt;
use std::time::{Duration, Instant};

use crate::destination::{OutRequest, Response, Transport};
use crate::telemetry;

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection failed: {}", Cause(.0))]
    Connect(#[source] reqwest::Error),
    #[error("request failed: {}", Cause(.0))]
    Other(#[source] reqwest::Error),
}

impl TransportError {
    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            TransportError::Timeout(timeout)
        } else if e.is_connect() {
            TransportError::Connect(e)
        } else {
            TransportError::Other(e)
        }
    }
}

/// The innermost cause of an error, which says what actually went wrong.
struct Cause<'a>(&'a reqwest::Error);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cur: &(dyn std::error::Error + 'static) = self.0;
        while let Some(next) = cur.source() {
            cur = next;
        }
        write!(f, "{cur}")
    }
}

/// Send `request` and read its answer, recording how long it took for `destination`.
pub(super) async fn send(
    transport: &Transport,
    destination: &str,
    request: &OutRequest,
) -> Result<Response, TransportError> {
    let started = Instant::now();
    let answer = exchange(transport, request).await;
    telemetry::delivery_latency(destination, started.elapsed());
    answer
}

async fn exchange(transport: &Transport, request: &OutRequest) -> Result<Response, TransportError> {
    let failed = |e| TransportError::from_reqwest(e, transport.timeout);
    let response = transport
        .client
        .request(request.method.clone(), &request.url)
        .headers(request.headers.clone())
        .body(request.body.clone())
        .timeout(transport.timeout)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(failed)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}
