//! A full disk under the spool, on a small filesystem the test mounts (tmpfs; needs the
//! privilege to mount, as root in a container has): ingest answers `503 disk_full` with
//! `Retry-After`, delivery waits, and once space returns both go on without a restart and
//! every message answered 200 is delivered.
//!
//! Where mounting is not allowed, set `SWITCHYARD_SKIP_MOUNT_TESTS=1` and check by hand as
//! the README's "Disk full" section says.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Answer, Daemon, Receiver};
use serde_json::{Value, json};

const KEY: &str = "test-write-key";

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the disk-full test ({}); run as root, or set \
             SWITCHYARD_SKIP_MOUNT_TESTS=1 and follow the README's manual check",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(from: usize, n: usize) -> Value {
    let calls: Vec<Value> = (from..from + n)
        .map(|i| json!({"type": "group", "userId": "u", "groupId": format!("g{i}"), "messageId": format!("m{i}"),
                        "traits": {"name": format!("Company {i}"), "filler": "x".repeat(2000)}}))
        .collect();
    json!({ "batch": calls })
}

/// The message ids the receiver took (answered 200).
fn delivered(got: &[common::Captured]) -> HashSet<String> {
    got.iter()
        .filter(|c| c.status == 200)
        .flat_map(|c| c.json().as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["messageId"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_full_disk_refuses_ingest_then_both_sides_resume_and_nothing_is_lost() {
    if std::env::var_os("SWITCHYARD_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("skipped: SWITCHYARD_SKIP_MOUNT_TESTS is set");
        return;
    }
    let rx = Receiver::start().await;
    rx.set_default("/hook", Answer::status(503));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let _mounted = Mounted::tmpfs(&disk, "3m");
    // Room to give back later.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_request_bytes = 4000000\nmax_message_bytes = 100000\n\n[spool]\npath = \"{}\"\n\n[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"{}\"\nbatch = {{ max_events = 50 }}\nretry = {{ initial_backoff = \"50ms\", max_backoff = \"200ms\" }}\n",
        disk.join("spool").display(),
        rx.url("/hook")
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let d = Daemon::spawn(tempfile::tempdir().unwrap(), &path, &[]).await;

    let mut accepted = HashSet::new();
    let mut next = 0;
    let full = loop {
        assert!(next < 5000, "the disk never filled");
        let response = reqwest::Client::new()
            .post(d.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&batch(next, 20))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        if status == 200 {
            accepted.extend((next..next + 20).map(|i| format!("m{i}")));
            next += 20;
            continue;
        }
        break (status, retry_after, body);
    };
    assert_eq!(full.0, 503, "{}", full.2);
    assert_eq!(full.2["code"], "disk_full", "{}", full.2);
    assert!(full.1.is_some(), "Retry-After with disk_full");
    assert!(!accepted.is_empty());

    // Space comes back and the destination recovers: no restart.
    std::fs::remove_file(&filler).unwrap();
    rx.set_default("/hook", Answer::status(200));
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let (status, body) = d.post("/v1/batch", Some(KEY), &batch(next, 5)).await;
        if status == 200 {
            accepted.extend((next..next + 5).map(|i| format!("m{i}")));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ingest did not resume: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    rx.wait_until(
        "/hook",
        |got| accepted.is_subset(&delivered(got)),
        "every accepted message delivered",
    )
    .await;
    // More than the whole disk now goes through it: the WAL must not keep what was
    // delivered until it fills the disk again (SQLite alone checkpoints only at 4 MiB).
    let through = 4 << 20;
    let per_batch = 20;
    let mut sent = 0;
    let deadline = std::time::Instant::now() + common::DEADLINE * 3;
    while sent < through {
        let (status, body) = d
            .post("/v1/batch", Some(KEY), &batch(next, per_batch))
            .await;
        match status {
            200 => {
                accepted.extend((next..next + per_batch).map(|i| format!("m{i}")));
                next += per_batch;
                sent += per_batch * 2000;
            }
            503 => {
                if std::time::Instant::now() >= deadline {
                    let ls = Command::new("ls")
                        .arg("-la")
                        .arg(disk.join("spool"))
                        .output()
                        .unwrap();
                    let df = Command::new("df").arg(&disk).output().unwrap();
                    eprintln!(
                        "{}\n{}\n{}",
                        String::from_utf8_lossy(&ls.stdout),
                        String::from_utf8_lossy(&df.stdout),
                        d.logs()
                    );
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "ingest stopped for good after {sent} bytes went through: {body}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            _ => panic!("{status} {body}"),
        }
    }
    rx.wait_until(
        "/hook",
        |got| accepted.is_subset(&delivered(got)),
        "every message accepted after space came back delivered",
    )
    .await;
    let logs = d.logs();
    let count = |text: &str| logs.lines().filter(|l| l.contains(text)).count();
    assert_eq!(
        count("the spool's disk is full"),
        1,
        "said once, not per request:\n{logs}"
    );
    assert_eq!(
        count("spool transaction failed"),
        1,
        "said once, not per transaction:\n{logs}"
    );
    assert!(logs.contains("spool transactions succeed again"), "{logs}");
}
