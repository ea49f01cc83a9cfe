//! What operators see of a destination (`GET /v1/destinations`, `/metrics`): a pause, the
//! last error, and a problem a person must fix. Written by the worker, read by `ops`.
//!
//! One lock over all of it, held for a copy or an assignment only; a panic while holding it
//! cannot leave it half-written, so a poisoned lock is read as it stands.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Default)]
pub struct Status {
    state: Mutex<State>,
    /// Batches being attempted (translated, waiting for the rate limit or the destination's
    /// answer), now and on average (see `pace.rs`).
    sending: Mutex<Sending>,
}

/// How long the average of batches being attempted looks back, about.
const SENDING_WINDOW: f64 = 1.0;

#[derive(Debug, Default)]
struct Sending {
    now: usize,
    /// Time-weighted average of `now`, decaying over [`SENDING_WINDOW`] seconds.
    average: f64,
    since: Option<Instant>,
    /// Its `concurrency`; zero until the first batch. The average starts at every slot
    /// busy, so a destination is taken to hold delivery up until its slots show otherwise.
    slots: usize,
}

impl Sending {
    /// The average brought up to `at`, `now` having held since the last change.
    fn average_at(&self, at: Instant) -> f64 {
        let Some(since) = self.since else {
            return self.average;
        };
        let kept = (-(at - since).as_secs_f64() / SENDING_WINDOW).exp();
        self.average * kept + self.now as f64 * (1.0 - kept)
    }

    fn change(&mut self, up: bool) {
        let at = Instant::now();
        self.average = self.average_at(at);
        self.since = Some(at);
        if up {
            self.now += 1;
        } else {
            self.now = self.now.saturating_sub(1);
        }
    }
}

/// A batch being attempted; counted in [`Status::sending`] until dropped.
pub(super) struct Attempting<'a>(&'a Status);

impl Drop for Attempting<'_> {
    fn drop(&mut self) {
        self.0.sending().change(false);
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    paused_until: Option<SystemTime>,
    last_error: Option<String>,
    /// The start of the destination's answer to the last failed attempt, if it answered.
    last_response: Option<String>,
    /// The last batch settled had a failure, and nothing was delivered since.
    failing: bool,
    /// Set by an adapter when a person must act (bad credentials, unknown object).
    unhealthy: Option<String>,
    /// When the spool last failed a lease or a settlement of this destination.
    spool_trouble: Option<SystemTime>,
    /// Calls delivered inside another call's update since start (coalescing).
    coalesced: u64,
    delivered: u64,
    /// Attempts that failed (to be retried, or dead-lettered) since start.
    failed: u64,
    series: Series,
}

/// Seconds per bucket of [`Series`].
pub const SERIES_STEP: u64 = 10;
/// Buckets kept: 15 minutes.
pub const SERIES_LEN: usize = 90;

/// Delivered and failed counts per [`SERIES_STEP`] seconds over the last 15 minutes: a
/// fixed ring, each bucket tagged with the step it counts (a stale one reads as zero).
#[derive(Debug, Clone)]
struct Series {
    buckets: [(u64, u32, u32); SERIES_LEN],
}

impl Default for Series {
    fn default() -> Self {
        Self {
            buckets: [(u64::MAX, 0, 0); SERIES_LEN],
        }
    }
}

impl Series {
    fn add(&mut self, now: SystemTime, delivered: usize, failed: usize) {
        let step = unix_seconds(now) / SERIES_STEP;
        let b = &mut self.buckets[(step % SERIES_LEN as u64) as usize];
        if b.0 != step {
            *b = (step, 0, 0);
        }
        b.1 = b.1.saturating_add(delivered as u32);
        b.2 = b.2.saturating_add(failed as u32);
    }

    /// Per second, oldest bucket first, the current (partial) one last.
    fn read(&self, now: SystemTime) -> Rates {
        let last = unix_seconds(now) / SERIES_STEP;
        let mut rates = Rates::default();
        for step in (last + 1 - SERIES_LEN as u64)..=last {
            let b = self.buckets[(step % SERIES_LEN as u64) as usize];
            let (d, f) = if b.0 == step { (b.1, b.2) } else { (0, 0) };
            rates.delivered.push(f64::from(d) / SERIES_STEP as f64);
            rates.failed.push(f64::from(f) / SERIES_STEP as f64);
        }
        rates
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Messages per second, [`SERIES_LEN`] values each, oldest first.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Rates {
    #[serde(rename = "delivered_per_second")]
    pub delivered: Vec<f64>,
    #[serde(rename = "failed_per_second")]
    pub failed: Vec<f64>,
}

impl Status {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Until when the destination rests, if that is still ahead.
    pub fn paused_until(&self) -> Option<SystemTime> {
        self.state().paused_until.filter(|t| *t > SystemTime::now())
    }

    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    pub fn unhealthy(&self) -> Option<String> {
        self.state().unhealthy.clone()
    }

    /// Rest until `until`, unless already resting longer.
    pub(super) fn pause(&self, until: SystemTime) {
        let mut state = self.state();
        if state.paused_until.is_none_or(|t| t < until) {
            state.paused_until = Some(until);
        }
    }

    pub fn coalesced(&self) -> u64 {
        self.state().coalesced
    }

    pub(super) fn add_coalesced(&self, n: usize) {
        self.state().coalesced += n as u64;
    }

    /// The last failure in words and the start of the answer it got, if any.
    pub(super) fn set_last_error(&self, error: &str, response: Option<&str>) {
        let mut state = self.state();
        state.last_error = Some(error.to_string());
        state.last_response = response.map(str::to_string);
    }

    pub fn last_response(&self) -> Option<String> {
        self.state().last_response.clone()
    }

    /// A batch settled: `delivered` calls reached the destination, `failed` did not.
    pub(super) fn settled(&self, delivered: usize, failed: usize) {
        let mut state = self.state();
        state.delivered += delivered as u64;
        state.failed += failed as u64;
        state.series.add(SystemTime::now(), delivered, failed);
        if failed > 0 {
            state.failing = true;
        } else if delivered > 0 {
            state.failing = false;
        }
    }

    /// The last batch settled had failures, and nothing was delivered since.
    pub fn failing(&self) -> bool {
        let state = self.state();
        state.failing || state.unhealthy.is_some()
    }

    /// Delivered and failed since start.
    pub fn totals(&self) -> (u64, u64) {
        let state = self.state();
        (state.delivered, state.failed)
    }

    /// Delivered and failed per second over the last 15 minutes.
    pub fn rates(&self) -> Rates {
        self.state().series.read(SystemTime::now())
    }

    fn sending(&self) -> MutexGuard<'_, Sending> {
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch is being attempted until the guard drops; the destination has `slots` of
    /// them.
    pub(super) fn attempting(&self, slots: usize) -> Attempting<'_> {
        let mut sending = self.sending();
        if sending.slots == 0 {
            sending.average = slots as f64;
        }
        sending.slots = slots.max(1);
        sending.change(true);
        Attempting(self)
    }

    /// The share of its slots' time spent attempting batches over about the last second;
    /// every slot's, until the first batch (nothing is known yet).
    pub fn attempting_share(&self) -> f64 {
        let sending = self.sending();
        if sending.slots == 0 {
            return 1.0;
        }
        sending.average_at(Instant::now()) / sending.slots as f64
    }

    /// Paused now, or a pause ended less than `within` ago.
    pub fn paused_within(&self, within: Duration) -> bool {
        self.state()
            .paused_until
            .is_some_and(|until| until + within > SystemTime::now())
    }

    /// The spool failed a lease or a settlement of this destination.
    pub(super) fn spool_trouble(&self) {
        self.state().spool_trouble = Some(SystemTime::now());
    }

    /// The spool failed this destination less than `within` ago.
    pub fn spool_trouble_within(&self, within: Duration) -> bool {
        self.state()
            .spool_trouble
            .is_some_and(|at| at + within > SystemTime::now())
    }

    pub(super) fn set_unhealthy(&self, problem: Option<String>) {
        self.state().unhealthy = problem;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_series_counts_per_step_and_forgets_what_is_older_than_its_window() {
        let mut s = Series::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.add(t0, 20, 1);
        s.add(t0 + Duration::from_secs(1), 10, 0);
        s.add(t0 + Duration::from_secs(SERIES_STEP), 5, 5);
        let now = t0 + Duration::from_secs(SERIES_STEP);
        let r = s.read(now);
        assert_eq!(r.delivered.len(), SERIES_LEN);
        assert_eq!(r.delivered[SERIES_LEN - 2..], [3.0, 0.5]);
        assert_eq!(r.failed[SERIES_LEN - 2..], [0.1, 0.5]);
        // A full window later the same ring slots read as zero, not as old counts.
        let later = now + Duration::from_secs(SERIES_STEP * SERIES_LEN as u64);
        assert!(s.read(later).delivered.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn batches_attempted_are_averaged_over_about_a_second() {
        let t0 = Instant::now();
        let status = Status::default();
        assert_eq!(status.attempting_share(), 1.0, "nothing known yet");
        drop(status.attempting(2));
        assert!(
            status.attempting_share() > 0.99,
            "taken as every slot busy until shown otherwise"
        );
        let mut s = Sending::default();
        assert_eq!(s.average_at(t0), 0.0, "nothing attempted yet");
        s.since = Some(t0);
        s.now = 2;
        let second = s.average_at(t0 + Duration::from_secs(1));
        assert!(
            (second - 2.0 * (1.0 - (-1.0f64).exp())).abs() < 1e-9,
            "{second}"
        );
        assert!(s.average_at(t0 + Duration::from_secs(10)) > 1.99);
        // Both slots free again: the average decays towards zero from where it stood.
        s.average = 2.0;
        s.now = 0;
        let later = s.average_at(t0 + Duration::from_secs(3));
        assert!(later < 0.1 && later > 0.0, "{later}");
    }

    #[test]
    fn a_pause_only_grows_and_ends_by_itself() {
        let s = Status::default();
        let later = SystemTime::now() + Duration::from_secs(60);
        s.pause(later);
        s.pause(SystemTime::now() + Duration::from_secs(1));
        assert_eq!(s.paused_until(), Some(later));
        let ended = Status::default();
        ended.pause(SystemTime::now() - Duration::from_secs(1));
        assert_eq!(ended.paused_until(), None);
    }
}
