//! Every registered adapter has an example config that passes, and translates the canonical
//! group call into at least one request (or settles it) without touching the network.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use switchyard::config;
use switchyard::destination::{self, Item, registry};
use switchyard::normalize::{self, BatchDefaults};

fn canonical() -> Map<String, Value> {
    let raw = include_str!("fixtures/canonical_group.json");
    let now = chrono::DateTime::from_timestamp(1_714_557_600, 0).unwrap();
    normalize::normalize(raw, None, &BatchDefaults::default(), now, || {
        "unused".into()
    })
    .unwrap()
    .message()
    .unwrap()
}

#[test]
fn every_registered_adapter_translates_the_canonical_fixture() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let configs: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let message = canonical();
    let options = Map::new();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_557_600);
    for (kind, _) in registry() {
        let needle = format!("type = \"{kind}\"");
        let text = configs
            .iter()
            .find(|c| c.contains(&needle))
            .unwrap_or_else(|| panic!("no example config in examples/ uses type `{kind}`"));
        // Stand-in values for ${VAR}s; the webhook's Standard Webhooks secret needs the whsec_ form.
        let loaded = config::load_with_env(text, &|_| {
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
        })
        .unwrap();
        let dest = loaded
            .destinations
            .iter()
            .find(|d| d.kind == *kind)
            .unwrap();
        let adapter = destination::build(dest).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let t = adapter.translate(
            &[Item {
                message: &message,
                options: &options,
                raw: None,
                traits_text: None,
            }],
            now,
        );
        let covered =
            t.requests.iter().any(|r| r.items == vec![0]) || t.settled.iter().any(|(i, _)| *i == 0);
        assert!(
            covered,
            "{kind}: the fixture is neither sent nor settled: {t:?}"
        );
        for r in &t.requests {
            assert!(r.url.starts_with("http"), "{kind}: {}", r.url);
            assert!(!r.body.is_empty(), "{kind}: empty body");
        }
    }
}
