//! A message's top-level entries as normalize works on them: the fields it checks and changes
//! ([`checked`]) parsed, every other value kept as the JSON text the sender wrote. Only
//! those few fields become a tree; `traits` is normalized as text (its members are entries
//! too, see `traits.rs`), and `context`, `properties` and custom keys are copied into the
//! stored text as they came, never built into maps and strings and serialized again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::message::{HEAD_FIELDS, Key, Tree, checked};

/// One value.
#[derive(Debug)]
pub enum Entry<'a> {
    /// As the sender wrote it (checked to be JSON).
    Text(&'a RawValue),
    Value(Value),
    /// JSON text normalize wrote (an object whose members it rewrote).
    Written(String),
}

impl Entry<'_> {
    /// The value's JSON text, unless it is parsed.
    pub fn text(&self) -> Option<&str> {
        match self {
            Entry::Text(raw) => Some(raw.get()),
            Entry::Written(text) => Some(text),
            Entry::Value(_) => None,
        }
    }
}

/// A message's top-level entries in body order. A repeated key keeps its first place and
/// its last value, as a full parse does.
#[derive(Debug, Default)]
pub struct Entries<'a> {
    list: Vec<(Cow<'a, str>, Entry<'a>)>,
    /// The length of the text they came from: about what writing them back takes.
    text_len: usize,
    /// The text had a key more than once (writing the entries back drops the repeats).
    pub repeated: bool,
}

/// Past this many keys an [`Ordered`] finds a name by hashing, not by scanning.
const SCAN_KEYS: usize = 16;

/// How deep a value kept as text may nest before the whole message is checked as a full
/// parse would (which allows 128 levels from the top; a top-level value starts one down).
const TEXT_DEPTH: usize = 100;

/// Whether JSON `text` that a skip over it accepted plainly holds nothing a full parse would
/// refuse, without walking it again: no `\u` escape (one may name no character), no number
/// that could be out of range (with an exponent, or hundreds of digits), and too few
/// brackets to nest deeper than [`TEXT_DEPTH`]. Conservative: bytes inside strings count too,
/// so "no" only means "walk it".
fn plainly_sound(text: &str) -> bool {
    let bytes = text.as_bytes();
    // This runs over every value kept as text of every call: a byte-at-a-time scan with every
    // check in it, stopping at the first find, was 3-4% of the daemon's CPU. The counts go in
    // byte-wide counters over chunks that cannot overflow them, with no branch and no early
    // exit, so that the loop vectorizes; the rare bytes are found with `memchr`.
    let (mut brackets, mut digits) = (0usize, 0usize);
    for chunk in bytes.chunks(u8::MAX as usize) {
        let (mut b_count, mut d_count) = (0u8, 0u8);
        for &b in chunk {
            b_count += u8::from((b == b'[') | (b == b'{'));
            d_count += u8::from(b.wrapping_sub(b'0') < 10);
        }
        brackets += usize::from(b_count);
        digits += usize::from(d_count);
    }
    // More than 300 digits in a row needs more than 300 in all.
    if brackets > TEXT_DEPTH || (digits > 300 && longest_digit_run(bytes) > 300) {
        return false;
    }
    let escape_u = memchr::memchr_iter(b'\\', bytes).any(|i| bytes.get(i + 1) == Some(&b'u'));
    let exponent = memchr::memchr2_iter(b'e', b'E', bytes)
        .any(|i| i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.'));
    !escape_u && !exponent
}

/// The longest run of ASCII digits in `bytes`.
fn longest_digit_run(bytes: &[u8]) -> usize {
    bytes
        .split(|b| !b.is_ascii_digit())
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// Walk `text` as a full parse does, with its checks and its errors.
fn check(text: &str) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    Check(usize::MAX).deserialize(&mut de)?;
    de.end()
}

impl<'a> Entries<'a> {
    /// The entries of `text`; `None` if it is JSON but not an object. The errors are those a
    /// full parse reports, at the same place. Splitting skips over the values kept as text
    /// without some of a full parse's checks (escapes that name no character, numbers out of
    /// range, nesting): those values are checked on their own, and the whole text is checked
    /// as a full parse would whenever anything is amiss.
    pub fn parse(text: &'a str) -> Result<Option<Self>, serde_json::Error> {
        if !text.trim_start().starts_with('{') {
            return check(text).map(|()| None);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let split = Split(checked)
            .deserialize(&mut de)
            .and_then(|e| de.end().map(|()| e));
        match split {
            Ok(mut entries) => {
                entries.text_len = text.len();
                if !entries.texts_sound() {
                    check(text)?;
                }
                Ok(Some(entries))
            }
            Err(e) => check(text).and(Err(e)),
        }
    }

    /// The members of `object`, JSON text of an object that [`Entries::parse`] checked (a
    /// value it kept as text), every value kept as text.
    pub fn members(object: &'a RawValue) -> Result<Self, serde_json::Error> {
        Self::members_of(object.get())
    }

    /// The members of the JSON object `text`, every value kept as text.
    pub fn members_of(text: &'a str) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut members = Split(|_| false).deserialize(&mut de)?;
        de.end()?;
        members.text_len = text.len();
        Ok(members)
    }

    /// The entries in order, each value as its text (`None` for a value that is parsed or
    /// that normalize wrote: members of a stored object are all text).
    pub fn texts(self) -> impl Iterator<Item = (Cow<'a, str>, Option<&'a RawValue>)> {
        self.list.into_iter().map(|(k, e)| match e {
            Entry::Text(raw) => (k, Some(raw)),
            Entry::Value(_) | Entry::Written(_) => (k, None),
        })
    }

    /// The entries in order, to rename or replace in place.
    pub fn list_mut(&mut self) -> &mut Vec<(Cow<'a, str>, Entry<'a>)> {
        &mut self.list
    }

    /// Whether every value kept as text passes a full parse's checks on its own, not
    /// nested deeper than a full parse of the message could take.
    fn texts_sound(&self) -> bool {
        self.list.iter().all(|(_, entry)| match entry {
            Entry::Text(raw) if plainly_sound(raw.get()) => true,
            Entry::Text(raw) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                Check(TEXT_DEPTH).deserialize(&mut de).is_ok()
            }
            Entry::Value(_) | Entry::Written(_) => true,
        })
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.list.iter().position(|(k, _)| k == key)
    }

    pub fn get(&self, key: &str) -> Option<&Entry<'a>> {
        self.position(key).map(|i| &self.list[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// A parsed entry (the [`checked`] fields and values set by normalize).
    pub fn value(&self, key: &str) -> Option<&Value> {
        match self.get(key)? {
            Entry::Value(v) => Some(v),
            Entry::Text(_) | Entry::Written(_) => None,
        }
    }

    pub fn value_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.position(key)?;
        match &mut self.list[i].1 {
            Entry::Value(v) => Some(v),
            Entry::Text(_) | Entry::Written(_) => None,
        }
    }

    /// Set `key`, in its place if it is there, last otherwise.
    pub fn set(&mut self, key: &'a str, entry: Entry<'a>) {
        match self.position(key) {
            Some(i) => self.list[i].1 = entry,
            None => self.list.push((Cow::Borrowed(key), entry)),
        }
    }

    /// Take `key`'s value, leaving `null` in its place (to [`Entries::set`] it again).
    pub fn take(&mut self, key: &str) -> Option<Entry<'a>> {
        let i = self.position(key)?;
        Some(std::mem::replace(
            &mut self.list[i].1,
            Entry::Value(Value::Null),
        ))
    }

    /// Take `key` out, the others keeping their order.
    pub fn remove(&mut self, key: &str) -> Option<Entry<'a>> {
        self.position(key).map(|i| self.list.remove(i).1)
    }

    /// The message as JSON text: parsed entries serialized, the others copied.
    pub fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        self.write_marking(out, "").map(|_| ())
    }

    /// [`Entries::write`], answering where in `out` the value of `key` was written.
    pub fn write_marking(
        &self,
        out: &mut Vec<u8>,
        key: &str,
    ) -> serde_json::Result<Option<Range<usize>>> {
        // Normalizing adds a few dates and an id at most.
        out.reserve(self.text_len + 160);
        let mut mark = None;
        out.push(b'{');
        for (i, (k, entry)) in self.list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k.as_ref())?;
            out.push(b':');
            let start = out.len();
            match entry {
                Entry::Text(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Entry::Written(text) => out.extend_from_slice(text.as_bytes()),
                Entry::Value(v) => serde_json::to_writer(&mut *out, v)?,
            }
            if k == key {
                mark = Some(start..out.len());
            }
        }
        out.push(b'}');
        Ok(mark)
    }

    /// The [`HEAD_FIELDS`] among the entries, in body order.
    pub fn into_head(self) -> Map<String, Value> {
        let mut head = Map::with_capacity(HEAD_FIELDS.len());
        for (key, entry) in self.list {
            if let Entry::Value(v) = entry
                && HEAD_FIELDS.contains(&key.as_ref())
            {
                head.insert(key.into_owned(), v);
            }
        }
        head
    }
}

/// Walks a JSON value as a full parse does, with its checks, building nothing; and refuses
/// to go more than its count of levels deeper.
struct Check(usize);

impl Check {
    fn deeper<E: de::Error>(self) -> Result<usize, E> {
        self.0
            .checked_sub(1)
            .ok_or_else(|| E::custom("nested too deep to keep as text"))
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(Check(inner))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while access.next_key_seed(Check(inner))?.is_some() {
            access.next_value_seed(Check(inner))?;
        }
        Ok(())
    }
}

/// Splits a checked object into [`Entries`]: the fields it names parsed, the others kept as
/// text.
struct Split(fn(&str) -> bool);

impl<'de> DeserializeSeed<'de> for Split {
    type Value = Entries<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Split {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut members = Ordered::with_capacity(SCAN_KEYS);
        let mut repeated = false;
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            let entry = if (self.0)(&key) {
                Entry::Value(access.next_value_seed(Tree)?)
            } else {
                Entry::Text(access.next_value::<&'de RawValue>()?)
            };
            repeated |= members.set(key, entry);
        }
        Ok(Entries {
            list: members.into_list(),
            text_len: 0,
            repeated,
        })
    }
}

/// Values by name in the order each name was first set; a name set again keeps its place
/// and takes the new value (as a map insert does, and as a full parse treats a repeated
/// key). Names are found by scanning while there are few and by a hash index past
/// [`SCAN_KEYS`]: an object of a few thousand keys would otherwise cost millions of
/// comparisons.
#[derive(Debug)]
pub struct Ordered<'a, V> {
    list: Vec<(Cow<'a, str>, V)>,
    index: Option<HashMap<Cow<'a, str>, usize>>,
}

impl<V> Default for Ordered<'_, V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<'a, V> Ordered<'a, V> {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            list: Vec::with_capacity(n),
            index: None,
        }
    }

    pub fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.list.iter().position(|(k, _)| k == key),
        }
    }

    /// Set `key` to `value`; whether it was there already (its value is replaced).
    pub fn set(&mut self, key: Cow<'a, str>, value: V) -> bool {
        match self.position(&key) {
            Some(i) => {
                self.list[i].1 = value;
                true
            }
            None => {
                self.push(key, value);
                false
            }
        }
    }

    /// Set `key` unless it is there already.
    pub fn set_once(&mut self, key: Cow<'a, str>, value: V) {
        if self.position(&key).is_none() {
            self.push(key, value);
        }
    }

    /// Add `key`, known not to be there yet; the index is built once the list is long.
    fn push(&mut self, key: Cow<'a, str>, value: V) {
        if self.index.is_none() && self.list.len() >= SCAN_KEYS {
            let index = self.list.iter().enumerate();
            self.index = Some(index.map(|(i, (k, _))| (k.clone(), i)).collect());
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.list.len());
        }
        self.list.push((key, value));
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = &(Cow<'a, str>, V)> {
        self.list.iter()
    }

    pub fn into_list(self) -> Vec<(Cow<'a, str>, V)> {
        self.list
    }
}

#[cfg(test)]
mod tests;
