//! Leasing: due retries first, then the log from the scan position, keeping each group's
//! items in order for each destination.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::cache::ParsedCache;
use super::{Flight, Lane, Store, below, from_ms, ms};
use crate::message::Parsed;
use crate::spool::sqlite::schema::storage;
use crate::spool::{Leased, Seq, SpoolError};

/// Most log rows (by seq span) one lease looks at.
const SCAN_BUDGET: u64 = 1000;

impl Store {
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
    ) -> Result<bool, SpoolError> {
        // The other lanes' scan positions: those below a row have yet to read it.
        let others: Vec<(i64, Seq)> = self
            .lanes
            .iter()
            .filter(|(name, _)| name.as_str() != destination)
            .map(|(_, l)| (l.bit, l.scan))
            .collect();
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(false);
        };
        let id = lane.id;
        // Groups leased before this call: items of one group leased together stay together.
        let held: HashSet<Arc<str>> = lane
            .in_flight
            .iter()
            .filter(|(seq, _)| !out.iter().any(|l| l.seq == **seq))
            .filter_map(|(_, f)| f.group.clone())
            .collect();
        let mut released = false;
        // Items of busy groups are moved aside without counting towards `max`, and rows of
        // other destinations are skipped; a budget (a span of seqs) keeps one lease (and so
        // one transaction) short when a hot group has a long backlog or this destination gets
        // few of the rows.
        let mut budget = SCAN_BUDGET;
        while out.len() < max && lane.scan < self.high {
            if budget == 0 {
                self.rewake.push(destination.to_string());
                break;
            }
            let upto = self.high.min(lane.scan + budget);
            let want = max - out.len();
            let rows = rows_between(
                &self.conn,
                &self.cache,
                lane.id,
                lane.bit,
                lane.scan,
                upto,
                want,
            )?;
            let before = lane.scan;
            // Fewer rows than asked: nothing else of ours up to `upto`.
            let exhausted = rows.len() < want;
            for (seq, group, body, dests, in_retry) in rows {
                let seq = seq as Seq;
                lane.scan = seq;
                // Read by this lane whatever happens to it next; parked and retried items are
                // parsed from the log when their turn comes.
                let parsed = match self.cache.take(seq, lane.bit) {
                    Some(p) => p,
                    None => {
                        // Not kept: this lane's worker will parse it; the lanes behind share
                        // the parse.
                        let cell = Parsed::default();
                        let bytes = body.as_ref().map_or(0, String::len);
                        self.cache
                            .insert(seq, cell.clone(), dests & below(&others, seq), bytes);
                        cell
                    }
                };
                if in_retry {
                    // Moved to the retry set before a crash: it is leased from there.
                    continue;
                }
                lane.counts.unscanned = lane.counts.unscanned.saturating_sub(1);
                let group: Option<Arc<str>> = group.map(Arc::from);
                if let Some(g) = &group {
                    // An older item of this group is leased or waits in the retry set: this one
                    // waits behind it, in the retry set, so the scan can move on.
                    // With no retry rows at all (the common case) there is nothing to ask SQLite.
                    let waiting = held.contains(g)
                        || (lane.counts.retry_rows > 0 && group_has_rows(&self.conn, id, g)?);
                    if waiting {
                        released |= park(&self.conn, lane, seq, g)?;
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
                let body = match body {
                    Some(body) => Arc::from(body),
                    None if parsed.is_ready() => Arc::from(""),
                    None => Arc::from(body_of(&self.conn, seq)?),
                };
                out.push(Leased {
                    seq,
                    body,
                    parsed,
                    group_id: group,
                    attempts: 0,
                    first_attempt: None,
                });
            }
            if exhausted {
                lane.scan = upto;
            }
            budget = budget.saturating_sub(lane.scan - before);
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
        let held: HashSet<Arc<str>> = lane
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
                    parsed: Parsed::default(),
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
        // Asked after every commit that touches the lane: with no retry rows (the common
        // case) there is nothing to ask SQLite.
        if self
            .lanes
            .get(destination)
            .is_none_or(|l| l.counts.retry_rows == 0)
        {
            return Ok(None);
        }
        Ok(self
            .due_retries(destination, 1, None)?
            .first()
            .map(|(_, due)| from_ms(*due)))
    }
}

/// A log row as a lease reads it: seq, group, body (not copied out when the cache has the
/// message parsed), and whether the destination's retry set already holds it (the scan passes
/// those by: they are leased from the retry set).
type Row = (i64, Option<String>, Option<String>, i64, bool);

/// Up to `limit` log rows in `(after, upto]` routed to destination `dest` (bit `bit`).
fn rows_between(
    conn: &Connection,
    cache: &ParsedCache,
    dest: i64,
    bit: i64,
    after: Seq,
    upto: Seq,
    limit: usize,
) -> Result<Vec<Row>, SpoolError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, group_id, body, dests, EXISTS (SELECT 1 FROM retry r WHERE r.dest = ?5 AND r.seq = log.seq)
             FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) != 0 ORDER BY seq LIMIT ?4",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map(
            params![after as i64, upto as i64, bit, limit as i64, dest],
            |r| {
                let seq: i64 = r.get(0)?;
                let body = if cache.ready(seq as Seq) {
                    None
                } else {
                    Some(r.get(2)?)
                };
                Ok((seq, r.get(1)?, body, r.get(3)?, r.get(4)?))
            },
        )
        .map_err(storage)?;
    rows.collect::<Result<_, _>>().map_err(storage)
}

fn body_of(conn: &Connection, seq: Seq) -> Result<String, SpoolError> {
    conn.prepare_cached("SELECT body FROM log WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq as i64], |r| r.get(0)))
        .map_err(storage)
}

/// Move a log item behind its busy group: into the retry set, not due (`due_at` NULL) until
/// `release_next` lets it go. True when that released an item of the group at once.
fn park(
    conn: &Connection,
    lane: &mut Lane,
    seq: Seq,
    group: &Arc<str>,
) -> Result<bool, SpoolError> {
    conn.prepare_cached(
        "INSERT INTO retry (dest, seq, group_id, due_at, attempts) VALUES (?1, ?2, ?3, NULL, 0)",
    )
    .and_then(|mut s| s.execute(params![lane.id, seq as i64, group.as_ref()]))
    .map_err(storage)?;
    lane.counts.retry_rows += 1;
    release_next(conn, lane, group)
}

fn group_has_rows(conn: &Connection, dest: i64, group: &str) -> Result<bool, SpoolError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM retry WHERE dest = ?1 AND group_id = ?2)")
        .and_then(|mut s| s.query_row(params![dest, group], |r| r.get(0)))
        .map_err(storage)
}

/// When nothing of `group` is leased or in backoff any more, make its oldest waiting item due.
/// One at a time: the next is released when that one settles, so a group never overtakes
/// itself.
pub(super) fn release_next(
    conn: &Connection,
    lane: &Lane,
    group: &Arc<str>,
) -> Result<bool, SpoolError> {
    // Nothing waits in the retry set of this destination: nothing to release.
    if lane.counts.retry_rows == 0 {
        return Ok(false);
    }
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
