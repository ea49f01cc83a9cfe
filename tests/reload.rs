//! Live reload through the real daemon: the config file rewritten and `SIGHUP` sent while
//! calls keep coming. Destinations are added, changed and removed without losing a message;
//! a removed destination keeps what it was owed until it is configured again; an invalid
//! file leaves the running config as it was.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Answer, DEADLINE, Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "k";

/// A config with a webhook per `(name, path, extra keys)`.
fn config(spool: &std::path::Path, rx: &Receiver, hooks: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\n[spool]\npath = \"{}\"\n\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n",
        spool.display()
    );
    for (name, path, extra) in hooks {
        text.push_str(&format!(
            "\n[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{}\"\nbatch = {{ max_events = 20, max_wait = \"5ms\" }}\n{extra}\n",
            rx.url(path)
        ));
    }
    text
}

/// A daemon running `config` with these webhooks.
async fn start(rx: &Receiver, hooks: &[(&str, &str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config(&dir.path().join("spool"), rx, hooks)).unwrap();
    Daemon::spawn(dir, &path, &[]).await
}

fn hup(d: &Daemon) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// Wait until the daemon has logged `text` `n` times.
async fn wait_for_count(d: &Daemon, text: &str, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while d.logs().matches(text).count() < n {
        assert!(
            Instant::now() < deadline,
            "`{text}` not logged {n} times: {}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls sent in batches until stopped; the ids of those answered 200, in order.
struct Load {
    sent: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(d: &Daemon) -> Self {
        let (sent, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (url, ids, stopped) = (d.url("/v1/batch"), sent.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stopped.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (0..10)
                    .map(|k| {
                        let id = format!("m-{:06}", i * 10 + k);
                        json!({"type": "group", "userId": "u", "groupId": format!("g{}", k % 3), "messageId": id})
                    })
                    .collect();
                let answer = client
                    .post(&url)
                    .basic_auth(KEY, Some(""))
                    .json(&json!({"batch": batch}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 200);
                ids.lock().unwrap().extend(
                    batch
                        .iter()
                        .map(|m| m["messageId"].as_str().unwrap().to_string()),
                );
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { sent, stop, task }
    }

    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    async fn until(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "load stalled at {}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.sent.lock().unwrap().clone()
    }
}

fn ids(rx: &Receiver, path: &str) -> BTreeSet<String> {
    (rx.requests(path).iter())
        .flat_map(|c| match c.json() {
            Value::Array(list) => list,
            one => vec![one],
        })
        .filter_map(|m| m["messageId"].as_str().map(str::to_string))
        .collect()
}

async fn wait_for_ids(rx: &Receiver, path: &str, want: &BTreeSet<String>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = ids(rx, path);
        let missing: Vec<&String> = want.difference(&got).take(5).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} misses {} ids, e.g. {missing:?}",
            want.difference(&got).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under load: A changes (a rate limit), B (with a backlog: its receiver is failing) is
/// removed, C is added. Every call reaches A; C gets every call sent after the reload; B's
/// backlog waits in the spool and is delivered once B is configured again.
#[tokio::test]
async fn a_reload_under_load_adds_changes_and_removes_destinations_and_loses_nothing() {
    let rx = Receiver::start().await;
    rx.set_default("/b", Answer::status(503));
    let retry = "retry = { initial_backoff = \"50ms\", max_backoff = \"100ms\" }";
    let d = start(&rx, &[("A", "/a", ""), ("B", "/b", retry)]).await;
    let load = Load::start(&d);
    load.until(300).await;

    let changed = config(
        &d.dir.path().join("spool"),
        &rx,
        &[
            (
                "A",
                "/a",
                "rate_limit = { requests_per_second = 500, burst = 50 }",
            ),
            ("C", "/c", ""),
        ],
    );
    std::fs::write(d.config_path(), changed).unwrap();
    let before_reload = load.count();
    hup(&d);
    wait_for_count(&d, "config reloaded", 1).await;
    let after_reload = load.count();
    load.until(after_reload + 300).await;
    let sent = load.stop().await;

    let all: BTreeSet<String> = sent.iter().cloned().collect();
    wait_for_ids(&rx, "/a", &all).await;
    let after: BTreeSet<String> = sent[after_reload..].iter().cloned().collect();
    wait_for_ids(&rx, "/c", &after).await;
    assert!(
        ids(&rx, "/c").len() < all.len(),
        "C starts from the reload, not from the start"
    );
    let (_, status) = d.get("/admin/v1/destinations").await;
    let reload = &status["reload"];
    assert_eq!(reload["ok"], true, "{status}");
    let changes = reload["changes"].to_string();
    assert!(changes.contains("changed destination `A`"), "{changes}");
    assert!(changes.contains("added destination `C`"), "{changes}");
    assert!(changes.contains("removed destination `B`"), "{changes}");
    let names: Vec<&str> = (status["destinations"].as_array().unwrap().iter())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "C"]);

    // B comes back, its receiver fixed: everything it was owed before the reload arrives.
    rx.set_default("/b", Answer::status(200));
    let restored = config(
        &d.dir.path().join("spool"),
        &rx,
        &[("A", "/a", ""), ("B", "/b", retry), ("C", "/c", "")],
    );
    std::fs::write(d.config_path(), restored).unwrap();
    hup(&d);
    wait_for_count(&d, "config reloaded", 2).await;
    let owed: BTreeSet<String> = sent[..before_reload].iter().cloned().collect();
    wait_for_ids(&rx, "/b", &owed).await;
}

/// A file with errors changes nothing: each error is logged with its line, the admin API
/// shows the failed reload, and delivery goes on with the config in force.
#[tokio::test]
async fn an_invalid_file_leaves_the_running_config_as_it_was() {
    let rx = Receiver::start().await;
    let d = start(&rx, &[("A", "/a", "")]).await;
    let broken = format!(
        "{}\n[[destination]]\nname = \"Z\"\ntype = \"webhook\"\nurl = \"{}\"\nbogus = 1\n",
        config(&d.dir.path().join("spool"), &rx, &[("A", "/a", "")]),
        rx.url("/z")
    );
    std::fs::write(d.config_path(), broken).unwrap();
    hup(&d);
    d.wait_for_log("config reload refused").await;
    let logs = d.logs();
    assert!(
        logs.contains("unknown key") || logs.contains("bogus"),
        "{logs}"
    );
    let (_, status) = d.get("/admin/v1/destinations").await;
    assert_eq!(status["reload"]["ok"], false, "{status}");
    let errors = status["reload"]["errors"].to_string();
    assert!(errors.contains("line "), "errors name their line: {errors}");
    assert_eq!(status["destinations"].as_array().unwrap().len(), 1);
    let call = json!({"userId": "u", "groupId": "g", "messageId": "after-bad-reload"});
    assert_eq!(d.post("/v1/group", Some(KEY), &call).await.0, 200);
    let want = BTreeSet::from(["after-bad-reload".to_string()]);
    wait_for_ids(&rx, "/a", &want).await;
    assert!(rx.requests("/z").is_empty());
}

/// The admin API's reload does what SIGHUP does, and answers with the outcome.
#[tokio::test]
async fn the_admin_api_reloads_and_says_what_changed_and_what_needs_a_restart() {
    let rx = Receiver::start().await;
    let d = start(&rx, &[("A", "/a", "")]).await;
    let text = config(
        &d.dir.path().join("spool"),
        &rx,
        &[("A", "/a", ""), ("B", "/b", "")],
    )
    .replace("shutdown_grace = \"2s\"", "shutdown_grace = \"3s\"")
    // The source's write key is rotated: the new one works at once, the old one no more.
    .replace(
        &format!("write_key = \"{KEY}\""),
        "write_key = \"rotated-key\"",
    );
    std::fs::write(d.config_path(), text).unwrap();
    let (status, report) = d.admin_post("/admin/v1/reload", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["changes"],
        json!(["added destination `B`", "sources changed"])
    );
    assert_eq!(report["restart_needed"], json!(["[server]"]));
    let call = json!({"userId": "u", "groupId": "g", "messageId": "to-both"});
    assert_eq!(d.post("/v1/group", Some(KEY), &call).await.0, 401);
    assert_eq!(d.post("/v1/group", Some("rotated-key"), &call).await.0, 200);
    let want = BTreeSet::from(["to-both".to_string()]);
    wait_for_ids(&rx, "/b", &want).await;
    wait_for_ids(&rx, "/a", &want).await;
    std::fs::write(d.config_path(), "[server]\nlisten = 5\n").unwrap();
    let (status, report) = d.admin_post("/admin/v1/reload", &json!({})).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["ok"], false);
}
