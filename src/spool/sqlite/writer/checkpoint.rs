//! Checkpoints off the writer's path. SQLite checkpoints by itself in the commit that takes
//! the WAL past 1,000 pages: the committing thread copies those pages into the database file
//! and fsyncs it (5–13 ms at half load, several times a second), and every ingest call
//! waiting for that commit waits for the checkpoint too. Here a thread of its own copies the
//! WAL into the file (a PASSIVE checkpoint on its own connection: it never blocks the writer,
//! nor waits for it) every `PERIOD`.
//!
//! The WAL only starts again from its beginning when a write transaction begins with every
//! frame of it copied, which under continuous writes the background thread alone never
//! achieves (frames are committed while it copies). So once the WAL holds `RESTART_AT`
//! frames, the writer, when no command waits and the background has finished a pass since
//! its last try, checkpoints the few frames committed since that pass itself (an fsync of
//! the file and a few pages, where SQLite's own copied a thousand); its next transaction then
//! starts the WAL over. SQLite's own checkpoint stays as the backstop, at `BACKSTOP`
//! frames, should neither have run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::telemetry::{self, Throttle};

/// How often the background thread copies the WAL into the database file (more often in
/// unit tests, which write a few MiB). A checkpoint copies the newest frame of each page the
/// WAL holds, and the spool's pages live briefly: a message's text is written, delivered
/// within milliseconds, and its pages freed and written again with newer texts. Copied once a
/// second rather than ten times, a page rewritten in between is copied once: 19% fewer bytes
/// written per message at full load, 23% at half load (measured; see the README). Under
/// sustained full load the WAL then reaches `BACKSTOP` before a pass, and SQLite's own
/// checkpoint does most of the copying.
const PERIOD: Duration = Duration::from_millis(if cfg!(test) { 10 } else { 1000 });
/// WAL frames (pages) past which the writer lets the WAL start over (16 MiB of 4 KiB pages;
/// 1 MiB in unit tests).
const RESTART_AT: u64 = if cfg!(test) { 256 } else { 4096 };
/// SQLite's own checkpoint, in the committing thread, at this many frames (64 MiB; 4 MiB in
/// unit tests). It copies only what the background has not, and the next transaction starts
/// the WAL over: what keeps the WAL bounded when the writer is never idle.
const BACKSTOP: i64 = if cfg!(test) { 1024 } else { 16384 };

/// What the background thread last found, for the writer.
#[derive(Default)]
struct Progress {
    /// Frames in the WAL at the start of the last pass.
    frames: AtomicU64,
    /// Passes finished (successfully or not).
    passes: AtomicU64,
}

pub(super) struct Checkpointer {
    progress: Arc<Progress>,
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// `passes` when the writer last tried to let the WAL start over.
    tried_at: u64,
}

impl Checkpointer {
    /// Start checkpointing `writer`'s file in the background and leave SQLite's own
    /// checkpoints as the backstop; `None` (SQLite's checkpoints as they were) for an
    /// in-memory database or when the thread's connection cannot be opened.
    pub fn start(writer: &Connection) -> Option<Self> {
        let path = writer.path().filter(|p| !p.is_empty()).map(PathBuf::from)?;
        let conn = match open(&path) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(),
                    "cannot open a connection for background checkpoints; the writer checkpoints the WAL itself");
                return None;
            }
        };
        if let Err(e) = writer.pragma_update(None, "wal_autocheckpoint", BACKSTOP) {
            tracing::warn!(error = %e, "cannot move SQLite's own checkpoint; the writer checkpoints the WAL itself");
            return None;
        }
        let progress = Arc::new(Progress::default());
        let (stop, stopped) = channel();
        let for_thread = progress.clone();
        let thread = std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || run(conn, stopped, for_thread));
        match thread {
            Ok(thread) => Some(Self {
                progress,
                stop: Some(stop),
                thread: Some(thread),
                tried_at: 0,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the checkpoint thread; the writer checkpoints the WAL itself");
                let _ = writer.pragma_update(None, "wal_autocheckpoint", 1000);
                None
            }
        }
    }

    /// Whether the writer should let the WAL start over when it is next idle: the WAL is
    /// long, and the background finished a pass since the writer last tried.
    pub fn restart_due(&self) -> bool {
        self.progress.frames.load(Ordering::Relaxed) >= RESTART_AT
            && self.progress.passes.load(Ordering::Relaxed) != self.tried_at
    }

    /// On the writer, with no command waiting: copy what the last background pass left, so
    /// the next transaction starts the WAL over. A background pass under way makes this a
    /// no-op (SQLite allows one checkpoint at a time); the writer tries after the next.
    pub fn restart(&mut self, writer: &Connection) {
        static TOLD: Throttle = Throttle::new(Duration::from_secs(60), 0);
        self.tried_at = self.progress.passes.load(Ordering::Relaxed);
        if let Err(e) = passive(writer)
            && let Some(failed) = TOLD.due(telemetry::once)
        {
            tracing::warn!(error = %e, failed_since_last_line = failed,
                "cannot checkpoint the spool's WAL; will try again");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The background connection: checkpoints only. `synchronous = FULL` as the writer's, so a
/// checkpoint fsyncs the database file before the WAL's frames may be overwritten.
fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// One PASSIVE checkpoint: as many frames as it can copy without waiting for anyone.
/// Returns the frames in the WAL when it began (`PRAGMA wal_checkpoint`'s second column;
/// -1, read as 0, outside WAL mode).
fn passive(conn: &Connection) -> rusqlite::Result<u64> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(frames.max(0) as u64)
}

fn run(conn: Connection, stop: Receiver<()>, progress: Arc<Progress>) {
    static TOLD: Throttle = Throttle::new(Duration::from_secs(60), 0);
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(PERIOD) {
        match passive(&conn) {
            Ok(frames) => progress.frames.store(frames, Ordering::Relaxed),
            Err(e) => {
                if let Some(failed) = TOLD.due(telemetry::once) {
                    tracing::warn!(error = %e, failed_since_last_line = failed,
                        "cannot checkpoint the spool's WAL in the background; will try again");
                }
            }
        }
        progress.passes.fetch_add(1, Ordering::Relaxed);
    }
}
