//! The bench load generator: realistic group calls (~700 bytes: ids, context, integrations, a
//! dozen traits with `address` and `createdAt`) to `/v1/batch` (N per request) or `/v1/group`,
//! closed-loop at a concurrency or open-loop at a fixed rate, for a duration or a count.
//! Prints one JSON report: accepted messages/s and request latency percentiles (open-loop
//! latency is measured from each request's scheduled time, so a stall is not hidden).
//!
//! Group ids are drawn by `--groups` (distinct, uniform:N, zipf:N); a group's traits depend
//! only on its index, as a company's do, and each message carries its own `bench_id` trait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use switchyard_bench::{Groups, bench_id, now_micros};

#[derive(Parser, Clone)]
struct Args {
    /// Switchyard's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    #[arg(long, default_value = "bench-key")]
    write_key: String,
    #[arg(long, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// Messages per `/v1/batch` request.
    #[arg(long, default_value_t = 100)]
    batch_size: u64,
    /// Requests in flight (closed loop), or the cap on them (open loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Stop after this many seconds...
    #[arg(long)]
    duration: Option<f64>,
    /// ...or after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Open loop: messages per second, sent on a fixed schedule whatever the answers.
    #[arg(long)]
    rate: Option<f64>,
    /// First message sequence number (keep ids unique across runs against one receiver).
    #[arg(long, default_value_t = 0)]
    start_seq: u64,
    /// Group ids: `distinct` (one per message), `uniform:N` or `zipf:N[:S]`.
    #[arg(long, default_value = "distinct")]
    groups: Groups,
    /// Message ids: `sequential` (`m-<seq>-<micros>`, ascending) or `random` (UUID v4, as
    /// analytics.js and the other Segment SDKs send them: the dedupe index then takes each
    /// new id at a random place, not at its end).
    #[arg(long, value_enum, default_value_t = Ids::Sequential)]
    message_ids: Ids,
    /// Write each group's last accepted message (`acct-<g>\t<seq>` lines) here: the state a
    /// destination that keeps the newest values per group must end in.
    #[arg(long)]
    last_seqs: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ids {
    Sequential,
    Random,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Batch,
    Single,
}

struct Totals {
    next_seq: AtomicU64,
    end_seq: u64,
    accepted: AtomicU64,
    requests: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency_us: Mutex<Histogram<u64>>,
    /// Group index → the highest seq accepted for it.
    last: Mutex<std::collections::HashMap<u64, u64>>,
}

fn message(groups: &Groups, ids: Ids, seq: u64) -> String {
    let now = now_micros();
    let message_id = match ids {
        Ids::Sequential => format!("m-{seq}-{now}"),
        Ids::Random => uuid::Uuid::new_v4().to_string(),
    };
    let id = bench_id(seq, now);
    let g = groups.index(seq);
    let user = (g * 5 + seq % 5) % 1_000_000;
    let employees = 10 + g % 5000;
    format!(
        r#"{{"type":"group","messageId":"{message_id}","userId":"user-{user}","groupId":"acct-{g}","traits":{{"name":"Company {g}","createdAt":"2021-03-04T05:06:07Z","employees":"{employees}","industry":"Software","plan":"enterprise","website":"https://company{g}.example.com","email":"billing@company{g}.example.com","phone":"+1 415 555 0100","description":"A customer account created by the bench","address":{{"street":"{g} Market St","city":"San Francisco","state":"CA","postal_code":"94107","country":"US"}},"mrr":1234.5,"seats":42,"bench_id":"{id}"}},"context":{{"library":{{"name":"analytics-node","version":"3.1.0"}},"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64) bench"}},"integrations":{{"All":true,"Salesforce":true}}}}"#
    )
}

/// Claim the next `n` sequence numbers, or fewer at the end of a counted run.
fn claim(t: &Totals, n: u64) -> Option<std::ops::Range<u64>> {
    let start = t.next_seq.fetch_add(n, Ordering::Relaxed);
    if start >= t.end_seq {
        return None;
    }
    Some(start..(start + n).min(t.end_seq))
}

async fn send(
    client: &reqwest::Client,
    args: &Args,
    t: &Totals,
    seqs: std::ops::Range<u64>,
    started: Instant,
) {
    let n = seqs.end - seqs.start;
    let accepted = seqs.clone();
    let (path, body) = match args.mode {
        Mode::Single => (
            "/v1/group",
            message(&args.groups, args.message_ids, seqs.start),
        ),
        Mode::Batch => {
            let items: Vec<String> = seqs
                .map(|seq| message(&args.groups, args.message_ids, seq))
                .collect();
            ("/v1/batch", format!(r#"{{"batch":[{}]}}"#, items.join(",")))
        }
    };
    let result = client
        .post(format!("{}{}", args.url, path))
        .basic_auth(&args.write_key, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let outcome = match result {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            t.accepted.fetch_add(n, Ordering::Relaxed);
            if args.last_seqs.is_some() {
                let mut last = t.last.lock().unwrap_or_else(|p| p.into_inner());
                for seq in accepted {
                    let slot = last.entry(args.groups.index(seq)).or_default();
                    *slot = (*slot).max(seq);
                }
            }
            None
        }
        Ok(r) => Some(r.status().as_u16().to_string()),
        Err(e) => Some(if e.is_connect() {
            "connect".into()
        } else {
            "transport".into()
        }),
    };
    t.requests.fetch_add(1, Ordering::Relaxed);
    let us = started.elapsed().as_micros() as u64;
    let _ = t
        .latency_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(us.max(1));
    if let Some(e) = outcome {
        *t.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e)
            .or_default() += 1;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let per_request = if args.mode == Mode::Single {
        1
    } else {
        args.batch_size.max(1)
    };
    let t = Arc::new(Totals {
        next_seq: AtomicU64::new(args.start_seq),
        end_seq: args.count.map(|c| args.start_seq + c).unwrap_or(u64::MAX),
        accepted: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        ),
        last: Mutex::new(std::collections::HashMap::new()),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("HTTP client");
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let begin = Instant::now();
    let over = move || deadline.is_some_and(|d| Instant::now() >= d);
    match args.rate {
        None => {
            let mut tasks = Vec::new();
            for _ in 0..args.concurrency {
                let (client, args, t) = (client.clone(), args.clone(), t.clone());
                tasks.push(tokio::spawn(async move {
                    while !over() {
                        let Some(seqs) = claim(&t, per_request) else {
                            break;
                        };
                        send(&client, &args, &t, seqs, Instant::now()).await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(per_request as f64 / rate);
            let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1) * 16));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            while !over() {
                let scheduled = ticker.tick().await.into_std();
                let Some(seqs) = claim(&t, per_request) else {
                    break;
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (client, args, t) = (client.clone(), args.clone(), t.clone());
                tasks.spawn(async move {
                    send(&client, &args, &t, seqs, scheduled).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let secs = begin.elapsed().as_secs_f64();
    let h = t.latency_us.lock().unwrap_or_else(|p| p.into_inner());
    let accepted = t.accepted.load(Ordering::Relaxed);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "mode": if args.mode == Mode::Batch { "batch" } else { "single" },
        "batch_size": per_request,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": secs,
        "requests": t.requests.load(Ordering::Relaxed),
        "accepted": accepted,
        "accepted_per_s": accepted as f64 / secs,
        "errors": *t.errors.lock().unwrap_or_else(|p| p.into_inner()),
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0},
        "next_seq": t.next_seq.load(Ordering::Relaxed).min(t.end_seq),
    });
    if let Some(path) = &args.last_seqs {
        let last = t.last.lock().unwrap_or_else(|p| p.into_inner());
        let lines: String = last
            .iter()
            .map(|(g, seq)| format!("acct-{g}\t{seq}\n"))
            .collect();
        std::fs::write(path, lines).expect("write --last-seqs");
    }
    println!("{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(m: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        v["messageId"].as_str().unwrap().to_string()
    }

    #[test]
    fn random_ids_are_version_4_uuids_and_differ() {
        let groups: Groups = "uniform:10".parse().unwrap();
        let a = id_of(&message(&groups, Ids::Random, 1));
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4, "{a}");
        assert_ne!(a, id_of(&message(&groups, Ids::Random, 1)));
        assert!(id_of(&message(&groups, Ids::Sequential, 7)).starts_with("m-7-"));
    }
}
