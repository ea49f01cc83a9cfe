//! Reserved group traits recognised whatever their spelling, and their values normalized.

use std::borrow::Cow;
use std::sync::LazyLock;

use serde_json::Value;
use serde_json::value::RawValue;

use super::entries::{Entries, Entry};
use super::time;
use crate::memo::GroupMemo;

/// The groups' last traits as [`normalize`] left them: most group calls repeat their group's
/// traits byte for byte, and those are not split again (see `crate::memo`).
static KEPT: LazyLock<GroupMemo<(Option<String>, TraitReport)>> =
    LazyLock::new(|| GroupMemo::new(KEPT_BYTES));

/// What [`KEPT`] may hold: the traits of some thousands of groups.
const KEPT_BYTES: usize = 4 << 20;

/// Reserved group traits (Segment spec, group.md), by their folded spelling.
const RESERVED: &[(&str, &str)] = &[
    ("address", "address"),
    ("avatar", "avatar"),
    ("createdat", "createdAt"),
    ("description", "description"),
    ("email", "email"),
    ("employees", "employees"),
    ("id", "id"),
    ("industry", "industry"),
    ("name", "name"),
    ("phone", "phone"),
    ("website", "website"),
    ("plan", "plan"),
];

/// `address` sub-keys; `zip` and `postal_code` both mean `postalCode` (Facade's address helper).
const ADDRESS: &[(&str, &str)] = &[
    ("city", "city"),
    ("country", "country"),
    ("postalcode", "postalCode"),
    ("zip", "postalCode"),
    ("state", "state"),
    ("street", "street"),
];

/// What normalizing one traits object found worth counting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraitReport {
    /// `createdAt` was present but in no form we can read; it was kept as given.
    pub unparsed_created_at: bool,
}

/// The canonical spelling of a reserved key, recognised by its letters and digits alone,
/// lower-cased: `Created At`, `created_at` → `createdAt`.
fn canonical(key: &str, table: &[(&str, &'static str)]) -> Option<&'static str> {
    // Folded into a small buffer instead of a String: this runs for every trait key of every
    // message. Reserved names are short and ASCII, so anything else matches nothing.
    let mut buf = [0u8; 16];
    let mut len = 0;
    if key.is_ascii() {
        for &b in key.as_bytes().iter().filter(|b| b.is_ascii_alphanumeric()) {
            if len == buf.len() {
                return None;
            }
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    } else {
        for c in key.chars().filter(|c| c.is_alphanumeric()) {
            if !c.is_ascii() || len == buf.len() {
                return None;
            }
            buf[len] = c.to_ascii_lowercase() as u8;
            len += 1;
        }
    }
    let folded = &buf[..len];
    // Length and first letter first: most keys differ from every name in one of them, and
    // this runs for every trait key of every message.
    table
        .iter()
        .find(|(f, _)| {
            let f = f.as_bytes();
            f.len() == len && f.first() == folded.first() && f == folded
        })
        .map(|(_, c)| *c)
}

/// An object's members, as normalize reads and rewrites them.
type Members<'a> = Vec<(Cow<'a, str>, Entry<'a>)>;

/// Rename reserved keys to their canonical spelling, keeping order. The canonical spelling
/// wins over any other; among other spellings, the first one wins. Custom keys are untouched.
/// Returns whether anything changed.
fn canonicalize(members: &mut Members<'_>, table: &[(&str, &'static str)]) -> bool {
    // Each key folded once. Most calls spell every reserved key canonically: nothing to
    // rename, nothing rebuilt.
    let spelled: Vec<Option<&'static str>> =
        members.iter().map(|(k, _)| canonical(k, table)).collect();
    if members
        .iter()
        .zip(&spelled)
        .all(|((k, _), c)| c.is_none_or(|c| c == k))
    {
        return false;
    }
    let given = std::mem::take(members);
    // Where each canonical name went: only those can meet again (custom keys are distinct,
    // and none is spelled like a reserved one).
    let mut placed: Vec<(&'static str, usize)> = Vec::new();
    let mut canonical_seen: Vec<&'static str> = Vec::new();
    for ((key, value), c) in given.into_iter().zip(spelled) {
        match c {
            Some(c) if key == c => {
                canonical_seen.push(c);
                put(members, &mut placed, c, key, value);
            }
            Some(c) => {
                if !canonical_seen.contains(&c) && !placed.iter().any(|(p, _)| *p == c) {
                    put(members, &mut placed, c, Cow::Borrowed(c), value);
                }
            }
            None => members.push((key, value)),
        }
    }
    true
}

/// Place canonical name `c` as a map insert does: where it is already, with the new value.
fn put<'a>(
    members: &mut Members<'a>,
    placed: &mut Vec<(&'static str, usize)>,
    c: &'static str,
    key: Cow<'a, str>,
    value: Entry<'a>,
) {
    match placed.iter().find(|(p, _)| *p == c) {
        Some(&(_, i)) => members[i].1 = value,
        None => {
            placed.push((c, members.len()));
            members.push((key, value));
        }
    }
}

/// [`normalize`] the traits of a call of `group` (`None`: a call of no group, normalized
/// afresh), taking what the group's last call gave when its traits were the same text.
pub fn normalize_of(
    group: Option<&str>,
    traits: &RawValue,
) -> Result<(Option<String>, TraitReport), serde_json::Error> {
    let Some(group) = group else {
        return normalize(traits);
    };
    if let Some(kept) = KEPT.get(group, traits.get()) {
        return Ok(kept);
    }
    let made = normalize(traits)?;
    if KEPT.wants() {
        let size = made.0.as_ref().map_or(0, String::len);
        KEPT.keep(group, traits.get(), made.clone(), size);
    }
    Ok(made)
}

/// Normalize a traits object, JSON text that ingest checked: spellings, `address` sub-keys,
/// `createdAt`, `employees`; every other value kept as the sender wrote it, but for blanks
/// between the tokens of an object or array, which go. `None`: the text is normal already
/// (the common case, copied into the stored message as it came). Nothing is built into a
/// tree but the few values looked at.
pub fn normalize(traits: &RawValue) -> Result<(Option<String>, TraitReport), serde_json::Error> {
    let mut report = TraitReport::default();
    let mut members = Entries::members(traits)?;
    let mut changed = members.repeated;
    let list = members.list_mut();
    changed |= canonicalize(list, RESERVED);
    for (key, entry) in list.iter_mut() {
        let Entry::Text(raw) = *entry else {
            continue;
        };
        let text = raw.get();
        let replaced = match key.as_ref() {
            "address" if text.starts_with('{') => {
                let mut address = Entries::members(raw)?;
                let mut moved = address.repeated;
                let sub = address.list_mut();
                moved |= canonicalize(sub, ADDRESS);
                moved |= compact(sub)?;
                if moved {
                    let mut out = Vec::new();
                    address.write(&mut out)?;
                    Some(Entry::Written(written(out)))
                } else {
                    None
                }
            }
            // Written as ingest writes dates already (a string without escapes). JSON text
            // begins and ends with ASCII, so the slice is on characters; `get` says so.
            "createdAt"
                if text.len() == 26
                    && text.starts_with('"')
                    && text.get(1..25).is_some_and(time::is_canonical) =>
            {
                None
            }
            "createdAt" => {
                let value = crate::message::parse(text)?;
                match time::parse_any(&value) {
                    Some(dt) => Some(Entry::Value(Value::String(time::format(dt)))),
                    None if value.is_null() => None,
                    None => {
                        report.unparsed_created_at = true;
                        blank(text).then_some(Entry::Value(value))
                    }
                }
            }
            "employees" => {
                let value = crate::message::parse(text)?;
                match integral(&value) {
                    Some(n) if text != n.to_string() => Some(Entry::Value(Value::from(n))),
                    Some(_) => None,
                    None => blank(text).then_some(Entry::Value(value)),
                }
            }
            _ if blank(text) => Some(Entry::Value(crate::message::parse(text)?)),
            _ => None,
        };
        if let Some(e) = replaced {
            *entry = e;
            changed = true;
        }
    }
    if !changed {
        return Ok((None, report));
    }
    let mut out = Vec::new();
    members.write(&mut out)?;
    Ok((Some(written(out)), report))
}

/// Members whose text has blanks between tokens, parsed to be written without them; returns
/// whether there were any.
fn compact(members: &mut Members<'_>) -> Result<bool, serde_json::Error> {
    let mut any = false;
    for (_, entry) in members.iter_mut() {
        if let Entry::Text(raw) = *entry
            && blank(raw.get())
        {
            *entry = Entry::Value(crate::message::parse(raw.get())?);
            any = true;
        }
    }
    Ok(any)
}

/// Whether JSON `text` has a blank between tokens (outside its strings): only an object or
/// an array can (a value kept as text has none around it).
fn blank(text: &str) -> bool {
    if !matches!(text.as_bytes().first(), Some(b'{' | b'[')) {
        return false;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b' ' | b'\t' | b'\n' | b'\r' if !in_string => return true,
            _ => {}
        }
    }
    false
}

/// Text `Entries::write` produced: JSON, so UTF-8.
fn written(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An integral number, or a string holding one, as an integer.
pub fn integral(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, json};

    fn normalized(v: &Value) -> (Value, TraitReport) {
        assert!(v.is_object(), "object expected");
        let text = v.to_string();
        let raw: &RawValue = serde_json::from_str(&text).unwrap();
        let (rewritten, report) = normalize(raw).unwrap();
        let out = rewritten.as_deref().unwrap_or(&text);
        (serde_json::from_str(out).unwrap(), report)
    }

    fn run(v: Value) -> Value {
        normalized(&v).0
    }

    #[test]
    fn every_spelling_becomes_canonical() {
        let got = run(json!({
            "Name": "Acme", "created_at": "2024-01-01", "NUMBER": 1, "Employees": "329",
            "Address": {"Postal Code": "10115", "street": "Main St 1", "CITY": "Berlin"},
            "Website": "https://acme.test", "customKey_x": {"Nested Key": 1}
        }));
        assert_eq!(
            got,
            json!({
                "name": "Acme", "createdAt": "2024-01-01T00:00:00.000Z", "NUMBER": 1,
                "employees": 329,
                "address": {"postalCode": "10115", "street": "Main St 1", "city": "Berlin"},
                "website": "https://acme.test", "customKey_x": {"Nested Key": 1}
            })
        );
    }

    #[test]
    fn canonical_spelling_wins_then_first() {
        assert_eq!(
            run(json!({"created_at": 1, "createdAt": "2024-01-01"}))["createdAt"],
            "2024-01-01T00:00:00.000Z"
        );
        assert_eq!(
            run(json!({"createdAt": "2024-01-01", "created_at": 1}))["createdAt"],
            "2024-01-01T00:00:00.000Z"
        );
        assert_eq!(
            run(json!({"Name": "first", "NAME": "second"})),
            json!({"name": "first"})
        );
        assert_eq!(
            run(json!({"address": {"zip": "1", "postal_code": "2"}})),
            json!({"address": {"postalCode": "1"}})
        );
    }

    #[test]
    fn values_kept_when_not_understood() {
        let (t, report) = normalized(&json!({"createdAt": "soon", "employees": "10-50"}));
        assert_eq!(t, json!({"createdAt": "soon", "employees": "10-50"}));
        assert!(report.unparsed_created_at);
        assert_eq!(
            run(json!({"employees": 12.0, "createdAt": null})),
            json!({"employees": 12, "createdAt": null})
        );
        assert_eq!(run(json!({"employees": 12.5})), json!({"employees": 12.5}));
    }

    /// The text of `traits` after normalizing: `None` when it was normal already.
    fn rewritten(text: &str) -> Option<String> {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        normalize(raw).unwrap().0
    }

    #[test]
    fn normal_traits_are_kept_as_sent() {
        let text = r#"{"name":"Acme Inc","createdAt":"2024-05-01T10:00:00.000Z","employees":329,"address":{"city":"B","postalCode":"1"},"mrr":1234.50,"e":"\u00e9","tags":["a","b"],"custom":{"x":{"y":"a b"}}}"#;
        assert_eq!(
            rewritten(text),
            None,
            "copied into the stored message as it came"
        );
    }

    #[test]
    fn rewritten_where_normalizing_changes_something() {
        // A repeated key keeps its first place and last value, as a full parse does.
        assert_eq!(
            rewritten(r#"{"a":1,"b":2,"a":3}"#).unwrap(),
            r#"{"a":3,"b":2}"#
        );
        // Blanks between tokens of objects and arrays go; strings keep theirs.
        assert_eq!(
            rewritten(r#"{"custom": {"a b": [1, 2]}, "name": "x y"}"#).unwrap(),
            r#"{"custom":{"a b":[1,2]},"name":"x y"}"#
        );
        // Values normalize does not change keep their text (a number as written).
        assert_eq!(
            rewritten(r#"{"Name":"A","mrr":1.50,"e":"\u00e9"}"#).unwrap(),
            r#"{"name":"A","mrr":1.50,"e":"\u00e9"}"#
        );
        assert_eq!(
            rewritten(r#"{"address":{"zip":"1","City":"B"},"employees":"12"}"#).unwrap(),
            r#"{"address":{"postalCode":"1","city":"B"},"employees":12}"#
        );
        assert_eq!(
            rewritten(r#"{"createdAt":1700000000}"#).unwrap(),
            r#"{"createdAt":"2023-11-14T22:13:20.000Z"}"#
        );
    }

    #[test]
    fn a_created_at_as_long_as_a_date_but_no_date_is_kept_and_counted() {
        // 26 bytes of JSON each, as a quoted canonical date is.
        for text in [
            r#"{"createdAt":{"x":"ééééééééé"}}"#,
            r#"{"createdAt":"éééééééééééé"}"#,
            r#"{"createdAt":12345678901234567890123456}"#,
        ] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            let (out, report) = normalize(raw).unwrap();
            assert!(report.unparsed_created_at, "{text}");
            assert!(out.is_none(), "kept as sent: {text}");
        }
    }

    #[test]
    fn a_key_spelled_many_ways_among_thousands_is_placed_at_once() {
        // Renaming never searches the custom keys: only canonical names can meet again.
        let mut traits = Map::new();
        for i in 0..20_000 {
            traits.insert(format!("k{i}"), json!(i));
        }
        traits.insert("Name".into(), json!("first"));
        traits.insert("NAME".into(), json!("second"));
        let got = run(Value::Object(traits));
        assert_eq!(got["name"], "first");
        assert_eq!(got.as_object().unwrap().len(), 20_001);
    }

    fn respell() -> impl Strategy<Value = (String, &'static str)> {
        let reserved = prop::sample::select(RESERVED.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        (
            reserved,
            prop::collection::vec(
                (any::<bool>(), prop::sample::select(vec!["", "_", " ", "-"])),
                0..12,
            ),
        )
            .prop_map(|(canon, noise)| {
                let mut s = String::new();
                for (i, ch) in canon.chars().enumerate() {
                    let (upper, sep) = noise.get(i).copied().unwrap_or((false, ""));
                    s.push_str(sep);
                    if upper {
                        s.extend(ch.to_uppercase())
                    } else {
                        s.extend(ch.to_lowercase())
                    }
                }
                (s, canon)
            })
    }

    proptest! {
        #[test]
        fn any_respelling_maps_to_its_canonical_key((spelled, canon) in respell(), v in "[a-z]{1,8}") {
            let got = run(json!({ spelled: v.clone() }));
            let obj = got.as_object().unwrap();
            prop_assert_eq!(obj.len(), 1);
            prop_assert!(obj.contains_key(canon), "{:?} did not map to {}", obj, canon);
        }

        #[test]
        fn custom_keys_are_untouched(key in "[a-zA-Z_ ]{1,12}", v in any::<i32>()) {
            prop_assume!(canonical(&key, RESERVED).is_none());
            let got = run(json!({ key.clone(): v }));
            prop_assert_eq!(got, json!({ key: v }));
        }

        #[test]
        fn seconds_and_millis_agree(secs in 31_557_600u64..4_000_000_000) {
            let a = run(json!({"createdAt": secs}));
            let b = run(json!({"createdAt": secs * 1000}));
            let c = run(json!({"createdAt": secs.to_string()}));
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &c);
        }

        #[test]
        fn normalizing_twice_changes_nothing((spelled, _c) in respell(), n in 0u64..4_000_000_000) {
            let once = run(json!({ spelled: "x", "created at": n, "Employees": n.to_string() }));
            prop_assert_eq!(run(once.clone()), once.clone());
            // And what normalize wrote is kept as it is the second time.
            prop_assert_eq!(rewritten(&once.to_string()), None);
        }
    }
}
