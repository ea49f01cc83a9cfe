//! Messages → webhook requests: the normalized message as JSON (an array when batching),
//! with the configured headers and signatures. Pure: the time comes in for the signature.

use std::time::SystemTime;

use http::HeaderValue;

use super::{Webhook, sign};
use crate::destination::{Failure, Item, OutRequest, Translation, Verdict};

pub(super) fn translate(w: &Webhook, batch: &[Item<'_>], now: SystemTime) -> Translation {
    let mut t = Translation::default();
    if w.as_array {
        let items: Vec<usize> = (0..batch.len()).collect();
        match array(batch) {
            Ok(body) => {
                let id = sign::webhook_id(batch.iter().map(|i| i.message_id()), true);
                t.requests.push(request(w, body, items, &id, now));
            }
            Err(e) => t
                .settled
                .extend(items.into_iter().map(|i| (i, unserializable(&e)))),
        }
        return t;
    }
    for (i, item) in batch.iter().enumerate() {
        match json(item) {
            Ok(body) => {
                let id = sign::webhook_id(std::iter::once(item.message_id()), false);
                t.requests.push(request(w, body, vec![i], &id, now));
            }
            Err(e) => t.settled.push((i, unserializable(&e))),
        }
    }
    t
}

/// One message as JSON: its stored text when the engine handed it over (the same bytes
/// serializing it gives), else serialized.
fn json(item: &Item<'_>) -> Result<Vec<u8>, serde_json::Error> {
    match item.raw {
        Some(raw) => Ok(raw.as_bytes().to_vec()),
        None => serde_json::to_vec(item.message),
    }
}

/// The messages as one JSON array, written as `serde_json` writes a list of them.
fn array(batch: &[Item<'_>]) -> Result<Vec<u8>, serde_json::Error> {
    let size: usize = batch.iter().map(|i| i.raw.map_or(512, str::len) + 1).sum();
    let mut body = Vec::with_capacity(size + 2);
    body.push(b'[');
    for (n, item) in batch.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        match item.raw {
            Some(raw) => body.extend_from_slice(raw.as_bytes()),
            None => serde_json::to_writer(&mut body, item.message)?,
        }
    }
    body.push(b']');
    Ok(body)
}

/// A message JSON cannot write (it came from JSON, so this is not expected): dead-lettered
/// with the reason rather than sent as an empty body.
fn unserializable(e: &serde_json::Error) -> Verdict {
    Verdict::permanent(Failure::translation(format!(
        "the message cannot be serialized: {e}"
    )))
}

/// One request for `items` (batch indexes), its body already serialized.
fn request(w: &Webhook, body: Vec<u8>, items: Vec<usize>, id: &str, now: SystemTime) -> OutRequest {
    let mut request = OutRequest::json(w.method.clone(), w.url.clone(), body, items);
    for (k, v) in &w.headers {
        request.headers.insert(k.clone(), v.clone());
    }
    if let Some(secret) = &w.segment_key {
        let sig = sign::segment(secret.expose().as_bytes(), &request.body);
        request.headers.insert("x-signature", header(&sig));
    }
    if let Some(key) = &w.standard_key {
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let sig = sign::standard(key, id, ts, &request.body);
        request.headers.insert("webhook-id", header(id));
        request
            .headers
            .insert("webhook-timestamp", header(&ts.to_string()));
        request.headers.insert("webhook-signature", header(&sig));
    }
    request
}

/// Header values built here are ASCII (hex, base64, digits, or ids checked to be visible ASCII).
fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
