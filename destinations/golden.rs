//! Golden-test helpers shared by the adapters' tests: the fixture calls run through the real
//! normalizer, a translation shown as JSON, and the comparison with its fixture (rewritten by
//! `SWITCHYARD_BLESS=1 cargo test` after an intended change; review the diff).

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::destination::{Destination, Item, OutRequest, Translation};
use crate::message::HEAD_FIELDS;
use crate::normalize::{BatchDefaults, normalize};

/// The clock every golden translation runs at.
pub fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

/// Raw calls (a JSON array) through the real normalizer, received at a fixed time.
pub fn normalized_calls(fixture: &str) -> Vec<Map<String, Value>> {
    let raw: Vec<Value> = serde_json::from_str(fixture).unwrap();
    raw.iter().map(normalized).collect()
}

/// One raw call through the real normalizer, received at a fixed time; a missing
/// `messageId` becomes `generated`.
pub fn normalized(call: &Value) -> Map<String, Value> {
    let received = chrono::DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
        .unwrap()
        .to_utc();
    normalize(
        &call.to_string(),
        None,
        &BatchDefaults::default(),
        received,
        || "generated".into(),
    )
    .unwrap()
    .message()
    .unwrap()
}

/// Items without per-message options.
pub fn items(messages: &[Map<String, Value>]) -> Vec<Item<'_>> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    messages
        .iter()
        .map(|m| Item {
            message: m,
            options: &EMPTY,
            raw: None,
            traits_text: None,
        })
        .collect()
}

/// The same calls as the engine hands them over from the spool: ingest's head (the
/// [`HEAD_FIELDS`]) with the stored text beside it, and where `traits` is in that text.
pub fn stored(messages: &[Map<String, Value>]) -> Vec<Stored> {
    messages
        .iter()
        .map(|m| {
            let head = m
                .iter()
                .filter(|(k, _)| HEAD_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let text = serde_json::to_string(m).unwrap();
            let traits_at = m.get("traits").filter(|t| t.is_object()).map(|t| {
                let member = format!("\"traits\":{t}");
                let start = text.find(&member).unwrap() + "\"traits\":".len();
                start..start + t.to_string().len()
            });
            Stored {
                head,
                text,
                traits_at,
            }
        })
        .collect()
}

/// A call as the spool keeps it: see [`stored`].
pub struct Stored {
    head: Map<String, Value>,
    text: String,
    traits_at: Option<std::ops::Range<usize>>,
}

/// Items of [`stored`] calls, without per-message options; `spans`: with where `traits` is
/// in the text, as for a message ingest stored lately (else the adapter looks for it).
pub fn stored_items(stored: &[Stored], spans: bool) -> Vec<Item<'_>> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    stored
        .iter()
        .map(|s| Item {
            message: &s.head,
            options: &EMPTY,
            raw: Some(&s.text),
            traits_text: s.traits_at.clone().filter(|_| spans).map(|r| &s.text[r]),
        })
        .collect()
}

/// Translated from the parsed calls or from their stored text (told where `traits` is in
/// it, or not), the requests and verdicts are the same, byte for byte.
pub fn assert_alike(d: &dyn Destination, messages: &[Map<String, Value>]) {
    let parsed = d.translate(&items(messages), at());
    let stored = stored(messages);
    for spans in [false, true] {
        let text = d.translate(&stored_items(&stored, spans), at());
        assert_eq!(parsed.settled, text.settled);
        assert_eq!(parsed.coalesced, text.coalesced);
        assert_eq!(parsed.requests.len(), text.requests.len());
        for (a, b) in parsed.requests.iter().zip(&text.requests) {
            assert_eq!(
                (&a.url, &a.items, &a.parts, &a.body),
                (&b.url, &b.items, &b.parts, &b.body)
            );
        }
    }
}

/// Group calls that repeat their group's traits byte for byte, change them, and go back
/// (with a value Salesforce cannot take in the changed ones): what the adapters keep per
/// group (`crate::memo`) must translate them as the parsed calls do.
pub fn repeating_calls() -> Vec<Map<String, Value>> {
    let a = json!({"name": "Acme", "createdAt": "2024-01-02T03:04:05Z", "plan": "pro",
        "address": {"city": "Berlin", "street": "Main St 1"}, "employees": 12});
    let b = json!({"Name": "Beta", "industry": "Retail", "employees": "40"});
    let c = json!({"name": "Acme Rockets", "employees": "many", "address": {"zip": "10115"},
        "website": "https://acme.test", "$name": "kept apart"});
    let calls = [
        ("g1", "u1", &a),
        ("g1", "u2", &a),
        ("g2", "u1", &b),
        ("g1", "u1", &c),
        ("g1", "u3", &a),
        ("g2", "u2", &b),
        ("g1", "u1", &a),
    ];
    calls
        .iter()
        .enumerate()
        .map(|(i, (group, user, traits))| {
            normalized(
                &json!({"type": "group", "messageId": format!("m{i}"), "groupId": group,
                "userId": user, "traits": traits, "timestamp": "2024-05-01T11:00:00Z"}),
            )
        })
        .collect()
}

/// A request as the golden file shows it; the body parsed (key order kept) for readability.
pub fn shown(r: &OutRequest) -> Value {
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    // The wire bytes are exactly the compact form of what the fixture shows.
    assert_eq!(serde_json::to_vec(&body).unwrap(), r.body.to_vec());
    // The user agent carries the crate version; it is checked apart so releases keep the fixture.
    assert!(
        r.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("switchyard/")
    );
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "user-agent")
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let mut shown =
        json!({"method": r.method.as_str(), "url": r.url, "headers": headers, "items": r.items});
    if !r.parts.is_empty() {
        shown["parts"] = json!(r.parts);
    }
    shown["body"] = body;
    shown
}

/// Compare a translation with `tests/fixtures/{adapter}/requests.json` (given as `golden`).
pub fn assert_golden(adapter: &str, golden: &str, t: &Translation) {
    let got = json!({
        "requests": t.requests.iter().map(shown).collect::<Vec<_>>(),
        "settled": t.settled.iter().map(|(i, v)| json!([i, format!("{v:?}")])).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&got).unwrap();
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        let path = format!(
            "{}/tests/fixtures/{adapter}/requests.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(path, format!("{text}\n")).unwrap();
    }
    assert_eq!(text, golden.trim_end(), "actual:\n{text}");
}
