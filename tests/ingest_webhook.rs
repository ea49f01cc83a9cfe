//! The spine end to end: ingest → normalize → route → webhook, through the real daemon.

mod common;

use common::{Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "test-write-key";

fn hook(name: &str, receiver: &Receiver, path: &str, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{}\"\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n{extra}\n",
        receiver.url(path)
    )
}

fn source() -> String {
    format!("[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n")
}

fn traits_every_spelling() -> Value {
    json!({
        "Name": "Acme", "created_at": "2024-05-01T12:00:00+02:00", "EMPLOYEES": "329",
        "e mail": "ops@acme.test", "Phone": "+1 555", "web_site": "https://acme.test",
        "Industry": "Rockets", "DESCRIPTION": "d", "avatar": "https://a", "P-L-A-N": "pro", "ID": "acme-1",
        "ADDRESS": {"Street": "1 Main", "CITY": "Zürich", "postal_code": "8001", "State": "ZH", "country": "CH"},
        "customTrait": {"Keep Me": 1}
    })
}

fn canonical_traits() -> Value {
    json!({
        "name": "Acme", "createdAt": "2024-05-01T10:00:00.000Z", "employees": 329,
        "email": "ops@acme.test", "phone": "+1 555", "website": "https://acme.test",
        "industry": "Rockets", "description": "d", "avatar": "https://a", "plan": "pro", "id": "acme-1",
        "address": {"street": "1 Main", "city": "Zürich", "postalCode": "8001", "state": "ZH", "country": "CH"},
        "customTrait": {"Keep Me": 1}
    })
}

#[tokio::test]
async fn group_call_arrives_normalized_and_signed() {
    let rx = Receiver::start().await;
    let config = format!(
        "{}{}",
        source(),
        hook("Hook", &rx, "/hook", "signing_secret = \"s3cret\"")
    );
    let d = Daemon::start("", &config).await;

    let (status, body) = d
        .post("/v1/group", Some(KEY), &json!({"userId": "u1", "groupId": 42, "messageId": "m-single", "traits": traits_every_spelling()}))
        .await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let got = rx.wait_for("/hook", 1).await;
    let msg = got[0].json();
    assert_eq!(msg["type"], "group");
    assert_eq!(msg["groupId"], "42");
    assert_eq!(msg["messageId"], "m-single");
    assert_eq!(msg["traits"], canonical_traits());
    assert!(msg.get("receivedAt").is_some());
    let sig = got[0].header("x-signature").unwrap();
    assert_eq!(sig, hmac_sha1_hex(b"s3cret", &got[0].body));

    // The same inside a batch, with createdAt as Unix seconds and milliseconds.
    let batch = json!({"batch": [
        {"type": "group", "userId": "u1", "groupId": "g-s", "traits": {"createdAt": 1714557600}},
        {"type": "group", "userId": "u1", "groupId": "g-ms", "traits": {"Created At": "1714557600000"}},
        {"type": "group", "userId": "u1", "groupId": "g-all", "traits": traits_every_spelling()},
    ], "sentAt": "2024-05-01T12:00:00Z"});
    let (status, body) = d.post("/v1/batch", Some(KEY), &batch).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let got = rx.wait_for("/hook", 4).await;
    let by_group = |g: &str| {
        got.iter()
            .map(|c| c.json())
            .find(|m| m["groupId"] == g)
            .unwrap()
    };
    assert_eq!(
        by_group("g-s")["traits"]["createdAt"],
        "2024-05-01T10:00:00.000Z"
    );
    assert_eq!(
        by_group("g-ms")["traits"]["createdAt"],
        "2024-05-01T10:00:00.000Z"
    );
    assert_eq!(by_group("g-all")["traits"], canonical_traits());
    assert_eq!(by_group("g-all")["sentAt"], "2024-05-01T12:00:00Z");
    for c in &got {
        assert_eq!(
            c.header("x-signature").unwrap(),
            hmac_sha1_hex(b"s3cret", &c.body)
        );
    }
}

fn hmac_sha1_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
