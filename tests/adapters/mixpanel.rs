//! Mixpanel through the daemon: a 200 that says `status: 0`, a 413 split, and coalescing.

use serde_json::{Value, json};

use super::*;

/// A Mixpanel destination without memberships whose batches wait long enough (500 ms) for
/// calls sent together to meet in one.
fn merging(rx: &Receiver) -> String {
    let mixpanel = mixpanel(
        rx,
        "associate_user = false\nbatch = { max_wait = \"500ms\" }",
    );
    format!("{}{mixpanel}", source())
}

async fn status_zero_is_dead_lettered(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        "/groups",
        vec![Answer::json(
            200,
            json!({"error": "Invalid group key company_id", "status": 0}),
        )],
    );
    let d = Daemon::start_on(&under, "", &format!("{}{}", source(), mixpanel(&rx, ""))).await;

    send(
        &d,
        vec![call(
            "g-1",
            Some("u-1"),
            json!({"name": "One", "createdAt": 1714557600}),
        )],
    )
    .await;
    let status = d
        .wait_status("Mixpanel", settled(1), "one dead letter")
        .await;
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

async fn too_large_splits_the_batch(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    let too_big = json!({"code": 413, "error": "request exceeds max limit of 2097152 bytes", "status": "Payload Too Large"});
    rx.script("/groups", vec![Answer::json(413, too_big)]);
    let d = Daemon::start_on(
        &under,
        "",
        // Room for the four calls to meet in one batch, whichever spool's partitions bring
        // them.
        &merging(&rx),
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
    d.wait_status("Mixpanel", settled(0), "all four delivered")
        .await;
    assert_eq!(rx.requests("/groups").len(), 3);
    assert!(rx.requests("/engage").is_empty());
}

/// Two updates of one group share a batch; only the older one's engage request fails. The
/// newer update must be sent again after the older one's retry, so it still wins. (Not
/// coalesced: merged, both would ride in one group update.)
async fn a_partly_failed_batch_keeps_the_last_write_winning(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script("/engage", vec![Answer::status(503)]);
    let d = Daemon::start_on(
        &under,
        "",
        &format!("{}{}", source(), mixpanel(&rx, "coalesce = false")),
    )
    .await;
    let mut older = call("acme", Some("u-1"), json!({"plan": "free"}));
    older["messageId"] = json!("m-older");
    let mut newer = call("acme", None, json!({"plan": "pro"}));
    newer["messageId"] = json!("m-newer");
    send(&d, vec![older, newer]).await;
    d.wait_status("Mixpanel", settled(0), "both delivered")
        .await;
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

fn numbered(group: &str, n: usize) -> Value {
    let mut c = call(
        group,
        Some(&format!("u-{}", n % 3)),
        json!({"plan": format!("p{n}")}),
    );
    c["messageId"] = json!(format!("m-{group}-{n}"));
    c
}

/// The updates of each `/groups` request, as (group, plan).
fn updates(requests: &[common::Captured]) -> Vec<Vec<(String, String)>> {
    requests
        .iter()
        .map(|c| {
            let body = c.json();
            body.as_array()
                .unwrap()
                .iter()
                .map(|u| {
                    let plan = u["$set"]["plan"].as_str().unwrap_or_default().to_string();
                    (u["$group_id"].as_str().unwrap().to_string(), plan)
                })
                .collect()
        })
        .collect()
}

/// Calls of one group that pile up while Mixpanel is paused reach it as one update, the
/// newest values in it; `/v1/destinations` and `/metrics` count the calls merged away.
async fn calls_waiting_out_a_pause_arrive_as_one_update_per_group(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        "/groups",
        vec![
            Answer::json(429, json!({"error": "slow down", "status": 0}))
                .with_header("retry-after", "1"),
        ],
    );
    let d = Daemon::start_on(&under, "", &format!("{}{}", source(), mixpanel(&rx, ""))).await;
    send(&d, vec![numbered("acme", 0)]).await;
    rx.wait_for("/groups", 1).await;
    // Paused now: these wait behind the first call.
    let later: Vec<Value> = (1..30)
        .map(|n| numbered("acme", n))
        .chain((0..5).map(|n| numbered("globex", n)))
        .collect();
    send(&d, later).await;
    let status = d
        .wait_status("Mixpanel", settled(0), "all 35 delivered")
        .await;

    let after_pause = updates(&rx.requests("/groups")[1..]);
    for request in &after_pause {
        let mut groups: Vec<&String> = request.iter().map(|(g, _)| g).collect();
        groups.sort();
        groups.dedup();
        assert_eq!(
            groups.len(),
            request.len(),
            "one update per group per request: {after_pause:?}"
        );
    }
    // The plans a group's updates carried, in the order they were sent.
    let plans = |group: &str| -> Vec<&String> {
        let updates = after_pause.iter().flatten();
        updates
            .filter(|(g, _)| g == group)
            .map(|(_, p)| p)
            .collect()
    };
    let acme = plans("acme");
    assert!(
        acme.len() <= 2,
        "30 calls of acme, at most the retried one and one merged: {acme:?}"
    );
    assert_eq!(
        acme.last().map(|p| p.as_str()),
        Some("p29"),
        "the newest value wins"
    );
    assert_eq!(plans("globex"), ["p4"]);
    // Merged away: 29 − 1 of acme's (or 29 if the retried call rode along), 4 of globex's.
    let coalesced = status["coalesced"].as_u64().unwrap();
    assert!((32..=33).contains(&coalesced), "{status}");
    let metrics = d.get_text("/metrics").await;
    let line = format!("switchyard_coalesced_total{{destination=\"Mixpanel\"}} {coalesced}");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    // Memberships: each user once per group.
    let engaged: usize = rx
        .requests("/engage")
        .iter()
        .map(|c| c.json().as_array().unwrap().len())
        .sum();
    assert!(
        engaged <= 3 + 3 + 1,
        "3 users × 2 groups, plus the first call's: {engaged}"
    );
}

/// A merged update that Mixpanel refuses dead-letters every call it stood for, and
/// `dlq replay` delivers them all again.
async fn a_refused_merged_update_dead_letters_every_call_in_it(backend: Backend) {
    let under = Under::new(backend);
    let rx = Receiver::start().await;
    accept_all(&rx);
    rx.script(
        "/groups",
        vec![Answer::json(400, json!({"error": "bad", "status": 0}))],
    );
    let d = Daemon::start_on(
        &under,
        "",
        // Room for the ten calls to meet in one batch, as sent and as replayed.
        &merging(&rx),
    )
    .await;
    send(&d, (0..10).map(|n| numbered("acme", n)).collect()).await;
    d.wait_status("Mixpanel", settled(10), "ten dead letters")
        .await;
    assert_eq!(
        updates(&rx.requests("/groups")),
        [[("acme".to_string(), "p9".to_string())]]
    );
    let listed = d.dlq(&["list"]);
    for n in 0..10 {
        assert!(
            listed.contains(&format!("m-acme-{n}")),
            "m-acme-{n} in\n{listed}"
        );
    }
    d.dlq(&["replay", "--all"]);
    d.wait_status("Mixpanel", settled(0), "replayed and delivered")
        .await;
    let sent = updates(&rx.requests("/groups"));
    assert_eq!(sent.len(), 2, "the replay merged again: {sent:?}");
    assert_eq!(sent[1], [("acme".to_string(), "p9".to_string())]);
}

on_both_spools!(
    a_partly_failed_batch_keeps_the_last_write_winning,
    calls_waiting_out_a_pause_arrive_as_one_update_per_group,
    a_refused_merged_update_dead_letters_every_call_in_it,
    status_zero_is_dead_lettered,
    too_large_splits_the_batch,
);
