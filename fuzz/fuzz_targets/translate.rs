//! Any batch of calls, normalized as ingest does, translated by each built-in adapter as the
//! engine would hand it over (only the types it takes, with its `integrations` options):
//! translating never panics, accounts for every item (in a request, or settled without
//! one), and every request body the adapters send as JSON is JSON. The console's "try a
//! message" runs the same translations on whatever an operator pastes.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use switchyard::destination::{Destination, Item};
use switchyard::normalize::{BatchDefaults, normalize};
use switchyard::route::{self, RouteKey};

const CONFIG: &str = r#"
[server]
allow_unauthenticated = true
[[destination]]
name = "Mixpanel"
type = "mixpanel"
project_token = "t"
group_key = "company_id"
api_host = "http://127.0.0.1:9"
[[destination]]
name = "Salesforce"
type = "salesforce"
instance_url = "http://127.0.0.1:9"
external_id_field = "Ext__c"
fields = { plan = "Plan__c", seats = "Seats__c" }
auth = { flow = "client_credentials", client_id = "c", client_secret = "s" }
[[destination]]
name = "Webhook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
batch = { max_events = 50 }
"#;

/// Each adapter with its routing keys.
fn adapters() -> &'static Vec<(Arc<dyn Destination>, RouteKey)> {
    static ADAPTERS: OnceLock<Vec<(Arc<dyn Destination>, RouteKey)>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let config = switchyard::config::load(CONFIG).expect("the fuzz config loads");
        config
            .destinations
            .iter()
            .map(|d| {
                let adapter = switchyard::destination::build(d).expect("builds");
                let route = RouteKey::new(&d.name, &d.aliases, adapter.accepts().to_vec());
                (adapter, route)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(calls)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let now = chrono::Utc::now();
    let messages: Vec<_> = calls
        .into_iter()
        .filter_map(|m| normalize(m, None, &BatchDefaults::default(), now, || "g".into()).ok())
        .collect();
    let keys: Vec<RouteKey> = adapters().iter().map(|(_, k)| k.clone()).collect();
    let empty = Map::new();
    for (i, (adapter, key)) in adapters().iter().enumerate() {
        let items: Vec<Item<'_>> = messages
            .iter()
            .filter(|n| {
                let integrations = n.message.get("integrations").and_then(Value::as_object);
                route::route(n.ty, integrations, &keys).contains(&i)
            })
            .map(|n| {
                let integrations = n.message.get("integrations").and_then(Value::as_object);
                Item {
                    message: &n.message,
                    options: route::options(integrations, key).unwrap_or(&empty),
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
