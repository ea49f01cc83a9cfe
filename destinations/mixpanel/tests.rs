//! Golden requests, limits, config and answers of the Mixpanel adapter.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Map, Value, json};

use super::*;
use crate::config;
use crate::destination::{FailureKind, Verdict};
use crate::destinations::golden::{self, at, items};

fn mixpanel(extra: &str) -> Result<Mixpanel, String> {
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"MP\"\ntype = \"mixpanel\"\nproject_token = \"tok123\"\ngroup_key = \"company_id\"\n{extra}"
    );
    let config = config::load(&text).map_err(|e| e.to_string())?;
    // Through the registry first: the engine's checks (e.g. `types`) come with building.
    crate::destination::build(&config.destinations[0]).map_err(|e| e.to_string())?;
    Mixpanel::new(Setup::of(&config.destinations[0])).map_err(|e| e.to_string())
}

fn normalized_calls() -> Vec<Map<String, Value>> {
    golden::normalized_calls(include_str!("../../tests/fixtures/mixpanel/calls.json"))
}

#[test]
fn golden_requests() {
    // A dry run: the fixture shows the token masked, as the dry-run log does.
    let mp = mixpanel("dry_run = true").unwrap();
    let messages = normalized_calls();
    let t = mp.translate(&items(&messages), at());
    golden::assert_golden(
        "mixpanel",
        include_str!("../../tests/fixtures/mixpanel/requests.json"),
        &t,
    );
    golden::assert_alike(&mp, &messages);
}

#[test]
fn a_group_repeating_its_traits_translates_as_its_parsed_calls() {
    let messages = golden::repeating_calls();
    for extra in ["", "coalesce = false", "operation = \"set_once\""] {
        let mp = mixpanel(extra).unwrap();
        // Twice over, so the second pass takes what the first kept.
        golden::assert_alike(&mp, &messages);
        golden::assert_alike(&mp, &messages);
        assert_eq!(mp.kept.groups(), 2, "{extra}");
    }
}

#[test]
fn set_once_and_no_user_association() {
    let mp = mixpanel("operation = \"set_once\"\nassociate_user = false\nregion = \"eu\"").unwrap();
    let messages = normalized_calls();
    let t = mp.translate(&items(&messages), at());
    assert_eq!(t.requests.len(), 1);
    let r = &t.requests[0];
    assert_eq!(r.url, "https://api-eu.mixpanel.com/groups?verbose=1");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body[0]["$set_once"]["$name"], "Acme \"Rockets\"\nInc");
    assert!(body[0].get("$set").is_none());
    // Empty and missing traits with no association to send: delivered without a request.
    assert!(t.settled.contains(&(4, Verdict::Delivered)));
    assert!(t.settled.contains(&(5, Verdict::Delivered)));
}

#[test]
fn regions_and_hosts() {
    let url = |extra: &str| mixpanel(extra).unwrap().host;
    assert_eq!(url(""), "https://api.mixpanel.com");
    assert_eq!(url("region = \"in\""), "https://api-in.mixpanel.com");
    assert_eq!(
        url("api_host = \"http://127.0.0.1:9/\""),
        "http://127.0.0.1:9"
    );
}

#[test]
fn config_errors_name_the_key() {
    assert!(
        mixpanel("region = \"eu\"\napi_host = \"http://x\"")
            .unwrap_err()
            .contains("not both")
    );
    assert!(
        mixpanel("region = \"mars\"")
            .unwrap_err()
            .starts_with("line 8")
    );
    assert!(
        mixpanel("api_host = \"ftp://x\"")
            .unwrap_err()
            .contains("http or https")
    );
    assert!(
        mixpanel("types = [\"track\"]")
            .unwrap_err()
            .contains("group calls only")
    );
    assert!(
        mixpanel("operation = \"unset\"")
            .unwrap_err()
            .contains("unknown variant")
    );
    let text = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"MP\"\ntype = \"mixpanel\"\ngroup_key = \"k\"\n";
    let config = config::load(text).unwrap();
    assert!(
        Mixpanel::new(Setup::of(&config.destinations[0]))
            .err()
            .unwrap()
            .to_string()
            .contains("missing field `project_token`")
    );
}

#[test]
fn debug_never_shows_the_token() {
    let text = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"MP\"\ntype = \"mixpanel\"\nproject_token = \"tok123\"\ngroup_key = \"k\"\n";
    let config = config::load(text).unwrap();
    let parsed: MixpanelConfig = config.destinations[0].settings.parse().unwrap();
    assert!(!format!("{parsed:?}").contains("tok123"));
}

fn group(id: usize, traits: Value) -> Map<String, Value> {
    json!({"type": "group", "messageId": format!("m-{id}"), "anonymousId": "a", "groupId": format!("g-{id}"), "traits": traits})
        .as_object()
        .cloned()
        .unwrap()
}

#[test]
fn requests_stay_within_mixpanel_limits() {
    let mp = mixpanel("").unwrap();
    // 2,001 small updates: two requests, the first holding the maximum of 2,000.
    let many: Vec<_> = (0..2001).map(|i| group(i, json!({"n": i}))).collect();
    let t = mp.translate(&items(&many), at());
    assert_eq!(
        t.requests.iter().map(|r| r.items.len()).collect::<Vec<_>>(),
        vec![2000, 1]
    );
    // Three 400 kB updates: never more than ~1 MiB per body; one over 1 MB is refused alone.
    let big = "x".repeat(400_000);
    let mut sized: Vec<_> = (0..3).map(|i| group(i, json!({"blob": big}))).collect();
    sized.push(group(3, json!({"blob": "y".repeat(1_000_001)})));
    let t = mp.translate(&items(&sized), at());
    assert_eq!(
        t.requests
            .iter()
            .map(|r| r.items.clone())
            .collect::<Vec<_>>(),
        vec![vec![0, 1], vec![2]]
    );
    assert!(t.requests.iter().all(|r| r.body.len() < 1 << 20));
    assert!(
        matches!(&t.settled[..], [(3, Verdict::Permanent { failure })] if failure.reason.contains("1 MB"))
    );
}

#[test]
fn only_group_calls_are_accepted() {
    // The engine refuses every other type before translating (deliver's own tests); the
    // adapter declares it once and sends nothing for a call without a group.
    let mp = mixpanel("").unwrap();
    assert_eq!(mp.accepts(), &[MessageType::Group]);
    let track = json!({"type": "track", "event": "e", "anonymousId": "a"})
        .as_object()
        .cloned()
        .unwrap();
    let t = mp.translate(&items(&[track]), at());
    assert!(t.requests.is_empty());
}

fn answer(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_string()),
    }
}

#[test]
fn answers() {
    let mp = mixpanel("").unwrap();
    let request = |items| {
        OutRequest::json(
            Method::POST,
            "http://x/groups?verbose=1",
            b"[]".to_vec(),
            items,
        )
    };
    let (two, one) = (request(vec![0, 1]), request(vec![0]));
    let c = |r: &OutRequest, status, body| mp.classify(r, &answer(status, body), at());
    assert_eq!(
        c(&two, 200, "{\"error\": null, \"status\": 1}").verdicts,
        vec![Verdict::Delivered; 2]
    );
    assert_eq!(c(&two, 200, "1").verdicts, vec![Verdict::Delivered; 2]);
    let rejected = c(
        &two,
        200,
        "{\"error\": \"$token is invalid\", \"status\": 0}",
    );
    let failure = Failure {
        kind: FailureKind::Refused,
        reason: "HTTP 200: Mixpanel rejected the update: $token is invalid".into(),
        status: Some(200),
        response: Some("{\"error\": \"$token is invalid\", \"status\": 0}".into()),
    };
    assert_eq!(rejected.verdicts, vec![Verdict::permanent(failure); 2]);
    assert!(matches!(
        c(&one, 200, "0").verdicts[0],
        Verdict::Permanent { .. }
    ));
    assert!(matches!(
        c(&one, 400, "bad").verdicts[0],
        Verdict::Permanent { .. }
    ));
    let refused = c(&one, 401, "{\"error\": \"nope\", \"status\": \"error\"}");
    assert!(matches!(refused.verdicts[0], Verdict::Permanent { .. }));
    assert!(refused.unhealthy.unwrap().contains("nope"));
    assert!(c(&one, 403, "").unhealthy.is_some());
    let too_big = c(&two, 413, "{\"code\":413}");
    assert!(too_big.split);
    assert!(matches!(too_big.verdicts[0], Verdict::Retry { .. }));
    let alone = c(&one, 413, "");
    assert!(!alone.split && matches!(alone.verdicts[0], Verdict::Permanent { .. }));
    let limited = c(&one, 429, "");
    assert!(matches!(limited.verdicts[0], Verdict::Retry { .. }) && limited.pause.is_some());
    assert!(matches!(
        c(&one, 503, "").verdicts[0],
        Verdict::Retry { .. }
    ));
    assert!(c(&one, 200, "{\"status\": 1}").unhealthy.is_none());
}

#[test]
fn the_token_is_in_the_body_only_and_masked_in_a_dry_run() {
    let calls = [group(1, json!({"note": "\"$token\":\"***\""}))];
    let r = mixpanel("")
        .unwrap()
        .translate(&items(&calls), at())
        .requests
        .remove(0);
    assert!(r.url.find("tok123").is_none());
    assert!(r.headers.values().all(|v| v.to_str().unwrap() != "tok123"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body[0]["$token"], "tok123");
    // A trait whose text looks like a token entry is just a trait.
    assert_eq!(body[0]["$set"]["note"], "\"$token\":\"***\"");
    let dry = mixpanel("dry_run = true").unwrap();
    let shown = dry.translate(&items(&calls), at()).requests.remove(0);
    assert!(!String::from_utf8_lossy(&shown.body).contains("tok123"));
    let body: Value = serde_json::from_slice(&shown.body).unwrap();
    assert_eq!(body[0]["$token"], "***");
}

#[test]
fn limits_count_the_token() {
    // An absurdly long token makes its share visible: two updates that would fit together
    // with a short token do not with this one.
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"MP\"\ntype = \"mixpanel\"\nproject_token = \"{}\"\ngroup_key = \"k\"\n",
        "t".repeat(10_000)
    );
    let config = config::load(&text).unwrap();
    let mp = Mixpanel::new(Setup::of(&config.destinations[0])).unwrap();
    let blob = "x".repeat(520_000);
    let calls: Vec<_> = (0..2).map(|i| group(i, json!({"blob": blob}))).collect();
    let t = mp.translate(&items(&calls), at());
    assert_eq!(t.requests.len(), 2);
    for r in &t.requests {
        assert!(r.body.len() < 1 << 20);
    }
}

#[test]
fn a_trait_spelled_like_a_reserved_property_gives_one_property() {
    let mp = mixpanel("associate_user = false").unwrap();
    let message: Map<String, Value> = serde_json::from_value(json!({
        "type": "group", "groupId": "g1", "messageId": "m1",
        "traits": {"name": "Acme", "plan": "pro", "$name": "Acme Inc"}
    }))
    .unwrap();
    let messages = vec![message];
    let t = mp.translate(&items(&messages), at());
    let body = String::from_utf8(t.requests[0].body.to_vec()).unwrap();
    assert_eq!(body.matches("\"$name\"").count(), 1, "{body}");
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed[0]["$set"]["$name"], "Acme Inc", "the later one wins");
    assert_eq!(parsed[0]["$set"]["plan"], "pro");
}
