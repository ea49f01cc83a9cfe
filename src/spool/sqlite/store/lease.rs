//! Leasing: due retries first, then items released from the hold, then the log from the
//! scan position, keeping each group's items in order for each destination.
//!
//! Invariants kept here: an item is leased only when nothing older of its group is leased,
//! held or waiting in the retry set (otherwise it waits: in memory, behind an item in flight
//! or in backoff, see `hold.rs`, or parked in the retry set when memory is full, see
//! `retry_set.rs`); the scan
//! position only moves past rows this lane has read; one lease looks at no more than
//! `SCAN_BUDGET` seqs, so one transaction stays short, and a lane that stopped at the budget
//! is woken to lease again at once.

use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::cache::ParsedCache;
use super::hold::{MAX_HELD, Waiting};
use super::retry_set::park;
use super::tail::Tail;
use super::{Flight, Lane, Store, ms};
use crate::message::Parsed;
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::body::Bodies;
use crate::spool::{Leased, Seq};

/// Most log rows (by seq span) one lease looks at.
const SCAN_BUDGET: u64 = 1000;

impl Store {
    /// Due retries first (they are the oldest of their groups), then the log from the scan
    /// position; an item whose group is busy moves to the retry set to wait its turn.
    pub fn lease(&mut self, destination: &str, max: usize) -> Result<Vec<Leased>, StorageError> {
        if let Some(lane) = self.lanes.get_mut(destination) {
            lane.hold.next_epoch();
        }
        let mut out = self.lease_retries(destination, max)?;
        self.lease_ready(destination, max, &mut out)?;
        let released = self.scan_log(destination, max, &mut out)?;
        // The scan can release an item that only waited behind a crash's lost lease.
        if released && out.len() < max {
            let more = self.lease_retries(destination, max - out.len())?;
            out.extend(more);
        }
        Ok(out)
    }

    fn lease_retries(
        &mut self,
        destination: &str,
        max: usize,
    ) -> Result<Vec<Leased>, StorageError> {
        if self
            .lanes
            .get(destination)
            .is_some_and(|l| l.counts.retry_rows == 0)
        {
            return Ok(Vec::new());
        }
        let out: Vec<Leased> = self
            .due_retries(destination, max, Some(ms(SystemTime::now())))?
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        if let Some(lane) = self.lanes.get_mut(destination) {
            for l in &out {
                let attempts = l.attempts;
                if let Some(g) = &l.group_id {
                    lane.hold.leased(g);
                }
                lane.in_flight.insert(
                    l.seq,
                    Flight {
                        group: l.group_id.clone(),
                        from_retry: true,
                        from_hold: false,
                        attempts,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Lease the items the hold released (their group's older item settled) into `out`.
    fn lease_ready(
        &mut self,
        destination: &str,
        max: usize,
        out: &mut Vec<Leased>,
    ) -> Result<(), StorageError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        while out.len() < max {
            let Some((group, items)) = lane.hold.take_ready(max - out.len()) else {
                break;
            };
            for Waiting { seq, parsed, body } in items {
                lane.in_flight.insert(
                    seq,
                    Flight {
                        group: Some(group.clone()),
                        from_retry: false,
                        from_hold: true,
                        attempts: 0,
                    },
                );
                let (body, corrupted) = match body {
                    Some(body) => (body, None),
                    None => Bodies::of(&self.conn, seq)?,
                };
                out.push(Leased {
                    seq,
                    body,
                    parsed,
                    group_id: Some(group.clone()),
                    attempts: 0,
                    first_attempt: None,
                    corrupted,
                });
            }
        }
        Ok(())
    }

    /// Lease from the log into `out`; true when an item waiting in the retry set was released.
    fn scan_log(
        &mut self,
        destination: &str,
        max: usize,
        out: &mut Vec<Leased>,
    ) -> Result<bool, StorageError> {
        let high = self.high;
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(false);
        };
        let mut scan = Scan {
            conn: &self.conn,
            cache: &mut self.cache,
            tail: &self.tail,
            lane,
            released: false,
        };
        // Items of busy groups are moved aside without counting towards `max`, and rows of
        // other destinations are skipped; a budget (a span of seqs) keeps one lease (and so
        // one transaction) short when a hot group has a long backlog or this destination gets
        // few of the rows.
        let mut budget = SCAN_BUDGET;
        // Reading stops once the hold is full: memory stays bounded whatever the backlog.
        while out.len() < max && scan.lane.scan < high && scan.lane.hold.len() < MAX_HELD {
            if budget == 0 {
                self.rewake.push(destination.to_string());
                break;
            }
            let before = scan.lane.scan;
            scan.window(high.min(before + budget), max - out.len(), out)?;
            budget = budget.saturating_sub(scan.lane.scan - before);
        }
        Ok(scan.released)
    }
}

/// One lease's pass over the log for one lane: the parts of the store it reads and changes.
struct Scan<'a> {
    conn: &'a Connection,
    cache: &'a mut ParsedCache,
    tail: &'a Tail,
    lane: &'a mut Lane,
    /// An item waiting in the retry set was released: the caller leases retries again.
    released: bool,
}

impl Scan<'_> {
    /// Lease up to `want` of the lane's rows in `(scan, upto]` into `out`.
    fn window(
        &mut self,
        upto: Seq,
        want: usize,
        out: &mut Vec<Leased>,
    ) -> Result<(), StorageError> {
        let rows = match self.tail.between(self.lane.scan, upto, self.lane.bit, want) {
            // Served from memory: nothing of this lane waits in the retry set to be asked about.
            Some(kept) if self.lane.counts.retry_rows == 0 => kept
                .into_iter()
                // The text comes along even when the message is parsed already: it costs
                // no copy here, and an adapter may send it as it is (`Item::raw`).
                .map(|r| (r.seq, r.group.clone(), r.body.clone(), None, false))
                .collect(),
            _ => rows_between(self.conn, self.lane, upto, want)?,
        };
        // Fewer rows than asked: nothing else of ours up to `upto`.
        let exhausted = rows.len() < want;
        for row in rows {
            self.take(row, out)?;
        }
        if exhausted {
            self.lane.scan = upto;
        }
        Ok(())
    }

    /// One row read by the lane: passed by when the retry set holds it already; behind its
    /// group when an older item of it waits in the retry set (there too) or is in flight or
    /// held (in memory); leased into `out` otherwise.
    fn take(&mut self, row: Row, out: &mut Vec<Leased>) -> Result<(), StorageError> {
        let (seq, group, body, corrupted, in_retry) = row;
        self.lane.scan = seq;
        let parsed = self.parsed(seq);
        if in_retry {
            // Moved to the retry set before a crash: it is leased from there.
            return Ok(());
        }
        self.lane.counts.unscanned = self.lane.counts.unscanned.saturating_sub(1);
        if let Some(g) = &group {
            if self.lane.hold.in_retry(g) {
                // Behind its group's backoff: in memory while there is room and nothing of
                // the group waits in SQL (without the parsed copy: it may wait minutes).
                if !self.lane.hold.parked_in_sql(g) && self.lane.hold.len() < MAX_HELD {
                    let (parsed, body) = (Parsed::default(), None);
                    self.lane.hold.park(g, Waiting { seq, parsed, body });
                } else {
                    self.released |= park(self.conn, self.lane, seq, g)?;
                }
                return Ok(());
            }
            if self.lane.hold.must_wait(g) {
                // It keeps the text it was read with, unless that text is damaged (read
                // again, and flagged, when its turn comes).
                let body = corrupted.is_none().then_some(body);
                self.lane.hold.park(g, Waiting { seq, parsed, body });
                return Ok(());
            }
            self.lane.hold.leased(g);
        }
        self.lane.in_flight.insert(
            seq,
            Flight {
                group: group.clone(),
                from_retry: false,
                from_hold: false,
                attempts: 0,
            },
        );
        out.push(Leased {
            seq,
            body,
            parsed,
            group_id: group,
            attempts: 0,
            first_attempt: None,
            corrupted,
        });
        Ok(())
    }

    /// The lane's copy of the parsed message, if the cache keeps one (ingest's parse of a
    /// recent message); otherwise a cell of its own: the worker parses what its adapter
    /// reads of the body (see `Destination::reads`), which is often not the whole message,
    /// so a cell shared with the lanes behind would mostly stay empty while taking room
    /// from ingest's parses.
    fn parsed(&mut self, seq: Seq) -> Parsed {
        self.cache.take(seq, self.lane.bit).unwrap_or_default()
    }
}

/// A log row as a lease reads it: seq, group, text, why the text cannot be trusted (never
/// for rows kept in memory), and whether the destination's retry set already holds it (the
/// scan passes those by: they are leased from the retry set).
type Row = (Seq, Option<Arc<str>>, Arc<str>, Option<String>, bool);

/// Up to `limit` log rows in `(scan, upto]` routed to `lane`.
fn rows_between(
    conn: &Connection,
    lane: &Lane,
    upto: Seq,
    limit: usize,
) -> Result<Vec<Row>, StorageError> {
    // Whether the retry set holds a row is asked only while it holds any of this lane's.
    let sql = if lane.counts.retry_rows > 0 {
        "SELECT seq, group_id, body, crc, EXISTS (SELECT 1 FROM retry r WHERE r.dest = ?5 AND r.seq = log.seq), body_at, bytes
         FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) != 0 ORDER BY seq LIMIT ?4"
    } else {
        "SELECT seq, group_id, body, crc, ?5 IS NULL, body_at, bytes
         FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) != 0 ORDER BY seq LIMIT ?4"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![
        lane.scan as i64,
        upto as i64,
        lane.bit,
        limit as i64,
        lane.id
    ])?;
    let (mut out, mut bodies) = (Vec::new(), Bodies::default());
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as Seq;
        // Rows written before version 6 hold their text: straight from SQLite's buffer.
        let inline = r.get_ref(2)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?;
        let (text, corrupted) = bodies.text(conn, seq, inline, r.get(5)?, r.get(6)?, r.get(3)?)?;
        let group: Option<String> = r.get(1)?;
        out.push((seq, group.map(Arc::from), text, corrupted, r.get(4)?));
    }
    Ok(out)
}
