//! Dead letters, wherever the spool keeps them: the embedded spool's file (read and written on
//! a connection of its own, off the async threads) or JetStream's dead-letter streams. What
//! `switchyard dlq` and the admin API act on.

use std::path::PathBuf;
use std::sync::Arc;

use super::SpoolError;
use super::jetstream::dead::Dead;
use super::sqlite::dlq::{self, DeadLetter, Replayed, Selector, Stopped};

#[derive(Clone)]
pub enum DeadLetters {
    /// The embedded spool in this directory.
    Sqlite(PathBuf),
    JetStream(Arc<Dead>),
}

impl DeadLetters {
    /// Matching dead letters: oldest first, or the newest `newest`, newest first.
    pub async fn list(
        &self,
        destination: Option<String>,
        reason: Option<String>,
        newest: Option<usize>,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        match self {
            DeadLetters::Sqlite(dir) => {
                let dir = dir.clone();
                blocking(move || {
                    let conn = dlq::open(&dir)?;
                    let (d, r) = (destination.as_deref(), reason.as_deref());
                    match newest {
                        Some(n) => dlq::newest(&conn, d, r, n),
                        None => dlq::list(&conn, d, r),
                    }
                })
                .await
            }
            DeadLetters::JetStream(dead) => {
                dead.list(destination.as_deref(), reason.as_deref(), newest)
                    .await
            }
        }
    }

    /// One, with its message.
    pub async fn show(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        match self {
            DeadLetters::Sqlite(dir) => {
                let dir = dir.clone();
                blocking(move || dlq::show(&dlq::open(&dir)?, id)).await
            }
            DeadLetters::JetStream(dead) => dead.show(id).await,
        }
    }

    /// Back on their destination's queue (only destinations in `configured`).
    pub async fn replay(
        &self,
        which: Selector,
        configured: Vec<String>,
    ) -> Result<Replayed, Stopped> {
        match self {
            DeadLetters::Sqlite(dir) => {
                let dir = dir.clone();
                blocking_stopped(move || {
                    let mut conn = dlq::open(&dir)?;
                    dlq::replay(&mut conn, &which, &configured)
                })
                .await
            }
            DeadLetters::JetStream(dead) => dead.replay(&which, &configured).await,
        }
    }

    /// Deleted for good.
    pub async fn purge(&self, which: Selector) -> Result<usize, Stopped> {
        match self {
            DeadLetters::Sqlite(dir) => {
                let dir = dir.clone();
                blocking_stopped(move || {
                    let mut conn = dlq::open(&dir)?;
                    dlq::purge(&mut conn, &which)
                })
                .await
            }
            DeadLetters::JetStream(dead) => dead.purge(&which).await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Unavailable(format!("the spool task failed: {e}")))?
}

async fn blocking_stopped<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Stopped> + Send + 'static,
) -> Result<T, Stopped> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Stopped {
        done: 0,
        error: SpoolError::Unavailable(format!("the spool task failed: {e}")),
    })?
}
