//! Leasing: due retries first, then the log from the scan position, keeping each group's
//! items in order for each destination.
//!
//! Invariants kept here: an item is leased only when nothing older of its group is leased or
//! waiting in the retry set (otherwise it is parked there, see `retry_set.rs`); the scan
//! position only moves past rows this lane has read; one lease looks at no more than
//! `SCAN_BUDGET` seqs, so one transaction stays short, and a lane that stopped at the budget
//! is woken to lease again at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::cache::ParsedCache;
use super::retry_set::{group_has_rows, park};
use super::{Flight, Lane, Store, below, ms};
use crate::message::Parsed;
use crate::spool::sqlite::StorageError;
use crate::spool::{Leased, Seq};

/// Most log rows (by seq span) one lease looks at.
const SCAN_BUDGET: u64 = 1000;

impl Store {
    /// Due retries first (they are the oldest of their groups), then the log from the scan
    /// position; an item whose group is busy moves to the retry set to wait its turn.
    pub fn lease(&mut self, destination: &str, max: usize) -> Result<Vec<Leased>, StorageError> {
        let mut out = self.lease_retries(destination, max)?;
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
    ) -> Result<bool, StorageError> {
        // The other lanes' scan positions: those below a row have yet to read it.
        let others: Vec<(i64, Seq)> = self
            .lanes
            .iter()
            .filter(|(name, _)| name.as_str() != destination)
            .map(|(_, l)| (l.bit, l.scan))
            .collect();
        let high = self.high;
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(false);
        };
        let held = held_before(lane, out);
        let mut scan = Scan {
            conn: &self.conn,
            cache: &mut self.cache,
            lane,
            others,
            held,
            released: false,
        };
        // Items of busy groups are moved aside without counting towards `max`, and rows of
        // other destinations are skipped; a budget (a span of seqs) keeps one lease (and so
        // one transaction) short when a hot group has a long backlog or this destination gets
        // few of the rows.
        let mut budget = SCAN_BUDGET;
        while out.len() < max && scan.lane.scan < high {
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

/// Groups leased before this call (not those just leased from the retry set, in `out`):
/// items of one group leased together stay together.
fn held_before(lane: &Lane, out: &[Leased]) -> HashSet<Arc<str>> {
    lane.in_flight
        .iter()
        .filter(|(seq, _)| !out.iter().any(|l| l.seq == **seq))
        .filter_map(|(_, f)| f.group.clone())
        .collect()
}

/// One lease's pass over the log for one lane: the parts of the store it reads and changes.
struct Scan<'a> {
    conn: &'a Connection,
    cache: &'a mut ParsedCache,
    lane: &'a mut Lane,
    /// The other lanes' `(bit, scan)`: a lane below a row has yet to read it.
    others: Vec<(i64, Seq)>,
    /// Groups leased before this call (`held_before`).
    held: HashSet<Arc<str>>,
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
        let rows = rows_between(self.conn, self.cache, self.lane, upto, want)?;
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

    /// One row read by the lane: passed by when the retry set holds it already, parked behind
    /// its group when an older item of the group is busy, leased into `out` otherwise.
    fn take(&mut self, row: Row, out: &mut Vec<Leased>) -> Result<(), StorageError> {
        let (seq, group, body, dests, in_retry) = row;
        let seq = seq as Seq;
        self.lane.scan = seq;
        let parsed = self.parsed(seq, body.as_ref().map_or(0, String::len), dests);
        if in_retry {
            // Moved to the retry set before a crash: it is leased from there.
            return Ok(());
        }
        self.lane.counts.unscanned = self.lane.counts.unscanned.saturating_sub(1);
        let group: Option<Arc<str>> = group.map(Arc::from);
        if let Some(g) = &group
            && self.waiting(g)?
        {
            self.released |= park(self.conn, self.lane, seq, g)?;
            return Ok(());
        }
        self.lane.in_flight.insert(
            seq,
            Flight {
                group: group.clone(),
                from_retry: false,
                attempts: 0,
            },
        );
        let body = match body {
            Some(body) => Arc::from(body),
            None if parsed.is_ready() => Arc::from(""),
            None => Arc::from(body_of(self.conn, seq)?),
        };
        out.push(Leased {
            seq,
            body,
            parsed,
            group_id: group,
            attempts: 0,
            first_attempt: None,
        });
        Ok(())
    }

    /// The lane's copy of the parsed message. Read by this lane whatever happens to the item
    /// next; parked and retried items are parsed from the log when their turn comes.
    fn parsed(&mut self, seq: Seq, bytes: usize, dests: i64) -> Parsed {
        if let Some(p) = self.cache.take(seq, self.lane.bit) {
            return p;
        }
        // Not kept: this lane's worker will parse it; the lanes behind share the parse.
        let cell = Parsed::default();
        let behind = dests & below(&self.others, seq);
        self.cache.insert(seq, cell.clone(), behind, bytes);
        cell
    }

    /// An older item of `group` is leased or waits in the retry set: a newer one waits behind
    /// it, in the retry set, so the scan can move on. With no retry rows at all (the common
    /// case) there is nothing to ask SQLite.
    fn waiting(&self, group: &Arc<str>) -> Result<bool, StorageError> {
        Ok(self.held.contains(group)
            || (self.lane.counts.retry_rows > 0 && group_has_rows(self.conn, self.lane.id, group)?))
    }
}

/// A log row as a lease reads it: seq, group, body (not copied out when the cache has the
/// message parsed), and whether the destination's retry set already holds it (the scan passes
/// those by: they are leased from the retry set).
type Row = (i64, Option<String>, Option<String>, i64, bool);

/// Up to `limit` log rows in `(scan, upto]` routed to `lane`.
fn rows_between(
    conn: &Connection,
    cache: &ParsedCache,
    lane: &Lane,
    upto: Seq,
    limit: usize,
) -> Result<Vec<Row>, StorageError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, group_id, body, dests, EXISTS (SELECT 1 FROM retry r WHERE r.dest = ?5 AND r.seq = log.seq)
             FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) != 0 ORDER BY seq LIMIT ?4",
        )?;
    let rows = stmt.query_map(
        params![
            lane.scan as i64,
            upto as i64,
            lane.bit,
            limit as i64,
            lane.id
        ],
        |r| {
            let seq: i64 = r.get(0)?;
            let body = if cache.ready(seq as Seq) {
                None
            } else {
                Some(r.get(2)?)
            };
            Ok((seq, r.get(1)?, body, r.get(3)?, r.get(4)?))
        },
    )?;
    rows.collect::<Result<_, _>>().map_err(StorageError::from)
}

fn body_of(conn: &Connection, seq: Seq) -> Result<String, StorageError> {
    conn.prepare_cached("SELECT body FROM log WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq as i64], |r| r.get(0)))
        .map_err(StorageError::from)
}
