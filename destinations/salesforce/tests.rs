//! Golden requests, merging, answers, auth and config of the Salesforce adapter.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Map, Value, json};

use super::*;
use crate::config;
use crate::destination::{Failure, FailureKind, Verdict};
use crate::destinations::golden::{self, at, items};

const BASE: &str = "instance_url = \"https://acme.my.salesforce.com/\"\nexternal_id_field = \"Segment_Group_Id__c\"\n";
const AUTH: &str =
    "auth = { flow = \"client_credentials\", client_id = \"cid\", client_secret = \"csecret\" }\n";

fn load(own: &str) -> Result<Salesforce, String> {
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"SF\"\ntype = \"salesforce\"\n{own}"
    );
    let config = config::load(&text).map_err(|e| e.to_string())?;
    // Through the registry first: the engine's checks (e.g. `types`) come with building.
    crate::destination::build(&config.destinations[0]).map_err(|e| e.to_string())?;
    Salesforce::new(Setup::of(&config.destinations[0])).map_err(|e| e.to_string())
}

fn salesforce(extra: &str) -> Salesforce {
    load(&format!("{BASE}{AUTH}{extra}")).unwrap()
}

fn normalized_calls() -> Vec<Map<String, Value>> {
    golden::normalized_calls(include_str!("../../tests/fixtures/salesforce/calls.json"))
}

#[test]
fn golden_requests() {
    let sf = salesforce(
        "fields = { plan = \"Plan__c\", \"address.street\" = \"ShippingStreet\", tags = \"Tags__c\" }",
    );
    let messages = normalized_calls();
    let t = sf.translate(&items(&messages), at());
    golden::assert_golden(
        "salesforce",
        include_str!("../../tests/fixtures/salesforce/requests.json"),
        &t,
    );
    golden::assert_alike(&sf, &messages);
}

#[test]
fn a_group_repeating_its_traits_translates_as_its_parsed_calls() {
    let messages = golden::repeating_calls();
    for extra in [
        "",
        "coalesce = false\n",
        "fields = { plan = \"Plan__c\" }\n",
    ] {
        let sf = salesforce(extra);
        // Twice over, so the second pass takes what the first kept.
        golden::assert_alike(&sf, &messages);
        golden::assert_alike(&sf, &messages);
        assert_eq!(sf.kept.groups(), 2, "{extra}");
    }
}

fn group(n: usize, traits: Value) -> Map<String, Value> {
    json!({"type": "group", "messageId": format!("m-{n}"), "anonymousId": "a", "groupId": format!("g-{n}"), "traits": traits})
        .as_object()
        .cloned()
        .unwrap()
}

#[test]
fn at_most_200_records_per_request() {
    let sf = salesforce("");
    let many: Vec<_> = (0..201)
        .map(|n| group(n, json!({"name": n.to_string()})))
        .collect();
    let t = sf.translate(&items(&many), at());
    assert_eq!(
        t.requests.iter().map(|r| r.items.len()).collect::<Vec<_>>(),
        vec![200, 1]
    );
    assert_eq!(t.requests[1].parts, vec![0]);
}

#[test]
fn group_id_always_keys_the_record() {
    let sf = salesforce("fields = { id = \"Segment_Group_Id__c\" }");
    let calls = [group(1, json!({"id": "from-trait", "name": "N"}))];
    let body: Value =
        serde_json::from_slice(&sf.translate(&items(&calls), at()).requests[0].body).unwrap();
    assert_eq!(body["records"][0]["Segment_Group_Id__c"], "g-1");
}

fn answer(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_string()),
    }
}

/// Three records; items 0 and 3 were merged into record 0.
fn three_records() -> OutRequest {
    let mut r = OutRequest::json(
        Method::PATCH,
        "https://x/services/data/v62.0/composite/sobjects/Account/E__c",
        vec![],
        vec![0, 3, 1, 2],
    );
    r.parts = vec![0, 0, 1, 2];
    r
}

#[test]
fn per_record_answers() {
    let sf = salesforce("");
    let results = json!([
        {"id": "001", "success": true, "errors": [], "created": false},
        {"id": null, "success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]}]},
        {"id": null, "success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]}
    ]);
    let c = sf.classify(&three_records(), &answer(200, results.clone()), at());
    let refused = Failure {
        kind: FailureKind::Refused,
        reason: "REQUIRED_FIELD_MISSING: Required fields are missing: [Name]".into(),
        status: Some(200),
        response: Some(results.to_string()),
    };
    assert_eq!(
        c.verdicts[..3],
        [
            Verdict::Delivered,
            Verdict::Delivered,
            Verdict::permanent(refused)
        ]
    );
    assert!(
        matches!(&c.verdicts[3], Verdict::Retry { failure, .. } if failure.reason.starts_with("UNABLE_TO_LOCK_ROW"))
    );
    assert!(c.pause.is_none() && c.unhealthy.is_none() && !c.refresh_auth);
    // Fewer results than records: the missing ones are retried, never guessed delivered.
    let short = sf.classify(
        &three_records(),
        &answer(200, json!([{"success": true}])),
        at(),
    );
    assert!(matches!(short.verdicts[2], Verdict::Retry { .. }));
}

#[test]
fn whole_request_answers() {
    let sf = salesforce("request_limit_pause = \"2m\"");
    let r = three_records();
    let err = |code: &str| json!([{"message": "m", "errorCode": code}]);
    let expired = sf.classify(&r, &answer(401, err("INVALID_SESSION_ID")), at());
    assert!(expired.refresh_auth && matches!(expired.verdicts[0], Verdict::Retry { .. }));
    let limited = sf.classify(&r, &answer(403, err("REQUEST_LIMIT_EXCEEDED")), at());
    assert_eq!(limited.pause, Some(Duration::from_secs(120)));
    assert!(
        matches!(limited.verdicts[0], Verdict::Retry { after: Some(a), .. } if a == Duration::from_secs(120))
    );
    for (status, code) in [
        (404, "NOT_FOUND"),
        (400, "JSON_PARSER_ERROR"),
        (403, "INSUFFICIENT_ACCESS"),
    ] {
        let c = sf.classify(&r, &answer(status, err(code)), at());
        let failure = Failure {
            kind: FailureKind::Http,
            reason: format!("HTTP {status}: {code}: m"),
            status: Some(status),
            response: Some(err(code).to_string()),
        };
        assert_eq!(c.verdicts[0], Verdict::permanent(failure));
        assert!(c.unhealthy.unwrap().contains(code));
    }
    for status in [500, 503] {
        let c = sf.classify(&r, &answer(status, json!("down")), at());
        assert!(matches!(c.verdicts[0], Verdict::Retry { .. }) && c.unhealthy.is_none());
    }
}

#[test]
fn token_answers_and_form() {
    let token = auth::read_answer(200, br#"{"access_token":"00Dx!tok","instance_url":"https://eu1.my.salesforce.com","token_type":"Bearer"}"#).unwrap();
    assert_eq!(token.access.expose(), "00Dx!tok");
    assert!(!format!("{token:?}").contains("00Dx"));
    let err = auth::read_answer(
        400,
        br#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "token endpoint answered HTTP 400: invalid_client: invalid client credentials"
    );
    assert!(auth::read_answer(200, b"{}").is_err());

    let sf = salesforce("");
    assert_eq!(
        sf.tokens.form(),
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "cid"),
            ("client_secret", "csecret")
        ]
    );
    let refresh = load(&format!("{BASE}[destination.auth]\nflow = \"refresh_token\"\nclient_id = \"cid\"\nclient_secret = \"s\"\nrefresh_token = \"r\"\n")).unwrap();
    assert_eq!(refresh.tokens.form().last(), Some(&("refresh_token", "r")));
}

#[test]
fn authorize_points_at_the_token_instance_and_hides_the_token() {
    let sf = salesforce("");
    let mut r = sf
        .translate(&items(&[group(1, json!({"name": "N"}))]), at())
        .requests
        .remove(0);
    assert_eq!(
        r.url,
        "https://acme.my.salesforce.com/services/data/v62.0/composite/sobjects/Account/Segment_Group_Id__c"
    );
    let token = auth::read_answer(
        200,
        br#"{"access_token":"t1","instance_url":"https://eu1.my.salesforce.com/"}"#,
    )
    .unwrap();
    auth::apply(&mut r, &token).unwrap();
    assert_eq!(
        r.url,
        "https://eu1.my.salesforce.com/services/data/v62.0/composite/sobjects/Account/Segment_Group_Id__c"
    );
    assert_eq!(r.headers["authorization"], "Bearer t1");
    assert!(r.headers["authorization"].is_sensitive());
    assert!(!format!("{r:?}").contains("t1\""));
    // A resend after refresh starts from the previous instance and lands on the new one.
    let next = auth::read_answer(
        200,
        br#"{"access_token":"t2","instance_url":"https://eu2.my.salesforce.com"}"#,
    )
    .unwrap();
    auth::apply(&mut r, &next).unwrap();
    assert!(
        r.url
            .starts_with("https://eu2.my.salesforce.com/services/data/")
    );
}

#[test]
fn config_errors_name_the_key() {
    let err = |own: &str| load(own).err().unwrap();
    for bad in ["62", "v62", "v45.0", "v62.x"] {
        assert!(
            err(&format!("{BASE}{AUTH}api_version = \"{bad}\"")).contains("api_version"),
            "{bad}"
        );
    }
    assert!(
        err(&format!("{BASE}{AUTH}object = \"Account/x\"")).contains("not a Salesforce API name")
    );
    assert!(
        err(&format!("{BASE}{AUTH}fields = {{ plan = \"Id\" }}")).contains("`Id` cannot be mapped")
    );
    assert!(err(&format!("{BASE}{AUTH}fields = {{ \"a..b\" = \"X__c\" }}")).contains("trait path"));
    assert!(
        err(&format!("{BASE}{AUTH}request_limit_pause = \"soon\"")).contains("invalid duration")
    );
    assert!(
        err(&format!("{AUTH}external_id_field = \"E__c\""))
            .contains("missing field `instance_url`")
    );
    let no_refresh = format!(
        "{BASE}auth = {{ flow = \"refresh_token\", client_id = \"c\", client_secret = \"s\" }}"
    );
    assert!(
        err(&no_refresh).starts_with("line 8")
            && err(&no_refresh).contains("needs auth.refresh_token")
    );
    assert!(err(&format!("{BASE}{AUTH}types = [\"identify\"]")).contains("group calls only"));
}

#[test]
fn debug_never_shows_secrets() {
    let text = format!(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"SF\"\ntype = \"salesforce\"\n{BASE}{AUTH}"
    );
    let config = config::load(&text).unwrap();
    let parsed: SalesforceConfig = config.destinations[0].settings.parse().unwrap();
    assert!(!format!("{parsed:?}").contains("csecret"));
}
