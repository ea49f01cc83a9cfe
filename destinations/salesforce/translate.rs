//! Group calls → sObject Collections upserts by external id. Pure but for a WARN and a counter
//! when a value is left out, so that an operator sees the data Salesforce did not get.
//!
//! A request never holds two records with one external id (they would race each other,
//! inference from SF-COLL's in-order processing). Coalescing (`coalesce`, on by default)
//! merges a group's calls in a batch into one record, later values winning field by field
//! (so `address.city` and `address.street` merge as the fields they map to); without it each
//! call is its own record, and a group's second record goes in a later request than its first.
//!
//! The fields a group's stored traits text maps to are kept for the group's next calls with
//! the same text (`crate::memo`), unless a value of it was left out (reported every time).

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use super::{MAX_BATCH, Salesforce};
use crate::destination::{Failure, Item, OutRequest, TraitValue, Traits, Translation, Verdict};

/// One record to upsert: the updates of one group merged in batch order.
struct Record<'a> {
    group_id: &'a str,
    /// While every call merged so far had the same stored traits: their text and the fields
    /// kept for it, `fields` then empty.
    kept: Option<(&'a str, KeptFields)>,
    /// Field → value, borrowed from the config and the messages (a value read from the
    /// stored text is copied as it is): a later call's value replaces an earlier one in
    /// place, so fields keep the order they were first set in.
    fields: Fields<'a>,
    /// Batch indexes of the calls merged into it; the record's verdict is each one's.
    items: Vec<usize>,
    /// Records of one group before this one in the batch (always 0 when coalescing): the
    /// record goes in a request after theirs.
    round: usize,
}

type Fields<'a> = Vec<(&'a str, TraitValue<'a>)>;

/// The fields one stored traits text maps to, kept per group (see `crate::memo`), written as
/// they go into a record (`"Name":"Acme","Industry":"Retail"`; empty for none). Only texts
/// that map without leaving a value out are kept, so a value left out is reported every time.
pub(super) type KeptFields = Arc<str>;

/// One call's mapped fields.
enum CallFields<'a> {
    Kept(&'a str, KeptFields),
    Own(Fields<'a>),
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
        let fields = match call_fields(sf, item, group_id) {
            Ok(fields) => fields,
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
                    kept: None,
                    fields: Vec::new(),
                    items: Vec::new(),
                    round,
                });
                by_group.insert(group_id, (records.len() - 1, round + 1));
                records.len() - 1
            }
        };
        if let Err(why) = records[k].overlay(sf, fields, item.message_id()) {
            let why = format!("the stored message cannot be read: {why}");
            t.settled
                .push((i, Verdict::permanent(Failure::translation(why))));
            continue;
        }
        records[k].items.push(i);
    }
    let (empty, mut records): (Vec<_>, Vec<_>) = records
        .into_iter()
        .filter(|r| !r.items.is_empty())
        .partition(Record::is_empty);
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

/// One call's fields: from its stored traits text, kept per group and text; mapped from the
/// parsed message otherwise. `Err`: the stored text cannot be read.
fn call_fields<'a>(
    sf: &'a Salesforce,
    item: &Item<'a>,
    group_id: &str,
) -> Result<CallFields<'a>, String> {
    let Some(text) = item.traits_json()? else {
        let mut fields = Vec::new();
        if let Some(traits) = item.parsed_traits() {
            apply(sf, &traits, &mut fields, item.message_id());
        }
        return Ok(CallFields::Own(fields));
    };
    if let Some(kept) = sf.kept.get(group_id, text) {
        return Ok(CallFields::Kept(text, kept));
    }
    let mut fields = Vec::new();
    let all_fit = apply(sf, &Traits::split(text)?, &mut fields, item.message_id());
    if !all_fit || !sf.kept.wants() {
        return Ok(CallFields::Own(fields));
    }
    let mut written = Vec::new();
    write_fields(&mut written, &fields).map_err(|e| e.to_string())?;
    // `write_fields` puts a comma before each field; the record writes the first.
    let kept = String::from_utf8_lossy(written.get(1..).unwrap_or_default());
    let kept = KeptFields::from(kept.as_ref());
    sf.kept.keep(group_id, text, kept.clone(), kept.len());
    Ok(CallFields::Kept(text, kept))
}

impl<'a> Record<'a> {
    /// No field to write.
    fn is_empty(&self) -> bool {
        match &self.kept {
            Some((_, kept)) => kept.is_empty(),
            None => self.fields.is_empty(),
        }
    }

    /// Lay a call's fields over the record's: a later value replaces an earlier one in
    /// place. A call with the same stored traits as every call so far changes nothing.
    fn overlay(
        &mut self,
        sf: &'a Salesforce,
        later: CallFields<'a>,
        message_id: &str,
    ) -> Result<(), String> {
        let later = match later {
            CallFields::Kept(text, kept) if self.items.is_empty() => {
                self.kept = Some((text, kept));
                return Ok(());
            }
            CallFields::Kept(text, _) if self.kept.as_ref().is_some_and(|(t, _)| *t == text) => {
                return Ok(());
            }
            CallFields::Kept(text, _) => own(sf, text, message_id)?,
            CallFields::Own(fields) => fields,
        };
        if let Some((text, _)) = self.kept.take() {
            self.fields = own(sf, text, message_id)?;
        }
        for (field, value) in later {
            match self.fields.iter_mut().find(|(f, _)| *f == field) {
                Some(slot) => slot.1 = value,
                None => self.fields.push((field, value)),
            }
        }
        Ok(())
    }
}

/// The fields of a kept text, mapped again to be merged with another call's (none is left
/// out: only such texts are kept).
fn own<'a>(sf: &'a Salesforce, text: &'a str, message_id: &str) -> Result<Fields<'a>, String> {
    let mut fields = Vec::new();
    apply(sf, &Traits::split(text)?, &mut fields, message_id);
    Ok(fields)
}

/// Lay the mapped traits of one call over a record's fields. A trait sent as `null` nulls its
/// field; an absent trait leaves it alone. Fields are set in mapping order. Returns whether
/// every mapped value fit (one that does not is left out, with a WARN and a count).
fn apply<'a>(
    sf: &'a Salesforce,
    traits: &Traits<'a>,
    fields: &mut Fields<'a>,
    message_id: &str,
) -> bool {
    let mut all_fit = true;
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
                all_fit = false;
                tracing::warn!(message_id, field = %field, trait_path = %path.join("."), "left out of the Salesforce record: {why}");
                metrics::counter!("switchyard_salesforce_fields_left_out_total", "field" => field.clone()).increment(1);
            }
        }
    }
    all_fit
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
    // Strings and parsed JSON serialize; an error would be a defect, and is reported as one.
    let body = body(sf, records)?;
    let mut request = OutRequest::json(Method::PATCH, url, body, items);
    request.parts = parts;
    Ok(request)
}

/// `{"allOrNone": false, "records": [...]}`: per-record results, not a rollback of every
/// record for one bad one (SF-AON). Each record is `{"attributes": {"type": object},
/// externalIdField: groupId, field: value, …}`, written straight from borrowed values and
/// the fields kept per group.
fn body(sf: &Salesforce, records: &[Record<'_>]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(records.len() * 400 + 32);
    out.extend_from_slice(b"{\"allOrNone\":false,\"records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"attributes\":{\"type\":");
        serde_json::to_writer(&mut out, &sf.object)?;
        out.extend_from_slice(b"},");
        serde_json::to_writer(&mut out, &sf.external_id_field)?;
        out.push(b':');
        serde_json::to_writer(&mut out, r.group_id)?;
        match &r.kept {
            Some((_, kept)) if !kept.is_empty() => {
                out.push(b',');
                out.extend_from_slice(kept.as_bytes());
            }
            Some(_) => {}
            None => write_fields(&mut out, &r.fields)?,
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// `,"field":value` for each field.
fn write_fields(out: &mut Vec<u8>, fields: &Fields<'_>) -> Result<(), serde_json::Error> {
    for (field, value) in fields {
        out.push(b',');
        serde_json::to_writer(&mut *out, field)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, value)?;
    }
    Ok(())
}
