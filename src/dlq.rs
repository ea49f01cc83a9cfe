//! `switchyard dlq`: list, show, replay and purge the dead letters of the spool a config
//! names. Safe to run next to the daemon: the embedded spool is SQLite in WAL mode, a
//! JetStream spool's dead letters are a stream, and the daemon picks replayed messages up on
//! its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use std::sync::Arc;

use crate::config::Backend;
use crate::spool::jetstream::dead::Dead;
use crate::spool::sqlite::dlq::{self, DeadLetter, Selector};
use crate::spool::{DeadLetters, SpoolError};

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The config file; its `[spool]` and destination names are used.
    #[arg(long, default_value = "switchyard.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this destination's.
        #[arg(long)]
        destination: Option<String>,
        /// Only this reason: invalid, permanent, exhausted or corrupted.
        #[arg(long)]
        reason: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its message, as JSON.
    Show {
        /// The id `list` shows.
        id: i64,
    },
    /// Put dead letters back in their destination's queue; they are translated again with
    /// the current config.
    Replay(Which),
    /// Delete dead letters for good.
    Purge(Which),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// These ids (repeat or list).
    #[arg(long = "id", num_args = 1..)]
    pub ids: Vec<i64>,
    /// Every dead letter of this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

impl Which {
    fn selector(&self) -> Selector {
        match (&self.destination, self.all) {
            (Some(d), _) => Selector::Destination(d.clone()),
            (None, true) => Selector::All,
            (None, false) => Selector::Ids(self.ids.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Stopped(#[from] crate::spool::sqlite::dlq::Stopped),
    #[error("no dead letter with id {0}")]
    NotFound(i64),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Run a `dlq` command, writing its report to `out`.
pub fn run(args: &DlqArgs, out: &mut dyn Write) -> Result<(), DlqError> {
    let config = load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let letters = match config.spool.backend {
            Backend::Sqlite => {
                // Opened here so that a wrong path is an error before anything else.
                dlq::open(&config.spool.path)?;
                DeadLetters::Sqlite(config.spool.path.clone())
            }
            Backend::JetStream => {
                DeadLetters::JetStream(Arc::new(Dead::connect(&config.spool).await?))
            }
        };
        command(&args.command, &config, &letters, out).await
    })
}

async fn command(
    command: &DlqCommand,
    config: &crate::config::Config,
    letters: &DeadLetters,
    out: &mut dyn Write,
) -> Result<(), DlqError> {
    match command {
        DlqCommand::List {
            destination,
            reason,
            json,
        } => {
            let letters = letters
                .list(destination.clone(), reason.clone(), None)
                .await?;
            if *json {
                let text = serde_json::to_string_pretty(&letters)
                    .map_err(|e| DlqError::Config(e.to_string()))?;
                writeln!(out, "{text}")?;
            } else {
                write_table(out, &letters)?;
            }
        }
        DlqCommand::Show { id } => {
            let letter = letters.show(*id).await?.ok_or(DlqError::NotFound(*id))?;
            let text = serde_json::to_string_pretty(&letter)
                .map_err(|e| DlqError::Config(e.to_string()))?;
            writeln!(out, "{text}")?;
        }
        DlqCommand::Replay(which) => {
            let configured: Vec<String> =
                config.destinations.iter().map(|d| d.name.clone()).collect();
            let done = letters.replay(which.selector(), configured).await?;
            writeln!(out, "replayed {} dead letter(s)", done.replayed.len())?;
            for (id, why) in &done.skipped {
                writeln!(out, "skipped {id}: {why}")?;
            }
        }
        DlqCommand::Purge(which) => {
            let n = letters.purge(which.selector()).await?;
            writeln!(out, "purged {n} dead letter(s)")?;
        }
    }
    Ok(())
}

/// The spool directory a config names (secrets need not be set), for `switchyard spool`; an
/// error for a JetStream spool, which has no file here.
pub fn spool_dir(config: &Path) -> Result<PathBuf, DlqError> {
    let config = load(config)?;
    if config.spool.backend == Backend::JetStream {
        return Err(DlqError::Config(
            "this config's spool is on JetStream: there is no local file to check (the server checksums its own store; `nats stream info` shows its state)".into(),
        ));
    }
    Ok(config.spool.path)
}

/// The config, for its spool path and destination names. Secrets are not needed here, so a
/// variable missing from the environment does not stop an operator from reading dead letters.
fn load(config: &Path) -> Result<crate::config::Config, DlqError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| DlqError::Config(format!("{}: cannot read: {e}", config.display())))?;
    crate::config::load_with_env(&text, &placeholder_env).map_err(|errors| {
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", config.display()))
            .collect();
        DlqError::Config(lines.join("\n"))
    })
}

/// The variable's value, or a placeholder naming it. One placeholder per variable: validation
/// refuses two sources with the same write key, and two unset variables must not look alike.
fn placeholder_env(name: &str) -> Option<String> {
    Some(std::env::var(name).unwrap_or_else(|_| format!("unset:{name}")))
}

fn write_table(out: &mut dyn Write, letters: &[DeadLetter]) -> std::io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "no dead letters");
    }
    writeln!(
        out,
        "{:<6} {:<16} {:<10} {:>8} {:<25} {:<6} {:<24} ERROR",
        "ID", "DESTINATION", "REASON", "ATTEMPTS", "LAST ATTEMPT", "STATUS", "MESSAGE ID"
    )?;
    for l in letters {
        let last = chrono::DateTime::<chrono::Utc>::from(l.last_attempt)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let status = l
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let error: String = l.error.chars().take(80).collect();
        writeln!(
            out,
            "{:<6} {:<16} {:<10} {:>8} {:<25} {:<6} {:<24} {}",
            l.id,
            l.destination.as_deref().unwrap_or("-"),
            l.reason,
            l.attempts,
            last,
            status,
            l.message_id.as_deref().unwrap_or("-"),
            error.replace('\n', " ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_whose_keys_come_from_unset_variables_do_not_stop_dlq() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("switchyard.toml");
        let text = format!(
            r#"
[[source]]
name = "a"
write_key = "${{SWITCHYARD_DLQ_TEST_NEVER_SET_A}}"

[[source]]
name = "b"
write_key = "${{SWITCHYARD_DLQ_TEST_NEVER_SET_B}}"

[spool]
path = "{}"

[[destination]]
name = "Webhook"
type = "webhook"
url = "https://hooks.example.com/segment"
dry_run = true
"#,
            dir.path().join("spool").display()
        );
        std::fs::write(&config, text).unwrap();
        let loaded = load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.destinations[0].name, "Webhook");
    }
}
