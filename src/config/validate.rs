//! Checks that need more than one key, and the values the runtime uses, made once: a
//! destination's [`Delivery`] (rate-limit quota, retry policy, batching, concurrency) is
//! built here from checked values, so workers consume it without checking again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

use super::place::{ConfigError, ConfigErrors};
use super::{Backend, Config, DestinationConfig, MAX_CONCURRENCY, RateLimitConfig, RetryConfig};
use crate::retry::RetryPolicy;

/// What a destination's worker runs with.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// One permit per HTTP request; `None`: unlimited.
    pub quota: Option<Quota>,
    pub retry: RetryPolicy,
    /// `batch.max_events` as configured; the adapter's default when `None`.
    pub max_events: Option<usize>,
    /// How long a partial batch waits for more messages.
    pub max_wait: Duration,
    /// Batches in flight at once, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Translate and log, send nothing.
    pub dry_run: bool,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            quota: None,
            retry: RetryPolicy::from(&RetryConfig::default()),
            max_events: None,
            max_wait: super::default_max_wait(),
            concurrency: super::default_concurrency(),
            timeout: super::default_timeout(),
            dry_run: false,
        }
    }
}

impl Config {
    /// Checks that need the whole config (serde has already checked each key's type), and
    /// each destination's [`Delivery`], in config order.
    pub fn validate(&self) -> Result<Vec<Delivery>, ConfigErrors> {
        let mut errors = self.check_server();
        self.check_sources(&mut errors);
        self.check_admin(&mut errors);
        self.check_spool(&mut errors);
        let mut names = HashSet::new();
        let mut deliveries = Vec::with_capacity(self.destinations.len());
        for d in &self.destinations {
            check_names(d, &mut names, &mut errors);
            match delivery(d) {
                Ok(delivery) => deliveries.push(delivery),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(deliveries)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Admin tokens: long enough, none twice, none a write key (a write key opens ingest
    /// only); the admin address parses.
    fn check_admin(&self, errors: &mut Vec<ConfigError>) {
        let a = &self.admin;
        let at = |key: &str, message: String| a.place.error(key, message);
        for (i, token) in a.token.iter().enumerate() {
            let n = i + 1;
            if token.expose().chars().count() < super::MIN_ADMIN_TOKEN {
                let min = super::MIN_ADMIN_TOKEN;
                errors.push(at(
                    "token",
                    format!("admin.token #{n} is shorter than {min} characters"),
                ));
            }
            if a.token[..i].contains(token) {
                errors.push(at("token", format!("admin.token #{n} is given twice")));
            }
            if self.sources.iter().any(|s| &s.write_key == token) {
                errors.push(at(
                    "token",
                    format!("admin.token #{n} is also a source's write_key"),
                ));
            }
        }
        if let Some(listen) = &a.listen {
            if listen.parse::<SocketAddr>().is_err() {
                let message =
                    format!("admin.listen `{listen}` is not an address like 127.0.0.1:8089");
                errors.push(at("listen", message));
            } else if a.token.is_empty() {
                let message = "admin.listen is set but admin.token is not: the admin side is off without a token";
                errors.push(at("listen", message.into()));
            }
        }
    }

    /// The backend's own keys, and only its keys.
    fn check_spool(&self, errors: &mut Vec<ConfigError>) {
        let s = &self.spool;
        let at = |key: &str, message: String| s.place.error(key, message);
        if s.backend == Backend::Sqlite {
            for key in s.jetstream_keys_set() {
                let message =
                    format!("spool.{key} is for backend = \"jetstream\"; this spool is sqlite");
                errors.push(at(key, message));
            }
            if s.dedupe_max_keys == 0 {
                let message = "spool.dedupe_max_keys is 0; it must be at least 1 \
                               (dedupe_window = \"0s\" turns dedupe off)"
                    .into();
                errors.push(at("dedupe_max_keys", message));
            }
            return;
        }
        for key in ["path", "dedupe_max_keys"] {
            if s.place.keys.iter().any(|(k, _)| k == key) {
                let message = format!(
                    "spool.{key} is for backend = \"sqlite\"; a jetstream spool lives on its server"
                );
                errors.push(at(key, message));
            }
        }
        match &s.url {
            None => errors.push(at(
                "backend",
                "backend = \"jetstream\" needs spool.url, e.g. \"nats://127.0.0.1:4222\"".into(),
            )),
            Some(url) => {
                for one in url.split(',').map(str::trim) {
                    if one.parse::<async_nats::ServerAddr>().is_err() {
                        let message = format!(
                            "spool.url `{}` is not a server address like nats://127.0.0.1:4222",
                            crate::spool::jetstream::names::shown_url(one)
                        );
                        errors.push(at("url", message));
                    }
                }
            }
        }
        let ways = [
            s.user.is_some() || s.password.is_some(),
            s.token.is_some(),
            s.creds.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            let message =
                "spool: give user and password, token, or creds: one way, not several".into();
            errors.push(at("token", message));
        }
        if s.user.is_some() != s.password.is_some() {
            let key = if s.user.is_some() { "user" } else { "password" };
            errors.push(at(key, "spool.user and spool.password go together".into()));
        }
        if !matches!(s.replicas(), 1 | 3) {
            let message = format!("spool.replicas is {}; it must be 1 or 3", s.replicas());
            errors.push(at("replicas", message));
        }
        if !(1..=1024).contains(&s.partitions()) {
            let message = format!(
                "spool.partitions is {}; it must be 1 to 1024",
                s.partitions()
            );
            errors.push(at("partitions", message));
        }
        let prefix = s.prefix();
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            let message = format!("spool.prefix `{prefix}` must be letters, digits, `_` or `-`");
            errors.push(at("prefix", message));
        }
    }

    fn check_server(&self) -> Vec<ConfigError> {
        /// Far beyond any file-descriptor limit: a bigger number is a typo.
        const MAX_CONNECTIONS: usize = 1_000_000;
        let mut errors = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            errors.push(ConfigError {
                at: None,
                message: format!(
                    "server.listen `{}` is not an address like 127.0.0.1:8088",
                    self.server.listen
                ),
            });
        }
        let s = &self.server;
        if !(1..=MAX_CONNECTIONS).contains(&s.max_connections) {
            errors.push(ConfigError {
                at: None,
                message: format!(
                    "server.max_connections is {}; it must be 1 to {MAX_CONNECTIONS}",
                    s.max_connections
                ),
            });
        }
        for (key, value) in [
            ("header_read_timeout", s.header_read_timeout),
            ("body_read_timeout", s.body_read_timeout),
        ] {
            if value.is_zero() {
                errors.push(ConfigError {
                    at: None,
                    message: format!("server.{key} must be longer than 0s"),
                });
            }
        }
        if s.pace_backlog == 0 {
            errors.push(ConfigError {
                at: None,
                message: "server.pace_backlog must be at least 1 (pace_max_wait = \"0s\" turns pacing off)".into(),
            });
        }
        // Well under the time SDKs wait for an answer.
        const MAX_PACE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        if s.pace_max_wait > MAX_PACE_WAIT {
            errors.push(ConfigError {
                at: None,
                message: format!(
                    "server.pace_max_wait is {}; it must be at most {} (SDKs give up on a request after about 10 s)",
                    humantime::format_duration(s.pace_max_wait),
                    humantime::format_duration(MAX_PACE_WAIT)
                ),
            });
        }
        if self.sources.is_empty() && !self.server.allow_unauthenticated {
            errors.push(ConfigError {
                at: None,
                message: "no [[source]] is configured: add one with a write_key, or set \
                          server.allow_unauthenticated = true"
                    .into(),
            });
        }
        errors
    }

    fn check_sources(&self, errors: &mut Vec<ConfigError>) {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for s in &self.sources {
            let at = &s.place;
            if s.name.trim().is_empty() {
                errors.push(at.error("name", "a [[source]] has an empty name"));
            }
            if !names.insert(s.name.to_lowercase()) {
                errors.push(at.error("name", format!("source name `{}` is used twice", s.name)));
            }
            if s.write_key.expose().is_empty() {
                errors.push(at.error(
                    "write_key",
                    format!("source `{}` has an empty write_key", s.name),
                ));
            } else if !keys.insert(s.write_key.expose()) {
                errors.push(at.error(
                    "write_key",
                    format!("source `{}` reuses another source's write_key", s.name),
                ));
            }
        }
    }
}

/// A destination's name and aliases: not empty, not `All`, not used twice (any case).
fn check_names(d: &DestinationConfig, seen: &mut HashSet<String>, errors: &mut Vec<ConfigError>) {
    for key in std::iter::once(&d.name).chain(&d.aliases) {
        let s = &d.settings;
        if key.trim().is_empty() {
            errors.push(s.error("name", "a destination name or alias is empty"));
        } else if key.eq_ignore_ascii_case("all") {
            errors.push(s.error(
                "name",
                "`All` is reserved in the integrations map and cannot name a destination",
            ));
        } else if !seen.insert(key.to_lowercase()) {
            errors.push(s.error(
                "name",
                format!(
                    "destination name `{key}` is used twice (names and aliases are compared \
                     case-insensitively)"
                ),
            ));
        }
    }
}

/// The checked values a worker runs with, or every problem with them.
fn delivery(d: &DestinationConfig) -> Result<Delivery, Vec<ConfigError>> {
    let s = &d.settings;
    let mut errors = Vec::new();
    let quota = match &d.rate_limit {
        Some(rl) => quota(rl)
            .map_err(|e| errors.push(s.error("rate_limit", e)))
            .ok(),
        None => None,
    };
    if d.batch.max_events == Some(0) {
        errors.push(s.error("batch", "batch.max_events must be at least 1"));
    }
    if !(1..=MAX_CONCURRENCY).contains(&d.concurrency) {
        errors.push(s.error(
            "concurrency",
            format!("concurrency must be between 1 and {MAX_CONCURRENCY}"),
        ));
    }
    if d.retry.initial_backoff > d.retry.max_backoff {
        errors.push(s.error("retry", "retry.initial_backoff is above retry.max_backoff"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Delivery {
        quota,
        retry: RetryPolicy::from(&d.retry),
        max_events: d.batch.max_events,
        max_wait: d.batch.max_wait,
        concurrency: d.concurrency,
        timeout: d.timeout,
        dry_run: d.dry_run,
    })
}

/// The limiter's quota: between one request a day and a million a second (outside that its
/// period cannot be represented), with a burst of at least one.
fn quota(rl: &RateLimitConfig) -> Result<Quota, &'static str> {
    if !(1.0 / 86_400.0..=1_000_000.0).contains(&rl.requests_per_second) {
        return Err(
            "rate_limit.requests_per_second must be between 0.0000116 (one a day) and 1000000",
        );
    }
    let burst = NonZeroU32::new(rl.burst).ok_or("rate_limit.burst must be at least 1")?;
    let period = Duration::from_secs_f64(1.0 / rl.requests_per_second);
    let quota = Quota::with_period(period).ok_or("rate_limit.requests_per_second is too high")?;
    Ok(quota.allow_burst(burst))
}
