//! Connection limits and timeouts, through the real daemon over raw TCP: clients that send
//! nothing, send headers a byte at a time, sit idle after a request or trickle a body are cut
//! off; connections past `max_connections` wait their turn; running out of file descriptors
//! pauses accepting instead of failing every request.

mod common;

use std::time::Instant;

use common::{DEADLINE, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "test-write-key";

fn config(spool: &std::path::Path, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\n{server_extra}\n\n[spool]\npath = \"{}\"\n\n[[source]]\nname = \"web\"\nwrite_key = \"{KEY}\"\n",
        spool.display()
    )
}

async fn start(server_extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config(&dir.path().join("spool"), server_extra)).unwrap();
    Daemon::spawn(dir, &path, &[]).await
}

/// Read until the daemon closes the connection; what it sent before, as text. Panics if it
/// is still open at the deadline.
async fn until_closed(stream: &mut TcpStream) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection is still open after {DEADLINE:?}; got: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let d = start("").await;
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    assert_eq!(until_closed(&mut silent).await, "");
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off() {
    let d = start("").await;
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut sent = 0;
    // Keep trickling a header until the daemon hangs up (a write fails or a read ends).
    loop {
        assert!(Instant::now() < deadline, "still open after {sent} bytes");
        if slow.write_all(b"X").await.is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        let poll = tokio::time::timeout(std::time::Duration::from_millis(200), slow.read(&mut buf));
        if let Ok(Ok(0) | Err(_)) = poll.await {
            break;
        }
    }
}

#[tokio::test]
async fn a_kept_alive_connection_idle_after_a_request_is_closed() {
    let d = start("").await;
    let mut kept = TcpStream::connect(d.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_trickled_body_is_refused_with_408() {
    let d = start("").await;
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    let auth = base64(&format!("{KEY}:"));
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"batch\": ["
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::spawn(async move {
        let mut answer = [0u8; 4096];
        let n = slow.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    });
    let answer = tokio::time::timeout(DEADLINE, answer)
        .await
        .expect("an answer before the deadline")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(answer.contains("body_read_timeout (1s)"), "{answer}");
}

/// With every slot taken by idle clients, a new client waits until one is cut off, then is
/// served.
#[tokio::test]
async fn connections_past_the_limit_wait_their_turn() {
    let d = start("max_connections = 3").await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    let (status, _) = served(&d).await;
    assert_eq!(status, 200);
    for mut c in idle {
        until_closed(&mut c).await;
    }
}

/// Under a 64-descriptor limit, 100 idle clients make `accept` fail with EMFILE: the daemon
/// says so once, with what to do, keeps running, and serves requests again as soon as the
/// idle clients are cut off.
#[tokio::test]
async fn out_of_file_descriptors_pauses_accepting_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config(&dir.path().join("spool"), "")).unwrap();
    let d = Daemon::spawn_with_fd_limit(dir, &path, 64).await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    let logs = d.wait_for_log("cannot accept connections").await;
    assert!(logs.contains("out of file descriptors"), "{logs}");
    let (status, _) = served(&d).await;
    assert_eq!(status, 200);
    let lines = d
        .logs()
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert!(lines <= 3, "{lines} lines: logged at most once per 10 s");
    drop(idle);
}

/// `GET /health`, failing at the deadline rather than hanging.
async fn served(d: &Daemon) -> (u16, serde_json::Value) {
    tokio::time::timeout(DEADLINE, d.get("/health"))
        .await
        .expect("served before the deadline")
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
