//! Group calls → sObject Collections upserts by external id. Pure but for a WARN and a counter
//! when a value is left out, so that an operator sees the data Salesforce did not get.

use std::collections::HashMap;

use http::Method;
use serde_json::{Map, Value, json};

use super::{MAX_BATCH, Salesforce};
use crate::destination::{Item, OutRequest, Translation, Verdict};

/// One record to upsert: the updates of one group merged in batch order.
struct Record<'a> {
    group_id: &'a str,
    fields: Map<String, Value>,
    /// Batch indexes of the calls merged into it; the record's verdict is each one's.
    items: Vec<usize>,
}

pub(super) fn translate(sf: &Salesforce, batch: &[Item<'_>]) -> Translation {
    let mut t = Translation::default();
    let mut records: Vec<Record<'_>> = Vec::new();
    let mut by_group: HashMap<&str, usize> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        let m = item.message;
        let Some(group_id) = item.group_call() else {
            t.settled.push((
                i,
                Verdict::permanent("Salesforce takes group calls with a groupId only"),
            ));
            continue;
        };
        // One record per group per request: two records with one external id in a request
        // would race each other (inference from SF-COLL's in-order processing); later calls win.
        let k = *by_group.entry(group_id).or_insert_with(|| {
            records.push(Record {
                group_id,
                fields: Map::new(),
                items: Vec::new(),
            });
            records.len() - 1
        });
        let empty = Map::new();
        let traits = m.get("traits").and_then(Value::as_object).unwrap_or(&empty);
        apply(sf, traits, &mut records[k].fields, item.message_id());
        records[k].items.push(i);
    }
    let (empty, records): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.fields.is_empty());
    // No mapped trait: nothing to write, and an upsert of the bare id could only create a
    // record without the required `Name`.
    for r in empty {
        t.settled
            .extend(r.items.into_iter().map(|i| (i, Verdict::Delivered)));
    }
    for chunk in records.chunks(MAX_BATCH) {
        t.requests.push(request(sf, chunk));
    }
    t
}

/// Lay the mapped traits of one call over a record's fields. A trait sent as `null` nulls its
/// field; an absent trait leaves it alone.
fn apply(
    sf: &Salesforce,
    traits: &Map<String, Value>,
    fields: &mut Map<String, Value>,
    message_id: &str,
) {
    for (path, field) in &sf.mapping {
        // The external id always comes from `groupId`, never from a trait.
        if *field == sf.external_id_field {
            continue;
        }
        let Some(value) = lookup(traits, path) else {
            continue;
        };
        match fit(field, value) {
            Ok(v) => {
                fields.insert(field.clone(), v);
            }
            Err(why) => {
                tracing::warn!(message_id, field = %field, trait_path = %path.join("."), "left out of the Salesforce record: {why}");
                metrics::counter!("switchyard_salesforce_fields_left_out_total", "field" => field.clone()).increment(1);
            }
        }
    }
}

fn lookup<'a>(traits: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(traits.get(first)?, |v, key| v.as_object()?.get(key))
}

/// A value Salesforce can take for `field`, or why not. `NumberOfEmployees` is an integer
/// field (SF-ERR would answer a data error for the whole record); objects and arrays fit no
/// scalar field. Segment instead rejects the whole event (AD:salesforce/account).
fn fit(field: &str, value: &Value) -> Result<Value, &'static str> {
    match value {
        Value::Object(_) | Value::Array(_) => Err("an object or array fits no Salesforce field"),
        Value::Null => Ok(Value::Null),
        v if field == "NumberOfEmployees" => match v.as_i64() {
            Some(n) => Ok(Value::from(n)),
            None => Err("NumberOfEmployees takes an integer"),
        },
        v => Ok(v.clone()),
    }
}

/// `PATCH …/composite/sobjects/{object}/{field}` with `{"allOrNone": false, "records": […]}`;
/// each record carries `attributes.type` and its key in the external-id field (SF-COLL).
fn request(sf: &Salesforce, records: &[Record<'_>]) -> OutRequest {
    let url = format!(
        "{}/services/data/{}/composite/sobjects/{}/{}",
        sf.instance_url, sf.api_version, sf.object, sf.external_id_field
    );
    let mut items = Vec::new();
    let mut parts = Vec::new();
    let mut bodies = Vec::with_capacity(records.len());
    for (k, r) in records.iter().enumerate() {
        let mut record = Map::new();
        record.insert("attributes".into(), json!({"type": sf.object}));
        record.insert(
            sf.external_id_field.clone(),
            Value::String(r.group_id.to_string()),
        );
        record.extend(r.fields.iter().map(|(f, v)| (f.clone(), v.clone())));
        bodies.push(Value::Object(record));
        items.extend(&r.items);
        parts.extend(std::iter::repeat_n(k, r.items.len()));
    }
    // Per-record results, not a rollback of every record for one bad one (SF-AON).
    let body = json!({"allOrNone": false, "records": bodies});
    // A `Value` built from strings and parsed JSON always serializes.
    let mut request = OutRequest::json(
        Method::PATCH,
        url,
        serde_json::to_vec(&body).unwrap_or_default(),
        items,
    );
    request.parts = parts;
    request
}
