//! The counts behind `Depth` and the log's byte total, kept in memory so status and the
//! `Full` check never ask SQLite.
//!
//! Invariants kept here: every change to the log or the retry set updates the counts in the
//! same transaction (a rolled-back one restores them from its `Snapshot`); the byte total in
//! the file is only ever changed by a delta, never overwritten, because `dlq replay` adds to
//! it from another process; after another process wrote, `recount` reads everything again
//! without touching leases.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::params;

use super::{Counts, Store};
use crate::spool::Depth;
use crate::spool::sqlite::StorageError;

impl Store {
    /// Recount what another process may have changed, keeping leases.
    pub fn recount(&mut self) -> Result<(), StorageError> {
        self.count(false)?;
        Ok(())
    }

    /// Refresh every lane's counts and the byte total; with `all_bytes`, sum the log's bytes
    /// in the same pass (returned) rather than trusting `stats`.
    pub(super) fn count(&mut self, all_bytes: bool) -> Result<i64, StorageError> {
        self.high = self.high_seq()?;
        self.count_refused()?;
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        let (summed, unscanned) = self.count_unscanned(&names, all_bytes)?;
        let bytes = match summed {
            Some(b) => b,
            None => self
                .conn
                .query_row("SELECT log_bytes FROM stats WHERE id = 0", [], |r| {
                    r.get::<_, i64>(0)
                })?,
        };
        self.bytes = bytes.max(0) as u64;
        for (name, unscanned) in names.into_iter().zip(unscanned) {
            let (id, scan) = (self.lanes[&name].id, self.lanes[&name].scan);
            // Retry rows above the scan position are counted by the retry set, not the log.
            let (retry_rows, attempted, above): (i64, i64, i64) = self.conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), COALESCE(SUM(seq > ?2), 0)
                     FROM retry WHERE dest = ?1",
                params![id, scan as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let dead: i64 = self.conn.query_row(
                "SELECT COUNT(*) FROM dead_letter WHERE destination = ?1",
                [&name],
                |r| r.get(0),
            )?;
            let per_group = self.retry_rows_per_group(id, false)?;
            let parked = self.retry_rows_per_group(id, true)?;
            if let Some(lane) = self.lanes.get_mut(&name) {
                lane.hold.set_retry_rows(per_group, parked);
                lane.counts = Counts {
                    unscanned: unscanned.saturating_sub(above.max(0) as u64),
                    retry_rows: retry_rows as u64,
                    attempted: attempted as u64,
                    dead: dead as u64,
                };
            }
        }
        Ok(bytes)
    }

    /// The retry set's rows per group for one destination.
    fn retry_rows_per_group(
        &self,
        dest: i64,
        parked_only: bool,
    ) -> Result<HashMap<Arc<str>, u64>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT group_id, COUNT(*) FROM retry WHERE dest = ?1 AND group_id IS NOT NULL
               AND (?2 = 0 OR due_at IS NULL) GROUP BY group_id",
        )?;
        let rows = stmt.query_map(params![dest, parked_only], |r| {
            Ok((
                Arc::from(r.get::<_, String>(0)?),
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?;
        rows.collect::<Result<_, _>>().map_err(StorageError::from)
    }

    /// Log rows above each lane's scan position routed to it (retry rows included): one pass
    /// over the log for all lanes together; with `all_bytes`, over the whole log, also
    /// summing its bytes.
    fn count_unscanned(
        &self,
        names: &[String],
        all_bytes: bool,
    ) -> Result<(Option<i64>, Vec<u64>), StorageError> {
        let lowest = names.iter().map(|n| self.lanes[n].scan).min();
        let from = match lowest {
            _ if all_bytes => 0,
            Some(scan) => scan,
            None => return Ok((None, Vec::new())),
        };
        let mut columns = vec!["COALESCE(SUM(bytes), 0)".to_string()];
        columns.extend((0..names.len()).map(|i| {
            format!(
                "COALESCE(SUM(seq > ?{} AND (dests & ?{}) != 0), 0)",
                2 * i + 2,
                2 * i + 3
            )
        }));
        let sql = format!("SELECT {} FROM log WHERE seq > ?1", columns.join(", "));
        let mut values: Vec<i64> = vec![from as i64];
        for n in names {
            let lane = &self.lanes[n];
            values.extend([lane.scan as i64, lane.bit]);
        }
        let (bytes, counts) =
            self.conn
                .query_row(&sql, rusqlite::params_from_iter(values), |r| {
                    let counts = (0..names.len())
                        .map(|i| r.get::<_, i64>(i + 1).map(|n| n.max(0) as u64))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((r.get::<_, i64>(0)?, counts))
                })?;
        Ok((all_bytes.then_some(bytes), counts))
    }

    /// Change the byte total by `delta`, in memory and in the file. A delta, not the total:
    /// `dlq replay` adds to the file's total between our reads of it (see `bytes`).
    pub(super) fn add_bytes(&mut self, delta: i64) -> Result<(), StorageError> {
        if delta == 0 {
            return Ok(());
        }
        self.conn
            .prepare_cached("UPDATE stats SET log_bytes = log_bytes + ?1 WHERE id = 0")
            .and_then(|mut s| s.execute([delta]))?;
        self.bytes = self.bytes.saturating_add_signed(delta);
        Ok(())
    }

    /// Counts for status and metrics, from memory.
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
            pending: (c.unscanned + c.retry_rows + lane.hold.len()).saturating_sub(from_retry),
            in_flight: lane.in_flight.len() as u64,
            retrying: c.attempted.saturating_sub(retrying_leased),
            unread: c.unscanned,
            dead_letters: c.dead,
            oldest_pending: lane.oldest,
        }
    }
}
