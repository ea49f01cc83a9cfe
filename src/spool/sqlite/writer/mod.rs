//! The writer thread: owns the connection, gathers queued commands into one transaction and
//! one fsync (group commit), and answers each caller only after that commit.
//!
//! A transaction that fails changes nothing, in the file or in memory: the store's in-memory
//! state is restored from a snapshot taken before it began. Its appends and leases are failed
//! back (ingest answers 503, a worker leases again); its settlements are kept and applied
//! again, because the worker that sent one has nothing better to do with an error.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use super::schema::storage;
use super::store::{Snapshot, Store};
use crate::message::Accepted;
use crate::spool::{Appended, Attempt, Depth, Leased, Rejected, Seq, SpoolError};

/// Longest the writer lingers after an append for others to share its commit; it stops as
/// soon as every append under way is in hand (see `Shared::appending`).
const LINGER: Duration = Duration::from_millis(2);
/// Most commands in one transaction.
const MAX_COMMANDS: usize = 256;
/// Housekeeping period; also how soon changes made by `switchyard dlq` are noticed.
const TICK: Duration = Duration::from_millis(500);

pub type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

pub enum Command {
    Append(Vec<Accepted>, Reply<Vec<Appended>>),
    Reject(Vec<Rejected>, Reply<()>),
    Lease(String, usize, Reply<Vec<Leased>>),
    Settle(Settlement, Reply<()>),
}

/// The outcome of a delivery already made, for one destination.
pub enum Settlement {
    Ack(String, Vec<Seq>),
    Retry(String, Seq, SystemTime, Box<Attempt>),
    Dead(String, Seq, Box<Attempt>),
}

impl Command {
    /// After a failed transaction: fail an append or a lease back to its caller, who can try
    /// again; keep a settlement, to apply again later. Its caller (a worker) could do nothing
    /// useful with an error: the items stay leased, so nobody would ever lease them again.
    fn fail_or_defer(self, e: &SpoolError, deferred: &mut Deferred) {
        let err = || SpoolError::Storage(e.to_string());
        // A caller that stopped waiting (a dropped request) needs no answer.
        let _ = match self {
            Command::Append(_, r) => r.send(Err(err())).is_ok(),
            Command::Lease(_, _, r) => r.send(Err(err())).is_ok(),
            Command::Reject(_, r) => r.send(Err(err())).is_ok(),
            Command::Settle(s, r) => {
                deferred.push((s, r));
                true
            }
        };
    }
}

/// What the async side reads without asking the writer.
#[derive(Default)]
pub struct Shared {
    /// Per destination, as of the last commit that touched it.
    pub views: Mutex<HashMap<String, View>>,
    /// One per destination: woken when something may have become due.
    pub wakers: HashMap<String, Arc<Notify>>,
    /// Transactions committed for callers; fewer than calls when group commit works.
    pub commits: AtomicU64,
    /// Appends sent to the writer and not yet taken into a transaction. Once a transaction
    /// holds them all, lingering for more would only delay these callers.
    pub appending: AtomicUsize,
}

/// What `depth` and `wait` need of one destination.
#[derive(Debug, Default, Clone, Copy)]
pub struct View {
    pub depth: Depth,
    /// When the next retry of this destination may go; `wait` sleeps until then at most.
    pub next_due: Option<SystemTime>,
}

/// A command applied inside the open transaction, its answer held until the commit.
enum Done {
    Append(Reply<Vec<Appended>>, Result<Vec<Appended>, SpoolError>),
    Lease(Reply<Vec<Leased>>, Vec<Leased>),
    Reject(Reply<()>),
    /// Kept whole, to be applied again if the transaction fails.
    Settle(Settlement, Reply<()>),
}

impl Done {
    fn answer(self) {
        let _ = match self {
            Done::Append(r, v) => r.send(v).is_ok(),
            Done::Lease(r, v) => r.send(Ok(v)).is_ok(),
            Done::Reject(r) | Done::Settle(_, r) => r.send(Ok(())).is_ok(),
        };
    }

    /// The transaction failed: nothing of this command was kept (see `Command::fail_or_defer`).
    fn fail_or_defer(self, e: &SpoolError, deferred: &mut Deferred) {
        let err = || SpoolError::Storage(e.to_string());
        let _ = match self {
            Done::Append(r, _) => r.send(Err(err())).is_ok(),
            Done::Lease(r, _) => r.send(Err(err())).is_ok(),
            Done::Reject(r) => r.send(Err(err())).is_ok(),
            Done::Settle(s, r) => {
                deferred.push((s, r));
                true
            }
        };
    }
}

/// Settlements whose transaction failed, waiting to be applied again.
type Deferred = Vec<(Settlement, Reply<()>)>;

pub fn run(mut store: Store, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut last_tick = Instant::now();
    let mut data_version = data_version(&store);
    let mut deferred = Deferred::new();
    publish(&store, &shared, store.lanes.keys().cloned().collect());
    loop {
        match rx.recv_timeout(TICK) {
            Ok(first) => {
                let batch = gather(first, &rx, &shared.appending);
                execute(&mut store, &shared, batch, &mut deferred);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            tick(&mut store, &shared, &mut data_version);
            retry_deferred(&mut store, &shared, &mut deferred);
        }
    }
    retry_deferred(&mut store, &shared, &mut deferred);
    if !deferred.is_empty() {
        tracing::error!(
            outcomes = deferred.len(),
            "spool writer stopped with delivery outcomes it could not record; those items will be delivered again"
        );
    }
    tracing::debug!("spool writer stopped");
}

/// Settlements get a transaction of their own, at most once per tick: if one keeps failing,
/// it must not take the callers of every other transaction down with it.
fn retry_deferred(store: &mut Store, shared: &Shared, deferred: &mut Deferred) {
    if deferred.is_empty() {
        return;
    }
    let batch = std::mem::take(deferred)
        .into_iter()
        .map(|(s, r)| Command::Settle(s, r))
        .collect();
    execute(store, shared, batch, deferred);
}

/// The first command plus whatever is queued; after an append, linger briefly so concurrent
/// ingest requests share the fsync, but only while some append under way is not in hand.
fn gather(first: Command, rx: &Receiver<Command>, appending: &AtomicUsize) -> Vec<Command> {
    let linger_until = matches!(first, Command::Append(..)).then(|| Instant::now() + LINGER);
    let is_append = |c: &Command| matches!(c, Command::Append(..));
    let mut appends = usize::from(is_append(&first));
    let mut batch = vec![first];
    while batch.len() < MAX_COMMANDS {
        match rx.try_recv() {
            Ok(c) => {
                appends += usize::from(is_append(&c));
                batch.push(c);
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let Some(until) = linger_until else { break };
                if appends >= appending.load(Ordering::Acquire) {
                    break;
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // Short waits: an append under way arrives within microseconds or not soon.
                match rx.recv_timeout(left.min(Duration::from_micros(200))) {
                    Ok(c) => {
                        appends += usize::from(is_append(&c));
                        batch.push(c);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    }
    // Taken: these are answered (or failed) with this transaction, no longer under way.
    let _ = appending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_sub(appends))
    });
    batch
}

fn execute(store: &mut Store, shared: &Shared, batch: Vec<Command>, deferred: &mut Deferred) {
    // Taken before BEGIN: if the transaction fails, memory goes back to match the file.
    let snapshot = store.snapshot();
    if let Err(e) = store.conn.execute_batch("BEGIN IMMEDIATE").map_err(storage) {
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
    let result = result.and_then(|()| store.conn.execute_batch("COMMIT").map_err(storage));
    match result {
        Ok(()) => {
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
        Err(e) => {
            roll_back(store, snapshot);
            let kept = done.len() + commands.len();
            // One transaction, one fate: applied or not, every command of it failed.
            for d in done {
                d.fail_or_defer(&e, deferred);
            }
            for c in commands {
                c.fail_or_defer(&e, deferred);
            }
            tracing::error!(error = %e, commands = kept, deferred = deferred.len(),
                "spool transaction failed; appends and leases are told to retry, delivery outcomes will be applied again");
            publish(store, shared, store.lanes.keys().cloned().collect());
        }
    }
}

/// Undo an open transaction in the file and in memory.
fn roll_back(store: &mut Store, snapshot: Snapshot) {
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
) -> (Done, Result<(), SpoolError>) {
    match command {
        Command::Append(messages, reply) => match store.append(&messages, fresh) {
            Ok(answer) => {
                touched.extend(fresh.iter().cloned());
                (Done::Append(reply, answer), Ok(()))
            }
            Err(e) => (Done::Append(reply, Ok(Vec::new())), Err(e)),
        },
        Command::Reject(rejected, reply) => (Done::Reject(reply), store.reject(&rejected)),
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
    }
}

/// Housekeeping: notice other writers, collect garbage, refresh the oldest-pending times.
fn tick(store: &mut Store, shared: &Shared, seen_version: &mut i64) {
    let version = data_version(store);
    if version != *seen_version {
        *seen_version = version;
        if let Err(e) = store.recount() {
            tracing::error!(error = %e, "cannot recount the spool after an outside change");
        }
        for name in store.lanes.keys() {
            wake(shared, name);
        }
    }
    let snapshot = store.snapshot();
    let collected = (|| -> Result<(), SpoolError> {
        store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(storage)?;
        store.collect_garbage()?;
        store.conn.execute_batch("COMMIT").map_err(storage)
    })();
    if let Err(e) = collected {
        tracing::warn!(error = %e, "spool housekeeping failed; will try again");
        // Keeps the settled rows to free and the byte count in step with the file.
        roll_back(store, snapshot);
    }
    if let Err(e) = store.refresh_oldest() {
        tracing::warn!(error = %e, "cannot refresh the oldest pending times");
    }
    publish(store, shared, store.lanes.keys().cloned().collect());
}

/// Changes when another connection commits to the file.
fn data_version(store: &Store) -> i64 {
    store
        .conn
        .pragma_query_value(None, "data_version", |r| r.get(0))
        .unwrap_or(0)
}

fn publish(store: &Store, shared: &Shared, names: HashSet<String>) {
    let mut updates = Vec::with_capacity(names.len());
    for name in names {
        let next_due = store.next_due(&name).unwrap_or_else(|e| {
            tracing::warn!(destination = %name, error = %e, "cannot read the next retry time");
            Some(SystemTime::now() + Duration::from_secs(1))
        });
        updates.push((
            name.clone(),
            View {
                depth: store.depth(&name),
                next_due,
            },
        ));
    }
    let mut views = shared.views.lock().unwrap_or_else(|p| p.into_inner());
    views.extend(updates);
}

fn wake(shared: &Shared, name: &str) {
    if let Some(n) = shared.wakers.get(name) {
        n.notify_one();
    }
}

#[cfg(test)]
mod tests;
