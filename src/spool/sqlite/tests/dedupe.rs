//! The dedupe index: ids within the window are duplicates, across restarts and upgrades;
//! expiry and the key cap let ids go oldest first; a rolled-back transaction leaves memory
//! as the journal is.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{DESTS, append, lease, msg, open, store};
use crate::spool::Appended;
use crate::spool::sqlite::Bounds;
use crate::spool::sqlite::schema;
use crate::spool::sqlite::store::Store;

fn capped(dir: &Path, window: Duration, max_keys: usize) -> Store {
    let names: Vec<String> = DESTS.iter().map(|s| s.to_string()).collect();
    let conn = schema::open(dir, true).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let bounds = Bounds {
        dedupe_window: window,
        dedupe_max_keys: max_keys,
        ..Bounds::default()
    };
    Store::new(conn, &names, bounds).unwrap()
}

/// Journal rows and the ids they hold, as the file has them.
fn journal(s: &Store) -> (i64, i64) {
    s.conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(keys)), 0) / 12 FROM seen_batch",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn ids_held(s: &mut Store) -> usize {
    s.dedupe().0
}

fn numbered(from: usize, to: usize) -> Vec<crate::message::Accepted> {
    (from..to)
        .map(|i| msg(&i.to_string(), None, &["A"]))
        .collect()
}

#[test]
fn duplicates_within_the_window_are_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    let mut other_source = msg("m", None, &["A"]);
    other_source.source = "ios".into();
    let answers = append(
        &mut s,
        vec![msg("m", None, &["A"]), msg("m", None, &["A"]), other_source],
    );
    assert_eq!(
        answers,
        [Appended::Stored, Appended::Duplicate, Appended::Stored]
    );
    assert_eq!(
        append(&mut s, vec![msg("m", None, &["A"])]),
        [Appended::Duplicate]
    );
    assert_eq!(lease(&mut s, "A", 10).len(), 2);
    assert_eq!(
        journal(&s),
        (1, 2),
        "one row for the transaction, its two new ids"
    );
    drop(s);
    // The journal is read back at start.
    let mut s = store(dir.path());
    assert_eq!(
        append(&mut s, vec![msg("m", None, &["A"])]),
        [Appended::Duplicate],
        "after a restart, within the window"
    );
    drop(s);
    let mut s = open(dir.path(), 1 << 30, Duration::ZERO);
    assert_eq!(
        append(&mut s, vec![msg("m", None, &["A"])]),
        [Appended::Stored],
        "outside the window"
    );
    assert_eq!(
        journal(&s),
        (0, 0),
        "a zero window drops the journal at start"
    );
}

#[test]
fn a_zero_window_dedupes_nothing_and_keeps_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), 1 << 30, Duration::ZERO);
    let answers = append(&mut s, vec![msg("m", None, &["A"]), msg("m", None, &["A"])]);
    assert_eq!(answers, [Appended::Stored, Appended::Stored]);
    assert_eq!(lease(&mut s, "A", 10).len(), 2);
    assert_eq!(journal(&s), (0, 0));
    assert_eq!(ids_held(&mut s), 0);
}

/// An id is a duplicate for exactly its window: not before it ends, and new again after,
/// whether or not housekeeping has run in between.
#[test]
fn an_id_is_new_again_once_its_window_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(800);
    let mut s = open(dir.path(), 1 << 30, window);
    let first = Instant::now();
    assert_eq!(
        append(&mut s, vec![msg("m", None, &["A"])]),
        [Appended::Stored]
    );
    let deadline = first + Duration::from_secs(10);
    loop {
        let answer = append(&mut s, vec![msg("m", None, &["A"])]);
        if answer == [Appended::Stored] {
            break;
        }
        assert_eq!(answer, [Appended::Duplicate]);
        assert!(Instant::now() < deadline, "still a duplicate after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        first.elapsed() >= window,
        "new again after {:?}",
        first.elapsed()
    );
    assert_eq!(journal(&s), (1, 1), "the old row left as the new one came");
    assert_eq!(ids_held(&mut s), 1);
}

#[test]
fn expired_ids_leave_a_bounded_slice_of_rows_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the four transactions to be written before any expires.
    let mut s = open(dir.path(), 1 << 30, Duration::from_secs(2));
    for batch in 0..4 {
        append(&mut s, numbered(batch * 600, (batch + 1) * 600));
    }
    assert_eq!(journal(&s), (4, 2400));
    assert_eq!(ids_held(&mut s), 2400);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut slices = 0;
    while journal(&s).0 > 0 {
        assert!(Instant::now() < deadline, "{:?} left", journal(&s));
        let before = journal(&s).0;
        s.sweep().unwrap();
        let gone = before - journal(&s).0;
        assert!(gone <= 1, "one slice let {gone} rows of 600 ids go");
        slices += usize::from(gone > 0);
        if gone == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(slices, 4);
    assert_eq!(ids_held(&mut s), 0);
    assert_eq!(
        append(&mut s, vec![msg("0", None, &["A"])]),
        [Appended::Stored]
    );
}

/// Past `dedupe_max_keys` the oldest rows go before their window ends (counted), the
/// newest ids stay duplicates, and at start no more than the cap is read back.
#[test]
fn the_key_cap_forgets_the_oldest_ids_first() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let mut s = capped(dir.path(), hour, 250);
    for batch in 0..4 {
        append(&mut s, numbered(batch * 100, (batch + 1) * 100));
    }
    // The third and fourth transactions each found 300 ids held with theirs: the oldest row
    // went each time.
    let (held, forgotten, new, _) = s.dedupe();
    assert_eq!((held, forgotten, new), (200, 200, 200));
    assert_eq!(journal(&s), (2, 200));
    assert_eq!(
        append(&mut s, numbered(50, 51)),
        [Appended::Stored],
        "forgotten"
    );
    assert_eq!(append(&mut s, numbered(399, 400)), [Appended::Duplicate]);
    assert_eq!(s.dedupe().2, 0, "nothing more forgotten");
    drop(s);
    // At start only the newest rows within the cap are read back: ids 50 and 300..400 (101);
    // 200..300 would make 201.
    let mut s = capped(dir.path(), hour, 150);
    assert_eq!(journal(&s), (2, 101));
    assert_eq!(append(&mut s, numbered(399, 400)), [Appended::Duplicate]);
    assert_eq!(append(&mut s, numbered(50, 51)), [Appended::Duplicate]);
    assert_eq!(append(&mut s, numbered(250, 251)), [Appended::Stored]);
}

/// What a transaction did to the index is undone when it rolls back: ids it added are new
/// again, and rows it let go are held again, in the file and in memory.
#[test]
fn a_rolled_back_transaction_leaves_the_index_as_the_journal_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), 1 << 30, Duration::from_millis(300));
    append(&mut s, vec![msg("old", None, &["A"])]);
    // Added then rolled back.
    let snapshot = s.snapshot(&[]);
    s.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    append(&mut s, vec![msg("new", None, &["A"])]);
    s.conn.execute_batch("ROLLBACK").unwrap();
    s.restore(snapshot);
    assert_eq!(journal(&s), (1, 1));
    assert_eq!(ids_held(&mut s), 1);
    assert_eq!(
        append(&mut s, vec![msg("new", None, &["A"])]),
        [Appended::Stored]
    );
    // Expired then rolled back: wait until both rows' window has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = s.snapshot(&[]);
        s.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        s.sweep().unwrap();
        if journal(&s).0 == 0 {
            break snapshot;
        }
        s.conn.execute_batch("COMMIT").unwrap();
        assert!(Instant::now() < deadline, "nothing expired in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ids_held(&mut s), 0);
    s.conn.execute_batch("ROLLBACK").unwrap();
    s.restore(snapshot);
    assert_eq!(journal(&s), (2, 2), "the rows are back in the file");
    assert_eq!(ids_held(&mut s), 2, "and their ids in memory");
    s.collect_garbage().unwrap();
    assert_eq!(
        (journal(&s), ids_held(&mut s)),
        ((0, 0), 0),
        "they go again"
    );
}

/// A spool written by schema 4 keeps its dedupe keys through the upgrade: each is still a
/// duplicate, the b-tree is gone, the journal holds them.
#[test]
fn dedupe_keys_of_a_version_4_spool_are_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::spool::sqlite::ms(std::time::SystemTime::now());
    {
        let conn = rusqlite::Connection::open(schema::file(dir.path())).unwrap();
        for step in &schema::STEPS[..4] {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 4").unwrap();
        let mut insert = conn
            .prepare("INSERT INTO seen (source, message_id, at) VALUES ('web', ?1, ?2)")
            .unwrap();
        for i in 0..2500 {
            insert
                .execute(rusqlite::params![i.to_string(), now - 1000 + i])
                .unwrap();
        }
    }
    let mut s = store(dir.path());
    let tables: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('seen', 'seen_at')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    assert_eq!(journal(&s), (3, 2500), "rows of a thousand keys");
    assert_eq!(ids_held(&mut s), 2500);
    assert_eq!(
        append(
            &mut s,
            vec![msg("0", None, &["A"]), msg("2499", None, &["A"])]
        ),
        [Appended::Duplicate, Appended::Duplicate]
    );
    assert_eq!(
        append(&mut s, vec![msg("2500", None, &["A"])]),
        [Appended::Stored]
    );
}
