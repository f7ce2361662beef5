//! `syncdata-producer`: the production-side binary. Thin: parses the command
//! line and calls the command's module under `syncdata_producer::cmd`; the
//! shell (flags, config, logging, signals, errors) is `syncdata_core::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use syncdata_core::cli::{self, GlobalArgs, Kind};
use syncdata_core::config::Role;
use syncdata_producer::cmd;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "syncdata-producer",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SYNCDATA_GIT_REV"), ")"),
    about = "Tails the change archive and publishes every record to NATS JetStream"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
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
    /// Print the shell completion script (bash, zsh, fish, elvish,
    /// powershell): `syncdata-producer completions bash > ~/.local/share/bash-completion/completions/syncdata-producer`.
    Completions {
        #[arg(value_enum)]
        shell: cli::Shell,
    },
    /// Print the man page (roff: `syncdata-producer man | man -l -`); with --dir,
    /// write one page per command into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
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

impl Command {
    fn kind(&self) -> Kind {
        match self {
            Command::Run | Command::Archive { .. } => Kind::Daemon,
            _ => Kind::Command,
        }
    }
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn signal_token() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    cli::cancel_on_signals(token.clone())
        .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    Ok(token)
}

async fn dispatch(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let config = || Ok(cli::load_config(global, Role::Producer)?);
    match command {
        Command::Run => cmd::run::run(config()?, signal_token()?).await,
        Command::SetupSource {
            create_slot,
            create_user,
            user,
            tables,
            source,
        } => {
            let args = cmd::setup_source::SetupArgs {
                create_slot,
                create_user,
                user,
                tables,
                source,
            };
            cmd::setup_source::run(&config()?, args).await
        }
        Command::Archive { tables, source } => {
            cmd::archive::run(&config()?, source, tables, signal_token()?).await
        }
        Command::Snapshot { table, source } => {
            cmd::snapshot::run(&config()?, source, &table, signal_token()?).await
        }
        Command::CheckRules {
            rules,
            source,
            json,
        } => cmd::check_rules::run(config, rules, source, json).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => cmd::config::check(&config()?),
        Command::Status { json } => cmd::status::run(&config()?, json),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Cli { global, command } = Cli::parse();
    // Generated from the command-line definition; need no configuration.
    match &command {
        Command::Completions { shell } => {
            let result = cli::print_completions(Cli::command(), *shell).map_err(Into::into);
            return cli::finish(result, &global, Kind::Command);
        }
        Command::Man { dir } => {
            let result = cli::man_pages(Cli::command(), dir.as_deref());
            return cli::finish(result, &global, Kind::Command);
        }
        _ => {}
    }
    let kind = command.kind();
    cli::init_logging(&global, kind);
    let result = dispatch(&global, command).await;
    cli::finish(result, &global, kind)
}
