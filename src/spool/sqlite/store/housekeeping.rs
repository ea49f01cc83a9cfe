//! Background work between batches: collecting log rows nobody owes, expiring dedupe keys,
//! and the oldest-pending times for metrics.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, below, from_ms, ms};
use crate::spool::Seq;
use crate::spool::sqlite::StorageError;

/// Most seqs one slice of housekeeping sweeps, most retried rows it looks at again, and
/// about how many expired dedupe ids it lets go (whole journal rows). A slice is one short transaction on the writer thread
/// (about a millisecond at this size), run when a whole one waits and no command does (the
/// rest at the next tick): callers arriving during it wait at most that long, where one pass
/// over everything freed in half a second held them up for 15–30 ms at ten thousand
/// messages a second.
const SLICE: usize = 512;

impl Store {
    /// Delete the log rows in `(after, upto]` that no destination in `held` (a mask of bits)
    /// still owes and no retry row refers to, and account for their bytes; then the body rows
    /// of that span no log row is left in.
    fn free_rows(&mut self, after: Seq, upto: Seq, held: i64) -> Result<(), StorageError> {
        if upto <= after {
            return Ok(());
        }
        let (rows, freed) = {
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM log WHERE seq > ?1 AND seq <= ?2 AND (dests & ?3) = 0
                       AND NOT EXISTS (SELECT 1 FROM retry r WHERE r.seq = log.seq)
                     RETURNING bytes",
            )?;
            let mut bytes = stmt.query_map(params![after as i64, upto as i64, held], |r| {
                r.get::<_, i64>(0)
            })?;
            bytes.try_fold((0, 0), |(rows, freed), b| b.map(|b| (rows + 1, freed + b)))?
        };
        if rows > 0 {
            // From the body row holding `after + 1` (it may start below the span) to the last
            // one starting in it; each is probed by the log's key over its own seqs.
            self.conn
                .prepare_cached(
                    "DELETE FROM body
                     WHERE seq >= COALESCE((SELECT MAX(seq) FROM body WHERE seq <= ?1), 0) AND seq <= ?2
                       AND NOT EXISTS (SELECT 1 FROM log WHERE log.seq >= body.seq AND log.seq <= body.last)",
                )?
                .execute(params![after as i64 + 1, upto as i64])?;
        }
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

    /// One slice of housekeeping: delete log rows no destination owes any more and expired
    /// dedupe ids, about `SLICE` of each. Rows that waited in the retry set and were
    /// settled since, then a run of the log below every configured cursor (a range delete by
    /// seq, so delivering costs no write per message). Returns whether a whole slice more is
    /// waiting (see `garbage_waiting`).
    pub fn sweep(&mut self) -> Result<bool, StorageError> {
        self.pass_idle_lanes()?;
        let cursors = self.cursors();
        let take = self.freeable.len().min(SLICE);
        for seq in self.freeable.drain(..take).collect::<Vec<_>>() {
            self.free_rows(seq - 1, seq, below(&cursors, seq))?;
        }
        // Rows above the lowest configured cursor wait for it: sweeping them now would have to
        // look at them again later.
        let low = self.lowest_floor();
        if low > self.gc_from {
            // Skip seqs with no row left (after a restart the sweep starts from 0).
            let next: Option<i64> = self
                .conn
                .prepare_cached("SELECT MIN(seq) FROM log WHERE seq > ?1")?
                .query_row([self.gc_from as i64], |r| r.get(0))?;
            self.gc_from = match next {
                Some(next) => self.gc_from.max(next as Seq - 1),
                None => low,
            };
        }
        let upto = low.min(self.gc_from + SLICE as Seq);
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
        let expiring = (self.seen).expire(&self.conn, ms(SystemTime::now()), SLICE)?;
        Ok(expiring || self.garbage_waiting(false))
    }

    /// Every slice of housekeeping there is to do now.
    #[cfg(test)]
    pub fn collect_garbage(&mut self) -> Result<(), StorageError> {
        while self.sweep()? || self.garbage_waiting(true) {}
        Ok(())
    }

    /// Whether log rows wait to be freed that are worth a transaction of their own between
    /// commands: a whole slice of them, or, on a nearly full disk (`tight`), any. Less waits
    /// for the tick on a disk with room: a trickle of deliveries swept as it comes would cost
    /// a transaction each, each writing the same pages again (the file header, the freelist,
    /// the b-tree's inner pages). On a nearly full disk the rows' space is needed at once, and
    /// the writer keeps the WAL small there itself (`writer/room.rs`). Expired dedupe ids
    /// leave with every tick (and as appends find them), and for as long as the last slice
    /// found more than a whole one.
    pub fn garbage_waiting(&self, tight: bool) -> bool {
        let slice = if tight { 1 } else { SLICE };
        self.freeable.len() >= slice || self.lowest_floor() >= self.gc_from + slice as Seq
    }

    /// Every configured destination has passed the log up to here (0 with none).
    fn lowest_floor(&self) -> Seq {
        self.lanes.values().map(|l| l.floor()).min().unwrap_or(0)
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
