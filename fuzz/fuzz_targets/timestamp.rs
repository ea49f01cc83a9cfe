//! Timestamps as SDKs send them (strings, numbers): parsing never panics, and a parsed time
//! formats to text that parses back to the same text (what is forwarded can be read again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::normalize::time;

fuzz_target!(|data: &[u8]| {
    let value = match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::from(text)),
        Err(_) => return,
    };
    if let Some(dt) = time::parse_any(&value) {
        let text = time::format(dt);
        let again = time::parse_iso(&text).unwrap_or_else(|| panic!("{text} does not parse"));
        assert_eq!(time::format(again), text);
    }
});
