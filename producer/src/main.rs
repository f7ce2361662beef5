//! `syncdata-producer`: the production-side binary. Thin: parses the command
//! line, sets up logging and signals, and calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use syncdata_core::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "syncdata-producer",
    version,
    about = "Tails the change archive and publishes every record to NATS JetStream"
)]
struct Cli {
    /// Configuration file (TOML); overrides DATA_SYNC_CONFIG.
    #[arg(long, global = true, value_name = "PATH", env = "DATA_SYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format (the level is set with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Tail the archive and publish until SIGINT or SIGTERM.
    Run,
    /// Show the checkpoint, pending files and quarantine (needs no NATS).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat) {
    syncdata_core::telemetry::init_logging(matches!(format, LogFormat::Json));
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => Config::load_from(&path, |k| std::env::var(k).ok()),
        None => Config::load(),
    };
    config.context("cannot load the configuration")
}

/// Cancels `token` on the first SIGINT or SIGTERM; a second one exits at once.
fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down (signal again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config)?;
    match cli.command {
        Command::Run => {
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            syncdata_producer::run(config, token).await
        }
        Command::Status { json } => {
            let status = syncdata_producer::status(&config)?;
            let text = if json {
                serde_json::to_string_pretty(&status)? + "\n"
            } else {
                status.to_string()
            };
            // A closed pipe (`status | head`) is not an error worth a panic.
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("cannot write to stdout")
                }
                _ => Ok(()),
            }
        }
    }
}

/// The error and its causes on one line, each cause once (some messages
/// already include their source).
fn report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let is_run = matches!(cli.command, Command::Run);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = report(&err);
            if is_run {
                tracing::error!(error = %message, "syncdata-producer failed");
            }
            eprintln!("syncdata-producer: error: {message}");
            ExitCode::FAILURE
        }
    }
}
