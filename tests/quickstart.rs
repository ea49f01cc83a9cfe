//! The README's quick start, run as written: the example config (on a free port and a temp
//! spool) and the README's curl body; the dry-run log shows the normalized request.

mod common;

use common::Daemon;
use serde_json::json;

#[tokio::test]
async fn quickstart_config_logs_what_it_would_send() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.toml"
    ))
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let text = text
        .replace("listen = \"127.0.0.1:8088\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "path = \"data\"",
            &format!("path = \"{}\"", spool.path().display()),
        );
    let d = Daemon::start_raw(&text).await;
    let (status, body) = d
        .post(
            "/v1/group",
            Some("quickstart"),
            &json!({"userId":"u1","groupId":"acme","traits":{"Name":"Acme","created_at":1714557600,"employees":"329"}}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let logs = d.wait_for_log("dry run: would send").await;
    assert!(
        logs.contains(
            r#""traits":{"name":"Acme","createdAt":"2024-05-01T10:00:00.000Z","employees":329}"#
        ),
        "{logs}"
    );
    assert!(
        logs.contains("url=https://hooks.example.com/segment"),
        "{logs}"
    );
}
