//! Prometheus metrics: their names in one place, the process-wide recorder, and the text
//! `GET /metrics` answers.
//!
//! Counters and histograms are recorded where things happen (ingest, deliver); per-destination
//! gauges (queue depth, oldest pending age, paused) are set from the spool on each scrape, so
//! they are never staler than the scrape itself.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::spool::Depth;

/// Latency buckets, seconds: from a local fsync to a slow remote API.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the recorder once per process; later calls return the same handle. `None` when
/// another recorder was installed first (metrics are then not rendered here).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics histogram buckets refused; using summaries");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition, or an empty page when no recorder is installed.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Messages received from a source: `accepted`, `duplicate` or `rejected`.
pub fn messages_in(source: &str, result: &'static str, n: usize) {
    if n > 0 {
        counter!("switchyard_messages_in_total", "source" => source.to_string(), "result" => result).increment(n as u64);
    }
}

/// Items settled for a destination: `delivered`, `retry` or `dead_letter`.
pub fn deliveries(destination: &str, outcome: &'static str, n: usize) {
    if n == 0 {
        return;
    }
    counter!("switchyard_deliveries_total", "destination" => destination.to_string(), "outcome" => outcome)
        .increment(n as u64);
    match outcome {
        "retry" => counter!("switchyard_retries_total", "destination" => destination.to_string())
            .increment(n as u64),
        "dead_letter" => {
            counter!("switchyard_dead_letters_total", "destination" => destination.to_string())
                .increment(n as u64)
        }
        _ => {}
    }
}

/// Messages refused at ingest that were counted but not kept: `spool.max_refused_bytes`
/// was reached.
pub fn refused_not_kept(source: &str, n: usize) {
    if n > 0 {
        counter!("switchyard_refused_not_kept_total", "source" => source.to_string())
            .increment(n as u64);
    }
}

/// Calls a destination received inside another call's update of the same group.
pub fn coalesced(destination: &str, n: usize) {
    counter!("switchyard_coalesced_total", "destination" => destination.to_string())
        .increment(n as u64);
}

/// Time to answer one ingest request (the spool commit included).
pub fn ingest_latency(endpoint: &str, took: Duration) {
    histogram!("switchyard_ingest_latency_seconds", "endpoint" => endpoint.to_string())
        .record(took.as_secs_f64());
}

/// An ingest request waited this long for `destination` to catch up before storing
/// (pacing; the last destination it waited for).
pub fn paced(destination: &str, waited: Duration) {
    histogram!("switchyard_ingest_paced_seconds", "destination" => destination.to_string())
        .record(waited.as_secs_f64());
}

/// Time for one HTTP request to a destination.
pub fn delivery_latency(destination: &str, took: Duration) {
    histogram!("switchyard_delivery_latency_seconds", "destination" => destination.to_string())
        .record(took.as_secs_f64());
}

/// A destination's gauges, from the spool's counts and the worker's status.
pub fn destination_gauges(destination: &str, depth: &Depth, paused: bool) {
    let d = destination.to_string();
    gauge!("switchyard_queue_depth", "destination" => d.clone()).set(depth.pending as f64);
    gauge!("switchyard_in_flight", "destination" => d.clone()).set(depth.in_flight as f64);
    let age = depth
        .oldest_pending
        .map(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs_f64()
        })
        .unwrap_or(0.0);
    gauge!("switchyard_oldest_pending_seconds", "destination" => d.clone()).set(age);
    gauge!("switchyard_retrying", "destination" => d.clone()).set(depth.retrying as f64);
    gauge!("switchyard_dead_letters", "destination" => d.clone()).set(depth.dead_letters as f64);
    gauge!("switchyard_destination_paused", "destination" => d).set(if paused { 1.0 } else { 0.0 });
}

/// A shared spool's members as this daemon last saw them: how many are alive per role, and
/// how many partitions this daemon owns.
pub fn cluster_gauges(cluster: &serde_json::Value) {
    let Some(members) = cluster["members"].as_array() else {
        return;
    };
    for role in ["all", "ingest", "deliver"] {
        let n = members.iter().filter(|m| m["role"] == role).count();
        gauge!("switchyard_cluster_members", "role" => role).set(n as f64);
    }
    let owned = members
        .iter()
        .find(|m| m["id"] == cluster["this_daemon"])
        .and_then(|m| m["owns"].as_array())
        .map_or(0, Vec::len);
    gauge!("switchyard_partitions_owned").set(owned as f64);
}

/// At most one log line per `every` for a condition that repeats while it lasts (a full
/// disk, failing accepts, a spool that cannot be written, refused messages): the first
/// occurrence is told at once; the next ones are added to a tally (`T`: a count by default)
/// that the next line, once the interval has passed, reports and clears.
#[derive(Debug)]
pub struct Throttle<T = u64> {
    every: Duration,
    /// When a line was last written, and what happened since.
    state: std::sync::Mutex<(Option<std::time::Instant>, T)>,
}

impl<T: Default> Throttle<T> {
    pub const fn new(every: Duration, empty: T) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, empty)),
        }
    }

    /// Add an occurrence to the tally; when a line is due, the tally since the last one (this
    /// occurrence included), cleared; `None` when the occurrence is only added.
    pub fn due(&self, add: impl FnOnce(&mut T)) -> Option<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, tally) = &mut *state;
        add(tally);
        if last.is_some_and(|at| at.elapsed() < self.every) {
            return None;
        }
        *last = Some(std::time::Instant::now());
        Some(std::mem::take(tally))
    }
}

/// One more occurrence, for a `Throttle` that counts.
pub fn once(n: &mut u64) {
    *n += 1;
}
