//! Pacing: ingest gives delivery a moment when delivery falls behind through this daemon's
//! own work.
//!
//! Ingest and delivery share the machine's cores. When callers send faster than the daemon
//! can deliver, an ingest that never waits takes the cores delivery needs, and the backlog
//! outgrows what the spool keeps in memory (its newest rows and their parsed forms): every
//! message is then read back from the file and parsed again per destination, so each costs
//! more and delivery falls further behind (measured: 20% more CPU per message, and seconds
//! of end-to-end latency at full load instead of a fraction of one).
//!
//! So before storing a request's messages, ingest waits (in short steps, at most
//! `server.pace_max_wait`) while some destination is more than `server.pace_backlog`
//! messages behind *and* is held up by nothing but this daemon: it is not paused, its last
//! batch did not fail, and its `concurrency` slots have not spent the last second or so
//! nearly all waiting for the destination's answers or its rate limit. A destination that
//! is slow, rate-limited, paused or down never slows ingest: the spool holds its backlog.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Status;
use crate::spool::Spool;
use crate::telemetry;

/// How often a waiting request looks again.
const STEP: Duration = Duration::from_millis(5);

/// One destination as pacing sees it.
#[derive(Clone)]
pub struct Lane {
    pub name: String,
    pub status: Arc<Status>,
    /// Its `concurrency`: batches it may have in flight at once.
    pub slots: usize,
}

/// A destination whose slots spent more than this share of the last second or so waiting
/// for its answers or its rate limit is held up by the destination, not by this daemon.
const SENDING_SHARE: f64 = 0.9;

impl Lane {
    /// Nothing outside this daemon holds it up: not paused, not failing, its slots not all
    /// waiting on the destination.
    fn own_pace(&self) -> bool {
        self.status.paused_until().is_none()
            && !self.status.failing()
            && self.status.attempting_on_average() < SENDING_SHARE * self.slots as f64
    }
}

/// What ingest consults before storing; the destinations are replaced on each reload.
pub struct Pace {
    backlog: u64,
    max_wait: Duration,
    lanes: RwLock<Vec<Lane>>,
}

impl Pace {
    /// Waits at most `max_wait` (zero: never) while a destination delivering at its own pace
    /// has more than `backlog` messages it has not read yet.
    pub fn new(backlog: u64, max_wait: Duration) -> Self {
        Self {
            backlog,
            max_wait,
            lanes: RwLock::new(Vec::new()),
        }
    }

    /// The destinations delivering from now on.
    pub fn set_lanes(&self, lanes: Vec<Lane>) {
        *self.lanes.write().unwrap_or_else(|p| p.into_inner()) = lanes;
    }

    /// Return once no destination delivering at its own pace is more than the backlog
    /// behind, or after the longest wait; how long it waited.
    pub async fn wait(&self, spool: &dyn Spool) -> Duration {
        if self.max_wait.is_zero() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut waited_for = None;
        while started.elapsed() < self.max_wait {
            let Some(lane) = self.behind(spool) else {
                break;
            };
            waited_for = Some(lane);
            tokio::time::sleep(STEP).await;
        }
        let Some(lane) = waited_for else {
            return Duration::ZERO;
        };
        let waited = started.elapsed();
        telemetry::paced(&lane, waited);
        waited
    }

    /// The first destination delivering at its own pace that is more than the backlog
    /// behind, if any.
    fn behind(&self, spool: &dyn Spool) -> Option<String> {
        let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
        lanes
            .iter()
            .find(|l| l.own_pace() && spool.depth(&l.name).unread > self.backlog)
            .map(|l| l.name.clone())
    }
}
