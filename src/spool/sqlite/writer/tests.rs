//! The writer thread itself: group commit, and what a failed transaction leaves behind.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::{Command, Reply, Settlement, Shared, View, run};
use crate::message::Accepted;
use crate::spool::sqlite::schema;
use crate::spool::sqlite::store::Store;
use crate::spool::{Appended, Attempt, DeadReason, SpoolError};

/// The store as the daemon opens it, but with a short busy timeout, so a held write lock
/// fails the writer's BEGIN without waiting out the daemon's 10 s; and with a fault switch:
/// while `fault` has a row, writing a dead letter fails in the middle of a transaction.
fn store(dir: &Path) -> Store {
    let conn = schema::open(dir, true).unwrap();
    conn.busy_timeout(Duration::from_millis(100)).unwrap();
    conn.execute_batch(
        "CREATE TABLE fault (x INTEGER);
         CREATE TRIGGER inject BEFORE INSERT ON dead_letter WHEN EXISTS (SELECT 1 FROM fault)
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();
    let bounds = crate::spool::sqlite::Bounds {
        dedupe_window: Duration::from_secs(3600),
        ..Default::default()
    };
    Store::new(conn, &["A".to_string()], bounds).unwrap()
}

/// A writer thread; commands sent before `start` are all in its first transaction.
struct Writer {
    commands: Option<Sender<Command>>,
    queued: Option<(Store, Receiver<Command>)>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

type Answer<T> = oneshot::Receiver<Result<T, SpoolError>>;

impl Writer {
    fn new(store: Store) -> Self {
        let (commands, rx) = channel();
        Self {
            commands: Some(commands),
            queued: Some((store, rx)),
            shared: Arc::new(Shared::default()),
            thread: None,
        }
    }

    fn start(mut self) -> Self {
        let (store, rx) = self.queued.take().unwrap();
        let shared = self.shared.clone();
        self.thread = Some(std::thread::spawn(move || run(store, rx, shared)));
        self
    }

    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Answer<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.as_ref().unwrap().send(make(tx)).unwrap();
        rx
    }

    fn settle(&self, s: Settlement) -> Answer<()> {
        self.send(|r| Command::Settle(s, r))
    }

    fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    fn view(&self) -> View {
        self.shared.views.lock().unwrap()["A"]
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The answer, once the writer gives it.
fn answer<T>(mut rx: Answer<T>) -> Result<T, SpoolError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(v) => return v,
            Err(oneshot::error::TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "the writer never answered");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the writer dropped the command: {e}"),
        }
    }
}

fn unanswered<T>(rx: &mut Answer<T>) -> bool {
    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

fn msg(id: &str) -> Accepted {
    Accepted {
        source: "web".into(),
        message_id: id.into(),
        group_id: None,
        body: format!("{{\"messageId\":\"{id}\"}}"),
        parsed: None,
        destinations: vec!["A".into()],
    }
}

fn attempt() -> Box<Attempt> {
    let now = SystemTime::now();
    Box::new(Attempt {
        attempts: 1,
        first_attempt: now,
        last_attempt: now,
        reason: "HTTP 500: boom".into(),
        status: Some(500),
        response: None,
        dead_reason: DeadReason::Exhausted,
    })
}

#[test]
fn queued_commands_share_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new(store(dir.path()));
    let appends: Vec<_> = (0..5)
        .map(|i| w.send(|r| Command::Append(vec![msg(&i.to_string())], r)))
        .collect();
    let leased = w.send(|r| Command::Lease("A".into(), 10, r));
    let w = w.start();
    for a in appends {
        assert_eq!(answer(a).unwrap(), [Appended::Stored]);
    }
    assert_eq!(
        answer(leased).unwrap().len(),
        5,
        "the lease sees the appends"
    );
    assert_eq!(w.commits(), 1);
    assert_eq!(w.view().depth.in_flight, 5);
}

#[test]
fn a_transaction_that_cannot_begin_keeps_earlier_leases_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new(store(dir.path())).start();
    let stored = answer(w.send(|r| Command::Append(vec![msg("1"), msg("2")], r))).unwrap();
    assert_eq!(stored, [Appended::Stored, Appended::Stored]);
    let leased = answer(w.send(|r| Command::Lease("A".into(), 10, r))).unwrap();
    assert_eq!(leased.len(), 2);

    // `dlq replay` holds the write lock longer than the writer's busy timeout.
    let replay = schema::open(dir.path(), false).unwrap();
    replay.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first_delivered = w.settle(Settlement::Ack("A".into(), vec![leased[0].seq]));
    // Answered after the ack met a BEGIN that failed (alone or in the same batch).
    let refused = answer(w.send(|r| Command::Append(vec![msg("3")], r)));
    assert!(refused.is_err(), "ingest is told to retry: {refused:?}");
    replay.execute_batch("COMMIT").unwrap();

    answer(first_delivered).expect("the outcome is applied once the lock is free");
    assert!(
        answer(w.send(|r| Command::Lease("A".into(), 10, r)))
            .unwrap()
            .is_empty(),
        "the delivered item is not sent again, the other is still leased"
    );
    answer(w.settle(Settlement::Retry(
        "A".into(),
        leased[1].seq,
        SystemTime::now() + Duration::from_secs(3600),
        attempt(),
    )))
    .unwrap();
    let d = w.view().depth;
    assert_eq!((d.pending, d.retrying, d.in_flight), (1, 1, 0));
    assert_eq!(
        answer(w.send(|r| Command::Append(vec![msg("3")], r))).unwrap(),
        [Appended::Stored],
        "the refused append left no dedupe key behind"
    );
    let again = answer(w.send(|r| Command::Lease("A".into(), 10, r))).unwrap();
    assert_eq!(
        again.len(),
        1,
        "only the new message; the retry waits its backoff"
    );
    assert!(again[0].body.contains("\"3\""));
}

#[test]
fn outcomes_rolled_back_mid_transaction_are_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(dir.path());
    s.append(&[msg("1"), msg("2"), msg("3")], &mut Vec::new())
        .unwrap()
        .unwrap();
    let leased = s.lease("A", 10).unwrap();
    let outside = schema::open(dir.path(), false).unwrap();
    outside.execute("INSERT INTO fault VALUES (1)", []).unwrap();

    // One transaction: the ack applies, then the dead letter fails and takes it down too.
    let w = Writer::new(s);
    let mut delivered = w.settle(Settlement::Ack("A".into(), vec![leased[0].seq]));
    let mut dead = w.settle(Settlement::Dead("A".into(), leased[1].seq, attempt()));
    let mut later = w.settle(Settlement::Retry(
        "A".into(),
        leased[2].seq,
        SystemTime::now() + Duration::from_secs(3600),
        attempt(),
    ));
    let lease = w.send(|r| Command::Lease("A".into(), 10, r));
    let w = w.start();
    assert!(
        answer(lease).is_err(),
        "a lease in a failed transaction is failed back"
    );
    assert!(
        unanswered(&mut delivered) && unanswered(&mut dead) && unanswered(&mut later),
        "outcomes wait while they cannot be written"
    );
    assert_eq!(w.commits(), 0);

    outside.execute("DELETE FROM fault", []).unwrap();
    answer(delivered).unwrap();
    answer(dead).unwrap();
    answer(later).unwrap();
    let dead_letters: i64 = outside
        .query_row("SELECT COUNT(*) FROM dead_letter", [], |r| r.get(0))
        .unwrap();
    assert_eq!(dead_letters, 1);
    assert!(
        answer(w.send(|r| Command::Lease("A".into(), 10, r)))
            .unwrap()
            .is_empty(),
        "nothing is sent again: delivered, dead, or waiting its backoff"
    );
    let d = w.view().depth;
    assert_eq!(
        (d.pending, d.retrying, d.in_flight, d.dead_letters),
        (1, 1, 0, 1)
    );
}

/// Appends from four callers at once, so the writer is seldom idle: the WAL still starts
/// over from its beginning (after an idle moment, or at SQLite's own checkpoint, which finds
/// most of it copied by the background) instead of growing with everything written.
#[test]
fn the_wal_stays_bounded_under_continuous_appends() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new(store(dir.path())).start();
    let wal = crate::spool::sqlite::wal::file_of(&schema::file(dir.path()));
    let pad = "x".repeat(64 << 10);
    // 16 MiB in all, four times SQLite's own checkpoint in unit tests.
    std::thread::scope(|s| {
        for t in 0..4 {
            let (commands, pad) = (w.commands.clone().unwrap(), &pad);
            s.spawn(move || {
                for i in 0..64 {
                    let mut m = msg(&format!("m{t}-{i}"));
                    m.body = format!("{{\"messageId\":\"m{t}-{i}\",\"pad\":\"{pad}\"}}");
                    let (tx, rx) = oneshot::channel();
                    commands.send(Command::Append(vec![m], tx)).unwrap();
                    assert!(matches!(answer(rx).unwrap()[..], [Appended::Stored]));
                }
            });
        }
    });
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(
        len < 8 << 20,
        "the WAL is {len} bytes after 16 MiB written by four callers"
    );
    drop(w);
    let conn = schema::open(dir.path(), false).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 256, "every append is in the log");
}
