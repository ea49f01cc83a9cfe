//! Mixpanel through the daemon: a 200 that says `status: 0`, and a 413 split.

use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn status_zero_is_dead_lettered() {
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
async fn too_large_splits_the_batch() {
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

/// Two updates of one group share a batch; only the older one's engage request fails. The
/// newer update must be sent again after the older one's retry, so it still wins.
#[tokio::test]
async fn a_partly_failed_batch_keeps_the_last_write_winning() {
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script("/engage", vec![Answer::status(503)]);
    let d = Daemon::start("", &format!("{}{}", source(), mixpanel(&rx, ""))).await;
    let mut older = call("acme", Some("u-1"), json!({"plan": "free"}));
    older["messageId"] = json!("m-older");
    let mut newer = call("acme", None, json!({"plan": "pro"}));
    newer["messageId"] = json!("m-newer");
    send(&d, vec![older, newer]).await;
    wait_status(&d, "Mixpanel", settled(0), "both delivered").await;
    let plans: Vec<String> = rx
        .requests("/groups")
        .iter()
        .flat_map(|c| c.json().as_array().unwrap().clone())
        .map(|u| u["$set"]["plan"].as_str().unwrap().to_string())
        .collect();
    assert!(
        plans.len() >= 3,
        "the retry resent the group update: {plans:?}"
    );
    assert_eq!(
        plans.last().map(String::as_str),
        Some("pro"),
        "last write must win: {plans:?}"
    );
}
