//! The bench receiver: plays Mixpanel (`/mixpanel/groups`, `/mixpanel/engage`), Salesforce
//! (`/salesforce/services/oauth2/token` and the composite upsert) and a webhook (`/webhook`) at
//! once; counts events per destination, remembers each message's `bench_id` (Mixpanel's
//! `$set.bench_id`, the record's `Bench_Id__c`, the webhook message's `traits.bench_id`; the
//! group id where a sender has none) for loss and duplicate checks, times delivery from the
//! send time in it, and injects faults on demand.
//!
//! For destinations that keep the newest values per group (and may merge a group's calls),
//! the sink also keeps each group's newest delivered message; `POST /_expect` with the load
//! generator's `--last-seqs` lines makes `GET /_groups/{destination}` say how many groups were
//! reached at all and how many got their highest-numbered message last (`caught_up`; two
//! calls of one group sent at once may be accepted in either order, so this one is a hint).
//!
//! Control: `GET /_stats`, `POST /_reset`, `POST /_expect`, `POST /_fault/{destination}` with
//! `{"error_rate":0.1,"statuses":[503,429],"retry_after":2,"latency_ms":0,"down":false,
//!   "record_failure_rate":0.0}`.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_bench::{now_micros, sent_micros};

#[derive(Parser)]
struct Args {
    /// Address to listen on; port 0 picks one (printed on stdout as `listening <addr>`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Fault {
    /// Share of requests answered with one of `statuses`.
    error_rate: f64,
    statuses: Vec<u16>,
    /// Sent with 429 and 503 answers.
    retry_after: Option<u32>,
    latency_ms: u64,
    /// Answer every request with 503.
    down: bool,
    /// Salesforce: share of records answered `UNABLE_TO_LOCK_ROW`.
    record_failure_rate: f64,
}

struct Counter {
    requests: u64,
    events: u64,
    seen: HashSet<u64>,
    /// Group → the highest message seq delivered for it.
    latest: HashMap<String, u64>,
    latency_us: Histogram<u64>,
    first_at: Option<u64>,
    last_at: Option<u64>,
    /// The most events for one group in a single request (coalescing makes it 1).
    max_per_group: u64,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            requests: 0,
            events: 0,
            seen: HashSet::new(),
            latest: HashMap::new(),
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            first_at: None,
            last_at: None,
            max_per_group: 0,
        }
    }
}

#[derive(Default)]
struct Sink {
    counters: Mutex<HashMap<&'static str, Counter>>,
    faults: Mutex<HashMap<String, Fault>>,
    /// Group → the seq of its last accepted message (`POST /_expect`).
    expected: Mutex<HashMap<String, u64>>,
}

/// The seq in a bench id `m<seq>-<micros>`.
fn seq_of(id: &str) -> Option<u64> {
    id.strip_prefix('m')?.split('-').next()?.parse().ok()
}

type Shared = Arc<Sink>;

impl Sink {
    /// Count delivered events, each as `(group, id)`.
    fn record<'a>(
        &self,
        dest: &'static str,
        ids: impl Iterator<Item = (Option<&'a str>, &'a str)>,
    ) {
        let now = now_micros();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let c = counters.entry(dest).or_default();
        c.requests += 1;
        c.first_at.get_or_insert(now);
        c.last_at = Some(now);
        let mut per_group: HashMap<&str, u64> = HashMap::new();
        for (group, id) in ids {
            c.events += 1;
            if let Some(g) = group {
                let n = per_group.entry(g).or_default();
                *n += 1;
                c.max_per_group = c.max_per_group.max(*n);
            }
            if let (Some(g), Some(seq)) = (group, seq_of(id)) {
                let slot = c.latest.entry(g.to_string()).or_default();
                *slot = (*slot).max(seq);
            }
            let mut h = DefaultHasher::new();
            id.hash(&mut h);
            if c.seen.insert(h.finish())
                && let Some(sent) = sent_micros(id)
            {
                let _ = c.latency_us.record(now.saturating_sub(sent).max(1));
            }
        }
    }

    /// An injected failure for this request, if the dice say so.
    async fn fault(&self, dest: &str) -> Option<Response> {
        let f = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
            .cloned()?;
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        let status = if f.down {
            503
        } else if f.error_rate > 0.0
            && rand::random::<f64>() < f.error_rate
            && !f.statuses.is_empty()
        {
            f.statuses[rand::random_range(0..f.statuses.len())]
        } else {
            return None;
        };
        let mut r = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "injected",
        )
            .into_response();
        if let (Some(s), 429 | 503) = (f.retry_after, status) {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        Some(r)
    }

    fn record_failure_rate(&self, dest: &str) -> f64 {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
            .map(|f| f.record_failure_rate)
            .unwrap_or(0.0)
    }
}

#[derive(Deserialize)]
struct MixpanelUpdate<'a> {
    #[serde(rename = "$group_id", borrow, default)]
    group_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "$set", borrow, default)]
    set: Option<Traits<'a>>,
}

/// The one trait the sink reads.
#[derive(Deserialize)]
struct Traits<'a> {
    #[serde(borrow, default)]
    bench_id: Option<std::borrow::Cow<'a, str>>,
}

async fn mixpanel_groups(State(s): State<Shared>, body: Bytes) -> Response {
    if let Some(r) = s.fault("mixpanel").await {
        return r;
    }
    let Ok(updates) = serde_json::from_slice::<Vec<MixpanelUpdate<'_>>>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": 0, "error": "bad body"})),
        )
            .into_response();
    };
    s.record(
        "mixpanel",
        updates.iter().filter_map(|u| {
            let bench = u.set.as_ref().and_then(|t| t.bench_id.as_deref());
            let group = u.group_id.as_deref();
            Some((group, bench.or(group)?))
        }),
    );
    axum::Json(json!({"status": 1, "error": null})).into_response()
}

async fn mixpanel_engage(State(s): State<Shared>, body: Bytes) -> Response {
    if let Some(r) = s.fault("mixpanel").await {
        return r;
    }
    let n = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)
        .map(|v| v.len())
        .unwrap_or(0);
    s.record("mixpanel_engage", (0..n).map(|_| (None, "")));
    axum::Json(json!({"status": 1, "error": null})).into_response()
}

async fn salesforce_token(State(_s): State<Shared>, headers: HeaderMap) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    axum::Json(json!({
        "access_token": "bench-token",
        "instance_url": format!("http://{host}/salesforce"),
        "token_type": "Bearer",
        "issued_at": (now_micros() / 1000).to_string(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct Collection {
    records: Vec<serde_json::Map<String, Value>>,
}

async fn salesforce_upsert(
    State(s): State<Shared>,
    Path((_v, _obj, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = s.fault("salesforce").await {
        return r;
    }
    let Ok(c) = serde_json::from_slice::<Collection>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!([{"message": "bad body", "errorCode": "JSON_PARSER_ERROR"}])),
        )
            .into_response();
    };
    let lock_rate = s.record_failure_rate("salesforce");
    let mut delivered: Vec<(Option<&str>, &str)> = Vec::new();
    let results: Vec<Value> = c
        .records
        .iter()
        .map(|r| {
            if lock_rate > 0.0 && rand::random::<f64>() < lock_rate {
                json!({"id": null, "success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]})
            } else {
                let group = r.get(&field).and_then(Value::as_str);
                let id = r.get("Bench_Id__c").and_then(Value::as_str).or(group);
                delivered.push((group, id.unwrap_or_default()));
                json!({"id": "001000000000001AAA", "success": true, "errors": [], "created": true})
            }
        })
        .collect();
    s.record("salesforce", delivered.into_iter());
    axum::Json(results).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Hooked<'a> {
    One(#[serde(borrow)] HookMessage<'a>),
    Many(#[serde(borrow)] Vec<HookMessage<'a>>),
}

#[derive(Deserialize)]
struct HookMessage<'a> {
    #[serde(rename = "groupId", borrow, default)]
    group_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    traits: Option<Traits<'a>>,
}

impl HookMessage<'_> {
    fn id(&self) -> Option<(Option<&str>, &str)> {
        let bench = self.traits.as_ref().and_then(|t| t.bench_id.as_deref());
        let group = self.group_id.as_deref();
        Some((group, bench.or(group)?))
    }
}

async fn webhook(State(s): State<Shared>, body: Bytes) -> Response {
    if let Some(r) = s.fault("webhook").await {
        return r;
    }
    match serde_json::from_slice::<Hooked<'_>>(&body) {
        Ok(Hooked::One(m)) => s.record("webhook", m.id().into_iter()),
        Ok(Hooked::Many(ms)) => s.record("webhook", ms.iter().filter_map(HookMessage::id)),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    StatusCode::OK.into_response()
}

async fn stats(State(s): State<Shared>) -> Response {
    let counters = s.counters.lock().unwrap_or_else(|p| p.into_inner());
    let out: serde_json::Map<String, Value> = counters
        .iter()
        .map(|(name, c)| {
            let h = &c.latency_us;
            let v = json!({
                "requests": c.requests,
                "events": c.events,
                "unique": c.seen.len(),
                "duplicates": c.events - c.seen.len() as u64,
                "first_at_us": c.first_at,
                "last_at_us": c.last_at,
                "max_per_group_in_a_request": c.max_per_group,
                "latency_ms": {
                    "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
                    "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
                    "max": h.max() as f64 / 1000.0,
                },
            });
            (name.to_string(), v)
        })
        .collect();
    axum::Json(Value::Object(out)).into_response()
}

/// How the groups `POST /_expect` named fared at `dest`: how many were reached at all, and how
/// many got their highest-numbered message last. A pass over every group: asked once a run
/// looks done, not on every poll (the sink shares the cores with what it measures).
async fn groups(State(s): State<Shared>, Path(dest): Path<String>) -> Response {
    let expected = s.expected.lock().unwrap_or_else(|p| p.into_inner());
    let counters = s.counters.lock().unwrap_or_else(|p| p.into_inner());
    let empty = HashMap::new();
    let latest = counters
        .iter()
        .find(|(name, _)| **name == dest)
        .map_or(&empty, |(_, c)| &c.latest);
    let reached = expected
        .keys()
        .filter(|g| latest.contains_key(g.as_str()))
        .count();
    let caught_up = expected
        .iter()
        .filter(|(g, seq)| latest.get(g.as_str()).is_some_and(|got| got >= seq))
        .count();
    axum::Json(json!({"expected_groups": expected.len(), "groups_reached": reached, "caught_up": caught_up}))
        .into_response()
}

async fn reset(State(s): State<Shared>) -> StatusCode {
    s.counters.lock().unwrap_or_else(|p| p.into_inner()).clear();
    s.expected.lock().unwrap_or_else(|p| p.into_inner()).clear();
    StatusCode::NO_CONTENT
}

/// `group\tseq` lines: each group's last accepted message.
async fn expect(State(s): State<Shared>, body: String) -> StatusCode {
    let mut expected = s.expected.lock().unwrap_or_else(|p| p.into_inner());
    for line in body.lines() {
        if let Some((g, seq)) = line.split_once('\t')
            && let Ok(seq) = seq.trim().parse()
        {
            expected.insert(g.to_string(), seq);
        }
    }
    StatusCode::NO_CONTENT
}

async fn set_fault(
    State(s): State<Shared>,
    Path(dest): Path<String>,
    axum::Json(f): axum::Json<Fault>,
) -> StatusCode {
    s.faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dest, f);
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let state: Shared = Arc::new(Sink::default());
    let app = Router::new()
        .route("/mixpanel/groups", post(mixpanel_groups))
        .route("/mixpanel/engage", post(mixpanel_engage))
        .route("/salesforce/services/oauth2/token", post(salesforce_token))
        .route(
            "/salesforce/services/data/{v}/composite/sobjects/{obj}/{field}",
            patch(salesforce_upsert),
        )
        .route("/webhook", post(webhook))
        .route("/_stats", get(stats))
        .route("/_reset", post(reset))
        .route("/_groups/{dest}", get(groups))
        // One line per group: a run with distinct group ids sends megabytes.
        .route(
            "/_expect",
            post(expect).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/_fault/{dest}", post(set_fault))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
