//! The adapter contract: what a destination must do, and the registry that builds one from
//! its `[[destination]]` table.
//!
//! An adapter only translates and classifies (pure: messages and a clock in, requests out;
//! a response in, one verdict per item out) and, when it needs a credential fetched, authorizes.
//! The engine (`deliver`) owns batching, rate limits, retries, timeouts and the spool, and
//! hands an adapter only the message types it [`accepts`](Destination::accepts).
//!
//! - `request.rs`: [`OutRequest`] and [`Response`], the HTTP vocabulary.
//! - `verdict.rs`: [`Verdict`], [`Failure`], [`Classification`] and [`classify_status`].
//! - `traits.rs`: [`Traits`], a call's traits read from the stored text ([`Item::traits`]).
//! - `registry.rs`: [`Setup`] (what a constructor gets) and the [`Registry`].

mod registry;
mod request;
mod traits;
mod verdict;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::message::{MessageType, field};

pub use registry::{Constructor, Registry, Setup, build, registry};
pub use request::{
    OutRequest, Response, excerpt, looks_secret, origin_only, redacted_headers, redacted_url,
};
pub use traits::{TraitValue, Traits};
pub use verdict::{
    Classification, Failure, FailureKind, Translation, Verdict, classify_status, retry_after,
};

/// One message handed to an adapter.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The normalized message: every field, or at least the ones the adapter
    /// [`reads`](Destination::reads).
    pub message: &'a Map<String, Value>,
    /// This destination's options from the message's `integrations` map (empty when none).
    pub options: &'a Map<String, Value>,
    /// The whole normalized message as stored, JSON text, when the engine has it: the same
    /// bytes `serde_json` writes for the whole message, so an adapter that forwards the
    /// message unchanged can copy it instead of serializing `message`. When `None`,
    /// `message` holds every field.
    pub raw: Option<&'a str>,
    /// The call's `traits` object within `raw`, when the engine knows where it is (ingest
    /// said so for the messages it stored lately): [`Item::traits`] then reads it without
    /// going through the whole message. `None` whenever `raw` is.
    pub traits_text: Option<&'a str>,
}

impl<'a> Item<'a> {
    /// The `groupId` of a group call; `None` for any other call (or one without a group).
    pub fn group_call(&self) -> Option<&'a str> {
        let message: &'a Map<String, Value> = self.message;
        match field(message, "type").and_then(Value::as_str) {
            Some("group") => field(message, "groupId").and_then(Value::as_str),
            _ => None,
        }
    }

    pub fn message_id(&self) -> &str {
        field(self.message, "messageId")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Which top-level fields of a message an adapter's `translate` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// All of them (the default).
    All,
    /// Only these, besides those the engine reads itself ([`crate::message::ENGINE_FIELDS`]:
    /// `type`, `messageId`, `groupId`, `integrations`): the engine may hand it a message
    /// holding just those, parsed from the stored text without building the rest.
    Only(&'static [&'static str]),
}

/// What an adapter may use for I/O while authorizing (e.g. fetching an OAuth token).
#[derive(Clone)]
pub struct Transport {
    pub client: reqwest::Client,
    pub timeout: Duration,
}

/// Why authorizing failed; messages are retried, never dead-lettered, for this.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// The most items this adapter can put in one request (the engine never leases more).
    fn max_batch(&self) -> usize;

    /// Batch size when the config does not set `batch.max_events`.
    fn default_batch(&self) -> usize {
        1
    }

    /// The message types this adapter translates, declared once: the config's `types` must
    /// be among them (the default is all of them), and the engine hands it nothing else.
    fn accepts(&self) -> &'static [MessageType] {
        MessageType::ALL
    }

    /// The top-level fields `translate` reads (and, with [`Item::raw`], whether it needs the
    /// parsed message at all): the less, the less the engine parses per message.
    fn reads(&self) -> Reads {
        Reads::All
    }

    /// Whether `translate` merges the calls of one group in a batch into one update
    /// (`coalesce`): only for updates that are idempotent state, where the vendor ends in the
    /// same state either way. Counted from [`Translation::coalesced`].
    fn coalesces(&self) -> bool {
        false
    }

    /// Turn a batch into requests. Pure: the time comes in, nothing is fetched.
    fn translate(&self, batch: &[Item<'_>], now: SystemTime) -> Translation;

    /// Read a response into one verdict per item of `request`. Pure. The default suits most
    /// HTTP APIs: see [`classify_status`].
    fn classify(
        &self,
        request: &OutRequest,
        response: &Response,
        now: SystemTime,
    ) -> Classification {
        classify_status(request, response, now)
    }

    /// Add credentials to a request; `refresh` asks for a new one after a refusal.
    async fn authorize(
        &self,
        _request: &mut OutRequest,
        _transport: &Transport,
        _refresh: bool,
    ) -> Result<(), AuthError> {
        Ok(())
    }
}
