//! One worker per destination: lease due items, batch them, take one rate-limit permit per
//! HTTP request, let the adapter translate, authorize and classify, then settle each item
//! (ack, retry later, or dead-letter) in the spool.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::config::DestinationConfig;
use crate::destination::{
    Classification, Destination, Item, OutRequest, Response, Transport, Verdict, redacted_headers,
};
use crate::retry::{Decision, RetryPolicy};
use crate::route::{self, RouteKey};
use crate::spool::{Attempt, Leased, Spool};
use crate::telemetry;

/// How long items wait after their destination's credential could not be fetched (or the
/// retry cap, when lower).
const AUTH_RETRY: Duration = Duration::from_secs(30);

/// What operators see of a destination (`GET /v1/destinations`).
#[derive(Debug, Default)]
pub struct Status {
    pub paused_until: Mutex<Option<SystemTime>>,
    pub last_error: Mutex<Option<String>>,
    /// Set by an adapter when a person must act (bad credentials, unknown object).
    pub unhealthy: Mutex<Option<String>>,
}

impl Status {
    fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    pub fn paused_until(&self) -> Option<SystemTime> {
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|t| *t > SystemTime::now())
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn unhealthy(&self) -> Option<String> {
        self.unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn pause(&self, until: SystemTime) {
        let mut slot = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none_or(|t| t < until) {
            *slot = Some(until);
        }
    }
}

pub struct Worker {
    pub name: String,
    adapter: Arc<dyn Destination>,
    route: RouteKey,
    spool: Arc<dyn Spool>,
    transport: Transport,
    limiter: Option<DefaultDirectRateLimiter>,
    policy: RetryPolicy,
    batch_max: usize,
    max_wait: Duration,
    dry_run: bool,
    pub status: Arc<Status>,
    /// Batches settle in the order they were leased, so the spool's cursor (which only passes
    /// settled items) follows every settlement and a crash re-sends at most the batches in
    /// flight. Holds the next ticket; leasing under it gives tickets in lease order.
    lease_order: tokio::sync::Mutex<u64>,
    /// Tickets settled so far.
    settled: watch::Sender<u64>,
}

/// Marks a batch's ticket settled when dropped, whatever happened to the batch, so the
/// batches behind it never wait forever.
struct Ticket<'a> {
    number: u64,
    settled: &'a watch::Sender<u64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let done = self.number + 1;
        self.settled.send_if_modified(|n| {
            let before = *n;
            *n = before.max(done);
            *n != before
        });
    }
}

impl Worker {
    pub fn new(
        config: &DestinationConfig,
        adapter: Arc<dyn Destination>,
        route: RouteKey,
        spool: Arc<dyn Spool>,
        client: reqwest::Client,
    ) -> Self {
        let limiter = config.rate_limit.as_ref().and_then(|rl| {
            let period = Duration::from_secs_f64(1.0 / rl.requests_per_second);
            let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(rl.burst)?);
            Some(RateLimiter::direct(quota))
        });
        let batch_max = config
            .batch
            .max_events
            .unwrap_or_else(|| adapter.default_batch())
            .clamp(1, adapter.max_batch().max(1));
        Self {
            name: config.name.clone(),
            adapter,
            route,
            spool,
            transport: Transport {
                client,
                timeout: config.timeout,
            },
            limiter,
            policy: RetryPolicy::from(&config.retry),
            batch_max,
            max_wait: config.batch.max_wait,
            dry_run: config.dry_run,
            status: Arc::new(Status::default()),
            lease_order: tokio::sync::Mutex::new(0),
            settled: watch::Sender::new(0),
        }
    }

    /// Deliver until `shutdown` turns true; a batch in progress is finished first. Run it
    /// `concurrency` times over one worker for that many batches in flight: leases, the rate
    /// limit and the pause are shared.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Some(until) = self.status.paused_until() {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let leased = {
                let mut next = self.lease_order.lock().await;
                self.next_batch().await.map(|batch| {
                    let ticket = *next;
                    if !batch.is_empty() {
                        *next += 1;
                    }
                    (batch, ticket)
                })
            };
            let (batch, ticket) = match leased {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(destination = %self.name, error = %e, "cannot lease from the spool");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.spool.wait(&self.name, Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if let Err(e) = self.deliver(batch, ticket).await {
                tracing::error!(destination = %self.name, error = %e, "cannot record delivery outcome in the spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Lease what is due; when batching, wait up to `max_wait` for a fuller batch.
    async fn next_batch(&self) -> Result<Vec<Leased>, crate::spool::SpoolError> {
        let mut batch = self.spool.lease(&self.name, self.batch_max).await?;
        if batch.is_empty() || self.batch_max == 1 {
            return Ok(batch);
        }
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.batch_max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.spool.wait(&self.name, left).await;
            batch.extend(
                self.spool
                    .lease(&self.name, self.batch_max - batch.len())
                    .await?,
            );
        }
        Ok(batch)
    }

    async fn deliver(
        &self,
        batch: Vec<Leased>,
        ticket: u64,
    ) -> Result<(), crate::spool::SpoolError> {
        let turn = Ticket {
            number: ticket,
            settled: &self.settled,
        };
        let verdicts = self.attempt(&batch).await;
        // Wait for the batches leased before this one to settle first.
        let mut settled = self.settled.subscribe();
        let _ = settled.wait_for(|n| *n >= ticket).await;
        let result = self.settle(&batch, verdicts).await;
        drop(turn);
        result
    }

    /// Translate, send and classify: a verdict per leased item.
    async fn attempt(&self, batch: &[Leased]) -> Vec<Option<Verdict>> {
        let now = SystemTime::now();
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let empty = Map::new();
        let mut messages: Vec<&Map<String, Value>> = Vec::with_capacity(batch.len());
        for (i, leased) in batch.iter().enumerate() {
            match leased.parsed.get(&leased.body) {
                Ok(m) => messages.push(m),
                Err(e) => {
                    verdicts[i] = Some(Verdict::permanent(format!(
                        "stored message is not valid JSON: {e}"
                    )));
                    messages.push(&empty);
                }
            }
        }
        let options: Vec<&Map<String, Value>> = messages
            .iter()
            .map(|m| {
                let integrations = m.get("integrations").and_then(Value::as_object);
                route::options(integrations, &self.route).unwrap_or(&empty)
            })
            .collect();
        let live: Vec<usize> = (0..batch.len())
            .filter(|i| verdicts[*i].is_none())
            .collect();
        let items: Vec<Item<'_>> = live
            .iter()
            .map(|&i| Item {
                message: messages[i],
                options: options[i],
            })
            .collect();
        let translation = self.adapter.translate(&items, now);
        for (j, v) in translation.settled {
            merge(&mut verdicts, live[j], v);
        }
        let mut queue: VecDeque<OutRequest> = translation.requests.into();
        while let Some(request) = queue.pop_front() {
            if let Some(until) = self.status.paused_until() {
                let after = until.duration_since(SystemTime::now()).ok();
                for &j in &request.items {
                    merge(
                        &mut verdicts,
                        live[j],
                        Verdict::Defer {
                            after,
                            reason: "destination paused".into(),
                        },
                    );
                }
                continue;
            }
            let c = self.send(request.clone()).await;
            if c.split && request.items.len() > 1 {
                let (a, b) = request.items.split_at(request.items.len() / 2);
                for half in [b, a] {
                    let sub: Vec<Item<'_>> = half.iter().map(|&j| items[j]).collect();
                    let t = self.adapter.translate(&sub, SystemTime::now());
                    for (k, v) in t.settled {
                        merge(&mut verdicts, live[half[k]], v);
                    }
                    for mut r in t.requests.into_iter().rev() {
                        r.items = r.items.iter().map(|&k| half[k]).collect();
                        queue.push_front(r);
                    }
                }
                continue;
            }
            for (k, &j) in request.items.iter().enumerate() {
                let v =
                    c.verdicts.get(k).cloned().unwrap_or_else(|| {
                        Verdict::retry("the adapter gave no verdict for this item")
                    });
                merge(&mut verdicts, live[j], v);
            }
        }
        verdicts
    }

    /// Send one request (authorizing, and once more after a refused credential) and classify.
    async fn send(&self, mut request: OutRequest) -> Classification {
        let mut refreshed = false;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            // Dry run comes before authorize: showing a request must not fetch a credential
            // (e.g. call an OAuth token endpoint), so the logged request has no auth header.
            if self.dry_run {
                tracing::info!(
                    destination = %self.name,
                    method = %request.method,
                    url = %request.url,
                    headers = ?redacted_headers(&request.headers),
                    body = %String::from_utf8_lossy(&request.body),
                    "dry run: would send"
                );
                return Classification::all(&request, Verdict::Delivered);
            }
            if let Err(e) = self
                .adapter
                .authorize(&mut request, &self.transport, refreshed)
                .await
            {
                let reason = format!("authorization failed: {e}");
                Status::set(&self.status.unhealthy, Some(reason.clone()));
                // Never sent: wait and try again, without spending the item's attempts.
                let after = Some(self.policy.initial.max(self.policy.max.min(AUTH_RETRY)));
                return Classification::all(&request, Verdict::Defer { after, reason });
            }
            let response = match self.http(&request).await {
                Ok(r) => r,
                Err(reason) => return Classification::all(&request, Verdict::retry(reason)),
            };
            let c = self
                .adapter
                .classify(&request, &response, SystemTime::now());
            if c.refresh_auth && !refreshed {
                refreshed = true;
                continue;
            }
            if let Some(pause) = c.pause {
                tracing::warn!(destination = %self.name, pause = ?pause, status = response.status, "destination paused");
                self.status.pause(SystemTime::now() + pause);
            }
            if let Some(problem) = &c.unhealthy {
                tracing::error!(destination = %self.name, problem = %problem, "destination needs attention");
            }
            Status::set(&self.status.unhealthy, c.unhealthy.clone());
            return c;
        }
    }

    async fn http(&self, request: &OutRequest) -> Result<Response, String> {
        let started = Instant::now();
        let answer = self.http_inner(request).await;
        telemetry::delivery_latency(&self.name, started.elapsed());
        answer
    }

    async fn http_inner(&self, request: &OutRequest) -> Result<Response, String> {
        let sent = self
            .transport
            .client
            .request(request.method.clone(), &request.url)
            .headers(request.headers.clone())
            .body(request.body.clone())
            .timeout(self.transport.timeout)
            .send()
            .await;
        let response = sent.map_err(|e| describe(e, self.transport.timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| describe(e, self.transport.timeout))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn settle(
        &self,
        batch: &[Leased],
        mut verdicts: Vec<Option<Verdict>>,
    ) -> Result<(), crate::spool::SpoolError> {
        keep_group_order(batch, &mut verdicts);
        let now = SystemTime::now();
        let mut delivered = Vec::new();
        let mut later = Vec::new();
        let mut dead = Vec::new();
        for (leased, verdict) in batch.iter().zip(verdicts) {
            let verdict = verdict.unwrap_or_else(|| {
                Verdict::permanent("the adapter produced no request for this message")
            });
            // The give-up clock starts at the first real attempt.
            let first_attempt = match leased.attempts {
                0 => now,
                _ => leased.first_attempt.unwrap_or(now),
            };
            let attempt = |reason: String, attempts: u32| Attempt {
                attempts,
                first_attempt,
                last_attempt: now,
                status: status_of(&reason),
                response: response_of(&reason),
                gave_up: false,
                reason,
            };
            match verdict {
                Verdict::Delivered => delivered.push(leased.seq),
                Verdict::Defer { after, reason } => {
                    let wait = after.unwrap_or(self.policy.initial);
                    later.push((leased.seq, wait, attempt(reason, leased.attempts), true));
                }
                Verdict::Retry { after, reason } => {
                    let a = attempt(reason, leased.attempts + 1);
                    let elapsed = now.duration_since(a.first_attempt).unwrap_or_default();
                    match self
                        .policy
                        .decide(a.attempts, elapsed, after, rand::random::<f64>())
                    {
                        Decision::RetryIn(wait) => later.push((leased.seq, wait, a, false)),
                        Decision::GiveUp(why) => {
                            let reason = format!("{why}; last error: {}", a.reason);
                            dead.push((
                                leased,
                                Attempt {
                                    reason,
                                    gave_up: true,
                                    ..a
                                },
                            ));
                        }
                    }
                }
                Verdict::Permanent { reason } => {
                    dead.push((leased, attempt(reason, leased.attempts + 1)))
                }
            }
        }
        self.schedule(now, later).await?;
        // Issued together so the spool's writer can commit them in one transaction.
        let dead_letters = dead
            .into_iter()
            .map(|(leased, a)| self.dead_letter(leased, a));
        for result in futures_util::future::join_all(dead_letters).await {
            result?;
        }
        if !delivered.is_empty() {
            self.spool.ack(&self.name, &delivered).await?;
            telemetry::deliveries(&self.name, "delivered", delivered.len());
        }
        Ok(())
    }

    /// Put items back for later: one WARN line per batch for retries (and one for deferrals),
    /// not one per message.
    async fn schedule(
        &self,
        now: SystemTime,
        later: Vec<(crate::spool::Seq, Duration, Attempt, bool)>,
    ) -> Result<(), crate::spool::SpoolError> {
        for deferred in [false, true] {
            let mut these = later.iter().filter(|(_, _, _, d)| *d == deferred);
            let Some((seq, wait, first, _)) = these.next() else {
                continue;
            };
            let messages = 1 + these.count();
            if deferred {
                tracing::warn!(destination = %self.name, messages, seq, retry_in = ?wait,
                    reason = %first.reason, "delivery deferred; not attempted");
            } else {
                tracing::warn!(destination = %self.name, messages, seq, attempt = first.attempts,
                    retry_in = ?wait, reason = %first.reason, "delivery failed; will retry");
                telemetry::deliveries(&self.name, "retry", messages);
            }
            Status::set(&self.status.last_error, Some(first.reason.clone()));
        }
        let scheduled = later
            .iter()
            .map(|(seq, wait, a, _)| self.spool.retry_at(&self.name, *seq, now + *wait, a));
        for result in futures_util::future::join_all(scheduled).await {
            result?;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        leased: &Leased,
        a: Attempt,
    ) -> Result<(), crate::spool::SpoolError> {
        tracing::error!(destination = %self.name, seq = leased.seq, attempts = a.attempts,
            reason = %a.reason, "delivery failed for good; dead-lettered");
        Status::set(&self.status.last_error, Some(a.reason.clone()));
        self.spool.dead_letter(&self.name, leased.seq, &a).await?;
        telemetry::deliveries(&self.name, "dead_letter", 1);
        Ok(())
    }
}

/// Last write wins only if a group's updates land in order: once an item of a group must be
/// sent again, newer items of that group in the same batch are sent again after it too, even
/// if they were delivered this time.
fn keep_group_order(batch: &[Leased], verdicts: &mut [Option<Verdict>]) {
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

fn merge(verdicts: &mut [Option<Verdict>], i: usize, v: Verdict) {
    verdicts[i] = Some(match verdicts[i].take() {
        Some(prev) => prev.worst(v),
        None => v,
    });
}

/// The HTTP status a reason starts with (`HTTP 503: …`), for the dead-letter record.
fn status_of(reason: &str) -> Option<u16> {
    reason.strip_prefix("HTTP ")?.get(..3)?.parse().ok()
}

/// The answer's body excerpt after the status (`HTTP 400: {excerpt}`), for the dead-letter record.
fn response_of(reason: &str) -> Option<String> {
    status_of(reason)?;
    let rest = reason.get(9..)?;
    Some(rest.strip_prefix(' ').unwrap_or(rest).to_string()).filter(|r| !r.is_empty())
}

/// A transport error in words, without the URL (it may carry a token).
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("timed out after {}", humantime::format_duration(timeout))
    } else if e.is_connect() {
        format!("connection failed: {}", root_cause(&e.without_url()))
    } else {
        format!("request failed: {}", root_cause(&e.without_url()))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn leased(seq: u64, group: Option<&str>) -> Leased {
        Leased {
            seq,
            body: Arc::from("{}"),
            parsed: Default::default(),
            group_id: group.map(Arc::from),
            attempts: 0,
            first_attempt: None,
        }
    }

    #[test]
    fn a_newer_delivered_update_waits_behind_an_older_retry_of_its_group() {
        let batch = vec![
            leased(5, Some("acme")),
            leased(3, Some("acme")),
            leased(4, Some("other")),
            leased(6, None),
            leased(2, Some("acme")),
        ];
        let mut v = vec![
            Some(Verdict::Delivered),
            Some(Verdict::retry("503")),
            Some(Verdict::Delivered),
            Some(Verdict::Delivered),
            Some(Verdict::Delivered),
        ];
        keep_group_order(&batch, &mut v);
        // seq 2 (older than the retry) and other groups stay delivered; seq 5 waits.
        assert_eq!(v[4], Some(Verdict::Delivered));
        assert!(matches!(v[0], Some(Verdict::Defer { .. })));
        assert_eq!(v[2], Some(Verdict::Delivered));
        assert_eq!(v[3], Some(Verdict::Delivered));
        assert!(matches!(v[1], Some(Verdict::Retry { .. })));
    }
}
