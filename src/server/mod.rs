//! Wiring: a validated config becomes a [`Plan`] (adapters built, routes known); [`run`]
//! serves ingest and the operator endpoints on a bound listener and runs each destination's
//! workers until shutdown.

mod connections;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigErrors};
use crate::deliver::Worker;
use crate::destination::{Destination, Registry};
use crate::ingest::{self, AppState};
use crate::ops::{self, DestinationView, OpsState};
use crate::route::RouteKey;
use crate::spool::Spool;
use crate::spool::sqlite::{Bounds, SqliteSpool};
use crate::telemetry;

/// A config with its adapters built: what `check` prints and `run` runs.
pub struct Plan {
    pub config: Config,
    /// In config order, as `routes`.
    pub adapters: Vec<Arc<dyn Destination>>,
    pub routes: Vec<RouteKey>,
}

impl Plan {
    /// Build every adapter from the ones compiled in, collecting every error.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        Self::with_registry(config, &Registry::builtin())
    }

    /// Build every adapter from `registry` (the built-in ones plus a program's own).
    pub fn with_registry(config: Config, registry: &Registry) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut adapters = Vec::new();
        let mut routes = Vec::new();
        for d in &config.destinations {
            match registry.build(d) {
                Ok(adapter) => {
                    let types = d
                        .types
                        .clone()
                        .unwrap_or_else(|| adapter.accepts().to_vec());
                    routes.push(RouteKey::new(&d.name, &d.aliases, types));
                    adapters.push(adapter);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            config,
            adapters,
            routes,
        })
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
        for (d, route) in c.destinations.iter().zip(&self.routes) {
            let types: Vec<&str> = route.types().iter().map(|t| t.as_str()).collect();
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
    telemetry::install();
    let spool = open_spool(&plan.config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let Plan {
        config,
        adapters,
        routes,
    } = plan;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut views = Vec::new();
    let mut workers = Vec::new();
    for ((d, adapter), route) in config.destinations.iter().zip(adapters).zip(&routes) {
        let worker = Worker::new(
            &d.name,
            &d.delivery,
            adapter,
            route.clone(),
            spool.clone(),
            client.clone(),
        );
        let worker = Arc::new(worker);
        views.push(DestinationView {
            name: d.name.clone(),
            kind: d.kind.clone(),
            status: worker.status.clone(),
        });
        for _ in 0..d.delivery.concurrency {
            workers.push(tokio::spawn(worker.clone().run(stop_rx.clone())));
        }
    }
    let grace = config.server.shutdown_grace;
    let limits = connections::Limits::from(&config.server);
    let destinations = config.destinations.len();
    let ingest = Arc::new(AppState {
        routes,
        limits: config.server,
        sources: config
            .sources
            .into_iter()
            .map(|s| (s.name, s.write_key))
            .collect(),
        spool: spool.clone(),
        refused: Default::default(),
    });
    let ops = Arc::new(OpsState {
        destinations: views,
        spool,
    });
    let app = ingest::app(ingest).merge(ops::router(ops));
    tracing::info!(address = %listener.local_addr()?, destinations, "listening");
    serve(app, listener, limits, shutdown, grace, stop_tx, workers).await
}

/// The embedded spool, opened off the async threads (it may replay a long log).
async fn open_spool(config: &Config) -> anyhow::Result<Arc<dyn Spool>> {
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    let s = &config.spool;
    let (dir, bounds) = (s.path.clone(), Bounds::from(s));
    let spool = tokio::task::spawn_blocking(move || SqliteSpool::open(&dir, &names, bounds))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open the spool in {}: {e}", s.path.display()))?;
    Ok(Arc::new(spool))
}

/// Serve `app` until `shutdown`; then one deadline for everything: in-flight requests
/// first, then the batches being delivered (workers stop leasing at once and finish what
/// they hold).
async fn serve(
    app: axum::Router,
    listener: TcpListener,
    limits: connections::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    let (signalled_tx, mut signalled_rx) = watch::channel(false);
    let serve = connections::serve(app, listener, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests");
        let _ = signalled_tx.send(true);
    });
    let server = tokio::spawn(serve);
    let _ = signalled_rx.wait_for(|s| *s).await;
    let deadline = tokio::time::Instant::now() + grace;
    let _ = stop.send(true);
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
