//! Taking messages in: deduping, logging and routing accepted messages, and keeping those
//! refused at ingest as dead letters.
//!
//! Invariants kept here: an append that would pass `spool.max_bytes` stores nothing and
//! answers `Full`; a `(source, messageId)` seen within the dedupe window is answered
//! `Duplicate` and not logged again; a message routed to no configured destination is
//! remembered for dedupe but not logged; each logged row's `dests` has one bit per
//! destination it goes to, and that lane's `unscanned` count grows with it.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, ms};
use crate::message::Accepted;
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::schema::{LogRow, insert_log};
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
        if self.bytes + incoming > self.max_bytes {
            return Ok(Err(SpoolError::Full {
                used: self.bytes,
                max: self.max_bytes,
            }));
        }
        let now = ms(SystemTime::now());
        let horizon = now - self.dedupe_window.as_millis() as i64;
        let mut answers = Vec::with_capacity(messages.len());
        let mut added = 0;
        let mut routed = 0i64;
        for m in messages {
            if !self.first_seen(m, now, horizon)? {
                answers.push(Appended::Duplicate);
                continue;
            }
            answers.push(Appended::Stored);
            let dests = self.route(m);
            if dests == 0 {
                continue;
            }
            self.log(m, dests, now)?;
            routed |= dests;
            added += m.body.len() as i64;
        }
        fresh.extend(
            self.lanes
                .iter()
                .filter(|(_, l)| routed & l.bit != 0)
                .map(|(name, _)| name.clone()),
        );
        self.add_bytes(added)?;
        Ok(Ok(answers))
    }

    /// Whether `m`'s key is new (or its last sighting expired, before `horizon`), recording
    /// it as seen `now`. One statement for the dedupe check and the key: a key seen within the
    /// window changes nothing (a duplicate); a new or expired one is (re)written.
    fn first_seen(&self, m: &Accepted, now: i64, horizon: i64) -> Result<bool, StorageError> {
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO seen (source, message_id, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source, message_id) DO UPDATE SET at = excluded.at WHERE seen.at <= ?4",
            )
            .and_then(|mut s| s.execute(params![m.source, m.message_id, now, horizon]))?;
        Ok(changed > 0)
    }

    /// The bits of the configured destinations `m` goes to (each once); each of those lanes
    /// has one more row to scan.
    fn route(&mut self, m: &Accepted) -> i64 {
        let mut dests = 0i64;
        for d in &m.destinations {
            if let Some(lane) = self.lanes.get_mut(d)
                && dests & lane.bit == 0
            {
                dests |= lane.bit;
                lane.counts.unscanned += 1;
            }
        }
        dests
    }

    /// Write `m` to the log for the destinations in `dests`; its parsed form is kept for them.
    fn log(&mut self, m: &Accepted, dests: i64, now: i64) -> Result<(), StorageError> {
        let row = LogRow {
            source: &m.source,
            message_id: &m.message_id,
            group_id: m.group_id.as_deref(),
            body: &m.body,
            enqueued_at: now,
            dests,
        };
        self.high = insert_log(&self.conn, &row)?;
        if let Some(parsed) = &m.parsed {
            self.cache
                .insert(self.high, parsed.clone(), dests, m.body.len());
        }
        Ok(())
    }

    /// Keep messages refused at ingest as dead letters with reason `invalid`.
    pub fn reject(&mut self, rejected: &[Rejected]) -> Result<(), StorageError> {
        for r in rejected {
            let message_id = serde_json::from_str::<serde_json::Value>(&r.raw)
                .ok()
                .and_then(|v| {
                    v.get("messageId")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                });
            self.conn
                .prepare_cached(
                    "INSERT INTO dead_letter (destination, source, message_id, body, reason, error, attempts, last_attempt)
                     VALUES (NULL, ?1, ?2, ?3, 'invalid', ?4, 0, ?5)",
                )
                .and_then(|mut s| s.execute(params![r.source, message_id, r.raw, format!("batch index {}: {}", r.index, r.error), ms(r.at)]))?;
        }
        Ok(())
    }
}
