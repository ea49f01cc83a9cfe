//! Housekeeping between batches, every `TICK`: noticing what `switchyard dlq` changed in the
//! file, freeing rows nobody owes, and refreshing the oldest-pending times for metrics.
//!
//! Invariants kept here: an outside change (the file's `data_version` moved) is recounted
//! without touching leases, and every lane's worker is woken for it; garbage collection runs
//! in short slices (`sweep`), each a transaction of its own, rolled back in the file and in
//! memory if it fails, so it never takes callers' commands down with it. Between ticks the
//! writer sweeps whenever no command is waiting and a whole slice of garbage is.

use std::time::Duration;

use super::transaction::roll_back;
use super::{Shared, publish, wake};
use crate::spool::sqlite::StorageError;
use crate::spool::sqlite::store::Store;
use crate::telemetry::{self, Throttle};

/// Failed slices are logged at most once a minute while they go on (a full disk fails each).
static TOLD: Throttle = Throttle::new(Duration::from_secs(60), 0);

/// Housekeeping: notice other writers, one slice of garbage, refresh the oldest-pending times.
pub(super) fn tick(store: &mut Store, shared: &Shared, seen_version: &mut i64) {
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
    // One slice even when the writer is never idle, so housekeeping always moves on.
    sweep(store);
    if let Err(e) = store.refresh_oldest() {
        tracing::warn!(error = %e, "cannot refresh the oldest pending times");
    }
    report_dedupe(store);
    publish(store, shared, store.lanes.keys().cloned().collect());
}

/// The dedupe index's size as metrics; a warning (every ten minutes at most) while
/// `spool.dedupe_max_keys` makes it forget ids before their window ends.
fn report_dedupe(store: &mut Store) {
    static CAPPED: Throttle = Throttle::new(Duration::from_secs(600), 0);
    let (ids, forgotten, new, oldest) = store.dedupe();
    metrics::gauge!("switchyard_dedupe_ids").set(ids as f64);
    metrics::counter!("switchyard_dedupe_forgotten_total").absolute(forgotten);
    if new > 0
        && let Some(told) = CAPPED.due(|n| *n += new)
    {
        let kept = oldest
            .and_then(|at| at.elapsed().ok())
            .map(|age| humantime::format_duration(Duration::from_secs(age.as_secs())).to_string())
            .unwrap_or_default();
        tracing::warn!(ids, forgotten = told, oldest_kept = %kept,
            "the dedupe index holds spool.dedupe_max_keys ids: older ids were forgotten before \
             dedupe_window ended, and a retry of one would be delivered again");
    }
}

/// Changes when another connection commits to the file.
pub(super) fn data_version(store: &Store) -> i64 {
    store
        .conn
        .pragma_query_value(None, "data_version", |r| r.get(0))
        .unwrap_or(0)
}

/// One slice of garbage collection in a transaction of its own; whether more may be left
/// (`None`: it failed, and was rolled back in the file and in memory). Its commit does not
/// fsync: lost to a power cut, a slice only frees the same rows again later.
pub(super) fn sweep(store: &mut Store) -> Option<bool> {
    // Garbage collection reads leases and holds but changes none.
    let snapshot = store.snapshot(&[]);
    let swept = (|| -> Result<bool, StorageError> {
        store.set_durable(false)?;
        store.conn.execute_batch("BEGIN IMMEDIATE")?;
        let more = store.sweep()?;
        store.conn.execute_batch("COMMIT")?;
        Ok(more)
    })();
    match swept {
        Ok(more) => Some(more),
        Err(e) => {
            if let Some(failed) = TOLD.due(telemetry::once) {
                tracing::warn!(error = %e, failed_since_last_line = failed,
                    "spool housekeeping failed; will try again");
            }
            // Keeps the settled rows to free and the byte count in step with the file.
            roll_back(store, snapshot);
            None
        }
    }
}
