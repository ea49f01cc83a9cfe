//! The SQLite spool's rules: ordering per group, retries, dedupe, backpressure, dead letters,
//! garbage collection and what survives a crash (dropping the store without settling).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::dlq::{self, Selector};
use super::schema;
use super::store::Store;
use super::wal;
use super::*;
use crate::message::Parsed;
use crate::spool::DeadReason;

mod dedupe;

const DESTS: &[&str] = &["A", "B"];

fn open(dir: &Path, max_bytes: u64, window: Duration) -> Store {
    let names: Vec<String> = DESTS.iter().map(|s| s.to_string()).collect();
    let conn = schema::open(dir, true).unwrap();
    // These tests call the store outside the writer's transactions, one autocommit per
    // statement; fsyncing each would only make them slow (durability is tested end to end).
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    Store::new(conn, &names, bounds(max_bytes, window)).unwrap()
}

fn bounds(max_bytes: u64, dedupe_window: Duration) -> Bounds {
    Bounds {
        max_bytes,
        dedupe_window,
        ..Bounds::default()
    }
}

fn store(dir: &Path) -> Store {
    open(dir, 1 << 30, Duration::from_secs(3600))
}

fn msg(id: &str, group: Option<&str>, dests: &[&str]) -> Accepted {
    Accepted {
        source: "web".into(),
        message_id: id.into(),
        group_id: group.map(str::to_string),
        body: format!("{{\"messageId\":\"{id}\"}}"),
        parsed: None,
        destinations: dests.iter().map(|d| Arc::from(*d)).collect(),
    }
}

/// Append as one transaction does: what it keeps in memory is written before it ends.
fn append(s: &mut Store, messages: Vec<Accepted>) -> Vec<Appended> {
    let answers = s.append(&messages, &mut Vec::new()).unwrap().unwrap();
    s.save().unwrap();
    answers
}

/// The message ids a lease returned, with their seqs.
fn lease(s: &mut Store, dest: &str, max: usize) -> Vec<(String, Seq)> {
    s.lease(dest, max)
        .unwrap()
        .into_iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.body).unwrap();
            (v["messageId"].as_str().unwrap().to_string(), l.seq)
        })
        .collect()
}

fn ids(leased: &[(String, Seq)]) -> Vec<&str> {
    leased.iter().map(|(id, _)| id.as_str()).collect()
}

fn attempt(n: u32) -> Attempt {
    let now = SystemTime::now();
    Attempt {
        attempts: n,
        first_attempt: now,
        last_attempt: now,
        reason: "HTTP 500: boom".into(),
        status: Some(500),
        response: Some("boom".into()),
        dead_reason: DeadReason::Permanent,
    }
}

fn past() -> SystemTime {
    SystemTime::now() - Duration::from_secs(1)
}

/// Change the stored texts in place, `from` to `to` (of the same length), as a fault on disk
/// would: their log rows are left as they were.
fn alter_text(conn: &rusqlite::Connection, from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "offsets stay put");
    let changed = conn
        .execute(
            "UPDATE body SET text = CAST(replace(CAST(text AS TEXT), ?1, ?2) AS BLOB)
             WHERE instr(CAST(text AS TEXT), ?1) > 0",
            [from, to],
        )
        .unwrap();
    assert_eq!(changed, 1, "one body row holds {from}");
}

/// Body rows in the file.
fn body_rows(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT COUNT(*) FROM body", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn each_destination_gets_its_routed_messages_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![
            msg("1", None, &["A", "B"]),
            msg("2", None, &["A"]),
            msg("3", None, &["B", "Z"]),
        ],
    );
    let a = lease(&mut s, "A", 10);
    assert_eq!(ids(&a), ["1", "2"]);
    assert!(
        lease(&mut s, "A", 10).is_empty(),
        "leased items are not leased twice"
    );
    assert_eq!(ids(&lease(&mut s, "B", 10)), ["1", "3"]);
    assert_eq!(s.depth("A").in_flight, 2);
    s.ack("A", &[a[0].1, a[1].1]).unwrap();
    assert_eq!(s.depth("A").in_flight, 0);
    assert_eq!(s.depth("A").pending, 0);
}

#[test]
fn a_crash_forgets_leases_but_not_acks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        append(
            &mut s,
            vec![
                msg("1", None, &["A"]),
                msg("2", None, &["A"]),
                msg("3", None, &["A"]),
            ],
        );
        let a = lease(&mut s, "A", 2);
        s.ack("A", &[a[0].1]).unwrap();
        // "2" stays leased: the process dies here.
    }
    let mut s = store(dir.path());
    assert_eq!(s.depth("A").pending, 2);
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["2", "3"]);
}

#[test]
fn an_ack_above_an_older_lease_is_kept_once_the_older_settles() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        append(&mut s, vec![msg("1", None, &["A"]), msg("2", None, &["A"])]);
        let a = lease(&mut s, "A", 2);
        s.ack("A", &[a[1].1]).unwrap();
        s.retry_at("A", a[0].1, past(), &attempt(1)).unwrap();
    }
    let mut s = store(dir.path());
    let again = lease(&mut s, "A", 10);
    assert_eq!(ids(&again), ["1"], "only the retried item comes back");
}

#[test]
fn a_newer_item_of_a_group_waits_for_the_older_ones_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
    let v1 = lease(&mut s, "A", 10);
    s.retry_at(
        "A",
        v1[0].1,
        SystemTime::now() + Duration::from_secs(3600),
        &attempt(1),
    )
    .unwrap();
    append(
        &mut s,
        vec![msg("v2", Some("g"), &["A"]), msg("other", None, &["A"])],
    );
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["other"],
        "v2 waits behind v1; ungrouped items never wait"
    );
    assert_eq!(s.depth("A").pending, 2);
    assert_eq!(s.depth("A").retrying, 1);
    assert!(
        s.next_due("A").unwrap().unwrap() > SystemTime::now(),
        "only v1's retry time is worth waking for"
    );
}

#[test]
fn a_deferral_is_not_counted_as_retrying_however_often_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("m", Some("g"), &["A"])]);
    for _ in 0..3 {
        let leased = lease(&mut s, "A", 10);
        assert_eq!(ids(&leased), ["m"]);
        s.retry_at("A", leased[0].1, past(), &attempt(0)).unwrap();
        let d = s.depth("A");
        assert_eq!((d.pending, d.retrying), (1, 0));
    }
    // Once an attempt is made it counts, once.
    let leased = lease(&mut s, "A", 10);
    s.retry_at("A", leased[0].1, past(), &attempt(1)).unwrap();
    assert_eq!(s.depth("A").retrying, 1);
    let leased = lease(&mut s, "A", 10);
    s.retry_at("A", leased[0].1, past(), &attempt(2)).unwrap();
    assert_eq!(s.depth("A").retrying, 1);
}

#[test]
fn the_waiting_item_goes_after_the_older_one_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
    let v1 = lease(&mut s, "A", 10);
    s.retry_at("A", v1[0].1, past(), &attempt(1)).unwrap();
    append(&mut s, vec![msg("v2", Some("g"), &["A"])]);
    let first = s.lease("A", 10).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].attempts, 1,
        "the retry comes with its attempt count"
    );
    assert!(first[0].first_attempt.is_some());
    assert!(
        lease(&mut s, "A", 10).is_empty(),
        "v2 waits while v1 is leased"
    );
    s.ack("A", &[first[0].seq]).unwrap();
    let second = s.lease("A", 10).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].attempts, second[0].first_attempt),
        (0, None),
        "v2 was never attempted"
    );
    assert!(second[0].body.contains("v2"));
}

#[test]
fn retries_of_one_group_keep_their_order_whatever_the_jitter() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    let calls = ["v1", "v2", "v3"].map(|id| msg(id, Some("g"), &["A"]));
    append(&mut s, calls.to_vec());
    let all = lease(&mut s, "A", 10);
    assert_eq!(
        ids(&all),
        ["v1", "v2", "v3"],
        "items of one group leased together stay in order"
    );
    // v2 drew a shorter backoff than v1; v3 a longer one, not over yet.
    s.retry_at("A", all[0].1, past(), &attempt(1)).unwrap();
    s.retry_at("A", all[1].1, past() - Duration::from_secs(5), &attempt(1))
        .unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    s.retry_at("A", all[2].1, later, &attempt(1)).unwrap();
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["v1", "v2"],
        "the due ones go together, oldest first; v3 waits behind them"
    );
    assert!(lease(&mut s, "A", 10).is_empty());
}

#[test]
fn a_waiting_item_survives_a_crash_behind_its_leased_elder() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
        lease(&mut s, "A", 10);
        append(&mut s, vec![msg("v2", Some("g"), &["A"])]);
        assert!(
            lease(&mut s, "A", 10).is_empty(),
            "v2 waits while v1 is leased"
        );
    }
    // v2 waited in memory: after the crash both are read from the log again, in order, and
    // go together in one batch (which keeps their order), v1 first.
    let mut s = store(dir.path());
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["v1", "v2"],
        "v1 is due again and still goes first"
    );
    let v1 = s.lease("A", 10).unwrap();
    assert!(v1.is_empty());
}

#[test]
fn items_behind_a_leased_elder_wait_in_memory_and_go_together_once_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
    let v1 = lease(&mut s, "A", 10);
    append(
        &mut s,
        vec![
            msg("v2", Some("g"), &["A"]),
            msg("other", Some("h"), &["A"]),
            msg("v3", Some("g"), &["A"]),
        ],
    );
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["other"],
        "v2 and v3 wait behind v1"
    );
    assert_eq!(s.depth("A").pending, 2);
    assert!(
        s.next_due("A").unwrap().is_none(),
        "nothing is due while v1 is out"
    );
    // Nothing was written for them: no retry rows.
    let rows: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM retry", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    s.ack("A", &[v1[0].1]).unwrap();
    assert!(
        s.next_due("A").unwrap().is_some(),
        "the worker is told to lease at once"
    );
    append(&mut s, vec![msg("v4", Some("g"), &["A"])]);
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["v2", "v3", "v4"]);
}

#[test]
fn an_item_held_in_memory_below_the_cursor_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        append(
            &mut s,
            vec![msg("a1", Some("g"), &["A"]), msg("b", Some("h"), &["A"])],
        );
        let first = lease(&mut s, "A", 10);
        append(&mut s, vec![msg("a2", Some("g"), &["A"])]);
        assert!(lease(&mut s, "A", 10).is_empty(), "a2 waits behind a1");
        // Both settle: a2 is ready but not leased, and the cursor passes it.
        s.ack("A", &[first[0].1, first[1].1]).unwrap();
        // Housekeeping keeps its row: the hold, not the cursor, says it is still owed.
        s.collect_garbage().unwrap();
        s.save().unwrap();
    }
    {
        let mut s = store(dir.path());
        assert_eq!(s.depth("A").pending, 1);
        // Leased again, and the process dies before it settles.
        assert_eq!(ids(&lease(&mut s, "A", 10)), ["a2"]);
        s.save().unwrap();
    }
    let mut s = store(dir.path());
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["a2"],
        "still owed after a second crash"
    );
}

#[test]
fn items_waiting_in_memory_stay_behind_an_item_that_goes_into_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
    let v1 = lease(&mut s, "A", 10);
    append(
        &mut s,
        vec![msg("v2", Some("g"), &["A"]), msg("v3", Some("g"), &["A"])],
    );
    assert!(lease(&mut s, "A", 10).is_empty());
    s.retry_at("A", v1[0].1, past(), &attempt(1)).unwrap();
    assert_eq!(s.depth("A").pending, 3);
    // They stay in memory, behind v1's backoff (the cursor does not wait for them).
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["v1"]);
    let again = s.lease("A", 10).unwrap();
    assert!(again.is_empty(), "v2 and v3 wait for v1 to settle");
    s.ack("A", &[v1[0].1]).unwrap();
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["v2", "v3"],
        "released together, in order: one batch, not one call per round trip"
    );
}

#[test]
fn dead_letters_release_the_group_and_can_be_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
    let v1 = lease(&mut s, "A", 10);
    append(&mut s, vec![msg("v2", Some("g"), &["A"])]);
    assert!(lease(&mut s, "A", 10).is_empty());
    let refused = Attempt {
        status: Some(400),
        reason: "HTTP 400: bad".into(),
        response: Some("bad".into()),
        ..attempt(1)
    };
    s.dead_letter("A", v1[0].1, &refused).unwrap();
    assert_eq!(s.depth("A").dead_letters, 1);
    let v2 = lease(&mut s, "A", 10);
    assert_eq!(ids(&v2), ["v2"]);
    s.ack("A", &[v2[0].1]).unwrap();

    let mut conn = dlq::open(dir.path()).unwrap();
    let listed = dlq::list(&conn, Some("A"), Some("permanent")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].status, listed[0].response.as_deref()),
        (Some(400), Some("bad"))
    );
    assert_eq!(listed[0].message_id.as_deref(), Some("v1"));
    assert!(
        dlq::list(&conn, None, Some("exhausted"))
            .unwrap()
            .is_empty()
    );
    let shown = dlq::show(&conn, listed[0].id).unwrap().unwrap();
    assert_eq!(shown.message.unwrap()["messageId"], "v1");
    let done = dlq::replay(&mut conn, &Selector::All, &["B".into()]).unwrap();
    assert!(done.replayed.is_empty(), "A is not configured any more");
    let done = dlq::replay(&mut conn, &Selector::All, &["A".into()]).unwrap();
    assert_eq!(done.replayed, vec![listed[0].id]);
    assert!(dlq::list(&conn, None, None).unwrap().is_empty());
    // What the writer does when its housekeeping sees that another process wrote.
    s.recount().unwrap();
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["v1"],
        "the replayed item is back in A's queue"
    );
}

/// A large replay commits chunk by chunk (so the daemon's writer gets the file between them);
/// one that stops on an error has done exactly the chunks before it, and can be run again.
#[test]
fn a_large_replay_commits_in_chunks_and_an_error_keeps_the_chunks_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("first", None, &["A"])]);
    let mut conn = dlq::open(dir.path()).unwrap();
    let n = 2 * dlq::CHUNK + 10;
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO dead_letter (destination, source, message_id, body, reason, error, attempts, last_attempt)
         SELECT 'A', 'web', 'm' || i, '{\"messageId\":\"m' || i || '\"}', 'permanent', 'refused', 1, 0 FROM k",
        [n as i64],
    )
    .unwrap();
    // One dead letter of the second chunk cannot be taken out: the replay stops there.
    let stuck = dlq::CHUNK + 5;
    conn.execute_batch(&format!(
        "CREATE TEMP TRIGGER stuck BEFORE DELETE ON dead_letter WHEN OLD.id = {stuck}
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
    ))
    .unwrap();
    let stopped = dlq::replay(&mut conn, &Selector::All, &["A".into()]).unwrap_err();
    assert_eq!(stopped.done, dlq::CHUNK);
    let said = stopped.to_string();
    assert!(
        said.contains(&format!("stopped after {} dead letter(s)", dlq::CHUNK))
            && said.contains("run it again"),
        "{said}"
    );
    assert_eq!(
        dlq::list(&conn, None, None).unwrap().len(),
        n - dlq::CHUNK,
        "the first chunk is back in the log, the second rolled back whole"
    );
    conn.execute_batch("DROP TRIGGER stuck").unwrap();
    let done = dlq::replay(&mut conn, &Selector::All, &["A".into()]).unwrap();
    assert_eq!(done.replayed.len(), n - dlq::CHUNK);
    assert!(dlq::list(&conn, None, None).unwrap().is_empty());
    s.recount().unwrap();
    assert_eq!(s.depth("A").pending, n as u64 + 1, "each replayed once");
}

#[test]
fn rejected_messages_are_dead_letters_without_a_destination() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    let r = Rejected {
        source: "web".into(),
        index: 3,
        error: "no type".into(),
        raw: r#"{"messageId":"m9"}"#.into(),
        at: SystemTime::now(),
    };
    s.reject(&[r]).unwrap();
    let mut conn = dlq::open(dir.path()).unwrap();
    let listed = dlq::list(&conn, None, Some("invalid")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].destination.as_deref(),
            listed[0].message_id.as_deref()
        ),
        (None, Some("m9"))
    );
    let done = dlq::replay(&mut conn, &Selector::Ids(vec![listed[0].id]), &["A".into()]).unwrap();
    assert!(
        done.replayed.is_empty() && done.skipped.len() == 1,
        "nothing to replay it to"
    );
    assert_eq!(
        dlq::purge(&mut conn, &Selector::Destination("A".into())).unwrap(),
        0
    );
    assert_eq!(dlq::purge(&mut conn, &Selector::All).unwrap(), 1);
}

#[test]
fn a_full_spool_refuses_until_delivered_rows_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let body_len = msg("1", None, &["A"]).body.len() as u64;
    let mut s = open(dir.path(), body_len * 2, Duration::from_secs(3600));
    append(&mut s, vec![msg("1", None, &["A"]), msg("2", None, &["A"])]);
    let full = s
        .append(&[msg("3", None, &["A"])], &mut Vec::new())
        .unwrap();
    assert!(matches!(full, Err(SpoolError::Full { .. })), "{full:?}");
    let a = lease(&mut s, "A", 10);
    s.ack("A", &[a[0].1, a[1].1]).unwrap();
    s.collect_garbage().unwrap();
    let left: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        append(&mut s, vec![msg("3", None, &["A"])]),
        [Appended::Stored]
    );
}

#[test]
fn rows_still_owed_to_a_destination_are_not_collected() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![msg("1", None, &["A", "B"]), msg("2", None, &["A"])],
    );
    let a = lease(&mut s, "A", 10);
    s.ack("A", &[a[0].1, a[1].1]).unwrap();
    s.collect_garbage().unwrap();
    assert_eq!(ids(&lease(&mut s, "B", 10)), ["1"]);
    let b = s.lease("B", 10).unwrap();
    assert!(b.is_empty());
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_all_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["A".to_string()];
    let spool = Arc::new(
        SqliteSpool::open(dir.path(), &names, bounds(1 << 30, Duration::from_secs(60))).unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..50 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            spool.append(vec![msg(&i.to_string(), None, &["A"])]).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), [Appended::Stored]);
    }
    let commits = spool.commits();
    assert!(
        commits < 50,
        "50 concurrent appends took {commits} commits: no group commit"
    );
    let leased = spool.lease("A", 100).await.unwrap();
    assert_eq!(leased.len(), 50);
    let seqs: Vec<Seq> = leased.iter().map(|l| l.seq).collect();
    spool.ack("A", &seqs).await.unwrap();
    assert_eq!(spool.depth("A").pending, 0);
}

#[test]
fn rows_settled_before_a_crash_are_swept_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        append(&mut s, vec![msg("1", None, &["A"]), msg("2", None, &["A"])]);
        let a = lease(&mut s, "A", 10);
        s.ack("A", &[a[0].1, a[1].1]).unwrap();
        // Dies before housekeeping: the in-memory list of settled rows is gone.
    }
    let mut s = store(dir.path());
    s.collect_garbage().unwrap();
    let left: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

fn log_rows(s: &Store) -> i64 {
    s.conn
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap()
}

/// Deliver `n` messages to both destinations, from seq `from`.
fn deliver_all(s: &mut Store, from: usize, n: usize) {
    let batch: Vec<_> = (from..from + n)
        .map(|i| msg(&i.to_string(), None, &["A", "B"]))
        .collect();
    append(s, batch);
    for d in ["A", "B"] {
        let mut acked = 0;
        while acked < n {
            let seqs: Vec<Seq> = lease(s, d, n).into_iter().map(|(_, seq)| seq).collect();
            assert!(!seqs.is_empty(), "{d} leased {acked} of {n}");
            acked += seqs.len();
            s.ack(d, &seqs).unwrap();
        }
    }
}

#[test]
fn housekeeping_frees_delivered_rows_a_bounded_slice_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        deliver_all(&mut s, 0, 1300);
        assert!(s.garbage_waiting(false));
        assert!(s.sweep().unwrap(), "1,300 rows are more than one slice");
        let left = log_rows(&s);
        assert!(
            left > 0 && left < 1300,
            "one slice freed {} rows",
            1300 - left
        );
        s.collect_garbage().unwrap();
        assert_eq!(log_rows(&s), 0);
        assert!(!s.garbage_waiting(false) && !s.sweep().unwrap());
        // Rows the cursors have not passed stay.
        append(&mut s, vec![msg("kept", None, &["A"])]);
        s.collect_garbage().unwrap();
        assert_eq!(log_rows(&s), 1);
        let a = lease(&mut s, "A", 10);
        s.ack("A", &[a[0].1]).unwrap();
    }
    // After a restart the sweep starts below every seq ever used: it skips the freed ones
    // rather than walking them a slice at a time.
    let mut s = store(dir.path());
    assert!(s.garbage_waiting(false));
    s.sweep().unwrap();
    assert_eq!(log_rows(&s), 0, "one slice reaches the row at seq 1,301");
}

#[test]
fn a_long_backlog_of_one_busy_group_does_not_make_one_lease_unbounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v0", Some("hot"), &["A"])]);
    let v0 = lease(&mut s, "A", 10);
    s.retry_at(
        "A",
        v0[0].1,
        SystemTime::now() + Duration::from_secs(3600),
        &attempt(1),
    )
    .unwrap();
    let hot: Vec<Accepted> = (1..1500)
        .map(|i| msg(&format!("v{i}"), Some("hot"), &["A"]))
        .collect();
    append(&mut s, hot);
    append(&mut s, vec![msg("cold", None, &["A"])]);
    assert!(
        lease(&mut s, "A", 10).is_empty(),
        "the first lease stops at its budget"
    );
    assert_eq!(
        s.rewake,
        ["A"],
        "and asks for its worker to lease again at once"
    );
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["cold"]);
    assert_eq!(
        s.depth("A").pending,
        1500,
        "v0 and the hot group's backlog still wait"
    );
}

#[test]
fn a_second_daemon_on_the_same_spool_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["A".to_string()];
    let window = Duration::from_secs(60);
    let first = SqliteSpool::open(dir.path(), &names, bounds(1 << 30, window)).unwrap();
    let second = SqliteSpool::open(dir.path(), &names, bounds(1 << 30, window));
    assert!(matches!(&second, Err(e) if e.to_string().contains("another switchyard daemon")));
    drop(first);
    // The writer thread lets go of the lock once it sees the spool dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while SqliteSpool::open(dir.path(), &names, bounds(1 << 30, window)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never released"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_batch_can_be_delivered_retried_and_dead_lettered_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![
            msg("ok", None, &["A"]),
            msg("later", None, &["A"]),
            msg("never", None, &["A"]),
        ],
    );
    let batch = lease(&mut s, "A", 10);
    s.retry_at("A", batch[1].1, past(), &attempt(1)).unwrap();
    let refused = Attempt {
        status: Some(400),
        ..attempt(1)
    };
    s.dead_letter("A", batch[2].1, &refused).unwrap();
    s.ack("A", &[batch[0].1]).unwrap();
    let d = s.depth("A");
    assert_eq!(
        (d.pending, d.retrying, d.in_flight, d.dead_letters),
        (1, 1, 0, 1)
    );
    drop(s);
    let mut s = store(dir.path());
    assert_eq!(
        ids(&lease(&mut s, "A", 10)),
        ["later"],
        "after a restart only the retry is due"
    );
}

#[test]
fn bytes_replayed_from_dead_letters_still_count_after_the_daemon_appends() {
    let dir = tempfile::tempdir().unwrap();
    let body_len = msg("1", None, &["A"]).body.len() as u64;
    let mut s = open(dir.path(), body_len * 3, Duration::from_secs(3600));
    append(&mut s, vec![msg("1", None, &["A"])]);
    let one = lease(&mut s, "A", 10);
    s.dead_letter("A", one[0].1, &attempt(1)).unwrap();
    s.collect_garbage().unwrap();
    let mut conn = dlq::open(dir.path()).unwrap();
    dlq::replay(&mut conn, &Selector::All, &["A".into()]).unwrap();
    // The daemon appends before its housekeeping notices the replay, then recounts.
    append(&mut s, vec![msg("2", None, &["A"])]);
    s.recount().unwrap();
    let (stored, logged): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT log_bytes FROM stats), (SELECT SUM(bytes) FROM log)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, logged, "the replayed message's bytes were erased");
    assert_eq!(
        append(&mut s, vec![msg("3", None, &["A"])]),
        [Appended::Stored]
    );
    let full = s
        .append(&[msg("4", None, &["A"])], &mut Vec::new())
        .unwrap();
    assert!(
        matches!(full, Err(SpoolError::Full { .. })),
        "three bodies fill the spool, the replayed one included: {full:?}"
    );
    let all = lease(&mut s, "A", 10);
    let seqs: Vec<Seq> = all.iter().map(|(_, seq)| *seq).collect();
    s.ack("A", &seqs).unwrap();
    s.collect_garbage().unwrap();
    let stored: i64 = conn
        .query_row("SELECT log_bytes FROM stats", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0, "everything delivered and collected");
    assert_eq!(body_rows(&conn), 0, "and their texts with them");
}

#[test]
fn opening_repairs_a_byte_total_that_drifted() {
    let dir = tempfile::tempdir().unwrap();
    let body_len = msg("1", None, &["A"]).body.len() as u64;
    {
        let mut s = open(dir.path(), body_len * 2, Duration::from_secs(3600));
        append(&mut s, vec![msg("1", None, &["A"]), msg("2", None, &["A"])]);
        // What an older version could leave behind (see the test above).
        s.conn
            .execute("UPDATE stats SET log_bytes = 0", [])
            .unwrap();
    }
    let mut s = open(dir.path(), body_len * 2, Duration::from_secs(3600));
    let full = s
        .append(&[msg("3", None, &["A"])], &mut Vec::new())
        .unwrap();
    assert!(matches!(full, Err(SpoolError::Full { .. })), "{full:?}");
}

#[test]
fn a_version_1_spool_keeps_what_each_destination_was_owed() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A spool as version 1 left it: A owes 1 and 3, B owes 2; 4 was delivered
        // everywhere but not collected yet.
        let conn = rusqlite::Connection::open(schema::file(dir.path())).unwrap();
        conn.execute_batch(schema::STEPS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO destination (id, name, cursor) VALUES (1, 'A', 0), (2, 'B', 0);
             INSERT INTO log (source, message_id, group_id, body, bytes, enqueued_at) VALUES
               ('web', '1', NULL, '{\"messageId\":\"1\"}', 16, 0),
               ('web', '2', NULL, '{\"messageId\":\"2\"}', 16, 0),
               ('web', '3', NULL, '{\"messageId\":\"3\"}', 16, 0),
               ('web', '4', NULL, '{\"messageId\":\"4\"}', 16, 0);
             INSERT INTO route (dest, seq) VALUES (1, 1), (2, 2), (1, 3);",
        )
        .unwrap();
    }
    let mut s = store(dir.path());
    let version: i64 = s
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    assert_eq!(s.depth("A").pending, 2);
    assert_eq!(s.depth("B").pending, 1);
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["1", "3"]);
    assert_eq!(ids(&lease(&mut s, "B", 10)), ["2"]);
}

#[test]
fn a_new_destination_takes_the_id_of_one_that_is_gone_and_owes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = schema::open(dir.path(), true).unwrap();
        for id in 1..=schema::MAX_DESTINATION_ID {
            conn.execute(
                "INSERT INTO destination (id, name, cursor) VALUES (?1, ?2, 0)",
                rusqlite::params![id, format!("old{id}")],
            )
            .unwrap();
        }
        // `old1` is still owed a message: its id cannot be taken.
        conn.execute(
            "INSERT INTO log (source, message_id, body, bytes, enqueued_at, dests) VALUES ('web', 'x', '{}', 2, 0, ?1)",
            [schema::bit(1)],
        )
        .unwrap();
    }
    let mut s = store(dir.path());
    append(&mut s, vec![msg("1", None, &["A", "B"])]);
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["1"]);
    assert_eq!(
        ids(&lease(&mut s, "B", 10)),
        ["1"],
        "old1's message is not B's"
    );
    drop(s);

    let conn = schema::open(dir.path(), false).unwrap();
    conn.execute("UPDATE destination SET name = 'busy' || id", [])
        .unwrap();
    // Every destination in the file is owed `x` now.
    conn.execute(
        "UPDATE log SET dests = ?1 WHERE message_id = 'x'",
        [i64::MAX],
    )
    .unwrap();
    drop(conn);
    let names = vec!["C".to_string()];
    let conn = schema::open(dir.path(), true).unwrap();
    let err = Store::new(conn, &names, bounds(1 << 30, Duration::from_secs(60)))
        .err()
        .expect("no id is free");
    assert!(
        err.to_string().contains("cannot add destination `C`"),
        "{err}"
    );
}

#[test]
fn leases_hand_out_the_message_ingest_parsed_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let parsed = |m: &Accepted| {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&m.body).unwrap();
        Some(Parsed::new(value))
    };
    {
        let mut s = store(dir.path());
        let mut m = msg("1", None, &["A", "B"]);
        m.parsed = parsed(&m);
        let mut n = msg("2", None, &["A", "B"]);
        n.parsed = parsed(&n);
        append(&mut s, vec![m, n]);
        for dest in ["A", "B"] {
            let got = s.lease(dest, 1).unwrap();
            assert!(got[0].parsed.is_ready(), "kept from ingest");
            assert_eq!(got[0].parsed.get("").unwrap()["messageId"], "1");
        }
    }
    let mut s = store(dir.path());
    let a = s.lease("A", 10).unwrap();
    assert_eq!(a.len(), 2, "nothing was acked before the restart");
    assert!(
        a.iter().all(|l| !l.parsed.is_ready()),
        "to parse from the log"
    );
    assert_eq!(a[1].parsed.get(&a[1].body).unwrap()["messageId"], "2");
    let b = s.lease("B", 10).unwrap();
    // Each worker parses what its adapter reads of a backlog's message, often not all of
    // it: a parse is not shared, and B gets the text.
    assert!(!b[1].parsed.is_ready(), "B's own cell, not A's parse");
    assert!(b[1].body.contains(r#""messageId":"2""#));
}

/// An item held behind its group's item in flight keeps the text it was read with from
/// memory: when its turn comes it is not read from the file again (what ingest parsed is
/// only its head, so the text is still needed).
#[test]
fn an_item_held_behind_its_group_keeps_its_text_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    let with_head = |id: &str| {
        let mut m = msg(id, Some("g"), &["A"]);
        let head: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&m.body).unwrap();
        m.parsed = Some(Parsed::head(head, None));
        m
    };
    append(&mut s, vec![with_head("h1")]);
    let first = s.lease("A", 10).unwrap();
    append(&mut s, vec![with_head("h2")]);
    assert!(s.lease("A", 10).unwrap().is_empty(), "h2 waits behind h1");
    // Changed on disk while it waits: a read from the file would flag it.
    alter_text(&s.conn, "\"h2\"", "\"x2\"");
    s.ack("A", &[first[0].seq]).unwrap();
    let second = s.lease("A", 10).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].corrupted, None, "not read from the file");
    assert!(second[0].body.contains(r#""messageId":"h2""#));
}

/// A body changed on disk after it was written (its checksum no longer matches) is leased
/// marked corrupted, whichever way it is read from the file; `spool check` names it. (The
/// process that wrote it leases its newest rows from memory, as they were accepted.)
#[test]
fn a_body_altered_on_disk_is_leased_as_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![msg("v1", None, &["A"]), msg("v2", Some("g"), &["A"])],
    );
    alter_text(&s.conn, "\"v1\"", "\"x1\"");
    drop(s);
    let mut s = store(dir.path());
    let leased = s.lease("A", 10).unwrap();
    let why = leased[0].corrupted.as_deref().expect("v1 is flagged");
    assert!(why.contains("altered on disk"), "{why}");
    assert_eq!(leased[1].corrupted, None, "v2 is intact");
    // Read back from the retry set too.
    s.retry_at("A", leased[0].seq, past(), &attempt(1)).unwrap();
    let again = s.lease("A", 10).unwrap();
    assert!(again[0].corrupted.is_some());
    let report = check::check(dir.path()).unwrap();
    assert_eq!((report.messages, report.checksummed), (2, 2));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("messageId v1"),
        "{:?}",
        report.problems
    );
}

/// A damaged page of the dedupe journal is found when the daemon opens the file, before
/// anything reads it, with what to do; `spool check` reports it too.
#[test]
fn a_damaged_index_page_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = store(dir.path());
        let many: Vec<Accepted> = (0..500)
            .map(|i| msg(&format!("message-{i:04}"), None, &["A"]))
            .collect();
        append(&mut s, many);
    }
    let path = schema::file(dir.path());
    let (page_size, root): (i64, i64) = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'seen_batch'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (size, root)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let at = ((root - 1) * page_size) as usize;
    bytes[at..at + 64].fill(0xAB);
    std::fs::write(&path, bytes).unwrap();
    let err = schema::open(dir.path(), true).unwrap_err().to_string();
    assert!(
        err.contains("is damaged") && err.contains(".recover") && err.contains("spool check"),
        "{err}"
    );
    let report = check::check(dir.path()).unwrap();
    assert!(!report.problems.is_empty());
}

/// On a real WAL (copied while the store is open, as a crash leaves it): nothing to say when
/// it is intact; a last frame cut short or failing its checksum is named, and the commits
/// before it are kept.
#[test]
fn a_torn_end_of_the_wal_is_told_and_what_was_committed_before_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("v1", None, &["A"])]);
    append(&mut s, vec![msg("v2", None, &["A"])]);
    let crashed = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for file in [schema::FILE.to_string(), format!("{}-wal", schema::FILE)] {
            std::fs::copy(dir.path().join(&file), to.join(&file)).unwrap();
        }
        (to.clone(), to.join(format!("{}-wal", schema::FILE)))
    };
    let (_, intact) = crashed("intact");
    assert_eq!(
        wal::tail(&intact).unwrap(),
        None,
        "an intact WAL: nothing to say"
    );

    let (cut_dir, cut) = crashed("cut");
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let dropped = wal::tail(&cut).unwrap().expect("the cut is seen");
    assert!(dropped.why.contains("cut short"), "{}", dropped.why);
    let mut after = store(&cut_dir);
    let leased = lease(&mut after, "A", 10);
    assert_eq!(
        ids(&leased).first(),
        Some(&"v1"),
        "the commits before the cut are kept"
    );

    let (_, flipped) = crashed("flipped");
    let mut bytes = std::fs::read(&flipped).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&flipped, bytes).unwrap();
    let dropped = wal::tail(&flipped)
        .unwrap()
        .expect("the bad checksum is seen");
    assert!(
        dropped.why.contains("fails its checksum"),
        "{}",
        dropped.why
    );
    drop(s);
}

/// Newer items of a group whose oldest is in backoff wait in memory, not as rows of the retry
/// set (with every company failing, a row per message per destination made ingest and the
/// drain crawl); after a crash they are still there, and still behind it.
#[test]
fn items_behind_a_backoff_wait_in_memory_and_keep_their_place_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let retry_rows = |s: &Store| -> i64 {
        s.conn
            .query_row("SELECT COUNT(*) FROM retry", [], |r| r.get(0))
            .unwrap()
    };
    {
        let mut s = store(dir.path());
        append(&mut s, vec![msg("v1", Some("g"), &["A"])]);
        let v1 = lease(&mut s, "A", 10);
        let later = SystemTime::now() + Duration::from_secs(3600);
        s.retry_at("A", v1[0].1, later, &attempt(1)).unwrap();
        append(
            &mut s,
            vec![
                msg("v2", Some("g"), &["A"]),
                msg("w1", Some("h"), &["A"]),
                msg("v3", Some("g"), &["A"]),
            ],
        );
        let other = lease(&mut s, "A", 10);
        assert_eq!(ids(&other), ["w1"], "v2 and v3 wait behind v1's backoff");
        assert_eq!(retry_rows(&s), 1, "only v1 is in the retry set");
        assert_eq!(s.depth("A").pending, 3);
        s.ack("A", &[other[0].1]).unwrap();
        s.save().unwrap();
        // The process dies here.
    }
    let mut s = store(dir.path());
    assert!(
        lease(&mut s, "A", 10).is_empty(),
        "after the restart v2 and v3 still wait for v1"
    );
    s.conn.execute("UPDATE retry SET due_at = 0", []).unwrap();
    let v1 = lease(&mut s, "A", 10);
    assert_eq!(ids(&v1), ["v1"]);
    s.ack("A", &[v1[0].1]).unwrap();
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["v2", "v3"]);
}

#[test]
fn a_reload_drops_a_destination_without_losing_what_it_is_owed_and_adds_one_from_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![msg("1", Some("g"), &["A", "B"]), msg("2", None, &["B"])],
    );
    assert_eq!(ids(&lease(&mut s, "B", 1)), ["1"]);
    let err = s.configure(&["A".to_string()]).unwrap_err().to_string();
    assert_eq!(err, "destination `B` still has 1 items being delivered");
    s.ack("B", &[1]).unwrap();
    let added = s.configure(&["A".to_string(), "C".to_string()]).unwrap();
    assert_eq!(added, ["C"]);
    // Ingest stopped routing to B before the spool dropped it.
    append(&mut s, vec![msg("3", None, &["A", "C"])]);
    let c = lease(&mut s, "C", 10);
    assert_eq!(ids(&c), ["3"], "C starts after the log");
    s.ack("C", &[c[0].1]).unwrap();
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["1", "3"]);
    s.ack("A", &[1, 3]).unwrap();
    s.collect_garbage().unwrap();
    // B, dropped, keeps its rows; configured again, it resumes where it stopped.
    let added = s.configure(&["A".to_string(), "B".to_string()]).unwrap();
    assert_eq!(added, ["B"]);
    assert_eq!(s.depth("B").pending, 1);
    assert_eq!(ids(&lease(&mut s, "B", 10)), ["2"]);
    assert!(
        s.lease("C", 10).unwrap().is_empty(),
        "C is no longer served"
    );
}

/// Ingest hands every message routed alike the same shared names; the spool routes them by
/// pointer while its lanes stay, and by name again once a reload changed them (here the same
/// names, still held by ingest, name a dropped destination and one added back).
#[test]
fn messages_sharing_their_destination_names_are_routed_right_across_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    let (a, b): (Arc<str>, Arc<str>) = ("A".into(), "B".into());
    let shared = |id: &str| Accepted {
        destinations: vec![a.clone(), b.clone(), a.clone()],
        ..msg(id, None, &[])
    };
    append(&mut s, vec![shared("1"), shared("2")]);
    append(&mut s, vec![shared("3")]);
    assert_eq!(s.depth("A").pending, 3, "A once per message, named twice");
    assert_eq!(s.depth("B").pending, 3);
    let ab: Vec<Seq> = lease(&mut s, "B", 10).into_iter().map(|(_, q)| q).collect();
    s.ack("B", &ab).unwrap();
    s.configure(&["A".to_string()]).unwrap();
    append(&mut s, vec![shared("4")]);
    assert_eq!(s.depth("A").pending, 4);
    s.configure(&["A".to_string(), "B".to_string()]).unwrap();
    append(&mut s, vec![shared("5")]);
    assert_eq!(
        ids(&lease(&mut s, "B", 10)),
        ["5"],
        "4 came while B was not served"
    );
    assert_eq!(ids(&lease(&mut s, "A", 10)), ["1", "2", "3", "4", "5"]);
}

/// Messages logged together share a body row, which stays while any of them is still owed
/// (here one waits in the retry set, read back from the row after its neighbours left) and
/// goes with the last of them.
#[test]
fn a_body_row_stays_while_a_message_in_it_is_owed_and_goes_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(
        &mut s,
        vec![
            msg("1", None, &["A"]),
            msg("2", None, &["A"]),
            msg("3", None, &["A"]),
        ],
    );
    assert_eq!(body_rows(&s.conn), 1);
    let leased = lease(&mut s, "A", 10);
    s.ack("A", &[leased[0].1, leased[2].1]).unwrap();
    s.retry_at("A", leased[1].1, past(), &attempt(1)).unwrap();
    s.save().unwrap();
    s.collect_garbage().unwrap();
    let logged: i64 = s
        .conn
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!((logged, body_rows(&s.conn)), (1, 1), "2 keeps the row");
    let again = s.lease("A", 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].corrupted, None);
    assert_eq!(again[0].body.as_ref(), msg("2", None, &["A"]).body);
    s.ack("A", &[again[0].seq]).unwrap();
    s.save().unwrap();
    s.collect_garbage().unwrap();
    assert_eq!(body_rows(&s.conn), 0);
}

/// A message whose stored text is gone from the file (its body row deleted) is leased
/// marked corrupted, saying what is missing, and `spool check` names it.
#[test]
fn a_message_whose_text_is_missing_is_leased_as_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    append(&mut s, vec![msg("gone", None, &["A"])]);
    s.conn.execute("DELETE FROM body", []).unwrap();
    drop(s);
    let mut s = store(dir.path());
    let leased = s.lease("A", 10).unwrap();
    let why = leased[0].corrupted.as_deref().expect("flagged");
    assert!(why.contains("stored text is missing"), "{why}");
    let report = check::check(dir.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("messageId gone") && p.contains("missing")),
        "{:?}",
        report.problems
    );
    s.dead_letter("A", leased[0].seq, &attempt(1)).unwrap();
    s.save().unwrap();
    let kept: String = s
        .conn
        .query_row("SELECT message_id FROM dead_letter", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "gone", "dead-lettered with what is left of it");
}
