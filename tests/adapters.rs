//! Mixpanel and Salesforce end to end: the real daemon against a capture server playing the
//! vendor APIs, Salesforce's OAuth token endpoint included.

mod common;

use std::time::Instant;

use common::{Answer, Captured, DEADLINE, Daemon, Receiver};
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

/// Poll `GET /v1/destinations` until `name`'s entry satisfies `done`.
async fn wait_status(d: &Daemon, name: &str, done: impl Fn(&Value) -> bool, what: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, list) = d.get("/v1/destinations").await;
        let entry = list["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap();
        if done(&entry) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}: {what}; last status {entry}\nlogs:\n{}",
            d.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Nothing left to deliver; `dead` dead letters.
fn settled(dead: u64) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["pending"] == 0 && e["in_flight"] == 0 && e["dead_letters"] == dead
}

async fn wait_log(d: &Daemon, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let logs = d.logs();
        if logs.contains(needle) {
            return logs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for log `{needle}`; logs:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
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

#[tokio::test]
async fn salesforce_settles_each_record_on_its_own() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    let results = json!([
        {"id": "001A", "success": true, "errors": [], "created": true},
        {"id": null, "success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]}]},
        {"id": null, "success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]},
    ]);
    rx.script(UPSERT_PATH, vec![Answer::json(200, results)]);
    let d = Daemon::start("", &format!("{}{}", source(), salesforce(&rx, ""))).await;

    send(
        &d,
        vec![
            call(
                "g-ok",
                Some("u-1"),
                json!({"name": "OK Inc", "employees": "329"}),
            ),
            call("g-bad", None, json!({"industry": "Rockets"})),
            call(
                "g-lock",
                None,
                json!({"name": "Locked Ltd", "address": {"postal_code": "8001"}}),
            ),
        ],
    )
    .await;
    let got = rx.wait_for(UPSERT_PATH, 2).await;
    assert_eq!(group_ids(&got[0]), ["g-ok", "g-bad", "g-lock"]);
    assert_eq!(got[0].method, "PATCH");
    assert_eq!(got[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(got[0].json()["allOrNone"], false);
    assert_eq!(
        got[0].json()["records"][0],
        json!({"attributes": {"type": "Account"}, "Segment_Group_Id__c": "g-ok", "Name": "OK Inc", "NumberOfEmployees": 329})
    );
    assert_eq!(got[0].json()["records"][2]["BillingPostalCode"], "8001");
    // Only the lock-failed record is sent again.
    assert_eq!(group_ids(&got[1]), ["g-lock"]);
    wait_status(
        &d,
        "Salesforce",
        settled(1),
        "two delivered, one dead letter",
    )
    .await;
    let logs = d.logs();
    let dead = dead_letter_lines(&logs);
    assert_eq!(dead.len(), 1, "{logs}");
    assert!(dead[0].contains("REQUIRED_FIELD_MISSING"), "{}", dead[0]);
    assert_eq!(rx.wait_for(UPSERT_PATH, 2).await.len(), 2);
    // One token for the whole run, asked for with the client-credentials form.
    let tokens = rx.requests(TOKEN_PATH);
    assert_eq!(tokens.len(), 1);
    let form = String::from_utf8_lossy(&tokens[0].body).into_owned();
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("client_id=cid"),
        "{form}"
    );
    assert!(
        !logs.contains("sf-client-secret") && !logs.contains("tok-1"),
        "{logs}"
    );
}

#[tokio::test]
async fn salesforce_token_expiring_mid_run_is_refreshed_once() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        TOKEN_PATH,
        vec![token_answer(&rx, "tok-1"), token_answer(&rx, "tok-2")],
    );
    let d = Daemon::start("", &format!("{}{}", source(), salesforce(&rx, ""))).await;

    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    rx.wait_for(UPSERT_PATH, 1).await;
    let expired =
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]);
    rx.script(UPSERT_PATH, vec![Answer::json(401, expired)]);
    send(&d, vec![call("g-2", None, json!({"name": "Two"}))]).await;

    let got = rx.wait_for(UPSERT_PATH, 3).await;
    let bearer: Vec<_> = got
        .iter()
        .map(|c| c.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(bearer, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(group_ids(&got[1]), group_ids(&got[2]));
    let status = wait_status(&d, "Salesforce", settled(0), "both delivered").await;
    assert_eq!(status["unhealthy"], Value::Null);
    assert_eq!(rx.requests(TOKEN_PATH).len(), 2);
    assert!(dead_letter_lines(&d.logs()).is_empty());
}

#[tokio::test]
async fn request_limit_pauses_salesforce_only() {
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
    let d = Daemon::start("", &config).await;

    send(&d, vec![call("g-1", Some("u-1"), json!({"name": "One"}))]).await;
    rx.wait_for(UPSERT_PATH, 1).await;
    let paused = wait_status(
        &d,
        "Salesforce",
        |e| e["paused_until"].is_string(),
        "paused",
    )
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
    let mp = wait_status(&d, "Mixpanel", settled(0), "Mixpanel delivered both").await;
    assert_eq!(mp["paused_until"], Value::Null);
    assert_eq!(
        rx.requests(UPSERT_PATH).len(),
        1,
        "Salesforce was called during its pause"
    );
    // After the pause both calls reach Salesforce.
    wait_status(
        &d,
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
async fn mixpanel_status_zero_is_dead_lettered() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        "/groups",
        vec![Answer::json(
            200,
            json!({"error": "Invalid group key company_id", "status": 0}),
        )],
    );
    let d = Daemon::start("", &format!("{}{}", source(), mixpanel(&rx, ""))).await;

    send(
        &d,
        vec![call(
            "g-1",
            Some("u-1"),
            json!({"name": "One", "createdAt": 1714557600}),
        )],
    )
    .await;
    let status = wait_status(&d, "Mixpanel", settled(1), "one dead letter").await;
    assert_eq!(status["unhealthy"], Value::Null);
    let groups = rx.requests("/groups");
    assert_eq!(groups.len(), 1, "a status:0 answer must not be retried");
    let update = &groups[0].json()[0];
    assert_eq!(update["$token"], "mp-secret-token");
    assert_eq!(
        update["$set"],
        json!({"$name": "One", "$created": "2024-05-01T10:00:00"})
    );
    let engage = rx.wait_for("/engage", 1).await;
    assert_eq!(
        engage[0].json(),
        json!([{"$token": "mp-secret-token", "$distinct_id": "u-1", "$union": {"company_id": ["g-1"]}}])
    );
    let logs = d.logs();
    let dead = dead_letter_lines(&logs);
    assert_eq!(dead.len(), 1, "{logs}");
    assert!(
        dead[0].contains("Invalid group key company_id"),
        "{}",
        dead[0]
    );
}

#[tokio::test]
async fn mixpanel_413_splits_the_batch() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    let too_big = json!({"code": 413, "error": "request exceeds max limit of 2097152 bytes", "status": "Payload Too Large"});
    rx.script("/groups", vec![Answer::json(413, too_big)]);
    let d = Daemon::start(
        "",
        &format!("{}{}", source(), mixpanel(&rx, "associate_user = false")),
    )
    .await;

    let ids = ["g-1", "g-2", "g-3", "g-4"];
    send(
        &d,
        ids.iter()
            .map(|g| call(g, None, json!({"name": g})))
            .collect(),
    )
    .await;
    let got = rx.wait_for("/groups", 3).await;
    assert_eq!(group_ids(&got[0]), ids);
    let halves: Vec<Vec<String>> = got[1..].iter().map(group_ids).collect();
    assert!(halves.iter().all(|h| h.len() == 2), "{halves:?}");
    let mut arrived: Vec<String> = halves.concat();
    arrived.sort();
    assert_eq!(arrived, ids);
    wait_status(&d, "Mixpanel", settled(0), "all four delivered").await;
    assert_eq!(rx.requests("/groups").len(), 3);
    assert!(rx.requests("/engage").is_empty());
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
    wait_status(&d, "Salesforce", settled(0), "dry run counted as delivered").await;
    wait_status(&d, "Mixpanel", settled(0), "dry run counted as delivered").await;
    let logs = wait_log(&d, "/engage?verbose=1").await;
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
        && l.contains("Dry Run Inc")));
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

#[tokio::test]
async fn failing_token_endpoint_retries_and_never_dead_letters() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    let refused =
        json!({"error": "invalid_client", "error_description": "invalid client credentials"});
    rx.set_default(TOKEN_PATH, Answer::json(400, refused));
    let d = Daemon::start("", &format!("{}{}", source(), salesforce(&rx, ""))).await;

    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    let sick = wait_status(
        &d,
        "Salesforce",
        |e| e["unhealthy"].is_string(),
        "unhealthy",
    )
    .await;
    assert!(
        sick["unhealthy"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{sick}"
    );
    rx.set_default(TOKEN_PATH, Answer::status(503));
    let before = rx.requests(TOKEN_PATH).len();
    rx.wait_for(TOKEN_PATH, before + 2).await;
    // Once the endpoint answers again, the call is delivered, not dead-lettered.
    rx.set_default(TOKEN_PATH, token_answer(&rx, "tok-1"));
    let got = rx.wait_for(UPSERT_PATH, 1).await;
    assert_eq!(group_ids(&got[0]), ["g-1"]);
    let healthy = wait_status(&d, "Salesforce", settled(0), "delivered").await;
    assert_eq!(healthy["unhealthy"], Value::Null);
    assert!(dead_letter_lines(&d.logs()).is_empty());
}
