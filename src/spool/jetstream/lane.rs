//! One destination's messages on this daemon, in memory: what its owned partitions' consumers
//! delivered and nobody has settled yet. JetStream is the record (every item here is
//! unacknowledged on the server); this is where per-group order is kept.
//!
//! - Each owned partition has a queue in stream order. An item waits while an older item of
//!   its group is leased or waiting for a retry; items of a group that are free go out
//!   together, in order, in one lease (so a group is never in two batches at once).
//! - A retry puts the item back in its place with a time; newer items of its group wait
//!   behind it, still unacknowledged on the server (kept alive with "in progress").
//! - **Takeover**: when this daemon starts pulling a partition, messages another daemon held
//!   come back (their ack wait ran out) possibly after newer ones. Until every message the
//!   consumer has outstanding is here (its `num_ack_pending` equals what this lane holds of
//!   the partition) or a deadline passes, nothing of that partition is leased; the queue is
//!   ordered by stream sequence, so then the oldest goes first.
//!
//! Memory is bounded by the consumers' `max_ack_pending` times the partitions owned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_nats::jetstream::message::Acker;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::message::Parsed;
use crate::spool::{Leased, Seq};

/// A message delivered by a consumer and not settled.
pub(super) struct Item {
    pub seq: Seq,
    pub partition: u32,
    pub acker: Arc<Acker>,
    pub body: Arc<str>,
    /// Its one parse, shared with the other destinations' lanes here.
    pub parsed: Parsed,
    pub group: Option<Arc<str>>,
    pub source: String,
    pub message_id: String,
    pub attempts: u32,
    pub first_attempt: Option<SystemTime>,
    /// Waiting for a retry until then.
    pub due: Option<SystemTime>,
    /// When the server last heard about it (delivered, or told "in progress").
    pub touched: Instant,
    /// Delivered, its acknowledgement not confirmed yet: no more "in progress" for it, so
    /// the server gives it again if the acknowledgement never reached it.
    pub acking: bool,
}

/// A partition this daemon pulls.
struct Part {
    queue: BTreeMap<Seq, Item>,
    /// Taking over: nothing is leased before then, unless all outstanding messages are here.
    recovering: Option<Instant>,
    puller: JoinHandle<()>,
}

impl Drop for Part {
    fn drop(&mut self) {
        self.puller.abort();
    }
}

#[derive(Default)]
struct State {
    parts: BTreeMap<u32, Part>,
    /// Leased, not settled.
    inflight: HashMap<Seq, Item>,
    /// Group → its items leased.
    busy: HashMap<Arc<str>, u32>,
    /// Group → its items leased into the batch being filled (see [`Lane::lease`]).
    batch: HashMap<Arc<str>, u32>,
    /// The earliest retry time, at the last lease, of an item that only waited for it (not
    /// behind an older item of its group, not in a partition being taken over).
    next_due: Option<SystemTime>,
    /// The items settled here lately. The server can give an item again after it was
    /// acknowledged (a consumer's leader lost with the acknowledgement not yet replicated):
    /// sending it again could put an older update after a newer one.
    settled: HashSet<Seq>,
    /// The same, oldest first, to forget the oldest past [`MAX_REMEMBERED`].
    settled_order: std::collections::VecDeque<Seq>,
}

/// Most settled items a lane remembers.
const MAX_REMEMBERED: usize = 100_000;

pub(super) struct Lane {
    pub name: String,
    /// The destination's name in subjects and consumer names.
    pub token: String,
    state: Mutex<State>,
    pub notify: Notify,
}

impl Lane {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            token: super::names::token(name),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions pulled here.
    pub fn owned(&self) -> Vec<u32> {
        self.state().parts.keys().copied().collect()
    }

    /// Start holding `partition`, pulled by `puller`, taking over until `deadline` at most.
    pub fn own(&self, partition: u32, puller: JoinHandle<()>, deadline: Instant) {
        let part = Part {
            queue: BTreeMap::new(),
            recovering: Some(deadline),
            puller,
        };
        if let Some(old) = self.state().parts.insert(partition, part) {
            drop(old);
        }
    }

    /// Stop holding `partition`: its puller stops and what waits here is forgotten (still
    /// unacknowledged, the server gives it to the next owner: the caller hands the handles
    /// back at once). Leased items settle as usual.
    pub fn release(&self, partition: u32) -> Vec<Arc<Acker>> {
        let part = self.state().parts.remove(&partition);
        part.map(|p| p.queue.values().map(|i| i.acker.clone()).collect())
            .unwrap_or_default()
    }

    /// A message the consumer delivered. A redelivery of an item held here replaces its
    /// handle (the old one is stale). One settled here already is handed back, to be
    /// acknowledged and not sent again. Wakes nobody:
    /// the caller notifies once the burst it is reading is in.
    pub fn arrive(&self, item: Item) -> Option<Item> {
        let mut s = self.state();
        if s.settled.contains(&item.seq) {
            return Some(item);
        }
        if let Some(held) = s.inflight.get_mut(&item.seq) {
            held.acker = item.acker;
            held.touched = item.touched;
            return None;
        }
        // Not held here (any more): the next owner gets it from the server.
        let part = s.parts.get_mut(&item.partition)?;
        match part.queue.get_mut(&item.seq) {
            Some(held) => {
                held.acker = item.acker;
                held.touched = item.touched;
            }
            None => {
                part.queue.insert(item.seq, item);
            }
        }
        None
    }

    /// Take `partition` over again (its pull started anew): what the server gave a pull that
    /// broke comes back once its ack wait runs out, possibly after newer messages.
    pub fn recover(&self, partition: u32, deadline: Instant) {
        if let Some(part) = self.state().parts.get_mut(&partition) {
            part.recovering = Some(deadline);
        }
    }

    /// Whether `partition` is still being taken over.
    pub fn recovering(&self, partition: u32) -> bool {
        let s = self.state();
        s.parts
            .get(&partition)
            .is_some_and(|p| p.recovering.is_some())
    }

    /// The consumer has `outstanding` messages unacknowledged: once they are all here (or the
    /// deadline passed), the partition's items may be leased. Answers whether it ended.
    pub fn check_recovery(&self, partition: u32, outstanding: usize) -> bool {
        let mut s = self.state();
        let held = s
            .inflight
            .values()
            .filter(|i| i.partition == partition)
            .count();
        let Some(part) = s.parts.get_mut(&partition) else {
            return false;
        };
        let Some(deadline) = part.recovering else {
            return false;
        };
        if held + part.queue.len() >= outstanding || Instant::now() >= deadline {
            part.recovering = None;
            drop(s);
            self.notify.notify_one();
            return true;
        }
        false
    }

    /// Up to `max` items that may go now, oldest first. With `more`, the items fill the
    /// batch the previous call began: a group whose only items in flight are in that batch
    /// may add its next ones to it (calls that arrived a moment apart still travel, and
    /// coalesce, together).
    pub fn lease(&self, max: usize, more: bool) -> Vec<Leased> {
        let now = SystemTime::now();
        let mut s = self.state();
        let State {
            parts,
            inflight,
            busy,
            batch,
            ..
        } = &mut *s;
        if !more {
            batch.clear();
        }
        let elsewhere =
            |g: &Arc<str>| busy.get(g).copied().unwrap_or(0) > batch.get(g).copied().unwrap_or(0);
        let mut next_due: Option<SystemTime> = None;
        // The first `max` free items of each partition, then the oldest `max` of those.
        let mut free: Vec<(Seq, u32)> = Vec::new();
        for (&p, part) in parts.iter() {
            if part.recovering.is_some() {
                continue;
            }
            let mut blocked: HashSet<&Arc<str>> = HashSet::new();
            let mut n = 0;
            for (seq, item) in &part.queue {
                if n >= max {
                    break;
                }
                let not_due = item.due.is_some_and(|d| d > now);
                let behind =
                    (item.group.as_ref()).is_some_and(|g| elsewhere(g) || blocked.contains(g));
                if not_due && !behind {
                    next_due = next_due.min(item.due).or(item.due);
                }
                if let Some(g) = &item.group
                    && (not_due || behind)
                {
                    blocked.insert(g);
                    continue;
                }
                if !not_due {
                    free.push((*seq, p));
                    n += 1;
                }
            }
        }
        free.sort_unstable();
        free.truncate(max);
        let mut out = Vec::with_capacity(free.len());
        for (seq, p) in free {
            let part = parts.get_mut(&p).expect("listed");
            let item = part.queue.remove(&seq).expect("listed");
            if let Some(g) = &item.group {
                *busy.entry(g.clone()).or_default() += 1;
                *batch.entry(g.clone()).or_default() += 1;
            }
            out.push(Leased {
                seq,
                body: item.body.clone(),
                parsed: item.parsed.clone(),
                group_id: item.group.clone(),
                attempts: item.attempts,
                first_attempt: item.first_attempt,
                corrupted: None,
            });
            inflight.insert(seq, item);
        }
        s.next_due = next_due;
        out
    }

    /// The handles of leased items, to acknowledge them.
    pub fn ackers(&self, seqs: &[Seq]) -> Vec<(Seq, Arc<Acker>)> {
        let s = self.state();
        seqs.iter()
            .filter_map(|seq| Some((*seq, s.inflight.get(seq)?.acker.clone())))
            .collect()
    }

    /// A leased item whose acknowledgement is not confirmed: its handle and when the server
    /// last gave it, marked as waiting for the confirmation.
    pub fn acking(&self, seq: Seq) -> Option<(Arc<Acker>, Instant)> {
        let mut s = self.state();
        let item = s.inflight.get_mut(&seq)?;
        item.acking = true;
        Some((item.acker.clone(), item.touched))
    }

    /// `f` of a leased item.
    pub fn with_item<T>(&self, seq: Seq, f: impl FnOnce(&Item) -> T) -> Option<T> {
        self.state().inflight.get(&seq).map(f)
    }

    /// Settled for good: the items leave, their groups free up; their handles to acknowledge.
    pub fn settle(&self, seqs: &[Seq]) -> Vec<Item> {
        let mut s = self.state();
        let mut done = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(item) = s.inflight.remove(seq) {
                unbusy(&mut s.busy, &item.group);
                s.settled.insert(*seq);
                s.settled_order.push_back(*seq);
                done.push(item);
            }
        }
        while s.settled_order.len() > MAX_REMEMBERED {
            if let Some(old) = s.settled_order.pop_front() {
                s.settled.remove(&old);
            }
        }
        drop(s);
        if !done.is_empty() {
            self.notify.notify_one();
        }
        done
    }

    /// Back in its place, to go again at `at`; forgotten if its partition is not held here
    /// any more (the server gives it to the next owner).
    pub fn retry(
        &self,
        seq: Seq,
        at: SystemTime,
        attempts: u32,
        first: SystemTime,
    ) -> Option<Arc<Acker>> {
        let mut s = self.state();
        let mut item = s.inflight.remove(&seq)?;
        unbusy(&mut s.busy, &item.group);
        item.due = Some(at);
        item.attempts = attempts;
        item.first_attempt = Some(first);
        let handed_back = match s.parts.get_mut(&item.partition) {
            Some(part) => {
                part.queue.insert(seq, item);
                None
            }
            // Its partition went to another daemon: the server gives it there (the caller
            // hands it back at once), before anything newer of its group.
            None => Some(item.acker),
        };
        drop(s);
        self.notify.notify_one();
        handed_back
    }

    /// When an item waiting only for its retry time comes due (as the last lease saw it).
    pub fn next_due(&self) -> Option<SystemTime> {
        self.state().next_due
    }

    /// Handles of items the server last heard of before `stale`, now marked as heard of: to
    /// tell it they are in progress, so their ack wait does not run out.
    pub fn to_refresh(&self, stale: Instant) -> Vec<Arc<Acker>> {
        let now = Instant::now();
        let mut s = self.state();
        let State {
            parts, inflight, ..
        } = &mut *s;
        let items = parts
            .values_mut()
            .flat_map(|p| p.queue.values_mut())
            .chain(inflight.values_mut());
        let mut out = Vec::new();
        for item in items.filter(|i| i.touched < stale && !i.acking) {
            item.touched = now;
            out.push(item.acker.clone());
        }
        out
    }

    /// Items held here waiting for a retry, and leased.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state();
        let retrying = s
            .parts
            .values()
            .flat_map(|p| p.queue.values())
            .filter(|i| i.due.is_some())
            .count();
        (retrying as u64, s.inflight.len() as u64)
    }
}

fn unbusy(busy: &mut HashMap<Arc<str>, u32>, group: &Option<Arc<str>>) {
    if let Some(g) = group
        && let Some(n) = busy.get_mut(g)
    {
        *n -= 1;
        if *n == 0 {
            busy.remove(g);
        }
    }
}
