//! Wiring: a validated config becomes a plan (adapters built, routes known); `run` serves
//! ingest on a bound listener and runs one delivery worker per destination until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigErrors};
use crate::deliver::Worker;
use crate::destination::{self, Destination};
use crate::ingest::{self, AppState, DestinationView};
use crate::route::RouteKey;
use crate::spool::Spool;
use crate::spool::sqlite::SqliteSpool;
use crate::telemetry;

/// A config with its adapters built: what `check` prints and `run` runs.
pub struct Plan {
    pub config: Config,
    pub adapters: Vec<Arc<dyn Destination>>,
    pub routes: Vec<RouteKey>,
}

impl Plan {
    /// Build every adapter, collecting every error.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut adapters = Vec::new();
        let mut routes = Vec::new();
        for d in &config.destinations {
            match destination::build(d) {
                Ok(adapter) => {
                    let types = d
                        .types
                        .clone()
                        .unwrap_or_else(|| adapter.default_types().to_vec());
                    routes.push(RouteKey::new(&d.name, &d.aliases, types));
                    adapters.push(adapter);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                config,
                adapters,
                routes,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Human summary for `switchyard check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "listen: {}\nspool: {}\nsources:\n",
            c.server.listen,
            c.spool.path.display()
        );
        if c.sources.is_empty() {
            out.push_str("  (none: unauthenticated calls are accepted)\n");
        }
        for s in &c.sources {
            out.push_str(&format!("  {} (write key ***)\n", s.name));
        }
        out.push_str("destinations:\n");
        for (d, adapter) in c.destinations.iter().zip(&self.adapters) {
            let types = d
                .types
                .clone()
                .unwrap_or_else(|| adapter.default_types().to_vec());
            let types: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            out.push_str(&format!(
                "  {} ({}{}) takes: {}\n",
                d.name,
                d.kind,
                if d.dry_run { ", dry run" } else { "" },
                types.join(", ")
            ));
        }
        out
    }
}

/// Serve until `shutdown` completes, then stop accepting, let in-flight requests and batches
/// finish within `server.shutdown_grace`, and return.
pub async fn run(
    plan: Plan,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Plan {
        config,
        adapters,
        routes,
    } = plan;
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    telemetry::install();
    let (dir, max_bytes, window) = (
        config.spool.path.clone(),
        config.spool.max_bytes,
        config.spool.dedupe_window,
    );
    let spool_names = names.clone();
    let spool = tokio::task::spawn_blocking(move || {
        SqliteSpool::open(&dir, &spool_names, max_bytes, window)
    })
    .await?
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the spool in {}: {e}",
            config.spool.path.display()
        )
    })?;
    let spool: Arc<dyn Spool> = Arc::new(spool);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut views = Vec::new();
    let mut workers = Vec::new();
    for ((d, adapter), route) in config.destinations.iter().zip(adapters).zip(routes) {
        let worker = Arc::new(Worker::new(
            d,
            adapter,
            route.clone(),
            spool.clone(),
            client.clone(),
        ));
        views.push(DestinationView {
            name: d.name.clone(),
            kind: d.kind.clone(),
            route,
            status: worker.status.clone(),
        });
        for _ in 0..d.concurrency {
            workers.push(tokio::spawn(worker.clone().run(stop_rx.clone())));
        }
    }
    let grace = config.server.shutdown_grace;
    let routes = views.iter().map(|v| v.route.clone()).collect();
    let state = Arc::new(AppState {
        routes,
        limits: config.server,
        sources: config
            .sources
            .into_iter()
            .map(|s| (s.name, s.write_key))
            .collect(),
        destinations: views,
        spool,
    });
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, destinations = names.len(), "listening");
    let (signalled_tx, mut signalled_rx) = watch::channel(false);
    let serve = axum::serve(listener, ingest::app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests");
        let _ = signalled_tx.send(true);
    });
    let server = tokio::spawn(async move { serve.await });
    let _ = signalled_rx.wait_for(|s| *s).await;
    // One deadline for everything: in-flight requests first, then the batches being delivered
    // (workers stop leasing at once and finish what they hold).
    let deadline = tokio::time::Instant::now() + grace;
    let _ = stop_tx.send(true);
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
    }
    let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(100));
    for w in workers {
        if tokio::time::timeout_at(deadline, w).await.is_err() {
            tracing::warn!("a delivery worker did not finish within the grace period");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
