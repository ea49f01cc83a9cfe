//! What operators see of a destination (`GET /v1/destinations`, `/metrics`): a pause, the
//! last error, and a problem a person must fix. Written by the worker, read by `ops`.
//!
//! One lock over all of it, held for a copy or an assignment only; a panic while holding it
//! cannot leave it half-written, so a poisoned lock is read as it stands.

use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

#[derive(Debug, Default)]
pub struct Status(Mutex<State>);

#[derive(Debug, Default, Clone)]
struct State {
    paused_until: Option<SystemTime>,
    last_error: Option<String>,
    /// Set by an adapter when a person must act (bad credentials, unknown object).
    unhealthy: Option<String>,
    /// Calls delivered inside another call's update since start (coalescing).
    coalesced: u64,
}

impl Status {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
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

    pub(super) fn set_last_error(&self, error: &str) {
        self.state().last_error = Some(error.to_string());
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
