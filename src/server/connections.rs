//! Accepting client connections within limits, so that slow or idle clients cannot hold the
//! daemon's connections or file descriptors:
//!
//! - at most `server.max_connections` open at once: past it, new connections wait in the
//!   kernel's accept queue until one closes (nothing is refused, nothing spins);
//! - a request's headers must arrive within `server.header_read_timeout` (hyper's timer),
//!   which is also how long a kept-alive connection may wait for its next request, and how
//!   long a connection that never sends a byte stays open (slowloris, idle sockets);
//! - a request's body must arrive within `server.body_read_timeout` (see `ingest::body`);
//! - an accept error (EMFILE when the process is out of file descriptors, ENFILE, …) pauses
//!   accepting for [`ACCEPT_PAUSE`] and is logged at most once per [`ACCEPT_LOG_EVERY`],
//!   instead of failing every second in a loop.
//!
//! HTTP/1.1 only, as every Segment SDK speaks (no h2c): protocol detection would hold a
//! connection that sends nothing before the header timer starts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::telemetry::{self, Throttle};

/// How long accepting pauses after an accept error (e.g. out of file descriptors): long
/// enough for connections to close, short enough that clients barely notice.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line about accept errors per this long.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits connections are served under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl From<&ServerConfig> for Limits {
    fn from(s: &ServerConfig) -> Self {
        Self {
            max_connections: s.max_connections,
            header_read_timeout: s.header_read_timeout,
        }
    }
}

/// Accept and serve connections with `app` until `shutdown`; then stop accepting, ask every
/// open connection to close after its request in progress, and return once all have (the
/// caller bounds the wait).
pub async fn serve(
    app: axum::Router,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let told = Throttle::new(ACCEPT_LOG_EVERY, 0);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&told, &e);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client that timed out or went away: routine, not the daemon's fault.
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What an accept error means for the operator.
fn accept_failed(told: &Throttle, e: &std::io::Error) {
    let Some(failed) = told.due(telemetry::once) else {
        return;
    };
    let hint = match e.raw_os_error() {
        // EMFILE, ENFILE
        Some(24 | 23) => {
            "out of file descriptors: lower server.max_connections or raise the limit (ulimit -n, LimitNOFILE=)"
        }
        _ => "accepting again shortly",
    };
    tracing::warn!(error = %e, failed_since_last_line = failed, hint, "cannot accept connections");
}
