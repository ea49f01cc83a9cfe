//! The spool's state machine, run by the writer thread inside one transaction per batch of
//! commands: the SQLite tables plus what only this process needs to know (leases).
//!
//! Each destination has a durable cursor into the log and an in-memory scan position at or
//! above it. Items between the two are leased (in flight) or already settled; the cursor only
//! passes an item once it is settled, so after a crash every lease is simply due again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::storage;

mod housekeeping;
mod lease;
mod settle;
mod snapshot;
use crate::message::Accepted;
use crate::spool::{Appended, Depth, Rejected, Seq, SpoolError};
pub(super) use snapshot::Snapshot;

/// An item leased to a worker.
#[derive(Debug, Clone)]
struct Flight {
    /// Holds the group back while leased: newer items of it wait.
    group: Option<Arc<str>>,
    /// Leased from the retry set (its row stays there until settled) rather than the log.
    from_retry: bool,
    /// Attempts made before this lease, to keep `Depth::retrying` right.
    attempts: u32,
}

/// Counts behind `Depth`, kept up to date by every change and recounted when another process
/// (`switchyard dlq`) has written.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Routes above the scan position.
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
    /// The `destination` row: routes and retry rows name destinations by it.
    id: i64,
    /// Durable: every route at or below it is settled. A restart scans from here.
    cursor: Seq,
    /// How far this process has read the routes; at or above `cursor`.
    scan: Seq,
    /// Leased items by seq; ordered so the oldest one leased from the log bounds the cursor.
    in_flight: BTreeMap<Seq, Flight>,
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
    /// `spool.max_bytes`: appends beyond it are refused (`Full`).
    max_bytes: u64,
    /// `spool.dedupe_window`.
    dedupe_window: Duration,
    /// Log rows settled somewhere since the last housekeeping: maybe owed by nobody now.
    freeable: Vec<Seq>,
    /// Where the slow sweep for rows nobody owes (missed by `freeable`, e.g. after a crash)
    /// resumes.
    sweep_from: i64,
    /// Lanes whose lease stopped at its scan budget: their worker should lease again at once.
    pub(super) rewake: Vec<String>,
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

impl Store {
    pub fn new(
        conn: Connection,
        destinations: &[String],
        max_bytes: u64,
        dedupe_window: Duration,
    ) -> Result<Self, SpoolError> {
        let mut store = Self {
            conn,
            lanes: HashMap::new(),
            bytes: 0,
            max_bytes,
            dedupe_window,
            freeable: Vec::new(),
            sweep_from: 0,
            rewake: Vec::new(),
        };
        for name in destinations {
            let id = store.ensure_destination(name)?;
            let lane = Lane {
                id,
                cursor: 0,
                scan: 0,
                in_flight: BTreeMap::new(),
                counts: Counts::default(),
                oldest: None,
            };
            store.lanes.insert(name.clone(), lane);
        }
        store.repair_bytes()?;
        store.load()?;
        store.warn_unconfigured()?;
        Ok(store)
    }

    /// Recompute `stats` from the log once at start: spools written by versions that stored
    /// the total as an absolute value may have lost `dlq replay`'s additions. One scan of the
    /// log, in one statement so a concurrent `dlq` cannot slip in between the read and write.
    fn repair_bytes(&self) -> Result<(), SpoolError> {
        self.conn
            .execute(
                "UPDATE stats SET log_bytes = (SELECT COALESCE(SUM(bytes), 0) FROM log) WHERE id = 0",
                [],
            )
            .map_err(storage)?;
        Ok(())
    }

    /// The destination's row; a new destination starts after everything already logged.
    fn ensure_destination(&self, name: &str) -> Result<i64, SpoolError> {
        let found = self
            .conn
            .query_row("SELECT id FROM destination WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(storage)?;
        if let Some(id) = found {
            return Ok(id);
        }
        let high: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(storage)?;
        self.conn
            .execute(
                "INSERT INTO destination (name, cursor) VALUES (?1, ?2)",
                params![name, high],
            )
            .map_err(storage)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn warn_unconfigured(&self) -> Result<(), SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT d.name, (SELECT COUNT(*) FROM route r WHERE r.dest = d.id AND r.seq > d.cursor) + (SELECT COUNT(*) FROM retry r WHERE r.dest = d.id) FROM destination d")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(storage)?;
        for row in rows {
            let (name, pending) = row.map_err(storage)?;
            if pending > 0 && !self.lanes.contains_key(&name) {
                tracing::warn!(destination = %name, pending,
                    "the spool holds messages for a destination no longer configured; they are kept until it is configured again");
            }
        }
        Ok(())
    }

    /// Cursors and counts from the file, at start, when nothing is leased yet. (A failed
    /// transaction restores a `Snapshot` instead: reloading would forget live leases.)
    fn load(&mut self) -> Result<(), SpoolError> {
        for lane in self.lanes.values_mut() {
            lane.cursor = self
                .conn
                .query_row(
                    "SELECT cursor FROM destination WHERE id = ?1",
                    [lane.id],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(storage)? as Seq;
            lane.scan = lane.cursor;
            lane.in_flight.clear();
        }
        self.recount()
    }

    /// Recount what another process may have changed, keeping leases.
    pub fn recount(&mut self) -> Result<(), SpoolError> {
        self.bytes = self
            .conn
            .query_row("SELECT log_bytes FROM stats WHERE id = 0", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(storage)?
            .max(0) as u64;
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        for name in names {
            let (id, scan) = {
                let l = &self.lanes[&name];
                (l.id, l.scan as i64)
            };
            let unscanned: i64 = self
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM route WHERE dest = ?1 AND seq > ?2",
                    params![id, scan],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            let (retry_rows, attempted): (i64, i64) = self
                .conn
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0) FROM retry WHERE dest = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(storage)?;
            let dead: i64 = self
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM dead_letter WHERE destination = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            if let Some(lane) = self.lanes.get_mut(&name) {
                lane.counts = Counts {
                    unscanned: unscanned as u64,
                    retry_rows: retry_rows as u64,
                    attempted: attempted as u64,
                    dead: dead as u64,
                };
            }
        }
        Ok(())
    }

    /// Dedupe, log and route `messages`; `fresh` gets each destination given new work. The
    /// outer error fails the transaction; the inner one (`Full`) only answers this caller.
    pub fn append(
        &mut self,
        messages: &[Accepted],
        fresh: &mut Vec<String>,
    ) -> Result<Result<Vec<Appended>, SpoolError>, SpoolError> {
        let incoming: u64 = messages.iter().map(|m| m.body.len() as u64).sum();
        if self.bytes + incoming > self.max_bytes {
            return Ok(Err(SpoolError::Full {
                used: self.bytes,
                max: self.max_bytes,
            }));
        }
        let now = ms(SystemTime::now());
        let horizon = now - self.dedupe_window.as_millis() as i64;
        let mut answers = Vec::with_capacity(messages.len());
        let mut added = 0;
        for m in messages {
            let seen: Option<i64> = self
                .conn
                .prepare_cached("SELECT at FROM seen WHERE source = ?1 AND message_id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![m.source, m.message_id], |r| r.get(0))
                        .optional()
                })
                .map_err(storage)?;
            if seen.is_some_and(|at| at > horizon) {
                answers.push(Appended::Duplicate);
                continue;
            }
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO seen (source, message_id, at) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![m.source, m.message_id, now]))
                .map_err(storage)?;
            answers.push(Appended::Stored);
            let targets: Vec<&String> = m
                .destinations
                .iter()
                .filter(|d| self.lanes.contains_key(*d))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let bytes = m.body.len() as i64;
            self.conn
                .prepare_cached("INSERT INTO log (source, message_id, group_id, body, bytes, enqueued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .and_then(|mut s| s.execute(params![m.source, m.message_id, m.group_id, m.body, bytes, now]))
                .map_err(storage)?;
            let seq = self.conn.last_insert_rowid();
            for name in targets {
                let Some(lane) = self.lanes.get_mut(name) else {
                    continue;
                };
                self.conn
                    .prepare_cached("INSERT INTO route (dest, seq) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![lane.id, seq]))
                    .map_err(storage)?;
                lane.counts.unscanned += 1;
                fresh.push(name.clone());
            }
            added += bytes;
        }
        self.add_bytes(added)?;
        Ok(Ok(answers))
    }

    /// Change the byte total by `delta`, in memory and in the file. A delta, not the total:
    /// `dlq replay` adds to the file's total between our reads of it (see `bytes`).
    fn add_bytes(&mut self, delta: i64) -> Result<(), SpoolError> {
        if delta == 0 {
            return Ok(());
        }
        self.conn
            .prepare_cached("UPDATE stats SET log_bytes = log_bytes + ?1 WHERE id = 0")
            .and_then(|mut s| s.execute([delta]))
            .map_err(storage)?;
        self.bytes = self.bytes.saturating_add_signed(delta);
        Ok(())
    }

    /// Keep messages refused at ingest as dead letters with reason `invalid`.
    pub fn reject(&mut self, rejected: &[Rejected]) -> Result<(), SpoolError> {
        for r in rejected {
            let message_id = serde_json::from_str::<serde_json::Value>(&r.raw)
                .ok()
                .and_then(|v| {
                    v.get("messageId")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                });
            self.conn
                .prepare_cached(
                    "INSERT INTO dead_letter (destination, source, message_id, body, reason, error, attempts, last_attempt)
                     VALUES (NULL, ?1, ?2, ?3, 'invalid', ?4, 0, ?5)",
                )
                .and_then(|mut s| s.execute(params![r.source, message_id, r.raw, format!("batch index {}: {}", r.index, r.error), ms(r.at)]))
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Counts for status and metrics, from memory.
    pub fn depth(&self, destination: &str) -> Depth {
        let Some(lane) = self.lanes.get(destination) else {
            return Depth::default();
        };
        let c = lane.counts;
        let (from_retry, retrying_leased) = lane
            .in_flight
            .values()
            .filter(|f| f.from_retry)
            .fold((0u64, 0u64), |(n, a), f| {
                (n + 1, a + u64::from(f.attempts > 0))
            });
        Depth {
            pending: (c.unscanned + c.retry_rows).saturating_sub(from_retry),
            in_flight: lane.in_flight.len() as u64,
            retrying: c.attempted.saturating_sub(retrying_leased),
            dead_letters: c.dead,
            oldest_pending: lane.oldest,
        }
    }
}
