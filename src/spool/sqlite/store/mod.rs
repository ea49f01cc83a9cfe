//! The spool's state machine, run by the writer thread inside one transaction per batch of
//! commands: the SQLite tables plus what only this process needs to know (leases).
//!
//! Each log row carries a bitmask of the destinations it goes to. Each destination has a
//! durable cursor into the log and an in-memory scan position at or above it. Items between
//! the two are leased (in flight) or already settled; the cursor only passes an item once it
//! is settled, so after a crash every lease is simply due again. Delivering a batch moves the
//! cursor (one row update); nothing is written per delivered message.
//!
//! Layout: this file holds the state (`Store`, one `Lane` per destination); `open.rs` builds
//! it from the file; `append.rs` takes messages in; `lease.rs` hands them out; `retry_set.rs`
//! keeps items out of log order (backoff, or behind their group); `settle.rs` records
//! outcomes; `hold.rs` keeps items behind their group's item in flight, in memory;
//! `count.rs` keeps the counts and byte total; `seen.rs` is the dedupe index;
//! `housekeeping.rs` frees rows and expires dedupe ids between batches; `snapshot.rs` puts memory back after a rollback; `cache.rs` keeps parsed messages
//! for the destinations that have yet to lease them; `tail.rs` keeps the newest rows, so a
//! lane that keeps up leases them from memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use crate::spool::Seq;
use crate::spool::sqlite::{Bounds, StorageError};

mod append;
mod cache;
mod count;
mod hold;
mod housekeeping;
mod lease;
mod open;
mod retry_set;
mod seen;
mod settle;
mod snapshot;
mod tail;
pub(super) use seen::digest;
pub(super) use snapshot::Snapshot;

/// An item leased to a worker.
#[derive(Debug, Clone)]
struct Flight {
    /// Holds the group back while leased: newer items of it wait.
    group: Option<Arc<str>>,
    /// Leased from the retry set (its row stays there until settled) rather than the log.
    from_retry: bool,
    /// Leased from the hold: recorded in `destination.held` until settled, so, like a retry,
    /// it does not keep the cursor below itself.
    from_hold: bool,
    /// Attempts made before this lease, to keep `Depth::retrying` right.
    attempts: u32,
}

/// Counts behind `Depth`, kept up to date by every change and recounted when another process
/// (`switchyard dlq`) has written.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Log rows routed to the destination above the scan position.
    unscanned: u64,
    /// Rows in the retry set, waiting behind a group or in backoff.
    retry_rows: u64,
    /// Of those, rows that failed at least once.
    attempted: u64,
    /// Dead letters of this destination.
    dead: u64,
}

/// One destination's view of the spool.
pub(super) struct Lane {
    /// The `destination` row: retry rows name destinations by it.
    id: i64,
    /// `bit(id)`: this destination's bit in `log.dests`.
    bit: i64,
    /// Durable: every route at or below it is settled. A restart scans from here.
    cursor: Seq,
    /// How far this process has read the log; at or above `cursor`.
    scan: Seq,
    /// Leased items by seq; ordered so the oldest one leased from the log bounds the cursor.
    in_flight: BTreeMap<Seq, Flight>,
    /// Items waiting in memory behind an older item of their group, and which groups are
    /// busy or have rows in the retry set (`hold.rs`).
    hold: hold::Hold,
    counts: Counts,
    /// Enqueue time of the oldest unsettled item, refreshed by `tick`.
    oldest: Option<SystemTime>,
}

pub(super) struct Store {
    /// The only write connection of this process (the writer thread owns the store).
    pub(super) conn: Connection,
    /// Configured destinations by name.
    pub(super) lanes: HashMap<String, Lane>,
    /// Bytes in the log. `stats` holds the same total in the file; every writer (this process
    /// and `dlq replay`) changes it by what its transaction added or removed, never by
    /// overwriting it, so no writer erases another's change.
    bytes: u64,
    /// `spool.max_bytes`, `max_refused_bytes`, `dedupe_window` and `dedupe_max_keys`.
    bounds: Bounds,
    /// Bytes kept of messages refused at ingest (their dead letters' bodies and errors).
    refused_bytes: u64,
    /// The highest seq in the log (`sqlite_sequence`): scans stop there.
    high: Seq,
    /// Rows that waited in the retry set and are settled since the last housekeeping: maybe
    /// owed by nobody now.
    freeable: Vec<Seq>,
    /// Every row at or below it was looked at by housekeeping once every configured cursor
    /// had passed it; the sweep resumes above it.
    gc_from: Seq,
    /// The dedupe index: ids accepted within the window.
    seen: seen::Seen,
    /// Destinations in the file that are not configured: `(bit, cursor)`. Their rows are kept.
    others: Vec<(i64, Seq)>,
    /// Parsed copies of recent messages, handed out with leases.
    cache: cache::ParsedCache,
    /// The newest log rows, leased from memory while a lane keeps up.
    tail: tail::Tail,
    /// Lanes whose lease stopped at its scan budget: their worker should lease again at once.
    pub(super) rewake: Vec<String>,
    /// The last list of destination names an append routed, with its bits: ingest hands
    /// every message routed alike the same shared names, so most messages are routed by
    /// comparing pointers instead of looking each name up. Cleared when the lanes change.
    last_route: Option<(Vec<Arc<str>>, i64)>,
    /// `PRAGMA synchronous` is FULL (each commit fsyncs the WAL: `Some(true)`), NORMAL
    /// (`Some(false)`), or unknown after an error setting it (`None`).
    synced: Option<bool>,
}

impl Lane {
    fn new(id: i64) -> Self {
        Self {
            id,
            bit: crate::spool::sqlite::schema::bit(id),
            cursor: 0,
            scan: 0,
            in_flight: BTreeMap::new(),
            hold: Default::default(),
            counts: Counts::default(),
            oldest: None,
        }
    }

    /// Every row at or below it is done for this destination: its cursor, or below the
    /// oldest item it holds in memory (whose row must stay). Housekeeping frees up to here.
    fn floor(&self) -> Seq {
        match self.hold.oldest() {
            Some(held) => self.cursor.min(held - 1),
            None => self.cursor,
        }
    }
}

impl Store {
    /// Whether the next commits fsync (FULL) or not (NORMAL); set between transactions. An
    /// error leaves the mode unknown: it is set again before the next transaction.
    pub fn set_durable(&mut self, durable: bool) -> Result<(), StorageError> {
        if self.synced == Some(durable) {
            return Ok(());
        }
        self.synced = None;
        let mode = if durable { "FULL" } else { "NORMAL" };
        self.conn.pragma_update(None, "synchronous", mode)?;
        self.synced = Some(durable);
        Ok(())
    }

    /// The dedupe index: ids held, ids forgotten before their window ended since start and
    /// since the last call, and when the oldest id held was accepted.
    pub fn dedupe(&mut self) -> (usize, u64, u64, Option<SystemTime>) {
        let seen = &mut self.seen;
        let new = seen.forgotten.saturating_sub(seen.reported);
        seen.reported = seen.forgotten;
        (seen.len(), seen.forgotten, new, seen.oldest().map(from_ms))
    }

    /// Write what the transaction keeps in memory until its end: the held seqs of every lane
    /// whose hold changed, and the dedupe ids it added (one journal row). Once per
    /// transaction, before its commit, so the file and memory agree after a crash.
    pub fn save(&mut self) -> Result<(), StorageError> {
        self.seen.save(&self.conn)?;
        for lane in self.lanes.values_mut().filter(|l| l.hold.dirty) {
            let held = lane.hold.encode();
            self.conn
                .prepare_cached("UPDATE destination SET held = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(rusqlite::params![held, lane.id]))?;
            lane.hold.dirty = false;
        }
        Ok(())
    }
}

/// The bits of the destinations, among `(bit, position)` pairs, whose position (cursor or
/// scan) is below `seq`: those that have not passed it yet.
fn below(positions: &[(i64, Seq)], seq: Seq) -> i64 {
    positions
        .iter()
        .filter(|(_, at)| *at < seq)
        .fold(0, |mask, (bit, _)| mask | bit)
}

/// Times are stored as Unix milliseconds.
pub fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}
