//! The batch decisions, one rule at a time.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::*;
use crate::destination::{OutRequest, Response};

fn leased(seq: u64, group: Option<&str>) -> Leased {
    Leased {
        seq,
        body: Arc::from("{}"),
        parsed: Default::default(),
        group_id: group.map(Arc::from),
        attempts: 0,
        first_attempt: None,
        corrupted: None,
    }
}

/// An item whose stored body is `body`.
fn stored(body: &str) -> Leased {
    Leased {
        body: Arc::from(body),
        ..leased(1, None)
    }
}

fn retry(reason: &str) -> Verdict {
    Verdict::retry(Failure::engine(reason))
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(600),
        give_up_after: Duration::from_secs(3600),
        max_attempts: Some(3),
    }
}

#[test]
fn a_newer_delivered_update_waits_behind_an_older_retry_of_its_group() {
    let batch = vec![
        leased(5, Some("acme")),
        leased(3, Some("acme")),
        leased(4, Some("other")),
        leased(6, None),
        leased(2, Some("acme")),
    ];
    let mut v = vec![
        Some(Verdict::Delivered),
        Some(retry("503")),
        Some(Verdict::Delivered),
        Some(Verdict::Delivered),
        Some(Verdict::Delivered),
    ];
    keep_group_order(&batch, &mut v);
    // seq 2 (older than the retry) and other groups stay delivered; seq 5 waits.
    assert_eq!(v[4], Some(Verdict::Delivered));
    assert!(matches!(v[0], Some(Verdict::Defer { .. })));
    assert_eq!(v[2], Some(Verdict::Delivered));
    assert_eq!(v[3], Some(Verdict::Delivered));
    assert!(matches!(v[1], Some(Verdict::Retry { .. })));
}

#[test]
fn the_worst_verdict_for_an_item_decides() {
    let mut v = vec![None, None];
    merge(&mut v, 0, Verdict::Delivered);
    merge(&mut v, 0, retry("later"));
    merge(&mut v, 0, Verdict::Delivered);
    assert_eq!(v[0], Some(retry("later")));
    assert_eq!(v[1], None);
}

#[test]
fn an_adapter_reading_some_fields_gets_them_unless_the_whole_message_is_parsed_already() {
    let body = r#"{"type":"group","groupId":"g","context":{"ip":"1.2.3.4"},"traits":{"n":1}}"#;
    let item = stored(body);
    let only = Reads::Only(&["traits"]);
    let own = projection(&item, only).expect("a projection of its own");
    let m = screen(&item, Some(&own), only, MessageType::ALL).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["type", "groupId", "traits"]);
    assert!(
        projection(&item, Reads::All).is_none(),
        "every field: the shared parse"
    );
    assert_eq!(raw(&item), Some(body));

    let ready = Leased {
        body: Arc::from(""),
        parsed: crate::message::Parsed::new(serde_json::from_str(body).unwrap()),
        ..leased(2, Some("g"))
    };
    assert!(
        projection(&ready, only).is_none(),
        "parsed whole already: used as it is"
    );
    assert_eq!(
        screen(&ready, None, only, MessageType::ALL).unwrap().len(),
        4
    );
    assert_eq!(raw(&ready), None, "no text: the message is whole");

    let unreadable = stored(r#"{"type": "group", "traits": {"#);
    let own = projection(&unreadable, only);
    assert!(screen(&unreadable, own.as_ref(), only, MessageType::ALL).is_err());
}

#[test]
fn ingest_s_parsed_head_serves_an_adapter_reading_only_head_fields() {
    let body = r#"{"type":"group","groupId":"g","userId":"u","context":{"ip":"1.2.3.4"},"traits":{"n":1}}"#;
    let whole: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).unwrap();
    let head = whole
        .iter()
        .filter(|(k, _)| *k != "context" && *k != "traits")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let item = Leased {
        parsed: crate::message::Parsed::head(head, None),
        ..stored(body)
    };
    let user = Reads::Only(&["userId"]);
    assert!(projection(&item, user).is_none(), "the head holds userId");
    let m = screen(&item, None, user, MessageType::ALL).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["type", "groupId", "userId"]);
    assert!(!item.parsed.is_ready(), "nothing parsed for it");

    let context = Reads::Only(&["context"]);
    let own = projection(&item, context).expect("context is not in the head");
    let m = screen(&item, Some(&own), context, MessageType::ALL).unwrap();
    assert_eq!(m["context"]["ip"], "1.2.3.4");

    let m = screen(&item, None, Reads::All, MessageType::ALL).unwrap();
    assert_eq!(m, &whole, "every field: the whole body parsed");
    assert!(item.parsed.is_ready());
    assert_eq!(raw(&item), Some(body), "the text still comes along");
}

#[test]
fn unreadable_altered_messages_and_types_not_accepted_never_reach_the_adapter() {
    let group = stored(r#"{"type": "group", "groupId": "g"}"#);
    let track = stored(r#"{"type": "track", "event": "e"}"#);
    let groups_only = [MessageType::Group];
    assert!(screen(&group, None, Reads::All, &groups_only).is_ok());
    let refused = screen(&track, None, Reads::All, &groups_only).unwrap_err();
    assert!(
        matches!(&refused, Verdict::Permanent { failure } if failure.reason == "this destination takes group calls only, not `track`" && failure.status.is_none()),
        "{refused:?}"
    );
    let unreadable =
        screen(&stored("{\"type\": "), None, Reads::All, MessageType::ALL).unwrap_err();
    assert!(matches!(unreadable, Verdict::Permanent { failure } if failure.reason.contains("EOF")));
    let altered = Leased {
        corrupted: Some("the stored message was altered on disk".into()),
        ..group
    };
    let refused = screen(&altered, None, Reads::All, MessageType::ALL).unwrap_err();
    assert!(
        matches!(&refused, Verdict::Permanent { failure } if failure.kind == FailureKind::Corrupted),
        "{refused:?}"
    );
}

#[test]
fn a_split_sends_the_first_half_first_and_a_single_item_is_not_split() {
    assert_eq!(halves(&[4, 7, 9]), Some((&[4][..], &[7, 9][..])));
    assert_eq!(halves(&[4]), None);
    let sub = Translation {
        requests: vec![OutRequest::json(
            Method::POST,
            "http://x",
            vec![],
            vec![1, 0],
        )],
        settled: vec![(1, Verdict::Delivered)],
        coalesced: vec![0],
    };
    let whole = rebase(sub, &[7, 9]);
    assert_eq!(whole.requests[0].items, vec![9, 7]);
    assert_eq!(whole.settled, vec![(9, Verdict::Delivered)]);
    assert_eq!(whole.coalesced, vec![7]);
}

#[test]
fn each_verdict_becomes_one_spool_outcome() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mut tried = leased(4, None);
    tried.attempts = 2;
    tried.first_attempt = Some(now - Duration::from_secs(60));
    let batch = vec![
        leased(1, None),
        leased(2, None),
        leased(3, None),
        tried,
        leased(5, None),
    ];
    let answer = Response {
        status: 400,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"bad field"),
    };
    let verdicts = vec![
        Some(Verdict::Delivered),
        Some(Verdict::Defer {
            after: None,
            reason: "paused".into(),
        }),
        Some(Verdict::permanent(Failure::http_status(&answer))),
        Some(retry("503 again")),
        None,
    ];
    let out = outcomes(&batch, verdicts, &policy(), now, || 0.5);
    assert_eq!(out.delivered, vec![1]);
    // A deferral spends no attempt and waits the initial backoff.
    let [deferred] = &out.later[..] else {
        panic!("{:?}", out.later)
    };
    assert!(deferred.deferred && deferred.seq == 2 && deferred.attempt.attempts == 0);
    assert_eq!(deferred.wait, Duration::from_secs(1));
    let dead: Vec<_> = out.dead.iter().map(|(seq, a)| (*seq, a)).collect();
    assert_eq!(dead.len(), 3);
    // The HTTP failure keeps its status and the answer's excerpt.
    assert_eq!((dead[0].0, dead[0].1.status), (3, Some(400)));
    assert_eq!(dead[0].1.response.as_deref(), Some("bad field"));
    assert_eq!(dead[0].1.dead_reason, DeadReason::Permanent);
    // The third attempt reaches max_attempts: given up, the last error kept, the clock from the first.
    assert_eq!((dead[1].0, dead[1].1.attempts), (4, 3));
    assert_eq!(dead[1].1.dead_reason, DeadReason::Exhausted);
    assert!(dead[1].1.reason.ends_with("last error: 503 again"));
    assert_eq!(dead[1].1.first_attempt, now - Duration::from_secs(60));
    // No verdict at all: the adapter sent nothing for it.
    assert_eq!(dead[2].0, 5);
    assert!(dead[2].1.reason.contains("no request"));
}

#[test]
fn a_retry_waits_its_backoff_or_the_destinations_floor() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let floor = Verdict::Retry {
        after: Some(Duration::from_secs(30)),
        failure: Failure::engine("429"),
    };
    let out = outcomes(
        &[leased(1, None), leased(2, None)],
        vec![Some(retry("x")), Some(floor)],
        &policy(),
        now,
        || 0.5,
    );
    assert_eq!(out.later[0].wait, Duration::from_millis(500));
    assert_eq!(out.later[1].wait, Duration::from_secs(30));
    assert!(
        out.later
            .iter()
            .all(|l| !l.deferred && l.attempt.attempts == 1)
    );
    assert_eq!(out.later[0].attempt.first_attempt, now);
}
