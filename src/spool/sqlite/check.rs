//! Checking a spool file: SQLite's own structure check (`PRAGMA quick_check`: pages,
//! b-trees, indexes) and every stored body against the checksum written with it.
//!
//! The daemon checks the structure of every table but the log and its bodies when it opens
//! the file (the log it reads through at start anyway, and checking them costs a pass over
//! the whole file);
//! `switchyard spool check` checks everything, log and bodies included, and works next to
//! the running daemon.

use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use super::StorageError;
use super::body::Bodies;
use super::schema;
use crate::spool::SpoolError;

/// Most problems SQLite is asked to name.
const MOST: usize = 20;

/// Tables the daemon checks at start (everything but `log` and `body`).
const AT_START: &[&str] = &["destination", "retry", "dead_letter", "seen_batch", "stats"];

/// What `switchyard spool check` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Messages in the log.
    pub messages: u64,
    /// Of those, the ones with a checksum (written by schema 4 and later), all verified.
    pub checksummed: u64,
    pub dead_letters: u64,
    /// Each problem in words: SQLite's, or a body that does not match its checksum.
    pub problems: Vec<String>,
}

/// Structure problems in the tables the daemon relies on at start, as SQLite names them.
pub fn at_start(conn: &Connection) -> Result<Vec<String>, StorageError> {
    let mut problems = Vec::new();
    for table in AT_START {
        problems.extend(quick_check(conn, Some(table))?);
    }
    Ok(problems)
}

/// `PRAGMA quick_check` of one table (with its indexes) or the whole file; empty when fine.
fn quick_check(conn: &Connection, table: Option<&str>) -> Result<Vec<String>, StorageError> {
    let sql = match table {
        Some(t) => format!("PRAGMA quick_check({t})"),
        None => format!("PRAGMA quick_check({MOST})"),
    };
    let found = conn
        .prepare(&sql)
        .and_then(|mut stmt| stmt.query_map([], |r| r.get::<_, String>(0))?.collect());
    let found: Vec<String> = match found {
        Ok(found) => found,
        // A page too damaged for the check to walk is a problem it found, not a failure.
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            vec![format!("{}: {e}", table.unwrap_or("the file"))]
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match found.as_slice() {
        [ok] if ok == "ok" => Vec::new(),
        _ => found.into_iter().take(MOST).collect(),
    })
}

/// Check the spool in `dir`: its whole structure, then every body against its checksum.
pub fn check(dir: &Path) -> Result<Report, SpoolError> {
    let conn = schema::open(dir, false)?;
    let mut report = Report {
        problems: quick_check(&conn, None)?,
        ..Report::default()
    };
    let mut stmt = conn
        .prepare("SELECT seq, message_id, body, crc, body_at, bytes FROM log ORDER BY seq")
        .map_err(StorageError::from)?;
    let mut rows = stmt.query([]).map_err(StorageError::from)?;
    let mut bodies = Bodies::default();
    while let Some(row) = rows.next().map_err(StorageError::from)? {
        report.messages += 1;
        let crc: Option<i64> = row.get(3).map_err(StorageError::from)?;
        if crc.is_none() {
            continue;
        }
        report.checksummed += 1;
        let seq: i64 = row.get(0).map_err(StorageError::from)?;
        let inline: String = row.get(2).map_err(StorageError::from)?;
        let (at, bytes) = (
            row.get(4).map_err(StorageError::from)?,
            row.get(5).map_err(StorageError::from)?,
        );
        let (_, why) = bodies.text(&conn, seq as u64, &inline, at, bytes, crc)?;
        if let Some(why) = why {
            let id: String = row.get(1).map_err(StorageError::from)?;
            report
                .problems
                .push(format!("message seq {seq} (messageId {id}): {why}"));
        }
    }
    report.dead_letters = conn
        .query_row("SELECT COUNT(*) FROM dead_letter", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(StorageError::from)? as u64;
    Ok(report)
}
