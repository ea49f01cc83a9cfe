//! A real Segment SDK (`@segment/analytics-node`) pointed at the daemon: its group call
//! arrives at the webhook receiver.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, Receiver};

/// Install the SDK into tests/sdk once (npm, by package name), so `cargo test` works on a
/// fresh machine with Node.
fn ensure_sdk(dir: &Path) {
    if dir
        .join("node_modules/@segment/analytics-node/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-package-lock"])
        .current_dir(dir)
        .status()
        .expect("npm must be installed to run the SDK test (Node 20)");
    assert!(status.success(), "npm install failed in {}", dir.display());
}

#[tokio::test]
async fn analytics_node_group_call_is_delivered() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let dir = sdk.clone();
    tokio::task::spawn_blocking(move || ensure_sdk(&dir))
        .await
        .unwrap();

    let rx = Receiver::start().await;
    let config = format!(
        "[[source]]\nname = \"node\"\nwrite_key = \"sdk-key\"\n\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        rx.url("/hook")
    );
    let d = Daemon::start("", &config).await;
    let host = format!("http://{}", d.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("group.mjs")
            .arg(host)
            .arg("sdk-key")
            .arg("sdk-group")
            .current_dir(&sdk)
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let got = rx.wait_for("/hook", 1).await;
    let msg = got[0].json();
    assert_eq!(msg["type"], "group");
    assert_eq!(msg["groupId"], "sdk-group");
    assert_eq!(msg["userId"], "sdk-user");
    assert_eq!(msg["traits"]["name"], "SDK Co");
    assert_eq!(msg["traits"]["createdAt"], "2024-05-01T10:00:00.000Z");
    assert_eq!(msg["context"]["library"]["name"], "@segment/analytics-node");
    assert!(
        msg.get("writeKey").is_none(),
        "the write key is not forwarded"
    );
}
