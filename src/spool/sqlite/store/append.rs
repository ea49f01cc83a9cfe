//! Taking messages in: deduping, logging and routing accepted messages, and keeping those
//! refused at ingest as dead letters.
//!
//! Invariants kept here: an append that would pass `spool.max_bytes` stores nothing and
//! answers `Full`; a `(source, messageId)` seen within the dedupe window is answered
//! `Duplicate` and not logged again; a message routed to no configured destination is
//! remembered for dedupe but not logged; each logged row's `dests` has one bit per
//! destination it goes to, and that lane's `unscanned` count grows with it (once per row,
//! however often a name is repeated).

use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::params;

use super::tail::TailRow;
use super::{Store, ms};
use crate::message::Accepted;
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::schema::{LogRow, insert_logs};
use crate::spool::{Appended, Rejected, SpoolError};

impl Store {
    /// Dedupe, log and route `messages`; `fresh` gets each destination given new work. The
    /// outer error fails the transaction; the inner one (`Full`) only answers this caller.
    pub fn append(
        &mut self,
        messages: &[Accepted],
        fresh: &mut Vec<String>,
    ) -> Result<Result<Vec<Appended>, SpoolError>, StorageError> {
        let incoming: u64 = messages.iter().map(|m| m.body.len() as u64).sum();
        if self.bytes + incoming > self.bounds.max_bytes {
            return Ok(Err(SpoolError::Full {
                used: self.bytes,
                max: self.bounds.max_bytes,
            }));
        }
        let now = ms(SystemTime::now());
        let mut answers = Vec::with_capacity(messages.len());
        // The messages to log, with the destinations each goes to.
        let mut logged: Vec<(&Accepted, i64)> = Vec::with_capacity(messages.len());
        // How many messages went to each set of destinations: counted per lane after.
        let mut routes: Vec<(i64, u64)> = Vec::new();
        for m in messages {
            if !(self.seen).first_seen(&self.conn, &m.source, &m.message_id, now)? {
                answers.push(Appended::Duplicate);
                continue;
            }
            answers.push(Appended::Stored);
            let dests = self.route(&m.destinations);
            if dests != 0 {
                logged.push((m, dests));
                match routes.iter_mut().find(|(bits, _)| *bits == dests) {
                    Some((_, n)) => *n += 1,
                    None => routes.push((dests, 1)),
                }
            }
        }
        // Each lane has that many more rows to scan.
        for lane in self.lanes.values_mut() {
            lane.counts.unscanned += routes
                .iter()
                .filter(|(bits, _)| bits & lane.bit != 0)
                .map(|(_, n)| n)
                .sum::<u64>();
        }
        self.log(&logged, now)?;
        let routed = logged.iter().fold(0, |all, (_, dests)| all | dests);
        let added: i64 = logged.iter().map(|(m, _)| m.body.len() as i64).sum();
        fresh.extend(
            self.lanes
                .iter()
                .filter(|(_, l)| routed & l.bit != 0)
                .map(|(name, _)| name.clone()),
        );
        self.add_bytes(added)?;
        Ok(Ok(answers))
    }

    /// The bits of the configured destinations among `names` (each once).
    fn route(&mut self, names: &[Arc<str>]) -> i64 {
        if let Some((last, bits)) = &self.last_route
            && last.len() == names.len()
            && last.iter().zip(names).all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return *bits;
        }
        let bits = names
            .iter()
            .filter_map(|d| self.lanes.get(&**d))
            .fold(0, |bits, lane| bits | lane.bit);
        // Kept with the names it was made for: held here, no name's memory can be reused by
        // another while its pointer is compared.
        self.last_route = Some((names.to_vec(), bits));
        bits
    }

    /// Write each message to the log for the destinations beside it, in one statement per
    /// run of rows; each is kept in the tail, and its parsed form for them.
    fn log(&mut self, logged: &[(&Accepted, i64)], now: i64) -> Result<(), StorageError> {
        if logged.is_empty() {
            return Ok(());
        }
        let rows: Vec<LogRow<'_>> = logged
            .iter()
            .map(|&(m, dests)| LogRow {
                source: &m.source,
                message_id: &m.message_id,
                group_id: m.group_id.as_deref(),
                body: &m.body,
                enqueued_at: now,
                dests,
            })
            .collect();
        let last = insert_logs(&self.conn, &rows)?;
        let first = last + 1 - logged.len() as u64;
        for (seq, &(m, dests)) in (first..).zip(logged) {
            self.tail.push(TailRow {
                seq,
                group: m.group_id.as_deref().map(Arc::from),
                body: Arc::from(m.body.as_str()),
                dests,
            });
            if let Some(parsed) = &m.parsed {
                self.cache.insert(seq, parsed.clone(), dests, m.body.len());
            }
        }
        self.high = last;
        Ok(())
    }

    /// Keep messages refused at ingest as dead letters (reason `invalid`), each with at most
    /// [`crate::spool::REFUSED_PREFIX`] bytes of its body, while what is kept of them stays under
    /// `max_refused_bytes`; returns how many were not kept.
    pub fn reject(&mut self, rejected: &[Rejected]) -> Result<usize, StorageError> {
        let mut not_kept = 0;
        for r in rejected {
            let (body, error) = (r.kept_body(), r.described());
            let cost = (body.len() + error.len()) as u64;
            if self.refused_bytes + cost > self.bounds.max_refused_bytes {
                not_kept += 1;
                continue;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO dead_letter (destination, source, message_id, body, reason, error, attempts, last_attempt)
                     VALUES (NULL, ?1, ?2, ?3, 'invalid', ?4, 0, ?5)",
                )
                .and_then(|mut s| s.execute(params![r.source, r.message_id(), body, error, ms(r.at)]))?;
            self.refused_bytes += cost;
        }
        Ok(not_kept)
    }

    /// Bytes kept of refused messages, as `reject` counts them: read at start and whenever
    /// another process (`dlq purge`) may have changed them.
    pub(super) fn count_refused(&mut self) -> Result<(), StorageError> {
        let bytes: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(LENGTH(CAST(body AS BLOB)) + LENGTH(CAST(error AS BLOB))), 0)
             FROM dead_letter WHERE destination IS NULL",
            [],
            |r| r.get(0),
        )?;
        self.refused_bytes = bytes.max(0) as u64;
        Ok(())
    }
}
