//! Several daemons on one JetStream spool, against real `nats-server` processes: shared work,
//! a daemon killed under load, dedupe across daemons, pauses and the rate limit held together,
//! roles, and a three-node JetStream cluster losing a node.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nats::{self, Nats};
use common::{Answer, Backend, Captured, Daemon, Receiver, Under};
use serde_json::{Value, json};

const KEY: &str = "cluster-write-key";

/// How long a takeover may take here: the killed daemon's record expires, the pin moves and
/// what it held comes back once the server's ack wait runs out (README, Running several
/// daemons), with room for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(60);

fn config(rx: &Receiver, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n\n[[destination]]\nname = \"A\"\ntype = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_backoff = \"20ms\", max_backoff = \"200ms\" }}\n{extra}\n",
        rx.url("/a")
    )
}

fn group(id: &str, group: &str, n: usize) -> Value {
    json!({"type": "group", "userId": "u1", "groupId": group, "messageId": id, "traits": {"n": n}})
}

/// Send one call to `d` and check it was taken.
async fn send(d: &Daemon, call: &Value) {
    let (status, answer) = d.post("/v1/group", Some(KEY), call).await;
    assert_eq!(status, 200, "{answer}");
}

/// Each message a request carried, in order: (messageId, groupId, n).
fn items(c: &Captured) -> Vec<(String, String, u64)> {
    let one = |m: &Value| {
        (
            m["messageId"].as_str().unwrap_or_default().to_string(),
            m["groupId"].as_str().unwrap_or_default().to_string(),
            m["traits"]["n"].as_u64().unwrap_or_default(),
        )
    };
    match c.json() {
        Value::Array(all) => all.iter().map(one).collect(),
        m => vec![one(&m)],
    }
}

/// Poll until `check` answers `Some`, for at most `limit`.
async fn within<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cluster as `daemon` sees it (`/v1/destinations`).
async fn cluster(d: &Daemon) -> Value {
    d.get("/v1/destinations").await.1["cluster"].clone()
}

/// Until every daemon sees `n` members, and together they own every partition once.
async fn settled(daemons: &[&Daemon], n: usize) {
    within(
        common::DEADLINE,
        &format!("{n} members owning every partition"),
        async || {
            for d in daemons {
                let c = cluster(d).await;
                let members = c["members"].as_array()?;
                if members.len() != n {
                    return None;
                }
                let mut owned: Vec<u64> = members
                    .iter()
                    .flat_map(|m| m["owns"].as_array().cloned().unwrap_or_default())
                    .filter_map(|p| p.as_u64())
                    .collect();
                owned.sort_unstable();
                let all: Vec<u64> = (0..c["partitions"].as_u64()?).collect();
                if owned != all {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Send `per_group` calls to each of `groups` groups through `targets` (round robin, moving on
/// when one fails, as a client behind a load balancer); each group's calls one after another,
/// so "newest" means the last sent. Returns the ids answered 200.
async fn load(
    targets: Arc<Mutex<Vec<String>>>,
    groups: usize,
    per_group: usize,
    senders: usize,
    sent: Arc<Mutex<HashSet<String>>>,
) {
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (targets, sent) = (targets.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mine: Vec<usize> = (0..groups).filter(|g| g % senders == s).collect();
            let mut turn = s;
            for n in 0..per_group {
                // One call per group of this sender per request, in group order.
                let batch: Vec<Value> = mine
                    .iter()
                    .map(|g| group(&format!("m-{g}-{n}"), &format!("g{g}"), n))
                    .collect();
                loop {
                    let base = {
                        let t = targets.lock().unwrap();
                        turn += 1;
                        t[turn % t.len()].clone()
                    };
                    let answered = client
                        .post(format!("{base}/v1/batch"))
                        .basic_auth(KEY, Some(""))
                        .json(&json!({"batch": batch}))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    if answered.is_ok_and(|r| r.status() == 200) {
                        let ids = batch
                            .iter()
                            .map(|m| m["messageId"].as_str().unwrap().to_string());
                        sent.lock().unwrap().extend(ids);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every id in `sent` reached `path`; for each group the last call the receiver got is the
/// newest sent (per-group order held, across takeovers too). Answers the duplicates. On a
/// timeout, says what is missing and what the daemons report.
async fn all_delivered_in_order(
    rx: &Receiver,
    path: &str,
    sent: &HashSet<String>,
    per_group: usize,
    daemons: &[&Daemon],
) -> usize {
    let seen = |got: &[Captured]| -> HashSet<String> {
        got.iter()
            .filter(|c| c.status == 200)
            .flat_map(items)
            .map(|i| i.0)
            .collect()
    };
    let deadline = Instant::now() + TAKEOVER;
    let got = loop {
        let got = rx.requests(path);
        if sent.is_subset(&seen(&got)) {
            break got;
        }
        if Instant::now() > deadline {
            let seen = seen(&got);
            let mut missing: Vec<&String> = sent.difference(&seen).collect();
            missing.sort();
            for d in daemons {
                let (_, status) = d.get("/v1/destinations").await;
                let logs = d.logs();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                eprintln!(
                    "daemon {}: {status}\n{}",
                    d.addr,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!(
                "{} accepted calls never arrived, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut all = 0;
    for (_, g, n) in got.iter().filter(|c| c.status == 200).flat_map(items) {
        last.insert(g, n);
        all += 1;
    }
    for (g, n) in &last {
        let delivered: Vec<u64> = got
            .iter()
            .filter(|c| c.status == 200)
            .flat_map(items)
            .filter(|i| &i.1 == g)
            .map(|i| i.2)
            .collect();
        assert_eq!(
            *n as usize,
            per_group - 1,
            "group {g}: the last update delivered was {n}, not the newest; in order: {delivered:?}"
        );
    }
    all - sent.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_the_work_and_a_killed_one_loses_nothing() {
    const GROUPS: usize = 40;
    const PER_GROUP: usize = 60;
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    let c = config(
        &rx,
        "batch = { max_events = 50, max_wait = \"5ms\" }\nconcurrency = 2",
    );
    let a = Daemon::start_on(&under, "", &c).await;
    let mut b = Daemon::start_on(&under, "", &c).await;
    let d = Daemon::start_on(&under, "", &c).await;
    settled(&[&a, &b, &d], 3).await;
    // Each daemon pulls its share of the partitions.
    let owns: Vec<usize> = cluster(&a).await["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["owns"].as_array().unwrap().len())
        .collect();
    assert!(
        owns.iter().all(|n| *n > 0),
        "every daemon owns some partitions: {owns:?}"
    );

    let targets = Arc::new(Mutex::new(vec![a.url(""), b.url(""), d.url("")]));
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let loading = tokio::spawn(load(targets.clone(), GROUPS, PER_GROUP, 4, sent.clone()));
    let third = GROUPS * PER_GROUP / 3;
    within(
        common::DEADLINE,
        "a third of the load accepted",
        async || (sent.lock().unwrap().len() >= third).then_some(()),
    )
    .await;
    b.kill9();
    targets.lock().unwrap().retain(|t| *t != b.url(""));
    loading.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), GROUPS * PER_GROUP);
    let duplicates = all_delivered_in_order(&rx, "/a", &sent, PER_GROUP, &[&a, &d]).await;
    println!(
        "{} calls, {duplicates} delivered twice after the kill",
        sent.len()
    );
    // The survivors took the killed daemon's partitions.
    settled(&[&a, &d], 2).await;
}

#[tokio::test]
async fn the_same_message_id_through_two_daemons_is_delivered_once() {
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    let a = Daemon::start_on(&under, "", &config(&rx, "")).await;
    let b = Daemon::start_on(&under, "", &config(&rx, "")).await;
    for d in [&a, &b] {
        send(d, &group("dup", "g", 0)).await;
    }
    // A marker in the same group, through the other daemon: a second `dup` would come first.
    send(&a, &group("after", "g", 1)).await;
    let got = rx
        .wait_until(
            "/a",
            |got| got.iter().flat_map(items).any(|i| i.0 == "after"),
            "the marker",
        )
        .await;
    let dup = got.iter().flat_map(items).filter(|i| i.0 == "dup").count();
    assert_eq!(dup, 1, "delivered once whichever daemon took it");
}

#[tokio::test]
async fn a_429_seen_by_one_daemon_pauses_every_daemon() {
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    rx.script(
        "/a",
        vec![Answer::status(429).with_header("retry-after", "2")],
    );
    let c = config(&rx, "batch = { max_events = 1, max_wait = \"0ms\" }");
    let a = Daemon::start_on(&under, "", &c).await;
    let b = Daemon::start_on(&under, "", &c).await;
    settled(&[&a, &b], 2).await;
    send(&a, &group("first", "g0", 0)).await;
    let first = rx.wait_for("/a", 1).await[0].at;
    // Both daemons show the pause, whichever read the 429.
    for d in [&a, &b] {
        within(common::DEADLINE, "the pause on every daemon", async || {
            let (_, s) = d.get("/v1/destinations").await;
            (s["destinations"][0]["state"] == "paused").then_some(())
        })
        .await;
    }
    // Calls in twenty groups, through both daemons: partitions of each.
    for i in 1..=20 {
        let d = if i % 2 == 0 { &a } else { &b };
        let call = group(&format!("c{i}"), &format!("g{i}"), 0);
        send(d, &call).await;
    }
    let got = rx.wait_for("/a", 22).await;
    for c in &got[1..] {
        let after = c.at.duration_since(first);
        assert!(
            after >= Duration::from_secs(2),
            "a request came {after:?} after the 429"
        );
    }
}

#[tokio::test]
async fn the_rate_limit_holds_for_three_daemons_together() {
    const CALLS: usize = 40;
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    let c = config(
        &rx,
        "rate_limit = { requests_per_second = 5, burst = 1 }\nbatch = { max_events = 1, max_wait = \"0ms\" }",
    );
    let daemons = [
        Daemon::start_on(&under, "", &c).await,
        Daemon::start_on(&under, "", &c).await,
        Daemon::start_on(&under, "", &c).await,
    ];
    settled(&daemons.iter().collect::<Vec<_>>(), 3).await;
    let calls: Vec<Value> = (0..CALLS)
        .map(|i| group(&format!("r{i}"), &format!("g{i}"), 0))
        .collect();
    assert_eq!(
        daemons[0]
            .post("/v1/batch", Some(KEY), &json!({"batch": calls}))
            .await
            .0,
        200
    );
    let got = rx.wait_for("/a", CALLS).await;
    let span = got[CALLS - 1].at.duration_since(got[0].at).as_secs_f64();
    let rate = (CALLS - 1) as f64 / span;
    println!("{CALLS} requests through three daemons in {span:.2} s: {rate:.2}/s against 5/s");
    // At most 10% over the configured rate, all daemons together (one alone would allow 5/s,
    // three 15/s).
    assert!(rate <= 5.5, "{rate:.2} requests/s with a limit of 5/s");
}

#[tokio::test]
async fn roles_split_ingest_from_delivery() {
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    let front = Daemon::start_role(&under, "ingest", "", &config(&rx, "")).await;
    let back = Daemon::start_role(&under, "deliver", "", &config(&rx, "")).await;
    // The delivering daemon has no ingest endpoints; the ingesting one delivers nothing.
    let (status, _) = back.post("/v1/group", Some(KEY), &group("x", "g", 0)).await;
    assert_eq!(status, 404);
    send(&front, &group("via-front", "g", 0)).await;
    rx.wait_for("/a", 1).await;
    // Both are members; only the delivering one owns partitions.
    let members = within(
        common::DEADLINE,
        "the delivering daemon to own partitions",
        async || {
            let members = cluster(&back).await["members"].as_array()?.clone();
            let owning = members
                .iter()
                .filter(|m| m["owns"].as_array().is_some_and(|o| !o.is_empty()));
            (owning.count() == 1).then_some(members)
        },
    )
    .await;
    let role = |m: &Value| m["role"].as_str().unwrap().to_string();
    let roles: HashSet<String> = members.iter().map(role).collect();
    assert_eq!(
        roles,
        HashSet::from(["ingest".to_string(), "deliver".to_string()])
    );
    let owner = members
        .iter()
        .find(|m| !m["owns"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(owner["role"], "deliver");
    assert!(front.logs().contains("spool on JetStream"));
    let metrics = back.get_text("/metrics").await;
    for line in [
        "switchyard_cluster_members{role=\"deliver\"} 1",
        "switchyard_cluster_members{role=\"ingest\"} 1",
        "switchyard_partitions_owned 4",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_losing_a_node_under_load_loses_nothing() {
    const GROUPS: usize = 20;
    const PER_GROUP: usize = 50;
    let mut nodes = Nats::cluster();
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let rx = Receiver::start().await;
    let table = nats::spool_table(&urls.join(","), "replicas = 3");
    let c = format!(
        "{}\n{table}",
        config(&rx, "batch = { max_events = 50, max_wait = \"5ms\" }")
    );
    let a = Daemon::start_raw(&with_listen(&c)).await;
    let b = Daemon::start_raw(&with_listen(&c)).await;
    settled(&[&a, &b], 2).await;
    let targets = Arc::new(Mutex::new(vec![a.url(""), b.url("")]));
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let loading = tokio::spawn(load(targets, GROUPS, PER_GROUP, 2, sent.clone()));
    within(
        common::DEADLINE,
        "a third of the load accepted",
        async || (sent.lock().unwrap().len() >= GROUPS * PER_GROUP / 3).then_some(()),
    )
    .await;
    nodes[0].kill9();
    within(
        TAKEOVER,
        "two thirds of the load accepted with a node down",
        async || (sent.lock().unwrap().len() >= 2 * GROUPS * PER_GROUP / 3).then_some(()),
    )
    .await;
    nodes[0].restart();
    loading.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let duplicates = all_delivered_in_order(&rx, "/a", &sent, PER_GROUP, &[&a, &b]).await;
    println!(
        "{} calls, {duplicates} delivered twice around the node's loss",
        sent.len()
    );
}

/// A full config for `Daemon::start_raw`: ingest on a free port, the admin token the
/// harness uses.
fn with_listen(rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\n[admin]\ntoken = \"{}\"\n\n{rest}",
        common::ADMIN_TOKEN
    )
}

/// `switchyard run` against a server that is not there, or with a wrong token, stops at once
/// naming the URL (never the token); the right token (from the environment) works and never
/// reaches the logs.
#[tokio::test]
async fn the_server_is_named_when_it_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    // `switchyard run` on a whole config text; the process's output once it has stopped.
    let run = |text: String, env: &[(&str, &str)]| {
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(common::binary());
        cmd.args(["run", "--config"]).arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let rx = Receiver::start().await;
    let nowhere = format!("nats://127.0.0.1:{}", nats::free_port());
    let out = run(
        format!("{}{}", config(&rx, ""), nats::spool_table(&nowhere, "")),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot reach the JetStream server at {nowhere}")),
        "{err}"
    );

    // Messages the server could never take (its max_payload is 1 MB by default).
    let server = Nats::start();
    let big = format!(
        "{}{}",
        config(&rx, ""),
        nats::spool_table(&server.url(), "")
    );
    let text = with_listen(&big).replace(
        "shutdown_grace = \"2s\"",
        "shutdown_grace = \"2s\"\nmax_message_bytes = 2000000\nmax_request_bytes = 4000000",
    );
    let out = run(text, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "server.max_message_bytes (2000000) does not fit the NATS server's max_payload (1048576"
        ),
        "{err}"
    );
    drop(server);

    const TOKEN: &str = "nats-token-s3cr3t-7f2a";
    let server = Nats::start_with(&["--auth", TOKEN]);
    let table = nats::spool_table(&server.url(), "token = \"${NATS_TOKEN}\"");
    let out = run(
        with_listen(&format!("{}{table}", config(&rx, ""))),
        &[("NATS_TOKEN", "wrong-token-123456")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&server.url()) && !err.contains("wrong-token-123456"),
        "{err}"
    );

    let path = dir.path().join("ok.toml");
    std::fs::write(&path, with_listen(&format!("{}{table}", config(&rx, "")))).unwrap();
    let d = Daemon::spawn(
        tempfile::tempdir().unwrap(),
        &path,
        &[("NATS_TOKEN", TOKEN)],
    )
    .await;
    send(&d, &group("tok", "g", 0)).await;
    rx.wait_for("/a", 1).await;
    let (_, config_view) = d.get("/admin/v1/config").await;
    assert!(!d.logs().contains(TOKEN) && !config_view.to_string().contains(TOKEN));
}

/// Removing a destination from the config (a reload) deletes its consumers on the server:
/// nothing is kept for a destination nobody reads.
#[tokio::test]
async fn a_removed_destination_leaves_no_consumers() {
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    let second = format!(
        "[[destination]]\nname = \"B\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        rx.url("/b")
    );
    let d = Daemon::start_on(&under, "", &format!("{}{second}", config(&rx, ""))).await;
    let js = async_nats::jetstream::new(
        async_nats::connect(under.nats.as_ref().unwrap().url())
            .await
            .unwrap(),
    );
    let stream = cluster(&d).await["stream"].as_str().unwrap().to_string();
    let consumers = async || -> Vec<String> {
        use futures_util::StreamExt;
        let s = js.get_stream(&stream).await.unwrap();
        let names: Vec<_> = s.consumer_names().collect().await;
        let mut names: Vec<String> = names.into_iter().map(Result::unwrap).collect();
        names.sort();
        names
    };
    let before = consumers().await;
    assert_eq!(
        before.iter().filter(|n| n.contains("_B_")).count(),
        4,
        "{before:?}"
    );
    // The config without B, then SIGHUP.
    let path = d.config_path();
    let text = std::fs::read_to_string(&path).unwrap().replace(&second, "");
    std::fs::write(&path, text).unwrap();
    let (status, report) = d.admin_post("/admin/v1/reload", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    let after = consumers().await;
    assert!(after.iter().all(|n| !n.contains("_B_")), "{after:?}");
    assert_eq!(after.len(), 4, "A's consumers stay: {after:?}");
    send(&d, &group("still", "g", 0)).await;
    rx.wait_for("/a", 1).await;
}

/// Partitions handed over while calls flow: a second daemon joins under load (the first hands
/// it half the partitions), then the first stops cleanly (the second takes the rest). Every
/// call arrives, and each group's last update is its newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_handed_over_under_load_keep_every_call_and_its_order() {
    const GROUPS: usize = 24;
    const PER_GROUP: usize = 60;
    let under = Under::new(Backend::JetStream);
    let rx = Receiver::start().await;
    // A destination slow enough that batches are in flight when partitions move.
    rx.set_default("/a", Answer::status(200).delayed(Duration::from_millis(30)));
    let c = config(
        &rx,
        "batch = { max_events = 20, max_wait = \"5ms\" }\nconcurrency = 2",
    );
    let mut a = Daemon::start_on(&under, "", &c).await;
    settled(&[&a], 1).await;
    let targets = Arc::new(Mutex::new(vec![a.url("")]));
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let loading = tokio::spawn(load(targets.clone(), GROUPS, PER_GROUP, 3, sent.clone()));
    let part = |n: usize| {
        let sent = sent.clone();
        async move {
            within(common::DEADLINE, "calls accepted", async || {
                (sent.lock().unwrap().len() >= n).then_some(())
            })
            .await
        }
    };
    part(GROUPS * PER_GROUP / 4).await;
    let b = Daemon::start_on(&under, "", &c).await;
    targets.lock().unwrap().push(b.url(""));
    settled(&[&a, &b], 2).await;
    part(GROUPS * PER_GROUP / 2).await;
    targets.lock().unwrap().retain(|t| *t != a.url(""));
    assert!(a.terminate().await.success());
    loading.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let duplicates = all_delivered_in_order(&rx, "/a", &sent, PER_GROUP, &[&b]).await;
    println!(
        "{} calls, {duplicates} delivered twice across two handovers",
        sent.len()
    );
    assert!(a.logs().contains("partition handed over to another daemon"));
}
