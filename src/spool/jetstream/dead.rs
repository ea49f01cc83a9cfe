//! Dead letters on JetStream: a stream of their own (`<PREFIX>_DEAD`, one subject per
//! destination), and messages refused at ingest in another (`<PREFIX>_REFUSED`, bounded by
//! `max_refused_bytes`). `switchyard dlq` and the admin API list, show, replay and purge them
//! here as they do on the embedded spool.
//!
//! Ids: a dead letter's id is twice its sequence in the dead-letter stream; a refused
//! message's, twice its sequence in the refused stream plus one. Stable, unique, and as the
//! embedded spool's, increasing with time within each kind.

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use super::lane::Item;
use super::names::{self, Names};
use crate::config::SpoolConfig;
use crate::spool::sqlite::dlq::{DeadLetter, Replayed, Selector, Stopped};
use crate::spool::{Attempt, Rejected, SpoolError};

/// Dead letters a replay publishes at once before waiting for the server's answers.
const REPLAY_CHUNK: usize = 256;

/// A dead letter as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    destination: Option<String>,
    source: String,
    message_id: Option<String>,
    group_id: Option<String>,
    reason: String,
    error: String,
    attempts: u32,
    /// Milliseconds since the epoch.
    first_attempt: Option<u64>,
    last_attempt: u64,
    status: Option<u16>,
    response: Option<String>,
    body: String,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl Record {
    pub(super) fn failed(destination: &str, item: &Item, a: &Attempt) -> Self {
        Self {
            destination: Some(destination.to_string()),
            source: item.source.clone(),
            message_id: Some(item.message_id.clone()),
            group_id: item.group.as_deref().map(str::to_string),
            reason: a.dead_reason.as_str().to_string(),
            error: a.reason.clone(),
            attempts: a.attempts,
            first_attempt: Some(ms(a.first_attempt)),
            last_attempt: ms(a.last_attempt),
            status: a.status,
            response: a.response.clone(),
            body: item.body.to_string(),
        }
    }

    pub(super) fn refused(r: &Rejected) -> Self {
        Self {
            destination: None,
            source: r.source.clone(),
            message_id: r.message_id(),
            group_id: None,
            reason: "invalid".into(),
            error: r.described(),
            attempts: 0,
            first_attempt: None,
            last_attempt: ms(r.at),
            status: None,
            response: None,
            body: r.kept_body().to_string(),
        }
    }

    pub(super) fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    fn letter(self, id: i64, with_body: bool) -> DeadLetter {
        let message = with_body.then(|| {
            serde_json::from_str(&self.body).unwrap_or(serde_json::Value::String(self.body))
        });
        DeadLetter {
            id,
            destination: self.destination,
            source: self.source,
            message_id: self.message_id,
            group_id: self.group_id,
            reason: self.reason,
            error: self.error,
            attempts: self.attempts,
            first_attempt: self.first_attempt.map(time),
            last_attempt: time(self.last_attempt),
            status: self.status,
            response: self.response,
            message,
        }
    }
}

/// The dead letters of a JetStream spool.
pub struct Dead {
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    dead: stream::Stream,
    refused: stream::Stream,
    log: stream::Stream,
}

fn failed(what: &str, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("{what}: {e}"))
}

impl Dead {
    /// Connect for `switchyard dlq`; the streams must exist (a daemon made them).
    pub async fn connect(c: &SpoolConfig) -> Result<Self, SpoolError> {
        let client = super::setup::connect(c, "switchyard dlq")
            .await
            .map_err(|e| SpoolError::Unavailable(e.to_string()))?;
        let js = jetstream::new(client);
        let names = Names::new(c.prefix());
        let get = |name: String| {
            let js = js.clone();
            async move {
                js.get_stream(&name).await.map_err(|e| {
                    failed(
                        &format!("no stream {name} (has a daemon run with this config?)"),
                        e,
                    )
                })
            }
        };
        let dead = get(names.dead_stream()).await?;
        let refused = get(names.refused_stream()).await?;
        let mut log = get(names.log_stream()).await?;
        // The stream's own count, whatever this file says: a replay must land where the
        // daemons' consumers read.
        let partitions = super::setup::partitions_of(&mut log)
            .await
            .unwrap_or(c.partitions());
        Ok(Self::new(js, names, partitions, [log, dead, refused]))
    }

    pub(super) fn new(
        js: jetstream::Context,
        names: Names,
        partitions: u32,
        streams: [stream::Stream; 3],
    ) -> Self {
        let [log, dead, refused] = streams;
        Self {
            js,
            names,
            partitions,
            dead,
            refused,
            log,
        }
    }

    fn stream_of(&self, id: i64) -> (&stream::Stream, u64) {
        if id % 2 == 0 {
            (&self.dead, (id / 2) as u64)
        } else {
            (&self.refused, (id / 2) as u64)
        }
    }

    async fn get(&self, id: i64) -> Result<Option<Record>, SpoolError> {
        if id <= 0 {
            return Ok(None);
        }
        let (stream, seq) = self.stream_of(id);
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(serde_json::from_slice(&m.payload).ok()),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(failed("cannot read a dead letter", e)),
        }
    }

    /// Every id in both streams, oldest first within each.
    async fn ids(&self) -> Result<Vec<i64>, SpoolError> {
        let mut out = Vec::new();
        for (stream, odd) in [(&self.dead, 0), (&self.refused, 1)] {
            let mut stream = stream.clone();
            let info = stream
                .info()
                .await
                .map_err(|e| failed("cannot read the dead-letter streams", e))?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            if info.state.messages > 0 {
                out.extend((first..=last).map(|s| s as i64 * 2 + odd));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Dead letters matching the filters: oldest first, or the newest `newest` newest first.
    pub async fn list(
        &self,
        destination: Option<&str>,
        reason: Option<&str>,
        newest: Option<usize>,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        let mut ids = self.ids().await?;
        if newest.is_some() {
            ids.reverse();
        }
        let mut out = Vec::new();
        for id in ids {
            if newest.is_some_and(|n| out.len() >= n) {
                break;
            }
            let Some(r) = self.get(id).await? else {
                continue;
            };
            if destination.is_some_and(|d| r.destination.as_deref() != Some(d))
                || reason.is_some_and(|want| r.reason != want)
            {
                continue;
            }
            out.push(r.letter(id, false));
        }
        Ok(out)
    }

    pub async fn show(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        Ok(self.get(id).await?.map(|r| r.letter(id, true)))
    }

    async fn selected(&self, which: &Selector) -> Result<Vec<i64>, SpoolError> {
        Ok(match which {
            Selector::Ids(ids) => ids.clone(),
            Selector::All => self.ids().await?,
            Selector::Destination(d) => self
                .list(Some(d), None, None)
                .await?
                .into_iter()
                .map(|l| l.id)
                .collect(),
        })
    }

    /// Put dead letters back on their destination's queue (only its own: a replay subject
    /// only its consumers read), then delete them; each is one or the other, never lost.
    pub async fn replay(
        &self,
        which: &Selector,
        configured: &[String],
    ) -> Result<Replayed, Stopped> {
        let ids = self.selected(which).await?;
        let mut out = Replayed::default();
        for chunk in ids.chunks(REPLAY_CHUNK) {
            self.replay_chunk(chunk, configured, &mut out).await?;
        }
        Ok(out)
    }

    /// Publish a chunk's letters back all at once (so a group's calls arrive together, and
    /// coalesce as they did), then delete each one the server stored.
    async fn replay_chunk(
        &self,
        ids: &[i64],
        configured: &[String],
        out: &mut Replayed,
    ) -> Result<(), Stopped> {
        let stopped = |error: SpoolError, done: usize| Stopped { done, error };
        let mut sent = Vec::new();
        for &id in ids {
            let done = out.replayed.len();
            let Some(r) = self.get(id).await.map_err(|e| stopped(e, done))? else {
                out.skipped.push((id, "no such dead letter".into()));
                continue;
            };
            let Some(destination) = r.destination.clone() else {
                let why = "refused at ingest (invalid): there is no destination to replay to";
                out.skipped.push((id, why.into()));
                continue;
            };
            if !configured.contains(&destination) {
                let why = format!("destination `{destination}` is not in the config");
                out.skipped.push((id, why));
                continue;
            }
            let key = r
                .group_id
                .as_deref()
                .or(r.message_id.as_deref())
                .unwrap_or("");
            let partition = names::partition_of(key, self.partitions);
            // Published where no consumer reads, the stream would drop it at once.
            let consumer = self.names.consumer(&destination, partition);
            if self.log.consumer_info(&consumer).await.is_err() {
                let why = format!(
                    "destination `{destination}` has no consumer on the server (has a daemon with it in its config run?)"
                );
                out.skipped.push((id, why));
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(names::TO, names::token(&destination).as_str());
            if let Some(g) = &r.group_id {
                headers.insert(names::GROUP, hex::encode(g).as_str());
            }
            headers.insert(names::SOURCE, hex::encode(&r.source).as_str());
            if let Some(m) = &r.message_id {
                headers.insert(names::MESSAGE_ID, hex::encode(m).as_str());
            }
            let subject = self.names.replay_subject(partition, &destination);
            let ack = self
                .js
                .publish_with_headers(subject, headers, r.body.into())
                .await
                .map_err(|e| stopped(failed("cannot replay", e), done))?;
            sent.push((id, ack));
        }
        // Every one stored is deleted, even past a failure; the first failure stops the rest.
        let mut first_error = None;
        for (id, ack) in sent {
            if let Err(e) = ack.await {
                first_error.get_or_insert(failed("cannot replay", e));
                continue;
            }
            let (stream, seq) = self.stream_of(id);
            if let Err(e) = stream.delete_message(seq).await {
                first_error.get_or_insert(failed("replayed, but cannot delete the dead letter", e));
                continue;
            }
            out.replayed.push(id);
        }
        match first_error {
            Some(error) => Err(stopped(error, out.replayed.len())),
            None => Ok(()),
        }
    }

    pub async fn purge(&self, which: &Selector) -> Result<usize, Stopped> {
        let ids = self.selected(which).await?;
        let mut done = 0;
        for id in ids {
            let (stream, seq) = self.stream_of(id);
            match stream.delete_message(seq).await {
                Ok(_) => done += 1,
                Err(e) if e.to_string().contains("no message found") => {}
                Err(e) => {
                    return Err(Stopped {
                        done,
                        error: failed("cannot delete a dead letter", e),
                    });
                }
            }
        }
        Ok(done)
    }
}
