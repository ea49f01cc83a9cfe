//! The durable spool: one SQLite file (WAL, fsync on every commit) holding an append-only
//! message log, one cursor per destination, a retry set, dead letters and a dedupe index.
//!
//! Every write goes through one thread that owns the connection and gathers concurrent
//! commands into one transaction (group commit); async callers wait on a oneshot answer, so
//! the tokio runtime never blocks on SQLite. Leases live in that thread's memory only: after
//! a crash, whatever was leased and not settled is due again (at-least-once).
//!
//! Layout: this file is the `Spool` the daemon calls (open, lock, send a command, wait for
//! its answer); `writer/` is the thread and its transactions; `store/` is the state machine
//! it runs; `schema.rs` is the file and its versions; `body.rs` where a logged message's
//! text is kept and how it is read back; `error.rs` says what can fail, as data;
//! `dlq.rs` is what `switchyard dlq` does to the same file from another process; `check.rs`
//! checks the file's structure and stored bodies (`switchyard spool check`); `wal.rs` says
//! what a crash left at the end of the write-ahead log before SQLite drops it.

mod body;
pub mod check;
pub mod dlq;
mod error;
pub mod schema;
mod store;
#[cfg(test)]
mod tests;
mod wal;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot};

use self::writer::{Command, Reply, Settlement, Shared};
use super::{Appended, Attempt, Depth, Leased, Rejected, Seq, Spool, SpoolError};
use crate::message::{Accepted, Parsed};

pub use error::StorageError;
pub use store::{from_ms, ms};

pub struct SqliteSpool {
    /// To the writer thread; it stops when the last sender is dropped.
    commands: Sender<Command>,
    /// Counts, next retry times and wakers the writer publishes, read without a round trip.
    shared: Arc<Shared>,
    /// Where it is, for dead letters read on connections of their own.
    dir: std::path::PathBuf,
}

/// The bounds a spool keeps, from `[spool]`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Appends beyond this many bytes in the log are refused (`Full`).
    pub max_bytes: u64,
    /// What is kept of messages refused at ingest stays under this many bytes.
    pub max_refused_bytes: u64,
    /// A `(source, messageId)` seen within it is a duplicate.
    pub dedupe_window: Duration,
    /// Most ids the dedupe index holds; past it the oldest are forgotten early.
    pub dedupe_max_keys: usize,
}

impl From<&crate::config::SpoolConfig> for Bounds {
    fn from(s: &crate::config::SpoolConfig) -> Self {
        Self {
            max_bytes: s.max_bytes,
            max_refused_bytes: s.max_refused_bytes,
            dedupe_window: s.dedupe_window,
            dedupe_max_keys: s.dedupe_max_keys,
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        (&crate::config::SpoolConfig::default()).into()
    }
}

impl SqliteSpool {
    /// Open (or create) the spool in `dir` for these destinations and start its writer.
    /// Blocking: call it before serving, or from `spawn_blocking`.
    pub fn open(dir: &Path, destinations: &[String], bounds: Bounds) -> Result<Self, SpoolError> {
        let lock = lock(dir)?;
        let conn = schema::open(dir, true)?;
        let store = store::Store::new(conn, destinations, bounds)?;
        let wakers: HashMap<String, Arc<Notify>> = destinations
            .iter()
            .map(|d| (d.clone(), Arc::new(Notify::new())))
            .collect();
        let shared = Arc::new(Shared {
            views: Default::default(),
            wakers: std::sync::Mutex::new(wakers),
            commits: Default::default(),
            appending: Default::default(),
        });
        let (commands, rx) = channel();
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                writer::run(store, rx, for_thread);
                drop(lock);
            })
            .map_err(StorageError::StartWriter)?;
        Ok(Self {
            commands,
            shared,
            dir: dir.to_path_buf(),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SpoolError> {
        let stopped = || SpoolError::from(StorageError::WriterStopped);
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Two daemons on one spool would each lease the same messages: the second is refused. The
/// OS drops the lock with the process, so a crash never leaves it behind. (`switchyard dlq`
/// does not take it: SQLite itself keeps its writes apart from the daemon's.)
fn lock(dir: &Path) -> Result<std::fs::File, StorageError> {
    std::fs::create_dir_all(dir).map_err(StorageError::io("create", dir))?;
    let path = dir.join("spool.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StorageError::Io {
            what: "lock",
            path,
            source,
        }),
    }
}

#[async_trait]
impl Spool for SqliteSpool {
    fn dead_letters(&self) -> crate::spool::DeadLetters {
        crate::spool::DeadLetters::Sqlite(self.dir.clone())
    }

    async fn append(&self, messages: Vec<Accepted>) -> Result<Vec<Appended>, SpoolError> {
        // Parsed messages the spool does not keep are freed here, after the answer, rather
        // than by the writer thread, which every append and lease waits on.
        let parsed: Vec<Parsed> = messages.iter().filter_map(|m| m.parsed.clone()).collect();
        // Counted before it is sent; the writer counts it down when it takes it into a
        // transaction (a writer that has stopped has no use for the count).
        self.shared.appending.fetch_add(1, Ordering::AcqRel);
        let answer = self.call(|r| Command::Append(messages, r)).await;
        drop(parsed);
        answer
    }

    async fn reject(&self, rejected: Vec<Rejected>) -> Result<usize, SpoolError> {
        self.call(|r| Command::Reject(rejected, r)).await
    }

    async fn lease(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        self.call(|r| Command::Lease(destination.to_string(), max, r))
            .await
    }

    async fn ack(&self, destination: &str, seqs: &[Seq]) -> Result<(), SpoolError> {
        let settlement = Settlement::Ack(destination.to_string(), seqs.to_vec());
        self.call(|r| Command::Settle(settlement, r)).await
    }

    async fn retry_at(
        &self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        let settlement =
            Settlement::Retry(destination.to_string(), seq, at, Box::new(attempt.clone()));
        self.call(|r| Command::Settle(settlement, r)).await
    }

    async fn dead_letter(
        &self,
        destination: &str,
        seq: Seq,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        let settlement = Settlement::Dead(destination.to_string(), seq, Box::new(attempt.clone()));
        self.call(|r| Command::Settle(settlement, r)).await
    }

    async fn wait(&self, destination: &str, max: Duration) {
        let notify = (self.shared.wakers.lock())
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .cloned();
        let Some(notify) = notify else {
            tokio::time::sleep(max).await;
            return;
        };
        let next_due = self.view(destination).next_due;
        let until_due = next_due
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(max);
        let _ = tokio::time::timeout(max.min(until_due), notify.notified()).await;
    }

    fn depth(&self, destination: &str) -> Depth {
        self.view(destination).depth
    }

    async fn configure(&self, destinations: &[String]) -> Result<Vec<String>, SpoolError> {
        self.call(|r| Command::Configure(destinations.to_vec(), r))
            .await
    }
}

impl SqliteSpool {
    /// Transactions committed so far (group commit makes this fewer than the calls).
    pub fn commits(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn view(&self, destination: &str) -> writer::View {
        let views = self.shared.views.lock().unwrap_or_else(|p| p.into_inner());
        views.get(destination).copied().unwrap_or_default()
    }
}
