//! The split against a full parse: same refusals at the same place, same object back.

use super::*;

proptest::proptest! {
    /// Any text, valid or not: refused exactly when a full parse refuses it, with the
    /// same words at the same place, and split when it is an object.
    #[test]
    fn refuses_what_a_full_parse_refuses_and_nothing_else(
        edits in proptest::collection::vec(
            (0usize..400, proptest::sample::select(vec![
                "", "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "\\ud800", "\\udc00",
                "1e999", "-", "0", ".5", "e5", "null", "\n", " ", "\u{1}",
            ])),
            0..4,
        ),
        cut in 0usize..400,
    ) {
        let mut text = String::from(
            r#"{"type":"group","context":{"ip":"1.2.3.4","n":[1,2.5,-3e2],"s":"a\"b"},"traits":{"name":"A","n":7},"properties":{"k":[true,null,{"x":"\u00e9"}]},"x":1}"#,
        );
        for (at, insert) in edits {
            let at = (0..=at.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(at, insert);
        }
        if cut < text.len() && text.is_char_boundary(cut) && cut % 3 == 0 {
            text.truncate(cut);
        }
        let full = serde_json::from_str::<Value>(&text);
        match (Entries::parse(&text), full) {
            (Ok(Some(e)), Ok(Value::Object(m))) => {
                let mut out = Vec::new();
                e.write(&mut out).unwrap();
                let back: Map<String, Value> = serde_json::from_slice(&out).unwrap();
                proptest::prop_assert_eq!(back, m);
            }
            (Ok(None), Ok(v)) => proptest::prop_assert!(!v.is_object()),
            (Err(ours), Err(theirs)) => {
                proptest::prop_assert_eq!(ours.to_string(), theirs.to_string())
            }
            (ours, theirs) => proptest::prop_assert!(false, "{:?} vs {:?} for {}", ours.map(|_| ()), theirs, text),
        }
    }
}

/// The check as first written, a byte at a time: the one in use must answer as it does.
fn plainly_sound_bytewise(text: &str) -> bool {
    let mut brackets = 0;
    let mut digits = 0;
    let mut previous = b' ';
    for &b in text.as_bytes() {
        match b {
            b'[' | b'{' => brackets += 1,
            b'u' if previous == b'\\' => return false,
            b'e' | b'E' if previous.is_ascii_digit() || previous == b'.' => return false,
            _ => {}
        }
        digits = if b.is_ascii_digit() { digits + 1 } else { 0 };
        if brackets > TEXT_DEPTH || digits > 300 {
            return false;
        }
        previous = b;
    }
    true
}

proptest::proptest! {
    #[test]
    fn the_plain_check_answers_as_the_bytewise_one(
        pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "a", "e", "E", "u", "\\", ".", "0", "7", "[", "{", "]", "\"", " ", "é",
                "12345678901234567890123456789012345678901234567890",
                "[[[[[[[[[[[[[[[[[[[[[[[[[", "\\u00e9", "1e5", "2.E",
            ]),
            0..120,
        ),
    ) {
        let text = pieces.concat();
        proptest::prop_assert_eq!(plainly_sound(&text), plainly_sound_bytewise(&text), "{}", text);
    }
}

#[test]
fn plain_text_is_told_from_text_worth_walking() {
    assert!(plainly_sound(
        r#"{"ip":"1.2.3.4","n":[1,2.5,-3],"s":"a\"b\\n","e":"use"}"#
    ));
    for worth in [
        r#"{"s":"\u0041"}"#,
        r#"[1e5]"#,
        r#"[1.E5]"#,
        r#"[2.5e-3]"#,
        r#""version 1e5""#,
    ] {
        assert!(!plainly_sound(worth), "{worth}");
    }
    assert!(!plainly_sound(&"9".repeat(301)));
    assert!(plainly_sound(&"9".repeat(300)));
    assert!(!plainly_sound(&"[".repeat(TEXT_DEPTH + 1)));
}

fn text(e: &Entries<'_>) -> String {
    let mut out = Vec::new();
    e.write(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn head_fields_are_parsed_the_rest_kept_as_written() {
    let body = r#"{"type":"group", "context":{"ip" : "1.2.3.4","n":1.0e2},"integrations":{"name":"A\u0063me"},"traits":{"n" : 1},"x":[1, 2]}"#;
    let e = Entries::parse(body).unwrap().unwrap();
    assert_eq!(e.value("integrations").unwrap()["name"], "Acme");
    assert!(matches!(e.get("context"), Some(Entry::Text(_))));
    assert!(
        matches!(e.get("traits"), Some(Entry::Text(_))),
        "normalized as text"
    );
    assert_eq!(
        text(&e),
        r#"{"type":"group","context":{"ip" : "1.2.3.4","n":1.0e2},"integrations":{"name":"Acme"},"traits":{"n" : 1},"x":[1, 2]}"#
    );
    let full: Value = serde_json::from_str(body).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text(&e)).unwrap(), full);
}

#[test]
fn a_repeated_key_keeps_its_first_place_and_last_value() {
    for n in [2, SCAN_KEYS + 5] {
        let mut body = String::from("{");
        for i in 0..n {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str("\"k0\":\"last\",\"type\":1,\"type\":\"group\"}");
        let e = Entries::parse(&body).unwrap().unwrap();
        let full: Map<String, Value> = serde_json::from_str(&body).unwrap();
        let got: Map<String, Value> = serde_json::from_str(&text(&e)).unwrap();
        assert_eq!(got, full);
        let keys: Vec<&String> = got.keys().collect();
        assert_eq!(keys, full.keys().collect::<Vec<_>>(), "n = {n}");
    }
}

#[test]
fn what_a_full_parse_refuses_is_refused_at_the_same_place() {
    for bad in [
        r#"{"a":}"#,
        r#"{"context":{"a":1}"#,
        r#"{"a":1} x"#,
        r#"{"context":"\ud800"}"#,
        r#"{"properties":{"n":1e999}}"#,
        r#"{"context":{"a":"\x"}}"#,
        "[1",
        r#"{"context":{"a":"\ud800\u0041"},"traits":{}}"#,
        r#"{"context":{"a":1}, "properties":[1,]}"#,
        r#"{"type":"group","context":{"a":1}"#,
        r#"{"context":{"a":"\udc00"}}"#,
        r#"{"properties":{"n":-2.5E+400}}"#,
        r#"{"properties":{"n":[1.0e309]}}"#,
    ] {
        let full = serde_json::from_str::<Value>(bad).unwrap_err();
        let ours = Entries::parse(bad).unwrap_err();
        assert_eq!(ours.to_string(), full.to_string(), "{bad}");
    }
    let deep = format!("{{\"context\":{}{}}}", "[".repeat(127), "]".repeat(127));
    let full = serde_json::from_str::<Value>(&deep).unwrap_err();
    let ours = Entries::parse(&deep).unwrap_err();
    assert_eq!(
        ours.to_string(),
        full.to_string(),
        "nesting counted from the top"
    );
    let long = format!("{{\"properties\":{{\"n\":{}}}}}", "9".repeat(400));
    let full = serde_json::from_str::<Value>(&long).unwrap_err();
    let ours = Entries::parse(&long).unwrap_err();
    assert_eq!(ours.to_string(), full.to_string(), "hundreds of digits");
    let deep = format!("{{\"context\":{}{}}}", "[".repeat(126), "]".repeat(126));
    assert!(serde_json::from_str::<Value>(&deep).is_ok());
    assert!(
        Entries::parse(&deep).unwrap().is_some(),
        "as deep as a full parse takes"
    );
    assert!(Entries::parse("[1]").unwrap().is_none());
    assert!(Entries::parse(" 7 ").unwrap().is_none());
}
