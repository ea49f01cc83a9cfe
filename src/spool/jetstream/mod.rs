//! The spool on NATS JetStream (`[spool] backend = "jetstream"`): several daemons share one
//! durable log, and what a daemon accepted survives the loss of its machine.
//!
//! # Design
//!
//! - **One log stream**, every accepted message stored once on the subject of its partition
//!   (a hash of its group id, else of its message id): `<prefix>.log.<p>`. Headers carry the
//!   destinations it was routed to, its group, source and message id; `Nats-Msg-Id` (a digest
//!   of source and message id) makes the server drop the same message sent again within the
//!   dedupe window, through whichever daemon. Interest retention: a message stays until every
//!   destination's consumer has acknowledged it.
//! - **One durable consumer per destination and partition**, filtered to the partition's
//!   subject and the destination's replays. Each partition is owned by one delivering daemon,
//!   chosen by rendezvous hashing over the live members (`members.rs`); the consumer's pinned
//!   priority group makes the server itself refuse a second puller, so two daemons that
//!   briefly disagree about ownership never split a partition.
//! - **The owner holds what it pulled** (`lane.rs`), unacknowledged, and keeps per-group order
//!   there; "in progress" keeps the server from redelivering it while it waits. Acknowledged
//!   when delivered; copied to the dead-letter stream, then acknowledged, when dead.
//! - **A daemon that dies** stops heartbeating: after [`members::MEMBER_TTL`] the others drop
//!   it and the new owners pull its partitions; its unacknowledged messages come back to
//!   them once their ack wait ([`setup::ACK_WAIT`]) has run out, and a takeover leases nothing
//!   of a partition until all of them are back, so order holds across it.
//! - **Pauses** (a 429's `Retry-After`) go through a key-value bucket every daemon watches;
//!   the rate limit is shared by dividing it between the live delivering daemons.

pub mod dead;
mod lane;
mod members;
pub mod names;
mod setup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use tokio::task::JoinHandle;

use self::lane::{Item, Lane};
use self::names::Names;
pub use self::setup::SetupError;
use super::{Appended, Attempt, Depth, Leased, Rejected, Seq, Spool, SpoolError};
use crate::config::SpoolConfig;
use crate::message::Accepted;

/// What this daemon does with the shared spool (`switchyard run --role`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accept calls and deliver.
    #[default]
    All,
    /// Accept calls only.
    Ingest,
    /// Deliver only: the ingest endpoints answer 404.
    Deliver,
}

impl Role {
    pub fn delivers(self) -> bool {
        self != Role::Ingest
    }

    pub fn ingests(self) -> bool {
        self != Role::Deliver
    }
}

pub struct JetStreamSpool {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    max_bytes: u64,
    log: stream::Stream,
    dead: stream::Stream,
    refused: stream::Stream,
    members: kv::Store,
    pauses: kv::Store,
    /// This daemon, as the members bucket shows it.
    me: members::Member,
    /// Each destination served, by name; `lanes` only on a delivering daemon.
    destinations: RwLock<Vec<String>>,
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
    /// The last cluster-wide counts, per destination.
    depth: Mutex<HashMap<String, members::Counts>>,
    /// Pauses any daemon set, by destination token.
    paused: Mutex<HashMap<String, SystemTime>>,
    /// The live members at the last look.
    alive: Mutex<Vec<members::Member>>,
    /// Delivery stopped for good: own nothing from now on.
    leaving: std::sync::atomic::AtomicBool,
    /// When this daemon's record was last stored (see [`members::SELF_FENCE`]).
    last_beat: Mutex<Instant>,
    /// Bodies (and their one parse) of messages other destinations' lanes here have yet to
    /// receive, with how many: each destination's consumer delivers its own copy.
    bodies: Mutex<HashMap<Seq, SharedBody>>,
}

/// A body, its parse, and how many lanes here have yet to take it.
type SharedBody = (Arc<str>, crate::message::Parsed, usize);

/// Most bodies kept for the other destinations' lanes; past it they start over (a body
/// missed is only read and parsed once more).
const MAX_SHARED_BODIES: usize = 20_000;

impl Inner {
    /// Delete the consumers of destinations that neither this daemon nor any live member
    /// serves: a daemon still running an older file keeps a destination it serves alive.
    async fn remove_unread(&self) -> Result<(), SetupError> {
        let mut served = read(&self.destinations).clone();
        for m in lock(&self.alive).iter() {
            served.extend(m.serves.iter().cloned());
        }
        let removed =
            setup::remove_unread(&self.log, &self.names, &served, self.partitions).await?;
        if !removed.is_empty() {
            tracing::info!(consumers = ?removed, "removed the consumers of destinations no daemon serves");
        }
        Ok(())
    }

    /// The body of message `seq` as the lanes share it: read and parsed once for the
    /// `readers` destinations here that receive it.
    fn body(
        &self,
        seq: Seq,
        payload: &[u8],
        readers: usize,
    ) -> Result<(Arc<str>, crate::message::Parsed), String> {
        let mut bodies = lock(&self.bodies);
        if let Some((body, parsed, left)) = bodies.get_mut(&seq) {
            let shared = (body.clone(), parsed.clone());
            *left -= 1;
            if *left == 0 {
                bodies.remove(&seq);
            }
            return Ok(shared);
        }
        let body: Arc<str> = std::str::from_utf8(payload)
            .map_err(|_| format!("message {seq} is not UTF-8"))?
            .into();
        let parsed = crate::message::Parsed::default();
        if readers > 1 {
            if bodies.len() >= MAX_SHARED_BODIES {
                bodies.clear();
            }
            bodies.insert(seq, (body.clone(), parsed.clone(), readers - 1));
        }
        Ok((body, parsed))
    }

    /// Make sure the server has read everything this daemon sent so far (acknowledgements
    /// included): one round trip for a whole batch. A request to a subject nobody serves is
    /// answered by the server itself ("no responders") once it has read what came before
    /// it on this connection.
    async fn flushed(&self) -> bool {
        use async_nats::client::RequestErrorKind;
        let subject = format!("_SWITCHYARD.flush.{}", self.me.id);
        let asked = self.client.request(subject, bytes::Bytes::new());
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

impl std::fmt::Debug for JetStreamSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSpool")
            .field("prefix", &self.inner.names)
            .field("me", &self.inner.me.id)
            .finish()
    }
}

impl JetStreamSpool {
    /// Connect, make the streams, buckets and consumers `destinations` need, and start the
    /// background work: heartbeat and ownership, "in progress" for what is held, counts,
    /// pauses.
    pub async fn open(
        c: &SpoolConfig,
        destinations: &[String],
        role: Role,
        max_message_bytes: usize,
    ) -> Result<Self, SetupError> {
        let me = members::Member::new(role);
        let client = setup::connect(c, &format!("switchyard {}", me.id)).await?;
        // A message the server cannot take would be refused at every try: say so now.
        let max_payload = client.server_info().max_payload;
        if max_message_bytes + setup::HEADER_ROOM > max_payload {
            return Err(SetupError::Payload {
                url: setup::url_of(c),
                max_message_bytes,
                max_payload,
            });
        }
        let js = jetstream::new(client.clone());
        let names = Names::new(c.prefix());
        let (log, dead, refused) = setup::streams_when_ready(&js, &names, c).await?;
        let replicas = c.replicas();
        let members_bucket =
            setup::bucket(&js, names.members_bucket(), members::MEMBER_TTL, replicas).await?;
        let pauses = setup::bucket(
            &js,
            names.pauses_bucket(),
            Duration::from_secs(24 * 3600),
            replicas,
        )
        .await?;
        let partitions = c.partitions();
        for d in destinations {
            for p in 0..partitions {
                setup::consumer(&log, &names, d, p).await?;
            }
        }
        let lanes = if role.delivers() {
            destinations
                .iter()
                .map(|d| (d.clone(), Arc::new(Lane::new(d))))
                .collect()
        } else {
            HashMap::new()
        };
        let inner = Arc::new(Inner {
            client,
            js,
            names,
            partitions,
            max_bytes: c.max_bytes,
            log,
            dead,
            refused,
            members: members_bucket,
            pauses,
            me,
            destinations: RwLock::new(destinations.to_vec()),
            lanes: RwLock::new(lanes),
            depth: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            alive: Mutex::new(Vec::new()),
            leaving: Default::default(),
            bodies: Mutex::new(HashMap::new()),
            last_beat: Mutex::new(Instant::now()),
        });
        // Join before delivering anything, so ownership is decided from the start.
        members::beat(&inner).await;
        inner
            .remove_unread()
            .await
            .map_err(|e| setup::server("cleaning up consumers", e))?;
        let tasks = vec![
            tokio::spawn(members::run(inner.clone())),
            tokio::spawn(members::refresh(inner.clone())),
            tokio::spawn(members::count(inner.clone())),
            tokio::spawn(members::watch_pauses(inner.clone())),
        ];
        tracing::info!(url = %setup::url_of(c), prefix = c.prefix(), partitions, id = %inner.me.id,
            role = ?role, "spool on JetStream");
        Ok(Self { inner, tasks })
    }

    fn lane(&self, destination: &str) -> Option<Arc<Lane>> {
        read(&self.inner.lanes).get(destination).cloned()
    }
}

impl Drop for JetStreamSpool {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for lane in read(&self.inner.lanes).values() {
            for p in lane.owned() {
                drop(lane.release(p));
            }
        }
    }
}

/// Give a message back to the server at once (a "nak" without delay), for the daemon that
/// owns its partition now; unsent, it comes back after its ack wait anyway.
async fn hand_back(acker: &async_nats::jetstream::message::Acker) {
    let _ = acker
        .ack_with(async_nats::jetstream::AckKind::Nak(None))
        .await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

/// What a failed publish means for ingest: the stream is full, or the server is not there.
fn publish_error(e: jetstream::context::PublishError, max: u64) -> SpoolError {
    use std::error::Error;
    let full = e
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
        || e.to_string().contains("maximum bytes exceeded");
    if full {
        SpoolError::Full { used: max, max }
    } else {
        SpoolError::Unavailable(format!("cannot store on the JetStream server: {e}"))
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("{what}: {e}"))
}

#[async_trait]
impl Spool for JetStreamSpool {
    async fn append(&self, messages: Vec<Accepted>) -> Result<Vec<Appended>, SpoolError> {
        let i = &self.inner;
        // Every publish goes out before the first answer is awaited: one round trip for the
        // request, not one per message.
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let key = m.group_id.as_deref().unwrap_or(&m.message_id);
            let partition = names::partition_of(key, i.partitions);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                names::dedupe_id(&m.source, &m.message_id).as_str(),
            );
            let to: Vec<String> = m.destinations.iter().map(|d| names::token(d)).collect();
            headers.insert(names::TO, to.join(" ").as_str());
            if let Some(g) = &m.group_id {
                headers.insert(names::GROUP, hex::encode(g).as_str());
            }
            headers.insert(names::SOURCE, hex::encode(&m.source).as_str());
            headers.insert(names::MESSAGE_ID, hex::encode(&m.message_id).as_str());
            let ack =
                i.js.publish_with_headers(i.names.log_subject(partition), headers, m.body.into())
                    .await
                    .map_err(|e| publish_error(e, i.max_bytes))?;
            pending.push(ack);
        }
        let mut out = Vec::with_capacity(pending.len());
        for ack in pending {
            let ack = ack.await.map_err(|e| publish_error(e, i.max_bytes))?;
            out.push(if ack.duplicate {
                Appended::Duplicate
            } else {
                Appended::Stored
            });
        }
        Ok(out)
    }

    async fn reject(&self, rejected: Vec<Rejected>) -> Result<usize, SpoolError> {
        let mut not_kept = 0;
        for r in rejected {
            let letter = dead::Record::refused(&r);
            let published = self
                .inner
                .js
                .publish(self.inner.names.refused_subject(), letter.encode())
                .await;
            let stored = match published {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                // The refused stream is bounded (`max_refused_bytes`): past it they are counted.
                tracing::debug!(error = %e, "a refused message was not kept");
                not_kept += 1;
            }
        }
        Ok(not_kept)
    }

    async fn lease(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        Ok(match self.lane(destination) {
            Some(lane) if !members::fenced(&self.inner) => lane.lease(max, false),
            _ => Vec::new(),
        })
    }

    async fn lease_more(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        Ok(match self.lane(destination) {
            Some(lane) if !members::fenced(&self.inner) => lane.lease(max, true),
            _ => Vec::new(),
        })
    }

    async fn ack(&self, destination: &str, seqs: &[Seq]) -> Result<(), SpoolError> {
        let Some(lane) = self.lane(destination) else {
            return Ok(());
        };
        // The server has the acknowledgements before the groups free up: a newer item of a
        // group is sent only once the older one is settled there. Otherwise an acknowledgement
        // lost (a daemon killed with it unsent) would have the next owner send the older one
        // again, after the newer. One flush (a round trip) for the batch.
        let ackers = lane.ackers(seqs);
        for (_, acker) in &ackers {
            let _ = acker.ack().await;
        }
        if self.inner.flushed().await {
            lane.settle(seqs);
        } else {
            // Still held, their groups still waiting: confirmed one by one, each by a task.
            for (seq, _) in ackers {
                tokio::spawn(confirm(lane.clone(), destination.to_string(), seq));
            }
        }
        Ok(())
    }

    async fn retry_at(
        &self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        if let Some(lane) = self.lane(destination)
            && let Some(acker) = lane.retry(seq, at, attempt.attempts, attempt.first_attempt)
        {
            hand_back(&acker).await;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        destination: &str,
        seq: Seq,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        let Some(lane) = self.lane(destination) else {
            return Ok(());
        };
        let Some(letter) =
            lane.with_item(seq, |item| dead::Record::failed(destination, item, attempt))
        else {
            return Ok(());
        };
        let stored = async {
            self.inner
                .js
                .publish(self.inner.names.dead_subject(destination), letter.encode())
                .await?
                .await
        }
        .await;
        if let Err(e) = stored {
            // Not a dead letter yet: back in the lane, tried again in a second. Not an error
            // for the worker: the rest of its batch settles as usual.
            tracing::warn!(destination, seq, error = %e, "cannot store a dead letter yet; trying again in a second");
            let again = SystemTime::now() + Duration::from_secs(1);
            if let Some(acker) = lane.retry(seq, again, attempt.attempts, attempt.first_attempt) {
                hand_back(&acker).await;
            }
            return Ok(());
        }
        if let Some((_, acker)) = lane.ackers(&[seq]).pop() {
            let _ = acker.ack().await;
            if !self.inner.flushed().await {
                tokio::spawn(confirm(lane.clone(), destination.to_string(), seq));
                return Ok(());
            }
        }
        lane.settle(&[seq]);
        Ok(())
    }

    async fn wait(&self, destination: &str, max: Duration) {
        let Some(lane) = self.lane(destination) else {
            tokio::time::sleep(max).await;
            return;
        };
        let until_due = lane
            .next_due()
            .map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
        let wait = until_due.map_or(max, |d| d.min(max));
        let _ = tokio::time::timeout(wait, lane.notify.notified()).await;
    }

    fn depth(&self, destination: &str) -> Depth {
        let c = lock(&self.inner.depth)
            .get(destination)
            .copied()
            .unwrap_or_default();
        let (retrying, leased) = self.lane(destination).map_or((0, 0), |l| l.counts());
        let in_flight = leased + c.others_leased;
        Depth {
            pending: c.unsettled.saturating_sub(in_flight),
            in_flight,
            retrying: retrying + c.others_retrying,
            // Ingest's pacing is for the embedded spool, whose reads stay cheap while
            // delivery keeps within what it holds in memory; here the server holds the
            // backlog, and ingest usually runs on other daemons than delivery.
            unread: 0,
            dead_letters: c.dead_letters,
            oldest_pending: None,
        }
    }

    async fn refresh_depth(&self) {
        // A server that does not answer leaves the last counts shown, not a hung request.
        let _ = tokio::time::timeout(Duration::from_secs(2), members::count_now(&self.inner)).await;
    }

    async fn configure(&self, destinations: &[String]) -> Result<Vec<String>, SpoolError> {
        let i = &self.inner;
        let before = read(&i.destinations).clone();
        let added: Vec<String> = destinations
            .iter()
            .filter(|d| !before.contains(d))
            .cloned()
            .collect();
        for d in &added {
            for p in 0..i.partitions {
                setup::consumer(&i.log, &i.names, d, p)
                    .await
                    .map_err(|e| unavailable("cannot add a destination", e))?;
            }
        }
        {
            let mut lanes = i.lanes.write().unwrap_or_else(|p| p.into_inner());
            if i.me.role.delivers() {
                for d in &added {
                    lanes.insert(d.clone(), Arc::new(Lane::new(d)));
                }
            }
            for (name, lane) in lanes.iter() {
                if !destinations.contains(name) {
                    // Its pullers stop (they hold the lane: only releasing ends them).
                    for p in lane.owned() {
                        drop(lane.release(p));
                    }
                }
            }
            lanes.retain(|name, _| destinations.contains(name));
        }
        *i.destinations.write().unwrap_or_else(|p| p.into_inner()) = destinations.to_vec();
        // Its own record says what it serves now before anything is deleted; the beat also
        // gives the new lanes their partitions (or the next one does).
        members::beat(&self.inner).await;
        i.remove_unread()
            .await
            .map_err(|e| unavailable("cannot remove a destination's consumers", e))?;
        Ok(added)
    }

    fn share_pause(&self, destination: &str, until: SystemTime) {
        let inner = self.inner.clone();
        let token = names::token(destination);
        lock(&inner.paused).insert(token.clone(), until);
        tokio::spawn(async move {
            let ms = until
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                .to_string();
            if let Err(e) = inner.pauses.put(&token, ms.into()).await {
                tracing::warn!(error = %e, "could not share a pause with the other daemons");
            }
        });
    }

    fn shared_pause(&self, destination: &str) -> Option<SystemTime> {
        let until = *lock(&self.inner.paused).get(&names::token(destination))?;
        (until > SystemTime::now()).then_some(until)
    }

    fn dead_letters(&self) -> super::DeadLetters {
        let i = &self.inner;
        super::DeadLetters::JetStream(Arc::new(dead::Dead::new(
            i.js.clone(),
            i.names.clone(),
            i.partitions,
            [i.log.clone(), i.dead.clone(), i.refused.clone()],
        )))
    }

    fn cluster(&self) -> Option<serde_json::Value> {
        let i = &self.inner;
        let members = lock(&i.alive).clone();
        Some(serde_json::json!({
            "backend": "jetstream",
            "stream": i.names.log_stream(),
            "partitions": i.partitions,
            "this_daemon": i.me.id,
            "members": members,
        }))
    }

    async fn close(&self) {
        members::leave(&self.inner).await;
    }

    fn delivering_daemons(&self) -> u32 {
        let alive = lock(&self.inner.alive);
        (alive.iter().filter(|m| m.role.delivers()).count() as u32).max(1)
    }
}

/// Acknowledge a delivered item until the server confirms it, then let its group go on.
/// Each try uses the newest handle (the server may have given the item again). Without a
/// confirmation and without the item given again for twice the ack wait, the server has it
/// as acknowledged (it would have given it again otherwise; "in progress" stopped for it).
/// Gives up if the item leaves this daemon (its partition handed over).
async fn confirm(lane: Arc<Lane>, destination: String, seq: Seq) {
    let mut tries = 0u32;
    while let Some((acker, given)) = lane.acking(seq) {
        match acker.double_ack().await {
            Ok(()) => break,
            Err(_) if given.elapsed() > setup::ACK_WAIT * 2 => break,
            Err(e) => {
                tries += 1;
                if tries % 10 == 1 {
                    tracing::warn!(destination = %destination, seq, error = %e, tries,
                        "acknowledgement not confirmed; its group waits until it is");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    lane.settle(&[seq]);
}

/// The consumer's delivery number of a message (it counts every delivery, redeliveries
/// included: a gap means one was lost on the way), and its item if it is for `lane`'s
/// destination; a message for other destinations only is acknowledged at once (it is not
/// this one's).
async fn item_of(
    inner: &Inner,
    message: jetstream::Message,
    partition: u32,
    token: &str,
) -> Result<(u64, Option<Item>), String> {
    let info = message.info().map_err(|e| e.to_string())?;
    let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
    let (message, acker) = message.split();
    let headers = message.headers.unwrap_or_default();
    let text = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let unhex = |name: &str| {
        text(name).and_then(|h| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok()))
    };
    let replay = message.subject.as_str().contains(".replay.");
    let to = text(names::TO).unwrap_or_default();
    if !replay && !to.split(' ').any(|t| t == token) {
        let _ = acker.ack().await;
        return Ok((delivery, None));
    }
    // The destinations here that get a copy of it too (a replay is for one only).
    let readers = if replay {
        1
    } else {
        let lanes = read(&inner.lanes);
        let here = |t: &str| lanes.values().any(|lane| lane.token == t);
        to.split(' ').filter(|t| here(t)).count().max(1)
    };
    let (body, parsed) = match inner.body(seq, &message.payload, readers) {
        Ok(read) => read,
        Err(e) => {
            // Not written by a daemon (they store JSON text): never deliverable, so not
            // given again either.
            tracing::error!(seq, error = %e, "a message in the log is not text; removed for this destination");
            let _ = acker.ack_with(jetstream::AckKind::Term).await;
            return Ok((delivery, None));
        }
    };
    Ok((
        delivery,
        Some(Item {
            seq,
            partition,
            acker: Arc::new(acker),
            body,
            parsed,
            group: unhex(names::GROUP).map(Arc::from),
            source: unhex(names::SOURCE).unwrap_or_default(),
            message_id: unhex(names::MESSAGE_ID).unwrap_or_default(),
            attempts: 0,
            first_attempt: None,
            due: None,
            touched: Instant::now(),
            acking: false,
        }),
    ))
}
