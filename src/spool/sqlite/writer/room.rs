//! Keeping the write-ahead log within the disk. The WAL is copied into the database file in
//! the background and starts over once it holds 16 MiB (64 MiB at most; see
//! `checkpoint.rs`). On a disk with less room than that the WAL fills it first, and
//! then nothing can be written again, even once space comes back: a checkpoint needs room
//! the WAL holds (the database file grows by the pages it copies), and every transaction
//! adds to the WAL. So while the disk is tight (less than `TIGHT` free, measured at start
//! and every tick), the WAL is checkpointed after any transaction that leaves it taking more
//! than half the free space, and cut back to nothing: the data then lives in the database
//! file. A reader on an older snapshot (`switchyard dlq`) makes it wait, up to the busy
//! timeout; what it could not copy waits for the next check. Delivered rows are freed as soon
//! as they are delivered there, not a slice at a time (`Store::garbage_waiting`). On a disk
//! with room, none of this runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spool::sqlite::store::Store;
use crate::telemetry::{self, Throttle};

/// Free space under which the WAL is watched: four times the length at which it starts
/// over, and the most it reaches when the writer is never idle (see `checkpoint.rs`).
const TIGHT: u64 = 64 << 20;

pub(super) struct Room {
    /// The database file (none for an in-memory one).
    db: Option<PathBuf>,
    wal: PathBuf,
    tight: bool,
}

impl Room {
    pub fn new(store: &Store) -> Self {
        let db = store
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let mut room = Self {
            wal: crate::spool::sqlite::wal::file_of(db.as_deref().unwrap_or(Path::new(""))),
            db,
            tight: false,
        };
        room.measure();
        room
    }

    /// Whether the disk is tight now; at every tick.
    pub fn measure(&mut self) {
        self.tight = self
            .db
            .as_deref()
            .and_then(free_bytes)
            .is_some_and(|free| free < TIGHT);
    }

    /// Whether the disk was nearly full when last measured.
    pub fn tight(&self) -> bool {
        self.tight
    }

    /// After a transaction: on a tight disk, checkpoint if the WAL takes more than half of
    /// the free space.
    pub fn check(&self, store: &Store) {
        static TOLD: Throttle = Throttle::new(Duration::from_secs(60), 0);
        if !self.tight {
            return;
        }
        let Some(free) = self.db.as_deref().and_then(free_bytes) else {
            return;
        };
        let wal_bytes = std::fs::metadata(&self.wal).map(|m| m.len()).unwrap_or(0);
        if wal_bytes <= free / 2 {
            return;
        }
        let done = store
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
        match done {
            Ok((log, copied)) => tracing::debug!(
                wal_bytes,
                free,
                log,
                copied,
                "checkpointed the WAL early: the disk is nearly full"
            ),
            Err(e) => {
                if let Some(failed) = TOLD.due(telemetry::once) {
                    tracing::warn!(wal_bytes, free, failed_since_last_line = failed, error = %e,
                        "cannot checkpoint the spool's WAL on a nearly full disk; will try again");
                }
            }
        }
    }
}

/// Bytes an unprivileged writer may still use on the file system holding the file `path`.
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path.parent()?).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}
