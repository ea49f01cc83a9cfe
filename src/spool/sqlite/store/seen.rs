//! The dedupe index: every `(source, messageId)` accepted within the window, as a 96-bit
//! digest in a hash set in memory, and on disk as a journal of the digests each transaction
//! added (`seen_batch`: one row per transaction, in time order).
//!
//! Kept as a b-tree of message ids (schema 4 and before), each new id the SDKs send (a random
//! UUID) landed at a random place in it and cost a page write of its own once the index
//! outgrew a few pages: a quarter to a third of full-load throughput. Here a transaction
//! appends one row at the end of the journal, expiry deletes rows from its head, and a lookup
//! is a lookup in memory. The price is memory, 12 to 16 bytes an id (see `Digests`), bounded
//! by `spool.dedupe_max_keys`: past it the oldest ids are forgotten before their window ends.
//!
//! Invariants kept here: each digest in the set is in exactly one journal row, or in `fresh`
//! until the transaction writes it (`save`, before its commit); rows leave oldest first, and a
//! row's digests leave the set with it; everything a transaction changed here is undone in
//! memory when it rolls back (`restore`). 96 bits: two different keys share a digest with a
//! chance of about one in 10^13 a day at a billion messages a day against millions of ids
//! kept, and that would answer a new message as a duplicate.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use rusqlite::{Connection, params};
use sha2::{Digest as _, Sha256};

use crate::spool::sqlite::StorageError;

/// A key's digest: the first 12 bytes of SHA-256 over the source's name (length-prefixed)
/// and the message id. Stable across versions and restarts: the journal keeps it.
pub(in crate::spool::sqlite) type Digest = [u8; 12];

pub(in crate::spool::sqlite) fn digest(source: &str, message_id: &str) -> Digest {
    let mut h = Sha256::new();
    h.update((source.len() as u64).to_le_bytes());
    h.update(source.as_bytes());
    h.update(message_id.as_bytes());
    let mut d = [0u8; 12];
    d.copy_from_slice(&h.finalize()[..12]);
    d
}

/// A journal row as memory knows it (its digests are read back when it leaves).
#[derive(Debug, Clone, Copy)]
struct Row {
    id: i64,
    /// The latest time (ms) of its ids: it leaves a window after that.
    at: i64,
    keys: usize,
}

/// What the open transaction changed, to undo if it rolls back.
#[derive(Default)]
struct Undo {
    /// Digests it added and wrote.
    added: Vec<Digest>,
    /// Rows it wrote (the newest in `rows`).
    written: usize,
    /// Rows it deleted, oldest first, with their digests.
    dropped: Vec<(Row, Vec<Digest>)>,
    /// Of their ids, those forgotten early (added to `Seen::forgotten`).
    forgotten: u64,
}

pub(super) struct Seen {
    /// The window in ms; 0 keeps nothing.
    window: i64,
    max_keys: usize,
    keys: Digests,
    /// The journal's rows, oldest first.
    rows: VecDeque<Row>,
    /// Added by the open transaction, not written yet; with the latest time among them.
    fresh: Vec<Digest>,
    fresh_at: i64,
    undo: Undo,
    /// Ids forgotten before their window ended (the cap), since start.
    pub forgotten: u64,
    /// Of those, how many were reported (see `writer/tick.rs`).
    pub reported: u64,
}

impl Seen {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window: window.as_millis().min(i64::MAX as u128) as i64,
            max_keys,
            keys: Digests::new(),
            rows: VecDeque::new(),
            fresh: Vec::new(),
            fresh_at: 0,
            undo: Undo::default(),
            forgotten: 0,
            reported: 0,
        }
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// When the oldest id held was accepted (ms), if any is.
    pub fn oldest(&self) -> Option<i64> {
        self.rows.front().map(|r| r.at)
    }

    /// Read the journal back at start: rows whose window has passed, and the oldest beyond
    /// `max_keys`, are deleted rather than loaded.
    pub fn load(&mut self, conn: &Connection, now: i64) -> Result<(), StorageError> {
        let rows: Vec<Row> = conn
            .prepare("SELECT id, at, length(keys) FROM seen_batch ORDER BY id")?
            .query_map([], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    keys: r.get::<_, i64>(2)?.max(0) as usize / 12,
                })
            })?
            .collect::<Result<_, _>>()?;
        // The newest rows that fit, within the window; everything older goes.
        let mut kept = 0;
        let mut first = rows.len();
        for (i, row) in rows.iter().enumerate().rev() {
            if self.window == 0
                || row.at.saturating_add(self.window) <= now
                || kept + row.keys > self.max_keys
            {
                break;
            }
            kept += row.keys;
            first = i;
        }
        if let Some(newest_gone) = first.checked_sub(1).map(|i| rows[i].id) {
            conn.execute("DELETE FROM seen_batch WHERE id <= ?1", [newest_gone])?;
        }
        self.keys = Digests::filling(kept);
        if let Some(oldest_kept) = rows.get(first) {
            let mut read = conn.prepare("SELECT keys FROM seen_batch WHERE id >= ?1")?;
            let mut blobs = read.query([oldest_kept.id])?;
            while let Some(row) = blobs.next()? {
                let blob: Vec<u8> = row.get(0)?;
                split(&blob).for_each(|d| self.keys.fill(d));
            }
        }
        self.rows.extend(&rows[first..]);
        self.keys.seal();
        Ok(())
    }

    /// Whether `(source, message_id)` is new within the window; if so it is added (and
    /// written by `save`). Rows whose window has passed by `now` leave first, so an id is a
    /// duplicate exactly while its window lasts.
    pub fn first_seen(
        &mut self,
        conn: &Connection,
        source: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        if self.window == 0 {
            return Ok(true);
        }
        if self
            .rows
            .front()
            .is_some_and(|r| r.at.saturating_add(self.window) <= now)
        {
            self.expire(conn, now, usize::MAX)?;
        }
        let d = digest(source, message_id);
        if !self.keys.insert(d) {
            return Ok(false);
        }
        self.fresh.push(d);
        self.fresh_at = self.fresh_at.max(now);
        Ok(true)
    }

    /// Delete the rows whose window has passed by `now`, oldest first, until at least `most`
    /// ids have left; whether more are due.
    pub fn expire(
        &mut self,
        conn: &Connection,
        now: i64,
        most: usize,
    ) -> Result<bool, StorageError> {
        let mut left = 0;
        while let Some(row) = self.rows.front() {
            if row.at.saturating_add(self.window) > now {
                return Ok(false);
            }
            if left >= most {
                return Ok(true);
            }
            left += self.drop_oldest(conn)?;
        }
        Ok(false)
    }

    /// Write the ids the open transaction added as one journal row; first, past `max_keys`,
    /// the oldest rows leave early. Called once per transaction, before its commit.
    pub fn save(&mut self, conn: &Connection) -> Result<(), StorageError> {
        if self.fresh.is_empty() {
            return Ok(());
        }
        while self.keys.len() > self.max_keys && !self.rows.is_empty() {
            let early = self.drop_oldest(conn)? as u64;
            self.forgotten += early;
            self.undo.forgotten += early;
        }
        let blob: Vec<u8> = self.fresh.iter().flatten().copied().collect();
        conn.prepare_cached("INSERT INTO seen_batch (at, keys) VALUES (?1, ?2)")?
            .execute(params![self.fresh_at, blob])?;
        self.rows.push_back(Row {
            id: conn.last_insert_rowid(),
            at: self.fresh_at,
            keys: self.fresh.len(),
        });
        self.undo.written += 1;
        self.undo.added.append(&mut self.fresh);
        self.fresh_at = 0;
        Ok(())
    }

    /// The oldest row leaves, and its ids with it; how many.
    fn drop_oldest(&mut self, conn: &Connection) -> Result<usize, StorageError> {
        let Some(row) = self.rows.pop_front() else {
            return Ok(0);
        };
        let blob: Option<Vec<u8>> = conn
            .prepare_cached("DELETE FROM seen_batch WHERE id = ?1 RETURNING keys")?
            .query_map([row.id], |r| r.get(0))?
            .next()
            .transpose()?;
        let digests: Vec<Digest> = split(&blob.unwrap_or_default()).collect();
        for d in &digests {
            self.keys.remove(d);
        }
        self.undo.dropped.push((row, digests));
        Ok(row.keys)
    }

    /// A transaction begins: nothing of it to undo yet.
    pub fn begin(&mut self) {
        self.undo = Undo::default();
        self.fresh.clear();
        self.fresh_at = 0;
    }

    /// The transaction rolled back: memory goes back to what the journal holds.
    pub fn restore(&mut self) {
        for d in self.fresh.drain(..).chain(self.undo.added.drain(..)) {
            self.keys.remove(&d);
        }
        self.fresh_at = 0;
        for _ in 0..self.undo.written {
            self.rows.pop_back();
        }
        for (row, digests) in self.undo.dropped.drain(..).rev() {
            self.rows.push_front(row);
            self.keys.extend(digests);
        }
        self.forgotten -= self.undo.forgotten;
        self.undo = Undo::default();
    }
}

/// A set of digests in 12 bytes each: split by their first byte into shards, each a sorted
/// array plus small hash sets of what was added to it and removed from it since it was last
/// rebuilt (when those reach an eighth of it). A hash set of its own would take 15 to 30
/// bytes an id, and, while doubling, its old table and its new one at once: with a million
/// ids, tens of megabytes more than this at the peak. A lookup is a probe of each small set
/// and a binary search of the few entries of the shard's array that share the digest's next
/// bits (found in the shard's index, half a byte an id): a binary search of the whole array
/// took fourteen steps at a million ids, most of them a cache miss, since new ids land
/// anywhere in it.
struct Digests {
    shards: Vec<Shard>,
    len: usize,
}

#[derive(Default)]
struct Shard {
    /// Sorted, each digest once.
    sorted: Vec<Digest>,
    /// Added since the last rebuild; none of them is live in `sorted`.
    added: HashSet<Digest>,
    /// In `sorted` but removed since the last rebuild.
    removed: HashSet<Digest>,
    /// Where the entries of `sorted` whose first `bits` bits (see `prefix`) are `p` begin:
    /// `starts[p]..starts[p + 1]`. Empty until `sorted` is first built.
    starts: Vec<u32>,
    bits: u32,
}

impl Shard {
    fn contains(&self, d: &Digest) -> bool {
        self.added.contains(d) || (!self.removed.contains(d) && self.in_sorted(d))
    }

    fn in_sorted(&self, d: &Digest) -> bool {
        let run = match self.starts.len() {
            0 => &self.sorted[..],
            _ => {
                let p = prefix(d, self.bits);
                &self.sorted[self.starts[p] as usize..self.starts[p + 1] as usize]
            }
        };
        run.binary_search(d).is_ok()
    }

    /// Index `sorted` as it is now: about eight entries a run (digests are uniform).
    fn index(&mut self) {
        let runs = (self.sorted.len() / 8).max(1);
        self.bits = runs.ilog2().min(20);
        let mut starts = vec![0u32; (1 << self.bits) + 1];
        for d in &self.sorted {
            starts[prefix(d, self.bits) + 1] += 1;
        }
        for p in 1..starts.len() {
            starts[p] += starts[p - 1];
        }
        self.starts = starts;
    }

    fn insert(&mut self, d: Digest) -> bool {
        if self.contains(&d) {
            return false;
        }
        self.added.insert(d);
        self.rebuild_when_due();
        true
    }

    fn remove(&mut self, d: &Digest) -> bool {
        if self.added.remove(d) {
            return true;
        }
        if self.removed.contains(d) || !self.in_sorted(d) {
            return false;
        }
        self.removed.insert(*d);
        self.rebuild_when_due();
        true
    }

    /// Fold what was added and removed into the array, once they are an eighth of it.
    fn rebuild_when_due(&mut self) {
        if self.added.len() + self.removed.len() <= (self.sorted.len() / 8).max(64) {
            return;
        }
        let mut added: Vec<Digest> = self.added.drain().collect();
        added.sort_unstable();
        let live = self.sorted.len() - self.removed.len() + added.len();
        // One pass merging two sorted runs (no digest is in both: see `added`).
        let mut sorted = Vec::with_capacity(live);
        let mut new = added.into_iter().peekable();
        let removed = &self.removed;
        let live_now = |d: &&Digest| removed.is_empty() || !removed.contains(*d);
        for d in self.sorted.iter().filter(live_now) {
            while let Some(a) = new.next_if(|a| a < d) {
                sorted.push(a);
            }
            sorted.push(*d);
        }
        sorted.extend(new);
        self.sorted = sorted;
        self.removed.clear();
        self.index();
    }
}

/// The first `bits` bits of `d` in its shard's order, as an index: the shard is chosen by the
/// low six bits of the first byte, so its digests sort by that byte's top two bits, then by
/// the bytes after it; those bits, in that order, are what runs of `sorted` share.
fn prefix(d: &Digest, bits: u32) -> usize {
    let key = (u32::from(d[0] >> 6) << 22)
        | (u32::from(d[1]) << 14)
        | (u32::from(d[2]) << 6)
        | u32::from(d[3] >> 2);
    (key >> (24 - bits)) as usize
}

impl Digests {
    const SHARDS: usize = 64;

    fn new() -> Self {
        Self {
            shards: (0..Self::SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
        }
    }

    /// An empty set about to take about `n` digests through `fill`, then `seal`.
    fn filling(n: usize) -> Self {
        let mut set = Self::new();
        // Shards fill evenly (digests are uniform): an eighth more than their share is room
        // enough, so no array is copied while it fills.
        let room = n / Self::SHARDS + n / Self::SHARDS / 8 + 64;
        for shard in &mut set.shards {
            shard.sorted.reserve_exact(room);
        }
        set
    }

    /// Take `d` in, unsorted, at start.
    fn fill(&mut self, d: Digest) {
        self.shard(&d).sorted.push(d);
    }

    /// Sort what `fill` took in, one sort per shard.
    fn seal(&mut self) {
        self.len = 0;
        for shard in &mut self.shards {
            shard.sorted.sort_unstable();
            shard.sorted.dedup();
            shard.sorted.shrink_to_fit();
            shard.index();
            self.len += shard.sorted.len();
        }
    }

    fn shard(&mut self, d: &Digest) -> &mut Shard {
        &mut self.shards[usize::from(d[0]) % Self::SHARDS]
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Whether `d` was not in the set.
    fn insert(&mut self, d: Digest) -> bool {
        let new = self.shard(&d).insert(d);
        self.len += usize::from(new);
        new
    }

    fn remove(&mut self, d: &Digest) {
        let was = self.shard(d).remove(d);
        self.len -= usize::from(was);
    }

    fn extend(&mut self, digests: impl IntoIterator<Item = Digest>) {
        for d in digests {
            self.insert(d);
        }
    }
}

/// The digests in a journal row's blob (a torn tail shorter than a digest is ignored).
fn split(blob: &[u8]) -> impl Iterator<Item = Digest> + '_ {
    blob.chunks_exact(12).map(|c| {
        let mut d = [0u8; 12];
        d.copy_from_slice(c);
        d
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::{Digest, Digests};

    /// Digests from a small space (so ids repeat), spread over a few shards, with first
    /// bytes that differ within a shard (as SHA-256's do).
    fn d(n: u16) -> Digest {
        let mut d = [0u8; 12];
        d[0] = (n % 3) as u8 + 64 * ((n / 7) % 4) as u8;
        // Spread over every value of the next bytes (an odd multiplier is a bijection).
        d[1..3].copy_from_slice(&n.wrapping_mul(40503).to_be_bytes());
        d
    }

    proptest! {
        /// Any sequence of inserts and removes (enough to rebuild shards many times) leaves
        /// the set answering as a plain hash set does, after a fill at start too.
        #[test]
        fn the_set_answers_as_a_hash_set_does(
            start in proptest::collection::vec(0u16..3000, 0..500),
            ops in proptest::collection::vec((any::<bool>(), 0u16..3000), 0..4000),
        ) {
            let mut set = Digests::filling(start.len());
            start.iter().for_each(|n| set.fill(d(*n)));
            set.seal();
            let mut model: HashSet<Digest> = start.iter().map(|n| d(*n)).collect();
            prop_assert_eq!(set.len(), model.len());
            for (insert, n) in ops {
                if insert {
                    prop_assert_eq!(set.insert(d(n)), model.insert(d(n)), "insert {}", n);
                } else {
                    set.remove(&d(n));
                    model.remove(&d(n));
                }
                prop_assert_eq!(set.len(), model.len());
            }
            for n in 0..3000 {
                let shard = &set.shards[usize::from(d(n)[0]) % Digests::SHARDS];
                prop_assert_eq!(shard.contains(&d(n)), model.contains(&d(n)), "{}", n);
            }
        }
    }
}
