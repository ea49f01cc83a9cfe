//! Any batch of calls, normalized as ingest does, translated by each built-in adapter as the
//! engine would hand it over (only the types it takes, with its `integrations` options):
//! translating never panics, accounts for every item (in a request, or settled without
//! one), and every request body the adapters send as JSON is JSON. The console's "try a
//! message" runs the same translations on whatever an operator pastes.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use switchyard::destination::Item;
use switchyard::normalize::{BatchDefaults, normalize};
use switchyard::route::{self, RouteKey};

mod adapters;
use adapters::adapters;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(calls)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let now = chrono::Utc::now();
    let messages: Vec<_> = calls
        .into_iter()
        .filter_map(|m| {
            let n = normalize(&m.to_string(), None, &BatchDefaults::default(), now, || "g".into());
            n.ok().map(|n| (n.ty, n.message().expect("the stored text parses")))
        })
        .collect();
    let keys: Vec<RouteKey> = adapters().iter().map(|(_, k)| k.clone()).collect();
    let empty = Map::new();
    for (i, (adapter, key)) in adapters().iter().enumerate() {
        let items: Vec<Item<'_>> = messages
            .iter()
            .filter(|(ty, message)| {
                let integrations = message.get("integrations").and_then(Value::as_object);
                route::route(*ty, integrations, &keys).contains(&i)
            })
            .map(|(_, message)| {
                let integrations = message.get("integrations").and_then(Value::as_object);
                Item {
                    message,
                    options: route::options(integrations, key).unwrap_or(&empty),
                    raw: None,
                    traits_text: None,
                }
            })
            .take(adapter.max_batch())
            .collect();
        if items.is_empty() {
            continue;
        }
        let t = adapter.translate(&items, SystemTime::now());
        let mut seen = vec![false; items.len()];
        for r in &t.requests {
            for &j in &r.items {
                seen[j] = true;
            }
            if r.headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
            {
                serde_json::from_slice::<Value>(&r.body).expect("a JSON body is JSON");
            }
        }
        for (j, _) in &t.settled {
            seen[*j] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "every item is in a request or settled: {seen:?}"
        );
    }
});
