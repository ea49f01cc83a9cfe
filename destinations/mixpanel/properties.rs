//! A group's properties in its Groups update: one call's traits, written as they are read
//! or as rendered before for the group (see `crate::memo`), or several calls' merged as
//! Mixpanel would apply them one after another. Reserved traits are renamed and `createdAt`
//! written as Mixpanel reads dates.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::Operation;
use crate::destination::{TraitValue, Traits};
use crate::normalize::entries::Ordered;
use crate::normalize::time;

/// Reserved traits renamed to Mixpanel's reserved properties (MPD:docs/data-structure/
/// property-reference/reserved-properties.mdx; the same names AJSI-MP and AD:mixpanel use).
const RENAMED: &[(&str, &str)] = &[
    ("name", "$name"),
    ("createdAt", "$created"),
    ("email", "$email"),
    ("phone", "$phone"),
    ("avatar", "$avatar"),
];

/// One call's traits as properties.
pub(super) struct TraitsProperties<'a>(pub(super) &'a Traits<'a>);

impl Serialize for TraitsProperties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let traits = self.0;
        // A trait spelled like a renamed one (`$name` next to `name`) would give one property
        // twice: merge them in a map, as for any other message shape we did not plan for.
        if traits.iter().any(|(k, _)| k.starts_with('$')) {
            properties(traits).serialize(serializer)
        } else {
            AsProperties(traits).serialize(serializer)
        }
    }
}

/// One call's traits: their stored text with the properties rendered from it, or split from
/// the parsed message.
pub(super) enum Call<'a> {
    Traits(Traits<'a>),
    Kept(&'a str, Arc<str>),
}

impl<'a> Call<'a> {
    fn properties(&self) -> Result<Props<'a>, String> {
        match self {
            Call::Traits(traits) => Ok(properties(traits)),
            Call::Kept(text, _) => Ok(properties(&Traits::split(text)?)),
        }
    }
}

/// A group's properties: one call's traits, written as they are read (see `properties`), or
/// the properties of several calls merged.
pub(super) enum Properties<'a> {
    One(Call<'a>),
    Merged(Props<'a>),
}

impl<'a> Properties<'a> {
    /// Lay a later call's traits over these, as Mixpanel would apply its update after them:
    /// with `$set` the later value of each property wins (an object such as `address` is one
    /// property, replaced whole); with `$set_once` a property already set stays. A call with
    /// the same stored traits as the one call so far changes nothing either way.
    pub(super) fn merge(&mut self, later: Call<'a>, op: Operation) -> Result<(), String> {
        if let (Properties::One(Call::Kept(text, _)), Call::Kept(later_text, _)) = (&*self, &later)
            && text == later_text
        {
            return Ok(());
        }
        let later = later.properties()?;
        let mut merged = match std::mem::replace(self, Properties::Merged(Props::default())) {
            Properties::Merged(merged) => merged,
            Properties::One(call) => match call.properties() {
                Ok(earlier) => earlier,
                Err(why) => {
                    *self = Properties::One(call);
                    return Err(why);
                }
            },
        };
        for (key, value) in later.into_list() {
            match op {
                Operation::Set => {
                    merged.set(key, value);
                }
                Operation::SetOnce => merged.set_once(key, value),
            }
        }
        *self = Properties::Merged(merged);
        Ok(())
    }
}

/// Traits as profile properties, written as they are read (see `properties`).
/// Values read from the stored text are copied as they are.
struct AsProperties<'a>(&'a Traits<'a>);

impl Serialize for AsProperties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.iter() {
            if key == "createdAt" {
                map.serialize_entry(renamed(&key), &created(value))?;
            } else {
                map.serialize_entry(renamed(&key), &value)?;
            }
        }
        map.end()
    }
}

/// Mixpanel's reserved name for a trait, or the trait's own.
fn renamed(key: &str) -> &str {
    RENAMED
        .iter()
        .find(|(from, _)| *from == key)
        .map_or(key, |(_, to)| to)
}

/// Profile properties by name, in the order they were first set: values as the traits hold
/// them (text copied when written), `createdAt`'s as Mixpanel reads dates. Merging calls
/// parses none of their values.
pub(super) type Props<'a> = Ordered<'a, Prop<'a>>;

pub(super) enum Prop<'a> {
    Trait(TraitValue<'a>),
    Created(Value),
}

impl Serialize for Prop<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Prop::Trait(v) => v.serialize(serializer),
            Prop::Created(v) => v.serialize(serializer),
        }
    }
}

impl Serialize for Props<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key.as_ref(), value)?;
        }
        map.end()
    }
}

/// Traits as profile properties: reserved ones renamed, every other one under its own key,
/// values as given except `createdAt`.
fn properties<'a>(traits: &Traits<'a>) -> Props<'a> {
    let mut props = Props::default();
    for (key, value) in traits.iter() {
        let value = if key == "createdAt" {
            Prop::Created(created(value))
        } else {
            Prop::Trait(value)
        };
        let key = match renamed(&key) {
            to if to != key => Cow::Owned(to.to_string()),
            _ => key,
        };
        props.set(key, value);
    }
    props
}

/// Mixpanel reads dates as UTC `YYYY-MM-DDTHH:MM:SS` and would store a Unix number as a plain
/// number (MPD:docs/data-structure/property-reference/data-type.mdx), so every readable form
/// becomes that string; `null` and unreadable values pass as given.
fn created(value: TraitValue<'_>) -> Value {
    let value = value.to_value();
    // Ingest writes every date it reads as `YYYY-MM-DDTHH:MM:SS.mmmZ`: its first 19 bytes.
    if let Some(s) = value.as_str().filter(|s| time::is_canonical(s)) {
        return Value::String(s[..19].to_string());
    }
    match time::parse_any(&value) {
        Some(dt) => Value::String(dt.format("%Y-%m-%dT%H:%M:%S").to_string()),
        None => value.into_owned(),
    }
}

#[cfg(test)]
mod created_tests {
    use super::*;

    /// The shortcut for dates ingest wrote gives what parsing them gives.
    #[test]
    fn a_written_date_reads_as_a_parsed_one() {
        for s in [
            "2024-05-01T10:00:00.000Z",
            "2024-02-29T23:59:59.999Z",
            "1999-12-31T00:00:00.001Z",
        ] {
            let parsed = time::parse_any(&Value::from(s)).unwrap();
            let slow = Value::String(parsed.format("%Y-%m-%dT%H:%M:%S").to_string());
            assert_eq!(created(TraitValue::Tree(&Value::from(s))), slow, "{s}");
        }
        // Not written by ingest: parsed as before.
        assert_eq!(
            created(TraitValue::Tree(&Value::from("2024-05-01T12:00:00+02:00"))),
            Value::from("2024-05-01T10:00:00")
        );
    }
}
