use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::*;
use crate::config;
use crate::destination::{Failure, FailureKind, OutRequest, Response, Verdict};
use crate::destinations::golden;

fn webhook(extra: &str) -> Webhook {
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n{extra}"
    );
    let config = config::load(&text).unwrap();
    Webhook::new(Setup::of(&config.destinations[0])).unwrap()
}

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

fn fixture() -> Vec<Map<String, Value>> {
    let text = include_str!("../../tests/fixtures/webhook/messages.json");
    serde_json::from_str(text).unwrap()
}

/// The messages as items holding every field, without their text.
fn whole<'a>(messages: &'a [Map<String, Value>], empty: &'a Map<String, Value>) -> Vec<Item<'a>> {
    messages
        .iter()
        .map(|m| Item {
            message: m,
            options: empty,
            raw: None,
            traits_text: None,
        })
        .collect()
}

fn header(r: &OutRequest, name: &str) -> String {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn one_request_per_message_signed_both_ways() {
    let w = webhook(
        "signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nsignature = \"both\"\nheaders = { \"X-Team\" = \"growth\", \"X-Api-Key\" = \"k\" }",
    );
    let messages = fixture();
    let empty = Map::new();
    let items = whole(&messages, &empty);
    let t = w.translate(&items, at());
    assert!(t.settled.is_empty());
    assert_eq!(t.requests.len(), messages.len());
    for (i, r) in t.requests.iter().enumerate() {
        assert_eq!(r.items, vec![i]);
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.url, "http://127.0.0.1:9/hook");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, Value::Object(messages[i].clone()));
        assert_eq!(header(r, "content-type"), "application/json");
        assert!(header(r, "user-agent").starts_with("switchyard/"));
        assert_eq!(header(r, "x-team"), "growth");
        assert!(r.headers.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(
            header(r, "webhook-id"),
            messages[i]["messageId"].as_str().unwrap()
        );
        assert_eq!(header(r, "webhook-timestamp"), "1714564800");
        let key = sign::standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            header(r, "webhook-signature"),
            sign::standard(&key, &header(r, "webhook-id"), 1714564800, &r.body)
        );
        assert_eq!(
            header(r, "x-signature"),
            sign::segment(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &r.body)
        );
    }
    // The exact bytes of the first request, as a golden file.
    let golden = include_str!("../../tests/fixtures/webhook/first_request_body.json");
    assert_eq!(
        String::from_utf8_lossy(&t.requests[0].body),
        golden.trim_end()
    );
}

#[test]
fn batching_sends_one_signed_array() {
    let w = webhook("signing_secret = \"s3cret\"\nbatch = { max_events = 10 }");
    let messages = fixture();
    let empty = Map::new();
    let items = whole(&messages, &empty);
    let t = w.translate(&items, at());
    assert_eq!(t.requests.len(), 1);
    let r = &t.requests[0];
    assert_eq!(r.items, (0..messages.len()).collect::<Vec<_>>());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, json!(messages));
    // The whole array is signed, not only its first event (Segment signs only the first).
    assert_eq!(header(r, "x-signature"), sign::segment(b"s3cret", &r.body));
    assert!(r.headers.get("webhook-signature").is_none());
}

#[test]
fn the_stored_text_goes_out_byte_for_byte_as_serializing_the_message_would() {
    let messages = fixture();
    let texts: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    let projected: Vec<Map<String, Value>> = texts
        .iter()
        .map(|t| crate::message::project(t, &[]).unwrap())
        .collect();
    let empty = Map::new();
    for extra in [
        "signing_secret = \"s\"",
        "signing_secret = \"s\"\nbatch = { max_events = 10 }",
    ] {
        let w = webhook(extra);
        let parsed = whole(&messages, &empty);
        // As the engine hands them from the spool: the fields it reads, and the text; one
        // item parsed whole already, without its text.
        let mut stored: Vec<Item<'_>> = projected
            .iter()
            .zip(&texts)
            .map(|(m, t)| Item {
                message: m,
                options: &empty,
                raw: Some(t),
                traits_text: None,
            })
            .collect();
        stored[1] = parsed[1];
        let (a, b) = (w.translate(&parsed, at()), w.translate(&stored, at()));
        assert_eq!(a.requests.len(), b.requests.len(), "{extra}");
        for (x, y) in a.requests.iter().zip(&b.requests) {
            assert_eq!(
                String::from_utf8_lossy(&x.body),
                String::from_utf8_lossy(&y.body)
            );
            assert_eq!(header(x, "x-signature"), header(y, "x-signature"));
            assert_eq!(x.items, y.items);
        }
    }
}

#[test]
fn answers() {
    let w = webhook("");
    let r = OutRequest::json(Method::POST, "http://x", vec![], vec![0]);
    let resp = |status| Response {
        status,
        headers: HeaderMap::new(),
        body: bytes::Bytes::from_static(b"nope"),
    };
    assert_eq!(
        w.classify(&r, &resp(200), at()).verdicts,
        vec![Verdict::Delivered]
    );
    assert!(matches!(
        w.classify(&r, &resp(503), at()).verdicts[0],
        Verdict::Retry { .. }
    ));
    let c = w.classify(&r, &resp(400), at());
    let failure = Failure {
        kind: FailureKind::Http,
        reason: "HTTP 400: nope".into(),
        status: Some(400),
        response: Some("nope".into()),
    };
    assert_eq!(c.verdicts, vec![Verdict::permanent(failure)]);
}

#[test]
fn config_errors_name_the_key() {
    let load = |extra: &str| {
        let text = format!(
            "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\n{extra}"
        );
        let config = config::load(&text).unwrap();
        Webhook::new(Setup::of(&config.destinations[0]))
            .err()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        load("url = \"ftp://x\""),
        "line 6, column 1: destination `Hook`: url must be http or https"
    );
    assert!(
        load("url = \"http://x\"\nurll = 1").starts_with("line 7, column 1: unknown field `urll`")
    );
    assert!(load("url = \"http://x\"\nsignature = \"standard\"").contains("signing_secret is not"));
    assert!(
        load("url = \"http://x\"\nsigning_secret = \"plain\"\nsignature = \"standard\"")
            .contains("whsec_")
    );
    assert!(load("url = \"http://x\"\nmethod = \"GET\"").contains("method `GET`"));
    assert!(load("").contains("missing field `url`"));
}

#[test]
fn golden_requests() {
    let w = webhook(
        "signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nsignature = \"both\"\nheaders = { \"X-Team\" = \"growth\" }",
    );
    let messages =
        golden::normalized_calls(include_str!("../../tests/fixtures/webhook/calls.json"));
    let t = w.translate(&golden::items(&messages), golden::at());
    golden::assert_golden(
        "webhook",
        include_str!("../../tests/fixtures/webhook/requests.json"),
        &t,
    );
}
