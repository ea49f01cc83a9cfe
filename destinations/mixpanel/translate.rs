//! Group calls → Groups and Engage requests. Pure: no clock, no I/O. The project token is
//! written into each update as it is serialized (masked when the destination is a dry run).
//!
//! Coalescing (`coalesce`, on by default): the calls of one group in a batch become one
//! Groups update, their properties merged in batch order as Mixpanel would apply them one
//! after another (`$set`: the later value of a property wins; `$set_once`: the earlier
//! stays); a user's membership in a group is sent once however many of its calls name it
//! (`$union` adds a value once). Each update carries every call it stands for.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::{Mixpanel, Operation};
use crate::destination::{Failure, Item, OutRequest, TraitValue, Traits, Translation, Verdict};
use crate::normalize::entries::Ordered;
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

/// Serialized updates waiting to be packed into requests, with the batch indexes each
/// carries (more than one when calls were coalesced into it).
type Updates = Vec<(Vec<usize>, Vec<u8>)>;

/// One group's profile update: one call's traits as they are, or several calls' merged.
struct GroupCalls<'a> {
    group_id: &'a str,
    properties: Properties<'a>,
    items: Vec<usize>,
}

/// One user's membership in one group: `(user, group)` and the calls that name it.
type Membership<'a> = ((&'a str, &'a str), Vec<usize>);

pub(super) fn translate(mp: &Mixpanel, batch: &[Item<'_>]) -> Translation {
    let mut t = Translation::default();
    let mut groups: Vec<GroupCalls<'_>> = Vec::new();
    let mut memberships: Vec<Membership<'_>> = Vec::new();
    // Where a group's update and a membership are, when coalescing.
    let mut group_at: HashMap<&str, usize> = HashMap::new();
    let mut membership_at: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        let m = item.message;
        // The engine hands this adapter group calls only, and every group call has a groupId;
        // an item left unsettled here is dead-lettered by the engine.
        let Some(group_id) = item.group_call() else {
            continue;
        };
        let traits = match item.traits() {
            Ok(traits) => traits.filter(|t| !t.is_empty()),
            Err(why) => {
                let why = format!("the stored message cannot be read: {why}");
                t.settled
                    .push((i, Verdict::permanent(Failure::translation(why))));
                continue;
            }
        };
        let has_traits = traits.is_some();
        if let Some(traits) = traits {
            match group_at.get(group_id).filter(|_| mp.coalesce) {
                Some(&k) => {
                    let g = &mut groups[k];
                    let earlier =
                        std::mem::replace(&mut g.properties, Properties::Merged(Props::default()));
                    g.properties = earlier.merge(&traits, mp.operation);
                    g.items.push(i);
                    t.coalesced.push(i);
                }
                None => {
                    group_at.insert(group_id, groups.len());
                    groups.push(GroupCalls {
                        group_id,
                        properties: Properties::Traits(traits),
                        items: vec![i],
                    });
                }
            }
        }
        let user_id = crate::message::field(m, "userId").and_then(Value::as_str);
        match user_id.filter(|_| mp.associate_user) {
            Some(user_id) => match membership_at
                .get(&(user_id, group_id))
                .filter(|_| mp.coalesce)
            {
                Some(&k) => memberships[k].1.push(i),
                None => {
                    membership_at.insert((user_id, group_id), memberships.len());
                    memberships.push(((user_id, group_id), vec![i]));
                }
            },
            // Empty traits and no user to associate: nothing to send, and nothing lost.
            None if !has_traits => t.settled.push((i, Verdict::Delivered)),
            None => {}
        }
    }
    let groups = serialized(
        &mut t,
        groups.into_iter().map(|g| {
            let update = group_update(mp, g.group_id, &g.properties).and_then(|u| match u.len() {
                n if n > MAX_UPDATE_BYTES => Err(format!(
                    "the group update is {n} bytes; Mixpanel takes at most 1 MB"
                )),
                _ => Ok(u),
            });
            (g.items, update)
        }),
    );
    let engage = serialized(
        &mut t,
        memberships
            .into_iter()
            .map(|((user_id, group_id), items)| (items, engage_update(mp, user_id, group_id))),
    );
    pack(&mut t, &format!("{}/groups?verbose=1", mp.host), groups);
    pack(&mut t, &format!("{}/engage?verbose=1", mp.host), engage);
    t
}

/// The updates that serialized; the calls of one that did not are settled as untranslatable.
fn serialized(
    t: &mut Translation,
    updates: impl Iterator<Item = (Vec<usize>, Result<Vec<u8>, String>)>,
) -> Updates {
    let mut ok = Vec::new();
    for (items, update) in updates {
        match update {
            Ok(u) => ok.push((items, u)),
            Err(why) => t.settled.extend(
                items
                    .into_iter()
                    .map(|i| (i, Verdict::permanent(Failure::translation(why.clone())))),
            ),
        }
    }
    ok
}

/// `{"$token","$group_key","$group_id","$set"|"$set_once"}` (MPD openapi `/groups#group-set`).
/// The id is always the call's `groupId`: unlike Segment's action (AD:mixpanel/groupIdentifyUser),
/// a trait named like the group key does not replace it. Serialized straight from the message.
fn group_update(
    mp: &Mixpanel,
    group_id: &str,
    properties: &Properties<'_>,
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
        properties,
    })
}

struct GroupUpdate<'a> {
    token: &'a str,
    group_key: &'a str,
    group_id: &'a str,
    op: &'static str,
    properties: &'a Properties<'a>,
}

impl Serialize for GroupUpdate<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("$token", self.token)?;
        map.serialize_entry("$group_key", self.group_key)?;
        map.serialize_entry("$group_id", self.group_id)?;
        match self.properties {
            // A trait spelled like a renamed one (`$name` next to `name`) would give one
            // property twice: merge them in a map, as for any other message shape we did not
            // plan for.
            Properties::Traits(traits) if traits.iter().any(|(k, _)| k.starts_with('$')) => {
                map.serialize_entry(self.op, &properties(traits))?
            }
            Properties::Traits(traits) => map.serialize_entry(self.op, &AsProperties(traits))?,
            Properties::Merged(merged) => map.serialize_entry(self.op, merged)?,
        }
        map.end()
    }
}

/// A group's properties: one call's traits, written as they are read (see `properties`), or
/// the properties of several calls merged.
enum Properties<'a> {
    Traits(Traits<'a>),
    Merged(Props<'a>),
}

impl<'a> Properties<'a> {
    /// Lay a later call's traits over these, as Mixpanel would apply its update after them:
    /// with `$set` the later value of each property wins (an object such as `address` is one
    /// property, replaced whole); with `$set_once` a property already set stays.
    fn merge(self, later: &Traits<'a>, op: Operation) -> Self {
        let mut merged = match self {
            Properties::Traits(traits) => properties(&traits),
            Properties::Merged(merged) => merged,
        };
        for (key, value) in properties(later).into_list() {
            match op {
                Operation::Set => {
                    merged.set(key, value);
                }
                Operation::SetOnce => merged.set_once(key, value),
            }
        }
        Properties::Merged(merged)
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
type Props<'a> = Ordered<'a, Prop<'a>>;

enum Prop<'a> {
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
    let mut count = 0;
    for (calls, update) in updates {
        let full = count == MAX_UPDATES || body.len() + 1 + update.len() + 1 > BODY_BUDGET;
        if count > 0 && full {
            t.requests.push(finish(
                url,
                std::mem::take(&mut body),
                std::mem::take(&mut items),
            ));
            count = 0;
        }
        body.push(if count == 0 { b'[' } else { b',' });
        body.extend_from_slice(&update);
        items.extend(calls);
        count += 1;
    }
    if count > 0 {
        t.requests.push(finish(url, body, items));
    }
}

fn finish(url: &str, mut body: Vec<u8>, items: Vec<usize>) -> OutRequest {
    body.push(b']');
    OutRequest::json(Method::POST, url, body, items)
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
