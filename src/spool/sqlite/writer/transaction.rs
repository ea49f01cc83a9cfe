//! One transaction: every command of a gathered batch applied between BEGIN and COMMIT, and
//! answered only once the COMMIT has made it durable.
//!
//! Invariants kept here: one transaction, one fate. If BEGIN, any command or COMMIT fails,
//! the file and the store's memory go back to where they were before it began (a `Snapshot`
//! taken before BEGIN), and every command of it is failed back to its caller, or, for a
//! settlement, deferred to be applied again (see `Command::fail_or_defer`). Nobody is
//! answered before the commit.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Command, Deferred, Reply, Settlement, Shared, publish, wake};
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::store::{Snapshot, Store};
use crate::spool::{Appended, Leased, SpoolError};
use crate::telemetry::{self, Throttle};

/// A command applied inside the open transaction, its answer held until the commit.
enum Done {
    Append(Reply<Vec<Appended>>, Result<Vec<Appended>, SpoolError>),
    Lease(Reply<Vec<Leased>>, Vec<Leased>),
    /// With how many were not kept.
    Reject(Reply<usize>, usize),
    /// Kept whole, to be applied again if the transaction fails.
    Settle(Settlement, Reply<()>),
}

impl Done {
    fn answer(self) {
        // A caller that stopped waiting (a dropped request) needs no answer.
        let _ = match self {
            Done::Append(r, v) => r.send(v).is_ok(),
            Done::Lease(r, v) => r.send(Ok(v)).is_ok(),
            Done::Reject(r, not_kept) => r.send(Ok(not_kept)).is_ok(),
            Done::Settle(_, r) => r.send(Ok(())).is_ok(),
        };
    }

    /// The transaction failed: nothing of this command was kept (see `Command::fail_or_defer`).
    fn fail_or_defer(self, e: &Arc<StorageError>, deferred: &mut Deferred) {
        match self {
            Done::Append(r, _) => fail(r, e),
            Done::Lease(r, _) => fail(r, e),
            Done::Reject(r, _) => fail(r, e),
            Done::Settle(s, r) => deferred.push((s, r)),
        }
    }
}

impl Command {
    /// The destination whose leases this command changes, if any.
    fn lane(&self) -> Option<&str> {
        match self {
            Command::Lease(d, _, _)
            | Command::Settle(Settlement::Ack(d, _), _)
            | Command::Settle(Settlement::Retry(d, ..), _)
            | Command::Settle(Settlement::Dead(d, ..), _) => Some(d),
            Command::Append(..) | Command::Reject(..) | Command::Configure(..) => None,
        }
    }

    /// After a failed transaction: fail an append or a lease back to its caller, who can try
    /// again; keep a settlement, to apply again later. Its caller (a worker) could do nothing
    /// useful with an error: the items stay leased, so nobody would ever lease them again.
    fn fail_or_defer(self, e: &Arc<StorageError>, deferred: &mut Deferred) {
        match self {
            Command::Append(_, r) => fail(r, e),
            Command::Lease(_, _, r) => fail(r, e),
            Command::Reject(_, r) => fail(r, e),
            Command::Settle(s, r) => deferred.push((s, r)),
            Command::Configure(_, r) => fail(r, e),
        }
    }
}

/// Tell a caller its command failed with the transaction: the error is the transaction's,
/// shared by all its callers.
fn fail<T>(reply: Reply<T>, e: &Arc<StorageError>) {
    // A caller that stopped waiting (a dropped request) needs no answer.
    let _ = reply.send(Err(StorageError::Transaction(e.clone()).into()));
}

/// Failed transactions are logged at most once a minute while they go on (a full disk fails
/// every one of them), and their end is logged once.
static TOLD: Throttle = Throttle::new(Duration::from_secs(60), 0);
/// The last transaction failed.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Apply `batch` in one transaction, then answer it; or fail or defer all of it.
pub(super) fn execute(
    store: &mut Store,
    shared: &Shared,
    batch: Vec<Command>,
    deferred: &mut Deferred,
) {
    // Only what a caller is answered about must be on disk before the answer: appends and
    // refused messages. A transaction of leases and settlements alone commits without an
    // fsync; the next durable commit syncs it with its own (WAL frames are written in order).
    // Lost to a power cut, such outcomes only make their items due again: at-least-once.
    let durable = batch
        .iter()
        .any(|c| matches!(c, Command::Append(..) | Command::Reject(..)));
    // Taken before BEGIN: if the transaction fails, memory goes back to match the file.
    let leasing: Vec<&str> = batch.iter().filter_map(Command::lane).collect();
    let snapshot = store.snapshot(&leasing);
    let begun = store.set_durable(durable).and_then(|()| {
        (store.conn)
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(StorageError::from)
    });
    if let Err(e) = begun {
        let e = Arc::new(e);
        // Nothing was applied (e.g. SQLITE_BUSY while `dlq replay` holds the write lock).
        tracing::warn!(error = %e, "cannot start a spool transaction; its callers are told to retry");
        for c in batch {
            c.fail_or_defer(&e, deferred);
        }
        return;
    }
    let mut touched = Vec::new();
    let mut fresh = Vec::new();
    let mut done = Vec::with_capacity(batch.len());
    let mut commands = batch.into_iter();
    let mut result = Ok(());
    for command in commands.by_ref() {
        let (d, applied) = apply(store, command, &mut touched, &mut fresh);
        done.push(d);
        if applied.is_err() {
            result = applied;
            break;
        }
    }
    let result = result.and_then(|()| store.save()).and_then(|()| {
        store
            .conn
            .execute_batch("COMMIT")
            .map_err(StorageError::from)
    });
    match result {
        Ok(()) => {
            if FAILING.swap(false, Ordering::Relaxed) {
                tracing::info!("spool transactions succeed again");
            }
            committed(store, shared, done, &touched, fresh)
        }
        Err(e) => {
            let e = Arc::new(e);
            roll_back(store, snapshot);
            let kept = done.len() + commands.len();
            // One transaction, one fate: applied or not, every command of it failed.
            for d in done {
                d.fail_or_defer(&e, deferred);
            }
            for c in commands {
                c.fail_or_defer(&e, deferred);
            }
            FAILING.store(true, Ordering::Relaxed);
            if let Some(failed) = TOLD.due(telemetry::once) {
                tracing::error!(error = %e, commands = kept, deferred = deferred.len(), failed_since_last_line = failed,
                    "spool transaction failed; appends and leases are told to retry, delivery outcomes will be applied again");
            }
            publish(store, shared, store.lanes.keys().cloned().collect());
        }
    }
}

/// The transaction is durable: publish the lanes it touched, answer its callers, and wake
/// the workers with new work (`fresh`, plus lanes whose lease stopped at its scan budget).
fn committed(
    store: &mut Store,
    shared: &Shared,
    done: Vec<Done>,
    touched: &[String],
    mut fresh: Vec<String>,
) {
    shared.commits.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("switchyard_spool_commits_total").increment(1);
    publish(store, shared, touched.iter().cloned().collect());
    for d in done {
        d.answer();
    }
    fresh.append(&mut store.rewake);
    for name in fresh.iter().collect::<HashSet<_>>() {
        wake(shared, name);
    }
}

/// Undo an open transaction in the file and in memory.
pub(super) fn roll_back(store: &mut Store, snapshot: Snapshot) {
    // It may already be gone: SQLite rolls back by itself on some errors (disk full, I/O).
    let _ = store.conn.execute_batch("ROLLBACK");
    if !store.conn.is_autocommit() {
        // Still open: the next BEGIN fails, so every later call fails loudly; nothing of
        // this transaction can be committed by a later one.
        tracing::error!("the spool transaction could not be rolled back");
    }
    store.restore(snapshot);
}

/// Apply one command; `touched` lanes get their view republished, `fresh` lanes (new
/// messages) get their worker woken. The command comes back whatever happened, to be
/// answered after the commit or failed or deferred with the transaction.
fn apply(
    store: &mut Store,
    command: Command,
    touched: &mut Vec<String>,
    fresh: &mut Vec<String>,
) -> (Done, Result<(), StorageError>) {
    match command {
        Command::Append(messages, reply) => match store.append(&messages, fresh) {
            Ok(answer) => {
                touched.extend(fresh.iter().cloned());
                (Done::Append(reply, answer), Ok(()))
            }
            Err(e) => (Done::Append(reply, Ok(Vec::new())), Err(e)),
        },
        Command::Reject(rejected, reply) => match store.reject(&rejected) {
            Ok(not_kept) => (Done::Reject(reply, not_kept), Ok(())),
            Err(e) => (Done::Reject(reply, 0), Err(e)),
        },
        Command::Lease(dest, max, reply) => match store.lease(&dest, max) {
            Ok(leased) => {
                touched.push(dest);
                (Done::Lease(reply, leased), Ok(()))
            }
            Err(e) => (Done::Lease(reply, Vec::new()), Err(e)),
        },
        Command::Settle(settlement, reply) => {
            let result = match &settlement {
                Settlement::Ack(dest, seqs) => store.ack(dest, seqs),
                Settlement::Retry(dest, seq, at, attempt) => {
                    store.retry_at(dest, *seq, *at, attempt)
                }
                Settlement::Dead(dest, seq, attempt) => store.dead_letter(dest, *seq, attempt),
            };
            let dest = match &settlement {
                Settlement::Ack(d, _) | Settlement::Retry(d, ..) | Settlement::Dead(d, ..) => d,
            };
            touched.push(dest.clone());
            (Done::Settle(settlement, reply), result)
        }
        Command::Configure(..) => unreachable!("the writer applies a reconfiguration on its own"),
    }
}
