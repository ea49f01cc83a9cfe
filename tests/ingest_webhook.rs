//! The spine end to end: ingest → normalize → route → webhook, through the real daemon.

mod common;

use common::{ADMIN_TOKEN, Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "test-write-key";

fn hook(name: &str, receiver: &Receiver, path: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n{extra}\n",
        receiver.url(path)
    )
}

fn source() -> String {
    format!("[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n")
}

fn traits_every_spelling() -> Value {
    json!({
        "Name": "Acme", "created_at": "2024-05-01T12:00:00+02:00", "EMPLOYEES": "329",
        "e mail": "ops@acme.test", "Phone": "+1 555", "web_site": "https://acme.test",
        "Industry": "Rockets", "DESCRIPTION": "d", "avatar": "https://a", "P-L-A-N": "pro", "ID": "acme-1",
        "ADDRESS": {"Street": "1 Main", "CITY": "Zürich", "postal_code": "8001", "State": "ZH", "country": "CH"},
        "customTrait": {"Keep Me": 1}
    })
}

fn canonical_traits() -> Value {
    json!({
        "name": "Acme", "createdAt": "2024-05-01T10:00:00.000Z", "employees": 329,
        "email": "ops@acme.test", "phone": "+1 555", "website": "https://acme.test",
        "industry": "Rockets", "description": "d", "avatar": "https://a", "plan": "pro", "id": "acme-1",
        "address": {"street": "1 Main", "city": "Zürich", "postalCode": "8001", "state": "ZH", "country": "CH"},
        "customTrait": {"Keep Me": 1}
    })
}

#[tokio::test]
async fn group_call_arrives_normalized_and_signed() {
    let rx = Receiver::start().await;
    let config = format!(
        "{}{}",
        source(),
        hook("Hook", &rx, "/hook", "signing_secret = \"s3cret\"")
    );
    let d = Daemon::start("", &config).await;

    let (status, body) = d
        .post("/v1/group", Some(KEY), &json!({"userId": "u1", "groupId": 42, "messageId": "m-single", "traits": traits_every_spelling()}))
        .await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let got = rx.wait_for("/hook", 1).await;
    let msg = got[0].json();
    assert_eq!(msg["type"], "group");
    assert_eq!(msg["groupId"], "42");
    assert_eq!(msg["messageId"], "m-single");
    assert_eq!(msg["traits"], canonical_traits());
    assert!(msg.get("receivedAt").is_some());
    let sig = got[0].header("x-signature").unwrap();
    assert_eq!(sig, hmac_sha1_hex(b"s3cret", &got[0].body));

    // The same inside a batch, with createdAt as Unix seconds and milliseconds.
    let batch = json!({"batch": [
        {"type": "group", "userId": "u1", "groupId": "g-s", "traits": {"createdAt": 1714557600}},
        {"type": "group", "userId": "u1", "groupId": "g-ms", "traits": {"Created At": "1714557600000"}},
        {"type": "group", "userId": "u1", "groupId": "g-all", "traits": traits_every_spelling()},
    ], "sentAt": "2024-05-01T12:00:00Z"});
    let (status, body) = d.post("/v1/batch", Some(KEY), &batch).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let got = rx.wait_for("/hook", 4).await;
    let by_group = |g: &str| {
        got.iter()
            .map(|c| c.json())
            .find(|m| m["groupId"] == g)
            .unwrap()
    };
    assert_eq!(
        by_group("g-s")["traits"]["createdAt"],
        "2024-05-01T10:00:00.000Z"
    );
    assert_eq!(
        by_group("g-ms")["traits"]["createdAt"],
        "2024-05-01T10:00:00.000Z"
    );
    assert_eq!(by_group("g-all")["traits"], canonical_traits());
    assert_eq!(by_group("g-all")["sentAt"], "2024-05-01T12:00:00Z");
    for c in &got {
        assert_eq!(
            c.header("x-signature").unwrap(),
            hmac_sha1_hex(b"s3cret", &c.body)
        );
    }

    // What ingest does not normalize reaches the destination as the sender wrote it.
    let context = r#"{"ip" : "1.2.3.4", "n": 1.50e2, "big": 123456789012345678901234567890}"#;
    let raw = format!(
        r#"{{"userId":"u1","groupId":"g-raw","context":{context},"traits":{{"Name":"Raw"}}}}"#
    );
    let (status, _) = d
        .post_raw("/v1/group", Some(KEY), raw.into_bytes(), &[])
        .await;
    assert_eq!(status, 200);
    let got = rx.wait_for("/hook", 5).await;
    let call = got.iter().find(|c| c.json()["groupId"] == "g-raw").unwrap();
    let text = std::str::from_utf8(&call.body).unwrap();
    assert!(text.contains(&format!(r#""context":{context}"#)), "{text}");
    assert_eq!(call.json()["traits"], json!({"name": "Raw"}));
}

fn hmac_sha1_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn integrations_map_routes_between_two_webhooks() {
    let rx = Receiver::start().await;
    let config = format!(
        "{}{}{}",
        source(),
        hook("Hook A", &rx, "/a", "aliases = [\"Alpha Hook\"]"),
        hook("Hook B", &rx, "/b", "")
    );
    let d = Daemon::start("", &config).await;
    // (label, integrations, reaches A, reaches B)
    let cases: Vec<(&str, Value, bool, bool)> = vec![
        ("absent", Value::Null, true, true),
        ("all-false", json!({"All": false}), false, false),
        (
            "all-false-a-true",
            json!({"All": false, "Hook A": true}),
            true,
            false,
        ),
        ("a-false", json!({"Hook A": false}), false, true),
        (
            "a-object",
            json!({"hook a": {"x": 1}, "All": false}),
            true,
            false,
        ),
        ("alias-false", json!({"alpha hook": false}), false, true),
        (
            "alias-true",
            json!({"ALL": false, "Alpha Hook": true}),
            true,
            false,
        ),
    ];
    let mut batch = Vec::new();
    for (label, integrations, _, _) in &cases {
        let mut m = json!({"type": "group", "userId": "u", "groupId": label, "messageId": label});
        if !integrations.is_null() {
            m["integrations"] = integrations.clone();
        }
        batch.push(m);
    }
    // A last message to both, so that once it has arrived everywhere the others have too
    // (one worker per destination delivers in order).
    batch.push(
        json!({"type": "group", "userId": "u", "groupId": "zz-last", "messageId": "zz-last"}),
    );
    let (status, _) = d
        .post("/v1/batch", Some(KEY), &json!({"batch": batch}))
        .await;
    assert_eq!(status, 200);
    let ids = |path: &str| -> Vec<String> {
        rx.requests(path)
            .iter()
            .map(|c| c.json()["messageId"].as_str().unwrap().to_string())
            .collect()
    };
    for path in ["/a", "/b"] {
        rx.wait_until(
            path,
            |got| got.iter().any(|c| c.json()["messageId"] == "zz-last"),
            "the last message",
        )
        .await;
    }
    let (a, b) = (ids("/a"), ids("/b"));
    for (label, _, to_a, to_b) in &cases {
        assert_eq!(
            a.contains(&label.to_string()),
            *to_a,
            "{label} at Hook A: {a:?}"
        );
        assert_eq!(
            b.contains(&label.to_string()),
            *to_b,
            "{label} at Hook B: {b:?}"
        );
    }
    // Per-message options travel with the message (the webhook sends it whole).
    let with_options = rx
        .requests("/a")
        .into_iter()
        .map(|c| c.json())
        .find(|m| m["messageId"] == "a-object")
        .unwrap();
    assert_eq!(with_options["integrations"]["hook a"], json!({"x": 1}));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_valid_batch_messages_still_arrive() {
    let rx = Receiver::start().await;
    let config = format!("{}{}", source(), hook("Hook", &rx, "/hook", ""));
    let d = Daemon::start(
        "max_message_bytes = 2048\nmax_request_bytes = 65536\nmax_batch_messages = 50",
        &config,
    )
    .await;
    let group = json!({"userId": "u", "groupId": "g"});

    let (s, b) = d
        .post_raw(
            "/v1/group",
            Some(KEY),
            b"{\"userId\": \"u\",\n  \"groupId\": }".to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["code"], "invalid_json");
    assert!(
        b["message"].as_str().unwrap().contains("line 2, column"),
        "{b}"
    );

    let (s, b) = d
        .post_raw("/v1/batch", Some(KEY), b"[1,2]".to_vec(), &[])
        .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("not_an_object")));

    let big = json!({"userId": "u", "groupId": "g", "traits": {"blob": "x".repeat(4096)}});
    let (s, b) = d.post("/v1/group", Some(KEY), &big).await;
    assert_eq!(s, 413);
    assert!(
        b["message"].as_str().unwrap().contains("max_message_bytes"),
        "{b}"
    );

    let huge = json!({"batch": (0..40).map(|i| json!({"type": "group", "userId": "u", "groupId": i, "traits": {"blob": "x".repeat(1800)}})).collect::<Vec<_>>()});
    let (s, b) = d.post("/v1/batch", Some(KEY), &huge).await;
    assert_eq!(s, 413);
    assert!(
        b["message"].as_str().unwrap().contains("max_request_bytes"),
        "{b}"
    );

    let many = json!({"batch": (0..51).map(|i| json!({"type": "group", "userId": "u", "groupId": i})).collect::<Vec<_>>()});
    let (s, b) = d.post("/v1/batch", Some(KEY), &many).await;
    assert_eq!(s, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("max_batch_messages is 50"),
        "{b}"
    );

    for (body, want) in [
        (
            json!({"sentAt": "2024-05-01T00:00:00Z"}),
            "batch is required",
        ),
        (
            json!({"batch": {"type": "group"}}),
            "batch must be an array of messages",
        ),
    ] {
        let (s, b) = d.post("/v1/batch", Some(KEY), &body).await;
        assert_eq!((s, b["code"].as_str()), (400, Some("invalid_batch")), "{b}");
        assert!(b["message"].as_str().unwrap().starts_with(want), "{b}");
    }
    // A field stored as written is still checked as a full parse checks it.
    let lone = r#"{"type": "group", "userId": "u", "groupId": "g", "context": {"x": "\ud800"}}"#;
    let full = serde_json::from_str::<Value>(lone).unwrap_err().to_string();
    let batch = format!(r#"{{"batch": [{lone}]}}"#);
    let (s, b) = d
        .post_raw("/v1/batch", Some(KEY), batch.into_bytes(), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["rejected"][0]["error"], full, "{b}");

    let (s, b) = d
        .post("/v1/group", Some(KEY), &json!({"userId": "u"}))
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("groupId is required"))
    );
    let (s, b) = d
        .post("/v1/group", Some(KEY), &json!({"groupId": "g"}))
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("userId or anonymousId is required"))
    );
    let (s, b) = d
        .post(
            "/v1/group",
            Some(KEY),
            &json!({"userId": "u", "groupId": "g", "traits": "x"}),
        )
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("traits must be an object"))
    );

    let (s, b) = d.post("/v1/group", Some("wrong-key"), &group).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("invalid_write_key")));
    let (s, b) = d.post("/v1/group", None, &group).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("missing_write_key")));
    // writeKey in the body instead of Basic auth, and a bare `key` without the colon.
    let (s, _) = d
        .post(
            "/v1/group",
            None,
            &json!({"userId": "u", "groupId": "body-key", "writeKey": KEY}),
        )
        .await;
    assert_eq!(s, 200);
    let bare = format!("Basic {}", base64_encode(KEY));
    let (s, _) = d
        .post_raw(
            "/v1/group",
            None,
            json!({"userId": "u", "groupId": "bare-key"})
                .to_string()
                .into_bytes(),
            &[("authorization", &bare)],
        )
        .await;
    assert_eq!(s, 200);

    // A mixed batch: valid messages are accepted, invalid ones listed and kept.
    let mixed = json!({"batch": [
        {"type": "group", "userId": "u", "groupId": "ok-1"},
        {"type": "group", "userId": "u"},
        {"type": "group", "groupId": "g"},
        {"type": "group", "userId": "u", "groupId": "g", "traits": [1]},
        {"type": "group", "userId": "u", "groupId": "ok-2"},
    ]});
    let (s, b) = d.post("/v1/batch", Some(KEY), &mixed).await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"success": true, "rejected": [
            {"index": 1, "error": "groupId is required"},
            {"index": 2, "error": "userId or anonymousId is required"},
            {"index": 3, "error": "traits must be an object"},
        ]})
    );
    let got = rx
        .wait_until(
            "/hook",
            |got| {
                got.iter()
                    .filter(|c| c.json()["groupId"].as_str().unwrap().starts_with("ok-"))
                    .count()
                    == 2
            },
            "ok-1 and ok-2",
        )
        .await;
    let groups: Vec<String> = got
        .iter()
        .map(|c| c.json()["groupId"].as_str().unwrap().to_string())
        .collect();
    assert!(
        groups.contains(&"body-key".to_string()) && groups.contains(&"bare-key".to_string()),
        "{groups:?}"
    );
    d.wait_for_log("messages refused inside batches").await;
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    use std::io::Write;
    let rx = Receiver::start().await;
    let config = format!("{}{}", source(), hook("Hook", &rx, "/hook", ""));
    let d = Daemon::start("", &config).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        json!({"batch": [{"type": "group", "userId": "u", "groupId": "zipped"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let (s, _) = d
        .post_raw(
            "/v1/batch",
            Some(KEY),
            gz.finish().unwrap(),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(s, 200);
    let got = rx.wait_for("/hook", 1).await;
    assert_eq!(got[0].json()["groupId"], "zipped");
}

#[tokio::test]
async fn a_dry_run_log_hides_credentials_in_the_url() {
    let config = format!(
        "{}[[destination]]\nname = \"Dry\"\ntype = \"webhook\"\nurl = \"http://user:PASS@127.0.0.1:9/dry?token=SECRET&team=growth\"\ndry_run = true\n",
        source()
    );
    let d = Daemon::start("", &config).await;
    let (status, _) = d
        .post(
            "/v1/group",
            Some(KEY),
            &json!({"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}}),
        )
        .await;
    assert_eq!(status, 200);
    let logs = d.wait_for_log("dry run: would send").await;
    let line = logs
        .lines()
        .find(|l| l.contains("dry run: would send"))
        .unwrap();
    assert!(
        line.contains("url=http://user:***@127.0.0.1:9/dry?token=***&team=growth"),
        "{line}"
    );
    assert!(!logs.contains("PASS") && !logs.contains("SECRET"), "{logs}");
}

#[tokio::test]
async fn wrong_methods_and_encodings_answer_json() {
    let rx = Receiver::start().await;
    let d = Daemon::start("", &format!("{}{}", source(), hook("A", &rx, "/a", ""))).await;
    let (status, body) = d
        .post_raw(
            "/v1/batch",
            Some(KEY),
            b"{}".to_vec(),
            &[("content-encoding", "br")],
        )
        .await;
    assert_eq!(status, 415);
    assert_eq!(body["code"], "unsupported_encoding", "{body}");
    assert_eq!(body["success"], false);
    for path in ["/v1/batch", "/health"] {
        let answer = reqwest::Client::new()
            .put(d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed", "{path}: {body}");
    }
}

/// Bytes in a directory's files (the spool: its database, WAL and lock).
fn size_on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A client with a write key sends far more refused input (messages without a user, and
/// messages over `max_message_bytes`) than `max_refused_bytes`: the spool stays small, each
/// kept dead letter holds only the start of its body, the log has a few summary lines rather
/// than one per message, and the valid messages of the same batches are delivered.
#[tokio::test]
async fn refused_input_cannot_fill_the_disk() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_message_bytes = 100000\nmax_request_bytes = 4000000\n\n[spool]\npath = \"{}\"\nmax_refused_bytes = 200000\n\n{}{}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n",
        spool.display(),
        source(),
        hook("Hook", &rx, "/hook", "")
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &config).unwrap();
    let d = Daemon::spawn(dir, &path, &[]).await;

    let filler = "x".repeat(31_000);
    let huge = "y".repeat(490_000);
    let (mut refused, batches) = (0, 40);
    for b in 0..batches {
        let mut batch: Vec<Value> = (0..15)
            .map(|i| json!({"type": "group", "groupId": "g", "messageId": format!("bad-{b}-{i}"), "traits": {"filler": filler}}))
            .collect();
        batch.push(json!({"type": "group", "groupId": "g", "userId": "u", "messageId": format!("huge-{b}"), "traits": {"filler": huge}}));
        batch.push(
            json!({"type": "group", "groupId": "g", "userId": "u", "messageId": format!("ok-{b}")}),
        );
        let (status, answer) = d
            .post("/v1/batch", Some(KEY), &json!({"batch": batch}))
            .await;
        assert_eq!(status, 200, "{answer}");
        refused += answer["rejected"].as_array().unwrap().len();
    }
    assert_eq!(refused, batches * 16);
    // Over 25 MB was refused; 200 kB of it may be kept.
    let kept = size_on_disk(&spool);
    assert!(kept < 3_000_000, "the spool holds {kept} bytes");
    rx.wait_for("/hook", batches).await;

    let listed = d.dlq(&["list", "--reason", "invalid", "--json"]);
    let letters: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert!(
        !letters.is_empty() && letters.len() < refused,
        "{} kept",
        letters.len()
    );
    let first = d.dlq(&["show", &letters[0]["id"].to_string()]);
    let shown: Value = serde_json::from_str(&first).unwrap();
    let body = shown["message"]
        .as_str()
        .expect("a cut body is kept as text");
    assert!(body.len() <= 4096, "{} bytes kept", body.len());
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains("body cut to its first"),
        "{shown}"
    );
    let metrics = d.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_refused_not_kept_total{source=\"web\"}"),
        "{metrics}"
    );
    let logs = d.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("messages refused inside batches"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines about refused messages:\n{logs}"
    );
}
