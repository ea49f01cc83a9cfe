//! What a transaction may change in memory, taken before it begins and put back when it rolls
//! back: the file is then back where it was, and memory must match it. Reloading from the
//! file instead would forget leases committed by earlier transactions, whose workers are still
//! delivering them; their outcomes would be ignored and the items sent again.

use std::collections::BTreeMap;

use super::hold::Hold;
use super::{Counts, Flight, Store};
use crate::spool::Seq;

pub(in crate::spool::sqlite) struct Snapshot {
    lanes: Vec<(String, SavedLane)>,
    bytes: u64,
    refused_bytes: u64,
    high: Seq,
    freeable: Vec<Seq>,
    gc_from: Seq,
    rewake: Vec<String>,
}

/// The parts of a `Lane` that commands change (its id never changes; `oldest` is only
/// refreshed by housekeeping, after its own commit).
struct SavedLane {
    cursor: Seq,
    scan: Seq,
    /// Its leases and hold, when the transaction leases or settles for it (nothing else
    /// changes them); otherwise they are left as they are.
    leases: Option<(BTreeMap<Seq, Flight>, Hold)>,
    counts: Counts,
}

impl Store {
    /// What the transaction may change: the leases and hold of the lanes it leases or
    /// settles for (`leasing`), and every lane's positions and counts (an append counts for
    /// all). Copying every lane's leases and held items each time cost more than the rest.
    /// The dedupe index keeps its own undo log from here (`Seen::begin`).
    pub fn snapshot(&mut self, leasing: &[&str]) -> Snapshot {
        self.seen.begin();
        let lanes = self
            .lanes
            .iter()
            .map(|(name, l)| {
                let saved = SavedLane {
                    cursor: l.cursor,
                    scan: l.scan,
                    leases: leasing
                        .contains(&name.as_str())
                        .then(|| (l.in_flight.clone(), l.hold.clone())),
                    counts: l.counts,
                };
                (name.clone(), saved)
            })
            .collect();
        Snapshot {
            lanes,
            bytes: self.bytes,
            refused_bytes: self.refused_bytes,
            high: self.high,
            freeable: self.freeable.clone(),
            gc_from: self.gc_from,
            rewake: self.rewake.clone(),
        }
    }

    /// Put memory back as it was when `snapshot` was taken (its transaction rolled back).
    pub fn restore(&mut self, snapshot: Snapshot) {
        for (name, saved) in snapshot.lanes {
            if let Some(lane) = self.lanes.get_mut(&name) {
                lane.cursor = saved.cursor;
                lane.scan = saved.scan;
                if let Some((in_flight, hold)) = saved.leases {
                    lane.in_flight = in_flight;
                    lane.hold = hold;
                }
                lane.counts = saved.counts;
            }
        }
        self.bytes = snapshot.bytes;
        self.refused_bytes = snapshot.refused_bytes;
        self.high = snapshot.high;
        self.cache.forget_above(snapshot.high);
        self.tail.forget_above(snapshot.high);
        self.freeable = snapshot.freeable;
        self.gc_from = snapshot.gc_from;
        self.seen.restore();
        self.rewake = snapshot.rewake;
    }
}
