//! The pure decisions of delivering one batch, apart from any I/O so each is unit-tested:
//! which items cannot be attempted at all, how verdicts for one item combine, how a request
//! too large is split, how per-group order is kept, and what the spool must do with each
//! item afterwards.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::destination::{Failure, FailureKind, Reads, Translation, Verdict};
use crate::message::{MessageType, field};
use crate::retry::{Decision, RetryPolicy};
use crate::spool::{Attempt, DeadReason, Leased, Seq};

/// Put `v` in item `i`'s slot; of two verdicts for one item the worst decides.
pub(super) fn merge(verdicts: &mut [Option<Verdict>], i: usize, v: Verdict) {
    verdicts[i] = Some(match verdicts[i].take() {
        Some(prev) => prev.worst(v),
        None => v,
    });
}

/// The message an adapter that reads only some fields gets when what it reads is not at
/// hand already (ingest's parsed head, or the whole message parsed): those fields, parsed
/// from the stored text (`None`: the shared parse serves; an altered body is never parsed).
pub(super) fn projection(
    leased: &Leased,
    reads: Reads,
) -> Option<Result<Map<String, Value>, String>> {
    match reads {
        Reads::Only(fields)
            if leased.corrupted.is_none() && leased.parsed.at_hand(fields).is_none() =>
        {
            Some(crate::message::project(&leased.body, fields))
        }
        _ => None,
    }
}

/// The message to translate, or why it cannot go to this adapter at all: its stored body was
/// altered on disk, is not a JSON object, or its type is not one the adapter accepts. `own`
/// is the item's [`projection`], if it has one; otherwise what is at hand for what the
/// adapter `reads`, or the shared parse of the whole message.
pub(super) fn screen<'m>(
    leased: &'m Leased,
    own: Option<&'m Result<Map<String, Value>, String>>,
    reads: Reads,
    accepts: &[MessageType],
) -> Result<&'m Map<String, Value>, Verdict> {
    if let Some(why) = &leased.corrupted {
        return Err(Verdict::permanent(Failure::corrupted(why.clone())));
    }
    let at_hand = match reads {
        Reads::Only(fields) => leased.parsed.at_hand(fields),
        Reads::All => None,
    };
    let m = match (own, at_hand) {
        (Some(own), _) => own.as_ref().map_err(String::as_str),
        (None, Some(m)) => Ok(m),
        (None, None) => leased.parsed.get(&leased.body),
    };
    let m = m.map_err(|e| {
        Verdict::permanent(Failure::engine(format!(
            "stored message is not valid JSON: {e}"
        )))
    })?;
    let ty = field(m, "type").and_then(Value::as_str).unwrap_or_default();
    if accepts.iter().any(|t| t.as_str() == ty) {
        return Ok(m);
    }
    let names: Vec<&str> = accepts.iter().map(|t| t.as_str()).collect();
    Err(Verdict::permanent(Failure::engine(format!(
        "this destination takes {} calls only, not `{ty}`",
        names.join(", ")
    ))))
}

/// The stored text of a leased message, when the spool handed it over (it may not, when
/// the message came parsed already): see [`crate::destination::Item::raw`].
pub(super) fn raw(leased: &Leased) -> Option<&str> {
    (!leased.body.is_empty()).then_some(&*leased.body)
}

/// The items of a request the destination found too large, in two halves to send in turn
/// (first half first); `None` when a single item is left, which cannot be split.
pub(super) fn halves(items: &[usize]) -> Option<(&[usize], &[usize])> {
    (items.len() > 1).then(|| items.split_at(items.len() / 2))
}

/// A translation of `half` (indexes into it), restated in the batch's indexes.
pub(super) fn rebase(mut t: Translation, half: &[usize]) -> Translation {
    for (i, _) in &mut t.settled {
        *i = half[*i];
    }
    for i in &mut t.coalesced {
        *i = half[*i];
    }
    for r in &mut t.requests {
        for i in &mut r.items {
            *i = half[*i];
        }
    }
    t
}

/// Last write wins only if a group's updates land in order: once an item of a group must be
/// sent again, newer items of that group in the same batch are sent again after it too, even
/// if they were delivered this time.
pub(super) fn keep_group_order(batch: &[Leased], verdicts: &mut [Option<Verdict>]) {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].seq);
    let mut waiting: Vec<&str> = Vec::new();
    for i in order {
        let Some(group) = batch[i].group_id.as_deref() else {
            continue;
        };
        match &verdicts[i] {
            Some(Verdict::Retry { .. } | Verdict::Defer { .. }) => waiting.push(group),
            Some(Verdict::Delivered) if waiting.contains(&group) => {
                verdicts[i] = Some(Verdict::Defer {
                    after: None,
                    reason: "an older update of this group is waiting for a retry".into(),
                });
            }
            _ => {}
        }
    }
}

/// An item to lease again later.
#[derive(Debug)]
pub(super) struct Later {
    pub seq: Seq,
    pub wait: Duration,
    pub attempt: Attempt,
    /// Not attempted (a pause, a credential not fetched): no attempt was spent.
    pub deferred: bool,
}

/// What the spool must do with each item of a settled batch.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    pub delivered: Vec<Seq>,
    pub later: Vec<Later>,
    pub dead: Vec<(Seq, Attempt)>,
}

/// Sort each item by its verdict; a missing verdict (no request carried the item) is a
/// permanent failure. `jitter` draws from [0, 1) for each retry's backoff.
pub(super) fn outcomes(
    batch: &[Leased],
    verdicts: Vec<Option<Verdict>>,
    policy: &RetryPolicy,
    now: SystemTime,
    mut jitter: impl FnMut() -> f64,
) -> Outcomes {
    let mut out = Outcomes::default();
    for (leased, verdict) in batch.iter().zip(verdicts) {
        let verdict = verdict.unwrap_or_else(|| {
            Verdict::permanent(Failure::engine(
                "the adapter produced no request for this message",
            ))
        });
        // The give-up clock starts at the first real attempt.
        let first_attempt = match leased.attempts {
            0 => now,
            _ => leased.first_attempt.unwrap_or(now),
        };
        let record = |failure: Failure, attempts: u32| Attempt {
            attempts,
            first_attempt,
            last_attempt: now,
            dead_reason: match failure.kind {
                FailureKind::Corrupted => DeadReason::Corrupted,
                _ => DeadReason::Permanent,
            },
            reason: failure.reason,
            status: failure.status,
            response: failure.response,
        };
        let seq = leased.seq;
        match verdict {
            Verdict::Delivered => out.delivered.push(seq),
            Verdict::Defer { after, reason } => out.later.push(Later {
                seq,
                wait: after.unwrap_or(policy.initial),
                attempt: record(Failure::engine(reason), leased.attempts),
                deferred: true,
            }),
            Verdict::Retry { after, failure } => {
                let a = record(failure, leased.attempts + 1);
                match retry_or_give_up(seq, a, after, policy, now, jitter()) {
                    Ok(later) => out.later.push(later),
                    Err(dead) => out.dead.push(dead),
                }
            }
            Verdict::Permanent { failure } => {
                out.dead.push((seq, record(failure, leased.attempts + 1)))
            }
        }
    }
    out
}

/// A failed attempt's next step under the retry policy: back in the queue after a backoff
/// (never before the destination's `after`), or a dead letter once the policy gives up.
fn retry_or_give_up(
    seq: Seq,
    a: Attempt,
    after: Option<Duration>,
    policy: &RetryPolicy,
    now: SystemTime,
    jitter: f64,
) -> Result<Later, (Seq, Attempt)> {
    let elapsed = now.duration_since(a.first_attempt).unwrap_or_default();
    match policy.decide(a.attempts, elapsed, after, jitter) {
        Decision::RetryIn(wait) => Ok(Later {
            seq,
            wait,
            attempt: a,
            deferred: false,
        }),
        Decision::GiveUp(why) => {
            let reason = format!("{why}; last error: {}", a.reason);
            Err((
                seq,
                Attempt {
                    reason,
                    dead_reason: DeadReason::Exhausted,
                    ..a
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests;
