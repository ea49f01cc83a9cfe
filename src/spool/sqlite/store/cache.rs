//! Parsed messages kept by seq until every destination routed to has leased them, so a
//! fresh message, which comes parsed from ingest, is not parsed again by each destination. A
//! bounded convenience, never the record: a message that is not here (a backlog) is read
//! from the log by each worker that leases it, which parses only the fields its adapter
//! reads.

use std::collections::BTreeMap;

use crate::message::Parsed;
use crate::spool::Seq;

/// Bytes of JSON (as stored) whose parsed head is kept; a head takes about as much again.
/// Enough for the lag of workers that keep up: pacing holds each destination near
/// `server.pace_backlog` (4,000 messages by default, about 5 MiB of the bench's calls); at
/// 4 MiB, items leased in steady use often missed it and were parsed from the log again
/// (1.5% of the daemon's CPU; 0.4% at 8 MiB). Messages arriving while it is full are
/// parsed from the log when their turn comes. Nothing is evicted: the writer thread never
/// frees a parsed message (the last reader, a delivery worker, does).
const BUDGET: usize = 8 << 20;

struct Entry {
    message: Parsed,
    /// Bits of the destinations that have not read it yet.
    unread: i64,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct ParsedCache {
    entries: BTreeMap<Seq, Entry>,
    bytes: usize,
}

impl ParsedCache {
    /// Keep `message` for the destinations in `unread`.
    pub fn insert(&mut self, seq: Seq, message: Parsed, unread: i64, bytes: usize) {
        if unread == 0 || self.bytes + bytes > BUDGET || self.entries.contains_key(&seq) {
            return;
        }
        self.entries.insert(
            seq,
            Entry {
                message,
                unread,
                bytes,
            },
        );
        self.bytes += bytes;
    }

    /// The destination with bit `bit` reads `seq`: its copy, if kept; the entry goes once
    /// every destination has read it, and the last reader gets the cache's own copy. A copy
    /// is a count incremented on memory that ingest wrote on another core, usually a cache
    /// miss: nearly all of this function's time in a profile.
    pub fn take(&mut self, seq: Seq, bit: i64) -> Option<Parsed> {
        let entry = self.entries.get_mut(&seq)?;
        entry.unread &= !bit;
        if entry.unread != 0 {
            return Some(entry.message.clone());
        }
        let entry = self.entries.remove(&seq)?;
        self.bytes -= entry.bytes;
        Some(entry.message)
    }

    /// The destination with bit `bit` will read nothing more (it is no longer configured).
    pub fn forget_reader(&mut self, bit: i64) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            e.unread &= !bit;
            let keep = e.unread != 0;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Forget entries above `high`: their transaction rolled back, and SQLite will give
    /// their seqs to other messages.
    pub fn forget_above(&mut self, high: Seq) {
        for (_, e) in self.entries.split_off(&(high + 1)) {
            self.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;

    fn message(id: &str) -> Parsed {
        let mut m = Map::new();
        m.insert("messageId".into(), Value::from(id));
        Parsed::new(m)
    }

    #[test]
    fn an_entry_stays_until_every_destination_read_it() {
        let mut c = ParsedCache::default();
        c.insert(1, message("a"), 0b110, 10);
        assert!(
            c.take(1, 0b001).is_some_and(|m| m.is_ready()),
            "kept parsed"
        );
        assert!(c.take(1, 0b010).is_some());
        assert!(c.take(1, 0b100).is_some());
        assert!(c.take(1, 0b010).is_none(), "both read it: gone");
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn a_full_cache_keeps_what_it_has_and_a_rollback_forgets_its_seqs() {
        let mut c = ParsedCache::default();
        c.insert(1, message("a"), 0b10, BUDGET / 2);
        c.insert(2, message("b"), 0b10, BUDGET / 2);
        c.insert(3, message("c"), 0b10, 1);
        assert!(c.take(3, 0b10).is_none(), "no room for it");
        c.forget_above(1);
        assert!(c.take(2, 0b10).is_none(), "rolled back");
        assert_eq!(c.take(1, 0b10).unwrap().get("").unwrap()["messageId"], "a");
        assert_eq!(c.bytes, 0);
    }
}
