//! Group calls → Groups and Engage requests. Pure: no clock, no I/O. The project token is
//! written into each update as it is serialized (masked when the destination is a dry run).

use http::Method;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::{Mixpanel, Operation};
use crate::destination::{Failure, Item, OutRequest, Translation, Verdict};
use crate::normalize::time;

/// One update may be at most 1 MB (MPD:reference/limits-1.mdx); counted in bytes of its JSON.
const MAX_UPDATE_BYTES: usize = 1_000_000;
/// Mixpanel refuses bodies over 2 MiB (MPD openapi `StrictTooLarge`: "max limit of 2097152
/// bytes"); requests are cut at half that so they stay well under it.
const BODY_BUDGET: usize = 1 << 20;
/// At most 2,000 updates per request (MPD:reference/limits-1.mdx).
const MAX_UPDATES: usize = super::MAX_BATCH;

/// Reserved traits renamed to Mixpanel's reserved properties (MPD:docs/data-structure/
/// property-reference/reserved-properties.mdx; the same names AJSI-MP and AD:mixpanel use).
const RENAMED: &[(&str, &str)] = &[
    ("name", "$name"),
    ("createdAt", "$created"),
    ("email", "$email"),
    ("phone", "$phone"),
    ("avatar", "$avatar"),
];

/// Serialized updates waiting to be packed into requests, with the batch index each carries.
type Updates = Vec<(usize, Vec<u8>)>;

pub(super) fn translate(mp: &Mixpanel, batch: &[Item<'_>]) -> Translation {
    let mut t = Translation::default();
    let mut groups: Updates = Vec::new();
    let mut engage: Updates = Vec::new();
    for (i, item) in batch.iter().enumerate() {
        let m = item.message;
        // The engine hands this adapter group calls only, and every group call has a groupId;
        // an item left unsettled here is dead-lettered by the engine.
        let Some(group_id) = item.group_call() else {
            continue;
        };
        let traits = m
            .get("traits")
            .and_then(Value::as_object)
            .filter(|t| !t.is_empty());
        if let Some(traits) = traits {
            let update = match group_update(mp, group_id, traits) {
                Ok(u) if u.len() > MAX_UPDATE_BYTES => Err(format!(
                    "the group update is {} bytes; Mixpanel takes at most 1 MB",
                    u.len()
                )),
                other => other,
            };
            match update {
                Ok(update) => groups.push((i, update)),
                Err(why) => {
                    t.settled
                        .push((i, Verdict::permanent(Failure::translation(why))));
                    continue;
                }
            }
        }
        let user_id = m.get("userId").and_then(Value::as_str);
        match user_id.filter(|_| mp.associate_user) {
            Some(user_id) => match engage_update(mp, user_id, group_id) {
                Ok(update) => engage.push((i, update)),
                Err(why) => t
                    .settled
                    .push((i, Verdict::permanent(Failure::translation(why)))),
            },
            // Empty traits and no user to associate: nothing to send, and nothing lost.
            None if traits.is_none() => t.settled.push((i, Verdict::Delivered)),
            None => {}
        }
    }
    pack(&mut t, &format!("{}/groups?verbose=1", mp.host), groups);
    pack(&mut t, &format!("{}/engage?verbose=1", mp.host), engage);
    t
}

/// `{"$token","$group_key","$group_id","$set"|"$set_once"}` (MPD openapi `/groups#group-set`).
/// The id is always the call's `groupId`: unlike Segment's action (AD:mixpanel/groupIdentifyUser),
/// a trait named like the group key does not replace it. Serialized straight from the message.
fn group_update(
    mp: &Mixpanel,
    group_id: &str,
    traits: &Map<String, Value>,
) -> Result<Vec<u8>, String> {
    let op = match mp.operation {
        Operation::Set => "$set",
        Operation::SetOnce => "$set_once",
    };
    serialize(&GroupUpdate {
        token: mp.token.expose(),
        group_key: &mp.group_key,
        group_id,
        op,
        traits,
    })
}

struct GroupUpdate<'a> {
    token: &'a str,
    group_key: &'a str,
    group_id: &'a str,
    op: &'static str,
    traits: &'a Map<String, Value>,
}

impl Serialize for GroupUpdate<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("$token", self.token)?;
        map.serialize_entry("$group_key", self.group_key)?;
        map.serialize_entry("$group_id", self.group_id)?;
        // A trait spelled like a renamed one (`$name` next to `name`) would give one property
        // twice: merge them in a map, as for any other message shape we did not plan for.
        if self.traits.keys().any(|k| k.starts_with('$')) {
            map.serialize_entry(self.op, &properties(self.traits))?;
        } else {
            map.serialize_entry(self.op, &Properties(self.traits))?;
        }
        map.end()
    }
}

/// Traits as profile properties, written as they are read (see `properties`).
struct Properties<'a>(&'a Map<String, Value>);

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            if key == "createdAt" {
                map.serialize_entry(renamed(key), &created(value))?;
            } else {
                map.serialize_entry(renamed(key), value)?;
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

/// Traits as profile properties: reserved ones renamed, every other one under its own key,
/// values as given except `createdAt`.
fn properties(traits: &Map<String, Value>) -> Map<String, Value> {
    traits
        .iter()
        .map(|(key, value)| {
            let value = if key == "createdAt" {
                created(value)
            } else {
                value.clone()
            };
            (renamed(key).to_string(), value)
        })
        .collect()
}

/// Mixpanel reads dates as UTC `YYYY-MM-DDTHH:MM:SS` and would store a Unix number as a plain
/// number (MPD:docs/data-structure/property-reference/data-type.mdx), so every readable form
/// becomes that string; `null` and unreadable values pass as given.
fn created(value: &Value) -> Value {
    match time::parse_any(value) {
        Some(dt) => Value::String(dt.format("%Y-%m-%dT%H:%M:%S").to_string()),
        None => value.clone(),
    }
}

/// `{"$token","$distinct_id","$union": {group_key: [groupId]}}`: the user's profile lists its
/// groups under the group key (MPD openapi `/engage#profile-union`; AJSI-MP `set_group`).
fn engage_update(mp: &Mixpanel, user_id: &str, group_id: &str) -> Result<Vec<u8>, String> {
    #[derive(Serialize)]
    struct Engage<'a> {
        #[serde(rename = "$token")]
        token: &'a str,
        #[serde(rename = "$distinct_id")]
        distinct_id: &'a str,
        #[serde(rename = "$union")]
        union: Union<'a>,
    }
    struct Union<'a>(&'a str, [&'a str; 1]);
    impl Serialize for Union<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(self.0, &self.1)?;
            map.end()
        }
    }
    serialize(&Engage {
        token: mp.token.expose(),
        distinct_id: user_id,
        union: Union(&mp.group_key, [group_id]),
    })
}

/// An update as JSON; a message holds nothing JSON cannot write (it came from JSON), so an
/// error here is a defect, reported as the item's dead-letter reason rather than hidden.
fn serialize(update: &impl Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(update).map_err(|e| format!("the update cannot be serialized: {e}"))
}

/// Pack updates into JSON-array bodies of at most `MAX_UPDATES` and, unless one update alone
/// is larger, `BODY_BUDGET` bytes.
fn pack(t: &mut Translation, url: &str, updates: Updates) {
    let mut body: Vec<u8> = Vec::new();
    let mut items: Vec<usize> = Vec::new();
    for (i, update) in updates {
        let full = items.len() == MAX_UPDATES || body.len() + 1 + update.len() + 1 > BODY_BUDGET;
        if !items.is_empty() && full {
            t.requests.push(finish(
                url,
                std::mem::take(&mut body),
                std::mem::take(&mut items),
            ));
        }
        body.push(if items.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(&update);
        items.push(i);
    }
    if !items.is_empty() {
        t.requests.push(finish(url, body, items));
    }
}

fn finish(url: &str, mut body: Vec<u8>, items: Vec<usize>) -> OutRequest {
    body.push(b']');
    OutRequest::json(Method::POST, url, body, items)
}
