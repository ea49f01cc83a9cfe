//! Where a logged message's text is kept, and reading it back.
//!
//! From schema version 6 a log row does not hold its message's text: the texts of messages
//! logged together go back to back into `body` rows of up to [`CHUNK`] bytes, each keyed by
//! the seq of its first message (`last` is the seq of its last), and the log row keeps the
//! text's offset there (`body_at`; its length is the row's `bytes`). So freeing delivered
//! messages deletes small log rows (dozens to a page) and a few body rows, whose overflow
//! pages the freelist takes without writing them again, instead of rewriting pages full of
//! text. Rows written before version 6 keep their text in `log.body` (`body_at` NULL) and
//! are read from there.
//!
//! A body row goes once no log row in its range is left (see `housekeeping.rs`), so a message
//! kept for a retry keeps its whole body row on disk: at most [`CHUNK`] bytes beside it.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use super::StorageError;
use super::schema::damaged;
use crate::spool::Seq;

/// Most bytes of text one body row holds (a message longer than this has a row of its own):
/// large enough that a row's leaf-page cell is a small share of it, small enough that a lease
/// reading a few messages from the file reads little else.
pub const CHUNK: usize = 32 << 10;

/// Reads log rows' texts, for rows taken in seq order: a body row shared by a run of them is
/// read once.
#[derive(Default)]
pub struct Bodies {
    /// The body row read last: its first and last seq and its bytes.
    held: Option<(Seq, Seq, Vec<u8>)>,
}

impl Bodies {
    /// The text of log row `seq`, and why it cannot be trusted if it cannot (it does not
    /// match its checksum `crc`, or its place is not in the file). `inline` is the row's
    /// `log.body`, its text when `at` (its `body_at`) is NULL; `bytes` is the row's `bytes`.
    pub fn text(
        &mut self,
        conn: &Connection,
        seq: Seq,
        inline: &str,
        at: Option<i64>,
        bytes: i64,
        crc: Option<i64>,
    ) -> Result<(Arc<str>, Option<String>), StorageError> {
        let Some(at) = at else {
            return Ok((Arc::from(inline), damaged(inline, crc)));
        };
        if !self
            .held
            .as_ref()
            .is_some_and(|(f, l, _)| (*f..=*l).contains(&seq))
        {
            self.held = conn
                .prepare_cached(
                    "SELECT seq, last, text FROM body WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                )?
                .query_row([seq as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as Seq,
                        r.get::<_, i64>(1)? as Seq,
                        r.get(2)?,
                    ))
                })
                .optional()?
                .filter(|(_, last, _)| *last >= seq);
        }
        let Some((first, _, chunk)) = &self.held else {
            let why = format!("its stored text is missing: no body row holds seq {seq}");
            return Ok((Arc::from(""), Some(why)));
        };
        let from = at.max(0) as usize;
        let to = from + bytes.max(0) as usize;
        let Some(raw) = chunk.get(from..to) else {
            let why = format!(
                "its stored text is missing: bytes {from}..{to} of the body row of seq {first}, which holds {}",
                chunk.len()
            );
            return Ok((Arc::from(""), Some(why)));
        };
        Ok(match std::str::from_utf8(raw) {
            Ok(text) => (Arc::from(text), damaged(text, crc)),
            Err(_) => (
                Arc::from(String::from_utf8_lossy(raw).as_ref()),
                Some("the stored message was altered on disk: its bytes are not UTF-8".into()),
            ),
        })
    }

    /// The text of log row `seq` alone (not the row's other columns).
    pub fn of(conn: &Connection, seq: Seq) -> Result<(Arc<str>, Option<String>), StorageError> {
        let (inline, at, bytes, crc): (String, Option<i64>, i64, Option<i64>) = conn
            .prepare_cached("SELECT body, body_at, bytes, crc FROM log WHERE seq = ?1")?
            .query_row([seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        Bodies::default().text(conn, seq, &inline, at, bytes, crc)
    }
}
