//! Opening the store: one lane per configured destination, its cursor read back from the file.
//!
//! Invariants kept here: a destination's id is its bit in `log.dests`, so ids stay within
//! `1..=MAX_DESTINATION_ID`; a new destination takes the lowest free id and starts after
//! everything already logged (it is owed nothing older); an id is only reclaimed from a
//! destination no longer configured that owes nothing. Destinations in the file that are not
//! configured keep their rows: their cursors are remembered so housekeeping spares them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Bounds, Lane, Store};
use crate::spool::Seq;
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::schema::{MAX_DESTINATION_ID, bit};

impl Store {
    pub fn new(
        conn: Connection,
        destinations: &[String],
        bounds: Bounds,
    ) -> Result<Self, StorageError> {
        let mut store = Self {
            conn,
            lanes: HashMap::new(),
            bytes: 0,
            bounds,
            refused_bytes: 0,
            high: 0,
            freeable: Vec::new(),
            gc_from: 0,
            seen: super::seen::Seen::new(bounds.dedupe_window, bounds.dedupe_max_keys),
            others: Vec::new(),
            cache: Default::default(),
            tail: Default::default(),
            rewake: Vec::new(),
            last_route: None,
            synced: Some(true),
        };
        store.high = store.high_seq()?;
        for name in destinations {
            let id = store.ensure_destination(name, destinations)?;
            store.lanes.insert(name.clone(), Lane::new(id));
        }
        store.load()?;
        store.warn_unconfigured()?;
        store
            .seen
            .load(&store.conn, super::ms(std::time::SystemTime::now()))?;
        Ok(store)
    }

    /// Serve exactly `destinations` from now on (a reload). A destination no longer listed
    /// keeps its rows and its place in the log, as at start; one listed again resumes from
    /// its cursor; a new one starts after everything already logged. A lane being removed
    /// must have nothing leased (its workers have stopped). Returns the names added.
    pub fn configure(&mut self, destinations: &[String]) -> Result<Vec<String>, StorageError> {
        let removed: Vec<String> = (self.lanes.keys())
            .filter(|n| !destinations.contains(n))
            .cloned()
            .collect();
        let added: Vec<String> = (destinations.iter())
            .filter(|n| !self.lanes.contains_key(*n))
            .cloned()
            .collect();
        if let Some(busy) = removed
            .iter()
            .find(|n| !self.lanes[*n].in_flight.is_empty())
        {
            let leased = self.lanes[busy].in_flight.len();
            return Err(StorageError::StillLeased {
                destination: busy.clone(),
                leased,
            });
        }
        if removed.is_empty() && added.is_empty() {
            return Ok(added);
        }
        // Everything read and written in one transaction; memory changes only once it is
        // committed, so a failure leaves the store as it was.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let lanes = (|| {
            for name in &removed {
                let lane = &self.lanes[name];
                self.conn
                    .prepare_cached("UPDATE destination SET held = ?1 WHERE id = ?2")?
                    .execute(params![lane.hold.encode(), lane.id])?;
            }
            let mut lanes = Vec::with_capacity(added.len());
            for name in &added {
                let mut lane = Lane::new(self.ensure_destination(name, destinations)?);
                lane.cursor = self.cursor_of(lane.id)?;
                lane.scan = lane.cursor;
                self.restore_hold(&mut lane)?;
                lanes.push(lane);
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(lanes)
        })();
        let lanes = match lanes {
            Ok(lanes) => lanes,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        self.last_route = None;
        for name in &removed {
            if let Some(lane) = self.lanes.remove(name) {
                self.cache.forget_reader(lane.bit);
                self.others.push((lane.bit, lane.floor()));
            }
        }
        for (name, lane) in added.iter().zip(lanes) {
            self.others.retain(|(b, _)| *b != lane.bit);
            self.lanes.insert(name.clone(), lane);
        }
        self.count(false)?;
        Ok(added)
    }

    fn cursor_of(&self, id: i64) -> Result<Seq, StorageError> {
        let cursor: i64 =
            self.conn
                .query_row("SELECT cursor FROM destination WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
        Ok(cursor.max(0) as Seq)
    }

    /// The highest seq ever given to a log row (AUTOINCREMENT keeps it after deletes).
    pub(super) fn high_seq(&self) -> Result<Seq, StorageError> {
        let high: i64 = self.conn.query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
            [],
            |r| r.get(0),
        )?;
        Ok(high.max(0) as Seq)
    }

    /// The destination's row; a new destination starts after everything already logged and
    /// takes the lowest free id (its bit in `log.dests`).
    fn ensure_destination(&self, name: &str, configured: &[String]) -> Result<i64, StorageError> {
        let found: Option<i64> = self
            .conn
            .query_row("SELECT id FROM destination WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = found {
            if !(1..=MAX_DESTINATION_ID).contains(&id) {
                let name = name.to_string();
                return Err(StorageError::IdOutOfRange { name, id });
            }
            return Ok(id);
        }
        let taken: HashSet<i64> = self
            .conn
            .prepare("SELECT id FROM destination")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())?;
        let id = match (1..=MAX_DESTINATION_ID).find(|i| !taken.contains(i)) {
            Some(id) => id,
            None => self.reclaim_id(configured)?.ok_or_else(|| {
                let name = name.to_string();
                StorageError::NoFreeId { name }
            })?,
        };
        self.conn.execute(
            "INSERT INTO destination (id, name, cursor) VALUES (?1, ?2, ?3)",
            params![id, name, self.high as i64],
        )?;
        Ok(id)
    }

    /// Forget a destination that is no longer configured and owes nothing, and give back its id.
    fn reclaim_id(&self, configured: &[String]) -> Result<Option<i64>, StorageError> {
        for (id, name, cursor) in self.destination_rows()? {
            if configured.contains(&name) {
                continue;
            }
            if self.owed(id, cursor as Seq)? == 0 {
                self.conn
                    .execute("DELETE FROM destination WHERE id = ?1", [id])?;
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Every destination in the file, configured or not: `(id, name, cursor)` by id.
    fn destination_rows(&self) -> Result<Vec<(i64, String, i64)>, StorageError> {
        self.conn
            .prepare("SELECT id, name, cursor FROM destination ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(StorageError::from)
    }

    /// Messages a destination is still owed: log rows above its cursor plus its retry rows.
    fn owed(&self, id: i64, cursor: Seq) -> Result<i64, StorageError> {
        self.conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM log WHERE seq > ?2 AND (dests & ?3) != 0)
                      + (SELECT COUNT(*) FROM retry WHERE dest = ?1)",
                params![id, cursor as i64, bit(id)],
                |r| r.get(0),
            )
            .map_err(StorageError::from)
    }

    /// Warn about destinations in the file that are no longer configured and still owed
    /// messages, and remember their cursors: their rows are kept for them.
    fn warn_unconfigured(&mut self) -> Result<(), StorageError> {
        for (id, name, cursor) in self.destination_rows()? {
            if self.lanes.contains_key(&name) || !(1..=MAX_DESTINATION_ID).contains(&id) {
                continue;
            }
            self.others.push((bit(id), cursor.max(0) as Seq));
            let pending = self.owed(id, cursor.max(0) as Seq)?;
            if pending > 0 {
                tracing::warn!(destination = %name, pending,
                    "the spool holds messages for a destination no longer configured; they are kept until it is configured again");
            }
        }
        Ok(())
    }

    /// Cursors and counts from the file, at start, when nothing is leased yet. (A failed
    /// transaction restores a `Snapshot` instead: reloading would forget live leases.)
    ///
    /// One pass over the log counts what each lane is owed and recomputes the byte total in
    /// `stats`: spools written by versions that stored the total as an absolute value may have
    /// lost `dlq replay`'s additions. In one transaction, so a concurrent `dlq` cannot slip in
    /// between the read and the write.
    /// Park again what each lane held in memory when it stopped (`destination.held`), in
    /// order, each group ready at once. Only what is at or below the cursor: the rest is read
    /// from the log again, in order. A held item below the cursor is the oldest of its group
    /// still owed (anything older of it was in flight, which keeps the cursor below itself),
    /// so leasing it first keeps the group's order.
    fn restore_holds(&mut self) -> Result<(), StorageError> {
        let mut lanes = std::mem::take(&mut self.lanes);
        let restored = lanes.values_mut().try_for_each(|l| self.restore_hold(l));
        self.lanes = lanes;
        restored
    }

    fn restore_hold(&self, lane: &mut Lane) -> Result<(), StorageError> {
        let held: Option<Vec<u8>> = self.conn.query_row(
            "SELECT held FROM destination WHERE id = ?1",
            [lane.id],
            |r| r.get(0),
        )?;
        lane.hold = Default::default();
        let below = super::hold::decode(&held.unwrap_or_default());
        for seq in below.into_iter().filter(|s| *s <= lane.cursor) {
            let group: Option<Option<String>> = self
                .conn
                .prepare_cached("SELECT group_id FROM log WHERE seq = ?1")?
                .query_row([seq as i64], |r| r.get(0))
                .optional()?;
            if let Some(Some(group)) = group {
                lane.hold.restore(Arc::from(group), seq);
            }
        }
        lane.hold.dirty = false;
        Ok(())
    }

    fn load(&mut self) -> Result<(), StorageError> {
        let mut lanes = std::mem::take(&mut self.lanes);
        for lane in lanes.values_mut() {
            match self.cursor_of(lane.id) {
                Ok(cursor) => (lane.cursor, lane.scan) = (cursor, cursor),
                Err(e) => {
                    self.lanes = lanes;
                    return Err(e);
                }
            }
            lane.in_flight.clear();
        }
        self.lanes = lanes;
        self.restore_holds()?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let loaded = (|| {
            let bytes = self.count(true)?;
            self.conn
                .execute("UPDATE stats SET log_bytes = ?1 WHERE id = 0", [bytes])?;
            self.conn
                .execute_batch("COMMIT")
                .map_err(StorageError::from)
        })();
        if loaded.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        loaded
    }
}
