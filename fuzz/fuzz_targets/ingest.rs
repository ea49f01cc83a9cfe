//! A request body as ingest reads it: JSON, a batch's messages normalized one by one against
//! its defaults, each routed. Nothing may panic; a message normalize accepts must serialize
//! and parse back to the same message (what the spool stores is what adapters read).
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
        let Ok(n) = normalize(m, None, &defaults, now, || "generated".into()) else {
            continue;
        };
        let integrations = n.message.get("integrations").and_then(Value::as_object);
        for i in route(n.ty, integrations, &routes) {
            assert!(i < routes.len());
        }
        let stored = serde_json::to_string(&n.message).expect("a normalized message serializes");
        let back: Map<String, Value> = serde_json::from_str(&stored).expect("and parses back");
        assert_eq!(back, n.message);
    }
});
