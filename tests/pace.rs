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

#[tokio::test]
async fn ingest_waits_while_a_destination_that_keeps_its_own_pace_is_behind() {
    let rx = Receiver::start().await;
    let (server, rest) = config(&rx, 20, "2s");
    let d = Daemon::start(&server, &rest).await;
    // One message per request: each batch of 50 leaves the destination well behind.
    send(&d, "m", 20, 50).await;
    let got = rx
        .wait_until("/hook", |got| got.len() >= 1000, "1000 deliveries")
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|c| c.json()["messageId"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "each message delivered once");
    assert!(paced(&d).await > 0, "no request waited for delivery");
}

#[tokio::test]
async fn a_paused_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    rx.script(
        "/hook",
        vec![Answer::status(429).with_header("retry-after", "60")],
    );
    // Were pacing to wait for it, each request would take 30 s (and be counted).
    let (server, rest) = config(&rx, 5, "30s");
    let d = Daemon::start(&server, &rest).await;
    send(&d, "first", 1, 1).await;
    d.wait_status("Hook", |h| h["state"] == "paused", "paused")
        .await;
    send(&d, "p", 10, 50).await;
    let (_, listed) = d.get("/v1/destinations").await;
    assert!(
        listed["destinations"][0]["pending"].as_u64().unwrap() >= 500,
        "{listed}"
    );
    assert_eq!(paced(&d).await, 0, "ingest waited for a paused destination");
}

#[tokio::test]
async fn a_slow_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    rx.set_default(
        "/hook",
        Answer::status(200).delayed(Duration::from_millis(200)),
    );
    let (server, mut rest) = config(&rx, 5, "30s");
    rest.push_str("concurrency = 1\n");
    let d = Daemon::start(&server, &rest).await;
    // Its one slot waits for answers: after a few of them (the average looks back about a
    // second) the destination, not the daemon, is what holds delivery up.
    send(&d, "warm", 1, 20).await;
    rx.wait_for("/hook", 15).await;
    let before = paced(&d).await;
    send(&d, "s", 10, 50).await;
    assert_eq!(
        paced(&d).await,
        before,
        "ingest waited for a slow destination"
    );
}

#[tokio::test]
async fn a_failing_destination_never_slows_ingest() {
    let rx = Receiver::start().await;
    rx.set_default("/hook", Answer::status(503));
    let (server, rest) = config(&rx, 5, "30s");
    let d = Daemon::start(&server, &rest).await;
    send(&d, "first", 1, 1).await;
    d.wait_status("Hook", |h| h["state"] == "failing", "failing")
        .await;
    send(&d, "f", 10, 50).await;
    assert_eq!(
        paced(&d).await,
        0,
        "ingest waited for a failing destination"
    );
    // Once it answers again, everything is delivered: nothing waits, nothing was given up.
    rx.set_default("/hook", Answer::status(200));
    let hook = d
        .wait_status(
            "Hook",
            |h| h["pending"] == 0 && h["in_flight"] == 0,
            "everything delivered",
        )
        .await;
    assert_eq!(hook["dead_letters"], 0, "{hook}");
    assert_eq!(hook["delivered_total"], 501, "{hook}");
}
