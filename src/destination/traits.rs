//! A call's `traits` as an adapter reads them: straight from the stored text when the engine
//! hands it over ([`Item::raw`]), each value kept as the JSON text it is, so that reading the
//! traits of a message builds no tree of maps and strings; or from the parsed message when
//! there is no text.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Item;
use crate::message::Key;
use crate::normalize::Entries;

/// An object's members in order, each value as its text. A repeated key keeps its first
/// place and its last value, as a full parse does.
type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// The traits of one call.
#[derive(Debug)]
pub enum Traits<'a> {
    /// Parsed already (the message came whole).
    Tree(&'a Map<String, Value>),
    /// Read from the stored text.
    Text(Members<'a>),
}

/// One trait's value: parsed, or its JSON text.
#[derive(Debug, Clone, Copy)]
pub enum TraitValue<'a> {
    Tree(&'a Value),
    Text(&'a RawValue),
}

impl<'a> Item<'a> {
    /// The call's `traits` object (`None` when it has none, or `traits` is not an object),
    /// read from the stored text when the engine handed it over, so an adapter need not
    /// [`read`](super::Destination::reads) `traits` for the engine to parse; or from
    /// `message`, which then holds every field. `Err`: the stored text is not a JSON object
    /// (it was checked when stored; an adapter reports this as the item's failure).
    pub fn traits(&self) -> Result<Option<Traits<'a>>, String> {
        match self.traits_json()? {
            Some(text) => Traits::split(text).map(Some),
            None => Ok(self.parsed_traits()),
        }
    }

    /// The call's `traits` object from `message`, when the engine handed no stored text
    /// over (`None` when it did: [`Item::traits_json`] is then where the traits are).
    pub fn parsed_traits(&self) -> Option<Traits<'a>> {
        if self.raw.is_some() {
            return None;
        }
        let message: &'a Map<String, Value> = self.message;
        let tree = message.get("traits").and_then(Value::as_object);
        tree.map(Traits::Tree)
    }

    /// The JSON text of the call's `traits` object as stored, when the engine handed the
    /// stored text over (`None` also when the call has no `traits` object): what
    /// [`Item::traits`] splits, for an adapter that keeps what it made of a group's traits
    /// (see `crate::memo`).
    pub fn traits_json(&self) -> Result<Option<&'a str>, String> {
        Ok(match (self.traits_text, self.raw) {
            (Some(text), _) => Some(text),
            (None, Some(raw)) => top_level(raw, "traits")
                .map_err(|e| e.to_string())?
                .map(RawValue::get)
                .filter(|t| t.starts_with('{')),
            (None, None) => None,
        })
    }
}

impl<'a> Traits<'a> {
    /// The members of a `traits` object's JSON text (from [`Item::traits_json`]).
    pub fn split(text: &'a str) -> Result<Self, String> {
        members(text).map(Traits::Text).map_err(|e| e.to_string())
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Traits::Tree(m) => m.is_empty(),
            Traits::Text(m) => m.is_empty(),
        }
    }

    /// Each trait's name and value, in order, borrowed as long as the traits' source.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'a, str>, TraitValue<'a>)> + '_ {
        let (tree, text) = match self {
            Traits::Tree(m) => (Some(m.iter()), None),
            Traits::Text(m) => (None, Some(m.iter())),
        };
        let tree = tree
            .into_iter()
            .flatten()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), TraitValue::Tree(v)));
        let text = text
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), TraitValue::Text(v)));
        tree.chain(text)
    }
}

impl<'a> TraitValue<'a> {
    /// The value parsed (a text value is parsed here, once per call).
    pub fn to_value(self) -> Cow<'a, Value> {
        match self {
            TraitValue::Tree(v) => Cow::Borrowed(v),
            // The text was checked to be JSON when it was stored.
            TraitValue::Text(raw) => {
                Cow::Owned(crate::message::parse(raw.get()).unwrap_or(Value::Null))
            }
        }
    }

    /// Whether it is an object or an array.
    pub fn is_structured(self) -> bool {
        match self {
            TraitValue::Tree(v) => v.is_object() || v.is_array(),
            TraitValue::Text(raw) => matches!(raw.get().as_bytes().first(), Some(b'{' | b'[')),
        }
    }

    pub fn is_null(self) -> bool {
        match self {
            TraitValue::Tree(v) => v.is_null(),
            TraitValue::Text(raw) => raw.get() == "null",
        }
    }

    /// An object's members in order (`None` for anything else); a text value is split once.
    pub fn members(self) -> Option<Vec<(Cow<'a, str>, TraitValue<'a>)>> {
        match self {
            TraitValue::Tree(v) => Some(
                v.as_object()?
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), TraitValue::Tree(v)))
                    .collect(),
            ),
            TraitValue::Text(raw) if raw.get().starts_with('{') => Some(
                members(raw.get())
                    .ok()?
                    .into_iter()
                    .map(|(k, v)| (k, TraitValue::Text(v)))
                    .collect(),
            ),
            TraitValue::Text(_) => None,
        }
    }

    /// The member `key` of an object (`None` for anything else, or no such member).
    pub fn get(self, key: &str) -> Option<TraitValue<'a>> {
        match self {
            TraitValue::Tree(v) => v.as_object()?.get(key).map(TraitValue::Tree),
            TraitValue::Text(raw) if raw.get().starts_with('{') => members(raw.get())
                .ok()?
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| TraitValue::Text(v)),
            TraitValue::Text(_) => None,
        }
    }
}

/// Written as parsed, or its text copied as it is.
impl Serialize for TraitValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TraitValue::Tree(v) => v.serialize(serializer),
            TraitValue::Text(raw) => raw.serialize(serializer),
        }
    }
}

/// The text of the top-level member `key` of the JSON object `text` (its last one, as a full
/// parse keeps), skipping over the others.
fn top_level<'a>(text: &'a str, key: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Find(key).deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

/// The members of the JSON object `text` (a repeated key keeps its first place and its
/// last value; found by hashing past a few keys).
fn members(text: &str) -> Result<Members<'_>, serde_json::Error> {
    let members = Entries::members_of(text)?;
    Ok(members.texts().filter_map(|(k, v)| Some((k, v?))).collect())
}

struct Find<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            if key == self.0 {
                found = Some(access.next_value::<&'de RawValue>()?);
            } else {
                access.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item<'a>(message: &'a Map<String, Value>, raw: Option<&'a str>) -> Item<'a> {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        Item {
            message,
            options: &EMPTY,
            raw,
            traits_text: None,
        }
    }

    /// Read from the text or from the tree, the traits are the same values in the same order.
    #[test]
    fn text_and_tree_read_alike() {
        let whole = json!({
            "type": "group", "context": {"traits": {"no": 1}}, "groupId": "g",
            "traits": {"name": "A \"q\"", "n": 1.5, "address": {"city": "B", "zip": null}, "t": [1, {"x": 2}], "e": "\u{e9}"},
            "after": {"traits": 2}
        });
        let text = whole.to_string();
        let tree = whole.as_object().unwrap().clone();
        let head = Map::new();
        let from_text = item(&head, Some(&text)).traits().unwrap().unwrap();
        let from_tree = item(&tree, None).traits().unwrap().unwrap();
        assert!(matches!(from_text, Traits::Text(_)));
        let parsed = |t: &Traits<'_>| {
            t.iter()
                .map(|(k, v)| (k.into_owned(), v.to_value().into_owned()))
                .collect::<Map<String, Value>>()
        };
        assert_eq!(parsed(&from_text), parsed(&from_tree));
        let keys = |t: &Traits<'_>| t.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
        assert_eq!(keys(&from_text), keys(&from_tree));
        for ((_, a), (_, b)) in from_text.iter().zip(from_tree.iter()) {
            // Written alike: the stored text is what serde_json writes for the value.
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap()
            );
            assert_eq!(a.is_structured(), b.is_structured());
            assert_eq!(a.is_null(), b.is_null());
        }
        let city = |t: &Traits<'_>| {
            let (_, address) = t.iter().find(|(k, _)| *k == "address").unwrap();
            address.get("city").map(|v| v.to_value().into_owned())
        };
        assert_eq!(city(&from_text), Some(json!("B")));
        assert_eq!(city(&from_tree), Some(json!("B")));
    }

    #[test]
    fn no_traits_or_not_an_object_is_none() {
        let head = Map::new();
        for text in [
            r#"{"type":"group"}"#,
            r#"{"traits":null}"#,
            r#"{"traits":[1]}"#,
        ] {
            assert!(
                item(&head, Some(text)).traits().unwrap().is_none(),
                "{text}"
            );
        }
        assert!(item(&head, Some("[1]")).traits().is_err());
        assert!(item(&head, Some(r#"{"traits":{"a":}"#)).traits().is_err());
    }
}
