//! The retry policy as data: exponential backoff with full jitter, a give-up horizon, an
//! optional attempt cap, and `Retry-After` as a floor. Pure: the jitter draw comes in.

use std::time::Duration;

use crate::config::RetryConfig;

/// The longest `Retry-After` honoured; a destination asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    RetryIn(Duration),
    GiveUp(String),
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            initial: c.initial_backoff,
            max: c.max_backoff,
            give_up_after: c.give_up_after,
            max_attempts: c.max_attempts,
        }
    }
}

impl RetryPolicy {
    /// After `attempts` failed attempts, the first `elapsed` ago: wait how long, or give up.
    /// `jitter` is a uniform draw from [0, 1); `floor` is the destination's Retry-After.
    pub fn decide(
        &self,
        attempts: u32,
        elapsed: Duration,
        floor: Option<Duration>,
        jitter: f64,
    ) -> Decision {
        if let Some(max) = self.max_attempts
            && attempts >= max
        {
            return Decision::GiveUp(format!(
                "gave up after {attempts} attempts (retry.max_attempts)"
            ));
        }
        if elapsed >= self.give_up_after {
            return Decision::GiveUp(format!(
                "gave up after {attempts} attempts over {} (retry.give_up_after)",
                humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
            ));
        }
        let exp = attempts.saturating_sub(1).min(32);
        let ceiling = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let jittered = ceiling
            .mul_f64(jitter.clamp(0.0, 1.0))
            .max(Duration::from_millis(1));
        let wait = match floor {
            Some(f) => jittered.max(f.min(MAX_RETRY_AFTER)),
            None => jittered,
        };
        Decision::RetryIn(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetryConfig::default())
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_initial_with_full_jitter() {
        let p = policy();
        assert_eq!(
            p.decide(1, S(0), None, 0.999_999),
            Decision::RetryIn(S(1).mul_f64(0.999_999))
        );
        assert_eq!(p.decide(2, S(0), None, 0.5), Decision::RetryIn(S(1)));
        assert_eq!(p.decide(4, S(0), None, 0.5), Decision::RetryIn(S(4)));
        // Full jitter may draw zero; a floor of 1 ms keeps the loop from spinning.
        assert_eq!(
            p.decide(3, S(0), None, 0.0),
            Decision::RetryIn(Duration::from_millis(1))
        );
    }

    #[test]
    fn capped_at_max_backoff() {
        let p = policy();
        assert_eq!(p.decide(20, S(0), None, 0.5), Decision::RetryIn(S(300)));
        assert_eq!(p.decide(1000, S(0), None, 0.5), Decision::RetryIn(S(300)));
    }

    #[test]
    fn retry_after_is_a_floor_clamped_to_an_hour() {
        let p = policy();
        assert_eq!(
            p.decide(1, S(0), Some(S(30)), 0.5),
            Decision::RetryIn(S(30))
        );
        assert_eq!(
            p.decide(12, S(0), Some(S(2)), 0.5),
            Decision::RetryIn(S(300))
        );
        assert_eq!(
            p.decide(1, S(0), Some(S(86_400)), 0.5),
            Decision::RetryIn(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn gives_up_after_the_horizon() {
        let p = policy();
        assert!(
            matches!(p.decide(5, S(4 * 3600), None, 0.5), Decision::GiveUp(r) if r.contains("give_up_after"))
        );
        assert!(matches!(
            p.decide(5, S(4 * 3600 - 1), None, 0.5),
            Decision::RetryIn(_)
        ));
    }

    #[test]
    fn gives_up_at_max_attempts() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..policy()
        };
        assert!(matches!(p.decide(2, S(0), None, 0.5), Decision::RetryIn(_)));
        assert!(
            matches!(p.decide(3, S(0), None, 0.5), Decision::GiveUp(r) if r.contains("max_attempts"))
        );
    }
}
