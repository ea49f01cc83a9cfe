//! The retry set: items out of log order for one destination, either in backoff after a
//! failed attempt (`due_at` set) or parked behind an older item of their group (`due_at`
//! NULL, until released).
//!
//! Invariants kept here: a group never overtakes itself. A retry row is due only when it is
//! the oldest row of its group in the set and neither it nor its group is leased; the rows
//! of its group right behind it that are due too go in the same lease, in order (so a group
//! that waited out a backoff or a pause moves as one batch, which the adapter may coalesce,
//! not one call per round trip). Parked items are released together, oldest first, and only
//! once nothing of their group is leased or in backoff. `counts.retry_rows` follows every
//! row added here.

use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::{Lane, Store, from_ms, ms};
use crate::message::Parsed;
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::body::Bodies;
use crate::spool::{Leased, Seq};

impl Store {
    /// Retry-set rows due by `before` (any due time when `None`) that may go now: the oldest
    /// row of its group, not leased, and its group not leased.
    pub(super) fn due_retries(
        &self,
        destination: &str,
        max: usize,
        before: Option<i64>,
    ) -> Result<Vec<(Leased, i64)>, StorageError> {
        let Some(lane) = self.lanes.get(destination) else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.seq, r.group_id, r.attempts, r.first_attempt, l.body, r.due_at, l.crc, l.body_at, l.bytes FROM retry r JOIN log l ON l.seq = r.seq
                 WHERE r.dest = ?1 AND r.due_at IS NOT NULL AND r.due_at <= ?2
                   AND (r.group_id IS NULL OR NOT EXISTS
                        (SELECT 1 FROM retry e WHERE e.dest = ?1 AND e.group_id = r.group_id AND e.seq < r.seq))
                 ORDER BY r.due_at, r.seq",
            )?;
        let mut rows = stmt.query(params![lane.id, before.unwrap_or(i64::MAX)])?;
        let (mut out, mut bodies) = (Vec::new(), Bodies::default());
        // Skipped rows are bounded by what is in flight: each group has one candidate row.
        while out.len() < max {
            let Some(row) = rows.next()? else {
                break;
            };
            let seq = row.get::<_, i64>(0)? as Seq;
            let group: Option<Arc<str>> = row.get::<_, Option<String>>(1)?.map(Arc::from);
            // Items of the group parked in memory are newer: they wait for this row, not it
            // for them.
            if lane.in_flight.contains_key(&seq)
                || group.as_ref().is_some_and(|g| lane.hold.in_flight(g))
            {
                continue;
            }
            let with_body = before.is_some();
            out.push(due_retry(
                &self.conn,
                &mut bodies,
                row,
                seq,
                group.clone(),
                with_body,
            )?);
            if let (Some(g), Some(before)) = (&group, before) {
                self.due_behind(lane.id, g, seq, before, max - out.len(), &mut out)?;
            }
        }
        Ok(out)
    }

    /// The rows of `group` right behind `after` in the retry set that are due by `before`,
    /// in order, up to `max`: they go with it. The first row not due stops it (it keeps its
    /// place, behind the batch).
    fn due_behind(
        &self,
        lane: i64,
        group: &Arc<str>,
        after: Seq,
        before: i64,
        max: usize,
        out: &mut Vec<(Leased, i64)>,
    ) -> Result<(), StorageError> {
        if max == 0 {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.seq, r.group_id, r.attempts, r.first_attempt, l.body, r.due_at, l.crc, l.body_at, l.bytes FROM retry r JOIN log l ON l.seq = r.seq
             WHERE r.dest = ?1 AND r.group_id = ?2 AND r.seq > ?3 ORDER BY r.seq LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![lane, group.as_ref(), after as i64, max as i64])?;
        let mut bodies = Bodies::default();
        while let Some(row) = rows.next()? {
            let due = row.get::<_, Option<i64>>(5)?;
            if due.is_none_or(|d| d > before) {
                break;
            }
            let seq = row.get::<_, i64>(0)? as Seq;
            let group = Some(group.clone());
            out.push(due_retry(&self.conn, &mut bodies, row, seq, group, true)?);
        }
        Ok(())
    }

    /// When the next retry may be due (now, when the hold released an item): what `wait`
    /// sleeps towards.
    pub fn next_due(&self, destination: &str) -> Result<Option<SystemTime>, StorageError> {
        let Some(lane) = self.lanes.get(destination) else {
            return Ok(None);
        };
        if lane.hold.has_ready() {
            return Ok(Some(SystemTime::now()));
        }
        // Asked after every commit that touches the lane: with no retry rows (the common
        // case) there is nothing to ask SQLite.
        if lane.counts.retry_rows == 0 {
            return Ok(None);
        }
        Ok(self
            .due_retries(destination, 1, None)?
            .first()
            .map(|(_, due)| from_ms(*due)))
    }
}

/// Move a log item behind its group's item in backoff: into the retry set, not due (`due_at`
/// NULL) until `release_next` lets it go. True when that released an item of the group at once.
pub(super) fn park(
    conn: &Connection,
    lane: &mut Lane,
    seq: Seq,
    group: &Arc<str>,
) -> Result<bool, StorageError> {
    park_row(conn, lane, seq, group)?;
    release_next(conn, lane, group)
}

/// The retry-set row of an item waiting behind its group (no release attempted).
fn park_row(
    conn: &Connection,
    lane: &mut Lane,
    seq: Seq,
    group: &Arc<str>,
) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO retry (dest, seq, group_id, due_at, attempts) VALUES (?1, ?2, ?3, NULL, 0)",
    )
    .and_then(|mut s| s.execute(params![lane.id, seq as i64, group.as_ref()]))?;
    lane.counts.retry_rows += 1;
    lane.hold.retry_rows(group, 1);
    lane.hold.sql_parked(group, 1);
    Ok(())
}

/// When nothing of `group` is leased or in backoff any more, make its waiting items due (the
/// oldest [`RELEASED_AT_ONCE`]): the lease that takes the oldest takes the others behind it
/// in order (`due_behind`), so a group never overtakes itself.
pub(super) fn release_next(
    conn: &Connection,
    lane: &mut Lane,
    group: &Arc<str>,
) -> Result<bool, StorageError> {
    // Nothing of the group waits in the retry set, or the group is busy: nothing to release.
    if !lane.hold.in_retry(group) || lane.hold.is_busy(group) {
        return Ok(false);
    }
    let busy: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM retry WHERE dest = ?1 AND group_id = ?2 AND due_at IS NOT NULL)")
        .and_then(|mut s| s.query_row(params![lane.id, group.as_ref()], |r| r.get(0)))?;
    if busy {
        return Ok(false);
    }
    let n = conn
        .prepare_cached(
            "UPDATE retry SET due_at = ?3 WHERE dest = ?1 AND seq IN
           (SELECT seq FROM retry WHERE dest = ?1 AND group_id = ?2 AND due_at IS NULL
            ORDER BY seq LIMIT ?4)",
        )
        .and_then(|mut s| {
            let now = ms(SystemTime::now());
            s.execute(params![lane.id, group.as_ref(), now, RELEASED_AT_ONCE])
        })?;
    lane.hold.sql_parked(group, -(n as i64));
    Ok(n > 0)
}

/// Most parked items of one group released at once: the largest batch an adapter takes.
const RELEASED_AT_ONCE: i64 = 2000;

/// A due retry row as a lease hands it out (its body only `with_body`), with its due time.
fn due_retry(
    conn: &Connection,
    bodies: &mut Bodies,
    row: &rusqlite::Row<'_>,
    seq: Seq,
    group: Option<Arc<str>>,
    with_body: bool,
) -> Result<(Leased, i64), StorageError> {
    let (body, corrupted) = if with_body {
        let inline: String = row.get(4)?;
        bodies.text(conn, seq, &inline, row.get(7)?, row.get(8)?, row.get(6)?)?
    } else {
        (Arc::from(""), None)
    };
    let leased = Leased {
        seq,
        body,
        parsed: Parsed::default(),
        group_id: group,
        attempts: row.get::<_, i64>(2)? as u32,
        first_attempt: row.get::<_, Option<i64>>(3)?.map(from_ms),
        corrupted,
    };
    Ok((leased, row.get::<_, i64>(5)?))
}
