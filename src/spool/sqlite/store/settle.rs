//! Settling a leased item: delivered, retry later, or dead letter; then the group's next item
//! may go and the cursor moves.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use super::retry_set::release_next;
use super::{Flight, Lane, Store, ms};
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::body::Bodies;
use crate::spool::{Attempt, Seq};

impl Store {
    pub fn ack(&mut self, destination: &str, seqs: &[Seq]) -> Result<(), StorageError> {
        for &seq in seqs {
            self.settle_item(destination, seq, |_, _| Ok(()))?;
        }
        // The cursor moves once for the batch (one row update, not one per item).
        self.advance(destination)
    }

    pub fn retry_at(
        &mut self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        a: &Attempt,
    ) -> Result<(), StorageError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        let Some(flight) = lane.in_flight.remove(&seq) else {
            not_leased(destination, seq);
            return Ok(());
        };
        if flight.from_hold {
            // From now on its retry row is the record.
            lane.hold.done(seq);
        }
        write_retry_row(&self.conn, lane, seq, &flight, at, a)?;
        // What waited in memory behind this item goes on waiting there, behind its backoff
        // (the cursor does not wait for it: it is in the held list).
        if let Some(g) = &flight.group {
            lane.hold.backed_off(g);
        }
        self.advance(destination)
    }

    pub fn dead_letter(
        &mut self,
        destination: &str,
        seq: Seq,
        a: &Attempt,
    ) -> Result<(), StorageError> {
        self.settle(destination, seq, |conn, seq| {
            type Logged = (String, String, Option<String>, String, Option<i64>, i64, Option<i64>);
            let logged: Option<Logged> = conn
                .prepare_cached(
                    "SELECT source, message_id, group_id, body, body_at, bytes, crc FROM log WHERE seq = ?1",
                )?
                .query_row([seq as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })
                .optional()?;
            let Some((source, message_id, group_id, inline, at, bytes, crc)) = logged else {
                return Ok(());
            };
            // As stored, even when it no longer matches its checksum (`corrupted`).
            let (body, _) = Bodies::default().text(conn, seq, &inline, at, bytes, crc)?;
            let reason = a.dead_reason.as_str();
            conn.prepare_cached(
                "INSERT INTO dead_letter (destination, source, message_id, group_id, body, reason, error, attempts, first_attempt, last_attempt, status, response)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![destination, source, message_id, group_id, body.as_ref(), reason, a.reason, a.attempts, ms(a.first_attempt), ms(a.last_attempt), a.status, a.response])
            })?;
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
        then: impl FnOnce(&Connection, Seq) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.settle_item(destination, seq, then)?;
        self.advance(destination)
    }

    /// `settle` but for the cursor, which the caller moves.
    fn settle_item(
        &mut self,
        destination: &str,
        seq: Seq,
        then: impl FnOnce(&Connection, Seq) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        let Some(flight) = lane.in_flight.remove(&seq) else {
            not_leased(destination, seq);
            return Ok(());
        };
        then(&self.conn, seq)?;
        if flight.from_hold {
            lane.hold.done(seq);
        }
        if flight.from_retry {
            self.conn
                .prepare_cached("DELETE FROM retry WHERE dest = ?1 AND seq = ?2")
                .and_then(|mut s| s.execute(params![lane.id, seq as i64]))?;
            lane.counts.retry_rows = lane.counts.retry_rows.saturating_sub(1);
            if let Some(g) = &flight.group {
                lane.hold.retry_rows(g, -1);
            }
            if flight.attempts > 0 {
                lane.counts.attempted = lane.counts.attempted.saturating_sub(1);
            }
            // Its row was kept for the retry set; housekeeping may free it now.
            self.freeable.push(seq);
        }
        if let Some(g) = &flight.group {
            if lane.hold.settled(g) && !self.rewake.iter().any(|d| d == destination) {
                // Its next item waits in memory, ready: the worker may be asleep.
                self.rewake.push(destination.to_string());
            }
            release_next(&self.conn, lane, g)?;
        }
        Ok(())
    }

    /// Move the durable cursor up to the oldest item still leased from the log.
    pub(super) fn advance(&mut self, destination: &str) -> Result<(), StorageError> {
        let Some(lane) = self.lanes.get_mut(destination) else {
            return Ok(());
        };
        let oldest_leased = lane
            .in_flight
            .iter()
            .find(|(_, f)| !f.from_retry && !f.from_hold)
            .map(|(s, _)| *s);
        let cursor = oldest_leased.map(|s| s - 1).unwrap_or(lane.scan);
        if cursor != lane.cursor {
            lane.cursor = cursor;
            self.conn
                .prepare_cached("UPDATE destination SET cursor = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(params![cursor as i64, lane.id]))?;
        }
        Ok(())
    }
}

/// The item's retry row: its first (a row of its own, counted), or an update of the row it
/// was leased from.
fn write_retry_row(
    conn: &Connection,
    lane: &mut Lane,
    seq: Seq,
    flight: &Flight,
    at: SystemTime,
    a: &Attempt,
) -> Result<(), StorageError> {
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
        conn.prepare_cached(
            "UPDATE retry SET group_id = ?3, due_at = ?4, attempts = ?5, first_attempt = ?6, last_attempt = ?7, reason = ?8, status = ?9
             WHERE dest = ?1 AND seq = ?2",
        )
        .and_then(|mut s| s.execute(p))?;
        // `retrying` counts items with an attempt made; a deferral spends none.
        if flight.attempts == 0 && a.attempts > 0 {
            lane.counts.attempted += 1;
        }
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO retry (dest, seq, group_id, due_at, attempts, first_attempt, last_attempt, reason, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| s.execute(p))?;
    lane.counts.retry_rows += 1;
    if a.attempts > 0 {
        lane.counts.attempted += 1;
    }
    if let Some(g) = &flight.group {
        lane.hold.retry_rows(g, 1);
    }
    Ok(())
}

/// An outcome for an item this process has not leased. Leases outlive failed transactions, so
/// this is a worker's bug, not a spool failure: it is said out loud, but not turned into an
/// error, which would fail the other callers sharing the transaction.
fn not_leased(destination: &str, seq: Seq) {
    tracing::warn!(destination = %destination, seq, "an outcome for an item that is not leased was ignored");
}
