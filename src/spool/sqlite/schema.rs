//! The spool's SQLite file: connection settings and the versioned schema.
//!
//! The schema version lives in `PRAGMA user_version`; `migrate` applies every step above the
//! file's version in one transaction, so a file is always at one known version. A log row is
//! written in one place, `insert_log`, whoever writes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::StorageError;
use crate::spool::Seq;

/// The file inside `spool.path`.
pub const FILE: &str = "spool.sqlite3";

/// Version 1: the log, one cursor per destination, routes, the retry set, dead letters and
/// the dedupe index. Version 2: routes become a bitmask on the log row (bit `1 << id` of each
/// destination it goes to), so a delivered message costs a cursor move, not a row delete per
/// destination. Version 3: the seqs each destination holds in memory. Version 4: a checksum
/// per body. Version 5: the dedupe index becomes a journal of digests (see
/// `carry_seen_over`). Version 6: message texts move out of the log rows into `body` rows
/// shared by the messages logged together (see `body.rs`). Later versions append a step;
/// existing steps never change.
pub(super) const STEPS: &[&str] = &[
    r#"
CREATE TABLE destination (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- Every route of this destination at or below the cursor is settled (delivered, in the
    -- retry set, or dead-lettered).
    cursor INTEGER NOT NULL
);
-- AUTOINCREMENT: a seq is never reused, even once the log is emptied, so cursors stay valid.
CREATE TABLE log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    group_id TEXT,
    body TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL
);
-- What each destination still owes from the log: a row goes once its item is settled or
-- moved to the retry set, so a restart rescans only what was leased.
CREATE TABLE route (
    dest INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (dest, seq)
) WITHOUT ROWID;
CREATE INDEX route_seq ON route (seq);
-- Items out of log order: in backoff (due_at set), or waiting behind an older item of their
-- group (due_at NULL, attempts 0).
CREATE TABLE retry (
    dest INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    group_id TEXT,
    due_at INTEGER,
    attempts INTEGER NOT NULL,
    first_attempt INTEGER,
    last_attempt INTEGER,
    reason TEXT,
    status INTEGER,
    PRIMARY KEY (dest, seq)
) WITHOUT ROWID;
CREATE INDEX retry_due ON retry (dest, due_at, seq);
CREATE INDEX retry_group ON retry (dest, group_id, seq);
CREATE INDEX retry_seq ON retry (seq);
CREATE TABLE dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT,
    source TEXT NOT NULL,
    message_id TEXT,
    group_id TEXT,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt INTEGER,
    last_attempt INTEGER NOT NULL,
    status INTEGER,
    response TEXT
);
CREATE INDEX dead_letter_destination ON dead_letter (destination, id);
CREATE TABLE seen (
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE INDEX seen_at ON seen (at);
-- Bytes in the log, kept in the file so another process (dlq replay) can update it too.
CREATE TABLE stats (id INTEGER PRIMARY KEY CHECK (id = 0), log_bytes INTEGER NOT NULL);
INSERT INTO stats VALUES (0, 0);
"#,
    r#"
ALTER TABLE log ADD COLUMN dests INTEGER NOT NULL DEFAULT 0;
UPDATE log SET dests = COALESCE((SELECT SUM(1 << r.dest) FROM route r WHERE r.seq = log.seq), 0);
DROP TABLE route;
"#,
    r#"
-- Items a destination holds in memory behind an older item of their group, below its cursor:
-- their seqs, delta-encoded varints, rewritten with each transaction that changes them.
ALTER TABLE destination ADD COLUMN held BLOB;
"#,
    r#"
-- CRC-32 of the body's bytes, checked whenever the body is read back: a body altered on disk
-- is dead-lettered as `corrupted`, never delivered. NULL for rows written before version 4.
ALTER TABLE log ADD COLUMN crc INTEGER;
"#,
    r#"
-- The dedupe index as a journal: the digests of the ids each transaction accepted, one row
-- per transaction, in time order (see `store/seen.rs`). `migrate` carries the keys of `seen`
-- over, then drops it.
CREATE TABLE seen_batch (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    keys BLOB NOT NULL
);
"#,
    r#"
-- The texts of the messages with seqs `seq` to `last`, back to back. A log row written from
-- version 6 on keeps an empty `body` and its text's offset here in `body_at` (its length is
-- `bytes`); rows written before keep their text in `body`, with `body_at` NULL.
CREATE TABLE body (
    seq INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    text BLOB NOT NULL
);
ALTER TABLE log ADD COLUMN body_at INTEGER;
"#,
];

/// The version whose step makes the dedupe index a journal; the keys of the b-tree it
/// replaces are carried over in Rust (their digests are SHA-256, which SQL lacks).
const SEEN_JOURNAL: usize = 5;

/// Destination ids are bit positions in `log.dests` (an SQLite integer, 64-bit signed): ids
/// run from 1 to this, leaving the sign bit alone.
pub const MAX_DESTINATION_ID: i64 = 62;

/// The bit of destination `id` in `log.dests`.
pub fn bit(id: i64) -> i64 {
    1 << id
}

/// The version this build writes.
pub const VERSION: i64 = STEPS.len() as i64;

pub fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Open (creating when `create`) and bring the schema up to date.
pub fn open(dir: &Path, create: bool) -> Result<Connection, StorageError> {
    let path = file(dir);
    if !create && !path.exists() {
        return Err(StorageError::NoSpool { path });
    }
    if create {
        std::fs::create_dir_all(dir).map_err(StorageError::io("create", dir))?;
        tell_torn_tail(&path);
    }
    let mut conn = match Connection::open(&path) {
        Ok(conn) => conn,
        Err(source) => return Err(StorageError::Open { path, source }),
    };
    // The daemon and `switchyard dlq` may write at the same time; each waits its turn.
    conn.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement the writer repeats, so none is compiled again.
    conn.set_prepared_statement_cache_capacity(64);
    // WAL lets `dlq` read while the daemon writes; synchronous=FULL fsyncs the WAL on every
    // commit, which is what makes a 200 from ingest mean "on disk".
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    migrate(&mut conn)?;
    if create {
        // The daemon: refuse a damaged file before relying on it (see `check.rs`).
        let problems = super::check::at_start(&conn)?;
        if !problems.is_empty() {
            return Err(StorageError::Damaged { path, problems });
        }
    }
    Ok(conn)
}

/// Before SQLite recovers the file after a crash: log what it will drop from the end of the
/// write-ahead log, and why (see `wal.rs`). Nothing to say after a clean stop.
fn tell_torn_tail(path: &Path) {
    let wal = super::wal::file_of(path);
    match super::wal::tail(&wal) {
        Ok(Some(dropped)) => tracing::warn!(
            wal = %wal.display(), bytes = dropped.bytes, why = %dropped.why,
            "the spool's write-ahead log ends with bytes that hold no committed transaction; \
             they are dropped and everything committed before them is kept (no message in them \
             was acknowledged)"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(wal = %wal.display(), error = %e, "cannot read the write-ahead log to check its end")
        }
    }
}

/// Apply every step above the file's `user_version`.
pub fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > VERSION {
        return Err(StorageError::NewerSchema {
            found: current,
            known: VERSION,
        });
    }
    for (i, step) in STEPS.iter().enumerate().skip(current as usize) {
        let version = i + 1;
        let mut applied = tx.execute_batch(step);
        if version == SEEN_JOURNAL {
            applied = applied.and_then(|()| carry_seen_over(&tx));
        }
        applied.map_err(|source| StorageError::Migrate { version, source })?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    Ok(tx.commit()?)
}

/// Move the keys of the b-tree dedupe index (`seen`, versions 1 to 4) into the journal, in
/// time order, a row per thousand keys each stamped with its newest key's time (a key may
/// stay a few milliseconds longer than its window, never less), and drop the b-tree.
fn carry_seen_over(tx: &Connection) -> rusqlite::Result<()> {
    const PER_ROW: usize = 1000;
    let mut insert = tx.prepare("INSERT INTO seen_batch (at, keys) VALUES (?1, ?2)")?;
    let mut select = tx.prepare("SELECT source, message_id, at FROM seen ORDER BY at")?;
    let mut rows = select.query([])?;
    let (mut blob, mut at, mut n) = (Vec::with_capacity(PER_ROW * 12), 0i64, 0);
    while let Some(row) = rows.next()? {
        let (source, id): (String, String) = (row.get(0)?, row.get(1)?);
        blob.extend_from_slice(&super::store::digest(&source, &id));
        at = row.get(2)?;
        n += 1;
        if n == PER_ROW {
            insert.execute(params![at, blob])?;
            (blob, n) = (Vec::with_capacity(PER_ROW * 12), 0);
        }
    }
    if n > 0 {
        insert.execute(params![at, blob])?;
    }
    drop(rows);
    tx.execute_batch("DROP TABLE seen")
}

/// A message as the log holds it.
pub struct LogRow<'a> {
    pub source: &'a str,
    pub message_id: &'a str,
    pub group_id: Option<&'a str>,
    /// The normalized message (JSON); its length is the row's `bytes`.
    pub body: &'a str,
    /// Unix milliseconds.
    pub enqueued_at: i64,
    /// The `bit` of each destination it goes to.
    pub dests: i64,
}

/// Write `row` to the log; returns its seq. Callers add the row's bytes to `stats`
/// themselves, each by its own delta (see `Store::add_bytes`).
pub fn insert_log(conn: &Connection, row: &LogRow<'_>) -> rusqlite::Result<Seq> {
    insert_logs(conn, std::slice::from_ref(row))
}

/// Most rows one statement of `insert_logs` writes; smaller runs go in the sizes below it,
/// so that only these few statements are ever prepared (and each is kept prepared).
const ROWS_PER_INSERT: [usize; 4] = [64, 16, 4, 1];

/// Columns of a log row as `insert_logs` writes it.
const COLUMNS: usize = 9;

/// Write `rows` (at least one) to the log, in order, with consecutive seqs, and their texts to
/// `body` rows (see `body.rs`); returns the last seq (the newest). The one place log rows
/// are written: the daemon's append and `dlq replay` write the same columns the same way,
/// each inside a transaction of its own. A statement per run of up to 64 rows, not one per
/// row: each execution costs a statement reset and rebind.
pub fn insert_logs(conn: &Connection, rows: &[LogRow<'_>]) -> rusqlite::Result<Seq> {
    debug_assert!(
        !rows.is_empty(),
        "no rows: there is no newest seq to answer"
    );
    // The seqs are given here, not by SQLite, so each body row can be keyed by the seq of its
    // first message: one above the highest ever given (AUTOINCREMENT keeps it in
    // `sqlite_sequence`, so a seq is never reused even once the log is emptied). A seq taken
    // meanwhile would fail the INSERT, never share a row.
    let newest: i64 = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0),
                        COALESCE((SELECT MAX(seq) FROM log), 0))",
        )?
        .query_row([], |r| r.get(0))?;
    let first = newest as Seq + 1;
    let places = write_bodies(conn, first, rows)?;
    let all: Vec<_> = rows.iter().zip(places).zip(first..).collect();
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        let size = ROWS_PER_INSERT
            .iter()
            .position(|&n| n <= rest.len())
            .unwrap_or(ROWS_PER_INSERT.len() - 1);
        let (run, after) = rest.split_at(ROWS_PER_INSERT[size]);
        let mut stmt = conn.prepare_cached(&INSERTS[size])?;
        for (i, ((row, at), seq)) in run.iter().enumerate() {
            let p = i * COLUMNS;
            stmt.raw_bind_parameter(p + 1, *seq as i64)?;
            stmt.raw_bind_parameter(p + 2, row.source)?;
            stmt.raw_bind_parameter(p + 3, row.message_id)?;
            stmt.raw_bind_parameter(p + 4, row.group_id)?;
            stmt.raw_bind_parameter(p + 5, row.body.len() as i64)?;
            stmt.raw_bind_parameter(p + 6, row.enqueued_at)?;
            stmt.raw_bind_parameter(p + 7, row.dests)?;
            stmt.raw_bind_parameter(p + 8, crc(row.body))?;
            stmt.raw_bind_parameter(p + 9, *at as i64)?;
        }
        stmt.raw_execute()?;
        rest = after;
    }
    Ok(first + rows.len() as Seq - 1)
}

/// Write the texts of `rows`, whose seqs start at `first`, into body rows of up to
/// `body::CHUNK` bytes each (a longer text alone); returns each text's offset in its row.
fn write_bodies(
    conn: &Connection,
    first: Seq,
    rows: &[LogRow<'_>],
) -> rusqlite::Result<Vec<usize>> {
    let mut insert =
        conn.prepare_cached("INSERT INTO body (seq, last, text) VALUES (?1, ?2, ?3)")?;
    let mut places = Vec::with_capacity(rows.len());
    let mut text: Vec<u8> =
        Vec::with_capacity(super::body::CHUNK.min(rows.iter().map(|r| r.body.len()).sum()));
    let mut from = first;
    for (seq, row) in (first..).zip(rows) {
        if !text.is_empty() && text.len() + row.body.len() > super::body::CHUNK {
            insert.execute(params![from as i64, seq as i64 - 1, text])?;
            (text, from) = (Vec::with_capacity(super::body::CHUNK), seq);
        }
        places.push(text.len());
        text.extend_from_slice(row.body.as_bytes());
    }
    insert.execute(params![
        from as i64,
        (first + rows.len() as Seq - 1) as i64,
        text
    ])?;
    Ok(places)
}

/// The INSERT of each of `ROWS_PER_INSERT`'s sizes, written once.
static INSERTS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| ROWS_PER_INSERT.iter().map(|&n| insert_sql(n)).collect());

/// The INSERT of `n` log rows, their texts in `body` rows (`body` empty).
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO log (seq, source, message_id, group_id, bytes, enqueued_at, dests, crc, body_at, body) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        let p = i * COLUMNS;
        let params: Vec<String> = (1..=COLUMNS).map(|c| format!("?{}", p + c)).collect();
        sql.push('(');
        sql.push_str(&params.join(", "));
        sql.push_str(", '')");
    }
    sql
}

/// The checksum `log.crc` holds for `body`.
pub fn crc(body: &str) -> i64 {
    i64::from(crc32fast::hash(body.as_bytes()))
}

/// Why a body read back from the log cannot be trusted, if it cannot: its checksum differs
/// from the one written with it. `None` also when no checksum was written (before version 4).
pub fn damaged(body: &str, stored: Option<i64>) -> Option<String> {
    let stored = stored?;
    let found = crc(body);
    (found != stored).then(|| {
        format!(
            "the stored message was altered on disk: its CRC-32 is {found:08x}, {stored:08x} was written with it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::sqlite::body::{Bodies, CHUNK};

    #[test]
    fn creates_then_reopens_at_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            open(dir.path(), false).is_err(),
            "no file yet and create = false"
        );
        drop(open(dir.path(), true).unwrap());
        let conn = open(dir.path(), false).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// Rows written in runs of several sizes take consecutive seqs in the order given, each
    /// with its own columns; the answer is the newest seq.
    #[test]
    fn rows_written_together_take_consecutive_seqs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path(), true).unwrap();
        let one = |id: &'static str| LogRow {
            source: "web",
            message_id: id,
            group_id: None,
            body: "{}",
            enqueued_at: 1,
            dests: 2,
        };
        let first = insert_log(&conn, &one("first")).unwrap();
        let ids: Vec<String> = (0..85).map(|i| format!("m{i}")).collect();
        let bodies: Vec<String> = (0..85).map(|i| format!("{{\"n\":{i}}}")).collect();
        let rows: Vec<LogRow<'_>> = (0..85)
            .map(|i| LogRow {
                source: "web",
                message_id: &ids[i],
                group_id: (i % 2 == 0).then_some("g"),
                body: &bodies[i],
                enqueued_at: i as i64,
                dests: 1 << (i % 3 + 1),
            })
            .collect();
        let last = insert_logs(&conn, &rows).unwrap();
        assert_eq!(last, first + 85);
        let count: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM log WHERE seq > ?1",
                [first as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 85);
        for (i, row) in rows.iter().enumerate() {
            let seq = first + 1 + i as u64;
            let (id, group): (String, Option<String>) = conn
                .query_row(
                    "SELECT message_id, group_id FROM log WHERE seq = ?1",
                    [seq as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let (body, damaged) = Bodies::of(&conn, seq).unwrap();
            assert_eq!(
                (id.as_str(), group.as_deref(), body.as_ref(), damaged),
                (row.message_id, row.group_id, row.body, None)
            );
            let numbers: (i64, i64, i64, i64) = conn
                .query_row(
                    "SELECT bytes, enqueued_at, dests, crc FROM log WHERE seq = ?1",
                    [seq as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
            assert_eq!(
                numbers,
                (
                    row.body.len() as i64,
                    row.enqueued_at,
                    row.dests,
                    crc(row.body)
                )
            );
        }
    }

    /// Texts logged together fill body rows of up to `CHUNK` bytes, each keyed by its first
    /// message's seq and naming its last; a longer text has a row of its own. Each reads back
    /// whole, in order or alone.
    #[test]
    fn texts_fill_body_rows_of_up_to_a_chunk_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path(), true).unwrap();
        let sizes = [CHUNK / 2, CHUNK / 2 - 10, 10, CHUNK * 2, 10, CHUNK - 10, 20];
        let texts: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                format!(
                    "\"{}\"",
                    char::from(b'a' + i as u8).to_string().repeat(n - 2)
                )
            })
            .collect();
        let rows: Vec<LogRow<'_>> = texts
            .iter()
            .map(|t| LogRow {
                source: "web",
                message_id: "m",
                group_id: None,
                body: t,
                enqueued_at: 0,
                dests: 2,
            })
            .collect();
        let last = insert_logs(&conn, &rows).unwrap();
        let first = last + 1 - rows.len() as u64;
        let chunks: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT seq, last, LENGTH(text) FROM body ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let at = |i: u64| (first + i) as i64;
        let len = |r: std::ops::Range<usize>| texts[r].iter().map(|t| t.len() as i64).sum::<i64>();
        assert_eq!(
            chunks,
            [
                (at(0), at(2), len(0..3)),
                (at(3), at(3), len(3..4)),
                (at(4), at(5), len(4..6)),
                (at(6), at(6), len(6..7)),
            ]
        );
        let mut bodies = Bodies::default();
        let mut stmt = conn
            .prepare("SELECT seq, body, body_at, bytes, crc FROM log ORDER BY seq")
            .unwrap();
        let mut read = stmt.query([]).unwrap();
        for text in &texts {
            let r = read.next().unwrap().unwrap();
            let seq = r.get::<_, i64>(0).unwrap() as Seq;
            let inline: String = r.get(1).unwrap();
            let (body, damaged) = bodies
                .text(
                    &conn,
                    seq,
                    &inline,
                    r.get(2).unwrap(),
                    r.get(3).unwrap(),
                    r.get(4).unwrap(),
                )
                .unwrap();
            assert_eq!((body.as_ref(), damaged), (text.as_str(), None));
            assert_eq!(Bodies::of(&conn, seq).unwrap().0.as_ref(), text.as_str());
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path(), true).unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
