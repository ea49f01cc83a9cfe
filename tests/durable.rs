//! At-least-once delivery through the real daemon: crashes, outages, Retry-After, ordering,
//! dedupe, dead letters and replay, backpressure, and restarts with a backlog.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Answer, Backend, Captured, DEADLINE, Daemon, Receiver, Under};
use serde_json::{Value, json};

const KEY: &str = "test-write-key";

fn source() -> String {
    format!("[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n")
}

/// A webhook destination with millisecond backoffs.
fn hook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n{extra}\n"
    )
}

fn group(id: &str, group: &str) -> Value {
    json!({"type": "group", "userId": "u1", "groupId": group, "messageId": id, "traits": {"name": id}})
}

/// The messageIds the receiver answered 200 for, over all requests.
fn delivered(got: &[Captured]) -> HashSet<String> {
    got.iter()
        .filter(|c| c.status == 200)
        .flat_map(message_ids)
        .collect()
}

/// The messageIds a request carried (one message, or an array when batching).
fn message_ids(c: &Captured) -> Vec<String> {
    let id = |m: &Value| m["messageId"].as_str().unwrap_or_default().to_string();
    match c.json() {
        Value::Array(items) => items.iter().map(id).collect(),
        m => vec![id(&m)],
    }
}

/// Poll `check` until it returns `Some`, or panic at the deadline.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An address nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/down")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_answered_200() {
    kill_9_under_load(Backend::Sqlite, None).await;
}

/// The same with 40 group ids repeated all through the load: most items wait behind an older
/// item of their group (in memory), and a crash must lose none of them either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_with_repeated_group_ids() {
    kill_9_under_load(Backend::Sqlite, Some(40)).await;
}

/// The same on JetStream: the restarted daemon takes its partitions back and gets what the
/// killed one held once the server's ack wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_on_jetstream_with_repeated_group_ids() {
    kill_9_under_load(Backend::JetStream, Some(40)).await;
}

/// Kill -9 three times while 5,000 messages are sent (each message its own group, or spread
/// over `groups`); every message answered 200 must reach both destinations.
async fn kill_9_under_load(backend: Backend, groups: Option<usize>) {
    let under = Under::new(backend);
    const TOTAL: usize = 5000;
    const PER_REQUEST: usize = 50;
    const BATCH: usize = 50;
    const KILLS: usize = 3;
    const CONCURRENCY: usize = 2;
    let rx = Receiver::start().await;
    let batching = format!(
        "batch = {{ max_events = {BATCH}, max_wait = \"5ms\" }}\nconcurrency = {CONCURRENCY}"
    );
    let config = format!(
        "{}{}{}",
        source(),
        hook("A", &rx.url("/a"), &batching),
        hook("B", &rx.url("/b"), &batching)
    );
    let mut daemon = Daemon::start_on(&under, "", &config).await;
    let base = Arc::new(Mutex::new(daemon.url("")));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let queue: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(
        (0..TOTAL / PER_REQUEST)
            .rev()
            .map(|b| {
                (0..PER_REQUEST)
                    .map(|i| format!("m-{}", b * PER_REQUEST + i))
                    .collect()
            })
            .collect(),
    ));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (base, acked, queue) = (base.clone(), acked.clone(), queue.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let Some(ids) = queue.lock().unwrap().pop() else {
                    return;
                };
                let batch: Vec<Value> = ids
                    .iter()
                    .map(|id| match groups {
                        Some(n) => {
                            group(id, &format!("g{}", id[2..].parse::<usize>().unwrap() % n))
                        }
                        None => group(id, id),
                    })
                    .collect();
                // Like an SDK: resend the same messages until a 200; dedupe absorbs repeats.
                loop {
                    let url = format!("{}/v1/batch", base.lock().unwrap());
                    let sent = client
                        .post(url)
                        .basic_auth(KEY, Some(""))
                        .json(&json!({"batch": batch}))
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().extend(ids.iter().cloned());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for k in 1..=KILLS {
        let threshold = k * TOTAL / (KILLS + 1);
        eventually("messages to be accepted before a kill", || {
            (acked.lock().unwrap().len() >= threshold).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..40))).await;
        daemon.kill9();
        daemon = daemon.restart().await;
        *base.lock().unwrap() = daemon.url("");
    }
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), TOTAL);
    let mut duplicates = HashMap::new();
    for path in ["/a", "/b"] {
        let got = rx
            .wait_until(
                path,
                |got| {
                    let seen: HashSet<String> = got.iter().flat_map(message_ids).collect();
                    acked.is_subset(&seen)
                },
                "every accepted message",
            )
            .await;
        let all: Vec<String> = got.iter().flat_map(message_ids).collect();
        let unique: HashSet<&String> = all.iter().collect();
        duplicates.insert(path, all.len() - unique.len());
    }
    println!("duplicates after {KILLS} kills ({groups:?} groups): {duplicates:?}");
    for (path, d) in duplicates {
        // Only the batches in flight (batches settle in lease order) can be delivered and not
        // yet acked when the process dies.
        assert!(
            d <= KILLS * BATCH * CONCURRENCY,
            "{path}: {d} duplicates for {KILLS} kills of {CONCURRENCY} batches of {BATCH}"
        );
    }
}

async fn an_outage_loses_nothing_and_stalls_no_other_destination(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.set_default("/a", Answer::status(503));
    let config = format!(
        "{}{}{}",
        source(),
        hook("A", &rx.url("/a"), ""),
        hook("B", &rx.url("/b"), "")
    );
    let d = Daemon::start_on(&under, "", &config).await;
    let ids: Vec<String> = (0..20).map(|i| format!("o-{i}")).collect();
    let batch: Vec<Value> = ids.iter().map(|id| group(id, id)).collect();
    assert_eq!(
        d.post("/v1/batch", Some(KEY), &json!({"batch": batch}))
            .await
            .0,
        200
    );

    let b = rx
        .wait_until(
            "/b",
            |got| got.len() >= ids.len(),
            "B to deliver everything",
        )
        .await;
    assert_eq!(delivered(&b), ids.iter().cloned().collect());
    let tried = rx.requests("/a");
    assert!(
        !tried.is_empty() && delivered(&tried).is_empty(),
        "A was tried, and refused, while B delivered"
    );
    let (_, status) = d.get("/v1/destinations").await;
    let a = &status["destinations"][0];
    assert_eq!(a["name"], "A");
    assert!(
        a["pending"].as_u64().unwrap() + a["in_flight"].as_u64().unwrap() > 0,
        "{a}"
    );
    assert!(a["last_error"].as_str().unwrap().contains("503"), "{a}");
    let metrics = d.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_deliveries_total{destination=\"A\",outcome=\"retry\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_queue_depth{destination=\"A\"}"),
        "{metrics}"
    );

    rx.set_default("/a", Answer::status(200));
    let expected: HashSet<String> = ids.iter().cloned().collect();
    rx.wait_until(
        "/a",
        |got| expected.is_subset(&delivered(got)),
        "A to catch up",
    )
    .await;
}

async fn retry_after_pauses_the_destination_until_then(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script(
        "/a",
        vec![Answer::status(429).with_header("retry-after", "1")],
    );
    let config = format!("{}{}", source(), hook("A", &rx.url("/a"), ""));
    let d = Daemon::start_on(&under, "", &config).await;
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group("r-1", "g1")).await.0,
        200
    );
    let first = rx.wait_for("/a", 1).await;
    // Calls sent once the daemon has read the 429 (a batch already on its way when the answer
    // came cannot be called back).
    d.wait_for_log("destination paused").await;
    for i in 2..5 {
        assert_eq!(
            d.post(
                "/v1/group",
                Some(KEY),
                &group(&format!("r-{i}"), &format!("g{i}"))
            )
            .await
            .0,
            200
        );
    }
    let got = rx.wait_for("/a", 5).await;
    let paused_at = first[0].at;
    for c in &got[1..] {
        // The daemon pauses from when it read the 429, which is after the receiver logged it.
        assert!(
            c.at.duration_since(paused_at) >= Duration::from_millis(1000),
            "a request came {:?} after the 429",
            c.at.duration_since(paused_at)
        );
    }
}

async fn a_newer_update_never_overtakes_an_older_one_in_retry(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script("/a", vec![Answer::status(500)]);
    let slow = "[[destination]]\nname = \"A\"\ntype = \"webhook\"\nurl = \"URL\"\nretry = { initial_backoff = \"300ms\", max_backoff = \"300ms\" }\n"
        .replace("URL", &rx.url("/a"));
    let d = Daemon::start_on(&under, "", &format!("{}{slow}", source())).await;
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group("v1", "acme")).await.0,
        200
    );
    rx.wait_for("/a", 1).await;
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group("v2", "acme")).await.0,
        200
    );
    let got = rx.wait_for("/a", 3).await;
    let order: Vec<String> = got.iter().flat_map(message_ids).collect();
    assert_eq!(
        order,
        ["v1", "v1", "v2"],
        "v1 failed, was retried, and only then v2 went"
    );
}

/// Send `marker` in group `g` and wait for it: per-group order delivers everything sent
/// before it first. How many times `id` was delivered by then.
async fn delivered_before(d: &Daemon, rx: &Receiver, marker: &str, id: &str) -> usize {
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group(marker, "g")).await.0,
        200
    );
    let got = rx
        .wait_until(
            "/a",
            |got| got.iter().flat_map(message_ids).any(|m| m == marker),
            "the marker",
        )
        .await;
    got.iter().flat_map(message_ids).filter(|m| m == id).count()
}

async fn the_same_message_id_twice_is_delivered_once(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    let d = Daemon::start_on(
        &under,
        "",
        &format!("{}{}", source(), hook("A", &rx.url("/a"), "")),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            d.post("/v1/group", Some(KEY), &group("dup", "g")).await,
            (200, json!({"success": true}))
        );
    }
    // A marker in the same group: per-group order puts any second `dup` before it.
    assert_eq!(delivered_before(&d, &rx, "after", "dup").await, 1);
    let metrics = d.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_messages_in_total{source=\"web\",result=\"duplicate\"} 1"),
        "{metrics}"
    );
    // After a restart the window still holds it (the embedded spool reads its dedupe journal
    // back; JetStream's duplicate window is the server's).
    let mut d = d;
    assert!(d.terminate().await.success());
    let d = d.restart().await;
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group("dup", "g")).await,
        (200, json!({"success": true}))
    );
    assert_eq!(
        delivered_before(&d, &rx, "after-restart", "dup").await,
        1,
        "delivered again after the restart"
    );
}

async fn a_refused_message_is_a_dead_letter_until_replayed(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.script(
        "/a",
        vec![Answer::json(400, json!({"error": "bad field plan"}))],
    );
    let d = Daemon::start_on(
        &under,
        "",
        &format!("{}{}", source(), hook("A", &rx.url("/a"), "")),
    )
    .await;
    assert_eq!(
        d.post("/v1/group", Some(KEY), &group("dl-1", "g")).await.0,
        200
    );
    let batch = json!({"batch": [{"type": "group", "messageId": "bad-1"}]});
    assert_eq!(d.post("/v1/batch", Some(KEY), &batch).await.0, 200);

    let letters = eventually("the dead letter", || {
        let list: Vec<Value> =
            serde_json::from_str(&d.dlq(&["list", "--destination", "A", "--json"])).unwrap();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(
        (
            l["reason"].as_str(),
            l["status"].as_u64(),
            l["message_id"].as_str()
        ),
        (Some("permanent"), Some(400), Some("dl-1"))
    );
    assert!(
        l["response"].as_str().unwrap().contains("bad field plan"),
        "{l}"
    );
    assert_eq!(l["attempts"], 1);
    let table = d.dlq(&["list"]);
    assert!(
        table.contains("dl-1") && table.contains("invalid"),
        "{table}"
    );
    let invalid: Vec<Value> =
        serde_json::from_str(&d.dlq(&["list", "--reason", "invalid", "--json"])).unwrap();
    assert_eq!(invalid[0]["message_id"], "bad-1");
    let id = l["id"].to_string();
    let shown: Value = serde_json::from_str(&d.dlq(&["show", &id])).unwrap();
    assert_eq!(shown["message"]["messageId"], "dl-1");

    // The receiver answers 200 from now on (the script is spent): replay delivers it.
    assert!(d.dlq(&["replay", "--id", &id]).contains("replayed 1"));
    rx.wait_for("/a", 2).await;
    assert_eq!(message_ids(&rx.requests("/a")[1]), ["dl-1"]);
    assert!(
        d.dlq(&["list", "--destination", "A"])
            .contains("no dead letters")
    );
    assert!(d.dlq(&["purge", "--all"]).contains("purged 1"));
    assert!(d.dlq(&["list"]).contains("no dead letters"));
}

async fn a_full_spool_answers_503_and_memory_stays_flat(backend: Backend) {
    let under = Under::new(backend);
    let config = format!(
        "max_bytes = 4000\n{}{}",
        source(),
        hook("A", &dead_url(), "")
    );
    let d = Daemon::start_on(&under, "", &config).await;
    let client = reqwest::Client::new();
    let post = async |i: usize| {
        let body =
            json!({"batch": [group(&format!("bp-{i}"), "g"), group(&format!("bp-{i}-b"), "g")]});
        client
            .post(d.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    let mut i = 0;
    let refused = loop {
        let r = post(i).await;
        i += 1;
        if r.status() == 503 {
            break r;
        }
        assert_eq!(r.status(), 200);
        assert!(i < 100, "never full");
    };
    assert_eq!(refused.headers()["retry-after"], "5");
    let before = d.rss_kib();
    for _ in 0..1000 {
        assert_eq!(post(i).await.status(), 503);
        i += 1;
    }
    let after = d.rss_kib();
    println!("RSS before {before} KiB, after 1000 refused requests {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

async fn a_backlog_survives_sigterm_and_is_delivered_after_restart(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.set_default("/a", Answer::status(503));
    let d = Daemon::start_on(
        &under,
        "",
        &format!("{}{}", source(), hook("A", &rx.url("/a"), "")),
    )
    .await;
    let ids: Vec<String> = (0..30).map(|i| format!("t-{i}")).collect();
    let batch: Vec<Value> = ids.iter().map(|id| group(id, id)).collect();
    assert_eq!(
        d.post("/v1/batch", Some(KEY), &json!({"batch": batch}))
            .await
            .0,
        200
    );
    rx.wait_for("/a", 1).await;
    let mut d = d;
    assert!(d.terminate().await.success());
    rx.set_default("/a", Answer::status(200));
    let d = d.restart().await;
    let expected: HashSet<String> = ids.iter().cloned().collect();
    rx.wait_until(
        "/a",
        |got| expected.is_subset(&delivered(got)),
        "the backlog after restart",
    )
    .await;
    drop(d);
}

/// Replace every `from` with `to` (same length) in the files of `dir`.
fn alter_files(dir: &std::path::Path, from: &str, to: &str) -> usize {
    assert_eq!(from.len(), to.len());
    let mut changed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut i = 0;
        while let Some(at) = bytes[i..]
            .windows(from.len())
            .position(|w| w == from.as_bytes())
        {
            bytes[i + at..i + at + from.len()].copy_from_slice(to.as_bytes());
            i += at + from.len();
            changed += 1;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    changed
}

/// A queued message whose stored body is altered on disk while the daemon is stopped is
/// never delivered: `switchyard spool check` names it (exit 1), and the restarted daemon
/// dead-letters it as `corrupted` while the intact message beside it is delivered.
#[tokio::test]
async fn a_message_altered_on_disk_is_dead_lettered_as_corrupted() {
    let rx = Receiver::start().await;
    rx.set_default("/hook", Answer::status(503));
    let mut d = Daemon::start(
        "",
        &format!("{}{}", source(), hook("Hook", &rx.url("/hook"), "")),
    )
    .await;
    let mut tampered = group("m-tampered", "b");
    tampered["traits"]["plan"] = json!("plan-to-alter");
    let (status, _) = d
        .post(
            "/v1/batch",
            Some(KEY),
            &json!({"batch": [group("m-intact", "a"), tampered]}),
        )
        .await;
    assert_eq!(status, 200);
    rx.wait_for("/hook", 2).await;
    assert!(d.terminate().await.success());
    let spool = d.dir.path().join("spool");
    // Everything into the main file first: a changed byte in the WAL would break the WAL's own
    // frame checksum, and SQLite would drop the transaction as a torn write instead.
    let conn = rusqlite::Connection::open(spool.join("spool.sqlite3")).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    // Every copy in the files (a freed page may hold a stale one too).
    assert!(alter_files(&spool, "plan-to-alter", "plan-ALTERED!") >= 1);

    let checked = std::process::Command::new(common::binary())
        .args(["spool", "check", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{report}");
    assert!(
        report.contains("messageId m-tampered") && report.contains("altered on disk"),
        "{report}"
    );

    rx.set_default("/hook", Answer::status(200));
    let d = d.restart().await;
    let dead = eventually("the corrupted dead letter", || {
        let listed = d.dlq(&["list", "--reason", "corrupted", "--json"]);
        let letters: Vec<Value> = serde_json::from_str(&listed).unwrap();
        (letters.len() == 1).then(|| letters[0].clone())
    })
    .await;
    assert_eq!(dead["message_id"], "m-tampered");
    assert!(
        dead["error"].as_str().unwrap().contains("altered on disk"),
        "{dead}"
    );
    let got = rx
        .wait_until(
            "/hook",
            |g| delivered(g).contains("m-intact"),
            "m-intact delivered",
        )
        .await;
    assert!(
        got.iter()
            .all(|c| !c.json().to_string().contains("plan-ALTERED!")),
        "the altered body was never sent"
    );
}

/// `dlq replay` of many dead letters next to a running daemon: ingest goes on answering 200
/// while it runs and never waits for the whole replay (it writes in short chunks), and
/// every replayed message is delivered.
#[tokio::test]
async fn a_large_replay_does_not_stall_ingest() {
    let rx = Receiver::start().await;
    rx.set_default("/hook", Answer::status(400));
    let d = Daemon::start(
        "max_request_bytes = 4000000",
        &format!(
            "{}{}",
            source(),
            hook("Hook", &rx.url("/hook"), "batch = { max_events = 500 }")
        ),
    )
    .await;
    let total = 12_000;
    for start in (0..total).step_by(1000) {
        let calls: Vec<Value> = (start..start + 1000)
            .map(|i| group(&format!("dead-{i}"), &format!("g{}", i % 100)))
            .collect();
        let (status, body) = d
            .post("/v1/batch", Some(KEY), &json!({ "batch": calls }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    eventually("every message dead-lettered", || {
        let listed = d.dlq(&["list", "--json"]);
        let n = serde_json::from_str::<Vec<Value>>(&listed).unwrap().len();
        (n == total).then_some(())
    })
    .await;
    rx.set_default("/hook", Answer::status(200));

    let config = d.config_path();
    let replay = std::thread::spawn(move || {
        let started = Instant::now();
        let out = std::process::Command::new(common::binary())
            .args(["dlq", "replay", "--all", "--config"])
            .arg(config)
            .output()
            .unwrap();
        (started.elapsed(), out)
    });
    let mut slowest = Duration::ZERO;
    let mut during = 0;
    let mut n = 0;
    while !replay.is_finished() {
        let started = Instant::now();
        let (status, body) = d
            .post(
                "/v1/batch",
                Some(KEY),
                &json!({"batch": [group(&format!("live-{n}"), "live")]}),
            )
            .await;
        assert_eq!(status, 200, "ingest during the replay: {body}");
        slowest = slowest.max(started.elapsed());
        during += 1;
        n += 1;
    }
    let (took, out) = replay.join().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("replayed {total} dead letter(s)")),
        "{said}"
    );
    assert!(
        during >= 3,
        "only {during} ingest requests while the replay ran ({took:?})"
    );
    assert!(
        slowest < took / 2,
        "an ingest request waited {slowest:?} during a replay of {took:?}"
    );
    rx.wait_until(
        "/hook",
        |got| {
            let ok = delivered(got);
            (0..total).all(|i| ok.contains(&format!("dead-{i}")))
        },
        "every replayed message delivered",
    )
    .await;
}

on_both_spools!(
    an_outage_loses_nothing_and_stalls_no_other_destination,
    retry_after_pauses_the_destination_until_then,
    a_newer_update_never_overtakes_an_older_one_in_retry,
    the_same_message_id_twice_is_delivered_once,
    a_refused_message_is_a_dead_letter_until_replayed,
    a_full_spool_answers_503_and_memory_stays_flat,
    a_backlog_survives_sigterm_and_is_delivered_after_restart,
);
