//! A dead letter records what the destination really answered, whatever the path that
//! failed: `switchyard dlq show` gives the HTTP status of an error answer, of a Salesforce
//! record refused inside a 200, and of a Mixpanel `status: 0`, and no status for a failure
//! that had no answer (the connection) or never became a request (translation).

use serde_json::{Value, json};

use super::*;

/// The dead letter of `destination`, as `dlq show` prints it, once there is one.
async fn shown(d: &Daemon, destination: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let listed = d.dlq(&["list", "--destination", destination, "--json"]);
        let list: Vec<Value> = serde_json::from_str(&listed).unwrap();
        if let Some(letter) = list.first() {
            let id = letter["id"].to_string();
            return serde_json::from_str(&d.dlq(&["show", &id])).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter for {destination}; logs:\n{}",
            d.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn webhook(name: &str, url: &str, retry: &str) -> String {
    format!("[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\n{retry}\n")
}

async fn an_http_error_keeps_its_status_and_answer(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    rx.set_default(
        "/hook",
        Answer::json(422, json!({"error": "no such field"})),
    );
    let d = Daemon::start_on(
        &under,
        "",
        &format!(
            "{}{}",
            source(),
            webhook("Hook", &rx.url("/hook"), FAST_RETRY)
        ),
    )
    .await;
    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    let letter = shown(&d, "Hook").await;
    assert_eq!(letter["status"], 422, "{letter}");
    assert_eq!(
        letter["response"], "{\"error\":\"no such field\"}",
        "{letter}"
    );
    assert_eq!(letter["reason"], "permanent");
}

async fn a_salesforce_record_error_keeps_the_answers_status(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let refused = json!([{"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]"}]}]);
    rx.script(UPSERT_PATH, vec![Answer::json(200, refused)]);
    let d = Daemon::start_on(&under, "", &format!("{}{}", source(), salesforce(&rx, ""))).await;
    send(&d, vec![call("g-1", None, json!({"industry": "Retail"}))]).await;
    let letter = shown(&d, "Salesforce").await;
    assert_eq!(letter["status"], 200, "{letter}");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .starts_with("REQUIRED_FIELD_MISSING"),
        "{letter}"
    );
    assert!(
        letter["response"]
            .as_str()
            .unwrap()
            .contains("Required fields are missing"),
        "{letter}"
    );
}

async fn a_mixpanel_status_zero_keeps_the_answers_status(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let zero = json!({"error": "Invalid group key company_id", "status": 0});
    rx.script("/groups", vec![Answer::json(200, zero)]);
    let d = Daemon::start_on(
        &under,
        "",
        &format!("{}{}", source(), mixpanel(&rx, "associate_user = false")),
    )
    .await;
    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    let letter = shown(&d, "Mixpanel").await;
    assert_eq!(letter["status"], 200, "{letter}");
    assert!(
        letter["response"]
            .as_str()
            .unwrap()
            .contains("Invalid group key"),
        "{letter}"
    );
}

async fn a_transport_failure_has_no_status(backend: Backend) {
    let under = Under::new(backend);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/down", listener.local_addr().unwrap());
    drop(listener);
    let retry_once = "retry = { max_attempts = 1 }";
    let config = format!("{}{}", source(), webhook("Down", &down, retry_once));
    let d = Daemon::start_on(&under, "", &config).await;
    send(&d, vec![call("g-1", None, json!({"name": "One"}))]).await;
    let letter = shown(&d, "Down").await;
    assert_eq!(letter["status"], Value::Null, "{letter}");
    assert_eq!(letter["response"], Value::Null, "{letter}");
    assert_eq!(letter["reason"], "exhausted", "{letter}");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{letter}"
    );
}

/// (The embedded spool only: a message over a NATS server's max_payload is refused when a
/// JetStream spool starts, see tests/cluster.rs.)
#[tokio::test]
async fn a_translation_failure_has_no_status() {
    let under = Under::sqlite();
    let rx = Receiver::start().await;
    accept_all(&rx);
    let d = Daemon::start_on(
        &under,
        "max_message_bytes = 2000000\nmax_request_bytes = 2000000",
        &format!("{}{}", source(), mixpanel(&rx, "associate_user = false")),
    )
    .await;
    let huge = "x".repeat(1_100_000);
    send(&d, vec![call("g-1", None, json!({"blob": huge}))]).await;
    let letter = shown(&d, "Mixpanel").await;
    assert_eq!(letter["status"], Value::Null, "{letter}");
    assert_eq!(letter["response"], Value::Null, "{letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("1 MB"),
        "{letter}"
    );
    assert!(rx.requests("/groups").is_empty());
}

on_both_spools!(
    an_http_error_keeps_its_status_and_answer,
    a_salesforce_record_error_keeps_the_answers_status,
    a_mixpanel_status_zero_keeps_the_answers_status,
    a_transport_failure_has_no_status,
);
