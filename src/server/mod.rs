//! Wiring: a validated config becomes a [`Plan`] (adapters built, routes known); [`run`]
//! serves ingest and the operator endpoints on a bound listener and runs each destination's
//! workers until shutdown.

mod connections;
mod control;
mod fleet;

pub use control::{Control, Preview, ReloadReport};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Backend;
use crate::config::{Config, ConfigErrors};
use crate::destination::{Destination, Registry};
use crate::route::RouteKey;
use crate::spool::Spool;
use crate::spool::jetstream::{JetStreamSpool, Role};
use crate::spool::sqlite::{Bounds, SqliteSpool};
use crate::{admin, ingest, ops, telemetry};

/// A config with its adapters built: what `check` prints and `run` runs.
pub struct Plan {
    pub config: Config,
    /// In config order, as `routes`.
    pub adapters: Vec<Arc<dyn Destination>>,
    /// The same adapters built as for a dry run (the console's "try a message").
    pub previews: Vec<Arc<dyn Destination>>,
    pub routes: Vec<RouteKey>,
    /// What built the adapters; a reload builds with it again.
    pub registry: Registry,
    /// The file the config came from, and its text: what a reload reads again and the
    /// console shows (redacted). `None` for a config made in a program.
    pub file: Option<(PathBuf, String)>,
    /// What this daemon does with a shared (JetStream) spool: `switchyard run --role`.
    pub role: Role,
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
        let mut previews = Vec::new();
        let mut routes = Vec::new();
        for d in &config.destinations {
            match registry
                .build(d)
                .and_then(|a| Ok((registry.preview(d)?, a)))
            {
                Ok((preview, adapter)) => {
                    let types = d
                        .types
                        .clone()
                        .unwrap_or_else(|| adapter.accepts().to_vec());
                    routes.push(RouteKey::new(&d.name, &d.aliases, types));
                    adapters.push(adapter);
                    previews.push(preview);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(config.expanded.mask(errors)));
        }
        Ok(Self {
            config,
            adapters,
            previews,
            routes,
            registry: registry.clone(),
            file: None,
            role: Role::All,
        })
    }

    /// Read, expand and validate a config file and build its adapters; every error is
    /// prefixed with the file's name.
    pub fn from_file(path: &Path, registry: &Registry) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let prefix = |errors: ConfigErrors| {
            (errors.0.iter())
                .map(|e| format!("{}: {e}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let config = crate::config::load(&text).map_err(prefix)?;
        let mut plan = Self::with_registry(config, registry).map_err(prefix)?;
        plan.file = Some((path.to_path_buf(), text));
        Ok(plan)
    }

    /// Human summary for `switchyard check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "listen: {}\nspool: {}\nsources:\n",
            c.server.listen,
            match c.spool.backend {
                Backend::Sqlite => c.spool.path.display().to_string(),
                Backend::JetStream => format!(
                    "jetstream at {} (prefix {}, {} partitions, {} replica(s))",
                    crate::spool::jetstream::names::shown_url(c.spool.url.as_deref().unwrap_or("")),
                    c.spool.prefix(),
                    c.spool.partitions(),
                    c.spool.replicas()
                ),
            }
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
        let admin = match (c.admin.token.len(), &c.admin.listen) {
            (0, _) => "off (no admin.token)".to_string(),
            (n, Some(listen)) => format!("on {listen} ({n} token(s))"),
            (n, None) => format!("on {} ({n} token(s))", c.server.listen),
        };
        out.push_str(&format!("admin: {admin}\n"));
        out
    }
}

/// Serve until `shutdown` completes, then stop accepting, let in-flight requests and batches
/// finish within `server.shutdown_grace`, and return. `reload` fires a reload of the config
/// file (SIGHUP), as the admin API's `reload` does.
pub async fn run(
    plan: Plan,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_reload(plan, listener, shutdown, futures_util::stream::pending()).await
}

/// [`run`], reloading the config file each time `reloads` yields.
pub async fn run_with_reload(
    plan: Plan,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: impl futures_util::Stream<Item = ()> + Send + Unpin + 'static,
) -> anyhow::Result<()> {
    telemetry::install();
    let role = plan.role;
    if role != Role::All && plan.config.spool.backend == Backend::Sqlite {
        anyhow::bail!(
            "--role {} needs a spool several daemons share: [spool] backend = \"jetstream\"",
            serde_json::to_value(role)?.as_str().unwrap_or_default()
        );
    }
    let spool = open_spool(&plan.config, role).await?;
    let admin_listen = plan.config.admin.listen.clone();
    let admin_listener = match &admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {a} (admin.listen): {e}"))?,
        ),
        None => None,
    };
    let grace = plan.config.server.shutdown_grace;
    let limits = connections::Limits::from(&plan.config.server);
    let control = Control::start(plan, spool.clone())?;
    let admin = Arc::new(admin::Admin::new(control.clone()));
    let open = if role.ingests() {
        ingest::app(control.ingest.clone()).merge(ops::open_router())
    } else {
        ingest::refusing().merge(ops::open_router())
    };
    let (app, admin_app) = match admin_listener {
        Some(l) => (open, Some((admin::router(admin), l))),
        None => (open.merge(admin::router(admin)), None),
    };
    if !control.admin_on() {
        tracing::warn!(
            "the admin side is off: set [admin] token to use the console, the admin API and /metrics"
        );
    }
    tracing::info!(address = %listener.local_addr()?, destinations = control.destination_count(), "listening");
    let watcher = tokio::spawn(reload_on(control.clone(), reloads));
    let admin_server = admin_app.map(|(app, l)| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(admin_address = %a, "serving the admin side");
        }
        tokio::spawn(connections::serve(app, l, limits, std::future::pending()))
    });
    let result = serve(app, listener, limits, shutdown, grace, &control).await;
    // Delivery has stopped: a shared spool hands this daemon's share to the others now.
    spool.close().await;
    // A reload runs as a task of its own: stopping the watcher cannot cut one short.
    watcher.abort();
    if let Some(s) = admin_server {
        s.abort();
    }
    result
}

/// Reload each time `reloads` yields (SIGHUP); one at a time.
async fn reload_on(
    control: Arc<Control>,
    mut reloads: impl futures_util::Stream<Item = ()> + Unpin,
) {
    use futures_util::StreamExt;
    while reloads.next().await.is_some() {
        control.reload().await;
    }
}

/// The configured spool: JetStream, or the embedded one, opened off the async threads (it
/// may replay a long log).
async fn open_spool(config: &Config, role: Role) -> anyhow::Result<Arc<dyn Spool>> {
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    let s = &config.spool;
    if s.backend == Backend::JetStream {
        let max_message = config.server.max_message_bytes;
        return Ok(Arc::new(
            JetStreamSpool::open(s, &names, role, max_message).await?,
        ));
    }
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
    control: &Control,
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
    let stopping = control.stop_delivery(grace);
    let (served, ()) = tokio::join!(tokio::time::timeout_at(deadline, server), stopping);
    if served.is_err() {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}
