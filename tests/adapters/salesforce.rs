//! Salesforce through the daemon: per-record settling, token refresh, a failing token endpoint.

use serde_json::{Value, json};

use super::*;

async fn settles_each_record_on_its_own(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let results = json!([
        {"id": "001A", "success": true, "errors": [], "created": true},
        {"id": null, "success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]}]},
        {"id": null, "success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]},
    ]);
    rx.script(UPSERT_PATH, vec![Answer::json(200, results)]);
    // The three calls must share one request: the worker waits for all three, not just the
    // default 100 ms (a loaded machine can publish them to JetStream further apart than that).
    let batch = "batch = { max_events = 3, max_wait = \"1s\" }";
    let config = format!("{}{}", source(), salesforce(&rx, batch));
    let d = Daemon::start_on(&under, "", &config).await;

    let calls = vec![
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
    ];
    send(&d, calls).await;
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
    d.wait_status("Salesforce", settled(1), "two delivered, one dead letter")
        .await;
    let logs = d.logs();
    let dead = dead_letter_lines(&logs);
    assert_eq!(dead.len(), 1, "{logs}");
    assert!(dead[0].contains("REQUIRED_FIELD_MISSING"), "{}", dead[0]);
    // Nothing is sent after settling: delivered and dead-lettered records stay settled.
    assert_eq!(rx.requests(UPSERT_PATH).len(), 2);
    assert_one_client_credentials_token(&rx);
    assert!(
        !logs.contains("sf-client-secret") && !logs.contains("tok-1"),
        "{logs}"
    );
}

/// One token for the whole run, asked for with the client-credentials form.
fn assert_one_client_credentials_token(rx: &Receiver) {
    let tokens = rx.requests(TOKEN_PATH);
    assert_eq!(tokens.len(), 1);
    let form = String::from_utf8_lossy(&tokens[0].body).into_owned();
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("client_id=cid"),
        "{form}"
    );
    assert!(form.contains("client_secret=sf-client-secret"), "{form}");
}

async fn token_expiring_mid_run_is_refreshed_once(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        TOKEN_PATH,
        vec![token_answer(&rx, "tok-1"), token_answer(&rx, "tok-2")],
    );
    let d = Daemon::start_on(&under, "", &format!("{}{}", source(), salesforce(&rx, ""))).await;

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
    let status = d
        .wait_status("Salesforce", settled(0), "both delivered")
        .await;
    assert_eq!(status["unhealthy"], Value::Null);
    assert_eq!(rx.requests(TOKEN_PATH).len(), 2);
    assert!(dead_letter_lines(&d.logs()).is_empty());
}

async fn failing_token_endpoint_retries_and_never_dead_letters(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let refused =
        json!({"error": "invalid_client", "error_description": "invalid client credentials"});
    rx.set_default(TOKEN_PATH, Answer::json(400, refused));
    let d = Daemon::start_on(&under, "", &format!("{}{}", source(), salesforce(&rx, ""))).await;

    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    let sick = d
        .wait_status("Salesforce", |e| e["unhealthy"].is_string(), "unhealthy")
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
    let healthy = d.wait_status("Salesforce", settled(0), "delivered").await;
    assert_eq!(healthy["unhealthy"], Value::Null);
    assert!(dead_letter_lines(&d.logs()).is_empty());
}

on_both_spools!(
    settles_each_record_on_its_own,
    token_expiring_mid_run_is_refreshed_once,
    failing_token_endpoint_retries_and_never_dead_letters,
);
