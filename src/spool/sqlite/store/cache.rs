//! Messages as ingest parsed them, kept by seq until every destination routed to has read
//! them: delivery reuses them instead of parsing the stored body once per destination. A
//! bounded convenience, never the record: a message that is not here (evicted, leased from
//! the retry set, or logged before a restart) is parsed from the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::spool::Seq;

/// Bytes of JSON (as stored) whose parsed form is kept; the parsed form takes a few times
/// that. Enough for the lag of workers that keep up; messages arriving while it is full are
/// parsed from the log when their turn comes. Nothing is evicted: the writer thread never
/// frees a parsed message (the last reader, a delivery worker, does).
const BUDGET: usize = 16 << 20;

struct Entry {
    message: Arc<Map<String, Value>>,
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
    pub fn insert(&mut self, seq: Seq, message: Arc<Map<String, Value>>, dests: i64, bytes: usize) {
        if self.bytes + bytes > BUDGET {
            return;
        }
        self.entries.insert(
            seq,
            Entry {
                message,
                unread: dests,
                bytes,
            },
        );
        self.bytes += bytes;
    }

    pub fn contains(&self, seq: Seq) -> bool {
        self.entries.contains_key(&seq)
    }

    /// The destination with bit `bit` reads `seq`: its copy, if kept; the entry goes once
    /// every destination has read it.
    pub fn take(&mut self, seq: Seq, bit: i64) -> Option<Arc<Map<String, Value>>> {
        let entry = self.entries.get_mut(&seq)?;
        entry.unread &= !bit;
        let message = entry.message.clone();
        if entry.unread == 0 {
            self.bytes -= entry.bytes;
            self.entries.remove(&seq);
        }
        Some(message)
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
    use super::*;

    fn message(id: &str) -> Arc<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("messageId".into(), Value::from(id));
        Arc::new(m)
    }

    #[test]
    fn an_entry_stays_until_every_destination_read_it() {
        let mut c = ParsedCache::default();
        c.insert(1, message("a"), 0b110, 10);
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
        assert_eq!(c.take(1, 0b10).unwrap()["messageId"], "a");
        assert_eq!(c.bytes, 0);
    }
}
