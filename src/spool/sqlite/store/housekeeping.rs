//! Background work between batches: collecting log rows nobody owes, expiring dedupe keys,
//! and the oldest-pending times for metrics.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, below, from_ms, ms};
use crate::spool::Seq;
use crate::spool::sqlite::StorageError;

/// Most seqs one housekeeping pass sweeps: it runs twice a second, so this bounds both one
/// transaction's length and the rate at which delivered rows are freed (well above ingest).
const SWEEP_SPAN: Seq = 200_000;
/// Most expired dedupe keys deleted per pass.
const EXPIRE_CHUNK: i64 = 50_000;

impl Store {
    /// Delete the log rows in `(after, upto]` that no destination in `held` (a mask of bits)
    /// still owes and no retry row refers to, and account for their bytes.
    fn free_rows(&mut self, after: Seq, upto: Seq, held: i64) -> Result<(), StorageError> {
        if upto <= after {
            return Ok(());
        }
        let freed: i64 = {
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) = 0
                       AND NOT EXISTS (SELECT 1 FROM retry r WHERE r.seq = log.seq)
                     RETURNING bytes",
            )?;
            let bytes = stmt.query_map(params![after as i64, upto as i64, held], |r| {
                r.get::<_, i64>(0)
            })?;
            bytes.sum::<Result<i64, _>>()?
        };
        self.add_bytes(-freed)
    }

    /// A lane owed nothing above its scan position, with nothing leased from the log, has
    /// passed every row up to the top of the log: move its scan and cursor there, so rows
    /// routed elsewhere are not kept for a destination that never leases them.
    fn pass_idle_lanes(&mut self) -> Result<(), StorageError> {
        let idle: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| {
                l.scan < self.high
                    && l.counts.unscanned == 0
                    && l.in_flight.values().all(|f| f.from_retry || f.from_hold)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            if let Some(lane) = self.lanes.get_mut(&name) {
                lane.scan = self.high;
            }
            self.advance(&name)?;
        }
        Ok(())
    }

    /// Every destination's `(bit, floor)`, configured or not: rows above it may still be
    /// owed (a held row keeps its destination's floor below it).
    fn cursors(&self) -> Vec<(i64, Seq)> {
        let mut all: Vec<(i64, Seq)> = self.lanes.values().map(|l| (l.bit, l.floor())).collect();
        all.extend(self.others.iter().copied());
        all
    }

    /// Housekeeping between batches: delete log rows no destination owes any more and
    /// expired dedupe keys. Bounded work per call: rows that waited in the retry set and were
    /// settled since the last call, plus one slice of the log below every configured cursor
    /// (a range delete by seq, so delivering costs no write per message).
    pub fn collect_garbage(&mut self) -> Result<(), StorageError> {
        self.pass_idle_lanes()?;
        let cursors = self.cursors();
        for seq in std::mem::take(&mut self.freeable) {
            self.free_rows(seq - 1, seq, below(&cursors, seq))?;
        }
        // Rows above the lowest configured cursor wait for it: sweeping them now would have to
        // look at them again later.
        let low = self.lanes.values().map(|l| l.floor()).min().unwrap_or(0);
        let upto = low.min(self.gc_from + SWEEP_SPAN);
        if upto > self.gc_from {
            // Split the slice where an unconfigured destination's cursor falls: below it that
            // destination has passed the rows, above it they are kept for it.
            let mut cuts: Vec<Seq> = self
                .others
                .iter()
                .map(|(_, c)| *c)
                .filter(|c| *c > self.gc_from && *c < upto)
                .collect();
            cuts.push(upto);
            cuts.sort_unstable();
            let mut after = self.gc_from;
            for cut in cuts {
                self.free_rows(after, cut, below(&cursors, after + 1))?;
                after = cut;
            }
            self.gc_from = upto;
        }
        let horizon = ms(SystemTime::now()) - self.bounds.dedupe_window.as_millis() as i64;
        self.conn
            .execute(
                "DELETE FROM seen WHERE (source, message_id) IN (SELECT source, message_id FROM seen WHERE at < ?1 LIMIT ?2)",
                params![horizon, EXPIRE_CHUNK],
            )?;
        Ok(())
    }

    /// Refresh each lane's oldest unsettled enqueue time (two index probes per lane).
    pub fn refresh_oldest(&mut self) -> Result<(), StorageError> {
        for lane in self.lanes.values_mut() {
            let oldest: Option<i64> = self
                .conn
                .query_row(
                    "SELECT MIN(enqueued_at) FROM log WHERE seq IN (
                        (SELECT seq FROM log WHERE seq > ?2 AND (dests & ?3) != 0 ORDER BY seq LIMIT 1),
                        (SELECT MIN(seq) FROM retry WHERE dest = ?1))",
                    params![lane.id, lane.cursor as i64, lane.bit],
                    |r| r.get(0),
                )?;
            lane.oldest = oldest.map(from_ms);
        }
        Ok(())
    }
}
