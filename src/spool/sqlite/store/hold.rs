//! Per-group hold-back, in memory: a newer item of a group waits while an older one of the
//! same group is in flight, without a row written, a query made or a rescan per lease.
//!
//! Where an item waits:
//! - behind an item **in flight**: here, in `parked`. Its log row is the record; the cursor
//!   moves on past it (so a crash re-sends no more than before), and the seqs held here are
//!   written with each transaction that changes them (`destination.held`, a few bytes each):
//!   after a restart they are parked again, ahead of everything else of their group, and
//!   housekeeping keeps their rows until they settle (`floor`).
//! - behind an item **in backoff** (a failed attempt, its row in the SQL retry set): here
//!   too, while there is room. The cursor does not wait for them (they are in the file's
//!   held list like the others), so a backoff of minutes costs nothing per message; with
//!   every company failing, a row per message per destination in the retry set made ingest
//!   and the drain crawl. Past [`MAX_HELD`] they overflow into the SQL retry set, parked
//!   (`retry_set.rs`), and once a group has items parked there its newer items go there too
//!   until none are left, so what waits here is always older than what waits there.
//!
//! At most [`MAX_HELD`] items wait here per destination: a lease stops reading the log there,
//! which bounds memory whatever the backlog.
//!
//! Invariants: `busy[g]` counts the items of `g` in flight; a log item waits while its group
//! is busy since an earlier lease or has items parked; when a group has nothing in flight and
//! no row in backoff (or due) in the retry set, it becomes `ready` and its parked items are
//! leased together, in order, in the next lease (as many as fit; the rest wait for that
//! batch), so a group is never in two batches at once and never overtakes itself — and a hot
//! group moves a batch of its calls per round trip, not one. Ready groups are leased before
//! the log is read further. `in_retry[g]` counts the group's rows in the SQL retry set,
//! `in_sql[g]` those of them parked (waiting, not in backoff): those are newer than anything
//! parked here, and are released only once nothing of the group is in flight or here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::message::Parsed;
use crate::spool::Seq;

/// Most items held in memory per destination.
pub(super) const MAX_HELD: u64 = 5000;

/// A log item waiting in memory, with the lane's copy of its parsed message.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub seq: Seq,
    pub parsed: Parsed,
    /// Its text as the lease read it (shared with the newest rows kept in memory), so it
    /// is not read from the file again when its turn comes; `None`: read it then.
    pub body: Option<Arc<str>>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Hold {
    /// Group → (items in flight, the lease call that last made it busy).
    busy: HashMap<Arc<str>, (u32, u64)>,
    parked: HashMap<Arc<str>, VecDeque<Waiting>>,
    /// Groups with parked items and nothing in flight, to lease before reading the log
    /// further, in the order they became free.
    ready: VecDeque<Arc<str>>,
    /// Every seq parked here, with its group.
    seqs: BTreeMap<Seq, Arc<str>>,
    /// Seqs leased from here and not settled yet, with their group: recorded with `seqs` in
    /// the file, since the cursor does not wait for them.
    out: BTreeMap<Seq, Arc<str>>,
    /// Group → its rows in the SQL retry set.
    in_retry: HashMap<Arc<str>, u64>,
    /// Group → those of its retry-set rows that are parked (overflow from here).
    in_sql: HashMap<Arc<str>, u64>,
    /// Counts lease calls, so items of one group read in one lease are leased together.
    epoch: u64,
    /// `seqs` changed since it was last written to the file.
    pub dirty: bool,
}

impl Hold {
    /// A new lease call begins.
    pub fn next_epoch(&mut self) {
        self.epoch += 1;
    }

    /// An item of `group` was leased (from the log, the retry set or the hold).
    pub fn leased(&mut self, group: &Arc<str>) {
        let slot = self.busy.entry(group.clone()).or_insert((0, 0));
        slot.0 += 1;
        slot.1 = self.epoch;
    }

    /// Whether a log item of `group` read now must wait behind an older one: the group is
    /// busy since an earlier lease call, or has items parked (items of one group read in the
    /// same call go together, and the batch keeps their order).
    pub fn must_wait(&self, group: &Arc<str>) -> bool {
        self.parked.contains_key(group)
            || self
                .busy
                .get(group)
                .is_some_and(|(n, epoch)| *n > 0 && *epoch != self.epoch)
    }

    /// Whether `group` has rows in the SQL retry set (newer items wait there).
    pub fn in_retry(&self, group: &str) -> bool {
        self.in_retry.get(group).is_some_and(|n| *n > 0)
    }

    /// Whether any item of `group` is in flight or parked.
    pub fn is_busy(&self, group: &str) -> bool {
        self.in_flight(group) || self.parked.contains_key(group)
    }

    /// Whether an item of `group` is in flight.
    pub fn in_flight(&self, group: &str) -> bool {
        self.busy.get(group).is_some_and(|(n, _)| *n > 0)
    }

    /// Whether `group` has rows in backoff or due in the retry set: older than anything of
    /// it parked here, which waits for them.
    fn behind_retry(&self, group: &str) -> bool {
        let rows = self.in_retry.get(group).copied().unwrap_or(0);
        rows > self.in_sql.get(group).copied().unwrap_or(0)
    }

    /// Whether `group` has items parked in the SQL retry set: its newer items go there too.
    pub fn parked_in_sql(&self, group: &str) -> bool {
        self.in_sql.get(group).is_some_and(|n| *n > 0)
    }

    /// Items of `group` were parked in (`+n`) or released from (`-n`) the SQL retry set.
    pub fn sql_parked(&mut self, group: &Arc<str>, delta: i64) {
        let n = self.in_sql.entry(group.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.in_sql.remove(group);
        }
    }

    /// Whether a group is ready to lease.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn park(&mut self, group: &Arc<str>, item: Waiting) {
        self.dirty = true;
        self.seqs.insert(item.seq, group.clone());
        self.parked
            .entry(group.clone())
            .or_default()
            .push_back(item);
    }

    /// An in-flight item of `group` settled for good (delivered or dead-lettered): true when
    /// that made the group ready (its parked items may be leased).
    pub fn settled(&mut self, group: &Arc<str>) -> bool {
        let Some(slot) = self.busy.get_mut(group) else {
            return false;
        };
        slot.0 = slot.0.saturating_sub(1);
        if slot.0 > 0 {
            return false;
        }
        self.busy.remove(group);
        if self.parked.contains_key(group) && !self.behind_retry(group) {
            self.ready.push_back(group.clone());
            return true;
        }
        false
    }

    /// An in-flight item of `group` went into backoff (its row is in the retry set now): the
    /// items parked behind it stay here, not ready until it is done.
    pub fn backed_off(&mut self, group: &Arc<str>) {
        if let Some(slot) = self.busy.get_mut(group) {
            slot.0 = slot.0.saturating_sub(1);
            if slot.0 == 0 {
                self.busy.remove(group);
            }
        }
        self.ready.retain(|g| g != group);
    }

    /// The next ready group and up to `max` of its parked items, oldest first, leased now;
    /// the rest stay parked until these settle.
    pub fn take_ready(&mut self, max: usize) -> Option<(Arc<str>, Vec<Waiting>)> {
        let group = self.ready.pop_front()?;
        let queue = self.parked.get_mut(&group)?;
        let items: Vec<Waiting> = queue.drain(..max.min(queue.len())).collect();
        if queue.is_empty() {
            self.parked.remove(&group);
        }
        for item in &items {
            self.seqs.remove(&item.seq);
            self.out.insert(item.seq, group.clone());
            self.leased(&group);
        }
        self.dirty |= !items.is_empty();
        Some((group, items))
    }

    /// The oldest seq held here.
    pub fn oldest(&self) -> Option<Seq> {
        let parked = self.seqs.first_key_value().map(|(seq, _)| *seq);
        let out = self.out.first_key_value().map(|(seq, _)| *seq);
        match (parked, out) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An item leased from here settled (or went to the retry set): no longer recorded here.
    pub fn done(&mut self, seq: Seq) {
        self.dirty |= self.out.remove(&seq).is_some();
    }

    /// Items parked again after a restart (from `destination.held`), oldest first: their
    /// group is free, so it is ready at once.
    pub fn restore(&mut self, group: Arc<str>, seq: Seq) {
        if !self.parked.contains_key(&group) {
            self.ready.push_back(group.clone());
        }
        self.park(
            &group,
            Waiting {
                seq,
                parsed: Parsed::default(),
                body: None,
            },
        );
    }

    /// The seqs parked or leased from here, for the file: ascending, each as the varint of
    /// its distance from the previous one.
    pub fn encode(&self) -> Vec<u8> {
        let mut all: Vec<Seq> = self.seqs.keys().chain(self.out.keys()).copied().collect();
        all.sort_unstable();
        let mut out = Vec::with_capacity(all.len() * 3);
        let mut previous = 0;
        for seq in all {
            let mut delta = seq - previous;
            previous = seq;
            loop {
                let byte = (delta & 0x7f) as u8;
                delta >>= 7;
                if delta == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// Items held here (parked or ready): pending for status.
    pub fn len(&self) -> u64 {
        self.seqs.len() as u64
    }

    /// A row of `group` entered (`+1`) or left (`-1`) the SQL retry set.
    pub fn retry_rows(&mut self, group: &Arc<str>, delta: i64) {
        let n = self.in_retry.entry(group.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.in_retry.remove(group);
        }
    }

    /// The retry set's rows per group, and its parked rows per group, as read from the file
    /// (at start, after another process wrote). A group restored here that has rows in
    /// backoff is not ready: those go first.
    pub fn set_retry_rows(&mut self, rows: HashMap<Arc<str>, u64>, parked: HashMap<Arc<str>, u64>) {
        self.in_retry = rows;
        self.in_sql = parked;
        let ready = std::mem::take(&mut self.ready);
        self.ready = ready
            .into_iter()
            .filter(|g| !self.behind_retry(g))
            .collect();
    }
}

/// The seqs `Hold::encode` wrote; a truncated last varint is dropped.
pub(super) fn decode(bytes: &[u8]) -> Vec<Seq> {
    let mut seqs = Vec::new();
    let (mut previous, mut delta, mut shift) = (0u64, 0u64, 0u32);
    for &byte in bytes {
        delta |= u64::from(byte & 0x7f) << shift.min(63);
        shift += 7;
        if byte & 0x80 == 0 {
            previous += delta;
            seqs.push(previous);
            (delta, shift) = (0, 0);
        }
    }
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(seq: Seq) -> Waiting {
        Waiting {
            seq,
            parsed: Parsed::default(),
            body: None,
        }
    }

    #[test]
    fn a_free_group_goes_with_its_parked_items_in_one_lease_in_order() {
        let g: Arc<str> = Arc::from("acme");
        let mut h = Hold::default();
        h.next_epoch();
        h.leased(&g);
        // Read in the same lease call: goes along; in a later one: waits.
        assert!(!h.must_wait(&g));
        h.next_epoch();
        assert!(h.must_wait(&g));
        for seq in [5, 7, 9] {
            h.park(&g, waiting(seq));
        }
        assert_eq!((h.oldest(), h.len()), (Some(5), 3));
        assert!(
            h.settled(&g),
            "its last item in flight settled: the group is ready"
        );
        assert!(
            h.must_wait(&g),
            "a newer item still waits behind the parked ones"
        );
        h.next_epoch();
        let (_, first) = h.take_ready(2).unwrap();
        assert_eq!(first.iter().map(|w| w.seq).collect::<Vec<_>>(), [5, 7]);
        // 9 did not fit: it waits for 5 and 7, and so does anything newer.
        assert!(h.must_wait(&g) && !h.has_ready());
        assert!(!h.settled(&g));
        assert!(h.settled(&g));
        let (_, rest) = h.take_ready(10).unwrap();
        assert_eq!(rest.iter().map(|w| w.seq).collect::<Vec<_>>(), [9]);
        // All taken in this call: a newer item read in the same call goes along with them.
        assert!(!h.must_wait(&g));
        assert!(!h.settled(&g), "nothing left to release");
        // Leased from here, they stay recorded until each is done.
        assert_eq!(h.oldest(), Some(5));
        for seq in [5, 7, 9] {
            h.done(seq);
        }
        assert!(!h.is_busy(&g) && h.oldest().is_none());
    }

    #[test]
    fn held_seqs_round_trip_through_the_file_form() {
        let g: Arc<str> = Arc::from("acme");
        let mut h = Hold::default();
        for seq in [3, 130, 131, 1 << 40] {
            h.park(&g, waiting(seq));
        }
        assert!(h.dirty);
        assert_eq!(decode(&h.encode()), vec![3, 130, 131, 1 << 40]);
        assert_eq!(decode(&[]), Vec::<Seq>::new());
        let mut restored = Hold::default();
        for seq in decode(&h.encode()) {
            restored.restore(g.clone(), seq);
        }
        let (_, items) = restored.take_ready(10).unwrap();
        let seqs: Vec<Seq> = items.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![3, 130, 131, 1 << 40]);
        assert!(restored.is_busy("acme"), "all four are leased now");
        assert_eq!(restored.oldest(), Some(3), "and recorded until they settle");
    }

    #[test]
    fn items_behind_a_backoff_stay_here_until_it_is_done() {
        let g: Arc<str> = Arc::from("acme");
        let mut h = Hold::default();
        h.next_epoch();
        h.leased(&g);
        h.next_epoch();
        h.park(&g, waiting(9));
        h.park(&g, waiting(11));
        h.backed_off(&g);
        h.retry_rows(&g, 1);
        assert!(h.in_retry("acme") && !h.in_flight("acme") && h.len() == 2);
        assert!(h.take_ready(10).is_none(), "not before the item in backoff");
        // The retried item is leased again and delivered.
        h.leased(&g);
        h.retry_rows(&g, -1);
        assert!(h.settled(&g), "ready once nothing older waits");
        let (_, items) = h.take_ready(10).unwrap();
        assert_eq!(items.iter().map(|w| w.seq).collect::<Vec<_>>(), [9, 11]);
    }

    #[test]
    fn parked_rows_in_sql_do_not_hold_back_what_waits_here() {
        let g: Arc<str> = Arc::from("acme");
        let mut h = Hold::default();
        h.park(&g, waiting(9));
        // An overflow item parked in SQL is newer: it does not stop 9 from going.
        h.retry_rows(&g, 1);
        h.sql_parked(&g, 1);
        assert!(h.parked_in_sql("acme"));
        h.leased(&g);
        assert!(h.settled(&g));
        // A row in backoff, restored at open, does.
        h.set_retry_rows([(g.clone(), 2)].into(), [(g.clone(), 1)].into());
        assert!(h.take_ready(10).is_none());
    }
}
