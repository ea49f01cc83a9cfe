//! Group calls → sObject Collections upserts by external id. Pure but for a WARN and a counter
//! when a value is left out, so that an operator sees the data Salesforce did not get.
//!
//! A request never holds two records with one external id (they would race each other,
//! inference from SF-COLL's in-order processing). Coalescing (`coalesce`, on by default)
//! merges a group's calls in a batch into one record, later values winning field by field
//! (so `address.city` and `address.street` merge as the fields they map to); without it each
//! call is its own record, and a group's second record goes in a later request than its first.

use std::collections::HashMap;

use http::Method;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::{MAX_BATCH, Salesforce};
use crate::destination::{Failure, Item, OutRequest, TraitValue, Traits, Translation, Verdict};

/// One record to upsert: the updates of one group merged in batch order.
struct Record<'a> {
    group_id: &'a str,
    /// Field → value, borrowed from the config and the messages (a value read from the
    /// stored text is copied as it is): a later call's value replaces an earlier one in
    /// place, so fields keep the order they were first set in.
    fields: Vec<(&'a str, TraitValue<'a>)>,
    /// Batch indexes of the calls merged into it; the record's verdict is each one's.
    items: Vec<usize>,
    /// Records of one group before this one in the batch (always 0 when coalescing): the
    /// record goes in a request after theirs.
    round: usize,
}

pub(super) fn translate(sf: &Salesforce, batch: &[Item<'_>]) -> Translation {
    let mut t = Translation::default();
    let mut records: Vec<Record<'_>> = Vec::new();
    // A group's record to merge into (when coalescing), and how many records it has.
    let mut by_group: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        // The engine hands this adapter group calls only, and every group call has a groupId;
        // an item left unsettled here is dead-lettered by the engine.
        let Some(group_id) = item.group_call() else {
            continue;
        };
        let traits = match item.traits() {
            Ok(traits) => traits,
            Err(why) => {
                let why = format!("the stored message cannot be read: {why}");
                t.settled
                    .push((i, Verdict::permanent(Failure::translation(why))));
                continue;
            }
        };
        let k = match by_group.get_mut(group_id) {
            Some((k, _)) if sf.coalesce => {
                t.coalesced.push(i);
                *k
            }
            seen => {
                let round = seen.as_ref().map_or(0, |(_, n)| *n);
                records.push(Record {
                    group_id,
                    fields: Vec::new(),
                    items: Vec::new(),
                    round,
                });
                by_group.insert(group_id, (records.len() - 1, round + 1));
                records.len() - 1
            }
        };
        if let Some(traits) = &traits {
            apply(sf, traits, &mut records[k].fields, item.message_id());
        }
        records[k].items.push(i);
    }
    let (empty, mut records): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|r| r.fields.is_empty());
    // No mapped trait: nothing to write, and an upsert of the bare id could only create a
    // record without the required `Name`.
    for r in empty {
        t.settled
            .extend(r.items.into_iter().map(|i| (i, Verdict::Delivered)));
    }
    // Stable: within a round, records keep batch order.
    records.sort_by_key(|r| r.round);
    let rounds = records.chunk_by(|a, b| a.round == b.round);
    for chunk in rounds.flat_map(|round| round.chunks(MAX_BATCH)) {
        match request(sf, chunk) {
            Ok(r) => t.requests.push(r),
            Err(e) => {
                let why = format!("the records cannot be serialized: {e}");
                let items = chunk.iter().flat_map(|r| r.items.iter().copied());
                t.settled.extend(
                    items.map(|i| (i, Verdict::permanent(Failure::translation(why.clone())))),
                );
            }
        }
    }
    t
}

/// Lay the mapped traits of one call over a record's fields. A trait sent as `null` nulls its
/// field; an absent trait leaves it alone. Fields are set in mapping order.
fn apply<'a>(
    sf: &'a Salesforce,
    traits: &Traits<'a>,
    fields: &mut Vec<(&'a str, TraitValue<'a>)>,
    message_id: &str,
) {
    for (path, field, value) in mapped(sf, traits) {
        // The external id always comes from `groupId`, never from a trait.
        if *field == sf.external_id_field {
            continue;
        }
        match fit(field, value) {
            Ok(v) => match fields.iter_mut().find(|(f, _)| *f == field.as_str()) {
                Some(slot) => slot.1 = v,
                None => fields.push((field, v)),
            },
            Err(why) => {
                tracing::warn!(message_id, field = %field, trait_path = %path.join("."), "left out of the Salesforce record: {why}");
                metrics::counter!("switchyard_salesforce_fields_left_out_total", "field" => field.clone()).increment(1);
            }
        }
    }
}

/// The mapping's entries whose trait path this call has, in mapping order, with the value at
/// that path. One pass over the call's traits, comparing each name with the mapping's first
/// path components (each once), instead of a hashed lookup per mapping entry: most mapped
/// traits are absent from a call, and the traits map is seldom in cache (a profile put the
/// lookups at 5% of the daemon's CPU).
fn mapped<'m, 'a>(
    sf: &'m Salesforce,
    traits: &Traits<'a>,
) -> impl Iterator<Item = (&'m [String], &'m String, TraitValue<'a>)> {
    let mut found: Vec<Option<TraitValue<'a>>> = vec![None; sf.mapping.len()];
    for (name, value) in traits.iter() {
        let Some((_, entries)) = sf.firsts.iter().find(|(first, _)| *first == name) else {
            continue;
        };
        // An object mapped field by field (`address.city`, `address.street`, …): its members
        // are read once, not once per field.
        let inner = if entries.len() > 1 {
            value.members()
        } else {
            None
        };
        for &k in entries {
            let path = &sf.mapping[k].0;
            found[k] = match (path.get(1), &inner) {
                (Some(second), Some(inner)) => inner
                    .iter()
                    .find(|(name, _)| name == second)
                    .and_then(|(_, v)| path[2..].iter().try_fold(*v, |v, key| v.get(key))),
                _ => path[1..].iter().try_fold(value, |v, key| v.get(key)),
            };
        }
    }
    sf.mapping
        .iter()
        .zip(found)
        .filter_map(|((path, field), value)| Some((path.as_slice(), field, value?)))
}

/// A value Salesforce can take for `field`, or why not. `NumberOfEmployees` is an integer
/// field (SF-ERR would answer a data error for the whole record); objects and arrays fit no
/// scalar field. Segment instead rejects the whole event (AD:salesforce/account).
fn fit<'a>(field: &str, value: TraitValue<'a>) -> Result<TraitValue<'a>, &'static str> {
    if value.is_structured() {
        return Err("an object or array fits no Salesforce field");
    }
    if field == "NumberOfEmployees" && !value.is_null() && value.to_value().as_i64().is_none() {
        return Err("NumberOfEmployees takes an integer");
    }
    Ok(value)
}

/// `PATCH …/composite/sobjects/{object}/{field}` with `{"allOrNone": false, "records": […]}`;
/// each record carries `attributes.type` and its key in the external-id field (SF-COLL).
fn request(sf: &Salesforce, records: &[Record<'_>]) -> Result<OutRequest, serde_json::Error> {
    let url = format!(
        "{}/services/data/{}/composite/sobjects/{}/{}",
        sf.instance_url, sf.api_version, sf.object, sf.external_id_field
    );
    let mut items = Vec::new();
    let mut parts = Vec::new();
    for (k, r) in records.iter().enumerate() {
        items.extend(&r.items);
        parts.extend(std::iter::repeat_n(k, r.items.len()));
    }
    // Per-record results, not a rollback of every record for one bad one (SF-AON).
    let body = Body {
        all_or_none: false,
        records: records
            .iter()
            .map(|r| RecordJson { sf, record: r })
            .collect(),
    };
    // Strings and parsed JSON serialize; an error would be a defect, and is reported as one.
    let mut request = OutRequest::json(Method::PATCH, url, serde_json::to_vec(&body)?, items);
    request.parts = parts;
    Ok(request)
}

/// The request body, serialized straight from borrowed values.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "allOrNone")]
    all_or_none: bool,
    records: Vec<RecordJson<'a>>,
}

/// `{"attributes": {"type": object}, externalIdField: groupId, field: value, …}`.
struct RecordJson<'a> {
    sf: &'a Salesforce,
    record: &'a Record<'a>,
}

#[derive(Serialize)]
struct Attributes<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = &self.record.fields;
        let mut map = serializer.serialize_map(Some(2 + fields.len()))?;
        map.serialize_entry(
            "attributes",
            &Attributes {
                kind: &self.sf.object,
            },
        )?;
        map.serialize_entry(&self.sf.external_id_field, self.record.group_id)?;
        for (field, value) in fields {
            map.serialize_entry(field, value)?;
        }
        map.end()
    }
}
