//! The property coalescing rests on: for any sequence of group calls, the state a vendor
//! ends in is the same whether each call is translated and applied on its own, in order, or
//! the calls are translated together in batches (merged per group). The vendors are
//! simulated from the wire format alone: Mixpanel applies `$set`, `$set_once` and `$union`
//! in request order; Salesforce upserts each record by external id, field by field.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::config;
use crate::destination::{Destination, OutRequest};
use crate::destinations::golden::{items, normalized, stored, stored_items};

fn adapter(own: &str) -> std::sync::Arc<dyn Destination> {
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"D\"\n{own}\nbatch = {{ max_events = 200 }}\n"
    );
    let config = config::load(&text).unwrap();
    crate::destination::build(&config.destinations[0]).unwrap()
}

const MIXPANEL: &str = "type = \"mixpanel\"\nproject_token = \"t\"\ngroup_key = \"company_id\"";
const SALESFORCE: &str = "type = \"salesforce\"\ninstance_url = \"https://sf.example\"\nexternal_id_field = \"Ext__c\"\nauth = { flow = \"client_credentials\", client_id = \"c\", client_secret = \"s\" }\nfields = { plan = \"Plan__c\", \"address.street\" = \"ShippingStreet\" }";

/// A trait value: strings, numbers, null, and now and then an object (which no Salesforce
/// field takes, and which Mixpanel stores whole).
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-c]{1,2}".prop_map(Value::from),
        2 => (0i64..5).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!({"x": 1})),
    ]
}

/// Traits drawn from reserved and custom keys, spelled as SDKs do (`Name`, `created_at`,
/// `$name` beside `name`), with partial addresses.
fn traits() -> impl Strategy<Value = Map<String, Value>> {
    let keys = prop::sample::subsequence(
        vec![
            "name",
            "Name",
            "$name",
            "plan",
            "employees",
            "createdAt",
            "created_at",
            "industry",
        ],
        0..5,
    );
    let address = prop::option::of(prop::collection::btree_map(
        prop::sample::select(vec!["city", "street", "country"]),
        value(),
        0..3,
    ));
    let created = prop_oneof![
        Just(Value::from("2024-05-01T10:00:00Z")),
        Just(Value::from("2023-01-02T03:04:05.678Z")),
        Just(Value::from(1_700_000_000)),
        Just(Value::from("not a date")),
    ];
    (keys, prop::collection::vec(value(), 5), created, address).prop_map(
        |(keys, values, created, address)| {
            let mut t = Map::new();
            for (k, v) in keys.into_iter().zip(values) {
                let v = if k.starts_with("created") {
                    created.clone()
                } else {
                    v
                };
                t.insert(k.to_string(), v);
            }
            if let Some(a) = address {
                let a: Map<String, Value> =
                    a.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                t.insert("address".into(), Value::Object(a));
            }
            t
        },
    )
}

/// Group calls over three groups and three users (or none), normalized as ingest would.
fn calls() -> impl Strategy<Value = Vec<Map<String, Value>>> {
    let call = (0..3usize, prop::option::of(0..3usize), traits());
    prop::collection::vec(call, 1..40).prop_map(|calls| {
        calls
            .into_iter()
            .enumerate()
            .map(|(n, (group, user, traits))| {
                let mut raw = json!({"type": "group", "messageId": format!("m{n}"),
                    "groupId": format!("g{group}"), "anonymousId": "anon", "traits": traits});
                if let Some(u) = user {
                    raw["userId"] = json!(format!("u{u}"));
                }
                normalized(&raw)
            })
            .collect()
    })
}

/// Cut points splitting the calls into consecutive batches.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..40usize, 0..4)
}

fn batches(calls: &[Map<String, Value>], cuts: &[usize]) -> Vec<Vec<Map<String, Value>>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % calls.len()).collect();
    at.extend([0, calls.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| calls[w[0]..w[1]].to_vec()).collect()
}

/// Every request of translating `batch`, in the order the engine sends them.
/// The requests for `batch`: from the parsed calls, or (`from_text`) as the engine hands
/// them over from the spool, with the stored text.
fn requests(d: &dyn Destination, batch: &[Map<String, Value>], from_text: bool) -> Vec<OutRequest> {
    let stored = stored(batch);
    let items = if from_text {
        stored_items(&stored, true)
    } else {
        items(batch)
    };
    let t = d.translate(&items, SystemTime::UNIX_EPOCH);
    assert!(
        t.settled
            .iter()
            .all(|(_, v)| *v == crate::destination::Verdict::Delivered),
        "nothing here is untranslatable: {:?}",
        t.settled
    );
    t.requests
}

#[derive(Debug, Default, PartialEq)]
struct MixpanelState {
    groups: BTreeMap<String, Map<String, Value>>,
    memberships: BTreeMap<String, BTreeSet<String>>,
}

impl MixpanelState {
    fn apply(&mut self, r: &OutRequest) {
        let updates: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        for u in updates {
            if r.url.contains("/groups") {
                let key = format!("{}={}", u["$group_key"], u["$group_id"]);
                let profile = self.groups.entry(key).or_default();
                if let Some(set) = u["$set"].as_object() {
                    profile.extend(set.clone());
                }
                if let Some(once) = u["$set_once"].as_object() {
                    for (k, v) in once {
                        profile.entry(k.clone()).or_insert(v.clone());
                    }
                }
            } else {
                let user = u["$distinct_id"].as_str().unwrap().to_string();
                for (key, values) in u["$union"].as_object().unwrap() {
                    for v in values.as_array().unwrap() {
                        let m = self.memberships.entry(user.clone()).or_default();
                        m.insert(format!("{key}={v}"));
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct SalesforceState(BTreeMap<String, Map<String, Value>>);

impl SalesforceState {
    fn apply(&mut self, r: &OutRequest) {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let mut seen = BTreeSet::new();
        for record in body["records"].as_array().unwrap() {
            let id = record["Ext__c"].as_str().unwrap().to_string();
            assert!(
                seen.insert(id.clone()),
                "two records for {id} in one request"
            );
            let fields = record.as_object().unwrap().iter();
            let fields = fields.filter(|(k, _)| *k != "attributes" && *k != "Ext__c");
            self.0
                .entry(id)
                .or_default()
                .extend(fields.map(|(k, v)| (k.clone(), v.clone())));
        }
    }
}

/// The state after each call alone, in order, and after the calls in batches.
fn both<S: Default>(
    one_by_one: &dyn Destination,
    batched: &dyn Destination,
    calls: &[Map<String, Value>],
    cuts: &[usize],
    apply: fn(&mut S, &OutRequest),
) -> (S, S) {
    let mut alone = S::default();
    for call in calls {
        for r in requests(one_by_one, std::slice::from_ref(call), false) {
            apply(&mut alone, &r);
        }
    }
    let mut together = S::default();
    for batch in batches(calls, cuts) {
        // Batched as the engine hands them over: the traits read from the stored text.
        for r in requests(batched, &batch, true) {
            apply(&mut together, &r);
        }
    }
    (alone, together)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mixpanel_ends_in_the_same_state_coalesced(calls in calls(), cuts in cuts(), once in any::<bool>()) {
        let op = if once { "\noperation = \"set_once\"" } else { "" };
        let plain = adapter(&format!("{MIXPANEL}{op}\ncoalesce = false"));
        let merged = adapter(&format!("{MIXPANEL}{op}"));
        let (alone, together) = both(plain.as_ref(), merged.as_ref(), &calls, &cuts, MixpanelState::apply);
        prop_assert_eq!(alone, together);
    }

    #[test]
    fn salesforce_ends_in_the_same_state_coalesced_or_not(calls in calls(), cuts in cuts()) {
        let plain = adapter(&format!("{SALESFORCE}\ncoalesce = false"));
        let merged = adapter(SALESFORCE);
        let (alone, together) = both(plain.as_ref(), merged.as_ref(), &calls, &cuts, SalesforceState::apply);
        prop_assert_eq!(&alone, &together);
        // Not coalescing, a whole batch still ends in the same state: a group's later
        // records go in later requests.
        let (_, unmerged) = both(plain.as_ref(), plain.as_ref(), &calls, &cuts, SalesforceState::apply);
        prop_assert_eq!(alone, unmerged);
    }
}

#[test]
fn one_update_per_group_and_the_merged_calls_listed() {
    let calls: Vec<Map<String, Value>> = [("g1", "a"), ("g2", "b"), ("g1", "c"), ("g1", "d")]
        .iter()
        .map(|(g, plan)| {
            normalized(
                &json!({"type": "group", "userId": "u", "groupId": g, "traits": {"plan": plan}}),
            )
        })
        .collect();
    for own in [MIXPANEL, SALESFORCE] {
        let t = adapter(own).translate(&items(&calls), SystemTime::UNIX_EPOCH);
        assert_eq!(t.coalesced, vec![2, 3], "{own}");
        let first = &t.requests[0];
        let mut carried = first.items.clone();
        carried.sort_unstable();
        assert_eq!(carried, vec![0, 1, 2, 3], "every call rides in the update");
        let body: Value = serde_json::from_slice(&first.body).unwrap();
        let updates = body
            .get("records")
            .unwrap_or(&body)
            .as_array()
            .unwrap()
            .len();
        assert_eq!(updates, 2, "{own}: one update per group");
    }
    let t = adapter(&format!("{MIXPANEL}\ncoalesce = false"))
        .translate(&items(&calls), SystemTime::UNIX_EPOCH);
    assert!(t.coalesced.is_empty());
    let body: Value = serde_json::from_slice(&t.requests[0].body).unwrap();
    assert_eq!(body.as_array().unwrap().len(), 4);
}

#[test]
fn coalesce_is_refused_where_every_call_matters() {
    let text = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://x\"\ncoalesce = true\n";
    let config = config::load(text).unwrap();
    let err = crate::destination::build(&config.destinations[0])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 7")
            && err.contains("destination `Hook`")
            && err.contains("never merged"),
        "{err}"
    );
    let off = text.replace("coalesce = true", "coalesce = false");
    let config = config::load(&off).unwrap();
    assert!(crate::destination::build(&config.destinations[0]).is_ok());
}
