//! Delivery through the real daemon: retries, Retry-After, permanent failures, rate limits,
//! dry runs and shutdown.

mod common;

use std::time::Duration;

use common::{Answer, Backend, Daemon, Receiver, Under};
use serde_json::json;

const KEY: &str = "k";

fn config(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n{extra}\n",
        receiver.url("/hook")
    )
}

async fn send_group(d: &Daemon, group: &str) {
    let (status, _) = d
        .post(
            "/v1/group",
            Some(KEY),
            &json!({"userId": "u", "groupId": group, "messageId": group}),
        )
        .await;
    assert_eq!(status, 200);
}

/// Nothing pending, nothing in flight.
fn emptied(hook: &serde_json::Value) -> bool {
    hook["pending"] == 0 && hook["in_flight"] == 0
}

async fn server_errors_are_retried_until_delivered(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script("/hook", vec![Answer::status(500), Answer::status(500)]);
    let d = Daemon::start_on(&under, "", &config(&rx, "")).await;
    send_group(&d, "g1").await;
    let got = rx.wait_for("/hook", 3).await;
    assert!(got.iter().all(|c| c.json()["messageId"] == "g1"));
    // Delivered on the third attempt: the destination's queue empties and nothing else comes.
    d.wait_status("Hook", emptied, "the queue emptied").await;
    assert_eq!(rx.requests("/hook").len(), 3);
    d.wait_for_log("will retry").await;
}

async fn retry_after_is_honoured(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script(
        "/hook",
        vec![Answer::status(429).with_header("retry-after", "1")],
    );
    let d = Daemon::start_on(&under, "", &config(&rx, "")).await;
    send_group(&d, "g1").await;
    let got = rx.wait_for("/hook", 2).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After: 1"
    );
    d.wait_for_log("destination paused").await;
}

async fn client_errors_are_not_retried(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script("/hook", vec![Answer::status(400)]);
    let d = Daemon::start_on(&under, "", &config(&rx, "")).await;
    send_group(&d, "bad").await;
    // Only `bad` can meet the scripted 400: other groups' calls have no order with it (a
    // shared spool's partitions are pulled side by side).
    rx.wait_for("/hook", 1).await;
    send_group(&d, "after").await;
    rx.wait_until(
        "/hook",
        |g| g.iter().any(|c| c.json()["messageId"] == "after"),
        "the second message",
    )
    .await;
    // Once dead-lettered, `bad` is never sent again: it had exactly one attempt. (With two
    // batches in flight, `after` may arrive before `bad`, so its arrival proves nothing.)
    d.wait_for_log("dead-lettered").await;
    let attempts = rx
        .requests("/hook")
        .iter()
        .filter(|c| c.json()["messageId"] == "bad")
        .count();
    assert_eq!(attempts, 1);
    // Dead-lettered, not waiting for a retry: nothing pending, one dead letter, one attempt.
    let hook = d.wait_status("Hook", emptied, "the queue emptied").await;
    assert_eq!(hook["dead_letters"], 1, "{hook}");
    let bad = rx
        .requests("/hook")
        .iter()
        .filter(|c| c.json()["messageId"] == "bad")
        .count();
    assert_eq!(bad, 1, "a 400 is never retried");
}

async fn rate_limit_spaces_requests(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    let d = Daemon::start_on(
        &under,
        "",
        &config(&rx, "rate_limit = { requests_per_second = 5, burst = 1 }"),
    )
    .await;
    for i in 0..20 {
        send_group(&d, &format!("g{i}")).await;
    }
    let got = rx.wait_for("/hook", 20).await;
    let span = got[19].at.duration_since(got[0].at);
    // 19 intervals of 200 ms after the first: at least 3.8 s; assert the lower bound only.
    assert!(
        span >= Duration::from_secs(3),
        "20 requests spanned only {span:?}"
    );
}

async fn dry_run_logs_the_request_and_sends_nothing(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    let live = format!(
        "\n[[destination]]\nname = \"Live\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        rx.url("/live")
    );
    let d = Daemon::start_on(
        &under,
        "",
        &format!(
            "{}{live}",
            config(
                &rx,
                "dry_run = true\nheaders = { Authorization = \"Bearer hunter2\" }"
            )
        ),
    )
    .await;
    send_group(&d, "dry").await;
    // The live destination got it; the dry one is waited for through its log below.
    rx.wait_for("/live", 1).await;
    let logs = d.wait_for_log("dry run: would send").await;
    assert!(
        logs.contains("\\\"groupId\\\":\\\"dry\\\"") || logs.contains("\"groupId\":\"dry\""),
        "{logs}"
    );
    assert!(
        logs.contains("authorization: ***"),
        "credentials are redacted:\n{logs}"
    );
    assert!(!logs.contains("hunter2"));
    assert!(rx.requests("/hook").is_empty());
}

async fn standard_webhooks_signature_verifies(backend: Backend) {
    let under = Under::new(backend);
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let rx = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let d = Daemon::start_under(
        &under,
        "",
        &config(
            &rx,
            "signing_secret = \"${HOOK_SECRET}\"\nsignature = \"standard\"",
        ),
        &[("HOOK_SECRET", secret)],
    )
    .await;
    send_group(&d, "signed").await;
    let c = &rx.wait_for("/hook", 1).await[0];
    let (id, ts) = (
        c.header("webhook-id").unwrap(),
        c.header("webhook-timestamp").unwrap(),
    );
    assert_eq!(id, "signed");
    let key = base64::engine::general_purpose::STANDARD
        .decode(&secret[6..])
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&c.body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(c.header("webhook-signature").unwrap(), want);
    assert!(c.header("x-signature").is_none());
    assert!(
        !d.logs().contains(&secret[6..]),
        "the secret never reaches the logs"
    );
}

async fn sigterm_stops_cleanly(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    let mut d = Daemon::start_on(&under, "", &config(&rx, "")).await;
    send_group(&d, "before-stop").await;
    rx.wait_for("/hook", 1).await;
    let status = d.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    d.wait_for_log("stopped").await;
}

async fn concurrency_keeps_that_many_batches_in_flight(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    // Each request is answered only once three are waiting: with fewer in flight at once the
    // receiver gives up and answers 504.
    rx.set_default("/hook", Answer::json(200, json!({})).held_until(3));
    let d = Daemon::start_on(
        &under,
        "",
        &config(
            &rx,
            "concurrency = 3\nbatch = { max_events = 1, max_wait = \"0ms\" }",
        ),
    )
    .await;
    for g in ["g1", "g2", "g3"] {
        send_group(&d, g).await;
    }
    let got = rx.wait_for("/hook", 3).await;
    let statuses: Vec<u16> = got.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 200, 200], "the three requests overlapped");
}

#[tokio::test]
async fn a_bad_concurrency_is_refused_at_start() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config(&rx, "concurrency = 0")).unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("concurrency must be between 1 and 64"),
        "{err}"
    );
}

on_both_spools!(
    server_errors_are_retried_until_delivered,
    retry_after_is_honoured,
    client_errors_are_not_retried,
    rate_limit_spaces_requests,
    dry_run_logs_the_request_and_sends_nothing,
    standard_webhooks_signature_verifies,
    sigterm_stops_cleanly,
    concurrency_keeps_that_many_batches_in_flight,
);
