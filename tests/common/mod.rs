//! Test harness: the real daemon (the built binary) and a capture server on port 0 that
//! plays the destination, with answers a test can script.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::sync::Notify;

pub mod nats;

/// Where a test's daemons keep their spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded spool, in the daemon's temp dir.
    Sqlite,
    /// JetStream, on a `nats-server` of the test's own.
    JetStream,
}

/// A test's spool: for JetStream, its server and a prefix every daemon of the test shares.
pub struct Under {
    pub backend: Backend,
    pub nats: Option<nats::Nats>,
    jetstream_table: String,
}

impl Under {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::JetStream => {
                let n = nats::Nats::start();
                let table = nats::spool_table(&n.url(), "");
                Self {
                    backend,
                    nats: Some(n),
                    jetstream_table: table,
                }
            }
        }
    }

    pub fn sqlite() -> Self {
        Self {
            backend: Backend::Sqlite,
            nats: None,
            jetstream_table: String::new(),
        }
    }

    /// The `[spool]` table for a daemon whose files go in `dir`; keys at the start of the
    /// rest of the config land in it too.
    fn table(&self, dir: &std::path::Path) -> String {
        match self.backend {
            Backend::Sqlite => format!("[spool]\npath = \"{}\"\n", dir.join("spool").display()),
            Backend::JetStream => self.jetstream_table.clone(),
        }
    }
}

/// Two tests of one body, `sqlite::NAME` and `jetstream::NAME`: the same behaviour on both
/// spools. The body is `async fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! on_both_spools {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::JetStream).await
                }
            )*
        }
    };
}

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    /// Path and query, e.g. `/groups?verbose=1`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status the receiver answered.
    pub status: u16,
}

impl Captured {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("receiver got non-JSON body ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Hold the answer until this many requests reached the path; if they do not within
    /// the deadline, answer 504 instead (so a test sees the requests did not overlap).
    pub hold_until: usize,
    /// Answer this long after the request was captured (a slow destination).
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            hold_until: 0,
            delay: Duration::ZERO,
        }
    }

    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            hold_until: 0,
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(mut self, by: Duration) -> Self {
        self.delay = by;
        self
    }

    pub fn held_until(mut self, requests: usize) -> Self {
        self.hold_until = requests;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    captured: Mutex<Vec<Captured>>,
    /// Path (without query) → answers to give in turn, then the default.
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    defaults: Mutex<HashMap<String, Answer>>,
    /// Requests being held (see `Answer::hold_until`), by path.
    holding: Mutex<HashMap<String, usize>>,
    arrived: Notify,
}

/// The capture server.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(capture)
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers for `path`, given in turn before the default (200 `{}` unless set).
    pub fn script(&self, path: &str, answers: Vec<Answer>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(path.into())
            .or_default()
            .extend(answers);
    }

    pub fn set_default(&self, path: &str, answer: Answer) {
        self.state
            .defaults
            .lock()
            .unwrap()
            .insert(path.into(), answer);
    }

    /// Every request whose path (without query) is `path`.
    pub fn requests(&self, path: &str) -> Vec<Captured> {
        self.state
            .captured
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    /// Wait until `path` has had at least `n` requests; panics at the deadline.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Captured> {
        self.wait_until(path, |got| got.len() >= n, &format!("{n} requests"))
            .await
    }

    /// Wait until the requests to `path` satisfy `done`.
    pub async fn wait_until(
        &self,
        path: &str,
        done: impl Fn(&[Captured]) -> bool,
        what: &str,
    ) -> Vec<Captured> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let notified = self.state.arrived.notified();
            let got = self.requests(path);
            if done(&got) {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what} at {path}; got {}: {:#?}",
                    got.len(),
                    got.iter()
                        .map(|c| String::from_utf8_lossy(&c.body).into_owned())
                        .collect::<Vec<_>>()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

async fn capture(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_string();
    // Choose the answer before logging the request, so each capture knows its answer.
    let scripted = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(|q| q.pop_front());
    let mut answer = scripted
        .or_else(|| state.defaults.lock().unwrap().get(&path).cloned())
        .unwrap_or_else(|| Answer::json(200, serde_json::json!({})));
    if answer.hold_until > 0 {
        hold(&state, &path, &mut answer).await;
    }
    state.captured.lock().unwrap().push(Captured {
        method,
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body,
        at: Instant::now(),
        status: answer.status,
    });
    state.arrived.notify_waiters();
    tokio::time::sleep(answer.delay).await;
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (k, v) in answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::try_from(k).unwrap(),
            axum::http::HeaderValue::try_from(v).unwrap(),
        );
    }
    response
}

/// Wait (counting this request) until `answer.hold_until` requests reached `path`; 504 if
/// they never do.
async fn hold(state: &ReceiverState, path: &str, answer: &mut Answer) {
    let arrived = || {
        state
            .captured
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.split('?').next() == Some(path))
            .count()
    };
    *state
        .holding
        .lock()
        .unwrap()
        .entry(path.to_string())
        .or_default() += 1;
    state.arrived.notify_waiters();
    let deadline = Instant::now() + DEADLINE / 2;
    loop {
        let notified = state.arrived.notified();
        let waiting = state
            .holding
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0);
        if arrived() + waiting >= answer.hold_until {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            *answer = Answer::status(504);
            break;
        }
        let _ = tokio::time::timeout(left, notified).await;
    }
    *state
        .holding
        .lock()
        .unwrap()
        .entry(path.to_string())
        .or_default() -= 1;
}

/// The real daemon, spawned from the built binary with a config written to a temp dir.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
    client: reqwest::Client,
}

/// The admin token of every daemon started with [`Daemon::start`] (unless its config has
/// an `[admin]` table of its own).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

impl Daemon {
    /// Start with `[server]` extras (after `listen`) and the rest of the config.
    pub async fn start(server_extra: &str, rest: &str) -> Self {
        Self::start_with_env(server_extra, rest, &[]).await
    }

    pub async fn start_with_env(server_extra: &str, rest: &str, env: &[(&str, &str)]) -> Self {
        Self::start_under(&Under::sqlite(), server_extra, rest, env).await
    }

    /// Start on the test's spool (`Daemon::start` is the embedded one).
    pub async fn start_on(under: &Under, server_extra: &str, rest: &str) -> Self {
        Self::start_under(under, server_extra, rest, &[]).await
    }

    pub async fn start_under(
        under: &Under,
        server_extra: &str,
        rest: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with_args(under, server_extra, rest, env, &[]).await
    }

    /// Start with `switchyard run --role ROLE` on the test's (shared) spool.
    pub async fn start_role(under: &Under, role: &str, server_extra: &str, rest: &str) -> Self {
        Self::start_with_args(under, server_extra, rest, &[], &["--role", role]).await
    }

    async fn start_with_args(
        under: &Under,
        server_extra: &str,
        rest: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin = if rest.contains("[admin]") {
            String::new()
        } else {
            format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n{server_extra}\n\n{}\n{rest}\n\n{admin}",
            under.table(dir.path())
        );
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, &config).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["run"]).args(args);
        Self::spawn_command(dir, cmd, &path, env).await
    }

    /// Start with a complete config text, as given.
    pub async fn start_raw(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn(dir, &path, &[]).await
    }

    pub async fn spawn(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_command(dir, Command::new(binary()), config, env).await
    }

    /// Run with at most `fds` open file descriptors (`ulimit -n`), as a service manager may.
    pub async fn spawn_with_fd_limit(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        fds: u32,
    ) -> Self {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("ulimit -n {fds} && exec \"$0\" \"$@\""),
            binary(),
        ]);
        Self::spawn_command(dir, cmd, config, &[]).await
    }

    async fn spawn_command(
        dir: tempfile::TempDir,
        mut cmd: Command,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        if !cmd.get_args().any(|a| a == "run") {
            cmd.arg("run");
        }
        cmd.arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("SWITCHYARD_LOG", "info,switchyard=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening address=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap();
        let addr = match addr {
            Ok(a) => a.parse().unwrap(),
            Err(_) => panic!("daemon did not start; logs:\n{}", logs.lock().unwrap()),
        };
        Self {
            child,
            addr,
            dir,
            logs,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until the daemon has logged `text` (logs arrive through a pipe, a little late).
    pub async fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let logs = self.logs();
            if logs.contains(text) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for log `{text}`; logs:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll `GET /v1/destinations` until `name`'s entry satisfies `done`; returns the entry.
    pub async fn wait_status(
        &self,
        name: &str,
        done: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, list) = self.get("/v1/destinations").await;
            let entry = list["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap();
            if done(&entry) {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}: {what}; last status {entry}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// POST JSON with the write key as Basic user (`key:`); returns status and JSON answer.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(k) = key {
            req = req.basic_auth(k, Some(""));
        }
        Self::answer(req.send().await.unwrap()).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(self.url(path))
            .body(body)
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.basic_auth(k, Some(""));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    async fn answer(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("daemon answered non-JSON: {text}"));
        (status, value)
    }

    /// GET with the admin token (ignored by the open endpoints).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let req = self.client.get(self.url(path)).bearer_auth(ADMIN_TOKEN);
        Self::answer(req.send().await.unwrap()).await
    }

    /// POST JSON to the admin API with the admin token.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let req = self.client.post(self.url(path)).json(body);
        Self::answer(req.bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await
    }

    /// Send SIGTERM and wait for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM"
            );
            // An async sleep: the in-process receiver must keep answering while the daemon
            // finishes its in-flight batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Crashes, restarts and the `dlq` command, for tests/durable.rs.
impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    /// SIGKILL: no shutdown, no flush; the process is reaped before returning.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Start again on the same config and spool (after `kill9` or `terminate`).
    pub async fn restart(mut self) -> Daemon {
        let config = self.config_path();
        let placeholder = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self.dir, placeholder);
        drop(self);
        Daemon::spawn(dir, &config, &[]).await
    }

    /// Run `switchyard dlq ARGS --config <this config>`; panics unless it succeeds.
    pub fn dlq(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .arg("dlq")
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "dlq {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// GET a text answer (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
