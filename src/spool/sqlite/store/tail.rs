//! The log's newest rows, kept in memory as they are appended, so a destination that keeps up
//! leases them without reading them back from SQLite. A bounded convenience, never the
//! record: it holds a contiguous run of seqs this process appended (the oldest go first when
//! it is full), and a lease whose window it does not cover reads the file.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::spool::Seq;

/// Bytes of message bodies kept: a few seconds of a busy daemon's newest messages.
const BUDGET: usize = 8 << 20;

/// One appended row, as a lease reads it.
#[derive(Debug, Clone)]
pub(super) struct TailRow {
    pub seq: Seq,
    pub group: Option<Arc<str>>,
    pub body: Arc<str>,
    /// Bits of the destinations it goes to.
    pub dests: i64,
}

#[derive(Default)]
pub(super) struct Tail {
    /// Consecutive seqs, oldest first.
    rows: VecDeque<TailRow>,
    bytes: usize,
}

impl Tail {
    /// Keep a row just appended. A seq that does not follow the newest kept (another process
    /// wrote rows in between: `dlq replay`) starts the run again from it.
    pub fn push(&mut self, row: TailRow) {
        if self.rows.back().is_some_and(|last| last.seq + 1 != row.seq) {
            self.clear();
        }
        self.bytes += row.body.len();
        self.rows.push_back(row);
        while self.bytes > BUDGET {
            let Some(old) = self.rows.pop_front() else {
                break;
            };
            self.bytes -= old.body.len();
        }
    }

    /// The rows in `(after, upto]` routed to `bit`, at most `limit` of them, if every seq
    /// in that span is kept; `None` when the file must be read.
    pub fn between(&self, after: Seq, upto: Seq, bit: i64, limit: usize) -> Option<Vec<&TailRow>> {
        let first = self.rows.front()?.seq;
        let last = self.rows.back()?.seq;
        if after + 1 < first || upto > last {
            return None;
        }
        let start = (after + 1 - first) as usize;
        let rows = self
            .rows
            .range(start..)
            .take_while(|r| r.seq <= upto)
            .filter(|r| r.dests & bit != 0)
            .take(limit)
            .collect();
        Some(rows)
    }

    /// Forget rows above `high`: their transaction rolled back, and SQLite will give their
    /// seqs to other messages.
    pub fn forget_above(&mut self, high: Seq) {
        while self.rows.back().is_some_and(|r| r.seq > high) {
            if let Some(r) = self.rows.pop_back() {
                self.bytes -= r.body.len();
            }
        }
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: Seq, dests: i64) -> TailRow {
        TailRow {
            seq,
            group: None,
            body: Arc::from("{}"),
            dests,
        }
    }

    fn seqs(rows: Option<Vec<&TailRow>>) -> Option<Vec<Seq>> {
        rows.map(|r| r.iter().map(|r| r.seq).collect())
    }

    #[test]
    fn a_window_is_served_only_when_every_seq_of_it_is_kept() {
        let mut t = Tail::default();
        for seq in 5..=9 {
            t.push(row(seq, if seq % 2 == 0 { 0b01 } else { 0b11 }));
        }
        assert_eq!(seqs(t.between(4, 9, 0b10, 10)), Some(vec![5, 7, 9]));
        assert_eq!(seqs(t.between(5, 9, 0b01, 2)), Some(vec![6, 7]));
        assert_eq!(seqs(t.between(3, 9, 0b01, 10)), None, "seq 4 is not kept");
        assert_eq!(seqs(t.between(4, 10, 0b01, 10)), None, "seq 10 is not kept");
        assert_eq!(seqs(t.between(9, 9, 0b01, 10)), Some(vec![]));
    }

    #[test]
    fn a_gap_starts_again_and_a_rollback_forgets_its_rows() {
        let mut t = Tail::default();
        t.push(row(1, 1));
        t.push(row(2, 1));
        t.push(row(5, 1));
        assert_eq!(
            seqs(t.between(0, 2, 1, 10)),
            None,
            "3 and 4 were written elsewhere"
        );
        assert_eq!(seqs(t.between(4, 5, 1, 10)), Some(vec![5]));
        t.push(row(6, 1));
        t.forget_above(5);
        assert_eq!(seqs(t.between(4, 6, 1, 10)), None);
        assert_eq!(t.bytes, 2);
    }

    #[test]
    fn the_oldest_rows_go_when_it_is_full() {
        let mut t = Tail::default();
        let big: Arc<str> = Arc::from("x".repeat(BUDGET / 2 + 1));
        for seq in 1..=3 {
            t.push(TailRow {
                body: big.clone(),
                ..row(seq, 1)
            });
        }
        assert_eq!(seqs(t.between(0, 3, 1, 10)), None);
        assert_eq!(seqs(t.between(2, 3, 1, 10)), Some(vec![3]));
        assert!(t.bytes <= BUDGET);
    }
}
