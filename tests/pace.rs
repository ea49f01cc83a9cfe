//! Ingest's pacing through the real daemon: a request waits while a destination delivering
//! at its own pace is behind, and never for one that is paused or failing.

mod common;

use std::time::Duration;

use common::{Answer, Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "k";

/// A webhook sent one message per request, and pacing that waits once it is `backlog` behind.
fn config(rx: &Receiver, backlog: u64, max_wait: &str) -> (String, String) {
    let server = format!("pace_backlog = {backlog}\npace_max_wait = \"{max_wait}\"");
    let rest = format!(
        "[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_backoff = \"20ms\", max_backoff = \"100ms\" }}\n",
        rx.url("/hook")
    );
    (server, rest)
}

/// Send `batches` batches of `size` group calls, ids `<tag>-<batch>-<i>`; all accepted.
async fn send(d: &Daemon, tag: &str, batches: usize, size: usize) {
    for b in 0..batches {
        let calls: Vec<Value> = (0..size)
            .map(|i| json!({"type": "group", "userId": "u", "groupId": format!("g{i}"), "messageId": format!("{tag}-{b}-{i}")}))
            .collect();
        let (status, body) = d
            .post("/v1/batch", Some(KEY), &json!({"batch": calls}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Requests that waited for the destination `Hook`, from `/metrics` (none recorded: 0).
async fn paced(d: &Daemon) -> u64 {
    let metrics = d.get_text("/metrics").await;
    let waits: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_ingest_paced_seconds_count"))
        .collect();
    assert!(
        waits.iter().all(|l| l.contains("destination=\"Hook\"")),
        "{waits:?}"
    );
    waits
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A daemon whose destination keeps its own pace: eight batches of one message in flight
/// lease and settle in turn through the spool, so much of each slot's time is the daemon's,
/// not the destination's.
async fn own_pace(rx: &Receiver) -> Daemon {
    let (server, mut rest) = config(rx, 20, "2s");
    rest.push_str("concurrency = 8\n");
    Daemon::start(&server, &rest).await
}

/// Send batches of 50 until a request waits for delivery; how many messages were sent.
/// Until its first batches show it answers promptly the destination is taken to hold
/// delivery up itself, so it is kept about 200 behind (not thousands) meanwhile.
async fn until_paced(d: &Daemon, rx: &Receiver) -> usize {
    let mut sent = 0;
    while paced(d).await == 0 {
        assert!(
            sent < 100,
            "no request waited for delivery after {sent} batches"
        );
        send(d, &format!("m{sent}"), 1, 50).await;
        sent += 1;
        let behind_at_most = |got: &[common::Captured]| got.len() + 200 >= sent * 50;
        rx.wait_until("/hook", behind_at_most, "the destination ~200 behind")
            .await;
    }
    sent * 50
}

#[tokio::test]
async fn ingest_waits_while_a_destination_that_keeps_its_own_pace_is_behind() {
    let rx = Receiver::start().await;
    let d = own_pace(&rx).await;
    let n = until_paced(&d, &rx).await;
    let got = rx
        .wait_until("/hook", |got| got.len() >= n, &format!("{n} deliveries"))
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|c| c.json()["messageId"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each message delivered once");
}

#[tokio::test]
async fn a_paused_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    let d = own_pace(&rx).await;
    until_paced(&d, &rx).await;
    // The same destination, paused: it answers 429 with `Retry-After: 60`.
    rx.set_default(
        "/hook",
        Answer::status(429).with_header("retry-after", "60"),
    );
    send(&d, "p0", 1, 1).await;
    d.wait_status("Hook", |h| h["state"] == "paused", "paused")
        .await;
    let before = paced(&d).await;
    send(&d, "p", 10, 50).await;
    let hook = d
        .wait_status(
            "Hook",
            |h| h["pending"].as_u64() >= Some(500),
            "500 pending",
        )
        .await;
    assert_eq!(
        paced(&d).await,
        before,
        "ingest waited for a paused destination: {hook}"
    );
}

#[tokio::test]
async fn a_failing_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    let d = own_pace(&rx).await;
    let n = until_paced(&d, &rx).await;
    // The same destination, down: every request answered 503.
    rx.set_default("/hook", Answer::status(503));
    send(&d, "f0", 1, 1).await;
    d.wait_status("Hook", |h| h["state"] == "failing", "failing")
        .await;
    let before = paced(&d).await;
    send(&d, "f", 10, 50).await;
    assert_eq!(
        paced(&d).await,
        before,
        "ingest waited for a failing destination"
    );
    // Once it answers again, everything is delivered: nothing was given up.
    rx.set_default("/hook", Answer::status(200));
    let hook = d
        .wait_status(
            "Hook",
            |h| h["pending"] == 0 && h["in_flight"] == 0,
            "everything delivered",
        )
        .await;
    assert_eq!(hook["dead_letters"], 0, "{hook}");
    assert_eq!(hook["delivered_total"], (n + 501) as u64, "{hook}");
}

#[tokio::test]
async fn a_slow_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    rx.set_default(
        "/hook",
        Answer::status(200).delayed(Duration::from_millis(300)),
    );
    let (server, mut rest) = config(&rx, 5, "5s");
    rest.push_str("concurrency = 1\n");
    let d = Daemon::start(&server, &rest).await;
    // Its one slot waits for answers nearly all the time: the destination, not the
    // daemon, is what holds delivery up, from its first batch on.
    send(&d, "s", 10, 50).await;
    rx.wait_for("/hook", 3).await;
    send(&d, "t", 10, 50).await;
    assert_eq!(paced(&d).await, 0, "ingest waited for a slow destination");
}
