//! Reserved group traits recognised whatever their spelling, and their values normalized.

use serde_json::{Map, Value};

use super::time;

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

/// Rename reserved keys to their canonical spelling, keeping order. The canonical spelling
/// wins over any other; among other spellings, the first one wins. Custom keys are untouched.
fn canonicalize(traits: Map<String, Value>, table: &[(&str, &'static str)]) -> Map<String, Value> {
    // Most calls spell every reserved key canonically: nothing to rename, nothing rebuilt.
    if traits
        .keys()
        .all(|k| canonical(k, table).is_none_or(|c| c == k))
    {
        return traits;
    }
    let mut out = Map::with_capacity(traits.len());
    let mut canonical_seen: Vec<&'static str> = Vec::new();
    for (key, value) in traits {
        match canonical(&key, table) {
            Some(c) if key == c => {
                canonical_seen.push(c);
                out.insert(key, value);
            }
            Some(c) => {
                if !canonical_seen.contains(&c) && !out.contains_key(c) {
                    out.insert(c.to_string(), value);
                }
            }
            None => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// Normalize a traits object in place: spellings, `address` sub-keys, `createdAt`, `employees`.
pub fn normalize(traits: Map<String, Value>) -> (Map<String, Value>, TraitReport) {
    let mut report = TraitReport::default();
    let mut traits = canonicalize(traits, RESERVED);
    if let Some(Value::Object(address)) = traits.get_mut("address") {
        *address = canonicalize(std::mem::take(address), ADDRESS);
    }
    if let Some(created) = traits.get_mut("createdAt")
        && !created.as_str().is_some_and(time::is_canonical)
    {
        match time::parse_any(created) {
            Some(dt) => *created = Value::String(time::format(dt)),
            None if created.is_null() => {}
            None => report.unparsed_created_at = true,
        }
    }
    if let Some(employees) = traits.get_mut("employees")
        && let Some(n) = integral(employees)
    {
        *employees = Value::from(n);
    }
    (traits, report)
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
    use serde_json::json;

    fn run(v: Value) -> Value {
        let Value::Object(m) = v else {
            panic!("object expected")
        };
        Value::Object(normalize(m).0)
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
        let (t, report) = normalize(
            json!({"createdAt": "soon", "employees": "10-50"})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert_eq!(
            Value::Object(t),
            json!({"createdAt": "soon", "employees": "10-50"})
        );
        assert!(report.unparsed_created_at);
        assert_eq!(
            run(json!({"employees": 12.0, "createdAt": null})),
            json!({"employees": 12, "createdAt": null})
        );
        assert_eq!(run(json!({"employees": 12.5})), json!({"employees": 12.5}));
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
            prop_assert_eq!(run(once.clone()), once);
        }
    }
}
