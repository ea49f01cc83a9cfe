//! The running daemon as the admin side sees it: the config in force, its destinations at
//! work, and reload (SIGHUP or the admin API).
//!
//! A reload reads the file again, validates it, and applies what can change live — sources
//! and write keys, destinations added, changed or removed, admin tokens — in an order that
//! loses nothing: the spool learns new destinations before ingest routes to them; ingest stops
//! routing to a removed destination before its workers stop; its workers finish and settle
//! their batches in flight before the spool stops serving it, and the spool keeps what it is
//! still owed. An invalid file changes nothing. `[server]`, `[spool]` and `admin.listen` are
//! read at start only: a reload that changes them says a restart is needed.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;

use super::Plan;
use super::fleet::{Fleet, Next};
use crate::config::Config;
use crate::deliver::pace::{Lane, Pace};
use crate::destination::{Destination, Registry};
use crate::ingest::{AppState, Routing};
use crate::ops::{DestinationView, OpsState};
use crate::route::RouteKey;
use crate::secret::Secret;
use crate::spool::Spool;

/// The daemon's moving parts, shared by the servers and the reload task.
pub struct Control {
    registry: Registry,
    spool: Arc<dyn Spool>,
    fleet: AsyncMutex<Fleet>,
    pub ingest: Arc<AppState>,
    pub ops: Arc<OpsState>,
    current: RwLock<Arc<Current>>,
    last_reload: Mutex<Option<ReloadReport>>,
    grace: Duration,
    /// `[spool] path` at start (a reload does not move the spool).
    spool_dir: std::path::PathBuf,
}

/// What the admin side reads of the config in force.
pub struct Current {
    /// The file and its text as read (variables not expanded), when there is one.
    pub file: Option<(std::path::PathBuf, String)>,
    pub admin_tokens: Vec<Secret>,
    pub public_metrics: bool,
    /// Each destination as the console's "try a message" uses it.
    pub previews: Vec<Preview>,
    /// What needs a restart to change: `[server]`, `[spool]` and `admin.listen`, as text.
    fixed: Vec<(&'static str, String)>,
}

/// A destination built as for a dry run, with its routing keys.
pub struct Preview {
    pub name: String,
    /// The adapter's config `type`.
    pub kind: String,
    pub route: RouteKey,
    pub adapter: Arc<dyn Destination>,
}

/// The outcome of the last reload, for the log, the admin API and the console.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    /// Every problem with the file, with line and column; nothing was applied.
    pub errors: Vec<String>,
    /// What was applied, in words.
    pub changes: Vec<String>,
    /// Sections that changed but are read at start only.
    pub restart_needed: Vec<String>,
}

impl Control {
    /// Start delivering to every destination of `plan`.
    pub(super) fn start(plan: Plan, spool: Arc<dyn Spool>) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let grace = plan.config.server.shutdown_grace;
        let spool_dir = plan.config.spool.path.clone();
        let registry = plan.registry.clone();
        let (config, next, current) = parts(plan);
        let mut fleet = Fleet::new(spool.clone(), client);
        fleet.start_all(next);
        let views = views_of(&fleet);
        let Config {
            server, sources, ..
        } = config;
        let routing = routing(sources, server.allow_unauthenticated, &current);
        let pace = Arc::new(Pace::new(server.pace_backlog, server.pace_max_wait));
        pace.set_lanes(lanes_of(&fleet, &[]));
        let ingest = Arc::new(AppState::new(server, routing, spool.clone(), pace));
        let ops = Arc::new(OpsState::new(views, spool.clone()));
        Ok(Arc::new(Self {
            registry,
            spool,
            fleet: AsyncMutex::new(fleet),
            ingest,
            ops,
            current: RwLock::new(Arc::new(current)),
            last_reload: Mutex::new(None),
            grace,
            spool_dir,
        }))
    }

    /// The config in force, as the admin side reads it.
    pub fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    /// Whether any admin token is configured.
    pub fn admin_on(&self) -> bool {
        !self.current().admin_tokens.is_empty()
    }

    pub fn destination_count(&self) -> usize {
        self.ops.destinations().len()
    }

    /// The outcome of the last reload since start, if any.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Read the config file again and apply it; an invalid file changes nothing. One reload
    /// at a time; the outcome is logged, kept for the console, and returned. Runs as a task
    /// of its own: a caller that goes away (an HTTP client hanging up) cannot cut it short
    /// half applied.
    pub async fn reload(self: &Arc<Self>) -> ReloadReport {
        let control = self.clone();
        match tokio::spawn(async move { control.reload_now().await }).await {
            Ok(report) => report,
            Err(e) => report(
                false,
                vec![format!("the reload failed: {e}")],
                vec![],
                vec![],
            ),
        }
    }

    async fn reload_now(&self) -> ReloadReport {
        let mut fleet = self.fleet.lock().await;
        if fleet.stopped {
            return report(
                false,
                vec!["the daemon is shutting down".into()],
                vec![],
                vec![],
            );
        }
        let report = match self.apply(&mut fleet).await {
            Ok((changes, restart_needed)) => {
                tracing::info!(changes = ?changes, "config reloaded");
                for section in &restart_needed {
                    tracing::warn!(section = %section, "changed in the file, applied only by a restart");
                }
                report(true, Vec::new(), changes, restart_needed)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "config reload refused; the running config is unchanged");
                }
                report(false, errors, Vec::new(), Vec::new())
            }
        };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// The reload itself: `(changes, restart_needed)`, or every error.
    async fn apply(&self, fleet: &mut Fleet) -> Result<(Vec<String>, Vec<String>), Vec<String>> {
        let Some((path, _)) = self.current().file.clone() else {
            return Err(vec![
                "this daemon was not started from a config file: nothing to reload".into(),
            ]);
        };
        let plan = Plan::from_file(&path, &self.registry)
            .map_err(|e| e.lines().map(str::to_string).collect::<Vec<_>>())?;
        let (config, next, fresh) = parts(plan);
        let next_fixed = fresh.fixed.clone();
        let mut fresh = fresh;
        // What needs a restart is compared with what runs: the values read at start.
        fresh.fixed = self.current().fixed.clone();
        let restart_needed: Vec<String> = (next_fixed.iter())
            .zip(&fresh.fixed)
            .filter(|(new, old)| new.1 != old.1)
            .map(|(new, _)| new.0.to_string())
            .collect();
        let diff = fleet.diff(&next);
        let names: Vec<String> = next.iter().map(|n| n.name.clone()).collect();
        let mut both = names.clone();
        both.extend(diff.removed.iter().cloned());
        both.extend(
            fleet
                .lingering
                .iter()
                .filter(|n| !names.contains(n))
                .cloned(),
        );
        // New destinations exist in the spool before ingest routes to them.
        self.spool
            .configure(&both)
            .await
            .map_err(|e| vec![format!("the spool cannot add the new destinations: {e}")])?;
        let open = config.server.allow_unauthenticated;
        let old_routing = (self.ingest).set_routing(routing(config.sources, open, &fresh));
        let mut changes = Vec::new();
        for name in &diff.removed {
            let owed = self.spool.depth(name).pending;
            changes.push(format!(
                "removed destination `{name}` ({owed} messages kept in the spool until it is configured again; on a JetStream spool, dropped once no daemon serves it)"
            ));
        }
        changes.extend(
            diff.changed
                .iter()
                .map(|n| format!("changed destination `{n}`")),
        );
        changes.extend(
            diff.added
                .iter()
                .map(|n| format!("added destination `{n}`")),
        );
        if old_routing.sources != self.ingest.routing().sources
            || old_routing.allow_unauthenticated != open
        {
            changes.push("sources changed".into());
        }
        if self.current().admin_tokens != fresh.admin_tokens {
            changes.push("admin tokens changed".into());
        }
        let mut stopping = diff.removed.clone();
        stopping.extend(diff.changed.iter().cloned());
        // Their workers stop now: ingest must not wait for them to catch up meanwhile.
        self.ingest.pace.set_lanes(lanes_of(fleet, &stopping));
        let statuses = fleet.stop(&stopping, self.grace).await;
        // A request that routed with the old config stores its messages before a removed
        // destination's lane goes, so each of them still reaches it.
        if !self.ingest.drained(&old_routing, self.grace).await {
            tracing::warn!("ingest requests that started before the reload are still running");
        }
        drop(old_routing);
        for name in &diff.removed {
            // Not served any more: its gauges would otherwise keep their last values.
            crate::telemetry::destination_gauges(name, &Default::default(), false);
        }
        fleet.lingering = match self.spool.configure(&names).await {
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "the spool keeps serving a removed destination until the next reload");
                both.into_iter().filter(|n| !names.contains(n)).collect()
            }
        };
        fleet.run(next, statuses);
        self.ops.set_destinations(views_of(fleet));
        self.ingest.pace.set_lanes(lanes_of(fleet, &[]));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        if changes.is_empty() {
            changes.push("nothing changed".into());
        }
        Ok((changes, restart_needed))
    }

    /// Stop every destination's workers (shutdown), within `grace`; no reload runs after.
    pub(super) async fn stop_delivery(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // A reload under way finishes first (it waits for batches too, within the same grace).
        let Ok(mut fleet) = tokio::time::timeout_at(deadline, self.fleet.lock()).await else {
            tracing::warn!("a reload was still running at the end of the grace period");
            return;
        };
        fleet.stopped = true;
        // Requests still being answered no longer wait for workers that are stopping.
        self.ingest.pace.set_lanes(Vec::new());
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        fleet.stop_all(left.max(Duration::from_millis(100))).await;
    }
}

fn report(
    ok: bool,
    errors: Vec<String>,
    changes: Vec<String>,
    restart_needed: Vec<String>,
) -> ReloadReport {
    ReloadReport {
        at: chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339(),
        ok,
        errors,
        changes,
        restart_needed,
    }
}

/// A plan taken apart: the config's shared sections, each destination ready to run, and
/// what the admin side reads.
fn parts(plan: Plan) -> (Config, Vec<Next>, Current) {
    let Plan {
        mut config,
        adapters,
        previews,
        routes,
        file,
        ..
    } = plan;
    let destinations = std::mem::take(&mut config.destinations);
    let next: Vec<Next> = (destinations.iter())
        .zip(adapters)
        .zip(routes.iter().cloned())
        .map(|((d, adapter), route)| Next::new(d, adapter, route))
        .collect();
    let previews = (next.iter())
        .zip(previews)
        .map(|(n, adapter)| Preview {
            name: n.name.clone(),
            kind: n.kind.clone(),
            route: n.route.clone(),
            adapter,
        })
        .collect();
    let admin = &config.admin;
    let current = Current {
        file,
        admin_tokens: admin.token.clone(),
        public_metrics: admin.public_metrics,
        previews,
        fixed: vec![
            // allow_unauthenticated goes with the sources: it applies live.
            (
                "[server]",
                format!(
                    "{:?}",
                    crate::config::ServerConfig {
                        allow_unauthenticated: false,
                        ..config.server.clone()
                    }
                ),
            ),
            // Without its places: moving the table in the file changes nothing.
            (
                "[spool]",
                format!(
                    "{:?}",
                    crate::config::SpoolConfig {
                        place: Default::default(),
                        ..config.spool.clone()
                    }
                ),
            ),
            ("admin.listen", format!("{:?}", admin.listen)),
        ],
    };
    (config, next, current)
}

/// Ingest's routing: the sources, and the destinations in `current`'s order.
fn routing(
    sources: Vec<crate::config::SourceConfig>,
    allow_unauthenticated: bool,
    current: &Current,
) -> Routing {
    Routing {
        sources: sources.into_iter().map(|s| (s.name, s.write_key)).collect(),
        routes: current.previews.iter().map(|p| p.route.clone()).collect(),
        allow_unauthenticated,
    }
}

/// The destinations ingest's pacing watches, but `leaving` (their workers are stopping).
fn lanes_of(fleet: &Fleet, leaving: &[String]) -> Vec<Lane> {
    (fleet.running.iter())
        .filter(|r| !r.dry_run && !leaving.contains(&r.name))
        .map(|r| Lane {
            name: r.name.clone(),
            status: r.status.clone(),
        })
        .collect()
}

/// What operators see of each running destination, in config order.
fn views_of(fleet: &Fleet) -> Vec<DestinationView> {
    (fleet.running.iter())
        .map(|r| DestinationView {
            name: r.name.clone(),
            kind: r.kind.clone(),
            dry_run: r.dry_run,
            status: r.status.clone(),
        })
        .collect()
}
