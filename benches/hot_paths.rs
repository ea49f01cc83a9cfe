//! Micro-benchmarks of the hot pure paths: parse + validate + normalize one message, route
//! one message, parse a stored message (whole, or the fields an adapter reads), and translate a batch of 200 for each registered adapter, from parsed messages and as the engine hands them over (head and stored text).
//!
//! `cargo bench --bench hot_paths`

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value};
use switchyard::config;
use switchyard::destination::{self, Item, registry};
use switchyard::message::MessageType;
use switchyard::normalize::{self, BatchDefaults};
use switchyard::route::{self, RouteKey};

const MESSAGE: &str = include_str!("../tests/fixtures/canonical_group.json");

fn normalized() -> Map<String, Value> {
    normalize::normalize(
        MESSAGE,
        None,
        &BatchDefaults::default(),
        chrono::Utc::now(),
        || "id".into(),
    )
    .unwrap()
    .message()
    .unwrap()
}

fn ingest_path(c: &mut Criterion) {
    let now = chrono::Utc::now();
    let defaults = BatchDefaults::default();
    c.bench_function("parse+normalize one group call", |b| {
        b.iter(|| {
            let n = normalize::normalize(black_box(MESSAGE), None, &defaults, now, || "id".into())
                .unwrap();
            black_box((n.body, n.head))
        })
    });
    // As the SDKs send most calls: reserved traits spelled canonically, dates as ingest
    // writes them, nothing to rename (the bench load generator's shape).
    let usual = r#"{"type":"group","messageId":"lg-1-1","anonymousId":"5f0c2a1e-9d3b-4c7e-8a21-6b0f4e2d9c13","userId":"user-1-0000042","groupId":"acct-1-000042","timestamp":"2026-11-30T10:00:00.000Z","context":{"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64)","locale":"en-US","library":{"name":"analytics-node","version":"6.2.0"}},"integrations":{"All":true},"traits":{"name":"Bright Harbor Labs","industry":"Software","employees":342,"plan":"enterprise","createdAt":"2019-03-04T05:06:07.123Z","address":{"street":"1200 Market Street","city":"Denver","state":"CO","postalCode":"80202","country":"US"},"website":"https://www.brightharborlabs.com","mrr":12345.67,"seats":120,"region":"amer","is_trial":false,"account_manager":"Dana Reyes","health_score":81}}"#;
    c.bench_function("parse+normalize one usual group call", |b| {
        b.iter(|| {
            let n = normalize::normalize(black_box(usual), None, &defaults, now, || "id".into())
                .unwrap();
            black_box((n.body, n.head))
        })
    });
    let stored = Value::Object(normalized()).to_string();
    c.bench_function("parse one stored message whole", |b| {
        b.iter(|| black_box(switchyard::message::parse(black_box(&stored))))
    });
    for (what, fields) in [
        ("traits, userId", &["traits", "userId"][..]),
        ("nothing", &[][..]),
    ] {
        c.bench_function(&format!("parse what an adapter reads ({what})"), |b| {
            b.iter(|| black_box(switchyard::message::project(black_box(&stored), fields)))
        });
    }
    let routes: Vec<RouteKey> = ["Mixpanel", "Salesforce", "Webhook"]
        .iter()
        .map(|n| RouteKey::new(n, &[], MessageType::ALL.to_vec()))
        .collect();
    let integrations: Value =
        serde_json::json!({"All": true, "Salesforce": true, "Webhook": {"x": 1}});
    c.bench_function("route one message to 3 destinations", |b| {
        b.iter(|| {
            black_box(route::route(
                MessageType::Group,
                integrations.as_object(),
                black_box(&routes),
            ))
        })
    });
}

fn translate(c: &mut Criterion) {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let configs: Vec<String> = std::fs::read_dir(examples)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let messages: Vec<Map<String, Value>> = (0..200)
        .map(|i| {
            let mut m = normalized();
            m.insert("groupId".into(), Value::String(format!("group-{i}")));
            m
        })
        .collect();
    let options = Map::new();
    let items: Vec<Item<'_>> = messages
        .iter()
        .map(|m| Item {
            message: m,
            options: &options,
            raw: None,
            traits_text: None,
        })
        .collect();
    // As the engine hands them over from the spool: ingest's head and the stored text.
    let stored: Vec<(Map<String, Value>, String)> = messages
        .iter()
        .map(|m| {
            let head = m
                .iter()
                .filter(|(k, _)| switchyard::message::HEAD_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (head, serde_json::to_string(m).unwrap())
        })
        .collect();
    // Told where `traits` is in the text, as for a message ingest stored lately.
    let stored_items: Vec<Item<'_>> = stored
        .iter()
        .map(|(head, text)| {
            let start = text.find("\"traits\":{").unwrap() + "\"traits\":".len();
            let traits: &serde_json::value::RawValue =
                serde_json::Deserializer::from_str(&text[start..])
                    .into_iter()
                    .next()
                    .unwrap()
                    .unwrap();
            Item {
                message: head,
                options: &options,
                raw: Some(text),
                traits_text: Some(traits.get()),
            }
        })
        .collect();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_557_600);
    for (kind, _) in registry() {
        let needle = format!("type = \"{kind}\"");
        let Some(text) = configs.iter().find(|c| c.contains(&needle)) else {
            continue;
        };
        let loaded = config::load_with_env(text, &|_| {
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
        })
        .unwrap();
        let dest = loaded
            .destinations
            .iter()
            .find(|d| d.kind == *kind)
            .unwrap();
        let adapter = destination::build(dest).unwrap();
        c.bench_function(&format!("translate 200 for {kind}"), |b| {
            b.iter(|| black_box(adapter.translate(black_box(&items), now)))
        });
        c.bench_function(&format!("translate 200 stored for {kind}"), |b| {
            b.iter(|| black_box(adapter.translate(black_box(&stored_items), now)))
        });
    }
}

criterion_group!(benches, ingest_path, translate);
criterion_main!(benches);
