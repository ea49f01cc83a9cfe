//! The TOML configuration: shape, defaults, `${VAR}` expansion and validation.
//!
//! Loading is two passes over one parsed document so that every error keeps its line and
//! column: the core keys deserialize into [`Config`]; each destination's own keys
//! (`url`, `project_token`, …) are handed to its adapter as [`Settings`], still spanned.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::message::MessageType;
use crate::secret::Secret;

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
}

#[derive(Debug, Deserialize)]
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the local store; created if missing.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Ingest answers 503 once the stored backlog reaches this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A `messageId` seen again from the same source within this window is not delivered again.
    #[serde(default = "default_dedupe_window", with = "duration")]
    pub dedupe_window: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: default_spool_path(),
            max_bytes: default_max_bytes(),
            dedupe_window: default_dedupe_window(),
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
    /// The adapter's own keys, still spanned; filled in by [`load`].
    #[serde(skip)]
    pub settings: Settings,
}

/// Most batches in flight towards one destination.
pub const MAX_CONCURRENCY: usize = 64;

/// Keys of [`DestinationConfig`] itself; everything else in a `[[destination]]` is the adapter's.
const COMMON_DESTINATION_KEYS: &[&str] = &[
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
];

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
fn default_spool_path() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_dedupe_window() -> Duration {
    Duration::from_secs(24 * 3600)
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

/// One problem in the config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The original text, to turn byte offsets into lines and columns.
#[derive(Debug, Clone, Default)]
struct Source(Arc<str>);

impl Source {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.0[..offset.min(self.0.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
        (line, col)
    }

    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            at: span.map(|s| self.line_col(s.start)),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        self.error(e.span(), e.message().trim_end().to_string())
    }
}

/// A destination's adapter-specific keys, with their places in the file.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    table: DeTable<'static>,
    /// Every key of the destination's table (common ones too), for placing errors.
    keys: Vec<(String, std::ops::Range<usize>)>,
    span: std::ops::Range<usize>,
    source: Source,
}

impl Settings {
    /// Deserialize the adapter's config struct (which should `deny_unknown_fields`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let de = toml::de::Deserializer::from(Spanned::new(self.span.clone(), self.table.clone()));
        T::deserialize(de).map_err(|e| self.source.toml_error(&e))
    }

    /// An http(s) URL from key `key` of destination `dest`, without a trailing `/`.
    pub fn http_url(&self, key: &str, dest: &str, value: &str) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(value).map_err(|e| {
            self.error(
                key,
                format!("destination `{dest}`: {key} `{value}` is not a URL: {e}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.error(
                key,
                format!("destination `{dest}`: {key} must be http or https"),
            ));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    /// An error placed at `key`'s line when present, else at the destination's table.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let span = self
            .keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| self.span.clone());
        self.source.error(Some(span), message)
    }
}

/// Parse, expand `${VAR}` from the environment, and validate; every problem is returned.
pub fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_with_env(text, &|name| std::env::var(name).ok())
}

pub fn load_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    // The parsed document borrows its text, and each destination keeps its spanned table for
    // its adapter to deserialize later; a config is loaded once per process, so the text is
    // given a static lifetime rather than re-parsed.
    let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
    let source = Source(Arc::from(text));
    let mut doc = DeTable::parse(text).map_err(|e| ConfigErrors(vec![source.toml_error(&e)]))?;
    let mut errors = Vec::new();
    for (_, value) in doc.get_mut().iter_mut() {
        expand_env(value, &source, env, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let owned = doc.clone();
    let de = toml::de::Deserializer::from(doc);
    let mut config =
        Config::deserialize(de).map_err(|e| ConfigErrors(vec![source.toml_error(&e)]))?;
    attach_settings(&mut config, owned, &source);
    config.validate()?;
    Ok(config)
}

fn expand_env(
    value: &mut Spanned<DeValue<'_>>,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest: &str = s;
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(len) = rest[start..].find('}') else {
                    errors.push(source.error(Some(span.clone()), "unterminated `${` in string"));
                    return;
                };
                let name = &rest[start + 2..start + len];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        let at = source.0[span.clone()]
                            .find(&format!("${{{name}}}"))
                            .map(|o| span.start + o..span.end)
                            .unwrap_or(span.clone());
                        errors.push(source.error(
                            Some(at),
                            format!("environment variable `{name}` is not set"),
                        ));
                    }
                }
                rest = &rest[start + len + 1..];
            }
            out.push_str(rest);
            *s = out.into();
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                expand_env(item, source, env, errors);
            }
        }
        DeValue::Table(table) => {
            for (_, v) in table.iter_mut() {
                expand_env(v, source, env, errors);
            }
        }
        _ => {}
    }
}

/// Give each destination its own keys, in file order (the same order as `config.destinations`).
fn attach_settings(config: &mut Config, doc: Spanned<DeTable<'static>>, source: &Source) {
    let Some(list) = doc.get_ref().get("destination") else {
        return;
    };
    let DeValue::Array(tables) = list.get_ref() else {
        return;
    };
    for (dest, table) in config.destinations.iter_mut().zip(tables) {
        if let DeValue::Table(t) = table.get_ref() {
            let own: DeTable<'static> = t
                .iter()
                .filter(|(k, _)| !COMMON_DESTINATION_KEYS.contains(&k.get_ref().as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            dest.settings = Settings {
                table: own,
                keys: t
                    .iter()
                    .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                    .collect(),
                span: table.span(),
                source: source.clone(),
            };
        }
    }
}

impl Config {
    /// Checks that need the whole config; serde has already checked each key's type.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
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
        if self.sources.is_empty() && !self.server.allow_unauthenticated {
            errors.push(ConfigError {
                at: None,
                message: "no [[source]] is configured: add one with a write_key, or set \
                          server.allow_unauthenticated = true"
                    .into(),
            });
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for s in &self.sources {
            if s.name.trim().is_empty() {
                errors.push(ConfigError {
                    at: None,
                    message: "a [[source]] has an empty name".into(),
                });
            }
            if !names.insert(s.name.to_lowercase()) {
                errors.push(ConfigError {
                    at: None,
                    message: format!("source name `{}` is used twice", s.name),
                });
            }
            if s.write_key.expose().is_empty() {
                errors.push(ConfigError {
                    at: None,
                    message: format!("source `{}` has an empty write_key", s.name),
                });
            } else if !keys.insert(s.write_key.expose()) {
                errors.push(ConfigError {
                    at: None,
                    message: format!("source `{}` reuses another source's write_key", s.name),
                });
            }
        }
        let mut dest_keys = HashSet::new();
        for d in &self.destinations {
            for key in std::iter::once(&d.name).chain(&d.aliases) {
                if key.trim().is_empty() {
                    errors.push(
                        d.settings
                            .error("name", "a destination name or alias is empty"),
                    );
                } else if key.eq_ignore_ascii_case("all") {
                    errors.push(d.settings.error(
                        "name",
                        "`All` is reserved in the integrations map and cannot name a destination",
                    ));
                } else if !dest_keys.insert(key.to_lowercase()) {
                    errors.push(d.settings.error(
                        "name",
                        format!(
                            "destination name `{key}` is used twice (names and aliases are \
                             compared case-insensitively)"
                        ),
                    ));
                }
            }
            if let Some(rl) = &d.rate_limit {
                // Between one request a day and a million a second: outside that the limiter's
                // period cannot be represented (or the limit would silently be none).
                if !(1.0 / 86_400.0..=1_000_000.0).contains(&rl.requests_per_second) {
                    errors.push(d.settings.error(
                        "rate_limit",
                        format!(
                            "destination `{}`: rate_limit.requests_per_second must be between 0.0000116 (one a day) and 1000000",
                            d.name
                        ),
                    ));
                }
                if rl.burst == 0 {
                    errors.push(d.settings.error(
                        "rate_limit",
                        format!(
                            "destination `{}`: rate_limit.burst must be at least 1",
                            d.name
                        ),
                    ));
                }
            }
            if d.batch.max_events == Some(0) {
                errors.push(d.settings.error(
                    "batch",
                    format!(
                        "destination `{}`: batch.max_events must be at least 1",
                        d.name
                    ),
                ));
            }
            if !(1..=MAX_CONCURRENCY).contains(&d.concurrency) {
                errors.push(d.settings.error(
                    "concurrency",
                    format!(
                        "destination `{}`: concurrency must be between 1 and {MAX_CONCURRENCY}",
                        d.name
                    ),
                ));
            }
            if d.retry.initial_backoff > d.retry.max_backoff {
                errors.push(d.settings.error(
                    "retry",
                    format!(
                        "destination `{}`: retry.initial_backoff is above retry.max_backoff",
                        d.name
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}
