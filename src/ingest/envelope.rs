//! A `/v1/batch` body read in one pass: its `batch` array split into the messages' texts as
//! it is read, every other key kept as text. The body is the bulk of a request, so it is
//! walked once here (and each message once more when it is normalized), not once for the
//! envelope and again for the array.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The keys of a batch body.
pub(super) struct Keys<'b> {
    pub batch: Batch<'b>,
    /// Every other key, its value as text.
    pub others: BTreeMap<String, &'b RawValue>,
}

/// What the body's `batch` key holds.
pub(super) enum Batch<'b> {
    Missing,
    NotAnArray,
    /// The messages' texts, in order.
    Messages(Vec<&'b RawValue>),
}

/// Read a body that starts with `{`; a repeated key's last value counts.
pub(super) fn read(bytes: &[u8]) -> Result<Keys<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let keys = KeysSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(keys)
}

struct KeysSeed;

impl<'de> DeserializeSeed<'de> for KeysSeed {
    type Value = Keys<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed {
    type Value = Keys<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut keys = Keys {
            batch: Batch::Missing,
            others: BTreeMap::new(),
        };
        while let Some(key) = access.next_key::<String>()? {
            if key == "batch" {
                keys.batch = access.next_value_seed(Messages)?;
            } else {
                let value = access.next_value::<&'de RawValue>()?;
                keys.others.insert(key, value);
            }
        }
        Ok(keys)
    }
}

/// `batch`'s value: each element's text if it is an array; anything else is skipped as a
/// full parse would read it.
struct Messages;

impl<'de> DeserializeSeed<'de> for Messages {
    type Value = Batch<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Messages {
    type Value = Batch<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut messages = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(m) = seq.next_element::<&'de RawValue>()? {
            messages.push(m);
        }
        Ok(Batch::Messages(messages))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Batch::NotAnArray)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Batch::NotAnArray)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_split_as_read_and_the_other_keys_kept_as_text() {
        let body = br#"{"sentAt":"2024-05-01T00:00:00Z","batch":[{"a":1}, [2] ,"x"],"context":{"ip":"1"}}"#;
        let keys = read(body).unwrap();
        let Batch::Messages(messages) = keys.batch else {
            panic!("an array")
        };
        let texts: Vec<&str> = messages.iter().map(|m| m.get()).collect();
        assert_eq!(texts, [r#"{"a":1}"#, "[2]", r#""x""#]);
        assert_eq!(keys.others["context"].get(), r#"{"ip":"1"}"#);
        assert_eq!(keys.others["sentAt"].get(), r#""2024-05-01T00:00:00Z""#);
    }

    #[test]
    fn a_batch_that_is_not_an_array_is_told_apart_from_malformed_json() {
        for other in [r#"{"a":[1]}"#, "1", "-2", "1.5", r#""x""#, "true", "null"] {
            let body = format!(r#"{{"batch":{other},"k":1}}"#);
            let keys = read(body.as_bytes()).unwrap();
            assert!(matches!(keys.batch, Batch::NotAnArray), "{other}");
            assert!(keys.others.contains_key("k"));
        }
        assert!(matches!(read(br#"{"k":1}"#).unwrap().batch, Batch::Missing));
        for bad in [
            &br#"{"batch":[1,]}"#[..],
            br#"{"batch":{"a":}}"#,
            br#"{"batch":[]"#,
            br#"{"batch":[]} x"#,
        ] {
            let full = serde_json::from_slice::<serde_json::Value>(bad).unwrap_err();
            let ours = read(bad).err().expect("malformed");
            assert_eq!((ours.line(), ours.column()), (full.line(), full.column()));
        }
    }

    #[test]
    fn a_repeated_batch_key_keeps_the_last() {
        let keys = read(br#"{"batch":[1,2],"batch":[3]}"#).unwrap();
        assert!(matches!(keys.batch, Batch::Messages(m) if m.len() == 1));
    }
}
