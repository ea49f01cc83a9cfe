//! Dead letters as a person sees them: list, show, replay and purge, on the spool file.
//!
//! These run in the `switchyard dlq` process, next to a running daemon (WAL allows it). A
//! replay appends the message to the log again, routed to its destination only; the daemon's
//! worker finds it on its next lease, at most about a second later when idle.
//!
//! Replay and purge write in short transactions of [`CHUNK`] dead letters, and after each
//! one leave the file to the daemon for as long as it took: the daemon's writer never waits
//! long for the lock, so ingest and delivery go on while a large replay runs. Each chunk is
//! atomic (a dead letter is either still one, or back in the log), so a replay stopped half
//! way (an error, a kill) has done exactly the chunks it reported, and can be run again.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::schema::{self, LogRow};
use super::store::{from_ms, ms};
use crate::spool::SpoolError;

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    /// `None` for a message refused at ingest (it was never routed).
    pub destination: Option<String>,
    pub source: String,
    pub message_id: Option<String>,
    pub group_id: Option<String>,
    /// `invalid` (refused at ingest), `permanent` (the destination refused it, or it cannot
    /// be translated) or `exhausted` (the retry policy gave up).
    pub reason: String,
    /// The last error in words.
    pub error: String,
    pub attempts: u32,
    #[serde(serialize_with = "rfc3339_opt")]
    pub first_attempt: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339")]
    pub last_attempt: SystemTime,
    /// HTTP status of the last answer.
    pub status: Option<u16>,
    /// The start of the last answer's body.
    pub response: Option<String>,
    /// The message (JSON); only filled by `show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<serde_json::Value>,
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone)]
pub enum Selector {
    Ids(Vec<i64>),
    Destination(String),
    All,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&chrono::DateTime::<chrono::Utc>::from(*t).to_rfc3339())
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Open an existing spool (never creates one: a wrong path should be an error).
pub fn open(dir: &Path) -> Result<Connection, SpoolError> {
    Ok(schema::open(dir, false)?)
}

const COLUMNS: &str = "id, destination, source, message_id, group_id, reason, error, attempts, first_attempt, last_attempt, status, response, body";

fn from_row(r: &Row<'_>, with_body: bool) -> rusqlite::Result<DeadLetter> {
    let body: String = r.get(12)?;
    Ok(DeadLetter {
        id: r.get(0)?,
        destination: r.get(1)?,
        source: r.get(2)?,
        message_id: r.get(3)?,
        group_id: r.get(4)?,
        reason: r.get(5)?,
        error: r.get(6)?,
        attempts: r.get(7)?,
        first_attempt: r.get::<_, Option<i64>>(8)?.map(from_ms),
        last_attempt: from_ms(r.get(9)?),
        status: r.get(10)?,
        response: r.get(11)?,
        message: with_body
            .then(|| serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))),
    })
}

/// Dead letters, oldest first, optionally only one destination's or one reason's.
pub fn list(
    conn: &Connection,
    destination: Option<&str>,
    reason: Option<&str>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    select(conn, destination, reason, "ASC", None)
}

/// The newest `limit` dead letters, newest first (the console's page).
pub fn newest(
    conn: &Connection,
    destination: Option<&str>,
    reason: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, SpoolError> {
    select(conn, destination, reason, "DESC", Some(limit))
}

fn select(
    conn: &Connection,
    destination: Option<&str>,
    reason: Option<&str>,
    order: &str,
    limit: Option<usize>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letter WHERE (?1 IS NULL OR destination = ?1) AND (?2 IS NULL OR reason = ?2) ORDER BY id {order} LIMIT ?3"
    );
    // SQLite reads a negative LIMIT as none.
    let limit = limit.map_or(-1, |l| l as i64);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![destination, reason, limit], |r| from_row(r, false))?;
    rows.collect::<Result<_, _>>().map_err(SpoolError::from)
}

pub fn show(conn: &Connection, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letter WHERE id = ?1");
    conn.query_row(&sql, [id], |r| from_row(r, true))
        .optional()
        .map_err(SpoolError::from)
}

fn selected_ids(conn: &Connection, which: &Selector) -> Result<Vec<i64>, SpoolError> {
    let (sql, arg): (&str, Option<&str>) = match which {
        Selector::Ids(ids) => return Ok(ids.clone()),
        Selector::Destination(d) => (
            "SELECT id FROM dead_letter WHERE destination = ?1 ORDER BY id",
            Some(d),
        ),
        Selector::All => (
            "SELECT id FROM dead_letter WHERE ?1 IS NULL ORDER BY id",
            None,
        ),
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([arg], |r| r.get(0))?;
    rows.collect::<Result<_, _>>().map_err(SpoolError::from)
}

/// A dead letter's (destination, source, message id, group id, body).
type Stored = (
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
);

/// Dead letters replayed or purged per transaction.
pub const CHUNK: usize = 500;
/// Longest a replay or purge leaves the file to the daemon between two chunks.
const MAX_YIELD: Duration = Duration::from_millis(50);

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct Replayed {
    pub replayed: Vec<i64>,
    /// Ids left in place, with why (not found, refused at ingest).
    pub skipped: Vec<(i64, String)>,
}

/// A replay or purge that stopped on an error after `done` dead letters: those chunks are
/// committed, the rest untouched.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {done} dead letter(s) were done (run it again for the rest): {error}")]
pub struct Stopped {
    pub done: usize,
    #[source]
    pub error: SpoolError,
}

impl<E: Into<SpoolError>> From<E> for Stopped {
    fn from(e: E) -> Self {
        Stopped {
            done: 0,
            error: e.into(),
        }
    }
}

/// Run `apply` over `ids` in transactions of [`CHUNK`], yielding the file to the daemon after
/// each; `done` counts what committed chunks did, for the error.
fn in_chunks<T>(
    conn: &mut Connection,
    ids: &[i64],
    out: &mut T,
    done: impl Fn(&T) -> usize,
    mut apply: impl FnMut(&Connection, i64, &mut T) -> Result<(), SpoolError>,
) -> Result<(), Stopped> {
    for chunk in ids.chunks(CHUNK) {
        let started = Instant::now();
        // A failed chunk rolls back whole: what counts is what the committed ones did.
        let before = done(out);
        let stopped = |error: SpoolError| Stopped {
            done: before,
            error,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| stopped(e.into()))?;
        for &id in chunk {
            apply(&tx, id, out).map_err(stopped)?;
        }
        tx.commit().map_err(|e| stopped(e.into()))?;
        std::thread::sleep(started.elapsed().min(MAX_YIELD));
    }
    Ok(())
}

/// Put dead letters back in their destination's queue, [`CHUNK`] per transaction. Only
/// destinations in `configured` (the current config) are replayed to: a message queued for a
/// destination the daemon does not run would wait forever.
pub fn replay(
    conn: &mut Connection,
    which: &Selector,
    configured: &[String],
) -> Result<Replayed, Stopped> {
    let ids = selected_ids(conn, which)?;
    let mut out = Replayed::default();
    let now = ms(SystemTime::now());
    let done = |o: &Replayed| o.replayed.len();
    in_chunks(conn, &ids, &mut out, done, |tx, id, out| {
        match replay_one(tx, id, configured, now)? {
            Ok(()) => out.replayed.push(id),
            Err(why) => out.skipped.push((id, why)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// Put dead letter `id` back in the log, routed to its destination only, enqueued `now`;
/// the inner error says why it was left in place.
fn replay_one(
    tx: &Connection,
    id: i64,
    configured: &[String],
    now: i64,
) -> Result<Result<(), String>, SpoolError> {
    let row: Option<Stored> = tx
        .query_row(
            "SELECT destination, source, message_id, group_id, body FROM dead_letter WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((destination, source, message_id, group_id, body)) = row else {
        return Ok(Err("no such dead letter".into()));
    };
    let Some(destination) = destination else {
        return Ok(Err(
            "refused at ingest (invalid): there is no destination to replay to".into(),
        ));
    };
    if !configured.contains(&destination) {
        return Ok(Err(format!(
            "destination `{destination}` is not in the config"
        )));
    }
    let dest: Option<i64> = tx
        .query_row(
            "SELECT id FROM destination WHERE name = ?1",
            [&destination],
            |r| r.get(0),
        )
        .optional()?;
    let Some(dest) = dest else {
        return Ok(Err(format!(
            "destination `{destination}` is unknown to the spool"
        )));
    };
    let row = LogRow {
        source: &source,
        message_id: message_id.as_deref().unwrap_or_default(),
        group_id: group_id.as_deref(),
        body: &body,
        enqueued_at: now,
        dests: schema::bit(dest),
    };
    schema::insert_log(tx, &row)?;
    tx.execute(
        "UPDATE stats SET log_bytes = log_bytes + ?1 WHERE id = 0",
        [body.len() as i64],
    )?;
    tx.execute("DELETE FROM dead_letter WHERE id = ?1", [id])?;
    Ok(Ok(()))
}

/// Delete dead letters for good, [`CHUNK`] per transaction; returns how many.
pub fn purge(conn: &mut Connection, which: &Selector) -> Result<usize, Stopped> {
    let ids = selected_ids(conn, which)?;
    let mut n = 0;
    in_chunks(
        conn,
        &ids,
        &mut n,
        |n| *n,
        |tx, id, n| {
            *n += tx.execute("DELETE FROM dead_letter WHERE id = ?1", [id])?;
            Ok(())
        },
    )?;
    Ok(n)
}
