//! The spool contract: where accepted messages wait for each destination.
//!
//! Ingest `append`s; each destination's worker `lease`s what is due, then settles every
//! leased item with exactly one of `ack`, `retry_at` or `dead_letter`. Implementations keep
//! per-group order: while an item of a group waits for a retry (or is leased), newer items of
//! the same group for the same destination are not leased. Items without a group are never
//! held back.

pub mod jetstream;
mod letters;
pub mod sqlite;

pub use letters::DeadLetters;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use self::sqlite::StorageError;
use crate::message::{Accepted, Parsed};

/// Position of a message in the log; increases with arrival.
pub type Seq = u64;

/// An item leased to a destination's worker.
#[derive(Debug, Clone)]
pub struct Leased {
    pub seq: Seq,
    /// The normalized message, JSON; may be empty when `parsed` was ready when leased (a
    /// spool need not read the text back then).
    pub body: Arc<str>,
    /// The same message parsed, shared with the other destinations that lease it while the
    /// spool keeps it: `parsed.get(&body)`.
    pub parsed: Parsed,
    pub group_id: Option<Arc<str>>,
    /// Attempts already made towards this destination.
    pub attempts: u32,
    /// When the first of those attempts was made.
    pub first_attempt: Option<SystemTime>,
    /// Why the stored body cannot be trusted (it no longer matches its checksum): the engine
    /// dead-letters it as `corrupted` instead of delivering it.
    pub corrupted: Option<String>,
}

/// The record of a failed attempt, kept with retries and dead letters.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Attempts made so far, this one included.
    pub attempts: u32,
    pub first_attempt: SystemTime,
    pub last_attempt: SystemTime,
    pub reason: String,
    /// HTTP status of the last answer, if there was one.
    pub status: Option<u16>,
    /// The start of the last answer's body, if there was one (kept with dead letters).
    pub response: Option<String>,
    /// What its dead letter's `reason` says, if it becomes one.
    pub dead_reason: DeadReason,
}

/// Why a message was dead-lettered (a dead letter's `reason`; `invalid` is ingest's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadReason {
    /// The destination refused it, or it cannot be translated.
    #[default]
    Permanent,
    /// The retry policy gave up.
    Exhausted,
    /// Its stored body no longer matches its checksum: never delivered.
    Corrupted,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
            DeadReason::Corrupted => "corrupted",
        }
    }
}

/// A message refused at ingest inside a batch: kept so nothing disappears silently.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub source: String,
    /// Position in the batch it came in.
    pub index: usize,
    pub error: String,
    /// The message as received (JSON).
    pub raw: String,
    pub at: SystemTime,
}

/// Most bytes of a refused message's body its dead letter keeps: enough to see what was wrong.
pub const REFUSED_PREFIX: usize = 4096;

impl Rejected {
    /// What its dead letter keeps of the message: the first [`REFUSED_PREFIX`] bytes.
    pub fn kept_body(&self) -> &str {
        let mut end = REFUSED_PREFIX.min(self.raw.len());
        while !self.raw.is_char_boundary(end) {
            end -= 1;
        }
        &self.raw[..end]
    }

    /// Its dead letter's error: where it was in the batch, why, and whether the body was cut.
    pub fn described(&self) -> String {
        let mut error = format!("batch index {}: {}", self.index, self.error);
        let kept = self.kept_body().len();
        if kept < self.raw.len() {
            let cut = format!(
                " (body cut to its first {kept} of {} bytes)",
                self.raw.len()
            );
            error.push_str(&cut);
        }
        error
    }

    /// Its `messageId`, if it has one, read without building the message.
    pub fn message_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(rename = "messageId", borrow)]
            message_id: Option<std::borrow::Cow<'a, str>>,
        }
        let id: Id<'_> = serde_json::from_str(&self.raw).ok()?;
        id.message_id.map(std::borrow::Cow::into_owned)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// Same `(source, messageId)` seen within the dedupe window: not delivered again.
    Duplicate,
}

/// Counts for one destination's status.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Depth {
    /// Waiting to be leased, retries included.
    pub pending: u64,
    pub in_flight: u64,
    /// Of `pending`, how many are waiting for a retry.
    pub retrying: u64,
    /// Of `pending`, how many the destination's worker has not looked at yet: newer than
    /// everything it leased (what ingest's pacing weighs).
    #[serde(skip)]
    pub unread: u64,
    pub dead_letters: u64,
    /// When the oldest message still waiting (leased or not) was enqueued.
    #[serde(skip)]
    pub oldest_pending: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The backlog reached `spool.max_bytes`; callers should come back later.
    #[error("the spool is full ({used} of {max} bytes); retry later")]
    Full { used: u64, max: u64 },
    #[error("spool storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The spool's server (JetStream) cannot be reached or refused; callers should come back
    /// later.
    #[error("{0}")]
    Unavailable(String),
}

impl SpoolError {
    /// The spool's disk is full (see [`sqlite::StorageError::is_disk_full`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Storage(e) if e.is_disk_full())
    }

    /// What to tell a client that should retry.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(5)
    }
}

#[async_trait]
pub trait Spool: Send + Sync + 'static {
    /// Store accepted messages, one answer each; returns once they are stored.
    async fn append(&self, messages: Vec<Accepted>) -> Result<Vec<Appended>, SpoolError>;

    /// Keep messages refused at ingest, as far as the spool's bound for them allows; returns
    /// how many were not kept (counted only: the bound is reached).
    async fn reject(&self, rejected: Vec<Rejected>) -> Result<usize, SpoolError>;

    /// Up to `max` items due for `destination`, oldest first.
    async fn lease(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError>;

    /// More items for the batch the last `lease` began (the worker is filling it): as
    /// `lease`, and a spool may let a group's next items join its items already in that
    /// batch. No other lease of the destination comes between.
    async fn lease_more(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        self.lease(destination, max).await
    }

    /// Delivered: the items are done for this destination.
    async fn ack(&self, destination: &str, seqs: &[Seq]) -> Result<(), SpoolError>;

    /// Failed, to be retried no earlier than `at`.
    async fn retry_at(
        &self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        attempt: &Attempt,
    ) -> Result<(), SpoolError>;

    /// Failed for good: kept with the reason until a person looks.
    async fn dead_letter(
        &self,
        destination: &str,
        seq: Seq,
        attempt: &Attempt,
    ) -> Result<(), SpoolError>;

    /// Return until something may be due for `destination` (a new message, a retry coming
    /// due) or `max` has passed.
    async fn wait(&self, destination: &str, max: Duration);

    /// Counts for status and metrics.
    fn depth(&self, destination: &str) -> Depth;

    /// Bring what `depth` answers up to date where counting takes a round trip (a shared
    /// spool's counts live on its server); called before the counts are shown.
    async fn refresh_depth(&self) {}

    /// Serve exactly `destinations` from now on (a reload); answers the names added. A
    /// destination dropped keeps what it is owed until it is configured again; its workers
    /// must have stopped (nothing of it leased).
    async fn configure(&self, destinations: &[String]) -> Result<Vec<String>, SpoolError>;

    /// Tell every daemon sharing this spool that `destination` is paused until `until` (a
    /// 429's `Retry-After`). A spool of one daemon has nobody to tell.
    fn share_pause(&self, _destination: &str, _until: SystemTime) {}

    /// A pause another daemon set for `destination` that has not ended.
    fn shared_pause(&self, _destination: &str) -> Option<SystemTime> {
        None
    }

    /// Where this spool's dead letters are, for the admin API.
    fn dead_letters(&self) -> DeadLetters;

    /// For a spool several daemons share: which are alive, what each runs and owns.
    fn cluster(&self) -> Option<serde_json::Value> {
        None
    }

    /// Delivery has stopped for good: let other daemons sharing the spool take over now.
    async fn close(&self) {}

    /// How many daemons deliver from this spool: each destination's rate limit is divided
    /// between them.
    fn delivering_daemons(&self) -> u32 {
        1
    }
}
