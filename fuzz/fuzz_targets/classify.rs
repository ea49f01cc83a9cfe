//! Any answer a vendor could give (status, headers, body) to a real request of each adapter:
//! classifying it never panics and gives exactly one verdict per item of the request.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use switchyard::destination::{Destination, Item, OutRequest, Response};

mod adapters;

/// Each adapter with a request it made for three group calls.
fn cases() -> &'static Vec<(Arc<dyn Destination>, OutRequest)> {
    static CASES: OnceLock<Vec<(Arc<dyn Destination>, OutRequest)>> = OnceLock::new();
    CASES.get_or_init(|| {
        let messages: Vec<Map<String, Value>> = (0..3)
            .map(|n| {
                let m = json!({"type": "group", "userId": "u", "groupId": format!("g{n}"),
                               "messageId": format!("m{n}"), "traits": {"name": "N", "plan": "p"}});
                m.as_object().unwrap().clone()
            })
            .collect();
        let empty = Map::new();
        let items: Vec<Item<'_>> = messages
            .iter()
            .map(|m| Item {
                message: m,
                options: &empty,
                raw: None,
                traits_text: None,
            })
            .collect();
        adapters::adapters()
            .iter()
            .map(|(adapter, _)| {
                let mut t = adapter.translate(&items, SystemTime::now());
                (adapter.clone(), t.requests.remove(0))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((status, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_le_bytes(*status) % 500;
    // Up to one header (name and value separated by a 0 byte), then the body.
    let (headers, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&rest[..0], rest),
    };
    let mut header_map = HeaderMap::new();
    if let Some(at) = headers.iter().position(|b| *b == 0) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&headers[..at]),
            HeaderValue::from_bytes(&headers[at + 1..]),
        ) {
            header_map.insert(name, value);
        }
    }
    let cases = cases();
    let (adapter, request) = &cases[selector as usize % cases.len()];
    let response = Response {
        status,
        headers: header_map,
        body: Bytes::copy_from_slice(body),
    };
    let c = adapter.classify(request, &response, SystemTime::now());
    assert_eq!(
        c.verdicts.len(),
        request.items.len(),
        "one verdict per item"
    );
});
