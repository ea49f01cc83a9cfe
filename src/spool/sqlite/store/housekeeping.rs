//! Background work between batches: collecting log rows nobody owes, expiring dedupe keys,
//! and the oldest-pending times for metrics.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, from_ms, ms};
use crate::spool::SpoolError;
use crate::spool::sqlite::schema::storage;

impl Store {
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
}
