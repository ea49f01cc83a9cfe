//! Webhook signatures, computed over the exact body bytes sent. Pure.
//!
//! - Segment-compatible: `X-Signature` = hex HMAC-SHA1 of the body, keyed with the secret
//!   (reference/destinations.md §5.1). Unlike Segment, a batch is signed whole, not only its
//!   first event.
//! - Standard Webhooks v1: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with
//!   the base64-decoded part of a `whsec_` secret (§5.3).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Hex HMAC-SHA1 of `body` keyed with `secret`.
pub fn segment(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The HMAC key of a `whsec_…` secret, or why it is not one.
pub fn standard_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a Standard Webhooks secret starts with `whsec_`")?;
    STANDARD
        .decode(encoded)
        .map_err(|_| "the part after `whsec_` is not valid base64".to_string())
}

/// The `webhook-signature` header value.
pub fn standard(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// A `webhook-id`: stable across retries, free of `.` (the spec's separator).
pub fn webhook_id<'a>(message_ids: impl Iterator<Item = &'a str>, batch: bool) -> String {
    let ids: Vec<&str> = message_ids.collect();
    // Passed through only when it is a plain header-safe token without the spec's `.`.
    let plain = |id: &str| {
        !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
    };
    if !batch && ids.len() == 1 && plain(ids[0]) {
        return ids[0].to_string();
    }
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    let digest = hex::encode(h.finalize());
    format!("{}_{}", if batch { "batch" } else { "msg" }, &digest[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_vector() {
        // reference/destinations.md §5.1: key `secret`, body `{"a":1}`.
        assert_eq!(
            segment(b"secret", br#"{"a":1}"#),
            "f8446672f033e4b2beafc5ca3a71eafcd2cafb6e"
        );
    }

    #[test]
    fn standard_webhooks_published_vector() {
        // standard-webhooks libraries/javascript webhook.test.ts, "sign function works".
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn standard_key_errors() {
        assert!(standard_key("nope").unwrap_err().contains("whsec_"));
        assert!(standard_key("whsec_***").unwrap_err().contains("base64"));
    }

    #[test]
    fn ids_are_stable_and_dot_free() {
        assert_eq!(webhook_id(["m1"].into_iter(), false), "m1");
        let dotted = webhook_id(["a.b"].into_iter(), false);
        assert!(dotted.starts_with("msg_") && !dotted.contains('.'));
        for odd in ["a\u{7f}1", "a b", "zürich", ""] {
            let id = webhook_id([odd].into_iter(), false);
            assert!(
                id.starts_with("msg_") && id.bytes().all(|b| b.is_ascii_graphic()),
                "{odd:?} → {id}"
            );
        }
        let b1 = webhook_id(["m1", "m2"].into_iter(), true);
        assert_eq!(b1, webhook_id(["m1", "m2"].into_iter(), true));
        assert_ne!(b1, webhook_id(["m2", "m1"].into_iter(), true));
    }
}
