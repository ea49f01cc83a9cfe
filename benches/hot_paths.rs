//! Micro-benchmarks of the hot pure paths: parse + validate + normalize one message, route
//! one message, parse a stored message (whole, or the fields an adapter reads), and translate a batch of 200 for each registered adapter.
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
    }
}

criterion_group!(benches, ingest_path, translate);
criterion_main!(benches);
