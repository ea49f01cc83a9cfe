use chrono::TimeZone;
use serde_json::json;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

fn run(v: Value, implied: Option<MessageType>, d: &BatchDefaults) -> Result<Normalized, Invalid> {
    normalize(&v.to_string(), implied, d, now(), || "generated-id".into())
}

fn group(v: Value) -> Result<Normalized, Invalid> {
    run(v, Some(MessageType::Group), &BatchDefaults::default())
}

#[test]
fn group_needs_group_id_and_an_identity() {
    assert_eq!(
        group(json!({"userId": "u"})).unwrap_err().0,
        "groupId is required"
    );
    assert_eq!(
        group(json!({"userId": "u", "groupId": ""})).unwrap_err().0,
        "groupId is required"
    );
    assert_eq!(
        group(json!({"groupId": "g"})).unwrap_err().0,
        "userId or anonymousId is required"
    );
    let n = group(json!({"anonymousId": 7, "groupId": 42})).unwrap();
    assert_eq!(n.group_id.as_deref(), Some("42"));
    assert_eq!(n.message().unwrap()["anonymousId"], "7");
    assert_eq!(n.message().unwrap()["groupId"], "42");
    assert_eq!(n.message().unwrap()["type"], "group");
}

#[test]
fn field_shapes_are_checked() {
    let bad = |v: Value| group(v).unwrap_err().0;
    assert_eq!(
        bad(json!({"userId": "u", "groupId": "g", "traits": []})),
        "traits must be an object"
    );
    assert_eq!(
        bad(json!({"userId": "u", "groupId": "g", "context": "x"})),
        "context must be an object"
    );
    assert_eq!(
        bad(json!({"userId": "u", "groupId": "g", "integrations": 1})),
        "integrations must be an object"
    );
    assert_eq!(
        bad(json!({"userId": {}, "groupId": "g"})),
        "userId must be a string or a number"
    );
    assert_eq!(
        bad(json!({"userId": "u", "groupId": "g", "messageId": "x".repeat(101)})),
        "messageId is longer than 100 characters"
    );
    assert_eq!(bad(json!([1])), "message is not a JSON object");
    assert!(group(json!({"userId": "u", "groupId": "g", "messageId": "x".repeat(100)})).is_ok());
}

#[test]
fn batch_messages_need_a_known_type() {
    let d = BatchDefaults::default();
    assert_eq!(
        run(json!({"userId": "u"}), None, &d).unwrap_err().0,
        "type is required on each message in a batch"
    );
    assert!(
        run(json!({"userId": "u", "type": "bogus"}), None, &d)
            .unwrap_err()
            .0
            .starts_with("type `bogus`")
    );
    assert_eq!(
        run(json!({"userId": "u", "type": "track"}), None, &d)
            .unwrap_err()
            .0,
        "event is required on a track call"
    );
    assert!(
        run(
            json!({"userId": "u", "type": "track", "event": "x"}),
            None,
            &d
        )
        .is_ok()
    );
}

#[test]
fn message_id_generated_and_write_key_dropped() {
    let n = group(json!({"userId": "u", "groupId": "g", "writeKey": "secret"})).unwrap();
    assert_eq!(n.message_id, "generated-id");
    assert_eq!(n.message().unwrap()["messageId"], "generated-id");
    assert!(!n.message().unwrap().contains_key("writeKey"));
}

#[test]
fn batch_defaults_merge_with_message_keys_winning() {
    let d = BatchDefaults {
        context: Some(
            json!({"ip": "1.1.1.1", "library": {"name": "batch"}})
                .as_object()
                .cloned()
                .unwrap(),
        ),
        integrations: Some(
            json!({"All": false, "Hook": true})
                .as_object()
                .cloned()
                .unwrap(),
        ),
        sent_at: Some(json!("2024-05-01T12:00:10Z")),
    };
    let n = run(
        json!({"type": "group", "userId": "u", "groupId": "g", "context": {"ip": "2.2.2.2"},
               "integrations": {"Hook": false}, "timestamp": "2024-05-01T12:00:00Z"}),
        None,
        &d,
    )
    .unwrap();
    assert_eq!(
        n.message().unwrap()["context"],
        json!({"ip": "2.2.2.2", "library": {"name": "batch"}})
    );
    assert_eq!(
        n.message().unwrap()["integrations"],
        json!({"Hook": false, "All": false})
    );
    assert_eq!(n.message().unwrap()["sentAt"], "2024-05-01T12:00:10Z");
    // The client clock is 10 s ahead of ours: the event happened 10 s before we received it.
    assert_eq!(
        n.message().unwrap()["timestamp"],
        "2024-05-01T11:59:50.000Z"
    );
    assert_eq!(
        n.message().unwrap()["originalTimestamp"],
        "2024-05-01T12:00:00Z"
    );
    assert_eq!(
        n.message().unwrap()["receivedAt"],
        "2024-05-01T12:00:00.000Z"
    );
}

#[test]
fn timestamps_without_skew_information() {
    let n = group(json!({"userId": "u", "groupId": "g"})).unwrap();
    assert_eq!(
        n.message().unwrap()["timestamp"],
        "2024-05-01T12:00:00.000Z"
    );
    assert!(!n.message().unwrap().contains_key("originalTimestamp"));
    let n = group(json!({"userId": "u", "groupId": "g", "timestamp": "2020-01-01T00:00:00+01:00"}))
        .unwrap();
    assert_eq!(
        n.message().unwrap()["timestamp"],
        "2019-12-31T23:00:00.000Z"
    );
    assert_eq!(
        group(json!({"userId": "u", "groupId": "g", "sentAt": "nope"}))
            .unwrap_err()
            .0,
        "sentAt is not an ISO-8601 date"
    );
}

#[test]
fn group_traits_are_normalized_and_counted() {
    let n = group(json!({"userId": "u", "groupId": "g", "traits": {"Created At": 1700000000, "EMPLOYEES": "12"}})).unwrap();
    assert_eq!(
        n.message().unwrap()["traits"],
        json!({"createdAt": "2023-11-14T22:13:20.000Z", "employees": 12})
    );
    assert!(!n.unparsed_created_at);
    let n = group(json!({"userId": "u", "groupId": "g", "traits": {"created_at": "whenever"}}))
        .unwrap();
    assert!(n.unparsed_created_at);
    // Track properties are not traits: untouched.
    let d = BatchDefaults::default();
    let n = run(
        json!({"type": "track", "event": "e", "userId": "u", "properties": {"created_at": 1}}),
        None,
        &d,
    )
    .unwrap();
    assert_eq!(n.message().unwrap()["properties"], json!({"created_at": 1}));
}

#[test]
fn extreme_dates_are_refused_not_a_panic() {
    let r = group(json!({"userId": "u", "groupId": "g",
        "timestamp": "+200000-01-01T00:00:00", "sentAt": "-200000-01-01T00:00:00"}));
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn a_wild_sent_at_cannot_push_the_timestamp_out_of_four_digit_years() {
    // sentAt 8,000 years ahead of timestamp: received − (sentAt − timestamp) is year −5976.
    let r = group(json!({"userId": "u", "groupId": "g",
        "timestamp": "2024-05-01T12:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}));
    assert_eq!(
        r.unwrap_err().0,
        "timestamp and sentAt are too far apart to correct for skew"
    );
    // A sane skew is still corrected.
    let ok = group(json!({"userId": "u", "groupId": "g",
        "timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:05Z"}))
    .unwrap();
    assert_eq!(
        ok.message().unwrap()["timestamp"],
        "2024-05-01T11:59:55.000Z"
    );
}

#[test]
fn fields_outside_the_head_are_stored_as_written_and_the_head_agrees_with_the_text() {
    let text = r#"{"writeKey":"k","context":{"ip" : "1.2.3.4","n":1.50e2},"type":"track","event":"E","userId":7,"properties":{"big":123456789012345678901234567890},"timestamp":"2024-05-01T12:00:00Z"}"#;
    let n = normalize(text, None, &BatchDefaults::default(), now(), || {
        "generated-id".into()
    })
    .unwrap();
    assert!(
        n.body
            .starts_with(r#"{"context":{"ip" : "1.2.3.4","n":1.50e2},"type":"track""#),
        "{}",
        n.body
    );
    assert!(
        n.body
            .contains(r#""properties":{"big":123456789012345678901234567890}"#),
        "{}",
        n.body
    );
    let whole = n.message().unwrap();
    let keys: Vec<&str> = whole.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "context",
            "type",
            "event",
            "userId",
            "properties",
            "timestamp",
            "messageId",
            "receivedAt",
            "originalTimestamp"
        ]
    );
    assert_eq!(whole["userId"], "7");
    for (k, v) in &n.head {
        assert!(crate::message::HEAD_FIELDS.contains(&k.as_str()), "{k}");
        assert_eq!(&whole[k], v, "{k}");
    }
    assert!(!n.head.contains_key("context") && !n.head.contains_key("properties"));
    let head: Vec<&str> = n.head.keys().map(String::as_str).collect();
    assert_eq!(head, ["type", "userId", "messageId"]);
}

#[test]
fn a_merged_context_stays_where_the_message_had_it() {
    let d = BatchDefaults {
        context: Some(
            json!({"library": {"name": "batch"}})
                .as_object()
                .cloned()
                .unwrap(),
        ),
        ..BatchDefaults::default()
    };
    let n = run(
        json!({"context": {"ip": "1.1.1.1"}, "type": "group", "userId": "u", "groupId": "g"}),
        None,
        &d,
    )
    .unwrap();
    let whole = n.message().unwrap();
    assert_eq!(whole.keys().next().map(String::as_str), Some("context"));
    assert_eq!(
        whole["context"],
        json!({"ip": "1.1.1.1", "library": {"name": "batch"}})
    );
}

fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e300f64..1.0e300).prop_map(Value::from),
        "[a-zA-Z0-9 \"\\\\/é\u{1F600}\n]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z _]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// However a call is formatted, it is normalized to the same message; the fields ingest
    /// does not check come out as they went in; the head agrees with the stored text.
    #[test]
    fn layout_does_not_matter_and_unchecked_fields_pass_through(
        extra in proptest::collection::btree_map("[a-zA-Z_]{1,10}", json_value(), 0..8),
        context in proptest::collection::btree_map("[a-z]{1,6}", json_value(), 0..6),
    ) {
        let mut call = json!({"type": "group", "userId": "u", "groupId": "g", "traits": {"Name": "A"}});
        let map = call.as_object_mut().unwrap();
        // Fields ingest passes through untouched: not checked, and not `traits` (normalized
        // as text).
        let passed = |k: &str| !crate::message::checked(k) && k != "traits";
        for (k, v) in &extra {
            if passed(k) {
                map.insert(k.clone(), v.clone());
            }
        }
        map.insert("context".into(), Value::Object(context.into_iter().collect()));
        let run = |text: &str| {
            normalize(text, None, &BatchDefaults::default(), now(), || "id".into())
        };
        let compact = run(&call.to_string());
        let pretty = run(&serde_json::to_string_pretty(&call).unwrap());
        proptest::prop_assert_eq!(compact.is_ok(), pretty.is_ok());
        let Ok(compact) = compact else { return Ok(()) };
        let pretty = pretty.unwrap();
        let whole = compact.message().unwrap();
        proptest::prop_assert_eq!(&whole, &pretty.message().unwrap());
        proptest::prop_assert_eq!(&compact.head, &pretty.head);
        // Compared as parsed from the same text: serde_json's float parsing may not give back
        // the very number it printed.
        let sent: Map<String, Value> = serde_json::from_str(&call.to_string()).unwrap();
        for (k, v) in &sent {
            if passed(k) && k != "writeKey" {
                proptest::prop_assert_eq!(whole.get(k), Some(v), "{}", k);
            }
        }
        for (k, v) in &compact.head {
            proptest::prop_assert_eq!(whole.get(k), Some(v), "{}", k);
        }
    }
}

#[test]
fn ingest_says_where_traits_are_in_the_stored_text() {
    for traits in [
        json!({"Name": "A", "address": {"zip": "1"}}),
        json!({"name": "A"}),
        json!({}),
    ] {
        let n = group(json!({"userId": "u", "groupId": "g", "traits": traits, "x": {"traits": 1}}))
            .unwrap();
        let at = n.traits_at.clone().expect("a span");
        let text: Value = serde_json::from_str(&n.body[at]).unwrap();
        assert_eq!(text, n.message().unwrap()["traits"]);
    }
    let none = group(json!({"userId": "u", "groupId": "g", "traits": null})).unwrap();
    assert_eq!(none.traits_at, None);
    let absent = group(json!({"userId": "u", "groupId": "g"})).unwrap();
    assert_eq!(absent.traits_at, None);
}

/// A group's calls normalize their traits as the first call did when they repeat them byte
/// for byte (kept, `crate::memo`), and afresh when they change, back and forth; an identify
/// call with the same `groupId` is never given the group's.
#[test]
fn a_group_repeating_or_changing_its_traits_is_normalized_each_time() {
    let group_id = "memo-test-group";
    let a = json!({"Created At": "2024-01-02", "Address": {"zip": "10115"}, "employees": "12"});
    let b = json!({"name": "Beta", "createdAt": "not a date"});
    let call = |traits: &Value, ty: &str| {
        let n = run(
            json!({"type": ty, "userId": "u", "groupId": group_id, "traits": traits}),
            None,
            &BatchDefaults::default(),
        )
        .unwrap();
        (
            n.message().unwrap()["traits"].clone(),
            n.unparsed_created_at,
        )
    };
    let a_normal = json!({"createdAt": "2024-01-02T00:00:00.000Z",
        "address": {"postalCode": "10115"}, "employees": 12});
    for _ in 0..2 {
        assert_eq!(call(&a, "group"), (a_normal.clone(), false));
        assert_eq!(call(&a, "group"), (a_normal.clone(), false));
        assert_eq!(call(&b, "group"), (b.clone(), true));
        assert_eq!(call(&b, "group"), (b.clone(), true));
    }
    // Same text from an identify call: its own traits, normalized alike (and not kept).
    assert_eq!(call(&a, "identify"), (a_normal, false));
}
