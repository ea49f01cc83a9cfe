//! The writer thread: owns the connection, gathers queued commands into one transaction and
//! one fsync (group commit), and answers each caller only after that commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use super::schema::storage;
use super::store::Store;
use crate::message::Accepted;
use crate::spool::{Appended, Attempt, Depth, Leased, Rejected, Seq, SpoolError};

/// How long the writer lingers after an append for others to share its commit.
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
    Ack(String, Vec<Seq>, Reply<()>),
    Retry(String, Seq, SystemTime, Box<Attempt>, Reply<()>),
    Dead(String, Seq, Box<Attempt>, Reply<()>),
}

impl Command {
    /// Answer with `e` without applying.
    fn fail(self, e: &SpoolError) {
        let err = || SpoolError::Storage(e.to_string());
        let _ = match self {
            Command::Append(_, r) => r.send(Err(err())).is_ok(),
            Command::Lease(_, _, r) => r.send(Err(err())).is_ok(),
            Command::Reject(_, r)
            | Command::Ack(_, _, r)
            | Command::Retry(_, _, _, _, r)
            | Command::Dead(_, _, _, r) => r.send(Err(err())).is_ok(),
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
    Unit(Reply<()>),
}

impl Done {
    fn answer(self) {
        // A caller that stopped waiting (a dropped request) needs no answer.
        let _ = match self {
            Done::Append(r, v) => r.send(v).is_ok(),
            Done::Lease(r, v) => r.send(Ok(v)).is_ok(),
            Done::Unit(r) => r.send(Ok(())).is_ok(),
        };
    }

    fn fail(self, e: &SpoolError) {
        let err = || SpoolError::Storage(e.to_string());
        let _ = match self {
            Done::Append(r, _) => r.send(Err(err())).is_ok(),
            Done::Lease(r, _) => r.send(Err(err())).is_ok(),
            Done::Unit(r) => r.send(Err(err())).is_ok(),
        };
    }
}

pub fn run(mut store: Store, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut last_tick = Instant::now();
    let mut data_version = data_version(&store);
    publish(&store, &shared, store.lanes.keys().cloned().collect());
    loop {
        match rx.recv_timeout(TICK) {
            Ok(first) => {
                let batch = gather(first, &rx);
                execute(&mut store, &shared, batch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            tick(&mut store, &shared, &mut data_version);
        }
    }
    tracing::debug!("spool writer stopped");
}

/// The first command plus whatever is queued; after an append, linger briefly so concurrent
/// ingest requests share the fsync.
fn gather(first: Command, rx: &Receiver<Command>) -> Vec<Command> {
    let linger_until = matches!(first, Command::Append(..)).then(|| Instant::now() + LINGER);
    let mut batch = vec![first];
    while batch.len() < MAX_COMMANDS {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let Some(until) = linger_until else { break };
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
        }
    }
    batch
}

fn execute(store: &mut Store, shared: &Shared, batch: Vec<Command>) {
    let mut touched = Vec::new();
    let mut fresh = Vec::new();
    let mut done = Vec::with_capacity(batch.len());
    let mut commands = batch.into_iter();
    let result = (|| -> Result<(), SpoolError> {
        store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(storage)?;
        for command in commands.by_ref() {
            done.push(apply(store, command, &mut touched, &mut fresh)?);
        }
        store.conn.execute_batch("COMMIT").map_err(storage)
    })();
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
            tracing::error!(error = %e, "spool transaction failed; its callers are told to retry");
            let _ = store.conn.execute_batch("ROLLBACK");
            store.rewake.clear();
            if let Err(e) = store.reset() {
                tracing::error!(error = %e, "cannot reload the spool state");
            }
            // One transaction, one fate: applied or not, every command of it failed.
            for d in done {
                d.fail(&e);
            }
            for c in commands {
                c.fail(&e);
            }
            publish(store, shared, store.lanes.keys().cloned().collect());
        }
    }
}

/// Apply one command; `touched` lanes get their view republished, `fresh` lanes (new
/// messages) get their worker woken.
fn apply(
    store: &mut Store,
    command: Command,
    touched: &mut Vec<String>,
    fresh: &mut Vec<String>,
) -> Result<Done, SpoolError> {
    Ok(match command {
        Command::Append(messages, reply) => {
            let answer = store.append(messages, fresh)?;
            touched.extend(fresh.iter().cloned());
            Done::Append(reply, answer)
        }
        Command::Reject(rejected, reply) => {
            store.reject(rejected)?;
            Done::Unit(reply)
        }
        Command::Lease(dest, max, reply) => {
            let leased = store.lease(&dest, max)?;
            touched.push(dest);
            Done::Lease(reply, leased)
        }
        Command::Ack(dest, seqs, reply) => {
            store.ack(&dest, &seqs)?;
            touched.push(dest);
            Done::Unit(reply)
        }
        Command::Retry(dest, seq, at, attempt, reply) => {
            store.retry_at(&dest, seq, at, &attempt)?;
            touched.push(dest);
            Done::Unit(reply)
        }
        Command::Dead(dest, seq, attempt, reply) => {
            store.dead_letter(&dest, seq, &attempt)?;
            touched.push(dest);
            Done::Unit(reply)
        }
    })
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
    let result = (|| -> Result<(), SpoolError> {
        store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(storage)?;
        store.collect_garbage()?;
        store.conn.execute_batch("COMMIT").map_err(storage)?;
        store.refresh_oldest()
    })();
    if let Err(e) = result {
        let _ = store.conn.execute_batch("ROLLBACK");
        tracing::warn!(error = %e, "spool housekeeping failed; will try again");
        // The byte count may have moved with the rolled-back deletes.
        if let Err(e) = store.recount() {
            tracing::error!(error = %e, "cannot recount the spool");
        }
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
