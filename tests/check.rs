//! `switchyard check`: every example config passes; broken ones fail naming line or variable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(config: &Path, env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("check").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn check_text(text: &str, env: &[(String, String)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let out = check(&path, env);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `${NAME}` references in a config, each given a stand-in value of the right shape.
fn stand_in_env(text: &str) -> Vec<(String, String)> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .map(|name| {
            let value = if name.contains("WEBHOOK_SECRET") {
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            } else if name.contains("ADMIN") {
                "stand-in-admin-token-0123456789"
            } else if name.ends_with("URL") {
                "https://stand-in.example/hook"
            } else {
                "stand-in"
            };
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// The examples, and the production config beside the systemd unit in `deploy/`.
#[test]
fn every_example_config_passes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let entries = (std::fs::read_dir(root.join("examples")).unwrap())
        .chain(std::fs::read_dir(root.join("deploy")).unwrap());
    let mut seen = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let out = check(&path, &stand_in_env(&text));
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(": ok") && stdout.contains("destinations:"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("stand-in"),
            "secrets are not printed: {stdout}"
        );
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected example configs in examples/ and deploy/"
    );
}

#[test]
fn check_prints_what_would_run() {
    let (ok, out, _) = check_text(
        "[[source]]\nname = \"web\"\nwrite_key = \"sekrit\"\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://x\"\ntypes = [\"group\"]\ndry_run = true\n",
        &[],
    );
    assert!(ok);
    assert!(out.contains("web (write key ***)"), "{out}");
    assert!(
        out.contains("Hook (webhook, dry run) takes: group"),
        "{out}"
    );
    assert!(out.contains("spool: data"), "{out}");
    assert!(!out.contains("sekrit"));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let (ok, _, err) = check_text("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("line 3, column 1") && err.contains("unknown field `listen_port`"),
        "{err}"
    );
    let (ok, _, err) = check_text(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://x\"\nurll = \"http://y\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("line 7, column 1") && err.contains("unknown field `urll`"),
        "{err}"
    );
}

#[test]
fn wrong_type_is_named_with_its_line() {
    let (ok, _, err) = check_text("[server]\nallow_unauthenticated = \"yes\"\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("line 2") && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn missing_environment_variable_is_named() {
    let (ok, _, err) = check_text(
        "[[source]]\nname = \"web\"\nwrite_key = \"${SWITCHYARD_TEST_SURELY_UNSET}\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("environment variable `SWITCHYARD_TEST_SURELY_UNSET` is not set"),
        "{err}"
    );
    assert!(err.contains("line 3, column 14"), "{err}");
}

#[test]
fn duplicate_destination_names_are_refused_case_insensitively() {
    let (ok, _, err) = check_text(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://x\"\n[[destination]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://y\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("destination name `hook` is used twice") && err.contains("line 8"),
        "{err}"
    );
}

#[test]
fn every_error_is_listed_and_no_source_needs_opting_in() {
    let (ok, _, err) = check_text(
        "[[destination]]\nname = \"A\"\ntype = \"carrier-pigeon\"\n[[destination]]\nname = \"B\"\ntype = \"webhook\"\nurl = \"ftp://x\"\n",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("no [[source]] is configured"), "{err}");
    let (ok, _, err) = check_text(
        "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"A\"\ntype = \"carrier-pigeon\"\n[[destination]]\nname = \"B\"\ntype = \"webhook\"\nurl = \"ftp://x\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("unknown type `carrier-pigeon`") && err.contains("url must be http or https"),
        "{err}"
    );
}

#[test]
fn help_is_everywhere() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--"),
            "{args:?}"
        );
    }
}

/// A secret put in the wrong key (here the webhook's `signature`, which takes a mode) is
/// refused without the error showing it, also when an adapter finds the mistake.
#[test]
fn a_secret_in_the_wrong_key_is_not_shown_in_the_error() {
    let text = "[[source]]\nname = \"web\"\nwrite_key = \"${WEB_KEY}\"\n[[destination]]\nname = \"Hook\"\ntype = \"webhook\"\nurl = \"http://x\"\nsignature = \"${HOOK_SECRET}\"\n[server]\nmax_connections = \"${WEB_KEY}\"\n";
    let env = [
        ("WEB_KEY".to_string(), "wk-9f8e7d6c5b4a".to_string()),
        ("HOOK_SECRET".to_string(), "whsec-0a1b2c3d4e5f".to_string()),
    ];
    let (ok, _, err) = check_text(text, &env);
    assert!(!ok);
    assert!(err.contains("line "), "{err}");
    for (_, secret) in &env {
        assert!(!err.contains(secret.as_str()), "{secret} shown: {err}");
    }
    let adapter_only = text.replace("[server]\nmax_connections = \"${WEB_KEY}\"\n", "");
    let (ok, _, err) = check_text(&adapter_only, &env);
    assert!(!ok);
    assert!(err.contains("unknown variant `***`"), "{err}");
    assert!(!err.contains("whsec-0a1b2c3d4e5f"), "{err}");
}

#[test]
fn the_jetstream_spool_is_checked_key_by_key() {
    let base = "[server]\nallow_unauthenticated = true\n";
    let (ok, _, err) = check_text(
        &format!(
            "{base}[spool]\npath = \"data\"\nurl = \"nats://127.0.0.1:4222\"\nreplicas = 3\ndedupe_max_keys = 0\n"
        ),
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("spool.dedupe_max_keys is 0; it must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("spool.url is for backend = \"jetstream\""),
        "{err}"
    );
    assert!(err.contains("spool.replicas is for backend"), "{err}");
    assert!(
        err.contains("line 5, column 1: spool.url"),
        "the line of `url`: {err}"
    );

    let (ok, _, err) = check_text(
        &format!(
            "{base}[spool]\nbackend = \"jetstream\"\npath = \"data\"\nreplicas = 2\npartitions = 0\nprefix = \"a.b\"\ndedupe_max_keys = 10\n"
        ),
        &[],
    );
    assert!(!ok);
    for expected in [
        "needs spool.url",
        "spool.path is for backend = \"sqlite\"",
        "spool.dedupe_max_keys is for backend = \"sqlite\"",
        "spool.replicas is 2; it must be 1 or 3",
        "spool.partitions is 0",
        "spool.prefix `a.b`",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }

    let (ok, _, err) = check_text(
        &format!(
            "{base}[spool]\nbackend = \"jetstream\"\nurl = \"nats://ops:hunter2@10.0.0.1:4222, ::bad::\"\ntoken = \"t\"\nuser = \"u\"\n"
        ),
        &[],
    );
    assert!(!ok);
    assert!(err.contains("one way, not several"), "{err}");
    assert!(
        err.contains("spool.user and spool.password go together"),
        "{err}"
    );
    assert!(err.contains("`::bad::` is not a server address"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let (ok, out, err) = check_text(
        &format!(
            "{base}[spool]\nbackend = \"jetstream\"\nurl = \"nats://10.0.0.1:4222,nats://10.0.0.2:4222\"\nreplicas = 3\n"
        ),
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("spool: jetstream"), "{out}");
}
