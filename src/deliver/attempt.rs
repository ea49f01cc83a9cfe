//! One batch through the adapter: screen each item, translate, then send each request in
//! turn (rate limit, dry run, authorize, HTTP, classify), splitting one the destination
//! found too large. The result is one verdict per leased item (`None`: nothing decided it).
//! Nothing here writes to the spool.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::plan::{halves, merge, projection, raw, rebase, screen};
use super::{AUTH_RETRY, Worker, transport};
use crate::destination::{
    Classification, Failure, Item, OutRequest, Translation, Verdict, redacted_headers, redacted_url,
};
use crate::message::field;
use crate::route;
use crate::spool::Leased;

/// What attempting a batch decided, by batch index.
pub(super) struct Attempted {
    pub verdicts: Vec<Option<Verdict>>,
    /// Merged into another item's update by the adapter (coalesced).
    pub merged: Vec<bool>,
}

impl Worker {
    /// Translate, send and classify: a verdict per leased item.
    pub(super) async fn attempt(&self, batch: &[Leased]) -> Attempted {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let mut merged = vec![false; batch.len()];
        let empty = Map::new();
        let reads = self.adapter.reads();
        let own: Vec<_> = batch.iter().map(|l| projection(l, reads)).collect();
        let mut items = Vec::with_capacity(batch.len());
        // `live[j]` is the batch index of the adapter's item `j`.
        let mut live = Vec::with_capacity(batch.len());
        for (i, leased) in batch.iter().enumerate() {
            match screen(leased, own[i].as_ref(), reads, self.adapter.accepts()) {
                Ok(message) => {
                    let integrations = field(message, "integrations").and_then(Value::as_object);
                    let options = route::options(integrations, &self.route).unwrap_or(&empty);
                    let raw = raw(leased);
                    let traits_text = raw.and_then(|r| leased.parsed.traits_text(r));
                    items.push(Item {
                        message,
                        options,
                        raw,
                        traits_text,
                    });
                    live.push(i);
                }
                Err(refused) => verdicts[i] = Some(refused),
            }
        }
        let mut decided = Attempted {
            verdicts: vec![None; items.len()],
            merged: vec![false; items.len()],
        };
        self.send_all(&items, &mut decided).await;
        for (j, v) in decided.verdicts.into_iter().enumerate() {
            verdicts[live[j]] = v;
            merged[live[j]] = decided.merged[j];
        }
        Attempted { verdicts, merged }
    }

    /// Translate `items` and send every request, splitting the ones found too large.
    async fn send_all(&self, items: &[Item<'_>], decided: &mut Attempted) {
        let mut queue = VecDeque::new();
        self.take(
            self.adapter.translate(items, SystemTime::now()),
            decided,
            &mut queue,
        );
        while let Some(request) = queue.pop_front() {
            if let Some(until) = self.status.paused_until() {
                let after = until.duration_since(SystemTime::now()).ok();
                for &j in &request.items {
                    let reason = "destination paused".to_string();
                    merge(&mut decided.verdicts, j, Verdict::Defer { after, reason });
                }
                continue;
            }
            let c = self.send(request.clone()).await;
            if c.split
                && let Some((first, second)) = halves(&request.items)
            {
                // Translated again half by half; the first half's requests go first.
                let mut split = VecDeque::new();
                for half in [first, second] {
                    let sub: Vec<Item<'_>> = half.iter().map(|&j| items[j]).collect();
                    let t = rebase(self.adapter.translate(&sub, SystemTime::now()), half);
                    self.take(t, decided, &mut split);
                }
                split.append(&mut queue);
                queue = split;
                continue;
            }
            for (k, &j) in request.items.iter().enumerate() {
                let v = c.verdicts.get(k).cloned().unwrap_or_else(|| {
                    Verdict::retry(Failure::engine("the adapter gave no verdict for this item"))
                });
                merge(&mut decided.verdicts, j, v);
            }
        }
    }

    /// Record what a translation settled and merged, and queue its requests.
    fn take(&self, t: Translation, decided: &mut Attempted, queue: &mut VecDeque<OutRequest>) {
        for (j, v) in t.settled {
            merge(&mut decided.verdicts, j, v);
        }
        for j in t.coalesced {
            decided.merged[j] = true;
        }
        queue.extend(t.requests);
    }

    /// Send one request (authorizing, and once more after a refused credential) and classify.
    async fn send(&self, mut request: OutRequest) -> Classification {
        let mut refreshed = false;
        loop {
            if let Some(limiter) = self.limiter() {
                limiter.until_ready().await;
            }
            // Dry run comes before authorize: showing a request must not fetch a credential
            // (e.g. call an OAuth token endpoint), so the logged request has no auth header.
            if self.dry_run {
                self.show(&request);
                return Classification::all(&request, Verdict::Delivered);
            }
            let authorized = self
                .adapter
                .authorize(&mut request, &self.transport, refreshed);
            if let Err(e) = authorized.await {
                let reason = format!("authorization failed: {e}");
                self.status.set_unhealthy(Some(reason.clone()));
                // Never sent: wait and try again, without spending the item's attempts.
                let after = Some(self.policy.initial.max(self.policy.max.min(AUTH_RETRY)));
                return Classification::all(&request, Verdict::Defer { after, reason });
            }
            let response = match transport::send(&self.transport, &self.name, &request).await {
                Ok(r) => r,
                Err(e) => {
                    let failure = Failure::transport(e.to_string());
                    return Classification::all(&request, Verdict::retry(failure));
                }
            };
            let c = self
                .adapter
                .classify(&request, &response, SystemTime::now());
            if c.refresh_auth && !refreshed {
                refreshed = true;
                continue;
            }
            self.heed(&c, response.status);
            return c;
        }
    }

    /// What a classification says about the whole destination: a pause, a problem to fix.
    fn heed(&self, c: &Classification, status: u16) {
        if let Some(pause) = c.pause {
            let until = SystemTime::now() + pause;
            self.status.pause(until);
            self.spool.share_pause(&self.name, until);
            tracing::warn!(destination = %self.name, pause = ?pause, status, "destination paused");
        }
        if let Some(problem) = &c.unhealthy {
            tracing::error!(destination = %self.name, problem = %problem, "destination needs attention");
        }
        self.status.set_unhealthy(c.unhealthy.clone());
    }

    fn show(&self, request: &OutRequest) {
        tracing::info!(
            destination = %self.name,
            method = %request.method,
            url = %redacted_url(&request.url),
            headers = ?redacted_headers(&request.headers),
            body = %String::from_utf8_lossy(&request.body),
            "dry run: would send"
        );
    }
}
