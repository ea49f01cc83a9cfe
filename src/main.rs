//! The `switchyard` command: `run` the daemon, `check` a config, `dlq` for dead letters.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::destination::Registry;
use switchyard::dlq;
use switchyard::server::{self, Plan};
use switchyard::spool::jetstream::Role;

/// Self-hosted fan-out router for Segment-spec calls.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve ingest and deliver to every destination.
    Run {
        /// The config file.
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// With a shared (JetStream) spool: accept calls and deliver (`all`), only accept
        /// (`ingest`), or only deliver (`deliver`).
        #[arg(long, value_enum, default_value_t = Role::All, env = "SWITCHYARD_ROLE")]
        role: Role,
    },
    /// Validate a config and print what would run; exit 1 listing every error.
    Check {
        /// The config file.
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Dead letters: list, show, replay, purge (works while the daemon runs).
    Dlq(dlq::DlqArgs),
    /// The spool file itself (works while the daemon runs).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Check the file's structure and every stored message against its checksum; exit 1
    /// listing every problem.
    Check {
        /// The config file (for `[spool] path`).
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
}

/// mimalloc: glibc's malloc and free were a fifth of the daemon's CPU under load (many small
/// JSON maps per message); see the Performance section of the README.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Spool {
            command: SpoolCommand::Check { config },
        } => check_spool(&config),
        Command::Dlq(args) => match dlq::run(&args, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard dlq: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, role } => match run(&config, role) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Read and validate; errors are printed prefixed with the file name.
fn plan(path: &Path) -> Result<Plan, String> {
    Plan::from_file(path, &Registry::builtin())
}

fn check(path: &Path) -> ExitCode {
    match plan(path) {
        Ok(plan) => {
            println!("{}: ok", path.display());
            print!("{}", plan.describe());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, role: Role) -> anyhow::Result<()> {
    let mut plan = plan(path).map_err(anyhow::Error::msg)?;
    plan.role = role;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // Before anything slow: a SIGHUP that arrives while the spool opens must reload,
        // not end the process (the default action).
        let reloads = hangups()?;
        let listen = plan.config.server.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        server::run_with_reload(plan, listener, shutdown_signal(), reloads).await
    })
}

/// Each SIGHUP, as a stream (reload the config).
#[cfg(unix)]
fn hangups() -> anyhow::Result<futures_util::stream::BoxStream<'static, ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(Box::pin(futures_util::stream::unfold(
        hup,
        |mut hup| async move { hup.recv().await.map(|()| ((), hup)) },
    )))
}

#[cfg(not(unix))]
fn hangups() -> anyhow::Result<futures_util::stream::BoxStream<'static, ()>> {
    Ok(Box::pin(futures_util::stream::pending()))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `switchyard spool check`: the report on standard output, exit 1 when anything is wrong.
fn check_spool(config: &Path) -> ExitCode {
    let dir = match dlq::spool_dir(config) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("switchyard spool check: {e}");
            return ExitCode::FAILURE;
        }
    };
    match switchyard::spool::sqlite::check::check(&dir) {
        Ok(report) => {
            println!(
                "spool {}: {} messages ({} with a checksum), {} dead letters",
                dir.display(),
                report.messages,
                report.checksummed,
                report.dead_letters
            );
            if report.problems.is_empty() {
                println!("ok: the structure is sound and every checksum matches");
                return ExitCode::SUCCESS;
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard spool check: {e}");
            ExitCode::FAILURE
        }
    }
}
