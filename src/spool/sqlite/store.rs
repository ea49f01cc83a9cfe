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
use crate::message::Accepted;
use crate::spool::{Appended, Attempt, Depth, Leased, Rejected, Seq, SpoolError};

/// An item leased to a worker.
#[derive(Debug, Clone)]
struct Flight {
    group: Option<Arc<str>>,
    /// Leased from the retry set (its row stays there until settled) rather than the log.
    from_retry: bool,
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
    dead: u64,
}

pub(super) struct Lane {
    id: i64,
    cursor: Seq,
    scan: Seq,
    in_flight: BTreeMap<Seq, Flight>,
    counts: Counts,
    /// Enqueue time of the oldest unsettled item, refreshed by `tick`.
    oldest: Option<SystemTime>,
}

pub(super) struct Store {
    pub(super) conn: Connection,
    pub(super) lanes: HashMap<String, Lane>,
    bytes: u64,
    max_bytes: u64,
    dedupe_window: Duration,
}

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
        store.reset()?;
        store.warn_unconfigured()?;
        Ok(store)
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

    /// Forget every lease and reload from the file: at start, and after a failed transaction
    /// (whose in-memory effects cannot be trusted). Leased items become due again.
    pub fn reset(&mut self) -> Result<(), SpoolError> {
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

    pub fn append(
        &mut self,
        messages: Vec<Accepted>,
        touched: &mut Vec<String>,
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
                touched.push(name.clone());
            }
            self.bytes += bytes as u64;
        }
        self.save_bytes()?;
        Ok(Ok(answers))
    }

    fn save_bytes(&self) -> Result<(), SpoolError> {
        self.conn
            .prepare_cached("UPDATE stats SET log_bytes = ?1 WHERE id = 0")
            .and_then(|mut s| s.execute([self.bytes as i64]))
            .map_err(storage)?;
        Ok(())
    }

    pub fn reject(&mut self, rejected: Vec<Rejected>) -> Result<(), SpoolError> {
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

    /// Due retries first (they are the oldest of their groups), then the log from the scan
    /// position; an item whose group is busy moves to the retry set to wait its turn.
    pub fn lease(&mut self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        let mut out = self.lease_retries(destination, max)?;
        let released = self.scan_log(destination, max, &mut out)?;
        // The scan can release an item that only waited behind a crash's lost lease.
        if released && out.len() < max {
            let more = self.lease_retries(destination, max - out.len())?;
            out.extend(more);
        }
        Ok(out)
    }

    fn lease_retries(&mut self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        let out: Vec<Leased> = self
            .due_retries(destination, max, Some(ms(SystemTime::now())))?
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        if let Some(lane) = self.lanes.get_mut(destination) {
            for l in &out {
                let attempts = l.attempts;
                lane.in_flight.insert(
                    l.seq,
                    Flight {
                        group: l.group_id.clone(),
                        from_retry: true,
                        attempts,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Lease from the log into `out`; true when an item waiting in the retry set was released.
    fn scan_log(
        &mut self,
        destination: &str,
        max: usize,
        out: &mut Vec<Leased>,
    ) -> Result<bool, SpoolError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(false);
        };
        let id = lane.id;
        // Groups leased before this call: items of one group leased together stay together.
        let held: std::collections::HashSet<Arc<str>> = lane
            .in_flight
            .iter()
            .filter(|(seq, _)| !out.iter().any(|l| l.seq == **seq))
            .filter_map(|(_, f)| f.group.clone())
            .collect();
        let mut released = false;
        while out.len() < max {
            let rows: Vec<(i64, Option<String>, String)> = {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT l.seq, l.group_id, l.body FROM route r JOIN log l ON l.seq = r.seq
                         WHERE r.dest = ?1 AND r.seq > ?2 ORDER BY r.seq LIMIT ?3",
                    )
                    .map_err(storage)?;
                let rows = stmt
                    .query_map(
                        params![id, lane.scan as i64, (max - out.len()) as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(storage)?;
                rows.collect::<Result<_, _>>().map_err(storage)?
            };
            if rows.is_empty() {
                break;
            }
            for (seq, group, body) in rows {
                let seq = seq as Seq;
                lane.scan = seq;
                lane.counts.unscanned = lane.counts.unscanned.saturating_sub(1);
                let group: Option<Arc<str>> = group.map(Arc::from);
                if let Some(g) = &group {
                    // An older item of this group is leased or waits in the retry set: this one
                    // waits behind it, in the retry set, so the scan can move on.
                    let waiting = held.contains(g) || group_has_rows(&self.conn, id, g)?;
                    if waiting {
                        self.conn
                            .prepare_cached("INSERT INTO retry (dest, seq, group_id, due_at, attempts) VALUES (?1, ?2, ?3, NULL, 0)")
                            .and_then(|mut s| s.execute(params![id, seq as i64, g.as_ref()]))
                            .map_err(storage)?;
                        unroute(&self.conn, id, seq)?;
                        lane.counts.retry_rows += 1;
                        released |= release_next(&self.conn, lane, g)?;
                        continue;
                    }
                }
                lane.in_flight.insert(
                    seq,
                    Flight {
                        group: group.clone(),
                        from_retry: false,
                        attempts: 0,
                    },
                );
                out.push(Leased {
                    seq,
                    body: Arc::from(body),
                    group_id: group,
                    attempts: 0,
                    first_attempt: None,
                });
            }
        }
        Ok(released)
    }

    /// Retry-set rows due by `before` (any due time when `None`) that may go now: the oldest
    /// row of its group, not leased, and its group not leased.
    fn due_retries(
        &self,
        destination: &str,
        max: usize,
        before: Option<i64>,
    ) -> Result<Vec<(Leased, i64)>, SpoolError> {
        let Some(lane) = self.lanes.get(destination) else {
            return Ok(Vec::new());
        };
        let held: std::collections::HashSet<Arc<str>> = lane
            .in_flight
            .values()
            .filter_map(|f| f.group.clone())
            .collect();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.seq, r.group_id, r.attempts, r.first_attempt, l.body, r.due_at FROM retry r JOIN log l ON l.seq = r.seq
                 WHERE r.dest = ?1 AND r.due_at IS NOT NULL AND r.due_at <= ?2
                   AND (r.group_id IS NULL OR NOT EXISTS
                        (SELECT 1 FROM retry e WHERE e.dest = ?1 AND e.group_id = r.group_id AND e.seq < r.seq))
                 ORDER BY r.due_at, r.seq",
            )
            .map_err(storage)?;
        let mut rows = stmt
            .query(params![lane.id, before.unwrap_or(i64::MAX)])
            .map_err(storage)?;
        let mut out = Vec::new();
        // Skipped rows are bounded by what is in flight: each group has one candidate row.
        while out.len() < max {
            let Some(row) = rows.next().map_err(storage)? else {
                break;
            };
            let seq = row.get::<_, i64>(0).map_err(storage)? as Seq;
            let group: Option<Arc<str>> = row
                .get::<_, Option<String>>(1)
                .map_err(storage)?
                .map(Arc::from);
            if lane.in_flight.contains_key(&seq) || group.as_ref().is_some_and(|g| held.contains(g))
            {
                continue;
            }
            let attempts = row.get::<_, i64>(2).map_err(storage)? as u32;
            let first = row.get::<_, Option<i64>>(3).map_err(storage)?.map(from_ms);
            let body: String = if before.is_some() {
                row.get(4).map_err(storage)?
            } else {
                String::new()
            };
            let due = row.get::<_, i64>(5).map_err(storage)?;
            out.push((
                Leased {
                    seq,
                    body: Arc::from(body),
                    group_id: group,
                    attempts,
                    first_attempt: first,
                },
                due,
            ));
        }
        Ok(out)
    }

    /// When the next retry may be due: what `wait` sleeps towards.
    pub fn next_due(&self, destination: &str) -> Result<Option<SystemTime>, SpoolError> {
        Ok(self
            .due_retries(destination, 1, None)?
            .first()
            .map(|(_, due)| from_ms(*due)))
    }

    pub fn ack(&mut self, destination: &str, seqs: &[Seq]) -> Result<(), SpoolError> {
        for &seq in seqs {
            self.settle(destination, seq, |_, _| Ok(()))?;
        }
        Ok(())
    }

    pub fn retry_at(
        &mut self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        a: &Attempt,
    ) -> Result<(), SpoolError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        let Some(flight) = lane.in_flight.remove(&seq) else {
            return Ok(());
        };
        let p = params![
            lane.id,
            seq as i64,
            flight.group.as_deref(),
            ms(at),
            a.attempts,
            ms(a.first_attempt),
            ms(a.last_attempt),
            a.reason,
            a.status
        ];
        if flight.from_retry {
            self.conn
                .prepare_cached(
                    "UPDATE retry SET group_id = ?3, due_at = ?4, attempts = ?5, first_attempt = ?6, last_attempt = ?7, reason = ?8, status = ?9
                     WHERE dest = ?1 AND seq = ?2",
                )
                .and_then(|mut s| s.execute(p))
                .map_err(storage)?;
            if flight.attempts == 0 {
                lane.counts.attempted += 1;
            }
        } else {
            self.conn
                .prepare_cached(
                    "INSERT INTO retry (dest, seq, group_id, due_at, attempts, first_attempt, last_attempt, reason, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| s.execute(p))
                .map_err(storage)?;
            unroute(&self.conn, lane.id, seq)?;
            lane.counts.retry_rows += 1;
            lane.counts.attempted += 1;
        }
        self.advance(destination)
    }

    pub fn dead_letter(
        &mut self,
        destination: &str,
        seq: Seq,
        a: &Attempt,
    ) -> Result<(), SpoolError> {
        self.settle(destination, seq, |conn, seq| {
            let reason = if a.gave_up { "exhausted" } else { "permanent" };
            conn.prepare_cached(
                "INSERT INTO dead_letter (destination, source, message_id, group_id, body, reason, error, attempts, first_attempt, last_attempt, status, response)
                 SELECT ?1, source, message_id, group_id, body, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM log WHERE seq = ?9",
            )
            .and_then(|mut s| {
                s.execute(params![destination, reason, a.reason, a.attempts, ms(a.first_attempt), ms(a.last_attempt), a.status, a.response, seq as i64])
            })
            .map_err(storage)?;
            Ok(())
        })?;
        if let Some(lane) = self.lanes.get_mut(destination) {
            lane.counts.dead += 1;
        }
        Ok(())
    }

    /// The item is done for this destination: record it (`then`), drop its retry row, let the
    /// next item of its group go, and move the cursor.
    fn settle(
        &mut self,
        destination: &str,
        seq: Seq,
        then: impl FnOnce(&Connection, Seq) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        // Not leased (e.g. forgotten by a reset after a failed commit): it will be leased again.
        let Some(flight) = lane.in_flight.remove(&seq) else {
            return Ok(());
        };
        then(&self.conn, seq)?;
        if flight.from_retry {
            self.conn
                .prepare_cached("DELETE FROM retry WHERE dest = ?1 AND seq = ?2")
                .and_then(|mut s| s.execute(params![lane.id, seq as i64]))
                .map_err(storage)?;
            lane.counts.retry_rows = lane.counts.retry_rows.saturating_sub(1);
            if flight.attempts > 0 {
                lane.counts.attempted = lane.counts.attempted.saturating_sub(1);
            }
        } else {
            unroute(&self.conn, lane.id, seq)?;
        }
        if let Some(g) = &flight.group {
            release_next(&self.conn, lane, g)?;
        }
        self.advance(destination)
    }

    /// Move the durable cursor up to the oldest item still leased from the log.
    fn advance(&mut self, destination: &str) -> Result<(), SpoolError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        let oldest_leased = lane
            .in_flight
            .iter()
            .find(|(_, f)| !f.from_retry)
            .map(|(s, _)| *s);
        let cursor = oldest_leased.map(|s| s - 1).unwrap_or(lane.scan);
        if cursor != lane.cursor {
            lane.cursor = cursor;
            self.conn
                .prepare_cached("UPDATE destination SET cursor = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(params![cursor as i64, lane.id]))
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Housekeeping between batches: forget delivered log rows and expired dedupe keys, and
    /// refresh the oldest-pending times. Bounded work per call.
    pub fn collect_garbage(&mut self) -> Result<(), SpoolError> {
        const CHUNK: i64 = 5000;
        // Rows no destination owes any more (settled items leave `route` as they settle).
        let candidates =
            "SELECT seq FROM log WHERE NOT EXISTS (SELECT 1 FROM route r WHERE r.seq = log.seq)
             AND NOT EXISTS (SELECT 1 FROM retry r WHERE r.seq = log.seq) ORDER BY seq LIMIT ?1";
        let freed: i64 = self
            .conn
            .query_row(
                &format!("SELECT COALESCE(SUM(bytes), 0) FROM log WHERE seq IN ({candidates})"),
                [CHUNK],
                |r| r.get(0),
            )
            .map_err(storage)?;
        if freed > 0 {
            self.conn
                .execute(
                    &format!("DELETE FROM log WHERE seq IN ({candidates})"),
                    [CHUNK],
                )
                .map_err(storage)?;
            self.bytes = self.bytes.saturating_sub(freed as u64);
            self.save_bytes()?;
        }
        let horizon = ms(SystemTime::now()) - self.dedupe_window.as_millis() as i64;
        self.conn
            .execute(
                "DELETE FROM seen WHERE (source, message_id) IN (SELECT source, message_id FROM seen WHERE at < ?1 LIMIT ?2)",
                params![horizon, CHUNK],
            )
            .map_err(storage)?;
        Ok(())
    }

    /// Refresh each lane's oldest unsettled enqueue time (two index probes per lane).
    pub fn refresh_oldest(&mut self) -> Result<(), SpoolError> {
        for lane in self.lanes.values_mut() {
            let oldest: Option<i64> = self
                .conn
                .query_row(
                    "SELECT MIN(enqueued_at) FROM log WHERE seq IN (
                        (SELECT MIN(seq) FROM route WHERE dest = ?1 AND seq > ?2),
                        (SELECT MIN(seq) FROM retry WHERE dest = ?1))",
                    params![lane.id, lane.cursor as i64],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            lane.oldest = oldest.map(from_ms);
        }
        Ok(())
    }

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

/// The log item is no longer owed from the log to this destination (settled, or moved to the
/// retry set).
fn unroute(conn: &Connection, dest: i64, seq: Seq) -> Result<(), SpoolError> {
    conn.prepare_cached("DELETE FROM route WHERE dest = ?1 AND seq = ?2")
        .and_then(|mut s| s.execute(params![dest, seq as i64]))
        .map_err(storage)?;
    Ok(())
}

fn group_has_rows(conn: &Connection, dest: i64, group: &str) -> Result<bool, SpoolError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM retry WHERE dest = ?1 AND group_id = ?2)")
        .and_then(|mut s| s.query_row(params![dest, group], |r| r.get(0)))
        .map_err(storage)
}

/// When nothing of `group` is leased or in backoff any more, make its oldest waiting item due.
/// One at a time: the next is released when that one settles, so a group never overtakes
/// itself.
fn release_next(conn: &Connection, lane: &Lane, group: &Arc<str>) -> Result<bool, SpoolError> {
    if lane
        .in_flight
        .values()
        .any(|f| f.group.as_ref() == Some(group))
    {
        return Ok(false);
    }
    let busy: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM retry WHERE dest = ?1 AND group_id = ?2 AND due_at IS NOT NULL)")
        .and_then(|mut s| s.query_row(params![lane.id, group.as_ref()], |r| r.get(0)))
        .map_err(storage)?;
    if busy {
        return Ok(false);
    }
    let n = conn
        .prepare_cached(
            "UPDATE retry SET due_at = ?3 WHERE dest = ?1 AND seq =
           (SELECT MIN(seq) FROM retry WHERE dest = ?1 AND group_id = ?2 AND due_at IS NULL)",
        )
        .and_then(|mut s| s.execute(params![lane.id, group.as_ref(), ms(SystemTime::now())]))
        .map_err(storage)?;
    Ok(n > 0)
}
