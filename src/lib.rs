//! Switchyard: a self-hosted fan-out router for Segment-spec calls.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `${VAR}` expansion, validation with line and column.
//! - [`ingest`]: the Segment-compatible HTTP API (axum): auth, limits, answers.
//! - [`ops`]: health, readiness, metrics and destination status for operators.
//! - [`admin`]: the admin API and the console, behind an admin token.
//! - [`normalize`]: spec checks and normalization of one message (pure).
//! - [`route`]: `integrations` × destinations → where a message goes (pure).
//! - [`spool`]: the contract messages wait behind, and its implementations.
//! - [`deliver`]: one worker per destination: batching, rate limit, retries, settling.
//! - [`destination`]: the adapter trait, its vocabulary and the registry.
//! - [`destinations`]: the adapters, one folder each under `destinations/`.
//! - [`memo`]: what a group's last traits became, kept for its next call.
//! - [`retry`]: backoff and give-up as data (pure).
//! - [`server`]: wiring and graceful shutdown.
//! - [`telemetry`]: Prometheus metrics names, recorder and `/metrics` text.
//! - [`dlq`]: the `switchyard dlq` commands on the spool's dead letters.

pub mod admin;
pub mod config;
pub mod deliver;
pub mod destination;
#[path = "../destinations/mod.rs"]
pub mod destinations;
pub mod dlq;
pub mod ingest;
pub mod memo;
pub mod message;
pub mod normalize;
pub mod ops;
pub mod retry;
pub mod route;
pub mod secret;
pub mod server;
pub mod spool;
pub mod telemetry;
