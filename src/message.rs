//! The message vocabulary shared by ingest, routing, the spool and the adapters.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Segment call type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Identify,
    Group,
    Track,
    Page,
    Screen,
    Alias,
}

impl MessageType {
    pub const ALL: &'static [MessageType] = &[
        MessageType::Identify,
        MessageType::Group,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Group => "group",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Alias => "alias",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or(())
    }
}

/// A message as ingest hands it to the spool: normalized, routed, ready to store.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The source (by name) that sent it; with `message_id`, the dedupe key.
    pub source: String,
    pub message_id: String,
    /// Deliveries of one group to one destination keep their order.
    pub group_id: Option<String>,
    /// The normalized message as JSON text: what adapters translate.
    pub body: String,
    /// The same message, parsed: the spool keeps it in memory for a while so delivery need
    /// not parse `body` again. `None`: delivery parses `body`.
    pub parsed: Option<Parsed>,
    /// Names of the destinations it was routed to: shared with routing (no copy per
    /// message), so a spool may tell them apart by pointer before comparing text.
    pub destinations: Vec<Arc<str>>,
}

/// A normalized message parsed at most once and shared by everything that reads it: ingest
/// hands over its head fields, parsed ([`HEAD_FIELDS`]), and the destinations that lease a
/// stored message share one parse of its whole body, whoever asks first.
#[derive(Debug, Clone, Default)]
pub struct Parsed(Arc<Cell>);

#[derive(Debug, Default)]
struct Cell {
    /// The message's [`HEAD_FIELDS`], parsed by ingest (the rest is only in the body).
    head: Option<Map<String, Value>>,
    /// Where ingest wrote the `traits` object in the body.
    traits_at: Option<Range<usize>>,
    whole: OnceLock<Result<Map<String, Value>, String>>,
}

impl Parsed {
    /// The whole message, parsed already.
    pub fn new(message: Map<String, Value>) -> Self {
        Self(Arc::new(Cell {
            head: None,
            traits_at: None,
            whole: OnceLock::from(Ok(message)),
        }))
    }

    /// A message's [`HEAD_FIELDS`] (those it has), parsed already: enough for an adapter
    /// that reads no others; the whole message is parsed from its body when asked for.
    /// `traits_at`: where ingest wrote the `traits` object in the body.
    pub fn head(fields: Map<String, Value>, traits_at: Option<Range<usize>>) -> Self {
        Self(Arc::new(Cell {
            head: Some(fields),
            traits_at,
            whole: OnceLock::new(),
        }))
    }

    /// The `traits` object's text in `body`, the text ingest wrote, when ingest said where
    /// it is (an object, checked to begin and end as one).
    pub fn traits_text<'b>(&self, body: &'b str) -> Option<&'b str> {
        let text = body.get(self.0.traits_at.clone()?)?;
        (text.starts_with('{') && text.ends_with('}')).then_some(text)
    }

    /// Whether the whole message is parsed already (its body is not needed).
    pub fn is_ready(&self) -> bool {
        self.0.whole.get().is_some()
    }

    /// The whole message, parsing `body` if nobody has yet; why not, if it is not a JSON
    /// object.
    pub fn get(&self, body: &str) -> Result<&Map<String, Value>, &str> {
        self.0
            .whole
            .get_or_init(|| match parse(body) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err("the message is not a JSON object".into()),
                Err(e) => Err(e.to_string()),
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// What an adapter reading only `fields` (and [`ENGINE_FIELDS`]) needs, when it is at
    /// hand without parsing: the whole message, or ingest's head if it holds them all.
    pub fn at_hand(&self, fields: &[&str]) -> Option<&Map<String, Value>> {
        if let Some(Ok(whole)) = self.0.whole.get() {
            return Some(whole);
        }
        let head = self.0.head.as_ref()?;
        fields
            .iter()
            .all(|f| HEAD_FIELDS.contains(f))
            .then_some(head)
    }
}

/// Top-level field `name` of a message. A head ([`Parsed::head`]) has a handful of keys:
/// those are scanned, their lengths compared before their bytes, where `Map::get` hashes
/// the name (SipHash) and probes a table; the head was built by ingest on another thread, so
/// each step of either is likely a cache miss, and the scan has fewer. A whole message is
/// looked up as usual.
pub fn field<'m>(message: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    if message.len() > HEAD_FIELDS.len() {
        return message.get(name);
    }
    message
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// Parse JSON text into a `Value`, as `serde_json::from_str` does, building each object at
/// its final size (see [`Tree`]): the same value, the same errors, less work.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Tree.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The top-level fields of a message the delivery engine reads itself, whatever an adapter
/// reads: the call's type, its id, its group and the `integrations` map.
pub const ENGINE_FIELDS: &[&str] = &["type", "messageId", "groupId", "integrations"];

/// The top-level fields ingest hands to delivery parsed ([`Parsed::head`]): the engine's,
/// and the ones that say who and what. `traits` is not among them: ingest normalizes it as
/// text and the built-in adapters read it from the stored text
/// ([`crate::destination::Item::traits`]), so no tree of it is ever built.
pub const HEAD_FIELDS: &[&str] = &[
    "type",
    "messageId",
    "groupId",
    "integrations",
    "userId",
    "anonymousId",
];

/// The fields ingest parses to check them, besides [`HEAD_FIELDS`], and does not hand over.
const CHECKED_ONLY: &[&str] = &[
    "previousId",
    "event",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
];

/// Whether ingest parses top-level `field` to check and normalize it. Every other field is
/// checked to be JSON and kept as text: `traits` normalized as text, `context`, `properties`
/// and custom keys stored as the sender wrote them.
pub fn checked(field: &str) -> bool {
    HEAD_FIELDS.contains(&field) || CHECKED_ONLY.contains(&field)
}

/// Parse a stored message keeping only the top-level fields in `fields` and
/// [`ENGINE_FIELDS`], in the order the body has them; the rest is checked to be JSON and
/// skipped without being built. Why not, if `body` is not a JSON object.
pub fn project(body: &str, fields: &[&str]) -> Result<Map<String, Value>, String> {
    let mut de = serde_json::Deserializer::from_str(body);
    let map = Projection(fields)
        .deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| e.to_string())?;
    Ok(map)
}

/// A visitor building the map [`project`] answers.
struct Projection<'f>(&'f [&'f str]);

impl<'de> DeserializeSeed<'de> for Projection<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            let wanted = |f: &&str| *f == key.as_ref();
            if self.0.iter().any(wanted) || ENGINE_FIELDS.iter().any(wanted) {
                // As a full parse does, a repeated key keeps its first place and last value.
                map.insert(key.into_owned(), access.next_value_seed(Tree)?);
            } else {
                access.next_value::<IgnoredAny>()?;
            }
        }
        Ok(map)
    }
}

/// Builds a `serde_json::Value` as its own `Deserialize` does, but gathers each object's
/// entries first and makes its map at its final size: no map grows and rehashes entry by
/// entry (the bulk of parsing a message into a tree).
pub(crate) struct Tree;

impl<'de> DeserializeSeed<'de> for Tree {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Tree)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            entries.push((key.into_owned(), access.next_value_seed(Tree)?));
        }
        // Sized once; a repeated key keeps its first place and last value, as inserting does.
        Ok(Value::Object(entries.into_iter().collect()))
    }
}

/// An object's key, borrowed from the body unless it has escapes.
pub(crate) struct Key<'de>(pub std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":"group","context":{"ip":"1.2.3.4","library":{"name":"x"}},"groupId":"g","traits":{"name":"A\"cme","address":{"city":"B"}},"messageId":"m","userId":"u","type":"group"}"#;

    #[test]
    fn a_projection_keeps_the_fields_asked_and_the_engine_s_in_body_order() {
        let m = project(BODY, &["traits"]).unwrap();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["type", "groupId", "traits", "messageId"]);
        let full: Map<String, Value> = serde_json::from_str(BODY).unwrap();
        assert_eq!(m["traits"], full["traits"]);
        assert_eq!(m["groupId"], full["groupId"]);
    }

    #[test]
    fn the_head_holds_what_the_engine_reads_and_only_checked_fields() {
        assert!(ENGINE_FIELDS.iter().all(|f| HEAD_FIELDS.contains(f)));
        assert!(checked("event") && !checked("traits") && !checked("context"));
        let head: Map<String, Value> =
            serde_json::from_str(r#"{"type":"group","traits":{}}"#).unwrap();
        let parsed = Parsed::head(head, None);
        assert!(parsed.at_hand(&["userId", "anonymousId"]).is_some());
        assert!(
            parsed.at_hand(&["traits"]).is_none(),
            "adapters read traits from the stored text"
        );
        assert!(parsed.at_hand(&["context"]).is_none());
        assert!(
            parsed.at_hand(&["event"]).is_none(),
            "checked, not handed over"
        );
        assert!(!parsed.is_ready());
    }

    #[test]
    fn a_projection_refuses_what_a_full_parse_refuses() {
        for bad in [
            "[1]",
            "\"x\"",
            r#"{"a":}"#,
            r#"{"traits":{"a":1}"#,
            r#"{"a":1} x"#,
        ] {
            assert!(
                serde_json::from_str::<Map<String, Value>>(bad).is_err(),
                "{bad}"
            );
            assert!(project(bad, &["traits"]).is_err(), "{bad}");
        }
    }

    /// A field is found as `Map::get` finds it, in a head and in a whole message.
    #[test]
    fn a_field_is_what_get_answers() {
        let head =
            serde_json::json!({"type": "group", "messageId": "m", "groupId": "g", "userId": "u"});
        let mut whole = head.as_object().unwrap().clone();
        for i in 0..10 {
            whole.insert(format!("custom{i}"), serde_json::json!(i));
        }
        for m in [head.as_object().unwrap(), &whole] {
            for name in [
                "type",
                "messageId",
                "groupId",
                "userId",
                "anonymousId",
                "custom3",
                "",
                "typ",
            ] {
                assert_eq!(field(m, name), m.get(name), "{name} in {} keys", m.len());
            }
        }
    }
}
