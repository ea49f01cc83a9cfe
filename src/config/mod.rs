//! The TOML configuration: its shape and defaults (here), and how it is read.
//!
//! - `load.rs`: parse, expand, deserialize, attach each table's places and its adapter keys.
//! - `expand.rs`: `${VAR}` expansion, errors at the variable's position.
//! - `validate.rs`: cross-key checks, and each destination's [`Delivery`]: the values the
//!   runtime uses, made once.
//! - `settings.rs`: a destination's adapter keys ([`Settings`]), errors naming it.
//! - `place.rs`: lines and columns ([`ConfigError`], [`Place`]).

mod expand;
mod load;
mod place;
pub mod redact;
mod settings;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::message::MessageType;
use crate::secret::Secret;

pub use expand::Expanded;
pub use load::{load, load_with_env};
pub use place::{ConfigError, ConfigErrors, Place};
pub use settings::Settings;
pub use validate::Delivery;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how ingest listens.
    #[serde(default)]
    pub server: ServerConfig,
    /// Who may send: each source's write key is the Basic-auth user name.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// The local store behind ingest.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Where messages go.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// The operator side: admin API, console, metrics; off without a token.
    #[serde(default)]
    pub admin: AdminConfig,
    /// What `${VAR}`s were replaced by: errors found after loading (an adapter's) mask them.
    #[serde(skip)]
    pub expanded: Expanded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer tokens that open the admin API and the console: one, or a list (to rotate).
    /// None: the admin side is off.
    #[serde(default, deserialize_with = "one_or_many")]
    pub token: Vec<Secret>,
    /// Serve the admin side (API, console, metrics) on this address instead of `server.listen`.
    pub listen: Option<String>,
    /// `/metrics` answers without a token.
    #[serde(default)]
    pub public_metrics: bool,
    /// Where the table is in the file, for errors; filled in by [`load`].
    #[serde(skip)]
    pub place: Place,
}

/// Shortest admin token accepted: long enough that guessing it over HTTP is hopeless.
pub const MIN_ADMIN_TOKEN: usize = 16;

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "admin.token must be a string or a list of strings",
        )),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address ingest binds; port 0 picks a free one (it is logged).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Accept calls without a write key; needed when no `[[source]]` is configured.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Largest single message, in bytes (Segment: 32 KiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest request body after gzip decoding, in bytes (Segment: 500 KiB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most messages in one `/v1/batch` (Segment: 2,500).
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// How long shutdown waits for in-flight requests and deliveries.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Most client connections open at once; more wait to be accepted. Keep it under the
    /// process's file-descriptor limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request's headers must arrive within this (slowloris); also how long a kept-alive
    /// connection may wait for its next request.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this once its headers have.
    #[serde(default = "default_body_read_timeout", with = "duration")]
    pub body_read_timeout: Duration,
    /// Ingest waits while a destination delivering at its own pace has more than this many
    /// messages it has not read (see `deliver::pace`).
    #[serde(default = "default_pace_backlog")]
    pub pace_backlog: u64,
    /// The longest one request waits so; zero turns pacing off.
    #[serde(default = "default_pace_max_wait", with = "duration")]
    pub pace_max_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            allow_unauthenticated: false,
            max_message_bytes: default_max_message_bytes(),
            max_request_bytes: default_max_request_bytes(),
            max_batch_messages: default_max_batch_messages(),
            shutdown_grace: default_shutdown_grace(),
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            pace_backlog: default_pace_backlog(),
            pace_max_wait: default_pace_max_wait(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Shown in logs and metrics; part of the dedupe key.
    pub name: String,
    /// The key SDKs send; never logged.
    pub write_key: Secret,
    /// Where the table is in the file, for errors; filled in by [`load`].
    #[serde(skip)]
    pub place: Place,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Where the spool lives: `sqlite` (embedded, one daemon) or `jetstream` (a NATS
    /// JetStream server or cluster, shared by several daemons).
    #[serde(default)]
    pub backend: Backend,
    /// Directory of the local store; created if missing (`sqlite`).
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Ingest answers 503 once the stored backlog reaches this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A `messageId` seen again from the same source within this window is not delivered again.
    #[serde(default = "default_dedupe_window", with = "duration")]
    pub dedupe_window: Duration,
    /// `sqlite`: most ids the dedupe index holds (in memory); past it the oldest are forgotten
    /// before their window ends.
    #[serde(default = "default_dedupe_max_keys")]
    pub dedupe_max_keys: usize,
    /// What is kept of messages refused at ingest (dead letters with reason `invalid`) stays
    /// under this many bytes; beyond it they are counted, not kept.
    #[serde(default = "default_max_refused_bytes")]
    pub max_refused_bytes: u64,
    /// `jetstream`: server URLs, comma-separated (`nats://host:4222`); several for a cluster.
    pub url: Option<String>,
    /// `jetstream`: user and password, a token, or an NKey/JWT creds file; at most one way.
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub creds: Option<PathBuf>,
    /// `jetstream`: require TLS; implied by `tls_ca` and by `tls://` URLs.
    #[serde(default)]
    pub tls: bool,
    /// `jetstream`: PEM file of the CA that signed the server's certificate (else the
    /// system's roots).
    pub tls_ca: Option<PathBuf>,
    /// `jetstream`: streams, consumers and buckets are named from this
    /// (`switchyard` → `SWITCHYARD_LOG`).
    pub prefix: Option<String>,
    /// `jetstream`: copies of each stream the cluster keeps, 1 or 3.
    pub replicas: Option<usize>,
    /// `jetstream`: how many partitions the log is split into (by a hash of the group id),
    /// the unit of work shared between daemons. Fixed once the stream exists.
    pub partitions: Option<u32>,
    /// Where the table is in the file, for errors; filled in by [`load`].
    #[serde(skip)]
    pub place: Place,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    #[serde(rename = "jetstream")]
    JetStream,
}

impl SpoolConfig {
    pub const DEFAULT_PREFIX: &str = "switchyard";
    pub const DEFAULT_PARTITIONS: u32 = 16;

    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(Self::DEFAULT_PREFIX)
    }

    pub fn replicas(&self) -> usize {
        self.replicas.unwrap_or(1)
    }

    pub fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(Self::DEFAULT_PARTITIONS)
    }

    /// The `jetstream` keys set, by name (each is an error with the `sqlite` backend).
    pub fn jetstream_keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("url", self.url.is_some()),
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
            ("token", self.token.is_some()),
            ("creds", self.creds.is_some()),
            ("tls", self.tls),
            ("tls_ca", self.tls_ca.is_some()),
            ("prefix", self.prefix.is_some()),
            ("replicas", self.replicas.is_some()),
            ("partitions", self.partitions.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            path: default_spool_path(),
            max_bytes: default_max_bytes(),
            dedupe_window: default_dedupe_window(),
            dedupe_max_keys: default_dedupe_max_keys(),
            max_refused_bytes: default_max_refused_bytes(),
            url: None,
            user: None,
            password: None,
            token: None,
            creds: None,
            tls: false,
            tls_ca: None,
            prefix: None,
            replicas: None,
            partitions: None,
            place: Place::default(),
        }
    }
}

/// The keys every destination shares; its adapter's own keys are in `settings`.
#[derive(Debug, Deserialize)]
pub struct DestinationConfig {
    /// Matched (case-insensitively) against each message's `integrations` keys.
    pub name: String,
    /// The adapter: a key of the registry (`webhook`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Other `integrations` keys that mean this destination (e.g. "Mixpanel (Actions)").
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Message types this destination takes; the adapter's default when absent.
    pub types: Option<Vec<MessageType>>,
    /// Translate and log the exact request, send nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Requests per second towards this destination; unlimited when absent.
    pub rate_limit: Option<RateLimitConfig>,
    /// Backoff and give-up policy for retryable failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Engine batching, capped by the adapter's own limit.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Batches in flight at once towards this destination. Items of one group are never in
    /// two of them: per-group order holds whatever the value.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Merge a group's calls waiting together into one update (adapters whose updates are
    /// idempotent state); `None`: the adapter's default.
    pub coalesce: Option<bool>,
    /// The adapter's own keys, still spanned; filled in by [`load`].
    #[serde(skip)]
    pub settings: Settings,
    /// What the worker runs with, made from the keys above by validation; filled in by
    /// [`load`]. The runtime reads this, never the raw keys.
    #[serde(skip)]
    pub delivery: Delivery,
    /// The table as written, variables expanded, without places: equal fingerprints, same
    /// destination (a reload leaves it running). Holds secrets: never shown.
    #[serde(skip)]
    pub fingerprint: Fingerprint,
}

/// A destination's keys and values, compared across reloads; prints as `***`.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl DestinationConfig {
    /// Keys of [`DestinationConfig`] itself, read from its `Deserialize`; everything else in
    /// a `[[destination]]` table is the adapter's.
    pub fn common_keys() -> &'static [&'static str] {
        static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
        KEYS.get_or_init(load::serde_fields::<DestinationConfig>)
    }
}

/// Most batches in flight towards one destination.
pub const MAX_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet period.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff; each attempt doubles it (full jitter).
    #[serde(default = "default_initial_backoff", with = "duration")]
    pub initial_backoff: Duration,
    /// Backoff cap.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
    /// A message still failing this long after its first attempt is dead-lettered.
    #[serde(default = "default_give_up_after", with = "duration")]
    pub give_up_after: Duration,
    /// Optional cap on attempts, counted with the first.
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            give_up_after: default_give_up_after(),
            max_attempts: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Messages per request; the adapter's default when absent, never above its limit.
    pub max_events: Option<usize>,
    /// How long a partial batch waits for more messages.
    #[serde(default = "default_max_wait", with = "duration")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: None,
            max_wait: default_max_wait(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8088".into()
}
fn default_max_message_bytes() -> usize {
    32 * 1024
}
fn default_max_request_bytes() -> usize {
    500 * 1024
}
fn default_max_batch_messages() -> usize {
    2500
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    512
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
/// About what the embedded spool keeps in memory for destinations that keep up: its newest
/// rows (8 MiB) and their parsed forms (4 MB of text), for messages of under 1 KB.
fn default_pace_backlog() -> u64 {
    4000
}
fn default_pace_max_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_spool_path() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_max_refused_bytes() -> u64 {
    16 << 20
}
fn default_dedupe_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_dedupe_max_keys() -> usize {
    2_000_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    2
}
fn default_burst() -> u32 {
    1
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(600)
}
fn default_give_up_after() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_max_wait() -> Duration {
    Duration::from_millis(100)
}

/// Durations written as `"100ms"`, `"1s"`, `"10m"`, `"4h"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}` ({e}); write e.g. \"100ms\", \"1s\", \"10m\", \"4h\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_destination_keys_are_read_from_the_struct() {
        assert_eq!(
            DestinationConfig::common_keys(),
            [
                "name",
                "type",
                "aliases",
                "types",
                "dry_run",
                "timeout",
                "rate_limit",
                "retry",
                "batch",
                "concurrency",
                "coalesce"
            ]
        );
    }

    #[test]
    fn source_errors_have_line_and_column() {
        let text = "[[source]]\nname = \"web\"\nwrite_key = \"a\"\n\n[[source]]\nname = \"Web\"\nwrite_key = \"a\"\n";
        let errors = load_with_env(text, &|_| None).unwrap_err().to_string();
        assert_eq!(
            errors,
            "line 6, column 1: source name `Web` is used twice\n\
             line 7, column 1: source `Web` reuses another source's write_key"
        );
    }

    #[test]
    fn pacing_is_bounded() {
        let text =
            "[server]\nallow_unauthenticated = true\npace_backlog = 0\npace_max_wait = \"30s\"\n";
        let errors = load_with_env(text, &|_| None).unwrap_err().to_string();
        assert_eq!(
            errors,
            "server.pace_backlog must be at least 1 (pace_max_wait = \"0s\" turns pacing off)\n\
             server.pace_max_wait is 30s; it must be at most 5s (SDKs give up on a request after about 10 s)"
        );
        let off = "[server]\nallow_unauthenticated = true\npace_max_wait = \"0s\"\n";
        let config = load_with_env(off, &|_| None).unwrap();
        assert!(config.server.pace_max_wait.is_zero());
    }

    #[test]
    fn admin_errors_have_line_and_column() {
        let text = "[[source]]\nname = \"web\"\nwrite_key = \"the-write-key-0123\"\n\n[admin]\ntoken = [\"short\", \"the-write-key-0123\"]\nlisten = \"nowhere\"\n";
        let errors = load_with_env(text, &|_| None).unwrap_err().to_string();
        assert_eq!(
            errors,
            "line 6, column 1: admin.token #1 is shorter than 16 characters\n\
             line 6, column 1: admin.token #2 is also a source's write_key\n\
             line 7, column 1: admin.listen `nowhere` is not an address like 127.0.0.1:8089"
        );
    }

    #[test]
    fn validation_yields_what_the_worker_runs_with() {
        let text = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"A\"\ntype = \"webhook\"\nurl = \"http://x\"\nrate_limit = { requests_per_second = 4, burst = 2 }\nbatch = { max_events = 7, max_wait = \"5ms\" }\nconcurrency = 3\nretry = { initial_backoff = \"2s\", max_attempts = 5 }\n";
        let config = load_with_env(text, &|_| None).unwrap();
        let d = &config.destinations[0].delivery;
        let quota = d.quota.expect("a quota");
        assert_eq!(quota.burst_size().get(), 2);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(250));
        assert_eq!(
            (d.max_events, d.max_wait),
            (Some(7), Duration::from_millis(5))
        );
        assert_eq!(d.concurrency, 3);
        assert_eq!(d.retry.initial, Duration::from_secs(2));
        assert_eq!(d.retry.max_attempts, Some(5));
        let unlimited = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"A\"\ntype = \"webhook\"\nurl = \"http://x\"\n";
        let config = load_with_env(unlimited, &|_| None).unwrap();
        assert!(config.destinations[0].delivery.quota.is_none());
        assert_eq!(config.destinations[0].delivery.concurrency, 2);
    }
}
