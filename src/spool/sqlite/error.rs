//! What can go wrong with the spool's storage, as data: the SQLite file, the folder and lock
//! file around it, its schema, destination ids, and the writer thread that owns it.
//!
//! Each variant names what failed and keeps the error underneath as its `source`, for code
//! that needs to look at it (a busy database, a missing folder). The message repeats the
//! source's own words on purpose: every caller shows an error as one line (`error = %e` in
//! the logs, `switchyard dlq: {e}`, the daemon's start-up failure), so a cause left to
//! `source()` alone would never reach an operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::schema::MAX_DESTINATION_ID;
use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A statement or transaction on the spool file failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The spool file cannot be opened (or created).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A file or folder next to the spool file: `what` is the verb (create, open, lock).
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `switchyard dlq` never creates a spool: a wrong path should be an error.
    #[error("no spool at {}", path.display())]
    NoSpool { path: PathBuf },
    /// A destination cannot stop being served while items of it are leased.
    #[error("destination `{destination}` still has {leased} items being delivered")]
    StillLeased { destination: String, leased: usize },
    /// The spool's lock file is held by another process.
    #[error("another switchyard daemon is using the spool in {}", dir.display())]
    Locked { dir: PathBuf },
    #[error(
        "the spool was written by a newer switchyard (schema {found}; this build knows {known})"
    )]
    NewerSchema { found: i64, known: i64 },
    /// SQLite's structure check found damage in the file.
    #[error(
        "the spool file {path} is damaged ({problems}). Keep a copy of it; `switchyard spool check` lists every \
         problem; `sqlite3 {path} .recover` salvages what is readable; moving the spool directory aside lets \
         the daemon start empty",
        path = path.display(), problems = problems.join("; ")
    )]
    Damaged {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// A schema step failed; the file stays at its old version (one transaction).
    #[error("migrating the spool to schema {version}: {source}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    /// The file gives a destination an id this build cannot turn into a bit of `log.dests`.
    #[error(
        "destination `{name}` has id {id} in the spool, beyond the {MAX_DESTINATION_ID} this version can route; start with a new spool.path"
    )]
    IdOutOfRange { name: String, id: i64 },
    /// Every id is taken by a destination still owed messages.
    #[error(
        "cannot add destination `{name}`: the spool holds {MAX_DESTINATION_ID} destinations, each still owed messages; configure fewer names or start with a new spool.path"
    )]
    NoFreeId { name: String },
    #[error("cannot start the spool writer: {0}")]
    StartWriter(#[source] std::io::Error),
    /// The writer thread is gone (it stops when the spool is dropped): nothing can be stored.
    #[error("the spool writer has stopped")]
    WriterStopped,
    /// The transaction this call shared with others (group commit) failed; each of its
    /// callers gets the one error, which no caller owns alone.
    #[error("{0}")]
    Transaction(#[source] Arc<StorageError>),
}

impl StorageError {
    /// The disk (or the file system's quota) is full: nothing can be stored until a person
    /// frees space, but nothing stored is lost either.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StorageError::Io { source, .. } | StorageError::StartWriter(source) => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            StorageError::Transaction(inner) => inner.is_disk_full(),
            _ => false,
        }
    }

    /// For `map_err`: `what` (a verb) failed on `path`.
    pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| StorageError::Io { what, path, source }
    }
}

/// `switchyard dlq` answers `SpoolError`s straight from SQLite calls.
impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError::Storage(StorageError::Sqlite(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_storage_error_names_what_failed_and_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        // No folder can be created inside a file.
        let err = super::super::schema::open(&file.join("spool"), true).unwrap_err();
        assert!(
            matches!(err, StorageError::Io { what: "create", .. }),
            "{err:?}"
        );
        let cause = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert!(cause.is_some(), "{err:?}");
        let spool = SpoolError::from(err);
        let text = spool.to_string();
        assert!(
            text.starts_with("spool storage failed: cannot create "),
            "{text}"
        );
        assert!(matches!(spool, SpoolError::Storage(_)));
    }
}
