//! No secret reaches a log line, an answer or a command's output: the daemon runs at
//! `SWITCHYARD_LOG=trace` with a secret in every place one can be configured or fetched —
//! write key, Mixpanel token, Salesforce client secret and fetched access token, webhook
//! signing secret, URL password, URL query token, header value — and goes through every
//! path: deliveries, failures and retries, a refused credential, dead letters, dry runs,
//! wrong write keys, the operator endpoints, the admin API (config, try a message, dead
//! letters, recent messages), a console login, a reload, and the CLI. Then every secret —
//! the admin token too — is searched for in all of it.

mod common;

use common::{ADMIN_TOKEN, Answer, Daemon, Receiver};
use serde_json::{Value, json};

const WRITE_KEY: &str = "wk-SECRET-0001";
const MP_TOKEN: &str = "mp-SECRET-0002";
const SF_CLIENT_SECRET: &str = "sf-SECRET-0003";
const SF_ACCESS_TOKEN: &str = "sf-token-SECRET-0004";
const SIGNING_SECRET: &str = "sign-SECRET-0005";
const URL_PASSWORD: &str = "url-SECRET-0006";
const QUERY_TOKEN: &str = "query-SECRET-0007";
const HEADER_VALUE: &str = "hdr-SECRET-0008";

const SECRETS: &[&str] = &[
    WRITE_KEY,
    MP_TOKEN,
    SF_CLIENT_SECRET,
    SF_ACCESS_TOKEN,
    SIGNING_SECRET,
    URL_PASSWORD,
    QUERY_TOKEN,
    HEADER_VALUE,
    ADMIN_TOKEN,
];

const TOKEN_PATH: &str = "/services/oauth2/token";
const UPSERT_PATH: &str = "/services/data/v62.0/composite/sobjects/Account/Ext__c";

fn config(rx: &Receiver) -> String {
    let host = rx.url("").replace("http://", "");
    let hook = |name: &str, path: &str, extra: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"http://user:{URL_PASSWORD}@{host}{path}?token={QUERY_TOKEN}\"\nsigning_secret = \"{SIGNING_SECRET}\"\nheaders = {{ Authorization = \"Bearer {HEADER_VALUE}\" }}\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\", max_attempts = 2 }}\n{extra}\n"
        )
    };
    let mixpanel = |name: &str, extra: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\ntype = \"mixpanel\"\nproject_token = \"{MP_TOKEN}\"\ngroup_key = \"company_id\"\napi_host = \"{}\"\nretry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n{extra}\n",
            rx.url("")
        )
    };
    format!(
        "[[source]]\nname = \"web\"\nwrite_key = \"{WRITE_KEY}\"\n\n{}{}{}{}\
         [[destination]]\nname = \"Salesforce\"\ntype = \"salesforce\"\ninstance_url = \"{}\"\nexternal_id_field = \"Ext__c\"\n\
         retry = {{ initial_backoff = \"10ms\", max_backoff = \"50ms\" }}\n\
         auth = {{ flow = \"client_credentials\", client_id = \"cid\", client_secret = \"{SF_CLIENT_SECRET}\", token_url = \"{}\" }}\n",
        hook("Hook", "/hook", ""),
        hook("HookDry", "/hook-dry", "dry_run = true"),
        mixpanel("Mixpanel", ""),
        mixpanel("MixpanelDry", "dry_run = true"),
        rx.url(""),
        rx.url(TOKEN_PATH),
    ) + &format!("\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")
}

fn call(n: usize) -> Value {
    json!({"type": "group", "userId": "u", "groupId": format!("g{n}"), "messageId": format!("m{n}"),
           "traits": {"name": format!("Company {n}"), "plan": "pro"}})
}

#[tokio::test]
async fn no_secret_in_any_log_line_answer_or_output() {
    let rx = Receiver::start().await;
    // The webhook fails, then fails again (a dead letter after two attempts), then succeeds.
    rx.script(
        "/hook",
        vec![
            Answer::json(500, json!({"error": "boom"})),
            Answer::json(500, json!({"error": "boom"})),
        ],
    );
    rx.set_default("/hook", Answer::status(200));
    // Mixpanel refuses its token: unhealthy, dead letters with the answer kept.
    rx.set_default(
        "/groups",
        Answer::json(401, json!({"error": "Invalid token", "status": 0})),
    );
    rx.set_default(
        "/engage",
        Answer::json(401, json!({"error": "Invalid token", "status": 0})),
    );
    // Salesforce: a token, refused once as expired, fetched again, then records accepted.
    rx.set_default(
        TOKEN_PATH,
        Answer::json(
            200,
            json!({"access_token": SF_ACCESS_TOKEN, "instance_url": rx.url(""), "token_type": "Bearer"}),
        ),
    );
    rx.script(
        UPSERT_PATH,
        vec![Answer::json(
            401,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        )],
    );
    rx.set_default(
        UPSERT_PATH,
        Answer::json(
            200,
            json!(vec![json!({"id": "001", "success": true, "errors": []}); 5]),
        ),
    );
    let mut d = Daemon::start_with_env("", &config(&rx), &[("SWITCHYARD_LOG", "trace")]).await;
    let mut answers = Vec::new();

    for n in 0..3 {
        let (status, body) = d
            .post("/v1/batch", Some(WRITE_KEY), &json!({"batch": [call(n)]}))
            .await;
        assert_eq!(status, 200, "{body}");
        answers.push(body.to_string());
    }
    // A refused message in a batch, a wrong key, a key in the body.
    let (_, body) = d
        .post(
            "/v1/batch",
            Some(WRITE_KEY),
            &json!({"batch": [{"type": "group"}]}),
        )
        .await;
    answers.push(body.to_string());
    let (status, body) = d.post("/v1/group", Some("wk-wrong"), &call(9)).await;
    assert_eq!(status, 401);
    answers.push(body.to_string());
    let mut in_body = call(10);
    in_body["writeKey"] = json!(WRITE_KEY);
    let (status, body) = d.post("/v1/group", None, &in_body).await;
    assert_eq!(status, 200, "{body}");
    answers.push(body.to_string());

    // Every path reached: a webhook dead letter, Mixpanel refusals, Salesforce delivered
    // after a refreshed token, both dry runs logged.
    rx.wait_for("/hook", 3).await;
    rx.wait_for(UPSERT_PATH, 2).await;
    d.wait_for_log("destination needs attention").await;
    d.wait_for_log("dry run: would send").await;
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, list) = d.get("/v1/destinations").await;
        let dead: u64 = list["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["dead_letters"].as_u64().unwrap())
            .sum();
        if dead >= 2 {
            answers.push(list.to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letters yet: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    answers.push(d.get_text("/metrics").await);
    // The admin side: the config shown, a call tried on every destination, dead letters,
    // recent messages, a reload, a console login and its page.
    for path in [
        "/admin/v1/config",
        "/admin/v1/recent",
        "/admin/v1/dead-letters",
    ] {
        let (status, body) = d.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push(body.to_string());
    }
    let (status, tried) = d.admin_post("/admin/v1/try", &call(11)).await;
    assert_eq!(status, 200, "{tried}");
    assert!(tried["requests"].as_array().unwrap().len() >= 4, "{tried}");
    answers.push(tried.to_string());
    let (_, letters) = d.get("/admin/v1/dead-letters").await;
    for l in letters["dead_letters"].as_array().unwrap() {
        answers.push(
            d.get(&format!("/admin/v1/dead-letters/{}", l["id"]))
                .await
                .1
                .to_string(),
        );
    }
    answers.push(
        d.admin_post("/admin/v1/reload", &json!({}))
            .await
            .1
            .to_string(),
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = browser
        .post(d.url("/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    answers.push(cookie.clone());
    let page = browser
        .get(d.url("/console"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    answers.push(page.text().await.unwrap());
    let listed = d.dlq(&["list", "--json"]);
    let letters: Vec<Value> = serde_json::from_str(&listed).unwrap();
    for letter in &letters {
        answers.push(d.dlq(&["show", &letter["id"].to_string()]));
    }
    answers.push(listed);
    answers.push(d.dlq(&["list"]));
    let check = std::process::Command::new(common::binary())
        .args(["check", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    answers.push(String::from_utf8_lossy(&check.stdout).into_owned());
    answers.push(String::from_utf8_lossy(&check.stderr).into_owned());
    assert!(d.terminate().await.success());

    let logs = d.logs();
    assert!(logs.contains("TRACE"), "trace logging was on");
    for secret in SECRETS {
        for (i, line) in logs.lines().enumerate() {
            assert!(
                !line.contains(secret),
                "log line {i} holds {secret}: {line}"
            );
        }
        for answer in &answers {
            assert!(
                !answer.contains(secret),
                "an answer holds {secret}: {answer}"
            );
        }
    }
    // The secrets did reach where they belong.
    let hook = &rx.requests("/hook")[0];
    assert_eq!(
        hook.header("authorization"),
        Some(format!("Bearer {HEADER_VALUE}").as_str())
    );
    let upsert = &rx.requests(UPSERT_PATH)[0];
    assert_eq!(
        upsert.header("authorization"),
        Some(format!("Bearer {SF_ACCESS_TOKEN}").as_str())
    );
}
