//! The spool's state machine, run by the writer thread inside one transaction per batch of
//! commands: the SQLite tables plus what only this process needs to know (leases).
//!
//! Each log row carries a bitmask of the destinations it goes to. Each destination has a
//! durable cursor into the log and an in-memory scan position at or above it. Items between
//! the two are leased (in flight) or already settled; the cursor only passes an item once it
//! is settled, so after a crash every lease is simply due again. Delivering a batch moves the
//! cursor (one row update); nothing is written per delivered message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::{MAX_DESTINATION_ID, bit, storage};

mod cache;
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
    /// The highest seq in the log (`sqlite_sequence`): scans stop there.
    high: Seq,
    /// Rows that waited in the retry set and are settled since the last housekeeping: maybe
    /// owed by nobody now.
    freeable: Vec<Seq>,
    /// Every row at or below it was looked at by housekeeping once every configured cursor
    /// had passed it; the sweep resumes above it.
    gc_from: Seq,
    /// Destinations in the file that are not configured: `(bit, cursor)`. Their rows are kept.
    others: Vec<(i64, Seq)>,
    /// Parsed copies of recent messages, handed out with leases.
    cache: cache::ParsedCache,
    /// Lanes whose lease stopped at its scan budget: their worker should lease again at once.
    pub(super) rewake: Vec<String>,
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
            high: 0,
            freeable: Vec::new(),
            gc_from: 0,
            others: Vec::new(),
            cache: Default::default(),
            rewake: Vec::new(),
        };
        store.high = store.high_seq()?;
        for name in destinations {
            let id = store.ensure_destination(name, destinations)?;
            let lane = Lane {
                id,
                bit: bit(id),
                cursor: 0,
                scan: 0,
                in_flight: BTreeMap::new(),
                counts: Counts::default(),
                oldest: None,
            };
            store.lanes.insert(name.clone(), lane);
        }
        store.load()?;
        store.warn_unconfigured()?;
        Ok(store)
    }

    /// The highest seq ever given to a log row (AUTOINCREMENT keeps it after deletes).
    fn high_seq(&self) -> Result<Seq, SpoolError> {
        let high: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(storage)?;
        Ok(high.max(0) as Seq)
    }

    /// The destination's row; a new destination starts after everything already logged and
    /// takes the lowest free id (its bit in `log.dests`).
    fn ensure_destination(&self, name: &str, configured: &[String]) -> Result<i64, SpoolError> {
        let found: Option<i64> = self
            .conn
            .query_row("SELECT id FROM destination WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(storage)?;
        if let Some(id) = found {
            if !(1..=MAX_DESTINATION_ID).contains(&id) {
                return Err(SpoolError::Storage(format!(
                    "destination `{name}` has id {id} in the spool, beyond the {MAX_DESTINATION_ID} this version can route; start with a new spool.path"
                )));
            }
            return Ok(id);
        }
        let taken: HashSet<i64> = self
            .conn
            .prepare("SELECT id FROM destination")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(storage)?;
        let id = match (1..=MAX_DESTINATION_ID).find(|i| !taken.contains(i)) {
            Some(id) => id,
            None => self.reclaim_id(configured)?.ok_or_else(|| {
                SpoolError::Storage(format!(
                    "cannot add destination `{name}`: the spool holds {MAX_DESTINATION_ID} destinations, each still owed messages; configure fewer names or start with a new spool.path"
                ))
            })?,
        };
        self.conn
            .execute(
                "INSERT INTO destination (id, name, cursor) VALUES (?1, ?2, ?3)",
                params![id, name, self.high as i64],
            )
            .map_err(storage)?;
        Ok(id)
    }

    /// Forget a destination that is no longer configured and owes nothing, and give back its id.
    fn reclaim_id(&self, configured: &[String]) -> Result<Option<i64>, SpoolError> {
        for (id, name, cursor) in self.destination_rows()? {
            if configured.contains(&name) {
                continue;
            }
            if self.owed(id, cursor as Seq)? == 0 {
                self.conn
                    .execute("DELETE FROM destination WHERE id = ?1", [id])
                    .map_err(storage)?;
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Every destination in the file, configured or not: `(id, name, cursor)` by id.
    fn destination_rows(&self) -> Result<Vec<(i64, String, i64)>, SpoolError> {
        self.conn
            .prepare("SELECT id, name, cursor FROM destination ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(storage)
    }

    /// Messages a destination is still owed: log rows above its cursor plus its retry rows.
    fn owed(&self, id: i64, cursor: Seq) -> Result<i64, SpoolError> {
        self.conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM log WHERE seq > ?2 AND (dests & ?3) != 0)
                      + (SELECT COUNT(*) FROM retry WHERE dest = ?1)",
                params![id, cursor as i64, bit(id)],
                |r| r.get(0),
            )
            .map_err(storage)
    }

    /// Warn about destinations in the file that are no longer configured and still owed
    /// messages, and remember their cursors: their rows are kept for them.
    fn warn_unconfigured(&mut self) -> Result<(), SpoolError> {
        for (id, name, cursor) in self.destination_rows()? {
            if self.lanes.contains_key(&name) || !(1..=MAX_DESTINATION_ID).contains(&id) {
                continue;
            }
            self.others.push((bit(id), cursor.max(0) as Seq));
            let pending = self.owed(id, cursor.max(0) as Seq)?;
            if pending > 0 {
                tracing::warn!(destination = %name, pending,
                    "the spool holds messages for a destination no longer configured; they are kept until it is configured again");
            }
        }
        Ok(())
    }

    /// Cursors and counts from the file, at start, when nothing is leased yet. (A failed
    /// transaction restores a `Snapshot` instead: reloading would forget live leases.)
    ///
    /// One pass over the log counts what each lane is owed and recomputes the byte total in
    /// `stats`: spools written by versions that stored the total as an absolute value may have
    /// lost `dlq replay`'s additions. In one transaction, so a concurrent `dlq` cannot slip in
    /// between the read and the write.
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
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(storage)?;
        let loaded = (|| {
            let bytes = self.count(true)?;
            self.conn
                .execute("UPDATE stats SET log_bytes = ?1 WHERE id = 0", [bytes])
                .map_err(storage)?;
            self.conn.execute_batch("COMMIT").map_err(storage)
        })();
        if loaded.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        loaded
    }

    /// Recount what another process may have changed, keeping leases.
    pub fn recount(&mut self) -> Result<(), SpoolError> {
        self.count(false)?;
        Ok(())
    }

    /// Refresh every lane's counts and the byte total; with `all_bytes`, sum the log's bytes
    /// in the same pass (returned) rather than trusting `stats`.
    fn count(&mut self, all_bytes: bool) -> Result<i64, SpoolError> {
        self.high = self.high_seq()?;
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        let (summed, unscanned) = self.count_unscanned(&names, all_bytes)?;
        let bytes = match summed {
            Some(b) => b,
            None => self
                .conn
                .query_row("SELECT log_bytes FROM stats WHERE id = 0", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(storage)?,
        };
        self.bytes = bytes.max(0) as u64;
        for (name, unscanned) in names.into_iter().zip(unscanned) {
            let (id, scan) = (self.lanes[&name].id, self.lanes[&name].scan);
            // Retry rows above the scan position are counted by the retry set, not the log.
            let (retry_rows, attempted, above): (i64, i64, i64) = self
                .conn
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), COALESCE(SUM(seq > ?2), 0)
                     FROM retry WHERE dest = ?1",
                    params![id, scan as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
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
                    unscanned: unscanned.saturating_sub(above.max(0) as u64),
                    retry_rows: retry_rows as u64,
                    attempted: attempted as u64,
                    dead: dead as u64,
                };
            }
        }
        Ok(bytes)
    }

    /// Log rows above each lane's scan position routed to it (retry rows included): one pass
    /// over the log for all lanes together; with `all_bytes`, over the whole log, also
    /// summing its bytes.
    fn count_unscanned(
        &self,
        names: &[String],
        all_bytes: bool,
    ) -> Result<(Option<i64>, Vec<u64>), SpoolError> {
        let lowest = names.iter().map(|n| self.lanes[n].scan).min();
        let from = match lowest {
            _ if all_bytes => 0,
            Some(scan) => scan,
            None => return Ok((None, Vec::new())),
        };
        let mut columns = vec!["COALESCE(SUM(bytes), 0)".to_string()];
        columns.extend((0..names.len()).map(|i| {
            format!(
                "COALESCE(SUM(seq > ?{} AND (dests & ?{}) != 0), 0)",
                2 * i + 2,
                2 * i + 3
            )
        }));
        let sql = format!("SELECT {} FROM log WHERE seq > ?1", columns.join(", "));
        let mut values: Vec<i64> = vec![from as i64];
        for n in names {
            let lane = &self.lanes[n];
            values.extend([lane.scan as i64, lane.bit]);
        }
        let (bytes, counts) = self
            .conn
            .query_row(&sql, rusqlite::params_from_iter(values), |r| {
                let counts = (0..names.len())
                    .map(|i| r.get::<_, i64>(i + 1).map(|n| n.max(0) as u64))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((r.get::<_, i64>(0)?, counts))
            })
            .map_err(storage)?;
        Ok((all_bytes.then_some(bytes), counts))
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
        let mut routed = 0i64;
        for m in messages {
            // One statement for the dedupe check and the key: a key seen within the window
            // changes nothing (a duplicate); a new or expired one is (re)written.
            let changed = self
                .conn
                .prepare_cached(
                    "INSERT INTO seen (source, message_id, at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (source, message_id) DO UPDATE SET at = excluded.at WHERE seen.at <= ?4",
                )
                .and_then(|mut s| s.execute(params![m.source, m.message_id, now, horizon]))
                .map_err(storage)?;
            if changed == 0 {
                answers.push(Appended::Duplicate);
                continue;
            }
            answers.push(Appended::Stored);
            let mut dests = 0i64;
            for d in &m.destinations {
                if let Some(lane) = self.lanes.get_mut(d)
                    && dests & lane.bit == 0
                {
                    dests |= lane.bit;
                    lane.counts.unscanned += 1;
                }
            }
            if dests == 0 {
                continue;
            }
            let bytes = m.body.len() as i64;
            self.conn
                .prepare_cached("INSERT INTO log (source, message_id, group_id, body, bytes, enqueued_at, dests) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .and_then(|mut s| s.execute(params![m.source, m.message_id, m.group_id, m.body, bytes, now, dests]))
                .map_err(storage)?;
            self.high = self.conn.last_insert_rowid() as Seq;
            if let Some(parsed) = &m.parsed {
                self.cache
                    .insert(self.high, parsed.clone(), dests, m.body.len());
            }
            routed |= dests;
            added += bytes;
        }
        fresh.extend(
            self.lanes
                .iter()
                .filter(|(_, l)| routed & l.bit != 0)
                .map(|(name, _)| name.clone()),
        );
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
