//! Group calls → Groups and Engage requests. Pure: no clock, no I/O. The project token is
//! written into each update as it is serialized (masked when the destination is a dry run).
//!
//! Coalescing (`coalesce`, on by default): the calls of one group in a batch become one
//! Groups update, their properties merged in batch order as Mixpanel would apply them one
//! after another (`$set`: the later value of a property wins; `$set_once`: the earlier
//! stays); a user's membership in a group is sent once however many of its calls name it
//! (`$union` adds a value once). Each update carries every call it stands for.
//!
//! Pure as to what it sends: the properties a group's stored traits text renders to are
//! kept for the group's next calls with the same text (`crate::memo`), which get the same
//! bytes without splitting the text again.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::properties::{Call, Properties, Props, TraitsProperties};
use super::{Mixpanel, Operation};
use crate::destination::{Failure, Item, OutRequest, Traits, Translation, Verdict};

/// One update may be at most 1 MB (MPD:reference/limits-1.mdx); counted in bytes of its JSON.
const MAX_UPDATE_BYTES: usize = 1_000_000;
/// Mixpanel refuses bodies over 2 MiB (MPD openapi `StrictTooLarge`: "max limit of 2097152
/// bytes"); requests are cut at half that so they stay well under it.
const BODY_BUDGET: usize = 1 << 20;
/// At most 2,000 updates per request (MPD:reference/limits-1.mdx).
const MAX_UPDATES: usize = super::MAX_BATCH;

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
        let call = match call(mp, item, group_id) {
            Ok(call) => call,
            Err(why) => {
                t.settled
                    .push((i, Verdict::permanent(Failure::translation(why))));
                continue;
            }
        };
        let has_traits = call.is_some();
        if let Some(call) = call {
            match group_at.get(group_id).filter(|_| mp.coalesce) {
                Some(&k) => {
                    let g = &mut groups[k];
                    if let Err(why) = g.properties.merge(call, mp.operation) {
                        let why = format!("the stored message cannot be read: {why}");
                        t.settled
                            .push((i, Verdict::permanent(Failure::translation(why))));
                        continue;
                    }
                    g.items.push(i);
                    t.coalesced.push(i);
                }
                None => {
                    group_at.insert(group_id, groups.len());
                    groups.push(GroupCalls {
                        group_id,
                        properties: Properties::One(call),
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

/// One call's traits as its group's properties (`None`: it has none, or they are empty):
/// from the stored text, rendered once per group and text (see `crate::memo`); split from
/// the parsed message otherwise. `Err`: the stored text cannot be read.
fn call<'a>(mp: &Mixpanel, item: &Item<'a>, group_id: &str) -> Result<Option<Call<'a>>, String> {
    let unreadable = |why| format!("the stored message cannot be read: {why}");
    let Some(text) = item.traits_json().map_err(unreadable)? else {
        let traits = item.parsed_traits();
        return Ok(traits.filter(|t| !t.is_empty()).map(Call::Traits));
    };
    if let Some(rendered) = mp.kept.get(group_id, text) {
        return Ok(rendered.map(|r| Call::Kept(text, r)));
    }
    let traits = Traits::split(text).map_err(unreadable)?;
    if !mp.kept.wants() {
        return Ok(Some(traits).filter(|t| !t.is_empty()).map(Call::Traits));
    }
    if traits.is_empty() {
        mp.kept.keep(group_id, text, None, 0);
        return Ok(None);
    }
    let json = serde_json::to_string(&TraitsProperties(&traits))
        .map_err(|e| format!("the update cannot be serialized: {e}"))?;
    let rendered: Arc<str> = Arc::from(json);
    mp.kept
        .keep(group_id, text, Some(rendered.clone()), rendered.len());
    Ok(Some(Call::Kept(text, rendered)))
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
    let update = |properties| GroupUpdate {
        token: mp.token.expose(),
        group_key: &mp.group_key,
        group_id,
        op,
        properties,
    };
    match properties {
        Properties::One(Call::Traits(traits)) => serialize(&update(Set::Traits(traits))),
        Properties::Merged(merged) => serialize(&update(Set::Merged(merged))),
        Properties::One(Call::Kept(_, rendered)) => update(Set::Kept).around(rendered),
    }
}

struct GroupUpdate<'s, 'a> {
    token: &'s str,
    group_key: &'s str,
    group_id: &'s str,
    op: &'static str,
    properties: Set<'s, 'a>,
}

/// What goes under `$set` (or `$set_once`).
enum Set<'s, 'a> {
    Traits(&'s Traits<'a>),
    Merged(&'s Props<'a>),
    /// Rendered before: written by [`GroupUpdate::around`].
    Kept,
}

impl GroupUpdate<'_, '_> {
    /// The bytes a [`GroupUpdate`] serializes to, around properties rendered before.
    fn around(&self, rendered: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(rendered.len() + 64 + self.group_id.len());
        let mut head = || -> serde_json::Result<()> {
            out.extend_from_slice(b"{\"$token\":");
            serde_json::to_writer(&mut out, self.token)?;
            out.extend_from_slice(b",\"$group_key\":");
            serde_json::to_writer(&mut out, self.group_key)?;
            out.extend_from_slice(b",\"$group_id\":");
            serde_json::to_writer(&mut out, self.group_id)?;
            out.push(b',');
            serde_json::to_writer(&mut out, self.op)?;
            out.push(b':');
            Ok(())
        };
        head().map_err(|e| format!("the update cannot be serialized: {e}"))?;
        out.extend_from_slice(rendered.as_bytes());
        out.push(b'}');
        Ok(out)
    }
}

impl Serialize for GroupUpdate<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("$token", self.token)?;
        map.serialize_entry("$group_key", self.group_key)?;
        map.serialize_entry("$group_id", self.group_id)?;
        match self.properties {
            Set::Traits(traits) => map.serialize_entry(self.op, &TraitsProperties(traits))?,
            Set::Merged(merged) => map.serialize_entry(self.op, merged)?,
            Set::Kept => {
                return Err(serde::ser::Error::custom(
                    "rendered properties are written by `around`",
                ));
            }
        }
        map.end()
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
