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
    /// Check the source for logical decoding (wal_level, wal2json,
    /// privileges) and create what is missing. Idempotent.
    SetupSource {
        /// Create the replication slot (source.slot) when it is missing.
        #[arg(long)]
        create_slot: bool,
        /// Create (or complete) a role with LOGIN REPLICATION; its password
        /// comes from SYNCDATA_USER_PASSWORD when set.
        #[arg(long)]
        create_user: bool,
        /// Name of that role (default: source.user).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Tables to check for a primary key and grant SELECT on: a,b
        #[arg(long, value_name = "TABLES")]
        tables: Option<String>,
        /// Source database URL (default: producer.source_url).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
    },
    /// Read the replication slot and write change segments into archive_dir
    /// until SIGINT or SIGTERM.
    Archive {
        /// Only these tables (a,b); default: source.tables, else all.
        #[arg(long, value_name = "TABLES")]
        tables: Option<String>,
        /// Source database URL (default: producer.source_url).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
    },
    /// Write a consistent copy of a table into the archive as INSERTs (initial
    /// load, or re-seed when the stream no longer holds its history).
    Snapshot {
        table: String,
        /// Source database URL (default: producer.source_url).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
    },
    /// Check the sanitization rules against the source schema: columns
    /// without rules, unknown transforms or parameters, NULL on NOT NULL,
    /// non-injective transforms on keys, type mismatches, foreign keys that
    /// would no longer join. Exits non-zero on any error.
    CheckRules {
        /// Rules file (default: producer.rules_file).
        #[arg(long, value_name = "PATH")]
        rules: Option<PathBuf>,
        /// Source database URL (default: producer.source_url).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show the checkpoint, pending files and quarantine (needs no NATS).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file plus environment) and what the
    /// producer requires of it, without connecting anywhere; print it,
    /// secrets redacted.
    Check,
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

/// `check-rules`: needs the configuration only for what the flags leave out.
async fn check_rules(
    config: Option<PathBuf>,
    rules: Option<PathBuf>,
    source: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (rules, source) = match (rules, source) {
        (Some(r), Some(s)) => (r, s),
        (rules, source) => {
            let config = load_config(config)?;
            let rules = rules
                .or(config.producer.rules_file.clone())
                .context("no rules file: pass --rules or set producer.rules_file")?;
            let source = source
                .or(config.producer.source_url.clone())
                .context("no source database: pass --source or set producer.source_url")?;
            (rules, source)
        }
    };
    let report = syncdata_producer::sanitize::check::check_rules(&rules, &source).await?;
    print(&syncdata_producer::sanitize::check::render(&report, json))?;
    anyhow::ensure!(
        report.errors() == 0,
        "{} has {} error(s)",
        rules.display(),
        report.errors()
    );
    Ok(())
}

/// Writes to stdout; a closed pipe (`… | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Tables halted by sanitization, from the checkpoint (for `status`).
fn halted_tables(
    config: &Config,
) -> anyhow::Result<Vec<syncdata_producer::checkpoint::HaltedTable>> {
    let dir = config.producer_state_dir()?;
    let state = syncdata_producer::checkpoint::CheckpointStore::new(&dir).load_state()?;
    Ok(state.map(|s| s.halted).unwrap_or_default())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::CheckRules {
        rules,
        source,
        json,
    } = cli.command
    {
        return check_rules(cli.config, rules, source, json).await;
    }
    let config = load_config(cli.config)?;
    match cli.command {
        Command::Run => {
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            syncdata_producer::run(config, token).await
        }
        Command::SetupSource {
            create_slot,
            create_user,
            user,
            tables,
            source,
        } => {
            let args = syncdata_producer::source::SetupArgs {
                create_slot,
                create_user,
                user,
                tables,
                source,
            };
            syncdata_producer::source::setup_command(&config, args).await
        }
        Command::Archive { tables, source } => {
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            syncdata_producer::archiver::run_command(&config, source, tables, token).await
        }
        Command::Snapshot { table, source } => {
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            syncdata_producer::snapshot::run_command(&config, source, &table, token).await
        }
        Command::CheckRules { .. } => unreachable!("handled above"),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            config.archive_dir()?;
            print(&syncdata_core::redact::redact(&format!(
                "configuration OK\n{config:#?}\n"
            )))
        }
        Command::Status { json } => {
            let status = syncdata_producer::status(&config)?;
            let halted = halted_tables(&config)?;
            let text = if json {
                let mut v = serde_json::to_value(&status)?;
                v["halted_tables"] = serde_json::to_value(&halted)?;
                serde_json::to_string_pretty(&v)? + "\n"
            } else {
                let mut text = status.to_string();
                text.push_str(&format!("halted tables: {}\n", halted.len()));
                for h in &halted {
                    text.push_str(&format!(
                        "  {}.{} held from {} line {}: {}\n",
                        h.schema,
                        h.table,
                        h.file,
                        h.line + 1,
                        h.reason
                    ));
                }
                text
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let is_run = matches!(cli.command, Command::Run);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = syncdata_core::redact::redact(&report(&err));
            if is_run {
                tracing::error!(error = %message, "syncdata-producer failed");
            }
            eprintln!("syncdata-producer: error: {message}");
            ExitCode::FAILURE
        }
    }
}
