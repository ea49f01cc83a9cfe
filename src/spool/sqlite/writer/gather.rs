//! Group commit: which queued commands share one transaction (and so one fsync).
//!
//! Invariants kept here: a batch holds at most `MAX_COMMANDS`; the writer lingers (at most
//! `LINGER`) only after an append and only while some append already sent is not yet in
//! hand, so a lone caller never waits for company; every append taken is counted off
//! `Shared::appending`, whatever becomes of its transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::Command;

/// Longest the writer lingers after an append for others to share its commit; it stops as
/// soon as every append under way is in hand (see `Shared::appending`).
const LINGER: Duration = Duration::from_millis(2);
/// Most commands in one transaction.
const MAX_COMMANDS: usize = 256;

/// The first command plus whatever is queued; after an append, linger briefly so concurrent
/// ingest requests share the fsync, but only while some append under way is not in hand.
pub(super) fn gather(
    first: Command,
    rx: &Receiver<Command>,
    appending: &AtomicUsize,
) -> Vec<Command> {
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
