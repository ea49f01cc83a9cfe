//! Which destinations a message goes to: its `integrations` map × the configured destinations.
//!
//! Rules (DESIGN.md "Route"): `All` (any case) sets the default, true when absent; a
//! destination's own key — its name or an alias, any case — set to `false` turns it off, `true`
//! or an object turns it on, and an object becomes that destination's per-message options.
//! Then each destination's `types` filter applies.

use serde_json::{Map, Value};

use crate::message::MessageType;

/// What routing needs to know of one destination.
#[derive(Debug, Clone)]
pub struct RouteKey {
    /// The destination's configured name, as the spool knows it; shared by every message
    /// routed to it (see [`crate::message::Accepted::destinations`]).
    name: std::sync::Arc<str>,
    /// Name and aliases, lower-cased.
    keys: Vec<String>,
    /// Message types it takes.
    types: Vec<MessageType>,
}

impl RouteKey {
    pub fn new<'a>(
        name: &str,
        aliases: impl IntoIterator<Item = &'a String>,
        types: Vec<MessageType>,
    ) -> Self {
        let keys = std::iter::once(name.to_lowercase())
            .chain(aliases.into_iter().map(|a| a.to_lowercase()))
            .collect();
        Self {
            name: name.into(),
            keys,
            types,
        }
    }

    /// The destination's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same name, shared: what a message routed here carries.
    pub fn shared_name(&self) -> &std::sync::Arc<str> {
        &self.name
    }

    /// The message types it takes.
    pub fn types(&self) -> &[MessageType] {
        &self.types
    }

    /// This destination's entry in an `integrations` map, if it has one.
    fn entry<'m>(&self, integrations: &'m Map<String, Value>) -> Option<&'m Value> {
        integrations
            .iter()
            .find(|(k, _)| self.keys.iter().any(|key| key.eq_ignore_ascii_case(k)))
            .map(|(_, v)| v)
    }
}

/// Indexes of the destinations a message of type `ty` with this `integrations` map goes to.
pub fn route(
    ty: MessageType,
    integrations: Option<&Map<String, Value>>,
    destinations: &[RouteKey],
) -> Vec<usize> {
    let all = all_key(integrations);
    destinations
        .iter()
        .enumerate()
        .filter(|(_, d)| decide(ty, integrations, all, d).routed())
        .map(|(i, _)| i)
        .collect()
}

/// Why a message goes to a destination or not: the rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The destination does not take this message type.
    WrongType,
    /// Its own `integrations` key: `true`/an object (on) or `false` (off).
    OwnKey { on: bool, object: bool },
    /// No own key (or one that is neither a boolean nor an object): `All` decides, true when
    /// absent.
    Default { all: Option<bool> },
}

impl Decision {
    pub fn routed(self) -> bool {
        match self {
            Decision::WrongType => false,
            Decision::OwnKey { on, .. } => on,
            Decision::Default { all } => all != Some(false),
        }
    }

    /// In words, for the console's "try a message".
    pub fn explain(self, ty: MessageType, name: &str) -> String {
        match self {
            Decision::WrongType => format!("{name} does not take {} calls", ty.as_str()),
            Decision::OwnKey { object: true, .. } => {
                format!("integrations.{name} is an object (on, with per-message options)")
            }
            Decision::OwnKey { on, .. } => format!("integrations.{name} is {on}"),
            Decision::Default { all: None } => {
                format!("no integrations.{name} and no integrations.All: on by default")
            }
            Decision::Default { all: Some(all) } => {
                format!("no integrations.{name}: integrations.All is {all}")
            }
        }
    }
}

/// `integrations.All` (any case) when it is present; anything but `false` counts as true.
fn all_key(integrations: Option<&Map<String, Value>>) -> Option<bool> {
    integrations
        .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("all")))
        .map(|(_, v)| v.as_bool() != Some(false))
}

/// The rule that decides whether a message goes to `d`; `all` is [`all_key`] of the map.
fn decide(
    ty: MessageType,
    integrations: Option<&Map<String, Value>>,
    all: Option<bool>,
    d: &RouteKey,
) -> Decision {
    if !d.types.contains(&ty) {
        return Decision::WrongType;
    }
    match integrations.and_then(|m| d.entry(m)) {
        Some(Value::Bool(on)) => Decision::OwnKey {
            on: *on,
            object: false,
        },
        Some(Value::Object(_)) => Decision::OwnKey {
            on: true,
            object: true,
        },
        // A key present with any other value (null, a number) does not decide.
        Some(_) | None => Decision::Default { all },
    }
}

/// The decision for each destination, in order (what `route` filters by).
pub fn decisions(
    ty: MessageType,
    integrations: Option<&Map<String, Value>>,
    destinations: &[RouteKey],
) -> Vec<Decision> {
    let all = all_key(integrations);
    (destinations.iter())
        .map(|d| decide(ty, integrations, all, d))
        .collect()
}

/// The per-message options for a destination: the object its `integrations` key holds.
pub fn options<'m>(
    integrations: Option<&'m Map<String, Value>>,
    destination: &RouteKey,
) -> Option<&'m Map<String, Value>> {
    integrations
        .and_then(|m| destination.entry(m))
        .and_then(Value::as_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dests() -> Vec<RouteKey> {
        vec![
            RouteKey::new("Hook A", &["Alpha".to_string()], MessageType::ALL.to_vec()),
            RouteKey::new("Hook B", &[], MessageType::ALL.to_vec()),
            RouteKey::new("Groups Only", &[], vec![MessageType::Group]),
        ]
    }

    #[test]
    fn table() {
        let cases: &[(Value, MessageType, &[usize])] = &[
            (json!(null), MessageType::Group, &[0, 1, 2]),
            (json!({}), MessageType::Track, &[0, 1]),
            (json!({"All": false}), MessageType::Group, &[]),
            (
                json!({"all": false, "Hook A": true}),
                MessageType::Group,
                &[0],
            ),
            (json!({"Hook A": false}), MessageType::Group, &[1, 2]),
            (
                json!({"hook a": {"x": 1}, "ALL": false}),
                MessageType::Group,
                &[0],
            ),
            (json!({"alpha": false}), MessageType::Group, &[1, 2]),
            (
                json!({"All": false, "ALPHA": true}),
                MessageType::Identify,
                &[0],
            ),
            (
                json!({"All": false, "Groups Only": true}),
                MessageType::Track,
                &[],
            ),
            (
                json!({"All": true, "Hook B": null}),
                MessageType::Group,
                &[0, 1, 2],
            ),
            (
                json!({"All": false, "Hook B": null}),
                MessageType::Group,
                &[],
            ),
            (json!({"Unknown": true}), MessageType::Group, &[0, 1, 2]),
        ];
        let d = dests();
        for (integrations, ty, want) in cases {
            let got = route(*ty, integrations.as_object(), &d);
            assert_eq!(&got, want, "integrations {integrations} type {ty}");
        }
    }

    #[test]
    fn options_are_the_object_value() {
        let d = dests();
        let m = json!({"HOOK A": {"x": 1}, "Hook B": true});
        assert_eq!(options(m.as_object(), &d[0]), json!({"x": 1}).as_object());
        assert_eq!(options(m.as_object(), &d[1]), None);
        assert_eq!(options(None, &d[1]), None);
    }
}
