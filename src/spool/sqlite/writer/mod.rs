//! The writer thread: owns the connection, gathers queued commands into one transaction and
//! one fsync (group commit), and answers each caller only after that commit.
//!
//! A transaction that fails changes nothing, in the file or in memory: the store's in-memory
//! state is restored from a snapshot taken before it began. Its appends and leases are failed
//! back (ingest answers 503, a worker leases again); its settlements are kept and applied
//! again, because the worker that sent one has nothing better to do with an error.
//!
//! Layout: this file holds the commands, what the async side reads (`Shared`) and the loop;
//! `gather.rs` takes what is queued into one batch; `transaction.rs` applies a batch in one
//! transaction and answers it; `tick.rs` does housekeeping between batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

mod checkpoint;
mod gather;
mod room;
mod tick;
mod transaction;

use self::checkpoint::Checkpointer;
use self::gather::gather;
use self::room::Room;
use self::tick::{data_version, sweep, tick};
use self::transaction::execute;
use super::store::Store;
use crate::message::Accepted;
use crate::spool::{Appended, Attempt, Depth, Leased, Rejected, Seq, SpoolError};

/// Housekeeping period; also how soon changes made by `switchyard dlq` are noticed.
const TICK: Duration = Duration::from_millis(500);

pub type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

pub enum Command {
    Append(Vec<Accepted>, Reply<Vec<Appended>>),
    Reject(Vec<Rejected>, Reply<usize>),
    Lease(String, usize, Reply<Vec<Leased>>),
    Settle(Settlement, Reply<()>),
    /// Serve exactly these destinations from now on (a reload): answered with those added.
    /// Applied in a transaction of its own, after the commands gathered with it.
    Configure(Vec<String>, Reply<Vec<String>>),
}

/// The outcome of a delivery already made, for one destination.
pub enum Settlement {
    Ack(String, Vec<Seq>),
    Retry(String, Seq, SystemTime, Box<Attempt>),
    Dead(String, Seq, Box<Attempt>),
}

/// What the async side reads without asking the writer.
#[derive(Default)]
pub struct Shared {
    /// Per destination, as of the last commit that touched it.
    pub views: Mutex<HashMap<String, View>>,
    /// One per destination: woken when something may have become due.
    pub wakers: Mutex<HashMap<String, Arc<Notify>>>,
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

/// Settlements whose transaction failed, waiting to be applied again.
type Deferred = Vec<(Settlement, Reply<()>)>;

pub fn run(mut store: Store, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut last_tick = Instant::now();
    let mut data_version = data_version(&store);
    let mut deferred = Deferred::new();
    // The last slice left a whole slice more to do; after a failed slice, none before a tick.
    let mut more_garbage = false;
    let mut sweep_after = Instant::now();
    let mut room = Room::new(&store);
    let mut checkpointer = Checkpointer::start(&store.conn);
    publish(&store, &shared, store.lanes.keys().cloned().collect());
    loop {
        let sweeping =
            (more_garbage || store.garbage_waiting(room.tight())) && Instant::now() >= sweep_after;
        let restarting = checkpointer.as_ref().is_some_and(Checkpointer::restart_due);
        let received = if sweeping || restarting {
            rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            rx.recv_timeout(TICK)
        };
        match received {
            Ok(first) => {
                let (configures, batch): (Vec<_>, Vec<_>) = gather(first, &rx, &shared.appending)
                    .into_iter()
                    .partition(|c| matches!(c, Command::Configure(..)));
                if !batch.is_empty() {
                    execute(&mut store, &shared, batch, &mut deferred);
                }
                for c in configures {
                    if let Command::Configure(names, reply) = c {
                        configure(&mut store, &shared, &names, reply);
                    }
                }
            }
            // No command waiting, and the WAL long: let it start over (see `checkpoint.rs`).
            Err(RecvTimeoutError::Timeout) if restarting => {
                if let Some(c) = checkpointer.as_mut() {
                    c.restart(&store.conn);
                }
            }
            // No command waiting, a whole slice of garbage waiting: sweep it now, so that
            // none piles up into one long pass.
            Err(RecvTimeoutError::Timeout) if sweeping => match sweep(&mut store) {
                Some(more) => more_garbage = more,
                None => {
                    more_garbage = false;
                    sweep_after = Instant::now() + TICK;
                }
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            tick(&mut store, &shared, &mut data_version);
            retry_deferred(&mut store, &shared, &mut deferred);
            room.measure();
        }
        room.check(&store);
    }
    // Its connection closes first: the writer's, the last, then checkpoints what is left.
    drop(checkpointer);
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
    let wakers = shared.wakers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = wakers.get(name) {
        n.notify_one();
    }
}

/// Apply a new set of destinations; the new ones get a waker and a view at once.
fn configure(store: &mut Store, shared: &Shared, names: &[String], reply: Reply<Vec<String>>) {
    let result = store.configure(names).map_err(SpoolError::from);
    if result.is_ok() {
        let mut wakers = shared.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            wakers.entry(name.clone()).or_default();
        }
        drop(wakers);
        let mut views = shared.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|name, _| names.contains(name));
        drop(views);
        publish(store, shared, names.iter().cloned().collect());
    }
    let _ = reply.send(result);
}

#[cfg(test)]
mod tests;
