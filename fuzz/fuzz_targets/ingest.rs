//! A request body as ingest reads it: JSON, a batch's messages normalized one by one against
//! its defaults, each routed. Nothing may panic; the text normalize stores for a message
//! must parse, and agree with the fields it hands over parsed (what adapters read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use switchyard::message::MessageType;
use switchyard::normalize::{BatchDefaults, normalize};
use switchyard::route::{RouteKey, route};

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let defaults = BatchDefaults {
        context: object(body.remove("context")),
        integrations: object(body.remove("integrations")),
        sent_at: body.remove("sentAt"),
    };
    let messages = match body.remove("batch") {
        Some(Value::Array(m)) => m,
        _ => vec![Value::Object(body)],
    };
    let routes = [
        RouteKey::new("Mixpanel", &[], vec![MessageType::Group]),
        RouteKey::new("Webhook", &["Hook".to_string()], MessageType::ALL.to_vec()),
    ];
    let now = chrono::Utc::now();
    for m in messages {
        let Ok(n) = normalize(&m.to_string(), None, &defaults, now, || "generated".into()) else {
            continue;
        };
        let integrations = n.head.get("integrations").and_then(Value::as_object);
        for i in route(n.ty, integrations, &routes) {
            assert!(i < routes.len());
        }
        let back: Map<String, Value> = n.message().expect("the stored text parses");
        for (k, v) in &n.head {
            assert_eq!(back.get(k), Some(v), "{k}");
        }
    }
});
