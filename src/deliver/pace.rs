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
//! messages behind *and* is held up by nothing but this daemon: it is not paused nor just
//! back from a pause, not failing, the spool serves it, and its `concurrency` slots spent
//! less than 80% of the last second or so sending to it (see `Lane::own_pace`). A
//! destination that is slow, rate-limited, paused or down does not slow ingest: the spool
//! holds its backlog.

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
}

/// A destination whose slots spent more than this share of the last second or so sending to
/// it (translating, its rate limit, its answers) is held up by the destination, not by this
/// daemon.
const SENDING_SHARE: f64 = 0.8;

/// After a pause, or trouble with the spool, how long a destination is left out: the
/// average of its slots' time needs about that long to speak for it again.
const SETTLE: Duration = Duration::from_secs(3);

impl Lane {
    /// Nothing outside this daemon holds it up: not paused (nor just back from a pause),
    /// not failing, the spool serving it, and its slots not mostly waiting on the
    /// destination (taken to be, until its first batches show otherwise).
    fn own_pace(&self) -> bool {
        let s = &self.status;
        !s.paused_within(SETTLE)
            && !s.failing()
            && !s.spool_trouble_within(SETTLE)
            && s.attempting_share() < SENDING_SHARE
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
    /// behind, or after the longest wait.
    pub async fn wait(&self, spool: &dyn Spool) {
        if self.max_wait.is_zero() {
            return;
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
        if let Some(lane) = waited_for {
            telemetry::paced(&lane, started.elapsed());
        }
    }

    /// The first destination delivering at its own pace that is more than the backlog
    /// behind, if any.
    fn behind(&self, spool: &dyn Spool) -> Option<String> {
        let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
        lanes
            .iter()
            .find(|l| spool.depth(&l.name).unread > self.backlog && l.own_pace())
            .map(|l| l.name.clone())
    }
}
