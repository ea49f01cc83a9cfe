//! Mixpanel and Salesforce end to end: the real daemon against a capture server playing the
//! vendor APIs, Salesforce's OAuth token endpoint included.

mod common;
#[path = "adapters/dead_letters.rs"]
mod dead_letters;
#[path = "adapters/mixpanel.rs"]
mod mixpanel;
#[path = "adapters/salesforce.rs"]
mod salesforce;

use std::time::Instant;

use common::{Answer, Backend, Captured, DEADLINE, Daemon, Receiver, Under};
use serde_json::{Value, json};

const KEY: &str = "test-write-key";
const TOKEN_PATH: &str = "/services/oauth2/token";
const UPSERT_PATH: &str = "/services/data/v62.0/composite/sobjects/Account/Segment_Group_Id__c";

fn source() -> String {
    format!("[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n")
}

const FAST_RETRY: &str = "retry = { initial_backoff = \"10ms\", max_backoff = \"50ms\" }";

fn mixpanel(rx: &Receiver, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"Mixpanel\"\ntype = \"mixpanel\"\nproject_token = \"mp-secret-token\"\ngroup_key = \"company_id\"\napi_host = \"{}\"\n{FAST_RETRY}\n{extra}\n",
        rx.url("")
    )
}

/// `instance_url` points nowhere: every REST call must go to the token answer's instance.
fn salesforce(rx: &Receiver, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"Salesforce\"\ntype = \"salesforce\"\ninstance_url = \"http://127.0.0.1:9\"\nexternal_id_field = \"Segment_Group_Id__c\"\n{FAST_RETRY}\n{extra}\n[destination.auth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_secret = \"sf-client-secret\"\n",
        rx.url(TOKEN_PATH)
    )
}

fn token_answer(rx: &Receiver, token: &str) -> Answer {
    Answer::json(
        200,
        json!({"access_token": token, "instance_url": rx.url(""), "token_type": "Bearer", "issued_at": "1714564800000"}),
    )
}

/// Salesforce plays a vendor that accepts every record (results beyond the records sent are ignored).
fn accept_all(rx: &Receiver) {
    rx.set_default(TOKEN_PATH, token_answer(rx, "tok-1"));
    rx.set_default(
        UPSERT_PATH,
        Answer::json(
            200,
            json!(vec![
                json!({"id": "001", "success": true, "errors": []});
                10
            ]),
        ),
    );
    rx.set_default(
        "/groups",
        Answer::json(200, json!({"error": null, "status": 1})),
    );
    rx.set_default(
        "/engage",
        Answer::json(200, json!({"error": null, "status": 1})),
    );
}

fn call(group: &str, user: Option<&str>, traits: Value) -> Value {
    let mut c = json!({"type": "group", "groupId": group, "messageId": format!("m-{group}"), "traits": traits});
    match user {
        Some(u) => c["userId"] = json!(u),
        None => c["anonymousId"] = json!("anon"),
    }
    c
}

async fn send(d: &Daemon, calls: Vec<Value>) {
    let (status, body) = d
        .post("/v1/batch", Some(KEY), &json!({"batch": calls}))
        .await;
    assert_eq!((status, body), (200, json!({"success": true})));
}

/// Nothing left to deliver; `dead` dead letters.
fn settled(dead: u64) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["pending"] == 0 && e["in_flight"] == 0 && e["dead_letters"] == dead
}

fn group_ids(c: &Captured) -> Vec<String> {
    let body = c.json();
    let records = body
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| body.as_array().cloned().unwrap());
    records
        .iter()
        .map(|r| {
            r.get("Segment_Group_Id__c")
                .or_else(|| r.get("$group_id"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn dead_letter_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("dead-lettered"))
        .collect()
}

async fn request_limit_pauses_salesforce_only(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let limited = json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]);
    rx.script(UPSERT_PATH, vec![Answer::json(403, limited)]);
    let config = format!(
        "{}{}{}",
        source(),
        salesforce(&rx, "request_limit_pause = \"3s\""),
        mixpanel(&rx, "")
    );
    let d = Daemon::start_on(&under, "", &config).await;

    send(&d, vec![call("g-1", Some("u-1"), json!({"name": "One"}))]).await;
    rx.wait_for(UPSERT_PATH, 1).await;
    let paused = d
        .wait_status("Salesforce", |e| e["paused_until"].is_string(), "paused")
        .await;
    assert_eq!(paused["dead_letters"], 0);
    // Mixpanel keeps delivering while Salesforce rests.
    send(&d, vec![call("g-2", Some("u-2"), json!({"name": "Two"}))]).await;
    rx.wait_until(
        "/groups",
        |got| {
            got.iter()
                .any(|c| group_ids(c).contains(&"g-2".to_string()))
        },
        "g-2 at Mixpanel",
    )
    .await;
    let mp = d
        .wait_status("Mixpanel", settled(0), "Mixpanel delivered both")
        .await;
    assert_eq!(mp["paused_until"], Value::Null);
    assert_eq!(
        rx.requests(UPSERT_PATH).len(),
        1,
        "Salesforce was called during its pause"
    );
    // After the pause both calls reach Salesforce.
    d.wait_status(
        "Salesforce",
        settled(0),
        "Salesforce delivered both after the pause",
    )
    .await;
    let sent: Vec<String> = rx
        .requests(UPSERT_PATH)
        .iter()
        .skip(1)
        .flat_map(group_ids)
        .collect();
    assert!(
        sent.contains(&"g-1".to_string()) && sent.contains(&"g-2".to_string()),
        "{sent:?}"
    );
}

#[tokio::test]
async fn dry_run_logs_requests_and_sends_nothing() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    let config = format!(
        "{}{}{}",
        source(),
        salesforce(&rx, "dry_run = true"),
        mixpanel(&rx, "dry_run = true")
    );
    let d = Daemon::start("", &config).await;

    send(
        &d,
        vec![call("g-dry", Some("u-1"), json!({"name": "Dry Run Inc"}))],
    )
    .await;
    d.wait_status("Salesforce", settled(0), "dry run counted as delivered")
        .await;
    d.wait_status("Mixpanel", settled(0), "dry run counted as delivered")
        .await;
    let logs = d.wait_for_log("/engage?verbose=1").await;
    let shown: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("dry run: would send"))
        .collect();
    assert_eq!(shown.len(), 3, "{logs}");
    assert!(shown.iter().any(|l| l.contains("destination=Salesforce")
        && l.contains("PATCH")
        && l.contains("Segment_Group_Id__c")));
    assert!(shown.iter().any(|l| l.contains("destination=Mixpanel")
        && l.contains("/groups?verbose=1")
        && l.contains("Dry Run Inc")
        && l.contains(r#""$token":"***""#)));
    // Credentials are added only when sending: no Authorization header to show, or to leak.
    assert!(
        !shown
            .iter()
            .any(|l| l.to_lowercase().contains("authorization"))
    );
    // Nothing reached the vendor, not even the token endpoint, and no secret reached the logs.
    for path in [TOKEN_PATH, UPSERT_PATH, "/groups", "/engage"] {
        assert!(
            rx.requests(path).is_empty(),
            "{path} was called in a dry run"
        );
    }
    assert!(
        !logs.contains("mp-secret-token") && !logs.contains("sf-client-secret"),
        "{logs}"
    );
}

#[test]
fn example_configs_build() {
    let env = |name: &str| Some(format!("example-{name}"));
    for file in ["examples/mixpanel.toml", "examples/salesforce.toml"] {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + file)
                .unwrap();
        let config = switchyard::config::load_with_env(&text, &env)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        switchyard::server::Plan::new(config).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

on_both_spools!(request_limit_pauses_salesforce_only,);
