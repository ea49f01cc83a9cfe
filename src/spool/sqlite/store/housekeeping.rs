//! Background work between batches: collecting log rows nobody owes, expiring dedupe keys,
//! and the oldest-pending times for metrics.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, from_ms, ms};
use crate::spool::SpoolError;
use crate::spool::sqlite::schema::storage;

/// Log rows in a seq range that no route and no retry row refers to.
const UNOWED: &str = "FROM log WHERE seq BETWEEN ?1 AND ?2
    AND NOT EXISTS (SELECT 1 FROM route r WHERE r.seq = log.seq)
    AND NOT EXISTS (SELECT 1 FROM retry r WHERE r.seq = log.seq)";

impl Store {
    /// Delete the unowed log rows in `from..=to` and account for their bytes.
    fn free_unowed(&mut self, from: i64, to: i64) -> Result<(), SpoolError> {
        let freed: i64 = self
            .conn
            .prepare_cached(&format!("SELECT COALESCE(SUM(bytes), 0) {UNOWED}"))
            .and_then(|mut s| s.query_row(params![from, to], |r| r.get(0)))
            .map_err(storage)?;
        if freed > 0 {
            self.conn
                .prepare_cached(&format!("DELETE {UNOWED}"))
                .and_then(|mut s| s.execute(params![from, to]))
                .map_err(storage)?;
            self.add_bytes(-freed)?;
        }
        Ok(())
    }

    /// Housekeeping between batches: delete log rows no destination owes any more and
    /// expired dedupe keys. Bounded work per call: the rows settled since the last call, plus
    /// one slice of a slow sweep over the whole log for rows those missed (after a crash, or
    /// after `dlq` changed the file).
    pub fn collect_garbage(&mut self) -> Result<(), SpoolError> {
        const CHUNK: i64 = 5000;
        let settled = std::mem::take(&mut self.freeable);
        for seq in settled {
            self.free_unowed(seq as i64, seq as i64)?;
        }
        let slice_end: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(seq) FROM (SELECT seq FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
                params![self.sweep_from, CHUNK],
                |r| r.get(0),
            )
            .map_err(storage)?;
        match slice_end {
            Some(end) => {
                self.free_unowed(self.sweep_from + 1, end)?;
                self.sweep_from = end;
            }
            None => self.sweep_from = 0,
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
}
