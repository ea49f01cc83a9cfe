//! The admin side over real HTTP: who it lets in (admin token, console session with its
//! CSRF token) and who not (nobody, a wrong token, a write key, another site); the config
//! shown without a secret; dead letters listed, shown, replayed and purged; "try a message";
//! the admin side off without a token, and on its own address.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Answer, DEADLINE, Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "write-key-of-web";

fn hook(rx: &Receiver) -> String {
    format!(
        "[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        rx.url("/hook")
    )
}

/// Every admin endpoint, with a body that the endpoint accepts.
fn endpoints() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/v1/destinations", None),
        ("GET", "/admin/v1/destinations", None),
        ("GET", "/admin/v1/dead-letters", None),
        ("GET", "/admin/v1/dead-letters/1", None),
        (
            "POST",
            "/admin/v1/dead-letters/replay",
            Some(json!({"ids": [1]})),
        ),
        (
            "POST",
            "/admin/v1/dead-letters/purge",
            Some(json!({"ids": [1]})),
        ),
        ("GET", "/admin/v1/config", None),
        ("POST", "/admin/v1/reload", Some(json!({}))),
        ("GET", "/admin/v1/recent", None),
        (
            "POST",
            "/admin/v1/try",
            Some(json!({"type": "group", "userId": "u", "groupId": "g"})),
        ),
        ("GET", "/metrics", None),
    ]
}

fn request(
    client: &reqwest::Client,
    d: &Daemon,
    (method, path, body): &(&str, &str, Option<Value>),
) -> reqwest::RequestBuilder {
    let url = d.url(path);
    let r = match *method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    match body {
        Some(b) => r.json(b),
        None => r,
    }
}

#[tokio::test]
async fn every_admin_endpoint_wants_the_admin_token_and_nothing_else() {
    let rx = Receiver::start().await;
    let d = Daemon::start("", &hook(&rx)).await;
    let client = reqwest::Client::new();
    for e in endpoints() {
        let refusals = [
            ("no token", request(&client, &d, &e)),
            (
                "a wrong token",
                request(&client, &d, &e).bearer_auth("not-the-admin-token-at-all"),
            ),
            (
                "the write key as bearer",
                request(&client, &d, &e).bearer_auth(KEY),
            ),
            (
                "the write key as Basic user",
                request(&client, &d, &e).basic_auth(KEY, Some("")),
            ),
        ];
        for (what, r) in refusals {
            let status = r.send().await.unwrap().status().as_u16();
            assert_eq!(status, 401, "{} {} with {what}", e.0, e.1);
        }
        let r = request(&client, &d, &e).bearer_auth(ADMIN_TOKEN);
        let status = r.send().await.unwrap().status().as_u16();
        // A dead letter that does not exist is a 404 once admitted.
        let expected = if e.1.ends_with("/1") { 404 } else { 200 };
        assert_eq!(status, expected, "{} {} with the admin token", e.0, e.1);
    }
    for open in ["/health", "/ready"] {
        let status = client.get(d.url(open)).send().await.unwrap().status();
        assert_eq!(status, 200, "{open} stays open");
    }
}

#[tokio::test]
async fn metrics_can_be_public_and_the_admin_side_is_off_without_a_token() {
    let rx = Receiver::start().await;
    let public = format!("{}\n[admin]\npublic_metrics = true\n", hook(&rx));
    let d = Daemon::start("", &public).await;
    let client = reqwest::Client::new();
    let metrics = client.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("switchyard_"));
    let (status, body) = d.get("/admin/v1/destinations").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("admin_off"))
    );
    let console = client.get(d.url("/console")).send().await.unwrap();
    assert_eq!(console.status(), 404);
    assert!(console.text().await.unwrap().contains("admin side is off"));
    d.wait_for_log("the admin side is off").await;
}

#[tokio::test]
async fn the_config_shown_holds_no_secret() {
    let rx = Receiver::start().await;
    let secrets = [
        ("WEB_KEY", "web-key-secret-value-1"),
        ("HOOK_SECRET", "signing-secret-value-2"),
        ("HOOK_HEADER", "header-secret-value-3"),
        ("MP_TOKEN", "mixpanel-secret-value-4"),
        ("SF_SECRET", "salesforce-secret-value-5"),
        ("ADMIN", "admin-secret-value-0123456789"),
    ];
    let literal = [
        "literal-write-key-6",
        "literal-password-7",
        "literal-query-8",
    ];
    let config = format!(
        r#"
[[source]]
name = "web"
write_key = "${{WEB_KEY}}"

[[source]]
name = "app"
write_key = "{}"

[[destination]]
name = "Hook"
type = "webhook"
url = "http://user:{}@127.0.0.1:{}/hook?token={}"
signing_secret = "${{HOOK_SECRET}}"
headers = {{ "X-Api-Key" = "${{HOOK_HEADER}}" }}

[[destination]]
name = "Mixpanel"
type = "mixpanel"
project_token = "${{MP_TOKEN}}"
group_key = "company_id"
api_host = "{}"

[[destination]]
name = "Salesforce"
type = "salesforce"
instance_url = "{}"
external_id_field = "Segment_Group_Id__c"
auth = {{ flow = "client_credentials", client_id = "cid", client_secret = "${{SF_SECRET}}" }}

[admin]
token = "${{ADMIN}}"
"#,
        literal[0],
        literal[1],
        rx.addr.port(),
        literal[2],
        rx.url(""),
        rx.url(""),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let spooled = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = \"{}\"\n{config}",
        dir.path().join("spool").display()
    );
    std::fs::write(&path, spooled).unwrap();
    let d = Daemon::spawn(dir, &path, &secrets).await;
    let answer = reqwest::Client::new()
        .get(d.url("/admin/v1/config"))
        .bearer_auth(secrets[5].1)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let shown = answer.text().await.unwrap();
    for secret in secrets.iter().map(|(_, v)| *v).chain(literal) {
        assert!(!shown.contains(secret), "`{secret}` in {shown}");
    }
    let config: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(config["config"]["source"][0]["write_key"], "${WEB_KEY}");
    assert_eq!(config["config"]["source"][1]["write_key"], "***");
    assert_eq!(
        config["config"]["destination"][1]["group_key"],
        "company_id"
    );
}

/// A 400 makes a dead letter; the API lists it, shows it with the message and the answer
/// side by side, and after the receiver is fixed a replay delivers it; purge deletes.
#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_purged_through_the_api() {
    let rx = Receiver::start().await;
    rx.script(
        "/hook",
        vec![Answer::json(400, json!({"error": "bad plan"}))],
    );
    let d = Daemon::start("", &hook(&rx)).await;
    let call = json!({"userId": "u", "groupId": "acme", "messageId": "m-1"});
    assert_eq!(d.post("/v1/group", Some(KEY), &call).await.0, 200);
    let letters = wait_for_dead_letters(&d, 1).await;
    let id = letters[0]["id"].as_i64().unwrap();
    assert_eq!(letters[0]["status"], 400);
    let (status, shown) = d.get(&format!("/admin/v1/dead-letters/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["message"]["messageId"], "m-1");
    assert!(shown["response"].as_str().unwrap().contains("bad plan"));
    let (status, filtered) = d.get("/admin/v1/dead-letters?reason=exhausted").await;
    assert_eq!(
        (status, filtered["dead_letters"].as_array().unwrap().len()),
        (200, 0)
    );
    for bad in ["reason=nope", "limit=many", "colour=red"] {
        let (status, refused) = d.get(&format!("/admin/v1/dead-letters?{bad}")).await;
        let code = refused["error"]["code"].as_str();
        assert_eq!((status, code), (400, Some("invalid_filter")), "{bad}");
    }
    let (status, missing) = d.get("/admin/v1/dead-letters/first").await;
    let code = missing["error"]["code"].as_str();
    assert_eq!((status, code), (404, Some("not_found")));

    // The receiver now takes it (its script is spent): replay delivers it.
    let (status, replayed) = d
        .admin_post("/admin/v1/dead-letters/replay", &json!({"ids": [id]}))
        .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(1)));
    let got = rx.wait_for("/hook", 2).await;
    assert_eq!(got[1].json()["messageId"], "m-1");
    wait_for_dead_letters(&d, 0).await;

    rx.script("/hook", vec![Answer::status(422)]);
    let call = json!({"userId": "u", "groupId": "acme", "messageId": "m-2"});
    assert_eq!(d.post("/v1/group", Some(KEY), &call).await.0, 200);
    wait_for_dead_letters(&d, 1).await;
    let (status, purged) = d
        .admin_post(
            "/admin/v1/dead-letters/purge",
            &json!({"destination": "Hook"}),
        )
        .await;
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(1)));
    wait_for_dead_letters(&d, 0).await;
    let (status, bad) = d
        .admin_post(
            "/admin/v1/dead-letters/purge",
            &json!({"ids": [1], "all": true}),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_selection"))
    );
}

async fn wait_for_dead_letters(d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, list) = d.get("/admin/v1/dead-letters").await;
        assert_eq!(status, 200);
        let letters = list["dead_letters"].as_array().unwrap().clone();
        if letters.len() == n {
            return letters;
        }
        assert!(Instant::now() < deadline, "wanted {n} dead letters: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The exact Mixpanel request a call would make, with its token masked, and the rule that
/// routed it; nothing is sent, nothing is stored.
#[tokio::test]
async fn try_a_message_shows_each_request_and_sends_nothing() {
    let rx = Receiver::start().await;
    let config = format!(
        "{}\n[[destination]]\nname = \"Mixpanel\"\ntype = \"mixpanel\"\nproject_token = \"mp-token-never-shown\"\ngroup_key = \"company_id\"\napi_host = \"{}\"\n\n[[destination]]\nname = \"Signed\"\ntype = \"webhook\"\nurl = \"{}\"\nsigning_secret = \"signing-secret-never-shown\"\nsignature = \"segment\"\nheaders = {{ \"X-Team\" = \"header-value-never-shown\" }}\n",
        hook(&rx),
        rx.url(""),
        rx.url("/hooks/T0KEN-IN-PATH")
    );
    let d = Daemon::start("", &config).await;
    let call = json!({
        "type": "group", "userId": "u1", "groupId": "acme",
        "traits": {"Name": "Acme", "employees": "42", "created_at": 1700000000},
        "integrations": {"Hook": false}
    });
    let (status, tried) = d.admin_post("/admin/v1/try", &call).await;
    assert_eq!(status, 200, "{tried}");
    assert_eq!(tried["normalized"]["traits"]["employees"], 42);
    let routes = tried["routes"].as_array().unwrap();
    assert_eq!(routes[0]["routed"], false);
    assert_eq!(routes[0]["why"], "integrations.Hook is false");
    assert_eq!(routes[1]["routed"], true);
    let requests = tried["requests"].as_array().unwrap();
    let groups = requests
        .iter()
        .find(|r| r["url"].as_str().unwrap().contains("/groups"))
        .unwrap_or_else(|| panic!("no /groups request: {tried}"));
    assert_eq!(groups["destination"], "Mixpanel");
    assert_eq!(groups["method"], "POST");
    assert_eq!(groups["body"][0]["$group_id"], "acme");
    assert_eq!(groups["body"][0]["$set"]["$name"], "Acme");
    // Nothing that may be a credential: tokens, configured header values, signatures over
    // the chosen body (they would let the caller forge deliveries), a webhook URL's path.
    let text = tried.to_string();
    for hidden in [
        "mp-token-never-shown",
        "header-value-never-shown",
        "T0KEN-IN-PATH",
    ] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }
    let signed = requests
        .iter()
        .find(|r| r["destination"] == "Signed")
        .unwrap_or_else(|| panic!("no Signed request: {tried}"));
    assert_eq!(signed["url"], format!("http://{}/***", rx.addr));
    for header in ["x-signature", "x-team"] {
        assert_eq!(signed["headers"][header], "***", "{signed}");
    }
    assert_eq!(signed["headers"]["content-type"], "application/json");
    let (status, invalid) = d
        .admin_post("/admin/v1/try", &json!({"type": "group"}))
        .await;
    assert_eq!(
        (status, invalid["error"]["code"].as_str()),
        (400, Some("invalid_message"))
    );
    // Nothing was sent: a real call afterwards is the only one the receiver sees.
    assert!(rx.requests("/groups").is_empty());
    assert!(rx.requests("/hook").is_empty());
}

/// The console's login sets an HttpOnly, SameSite=Strict cookie; with it the API answers,
/// but a change needs the page's CSRF token and must not come from another site.
#[tokio::test]
async fn the_console_session_needs_its_csrf_token_for_changes() {
    let rx = Receiver::start().await;
    let d = Daemon::start("", &hook(&rx)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |token: &'static str| {
        client
            .post(d.url("/console/login"))
            .form(&[("token", token)])
            .send()
    };
    let wrong = login("wrong-token-but-long-enough").await.unwrap();
    assert_eq!(wrong.status(), 303);
    assert_eq!(wrong.headers()["location"], "/console?failed=1");
    let right = login(ADMIN_TOKEN).await.unwrap();
    assert_eq!(right.status(), 303);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    let page = client
        .get(d.url("/console"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in the page: {html}"))
        .to_string();
    assert_eq!(csrf.len(), 64);

    let read = client
        .get(d.url("/admin/v1/destinations"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let reload = |csrf: Option<&str>, origin: Option<&str>| {
        let mut r = client
            .post(d.url("/admin/v1/reload"))
            .header("cookie", &session);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(reload(None, None).await.unwrap().status(), 403);
    assert_eq!(
        reload(Some("0".repeat(64).as_str()), None)
            .await
            .unwrap()
            .status(),
        403
    );
    let evil = reload(Some(&csrf), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let own = format!("http://{}", d.addr);
    assert_eq!(reload(Some(&csrf), Some(&own)).await.unwrap().status(), 200);

    let logout = client
        .post(d.url("/console/logout"))
        .header("cookie", &session)
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 303);
    let after = client
        .get(d.url("/admin/v1/destinations"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the session ended with the logout");
}

/// `[admin] listen`: the admin side answers there, and only there.
#[tokio::test]
async fn the_admin_side_can_have_its_own_address() {
    let rx = Receiver::start().await;
    let config = format!(
        "{}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\nlisten = \"127.0.0.1:0\"\n",
        hook(&rx)
    );
    let d = Daemon::start("", &config).await;
    let logs = d.wait_for_log("admin_address=").await;
    let admin = logs
        .split("admin_address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let there = client
        .get(format!("http://{admin}/admin/v1/destinations"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(there.status(), 200);
    let (status, _) = d.get("/admin/v1/destinations").await;
    assert_eq!(status, 404, "not on the ingest address");
    let health = client.get(d.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
