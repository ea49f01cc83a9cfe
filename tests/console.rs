//! The console in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver), both started here on free loopback ports, against the real daemon and a
//! capture server playing the destinations. Log in; see every destination; a 429 shows its
//! destination paused; a 400 makes a dead letter that the console shows beside the answer,
//! and replays once the receiver is fixed; "try a message" shows the Mixpanel body; a failed
//! reload shows its error. A screenshot of the console is saved (`target/console.png`; with
//! `SWITCHYARD_UPDATE_SCREENSHOT=1`, also `docs/console.png`, the README's picture).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Answer, DEADLINE, Daemon, Receiver};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const KEY: &str = "console-write-key";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The console refreshes destinations every 5 s and dead letters every 10 s.
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: the console test needs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; .ci/run installs them)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DEADLINE;
        let client = reqwest::Client::new();
        loop {
            let ready = client.get(format!("{url}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, url }
    }

    async fn browser(&self, profile: &Path) -> Client {
        let options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1280,1600",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(rx: &Receiver) -> String {
    format!(
        r#"[[source]]
name = "web"
write_key = "{KEY}"

[[destination]]
name = "Webhook"
type = "webhook"
url = "{hook}"

[[destination]]
name = "Partner"
type = "webhook"
url = "{partner}"

[[destination]]
name = "Mixpanel"
type = "mixpanel"
project_token = "console-mixpanel-token"
group_key = "company_id"
api_host = "{mixpanel}"
"#,
        hook = rx.url("/hook"),
        partner = rx.url("/partner"),
        mixpanel = rx.url("/mixpanel"),
    )
}

/// Wait until the element matching `css` has text containing `want`.
async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
            && text.contains(want)
        {
            return text;
        }
        if Instant::now() > deadline {
            let shot = c.screenshot().await.unwrap_or_default();
            let _ = std::fs::write(artifact("console-failure.png"), shot);
            panic!("`{css}` never showed `{want}` (screenshot: target/console-failure.png)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    let e = c.find(Locator::Css(css)).await;
    e.unwrap_or_else(|err| panic!("no `{css}`: {err}"))
        .click()
        .await
        .unwrap();
}

fn artifact(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

async fn send(d: &Daemon, id: &str, only: &str) {
    let call = json!({
        "userId": "u-1", "groupId": "acme", "messageId": id,
        "traits": {"name": "Acme Inc", "employees": "42"},
        "integrations": {"All": false, only: true},
    });
    assert_eq!(d.post("/v1/group", Some(KEY), &call).await.0, 200);
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let rx = Receiver::start().await;
    rx.set_default(
        "/partner",
        Answer::status(429).with_header("Retry-After", "600"),
    );
    rx.script(
        "/hook",
        vec![Answer::json(
            400,
            json!({"error": "plan is not a known value"}),
        )],
    );
    let d = Daemon::start("", &config(&rx)).await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;

    // Log in: a wrong token first, then the right one.
    c.goto(&d.url("/console")).await.unwrap();
    let token = c.find(Locator::Id("token")).await.unwrap();
    token.send_keys("not-the-admin-token").await.unwrap();
    click(&c, "#login-form button").await;
    wait_text(&c, "#login-failed", "Wrong token").await;
    let token = c.find(Locator::Id("token")).await.unwrap();
    token.clear().await.unwrap();
    token.send_keys(ADMIN_TOKEN).await.unwrap();
    click(&c, "#login-form button").await;

    // Every destination, each with its state.
    for name in ["Webhook", "Partner", "Mixpanel"] {
        wait_text(&c, &format!("article[data-destination=\"{name}\"]"), name).await;
    }
    wait_text(
        &c,
        "article[data-destination=\"Webhook\"] .badge",
        "delivering",
    )
    .await;

    // A 429 with Retry-After: that destination shows as paused.
    send(&d, "to-partner", "Partner").await;
    rx.wait_for("/partner", 1).await;
    wait_text(
        &c,
        "article[data-destination=\"Partner\"] [data-state]",
        "paused until",
    )
    .await;

    // A 400: the dead letter, its message beside the destination's answer.
    send(&d, "refused-once", "Webhook").await;
    rx.wait_for("/hook", 1).await;
    let row = "#dlq-rows tr[data-dead-letter-id]";
    wait_text(&c, row, "Webhook").await;
    click(&c, &format!("{row} td:nth-child(3)")).await;
    wait_text(&c, "#dlq-detail-response", "plan is not a known value").await;
    wait_text(&c, "#dlq-detail-message", "refused-once").await;
    wait_text(&c, "#dlq-detail-status", "400").await;

    // The receiver is fixed (its one scripted refusal is spent): replay from the console.
    click(&c, &format!("{row} input[type=checkbox]")).await;
    click(&c, "#replay-selected").await;
    c.accept_alert().await.unwrap();
    wait_text(&c, "#dlq-result", "Replayed 1").await;
    let got = rx.wait_for("/hook", 2).await;
    assert_eq!(got[1].json()["messageId"], "refused-once");

    // Try a message: the Mixpanel request, sent nowhere.
    let input = c.find(Locator::Id("try-input")).await.unwrap();
    input.clear().await.unwrap();
    let call = json!({"type": "group", "userId": "u-9", "groupId": "globex",
                      "traits": {"Name": "Globex", "created_at": "2024-01-02"}});
    input.send_keys(&call.to_string()).await.unwrap();
    click(&c, "#try-run").await;
    let shown = wait_text(
        &c,
        "#try-result [data-try-destination=\"Mixpanel\"]",
        "$group_id",
    )
    .await;
    assert!(
        shown.contains("globex") && shown.contains("$name"),
        "{shown}"
    );
    assert!(
        !shown.contains("console-mixpanel-token"),
        "the token is masked: {shown}"
    );
    assert!(
        rx.requests("/mixpanel/groups").is_empty(),
        "a try sends nothing"
    );

    // The picture: the page from the top.
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifact("console.png"), &png).unwrap();
    if std::env::var_os("SWITCHYARD_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("console.png"), &png).unwrap();
    }

    // A reload of a broken file: the console says so, with the error's line.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        d.config_path(),
        format!("{text}\n[[destination]]\nname = 5\n"),
    )
    .unwrap();
    let (status, _) = d.admin_post("/admin/v1/reload", &json!({})).await;
    assert_eq!(status, 422);
    wait_text(&c, "#reload-errors", "line ").await;
    c.close().await.unwrap();
}
