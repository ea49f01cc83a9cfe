//! Loading is two passes over one parsed document so that every error keeps its line and
//! column: the core keys deserialize into [`Config`]; each destination's own keys
//! (`url`, `project_token`, …) are handed to its adapter as [`Settings`], still spanned, and
//! each table keeps its keys' places for the checks that come after parsing.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::expand::{Expanded, expand_env};
use super::place::{ConfigError, ConfigErrors, Place, Source};
use super::settings::Settings;
use super::{Config, DestinationConfig};

/// Parse, expand `${VAR}` from the environment, and validate; every problem is returned.
pub fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_with_env(text, &|name| std::env::var(name).ok())
}

pub fn load_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = interned(text);
    let source = Source::new(text);
    let mut doc = DeTable::parse(text).map_err(|e| ConfigErrors(vec![source.toml_error(&e)]))?;
    let mut errors = Vec::new();
    let mut expanded = Expanded::default();
    for (_, value) in doc.get_mut().iter_mut() {
        expand_env(value, &source, env, &mut errors, &mut expanded);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let owned = doc.clone();
    let de = toml::de::Deserializer::from(doc);
    let masked = |errors: Vec<ConfigError>| ConfigErrors(expanded.mask(errors));
    let mut config = Config::deserialize(de).map_err(|e| masked(vec![source.toml_error(&e)]))?;
    attach_places(&mut config, owned.get_ref(), &source);
    let deliveries = config.validate().map_err(|e| masked(e.0))?;
    for (d, delivery) in config.destinations.iter_mut().zip(deliveries) {
        d.delivery = delivery;
    }
    config.expanded = expanded;
    Ok(config)
}

/// The text with a static lifetime: the parsed document borrows it, and each destination
/// keeps its spanned table for its adapter to deserialize later. Each distinct text is kept
/// once for the life of the process (a start, and each reload of a changed file), never
/// once per load.
fn interned(text: &str) -> &'static str {
    static TEXTS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut texts = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(kept) = texts.iter().find(|t| **t == text) {
        return kept;
    }
    let kept: &'static str = Box::leak(text.to_owned().into_boxed_str());
    texts.push(kept);
    kept
}

/// The tables of an array of tables (`[[source]]`, `[[destination]]`), in file order.
fn tables<'d>(
    doc: &'d DeTable<'static>,
    key: &str,
) -> impl Iterator<Item = (&'d DeTable<'static>, Place)> {
    let list = match doc.get(key).map(Spanned::get_ref) {
        Some(DeValue::Array(list)) => Some(list),
        _ => None,
    };
    list.into_iter()
        .flatten()
        .filter_map(|table| match table.get_ref() {
            DeValue::Table(t) => Some((t, table.span())),
            _ => None,
        })
        .map(|(t, span)| {
            let keys = t
                .iter()
                .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                .collect();
            (
                t,
                Place {
                    keys,
                    span,
                    source: Source::default(),
                },
            )
        })
}

/// Give each source and destination its places, and each destination its own keys, in file
/// order (the same order as the config's lists).
fn attach_places(config: &mut Config, doc: &DeTable<'static>, source: &Source) {
    config.admin.place = table_place(doc, "admin", source);
    config.spool.place = table_place(doc, "spool", source);
    for (s, (_, mut place)) in config.sources.iter_mut().zip(tables(doc, "source")) {
        place.source = source.clone();
        s.place = place;
    }
    let common = DestinationConfig::common_keys();
    for (d, (t, mut place)) in config
        .destinations
        .iter_mut()
        .zip(tables(doc, "destination"))
    {
        place.source = source.clone();
        let own: DeTable<'static> = t
            .iter()
            .filter(|(k, _)| !common.contains(&k.get_ref().as_ref()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        d.fingerprint = fingerprint(t);
        d.settings = Settings {
            table: own,
            name: d.name.clone(),
            place,
        };
    }
}

/// Where a top-level table and its keys are; empty when the file has no such table.
fn table_place(doc: &DeTable<'static>, name: &str, source: &Source) -> Place {
    let Some(table) = doc.get(name) else {
        return Place::default();
    };
    let DeValue::Table(t) = table.get_ref() else {
        return Place::default();
    };
    Place {
        keys: t
            .iter()
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect(),
        span: table.span(),
        source: source.clone(),
    }
}

/// The table's keys and values without their places (moving a table in the file changes
/// nothing), as TOML text.
fn fingerprint(table: &DeTable<'static>) -> super::Fingerprint {
    let spanned = Spanned::new(0..0, table.clone());
    let plain = toml::Table::deserialize(toml::de::Deserializer::from(spanned))
        .map(|t| t.to_string())
        .unwrap_or_default();
    super::Fingerprint(plain)
}

/// The field names serde expects for `T`, read from its derived `Deserialize`: a struct's
/// key list is then the struct's own, never a copy kept by hand.
pub(crate) fn serde_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Fields<'f>(&'f mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always an error: the deserializer stops as soon as it has the field list.
    let _ = T::deserialize(Fields(&mut fields));
    fields
}
