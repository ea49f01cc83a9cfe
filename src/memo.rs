//! What a group's last traits became, kept for the group's next call.
//!
//! Real group traffic sends one company's traits again and again, byte for byte (an SDK
//! sends the traits it keeps for the group with every call), and ingest and each adapter
//! would split and rewrite the same text each time. A [`GroupMemo`] keeps, per `groupId`,
//! the traits text last seen and what a pure function of that text made of it; a call whose
//! traits are the same bytes takes the kept result instead of computing it again. Keyed by
//! the group (a short string to hash), checked by comparing the whole text: a group whose
//! traits changed computes afresh and replaces what was kept, so what comes out is always
//! what the function gives for this text.
//!
//! Bounded in bytes: when what is kept passes the budget it is all dropped and refilled by
//! the calls that follow (with more groups in play than fit, fewer calls find theirs). And
//! it keeps only while keeping pays: when fewer than one lookup in [`PAYS`] finds its text
//! (every call of a group different, as when each carries its own id among its traits),
//! only one miss in [`SAMPLE`] is kept, enough to notice when calls repeat again, so such
//! traffic pays a lookup per call and almost no copies.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bookkeeping per kept group beyond its texts (map slot, allocation headers), for the budget.
const OVERHEAD: usize = 96;

/// Lookups over which the share that found their text is judged.
const WINDOW: u32 = 1024;
/// Keeping pays while at least one lookup in this many finds its text.
const PAYS: u32 = 16;
/// While it does not, one miss in this many is kept all the same.
const SAMPLE: u32 = 32;

/// Per group, the last traits text and the value made of it. Shared by the threads that use
/// it: the lock is held for a lookup or an insert, never while a value is made.
pub struct GroupMemo<V> {
    kept: Mutex<Kept<V>>,
    /// Bytes the texts and values may take before everything is dropped.
    budget: usize,
}

struct Kept<V> {
    by_group: HashMap<Box<str>, (Box<str>, V)>,
    bytes: usize,
    /// Lookups in the current window, and those that found their text.
    looked: u32,
    found: u32,
    /// Whether every miss is kept (as of the last window), and misses since it stopped.
    keeping: bool,
    missed: u32,
}

/// How much is kept, never what.
impl<V> std::fmt::Debug for GroupMemo<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("GroupMemo")
            .field("groups", &kept.by_group.len())
            .field("bytes", &kept.bytes)
            .field("budget", &self.budget)
            .field("keeping", &kept.keeping)
            .finish()
    }
}

impl<V: Clone> GroupMemo<V> {
    pub fn new(budget: usize) -> Self {
        Self {
            kept: Mutex::new(Kept {
                by_group: HashMap::new(),
                bytes: 0,
                looked: 0,
                found: 0,
                keeping: true,
                missed: 0,
            }),
            budget,
        }
    }

    /// What was kept for `group` when its last kept call had `traits`, this very text.
    pub fn get(&self, group: &str, traits: &str) -> Option<V> {
        let mut kept = self.lock();
        let found = match kept.by_group.get(group) {
            Some((text, value)) if **text == *traits => Some(value.clone()),
            _ => None,
        };
        kept.looked += 1;
        kept.found += u32::from(found.is_some());
        if kept.looked == WINDOW {
            kept.keeping = kept.found * PAYS >= kept.looked;
            kept.looked = 0;
            kept.found = 0;
        }
        found
    }

    /// Whether a value made after a miss should be kept: always while keeping pays, else
    /// one miss in [`SAMPLE`]. Asked before making what only keeping needs.
    pub fn wants(&self) -> bool {
        let mut kept = self.lock();
        if kept.keeping {
            return true;
        }
        kept.missed = kept.missed.wrapping_add(1);
        kept.missed.is_multiple_of(SAMPLE)
    }

    /// Keep `value`, made of `traits` for `group` (`size`: its bytes beyond the texts).
    pub fn keep(&self, group: &str, traits: &str, value: V, size: usize) {
        let cost = group.len() + traits.len() + size + OVERHEAD;
        if cost > self.budget {
            return;
        }
        let mut kept = self.lock();
        if kept.bytes + cost > self.budget {
            kept.by_group = HashMap::new();
            kept.bytes = 0;
        }
        // A group seen before is replaced; its old cost stays counted until the next drop,
        // which only brings that drop closer.
        kept.by_group.insert(group.into(), (traits.into(), value));
        kept.bytes += cost;
    }

    /// How many groups have something kept.
    pub fn groups(&self) -> usize {
        self.lock().by_group.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<V>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `traits` upper-cased, through the memo as the callers use it; counts what is made.
    fn upper(memo: &GroupMemo<String>, made: &Cell<usize>, group: &str, traits: &str) -> String {
        if let Some(v) = memo.get(group, traits) {
            return v;
        }
        made.set(made.get() + 1);
        let v = traits.to_uppercase();
        if memo.wants() {
            memo.keep(group, traits, v.clone(), v.len());
        }
        v
    }

    #[test]
    fn same_traits_are_made_once_and_changed_traits_again() {
        let memo = GroupMemo::new(1 << 20);
        let made = Cell::new(0);
        assert_eq!(upper(&memo, &made, "g1", r#"{"a":1}"#), r#"{"A":1}"#);
        assert_eq!(upper(&memo, &made, "g1", r#"{"a":1}"#), r#"{"A":1}"#);
        assert_eq!(made.get(), 1);
        // Another group with the same text is made for itself.
        assert_eq!(upper(&memo, &made, "g2", r#"{"a":1}"#), r#"{"A":1}"#);
        assert_eq!(made.get(), 2);
        // The group's traits changed: made again, and the new text is what is kept.
        assert_eq!(upper(&memo, &made, "g1", r#"{"a":2}"#), r#"{"A":2}"#);
        assert_eq!(upper(&memo, &made, "g1", r#"{"a":2}"#), r#"{"A":2}"#);
        assert_eq!(made.get(), 3);
        assert_eq!(upper(&memo, &made, "g1", r#"{"a":1}"#), r#"{"A":1}"#);
        assert_eq!(made.get(), 4);
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        // Room for two groups of this size, not three.
        let memo = GroupMemo::new(2 * (2 + 7 + 7 + OVERHEAD) + 10);
        let made = Cell::new(0);
        for g in ["g1", "g2", "g3"] {
            upper(&memo, &made, g, r#"{"a":1}"#);
        }
        assert_eq!(made.get(), 3);
        assert!(memo.lock().bytes <= memo.budget);
        // g3 came after the drop and is kept; g1 went with it.
        upper(&memo, &made, "g3", r#"{"a":1}"#);
        assert_eq!(made.get(), 3);
        upper(&memo, &made, "g1", r#"{"a":1}"#);
        assert_eq!(made.get(), 4);
        // Larger than the whole budget: made every time, never kept.
        let big = "x".repeat(memo.budget);
        upper(&memo, &made, "g4", &big);
        upper(&memo, &made, "g4", &big);
        assert_eq!(made.get(), 6);
    }

    #[test]
    fn keeping_stops_while_no_call_repeats_and_resumes_when_they_do() {
        let memo = GroupMemo::new(64 << 20);
        let made = Cell::new(0);
        // Every call of the group different (its own id among the traits): a window of
        // misses, then one in SAMPLE is kept.
        for i in 0..WINDOW {
            upper(&memo, &made, "g", &format!(r#"{{"id":{i}}}"#));
        }
        assert!(!memo.lock().keeping);
        let groups_before = memo.groups();
        for i in 0..SAMPLE * 4 {
            upper(&memo, &made, &format!("h{i}"), r#"{"a":1}"#);
        }
        assert_eq!(memo.groups() - groups_before, 4, "one miss in SAMPLE kept");
        // The groups' calls repeat again: a sampled keep is found by the calls after it,
        // and at the end of the window keeping resumes.
        let made_before = made.get();
        for _ in 0..2 * WINDOW {
            upper(&memo, &made, "g", r#"{"plan":"pro"}"#);
        }
        assert!(made.get() - made_before <= SAMPLE as usize);
        assert!(memo.lock().keeping);
    }
}
